//! Inputs, outputs and the state shared by every worker's sans-IO core.

use crate::auth::{Algorithm, Authenticator, Credentials};
use crate::config::{Config, RegistrarConfig, SrtpPolicy};
use crate::location::Location;
use crate::media::relay::RelayConfig;
use crate::msg::{Message, SipUri};
use crate::transport::{FlowId, Transport};
use crate::tsx::TimerConfig;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Where a message came from (or goes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The connection, for connection-oriented transports.
    pub flow: Option<FlowId>,
}

/// Input to a core.
#[derive(Debug)]
pub enum Input {
    /// A parsed message from `from`.
    Message { from: Peer, msg: Message },
    /// A connection closed: bindings reached through it are dropped (RFC 5626 4.4).
    FlowClosed(FlowId),
    /// The runtime could not send a transmit that carried `tsx` (connect refused, flow gone,
    /// ICMP error): the client transaction fails over / times out (RFC 3261 17.1.4).
    SendFailed { tsx: u64 },
    /// An ICMP "unreachable" came back for a datagram sent over UDP to this address: client
    /// transactions towards it that have no response yet fail over (RFC 3261 18.4, 17.1.4).
    Unreachable { to: std::net::SocketAddr },
}

/// Bytes to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub to: Peer,
    pub data: Bytes,
    /// The client transaction this belongs to, for [`Input::SendFailed`].
    pub tsx: Option<u64>,
}

/// Output of a core.
#[derive(Debug, Clone)]
pub enum Output {
    Transmit(Transmit),
}

pub use crate::dialplan::Route;
pub use crate::trunk::Upstream;

/// Where the dial plan sends one call: trunks to try in order, and the number to send.
#[derive(Debug, Clone)]
pub struct Plan {
    pub trunks: Vec<Upstream>,
    /// The user part to send (converted), when the Request-URI is rewritten.
    pub user: Option<String>,
    /// Rewrite the Request-URI to `sip:{user}@{trunk host}` (converted number, or a call to
    /// our own domain routed out).
    pub rewrite: bool,
    pub emergency: bool,
    /// The route that matched (none: the preferred upstream).
    pub route: Option<String>,
}

/// Media anchoring policy (from `[media]`, `[[user]]` and `[[upstream]]`).
#[derive(Debug, Clone)]
pub struct MediaPolicy {
    pub anchor: bool,
    pub srtp: SrtpPolicy,
    pub srtp_secure: SrtpPolicy,
    /// Users with their own `anchor_media`.
    pub user_anchor: HashMap<String, bool>,
    pub advertise: IpAddr,
    /// Address relay sockets bind to.
    pub bind: IpAddr,
    pub relay: RelayConfig,
}

impl MediaPolicy {
    /// `true` if any call may be anchored (globally on, or on for some user or upstream).
    pub fn anchor_possible(&self) -> bool {
        self.anchor || self.user_anchor.values().any(|v| *v)
    }
}

/// Configuration and state shared by all workers (read-mostly; location and nonce-counts
/// are internally sharded).
pub struct Shared {
    pub domain: String,
    pub aliases: Vec<String>,
    /// Every listening address with its transport.
    pub listeners: Vec<(Transport, SocketAddr)>,
    pub timers: TimerConfig,
    pub timer_c: Duration,
    /// Longest call.
    pub max_call: Duration,
    pub registrar: RegistrarConfig,
    pub auth: Authenticator,
    pub challenge_local_callers: bool,
    pub location: Location,
    /// Upstreams (trunks), most preferred first; changed at run time through the admin API.
    upstreams: std::sync::RwLock<std::sync::Arc<Vec<Upstream>>>,
    routes: std::sync::RwLock<std::sync::Arc<Vec<Route>>>,
    /// Health of upstream targets (per target, shared by the workers).
    pub health: std::sync::Mutex<crate::resolve::Health>,
    /// DNS records of trunk host names (filled by `rt/dns.rs`; read per call, never queried per call).
    dns_cache: std::sync::RwLock<HashMap<String, std::sync::Arc<crate::trunk::Resolved>>>,
    /// Calls in progress and call rate per trunk.
    pub loads: crate::trunk::Loads,
    /// Emergency numbers beyond 112/911, and the route they take.
    pub emergency_numbers: Vec<String>,
    pub emergency_route: Option<String>,
    /// Users who refuse anonymous calls (433).
    pub reject_anonymous: std::collections::HashSet<String>,
    pub media: MediaPolicy,
    token_key: [u8; 32],
    /// The conference UA (SFU rooms for SIP phones), as a trunk: set when the SFU runs.
    conference: std::sync::OnceLock<Upstream>,
}

