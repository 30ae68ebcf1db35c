//! The runtime: the only place with tokio, sockets, TLS, WebSocket, threads and the clock.
//!
//! Layout: N worker threads, each with a current-thread tokio runtime, its own
//! `SO_REUSEPORT` UDP socket per UDP listener (batched receive via quinn-udp, i.e.
//! `recvmmsg` + GRO) and its own [`Core`]. A message belongs to the worker its Call-ID
//! hashes to, so every transaction of a call lives in one core and no lock is taken per
//! message; a datagram that lands on another worker is handed over through a channel.
//! Stream transports (TCP, TLS, WS, WSS) run on a small multi-threaded runtime; each
//! connection is a flow whose writer queue any worker can reach.

#![allow(clippy::disallowed_methods)] // the runtime is where the clock is read

pub mod admin;
pub mod api;
pub mod capture;
pub mod conference;
pub mod dns;
pub mod flows;
pub mod icmp;
pub mod media;
pub mod phone;
pub mod room_ws;
pub mod stream;
pub mod tls;
pub mod udp;
pub mod webhook;
pub mod whip;

use crate::config::Config;
use crate::core::{Input, Output, Peer, Shared, Transmit};
use crate::msg::Message;
use crate::proxy::Core;
use crate::transport::Transport;
use flows::Flows;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, mpsc};

const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "other"];

/// SIP message counters, taken once: counting a message is one atomic add (no registry
/// lookup, no allocation). Index `[direction][method or class]`, direction 0 = in, 1 = out.
struct SipCounters {
    requests: [[metrics::Counter; 15]; 2],
    responses: [[metrics::Counter; 7]; 2],
}

fn sip_counters() -> &'static SipCounters {
    static C: std::sync::OnceLock<SipCounters> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        let dirs = ["in", "out"];
        SipCounters {
            requests: dirs.map(|d| {
                crate::msg::Method::ALL.map(|m| metrics::counter!("edge_sip_requests_total", "method" => m.name(), "direction" => d))
            }),
            responses: dirs.map(|d| CLASSES.map(|c| metrics::counter!("edge_sip_responses_total", "class" => c, "direction" => d))),
        }
    })
}

fn class_index(code: u16) -> usize {
    match code / 100 {
        1..=6 => (code / 100 - 1) as usize,
        _ => 6,
    }
}

/// Counts a received SIP message by method (requests) or status class (responses).
pub fn count_sip(msg: &Message) {
    let c = sip_counters();
    if msg.is_request() {
        c.requests[0][msg.method() as usize].increment(1);
    } else {
        c.responses[0][class_index(msg.status().unwrap_or(0))].increment(1);
    }
}

/// Requests of the admin API to a worker's core.
pub enum AdminCmd {
    /// The calls this worker owns.
    Calls(tokio::sync::oneshot::Sender<Vec<crate::media::anchor::ActiveCall>>),
    /// Hang up a call (`false`: no such call here).
    Hangup(String, tokio::sync::oneshot::Sender<bool>),
}

/// State the runtime shares between workers and connection tasks.
pub struct RtShared {
    pub core: Arc<Shared>,
    pub flows: Flows,
    pub workers: Vec<mpsc::UnboundedSender<Input>>,
    pub max_message_size: usize,
    pub conn: tokio::runtime::Handle,
    /// Ended calls go to the call-record writer.
    pub cdr: std::sync::mpsc::Sender<crate::media::anchor::CallRecord>,
    /// Persistence (bindings, call records).
    pub store: Arc<dyn crate::store::Store>,
    /// Admin requests to each worker.
    pub admin: Vec<mpsc::UnboundedSender<AdminCmd>>,
    /// Per-user packet captures.
    pub captures: Arc<capture::Captures>,
    /// TLS client for connections the edge opens (trunks over TLS).
    pub tls_client: Option<tokio_rustls::TlsConnector>,
    /// Call events for the admin API's subscribers (SSE).
    pub events: tokio::sync::broadcast::Sender<Arc<api::StampedEvent>>,
}

impl RtShared {
    /// The worker that owns a message (by its Call-ID).
    pub fn owner(&self, msg: &Message) -> usize {
        self.owner_of(msg.call_id().unwrap_or(""))
    }

    /// The worker that owns a Call-ID (FNV-1a hash; probes: worker 0).
    pub fn owner_of(&self, call_id: &str) -> usize {
        if call_id.starts_with(crate::proxy::PROBE_CALL_ID) {
            // OPTIONS probes are sent (and their answers handled) by worker 0.
            return 0;
        }
        let n = self.workers.len().max(1);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in call_id.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        (h % n as u64) as usize
    }

