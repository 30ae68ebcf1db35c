//! Trunks (`[[upstream]]`): where a trunk's calls may go (a host name resolved by RFC 3263,
//! or static targets), how its targets are chosen, its limits (concurrent calls, calls
//! per second), identity trust (RFC 3325) and outbound credentials. Sans-IO: the DNS
//! lookups happen in `rt/dns.rs`, which stores [`Resolved`] records in the shared state.

use crate::config::SrtpPolicy;
use crate::core::{Peer, uri_transport};
use crate::msg::SipUri;
use crate::resolve::{Record, Selection, Target};
use crate::transport::Transport;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The settings of a trunk beyond its URI (configuration file, admin API and store share them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrunkOptions {
    /// More targets (IP-address URIs) tried after the URI's.
    pub targets: Vec<String>,
    /// `priority`, `weighted` (default), `round_robin`, `call_id_hash`, `least_latency`.
    pub selection: Option<String>,
    pub invite_timeout_ms: Option<u64>,
    pub failover_block_secs: Option<u64>,
    pub max_calls: Option<u32>,
    pub max_cps: Option<f64>,
    /// P-Asserted-Identity and Privacy are kept towards this trunk (RFC 3325 trust domain).
    pub trusted: Option<bool>,
    /// Outbound digest credentials for 401/407 from the trunk.
    pub auth_user: Option<String>,
    pub auth_password: Option<String>,
    /// OPTIONS probe interval (0 or absent: no probing).
    pub probe_interval_ms: Option<u64>,
    pub probe_timeout_ms: Option<u64>,
    pub probe_down_after: Option<u32>,
    pub probe_up_after: Option<u32>,
}

/// RFC 3263 lookup of a trunk host name (4.1 transport, 4.2 port and address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsQuery {
    pub host: String,
    /// Explicit port: A/AAAA only, no NAPTR/SRV.
    pub port: Option<u16>,
    /// Explicit `transport=`: SRV for it, no NAPTR.
    pub transport: Option<Transport>,
    /// `sips:` URI: TLS only.
    pub secure: bool,
}

impl DnsQuery {
    /// The cache key.
    pub fn key(&self) -> String {
        format!("{}|{:?}|{:?}|{}", self.host.to_ascii_lowercase(), self.port, self.transport, self.secure)
    }
}

/// OPTIONS probing of a trunk's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub interval: Duration,
    pub timeout: Duration,
    pub down_after: u32,
    pub up_after: u32,
}

/// Records of one DNS name, valid until their (shortest) TTL runs out.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub records: Vec<Record>,
    pub valid_until: Instant,
}

/// A trunk (next hop for calls to other domains and dial-plan routes).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name (the API's key).
    pub name: String,
    /// Lower is preferred; the preferred upstream takes calls to other domains no route matches.
    pub priority: u32,
    /// `config` or `api`.
    pub source: &'static str,
    pub uri: String,
    /// Static targets (the URI's own when it is an address, then `targets`).
    pub records: Vec<Record>,
    /// Host-name URI: resolved by DNS (its records come before the static ones).
    pub dns: Option<DnsQuery>,
    pub selection: Selection,
    /// No provisional response to an INVITE within this time: try the next target.
    pub invite_timeout: Duration,
    /// How long a failed target is skipped (a 503's Retry-After wins).
    pub block_for: Duration,
    /// Overrides `media.anchor` for calls through this upstream.
    pub anchor_media: Option<bool>,
    /// SRTP policy of the leg towards it.
    pub srtp: Option<SrtpPolicy>,
    pub max_calls: Option<u32>,
    pub max_cps: Option<f64>,
    pub trusted: bool,
    /// (user, password) for 401/407 from the trunk.
    pub credentials: Option<(String, String)>,
    pub probe: Option<Probe>,
    /// The options as given (shown by the API, stored).
    pub options: TrunkOptions,
}

fn target_of(uri: &str) -> Result<Target, String> {
    let p = SipUri::parse(uri).map_err(|e| format!("target {uri:?}: {e}"))?;
    let tr = uri_transport(&p);
    let ip = p.ip().ok_or_else(|| format!("target {uri:?}: expected an IP address"))?;
    Ok(Target { addr: SocketAddr::new(ip, p.port.unwrap_or(tr.default_port())), transport: tr })
}

