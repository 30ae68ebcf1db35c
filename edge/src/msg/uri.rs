//! SIP and SIPS URIs (RFC 3261 section 19.1), as borrowed views.

use super::text::{param, trim};
use std::net::IpAddr;

/// A parsed `sip:` or `sips:` URI. All parts borrow from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `true` for `sips:`.
    pub secure: bool,
    /// User part, still percent-encoded (may carry `;` user parameters).
    pub user: Option<&'a str>,
    /// Host name or address; IPv6 keeps its brackets.
    pub host: &'a str,
    pub port: Option<u16>,
    /// URI parameters including the leading `;`, or empty.
    pub params: &'a str,
    /// URI headers after `?`, or empty.
    pub headers: &'a str,
}

/// Why a URI could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    #[error("not a sip: or sips: URI")]
    Scheme,
    #[error("empty or malformed host")]
    Host,
    #[error("malformed port")]
    Port,
}

impl<'a> SipUri<'a> {
    /// Parses `sip:user:pass@host:port;params?headers` (RFC 3261 19.1.1).
    pub fn parse(s: &'a str) -> Result<SipUri<'a>, UriError> {
        let s = trim(s);
        // Compare bytes: a fixed offset may fall inside a multi-byte character.
        let b = s.as_bytes();
        let (secure, rest) = if b.len() > 4 && b[..4].eq_ignore_ascii_case(b"sip:") {
            (false, &s[4..])
        } else if b.len() > 5 && b[..5].eq_ignore_ascii_case(b"sips:") {
            (true, &s[5..])
        } else {
            return Err(UriError::Scheme);
        };
        let (rest, headers) = match rest.find('?') {
            Some(q) => (&rest[..q], &rest[q + 1..]),
            None => (rest, ""),
        };
        let (user, hostpart) = match rest.rfind('@') {
            Some(at) => {
                let u = &rest[..at];
                // strip password
                let u = u.split(':').next().unwrap_or(u);
                (Some(u), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let (hostport, params) = match hostpart.find(';') {
            Some(p) => (&hostpart[..p], &hostpart[p..]),
            None => (hostpart, ""),
        };
        let (host, port) = split_hostport(hostport).ok_or(UriError::Host)?;
        let port = match port {
            Some(p) => Some(p.parse::<u16>().map_err(|_| UriError::Port)?),
            None => None,
        };
        if !valid_host(host) {
            return Err(UriError::Host);
        }
        Ok(SipUri { secure, user, host, port, params, headers })
    }

    /// A URI parameter (`transport`, `lr`, `maddr`, ...).
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param(self.params, name)
    }

    /// The `transport=` parameter, lowercased comparison left to the caller.
    pub fn transport(&self) -> Option<&'a str> {
        self.param("transport").flatten()
    }

    /// `true` if the URI carries the `lr` parameter (RFC 3261 16.12 loose routing).
    pub fn lr(&self) -> bool {
        self.param("lr").is_some()
    }

    /// The host as an IP address, if it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h.parse().ok()
    }
}

/// Splits `host[:port]`, handling bracketed IPv6. Returns `None` on an empty host.
pub fn split_hostport(s: &str) -> Option<(&str, Option<&str>)> {
    let s = trim(s);
    if s.is_empty() {
        return None;
    }
    if s.starts_with('[') {
        let close = s.find(']')?;
        let host = &s[..=close];
        let rest = &s[close + 1..];
        if rest.is_empty() {
            return Some((host, None));
        }
        let port = rest.strip_prefix(':')?;
        return Some((host, Some(trim(port))));
    }
    match s.rfind(':') {
        Some(c) => {
            let host = trim(&s[..c]);
            if host.is_empty() {
                return None;
            }
            Some((host, Some(trim(&s[c + 1..]))))
        }
        None => Some((s, None)),
    }
}

fn valid_host(h: &str) -> bool {
    if h.is_empty() {
        return false;
    }
    if h.starts_with('[') {
        return h.ends_with(']') && h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    }
    h.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
}

/// Decodes `%XX` escapes in a URI user part (RFC 3261 19.1.2, RFC 3986 2.1).
pub fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri() {
        let u = SipUri::parse("sip:alice:secret@example.com:5070;transport=tcp;lr?subject=x").unwrap();
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.lr());
        assert_eq!(u.headers, "subject=x");
    }

    #[test]
    fn ipv6_and_user_params() {
        let u = SipUri::parse("sips:+123;phone-context=x@[2001:db8::1]:5061").unwrap();
        assert!(u.secure);
        assert_eq!(u.user, Some("+123;phone-context=x"));
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.ip(), Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn bad_uris() {
        assert_eq!(SipUri::parse("http://x"), Err(UriError::Scheme));
        assert_eq!(SipUri::parse("sip:@"), Err(UriError::Host));
        assert_eq!(SipUri::parse("sip:a@b:99999"), Err(UriError::Port));
        assert_eq!(SipUri::parse("sip:a b@c d"), Err(UriError::Host));
    }

    #[test]
    fn multibyte_at_scheme_offset_is_an_error_not_a_panic() {
        assert_eq!(SipUri::parse("sip\u{2c7}\u{113}r"), Err(UriError::Scheme));
        assert_eq!(SipUri::parse("sips\u{2c7}x"), Err(UriError::Scheme));
        assert!(crate::auth::DigestResponse::parse("Dige\u{2c7}x username=a").is_none());
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("%2312"), "#12");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
