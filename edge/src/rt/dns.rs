//! RFC 3263 resolution of trunk host names through hickory-resolver: NAPTR (4.1, transport)
//! -> SRV (4.2, port, priority and weight) -> A/AAAA, cached in the shared state until the
//! records' TTL runs out. A background task refreshes the cache before it expires, so the
//! per-call path never waits for (or sends) a DNS query. When the name server stops
//! answering, the cached records keep working until their TTL, and the log says so once.

use crate::config::DnsConfig;
use crate::core::Shared;
use crate::resolve::{Record, Target};
use crate::transport::Transport;
use crate::trunk::{DnsQuery, Resolved};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The resolver and its settings.
pub struct Dns {
    r: TokioResolver,
    min_ttl: Duration,
}

/// SRV owner name of a transport (RFC 3263 4.1, RFC 2782).
fn srv_name(t: Transport, host: &str) -> Option<String> {
    match t {
        Transport::Udp => Some(format!("_sip._udp.{host}.")),
        Transport::Tcp => Some(format!("_sip._tcp.{host}.")),
        Transport::Tls => Some(format!("_sips._tcp.{host}.")),
        Transport::Ws | Transport::Wss => None,
    }
}

/// Transport of a NAPTR service field (RFC 3263 4.1), if we can use it.
fn naptr_transport(service: &str, secure: bool) -> Option<Transport> {
    match service.to_ascii_uppercase().as_str() {
        "SIP+D2U" if !secure => Some(Transport::Udp),
        "SIP+D2T" if !secure => Some(Transport::Tcp),
        "SIPS+D2T" => Some(Transport::Tls),
        _ => None,
    }
}