impl Upstream {
    /// Builds and checks a trunk; the error names the field at fault.
    pub fn build(
        name: &str,
        priority: u32,
        source: &'static str,
        uri: &str,
        anchor_media: Option<bool>,
        srtp: Option<SrtpPolicy>,
        o: &TrunkOptions,
    ) -> Result<Upstream, String> {
        let parsed = SipUri::parse(uri).map_err(|e| format!("uri {uri:?}: expected a sip: or sips: URI ({e})"))?;
        let transport = parsed.transport().map(|t| Transport::parse(t).ok_or_else(|| format!("uri {uri:?}: unknown transport {t:?}")));
        let transport = transport.transpose()?;
        let mut records = Vec::new();
        let dns = match parsed.ip() {
            Some(ip) => {
                let tr = uri_transport(&parsed);
                records.push(Record {
                    priority: 0,
                    weight: 0,
                    target: Target { addr: SocketAddr::new(ip, parsed.port.unwrap_or(tr.default_port())), transport: tr },
                });
                None
            }
            None => {
                let h = parsed.host;
                if h.is_empty()
                    || h.len() > 253
                    || !h.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                {
                    return Err(format!("uri {uri:?}: {h:?} is not a host name"));
                }
                Some(DnsQuery { host: h.to_ascii_lowercase(), port: parsed.port, transport, secure: parsed.secure })
            }
        };
        for (i, t) in o.targets.iter().enumerate() {
            records.push(Record { priority: 1 + i as u16, weight: 0, target: target_of(t)? });
        }
        let selection = match o.selection.as_deref() {
            None => Selection::Weighted,
            Some(s) => Selection::parse(s)
                .ok_or_else(|| format!("selection {s:?}: expected priority, weighted, round_robin, call_id_hash or least_latency"))?,
        };
        if o.max_cps.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return Err("max_cps: expected a positive number".into());
        }
        if o.invite_timeout_ms.is_some_and(|t| !(50..=180_000).contains(&t)) {
            return Err("invite_timeout_ms: expected 50 to 180000".into());
        }
        let credentials = match (&o.auth_user, &o.auth_password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => return Err("auth_user/auth_password: expected both (or neither)".into()),
        };
        let probe = match o.probe_interval_ms {
            None | Some(0) => None,
            // Below 100 ms is raised to 100 ms (documented): probes are not a load test.
            Some(ms) => Some(Probe {
                interval: Duration::from_millis(ms.max(100)),
                timeout: Duration::from_millis(o.probe_timeout_ms.unwrap_or(ms.min(2000)).max(50)),
                down_after: o.probe_down_after.unwrap_or(2).max(1),
                up_after: o.probe_up_after.unwrap_or(2).max(1),
            }),
        };
        Ok(Upstream {
            name: name.to_string(),
            priority,
            source,
            uri: uri.to_string(),
            records,
            dns,
            selection,
            invite_timeout: Duration::from_millis(o.invite_timeout_ms.unwrap_or(2000)),
            block_for: Duration::from_secs(o.failover_block_secs.unwrap_or(30)),
            anchor_media,
            srtp,
            max_calls: o.max_calls,
            max_cps: o.max_cps,
            trusted: o.trusted.unwrap_or(false),
            credentials,
            probe,
            options: o.clone(),
        })
    }

    /// The host written into the Request-URI of calls the dial plan sends here.
    pub fn ruri_host(&self) -> String {
        match SipUri::parse(&self.uri) {
            Ok(u) => match u.port {
                Some(p) => format!("{}:{p}", u.host),
                None => u.host.to_string(),
            },
            Err(_) => self.uri.clone(),
        }
    }

    /// Every record: resolved ones (if `resolved` is given) first, then the static ones.
    pub fn all_records(&self, resolved: Option<&Resolved>) -> Vec<Record> {
        let mut v: Vec<Record> = resolved.map(|r| r.records.clone()).unwrap_or_default();
        let base = v.iter().map(|r| r.priority).max().map_or(0, |p| p.saturating_add(1));
        v.extend(self.records.iter().map(|r| Record { priority: base.saturating_add(r.priority), ..*r }));
        v
    }

    /// The next hop used when there is no fail-over (the first record).
    pub fn first_peer(&self, resolved: Option<&Resolved>) -> Option<Peer> {
        self.all_records(resolved).first().map(|r| Peer { transport: r.target.transport, addr: r.target.addr, flow: None })
    }
}

