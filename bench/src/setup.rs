//! What the measurements run against: the bare baseline server, actors, sessions, services,
//! and the background login load.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Path the baseline server answers on.
pub const BASELINE_PATH: &str = "/baseline";

/// Starts the bare axum server: one route answering a fixed body with a fixed content type,
/// nothing else (no middleware, no gRPC, no storage).
pub async fn start_baseline(
    body: Bytes,
    content_type: HeaderValue,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let app = Router::new().route(
        BASELINE_PATH,
        get(move || {
            let body = body.clone();
            let content_type = content_type.clone();
            async move { ([(header::CONTENT_TYPE, content_type)], body) }
        }),
    );
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot bind the baseline server")?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("baseline server stopped: {error}");
        }
    });
    Ok((addr, handle))
}

/// The configuration of a gateway in front of the stack's services at `grpc_addrs` (identity,
/// session, discovery, events), as `polyproto_server::stack::start` builds its own: in-memory
/// internal key, no Redis.
pub fn gateway_config(
    grpc_addrs: [SocketAddr; 4],
    internal_key: &p2_runtime::internal::InternalKey,
    options: p2_gateway::GatewayOptions,
    token_cache_ms: u64,
) -> p2_gateway::GatewayConfig {
    let url = |addr: SocketAddr| format!("http://{addr}");
    p2_gateway::GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        options,
        identity_url: url(grpc_addrs[0]),
        session_url: url(grpc_addrs[1]),
        discovery_url: url(grpc_addrs[2]),
        events_url: url(grpc_addrs[3]),
        token_cache_ms,
        internal: p2_runtime::internal::InternalKeyConfig::with_key(internal_key),
        component_credential: None,
        redis_url: None,
        redis_prefix: p2_gateway::ratelimit::DEFAULT_REDIS_PREFIX.to_owned(),
    }
}

/// An HTTP client of the gateway.
#[derive(Clone)]
pub struct Gateway {
    /// The gateway's base URL (`http://127.0.0.1:PORT`).
    pub base: String,
    /// The home server's domain.
    pub domain: String,
    http: reqwest::Client,
}

/// A logged-in session.
pub struct Session {
    /// The actor's federation ID.
    pub fid: String,
    /// The session's bearer token.
    pub token: String,
}

