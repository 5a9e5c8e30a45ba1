//! A login flood, as an attacker would run it: tasks that loop `POST /.p2/auth/v1/session`
//! with wrong passwords against a few accounts as fast as the answers come (no pause, no
//! respect for `Retry-After`), from a few client addresses of their own (loopback aliases
//! `127.0.1.x`, so the identity service's per-address throttle sees several attackers), next
//! to a few legitimate users who log in with the right password to another account from
//! their own address (`127.0.2.1`), one login every [`LEGIT_PAUSE`].
//!
//! The server throttles wrong passwords per account and per client address (429 with
//! `Retry-After`) and bounds its Argon2 queue (503), so most flood requests should be refused
//! before any hashing. The figures: how the flood's answers split into 401, 429, 503 and
//! other, and the legitimate logins' outcomes and latency.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;

use crate::setup::Gateway;

/// Pause between two logins of one legitimate user.
pub const LEGIT_PAUSE: Duration = Duration::from_millis(250);
/// A wrong password: long enough to be checked (not refused by its length).
const WRONG_PASSWORD: &str = "not the password, guessed";

/// The client address of attacker `index` (0-based): `127.0.1.(index + 1)`.
pub fn attacker_address(index: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, index.saturating_add(1)))
}

/// The legitimate users' client address.
pub const LEGIT_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));

/// How the flood is made up.
#[derive(Debug, Clone)]
pub struct FloodPlan {
    /// Attacking tasks, each looping wrong-password logins.
    pub tasks: u32,
    /// Logins per second of the whole flood (0: no pause).
    pub rate: u32,
    /// The attacked accounts (registered), spread over the tasks.
    pub accounts: Vec<String>,
    /// Attacker client addresses, spread over the tasks.
    pub addresses: u8,
    /// The legitimate users' accounts (registered, not attacked), one per user, each logging
    /// in rightly every [`LEGIT_PAUSE`] (each login a new session, so an account's session
    /// cap bounds how long a run may be).
    pub legit_accounts: Vec<String>,
    /// Their password.
    pub password: String,
}

/// Answers, by kind.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// Requests sent.
    pub sent: u64,
    /// 201: logged in.
    pub created: u64,
    /// 401: wrong credentials (the password was checked).
    pub unauthorized: u64,
    /// 429: throttled before any hashing.
    pub throttled: u64,
    /// 503: the hashing queue was full.
    pub busy: u64,
    /// Any other status, or no answer.
    pub other: u64,
    /// The first "other" answer.
    pub first_other: Option<String>,
    /// Latencies of the 201 answers.
    pub created_latencies: Vec<Duration>,
}

impl Answers {
    fn count(&mut self, outcome: anyhow::Result<reqwest::StatusCode>, latency: Duration) {
        self.sent += 1;
        match outcome {
            Ok(status) => match status.as_u16() {
                201 => {
                    self.created += 1;
                    self.created_latencies.push(latency);
                }
                401 => self.unauthorized += 1,
                429 => self.throttled += 1,
                503 => self.busy += 1,
                _ => {
                    self.other += 1;
                    self.first_other.get_or_insert_with(|| format!("{status}"));
                }
            },
            Err(error) => {
                self.other += 1;
                self.first_other.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }

    fn merge(&mut self, other: Self) {
        self.sent += other.sent;
        self.created += other.created;
        self.unauthorized += other.unauthorized;
        self.throttled += other.throttled;
        self.busy += other.busy;
        self.other += other.other;
        if self.first_other.is_none() {
            self.first_other = other.first_other;
        }
        self.created_latencies.extend(other.created_latencies);
    }
}

/// What the flood did.
#[derive(Debug, Clone)]
pub struct FloodStats {
    /// The attackers' answers.
    pub flood: Answers,
    /// The legitimate logins' answers.
    pub legit: Answers,
    /// From the start to the stop signal.
    pub elapsed: Duration,
}

impl FloodStats {
    /// Attack requests per second.
    pub fn flood_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.flood.sent as f64 / secs
        } else {
            0.0
        }
    }
}

enum Role {
    Attacker,
    Legit,
}

/// A running flood; [`LoginFlood::stop`] ends it.
pub struct LoginFlood {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<(Role, Answers)>,
    start: Instant,
}

