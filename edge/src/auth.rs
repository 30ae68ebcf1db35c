//! HTTP digest authentication for SIP (RFC 3261 22, RFC 7616, RFC 8760: MD5 and
//! SHA-256, qop=auth). Nonces are stateless (timestamp plus HMAC) and expire; nonce-counts
//! are tracked per nonce to refuse replays; an expired nonce with a correct response is
//! answered with `stale=true`.

use crate::msg::text::{split_commas, trim, unquote};
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Digest algorithm (RFC 8760).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "SHA-256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }
    /// Lowercase hex digest of `data`.
    pub fn hash(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(data)),
            Algorithm::Sha256 => hex(&Sha256::digest(data)),
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// Stored credentials of one user: only HA1 values, never the password.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
    pub max_contacts: Option<usize>,
}

impl Credentials {
    /// HA1 = H(username ":" realm ":" password) for both algorithms (RFC 7616 3.4.2).
    pub fn from_password(user: &str, realm: &str, password: &str) -> Credentials {
        let a1 = format!("{user}:{realm}:{password}");
        Credentials {
            ha1_md5: Some(Algorithm::Md5.hash(a1.as_bytes())),
            ha1_sha256: Some(Algorithm::Sha256.hash(a1.as_bytes())),
            max_contacts: None,
        }
    }
    fn ha1(&self, alg: Algorithm) -> Option<&str> {
        match alg {
            Algorithm::Md5 => self.ha1_md5.as_deref(),
            Algorithm::Sha256 => self.ha1_sha256.as_deref(),
        }
    }
}

/// The parsed credentials of an Authorization / Proxy-Authorization header.
#[derive(Debug, Default, Clone)]
pub struct DigestResponse {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
}

impl DigestResponse {
    /// Parses `Digest k=v, ...`. `None` if it is not a well-formed Digest credential.
    pub fn parse(v: &str) -> Option<DigestResponse> {
        let v = trim(v);
        if v.len() < 7 || !v.as_bytes()[..6].eq_ignore_ascii_case(b"digest") {
            return None;
        }
        let mut d = DigestResponse::default();
        for kv in split_commas(&v[6..]) {
            let (k, val) = kv.split_once('=')?;
            let k = trim(k).to_ascii_lowercase();
            let val = unquote(val).into_owned();
            match k.as_str() {
                "username" => d.username = val,
                "realm" => d.realm = val,
                "nonce" => d.nonce = val,
                "uri" => d.uri = val,
                "response" => d.response = val.to_ascii_lowercase(),
                "algorithm" => d.algorithm = Some(val),
                "cnonce" => d.cnonce = Some(val),
                "qop" => d.qop = Some(val),
                "nc" => d.nc = Some(val),
                _ => {}
            }
        }
        if d.username.is_empty() || d.nonce.is_empty() || d.response.is_empty() {
            return None;
        }
        Some(d)
    }
}

/// Result of checking a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated as this user.
    Ok(String),
    /// No usable credentials for our realm: challenge.
    Challenge,
    /// Correct response on an expired nonce: challenge with `stale=true`.
    Stale,
    /// Wrong password, unknown user, replayed nonce-count or malformed: 403 or challenge.
    Fail(&'static str),
}

/// Digest authenticator shared by all workers.
pub struct Authenticator {
    realm: String,
    algorithms: Vec<Algorithm>,
    /// Challenges to requests over WebSocket (browser SIP stacks), when set.
    ws_algorithms: Option<Vec<Algorithm>>,
    /// Users by name; changed at run time through the admin API.
    users: DashMap<String, Credentials>,
    key: [u8; 32],
    base: Instant,
    ttl: Duration,
    counter: AtomicU64,
    /// Highest nonce-count seen per nonce (RFC 7616 3.4: replay protection).
    nc_seen: DashMap<String, (u32, Instant)>,
}

type HmacSha256 = Hmac<Sha256>;

