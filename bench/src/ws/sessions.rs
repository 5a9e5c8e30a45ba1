//! The sessions the connections identify with: actors registered and logged in through the
//! gateway's HTTP API (`POST /.p2/auth/v1/register`, `POST /.p2/auth/v1/session` with an
//! ID-CSR), several sessions per actor. Every registration and every login costs one Argon2id
//! hash in an identity process (there is no cheaper path: `POST /idcert` needs the password
//! too), so they run in parallel over several identity replicas (each hashes on half the
//! cores) and, with `--state-dir`, are kept for the next run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::task::JoinSet;

/// Password of every bench actor.
pub const PASSWORD: &str = "ws load bench password";

/// One logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The actor's federation ID.
    pub fid: String,
    /// The session ID.
    pub session_id: String,
    /// The bearer token the connection identifies with.
    pub token: String,
}

/// How long setup took, and what it did.
#[derive(Debug, Default, Clone)]
pub struct SetupTimes {
    /// Sessions reused from the state directory.
    pub reused: usize,
    /// Actors registered.
    pub registered: usize,
    /// Time the registrations took.
    pub register: Duration,
    /// Sessions logged in.
    pub logged_in: usize,
    /// Time the logins took.
    pub login: Duration,
    /// Time until the session service's outbox had delivered its rows (OpenSession, op 3).
    pub outbox_drain: Duration,
}

/// Name of the file of sessions in a state directory.
const SESSIONS_FILE: &str = "sessions.tsv";

/// The sessions saved in `dir`, if any (lines `fid \t session_id \t token`).
pub fn load(dir: &Path) -> anyhow::Result<Vec<Session>> {
    let path = dir.join(SESSIONS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.split('\t');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(fid), Some(session_id), Some(token)) => Ok(Session {
                    fid: fid.to_owned(),
                    session_id: session_id.to_owned(),
                    token: token.to_owned(),
                }),
                _ => bail!("{}: bad line {line:?}", path.display()),
            }
        })
        .collect()
}

/// Saves `sessions` in `dir`.
pub fn save(dir: &Path, sessions: &[Session]) -> anyhow::Result<()> {
    let text: String = sessions
        .iter()
        .map(|s| format!("{}\t{}\t{}\n", s.fid, s.session_id, s.token))
        .collect();
    std::fs::write(dir.join(SESSIONS_FILE), text).context("cannot save the sessions")
}

/// Local name of bench actor `i`.
fn actor_name(i: usize) -> String {
    format!("ws{i}")
}

/// Registers the actors and logs in the sessions that `have` lacks to reach `count`
/// (`per_actor` sessions per actor), `concurrency` requests at a time.
pub async fn create(
    base: &str,
    domain: &str,
    mut have: Vec<Session>,
    count: usize,
    per_actor: usize,
    concurrency: usize,
    times: &mut SetupTimes,
) -> anyhow::Result<Vec<Session>> {
    times.reused = have.len().min(count);
    if have.len() >= count {
        have.truncate(count);
        return Ok(have);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let per_actor = per_actor.max(1);
    let first = have.len();
    // New actors for the new sessions (a saved set always ends with a whole actor).
    let first_actor = first.div_ceil(per_actor);
    let actors = count.div_ceil(per_actor) - first_actor;
    crate::progress(&format!(
        "registering {actors} actors ({per_actor} sessions each), {concurrency} at a time"
    ));
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, base, next) = (http.clone(), base.to_owned(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= actors {
                    return anyhow::Ok(Vec::new());
                }
                register(&http, &base, &actor_name(first_actor + i)).await?;
            }
        });
    }
    join(&mut tasks).await.context("registering")?;
    times.registered = actors;
    times.register = started.elapsed();

    let wanted = count - first;
    crate::progress(&format!(
        "logging in {wanted} sessions, {concurrency} at a time"
    ));
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    // A run tag in every session ID: a run that stopped before saving its sessions left
    // theirs behind (valid certs), which a repeated ID would collide with.
    let tag = p2_runtime::unix_now() % 1_000_000;
    for _ in 0..concurrency.max(1) {
        let (http, base, domain, next) = (
            http.clone(),
            base.to_owned(),
            domain.to_owned(),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= wanted {
                    return anyhow::Ok(made);
                }
                let actor = first_actor + i / per_actor;
                let session_id = format!("ws{actor}-{}-{tag}", i % per_actor);
                made.push((
                    i,
                    login(&http, &base, &domain, &actor_name(actor), &session_id).await?,
                ));
                if (i + 1) % 1000 == 0 {
                    crate::progress(&format!("  {} sessions", i + 1));
                }
            }
        });
    }
    let mut made = join(&mut tasks).await.context("logging in")?;
    made.sort_by_key(|(i, _)| *i);
    times.logged_in = made.len();
    times.login = started.elapsed();
    have.extend(made.into_iter().map(|(_, s)| s));
    Ok(have)
}

async fn join<T: 'static>(tasks: &mut JoinSet<anyhow::Result<Vec<T>>>) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(items) => all.extend(items),
            Err(error) => {
                first_error.get_or_insert(error);
                tasks.abort_all();
            }
        }
    }
    first_error.map_or(Ok(all), Err)
}

/// Retries `POST` while the server answers 503 (its hashing queue is full) or 429.
async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, String)> {
    let mut backoff = Duration::from_millis(50);
    for _ in 0..50 {
        let response = http.post(url).json(body).send().await;
        let (status, text) = match response {
            Ok(response) => (response.status().as_u16(), response.text().await?),
            Err(error) => (0, format!("{error:#}")),
        };
        if !matches!(status, 0 | 429 | 503) {
            return Ok((status, text));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    bail!("POST {url}: still refused after 50 attempts")
}

async fn register(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<()> {
    let url = format!("{base}/.p2/auth/v1/register");
    let (status, text) = post(
        http,
        &url,
        &json!({ "local_name": name, "password": PASSWORD }),
    )
    .await?;
    // 409: registered by an earlier run whose sessions were not all saved.
    if status != 201 && status != 409 {
        bail!("register {name} answered {status}: {text}");
    }
    Ok(())
}

async fn login(
    http: &reqwest::Client,
    base: &str,
    domain: &str,
    name: &str,
    session_id: &str,
) -> anyhow::Result<Session> {
    let key = p2_model::generate_signing_key();
    let fid = p2_model::FederationId::new(name, domain)?;
    let sid = p2_model::SessionId::parse(session_id)?;
    let csr = p2_model::build_csr(&key, &fid, &sid)?;
    let url = format!("{base}/.p2/auth/v1/session");
    let (status, text) = post(
        http,
        &url,
        &json!({ "local_name": name, "password": PASSWORD, "csr": csr }),
    )
    .await?;
    if status != 201 {
        bail!("login {name} / {session_id} answered {status}: {text}");
    }
    let answer: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("login answered {text}"))?;
    let token = answer["token"]
        .as_str()
        .with_context(|| format!("login answered without a token: {text}"))?;
    Ok(Session {
        fid: fid.to_string(),
        session_id: session_id.to_owned(),
        token: token.to_owned(),
    })
}