    /// Hands a parsed message to the worker that owns it.
    pub fn dispatch(&self, from: Peer, msg: Message) {
        let w = self.owner(&msg);
        let _ = self.workers[w].send(Input::Message { from, msg });
    }
}

/// Addresses actually bound (port 0 in the config becomes a real port).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub listeners: Vec<(Transport, SocketAddr)>,
    pub listeners_admin: Vec<SocketAddr>,
}

/// Starts the edge and blocks until Ctrl-C / SIGTERM.
pub fn run(cfg: Config) -> Result<(), String> {
    // Before anything registers a metric: handles taken earlier would stay no-ops.
    let prometheus = admin::install_recorder()?;
    // Each anchored call holds four relay sockets: raise the soft descriptor limit to the
    // hard one (the default soft limit of 1024 would cap anchoring near 250 calls).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| format!("data_dir {}: {e}", cfg.data_dir.display()))?;
    let workers = if cfg.sip.workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cfg.sip.workers };
    let conn_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.clamp(1, 2))
        .thread_name("edge-conn")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;

    // TLS (for TLS and WSS listeners).
    let mut cert_store = None;
    let tls_cfg = if !cfg.sip.tls.is_empty() || !cfg.sip.wss.is_empty() {
        let (cert, key) = tls::cert_paths(&cfg.data_dir, cfg.tls.cert.as_deref(), cfg.tls.key.as_deref());
        if cfg.tls.cert.is_none() && tls::ensure_self_signed(&cert, &key)? {
            tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
        }
        let store = Arc::new(tls::CertStore::load(&cert, &key)?);
        cert_store = Some(store.clone());
        Some(tls::server_config(store)?)
    } else {
        None
    };

    // Bind everything first, so a taken port fails the start cleanly.
    let mut bound = Bound::default();
    let mut udp_sockets: Vec<Vec<std::net::UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in &cfg.sip.udp {
        udp::ensure_free(*addr).map_err(|e| format!("udp {addr}: {e}"))?;
        let first = udp::bind_reuseport(*addr).map_err(|e| format!("udp {addr}: {e}"))?;
        let actual = first.local_addr().map_err(|e| e.to_string())?;
        udp_sockets[0].push(first);
        for sockets in udp_sockets.iter_mut().skip(1) {
            sockets.push(udp::bind_reuseport(actual).map_err(|e| format!("udp {actual}: {e}"))?);
        }
        bound.listeners.push((Transport::Udp, actual));
    }
    let _guard = conn_rt.enter();
    let mut tcp_listeners = Vec::new();
    for (t, addrs) in
        [(Transport::Tcp, &cfg.sip.tcp), (Transport::Tls, &cfg.sip.tls), (Transport::Ws, &cfg.sip.ws), (Transport::Wss, &cfg.sip.wss)]
    {
        for addr in addrs {
            let l = stream::bind_listener(*addr).map_err(|e| format!("{} {addr}: {e}", t.uri_param()))?;
            let actual = l.local_addr().map_err(|e| e.to_string())?;
            bound.listeners.push((t, actual));
            tcp_listeners.push((t, l));
        }
    }

    // The SFU: its media socket is bound now, so a taken port fails the start.
    let sfu = if cfg.sfu.enabled {
        let c = sfu::core::SfuConfig {
            media_addr: cfg.sfu.media,
            room: sfu::room::RoomConfig {
                max_participants: cfg.sfu.max_participants,
                lobby: cfg.sfu.lobby,
                vanish_after: std::time::Duration::from_secs(cfg.sfu.vanish_secs),
            },
            last_n: cfg.sfu.last_n,
            audio_n: cfg.sfu.audio_n,
            all_audio_up_to: cfg.sfu.all_audio_up_to,
            tcp_addr: cfg.sfu.ice_tcp.then_some(cfg.sfu.media),
        };
        let h = sfu::rt::start(conn_rt.handle(), c, cfg.sfu.tokens.clone())?;
        println!("edge: listening sfu-media {}{}", h.media_addr, if cfg.sfu.ice_tcp { " (udp, ice-tcp)" } else { "" });
        Some(h)
    } else {
        None
    };

    let admin_listeners = admin::bind(&cfg.admin.listen)?;
    for l in &admin_listeners {
        if let Ok(a) = l.local_addr() {
            bound.listeners_admin.push(a);
        }
    }

    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
    let shared = Arc::new(Shared::new(&cfg, bound.listeners.clone(), None, Instant::now(), key));
    // SIP phones in SFU rooms: the conference UA, reached by `conference:` routes like a trunk.
    if let Some(h) = &sfu {
        let ip = match h.media_addr.ip() {
            ip if ip.is_unspecified() => {
                bound.listeners.first().map(|l| l.1.ip()).filter(|i| !i.is_unspecified()).unwrap_or(IpAddr::from([127, 0, 0, 1]))
            }
            ip => ip,
        };
        let addr = conference::start(conn_rt.handle(), ip, h.clone())?;
        let uri = match addr {
            SocketAddr::V4(a) => format!("sip:{a}"),
            SocketAddr::V6(a) => format!("sip:[{}]:{}", a.ip(), a.port()),
        };
        let o = crate::trunk::TrunkOptions { trusted: Some(true), ..Default::default() };
        let up = crate::trunk::Upstream::build("conference", u32::MAX, "sfu", &uri, None, None, &o)?;
        shared.set_conference(up);
        println!("edge: listening conference {addr}");
    }
    let db = cfg.data_dir.join("edge.db");
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::SqliteStore::open(&db).map_err(|e| format!("{}: {e}", db.display()))?);
    let clock = crate::store::wall_clock();
    let restored = store.load_bindings(clock).map_err(|e| format!("{}: {e}", db.display()))?;
    let n_restored = restored.len();
    for u in store.load_upstreams().map_err(|e| format!("{}: {e}", db.display()))? {
        match api::make_upstream(&u) {
            Ok(up) => shared.set_upstream(up),
            Err(e) => tracing::error!(upstream = u.name, error = %e, "stored upstream not usable"),
        }
    }
    for r in store.load_routes().map_err(|e| format!("{}: {e}", db.display()))? {
        let ups = shared.upstream_list();
        match r.checked(&|n| ups.iter().any(|u| u.name == n)) {
            Ok(r) => shared.set_route(r),
            Err(e) => tracing::error!(error = %e, "stored route not usable"),
        }
    }
    // Trunk host names (RFC 3263): resolved once now, then kept fresh in the background.
    let dns = Arc::new(dns::Dns::new(&cfg.dns)?);
    let dns_state = conn_rt.block_on(dns::prime(&dns, &shared));
    conn_rt.spawn(dns::run(dns, shared.clone(), dns_state));
    for u in store.load_users().map_err(|e| format!("{}: {e}", db.display()))? {
        if !cfg.users.iter().any(|c| *c.name.get_ref() == u.name) {
            let creds =
                crate::auth::Credentials { ha1_md5: u.ha1_md5, ha1_sha256: u.ha1_sha256, max_contacts: u.max_contacts.map(|m| m as usize) };
            shared.auth.set_user(&u.name, creds);
        }
    }
    for (aor, b) in restored {
        shared.location.update(clock.instant, &aor, |v| v.push(b));
    }

    let mut admin_txs = Vec::new();
    let mut admin_rxs = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        admin_txs.push(tx);
        admin_rxs.push(rx);
    }
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        txs.push(tx);
        rxs.push(rx);
    }
    let rt = Arc::new(RtShared {
        core: shared.clone(),
        flows: Flows::default(),
        workers: txs,
        max_message_size: cfg.sip.max_message_size,
        conn: conn_rt.handle().clone(),
        cdr: admin::record_writer(cfg.cdr_path()),
        store,
        events: tokio::sync::broadcast::channel(4096).0,
        captures: Arc::new(capture::Captures::new(capture::dir(&cfg.data_dir))),
        admin: admin_txs,
        tls_client: match tls::client_connector(cfg.tls.ca_file.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => return Err(format!("tls.ca_file: {e}")),
        },
    });
    webhook::start(
        webhook::WebhookConfig {
            urls: cfg.events.webhooks.clone(),
            queue: cfg.events.webhook_queue,
            attempts: cfg.events.webhook_attempts,
            backoff: std::time::Duration::from_millis(cfg.events.webhook_backoff_ms),
            timeout: std::time::Duration::from_millis(cfg.events.webhook_timeout_ms),
        },
        &rt.events,
        conn_rt.handle(),
    );
    {
        let sh = shared.clone();
        conn_rt.spawn(async move {
            loop {
                metrics::gauge!("edge_registrations").set(sh.location.len() as f64);
                metrics::gauge!("edge_users").set(sh.auth.user_count() as f64);
                let now = Instant::now();
                for u in sh.upstream_list().iter() {
                    let records = sh.records_of(u, now);
                    let health = sh.health.lock().unwrap_or_else(|e| e.into_inner());
                    let mut any = false;
                    for r in &records {
                        let usable = health.usable(&r.target, now);
                        any |= usable;
                        let name = format!("{} {}", r.target.transport.uri_param(), r.target.addr);
                        metrics::gauge!("edge_upstream_target_up", "upstream" => u.name.clone(), "target" => name.clone()).set(if usable {
                            1.0
                        } else {
                            0.0
                        });
                        if let Some(rtt) = health.rtt(&r.target) {
                            metrics::gauge!("edge_upstream_target_rtt_seconds", "upstream" => u.name.clone(), "target" => name)
                                .set(rtt.as_secs_f64());
                        }
                    }
                    metrics::gauge!("edge_upstream_up", "upstream" => u.name.clone()).set(if any { 1.0 } else { 0.0 });
                    metrics::gauge!("edge_upstream_calls", "upstream" => u.name.clone()).set(sh.loads.calls(&u.name) as f64);
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
    }
    {
        let caps = rt.captures.clone();
        conn_rt.spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                caps.expire(Instant::now());
            }
        });
    }
    if !admin_listeners.is_empty() {
        let token_path =
            if cfg.admin.token_file.is_absolute() { cfg.admin.token_file.clone() } else { cfg.data_dir.join(&cfg.admin.token_file) };
        let (token, fresh) = api::load_or_create_token(&token_path)?;
        if fresh {
            println!("edge: admin token {token} (stored in {}; shown once)", token_path.display());
        }
        let st = api::ApiState {
            shared: shared.clone(),
            store: rt.store.clone(),
            token: token.into(),
            public: Arc::new(cfg.admin.public.clone()),
            static_users: Arc::new(cfg.users.iter().map(|u| u.name.get_ref().clone()).collect()),
            prometheus: prometheus.clone(),
            events: rt.events.clone(),
            tls: cert_store.clone(),
            captures: rt.captures.clone(),
            workers: rt.clone(),
            capture_max: std::time::Duration::from_secs(cfg.admin.capture_max_secs),
            sfu: sfu.clone(),
        };
        let app = api::router(st, sfu.clone());
        for l in admin_listeners {
            conn_rt.spawn(admin::serve(l, app.clone(), prometheus.clone()));
        }
    }

    for (t, a) in &bound.listeners {
        println!("edge: listening {} {a}", t.uri_param());
    }
    for a in &bound.listeners_admin {
        println!("edge: listening admin {a}");
    }
    if shared.media.anchor_possible() {
        let r = &shared.media.relay;
        println!("edge: media relay {} ports {}-{}", shared.media.bind, r.ports.start(), r.ports.end());
    }
    println!("edge: restored {n_restored} binding(s) from {}", db.display());
    println!("edge: domain {} with {} user(s), {workers} worker(s)", shared.domain, shared.auth.user_count());

    let mut threads = Vec::new();
    for (idx, ((rx, socks), arx)) in rxs.into_iter().zip(udp_sockets).zip(admin_rxs).enumerate() {
        let rt = rt.clone();
        let seed = rand::random::<u64>();
        threads.push(
            std::thread::Builder::new()
                .name(format!("edge-worker-{idx}"))
                .spawn(move || worker_main(idx, rt, socks, rx, arx, seed))
                .map_err(|e| e.to_string())?,
        );
    }
    if let Some(store) = cert_store {
        // Reload on file change (e.g. a renewal by certbot), as well as through the API.
        conn_rt.spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                match store.reload_if_changed() {
                    Some(Ok(fp)) => tracing::info!(sha256 = fp, "TLS certificate reloaded (file changed)"),
                    Some(Err(e)) => tracing::error!(error = %e, "TLS certificate changed but cannot be loaded: keeping the old one"),
                    None => {}
                }
            }
        });
    }
    for (t, l) in tcp_listeners {
        conn_rt.spawn(stream::accept_loop(rt.clone(), t, l, tls_cfg.clone()));
    }
    conn_rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    });
    tracing::info!("shutting down");
    Ok(())
}

