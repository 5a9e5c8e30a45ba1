//! [`SplitStack`]: the deployment shape of compose and Kubernetes in a test — every component
//! its own process of the `polyproto` binary, on free loopback ports, meeting over gRPC.
//!
//! ```ignore
//! let stack = SplitStack::builder()
//!     .domain("split.test")
//!     .replicas(Component::Session, 2)
//!     .env_for(Component::Gateway, "P2_RATE_LIMIT_PUBLIC", "0")
//!     .start()
//!     .await;
//! let response = stack.http().get(stack.url("/readyz")).send().await?;
//! let text = stack.scrape(Component::Session, 1).await;
//! ```
//!
//! What it sets up:
//! - **Storage**: SQLite files in a temporary directory (one per service; replicas of a
//!   service share it), or fresh PostgreSQL databases ([`SplitStackBuilder::postgres`]);
//!   Redis only when asked ([`SplitStackBuilder::redis`]: identity, session, events and the
//!   gateway get `--redis-url`).
//! - **Keys**: a fresh internal key for the services; the gateway holds only its component
//!   credential (as in the Kubernetes base) unless [`SplitStackBuilder::gateway_with_internal_key`].
//! - **Addresses**: each process its own gRPC (or HTTP) port and, unless
//!   [`SplitStackBuilder::metrics`] turned it off, its own metrics port. Every caller gets the
//!   URLs of all replicas of a service, comma-separated (`--session-url http://a,http://b`).
//! - **Readiness**: [`SplitStackBuilder::start`] returns once the gateway's `/readyz` answers
//!   200 (every upstream SERVING) and every metrics listener answers; a process that exits
//!   first fails the test with its log.
//! - **Logs**: each process's stderr goes to a file ([`SplitStack::log`]); with `TEST_LOG=1`
//!   to the test's stderr instead, at `info`.
//!
//! Dropping the stack kills every process (SIGKILL); [`SplitStack::terminate`] stops one
//! gracefully (SIGTERM) first, e.g. to let it flush its traces.

#![allow(dead_code, reason = "a harness: each test uses part of it")]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `polyproto` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_polyproto");
/// The key encryption key every identity process of a split stack gets.
pub const SPLIT_KEK: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// How long [`SplitStackBuilder::start`] waits for readiness by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A component of the deployment: the `polyproto` subcommand that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// `polyproto identity`.
    Identity,
    /// `polyproto session`.
    Session,
    /// `polyproto discovery`.
    Discovery,
    /// `polyproto events`.
    Events,
    /// `polyproto gateway` (HTTP).
    Gateway,
}

impl Component {
    /// Every component, in start order (callees first).
    pub const ALL: [Self; 5] = [
        Self::Identity,
        Self::Session,
        Self::Discovery,
        Self::Events,
        Self::Gateway,
    ];

    /// The subcommand (and the component's name in labels and credentials).
    pub fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Session => "session",
            Self::Discovery => "discovery",
            Self::Events => "events",
            Self::Gateway => "gateway",
        }
    }

    fn has_database(self) -> bool {
        matches!(self, Self::Identity | Self::Session | Self::Discovery)
    }

    fn uses_redis(self) -> bool {
        matches!(
            self,
            Self::Identity | Self::Session | Self::Events | Self::Gateway
        )
    }
}

/// Free loopback port (bound and released: another process may take it in between, which
/// the readiness wait then reports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where the services keep their data.
#[derive(Debug, Clone)]
enum SplitStorage {
    Sqlite,
    Postgres,
}

/// Builds a [`SplitStack`]; every setting has a default, so `SplitStack::builder().start()`
/// runs the plain deployment.
#[derive(Debug, Clone)]
pub struct SplitStackBuilder {
    domain: String,
    env_all: Vec<(String, String)>,
    env: HashMap<Component, Vec<(String, String)>>,
    args: HashMap<Component, Vec<String>>,
    replicas: HashMap<Component, usize>,
    storage: SplitStorage,
    database_urls: HashMap<Component, String>,
    redis_url: Option<String>,
    metrics: bool,
    gateway_with_internal_key: bool,
    ready_timeout: Duration,
}