type HmacSha256 = Hmac<Sha256>;

impl Shared {
    /// Builds the shared state. `upstream_addr` is the resolved address of the first
    /// `[[upstream]]`; `base` anchors nonce timestamps; `key` signs nonces and flow tokens.
    pub fn new(
        cfg: &Config,
        listeners: Vec<(Transport, SocketAddr)>,
        upstream_addr: Option<SocketAddr>,
        base: Instant,
        key: [u8; 32],
    ) -> Shared {
        let realm = cfg.auth.realm.clone().unwrap_or_else(|| cfg.sip.domain.clone());
        let mut users = HashMap::new();
        for u in &cfg.users {
            let name = u.name.get_ref().clone();
            let mut c = match &u.password {
                Some(p) => Credentials::from_password(&name, &realm, p),
                None => Credentials::default(),
            };
            if let Some(h) = &u.ha1_md5 {
                c.ha1_md5 = Some(h.to_ascii_lowercase());
            }
            if let Some(h) = &u.ha1_sha256 {
                c.ha1_sha256 = Some(h.to_ascii_lowercase());
            }
            c.max_contacts = u.max_contacts;
            users.insert(name, c);
        }
        let algs = cfg.auth.algorithms.iter().filter_map(|a| Algorithm::parse(a)).collect();
        let mut upstreams: Vec<Upstream> = cfg.upstreams.iter().enumerate().filter_map(|(i, u)| u.build(i).ok()).collect();
        // The first upstream's host name resolved at start (before DNS runs), as a static target.
        if let (Some(addr), Some(first)) = (upstream_addr, upstreams.first_mut())
            && first.dns.is_some()
            && first.records.is_empty()
        {
            let transport = SipUri::parse(&first.uri).map(|u| uri_transport(&u)).unwrap_or(Transport::Udp);
            first.records.push(crate::resolve::Record { priority: 0, weight: 0, target: crate::resolve::Target { addr, transport } });
        }
        let names: std::collections::HashSet<String> = upstreams.iter().map(|u| u.name.clone()).collect();
        let routes: Vec<Route> = cfg.routes.iter().enumerate().filter_map(|(i, r)| r.to_route(i, &|n| names.contains(n)).ok()).collect();
        let m = &cfg.media;
        let media = MediaPolicy {
            anchor: m.anchor,
            srtp: m.srtp,
            srtp_secure: m.srtp_secure,
            user_anchor: cfg.users.iter().filter_map(|u| Some((u.name.get_ref().clone(), u.anchor_media?))).collect(),
            advertise: m.advertise.unwrap_or(m.bind),
            bind: m.bind,
            relay: RelayConfig {
                ports: m.port_min..=m.port_max,
                shard: (0, 1),
                strict_latching: m.strict_latching,
                inactivity: Duration::from_secs(m.inactivity_secs),
                hold_inactivity: Duration::from_secs(m.hold_inactivity_secs),
            },
        };
        Shared {
            domain: cfg.sip.domain.clone(),
            aliases: cfg.sip.aliases.clone(),
            listeners,
            timers: TimerConfig {
                t1: Duration::from_millis(cfg.sip.t1_ms),
                t2: Duration::from_millis(cfg.sip.t2_ms),
                t4: Duration::from_millis(cfg.sip.t4_ms),
            },
            timer_c: Duration::from_secs(cfg.sip.timer_c_secs),
            max_call: Duration::from_secs(cfg.sip.max_call_secs.max(1)),
            registrar: cfg.registrar.clone(),
            auth: {
                let mut a = Authenticator::new(realm, algs, users, key, base, Duration::from_secs(cfg.auth.nonce_ttl_secs));
                a.set_websocket_algorithms(cfg.auth.websocket_algorithms.iter().filter_map(|a| Algorithm::parse(a)).collect());
                a
            },
            challenge_local_callers: cfg.auth.challenge_local_callers,
            location: Location::new(),
            upstreams: std::sync::RwLock::new(std::sync::Arc::new(sorted(upstreams))),
            routes: std::sync::RwLock::new(std::sync::Arc::new(sorted_routes(routes))),
            health: std::sync::Mutex::new(crate::resolve::Health::default()),
            dns_cache: std::sync::RwLock::new(HashMap::new()),
            loads: crate::trunk::Loads::default(),
            emergency_numbers: cfg.dialplan.emergency_numbers.clone(),
            emergency_route: cfg.dialplan.emergency_route.clone(),
            reject_anonymous: cfg.users.iter().filter(|u| u.reject_anonymous).map(|u| u.name.get_ref().clone()).collect(),
            media,
            token_key: key,
            conference: std::sync::OnceLock::new(),
        }
    }

