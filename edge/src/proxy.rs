//! The stateful proxy core (RFC 3261 section 16), one instance per worker.
//!
//! Sans-IO: [`Core::handle_input`] takes `now` and a message, [`Core::handle_timeout`]
//! fires transaction timers, [`Core::poll_output`] yields what to send and
//! [`Core::poll_timeout`] says when to call again. It owns the server and client
//! transactions of the Call-IDs hashed to its worker, so nothing here takes a lock
//! except the shared location service and nonce-counts (both sharded).

use crate::auth::Verdict;
use crate::core::{Input, Output, Peer, Shared, Transmit, uri_transport};
use crate::location::Binding;
use crate::media::anchor::{Anchor, CallEvent, CallParties, CallRecord, DialogEnds, EndReason, SdpKind, Transfer};
use crate::media::relay::{Forward as MediaForward, Side};
use crate::msg::text::trim;
use crate::msg::via::MAGIC_COOKIE;
use crate::msg::write::{Forward, response};
use crate::msg::{HeaderName, Message, Method, NameAddr, SipUri, Via};
use crate::registrar;
use crate::store::StoreOp;
use crate::transport::Transport;
use crate::tsx::{client, client_inv, server, server_inv};
use bytes::Bytes;
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Methods the edge understands as a proxy and registrar (sent in Allow).
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE";
/// Proxy-Require option tags we support (none beyond the base spec).
const PROXY_SUPPORTED: [&str; 0] = [];
/// Call-ID prefix of the edge's OPTIONS probes (the runtime hands their answers to the
/// worker that probes).
pub const PROBE_CALL_ID: &str = "edge-probe-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Server(u64),
    Client(u64),
    Ctx(u64),
    /// A fail-over branch's INVITE timeout (no provisional response yet).
    Failover(u64),
    /// An OPTIONS probe's deadline.
    Probe(u64),
}

enum SKind {
    Inv(server_inv::ServerInvite),
    Non(server::ServerNonInvite),
}

struct ServerTsx {
    key: String,
    kind: SKind,
    reply_to: Peer,
    request: Message,
    /// The request's top Via with `received`/`rport` filled in (RFC 3581), if changed.
    top_via: Option<String>,
    to_tag: String,
    last: Option<Bytes>,
    ctx: Option<u64>,
    scheduled: Option<Instant>,
}

enum CKind {
    Inv(client_inv::ClientInvite),
    Non(client::ClientNonInvite),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelState {
    None,
    /// Cancel requested before any provisional response: send on the first 1xx (RFC 3261 9.1).
    Pending,
    Sent,
}

struct ClientTsx {
    index_key: String,
    kind: CKind,
    to: Peer,
    request: Bytes,
    /// The forwarded INVITE, parsed, to build CANCEL and ACK (INVITE only).
    sent: Option<Message>,
    ack: Option<Bytes>,
    ctx: Option<u64>,
    cancel: CancelState,
    cancel_reason: Option<&'static str>,
    scheduled: Option<Instant>,
    /// A final response was seen on this branch.
    done: bool,
    /// The INVITE/UPDATE belongs to an anchored dialog.
    media: Option<MediaTsx>,
    /// A provisional response (101-199) came back on this branch.
    provisional: bool,
    /// Added to the CSeq of the request (taken off its responses).
    cseq_shift: u32,
    /// This branch already carries credentials for the trunk (no second retry).
    auth_tried: bool,
}

/// The rewritten body (if any), the media context of the client transactions, and the body
/// for WS/WSS branches when it differs (a call forked to browsers and SIP devices at once).
type MediaEdit = (Option<Vec<u8>>, Option<MediaTsx>, Option<Vec<u8>>);

/// Media context of a forwarded INVITE/UPDATE of an anchored dialog.
#[derive(Clone)]
struct MediaTsx {
    call_id: String,
    /// Who sent the request (the response comes from the other side).
    requester: Side,
    /// The request carried an offer (so an SDP in a response is the answer).
    offer_sent: bool,
    /// The dialog-creating INVITE.
    initial: bool,
}

struct ProxyCtx {
    server: u64,
    branches: Vec<u64>,
    best: Option<Message>,
    final_sent: bool,
    invite: bool,
    timer_c: Option<Instant>,
    scheduled: Option<Instant>,
    /// Anchored call started by this (initial) INVITE: ended if it fails.
    media_call: Option<String>,
    /// Fail-over state when the request went to an upstream with several targets.
    failover: Option<Box<Failover>>,
}

/// What building one forwarded copy of a request needs.
/// Borrowed for the branches of one request; owned (`'static`) when kept for fail-over.
struct Branch<'a> {
    msg: Cow<'a, Message>,
    from: Peer,
    top_via: Option<Cow<'a, str>>,
    popped: usize,
    max_forwards: Option<u32>,
    record_route: bool,
    body: Option<Cow<'a, [u8]>>,
    /// The body for WS/WSS targets when it differs (browsers among SIP devices).
    ws_body: Option<Cow<'a, [u8]>>,
    loop_branch: Cow<'a, str>,
}

impl Branch<'_> {
    /// An owned copy, kept for branches created later.
    fn to_static(&self) -> Branch<'static> {
        Branch {
            msg: Cow::Owned(Message::clone(&self.msg)),
            from: self.from,
            top_via: self.top_via.as_ref().map(|v| Cow::Owned(v.to_string())),
            popped: self.popped,
            max_forwards: self.max_forwards,
            record_route: self.record_route,
            body: self.body.as_ref().map(|b| Cow::Owned(b.to_vec())),
            ws_body: self.ws_body.as_ref().map(|b| Cow::Owned(b.to_vec())),
            loop_branch: Cow::Owned(self.loop_branch.to_string()),
        }
    }
}

/// What a new branch to the next upstream target needs (RFC 3263 4.3 style fail-over).
struct Failover {
    seed: FailoverSeed,
    branch: Branch<'static>,
}

/// Where fail-over stands: the cursor over the route's targets and the trunk limits held.
struct FailoverSeed {
    cursor: crate::resolve::Cursor,
    /// The route's trunks (a cursor entry's group indexes this).
    legs: Vec<Leg>,
    /// The trunk whose call limits this call holds.
    admitted: Option<u16>,
    /// Trunks whose limits refused the call.
    refused: Vec<u16>,
    call_id: String,
    /// Group of the current branch.
    current: u16,
}

/// Where a forwarded request goes.
struct Target {
    request_uri: Option<String>,
    push_routes: Vec<String>,
    dest: Peer,
    /// Flow token for the callee side of a Record-Route (connection or NAT binding).
    out_token: bool,
    /// Headers left out (identity headers towards untrusted trunks, RFC 3325 5).
    drop_headers: &'static [&'static str],
    /// Header lines added (P-Asserted-Identity of an authenticated caller, credentials).
    append: String,
    /// Added to the request's CSeq (a dialog whose INVITE was retried with credentials).
    cseq_shift: u32,
}

impl Target {
    fn to(dest: Peer) -> Target {
        Target { request_uri: None, push_routes: vec![], dest, out_token: false, drop_headers: &[], append: String::new(), cseq_shift: 0 }
    }
}

impl Leg {
    /// A branch to target `t` of this trunk.
    fn target(&self, t: crate::resolve::Target) -> Target {
        Target {
            request_uri: self.request_uri.clone(),
            push_routes: vec![],
            dest: Peer { transport: t.transport, addr: t.addr, flow: None },
            out_token: false,
            drop_headers: self.drop_headers,
            append: self.append.clone(),
            cseq_shift: 0,
        }
    }
}

/// Identity headers (RFC 3323, RFC 3325) removed towards untrusted trunks.
const IDENTITY_HEADERS: &[&str] = &["P-Asserted-Identity", "P-Preferred-Identity", "Privacy"];
/// Identity claims of an untrusted caller, replaced by what the edge asserts itself.
const CLAIMED_IDENTITY: &[&str] = &["P-Asserted-Identity", "P-Preferred-Identity"];

/// One trunk of a call's route, as the branches to it need it.
struct Leg {
    name: String,
    request_uri: Option<String>,
    drop_headers: &'static [&'static str],
    append: String,
    invite_timeout: std::time::Duration,
    block_for: std::time::Duration,
    max_calls: Option<u32>,
    max_cps: Option<f64>,
    /// Digest credentials for the trunk's 401/407.
    credentials: Option<(String, String)>,
}

/// The per-worker proxy/registrar core.
pub struct Core {
    sh: Arc<Shared>,
    worker: u32,
    servers: HashMap<u64, ServerTsx>,
    server_index: HashMap<String, u64>,
    clients: HashMap<u64, ClientTsx>,
    client_index: HashMap<String, u64>,
    ctxs: HashMap<u64, ProxyCtx>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    out: VecDeque<Output>,
    next_id: u64,
    rng: u64,
    next_sweep: Option<Instant>,
    anchor: Option<Anchor>,
    records: VecDeque<CallRecord>,
    store_ops: Vec<StoreOp>,
    events: Vec<CallEvent>,
    stats: CoreStats,
    next_media_sweep: Option<Instant>,
    /// A bridge got work outside the relay loop (an INFO digit): the runtime wakes the loop.
    media_kick: bool,
    /// Trunk holding each call's limit slot (released when the call ends).
    trunk_calls: HashMap<String, String>,
    /// Calls routed, for round-robin selection.
    routed: u64,
    /// OPTIONS probing of trunk targets (worker 0 only).
    prober: crate::resolve::Prober,
    next_probe: Option<Instant>,
    /// Probe transactions: target probed and its trunk's probe settings.
    probes: HashMap<u64, (crate::resolve::Target, crate::trunk::Probe)>,
    /// Dialogs whose INVITE was retried with credentials for a trunk: the caller's From
    /// tag and what is added to the caller's CSeq numbers towards the trunk.
    cseq_shift: HashMap<String, (String, u32)>,
}

/// Counters the runtime turns into metrics (taken with [`Core::take_stats`]).
#[derive(Debug, Default)]
pub struct CoreStats {
    /// Initial INVITEs routed.
    pub call_attempts: u64,
    /// INVITE-to-answer times of answered calls, in seconds.
    pub setup_secs: Vec<f64>,
}

impl Core {
    /// A core for worker number `worker` (used to make branches unique across workers).
    pub fn new(sh: Arc<Shared>, worker: u32, seed: u64) -> Core {
        Core {
            worker,
            servers: HashMap::new(),
            server_index: HashMap::new(),
            clients: HashMap::new(),
            client_index: HashMap::new(),
            ctxs: HashMap::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            next_id: 1,
            rng: seed | 1,
            next_sweep: None,
            anchor: Some(Anchor::detached(sh.media.relay.clone(), sh.media.advertise)),
            records: VecDeque::new(),
            store_ops: Vec::new(),
            events: Vec::new(),
            stats: CoreStats::default(),
            next_media_sweep: None,
            media_kick: false,
            trunk_calls: HashMap::new(),
            routed: 0,
            prober: crate::resolve::Prober::default(),
            next_probe: None,
            probes: HashMap::new(),
            cseq_shift: HashMap::new(),
            sh,
        }
    }

    /// Replaces the media anchor (the runtime gives each worker one with real sockets and
    /// its share of the port range).
    pub fn set_anchor(&mut self, anchor: Option<Anchor>) {
        self.anchor = anchor;
    }

    pub fn anchor(&self) -> Option<&Anchor> {
        self.anchor.as_ref()
    }

    /// Next datagram of a WebRTC media bridge (after `handle_media` or the bridge timer).
    pub fn poll_media_output(&mut self) -> Option<crate::media::relay::Datagram> {
        self.anchor.as_mut()?.poll_output()
    }

    /// Whether a bridge got work outside the relay loop since the last call (the relay
    /// loop should send its output and look at its timers again).
    pub fn take_media_kick(&mut self) -> bool {
        std::mem::take(&mut self.media_kick)
    }