impl Default for SplitStackBuilder {
    fn default() -> Self {
        Self {
            domain: "split.test".to_owned(),
            env_all: Vec::new(),
            env: HashMap::new(),
            args: HashMap::new(),
            replicas: HashMap::new(),
            storage: SplitStorage::Sqlite,
            database_urls: HashMap::new(),
            redis_url: None,
            metrics: true,
            gateway_with_internal_key: false,
            ready_timeout: READY_TIMEOUT,
        }
    }
}

impl SplitStackBuilder {
    /// The home server's domain (`P2_DOMAIN` of every process; default `split.test`).
    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_owned();
        self
    }

    /// Sets `key=value` in the environment of every process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env_all.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets `key=value` in the environment of every process of `component` (after the
    /// stack's own variables and [`SplitStackBuilder::env`], so it wins).
    pub fn env_for(mut self, component: Component, key: &str, value: &str) -> Self {
        self.env
            .entry(component)
            .or_default()
            .push((key.to_owned(), value.to_owned()));
        self
    }

    /// Appends `args` to the command line of every process of `component`.
    pub fn args_for<I, A>(mut self, component: Component, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.args
            .entry(component)
            .or_default()
            .extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs `count` (at least 1) processes of `component`, each with its own ports; callers
    /// get all their URLs, comma-separated. Replicas of a service share its database.
    pub fn replicas(mut self, component: Component, count: usize) -> Self {
        self.replicas.insert(component, count.max(1));
        self
    }

    /// Fresh PostgreSQL databases (one per service) on the server of `P2_TEST_POSTGRES_URL`;
    /// the start fails when it is not set.
    pub fn postgres(mut self) -> Self {
        self.storage = SplitStorage::Postgres;
        self
    }

    /// `url` as the database of `component` (instead of a fresh one).
    pub fn database_url(mut self, component: Component, url: &str) -> Self {
        self.database_urls.insert(component, url.to_owned());
        self
    }

    /// Redis at `url` for identity (throttle), session (challenges), events and the gateway
    /// (rate limits).
    pub fn redis(mut self, url: &str) -> Self {
        self.redis_url = Some(url.to_owned());
        self
    }

    /// Whether every process serves metrics on a port of its own (default: yes); off passes
    /// `--metrics-listen off`.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Gives the gateway the internal key instead of only its component credential.
    pub fn gateway_with_internal_key(mut self) -> Self {
        self.gateway_with_internal_key = true;
        self
    }

    /// How long [`SplitStackBuilder::start`] waits for readiness (default [`READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    fn count(&self, component: Component) -> usize {
        self.replicas.get(&component).copied().unwrap_or(1)
    }

    /// Starts every process and waits until the stack is ready (see the module docs).
    pub async fn start(self) -> SplitStack {
        let dir = tempfile::tempdir().unwrap();
        let internal_key = p2_runtime::internal::InternalKey::generate();
        let gateway_credential = internal_key
            .credential(p2_runtime::internal::Component::Gateway)
            .to_hex()
            .to_owned();
        let mut database_urls = self.database_urls.clone();
        for component in Component::ALL.into_iter().filter(|c| c.has_database()) {
            if database_urls.contains_key(&component) {
                continue;
            }
            let url = match self.storage {
                SplitStorage::Sqlite => format!(
                    "sqlite://{}",
                    dir.path()
                        .join(format!("{}.db", component.name()))
                        .display()
                ),
                SplitStorage::Postgres => {
                    p2_runtime::storage::fresh_test_postgres_database(component.name())
                        .await
                        .unwrap()
                }
            };
            database_urls.insert(component, url);
        }
        // Every address first: callers need their callees' URLs on their command lines.
        let mut planned = Vec::new();
        for component in Component::ALL {
            for replica in 0..self.count(component) {
                let listen = format!("127.0.0.1:{}", free_port());
                let metrics = self.metrics.then(|| format!("127.0.0.1:{}", free_port()));
                planned.push((component, replica, listen, metrics));
            }
        }
        let urls = |component: Component| {
            planned
                .iter()
                .filter(|(c, ..)| *c == component)
                .map(|(_, _, listen, _)| format!("http://{listen}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let test_log = std::env::var_os("TEST_LOG").is_some();
        let mut processes = Vec::new();
        for (component, replica, listen, metrics) in &planned {
            let (component, replica) = (*component, *replica);
            let mut args: Vec<String> = vec![
                component.name().into(),
                "--listen".into(),
                listen.clone(),
                "--metrics-listen".into(),
                metrics.clone().unwrap_or_else(|| "off".into()),
            ];
            if let Some(url) = database_urls.get(&component) {
                args.extend(["--database-url".into(), url.clone()]);
            }
            if let (Some(url), true) = (&self.redis_url, component.uses_redis()) {
                args.extend(["--redis-url".into(), url.clone()]);
            }
            match component {
                Component::Identity => {
                    args.extend(["--key-encryption-key".into(), SPLIT_KEK.into()]);
                    args.extend(["--events-url".into(), urls(Component::Events)]);
                }
                Component::Session => {
                    args.extend(["--identity-url".into(), urls(Component::Identity)]);
                    args.extend(["--events-url".into(), urls(Component::Events)]);
                }
                Component::Discovery => {
                    args.extend(["--identity-url".into(), urls(Component::Identity)]);
                }
                Component::Events => {}
                Component::Gateway => {
                    for (flag, callee) in [
                        ("--identity-url", Component::Identity),
                        ("--session-url", Component::Session),
                        ("--discovery-url", Component::Discovery),
                        ("--events-url", Component::Events),
                    ] {
                        args.extend([flag.into(), urls(callee)]);
                    }
                }
            }
            args.extend(self.args.get(&component).cloned().unwrap_or_default());
            let mut env = vec![("P2_DOMAIN".to_owned(), self.domain.clone())];
            if component == Component::Gateway && !self.gateway_with_internal_key {
                env.push((
                    "P2_COMPONENT_CREDENTIAL".to_owned(),
                    gateway_credential.clone(),
                ));
            } else {
                env.push(("P2_INTERNAL_KEY".to_owned(), internal_key.to_hex()));
            }
            env.extend(self.env_all.iter().cloned());
            env.extend(self.env.get(&component).cloned().unwrap_or_default());
            let log = dir
                .path()
                .join(format!("{}-{replica}.log", component.name()));
            let child = spawn(&args, &env, &log, test_log);
            processes.push(Process {
                component,
                replica,
                listen: listen.clone(),
                metrics: metrics.clone(),
                log,
                child: Some(child),
                command: (args, env),
            });
        }
        let mut stack = SplitStack {
            processes,
            http: reqwest::Client::new(),
            internal_key: internal_key.to_hex(),
            gateway_credential,
            domain: self.domain.clone(),
            env_all: self.env_all.clone(),
            dir,
        };
        stack.wait_ready(self.ready_timeout).await;
        stack
    }
}

fn spawn(
    args: &[String],
    env: &[(String, String)],
    log: &PathBuf,
    test_log: bool,
) -> std::process::Child {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("P2_INTERNAL_KEY")
        .env_remove("P2_COMPONENT_CREDENTIAL")
        .env("P2_LOG", if test_log { "info" } else { "warn" })
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if test_log {
        command.stderr(Stdio::inherit());
    } else {
        command.stderr(std::fs::File::create(log).unwrap());
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().unwrap()
}

/// One process of a [`SplitStack`].
#[derive(Debug)]
pub struct Process {
    /// What it runs.
    pub component: Component,
    /// Which replica of its component (from 0).
    pub replica: usize,
    /// Its `--listen` address (`127.0.0.1:PORT`).
    pub listen: String,
    /// Its metrics address, if it serves metrics.
    pub metrics: Option<String>,
    /// Its stderr (unless `TEST_LOG` is set).
    pub log: PathBuf,
    child: Option<std::process::Child>,
    /// Its arguments and environment, to start it again.
    command: (Vec<String>, Vec<(String, String)>),
}

impl Process {
    /// `http://` + its `--listen` address: the gRPC URL of a service, the base URL of a
    /// gateway.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `http://ADDR/metrics`, if it serves metrics.
    pub fn metrics_url(&self) -> Option<String> {
        self.metrics
            .as_ref()
            .map(|addr| format!("http://{addr}/metrics"))
    }

    /// Its exit status, if it has exited (or was stopped).
    pub fn exited(&mut self) -> Option<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().map(Some),
            None => Some(None),
        }
    }

    /// Its log so far (empty with `TEST_LOG`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most `timeout`, then SIGKILL) for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running split deployment; dropping it kills every process. See the module docs.
pub struct SplitStack {
    processes: Vec<Process>,
    http: reqwest::Client,
    internal_key: String,
    gateway_credential: String,
    domain: String,
    env_all: Vec<(String, String)>,
    // Last: the processes die before their files go.
    dir: tempfile::TempDir,
}

impl SplitStack {
    /// A builder with every default (SQLite, one replica each, metrics on).
    pub fn builder() -> SplitStackBuilder {
        SplitStackBuilder::default()
    }

    /// The gateway's base URL (its first replica): `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        self.process(Component::Gateway, 0).url()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// An HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The home server's domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The services' internal key (hex).
    pub fn internal_key(&self) -> &str {
        &self.internal_key
    }

    /// The gateway's component credential (hex), derived from the internal key.
    pub fn gateway_credential(&self) -> &str {
        &self.gateway_credential
    }

    /// Every process, in start order.
    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    /// Replica `replica` of `component`.
    pub fn process(&self, component: Component, replica: usize) -> &Process {
        self.processes
            .iter()
            .find(|p| p.component == component && p.replica == replica)
            .unwrap_or_else(|| panic!("no replica {replica} of {}", component.name()))
    }

    /// Replica `replica` of `component`, to stop it.
    pub fn process_mut(&mut self, component: Component, replica: usize) -> &mut Process {
        self.processes
            .iter_mut()
            .find(|p| p.component == component && p.replica == replica)
            .unwrap_or_else(|| panic!("no replica {replica} of {}", component.name()))
    }

    /// The gRPC URL of replica `replica` of a service (`http://127.0.0.1:PORT`).
    pub fn grpc_url(&self, component: Component, replica: usize) -> String {
        self.process(component, replica).url()
    }

    /// The gRPC URLs of every replica of a service.
    pub fn grpc_urls(&self, component: Component) -> Vec<String> {
        self.processes
            .iter()
            .filter(|p| p.component == component)
            .map(Process::url)
            .collect()
    }

    /// The metrics URL (`http://127.0.0.1:PORT/metrics`) of replica `replica` of `component`.
    pub fn metrics_url(&self, component: Component, replica: usize) -> String {
        self.process(component, replica)
            .metrics_url()
            .expect("this stack was started without metrics")
    }

    /// The metrics text of replica `replica` of `component` (asserts a 200 in the Prometheus
    /// text format).
    pub async fn scrape(&self, component: Component, replica: usize) -> String {
        let response = self
            .http
            .get(self.metrics_url(component, replica))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{} metrics", component.name());
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        response.text().await.unwrap()
    }

    /// The log of replica `replica` of `component` so far.
    pub fn log(&self, component: Component, replica: usize) -> String {
        self.process(component, replica).log_text()
    }

    /// Stops replica `replica` of `component` with SIGTERM (graceful: it drains and flushes),
    /// waiting at most `timeout` before SIGKILL.
    pub fn terminate(
        &mut self,
        component: Component,
        replica: usize,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        self.process_mut(component, replica).terminate(timeout)
    }

    /// Starts replica `replica` of `component` again, as it was started (killing it first if
    /// it still runs), its log going on in `<log>.restarted`; does not wait for it.
    pub fn restart(&mut self, component: Component, replica: usize) {
        let process = self.process_mut(component, replica);
        process.kill();
        process.log.set_extension("restarted.log");
        let (args, env) = &process.command;
        let child = spawn(
            args,
            env,
            &process.log,
            std::env::var_os("TEST_LOG").is_some(),
        );
        process.child = Some(child);
    }

    /// Starts one more process of the binary — `polyproto <args>`, with the stack's domain
    /// and [`SplitStackBuilder::env`] variables plus `env`, no key, no metrics listener
    /// unless `args` name one — without waiting for it. Killed when dropped.
    pub fn spawn_extra(
        &self,
        component: Component,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let listen_at = args.iter().position(|a| *a == "--listen");
        let listen = listen_at
            .and_then(|i| args.get(i + 1))
            .map_or_else(String::new, |addr| (*addr).to_owned());
        let mut all: Vec<String> = vec![component.name().into()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        if !args.contains(&"--metrics-listen") {
            all.extend(["--metrics-listen".into(), "off".into()]);
        }
        let mut vars = vec![("P2_DOMAIN".to_owned(), self.domain.clone())];
        vars.extend(self.env_all.iter().cloned());
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let extra = self.processes.len() + 100;
        let log = self
            .dir
            .path()
            .join(format!("{}-extra-{extra}.log", component.name()));
        let child = spawn(&all, &vars, &log, std::env::var_os("TEST_LOG").is_some());
        Process {
            component,
            replica: extra,
            listen,
            metrics: None,
            log,
            child: Some(child),
            command: (all, vars),
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        let mut pending: Vec<String> = vec![format!("{}/readyz", self.base())];
        pending.extend(self.processes.iter().filter_map(Process::metrics_url));
        while !pending.is_empty() {
            let mut still = Vec::new();
            for url in pending {
                let ready = self.http.get(&url).send().await;
                if !ready.is_ok_and(|r| r.status().is_success()) {
                    still.push(url);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            for process in &mut self.processes {
                let exited = process.exited().is_some();
                assert!(
                    !exited,
                    "{} replica {} exited during start-up:\n{}",
                    process.component.name(),
                    process.replica,
                    process.log_text()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "the split stack was not ready within {timeout:?}; waiting for {pending:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every process's log, labelled, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| {
                format!(
                    "--- {} replica {} ---\n{}",
                    p.component.name(),
                    p.replica,
                    p.log_text()
                )
            })
            .collect()
    }
}

/// The password [`register_and_login`] gives its actors.
pub const PASSWORD: &str = "correct horse battery staple";

/// Registers `local_name` (password [`PASSWORD`]) at the gateway `base` of `domain` and logs
/// in with a fresh key as session `session_id`; asserts both answers (201) and returns the
/// Bearer token.
pub async fn register_and_login(
    http: &reqwest::Client,
    base: &str,
    domain: &str,
    local_name: &str,
    session_id: &str,
) -> String {
    let register = http
        .post(format!("{base}/.p2/auth/v1/register"))
        .json(&serde_json::json!({"local_name": local_name, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201, "register {local_name}");
    let key = p2_model::generate_signing_key();
    let fid = p2_model::FederationId::new(local_name, domain).unwrap();
    let sid = p2_model::SessionId::parse(session_id).unwrap();
    let csr = p2_model::build_csr(&key, &fid, &sid).unwrap();
    let login = http
        .post(format!("{base}/.p2/auth/v1/session"))
        .json(&serde_json::json!({"local_name": local_name, "password": PASSWORD, "csr": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 201, "log in {local_name}");
    let body: serde_json::Value = login.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

impl SplitStack {
    /// [`register_and_login`] at this stack's gateway.
    pub async fn register_and_login(&self, local_name: &str, session_id: &str) -> String {
        register_and_login(
            self.http(),
            &self.base(),
            self.domain(),
            local_name,
            session_id,
        )
        .await
    }
}

impl SplitStack {
    /// The base URL of gateway replica `replica` (`http://127.0.0.1:PORT`); [`SplitStack::base`]
    /// is replica 0.
    pub fn gateway_base(&self, replica: usize) -> String {
        self.process(Component::Gateway, replica).url()
    }

    /// Waits until gateway replica `replica` answers `/readyz` with 200 ([`SplitStackBuilder::start`]
    /// waits for replica 0 only); fails the test with every log after `timeout`.
    pub async fn wait_gateway_ready(&self, replica: usize, timeout: Duration) {
        let url = format!("{}/readyz", self.gateway_base(replica));
        let start = Instant::now();
        loop {
            let ready = self.http.get(&url).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "gateway replica {replica} was not ready within {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of the samples of `metric` in the metrics of replica `replica` of `component`
    /// whose line contains every one of `labels` (e.g. `method="RecordDelivered"`).
    pub async fn metric_sum(
        &self,
        component: Component,
        replica: usize,
        metric: &str,
        labels: &[&str],
    ) -> f64 {
        self.scrape(component, replica)
            .await
            .lines()
            .filter(|line| line.starts_with(metric) && labels.iter().all(|l| line.contains(l)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
