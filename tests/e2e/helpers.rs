//! The test harness: `spawn_stack()` starts every service and the gateway in-process on free
//! ports — with embedded SQLite storage, or with real PostgreSQL and Redis from the
//! environment that `scripts/test.sh` sets — and hands back an HTTP client. Dropping the
//! returned value shuts the stack down.

use std::net::SocketAddr;
use std::path::PathBuf;

use polyproto_server::stack::{self, Stack, StackConfig, Storage};

/// The domain every test stack serves.
pub const DOMAIN: &str = "p2.test";
/// A fixed key encryption key for stacks with external storage.
pub const TEST_KEK: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// Which storage a stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite files in a temporary directory, in-process stores.
    Sqlite,
    /// Fresh PostgreSQL databases and the test Redis.
    Postgres,
}

/// A running stack plus what a client needs.
pub struct TestStack {
    /// The stack (dropping it shuts everything down).
    pub stack: Option<Stack>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// How to start the same storage again.
    pub storage: Storage,
    /// Keeps the SQLite directory alive.
    pub _dir: Option<tempfile::TempDir>,
}

impl TestStack {
    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the stack and starts a new one on the same storage.
    pub async fn restart(&mut self) {
        if let Some(stack) = self.stack.take() {
            stack.stop().await.expect("stack stopped with an error");
        }
        let stack = stack::start(stack_config(self.storage.clone()))
            .await
            .expect("restart failed");
        self.base = format!("http://{}", stack.addr);
        self.stack = Some(stack);
    }
}

/// The test stack configuration for `storage` (fixed domain, [`TEST_KEK`] for external storage).
pub fn stack_config(storage: Storage) -> StackConfig {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = StackConfig::embedded(loopback, DOMAIN, &PathBuf::new());
    if matches!(storage, Storage::External { .. }) {
        config.identity.key_encryption_key = Some(TEST_KEK.to_owned().into());
    }
    config.storage = storage;
    config
}

/// The Redis URL from the environment; fails loudly when it is missing.
pub fn redis_url() -> String {
    std::env::var("P2_TEST_REDIS_URL")
        .expect("P2_TEST_REDIS_URL is not set: run the tests through scripts/test.sh")
}

/// Creates a fresh, empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database(label: &str) -> String {
    p2_runtime::storage::fresh_test_postgres_database(label)
        .await
        .unwrap()
}

/// Starts a stack on `backend`.
pub async fn spawn_stack(backend: Backend) -> TestStack {
    spawn_stack_for(backend, DOMAIN, |_| {}).await
}

/// Starts a stack on `backend` serving `domain`, its configuration changed by `configure`.
pub async fn spawn_stack_for(
    backend: Backend,
    domain: &str,
    configure: impl FnOnce(&mut StackConfig),
) -> TestStack {
    p2_runtime::telemetry::init_for_tests();
    let (storage, dir) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            (
                Storage::Embedded {
                    data_dir: dir.path().to_owned(),
                },
                Some(dir),
            )
        }
        Backend::Postgres => (
            Storage::External {
                identity_database_url: fresh_postgres_database("identity").await,
                session_database_url: fresh_postgres_database("session").await,
                discovery_database_url: fresh_postgres_database("discovery").await,
                redis_url: redis_url(),
            },
            None,
        ),
    };
    let mut config = stack_config(storage.clone());
    config.identity = p2_identity::IdentityOptions {
        domain: domain.to_owned(),
        ..config.identity
    };
    configure(&mut config);
    let stack = stack::start(config)
        .await
        .expect("the stack failed to start");
    TestStack {
        base: format!("http://{}", stack.addr),
        stack: Some(stack),
        http: reqwest::Client::new(),
        storage,
        _dir: dir,
    }
}

/// Current UNIX time.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts that `response` is an RFC 9457 problem with `status`, and returns its detail.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string());
    assert!(body["type"].is_string());
    body["detail"].as_str().expect("detail").to_owned()
}

/// Declares one test per backend: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::spawn_stack($crate::helpers::Backend::Sqlite).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::spawn_stack($crate::helpers::Backend::Postgres).await).await;
                }
            }
        )*
    };
}

/// A logged-in session of a test actor.
#[allow(dead_code, reason = "fields used by some test modules only")]
pub struct TestSession {
    /// `local@domain`.
    pub fid: String,
    /// Bearer token.
    pub token: String,
    /// Session ID (the CSR's uniqueIdentifier).
    pub session_id: String,
    /// The actor's password.
    pub password: String,
    /// The session's private key.
    pub key: p2_model::SigningKey,
    /// The session's ID-Cert.
    pub id_cert_pem: String,
}