struct Worker {
    idx: usize,
    rt: Arc<RtShared>,
    core: RefCell<Core>,
    udp: Vec<Rc<tokio::net::UdpSocket>>,
    wake: Notify,
    /// Wakes the relay loop (a bridge got work from SIP signalling).
    media_wake: Notify,
    m: WorkerMetrics,
}

/// Metric handles of one worker, taken once (updating them is an atomic store).
struct WorkerMetrics {
    attempts: metrics::Counter,
    setup: metrics::Histogram,
    server_tsx: metrics::Gauge,
    client_tsx: metrics::Gauge,
    calls: metrics::Gauge,
    ports: metrics::Gauge,
    media_calls: metrics::Gauge,
}

impl WorkerMetrics {
    fn new(idx: usize) -> WorkerMetrics {
        let w = idx.to_string();
        WorkerMetrics {
            attempts: metrics::counter!("edge_call_attempts_total"),
            setup: metrics::histogram!("edge_call_setup_seconds"),
            server_tsx: metrics::gauge!("edge_transactions_active", "kind" => "server", "worker" => w.clone()),
            client_tsx: metrics::gauge!("edge_transactions_active", "kind" => "client", "worker" => w.clone()),
            calls: metrics::gauge!("edge_calls_active", "worker" => w.clone()),
            ports: metrics::gauge!("edge_media_ports_in_use", "worker" => w.clone()),
            media_calls: metrics::gauge!("edge_media_calls", "worker" => w),
        }
    }
}