    /// When the WebRTC media bridges' timers are next due.
    pub fn media_bridge_timeout(&self) -> Option<Instant> {
        self.anchor.as_ref()?.poll_bridge_timeout()
    }

    pub fn handle_media_bridge_timeout(&mut self, now: Instant) {
        if let Some(a) = self.anchor.as_mut() {
            a.handle_bridge_timeout(now);
        }
    }

    /// A datagram on a relay port (the media hot path): where to send it, if anywhere.
    #[inline]
    pub fn handle_media(&mut self, now: Instant, port: u16, src: SocketAddr, pkt: &mut Vec<u8>) -> Option<MediaForward> {
        self.anchor.as_mut()?.handle_packet(now, port, src, pkt)
    }

    /// Next finished call record (media figures for the CDR, metrics and log).
    pub fn poll_record(&mut self) -> Option<CallRecord> {
        self.records.pop_front()
    }

    /// Counters since the last call.
    pub fn take_stats(&mut self) -> CoreStats {
        std::mem::take(&mut self.stats)
    }

    /// Call events (ringing, answered, ended) for subscribers.
    pub fn take_events(&mut self) -> Vec<CallEvent> {
        std::mem::take(&mut self.events)
    }

    /// Writes to persist: the runtime commits them before it sends the transmits queued
    /// so far (a REGISTER's 200 goes out only once its bindings are stored).
    pub fn take_store_ops(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.store_ops)
    }

    fn persist_aor(&mut self, now: Instant, aor: &str) {
        let bindings = self.sh.location.lookup(now, aor);
        self.store_ops.push(StoreOp::Bindings { aor: aor.to_string(), bindings });
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.sh
    }

    /// Live transactions (server, client), for tests and metrics.
    pub fn transaction_counts(&self) -> (usize, usize) {
        (self.servers.len(), self.clients.len())
    }

    /// Next output to hand to the runtime.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Core::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((at, _))| *at);
        [t, self.next_sweep, self.next_media_sweep, self.next_probe].into_iter().flatten().min()
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*: tags and branches need uniqueness, not secrecy.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn send(&mut self, to: Peer, data: Bytes, tsx: Option<u64>) {
        self.out.push_back(Output::Transmit(Transmit { to, data, tsx }));
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + std::time::Duration::from_secs(5));
        }
        match input {
            Input::Message { from, msg } => {
                let span = tracing::debug_span!("sip", call_id = msg.call_id().unwrap_or("-"));
                let _g = span.enter();
                if msg.is_request() {
                    self.handle_request(now, from, msg);
                } else {
                    self.handle_response(now, msg);
                }
            }
            Input::FlowClosed(flow) => {
                let aors = self.sh.location.remove_flow(flow);
                if !aors.is_empty() {
                    tracing::info!(flow = flow.0, aors = aors.len(), "connection closed: bindings dropped");
                }
                for aor in aors {
                    self.persist_aor(now, &aor);
                }
            }
            Input::SendFailed { tsx } => self.client_transport_error(now, tsx),
            Input::Unreachable { to } => self.udp_unreachable(now, to),
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|s| s <= now) {
            self.sh.location.sweep(now);
            self.sh.auth.sweep(now);
            self.next_sweep = Some(now + std::time::Duration::from_secs(5));
        }
        if self.next_media_sweep.is_some_and(|s| s <= now) {
            self.media_sweep(now);
        }
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match key {
                TimerKey::Server(id) => self.server_timeout(now, id, at),
                TimerKey::Client(id) => self.client_timeout(now, id, at),
                TimerKey::Ctx(id) => self.ctx_timeout(now, id, at),
                TimerKey::Failover(id) => self.failover_timeout(now, id),
                TimerKey::Probe(id) => self.probe_timeout(now, id),
            }
        }
        if self.next_probe.is_some_and(|t| t <= now) {
            self.send_probes(now);
        }
    }

    // ---------------------------------------------------------------- probes

    /// Starts OPTIONS probing of trunk targets (the runtime calls this on one worker).
    pub fn start_probing(&mut self, now: Instant) {
        self.next_probe = Some(now);
    }

    /// Sends the OPTIONS probes that are due (RFC 3261 11) to every target of every trunk
    /// with probing on.
    fn send_probes(&mut self, now: Instant) {
        let mut set = Vec::new();
        let mut cfg = HashMap::new();
        for up in self.sh.upstream_list().iter() {
            let Some(p) = up.probe else { continue };
            for r in self.sh.records_of(up, now) {
                set.push((r.target, p.interval));
                cfg.insert(r.target, p);
            }
        }
        for t in self.prober.poll_due(now, &set) {
            let Some(p) = cfg.get(&t).copied() else { continue };
            let Some(local) = self.sh.local_addr(t.transport) else { continue };
            let r = self.rand();
            let branch = format!("{MAGIC_COOKIE}-probe{r:x}{:x}", self.worker);
            let host = match t.addr {
                SocketAddr::V4(a) => a.to_string(),
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            };
            let tp = if t.transport == Transport::Udp { String::new() } else { format!(";transport={}", t.transport.uri_param()) };
            let data = format!(
                "OPTIONS sip:{host}{tp} SIP/2.0\r\nVia: SIP/2.0/{} {local};branch={branch}\r\nMax-Forwards: 70\r\n\
                 From: <sip:edge@{dom}>;tag={r:x}\r\nTo: <sip:{host}{tp}>\r\nCall-ID: {PROBE_CALL_ID}{r:x}@{dom}\r\nCSeq: 1 OPTIONS\r\n\
                 Accept: application/sdp\r\nContent-Length: 0\r\n\r\n",
                t.transport.via_token(),
                dom = self.sh.domain,
            );
            let peer = Peer { transport: t.transport, addr: t.addr, flow: None };
            let cid = self.start_client(now, format!("{branch}|OPTIONS"), false, peer, Bytes::from(data), None, None, None);
            self.probes.insert(cid, (t, p));
            self.timers.push(Reverse((now + p.timeout, TimerKey::Probe(cid))));
        }
        let next = self.prober.poll_timeout().unwrap_or(now + std::time::Duration::from_secs(1));
        // Looked at again at least every second: trunks and DNS records change.
        self.next_probe = Some(next.min(now + std::time::Duration::from_secs(1)));
    }

    /// A probe got no final response in time: failed (its transaction is dropped).
    fn probe_timeout(&mut self, now: Instant, cid: u64) {
        if self.probes.contains_key(&cid) {
            self.probe_result(now, cid, false);
            if let Some(ct) = self.clients.remove(&cid) {
                self.client_index.remove(&ct.index_key);
            }
        }
    }

    /// A probe ended: any final response but 408/503 means the target is alive.
    fn probe_result(&mut self, now: Instant, cid: u64, ok: bool) {
        let Some((t, p)) = self.probes.remove(&cid) else { return };
        let rtt = self.prober.handle_result(t, now);
        tracing::debug!(target = %t.addr, ok, ?rtt, "probe result");
        let mut h = self.sh.health.lock().unwrap_or_else(|e| e.into_inner());
        match h.handle_probe_with(t, now, ok, if ok { rtt } else { None }, p.down_after, p.up_after) {
            Some(crate::resolve::Change::Down(t)) => {
                tracing::warn!(target = %t.addr, transport = t.transport.uri_param(), "upstream target down (OPTIONS probes failed)")
            }
            Some(crate::resolve::Change::Up(t)) => {
                tracing::info!(target = %t.addr, transport = t.transport.uri_param(), "upstream target up again (OPTIONS probes answered)")
            }
            None => {}
        }
    }

    // ---------------------------------------------------------------- requests

    fn reply_stateless(&mut self, to: Peer, req: &Message, code: u16, reason: &str, top_via: Option<&str>, extra: &str) {
        let tag = format!("{:x}", self.rand());
        let data = response(req, code, reason, top_via, Some(&tag), extra, b"");
        self.send(to, data, None);
    }

    /// Computes the top Via with `received`/`rport` (RFC 3261 18.2.1, RFC 3581 4).
    fn fixed_top_via(msg: &Message, from: &Peer) -> Option<String> {
        let raw = msg.top_via_str()?;
        let via = Via::parse(raw)?;
        let ip = from.addr.ip();
        let host = via.host.trim_start_matches('[').trim_end_matches(']');
        let same_host = host.parse::<std::net::IpAddr>().ok() == Some(ip);
        let rport = via.rport();
        if same_host && !matches!(rport, Some(None)) {
            return None;
        }
        let mut s = String::with_capacity(raw.len() + 32);
        // Rebuild the parameters: drop empty rport / old received, then append ours.
        let head_end = raw.len() - via.params.len();
        s.push_str(trim(&raw[..head_end]));
        for (k, v) in crate::msg::text::params(via.params) {
            if k.eq_ignore_ascii_case("received") || (k.eq_ignore_ascii_case("rport") && v.is_none()) {
                continue;
            }
            s.push(';');
            s.push_str(k);
            if let Some(v) = v {
                s.push('=');
                s.push_str(v);
            }
        }
        let _ = write!(s, ";received={ip}");
        if matches!(rport, Some(None)) {
            let _ = write!(s, ";rport={}", from.addr.port());
        }
        Some(s)
    }

    /// Where responses to a request go: the connection it came on, or for UDP the source
    /// address (RFC 3581; also right for RFC 3261 18.2.2 when Via matches the source).
    fn reply_path(msg: &Message, from: &Peer) -> Peer {
        if from.transport.reliable() {
            return *from;
        }
        let port = match msg.top_via() {
            Some(v) if v.rport().is_some() => from.addr.port(),
            Some(v) => v.port.unwrap_or(from.addr.port()),
            None => from.addr.port(),
        };
        let via_port_ok = msg.top_via().and_then(|v| v.port).is_none_or(|p| p == from.addr.port());
        Peer {
            transport: Transport::Udp,
            addr: SocketAddr::new(from.addr.ip(), if via_port_ok { from.addr.port() } else { port }),
            flow: None,
        }
    }

    fn handle_request(&mut self, now: Instant, from: Peer, msg: Message) {
        let method = msg.method();
        if let Err(e) = msg.validate() {
            if method != Method::Ack {
                tracing::debug!(error = %e, "malformed request");
                let reason = e.to_string();
                self.reply_stateless(from, &msg, 400, &reason, None, "");
            }
            return;
        }
        let top_via = Self::fixed_top_via(&msg, &from);
        let reply_to = Self::reply_path(&msg, &from);
        let Some(key) = crate::tsx::server_key(&msg) else {
            self.reply_stateless(reply_to, &msg, 400, "Bad Header: Via", top_via.as_deref(), "");
            return;
        };
        match method {
            Method::Ack => {
                if let Some(&id) = self.server_index.get(&key) {
                    if let Some(st) = self.servers.get_mut(&id)
                        && let SKind::Inv(t) = &mut st.kind
                    {
                        t.handle_ack(now);
                    }
                    self.reschedule_server(id);
                    return;
                }
                // ACK for a 2xx: a new transaction, forwarded statelessly (RFC 3261 16.7 / 13.2.2.4).
                self.route_request(now, from, msg, top_via, None);
                return;
            }
            Method::Cancel => {
                self.handle_cancel(now, from, reply_to, msg, top_via, &key);
                return;
            }
            _ => {}
        }
        if let Some(&id) = self.server_index.get(&key) {
            // Retransmission (RFC 3261 17.2.1 / 17.2.2).
            let mut resend = None;
            if let Some(st) = self.servers.get_mut(&id) {
                let retx = match &mut st.kind {
                    SKind::Inv(t) => t.handle_request_retransmit() == server_inv::Action::Retransmit,
                    SKind::Non(t) => t.handle_request_retransmit() == server::Action::Retransmit,
                };
                if retx {
                    resend = st.last.clone().map(|d| (st.reply_to, d));
                }
            }
            if let Some((to, d)) = resend {
                self.send(to, d, None);
            }
            return;
        }
        let id = self.id();
        let reliable = from.transport.reliable();
        let kind = if method == Method::Invite {
            SKind::Inv(server_inv::ServerInvite::new(reliable, self.sh.timers))
        } else {
            SKind::Non(server::ServerNonInvite::new(reliable, self.sh.timers))
        };
        let to_tag = format!("{:x}", self.rand());
        self.servers.insert(
            id,
            ServerTsx {
                key: key.clone(),
                kind,
                reply_to,
                request: msg.clone(),
                top_via: top_via.clone(),
                to_tag,
                last: None,
                ctx: None,
                scheduled: None,
            },
        );
        self.server_index.insert(key, id);
        if method == Method::Invite {
            // A stateful proxy answers 100 at once (RFC 3261 16.2 / 17.2.1).
            self.server_reply(now, id, 100, "Trying", "");
        }
        self.route_request(now, from, msg, top_via, Some(id));
    }

    /// Sends a locally generated response through server transaction `id`.
    fn server_reply(&mut self, now: Instant, id: u64, code: u16, reason: &str, extra: &str) {
        let Some(st) = self.servers.get_mut(&id) else { return };
        let data = response(&st.request, code, reason, st.top_via.as_deref(), Some(&st.to_tag), extra, b"");
        self.server_send(now, id, code, data);
    }

    /// Sends response bytes through server transaction `id` if its state allows.
    fn server_send(&mut self, now: Instant, id: u64, code: u16, data: Bytes) {
        let Some(st) = self.servers.get_mut(&id) else { return };
        let ok = match &mut st.kind {
            SKind::Inv(t) => t.send_response(now, code),
            SKind::Non(t) => t.send_response(now, code),
        };
        if !ok {
            return;
        }
        if code >= 200 || st.last.is_none() || code > 100 {
            st.last = Some(data.clone());
        }
        let to = st.reply_to;
        self.send(to, data, None);
        self.reschedule_server(id);
    }

    fn handle_cancel(&mut self, now: Instant, _from: Peer, reply_to: Peer, msg: Message, top_via: Option<String>, key: &str) {
        // The INVITE server transaction has the same branch (RFC 3261 9.2).
        let inv_key = match key.rsplit_once('|') {
            Some((k, _)) => format!("{k}|INVITE"),
            None => String::new(),
        };
        let Some(&inv_id) = self.server_index.get(&inv_key) else {
            self.reply_stateless(reply_to, &msg, 481, "Call/Transaction Does Not Exist", top_via.as_deref(), "");
            return;
        };
        // Answer the CANCEL itself through its own non-INVITE transaction.
        let cid = self.id();
        let kind = SKind::Non(server::ServerNonInvite::new(reply_to.transport.reliable(), self.sh.timers));
        let to_tag = self.servers.get(&inv_id).map(|s| s.to_tag.clone()).unwrap_or_default();
        self.servers.insert(
            cid,
            ServerTsx { key: key.to_string(), kind, reply_to, request: msg, top_via, to_tag, last: None, ctx: None, scheduled: None },
        );
        self.server_index.insert(key.to_string(), cid);
        self.server_reply(now, cid, 200, "OK", "");
        let ctx = self.servers.get(&inv_id).and_then(|s| s.ctx);
        match ctx {
            Some(ctx) => {
                self.cancel_branches(now, ctx, None, None);
                self.maybe_finish(now, ctx);
            }
            None => self.server_reply(now, inv_id, 487, "Request Terminated", ""),
        }
    }

    /// Computes the loop-detection hash of a request (RFC 3261 16.6 step 8).
    fn loop_hash(msg: &Message) -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |s: &str| {
            for b in s.bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
            h ^= 0xff;
        };
        eat(msg.request_uri().unwrap_or(""));
        eat(msg.from_hdr().and_then(|f| f.tag()).unwrap_or(""));
        eat(msg.to_hdr().and_then(|f| f.tag()).unwrap_or(""));
        eat(msg.call_id().unwrap_or(""));
        eat(&msg.cseq().map(|c| c.seq).unwrap_or(0).to_string());
        for r in msg.values(HeaderName::Route) {
            eat(r);
        }
        for r in msg.values(HeaderName::ProxyRequire) {
            eat(r);
        }
        (h ^ (h >> 32)) as u32
    }

    /// Answers a request we routed nowhere: statefully when it has a server transaction.
    #[allow(clippy::too_many_arguments)]
    fn reject(
        &mut self,
        now: Instant,
        sid: Option<u64>,
        from: Peer,
        msg: &Message,
        top_via: Option<&str>,
        code: u16,
        reason: &str,
        extra: &str,
    ) {
        match sid {
            Some(id) => self.server_reply(now, id, code, reason, extra),
            None => {
                if msg.method() != Method::Ack {
                    self.reply_stateless(Self::reply_path(msg, &from), msg, code, reason, top_via, extra)
                }
            }
        }
    }

    /// Request processing after the transaction layer (RFC 3261 16.3 to 16.6).
    fn route_request(&mut self, now: Instant, from: Peer, msg: Message, top_via: Option<String>, sid: Option<u64>) {
        let method = msg.method();
        let tv = top_via.as_deref();
        // 16.3 step 3: Max-Forwards.
        let mf = match msg.max_forwards() {
            Some(Ok(n)) => Some(n),
            _ => None,
        };
        let ruri_text = msg.request_uri().unwrap_or("").to_string();
        let ruri = SipUri::parse(&ruri_text);
        let to_us = match &ruri {
            Ok(u) => u.user.is_none() && self.sh.is_local_uri(u) && msg.header(HeaderName::Route).is_none(),
            Err(_) => false,
        };
        if mf == Some(0) && !(to_us && method == Method::Options) {
            self.reject(now, sid, from, &msg, tv, 483, "Too Many Hops", "");
            return;
        }
        // 16.3 step 4: loop detection.
        let lh = format!("{MAGIC_COOKIE}{:08x}", Self::loop_hash(&msg));
        for v in msg.values(HeaderName::Via).skip(1).chain(msg.values(HeaderName::Via).take(1)) {
            if let Some(via) = Via::parse(v)
                && self.sh.is_own_address(via.host, via.port)
                && via.branch().is_some_and(|b| b.starts_with(&lh))
            {
                self.reject(now, sid, from, &msg, tv, 482, "Loop Detected", "");
                return;
            }
        }
        // 16.3 step 5: Proxy-Require.
        let unsupported: Vec<&str> =
            msg.values(HeaderName::ProxyRequire).filter(|o| !PROXY_SUPPORTED.iter().any(|s: &&str| s.eq_ignore_ascii_case(o))).collect();
        if !unsupported.is_empty() {
            let extra = format!("Unsupported: {}\r\n", unsupported.join(", "));
            self.reject(now, sid, from, &msg, tv, 420, "Bad Extension", &extra);
            return;
        }
        let Ok(ruri) = ruri else {
            self.reject(now, sid, from, &msg, tv, 416, "Unsupported URI Scheme", "");
            return;
        };
        // 16.4: pop our own Route values; the last one popped may carry a flow token.
        let routes: Vec<&str> = msg.values(HeaderName::Route).collect();
        let mut popped = 0;
        let mut token_peer = None;
        for r in &routes {
            let Some(na) = NameAddr::parse(r) else { break };
            let Ok(u) = SipUri::parse(na.uri) else { break };
            if !self.sh.is_own_address(u.host, u.port) {
                break;
            }
            popped += 1;
            token_peer = u.user.and_then(|t| self.sh.parse_flow_token(t));
        }
        let remaining = &routes[popped..];
        let in_dialog = msg.to_hdr().is_some_and(|t| t.tag().is_some());

        // Requests for the edge itself.
        if remaining.is_empty() && token_peer.is_none() && ruri.user.is_none() && self.sh.is_local_uri(&ruri) {
            match method {
                Method::Register => {
                    let r = registrar::handle_register(&self.sh, now, &msg, from);
                    if let Some(aor) = &r.aor {
                        self.persist_aor(now, aor);
                    }
                    self.reject(now, sid, from, &msg, tv, r.code, &r.reason, &r.headers);
                }
                Method::Options => {
                    let extra = format!("Allow: {ALLOW}\r\nAccept: application/sdp\r\nSupported: path, outbound\r\n");
                    self.reject(now, sid, from, &msg, tv, 200, "OK", &extra);
                }
                Method::Ack => {}
                Method::Extension => self.reject(now, sid, from, &msg, tv, 501, "Not Implemented", &format!("Allow: {ALLOW}\r\n")),
                _ => self.reject(now, sid, from, &msg, tv, 405, "Method Not Allowed", &format!("Allow: {ALLOW}\r\n")),
            }
            return;
        }

        // Authenticate callers that claim to be local users (out of dialog).
        let mut asserted: Option<String> = None;
        if !in_dialog && self.sh.challenge_local_callers && !matches!(method, Method::Ack | Method::Cancel | Method::Register) {
            let local_from = msg.from_hdr().and_then(|f| {
                let u = SipUri::parse(f.uri).ok()?;
                let user = u.user?;
                (self.sh.is_local_uri(&u) && self.sh.auth.user(user).is_some()).then(|| user.to_string())
            });
            if let Some(user) = local_from {
                match self.sh.auth.verify(now, msg.method_str(), msg.header_lines(HeaderName::ProxyAuthorization)) {
                    Verdict::Ok(u) if u == user => asserted = Some(user),
                    Verdict::Ok(_) => {
                        self.reject(now, sid, from, &msg, tv, 403, "Forbidden (From does not match credentials)", "");
                        return;
                    }
                    Verdict::Fail(why) if why != "nonce-count replayed" => {
                        self.reject(now, sid, from, &msg, tv, 403, &format!("Forbidden ({why})"), "");
                        return;
                    }
                    v => {
                        let mut extra = String::new();
                        for c in self.sh.auth.challenges_for(now, v == Verdict::Stale, from.transport.websocket()) {
                            let _ = write!(extra, "Proxy-Authenticate: {c}\r\n");
                        }
                        self.reject(now, sid, from, &msg, tv, 407, "Proxy Authentication Required", &extra);
                        return;
                    }
                }
            }
        }

        // Decide the targets (16.5).
        let mut targets: Vec<Target> = Vec::new();
        let mut failover_seed: Option<FailoverSeed> = None;
        if let Some(first) = remaining.first() {
            // Loose routing: next hop is the next Route.
            match self.dest_for(now, NameAddr::parse(first).map(|n| n.uri).unwrap_or("")) {
                Some(dest) => targets.push(Target::to(dest)),
                None => {
                    self.reject(now, sid, from, &msg, tv, 502, "Bad Gateway (unresolvable Route)", "");
                    return;
                }
            }
        } else if let Some(peer) = token_peer {
            targets.push(Target::to(peer));
        } else if self.sh.is_local_uri(&ruri) && self.sh.auth.user(&crate::msg::uri::percent_decode(ruri.user.unwrap_or(""))).is_some() {
            let user = crate::msg::uri::percent_decode(ruri.user.unwrap_or(""));
            if method == Method::Invite && !in_dialog && self.sh.reject_anonymous.contains(user.as_ref()) && is_anonymous(&msg) {
                self.reject(now, sid, from, &msg, tv, 433, "Anonymity Disallowed", "");
                return;
            }
            let aor = registrar::aor_key(&self.sh, &user);
            let bindings = self.sh.location.lookup(now, &aor);
            if bindings.is_empty() {
                self.reject(now, sid, from, &msg, tv, 480, "Temporarily Unavailable", "");
                return;
            }
            for b in bindings {
                targets.push(self.binding_target(now, &b));
            }
        } else if popped > 0 && in_dialog {
            // A dialog we record-routed: the Request-URI is the remote target.
            match self.dest_for(now, &ruri_text) {
                Some(dest) => targets.push(Target::to(dest)),
                None => {
                    self.reject(now, sid, from, &msg, tv, 502, "Bad Gateway (unresolvable Request-URI)", "");
                    return;
                }
            }
        } else {
            // The dial plan: a number routed out (or an emergency call), or another domain.
            let local = self.sh.is_local_uri(&ruri);
            let user = ruri.user.map(crate::msg::uri::percent_decode);
            let sh = self.sh.clone();
            let plan = {
                let mut rnd = || self.rand() as u32;
                sh.route_call(user.as_deref(), ruri.host, local, &mut rnd)
            };
            let plan = match plan {
                Some(p) if !p.trunks.is_empty() => p,
                Some(p) if p.route.is_some() => {
                    let why = format!("Service Unavailable (no trunk of route {} exists)", p.route.unwrap_or_default());
                    self.reject(now, sid, from, &msg, tv, 503, &why, "");
                    return;
                }
                _ if local => {
                    self.reject(now, sid, from, &msg, tv, 404, "Not Found", "");
                    return;
                }
                _ => {
                    self.reject(now, sid, from, &msg, tv, 403, "Forbidden (relaying denied)", "");
                    return;
                }
            };
            if plan.emergency {
                tracing::info!(number = user.as_deref().unwrap_or(""), route = plan.route.as_deref().unwrap_or("-"), "emergency call");
            }
            let initial_invite = method == Method::Invite && !in_dialog && sid.is_some();
            let trusted_source = self.sh.upstream_at(from.addr, now).is_some_and(|u| u.trusted);
            match self.trunk_start(now, &msg, &plan, initial_invite, trusted_source, asserted.as_deref()) {
                Ok((t, f)) => {
                    targets.push(t);
                    failover_seed = f;
                }
                Err((code, why)) => {
                    let extra = if code == 503 { "Retry-After: 5\r\n" } else { "" };
                    self.reject(now, sid, from, &msg, tv, code, &why, extra);
                    return;
                }
            }
        }

        // A dialog whose INVITE we retried with credentials: the caller's requests keep
        // going out with the shifted CSeq.
        if let Some((tag, shift)) = msg.call_id().and_then(|c| self.cseq_shift.get(c))
            && msg.from_hdr().and_then(|f| f.tag()) == Some(tag.as_str())
        {
            for t in &mut targets {
                t.cseq_shift = *shift;
            }
        }

        // Media anchoring (issue #4): rewrite the SDP of anchored dialogs.
        let (body, media, ws_body) = match self.media_request(now, &msg, &from, &targets, in_dialog, sid.is_some()) {
            Ok(x) => x,
            Err((code, reason, warning)) => {
                self.reject(now, sid, from, &msg, tv, code, reason, &warning);
                return;
            }
        };
        let body = body.as_deref();

        let new_mf = Some(mf.map(|m| m.saturating_sub(1)).unwrap_or(70));
        if method == Method::Ack || sid.is_none() {
            // Stateless forward (ACK for 2xx).
            if let Some(t) = targets.into_iter().next() {
                let branch = format!("{lh}.{:x}", self.rand());
                if let Some(data) = self.build_forward(&msg, &from, &t, tv, &branch, popped, new_mf, false, body) {
                    self.send(t.dest, data, None);
                }
            }
            return;
        }
        let Some(sid) = sid else { return };
        let ctx_id = self.id();
        let invite = method == Method::Invite;
        let record_route = !in_dialog && matches!(method, Method::Invite | Method::Subscribe | Method::Refer | Method::Notify);
        let media_call = media.as_ref().filter(|m| m.initial).map(|m| m.call_id.clone());
        let request_branch = Branch {
            msg: Cow::Borrowed(&msg),
            from,
            top_via: tv.map(Cow::Borrowed),
            popped,
            max_forwards: new_mf,
            record_route,
            body: body.map(Cow::Borrowed),
            ws_body: ws_body.as_deref().map(Cow::Borrowed),
            loop_branch: Cow::Borrowed(&lh),
        };
        let mut ctx = ProxyCtx {
            server: sid,
            branches: vec![],
            best: None,
            final_sent: false,
            invite,
            timer_c: None,
            scheduled: None,
            media_call,
            failover: None,
        };
        if let Some(f) = failover_seed {
            ctx.failover = Some(Box::new(Failover { seed: f, branch: request_branch.to_static() }));
        }
        if invite {
            ctx.timer_c = Some(now + self.sh.timer_c);
        }
        self.ctxs.insert(ctx_id, ctx);
        if let Some(st) = self.servers.get_mut(&sid) {
            st.ctx = Some(ctx_id);
        }
        for t in targets {
            self.new_branch(now, ctx_id, &request_branch, &t, media.clone());
        }
        let no_branch = self.ctxs.get(&ctx_id).is_none_or(|c| c.branches.is_empty());
        if no_branch {
            self.server_reply(now, sid, 503, "Service Unavailable (no usable transport)", "");
            if let Some(m) = media.filter(|m| m.initial) {
                self.end_call(now, &m.call_id, EndReason::Failed(503));
            }
            self.ctxs.remove(&ctx_id);
            if let Some(st) = self.servers.get_mut(&sid) {
                st.ctx = None;
            }
            return;
        }
        self.reschedule_ctx(ctx_id);
    }

    /// Creates, sends and schedules one client transaction of context `ctx_id` to `t`.
    fn new_branch(&mut self, now: Instant, ctx_id: u64, b: &Branch<'_>, t: &Target, media: Option<MediaTsx>) -> Option<u64> {
        let msg = &*b.msg;
        let invite = msg.method() == Method::Invite;
        let r = self.rand();
        let branch = format!("{}.{:x}{r:x}", b.loop_branch, self.worker);
        let data = self.build_forward(
            msg,
            &b.from,
            t,
            b.top_via.as_deref(),
            &branch,
            b.popped,
            b.max_forwards,
            b.record_route,
            match &b.ws_body {
                Some(w) if t.dest.transport.websocket() => Some(w.as_ref()),
                _ => b.body.as_deref(),
            },
        )?;
        let sent = if invite { Message::parse(data.clone()).ok() } else { None };
        let cid = self.start_client(now, format!("{branch}|{}", msg.method_str()), invite, t.dest, data, sent, Some(ctx_id), media);
        if let Some(c) = self.clients.get_mut(&cid) {
            c.cseq_shift = t.cseq_shift;
        }
        if let Some(c) = self.ctxs.get_mut(&ctx_id) {
            c.branches.push(cid);
        }
        self.schedule_failover(now, ctx_id, cid);
        Some(cid)
    }

    /// Creates a client transaction (`sent`: the parsed INVITE, to build its CANCEL and
    /// ACK), sends its request and schedules its timers.
    #[allow(clippy::too_many_arguments)]
    fn start_client(
        &mut self,
        now: Instant,
        index_key: String,
        invite: bool,
        to: Peer,
        data: Bytes,
        sent: Option<Message>,
        ctx: Option<u64>,
        media: Option<MediaTsx>,
    ) -> u64 {
        let id = self.id();
        let reliable = to.transport.reliable();
        let kind = if invite {
            CKind::Inv(client_inv::ClientInvite::new(now, reliable, self.sh.timers))
        } else {
            CKind::Non(client::ClientNonInvite::new(now, reliable, self.sh.timers))
        };
        self.clients.insert(
            id,
            ClientTsx {
                index_key: index_key.clone(),
                kind,
                to,
                request: data.clone(),
                sent,
                ack: None,
                ctx,
                cancel: CancelState::None,
                cancel_reason: None,
                scheduled: None,
                done: false,
                media,
                provisional: false,
                cseq_shift: 0,
                auth_tried: false,
            },
        );
        self.client_index.insert(index_key, id);
        self.send(to, data, Some(id));
        self.reschedule_client(id);
        id
    }

    /// Arms the INVITE timeout of a fail-over branch.
    fn schedule_failover(&mut self, now: Instant, ctx_id: u64, cid: u64) {
        if let Some(f) = self.ctxs.get(&ctx_id).and_then(|c| c.failover.as_ref()) {
            let at = now + f.seed.legs.get(f.seed.current as usize).map_or(std::time::Duration::from_secs(2), |l| l.invite_timeout);
            self.timers.push(Reverse((at, TimerKey::Failover(cid))));
        }
    }

    /// A fail-over branch gave no provisional response in time: abandon it (no CANCEL
    /// before a 1xx, RFC 3261 9.1) and continue with the next target.
    fn failover_timeout(&mut self, now: Instant, cid: u64) {
        let Some(ct) = self.clients.get(&cid) else { return };
        if ct.done || ct.provisional {
            return;
        }
        if self.try_failover(now, cid, None)
            && let Some(ct) = self.clients.remove(&cid)
        {
            self.client_index.remove(&ct.index_key);
        }
    }

    /// The targets of a call routed to trunks (dial plan or preferred upstream): the first
    /// one to send to, and (for an initial INVITE) the fail-over state for the others.
    /// Only cached DNS records are used: no lookup happens on this path.
    fn trunk_start(
        &mut self,
        now: Instant,
        msg: &Message,
        plan: &crate::core::Plan,
        initial_invite: bool,
        trusted_source: bool,
        asserted: Option<&str>,
    ) -> Result<(Target, Option<FailoverSeed>), (u16, String)> {
        let call_id = msg.call_id().unwrap_or("").to_string();
        let legs: Vec<Leg> = plan
            .trunks
            .iter()
            .map(|t| {
                let request_uri = plan
                    .rewrite
                    .then(|| format!("sip:{}@{}", crate::dialplan::encode_user(plan.user.as_deref().unwrap_or("")), t.ruri_host()));
                let (drop_headers, append) = if !t.trusted {
                    (IDENTITY_HEADERS, String::new())
                } else if trusted_source {
                    (&[][..], String::new())
                } else {
                    let pai = asserted.map(|u| format!("P-Asserted-Identity: <sip:{u}@{}>\r\n", self.sh.domain)).unwrap_or_default();
                    (CLAIMED_IDENTITY, pai)
                };
                Leg {
                    name: t.name.clone(),
                    request_uri,
                    drop_headers,
                    append,
                    invite_timeout: t.invite_timeout,
                    block_for: t.block_for,
                    max_calls: t.max_calls,
                    max_cps: t.max_cps,
                    credentials: t.credentials.clone(),
                }
            })
            .collect();
        self.routed += 1;
        let counter = self.routed;
        let mut entries = Vec::new();
        {
            let sh = self.sh.clone();
            let health = sh.health.lock().unwrap_or_else(|e| e.into_inner());
            for (g, t) in plan.trunks.iter().enumerate() {
                let recs = sh.records_of(t, now);
                let mut rnd = || self.rand() as u32;
                for tg in crate::resolve::plan(&recs, t.selection, counter, &call_id, &health, &mut rnd) {
                    entries.push((tg, g as u16));
                }
            }
        }
        if entries.is_empty() {
            return Err((503, "Service Unavailable (upstream does not resolve)".into()));
        }
        let mut seed =
            FailoverSeed { cursor: crate::resolve::Cursor::new(entries), legs, admitted: None, refused: vec![], call_id, current: 0 };
        let (tg, g) = self.next_trunk_target(now, &mut seed, initial_invite)?;
        seed.current = g;
        let t = seed.legs[g as usize].target(tg);
        Ok((t, initial_invite.then_some(seed)))
    }

    /// The next usable target whose trunk takes the call (limits checked once per trunk
    /// for an initial INVITE; the slot of the trunk left behind is given back).
    fn next_trunk_target(
        &mut self,
        now: Instant,
        f: &mut FailoverSeed,
        initial: bool,
    ) -> Result<(crate::resolve::Target, u16), (u16, String)> {
        let health = self.sh.health.lock().unwrap_or_else(|e| e.into_inner());
        let mut limited: Option<(String, crate::trunk::Refused)> = None;
        loop {
            let Some((tg, g)) = f.cursor.next(&health, now) else {
                return Err(match limited {
                    Some((n, crate::trunk::Refused::MaxCalls)) => (503, format!("Service Unavailable (trunk {n}: max_calls reached)")),
                    Some((n, crate::trunk::Refused::MaxCps)) => (503, format!("Service Unavailable (trunk {n}: max_cps reached)")),
                    None => (503, "Service Unavailable (every upstream target is down)".into()),
                });
            };
            if !initial || f.admitted == Some(g) {
                return Ok((tg, g));
            }
            if f.refused.contains(&g) {
                continue;
            }
            let leg = &f.legs[g as usize];
            match self.sh.loads.admit(&leg.name, now, leg.max_calls, leg.max_cps) {
                Ok(()) => {
                    if let Some(old) = f.admitted.replace(g) {
                        self.sh.loads.release(&f.legs[old as usize].name);
                    }
                    self.trunk_calls.insert(f.call_id.clone(), leg.name.clone());
                    return Ok((tg, g));
                }
                Err(why) => {
                    tracing::debug!(trunk = leg.name, ?why, "trunk limit: trying the next trunk");
                    f.refused.push(g);
                    limited = Some((leg.name.clone(), why));
                }
            }
        }
    }

    /// A trunk with credentials challenged the INVITE on branch `cid` (RFC 3261 22.2/22.3):
    /// send it again with Authorization / Proxy-Authorization and the next CSeq, once. The
    /// rest of the dialog keeps the caller's CSeq numbers shifted by one towards the trunk
    /// (and back in responses). `false`: the challenge is passed to the caller as usual.
    fn answer_trunk_challenge(&mut self, now: Instant, cid: u64, msg: &Message, code: u16) -> bool {
        let Some(ct) = self.clients.get(&cid) else { return false };
        let (Some(ctx_id), Some(sent), to, shift, media) = (ct.ctx, ct.sent.clone(), ct.to, ct.cseq_shift, ct.media.clone()) else {
            return false;
        };
        if ct.auth_tried || ct.done {
            return false;
        }
        let cnonce = format!("{:016x}", self.rand());
        let Some(f) = self.ctxs.get(&ctx_id).and_then(|c| c.failover.as_ref()) else { return false };
        let Some(leg) = f.seed.legs.get(f.seed.current as usize) else { return false };
        let Some((user, pass)) = leg.credentials.clone() else { return false };
        let (hdr, name) = if code == 401 {
            (HeaderName::WwwAuthenticate, "Authorization")
        } else {
            (HeaderName::ProxyAuthenticate, "Proxy-Authorization")
        };
        let Some(ch) = crate::digest_client::first_supported(msg.header_lines(hdr)) else { return false };
        let answer = ch.answer(&user, &pass, "INVITE", sent.request_uri().unwrap_or(""), 1, &cnonce);
        let target = Target {
            request_uri: sent.request_uri().map(str::to_string),
            push_routes: vec![],
            dest: to,
            out_token: false,
            drop_headers: leg.drop_headers,
            append: format!("{}{name}: {answer}\r\n", leg.append),
            cseq_shift: shift + 1,
        };
        let trunk = leg.name.clone();
        if let Some(c) = self.clients.get_mut(&cid) {
            c.done = true;
        }
        let Some(f) = self.ctxs.get_mut(&ctx_id).and_then(|c| c.failover.take()) else { return false };
        let new = self.new_branch(now, ctx_id, &f.branch, &target, media);
        if let Some(c) = self.ctxs.get_mut(&ctx_id) {
            c.failover = Some(f);
        }
        match new {
            Some(n) => {
                if let Some(c) = self.clients.get_mut(&n) {
                    c.auth_tried = true;
                }
                self.schedule_failover(now, ctx_id, n);
                tracing::debug!(trunk, code, "trunk challenge answered");
                true
            }
            None => false,
        }
    }

    /// Branch `cid` failed before any provisional response (transport error, timeout, 503):
    /// mark its target down and start a branch to the next usable target. `false` if there
    /// is no fail-over (or no target left): the failure is then processed as usual.
    fn try_failover(&mut self, now: Instant, cid: u64, retry_after: Option<std::time::Duration>) -> bool {
        let Some(ct) = self.clients.get(&cid) else { return false };
        let (Some(ctx_id), to, media, provisional) = (ct.ctx, ct.to, ct.media.clone(), ct.provisional) else { return false };
        if provisional {
            return false;
        }
        let Some(f) = self.ctxs.get_mut(&ctx_id).and_then(|c| c.failover.take()) else { return false };
        let Failover { mut seed, branch } = *f;
        let failed = crate::resolve::Target { addr: to.addr, transport: to.transport };
        {
            let block_for = seed.legs.get(seed.current as usize).map_or(std::time::Duration::from_secs(30), |l| l.block_for);
            let mut h = self.sh.health.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(crate::resolve::Change::Down(t)) = h.handle_failure(failed, now, Some(retry_after.unwrap_or(block_for))) {
                tracing::warn!(target = %t.addr, transport = t.transport.uri_param(), "upstream target down: failing over");
            }
        }
        let next = self.next_trunk_target(now, &mut seed, true).ok();
        let started = match next {
            Some((t, g)) => {
                if let Some(c) = self.clients.get_mut(&cid) {
                    c.done = true;
                }
                seed.current = g;
                let target = seed.legs[g as usize].target(t);
                let r = self.new_branch(now, ctx_id, &branch, &target, media);
                if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                    c.failover = Some(Box::new(Failover { seed, branch }));
                }
                // Armed now that the state is back (new_branch found none).
                if let Some(new_cid) = r {
                    self.schedule_failover(now, ctx_id, new_cid);
                }
                r
            }
            None => {
                if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                    c.failover = Some(Box::new(Failover { seed, branch }));
                }
                None
            }
        };
        started.is_some()
    }

    fn binding_target(&self, now: Instant, b: &Binding) -> Target {
        let contact_dest = self.dest_for(now, &b.uri);
        // Reach the contact where it really registered from (NAT, connection reuse).
        let dest = Peer { transport: b.source.transport, addr: b.source.addr, flow: b.source.flow };
        let nat = contact_dest.is_none_or(|d| d.addr != dest.addr || d.transport != dest.transport);
        Target {
            request_uri: Some(b.uri.to_string()),
            push_routes: b.path.iter().map(|p| p.to_string()).collect(),
            dest: if b.path.is_empty() {
                dest
            } else {
                self.dest_for(now, NameAddr::parse(&b.path[0]).map(|n| n.uri).unwrap_or("")).unwrap_or(dest)
            },
            out_token: b.path.is_empty() && (dest.flow.is_some() || nat),
            drop_headers: &[],
            append: String::new(),
            cseq_shift: 0,
        }
    }

    /// Resolves a URI to a next hop (RFC 3263 without DNS: IP literals and the upstream).
    fn dest_for(&self, now: Instant, uri: &str) -> Option<Peer> {
        let u = SipUri::parse(uri).ok()?;
        let transport = uri_transport(&u);
        if let Some(ip) = u.ip() {
            return Some(Peer { transport, addr: SocketAddr::new(ip, u.port.unwrap_or(transport.default_port())), flow: None });
        }
        if let Some(up) = &self.sh.upstream()
            && let Ok(upu) = SipUri::parse(&up.uri)
            && upu.host.eq_ignore_ascii_case(u.host)
        {
            let resolved = up.dns.as_ref().and_then(|q| self.sh.resolved(q, now));
            return up.first_peer(resolved.as_deref());
        }
        None
    }

    fn rr_value(&self, p: &Peer, token: bool) -> Option<String> {
        let local = self.sh.local_addr(p.transport)?;
        let host = match local {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let user = if token { format!("{}@", self.sh.flow_token(p)) } else { String::new() };
        let tp = if p.transport == Transport::Udp { String::new() } else { format!(";transport={}", p.transport.uri_param()) };
        Some(format!("<sip:{user}{host}:{}{tp};lr>", local.port()))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_forward(
        &self,
        msg: &Message,
        from: &Peer,
        t: &Target,
        top_via: Option<&str>,
        branch: &str,
        popped: usize,
        mf: Option<u32>,
        record_route: bool,
        body: Option<&[u8]>,
    ) -> Option<Bytes> {
        let local = self.sh.local_addr(t.dest.transport)?;
        let mut prepend = String::with_capacity(256);
        let _ = write!(prepend, "Via: SIP/2.0/{} {local};branch={branch}\r\n", t.dest.transport.via_token());
        if record_route {
            let in_nat = !from.transport.reliable()
                && msg.top_via().is_some_and(|v| {
                    let h = v.host.trim_start_matches('[').trim_end_matches(']');
                    h.parse::<std::net::IpAddr>().ok() != Some(from.addr.ip()) || v.port.unwrap_or(5060) != from.addr.port()
                });
            let in_token = from.transport.reliable() || in_nat;
            let in_rr = self.rr_value(from, in_token)?;
            if in_token || t.out_token || from.transport != t.dest.transport {
                let out_rr = self.rr_value(&t.dest, t.out_token)?;
                let _ = write!(prepend, "Record-Route: {out_rr}, {in_rr}\r\n");
            } else {
                let _ = write!(prepend, "Record-Route: {in_rr}\r\n");
            }
        }
        Some(
            Forward {
                request_uri: t.request_uri.as_deref(),
                prepend: &prepend,
                top_via,
                drop_vias: 0,
                drop_routes: popped,
                push_routes: &t.push_routes,
                max_forwards: mf,
                append: &t.append,
                body,
                drop_headers: t.drop_headers,
                cseq: (t.cseq_shift > 0).then(|| msg.cseq().map_or(0, |c| c.seq).saturating_add(t.cseq_shift)),
            }
            .write(msg),
        )
    }

    // ---------------------------------------------------------------- responses

    fn handle_response(&mut self, now: Instant, msg: Message) {
        if msg.validate().is_err() {
            tracing::debug!("dropping malformed response");
            return;
        }
        let (Some(via), Some(cseq)) = (msg.top_via(), msg.cseq()) else { return };
        let Some(branch) = via.branch() else { return };
        let key = format!("{branch}|{}", cseq.method);
        let Some(&cid) = self.client_index.get(&key) else {
            tracing::debug!(branch, "stray response dropped");
            return;
        };
        let code = msg.status().unwrap_or(500);
        let Some(ct) = self.clients.get_mut(&cid) else { return };
        enum Next {
            Deliver,
            AckThenDeliver,
            ResendAck,
            Nothing,
        }
        let next = match &mut ct.kind {
            CKind::Inv(t) => match t.handle_response(now, code) {
                client_inv::Action::Deliver => Next::Deliver,
                client_inv::Action::SendAck => Next::AckThenDeliver,
                client_inv::Action::ResendAck => Next::ResendAck,
                _ => Next::Nothing,
            },
            CKind::Non(t) => match t.handle_response(now, code) {
                client::Action::Deliver => Next::Deliver,
                _ => Next::Nothing,
            },
        };
        match next {
            Next::Nothing => {}
            Next::ResendAck => {
                if let Some(a) = ct.ack.clone() {
                    let to = ct.to;
                    self.send(to, a, None);
                }
            }
            Next::AckThenDeliver => {
                if let Some(sent) = &ct.sent {
                    let ack = build_ack(sent, &msg);
                    ct.ack = Some(ack.clone());
                    let to = ct.to;
                    self.send(to, ack, None);
                }
                self.deliver(now, cid, msg, code);
            }
            Next::Deliver => self.deliver(now, cid, msg, code),
        }
        self.reschedule_client(cid);
    }

    /// Response processing of RFC 3261 16.7 for branch `cid`.
    fn deliver(&mut self, now: Instant, cid: u64, msg: Message, code: u16) {
        if code >= 200 && self.probes.contains_key(&cid) {
            self.probe_result(now, cid, !matches!(code, 408 | 503));
            return;
        }
        if matches!(code, 401 | 407) && self.answer_trunk_challenge(now, cid, &msg, code) {
            return;
        }
        // A branch with a shifted CSeq: the caller sees its own numbers, and once the
        // INVITE's dialog exists the caller's later requests are shifted the same way.
        let shift = self.clients.get(&cid).filter(|c| c.sent.is_some() && code > 100).map(|c| c.cseq_shift);
        if let (Some(s), Some(call_id)) = (shift, msg.call_id())
            && s > 0
        {
            let tag = msg.from_hdr().and_then(|f| f.tag()).unwrap_or("").to_string();
            self.cseq_shift.insert(call_id.to_string(), (tag, s));
        }
        let msg = match self.clients.get(&cid).map(|c| c.cseq_shift) {
            Some(shift) if shift > 0 => {
                let seq = msg.cseq().map_or(0, |c| c.seq).saturating_sub(shift);
                match Message::parse(Forward { cseq: Some(seq), ..Default::default() }.write(&msg)) {
                    Ok(m) => m,
                    Err(_) => msg,
                }
            }
            _ => msg,
        };
        let Some(ct) = self.clients.get_mut(&cid) else { return };
        let Some(ctx_id) = ct.ctx else { return };
        if (101..200).contains(&code) {
            ct.provisional = true;
        }
        // Fail-over (RFC 3263 4.3): a target that failed before any provisional response.
        if matches!(code, 408 | 503) && !ct.provisional && !ct.done {
            let retry_after = msg
                .header_other("Retry-After")
                .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            if self.try_failover(now, cid, retry_after) {
                return;
            }
        }
        let Some(ct) = self.clients.get_mut(&cid) else { return };
        if code >= 200 {
            ct.done = true;
        }
        // A 1xx lets a pending CANCEL go out (RFC 3261 9.1).
        if (101..200).contains(&code) && ct.cancel == CancelState::Pending {
            let reason = ct.cancel_reason;
            self.send_cancel(now, cid, reason);
        }
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else { return };
        let sid = ctx.server;
        if code < 200 {
            if code > 100 {
                if ctx.invite {
                    ctx.timer_c = Some(now + self.sh.timer_c);
                }
                if !ctx.final_sent {
                    let body = self.media_response(now, cid, &msg, code);
                    let data = Forward { drop_vias: 1, body: body.as_deref(), ..Default::default() }.write(&msg);
                    self.server_send(now, sid, code, data);
                }
            }
            self.reschedule_ctx(ctx_id);
            return;
        }
        if (200..300).contains(&code) {
            // 2xx: forward at once, every one of them (16.7 step 5), cancel the others.
            let first = !ctx.final_sent;
            let invite = ctx.invite;
            ctx.final_sent = true;
            let body = self.media_response(now, cid, &msg, code);
            let data = Forward { drop_vias: 1, body: body.as_deref(), ..Default::default() }.write(&msg);
            self.server_send(now, sid, code, data);
            if first && invite {
                self.cancel_branches(now, ctx_id, Some(cid), Some("SIP;cause=200;text=\"Call completed elsewhere\""));
            }
            self.maybe_finish(now, ctx_id);
            return;
        }
        if code >= 600 && ctx.invite {
            // 6xx ends the search (16.7 step 5): cancel the remaining branches.
            self.cancel_branches(now, ctx_id, Some(cid), None);
        }
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else { return };
        let better = match &ctx.best {
            None => true,
            Some(b) => response_rank(code) < response_rank(b.status().unwrap_or(500)),
        };
        if better {
            ctx.best = Some(msg);
        }
        self.maybe_finish(now, ctx_id);
    }

    /// Sends the best response once every branch has a final response (16.7 step 6).
    fn maybe_finish(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else { return };
        let all_done = ctx.branches.iter().all(|b| self.clients.get(b).is_none_or(|c| c.done || c.cancel == CancelState::Pending));
        if !all_done {
            return;
        }
        let sid = ctx.server;
        if !ctx.final_sent {
            let best = ctx.best.clone();
            let code = best.as_ref().and_then(|b| b.status()).unwrap_or(487);
            if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                c.final_sent = true;
            }
            match best {
                Some(b) if b.status() == Some(503) => self.server_reply(now, sid, 500, "Server Internal Error (downstream 503)", ""),
                Some(b) => {
                    let code = b.status().unwrap_or(500);
                    let data = Forward { drop_vias: 1, ..Default::default() }.write(&b);
                    self.server_send(now, sid, code, data);
                }
                None => self.server_reply(now, sid, 487, "Request Terminated", ""),
            }
            if let Some(call) = self.ctxs.get(&ctx_id).and_then(|c| c.media_call.clone()) {
                let reason = if code == 487 { EndReason::Cancelled } else { EndReason::Failed(code) };
                self.end_call(now, &call, reason);
            }
            // The trunk slot of a failed call (also when no media anchor tracks the call).
            if let Some(call) = self.ctxs.get(&ctx_id).and_then(|c| c.failover.as_ref()).map(|f| f.seed.call_id.clone())
                && let Some(trunk) = self.trunk_calls.remove(&call)
            {
                self.sh.loads.release(&trunk);
            }
        }
        if let Some(c) = self.ctxs.get_mut(&ctx_id) {
            c.timer_c = None;
        }
        self.reschedule_ctx(ctx_id);
    }

    /// CANCELs every unfinished branch of `ctx_id` except `except` (16.10, RFC 3326 Reason).
    fn cancel_branches(&mut self, now: Instant, ctx_id: u64, except: Option<u64>, reason: Option<&'static str>) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else { return };
        if !ctx.invite {
            return;
        }
        let branches = ctx.branches.clone();
        for b in branches {
            if Some(b) == except {
                continue;
            }
            let Some(ct) = self.clients.get_mut(&b) else { continue };
            if ct.done || ct.cancel != CancelState::None {
                continue;
            }
            let proceeding = matches!(&ct.kind, CKind::Inv(t) if t.state() == client_inv::State::Proceeding);
            if proceeding {
                self.send_cancel(now, b, reason);
            } else {
                ct.cancel = CancelState::Pending;
                ct.cancel_reason = reason;
            }
        }
    }

    fn send_cancel(&mut self, now: Instant, cid: u64, reason: Option<&'static str>) {
        let Some(ct) = self.clients.get_mut(&cid) else { return };
        ct.cancel = CancelState::Sent;
        let Some(sent) = &ct.sent else { return };
        let data = build_cancel(sent, reason);
        let to = ct.to;
        let branch = sent.top_via().and_then(|v| v.branch()).unwrap_or("").to_string();
        self.start_client(now, format!("{branch}|CANCEL"), false, to, data, None, None, None);
    }

    /// An ICMP error for a datagram sent to `to` over UDP: every client transaction towards it
    /// that has had no response yet sees a transport error. One that has a response (a 1xx)
    /// is left alone: the next hop is alive, the error was for something else.
    fn udp_unreachable(&mut self, now: Instant, to: SocketAddr) {
        let hit: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                !c.done
                    && c.to.transport == Transport::Udp
                    && c.to.addr == to
                    && match &c.kind {
                        CKind::Inv(t) => t.state() == client_inv::State::Calling,
                        CKind::Non(t) => t.state() == client::State::Trying,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for cid in hit {
            tracing::debug!(%to, "next hop unreachable (ICMP)");
            self.client_transport_error(now, cid);
        }
    }

    fn client_transport_error(&mut self, now: Instant, cid: u64) {
        let Some(ct) = self.clients.get_mut(&cid) else { return };
        let timed_out = match &mut ct.kind {
            CKind::Inv(t) => t.handle_transport_error() == client_inv::Action::Timeout,
            CKind::Non(t) => t.handle_transport_error() == client::Action::Timeout,
        };
        if timed_out {
            self.branch_failed(now, cid, 503, "Service Unavailable (transport error)");
        }
        self.reschedule_client(cid);
    }

    /// A branch ended without a response: behave as if `code` arrived (RFC 3261 16.7 step 2 / 16.8).
    fn branch_failed(&mut self, now: Instant, cid: u64, code: u16, reason: &str) {
        if self.clients.get(&cid).is_some_and(|c| !c.done) && self.try_failover(now, cid, None) {
            return;
        }
        if self.probes.contains_key(&cid) {
            self.probe_result(now, cid, false);
        }
        let Some(ct) = self.clients.get_mut(&cid) else { return };
        ct.done = true;
        if ct.ctx.is_none() {
            return;
        }
        let Some(sent) = &ct.sent.clone().or_else(|| Message::parse(ct.request.clone()).ok()) else { return };
        let fake = response(sent, code, reason, None, Some("edge"), "", b"");
        if let Ok(m) = Message::parse(fake) {
            self.deliver(now, cid, m, code);
        }
    }

    // ---------------------------------------------------------------- media

    /// SRTP policy of a leg reached through `p`.
    fn leg_policy(&self, now: Instant, p: &Peer) -> crate::config::SrtpPolicy {
        if let Some(up) = self.sh.upstream_at(p.addr, now) {
            return up.srtp.unwrap_or(crate::config::SrtpPolicy::Keep);
        }
        if matches!(p.transport, Transport::Tls | Transport::Wss) { self.sh.media.srtp_secure } else { self.sh.media.srtp }
    }

    /// Whether a new call is anchored: `[media] anchor`, overridden by the caller's or
    /// callee's `[[user]] anchor_media` and by the upstream's.
    fn should_anchor(&self, now: Instant, msg: &Message, from: &Peer, targets: &[Target]) -> bool {
        let m = &self.sh.media;
        let mut on = m.anchor;
        let user_of = |uri: &str| SipUri::parse(uri).ok().filter(|u| self.sh.is_local_uri(u)).and_then(|u| u.user.map(String::from));
        for user in [msg.from_hdr().and_then(|f| user_of(f.uri)), msg.request_uri().and_then(user_of)].into_iter().flatten() {
            if let Some(v) = m.user_anchor.get(&user) {
                on = *v;
            }
        }
        let via_upstream = std::iter::once(from.addr).chain(targets.iter().map(|t| t.dest.addr)).find_map(|a| self.sh.upstream_at(a, now));
        if let Some(v) = via_upstream.and_then(|u| u.anchor_media) {
            on = v;
        }
        on
    }

    /// Media handling of a request about to be forwarded: the rewritten body, if any, and
    /// the media context of its client transactions. `Err` is a rejection (status, reason).
    fn media_request(
        &mut self,
        now: Instant,
        msg: &Message,
        from: &Peer,
        targets: &[Target],
        in_dialog: bool,
        stateful: bool,
    ) -> Result<MediaEdit, (u16, &'static str, String)> {
        if self.anchor.is_none() {
            return Ok((None, None, None));
        }
        let method = msg.method();
        let call_id = msg.call_id().unwrap_or("").to_string();
        let from_tag = msg.from_hdr().and_then(|f| f.tag()).unwrap_or("").to_string();
        let sdp = is_sdp(msg);
        if method == Method::Invite && !in_dialog && stateful {
            // A browser (WS/WSS) calling a SIP endpoint or the reverse needs the media bridge
            // (ICE, DTLS-SRTP on one side, RTP on the other): anchored whatever the policy.
            let ws_targets = targets.iter().any(|t| t.dest.transport.websocket());
            let other_targets = targets.iter().any(|t| !t.dest.transport.websocket());
            let bridged = sdp && Anchor::needs_bridge(&msg.body(), ws_targets, other_targets);
            let anchored = bridged || self.should_anchor(now, msg, from, targets);
            let parties = self.parties(msg);
            let policy = (
                self.leg_policy(now, from),
                targets.first().map(|t| self.leg_policy(now, &t.dest)).unwrap_or(crate::config::SrtpPolicy::Keep),
            );
            let (f, t) = (msg.from_hdr().map(|f| f.uri.to_string()).unwrap_or_default(), msg.request_uri().unwrap_or("").to_string());
            let Some(an) = self.anchor.as_mut() else { return Ok((None, None, None)) };
            an.start(now, &call_id, &from_tag, anchored, parties, policy, &f, &t);
            self.stats.call_attempts += 1;
            if self.next_media_sweep.is_none() {
                self.next_media_sweep = Some(now + Anchor::sweep_interval());
            }
            an.note_cseq(&call_id, Side::A, msg.cseq().map(|c| c.seq).unwrap_or(0));
            let tsx = MediaTsx { call_id: call_id.clone(), requester: Side::A, offer_sent: sdp, initial: true };
            if !sdp || !anchored {
                return Ok((None, Some(tsx), None));
            }
            return match an.handle_initial_offer(now, &call_id, &msg.body(), ws_targets, other_targets) {
                Ok((b, ws)) => Ok((Some(b), Some(tsx), ws)),
                Err(e) => {
                    tracing::info!(call_id, error = %e, "media: offer refused");
                    let reply = e.reply();
                    self.end_call(now, &call_id, EndReason::Failed(reply.0));
                    Err(reply)
                }
            };
        }
        let Some(an) = self.anchor.as_mut() else { return Ok((None, None, None)) };
        if !in_dialog || !an.has(&call_id) {
            return Ok((None, None, None));
        }
        let Some(side) = an.side_of(&call_id, &from_tag) else { return Ok((None, None, None)) };
        if method != Method::Ack {
            an.note_cseq(&call_id, side, msg.cseq().map(|c| c.seq).unwrap_or(0));
        }
        match method {
            Method::Bye => {
                let reason = if side == Side::A { EndReason::ByeFromCaller } else { EndReason::ByeFromCallee };
                self.end_call(now, &call_id, reason);
                Ok((None, None, None))
            }
            Method::Refer => {
                // A transfer (RFC 3515): tell subscribers who is transferred where.
                if let Some(parties) = an.parties(&call_id) {
                    let target = msg.header_other("Refer-To").or_else(|| msg.header_other("r")).unwrap_or("");
                    let to = NameAddr::parse(target)
                        .and_then(|n| {
                            SipUri::parse(n.uri).ok().and_then(|u| u.user.map(|x| crate::msg::uri::percent_decode(x).to_string()))
                        })
                        .unwrap_or_default();
                    let by = if side == Side::A { "caller" } else { "callee" };
                    self.events.push(CallEvent {
                        event: "transferred",
                        call_id: call_id.clone(),
                        parties,
                        record: None,
                        transfer: Some(Transfer { to, by }),
                    });
                }
                Ok((None, None, None))
            }
            Method::Invite | Method::Update => {
                let tsx = MediaTsx { call_id: call_id.clone(), requester: side, offer_sent: sdp, initial: false };
                if !sdp {
                    return Ok((None, Some(tsx), None));
                }
                match an.handle_sdp(now, &call_id, side, SdpKind::Offer, &msg.body()) {
                    Ok(b) => Ok((Some(b), Some(tsx), None)),
                    Err(e) => {
                        tracing::info!(call_id, error = %e, "media: re-offer refused");
                        Err(e.reply())
                    }
                }
            }
            Method::Info => {
                // DTMF in SIP INFO from a browser (SIP.js, JsSIP) on a bridged call goes to
                // the SIP leg as RFC 4733 events when it negotiated them; answered here.
                let ct = msg.header(HeaderName::ContentType).unwrap_or("");
                if let Some((event, duration)) = crate::media::info_dtmf::parse(ct, &msg.body())
                    && an.info_digit(now, &call_id, side, event, duration)
                {
                    self.media_kick = true;
                    return Err((200, "OK", String::new()));
                }
                Ok((None, None, None))
            }
            Method::Ack | Method::Prack if sdp => match an.handle_sdp(now, &call_id, side, SdpKind::Answer, &msg.body()) {
                Ok(b) => Ok((Some(b), None, None)),
                Err(e) => {
                    tracing::info!(call_id, error = %e, "media: answer in ACK/PRACK not anchored");
                    Ok((None, None, None))
                }
            },
            _ => Ok((None, None, None)),
        }
    }

    /// Who a new call is between (caller ID, called number, direction, local agent).
    fn parties(&self, msg: &Message) -> CallParties {
        let local_user = |uri: &str| {
            SipUri::parse(uri)
                .ok()
                .filter(|u| self.sh.is_local_uri(u))
                .and_then(|u| u.user.map(|x| crate::msg::uri::percent_decode(x).to_string()))
                .filter(|u| self.sh.auth.user(u).is_some())
        };
        let user_part = |uri: &str| {
            SipUri::parse(uri).ok().and_then(|u| u.user.map(|x| crate::msg::uri::percent_decode(x).to_string())).unwrap_or_default()
        };
        let from = msg.from_hdr();
        let from_uri = from.as_ref().map(|f| f.uri).unwrap_or("");
        let ruri = msg.request_uri().unwrap_or("");
        let (caller_local, callee_local) = (local_user(from_uri), local_user(ruri));
        let direction = match (&caller_local, &callee_local) {
            (Some(_), Some(_)) => "internal",
            (None, Some(_)) => "inbound",
            (Some(_), None) => "outbound",
            (None, None) => "transit",
        };
        CallParties {
            direction,
            caller: user_part(from_uri),
            caller_name: from.and_then(|f| f.display).map(|d| d.trim_matches('"').to_string()).filter(|d| !d.is_empty()),
            called: user_part(ruri),
            agent: callee_local.or(caller_local),
        }
    }

    /// Media handling of a 1xx/2xx about to be forwarded upstream: the rewritten body.
    fn media_response(&mut self, now: Instant, cid: u64, msg: &Message, code: u16) -> Option<Vec<u8>> {
        let ct = self.clients.get(&cid)?;
        let m = ct.media.clone()?;
        if m.initial
            && (180..=183).contains(&code)
            && let Some(parties) = self.anchor.as_mut().and_then(|a| a.ringing(&m.call_id))
        {
            self.events.push(CallEvent { event: "ringing", call_id: m.call_id.clone(), parties, record: None, transfer: None });
        }
        if m.initial
            && (200..300).contains(&code)
            && let Some(an) = self.anchor.as_ref()
            && !an.is_answered(&m.call_id)
            && let Some(parties) = an.parties(&m.call_id)
        {
            if let Some(age) = an.age(&m.call_id, now) {
                self.stats.setup_secs.push(age);
            }
            self.events.push(CallEvent { event: "answered", call_id: m.call_id.clone(), parties, record: None, transfer: None });
        }
        let ct = self.clients.get(&cid)?;
        let callee_peer = ct.to;
        let caller_contact = ct.sent.as_ref().and_then(contact_uri);
        if (200..300).contains(&code) && m.initial {
            let caller_peer = self.ctxs.get(&ct.ctx?).and_then(|c| self.servers.get(&c.server)).map(|s| s.reply_to);
            let rr: Vec<String> = msg.values(HeaderName::RecordRoute).map(String::from).collect();
            let ours = |v: &str| {
                NameAddr::parse(v).and_then(|n| SipUri::parse(n.uri).ok()).is_some_and(|u| self.sh.is_own_address(u.host, u.port))
            };
            let first_own = rr.iter().position(|v| ours(v));
            let last_own = rr.iter().rposition(|v| ours(v));
            let (to_callee, to_caller) = match (first_own, last_own) {
                (Some(f), Some(l)) => (rr[..f].to_vec(), rr[l + 1..].iter().rev().cloned().collect()),
                _ => (vec![], vec![]),
            };
            if let (Some(caller_peer), Some(caller_contact), Some(callee_contact)) = (caller_peer, caller_contact, contact_uri(msg)) {
                let ends = DialogEnds {
                    caller_peer,
                    callee_peer,
                    caller_contact,
                    callee_contact,
                    from: msg.header(HeaderName::From).unwrap_or("").to_string(),
                    to: msg.header(HeaderName::To).unwrap_or("").to_string(),
                    routes_to_caller: to_caller,
                    routes_to_callee: to_callee,
                };
                if let Some(an) = self.anchor.as_mut() {
                    an.answered(now, &m.call_id, ends);
                }
            }
        }
        if !(101..300).contains(&code) || !is_sdp(msg) {
            return None;
        }
        let kind = if m.offer_sent { SdpKind::Answer } else { SdpKind::Offer };
        let an = self.anchor.as_mut()?;
        let edited = if kind == SdpKind::Answer && code < 200 {
            an.handle_early_answer(now, &m.call_id, m.requester.other(), &msg.body())
        } else {
            an.handle_sdp(now, &m.call_id, m.requester.other(), kind, &msg.body())
        };
        match edited {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(call_id = m.call_id, error = %e, "media: SDP in response not anchored");
                if (200..300).contains(&code) && m.initial && kind == SdpKind::Answer && an.answer_refused(&m.call_id, &e) {
                    // The 2xx goes on (a proxy forwards it), its ACK follows; the sweep
                    // ends the call just after.
                    let soon = now + std::time::Duration::from_millis(200);
                    self.next_media_sweep = Some(self.next_media_sweep.map_or(soon, |t| t.min(soon)));
                }
                None
            }
        }
    }

    /// Ends an anchored call (ports released) and queues its record.
    fn end_call(&mut self, now: Instant, call_id: &str, reason: EndReason) {
        if let Some(trunk) = self.trunk_calls.remove(call_id) {
            self.sh.loads.release(&trunk);
        }
        self.cseq_shift.remove(call_id);
        let Some(an) = self.anchor.as_mut() else { return };
        if let Some(rec) = an.end(now, call_id, reason) {
            self.store_ops.push(StoreOp::CallRecord(Box::new(rec.clone())));
            self.events.push(CallEvent {
                event: "ended",
                call_id: rec.call_id.clone(),
                parties: rec.parties.clone(),
                record: Some(rec.clone()),
                transfer: None,
            });
            self.records.push_back(rec);
        }
        if an.calls() == 0 {
            self.next_media_sweep = None;
        } else if self.next_media_sweep.is_none() {
            self.next_media_sweep = Some(now + Anchor::sweep_interval());
        }
    }

    /// Tears down calls whose media stopped: BYE to both ends (RFC 3261 15), record says why.
    fn media_sweep(&mut self, now: Instant) {
        let Some(an) = self.anchor.as_ref() else {
            self.next_media_sweep = None;
            return;
        };
        for call_id in an.inactive(now) {
            if self.anchor.as_ref().and_then(|a| a.dialog(&call_id)).is_none() {
                continue;
            }
            tracing::info!(call_id, "media: inactivity timeout, sending BYE to both ends");
            self.bye_both(now, &call_id, "Reason: Q.850;cause=102;text=\"media timeout\"\r\n");
            self.end_call(now, &call_id, EndReason::MediaTimeout);
        }
        for (call_id, why) in self.anchor.as_ref().map(|a| a.unbridgeable()).unwrap_or_default() {
            tracing::info!(call_id, why, "media: the answer cannot be bridged, sending BYE to both ends");
            let reason = format!("Reason: SIP;cause=488;text=\"{}\"\r\n", why.replace('"', "'"));
            self.bye_both(now, &call_id, &reason);
            self.end_call(now, &call_id, EndReason::Unbridgeable);
        }
        let old = self.anchor.as_ref().map(|a| a.too_old(now, self.sh.max_call)).unwrap_or_default();
        for call_id in old {
            tracing::info!(call_id, "call reached sip.max_call_secs: ending it");
            self.bye_both(now, &call_id, "Reason: Q.850;cause=102;text=\"maximum call duration\"\r\n");
            self.end_call(now, &call_id, EndReason::MaxDuration);
        }
        let active = self.anchor.as_ref().is_some_and(|a| a.calls() > 0);
        self.next_media_sweep = active.then(|| now + Anchor::sweep_interval());
    }

    /// Ends a confirmed dialog as the edge: BYE to the callee as if from the caller and to
    /// the caller as if from the callee (RFC 3261 15; dialog data kept by the anchor).
    fn bye_both(&mut self, now: Instant, call_id: &str, reason: &str) -> bool {
        let Some((ends, cseq)) = self.anchor.as_ref().and_then(|a| a.dialog(call_id)).map(|(d, c)| (d.clone(), c)) else { return false };
        let shift = self.cseq_shift.get(call_id).map_or(0, |(_, s)| *s);
        let legs = [
            (ends.callee_peer, &ends.callee_contact, &ends.routes_to_callee, &ends.from, &ends.to, cseq[0] + 1 + shift),
            (ends.caller_peer, &ends.caller_contact, &ends.routes_to_caller, &ends.to, &ends.from, cseq[1] + 1),
        ];
        for (peer, target, routes, from, to, seq) in legs {
            self.send_bye(now, peer, target, routes, from, to, call_id, seq, reason);
        }
        true
    }

    /// Calls in progress (admin API).
    pub fn active_calls(&self, now: Instant) -> Vec<crate::media::anchor::ActiveCall> {
        self.anchor.as_ref().map(|a| a.active(now)).unwrap_or_default()
    }

    /// Hangs up a call from the admin API: BYE both ways once answered, CANCEL of the
    /// branches (487 to the caller) while it rings. `false` if this core has no such call.
    pub fn hangup(&mut self, now: Instant, call_id: &str) -> bool {
        let Some(an) = self.anchor.as_ref() else { return false };
        if !an.has(call_id) {
            return false;
        }
        if an.is_answered(call_id) {
            if self.bye_both(now, call_id, "Reason: SIP;cause=200;text=\"hung up by the operator\"\r\n") {
                self.end_call(now, call_id, EndReason::HungUp);
                return true;
            }
            return false;
        }
        let ctx = self.ctxs.iter().find(|(_, c)| c.media_call.as_deref() == Some(call_id)).map(|(id, _)| *id);
        match ctx {
            Some(ctx) => {
                self.cancel_branches(now, ctx, None, Some("SIP;cause=487;text=\"hung up by the operator\""));
                self.maybe_finish(now, ctx);
                true
            }
            None => {
                // The INVITE transaction is gone but no answer was seen: forget the call.
                self.end_call(now, call_id, EndReason::HungUp);
                true
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_bye(
        &mut self,
        now: Instant,
        peer: Peer,
        target: &str,
        routes: &[String],
        from: &str,
        to: &str,
        call_id: &str,
        seq: u32,
        extra: &str,
    ) {
        let Some(local) = self.sh.local_addr(peer.transport) else { return };
        let r = self.rand();
        let branch = format!("{MAGIC_COOKIE}e{:x}{r:x}", self.worker);
        let via = format!("SIP/2.0/{} {local};branch={branch}", peer.transport.via_token());
        let data = crate::msg::write::bye(target, &via, routes, from, to, call_id, seq, extra);
        self.start_client(now, format!("{branch}|BYE"), false, peer, data, None, None, None);
    }

    // ---------------------------------------------------------------- timers

    fn reschedule_server(&mut self, id: u64) {
        let Some(st) = self.servers.get_mut(&id) else { return };
        let (next, terminated) = match &st.kind {
            SKind::Inv(t) => (t.poll_timeout(), t.state() == server_inv::State::Terminated),
            SKind::Non(t) => (t.poll_timeout(), t.state() == server::State::Terminated),
        };
        if terminated {
            let key = st.key.clone();
            let ctx = st.ctx;
            self.servers.remove(&id);
            if self.server_index.get(&key) == Some(&id) {
                self.server_index.remove(&key);
            }
            if let Some(c) = ctx {
                self.reschedule_ctx(c);
            }
            return;
        }
        if next != st.scheduled {
            st.scheduled = next;
            if let Some(at) = next {
                self.timers.push(Reverse((at, TimerKey::Server(id))));
            }
        }
    }

    fn reschedule_client(&mut self, id: u64) {
        let Some(ct) = self.clients.get_mut(&id) else { return };
        let (next, terminated) = match &ct.kind {
            CKind::Inv(t) => (t.poll_timeout(), t.state() == client_inv::State::Terminated),
            CKind::Non(t) => (t.poll_timeout(), t.state() == client::State::Terminated),
        };
        if terminated {
            let key = ct.index_key.clone();
            let ctx = ct.ctx;
            self.clients.remove(&id);
            if self.client_index.get(&key) == Some(&id) {
                self.client_index.remove(&key);
            }
            if let Some(c) = ctx {
                self.reschedule_ctx(c);
            }
            return;
        }
        if next != ct.scheduled {
            ct.scheduled = next;
            if let Some(at) = next {
                self.timers.push(Reverse((at, TimerKey::Client(id))));
            }
        }
    }

    fn reschedule_ctx(&mut self, id: u64) {
        let Some(ctx) = self.ctxs.get_mut(&id) else { return };
        let server_alive = self.servers.contains_key(&ctx.server);
        let branches_alive = ctx.branches.iter().any(|b| self.clients.contains_key(b));
        if !server_alive && !branches_alive {
            self.ctxs.remove(&id);
            return;
        }
        if ctx.timer_c != ctx.scheduled {
            ctx.scheduled = ctx.timer_c;
            if let Some(at) = ctx.timer_c {
                self.timers.push(Reverse((at, TimerKey::Ctx(id))));
            }
        }
    }

    fn server_timeout(&mut self, now: Instant, id: u64, at: Instant) {
        let Some(st) = self.servers.get_mut(&id) else { return };
        if st.scheduled != Some(at) {
            return;
        }
        st.scheduled = None;
        loop {
            let Some(st) = self.servers.get_mut(&id) else { return };
            let retx = match &mut st.kind {
                SKind::Inv(t) => match t.handle_timeout(now) {
                    Some(server_inv::Action::Retransmit) => true,
                    Some(_) => false,
                    None => break,
                },
                SKind::Non(t) => match t.handle_timeout(now) {
                    Some(_) => false,
                    None => break,
                },
            };
            if retx && let Some(d) = st.last.clone() {
                let to = st.reply_to;
                self.send(to, d, None);
            }
        }
        self.reschedule_server(id);
    }

    fn client_timeout(&mut self, now: Instant, id: u64, at: Instant) {
        let Some(ct) = self.clients.get_mut(&id) else { return };
        if ct.scheduled != Some(at) {
            return;
        }
        ct.scheduled = None;
        loop {
            let Some(ct) = self.clients.get_mut(&id) else { return };
            let (retx, timeout) = match &mut ct.kind {
                CKind::Inv(t) => match t.handle_timeout(now) {
                    Some(client_inv::Action::Retransmit) => (true, false),
                    Some(client_inv::Action::Timeout) => (false, true),
                    Some(_) => (false, false),
                    None => break,
                },
                CKind::Non(t) => match t.handle_timeout(now) {
                    Some(client::Action::Retransmit) => (true, false),
                    Some(client::Action::Timeout) => (false, true),
                    Some(_) => (false, false),
                    None => break,
                },
            };
            if retx {
                let (to, d) = (ct.to, ct.request.clone());
                self.send(to, d, Some(id));
            }
            if timeout {
                self.branch_failed(now, id, 408, "Request Timeout");
            }
        }
        self.reschedule_client(id);
    }

    /// Timer C (RFC 3261 16.6 step 11 / 16.8): cancel branches that stay provisional.
    fn ctx_timeout(&mut self, now: Instant, id: u64, at: Instant) {
        let Some(ctx) = self.ctxs.get_mut(&id) else { return };
        if ctx.scheduled != Some(at) || ctx.timer_c != Some(at) {
            return;
        }
        ctx.scheduled = None;
        ctx.timer_c = None;
        let branches = ctx.branches.clone();
        self.cancel_branches(now, id, None, None);
        for b in branches {
            let pending = self.clients.get(&b).is_some_and(|c| !c.done && c.cancel == CancelState::Pending);
            if pending {
                self.branch_failed(now, b, 408, "Request Timeout");
            }
        }
        self.maybe_finish(now, id);
    }
}

/// `true` if the message carries an SDP body (RFC 3261 20.15; a missing Content-Type with a
/// body that starts `v=0` counts, as some phones omit it).
/// An anonymous caller (RFC 3323 `Privacy: id`/`header`/`user`, or an anonymous From as
/// RFC 3261 8.1.1.3 suggests).
fn is_anonymous(msg: &Message) -> bool {
    let privacy = msg.header_other("Privacy").is_some_and(|p| {
        p.split(';')
            .map(str::trim)
            .any(|v| v.eq_ignore_ascii_case("id") || v.eq_ignore_ascii_case("header") || v.eq_ignore_ascii_case("user"))
    });
    let from_anon = msg.from_hdr().is_some_and(|f| {
        SipUri::parse(f.uri)
            .is_ok_and(|u| u.user.is_some_and(|x| x.eq_ignore_ascii_case("anonymous")) || u.host.eq_ignore_ascii_case("anonymous.invalid"))
    });
    privacy || from_anon
}

fn is_sdp(msg: &Message) -> bool {
    let r = msg.body_range();
    if r.is_empty() {
        return false;
    }
    match msg.header(HeaderName::ContentType) {
        Some(ct) => ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp")),
        None => msg.bytes()[r].starts_with(b"v=0"),
    }
}

/// The URI of a message's first Contact.
fn contact_uri(msg: &Message) -> Option<String> {
    msg.values(HeaderName::Contact).next().and_then(NameAddr::parse).map(|n| n.uri.to_string())
}

/// Preference of a final response (RFC 3261 16.7 step 6): 6xx first, then the lowest class.
fn response_rank(code: u16) -> (u8, u16) {
    match code {
        600..=699 => (0, code),
        300..=399 => (1, code),
        400..=499 => (2, code),
        500..=599 => (3, code),
        _ => (4, code),
    }
}

/// ACK for a non-2xx final response (RFC 3261 17.1.1.3): same Request-URI, top Via,
/// Call-ID, From, CSeq number and Route as the INVITE, To from the response.
pub fn build_ack(invite: &Message, resp: &Message) -> Bytes {
    hop_request(invite, "ACK", Some(resp), None)
}

/// CANCEL for a forwarded INVITE (RFC 3261 9.1), with an optional RFC 3326 Reason.
pub fn build_cancel(invite: &Message, reason: Option<&str>) -> Bytes {
    hop_request(invite, "CANCEL", None, reason)
}

/// A request that belongs to the INVITE's client transaction: its Request-URI, top Via,
/// From, Call-ID, Route and CSeq number; To from `to_of` (the response) or the INVITE.
fn hop_request(invite: &Message, method: &str, to_of: Option<&Message>, reason: Option<&str>) -> Bytes {
    let mut s = String::with_capacity(512);
    let _ = write!(s, "{method} {} SIP/2.0\r\n", invite.request_uri().unwrap_or(""));
    if let Some(v) = invite.top_via_str() {
        let _ = write!(s, "Via: {v}\r\n");
    }
    s.push_str("Max-Forwards: 70\r\n");
    let to_src = to_of.unwrap_or(invite);
    for (m, names) in [(invite, &[HeaderName::From, HeaderName::CallId, HeaderName::Route][..]), (to_src, &[HeaderName::To][..])] {
        for h in m.headers().iter().filter(|h| names.contains(&h.name)) {
            s.push_str(&String::from_utf8_lossy(m.slice(h.line)));
            s.push_str("\r\n");
            if h.name == HeaderName::To {
                break;
            }
        }
    }
    if let Some(r) = reason {
        let _ = write!(s, "Reason: {r}\r\n");
    }
    let _ = write!(s, "CSeq: {} {method}\r\nContent-Length: 0\r\n\r\n", invite.cseq().map(|c| c.seq).unwrap_or(1));
    Bytes::from(s)
}