impl LoginFlood {
    /// Starts the attackers and the legitimate users against `gateway`.
    pub fn start(gateway: &Gateway, plan: FloodPlan) -> anyhow::Result<Self> {
        if plan.tasks == 0 || plan.accounts.is_empty() || plan.addresses == 0 {
            bail!("a flood needs at least one task, account and address");
        }
        let clients = (0..plan.addresses)
            .map(|i| gateway.bound_to(attacker_address(i)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // One CSR per account, reused by every attempt (an attacker need not make new ones).
        let csrs = plan
            .accounts
            .iter()
            .map(|account| gateway.csr(account, "flood"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for t in 0..plan.tasks as usize {
            let client = clients[t % clients.len()].clone();
            let account = plan.accounts[t % plan.accounts.len()].clone();
            let csr = csrs[t % csrs.len()].clone();
            let stop = stop.clone();
            // Each task's share of the rate, as a fixed tick (late ticks are not caught up).
            let period = (plan.rate > 0)
                .then(|| Duration::from_secs_f64(f64::from(plan.tasks) / f64::from(plan.rate)));
            tasks.spawn(async move {
                let mut answers = Answers::default();
                let mut tick = period.map(|p| {
                    let mut tick = tokio::time::interval(p);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick
                });
                while !stop.load(Ordering::Relaxed) {
                    if let Some(tick) = tick.as_mut() {
                        tick.tick().await;
                    }
                    let begin = Instant::now();
                    let outcome = client.login_status(&account, WRONG_PASSWORD, &csr).await;
                    answers.count(outcome, begin.elapsed());
                }
                (Role::Attacker, answers)
            });
        }
        let legit = gateway.bound_to(LEGIT_ADDRESS)?;
        for (u, account) in plan.legit_accounts.iter().enumerate() {
            let (client, stop) = (legit.clone(), stop.clone());
            let (account, password) = (account.clone(), plan.password.clone());
            tasks.spawn(async move {
                let mut answers = Answers::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let outcome = match client.csr(&account, &format!("legit-{u}-{n}")) {
                        Ok(csr) => {
                            let begin = Instant::now();
                            let outcome = client.login_status(&account, &password, &csr).await;
                            Some((outcome, begin.elapsed()))
                        }
                        Err(error) => {
                            answers.count(Err(error), Duration::ZERO);
                            None
                        }
                    };
                    if let Some((outcome, latency)) = outcome {
                        answers.count(outcome, latency);
                    }
                    tokio::time::sleep(LEGIT_PAUSE).await;
                }
                (Role::Legit, answers)
            });
        }
        Ok(Self {
            stop,
            tasks,
            start: Instant::now(),
        })
    }

    /// Stops every task (each finishes its request in flight) and returns the figures.
    pub async fn stop(mut self) -> anyhow::Result<FloodStats> {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.start.elapsed();
        let mut flood = Answers::default();
        let mut legit = Answers::default();
        while let Some(joined) = self.tasks.join_next().await {
            match joined.context("a flood task panicked")? {
                (Role::Attacker, answers) => flood.merge(answers),
                (Role::Legit, answers) => legit.merge(answers),
            }
        }
        Ok(FloodStats {
            flood,
            legit,
            elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_kind() {
        let mut answers = Answers::default();
        let ms = Duration::from_millis(1);
        answers.count(Ok(reqwest::StatusCode::UNAUTHORIZED), ms);
        answers.count(Ok(reqwest::StatusCode::TOO_MANY_REQUESTS), ms);
        answers.count(Ok(reqwest::StatusCode::TOO_MANY_REQUESTS), ms);
        answers.count(Ok(reqwest::StatusCode::SERVICE_UNAVAILABLE), ms);
        answers.count(Ok(reqwest::StatusCode::CREATED), ms * 7);
        answers.count(Ok(reqwest::StatusCode::INTERNAL_SERVER_ERROR), ms);
        answers.count(Err(anyhow::anyhow!("refused")), ms);
        let mut total = Answers::default();
        total.merge(answers);
        assert_eq!(total.sent, 7);
        assert_eq!(
            (
                total.unauthorized,
                total.throttled,
                total.busy,
                total.created
            ),
            (1, 2, 1, 1)
        );
        assert_eq!(total.other, 2);
        assert_eq!(
            total.first_other.as_deref(),
            Some("500 Internal Server Error")
        );
        assert_eq!(total.created_latencies, vec![ms * 7]);
        assert_eq!(attacker_address(0).to_string(), "127.0.1.1");
    }
}
