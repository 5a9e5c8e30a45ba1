//! The outbound HTTP client for other home servers, hardened against server-side request
//! forgery (outbound HTTP is an attack surface: the URL's host comes from a client's FID).
//!
//! - HTTPS only, except for the domains of `P2_FEDERATION_HOSTS` (development and tests),
//!   whose mapped base URL may be plain `http://` on any address, loopback included.
//! - Every host name is resolved by [`PublicResolver`], which drops loopback, private,
//!   link-local (cloud metadata: 169.254.169.254, fd00:ec2::254), shared, documentation,
//!   multicast and reserved addresses *after* resolution, so the connection goes only to an
//!   address that was checked (no second lookup an attacker's DNS could answer differently).
//!   IP literals in URLs get the same check before any connection.
//! - Connect timeout and total timeout (connection, headers and body) per request.
//! - Response bodies are streamed and cut at a byte bound; a larger declared
//!   `Content-Length` is refused before reading.
//! - Redirects are followed only within the same origin (scheme, host, port), at most 3;
//!   anything else ends the request with the 3xx, which is refused.
//! - At most `max_fetches_per_domain` requests to one foreign domain are in flight at once;
//!   one more fails at once ([`FetchError::Busy`]) instead of queueing behind a slow server.
//! - No proxies from the environment (they would bypass the address checks).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many redirects within one origin a request follows.
pub const MAX_REDIRECTS: usize = 3;
/// Above this many tracked domains, idle per-domain slots are dropped.
const MAX_TRACKED_DOMAINS: usize = 1024;

/// Why a fetch from a foreign home server failed; every message is safe to show the client.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one we may fetch (scheme, address), or it could not be built.
    #[error("{0}")]
    Refused(String),
    /// The server did not answer in time, could not be reached, or broke the connection.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered something other than what the route promises.
    #[error("{0}")]
    BadAnswer(String),
    /// Too many fetches to this domain are in flight already.
    #[error(
        "too many requests to the home server {0} are in flight on this server; try again shortly"
    )]
    Busy(String),
}

/// Whether a connection to `ip` may be made for a foreign home server: only globally routable
/// unicast addresses.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fd00:ec2::254 among them
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
                || (s[0..6] == [0, 0, 0, 0, 0, 0])) // IPv4-compatible (deprecated)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

/// A DNS resolver that answers only public addresses (see [`is_public`]); a name that
/// resolves to none is an error, so reqwest never connects to anything else.
#[derive(Debug, Clone, Default)]
pub struct PublicResolver;

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if resolved.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address (loopback, private, link-local and \
                     metadata addresses are refused)"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(resolved.into_iter());
            Ok(addrs)
        })
    }
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Domain → base URL for development and tests (`P2_FEDERATION_HOSTS`).
    pub hosts: HashMap<String, Url>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout of one request, body included.
    pub timeout: Duration,
    /// Largest response body read.
    pub max_response_bytes: usize,
    /// Most requests in flight to one foreign domain.
    pub max_fetches_per_domain: usize,
}

/// The hardened client (cheap to clone: shared state).
#[derive(Clone)]
pub struct FederationClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    settings: ClientSettings,
    /// For everything but mapped origins: HTTPS only, public addresses only.
    strict: reqwest::Client,
    /// For mapped origins only (plain http and loopback allowed).
    mapped: reqwest::Client,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

