//! Federation (spec 4.1.1, 4.3, 6.4, 6.4.1): actors of other home servers signing in here
//! with key trials, their foreign sessions, and the verified cache of their home servers'
//! certs.
//!
//! Flow of a sign-in ([`SessionGrpc::sign_in_foreign`]):
//! 1. the key trial is taken out of the [`ChallengeStore`](crate::storage::ChallengeStore)
//!    (`keytrial:<trial>`; single use whatever the outcome);
//! 2. the home server of the FID's domain is found through its `/.well-known/polyproto-core`
//!    (spec 3.1) — at the domain itself, or at its `P2_FEDERATION_HOSTS` mapping;
//! 3. its root cert (`GET idcert/server`) must be a root ID-Cert for exactly that domain,
//!    self-signed, valid, with a current, correctly signed cache window
//!    ([`p2_model::verify_foreign_root`]);
//! 4. the actor's cert with that serial (`GET idcert/actor/{fid}?timestamp=now`) must be
//!    issued and signed by that root (or by the root current at its `notBefore`, for certs from
//!    before a key rotation: `idcert/server?timestamp=`), valid, in a current cache window signed by the home
//!    server, and not revoked ([`p2_model::verify_foreign_actor`]); a cert sent along
//!    (`idCertPem`) must be that very cert;
//! 5. the trial's signature must verify with the cert's key;
//! 6. then the foreign session is stored (token hashed, like local ones; its cert beside it),
//!    the completed trial recorded (public: `GET keytrial/{fid}`), and op 3 queued to the
//!    actor's other sessions here (spec 4.4).
//!
//! Steps 3 and 4 go through the verified cache ([`cache`]): entries exactly as the home server
//! served them, re-verified on every use, never used past their cache window nor past
//! `--federation-max-trust-secs` (12 hours at most, spec 6.4). A warm sign-in makes no
//! outbound request; a cold one makes three (well-known, root cert, actor certs).
//!
//! A foreign session is one whose FID's domain is not this server's. Its token checks go
//! through [`SessionGrpc::authenticate_token`] like any other; once its cert's trust runs
//! out (`verified_until`), the next check asks the home server again: a revoked cert ends
//! the session there and then (CloseSession: its WebSockets close with 4003), and op 4 with
//! the home server's signed revocation goes to the actor's other sessions here.
//! Routes only a home server may serve refuse foreign sessions with PERMISSION_DENIED (new
//! ID-Certs, deleting another session; identity and discovery refuse them on their side).
//!
//! Outbound HTTP is hardened against request forgery: [`client`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use p2_model::{CacheFields, FederationId, IdCert, SessionId, VerifiedCert};
use reqwest::Url;
use serde_json::Value;

use crate::SessionGrpc;
use crate::caller::Caller;
use crate::error::SessionError;
use crate::storage::{ForeignCert, KeyTrialRow, StoreError};
use crate::token::SessionToken;

pub mod cache;
pub mod client;

pub use cache::{MemoryVerifiedCache, RedisVerifiedCache, VerifiedCache};
pub use client::{FederationClient, FetchError};

/// Logical key prefix of key trials in the challenge store.
pub const KEY_TRIAL_KEY_PREFIX: &str = "keytrial:";
/// Logical key prefix of the "last trial of this client" pointers.
const LAST_TRIAL_KEY_PREFIX: &str = "keytrial-last:";
/// Default key trial lifetime, in seconds.
pub const DEFAULT_KEY_TRIAL_TTL_SECS: u64 = 300;
/// Default bound on pending key trials per client address.
pub const DEFAULT_MAX_KEY_TRIALS_PER_CLIENT: usize = 16;
/// Default total timeout of one outbound request, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// Default connect timeout of one outbound request, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2000;
/// Default largest response body read from a home server.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Default bound on concurrent requests to one foreign domain.
pub const DEFAULT_MAX_FETCHES_PER_DOMAIN: usize = 8;
/// Most certs of one foreign actor listed in the cache's index (the newest are kept).
pub const MAX_INDEXED_CERTS: usize = 32;
/// Most foreign sessions one foreign actor may hold here; a sign-in beyond is refused.
pub const MAX_FOREIGN_SESSIONS_PER_ACTOR: usize = 256;

