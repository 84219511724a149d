//! The client's address behind reverse proxies. The connection's peer is
//! the client unless it is a configured trusted proxy; then the
//! `X-Forwarded-For` entries are read from the right (the nearest hop)
//! past every trusted proxy, and the first other address is the client.
//! With no trusted proxy configured the header is ignored: anyone could
//! write it.

use std::net::IpAddr;

/// An address range (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{text:?}: bad prefix length"))?
            }
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses a comma-separated list of ranges.
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, String> {
    text.split(',').filter(|t| !t.trim().is_empty()).map(str::parse).collect()
}

/// The client's address for a request from `peer` whose `X-Forwarded-For`
/// headers are `forwarded_for` (each may list several hops).
pub fn client_address<'a>(trusted: &[Cidr], peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a str>) -> IpAddr {
    let is_trusted = |a: IpAddr| trusted.iter().any(|c| c.contains(a));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(a) if is_trusted(a) => continue,
            Ok(a) => return a,
            // Garbage in the chain: nothing left of it can be trusted.
            Err(_) => return peer,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = parse_list("10.0.0.0/8, 2001:db8::/32").unwrap();
        let mut headers = vec!["198.51.100.7, 203.0.113.9, 10.1.2.3"];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_address(&trusted, proxy, headers.iter().copied()), "203.0.113.9".parse::<IpAddr>().unwrap());
        // Not from a trusted proxy: the header is ignored.
        let direct: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_address(&trusted, direct, headers.iter().copied()), direct);
        // Nothing trusted configured: ignored too.
        assert_eq!(client_address(&[], proxy, headers.iter().copied()), proxy);
        headers = vec!["not-an-address, 10.1.1.1"];
        assert_eq!(client_address(&trusted, proxy, headers.iter().copied()), proxy);
        assert!("2001:db8::/32".parse::<Cidr>().unwrap().contains("2001:db8:1::5".parse().unwrap()));
        assert!(!"10.0.0.0/8".parse::<Cidr>().unwrap().contains("11.0.0.1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("11.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "ü/8".parse::<Cidr>().is_err());
    }
}
