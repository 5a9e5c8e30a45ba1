//! The internal trust boundary: who may call an internal gRPC API, and for which actor.
//!
//! Two proofs travel with internal calls (API.md "Internal boundary"; CONVENTIONS 16):
//!
//! - **Component credential.** Every call carries `x-p2-component: <name>` and
//!   `x-p2-component-credential: <hex>`, where the credential is
//!   `HMAC-SHA256(internal key, "p2 component credential v1 " + name)`. The internal key is the
//!   deployment's one shared secret (`P2_INTERNAL_KEY` or `P2_INTERNAL_KEY_FILE`, 64 hex
//!   characters; a Kubernetes Secret in production; `polyproto up` generates one in memory).
//!   Every server checks the credential in constant time before anything else ([`ServerAuth`];
//!   only the gRPC health service is exempt) and then checks the caller's name against the
//!   per-RPC allow-list of that service (as Boulder's gRPC servers check `clientNames`): for
//!   example only the session component may ask identity to sign a CSR. A caller without a
//!   valid credential gets `UNAUTHENTICATED`; a component calling an RPC that is not its to call
//!   gets `PERMISSION_DENIED`.
//! - **Caller assertion.** An RPC that acts for an actor carries a [`CallerAssertion`] minted by
//!   the session service when it resolves a bearer token: the actor's FID, the session ID and an
//!   expiry, authenticated with `HMAC-SHA256(assertion key, ...)` where the assertion key is
//!   derived from the internal key. Each service verifies it locally (one HMAC, about a
//!   microsecond: no round trip) and acts for exactly that actor; nothing else on the wire says
//!   who the actor is.
//!
//! A component that holds only its own credential (the gateway can be given just
//! `P2_COMPONENT_CREDENTIAL`) can neither mint assertions nor pose as another component; a
//! component holding the internal key is trusted with both, which is why only the services
//! need it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tonic::Status;

type HmacSha256 = Hmac<Sha256>;

/// Metadata key naming the calling component.
pub const COMPONENT_HEADER: &str = "x-p2-component";
/// Metadata key carrying the calling component's credential (64 hex characters).
pub const CREDENTIAL_HEADER: &str = "x-p2-component-credential";
/// Path prefix of the gRPC health service, the one API that needs no credential.
pub const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";
/// Default lifetime of a caller assertion. Short: a deleted session's assertions die with it
/// within this time even where a service does not re-check the session.
pub const DEFAULT_ASSERTION_TTL_MS: u64 = 60_000;

/// A component of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// The HTTP/WebSocket gateway.
    Gateway,
    /// The identity service.
    Identity,
    /// The session service.
    Session,
    /// The discovery service.
    Discovery,
    /// The events service.
    Events,
}

impl Component {
    /// Every component.
    pub const ALL: [Component; 5] = [
        Component::Gateway,
        Component::Identity,
        Component::Session,
        Component::Discovery,
        Component::Events,
    ];

    /// The name sent in [`COMPONENT_HEADER`].
    pub fn name(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Identity => "identity",
            Component::Session => "session",
            Component::Discovery => "discovery",
            Component::Events => "events",
        }
    }

    /// The component called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn parse_hex_32(text: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|_| anyhow::anyhow!("{what} must be 64 hex characters (32 bytes)"))?;
    Ok(bytes)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length: this cannot fail.
    let mut mac = <HmacSha256 as hmac::Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The deployment's internal key: the root of every component credential and of the caller
/// assertion key. Never logged (its `Debug` is redacted).
#[derive(Clone)]
pub struct InternalKey(Arc<[u8; 32]>);

impl fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InternalKey(***)")
    }
}

impl InternalKey {
    /// A fresh random key (`polyproto up`, tests).
    pub fn generate() -> Self {
        use rand::RngCore as _;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(Arc::new(bytes))
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(parse_hex_32(text, "the internal key")?)))
    }

    /// Reads 64 hex characters from a file (e.g. a mounted Kubernetes Secret).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the internal key file {}", path.display()))?;
        Self::from_hex(&text)
            .with_context(|| format!("invalid internal key file {}", path.display()))
    }

    /// The key as 64 hex characters (to hand to other processes).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_slice())
    }

    fn credential_bytes(&self, component: Component) -> [u8; 32] {
        hmac(
            self.0.as_slice(),
            &[b"p2 component credential v1 ", component.name().as_bytes()],
        )
    }

    /// The credential `component` presents on its calls.
    pub fn credential(&self, component: Component) -> ComponentCredential {
        ComponentCredential::new(component, self.credential_bytes(component))
    }

    /// What a server checks presented credentials against.
    pub fn verifier(&self) -> ComponentVerifier {
        ComponentVerifier {
            expected: Component::ALL.map(|c| (c, self.credential_bytes(c))),
        }
    }

    /// The key that mints and verifies caller assertions.
    pub fn assertion_key(&self) -> AssertionKey {
        AssertionKey(Arc::new(hmac(
            self.0.as_slice(),
            &[b"p2 caller assertion key v1"],
        )))
    }
}

