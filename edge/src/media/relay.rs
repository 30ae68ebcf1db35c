//! The media relay core (sans-IO): sessions of two legs, relay ports from a range,
//! symmetric-RTP latching (each leg latches to the source of its first packet and, when
//! strict, ignores other sources afterwards), forwarding decisions for RTP and RTCP
//! (rtcp-mux aware, RFC 5761), SDES-SRTP bridging per leg (RFC 3711, RFC 4568),
//! per-direction counters and quality (RFC 3550 loss and jitter, RTT from SR/RR, G.107
//! MOS), and inactivity detection. The runtime owns the sockets (through [`Ports`]) and
//! asks [`Relay::handle_packet`] where a datagram goes; nothing here allocates per packet.
//!
//! A session whose one leg is a browser carries a [`MediaBridge`] instead: that leg's port
//! feeds the bridge's WebRTC leg (ICE, DTLS-SRTP), the other leg's RTP goes through the
//! bridge (passthrough or transcoding), and what the bridge sends is collected with
//! [`Relay::poll_output`]; [`Relay::poll_bridge_timeout`] says when its timers are due.

use super::bridge::{Bridge as MediaBridge, BridgeOutput};
use codec::quality::{CodecImpairment, EModelInput, Jitter, SeqTracker, mos};
use codec::rtcp::{self, Rtcp};
use codec::rtp::{RtpHeader, is_rtcp};
use codec::srtp::Srtp;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP ports the relay may use (RTP on even ports, RTCP on the next odd one).
    pub ports: RangeInclusive<u16>,
    /// This relay uses the pairs `i` with `i % shard.1 == shard.0` (one relay per worker).
    pub shard: (usize, usize),
    /// After latching, drop packets from any other source (protects a call from injected
    /// or stray traffic).
    pub strict_latching: bool,
    /// A session with no packet in either direction for this long is reported inactive.
    pub inactivity: Duration,
    /// The same while the call is on hold (a leg set sendonly, recvonly or inactive).
    pub hold_inactivity: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            ports: 30000..=39999,
            shard: (0, 1),
            strict_latching: true,
            inactivity: Duration::from_secs(60),
            hold_inactivity: Duration::from_secs(3600),
        }
    }
}

/// Binds and releases the relay's sockets (implemented by the runtime; tests accept all).
pub trait Ports {
    /// Opens a socket on `port`; `false` if the port cannot be used (taken by another process).
    fn bind(&mut self, port: u16) -> bool;
    /// Closes the socket on `port`.
    fn release(&mut self, port: u16);
}

/// [`Ports`] that opens nothing (sans-IO tests, benchmarks).
#[derive(Debug, Default)]
pub struct NoSockets;

impl Ports for NoSockets {
    fn bind(&mut self, _: u16) -> bool {
        true
    }
    fn release(&mut self, _: u16) {}
}

/// Which leg of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    /// The other leg.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Errors of session management.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("no relay ports left in the configured range")]
    NoPorts,
    #[error("unknown relay session")]
    UnknownSession,
}

/// What one direction (packets received on a leg) measured.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DirectionStats {
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    /// Packets from a foreign source dropped after latching.
    pub foreign_dropped: u64,
    /// SRTP/SRTCP packets that failed authentication or replay checks.
    pub srtp_errors: u64,
    /// Packets expected from the sequence numbers but never received.
    pub lost: u64,
    pub loss_pct: f64,
    pub jitter_ms: f64,
    /// Round-trip time between the relay and this leg (RTCP SR/RR), when measured.
    pub rtt_ms: Option<f64>,
    pub mos: f64,
}

/// Where a leg is reached and what it sends (from its SDP).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RemoteMedia {
    pub rtp: SocketAddr,
    pub rtcp: Option<SocketAddr>,
    pub mux: bool,
    pub clock_rate: u32,
    pub codec: CodecImpairment,
}

/// SRs forwarded towards a leg, to match its RRs (LSR) for the RTT.
const SR_MEMORY: usize = 4;