/// Federation settings (`polyproto session` and `polyproto up`).
#[derive(Debug, Clone, Args)]
pub struct FederationOptions {
    /// FOR DEVELOPMENT AND TESTS ONLY: `domain=base_url,...` sends requests for these home
    /// servers' domains to these base URLs instead (e.g. `a.test=http://127.0.0.1:8081`);
    /// plain http and loopback/private addresses are allowed for mapped domains only.
    #[arg(
        long = "federation-hosts",
        env = "P2_FEDERATION_HOSTS",
        default_value = ""
    )]
    pub hosts: String,
    /// Total timeout of one request to another home server (connection, headers and body), in
    /// milliseconds.
    #[arg(long = "federation-timeout-ms", env = "P2_FEDERATION_TIMEOUT_MS", default_value_t = DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// Connect timeout of one request to another home server, in milliseconds.
    #[arg(long = "federation-connect-timeout-ms", env = "P2_FEDERATION_CONNECT_TIMEOUT_MS", default_value_t = DEFAULT_CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// Largest response body read from another home server, in bytes; a larger one fails the
    /// request.
    #[arg(long = "federation-max-response-bytes", env = "P2_FEDERATION_MAX_RESPONSE_BYTES", default_value_t = DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_response_bytes: usize,
    /// Most requests to one foreign domain in flight at once (per replica); one more fails at
    /// once with 429 instead of waiting behind a slow server.
    #[arg(long = "federation-max-fetches-per-domain", env = "P2_FEDERATION_MAX_FETCHES_PER_DOMAIN", default_value_t = DEFAULT_MAX_FETCHES_PER_DOMAIN)]
    pub max_fetches_per_domain: usize,
    /// Most entries of the verified cache of foreign certs (each at most 16 KiB); beyond it
    /// the soonest-expiring entries are evicted.
    #[arg(long = "federation-cache-entries", env = "P2_FEDERATION_CACHE_ENTRIES", default_value_t = cache::DEFAULT_CACHE_ENTRIES)]
    pub cache_entries: usize,
    /// Longest a verified foreign cert is used before its home server is asked again, in
    /// seconds (at most 43200 = 12 h, spec 6.4; never past the home server's cache window).
    #[arg(long = "federation-max-trust-secs", env = "P2_FEDERATION_MAX_TRUST_SECS", default_value_t = p2_model::MAX_CACHE_TRUST_SECS)]
    pub max_trust_secs: u64,
    /// Lifetime of a key trial, in seconds.
    #[arg(long = "key-trial-ttl-secs", env = "P2_KEY_TRIAL_TTL_SECS", default_value_t = DEFAULT_KEY_TRIAL_TTL_SECS)]
    pub key_trial_ttl_secs: u64,
    /// Most pending key trials of one client address (IPv6: one /64); beyond it that client
    /// gets 429 until it answers one or one expires.
    #[arg(long = "max-key-trials-per-client", env = "P2_MAX_KEY_TRIALS_PER_CLIENT", default_value_t = DEFAULT_MAX_KEY_TRIALS_PER_CLIENT)]
    pub max_key_trials_per_client: usize,
}

impl Default for FederationOptions {
    fn default() -> Self {
        Self {
            hosts: String::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_fetches_per_domain: DEFAULT_MAX_FETCHES_PER_DOMAIN,
            cache_entries: cache::DEFAULT_CACHE_ENTRIES,
            max_trust_secs: p2_model::MAX_CACHE_TRUST_SECS,
            key_trial_ttl_secs: DEFAULT_KEY_TRIAL_TTL_SECS,
            max_key_trials_per_client: DEFAULT_MAX_KEY_TRIALS_PER_CLIENT,
        }
    }
}

/// Parses `P2_FEDERATION_HOSTS`: `domain=base_url` pairs, comma-separated.
pub fn parse_hosts(text: &str) -> anyhow::Result<HashMap<String, Url>> {
    let mut hosts = HashMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (domain, url) = pair.split_once('=').ok_or_else(|| {
            anyhow::anyhow!(
                "--federation-hosts (P2_FEDERATION_HOSTS): {pair:?} is not domain=base_url"
            )
        })?;
        let domain = p2_model::validate_domain(domain.trim())
            .map_err(|e| anyhow::anyhow!("--federation-hosts (P2_FEDERATION_HOSTS): {e}"))?;
        let mut url = Url::parse(url.trim()).map_err(|e| {
            anyhow::anyhow!("--federation-hosts (P2_FEDERATION_HOSTS): {url:?} for {domain}: {e}")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            anyhow::bail!(
                "--federation-hosts (P2_FEDERATION_HOSTS): {url} for {domain} is no http(s) URL"
            );
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        hosts.insert(domain, url);
    }
    Ok(hosts)
}

/// The federation half of the session service's state.
pub struct Federation {
    client: FederationClient,
    cache: Arc<dyn VerifiedCache>,
    key_trial_ttl: Duration,
    max_key_trials_per_client: usize,
    max_trust_secs: u64,
}

impl Federation {
    /// Federation with `options` and `cache`.
    pub fn new(options: &FederationOptions, cache: Arc<dyn VerifiedCache>) -> anyhow::Result<Self> {
        if options.key_trial_ttl_secs == 0 {
            anyhow::bail!("--key-trial-ttl-secs (P2_KEY_TRIAL_TTL_SECS) must be at least 1");
        }
        if options.max_key_trials_per_client == 0 {
            anyhow::bail!(
                "--max-key-trials-per-client (P2_MAX_KEY_TRIALS_PER_CLIENT) must be at least 1"
            );
        }
        if options.timeout_ms == 0 || options.connect_timeout_ms == 0 {
            anyhow::bail!(
                "--federation-timeout-ms and --federation-connect-timeout-ms must be at least 1"
            );
        }
        if options.max_fetches_per_domain == 0 || options.max_response_bytes == 0 {
            anyhow::bail!(
                "--federation-max-fetches-per-domain and --federation-max-response-bytes must be at least 1"
            );
        }
        if options.max_trust_secs == 0 || options.max_trust_secs > p2_model::MAX_CACHE_TRUST_SECS {
            anyhow::bail!(
                "--federation-max-trust-secs (P2_FEDERATION_MAX_TRUST_SECS) must be between 1 and {}",
                p2_model::MAX_CACHE_TRUST_SECS
            );
        }
        let client = FederationClient::new(client::ClientSettings {
            hosts: parse_hosts(&options.hosts)?,
            connect_timeout: Duration::from_millis(options.connect_timeout_ms),
            timeout: Duration::from_millis(options.timeout_ms),
            max_response_bytes: options.max_response_bytes,
            max_fetches_per_domain: options.max_fetches_per_domain,
        })?;
        Ok(Self {
            client,
            cache,
            key_trial_ttl: Duration::from_secs(options.key_trial_ttl_secs),
            max_key_trials_per_client: options.max_key_trials_per_client,
            max_trust_secs: options.max_trust_secs,
        })
    }

    /// Defaults with an in-process cache (tests).
    pub fn in_memory() -> anyhow::Result<Self> {
        Self::new(
            &FederationOptions::default(),
            Arc::new(MemoryVerifiedCache::new(cache::DEFAULT_CACHE_ENTRIES)),
        )
    }
}

/// A key trial handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedKeyTrial {
    /// The string to sign.
    pub trial: String,
    /// UNIX seconds after which it is refused.
    pub expires: u64,
}