/// What one component presents on every internal call: its name and its credential.
#[derive(Clone)]
pub struct ComponentCredential {
    component: Component,
    name: tonic::metadata::AsciiMetadataValue,
    secret: tonic::metadata::AsciiMetadataValue,
    secret_hex: Arc<str>,
}

impl fmt::Debug for ComponentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ComponentCredential({}, ***)", self.component)
    }
}

impl ComponentCredential {
    fn new(component: Component, bytes: [u8; 32]) -> Self {
        let secret_hex: Arc<str> = hex::encode(bytes).into();
        Self {
            component,
            name: tonic::metadata::AsciiMetadataValue::from_static(component.name()),
            // Hex is always valid ASCII metadata.
            secret: tonic::metadata::AsciiMetadataValue::try_from(secret_hex.as_ref())
                .unwrap_or_else(|_| unreachable!("hex is ASCII")),
            secret_hex,
        }
    }

    /// A credential given as 64 hex characters (`P2_COMPONENT_CREDENTIAL`), as
    /// `polyproto internal-credential <component>` prints it.
    pub fn from_hex(component: Component, text: &str) -> anyhow::Result<Self> {
        Ok(Self::new(
            component,
            parse_hex_32(text, "the component credential")?,
        ))
    }

    /// The component this credential belongs to.
    pub fn component(&self) -> Component {
        self.component
    }

    /// The credential as 64 hex characters.
    pub fn to_hex(&self) -> &str {
        &self.secret_hex
    }

    /// Adds the credential to outgoing metadata.
    pub fn apply(&self, metadata: &mut tonic::metadata::MetadataMap) {
        metadata.insert(COMPONENT_HEADER, self.name.clone());
        metadata.insert(CREDENTIAL_HEADER, self.secret.clone());
    }
}

/// Checks presented component credentials (every component's expected value, precomputed).
#[derive(Clone)]
pub struct ComponentVerifier {
    expected: [(Component, [u8; 32]); 5],
}

impl fmt::Debug for ComponentVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ComponentVerifier(***)")
    }
}

impl ComponentVerifier {
    /// The component whose valid credential `headers` carry; `UNAUTHENTICATED` otherwise.
    pub fn verify(&self, headers: &http::HeaderMap) -> Result<Component, Status> {
        use subtle::ConstantTimeEq as _;
        let missing = || {
            crate::error::Reason::ComponentRefused.tag(Status::unauthenticated(
                "internal call without a valid component credential: every call to a \
                 polyproto service must come from a component of this deployment",
            ))
        };
        let component = headers
            .get(COMPONENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Component::from_name)
            .ok_or_else(missing)?;
        let presented = headers
            .get(CREDENTIAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(missing)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(presented, &mut bytes).map_err(|_| missing())?;
        let expected = self
            .expected
            .iter()
            .find(|(c, _)| *c == component)
            .map(|(_, e)| e)
            .ok_or_else(missing)?;
        if bool::from(expected.ct_eq(&bytes)) {
            Ok(component)
        } else {
            Err(missing())
        }
    }
}

/// Which components may call which RPC of one service: `(full method path, callers)`, e.g.
/// `("/polyproto.identity.v1.Identity/SignCsr", &[Component::Session])`. A method that is not
/// listed is refused to everyone.
pub type CallerPolicy = &'static [(&'static str, &'static [Component])];

/// The component that made a call, put into the request extensions once its credential was
/// checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallingComponent(pub Component);

/// The server half of the boundary: the credential check and the per-RPC allow-list.
#[derive(Clone, Debug)]
pub struct ServerAuth {
    verifier: ComponentVerifier,
    policy: CallerPolicy,
}

impl ServerAuth {
    /// Checks credentials with `verifier` and callers against `policy`.
    pub fn new(verifier: ComponentVerifier, policy: CallerPolicy) -> Self {
        Self { verifier, policy }
    }

