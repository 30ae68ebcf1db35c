//! Target resolution (RFC 3263 4.2, without NAPTR): a host name without a port is looked
//! up as an SRV record for the transport (`_sip._udp`, `_sip._tcp`, `_sips._tcp`), one
//! target chosen by priority then RFC 2782 weighted selection (seeded), then A/AAAA; with
//! no SRV record, or with an explicit port, the host's A/AAAA records are used.

use crate::rt::link::Proto;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::net::SocketAddr;

/// One SRV target (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// Picks one target: lowest priority, then weighted by `weight` with `r` in [0, 1)
/// (RFC 2782: weight 0 entries only when nothing else is there).
pub fn choose(targets: &[SrvTarget], r: f64) -> Option<&SrvTarget> {
    let best = targets.iter().map(|t| t.priority).min()?;
    let group: Vec<&SrvTarget> = targets.iter().filter(|t| t.priority == best).collect();
    let total: u32 = group.iter().map(|t| t.weight as u32).sum();
    if total == 0 {
        return group.first().copied();
    }
    let mut pick = (r.clamp(0.0, 0.999_999) * total as f64) as u32;
    for t in &group {
        if pick < t.weight as u32 {
            return Some(t);
        }
        pick -= t.weight as u32;
    }
    group.last().copied()
}

fn resolver(dns: Option<SocketAddr>) -> Result<TokioResolver, String> {
    match dns {
        Some(a) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = a.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = a.port();
            let ns = NameServerConfig::new(a.ip(), true, vec![udp, tcp]);
            let cfg = ResolverConfig::from_parts(None, vec![], vec![ns]);
            TokioResolver::builder_with_config(cfg, TokioRuntimeProvider::default()).build().map_err(|e| format!("DNS resolver: {e}"))
        }
        None => TokioResolver::builder_tokio().and_then(|b| b.build()).map_err(|e| format!("DNS resolver: {e}")),
    }
}

/// SRV service name of a transport (RFC 3263 4.1 / RFC 2782).
pub fn srv_name(proto: Proto, host: &str) -> Option<String> {
    match proto {
        Proto::Udp => Some(format!("_sip._udp.{host}.")),
        Proto::Tcp => Some(format!("_sip._tcp.{host}.")),
        Proto::Tls => Some(format!("_sips._tcp.{host}.")),
        Proto::Ws | Proto::Wss => None,
    }
}

/// Resolves `host` (a name, not an address) for `proto`; `port` is the URI's port, if any.
pub async fn resolve(
    host: &str,
    port: Option<u16>,
    default_port: u16,
    proto: Proto,
    dns: Option<SocketAddr>,
    seed: u64,
) -> Result<SocketAddr, String> {
    let r = resolver(dns)?;
    let (name, port) = match (port, srv_name(proto, host)) {
        (None, Some(srv)) => {
            let targets: Vec<SrvTarget> = match r.srv_lookup(srv.as_str()).await {
                Ok(l) => l
                    .answers()
                    .iter()
                    .filter_map(|rec| match &rec.data {
                        RData::SRV(s) => {
                            Some(SrvTarget { priority: s.priority, weight: s.weight, port: s.port, target: s.target.to_utf8() })
                        }
                        _ => None,
                    })
                    .collect(),
                Err(_) => vec![],
            };
            let u = ((seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64) / (1u64 << 53) as f64;
            match choose(&targets, u) {
                Some(t) => (t.target.clone(), t.port),
                None => (format!("{host}."), default_port),
            }
        }
        (p, _) => (format!("{host}."), p.unwrap_or(default_port)),
    };
    let ips = r.lookup_ip(name.as_str()).await.map_err(|e| format!("cannot resolve {name}: {e}"))?;
    ips.iter().next().map(|ip| SocketAddr::new(ip, port)).ok_or_else(|| format!("{name} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: u16, w: u16, n: &str) -> SrvTarget {
        SrvTarget { priority: p, weight: w, port: 5060, target: n.into() }
    }

    #[test]
    fn priority_then_weight() {
        let v = vec![t(20, 100, "backup"), t(10, 30, "a"), t(10, 70, "b")];
        assert_eq!(choose(&v, 0.0).unwrap().target, "a");
        assert_eq!(choose(&v, 0.29).unwrap().target, "a");
        assert_eq!(choose(&v, 0.31).unwrap().target, "b");
        assert_eq!(choose(&v, 0.99).unwrap().target, "b");
        assert_eq!(choose(&[t(5, 0, "z")], 0.5).unwrap().target, "z");
        assert!(choose(&[], 0.5).is_none());
    }
}