impl Dns {
    /// A resolver for `cfg.servers` (or the system's), without its own cache: the edge
    /// keeps records itself, for exactly their TTL.
    pub fn new(cfg: &DnsConfig) -> Result<Dns, String> {
        let mut b = if cfg.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("DNS resolver: {e}"))?
        } else {
            let servers = cfg
                .servers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_parts(None, vec![], servers), TokioRuntimeProvider::default())
        };
        let o = b.options_mut();
        o.cache_size = 0;
        o.timeout = Duration::from_millis(cfg.timeout_ms.max(100));
        o.attempts = 1;
        let r = b.build().map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(Dns { r, min_ttl: Duration::from_secs(cfg.min_ttl_secs) })
    }

    /// One query: `None` when the name has no such records; `Err` when the server did not
    /// answer usefully. Counted in `edge_dns_queries_total`.
    async fn query(&self, name: &str, rt: RecordType) -> Result<Option<hickory_resolver::lookup::Lookup>, String> {
        metrics::counter!("edge_dns_queries_total", "type" => rt.to_string()).increment(1);
        match self.r.lookup(name, rt).await {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.is_no_records_found() => Ok(None),
            Err(e) => {
                metrics::counter!("edge_dns_failures_total").increment(1);
                Err(format!("{rt} {name}: {e}"))
            }
        }
    }

    /// A/AAAA of `host` with `port` and `transport`.
    async fn addresses(
        &self,
        host: &str,
        port: u16,
        transport: Transport,
        prio: u16,
        weight: u16,
        until: &mut Option<Instant>,
    ) -> Result<Vec<Record>, String> {
        let name = if host.ends_with('.') { host.to_string() } else { format!("{host}.") };
        let mut out = Vec::new();
        let mut failed = None;
        for rt in [RecordType::A, RecordType::AAAA] {
            // Some servers refuse the other family instead of answering "no data": one
            // family with addresses is enough.
            let l = match self.query(&name, rt).await {
                Ok(l) => l,
                Err(e) => {
                    failed = Some(e);
                    None
                }
            };
            if let Some(l) = l {
                *until = Some(until.map_or(l.valid_until(), |u| u.min(l.valid_until())));
                for rec in l.answers() {
                    let ip = match &rec.data {
                        RData::A(a) => std::net::IpAddr::V4(a.0),
                        RData::AAAA(a) => std::net::IpAddr::V6(a.0),
                        _ => continue,
                    };
                    out.push(Record { priority: prio, weight, target: Target { addr: SocketAddr::new(ip, port), transport } });
                }
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// The targets of an SRV name (targets "." mean "no service" and are skipped).
    async fn srv(&self, name: &str, transport: Transport, until: &mut Option<Instant>) -> Result<Vec<Record>, String> {
        let Some(l) = self.query(name, RecordType::SRV).await? else { return Ok(vec![]) };
        *until = Some(until.map_or(l.valid_until(), |u| u.min(l.valid_until())));
        let mut out = Vec::new();
        for rec in l.answers() {
            let RData::SRV(s) = &rec.data else { continue };
            let target = s.target.to_utf8();
            if target == "." || target.is_empty() {
                continue;
            }
            out.extend(self.addresses(&target, s.port, transport, s.priority, s.weight, until).await?);
        }
        Ok(out)
    }

    /// RFC 3263 4.1/4.2 for a trunk host name.
    pub async fn resolve(&self, q: &DnsQuery, now: Instant) -> Result<Resolved, String> {
        let mut until = None;
        let default_t = if q.secure { Transport::Tls } else { Transport::Udp };
        let records = if let Some(port) = q.port {
            // An explicit port: A/AAAA only (4.2).
            self.addresses(&q.host, port, q.transport.unwrap_or(default_t), 0, 0, &mut until).await?
        } else if let Some(t) = q.transport {
            // An explicit transport: SRV for it, else A/AAAA on the default port.
            let mut v = match srv_name(t, &q.host) {
                Some(n) => self.srv(&n, t, &mut until).await?,
                None => vec![],
            };
            if v.is_empty() {
                v = self.addresses(&q.host, t.default_port(), t, 0, 0, &mut until).await?;
            }
            v
        } else {
            let mut v = Vec::new();
            // NAPTR: the most preferred record with a transport we support (4.1).
            if let Some(l) = self.query(&format!("{}.", q.host), RecordType::NAPTR).await? {
                until = Some(l.valid_until());
                let mut naptrs: Vec<(u16, u16, Transport, String)> = l
                    .answers()
                    .iter()
                    .filter_map(|rec| match &rec.data {
                        RData::NAPTR(n) if String::from_utf8_lossy(&n.flags).eq_ignore_ascii_case("s") => {
                            let t = naptr_transport(&String::from_utf8_lossy(&n.services), q.secure)?;
                            Some((n.order, n.preference, t, n.replacement.to_utf8()))
                        }
                        _ => None,
                    })
                    .collect();
                naptrs.sort_by_key(|n| (n.0, n.1));
                for (_, _, t, name) in naptrs {
                    v = self.srv(&name, t, &mut until).await?;
                    if !v.is_empty() {
                        break;
                    }
                }
            }
            // No NAPTR: SRV per transport we support, in our order of preference.
            if v.is_empty() {
                let ts: &[Transport] = if q.secure { &[Transport::Tls] } else { &[Transport::Udp, Transport::Tcp, Transport::Tls] };
                for t in ts {
                    if let Some(n) = srv_name(*t, &q.host) {
                        v = self.srv(&n, *t, &mut until).await?;
                    }
                    if !v.is_empty() {
                        break;
                    }
                }
            }
            if v.is_empty() {
                v = self.addresses(&q.host, default_t.default_port(), default_t, 0, 0, &mut until).await?;
            }
            v
        };
        if records.is_empty() {
            return Err(format!("{}: no NAPTR, SRV or A/AAAA records", q.host));
        }
        let valid_until = until.unwrap_or(now).max(now + self.min_ttl);
        Ok(Resolved { records, valid_until })
    }
}

/// Per-name refresh state of the background task.
#[derive(Default)]
pub struct DnsState(HashMap<String, NameState>);

#[derive(Default)]
struct NameState {
    next_try: Option<Instant>,
    failing: bool,
    told_expired: bool,
    resolved_once: bool,
}

/// Resolves every trunk host name once (at start, before calls are taken).
pub async fn prime(dns: &Dns, sh: &Shared) -> DnsState {
    let mut st = DnsState::default();
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    refresh(dns, sh, &mut st, now).await;
    st
}

async fn refresh(dns: &Dns, sh: &Shared, states: &mut DnsState, now: Instant) {
    let states = &mut states.0;
    let mut seen = std::collections::HashSet::new();
    for up in sh.upstream_list().iter() {
        let Some(q) = &up.dns else { continue };
        if !seen.insert(q.key()) {
            continue;
        }
        let st = states.entry(q.key()).or_default();
        if st.next_try.is_some_and(|t| now < t) {
            continue;
        }
        match dns.resolve(q, now).await {
            Ok(r) => {
                let ttl = r.valid_until.saturating_duration_since(now);
                if st.failing {
                    tracing::info!(host = q.host, records = r.records.len(), ttl_secs = ttl.as_secs(), "DNS answers again for trunk host");
                } else if !st.resolved_once {
                    tracing::info!(host = q.host, records = r.records.len(), ttl_secs = ttl.as_secs(), "trunk host resolved");
                }
                st.resolved_once = true;
                st.failing = false;
                st.told_expired = false;
                // Refreshed when 80 % of the TTL is over, so the cache never runs dry.
                st.next_try = Some(now + ttl.mul_f64(0.8).max(Duration::from_millis(500)));
                sh.set_resolved(q, Some(r));
            }
            Err(e) => {
                match sh.resolved(q, now) {
                    Some(c) => {
                        let left = c.valid_until.saturating_duration_since(now);
                        if !st.failing {
                            tracing::warn!(
                                host = q.host,
                                error = %e,
                                ttl_left_secs = format!("{:.1}", left.as_secs_f64()),
                                "DNS lookup failed: using the cached records until their TTL runs out"
                            );
                        }
                        st.next_try = Some(now + Duration::from_secs(1).min(left.max(Duration::from_millis(100))));
                    }
                    None => {
                        if !st.told_expired {
                            if st.resolved_once {
                                tracing::error!(host = q.host, error = %e, "cached DNS records expired and DNS does not answer: calls to this trunk get 503");
                            } else {
                                tracing::error!(host = q.host, error = %e, "trunk host does not resolve: calls to this trunk get 503");
                            }
                            st.told_expired = true;
                        }
                        sh.set_resolved(q, None);
                        st.next_try = Some(now + Duration::from_secs(1));
                    }
                }
                st.failing = true;
            }
        }
    }
    states.retain(|k, _| seen.contains(k));
    sh.retain_resolved(&seen);
}

/// The refresh task: looks at every trunk name twice a second (new trunks from the API are
/// resolved within that time), queries only those due.
pub async fn run(dns: Arc<Dns>, sh: Arc<Shared>, mut states: DnsState) {
    loop {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        refresh(&dns, &sh, &mut states, now).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