    /// Decides one call: `Ok(Some(component))` when it may proceed, `Ok(None)` for the health
    /// service, `Err(status)` otherwise.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Option<Component>, Status> {
        if path.starts_with(HEALTH_PATH_PREFIX) {
            return Ok(None);
        }
        let component = self.verifier.verify(headers)?;
        let allowed = self
            .policy
            .iter()
            .find(|(method, _)| *method == path)
            .map(|(_, callers)| *callers)
            .unwrap_or(&[]);
        if allowed.contains(&component) {
            Ok(Some(component))
        } else {
            Err(crate::error::Reason::ComponentRefused
                .denied(format!("the {component} component may not call {path}")))
        }
    }

    /// Wraps a tonic service so that every call passes [`ServerAuth::check`] first.
    pub fn wrap<S>(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: Arc::new(self.clone()),
        }
    }
}

/// A tonic service behind [`ServerAuth`].
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<ServerAuth>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for Authenticated<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        match self.auth.check(request.uri().path(), request.headers()) {
            Ok(component) => {
                if let Some(component) = component {
                    request.extensions_mut().insert(CallingComponent(component));
                }
                // Only from an authenticated component, and only a well-formed IP address.
                let address = component
                    .and_then(|_| request.headers().get(CLIENT_ADDRESS_HEADER))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<std::net::IpAddr>().ok());
                Box::pin(with_client_address(address, self.inner.call(request)))
            }
            Err(status) => {
                tracing::warn!(
                    path = request.uri().path(),
                    code = ?status.code(),
                    "refused an internal call"
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Metadata key carrying the address of the HTTP client a call is made for: set by the
/// gateway, relayed by every service to the calls it makes, read by the password throttle.
pub const CLIENT_ADDRESS_HEADER: &str = "x-p2-client-address";

tokio::task_local! {
    static CLIENT_ADDRESS: Option<std::net::IpAddr>;
}

/// The client address of the request being handled, if the gateway told it.
pub fn client_address() -> Option<std::net::IpAddr> {
    CLIENT_ADDRESS.try_with(|a| *a).ok().flatten()
}

/// Runs `future` with `address` as the client address its outgoing calls carry (formatted
/// only when a call is made). Spawned tasks do not inherit it: wrap them in this too.
pub async fn with_client_address<F: std::future::Future>(
    address: Option<std::net::IpAddr>,
    future: F,
) -> F::Output {
    CLIENT_ADDRESS.scope(address, future).await
}

/// Why a caller assertion was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// The request carries no assertion.
    #[error("the request carries no caller assertion: resolve the session token first")]
    Missing,
    /// Not an assertion of this deployment (malformed, or a bad MAC).
    #[error("the caller assertion is forged or malformed")]
    Invalid,
    /// The assertion's lifetime is over.
    #[error("the caller assertion has expired: resolve the session token again")]
    Expired,
}

impl From<AssertionError> for Status {
    fn from(error: AssertionError) -> Self {
        Status::unauthenticated(error.to_string())
    }
}

/// A verified caller assertion: the actor and session a call acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerAssertion {
    /// The actor's FID as the session service stored it (normalised).
    pub fid: String,
    /// The session ID.
    pub session_id: String,
    /// UNIX milliseconds after which the assertion is refused.
    pub expires_ms: u64,
}

/// Mints and verifies caller assertions.
///
/// Wire form (bytes): `"p2a1"`, expiry (u64 BE, UNIX ms), FID length (u16 BE), FID, session
/// ID length (u16 BE), session ID, then the HMAC-SHA256 of everything before it.
#[derive(Clone)]
pub struct AssertionKey(Arc<[u8; 32]>);

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AssertionKey(***)")
    }
}

const ASSERTION_MAGIC: &[u8; 4] = b"p2a1";
const MAC_LEN: usize = 32;