    /// The conference UA is listening: routes to `conference:ROOM` reach it.
    pub fn set_conference(&self, up: Upstream) {
        let _ = self.conference.set(up);
    }

    /// The preferred upstream (takes calls to other domains).
    pub fn upstream(&self) -> Option<Upstream> {
        self.upstreams.read().ok().and_then(|u| u.first().cloned())
    }

    /// The dial plan's decision for a Request-URI (`user` percent-decoded) to `host`;
    /// `local`: the host is our domain (only number routes apply). Without a matching
    /// route, calls to other domains take the preferred upstream. `rand` picks weighted trunks.
    pub fn route_call(&self, user: Option<&str>, host: &str, local: bool, rand: &mut impl FnMut() -> u32) -> Option<Plan> {
        let ups = self.upstream_list();
        let routes = self.route_list();
        match crate::dialplan::decide(&routes, user, host, local, &self.emergency_numbers, self.emergency_route.as_deref()) {
            Some(d) if d.route.upstreams.first().is_some_and(|u| u.starts_with(crate::dialplan::CONFERENCE)) => {
                // A room of the SFU: the conference UA, with the room as the Request-URI user.
                let room = d.route.conference_room(d.user.as_deref()).map(str::to_string);
                let trunks = self.conference.get().cloned().into_iter().collect();
                Some(Plan { trunks, user: room, rewrite: true, emergency: d.emergency, route: Some(d.route.name.clone()) })
            }
            Some(d) => {
                let mut names: Vec<&String> = d.route.upstreams.iter().collect();
                if !d.route.weights.is_empty() {
                    let keyed: Vec<(u16, u16, &String)> = names.iter().zip(&d.route.weights).map(|(n, w)| (0, *w, *n)).collect();
                    names = crate::resolve::order_weighted(&keyed, rand);
                }
                let trunks: Vec<Upstream> = names.iter().filter_map(|n| ups.iter().find(|u| &&u.name == n).cloned()).collect();
                let rewrite = local || d.user.as_deref() != user;
                Some(Plan { trunks, user: d.user, rewrite, emergency: d.emergency, route: Some(d.route.name.clone()) })
            }
            None if !local => {
                Some(Plan { trunks: ups.first().cloned().into_iter().collect(), user: None, rewrite: false, emergency: false, route: None })
            }
            None => None,
        }
    }

    /// The DNS records of a trunk host name, while valid at `now`.
    pub fn resolved(&self, q: &crate::trunk::DnsQuery, now: Instant) -> Option<std::sync::Arc<crate::trunk::Resolved>> {
        let c = self.dns_cache.read().ok()?;
        c.get(&q.key()).filter(|r| r.valid_until > now).cloned()
    }

    /// Stores (or with `None` drops) the records of a DNS name.
    pub fn set_resolved(&self, q: &crate::trunk::DnsQuery, r: Option<crate::trunk::Resolved>) {
        if let Ok(mut c) = self.dns_cache.write() {
            match r {
                Some(r) => c.insert(q.key(), std::sync::Arc::new(r)),
                None => c.remove(&q.key()),
            };
        }
    }