/// The password every test actor gets.
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// `POST /.p2/auth/v1/register`.
pub async fn register(stack: &TestStack, local_name: &str, password: &str) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/.p2/auth/v1/register"))
        .json(&serde_json::json!({ "local_name": local_name, "password": password }))
        .send()
        .await
        .unwrap()
}

/// A CSR for `local_name@DOMAIN` and `session_id`, with a fresh key.
pub fn csr_for(local_name: &str, session_id: &str) -> (String, p2_model::SigningKey) {
    let key = p2_model::generate_signing_key();
    let fid = p2_model::FederationId::new(local_name, DOMAIN).unwrap();
    let sid = p2_model::SessionId::parse(session_id).unwrap();
    (p2_model::build_csr(&key, &fid, &sid).unwrap(), key)
}

/// `POST /.p2/auth/v1/session` with a CSR.
pub async fn login_request(
    stack: &TestStack,
    local_name: &str,
    password: &str,
    csr: &str,
) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/.p2/auth/v1/session"))
        .json(&serde_json::json!({ "local_name": local_name, "password": password, "csr": csr }))
        .send()
        .await
        .unwrap()
}

/// Logs `local_name` in with a new session `session_id`.
pub async fn login(stack: &TestStack, local_name: &str, session_id: &str) -> TestSession {
    let (csr, key) = csr_for(local_name, session_id);
    let response = login_request(stack, local_name, TEST_PASSWORD, &csr).await;
    assert_eq!(response.status(), 201, "login of {local_name} failed");
    let body: serde_json::Value = response.json().await.unwrap();
    TestSession {
        fid: format!("{local_name}@{DOMAIN}"),
        token: body["token"].as_str().unwrap().to_owned(),
        session_id: session_id.to_owned(),
        password: TEST_PASSWORD.to_owned(),
        key,
        id_cert_pem: body["id_cert"].as_str().unwrap().to_owned(),
    }
}

/// Registers `local_name` with [`TEST_PASSWORD`] and logs in with session `s1`.
pub async fn register_and_login(stack: &TestStack, local_name: &str) -> TestSession {
    let response = register(stack, local_name, TEST_PASSWORD).await;
    assert_eq!(
        response.status(),
        201,
        "registration of {local_name} failed"
    );
    login(stack, local_name, "s1").await
}

/// The `polyproto admin` storage flags for the running stack's storage.
pub fn admin_storage(stack: &TestStack) -> polyproto_server::admin::AdminStorage {
    use polyproto_server::admin::AdminStorage;
    match &stack.storage {
        Storage::Embedded { data_dir } => AdminStorage {
            data_dir: data_dir.clone(),
            domain: DOMAIN.into(),
            database_url: None,
            session_database_url: None,
            key_encryption_key: None,
        },
        Storage::External {
            identity_database_url,
            session_database_url,
            ..
        } => AdminStorage {
            data_dir: std::env::temp_dir(),
            domain: DOMAIN.into(),
            database_url: Some(identity_database_url.clone()),
            session_database_url: Some(session_database_url.clone()),
            key_encryption_key: Some(TEST_KEK.to_owned().into()),
        },
    }
}

/// A further gateway of our own in front of `stack`'s services (as a replica would be), with
/// `options`, counting rate limits in `redis` = (URL, key prefix) or in process, served on a
/// free port until the stack stops. Returns its state and base URL.
pub async fn own_gateway(
    stack: &TestStack,
    options: p2_gateway::GatewayOptions,
    redis: Option<(String, String)>,
) -> (p2_gateway::AppState, String) {
    let running = stack.stack.as_ref().expect("a running stack");
    let grpc = running.grpc_addrs;
    let url = |i: usize| format!("http://{}", grpc[i]);
    let (redis_url, redis_prefix) = match redis {
        Some((url, prefix)) => (Some(url), prefix),
        None => (None, p2_gateway::ratelimit::DEFAULT_REDIS_PREFIX.to_owned()),
    };
    let config = p2_gateway::GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        options,
        identity_url: url(0),
        session_url: url(1),
        discovery_url: url(2),
        events_url: url(3),
        token_cache_ms: 0,
        internal: p2_runtime::internal::InternalKeyConfig::with_key(&running.internal_key),
        component_credential: None,
        redis_url,
        redis_prefix,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let state = p2_gateway::AppState::new(&config, addr).unwrap();
    state.check_backends().await.unwrap();
    tokio::spawn(p2_gateway::serve(
        state.clone(),
        listener,
        running.shutdown_token(),
    ));
    (state, format!("http://{addr}"))
}
