//! The discovery domain: service names (spec 8.2), provider URLs, providers. Pure: no I/O.

use p2_proto::common::v1 as common;

use crate::error::DiscoveryError;

/// Shortest service name, in characters (spec 8.2).
pub const MIN_SERVICE_NAME_LEN: usize = 2;
/// Longest service name, in characters (spec 8.2).
pub const MAX_SERVICE_NAME_LEN: usize = 64;
/// Longest provider URL accepted, in bytes (the de-facto limit of browsers and proxies).
pub const MAX_URL_LEN: usize = 2048;

/// A service name: a namespace of core spec 8.2, 2 to 64 characters of `a-z`, `0-9`, `-`
/// and `_`. Upper case is rejected rather than folded: the spec says "must only contain
/// lowercase letters", and two spellings of one name would be two services.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

impl ServiceName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, DiscoveryError> {
        let shown = shorten(name);
        let invalid = |why: String| {
            DiscoveryError::InvalidArgument(format!("invalid service name {shown}: {why}"))
        };
        let len = name.chars().count();
        if !(MIN_SERVICE_NAME_LEN..=MAX_SERVICE_NAME_LEN).contains(&len) {
            return Err(invalid(format!(
                "it must be {MIN_SERVICE_NAME_LEN} to {MAX_SERVICE_NAME_LEN} characters long \
                 (core spec 8.2), not {len}."
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
        {
            return Err(invalid(format!(
                "the character {bad:?} is not allowed; use only a-z, 0-9, '-' and '_' \
                 (core spec 8.2)."
            )));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `value` quoted for an error message, cut short so that huge inputs do not come back whole.
fn shorten(value: &str) -> String {
    const SHOWN: usize = 80;
    if value.chars().count() > SHOWN {
        format!("{:?}…", value.chars().take(SHOWN).collect::<String>())
    } else {
        format!("{value:?}")
    }
}

/// A provider's base URL: absolute `http` or `https`, with a host, without user info, query
/// or fragment (clients append `/.p2/<service>` to it), at most [`MAX_URL_LEN`] bytes of
/// printable ASCII.
///
/// Stored and answered with the scheme and host lower-cased. Its [`key`](Self::key) also
/// drops trailing slashes, so `https://Chat.example` and `https://chat.example/` (what
/// `url::Url` and thus the SDK send) name the same provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUrl {
    url: String,
    key: String,
}

impl ProviderUrl {
    /// Validates and normalises `url`.
    pub fn parse(url: &str) -> Result<Self, DiscoveryError> {
        let shown = shorten(url);
        let invalid = |why: &str| {
            DiscoveryError::InvalidArgument(format!("invalid provider URL {shown}: {why}"))
        };
        if url.len() > MAX_URL_LEN {
            return Err(invalid(&format!(
                "it is {} bytes long; the limit is {MAX_URL_LEN}.",
                url.len()
            )));
        }
        if url.is_empty() {
            return Err(invalid("it must not be empty."));
        }
        if let Some(bad) = url.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(invalid(&format!(
                "the character {bad:?} is not allowed (no spaces or control characters; \
                 percent-encode anything else)."
            )));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(
                "it must be an absolute http(s) URL such as https://chat.example.com.",
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(invalid("only the http and https schemes are allowed."));
        }
        if rest.contains('?') || rest.contains('#') {
            return Err(invalid(
                "a provider URL is a base URL: it must not have a query or a fragment.",
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(invalid("it must not contain user information (user@host)."));
        }
        let host = parse_authority(authority).map_err(|why| invalid(&why))?;
        check_path(path).map_err(|why| invalid(&why))?;
        let url = format!("{scheme}://{host}{path}");
        let key = format!("{scheme}://{host}{}", path.trim_end_matches('/'));
        Ok(Self { url, key })
    }

    /// The normalised URL.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The identity of the provider: the normalised URL without trailing slashes.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Checks `host[:port]` and returns it with the host lower-cased.
fn parse_authority(authority: &str) -> Result<String, String> {
    if authority.is_empty() {
        return Err("it has no host.".into());
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner
            .split_once(']')
            .ok_or("an IPv6 host must be written in brackets, e.g. http://[::1]:8080.")?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{v6:?} is not an IPv6 address."))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("junk after the IPv6 host.")?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host = p2_model::validate_domain(host).map_err(|e| format!("bad host: {e}"))?;
        (host, port)
    };
    match port {
        None => Ok(host),
        Some(port) => {
            let valid = !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| (1..=65_535).contains(&p));
            if valid {
                Ok(format!("{host}:{port}"))
            } else {
                Err(format!("{port:?} is not a port number (1-65535)."))
            }
        }
    }
}

/// Checks that a URL path holds only RFC 3986 path characters and well-formed %-escapes.
fn check_path(path: &str) -> Result<(), String> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let escape = bytes.get(i + 1..i + 3);
            if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return Err("a '%' in the path must start a %XX escape.".into());
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if !allowed {
            return Err(format!(
                "the character {:?} is not allowed in a URL path; percent-encode it.",
                char::from(b)
            ));
        }
        i += 1;
    }
    Ok(())
}

/// One provider of one service of an actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The service.
    pub service: String,
    /// The provider's normalised base URL.
    pub url: String,
    /// Whether it is the actor's primary provider of the service.
    pub primary: bool,
}

impl From<Provider> for common::ServiceProvider {
    fn from(provider: Provider) -> Self {
        Self {
            service: provider.service,
            url: provider.url,
            primary: provider.primary,
        }
    }
}

/// How many providers a discovery asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Every provider.
    All,
    /// The primary provider of each service (`limit=1`).
    PrimariesOnly,
    /// At most this many (at least 2), primaries first.
    AtMost(u64),
}

impl Limit {
    /// The limit of the public API: absent = all, 0 is invalid, 1 = primaries only.
    pub fn from_request(limit: Option<u64>) -> Result<Self, DiscoveryError> {
        match limit {
            None => Ok(Self::All),
            Some(0) => Err(DiscoveryError::InvalidArgument(
                "parameter `limit` must be at least 1 (1 = only the primary provider of each \
                 service; omit it for all)"
                    .into(),
            )),
            Some(1) => Ok(Self::PrimariesOnly),
            Some(n) => Ok(Self::AtMost(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_spec_8_2() {
        for good in ["ab", "polyproto-chat", "a_b-c", "x1", &"a".repeat(64)] {
            assert_eq!(ServiceName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "a",
            &"a".repeat(65),
            "Chat",
            "chat app",
            "chat.app",
            "chät",
            "a/b",
            "../x",
            "a%20",
        ] {
            let err = ServiceName::parse(bad).unwrap_err();
            let DiscoveryError::InvalidArgument(message) = err else {
                panic!("{bad:?} gave another error");
            };
            assert!(message.len() < 400, "{message}");
        }
    }

    #[test]
    fn provider_urls_are_absolute_http_and_normalised() {
        let cases = [
            (
                "https://chat.example.com",
                "https://chat.example.com",
                "https://chat.example.com",
            ),
            (
                "https://chat.example.com/",
                "https://chat.example.com/",
                "https://chat.example.com",
            ),
            (
                "HTTPS://Chat.Example.COM/Base/",
                "https://chat.example.com/Base/",
                "https://chat.example.com/Base",
            ),
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080",
            ),
            ("http://[::1]:9/p", "http://[::1]:9/p", "http://[::1]:9/p"),
            (
                "https://localhost/a%2Fb",
                "https://localhost/a%2Fb",
                "https://localhost/a%2Fb",
            ),
        ];
        for (input, url, key) in cases {
            let parsed = ProviderUrl::parse(input).unwrap();
            assert_eq!(parsed.as_str(), url, "{input}");
            assert_eq!(parsed.key(), key, "{input}");
        }
    }

    #[test]
    fn bad_provider_urls_are_rejected_with_a_reason() {
        let long = format!("https://example.com/{}", "a".repeat(10_000));
        for bad in [
            "",
            "chat.example.com",
            "/relative/path",
            "//example.com",
            "javascript:alert(1)",
            "JavaScript://example.com/%0aalert(1)",
            "data:text/html,hi",
            "ftp://example.com",
            "file:///etc/passwd",
            "https://",
            "https:///path",
            "https://user:pw@example.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:",
            "https://example.com:http",
            "https://exa mple.com",
            "https://example.com/a b",
            " https://example.com",
            "https://example.com/\n",
            "https://example.com/?q=1",
            "https://example.com/#top",
            "https://example.com/%zz",
            "https://example.com/<script>",
            "https://[::1",
            "https://[nope]/",
            "https://bad_host.com",
            "https://example..com",
            long.as_str(),
        ] {
            let err = ProviderUrl::parse(bad).unwrap_err();
            let DiscoveryError::InvalidArgument(message) = err else {
                panic!("{bad:?} gave another error");
            };
            assert!(message.len() < 400, "{message}");
        }
    }

    #[test]
    fn limits_follow_the_openapi() {
        assert_eq!(Limit::from_request(None).unwrap(), Limit::All);
        assert_eq!(Limit::from_request(Some(1)).unwrap(), Limit::PrimariesOnly);
        assert_eq!(Limit::from_request(Some(7)).unwrap(), Limit::AtMost(7));
        assert!(Limit::from_request(Some(0)).is_err());
    }
}
