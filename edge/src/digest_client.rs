//! Client side of HTTP digest for SIP (RFC 3261 22.2, RFC 7616, RFC 8760): answering 401/407
//! (the edge towards trunks with credentials, and loadgen).

use crate::auth::Algorithm;
use crate::msg::text::{split_commas, trim, unquote};

/// A parsed `Digest` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    pub qop_auth: bool,
}

impl Challenge {
    /// Parses one WWW-Authenticate / Proxy-Authenticate value; `None` if not a digest
    /// challenge with an algorithm we support.
    pub fn parse(v: &str) -> Option<Challenge> {
        let v = trim(v);
        if v.len() < 7 || !v.as_bytes()[..6].eq_ignore_ascii_case(b"digest") {
            return None;
        }
        let (mut realm, mut nonce, mut opaque, mut alg, mut qop) = (None, None, None, Some(Algorithm::Md5), false);
        for kv in split_commas(&v[6..]) {
            let Some((k, val)) = kv.split_once('=') else { continue };
            let val = unquote(val).into_owned();
            match trim(k).to_ascii_lowercase().as_str() {
                "realm" => realm = Some(val),
                "nonce" => nonce = Some(val),
                "opaque" => opaque = Some(val),
                "algorithm" => alg = Algorithm::parse(&val),
                "qop" => qop = val.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
                _ => {}
            }
        }
        Some(Challenge { realm: realm?, nonce: nonce?, opaque, algorithm: alg?, qop_auth: qop })
    }

    /// The credentials header value answering this challenge.
    pub fn answer(&self, user: &str, pass: &str, method: &str, uri: &str, nc: u32, cnonce: &str) -> String {
        let a = self.algorithm;
        let ha1 = a.hash(format!("{user}:{}:{pass}", self.realm).as_bytes());
        let ha2 = a.hash(format!("{method}:{uri}").as_bytes());
        let mut s = format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm={}",
            self.realm,
            self.nonce,
            a.name()
        );
        if self.qop_auth {
            let nc = format!("{nc:08x}");
            let resp = a.hash(format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce).as_bytes());
            s.push_str(&format!(", response=\"{resp}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        } else {
            let resp = a.hash(format!("{ha1}:{}:{ha2}", self.nonce).as_bytes());
            s.push_str(&format!(", response=\"{resp}\""));
        }
        if let Some(o) = &self.opaque {
            s.push_str(&format!(", opaque=\"{o}\""));
        }
        s
    }
}

/// Picks the first challenge we support among several header values (RFC 8760 2.4).
pub fn first_supported<'a>(values: impl Iterator<Item = &'a str>) -> Option<Challenge> {
    values.filter_map(Challenge::parse).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2617_example_response() {
        // RFC 2617 3.5 example (MD5, qop=auth), with SIP-style method/uri replaced.
        let c = Challenge::parse("Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"").unwrap();
        let a = c.answer("Mufasa", "Circle Of Life", "GET", "/dir/index.html", 1, "0a4f113b");
        assert!(a.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{a}");
        assert!(Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256").is_none());
        assert_eq!(Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256").unwrap().algorithm, Algorithm::Sha256);
    }
}
