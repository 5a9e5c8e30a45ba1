//! The deployment under test, as separate processes of the release `polyproto` binary (the
//! shape of `tests/e2e/split.rs`, compose and Kubernetes): Redis, identity (replicas share a
//! SQLite file), session, discovery, two events replicas and the gateways, each on a free
//! loopback port, meeting over gRPC. The gateways get only their component credential.
//!
//! Gateways are started and stopped per measurement ([`Stack::start_gateways`]), so that each
//! starts with a fresh process and its resident memory is its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use p2_runtime::internal::{Component, InternalKey};

/// The key encryption key of the identity processes (fixed, so a `--state-dir` is reusable).
const KEK: &str = "6b656b206f6620746865207773206c6f61642062656e63682c206e6f74207365";
/// How long a process may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Free loopback port (bound and released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One child process; killed when dropped.
pub struct Process {
    /// What it is, for messages (`gateway-0`).
    pub name: String,
    /// `127.0.0.1:PORT` it listens on.
    pub listen: String,
    log: PathBuf,
    child: Child,
}

impl Process {
    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://` + its listen address.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails (with its log) when it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the stack is started with.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The `polyproto` binary.
    pub binary: PathBuf,
    /// `redis-server` to start when `redis_url` is none.
    pub redis_server: String,
    /// An existing Redis to use instead.
    pub redis_url: Option<String>,
    /// Where SQLite files live (kept when it is the `--state-dir`).
    pub data_dir: PathBuf,
    /// Where logs and Redis's files go (a temporary directory).
    pub run_dir: PathBuf,
    /// The home server's domain.
    pub domain: String,
    /// Identity processes (each hashes passwords on half the cores).
    pub identity_replicas: usize,
    /// `P2_LOG` of every process.
    pub log: String,
    /// Extra `KEY=VALUE` environment of the gateways.
    pub gateway_env: Vec<(String, String)>,
}

/// The running services (the gateways come and go).
pub struct Stack {
    options: StackOptions,
    /// The services' internal key.
    pub internal_key: InternalKey,
    /// The Redis URL every component shares.
    pub redis_url: String,
    /// Redis, when this stack started it.
    pub redis: Option<Process>,
    /// identity replicas, session, discovery, events replicas, in start order.
    pub services: Vec<Process>,
    /// The running gateways.
    pub gateways: Vec<Process>,
    session_metrics: String,
    http: reqwest::Client,
}