/// Why a trunk takes no more calls right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxCalls,
    MaxCps,
}

#[derive(Debug, Default, Clone)]
struct Load {
    calls: u32,
    tokens: f64,
    last: Option<Instant>,
}

/// Concurrent calls and call rate per trunk (shared by the workers).
#[derive(Debug, Default)]
pub struct Loads {
    map: std::sync::Mutex<HashMap<String, Load>>,
}

impl Loads {
    /// Admits one more call to `trunk` at `now` under its limits (token bucket of
    /// `max_cps` with a one-second burst), or says which limit refuses it.
    pub fn admit(&self, trunk: &str, now: Instant, max_calls: Option<u32>, max_cps: Option<f64>) -> Result<(), Refused> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let l = m.entry(trunk.to_string()).or_default();
        if max_calls.is_some_and(|mx| l.calls >= mx) {
            return Err(Refused::MaxCalls);
        }
        if let Some(cps) = max_cps {
            let burst = cps.max(1.0);
            let elapsed = l.last.map_or(burst / cps, |t| now.saturating_duration_since(t).as_secs_f64());
            l.tokens = (l.tokens + elapsed * cps).min(burst);
            l.last = Some(now);
            if l.tokens < 1.0 {
                return Err(Refused::MaxCps);
            }
            l.tokens -= 1.0;
        }
        l.calls += 1;
        Ok(())
    }

    /// A call admitted to `trunk` ended (or failed).
    pub fn release(&self, trunk: &str) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = m.get_mut(trunk) {
            l.calls = l.calls.saturating_sub(1);
        }
    }

    /// Calls in progress on `trunk`.
    pub fn calls(&self, trunk: &str) -> u32 {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(trunk).map_or(0, |l| l.calls)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_beyond_max_calls_and_cps() {
        let l = Loads::default();
        let t0 = Instant::now();
        assert_eq!(l.admit("a", t0, Some(2), None), Ok(()));
        assert_eq!(l.admit("a", t0, Some(2), None), Ok(()));
        assert_eq!(l.admit("a", t0, Some(2), None), Err(Refused::MaxCalls));
        l.release("a");
        assert_eq!(l.admit("a", t0, Some(2), None), Ok(()));
        assert_eq!(l.calls("a"), 2);
        // 5 per second: a burst of 5, then one every 200 ms.
        let ok = (0..10).filter(|_| l.admit("b", t0, None, Some(5.0)).is_ok()).count();
        assert_eq!(ok, 5);
        assert_eq!(l.admit("b", t0 + Duration::from_millis(100), None, Some(5.0)), Err(Refused::MaxCps));
        assert_eq!(l.admit("b", t0 + Duration::from_millis(250), None, Some(5.0)), Ok(()));
    }

    #[test]
    fn trunks_are_checked_field_by_field() {
        let o = TrunkOptions::default();
        let u = Upstream::build("t", 1, "config", "sip:trunk.test", None, None, &o).unwrap();
        assert_eq!(u.dns, Some(DnsQuery { host: "trunk.test".into(), port: None, transport: None, secure: false }));
        assert!(u.records.is_empty());
        let u = Upstream::build("t", 1, "config", "sip:10.0.0.1:5070;transport=tcp", None, None, &o).unwrap();
        assert_eq!(u.records[0].target, Target { addr: "10.0.0.1:5070".parse().unwrap(), transport: Transport::Tcp });
        for (bad, field) in [
            (TrunkOptions { selection: Some("random".into()), ..Default::default() }, "selection"),
            (TrunkOptions { targets: vec!["sip:gw.test".into()], ..Default::default() }, "target"),
            (TrunkOptions { auth_user: Some("u".into()), ..Default::default() }, "auth_user"),
            (TrunkOptions { max_cps: Some(0.0), ..Default::default() }, "max_cps"),
        ] {
            let e = Upstream::build("t", 1, "config", "sip:trunk.test", None, None, &bad).unwrap_err();
            assert!(e.contains(field), "{e}");
        }
        assert!(Upstream::build("t", 1, "config", "http://x", None, None, &o).unwrap_err().contains("uri"));
        assert!(Upstream::build("t", 1, "config", "sip:bad_host!", None, None, &o).is_err());
    }
}