/// Current UNIX time in milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl AssertionKey {
    /// An assertion that `fid`'s session `session_id` is calling, valid until `expires_ms`.
    pub fn mint(&self, fid: &str, session_id: &str, expires_ms: u64) -> Vec<u8> {
        let fid_len = u16::try_from(fid.len()).unwrap_or(u16::MAX);
        let sid_len = u16::try_from(session_id.len()).unwrap_or(u16::MAX);
        let fid = &fid.as_bytes()[..usize::from(fid_len)];
        let sid = &session_id.as_bytes()[..usize::from(sid_len)];
        let mut out = Vec::with_capacity(4 + 8 + 2 + fid.len() + 2 + sid.len() + MAC_LEN);
        out.extend_from_slice(ASSERTION_MAGIC);
        out.extend_from_slice(&expires_ms.to_be_bytes());
        out.extend_from_slice(&fid_len.to_be_bytes());
        out.extend_from_slice(fid);
        out.extend_from_slice(&sid_len.to_be_bytes());
        out.extend_from_slice(sid);
        let mac = hmac(self.0.as_slice(), &[&out]);
        out.extend_from_slice(&mac);
        out
    }

    /// Verifies `bytes` at UNIX time `now_ms`.
    pub fn verify(&self, bytes: &[u8], now_ms: u64) -> Result<CallerAssertion, AssertionError> {
        if bytes.is_empty() {
            return Err(AssertionError::Missing);
        }
        let body_len = bytes
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(AssertionError::Invalid)?;
        let (body, mac) = bytes.split_at(body_len);
        let mut check = <HmacSha256 as hmac::Mac>::new_from_slice(self.0.as_slice())
            .map_err(|_| AssertionError::Invalid)?;
        check.update(body);
        check
            .verify_slice(mac)
            .map_err(|_| AssertionError::Invalid)?;
        let (fid, session_id, expires_ms) = parse_assertion_body(body)?;
        if now_ms >= expires_ms {
            return Err(AssertionError::Expired);
        }
        Ok(CallerAssertion {
            fid,
            session_id,
            expires_ms,
        })
    }
}

fn parse_assertion_body(body: &[u8]) -> Result<(String, String, u64), AssertionError> {
    let rest = body
        .strip_prefix(ASSERTION_MAGIC.as_slice())
        .ok_or(AssertionError::Invalid)?;
    let (expires, rest) = split(rest, 8)?;
    let expires_ms = u64::from_be_bytes(expires.try_into().map_err(|_| AssertionError::Invalid)?);
    let (fid, rest) = length_prefixed(rest)?;
    let (session_id, rest) = length_prefixed(rest)?;
    if !rest.is_empty() {
        return Err(AssertionError::Invalid);
    }
    Ok((fid, session_id, expires_ms))
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), AssertionError> {
    (bytes.len() >= at)
        .then(|| bytes.split_at(at))
        .ok_or(AssertionError::Invalid)
}

fn length_prefixed(bytes: &[u8]) -> Result<(String, &[u8]), AssertionError> {
    let (len, rest) = split(bytes, 2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (text, rest) = split(rest, len)?;
    let text = std::str::from_utf8(text).map_err(|_| AssertionError::Invalid)?;
    Ok((text.to_owned(), rest))
}

/// Where a component finds the internal key: `--internal-key`/`P2_INTERNAL_KEY` or
/// `--internal-key-file`/`P2_INTERNAL_KEY_FILE`. Flattened into every service's flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InternalKeyConfig {
    /// The deployment's internal key (64 hex characters, e.g. from `openssl rand -hex 32`):
    /// the same value in every service of one deployment. It authenticates internal gRPC calls
    /// and caller assertions.
    #[arg(long = "internal-key", env = "P2_INTERNAL_KEY", hide_env_values = true)]
    pub internal_key: Option<secrecy::SecretString>,
    /// File holding the internal key (64 hex characters), e.g. a mounted Kubernetes Secret.
    /// Used when `--internal-key` is not given.
    #[arg(long = "internal-key-file", env = "P2_INTERNAL_KEY_FILE")]
    pub internal_key_file: Option<std::path::PathBuf>,
}

impl InternalKeyConfig {
    /// A configuration holding `key` (in-process stacks).
    pub fn with_key(key: &InternalKey) -> Self {
        Self {
            internal_key: Some(key.to_hex().into()),
            internal_key_file: None,
        }
    }