impl Worker {
    /// Commits what the core asked to persist, then sends everything it produced (so a
    /// response never goes out before the state it acknowledges is stored).
    fn flush(&self) {
        let ops = self.core.borrow_mut().take_store_ops();
        if !ops.is_empty()
            && let Err(e) = self.rt.store.write(crate::store::wall_clock(), &ops)
        {
            tracing::error!(error = %e, ops = ops.len(), "persisting failed: the state is kept in memory only");
        }
        let events = self.core.borrow_mut().take_events();
        if !events.is_empty() {
            let at = crate::store::wall_clock().unix;
            for e in events {
                // No subscriber is fine: events are not stored.
                let _ = self.rt.events.send(Arc::new(api::StampedEvent { at, event: e }));
            }
        }
        let mut failed = Vec::new();
        loop {
            let next = self.core.borrow_mut().poll_output();
            if next.is_none() {
                self.drain_records();
            }
            let Some(Output::Transmit(t)) = next else { break };
            let tsx = t.tsx;
            if !self.transmit(t)
                && let Some(id) = tsx
            {
                failed.push(id);
            }
        }
        if !failed.is_empty() {
            let now = Instant::now();
            for tsx in failed {
                self.core.borrow_mut().handle_input(now, Input::SendFailed { tsx });
            }
            self.flush();
        }
        self.wake.notify_one();
        if self.core.borrow_mut().take_media_kick() {
            self.media_wake.notify_one();
        }
    }