impl Gateway {
    /// A client of the gateway at `addr`.
    pub fn new(addr: SocketAddr, domain: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base: format!("http://{addr}"),
            domain: domain.to_owned(),
            http,
        })
    }

    /// The same gateway through a client whose connections leave from `local` (a loopback
    /// address such as `127.0.1.1`: the gateway then sees a client address of its own).
    pub fn bound_to(&self, local: IpAddr) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .local_address(local)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base: self.base.clone(),
            domain: self.domain.clone(),
            http,
        })
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` (optionally with a bearer token); fails unless the status is 200. Returns
    /// the content type and body.
    pub async fn get_ok(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(Option<HeaderValue>, Bytes)> {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        let body = response
            .bytes()
            .await
            .with_context(|| format!("GET {path}: body"))?;
        if status != reqwest::StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            if text.trim().is_empty() {
                bail!("GET {path} answered {status} with an empty body");
            }
            bail!("GET {path} answered {status}: {}", text.trim());
        }
        Ok((content_type, body))
    }

    async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        expected: u16,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("POST {path}: body"))?;
        if status.as_u16() != expected {
            bail!("POST {path} answered {status} (expected {expected}): {text}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: not JSON: {text}"))
    }

    /// `POST /.p2/auth/v1/register`; returns the new actor's FID.
    pub async fn register(&self, local_name: &str, password: &str) -> anyhow::Result<String> {
        let body = json!({ "local_name": local_name, "password": password });
        let answer = self
            .post_json("/.p2/auth/v1/register", None, &body, 201)
            .await?;
        answer["fid"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("register answered without a fid: {answer}"))
    }

    /// An ID-CSR for a session `session_id` of `local_name`, with a fresh key.
    pub fn csr(&self, local_name: &str, session_id: &str) -> anyhow::Result<String> {
        let key = p2_model::generate_signing_key();
        let fid = p2_model::FederationId::new(local_name, &self.domain)?;
        let sid = p2_model::SessionId::parse(session_id)?;
        Ok(p2_model::build_csr(&key, &fid, &sid)?)
    }

    /// One `POST /.p2/auth/v1/session` attempt; returns the status (the body is read and
    /// dropped). An error means no answer (transport, timeout).
    pub async fn login_status(
        &self,
        local_name: &str,
        password: &str,
        csr: &str,
    ) -> anyhow::Result<reqwest::StatusCode> {
        let body = json!({ "local_name": local_name, "password": password, "csr": csr });
        let response = self
            .http
            .post(self.url("/.p2/auth/v1/session"))
            .json(&body)
            .send()
            .await
            .context("POST /.p2/auth/v1/session")?;
        let status = response.status();
        response
            .bytes()
            .await
            .context("POST /.p2/auth/v1/session: body")?;
        Ok(status)
    }

    /// `POST /.p2/auth/v1/session` with a fresh key and a CSR for `session_id`.
    pub async fn login(
        &self,
        local_name: &str,
        password: &str,
        session_id: &str,
    ) -> anyhow::Result<Session> {
        let key = p2_model::generate_signing_key();
        let fid = p2_model::FederationId::new(local_name, &self.domain)?;
        let sid = p2_model::SessionId::parse(session_id)?;
        let csr = p2_model::build_csr(&key, &fid, &sid)?;
        let body = json!({ "local_name": local_name, "password": password, "csr": csr });
        let answer = self
            .post_json("/.p2/auth/v1/session", None, &body, 201)
            .await?;
        if answer["id_cert"].as_str().is_none() {
            bail!("login answered without an id_cert: {answer}");
        }
        let token = answer["token"]
            .as_str()
            .with_context(|| format!("login answered without a token: {answer}"))?;
        Ok(Session {
            fid: fid.to_string(),
            token: token.to_owned(),
        })
    }

    /// Adds `count` discoverable services for `session` (several service names, distinct
    /// URLs) and checks that discovery lists all of them. Returns the discover path.
    pub async fn add_services(&self, session: &Session, count: u32) -> anyhow::Result<String> {
        const NAMES: [&str; 5] = ["chat", "storage", "media", "calendar", "backup"];
        for i in 0..count {
            let name = NAMES[i as usize % NAMES.len()];
            let body = json!({
                "service": name,
                "url": format!("https://provider-{i}.bench.example/{name}"),
                "primary": false,
            });
            self.post_json("/.p2/core/v1/services", Some(&session.token), &body, 201)
                .await
                .with_context(|| format!("adding service {} of {count}", i + 1))?;
        }
        let path = format!("/.p2/core/v1/services/discover/{}", session.fid);
        let (_, body) = self.get_ok(&path, None).await?;
        let listed: Value = serde_json::from_slice(&body)
            .with_context(|| format!("GET {path}: not JSON: {}", String::from_utf8_lossy(&body)))?;
        let listed = listed.as_array().map_or(0, Vec::len);
        if listed != count as usize {
            bail!("GET {path} listed {listed} services, expected {count}");
        }
        Ok(path)
    }
}

/// What the background login load did.
#[derive(Debug, Default)]
pub struct LoginStats {
    /// Logins started.
    pub started: u64,
    /// Successful logins' latencies.
    pub latencies: Vec<Duration>,
    /// Failed logins.
    pub failed: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// From the first login to the stop signal.
    pub elapsed: Duration,
}

impl LoginStats {
    /// Logins started per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.started as f64 / secs
        } else {
            0.0
        }
    }
}

/// A running background login load; [`LoginLoad::stop`] ends it.
pub struct LoginLoad {
    stop: oneshot::Sender<()>,
    driver: JoinHandle<LoginStats>,
}

impl LoginLoad {
    /// Starts `per_second` logins per second (open loop: a login is started on every tick,
    /// whether or not earlier ones have finished), each with a fresh key, CSR and unique
    /// session ID, for the already registered actor `local_name`.
    pub fn start(gateway: Gateway, local_name: String, password: String, per_second: u32) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let driver = tokio::spawn(async move {
            let mut interval =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = JoinSet::new();
            let mut stats = LoginStats::default();
            let begin = Instant::now();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = interval.tick() => {
                        stats.started += 1;
                        let session_id = format!("load-{}", stats.started);
                        let gateway = gateway.clone();
                        let local_name = local_name.clone();
                        let password = password.clone();
                        tasks.spawn(async move {
                            let start = Instant::now();
                            gateway
                                .login(&local_name, &password, &session_id)
                                .await
                                .map(|_| start.elapsed())
                        });
                    }
                }
            }
            stats.elapsed = begin.elapsed();
            while let Some(joined) = tasks.join_next().await {
                let result = joined
                    .map_err(anyhow::Error::from)
                    .and_then(|result| result);
                match result {
                    Ok(latency) => stats.latencies.push(latency),
                    Err(error) => {
                        stats.failed += 1;
                        stats
                            .first_error
                            .get_or_insert_with(|| format!("{error:#}"));
                    }
                }
            }
            stats
        });
        Self { stop, driver }
    }

    /// Stops starting logins, waits for those in flight, and returns the figures.
    pub async fn stop(self) -> anyhow::Result<LoginStats> {
        // The driver may already have ended (it only ends on this signal, so it has not).
        let _ = self.stop.send(());
        self.driver.await.context("the login driver panicked")
    }
}