    /// Drops the records of names no trunk uses any more.
    pub fn retain_resolved(&self, keys: &std::collections::HashSet<String>) {
        if let Ok(mut c) = self.dns_cache.write() {
            c.retain(|k, _| keys.contains(k));
        }
    }

    /// Every record of a trunk at `now` (resolved, then static).
    pub fn records_of(&self, up: &Upstream, now: Instant) -> Vec<crate::resolve::Record> {
        let r = up.dns.as_ref().and_then(|q| self.resolved(q, now));
        up.all_records(r.as_deref())
    }

    /// The name a TLS connection to `addr` must present (RFC 5922 7.1: the trunk URI's host,
    /// a domain or an address); `None` for peers that are not trunk targets.
    pub fn tls_name_for(&self, addr: SocketAddr, now: Instant) -> Option<String> {
        let up = self.upstream_at(addr, now)?;
        let u = SipUri::parse(&up.uri).ok()?;
        Some(u.host.trim_start_matches('[').trim_end_matches(']').to_string())
    }

    /// The upstream one of whose targets is `addr`, if any.
    pub fn upstream_at(&self, addr: SocketAddr, now: Instant) -> Option<Upstream> {
        self.upstream_list().iter().find(|u| self.records_of(u, now).iter().any(|r| r.target.addr == addr)).cloned()
    }

    /// Every route, in the order they are tried.
    pub fn route_list(&self) -> std::sync::Arc<Vec<Route>> {
        self.routes.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Adds or replaces (by name) a route.
    pub fn set_route(&self, route: Route) {
        if let Ok(mut w) = self.routes.write() {
            let mut v: Vec<Route> = w.iter().filter(|r| r.name != route.name).cloned().collect();
            v.push(route);
            *w = std::sync::Arc::new(sorted_routes(v));
        }
    }

    /// Removes a route; `false` if there was none of that name.
    pub fn remove_route(&self, name: &str) -> bool {
        let Ok(mut w) = self.routes.write() else { return false };
        let v: Vec<Route> = w.iter().filter(|r| r.name != name).cloned().collect();
        let removed = v.len() != w.len();
        *w = std::sync::Arc::new(v);
        removed
    }

    /// Every upstream, most preferred first.
    pub fn upstream_list(&self) -> std::sync::Arc<Vec<Upstream>> {
        self.upstreams.read().map(|u| u.clone()).unwrap_or_default()
    }

    /// Adds or replaces (by name) an upstream.
    pub fn set_upstream(&self, up: Upstream) {
        if let Ok(mut w) = self.upstreams.write() {
            let mut v: Vec<Upstream> = w.iter().filter(|u| u.name != up.name).cloned().collect();
            v.push(up);
            *w = std::sync::Arc::new(sorted(v));
        }
    }

    /// Removes an upstream; `false` if there was none of that name.
    pub fn remove_upstream(&self, name: &str) -> bool {
        let Ok(mut w) = self.upstreams.write() else { return false };
        let before = w.len();
        let v: Vec<Upstream> = w.iter().filter(|u| u.name != name).cloned().collect();
        let removed = v.len() != before;
        *w = std::sync::Arc::new(v);
        removed
    }

    /// The first listening address of a transport (used in Via and Record-Route).
    pub fn local_addr(&self, t: Transport) -> Option<SocketAddr> {
        self.listeners.iter().find(|(lt, _)| *lt == t).map(|(_, a)| *a)
    }

    /// `true` if host[:port] is one of our listening addresses (RFC 3261 16.4).
    pub fn is_own_address(&self, host: &str, port: Option<u16>) -> bool {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        let ip: Option<IpAddr> = h.parse().ok();
        let name_is_ours = self.is_domain(h);
        self.listeners.iter().any(|(t, a)| {
            let p = port.unwrap_or(t.default_port());
            a.port() == p && (ip == Some(a.ip()) || (ip.is_none() && name_is_ours))
        })
    }

    /// `true` if the host names our SIP domain or an alias.
    pub fn is_domain(&self, host: &str) -> bool {
        host.eq_ignore_ascii_case(&self.domain) || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(host))
    }