    /// Hands ended calls to the call-record writer and refreshes the relay gauges.
    fn drain_records(&self) {
        let mut core = self.core.borrow_mut();
        let stats = core.take_stats();
        if stats.call_attempts > 0 {
            self.m.attempts.increment(stats.call_attempts);
        }
        for s in stats.setup_secs {
            self.m.setup.record(s);
        }
        let (srv, cli) = core.transaction_counts();
        self.m.server_tsx.set(srv as f64);
        self.m.client_tsx.set(cli as f64);
        if let Some(a) = core.anchor() {
            self.m.calls.set(a.calls() as f64);
        }
        let mut any = false;
        while let Some(r) = core.poll_record() {
            any = true;
            let _ = self.rt.cdr.send(r);
        }
        if let Some(a) = core.anchor()
            && (any || a.calls() > 0)
        {
            self.m.ports.set(a.relay().ports_in_use() as f64);
            self.m.media_calls.set(a.calls() as f64);
        }
    }

    /// Returns `false` on an immediate failure.
    fn transmit(&self, t: Transmit) -> bool {
        count_out(&t.data);
        if self.rt.captures.is_active() {
            let local = capture::local_for(&self.rt.core, &t.to);
            self.rt.captures.offer(&t.data, None, local, t.to.addr);
        }
        match t.to.transport {
            Transport::Udp => {
                let sock = self
                    .udp
                    .iter()
                    .find(|s| s.local_addr().map(|a| a.is_ipv4() == t.to.addr.is_ipv4()).unwrap_or(false))
                    .or(self.udp.first());
                let Some(sock) = sock else { return false };
                let mut sent = sock.try_send_to(&t.data, t.to.addr);
                if let Err(e) = &sent
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::HostUnreachable
                            | std::io::ErrorKind::NetworkUnreachable
                    )
                {
                    // An ICMP error left on the (unconnected) socket by an earlier datagram to
                    // some other peer: not this one's failure. Send it again.
                    sent = sock.try_send_to(&t.data, t.to.addr);
                }
                match sent {
                    Ok(_) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let sock = sock.clone();
                        tokio::task::spawn_local(async move {
                            let _ = sock.send_to(&t.data, t.to.addr).await;
                        });
                        true
                    }
                    Err(e) => {
                        tracing::debug!(to = %t.to.addr, error = %e, "udp send failed");
                        false
                    }
                }
            }
            _ => stream::send(&self.rt, self.idx, t),
        }
    }
}

