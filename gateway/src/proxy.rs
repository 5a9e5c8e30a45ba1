//! The client's address behind a reverse proxy (an Ingress controller, a load balancer).
//!
//! The address of a request is the TCP peer, unless the peer is a trusted proxy
//! (`--trusted-proxies`): then `X-Forwarded-For` is read from the right (each proxy appends the
//! address it saw) and the first address that is not a trusted proxy is the client. Headers
//! from untrusted peers are ignored, so a client cannot pick its own address to dodge the rate
//! limits or the password throttle. Connection caps (`--max-connections-per-ip`) still count
//! TCP peers: they are enforced before any header is read.

use std::net::IpAddr;
use std::str::FromStr;

/// One address block, `ADDRESS/PREFIX` (or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (address, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network = IpAddr::from_str(address)
            .map_err(|_| format!("{s:?} is not an IP address or ADDRESS/PREFIX block"))?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

/// The trusted proxies; empty trusts nobody (the TCP peer is the client).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    blocks: Vec<Cidr>,
}

impl TrustedProxies {
    /// From a comma-separated list of blocks, e.g. `10.0.0.0/8,fd00::/8` (empty: none).
    pub fn parse(list: &str) -> Result<Self, String> {
        let blocks = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<_, _>>()?;
        Ok(Self { blocks })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|b| b.contains(ip))
    }

    /// The client's address for a request from `peer` with these `headers`.
    pub fn client(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.blocks.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Every X-Forwarded-For header, in order, each a comma-separated list; walk from the
        // right, past the trusted hops.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Ok(ip) = IpAddr::from_str(hop.trim()) else {
                // Garbage where an address should be: stop at what is known.
                break;
            };
            client = ip.to_canonical();
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> axum::http::HeaderMap {
        let mut map = axum::http::HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", v.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let b: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(b.contains(ip("10.200.1.2")));
        assert!(!b.contains(ip("11.0.0.1")));
        assert!(b.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped counts");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert!(TrustedProxies::parse("10.0.0.0/8, ,fd00::/8").is_ok());
        assert!(TrustedProxies::parse("10.0.0.0/8,x").is_err());
    }

    #[test]
    fn only_a_trusted_peer_may_name_the_client() {
        let none = TrustedProxies::default();
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let forwarded = headers(&["198.51.100.1, 10.0.0.9"]);
        // Nobody trusted, or an untrusted peer: the header is ignored.
        assert_eq!(none.client(ip("10.0.0.5"), &forwarded), ip("10.0.0.5"));
        assert_eq!(
            proxies.client(ip("203.0.113.5"), &forwarded),
            ip("203.0.113.5")
        );
        // Through two trusted hops to the client.
        assert_eq!(
            proxies.client(ip("10.0.0.5"), &forwarded),
            ip("198.51.100.1")
        );
        // A client that forges an extra entry on the left gets its real address (the
        // rightmost untrusted one).
        let forged = headers(&["1.2.3.4", "198.51.100.1, 10.0.0.9"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &forged), ip("198.51.100.1"));
        // No header, or garbage: the last known address.
        assert_eq!(
            proxies.client(ip("10.0.0.5"), &headers(&[])),
            ip("10.0.0.5")
        );
        assert_eq!(
            proxies.client(ip("10.0.0.5"), &headers(&["oops, 10.0.0.7"])),
            ip("10.0.0.7")
        );
    }
}