#[derive(Default)]
struct Leg {
    rtp_port: u16,
    /// Where to send to this leg before it has sent anything (from its SDP).
    expected_rtp: Option<SocketAddr>,
    expected_rtcp: Option<SocketAddr>,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    rtcp_mux: bool,
    clock_rate: u32,
    codec: Option<CodecImpairment>,
    seq: SeqTracker,
    jitter: Jitter,
    /// Decrypts what this leg sends (its own SDES key).
    srtp_in: Option<Box<Srtp>>,
    /// Encrypts what is sent to this leg (the key the relay gave it).
    srtp_out: Option<Box<Srtp>>,
    /// (LSR, when forwarded) of SRs sent towards this leg.
    srs: [(u32, Option<Instant>); SR_MEMORY],
    sr_next: usize,
    rtt_sum: f64,
    rtt_n: u32,
    stats: DirectionStats,
}

impl Leg {
    fn report(&self) -> DirectionStats {
        let mut s = self.stats.clone();
        s.lost = self.seq.lost();
        s.loss_pct = self.seq.loss_pct();
        s.jitter_ms = self.jitter.ms(self.clock_rate.max(1));
        s.rtt_ms = (self.rtt_n > 0).then(|| self.rtt_sum / self.rtt_n as f64);
        // Mouth-to-ear delay: one packet time, the jitter buffer (twice the jitter) and half
        // the measured round trip.
        let delay = 20.0 + 2.0 * s.jitter_ms + s.rtt_ms.unwrap_or(0.0) / 2.0;
        s.mos = mos(EModelInput {
            codec: self.codec.unwrap_or(CodecImpairment::G711_PLC),
            loss_pct: s.loss_pct,
            burst_ratio: 1.0,
            delay_ms: delay,
        });
        s
    }
}

struct Session {
    a: Leg,
    b: Leg,
    created: Instant,
    last_activity: Instant,
    held: bool,
    /// WebRTC interworking: the browser's side and the bridge.
    bridge: Option<(Side, Box<MediaBridge>)>,
}

impl Session {
    fn leg(&mut self, s: Side) -> &mut Leg {
        match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }
    fn legs(&mut self, from: Side) -> (&mut Leg, &mut Leg) {
        match from {
            Side::A => (&mut self.a, &mut self.b),
            Side::B => (&mut self.b, &mut self.a),
        }
    }
}

/// One datagram's arrival, as [`Relay::receive`] needs it.
struct Arrival {
    now: Instant,
    /// Since the session started (jitter's arrival clock).
    since: Duration,
    src: SocketAddr,
    rtcp: bool,
    strict: bool,
}

/// A datagram a bridge sends: out of local port `from_port` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from_port: u16,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// Where the runtime sends a relayed datagram: out of local port `from_port` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub from_port: u16,
    pub to: SocketAddr,
}

/// End-of-session figures (for the call record).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SessionReport {
    /// Received from A (sent towards B), and received from B.
    pub from_a: DirectionStats,
    pub from_b: DirectionStats,
    /// Seconds from the session's start.
    pub duration_secs: f64,
    /// A WebRTC <-> SIP bridged session: what the bridge did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webrtc: Option<BridgeReport>,
}

/// The bridge's part of a session report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BridgeReport {
    /// The browser's leg (`a` or `b`).
    pub web_leg: &'static str,
    pub web_codec: String,
    pub sip_codec: String,
    pub transcoding: bool,
    pub to_web_packets: u64,
    pub to_sip_packets: u64,
    /// RFC 4733 telephone-event packets passed each way.
    pub dtmf_to_web: u64,
    pub dtmf_to_sip: u64,
    /// RFC 4733 event packets played as tones to a leg without telephone-event.
    pub dtmf_inband: u64,
    pub dropped: u64,
}