fn same_origin_redirects(https_only: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        let same_origin = attempt.url().origin() == first.origin();
        if attempt.previous().len() > MAX_REDIRECTS
            || !same_origin
            || (https_only && attempt.url().scheme() != "https")
        {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

impl FederationClient {
    /// Builds both underlying clients.
    pub fn new(settings: ClientSettings) -> anyhow::Result<Self> {
        let base = |https_only: bool| {
            reqwest::Client::builder()
                .connect_timeout(settings.connect_timeout)
                .timeout(settings.timeout)
                .no_proxy()
                .redirect(same_origin_redirects(https_only))
                .user_agent(concat!("polyproto-server/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(4)
        };
        let strict = base(true)
            .https_only(true)
            .dns_resolver(Arc::new(PublicResolver))
            .build()?;
        let mapped = base(false).build()?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                settings,
                strict,
                mapped,
                slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// The base URL of `domain`'s web server: its mapping, else `https://<domain>/`.
    pub fn base_url(&self, domain: &str) -> Result<Url, FetchError> {
        if let Some(url) = self.inner.settings.hosts.get(domain) {
            return Ok(url.clone());
        }
        Url::parse(&format!("https://{domain}/"))
            .map_err(|_| FetchError::Refused(format!("{domain} is no valid host name")))
    }

    fn is_mapped(&self, domain: &str, url: &Url) -> bool {
        self.inner
            .settings
            .hosts
            .get(domain)
            .is_some_and(|base| base.origin() == url.origin())
    }

    fn permit(&self, domain: &str) -> Result<OwnedSemaphorePermit, FetchError> {
        let limit = self.inner.settings.max_fetches_per_domain.max(1);
        let semaphore = {
            let mut slots = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slots.len() >= MAX_TRACKED_DOMAINS && !slots.contains_key(domain) {
                // Idle slots (nobody holds a permit) go; busy ones keep their bound.
                slots.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < limit);
            }
            slots
                .entry(domain.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone()
        };
        semaphore
            .try_acquire_owned()
            .map_err(|_| FetchError::Busy(domain.to_owned()))
    }

    /// GETs `url` on behalf of `domain`'s home server and returns the body (at most the byte
    /// bound) of a 2xx answer. `accept` is the Accept header.
    pub async fn get(&self, domain: &str, url: &Url, accept: &str) -> Result<Vec<u8>, FetchError> {
        let mapped = self.is_mapped(domain, url);
        if !mapped {
            if url.scheme() != "https" {
                return Err(FetchError::Refused(format!(
                    "{url} is not an https URL: home servers are fetched over HTTPS only"
                )));
            }
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                Some(url::Host::Domain(_)) => None,
                None => return Err(FetchError::Refused(format!("{url} names no host"))),
            };
            if let Some(ip) = literal.filter(|ip| !is_public(*ip)) {
                return Err(FetchError::Refused(format!(
                    "{url} points at {ip}, which is not a public address"
                )));
            }
        }
        let _permit = self.permit(domain)?;
        let client = if mapped {
            &self.inner.mapped
        } else {
            &self.inner.strict
        };
        let timeout = self.inner.settings.timeout;
        let max = self.inner.settings.max_response_bytes;
        let fetch = async {
            let mut response = client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, accept)
                .send()
                .await
                .map_err(|e| describe(url, &e))?;
            let status = response.status();
            if status.is_redirection() {
                return Err(FetchError::BadAnswer(format!(
                    "{url} answered {status} (redirects to other hosts are not followed)"
                )));
            }
            if !status.is_success() {
                return Err(FetchError::BadAnswer(format!("{url} answered {status}")));
            }
            if response
                .content_length()
                .is_some_and(|len| len > max as u64)
            {
                return Err(FetchError::BadAnswer(format!(
                    "{url} answered more than {max} bytes"
                )));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| describe(url, &e))? {
                if body.len() + chunk.len() > max {
                    return Err(FetchError::BadAnswer(format!(
                        "{url} answered more than {max} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        // reqwest's own total timeout covers the body too; this one also covers the resolver.
        match tokio::time::timeout(timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Unreachable(format!(
                "{url} did not answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

fn describe(url: &Url, error: &reqwest::Error) -> FetchError {
    if error.is_timeout() {
        return FetchError::Unreachable(format!("{url} did not answer in time"));
    }
    if error.is_connect() {
        // The resolver's refusal is a connect error: name it.
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if text.contains("no public address") {
                return FetchError::Refused(text);
            }
            source = cause.source();
        }
        return FetchError::Unreachable(format!("{url} could not be reached"));
    }
    if error.is_redirect() {
        return FetchError::BadAnswer(format!("{url} redirected too often"));
    }
    FetchError::Unreachable(format!("{url} broke off the answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(hosts: &[(&str, &str)], max: usize) -> FederationClient {
        FederationClient::new(ClientSettings {
            hosts: hosts
                .iter()
                .map(|(d, u)| ((*d).to_owned(), Url::parse(u).unwrap()))
                .collect(),
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_millis(1000),
            max_response_bytes: 1024,
            max_fetches_per_domain: max,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn unmapped_hosts_must_be_https_and_public_after_resolution() {
        let client = client(&[], 8);
        for (url, expected) in [
            ("http://example.com/", "not an https URL"),
            ("https://127.0.0.1/", "not a public address"),
            ("https://[::1]:8443/", "not a public address"),
            (
                "https://169.254.169.254/latest/meta-data/",
                "not a public address",
            ),
            // Resolved, then refused: localhost names loopback addresses only.
            ("https://localhost:1/", "no public address"),
        ] {
            let error = client
                .get("x.test", &Url::parse(url).unwrap(), "application/json")
                .await
                .unwrap_err();
            assert!(matches!(error, FetchError::Refused(_)), "{url}: {error:?}");
            assert!(error.to_string().contains(expected), "{url}: {error}");
        }
    }

    #[tokio::test]
    async fn a_mapped_origin_may_be_plain_http_on_loopback_but_only_that_origin() {
        let client = client(&[("a.test", "http://127.0.0.1:9/")], 8);
        // The mapped origin is tried (nothing listens on port 9: unreachable, not refused)...
        let error = client
            .get(
                "a.test",
                &Url::parse("http://127.0.0.1:9/x").unwrap(),
                "*/*",
            )
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Unreachable(_)), "{error:?}");
        // ...another port of loopback is not.
        let error = client
            .get(
                "a.test",
                &Url::parse("http://127.0.0.1:10/x").unwrap(),
                "*/*",
            )
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Refused(_)), "{error:?}");
    }

    #[test]
    fn fetches_per_domain_are_bounded_and_fail_fast_at_the_bound() {
        let client = client(&[], 2);
        let first = client.permit("a.test").unwrap();
        let _second = client.permit("a.test").unwrap();
        assert!(matches!(client.permit("a.test"), Err(FetchError::Busy(_))));
        // Other domains are not affected; a permit given back is free again.
        let _other = client.permit("b.test").unwrap();
        drop(first);
        assert!(client.permit("a.test").is_ok());
    }

    #[test]
    fn only_globally_routable_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
