//! Registrar (RFC 3261 section 10.3) with digest authentication, Path (RFC 3327) and
//! outbound instance/reg-id (RFC 5626). Sans-IO: given `now` and a REGISTER, it updates
//! the shared location service and returns the response to send.

use crate::auth::Verdict;
use crate::config::OverflowPolicy;
use crate::core::{Peer, Shared};
use crate::location::{Binding, Source};
use crate::msg::text::{params, trim};
use crate::msg::{HeaderName, Message, NameAddr, SipUri};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The registrar's answer: status, reason and extra header lines (each ending CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub reason: String,
    pub headers: String,
    /// The address of record whose bindings this REGISTER may have changed (to persist).
    pub aor: Option<String>,
}

impl Reply {
    fn new(code: u16, reason: impl Into<String>) -> Reply {
        Reply { code, reason: reason.into(), headers: String::new(), aor: None }
    }
}

/// Option tags the registrar understands in Require (RFC 3261 10.3 step 1 / 8.2.2.3).
const SUPPORTED: [&str; 2] = ["path", "outbound"];

/// Key of an address of record: `user@domain`, with the domain normalised to ours.
pub fn aor_key(sh: &Shared, user: &str) -> String {
    format!("{user}@{}", sh.domain.to_ascii_lowercase())
}

struct NewContact {
    uri: String,
    params: String,
    expires: u32,
    instance: Option<String>,
    reg_id: Option<u32>,
}