/// What the browser's leg of a bridge measured (str0m's receiver and sender reports).
fn web_report(b: &MediaBridge) -> DirectionStats {
    let leg = b.web();
    let (_, codec) = b.web_codec();
    let clock = codec.clock() as f64;
    let rtt_ms = leg.egress.rtt.or(leg.ingress.rtt).map(|r| r.as_secs_f64() * 1000.0);
    let loss_pct = (leg.ingress.loss as f64 * 100.0).clamp(0.0, 100.0);
    let jitter_ms = leg.ingress.jitter as f64 * 1000.0 / clock;
    let impairment = if codec == codec::voice::VoiceCodec::Opus { CodecImpairment::OPUS } else { CodecImpairment::G711_PLC };
    let delay = 20.0 + 2.0 * jitter_ms + rtt_ms.unwrap_or(0.0) / 2.0;
    DirectionStats {
        packets: leg.ingress.packets,
        bytes: leg.ingress.bytes,
        loss_pct,
        jitter_ms,
        rtt_ms,
        mos: mos(EModelInput { codec: impairment, loss_pct, burst_ratio: 1.0, delay_ms: delay }),
        ..Default::default()
    }
}

/// The middle 32 bits of an NTP timestamp (the LSR field of a report block).
fn ntp_mid(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// All relay sessions of one worker.
pub struct Relay {
    cfg: RelayConfig,
    /// Free RTP ports, least recently used first: a released pair goes to the back, so it
    /// is reused only after every other pair (late packets of the old call cannot latch
    /// the next one).
    free: VecDeque<u16>,
    by_port: HashMap<u16, (u64, Side, bool)>,
    sessions: HashMap<u64, Session>,
    next: u64,
    /// Sessions with a bridge, and those whose bridge may have output.
    bridged: Vec<u64>,
    bridge_dirty: Vec<u64>,
}

impl Relay {
    pub fn new(cfg: RelayConfig) -> Relay {
        let start = cfg.ports.start() + (cfg.ports.start() % 2);
        let (idx, n) = (cfg.shard.0, cfg.shard.1.max(1));
        // Even RTP ports whose RTCP port (p + 1) is still inside the range, this shard's share.
        let free = (start..*cfg.ports.end()).step_by(2).enumerate().filter(|(i, _)| i % n == idx).map(|(_, p)| p).collect();
        Relay { cfg, free, by_port: HashMap::new(), sessions: HashMap::new(), next: 0, bridged: vec![], bridge_dirty: vec![] }
    }

    /// Ports (RTP + RTCP) held by sessions.
    pub fn ports_in_use(&self) -> usize {
        self.by_port.len()
    }

    /// Port pairs still free.
    pub fn pairs_free(&self) -> usize {
        self.free.len()
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    fn take_pair(&mut self, ports: &mut dyn Ports) -> Option<u16> {
        // Skip pairs another process holds; they go back to the pool for later.
        let mut skipped = Vec::new();
        let mut got = None;
        while let Some(p) = self.free.pop_front() {
            if ports.bind(p) {
                if ports.bind(p + 1) {
                    got = Some(p);
                    break;
                }
                ports.release(p);
            }
            skipped.push(p);
            if skipped.len() >= 64 {
                break;
            }
        }
        self.free.extend(skipped);
        got
    }

    /// Opens a session: two RTP/RTCP port pairs, bound through `ports`.
    /// Returns (session, A's RTP port, B's RTP port).
    pub fn open(&mut self, now: Instant, ports: &mut dyn Ports) -> Result<(u64, u16, u16), RelayError> {
        let pa = self.take_pair(ports).ok_or(RelayError::NoPorts)?;
        let Some(pb) = self.take_pair(ports) else {
            ports.release(pa);
            ports.release(pa + 1);
            self.free.push_front(pa);
            return Err(RelayError::NoPorts);
        };
        self.next += 1;
        let id = self.next;
        for (p, side) in [(pa, Side::A), (pb, Side::B)] {
            self.by_port.insert(p, (id, side, false));
            self.by_port.insert(p + 1, (id, side, true));
        }
        let leg = |p| Leg { rtp_port: p, clock_rate: 8000, ..Default::default() };
        self.sessions.insert(id, Session { a: leg(pa), b: leg(pb), created: now, last_activity: now, held: false, bridge: None });
        Ok((id, pa, pb))
    }

    /// The RTP port of a leg (what its peer is told to send to).
    pub fn port(&self, id: u64, side: Side) -> Option<u16> {
        let s = self.sessions.get(&id)?;
        Some(match side {
            Side::A => s.a.rtp_port,
            Side::B => s.b.rtp_port,
        })
    }

    /// Sets where a leg is expected (from its SDP). Latching resets when the address
    /// changes (re-INVITE to a new endpoint).
    pub fn set_remote(&mut self, id: u64, side: Side, m: RemoteMedia) -> Result<(), RelayError> {
        let s = self.sessions.get_mut(&id).ok_or(RelayError::UnknownSession)?;
        let l = s.leg(side);
        if l.expected_rtp != Some(m.rtp) {
            l.latched_rtp = None;
            l.latched_rtcp = None;
        }
        l.expected_rtp = Some(m.rtp);
        l.expected_rtcp = m.rtcp.or(Some(SocketAddr::new(m.rtp.ip(), if m.mux { m.rtp.port() } else { m.rtp.port().wrapping_add(1) })));
        l.rtcp_mux = m.mux;
        l.clock_rate = m.clock_rate;
        l.codec = Some(m.codec);
        Ok(())
    }

    /// Restarts a session's inactivity clock (e.g. when the call is answered).
    pub fn touch(&mut self, id: u64, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.last_activity = now;
        }
    }

    /// Marks a session on hold (longer inactivity timeout) or not.
    pub fn set_hold(&mut self, id: u64, held: bool) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.held = held;
        }
    }

    /// Sets the SRTP contexts of a leg: `inbound` decrypts what the leg sends, `outbound`
    /// encrypts what is sent to it. `None` leaves that direction plain.
    pub fn set_srtp(&mut self, id: u64, side: Side, inbound: Option<Srtp>, outbound: Option<Srtp>) -> Result<(), RelayError> {
        let s = self.sessions.get_mut(&id).ok_or(RelayError::UnknownSession)?;
        let l = s.leg(side);
        l.srtp_in = inbound.map(Box::new);
        l.srtp_out = outbound.map(Box::new);
        Ok(())
    }

    /// Updates one SRTP direction of a leg, keeping the other.
    pub fn set_srtp_direction(&mut self, id: u64, side: Side, inbound: bool, ctx: Option<Srtp>) -> Result<(), RelayError> {
        let s = self.sessions.get_mut(&id).ok_or(RelayError::UnknownSession)?;
        let l = s.leg(side);
        if inbound {
            l.srtp_in = ctx.map(Box::new);
        } else {
            l.srtp_out = ctx.map(Box::new);
        }
        Ok(())
    }

    /// A bridge may have output for [`Self::poll_output`]: once per run of packets of the
    /// same session (a receive batch of one call's packets queues it once).
    fn mark_dirty(&mut self, id: u64) {
        if self.bridge_dirty.last() != Some(&id) {
            self.bridge_dirty.push(id);
        }
    }

    /// Puts a WebRTC bridge on a session: `web` is the browser's leg.
    pub fn set_bridge(&mut self, id: u64, web: Side, bridge: MediaBridge) -> Result<(), RelayError> {
        let s = self.sessions.get_mut(&id).ok_or(RelayError::UnknownSession)?;
        s.bridge = Some((web, Box::new(bridge)));
        if !self.bridged.contains(&id) {
            self.bridged.push(id);
        }
        self.mark_dirty(id);
        Ok(())
    }

    /// The bridge of a session, to change (re-offers).
    pub fn bridge_mut(&mut self, id: u64) -> Option<&mut MediaBridge> {
        self.mark_dirty(id);
        self.sessions.get_mut(&id)?.bridge.as_mut().map(|(_, b)| &mut **b)
    }

    /// The bridge of a session, if it has one.
    pub fn bridge(&self, id: u64) -> Option<&MediaBridge> {
        self.sessions.get(&id)?.bridge.as_ref().map(|(_, b)| &**b)
    }

    /// A datagram for a bridged session.
    fn handle_bridged(&mut self, now: Instant, id: u64, side: Side, on_rtcp_port: bool, src: SocketAddr, pkt: &mut Vec<u8>) {
        let strict = self.cfg.strict_latching;
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Some((web, _)) = s.bridge.as_ref() else { return };
        let web = *web;
        if side == web {
            // ICE, DTLS, SRTP and SRTCP, all on the RTP port (rtcp-mux, BUNDLE).
            if on_rtcp_port {
                return;
            }
            // Only media counts as activity (RFC 7983: RTP/RTCP start with 128..=191); the
            // browser's ICE consent checks (RFC 7675) would keep a dead call alive.
            if pkt.first().is_some_and(|b| (128..=191).contains(b)) {
                s.last_activity = now;
            }
            if let Some((_, b)) = s.bridge.as_mut() {
                b.handle_web(now, src, pkt);
            }
            self.mark_dirty(id);
            return;
        }
        let rtcp = on_rtcp_port || is_rtcp(pkt);
        let arrival = Arrival { now, since: now.saturating_duration_since(s.created), src, rtcp, strict };
        let (l, out) = s.legs(side);
        // The SIP leg's RTCP ends here: the WebRTC leg has its own (str0m's).
        if !Self::receive(l, out, &arrival, pkt) || rtcp {
            return;
        }
        s.last_activity = now;
        if let Some((_, b)) = s.bridge.as_mut() {
            b.handle_sip(now, pkt);
        }
        self.mark_dirty(id);
    }

    /// Next datagram a bridge sends (after [`Self::handle_packet`] returned `None` for a
    /// bridged session, or after [`Self::handle_bridge_timeout`]).
    pub fn poll_output(&mut self) -> Option<Datagram> {
        while let Some(&id) = self.bridge_dirty.last() {
            let Some(s) = self.sessions.get_mut(&id) else {
                self.bridge_dirty.pop();
                continue;
            };
            let Some((web, b)) = s.bridge.as_mut() else {
                self.bridge_dirty.pop();
                continue;
            };
            let web = *web;
            let Some(o) = b.poll_output() else {
                self.bridge_dirty.pop();
                continue;
            };
            let (wl, sl) = match web {
                Side::A => (&mut s.a, &mut s.b),
                Side::B => (&mut s.b, &mut s.a),
            };
            match o {
                BridgeOutput::ToWeb { to, data } => return Some(Datagram { from_port: wl.rtp_port, to, data }),
                BridgeOutput::ToSip(mut data) => {
                    let Some(to) = sl.latched_rtp.or(sl.expected_rtp) else { continue };
                    if let Some(c) = sl.srtp_out.as_deref_mut()
                        && c.protect_rtp(&mut data).is_err()
                    {
                        continue;
                    }
                    return Some(Datagram { from_port: sl.rtp_port, to, data });
                }
            }
        }
        None
    }

    /// When a bridge's timers are next due.
    pub fn poll_bridge_timeout(&self) -> Option<Instant> {
        self.bridged.iter().filter_map(|id| self.sessions.get(id)?.bridge.as_ref()?.1.poll_timeout()).min()
    }

    /// Runs the bridges' due timers (ICE consent, DTLS retransmission, RTCP, pacing).
    pub fn handle_bridge_timeout(&mut self, now: Instant) {
        for &id in &self.bridged {
            let Some((_, b)) = self.sessions.get_mut(&id).and_then(|s| s.bridge.as_mut()) else { continue };
            if b.poll_timeout().is_some_and(|at| at <= now) {
                b.handle_timeout(now);
                // Each bridged session once per pass: no repeat to skip.
                self.bridge_dirty.push(id);
            }
        }
    }

    /// A datagram arrived on relay port `port` from `src`; `pkt` holds it and may be
    /// rewritten in place (SRTP bridging). Returns where it goes, if anywhere.
    pub fn handle_packet(&mut self, now: Instant, port: u16, src: SocketAddr, pkt: &mut Vec<u8>) -> Option<Forward> {
        let &(id, side, on_rtcp_port) = self.by_port.get(&port)?;
        let strict = self.cfg.strict_latching;
        let s = self.sessions.get_mut(&id)?;
        if s.bridge.is_some() {
            self.handle_bridged(now, id, side, on_rtcp_port, src, pkt);
            return None;
        }
        let rtcp = on_rtcp_port || is_rtcp(pkt);
        let arrival = Arrival { now, since: now.saturating_duration_since(s.created), src, rtcp, strict };
        let (l, out) = s.legs(side);
        if !Self::receive(l, out, &arrival, pkt) {
            return None;
        }
        let (to, from_port) = if rtcp {
            (out.latched_rtcp.or(out.expected_rtcp)?, if out.rtcp_mux { out.rtp_port } else { out.rtp_port + 1 })
        } else {
            (out.latched_rtp.or(out.expected_rtp)?, out.rtp_port)
        };
        if let Some(c) = out.srtp_out.as_deref_mut() {
            let r = if rtcp { c.protect_rtcp(pkt) } else { c.protect_rtp(pkt) };
            r.ok()?;
        }
        s.last_activity = now;
        Some(Forward { from_port, to })
    }

    /// What every packet from leg `l` goes through: the latching check, SRTP unprotect,
    /// latching, counters, RFC 3550 sequence/jitter for RTP and RTT bookkeeping for RTCP.
    /// `false`: dropped.
    #[inline]
    fn receive(l: &mut Leg, out: &mut Leg, a: &Arrival, pkt: &mut Vec<u8>) -> bool {
        let latched = if a.rtcp { l.latched_rtcp } else { l.latched_rtp };
        if a.strict && latched.is_some_and(|x| x != a.src) {
            l.stats.foreign_dropped += 1;
            return false;
        }
        if let Some(c) = l.srtp_in.as_deref_mut() {
            let r = if a.rtcp { c.unprotect_rtcp(pkt) } else { c.unprotect_rtp(pkt) };
            if r.is_err() {
                l.stats.srtp_errors += 1;
                return false;
            }
        }
        if latched != Some(a.src) {
            // First packet (or a move when latching is not strict).
            if a.rtcp {
                l.latched_rtcp = Some(a.src);
            } else {
                l.latched_rtp = Some(a.src);
            }
        }
        if a.rtcp {
            l.stats.rtcp_packets += 1;
            Self::observe_rtcp(a.now, l, out, pkt);
        } else {
            l.stats.packets += 1;
            l.stats.bytes += pkt.len() as u64;
            if let Ok(h) = RtpHeader::parse(pkt) {
                l.seq.record(h.sequence);
                let arrival = a.since.as_nanos() as u64 * l.clock_rate as u64 / 1_000_000_000;
                l.jitter.record(arrival, h.timestamp);
            }
        }
        true
    }

    /// RTT bookkeeping (RFC 3550 6.4.1): SRs going towards `out` are remembered; RRs from
    /// `l` that report on an SR we forwarded give the round trip between relay and `l`.
    fn observe_rtcp(now: Instant, l: &mut Leg, out: &mut Leg, pkt: &[u8]) {
        for p in rtcp::packets(pkt) {
            let Ok(p) = p else { break };
            let reports = match p {
                Rtcp::SenderReport { ntp, reports, .. } => {
                    let slot = out.sr_next % SR_MEMORY;
                    out.srs[slot] = (ntp_mid(ntp), Some(now));
                    out.sr_next += 1;
                    reports
                }
                Rtcp::ReceiverReport { reports, .. } => reports,
                _ => continue,
            };
            for rb in reports.iter() {
                if rb.lsr == 0 {
                    continue;
                }
                if let Some((_, Some(at))) = l.srs.iter().find(|(lsr, at)| *lsr == rb.lsr && at.is_some()) {
                    let held = now.saturating_duration_since(*at).as_secs_f64();
                    let rtt = held - rb.dlsr as f64 / 65536.0;
                    if (0.0..10.0).contains(&rtt) {
                        l.rtt_sum += rtt * 1000.0;
                        l.rtt_n += 1;
                    }
                }
            }
        }
    }

    /// Live figures of a session.
    pub fn report(&self, id: u64, now: Instant) -> Option<SessionReport> {
        let s = self.sessions.get(&id)?;
        let (mut from_a, mut from_b) = (s.a.report(), s.b.report());
        let mut webrtc = None;
        if let Some((web, b)) = &s.bridge {
            let w = web_report(b);
            match web {
                Side::A => from_a = w,
                Side::B => from_b = w,
            }
            let st = b.stats;
            webrtc = Some(BridgeReport {
                web_leg: if *web == Side::A { "a" } else { "b" },
                web_codec: b.web_codec().1.encoding_name().to_string(),
                sip_codec: b.sip_codec().encoding_name().to_string(),
                transcoding: b.is_transcoding(),
                to_web_packets: st.to_web_packets,
                to_sip_packets: st.to_sip_packets,
                dtmf_to_web: st.dtmf_to_web,
                dtmf_to_sip: st.dtmf_to_sip,
                dtmf_inband: st.dtmf_inband,
                dropped: st.dropped,
            });
        }
        Some(SessionReport { from_a, from_b, duration_secs: now.saturating_duration_since(s.created).as_secs_f64(), webrtc })
    }

    /// Closes a session and frees its ports (released through `ports`).
    pub fn close(&mut self, id: u64, now: Instant, ports: &mut dyn Ports) -> Option<SessionReport> {
        let r = self.report(id, now);
        let s = self.sessions.remove(&id)?;
        self.bridged.retain(|b| *b != id);
        for p in [s.a.rtp_port, s.b.rtp_port] {
            self.by_port.remove(&p);
            self.by_port.remove(&(p + 1));
            ports.release(p);
            ports.release(p + 1);
            self.free.push_back(p);
        }
        r
    }

    fn timeout_of(&self, s: &Session) -> Instant {
        s.last_activity + if s.held { self.cfg.hold_inactivity } else { self.cfg.inactivity }
    }

    /// When the next session may become inactive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions.values().map(|s| self.timeout_of(s)).min()
    }

    /// Sessions idle for the inactivity time at `now` (the call should be torn down).
    pub fn inactive(&self, now: Instant) -> Vec<u64> {
        self.sessions.iter().filter(|(_, s)| now >= self.timeout_of(s)).map(|(id, _)| *id).collect()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(seq as u32 * 160).to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn remote(s: &str) -> RemoteMedia {
        RemoteMedia { rtp: a(s), rtcp: None, mux: false, clock_rate: 8000, codec: CodecImpairment::G711_PLC }
    }

    #[test]
    fn forwards_both_ways_latches_and_ignores_foreign_sources() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig { ports: 40000..=40007, ..Default::default() });
        let (id, pa, pb) = r.open(t0, &mut NoSockets).unwrap();
        assert_eq!(r.ports_in_use(), 4);
        r.set_remote(id, Side::A, remote("10.0.0.1:5000")).unwrap();
        r.set_remote(id, Side::B, remote("10.0.0.2:6000")).unwrap();
        // A sends from behind NAT (a different address than its SDP): latched there.
        let nat_a = a("198.51.100.7:31000");
        assert_eq!(r.handle_packet(t0, pa, nat_a, &mut rtp(1)), Some(Forward { from_port: pb, to: a("10.0.0.2:6000") }));
        // B answers: goes to A's latched address, from A's port.
        assert_eq!(r.handle_packet(t0, pb, a("10.0.0.2:6000"), &mut rtp(100)), Some(Forward { from_port: pa, to: nat_a }));
        // 10k packets from a foreign source on A's port are dropped and do not move the latch.
        for i in 0..10_000u16 {
            assert_eq!(r.handle_packet(t0, pa, a("203.0.113.66:9999"), &mut rtp(i)), None);
        }
        assert_eq!(r.handle_packet(t0, pb, a("10.0.0.2:6000"), &mut rtp(101)), Some(Forward { from_port: pa, to: nat_a }));
        // RTCP on the odd port goes out of the other leg's RTCP port.
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 7];
        assert_eq!(
            r.handle_packet(t0, pa + 1, a("198.51.100.7:31001"), &mut rr.to_vec()),
            Some(Forward { from_port: pb + 1, to: a("10.0.0.2:6001") })
        );
        let rep = r.close(id, t0 + Duration::from_secs(1), &mut NoSockets).unwrap();
        assert_eq!(rep.from_a.packets, 1);
        assert_eq!(rep.from_a.foreign_dropped, 10_000);
        assert_eq!(rep.from_b.packets, 2);
        assert_eq!(r.ports_in_use(), 0);
        assert_eq!(r.sessions(), 0);
    }

    #[test]
    fn loss_and_quality_per_direction() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig::default());
        let (id, pa, _) = r.open(t0, &mut NoSockets).unwrap();
        r.set_remote(id, Side::B, remote("10.0.0.2:6000")).unwrap();
        for i in 0..1000u16 {
            if i % 20 == 7 {
                continue; // 5% lost
            }
            let now = t0 + Duration::from_millis(20 * i as u64);
            r.handle_packet(now, pa, a("10.0.0.1:5000"), &mut rtp(i));
        }
        let rep = r.report(id, t0 + Duration::from_secs(20)).unwrap();
        assert!((rep.from_a.loss_pct - 5.0).abs() < 0.2, "{}", rep.from_a.loss_pct);
        assert!((rep.from_a.mos - 3.92).abs() < 0.05, "{}", rep.from_a.mos);
        assert!(rep.from_a.jitter_ms < 0.5);
    }

    #[test]
    fn ports_run_out_cleanly_and_inactivity_is_reported() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig { ports: 40000..=40003, inactivity: Duration::from_secs(30), ..Default::default() });
        let (id, _, _) = r.open(t0, &mut NoSockets).unwrap();
        assert_eq!(r.open(t0, &mut NoSockets), Err(RelayError::NoPorts));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        assert!(r.inactive(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(r.inactive(t0 + Duration::from_secs(30)), vec![id]);
        r.close(id, t0, &mut NoSockets);
        assert!(r.open(t0, &mut NoSockets).is_ok(), "ports are reusable after close");
    }

    #[test]
    fn rtt_from_a_forwarded_sr_and_the_rr_that_answers_it() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig { ports: 40000..=40007, ..Default::default() });
        let (id, pa, pb) = r.open(t0, &mut NoSockets).unwrap();
        r.set_remote(id, Side::A, remote("10.0.0.1:5000")).unwrap();
        r.set_remote(id, Side::B, remote("10.0.0.2:6000")).unwrap();
        // B sends an SR (NTP 0x0001_0002_0003_0000): forwarded towards A.
        let mut sr = vec![0u8; 64];
        let n = rtcp::write_sr(&mut sr, 0xb, 0x0001_0002_0003_0000, 0, 0, 0, &[]);
        sr.truncate(n);
        assert!(r.handle_packet(t0, pb + 1, a("10.0.0.2:6001"), &mut sr).is_some());
        // A answers 80 ms later with an RR whose LSR is that SR and DLSR 50 ms: the round
        // trip between relay and A is 30 ms.
        let rb = rtcp::ReportBlock {
            ssrc: 0xb,
            fraction_lost: 0,
            cumulative_lost: 0,
            highest_seq: 0,
            jitter: 0,
            lsr: 0x0002_0003,
            dlsr: (0.050 * 65536.0) as u32,
        };
        let mut rr = vec![0u8; 64];
        let n = rtcp::write_rr(&mut rr, 0xa, &[rb]);
        rr.truncate(n);
        assert!(r.handle_packet(t0 + Duration::from_millis(80), pa + 1, a("10.0.0.1:5001"), &mut rr).is_some());
        let rep = r.report(id, t0 + Duration::from_secs(1)).unwrap();
        let rtt = rep.from_a.rtt_ms.unwrap();
        assert!((rtt - 30.0).abs() < 0.1, "{rtt}");
        assert_eq!(rep.from_b.rtt_ms, None);
    }

    #[test]
    fn released_ports_are_reused_last() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig { ports: 40000..=40011, ..Default::default() });
        let (id, pa, pb) = r.open(t0, &mut NoSockets).unwrap();
        r.close(id, t0, &mut NoSockets);
        let (_, qa, qb) = r.open(t0, &mut NoSockets).unwrap();
        assert!(![pa, pb].contains(&qa) && ![pa, pb].contains(&qb), "fresh ports first: {pa} {pb} then {qa} {qb}");
        assert_eq!(r.pairs_free(), 4);
    }
}