impl Authenticator {
    /// `base` anchors nonce timestamps; `key` signs nonces.
    pub fn new(
        realm: String,
        algorithms: Vec<Algorithm>,
        users: HashMap<String, Credentials>,
        key: [u8; 32],
        base: Instant,
        ttl: Duration,
    ) -> Self {
        Authenticator {
            realm,
            algorithms,
            ws_algorithms: None,
            users: users.into_iter().collect(),
            key,
            base,
            ttl,
            counter: AtomicU64::new(0),
            nc_seen: DashMap::new(),
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A user's credentials (a copy: users can change concurrently).
    pub fn user(&self, name: &str) -> Option<Credentials> {
        self.users.get(name).map(|c| c.clone())
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Names of all users, sorted.
    pub fn user_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.users.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }

    /// Adds or replaces a user.
    pub fn set_user(&self, name: &str, creds: Credentials) {
        self.users.insert(name.to_string(), creds);
    }

    /// Removes a user; `false` if there was none.
    pub fn remove_user(&self, name: &str) -> bool {
        self.users.remove(name).is_some()
    }

    fn sign(&self, payload: &str) -> String {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable_hmac());
        m.update(payload.as_bytes());
        hex(&m.finalize().into_bytes()[..12])
    }

    /// A fresh nonce: `<secs>.<counter>.<hmac>`.
    pub fn nonce(&self, now: Instant) -> String {
        let secs = now.saturating_duration_since(self.base).as_secs();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let payload = format!("{secs:x}.{n:x}");
        let sig = self.sign(&payload);
        format!("{payload}.{sig}")
    }

    /// `Some(true)` if valid and fresh, `Some(false)` if valid but expired, `None` if forged.
    fn check_nonce(&self, now: Instant, nonce: &str) -> Option<bool> {
        let (payload, sig) = nonce.rsplit_once('.')?;
        if self.sign(payload) != sig {
            return None;
        }
        let secs = u64::from_str_radix(payload.split('.').next()?, 16).ok()?;
        let age = now.saturating_duration_since(self.base).as_secs().saturating_sub(secs);
        Some(age <= self.ttl.as_secs())
    }

    /// The challenges for requests that arrive over WebSocket (`[auth] websocket_algorithms`).
    pub fn set_websocket_algorithms(&mut self, algorithms: Vec<Algorithm>) {
        self.ws_algorithms = Some(algorithms);
    }

    /// Challenge header values (one per configured algorithm, RFC 8760 2.4 order).
    pub fn challenges(&self, now: Instant, stale: bool) -> Vec<String> {
        self.challenges_for(now, stale, false)
    }

    /// The same for a request that came over WebSocket (`websocket`) or not.
    pub fn challenges_for(&self, now: Instant, stale: bool, websocket: bool) -> Vec<String> {
        let nonce = self.nonce(now);
        let algorithms = match (&self.ws_algorithms, websocket) {
            (Some(ws), true) => ws,
            _ => &self.algorithms,
        };
        algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    a.name(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Checks credential header values (Authorization or Proxy-Authorization) for `method`.
    pub fn verify<'a>(&self, now: Instant, method: &str, headers: impl Iterator<Item = &'a str>) -> Verdict {
        let mut verdict = Verdict::Challenge;
        for h in headers {
            let Some(d) = DigestResponse::parse(h) else {
                verdict = Verdict::Fail("malformed credentials");
                continue;
            };
            if d.realm != self.realm {
                continue; // credentials for another realm (RFC 3261 22.3)
            }
            return self.verify_one(now, method, &d);
        }
        verdict
    }

    fn verify_one(&self, now: Instant, method: &str, d: &DigestResponse) -> Verdict {
        let alg = match d.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::parse(a) {
                Some(a) if self.algorithms.contains(&a) || self.ws_algorithms.as_ref().is_some_and(|w| w.contains(&a)) => a,
                _ => return Verdict::Fail("unsupported algorithm"),
            },
        };
        let Some(creds) = self.user(&d.username) else {
            return Verdict::Fail("unknown user");
        };
        let Some(ha1) = creds.ha1(alg) else {
            return Verdict::Fail("no credentials for algorithm");
        };
        let fresh = match self.check_nonce(now, &d.nonce) {
            None => return Verdict::Challenge, // not our nonce (e.g. after restart): new challenge
            Some(f) => f,
        };
        let ha2 = alg.hash(format!("{method}:{}", d.uri).as_bytes());
        let expected = match d.qop.as_deref() {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let (Some(nc), Some(cnonce)) = (&d.nc, &d.cnonce) else {
                    return Verdict::Fail("qop without nc/cnonce");
                };
                alg.hash(format!("{ha1}:{}:{nc}:{cnonce}:{q}:{ha2}", d.nonce).as_bytes())
            }
            Some(_) => return Verdict::Fail("unsupported qop"),
            None => alg.hash(format!("{ha1}:{}:{ha2}", d.nonce).as_bytes()),
        };
        if expected != d.response {
            return Verdict::Fail("wrong credentials");
        }
        if !fresh {
            return Verdict::Stale;
        }
        if let Some(nc) = &d.nc {
            let Ok(nc) = u32::from_str_radix(nc, 16) else {
                return Verdict::Fail("malformed nc");
            };
            let mut entry = self.nc_seen.entry(d.nonce.clone()).or_insert((0, now));
            if nc <= entry.0 {
                return Verdict::Fail("nonce-count replayed");
            }
            *entry = (nc, now);
        }
        Verdict::Ok(d.username.clone())
    }

