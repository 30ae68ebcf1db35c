//! The Via header (RFC 3261 section 20.42, 18.2.1; RFC 3581 rport).

use super::text::{param, trim};
use super::uri::split_hostport;

/// RFC 3261 branch magic cookie (section 8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// One via-parm: `SIP/2.0/UDP host:port;params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// Transport token (`UDP`, `TCP`, `TLS`, `WS`, `WSS`, `SCTP`), as written.
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    /// Parameters including the leading `;`.
    pub params: &'a str,
}

impl<'a> Via<'a> {
    /// Parses one Via value (not a comma-joined list). `None` if malformed.
    pub fn parse(s: &'a str) -> Option<Via<'a>> {
        let s = trim(s);
        let mut parts = s.splitn(3, '/');
        let name = trim(parts.next()?);
        let version = trim(parts.next()?);
        let rest = trim(parts.next()?);
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return None;
        }
        let tend = rest.find([' ', '\t', '\r', '\n'])?;
        let transport = &rest[..tend];
        if transport.is_empty() || !transport.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
            return None;
        }
        let rest = trim(&rest[tend..]);
        let (sent_by, params) = match rest.find(';') {
            Some(p) => (&rest[..p], &rest[p..]),
            None => (rest, ""),
        };
        let (host, port) = split_hostport(sent_by)?;
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ',') {
            return None;
        }
        if host.starts_with('[') && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        let port = match port {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        Some(Via { transport, host, port, params })
    }

    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param(self.params, name)
    }

    /// The branch parameter (RFC 3261 8.1.1.7).
    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch").flatten()
    }

    /// `received=` (RFC 3261 18.2.1).
    pub fn received(&self) -> Option<&'a str> {
        self.param("received").flatten()
    }

    /// `Some(None)` for a bare `rport`, `Some(Some(p))` when filled in (RFC 3581).
    pub fn rport(&self) -> Option<Option<&'a str>> {
        self.param("rport")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_via() {
        let v = Via::parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776;rport").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "10.0.0.1");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some("z9hG4bK776"));
        assert_eq!(v.rport(), Some(None));
        let v = Via::parse("SIP / 2.0 / TCP [2001:db8::9]:5061 ;branch=z9hG4bKx").unwrap();
        assert_eq!(v.host, "[2001:db8::9]");
        assert_eq!(v.transport, "TCP");
        let v = Via::parse("SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKy").unwrap();
        assert_eq!(v.port, None);
        assert!(Via::parse("SIP/3.0/UDP x").is_none());
        assert!(Via::parse("SIP/2.0/UDP").is_none());
        assert!(Via::parse("garbage").is_none());
        assert!(Via::parse("SIP/2.0/UDP host:abc").is_none());
    }
}