/// What a client sends to complete a key trial.
#[derive(Debug, Clone)]
pub struct KeyTrialAnswer {
    /// The actor.
    pub fid: FederationId,
    /// The serial number of the cert whose key signed.
    pub serial: u64,
    /// Hex signature of the trial.
    pub signature: String,
    /// The cert, if sent along.
    pub id_cert_pem: Option<String>,
    /// The trial; `None`: the last one issued to this client address.
    pub trial: Option<String>,
}

/// The filters of a foreign actor's cached certs (those of `GET idcert/actor/{fid}`).
#[derive(Debug, Clone, Default)]
pub struct ForeignCertQuery {
    /// Valid at this UNIX time.
    pub timestamp: Option<u64>,
    /// Of this session.
    pub session_id: Option<SessionId>,
    /// Issued at or after.
    pub not_before: Option<u64>,
    /// Issued at or before.
    pub not_after: Option<u64>,
}

/// A successful foreign sign-in.
#[derive(Debug)]
pub struct ForeignSignIn {
    /// The foreign session's token.
    pub token: SessionToken,
    /// Its session ID.
    pub session_id: SessionId,
}

/// The client address a key trial is accounted to: the address, IPv6 cut to its /64.
fn client_owner() -> String {
    let address = match p2_runtime::internal::client_address() {
        Some(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
        None => "unknown".to_owned(),
    };
    format!("{KEY_TRIAL_KEY_PREFIX}{address}")
}

fn is_plausible_trial(trial: &str) -> bool {
    (1..=crate::challenge::MAX_CHALLENGE_LEN).contains(&trial.len())
        && trial.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The u64 of a JSON field sent as a decimal string or a number.
fn json_u64(value: &Value, field: &str) -> Option<u64> {
    match value.get(field)? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The cache fields of a served CacheableIdCert object, or why they are unusable.
fn cache_fields(value: &Value) -> Result<CacheFields<'_>, String> {
    let id_cert_pem = value
        .get("idCertPem")
        .and_then(Value::as_str)
        .ok_or("it carries no idCertPem")?;
    let not_valid_before =
        json_u64(value, "cacheNotValidBefore").ok_or("it carries no cacheNotValidBefore")?;
    let not_valid_after =
        json_u64(value, "cacheNotValidAfter").ok_or("it carries no cacheNotValidAfter")?;
    let signature = value
        .get("cacheSignature")
        .and_then(Value::as_str)
        .ok_or("it carries no cacheSignature")?;
    let invalidated_at = match value.get("invalidatedAt") {
        None | Some(Value::Null) => None,
        Some(_) => Some(json_u64(value, "invalidatedAt").ok_or("its invalidatedAt is no number")?),
    };
    Ok(CacheFields {
        id_cert_pem,
        not_valid_before,
        not_valid_after,
        signature,
        invalidated_at,
    })
}

/// A verified root of a home server and where its API lives.
struct HomeServer {
    api: Url,
    root: VerifiedCert,
}

fn refused(reason: impl Into<String>) -> SessionError {
    SessionError::ForeignAuthRefused(reason.into())
}

fn fetch_error(domain: &str, error: FetchError) -> SessionError {
    match error {
        FetchError::Busy(_) => SessionError::HomeServerBusy(error.to_string()),
        FetchError::Refused(reason)
        | FetchError::Unreachable(reason)
        | FetchError::BadAnswer(reason) => SessionError::HomeServerFailed(format!(
            "the home server of {domain} could not be used: {reason}"
        )),
    }
}

impl SessionGrpc {
    fn federation(&self) -> Result<&Federation, SessionError> {
        self.inner.federation.as_ref().ok_or_else(|| {
            SessionError::Internal(anyhow::anyhow!("federation is not set up in this process"))
        })
    }

    /// Whether `fid` is an actor of another home server.
    pub fn is_foreign(&self, fid: &FederationId) -> bool {
        fid.domain() != self.domain()
    }

    /// Issues a key trial, accounted to the request's client address.
    pub async fn issue_key_trial(&self) -> Result<IssuedKeyTrial, SessionError> {
        let federation = self.federation()?;
        let ttl = federation.key_trial_ttl;
        let owner = client_owner();
        let limit = federation.max_key_trials_per_client;
        for _ in 0..4 {
            let trial = p2_model::generate_key_trial();
            let expires = p2_runtime::unix_now().saturating_add(ttl.as_secs());
            let stored = self
                .challenges()
                .put_if_absent(
                    &format!("{KEY_TRIAL_KEY_PREFIX}{trial}"),
                    &expires.to_string(),
                    &owner,
                    limit,
                    ttl,
                )
                .await
                .map_err(|error| match error {
                    StoreError::OwnerFull { limit } => SessionError::TooManyKeyTrials { limit },
                    other => other.into(),
                })?;
            if stored {
                // The pointer to the client's newest trial, for answers that do not name it.
                let last = format!("{LAST_TRIAL_KEY_PREFIX}{owner}");
                let _ = self.challenges().take(&last).await?;
                let _ = self
                    .challenges()
                    .put_if_absent(&last, &trial, &last, 1, ttl)
                    .await;
                return Ok(IssuedKeyTrial { trial, expires });
            }
        }
        Err(SessionError::Internal(anyhow::anyhow!(
            "fresh key trials collided with pending ones: is the random source broken?"
        )))
    }

    /// Takes the trial out of the store: `(trial, expires)`.
    async fn take_trial(&self, trial: Option<String>) -> Result<(String, u64), SessionError> {
        let trial = match trial.filter(|t| !t.is_empty()) {
            Some(trial) => trial,
            None => {
                let last = format!("{LAST_TRIAL_KEY_PREFIX}{}", client_owner());
                self.challenges()
                    .take(&last)
                    .await?
                    .ok_or(SessionError::KeyTrialUnknown)?
            }
        };
        if !is_plausible_trial(&trial) {
            return Err(SessionError::KeyTrialUnknown);
        }
        let expires = self
            .challenges()
            .take(&format!("{KEY_TRIAL_KEY_PREFIX}{trial}"))
            .await?
            .ok_or(SessionError::KeyTrialUnknown)?;
        Ok((trial, expires.parse().unwrap_or(0)))
    }

    async fn fetch_json(&self, domain: &str, url: &Url) -> Result<Value, SessionError> {
        let body = self
            .federation()?
            .client
            .get(domain, url, "application/json")
            .await
            .map_err(|e| fetch_error(domain, e))?;
        serde_json::from_slice(&body).map_err(|_| {
            SessionError::HomeServerFailed(format!(
                "the home server of {domain} answered {url} with something that is not JSON"
            ))
        })
    }

    /// The verified root cert of `domain`'s home server (cache, else fetched).
    async fn home_server(&self, domain: &str, now: u64) -> Result<HomeServer, SessionError> {
        let max_trust = self.federation()?.max_trust_secs;
        let key = format!("root:{domain}");
        if let Some(entry) = self.federation()?.cache.get(&key).await?
            && let Ok(entry) = serde_json::from_str::<Value>(&entry)
            && let (Some(api), Some(cert)) = (
                entry
                    .get("api")
                    .and_then(Value::as_str)
                    .and_then(|a| Url::parse(a).ok()),
                entry.get("cert"),
            )
            && let Ok(fields) = cache_fields(cert)
            && let Ok(root) = p2_model::verify_foreign_root(&fields, domain, now, max_trust)
        {
            return Ok(HomeServer { api, root });
        }
        let client = &self.federation()?.client;
        let base = client
            .base_url(domain)
            .map_err(|e| fetch_error(domain, e))?;
        let well_known = base
            .join(".well-known/polyproto-core")
            .map_err(|_| refused(format!("no well-known URL for {domain}")))?;
        let announced = self.fetch_json(domain, &well_known).await?;
        let api = announced
            .get("api")
            .and_then(Value::as_str)
            .and_then(|a| Url::parse(a).ok())
            .filter(|a| matches!(a.scheme(), "http" | "https"))
            .ok_or_else(|| {
                refused(format!(
                    "the home server of {domain} announces no API URL at {well_known}"
                ))
            })?;
        let api = if api.path().ends_with('/') {
            api
        } else {
            let mut fixed = api.clone();
            fixed.set_path(&format!("{}/", api.path()));
            fixed
        };
        let url = api
            .join("v1/idcert/server")
            .map_err(|_| refused(format!("no idcert/server URL for {domain}")))?;
        let served = self.fetch_json(domain, &url).await?;
        let fields = cache_fields(&served).map_err(|reason| {
            refused(format!(
                "the root cert served by {domain} is unusable: {reason}"
            ))
        })?;
        let root = p2_model::verify_foreign_root(&fields, domain, now, max_trust).map_err(|e| {
            refused(format!(
                "the root cert served for {domain} is not that home server's: {e}"
            ))
        })?;
        let entry = serde_json::json!({ "api": api.as_str(), "cert": served }).to_string();
        self.federation()?
            .cache
            .put(
                &key,
                &entry,
                Duration::from_secs(root.trusted_until.saturating_sub(now)),
            )
            .await?;
        Ok(HomeServer { api, root })
    }

    /// The verified cert `serial` of `fid`, as its home server serves it (cache, else
    /// fetched): the CacheableIdCert object and its verification.
    async fn foreign_actor_cert(
        &self,
        fid: &FederationId,
        serial: &str,
        now: u64,
    ) -> Result<(Value, VerifiedCert), SessionError> {
        let domain = fid.domain();
        let home = self.home_server(domain, now).await?;
        let max_trust = self.federation()?.max_trust_secs;
        let root = &home.root.cert;
        let key = format!("actor:{fid}:{serial}");
        if let Some(entry) = self.federation()?.cache.get(&key).await?
            && let Ok(entry) = serde_json::from_str::<Value>(&entry)
            && let Ok(fields) = cache_fields(&entry)
            && let Ok(Some(issuer)) = self
                .issuer_of(domain, None, fields.id_cert_pem, root, now)
                .await
            && let Ok(verified) =
                p2_model::verify_foreign_actor(&fields, fid, &issuer, root, now, max_trust)
        {
            return Ok((entry, verified));
        }
        let mut url = home
            .api
            .join(&format!("v1/idcert/actor/{fid}"))
            .map_err(|_| refused(format!("no idcert/actor URL for {fid}")))?;
        url.query_pairs_mut()
            .append_pair("timestamp", &now.to_string());
        let served = self.fetch_json(domain, &url).await?;
        let Value::Array(certs) = served else {
            return Err(refused(format!(
                "the home server of {domain} answered {url} with something that is no list of certs"
            )));
        };
        let found = certs.into_iter().find(|entry| {
            entry
                .get("idCertPem")
                .and_then(Value::as_str)
                .and_then(|pem| IdCert::from_pem(pem).ok())
                .is_some_and(|cert| cert.serial() == serial)
        });
        let Some(entry) = found else {
            return Err(refused(format!(
                "the home server of {domain} knows no cert of {fid} with serial number {serial} \
                 valid now"
            )));
        };
        let fields = cache_fields(&entry).map_err(|reason| {
            refused(format!(
                "the cert {serial} served for {fid} is unusable: {reason}"
            ))
        })?;
        // Issued under an earlier key of the home server (before a rotation): checked against
        // the root that was current when it was issued.
        let issuer = self
            .issuer_of(domain, Some(&home.api), fields.id_cert_pem, root, now)
            .await?
            .unwrap_or_else(|| root.clone());
        let verified = p2_model::verify_foreign_actor(&fields, fid, &issuer, root, now, max_trust)
            .map_err(|e| {
                refused(format!(
                    "the cert {serial} of {fid} does not verify with its home server: {e}"
                ))
            })?;
        let ttl = Duration::from_secs(verified.trusted_until.saturating_sub(now));
        self.federation()?
            .cache
            .put(&key, &entry.to_string(), ttl)
            .await?;
        self.index_foreign_cert(fid, serial).await?;
        Ok((entry, verified))
    }

    /// The root cert of `domain` whose key signed the actor cert `actor_pem`: the current
    /// `root`, else (a cert issued before the home server rotated its key) the root that was
    /// current at the cert's `notBefore`, from the cache or — with `api` — fetched from
    /// `idcert/server?timestamp=` and verified like the current one. `None` when neither
    /// signed it.
    async fn issuer_of(
        &self,
        domain: &str,
        api: Option<&Url>,
        actor_pem: &str,
        root: &IdCert,
        now: u64,
    ) -> Result<Option<IdCert>, SessionError> {
        let Ok(actor) = IdCert::from_pem(actor_pem) else {
            return Ok(None);
        };
        let signed_by = |issuer: &IdCert| {
            issuer
                .public_key()
                .is_ok_and(|key| actor.verify_signature(&key).is_ok())
        };
        if signed_by(root) {
            return Ok(Some(root.clone()));
        }
        let max_trust = self.federation()?.max_trust_secs;
        let key = format!("issuer:{domain}:{}", actor.serial());
        let cache = &self.federation()?.cache;
        if let Some(entry) = cache.get(&key).await?
            && let Ok(entry) = serde_json::from_str::<Value>(&entry)
            && let Ok(fields) = cache_fields(&entry)
            && let Ok(issuer) = p2_model::verify_foreign_root(&fields, domain, now, max_trust)
            && signed_by(&issuer.cert)
        {
            return Ok(Some(issuer.cert));
        }
        let Some(api) = api else {
            return Ok(None);
        };
        let mut url = api
            .join("v1/idcert/server")
            .map_err(|_| refused(format!("no idcert/server URL for {domain}")))?;
        url.query_pairs_mut()
            .append_pair("timestamp", &actor.not_before().to_string());
        let served = self.fetch_json(domain, &url).await?;
        let Ok(fields) = cache_fields(&served) else {
            return Ok(None);
        };
        let Ok(issuer) = p2_model::verify_foreign_root(&fields, domain, now, max_trust) else {
            return Ok(None);
        };
        if !signed_by(&issuer.cert) {
            return Ok(None);
        }
        cache
            .put(
                &key,
                &served.to_string(),
                Duration::from_secs(issuer.trusted_until.saturating_sub(now)),
            )
            .await?;
        Ok(Some(issuer.cert))
    }

    /// Adds `serial` to the cached list of `fid`'s certs (the newest [`MAX_INDEXED_CERTS`];
    /// lives as long as the longest trust, 12 h). Concurrent writers may drop one another's
    /// serial: a cache, not a record (the entry itself is still found by sign-ins).
    async fn index_foreign_cert(
        &self,
        fid: &FederationId,
        serial: &str,
    ) -> Result<(), SessionError> {
        let cache = &self.federation()?.cache;
        let key = format!("actors:{fid}");
        let mut serials: Vec<String> = match cache.get(&key).await? {
            Some(text) => serde_json::from_str(&text).unwrap_or_default(),
            None => Vec::new(),
        };
        serials.retain(|s| s != serial);
        serials.push(serial.to_owned());
        if serials.len() > MAX_INDEXED_CERTS {
            let drop = serials.len() - MAX_INDEXED_CERTS;
            serials.drain(..drop);
        }
        let text = serde_json::to_string(&serials)
            .map_err(|e| SessionError::Internal(anyhow::Error::new(e)))?;
        cache
            .put(
                &key,
                &text,
                Duration::from_secs(p2_model::MAX_CACHE_TRUST_SECS),
            )
            .await?;
        Ok(())
    }

    /// The verified root of `domain` from the cache only (never fetched).
    async fn cached_root(&self, domain: &str, now: u64) -> Result<Option<IdCert>, SessionError> {
        let max_trust = self.federation()?.max_trust_secs;
        let Some(entry) = self
            .federation()?
            .cache
            .get(&format!("root:{domain}"))
            .await?
        else {
            return Ok(None);
        };
        Ok(serde_json::from_str::<Value>(&entry)
            .ok()
            .and_then(|entry| {
                let cert = entry.get("cert")?;
                let fields = cache_fields(cert).ok()?;
                p2_model::verify_foreign_root(&fields, domain, now, max_trust).ok()
            })
            .map(|root| root.cert))
    }

    /// The cached, still verified certs of the foreign actor `fid` matching `query`, each as
    /// its home server served it, newest first; [`SessionError::ForeignCertsNotCached`] when
    /// `fid` is ours or none is cached. Nothing is fetched for this public read.
    pub async fn cached_foreign_certs(
        &self,
        fid: &FederationId,
        query: &ForeignCertQuery,
    ) -> Result<(Vec<Value>, u64), SessionError> {
        let not_cached = || SessionError::ForeignCertsNotCached(fid.to_string());
        if !self.is_foreign(fid) {
            return Err(not_cached());
        }
        let now = p2_runtime::unix_now();
        let Some(root) = self.cached_root(fid.domain(), now).await? else {
            return Err(not_cached());
        };
        let cache = &self.federation()?.cache;
        let max_trust = self.federation()?.max_trust_secs;
        let serials: Vec<String> = match cache.get(&format!("actors:{fid}")).await? {
            Some(text) => serde_json::from_str(&text).unwrap_or_default(),
            None => Vec::new(),
        };
        let mut found = Vec::new();
        for serial in serials {
            let Some(text) = cache.get(&format!("actor:{fid}:{serial}")).await? else {
                continue;
            };
            let Ok(entry) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Ok(fields) = cache_fields(&entry) else {
                continue;
            };
            let Some(issuer) = self
                .issuer_of(fid.domain(), None, fields.id_cert_pem, &root, now)
                .await?
            else {
                continue;
            };
            let Ok(verified) =
                p2_model::verify_foreign_actor(&fields, fid, &issuer, &root, now, max_trust)
            else {
                continue;
            };
            let cert = &verified.cert;
            let keep = query
                .timestamp
                .is_none_or(|t| cert.not_before() <= t && t < cert.not_after())
                && query.session_id.as_ref().is_none_or(|sid| {
                    cert.session_id()
                        .is_ok_and(|own| own.as_str() == sid.as_str())
                })
                && query.not_before.is_none_or(|t| cert.not_before() >= t)
                && query.not_after.is_none_or(|t| cert.not_before() <= t);
            if keep {
                found.push((cert.not_before(), fields.not_valid_after, entry.clone()));
            }
        }
        if found.is_empty() {
            return Err(not_cached());
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let fresh_until = found.iter().map(|f| f.1).min().unwrap_or(now);
        Ok((found.into_iter().map(|f| f.2).collect(), fresh_until))
    }

    /// Completes a key trial and signs the actor in (see the module documentation).
    pub async fn sign_in_foreign(
        &self,
        answer: KeyTrialAnswer,
    ) -> Result<ForeignSignIn, SessionError> {
        if !self.is_foreign(&answer.fid) {
            return Err(SessionError::InvalidArgument(format!(
                "{} is an actor of this server: log in with POST /.p2/auth/v1/session",
                answer.fid
            )));
        }
        let (trial, expires) = self.take_trial(answer.trial.clone()).await?;
        let now = p2_runtime::unix_now();
        let serial = answer.serial.to_string();
        // A cert sent along lets a forged signature fail before any outbound request.
        let sent = match answer
            .id_cert_pem
            .as_deref()
            .filter(|p| !p.trim().is_empty())
        {
            Some(pem) => {
                let cert = IdCert::from_pem(pem)
                    .map_err(|e| SessionError::InvalidArgument(format!("idCertPem: {e}")))?;
                if cert.serial() != serial {
                    return Err(refused(format!(
                        "the idCertPem sent has serial number {}, not {serial}",
                        cert.serial()
                    )));
                }
                p2_model::verify_key_trial(&cert, &trial, &answer.signature).map_err(|e| {
                    refused(format!(
                        "the key trial signature does not verify with the key of cert {serial}: {e}"
                    ))
                })?;
                Some(cert)
            }
            None => None,
        };
        let (_, verified) = self.foreign_actor_cert(&answer.fid, &serial, now).await?;
        if let Some(at) = verified.invalidated_at {
            return Err(refused(format!(
                "cert {serial} of {} was revoked by its home server at {at}",
                answer.fid
            )));
        }
        if let Some(sent) = &sent
            && sent.der() != verified.cert.der()
        {
            return Err(refused(format!(
                "the idCertPem sent is not the cert {serial} that the home server of {} serves",
                answer.fid.domain()
            )));
        }
        p2_model::verify_key_trial(&verified.cert, &trial, &answer.signature).map_err(|e| {
            refused(format!(
                "the key trial signature does not verify with the key of cert {serial}: {e}"
            ))
        })?;
        let session_id = verified
            .cert
            .session_id()
            .map_err(|e| refused(format!("cert {serial} names no session: {e}")))?;
        let fid = &answer.fid;
        let existing = self.sessions().list(fid.as_str()).await?;
        if existing.len() >= MAX_FOREIGN_SESSIONS_PER_ACTOR
            && !existing.iter().any(|s| s.session_id == session_id.as_str())
        {
            return Err(SessionError::Refused(tonic::Status::failed_precondition(
                format!(
                    "{fid} already holds {MAX_FOREIGN_SESSIONS_PER_ACTOR} sessions on this server; \
                     delete one first"
                ),
            )));
        }
        let pem = verified.cert.to_pem();
        let new_session = !existing.iter().any(|s| s.session_id == session_id.as_str());
        let events = if new_session {
            vec![crate::events::new_session(fid, &session_id, &pem)]
        } else {
            Vec::new()
        };
        let token = SessionToken::generate();
        self.sessions()
            .put_foreign(
                fid.as_str(),
                session_id.as_str(),
                token.hash(),
                now,
                verified.cert.not_after(),
                &ForeignCert {
                    id_cert_pem: pem,
                    serial: serial.clone(),
                    verified_until: verified.trusted_until,
                },
                &KeyTrialRow {
                    trial,
                    fid: fid.to_string(),
                    serial: serial.clone(),
                    signature: answer.signature.to_ascii_lowercase(),
                    expires,
                    completed_at: now,
                },
                events,
            )
            .await?;
        tracing::info!(fid = %fid, session_id = %session_id, serial = %serial, "a foreign actor signed in with a key trial");
        Ok(ForeignSignIn { token, session_id })
    }

    /// Re-verifies the cert of the foreign session (fid, session_id) with its home server
    /// when its trust ran out; ends the session when the home server revoked it.
    pub(crate) async fn check_foreign_session(
        &self,
        fid: &FederationId,
        session_id: &str,
        now: u64,
    ) -> Result<ForeignCert, SessionError> {
        let Some(cert) = self
            .sessions()
            .foreign_cert(fid.as_str(), session_id)
            .await?
        else {
            return Err(SessionError::UnknownToken);
        };
        if cert.verified_until > now {
            return Ok(cert);
        }
        let (served, verified) = match self.foreign_actor_cert(fid, &cert.serial, now).await {
            Ok(found) => found,
            // A home server that does not answer (properly) leaves the session waiting...
            Err(SessionError::HomeServerBusy(reason) | SessionError::HomeServerFailed(reason)) => {
                return Err(SessionError::HomeServerUnavailable(reason));
            }
            // ...one that answers but no longer vouches for the cert (gone from its list, no
            // longer verifying) ends it.
            Err(SessionError::ForeignAuthRefused(reason)) => {
                self.end_foreign_session(fid, session_id, &reason, Vec::new())
                    .await?;
                return Err(SessionError::UnknownToken);
            }
            Err(other) => return Err(other),
        };
        if let Some(at) = verified.invalidated_at {
            let op4 =
                crate::events::foreign_cert_invalidated(fid, session_id, &served, &cert.serial, at);
            self.end_foreign_session(fid, session_id, &format!("revoked at {at}"), vec![op4])
                .await?;
            return Err(SessionError::UnknownToken);
        }
        let renewed = ForeignCert {
            verified_until: verified.trusted_until,
            ..cert
        };
        self.sessions()
            .update_foreign(
                fid.as_str(),
                session_id,
                &renewed,
                verified.cert.not_after(),
            )
            .await?;
        Ok(renewed)
    }

    async fn end_foreign_session(
        &self,
        fid: &FederationId,
        session_id: &str,
        reason: &str,
        events: Vec<p2_outbox::Message>,
    ) -> Result<(), SessionError> {
        self.sessions()
            .delete_with_events(fid.as_str(), session_id, events)
            .await?;
        tracing::info!(fid = %fid, session_id, reason, "ended a foreign session: its home server no longer vouches for its cert");
        Ok(())
    }

    /// A foreign session's new ID-Cert (PUT session/idcert/extern).
    pub async fn announce_foreign_id_cert(
        &self,
        caller: &Caller,
        body: &str,
    ) -> Result<(), SessionError> {
        if !self.is_foreign(&caller.fid) {
            return Err(SessionError::NotForThisSession(format!(
                "{} is an actor of this server: its certs are issued here (POST \
                 /.p2/core/v1/idcert), not announced",
                caller.fid
            )));
        }
        let trimmed = body.trim();
        // The SDK sends the PEM as a JSON string literal; bare PEM is accepted too.
        let pem = if trimmed.starts_with('"') {
            serde_json::from_str::<String>(trimmed).map_err(|_| {
                SessionError::ForeignCertRefused("the body is neither PEM nor a JSON string".into())
            })?
        } else {
            trimmed.to_owned()
        };
        let cert =
            IdCert::from_pem(&pem).map_err(|e| SessionError::ForeignCertRefused(e.to_string()))?;
        let fid = cert
            .subject_fid()
            .map_err(|e| SessionError::ForeignCertRefused(e.to_string()))?;
        if fid != caller.fid {
            return Err(SessionError::ForeignCertRefused(format!(
                "it is a cert of {fid}, not of this session's actor {}",
                caller.fid
            )));
        }
        let session_id = cert
            .session_id()
            .map_err(|e| SessionError::ForeignCertRefused(e.to_string()))?;
        if session_id != caller.session_id {
            return Err(SessionError::ForeignCertRefused(format!(
                "it is a cert of session {session_id}, not of this session ({})",
                caller.session_id
            )));
        }
        let now = p2_runtime::unix_now();
        cert.check_valid_at(now)
            .map_err(|e| SessionError::ForeignCertRefused(e.to_string()))?;
        let serial = cert.serial();
        let verified = match self.foreign_actor_cert(&caller.fid, &serial, now).await {
            Ok((_, verified)) => verified,
            Err(
                SessionError::ForeignAuthRefused(reason) | SessionError::HomeServerFailed(reason),
            ) => {
                return Err(SessionError::ForeignCertRefused(reason));
            }
            Err(other) => return Err(other),
        };
        if verified.cert.der() != cert.der() {
            return Err(SessionError::ForeignCertRefused(format!(
                "it is not the cert {serial} that the home server of {} serves",
                caller.fid.domain()
            )));
        }
        if let Some(at) = verified.invalidated_at {
            return Err(SessionError::ForeignCertRefused(format!(
                "its home server revoked it at {at}"
            )));
        }
        let updated = self
            .sessions()
            .update_foreign(
                caller.fid.as_str(),
                caller.session_id.as_str(),
                &ForeignCert {
                    id_cert_pem: cert.to_pem(),
                    serial: serial.clone(),
                    verified_until: verified.trusted_until,
                },
                cert.not_after(),
            )
            .await?;
        if !updated {
            return Err(SessionError::UnknownToken);
        }
        tracing::info!(fid = %caller.fid, session_id = %caller.session_id, serial = %serial, "a foreign session announced its new ID-Cert");
        Ok(())
    }

    /// Completed key trials of `fid` (public).
    pub async fn completed_key_trials(
        &self,
        fid: &FederationId,
        limit: u32,
        id: Option<&str>,
        not_before: Option<u64>,
        not_after: Option<u64>,
    ) -> Result<Vec<KeyTrialRow>, SessionError> {
        let limit = match limit {
            0 => 100,
            n => n.min(1000),
        };
        Ok(self
            .sessions()
            .key_trials(
                fid.as_str(),
                p2_runtime::unix_now(),
                id,
                not_before,
                not_after,
                limit,
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_hosts_parse_into_base_urls() {
        let hosts =
            parse_hosts(" a.test=http://127.0.0.1:8081 , B.test=https://b.example/p2").unwrap();
        assert_eq!(hosts["a.test"].as_str(), "http://127.0.0.1:8081/");
        assert_eq!(hosts["b.test"].as_str(), "https://b.example/p2/");
        assert!(parse_hosts("").unwrap().is_empty());
        assert!(parse_hosts("a.test").is_err());
        assert!(parse_hosts("a.test=ftp://x").is_err());
        assert!(parse_hosts("not a domain=http://x").is_err());
    }

    #[test]
    fn cache_fields_accept_strings_and_numbers() {
        let value = serde_json::json!({
            "idCertPem": "PEM", "cacheNotValidBefore": "10", "cacheNotValidAfter": 20,
            "cacheSignature": "ab", "invalidated": false
        });
        let fields = cache_fields(&value).unwrap();
        assert_eq!((fields.not_valid_before, fields.not_valid_after), (10, 20));
        assert_eq!(fields.invalidated_at, None);
        assert!(cache_fields(&serde_json::json!({"idCertPem": "x"})).is_err());
    }
}