    /// The configured key; a clear one-line error when there is none.
    pub fn load(&self) -> anyhow::Result<InternalKey> {
        use secrecy::ExposeSecret as _;
        if let Some(key) = &self.internal_key {
            return InternalKey::from_hex(key.expose_secret()).context("invalid P2_INTERNAL_KEY");
        }
        if let Some(path) = &self.internal_key_file {
            return InternalKey::from_file(path);
        }
        anyhow::bail!(
            "no internal key: set P2_INTERNAL_KEY (64 hex characters, e.g. from `openssl rand \
             -hex 32`, the same in every component) or P2_INTERNAL_KEY_FILE"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(component: &str, credential: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(COMPONENT_HEADER, component.parse().unwrap());
        headers.insert(CREDENTIAL_HEADER, credential.parse().unwrap());
        headers
    }

    #[test]
    fn a_components_own_credential_verifies_and_nothing_else_does() {
        let key = InternalKey::generate();
        let verifier = key.verifier();
        let session = key.credential(Component::Session);
        assert_eq!(
            verifier
                .verify(&headers("session", session.to_hex()))
                .unwrap(),
            Component::Session
        );
        // The session credential does not make its holder the gateway.
        let err = verifier
            .verify(&headers("gateway", session.to_hex()))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // Another deployment's credential is worthless here.
        let other = InternalKey::generate().credential(Component::Session);
        assert!(
            verifier
                .verify(&headers("session", other.to_hex()))
                .is_err()
        );
        assert!(verifier.verify(&headers("session", "00")).is_err());
        assert!(
            verifier
                .verify(&headers("nobody", session.to_hex()))
                .is_err()
        );
        assert!(verifier.verify(&http::HeaderMap::new()).is_err());
    }

    #[test]
    fn credentials_round_trip_through_hex_and_keys_load_from_hex() {
        let key = InternalKey::generate();
        let again = InternalKey::from_hex(&key.to_hex()).unwrap();
        let a = key.credential(Component::Gateway);
        let b = ComponentCredential::from_hex(
            Component::Gateway,
            again.credential(Component::Gateway).to_hex(),
        )
        .unwrap();
        assert_eq!(a.to_hex(), b.to_hex());
        assert!(InternalKey::from_hex("abc").is_err());
        assert!(!format!("{key:?}{a:?}").contains(&key.to_hex()[..8]));
        let err = InternalKeyConfig::default().load().unwrap_err();
        assert!(format!("{err:#}").contains("P2_INTERNAL_KEY"));
    }

    #[test]
    fn the_policy_admits_only_listed_components_and_health_needs_nothing() {
        const POLICY: CallerPolicy = &[("/p.S/A", &[Component::Session])];
        let key = InternalKey::generate();
        let auth = ServerAuth::new(key.verifier(), POLICY);
        let session = key.credential(Component::Session);
        let gateway = key.credential(Component::Gateway);
        assert_eq!(
            auth.check("/p.S/A", &headers("session", session.to_hex()))
                .unwrap(),
            Some(Component::Session)
        );
        let denied = auth
            .check("/p.S/A", &headers("gateway", gateway.to_hex()))
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let unlisted = auth
            .check("/p.S/B", &headers("session", session.to_hex()))
            .unwrap_err();
        assert_eq!(unlisted.code(), tonic::Code::PermissionDenied);
        let anonymous = auth.check("/p.S/A", &http::HeaderMap::new()).unwrap_err();
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            auth.check("/grpc.health.v1.Health/Check", &http::HeaderMap::new())
                .unwrap(),
            None
        );
    }

    #[test]
    fn assertions_verify_until_they_expire_and_resist_tampering() {
        let key = InternalKey::generate().assertion_key();
        let minted = key.mint("alice@p2.test", "laptop 1", 10_000);
        let verified = key.verify(&minted, 9_999).unwrap();
        assert_eq!(verified.fid, "alice@p2.test");
        assert_eq!(verified.session_id, "laptop 1");
        assert_eq!(key.verify(&minted, 10_000), Err(AssertionError::Expired));
        assert_eq!(key.verify(&[], 0), Err(AssertionError::Missing));
        // Every single-byte change is caught.
        for i in 0..minted.len() {
            let mut forged = minted.clone();
            forged[i] ^= 1;
            assert_eq!(key.verify(&forged, 0), Err(AssertionError::Invalid), "{i}");
        }
        assert_eq!(
            key.verify(&minted[..minted.len() - 1], 0),
            Err(AssertionError::Invalid)
        );
        // Another deployment's assertion key does not verify it.
        let other = InternalKey::generate().assertion_key();
        assert_eq!(other.verify(&minted, 0), Err(AssertionError::Invalid));
        // Nor does a component credential double as an assertion key.
        assert_eq!(key.verify(&[0u8; 64], 0), Err(AssertionError::Invalid));
    }
}