    /// `true` if a URI is for a user of ours (our domain, or one of our addresses).
    pub fn is_local_uri(&self, uri: &SipUri<'_>) -> bool {
        self.is_domain(uri.host) || self.is_own_address(uri.host, uri.port)
    }

    fn mac(&self, data: &[u8]) -> [u8; 8] {
        let mut m = match <HmacSha256 as Mac>::new_from_slice(&self.token_key) {
            Ok(m) => m,
            Err(_) => return [0; 8],
        };
        m.update(data);
        let out = m.finalize().into_bytes();
        let mut r = [0; 8];
        r.copy_from_slice(&out[..8]);
        r
    }

    /// A flow token (RFC 5626 5.2) naming a peer, signed so it cannot be forged into an
    /// open relay. Used as the user part of our Record-Route.
    pub fn flow_token(&self, p: &Peer) -> String {
        let mut b = Vec::with_capacity(40);
        b.push(p.transport.index());
        b.extend_from_slice(&p.flow.map(|f| f.0).unwrap_or(u64::MAX).to_be_bytes());
        match p.addr.ip() {
            IpAddr::V4(v4) => b.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b.extend_from_slice(&v6.octets()),
        }
        b.extend_from_slice(&p.addr.port().to_be_bytes());
        let mac = self.mac(&b);
        b.extend_from_slice(&mac);
        format!("ft{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b))
    }

    /// Reads back a flow token; `None` if it is not ours or was altered.
    pub fn parse_flow_token(&self, user: &str) -> Option<Peer> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(user.strip_prefix("ft")?).ok()?;
        if raw.len() != 1 + 8 + 4 + 2 + 8 && raw.len() != 1 + 8 + 16 + 2 + 8 {
            return None;
        }
        let (body, mac) = raw.split_at(raw.len() - 8);
        if self.mac(body) != mac {
            return None;
        }
        let transport = Transport::from_index(body[0])?;
        let flow = u64::from_be_bytes(body[1..9].try_into().ok()?);
        let ip_len = body.len() - 1 - 8 - 2;
        let ip: IpAddr =
            if ip_len == 4 { <[u8; 4]>::try_from(&body[9..13]).ok()?.into() } else { <[u8; 16]>::try_from(&body[9..25]).ok()?.into() };
        let port = u16::from_be_bytes(body[body.len() - 2..].try_into().ok()?);
        Some(Peer { transport, addr: SocketAddr::new(ip, port), flow: (flow != u64::MAX).then_some(FlowId(flow)) })
    }
}

fn sorted_routes(mut v: Vec<Route>) -> Vec<Route> {
    v.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.name.cmp(&b.name)));
    v
}

fn sorted(mut v: Vec<Upstream>) -> Vec<Upstream> {
    v.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.name.cmp(&b.name)));
    v
}

/// Transport a URI asks for (RFC 3263 4.1 without DNS): `transport=` or TLS for sips:.
pub fn uri_transport(u: &SipUri<'_>) -> Transport {
    match u.transport().and_then(Transport::parse) {
        Some(t) => t,
        None if u.secure => Transport::Tls,
        None => Transport::Udp,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn flow_tokens_round_trip_and_reject_tampering() {
        let cfg = Config::load(None).unwrap();
        let sh = Shared::new(&cfg, vec![(Transport::Udp, "127.0.0.1:5060".parse().unwrap())], None, Instant::now(), [3; 32]);
        for p in [
            Peer { transport: Transport::Wss, addr: "127.0.0.1:40000".parse().unwrap(), flow: Some(FlowId(7)) },
            Peer { transport: Transport::Udp, addr: "[2001:db8::1]:5060".parse().unwrap(), flow: None },
        ] {
            let t = sh.flow_token(&p);
            assert_eq!(sh.parse_flow_token(&t), Some(p));
            let mut bad = t.clone().into_bytes();
            let i = bad.len() - 3;
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(sh.parse_flow_token(std::str::from_utf8(&bad).unwrap()), None);
        }
        assert!(sh.is_own_address("127.0.0.1", None));
        assert!(!sh.is_own_address("127.0.0.1", Some(5090)));
        assert!(sh.is_own_address("localhost", Some(5060)));
    }
}