fn worker_main(
    idx: usize,
    rt: Arc<RtShared>,
    socks: Vec<std::net::UdpSocket>,
    mut rx: mpsc::UnboundedReceiver<Input>,
    mut arx: mpsc::UnboundedReceiver<AdminCmd>,
    seed: u64,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut udp = Vec::new();
        let mut states = Vec::new();
        for s in socks {
            match udp::prepare(s) {
                Ok((sock, state)) => {
                    udp.push(Rc::new(sock));
                    states.push(state);
                }
                Err(e) => tracing::error!(error = %e, "udp socket"),
            }
        }
        let w = Rc::new(Worker {
            idx,
            rt: rt.clone(),
            core: RefCell::new({
                let mut c = Core::new(rt.core.clone(), idx as u32, seed);
                if idx == 0 {
                    c.start_probing(Instant::now());
                }
                c
            }),
            udp: udp.clone(),
            wake: Notify::new(),
            media_wake: Notify::new(),
            m: WorkerMetrics::new(idx),
        });
        for (sock, state) in udp.into_iter().zip(states) {
            tokio::task::spawn_local(udp::error_loop(w.clone(), sock.clone()));
            tokio::task::spawn_local(udp::recv_loop(w.clone(), sock, state));
        }
        let mp = &rt.core.media;
        if mp.anchor_possible() {
            match media::RelayIo::new(mp.bind) {
                Ok(io) => {
                    let mut rc = mp.relay.clone();
                    rc.shard = (idx, rt.workers.len());
                    let ports = Box::new(media::SocketPorts(io.sockets.clone()));
                    w.core.borrow_mut().set_anchor(Some(crate::media::anchor::Anchor::new(rc, mp.advertise, ports)));
                    tokio::task::spawn_local(media::relay_loop(w.clone(), io));
                }
                Err(e) => tracing::error!(error = %e, "media relay poller: media is not anchored on this worker"),
            }
        }
        let wa = w.clone();
        tokio::task::spawn_local(async move {
            while let Some(cmd) = arx.recv().await {
                let now = Instant::now();
                match cmd {
                    AdminCmd::Calls(reply) => {
                        let calls = wa.core.borrow().active_calls(now);
                        let _ = reply.send(calls);
                    }
                    AdminCmd::Hangup(call_id, reply) => {
                        let done = wa.core.borrow_mut().hangup(now, &call_id);
                        wa.flush();
                        let _ = reply.send(done);
                    }
                }
            }
        });
        let wc = w.clone();
        tokio::task::spawn_local(async move {
            while let Some(first) = rx.recv().await {
                let now = Instant::now();
                {
                    let mut core = wc.core.borrow_mut();
                    core.handle_input(now, first);
                    let mut n = 0;
                    while n < 256 {
                        match rx.try_recv() {
                            Ok(i) => core.handle_input(now, i),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                wc.flush();
            }
        });
        loop {
            let deadline = w.core.borrow().poll_timeout();
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {
                            w.core.borrow_mut().handle_timeout(Instant::now());
                            w.flush();
                        }
                        _ = w.wake.notified() => {}
                    }
                }
                None => w.wake.notified().await,
            }
        }
    });
}

/// Counts an outgoing message from its first line (no parse, no allocation).
fn count_out(data: &[u8]) {
    let c = sip_counters();
    if let Some(rest) = data.strip_prefix(b"SIP/2.0 ") {
        let code = rest.iter().take(3).fold(0u16, |a, &d| a * 10 + d.wrapping_sub(b'0') as u16);
        c.responses[1][class_index(code)].increment(1);
    } else {
        let token = data.split(|&b| b == b' ').next().unwrap_or(b"");
        c.requests[1][crate::msg::Method::from_token(token) as usize].increment(1);
    }
}