    /// Forgets nonce-counts of nonces that have expired.
    pub fn sweep(&self, now: Instant) {
        let ttl = self.ttl;
        self.nc_seen.retain(|_, (_, at)| now.saturating_duration_since(*at) <= ttl * 2);
    }
}

fn unreachable_hmac() -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot happen.
    panic!("HMAC key rejected")
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn auth(now: Instant) -> Authenticator {
        let mut users = HashMap::new();
        users.insert("alice".to_string(), Credentials::from_password("alice", "example.com", "secret"));
        Authenticator::new("example.com".into(), vec![Algorithm::Sha256, Algorithm::Md5], users, [7; 32], now, Duration::from_secs(300))
    }

    fn answer(alg: Algorithm, nonce: &str, nc: &str, pass: &str) -> String {
        let ha1 = alg.hash(format!("alice:example.com:{pass}").as_bytes());
        let ha2 = alg.hash(b"REGISTER:sip:example.com");
        let resp = alg.hash(format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}").as_bytes());
        format!(
            "Digest username=\"alice\", realm=\"example.com\", nonce=\"{nonce}\", uri=\"sip:example.com\", response=\"{resp}\", algorithm={}, cnonce=\"abc\", qop=auth, nc={nc}",
            alg.name()
        )
    }

    #[test]
    fn md5_and_sha256_with_replay_and_stale() {
        let t0 = Instant::now();
        let a = auth(t0);
        let ch = a.challenges(t0, false);
        assert!(ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"));
        let nonce = a.nonce(t0);
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let nonce = a.nonce(t0);
            let h = answer(alg, &nonce, "00000001", "secret");
            assert_eq!(a.verify(t0, "REGISTER", [h.as_str()].into_iter()), Verdict::Ok("alice".into()));
            // replayed nonce-count
            assert_eq!(a.verify(t0, "REGISTER", [h.as_str()].into_iter()), Verdict::Fail("nonce-count replayed"));
        }
        let h = answer(Algorithm::Md5, &nonce, "00000001", "wrong");
        assert_eq!(a.verify(t0, "REGISTER", [h.as_str()].into_iter()), Verdict::Fail("wrong credentials"));
        let h = answer(Algorithm::Md5, &nonce, "00000002", "secret");
        assert_eq!(a.verify(t0 + Duration::from_secs(301), "REGISTER", [h.as_str()].into_iter()), Verdict::Stale);
        let forged = answer(Algorithm::Md5, "1.2.deadbeef", "00000001", "secret");
        assert_eq!(a.verify(t0, "REGISTER", [forged.as_str()].into_iter()), Verdict::Challenge);
        assert_eq!(a.verify(t0, "REGISTER", std::iter::empty()), Verdict::Challenge);
    }
}