fn spawn(
    options: &StackOptions,
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Process> {
    let log = options.run_dir.join(format!("{name}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("P2_INTERNAL_KEY")
        .env_remove("P2_COMPONENT_CREDENTIAL")
        .env_remove("P2_REDIS_URL")
        .env("P2_LOG", &options.log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {} ({name})", program.display()))?;
    let listen = args
        .iter()
        .position(|a| a == "--listen" || a == "--port")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_default();
    Ok(Process {
        name: name.to_owned(),
        listen,
        log,
        child,
    })
}

impl Stack {
    /// Starts Redis (unless given) and every service, and waits until each gRPC port accepts.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let internal_key = InternalKey::generate();
        let (redis, redis_url) = match &options.redis_url {
            Some(url) => (None, url.clone()),
            None => {
                let port = free_port()?;
                let args: Vec<String> = [
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &options.run_dir.display().to_string(),
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                let mut process = spawn(
                    &options,
                    "redis",
                    Path::new(&options.redis_server),
                    &args,
                    &[],
                )
                .context("is redis-server installed? (apt-get install redis-server)")?;
                process.listen = format!("127.0.0.1:{port}");
                (Some(process), format!("redis://127.0.0.1:{port}/"))
            }
        };
        let mut stack = Self {
            internal_key,
            redis_url,
            redis,
            services: Vec::new(),
            gateways: Vec::new(),
            session_metrics: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            options,
        };
        if let Some(redis) = &stack.redis {
            let addr = redis.listen.clone();
            wait_tcp(&addr, "redis").await?;
        }
        let key = stack.internal_key.to_hex();
        let db = |name: &str| {
            format!(
                "sqlite://{}",
                stack.options.data_dir.join(format!("{name}.db")).display()
            )
        };
        let mut plan: Vec<(String, Vec<String>)> = Vec::new();
        let loopback = || -> anyhow::Result<String> { Ok(format!("127.0.0.1:{}", free_port()?)) };
        let identity: Vec<String> = (0..stack.options.identity_replicas.max(1))
            .map(|_| loopback())
            .collect::<anyhow::Result<_>>()?;
        let session = loopback()?;
        let discovery = loopback()?;
        let events = [loopback()?, loopback()?];
        let urls = |addrs: &[String]| {
            addrs
                .iter()
                .map(|a| format!("http://{a}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let common = |component: &str, listen: &str| -> Vec<String> {
            vec![
                component.to_owned(),
                "--listen".into(),
                listen.to_owned(),
                "--metrics-listen".into(),
                "off".into(),
            ]
        };
        for (i, listen) in identity.iter().enumerate() {
            let mut args = common("identity", listen);
            args.extend([
                "--database-url".into(),
                db("identity"),
                "--key-encryption-key".into(),
                KEK.into(),
                "--redis-url".into(),
                stack.redis_url.clone(),
                "--events-url".into(),
                urls(&events[..1]),
            ]);
            plan.push((format!("identity-{i}"), args));
        }
        let mut args = common("session", &session);
        args.extend([
            "--database-url".into(),
            db("session"),
            "--identity-url".into(),
            urls(&identity),
            "--redis-url".into(),
            stack.redis_url.clone(),
            "--events-url".into(),
            urls(&events[..1]),
        ]);
        // Its metrics tell when its outbox has drained.
        let session_metrics = loopback()?;
        args[4].clone_from(&session_metrics);
        plan.push(("session".into(), args));
        stack.session_metrics = session_metrics;
        let mut args = common("discovery", &discovery);
        args.extend([
            "--database-url".into(),
            db("discovery"),
            "--identity-url".into(),
            urls(&identity),
        ]);
        plan.push(("discovery".into(), args));
        for (i, listen) in events.iter().enumerate() {
            let mut args = common("events", listen);
            args.extend(["--redis-url".into(), stack.redis_url.clone()]);
            plan.push((format!("events-{i}"), args));
        }
        let env = vec![
            ("P2_DOMAIN".to_owned(), stack.options.domain.clone()),
            ("P2_INTERNAL_KEY".to_owned(), key),
        ];
        let binary = stack.options.binary.clone();
        for (name, args) in plan {
            let process = spawn(&stack.options, &name, &binary, &args, &env)?;
            stack.services.push(process);
        }
        for i in 0..stack.services.len() {
            let (addr, name) = (
                stack.services[i].listen.clone(),
                stack.services[i].name.clone(),
            );
            let ready = wait_tcp(&addr, &name).await;
            if ready.is_err() {
                stack.services[i].check_alive()?;
            }
            ready?;
        }
        Ok(stack)
    }

    fn service(&self, name: &str) -> anyhow::Result<&Process> {
        self.services
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no {name} process"))
    }

    fn urls_of(&self, prefix: &str) -> String {
        self.services
            .iter()
            .filter(|p| p.name.starts_with(prefix))
            .map(Process::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The gRPC URL of events replica `i`.
    pub fn events_url(&self, i: usize) -> anyhow::Result<String> {
        Ok(self.service(&format!("events-{i}"))?.url())
    }

    /// The session process's metrics text.
    pub async fn session_metrics(&self) -> anyhow::Result<String> {
        let metrics = &self.session_metrics;
        Ok(self
            .http
            .get(format!("http://{metrics}/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Starts `count` fresh gateways (after stopping the running ones): gateway `j` in front of
    /// every identity replica, session and discovery, and of events replica `j % 2`; all share
    /// Redis. Waits for each one's `/readyz`.
    pub async fn start_gateways(&mut self, count: usize) -> anyhow::Result<()> {
        for gateway in self.gateways.drain(..) {
            gateway.stop(Duration::from_secs(5));
        }
        let credential = self
            .internal_key
            .credential(Component::Gateway)
            .to_hex()
            .to_owned();
        for j in 0..count {
            let listen = format!("127.0.0.1:{}", free_port()?);
            let args: Vec<String> = vec![
                "gateway".into(),
                "--listen".into(),
                listen,
                "--metrics-listen".into(),
                "off".into(),
                "--identity-url".into(),
                self.urls_of("identity-"),
                "--session-url".into(),
                self.service("session")?.url(),
                "--discovery-url".into(),
                self.service("discovery")?.url(),
                "--events-url".into(),
                self.events_url(j % 2)?,
                "--redis-url".into(),
                self.redis_url.clone(),
            ];
            let mut env = vec![
                ("P2_DOMAIN".to_owned(), self.options.domain.clone()),
                ("P2_COMPONENT_CREDENTIAL".to_owned(), credential.clone()),
            ];
            env.extend(self.options.gateway_env.iter().cloned());
            let process = spawn(
                &self.options,
                &format!("gateway-{j}"),
                &self.options.binary,
                &args,
                &env,
            )?;
            self.gateways.push(process);
        }
        let start = Instant::now();
        for j in 0..self.gateways.len() {
            let url = format!("{}/readyz", self.gateways[j].url());
            loop {
                let ready = self.http.get(&url).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                self.gateways[j].check_alive()?;
                for service in &mut self.services {
                    service.check_alive()?;
                }
                if start.elapsed() > READY_TIMEOUT {
                    bail!(
                        "gateway-{j} was not ready within {READY_TIMEOUT:?}:\n{}",
                        self.gateways[j].log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Fails (with the log) when any process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for process in self
            .services
            .iter_mut()
            .chain(self.gateways.iter_mut())
            .chain(self.redis.iter_mut())
        {
            process.check_alive()?;
        }
        Ok(())
    }

    /// Stops every process (gateways first).
    pub fn stop(mut self) {
        for gateway in self.gateways.drain(..) {
            gateway.stop(Duration::from_secs(5));
        }
        for service in self.services.drain(..).rev() {
            service.stop(Duration::from_secs(5));
        }
        // Redis is killed on drop.
    }
}

async fn wait_tcp(addr: &str, name: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("{name} did not accept connections on {addr} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