/// Processes a REGISTER whose Request-URI names our domain.
pub fn handle_register(sh: &Shared, now: Instant, msg: &Message, from: Peer) -> Reply {
    let unsupported: Vec<&str> = msg.values(HeaderName::Require).filter(|o| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(o))).collect();
    if !unsupported.is_empty() {
        let mut r = Reply::new(420, "Bad Extension");
        let _ = write!(r.headers, "Unsupported: {}\r\n", unsupported.join(", "));
        return r;
    }
    // Authenticate first: nothing is stored for an unauthenticated REGISTER.
    let ws = from.transport.websocket();
    let user = match sh.auth.verify(now, "REGISTER", msg.header_lines(HeaderName::Authorization)) {
        Verdict::Ok(u) => u,
        Verdict::Challenge | Verdict::Fail("nonce-count replayed") => return challenge(sh, now, false, ws),
        Verdict::Stale => return challenge(sh, now, true, ws),
        Verdict::Fail(why) => return Reply::new(403, format!("Forbidden ({why})")),
    };
    let Some(to) = msg.to_hdr() else { return Reply::new(400, "Bad Header: To") };
    let Ok(to_uri) = SipUri::parse(to.uri) else { return Reply::new(404, "Not Found (To is not a SIP URI)") };
    let Some(to_user) = to_uri.user else { return Reply::new(404, "Not Found (no user in To)") };
    let to_user = crate::msg::uri::percent_decode(to_user);
    if !sh.is_local_uri(&to_uri) || sh.auth.user(&to_user).is_none() {
        return Reply::new(404, "Not Found");
    }
    if *to_user != user {
        return Reply::new(403, "Forbidden (credentials do not match the address of record)");
    }
    let aor = aor_key(sh, &to_user);
    let cfg = &sh.registrar;
    let header_expires = match msg.expires() {
        Some(Ok(e)) => Some(e),
        Some(Err(())) => return Reply::new(400, "Bad Header: Expires"),
        None => None,
    };
    let call_id = msg.call_id().unwrap_or_default();
    let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
    let contacts: Vec<&str> = msg.values(HeaderName::Contact).collect();

    // Wildcard removal (10.3 step 6).
    if contacts.contains(&"*") {
        if contacts.len() != 1 || header_expires != Some(0) {
            return Reply::new(400, "Bad Header: Contact (* needs Expires: 0 and no other contact)");
        }
        let ok = sh.location.update(now, &aor, |list| {
            if list.iter().any(|b| &*b.call_id == call_id && b.cseq >= cseq) {
                return false;
            }
            list.clear();
            true
        });
        if !ok {
            return Reply::new(500, "Out of order request");
        }
        return ok_reply(sh, now, msg, &aor);
    }

    let mut new = Vec::with_capacity(contacts.len());
    for c in &contacts {
        let Some(na) = NameAddr::parse(c) else { return Reply::new(400, "Bad Header: Contact") };
        if SipUri::parse(na.uri).is_err() && !na.uri.contains(':') {
            return Reply::new(400, "Bad Header: Contact");
        }
        let expires = match na.param("expires") {
            Some(Some(e)) => match trim(e).parse::<u32>() {
                Ok(e) => e,
                Err(_) => return Reply::new(400, "Bad Header: Contact"),
            },
            Some(None) => return Reply::new(400, "Bad Header: Contact"),
            None => header_expires.unwrap_or(cfg.default_expires),
        };
        if expires != 0 && expires < cfg.min_expires {
            let mut r = Reply::new(423, "Interval Too Brief");
            let _ = write!(r.headers, "Min-Expires: {}\r\n", cfg.min_expires);
            return r;
        }
        let mut kept = String::new();
        for (k, v) in params(na.params) {
            if k.eq_ignore_ascii_case("expires") {
                continue;
            }
            kept.push(';');
            kept.push_str(k);
            if let Some(v) = v {
                kept.push('=');
                kept.push_str(v);
            }
        }
        new.push(NewContact {
            uri: na.uri.to_string(),
            params: kept,
            expires: expires.min(cfg.max_expires),
            instance: na.param("+sip.instance").flatten().map(str::to_string),
            reg_id: na.param("reg-id").flatten().and_then(|r| r.parse().ok()),
        });
    }
    let path: Vec<Box<str>> = msg.values(HeaderName::Path).map(Into::into).collect();
    let max = sh.auth.user(&user).and_then(|c| c.max_contacts).unwrap_or(cfg.max_contacts);
    let source = Source { transport: from.transport, addr: from.addr, flow: from.flow };
    let outcome = sh.location.update(now, &aor, |list| {
        let mut next = list.clone();
        for c in &new {
            let pos = next.iter().position(|b| b.same_as(&c.uri, c.instance.as_deref(), c.reg_id));
            if let Some(i) = pos
                && &*next[i].call_id == call_id
                && next[i].cseq >= cseq
            {
                return Err(Reply::new(500, "Out of order request"));
            }
            if c.expires == 0 {
                if let Some(i) = pos {
                    next.remove(i);
                }
                continue;
            }
            let b = Binding {
                uri: c.uri.clone().into(),
                params: c.params.clone().into(),
                expires: now + Duration::from_secs(c.expires as u64),
                call_id: call_id.into(),
                cseq,
                instance: c.instance.clone().map(Into::into),
                reg_id: c.reg_id,
                path: path.clone(),
                source,
                since: pos.map(|i| next[i].since).unwrap_or(now),
            };
            match pos {
                Some(i) => next[i] = b,
                None => {
                    if next.len() >= max {
                        match cfg.on_max_contacts {
                            OverflowPolicy::Reject => {
                                return Err(Reply::new(403, format!("Forbidden (at most {max} contacts per address of record)")));
                            }
                            OverflowPolicy::EvictOldest => {
                                if let Some((oldest, _)) = next.iter().enumerate().min_by_key(|(_, b)| b.since) {
                                    next.remove(oldest);
                                }
                            }
                        }
                    }
                    next.push(b);
                }
            }
        }
        *list = next;
        Ok(())
    });
    if let Err(r) = outcome {
        return r;
    }
    ok_reply(sh, now, msg, &aor)
}

fn challenge(sh: &Shared, now: Instant, stale: bool, websocket: bool) -> Reply {
    let mut r = Reply::new(401, "Unauthorized");
    for c in sh.auth.challenges_for(now, stale, websocket) {
        let _ = write!(r.headers, "WWW-Authenticate: {c}\r\n");
    }
    r
}

/// 200 listing every current binding with its remaining expiry (10.3 step 8).
fn ok_reply(sh: &Shared, now: Instant, msg: &Message, aor: &str) -> Reply {
    let mut r = Reply::new(200, "OK");
    r.aor = Some(aor.to_string());
    let mut outbound = false;
    for b in sh.location.lookup(now, aor) {
        let left = b.expires.saturating_duration_since(now).as_secs();
        let _ = write!(r.headers, "Contact: <{}>{};expires={left}\r\n", b.uri, b.params);
        outbound |= b.reg_id.is_some();
    }
    let path: Vec<&str> = msg.values(HeaderName::Path).collect();
    if !path.is_empty() {
        let _ = write!(r.headers, "Path: {}\r\n", path.join(", "));
    }
    if outbound && msg.values(HeaderName::Supported).any(|s| s.eq_ignore_ascii_case("outbound")) {
        r.headers.push_str("Require: outbound\r\n");
    }
    r.headers.push_str("Supported: path, outbound\r\n");
    r
}
