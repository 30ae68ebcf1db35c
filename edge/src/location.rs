//! The location service: registration bindings per address of record (RFC 3261 10.3),
//! with the flow each binding arrived on (RFC 5626) and its Path (RFC 3327). Shared by
//! all workers; sharded internally (dashmap), so no global lock per message.

use crate::transport::{FlowId, Transport};
use dashmap::DashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Where a binding really came from: used to reach NAT-ed and connection-bound clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The connection (TCP/TLS/WS/WSS) the REGISTER arrived on.
    pub flow: Option<FlowId>,
}

/// One registered contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Contact URI (without angle brackets or header parameters).
    pub uri: Box<str>,
    /// Contact header parameters as received (`;+sip.instance=...;reg-id=1;q=0.5`), minus `expires`.
    pub params: Box<str>,
    pub expires: Instant,
    pub call_id: Box<str>,
    pub cseq: u32,
    /// `+sip.instance` (RFC 5626 4.1), quotes kept.
    pub instance: Option<Box<str>>,
    /// `reg-id` (RFC 5626 4.2).
    pub reg_id: Option<u32>,
    /// Path header values (RFC 3327), in order, each `<uri>`.
    pub path: Vec<Box<str>>,
    pub source: Source,
    /// When this contact was first registered (eviction order).
    pub since: Instant,
}

impl Binding {
    /// Two bindings are the same contact when instance and reg-id match (RFC 5626 6),
    /// or otherwise when the URIs are equal.
    pub fn same_as(&self, uri: &str, instance: Option<&str>, reg_id: Option<u32>) -> bool {
        match (&self.instance, instance) {
            (Some(a), Some(b)) => &**a == b && self.reg_id == reg_id,
            _ => uri_eq(&self.uri, uri),
        }
    }
}

/// URI comparison used for contacts: case-insensitive scheme/host, exact user (RFC 3261 19.1.4,
/// simplified to the textual form after the scheme).
pub fn uri_eq(a: &str, b: &str) -> bool {
    match (crate::msg::SipUri::parse(a), crate::msg::SipUri::parse(b)) {
        (Ok(x), Ok(y)) => {
            x.secure == y.secure
                && x.user == y.user
                && x.host.eq_ignore_ascii_case(y.host)
                && x.port == y.port
                && x.transport().map(str::to_ascii_lowercase) == y.transport().map(str::to_ascii_lowercase)
        }
        _ => a == b,
    }
}

/// Address of record → bindings.
#[derive(Default)]
pub struct Location {
    map: DashMap<Box<str>, Vec<Binding>>,
}

impl Location {
    pub fn new() -> Location {
        Location::default()
    }

    /// Live bindings of an AOR (`user@domain`), expired ones dropped.
    pub fn lookup(&self, now: Instant, aor: &str) -> Vec<Binding> {
        match self.map.get_mut(aor) {
            Some(mut v) => {
                v.retain(|b| b.expires > now);
                v.clone()
            }
            None => vec![],
        }
    }

    /// Runs `f` on the binding list of an AOR under its shard lock (expired ones removed
    /// first); empty lists are removed afterwards.
    pub fn update<R>(&self, now: Instant, aor: &str, f: impl FnOnce(&mut Vec<Binding>) -> R) -> R {
        let mut entry = self.map.entry(aor.into()).or_default();
        entry.retain(|b| b.expires > now);
        let r = f(&mut entry);
        // Most addresses of record have one or two contacts: do not keep Vec's default
        // growth slack (capacity 4 of ~200-byte bindings) per AOR.
        if entry.capacity() > entry.len() {
            entry.shrink_to_fit();
        }
        let empty = entry.is_empty();
        drop(entry);
        if empty {
            self.map.remove_if(aor, |_, v| v.is_empty());
        }
        r
    }

    /// Drops every binding reached through a closed connection (RFC 5626 4.4: the flow is
    /// gone). Returns the addresses of record that lost bindings.
    pub fn remove_flow(&self, flow: FlowId) -> Vec<String> {
        let mut aors = Vec::new();
        self.map.retain(|aor, v| {
            let before = v.len();
            v.retain(|b| b.source.flow != Some(flow));
            if v.len() != before {
                aors.push(aor.to_string());
            }
            !v.is_empty()
        });
        aors
    }

    /// Every address of record with its live bindings (admin listing, persistence).
    pub fn all(&self, now: Instant) -> Vec<(String, Vec<Binding>)> {
        self.map
            .iter()
            .map(|e| (e.key().to_string(), e.value().iter().filter(|b| b.expires > now).cloned().collect::<Vec<_>>()))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// Removes expired bindings everywhere.
    pub fn sweep(&self, now: Instant) {
        self.map.retain(|_, v| {
            v.retain(|b| b.expires > now);
            !v.is_empty()
        });
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.map.iter().map(|e| e.value().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
