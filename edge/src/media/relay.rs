//! The media relay core (sans-IO): sessions of two legs, relay ports from a range,
//! symmetric-RTP latching (each leg latches to the source of its first packet and, when
//! strict, ignores other sources afterwards), forwarding decisions for RTP and RTCP
//! (rtcp-mux aware), per-direction counters and quality (RFC 3550 loss and jitter), and
//! inactivity detection. The runtime owns the sockets and asks `handle_packet` where a
//! datagram goes; nothing here allocates per packet.

use codec::quality::{CodecImpairment, EModelInput, Jitter, SeqTracker, mos};
use codec::rtp::{RtpHeader, is_rtcp};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP ports the relay may use (RTP on even ports, RTCP on the next odd one).
    pub ports: RangeInclusive<u16>,
    /// After latching, drop packets from any other source (protects a call from injected
    /// or stray traffic).
    pub strict_latching: bool,
    /// A session with no packet in either direction for this long is reported inactive.
    pub inactivity: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig { ports: 30000..=39999, strict_latching: true, inactivity: Duration::from_secs(60) }
    }
}

/// Which leg of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectionStats {
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    /// Packets from a foreign source dropped after latching.
    pub foreign_dropped: u64,
    pub loss_pct: f64,
    pub jitter_ms: f64,
    pub mos: f64,
}

#[derive(Debug, Default)]
struct Leg {
    rtp_port: u16,
    /// Where to send to this leg before it has sent anything (from its SDP).
    expected_rtp: Option<SocketAddr>,
    expected_rtcp: Option<SocketAddr>,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    rtcp_mux: bool,
    clock_rate: u32,
    seq: SeqTracker,
    jitter: Jitter,
    stats: DirectionStats,
}

impl Leg {
    fn report(&self) -> DirectionStats {
        let mut s = self.stats.clone();
        s.loss_pct = self.seq.loss_pct();
        s.jitter_ms = self.jitter.ms(self.clock_rate.max(1));
        s.mos = mos(EModelInput {
            codec: CodecImpairment::G711_PLC,
            loss_pct: s.loss_pct,
            burst_ratio: 1.0,
            delay_ms: 20.0 + 2.0 * s.jitter_ms,
        });
        s
    }
}

struct Session {
    a: Leg,
    b: Leg,
    created: Instant,
    last_activity: Instant,
}

impl Session {
    fn leg(&mut self, s: Side) -> &mut Leg {
        match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }
}

/// Where the runtime sends a relayed datagram: out of local port `from_port` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub from_port: u16,
    pub to: SocketAddr,
}

/// End-of-session figures (for the call record).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionReport {
    /// Received from A (sent towards B), and received from B.
    pub from_a: DirectionStats,
    pub from_b: DirectionStats,
    pub duration: Duration,
}

/// All relay sessions of one runtime.
pub struct Relay {
    cfg: RelayConfig,
    free: BTreeSet<u16>,
    by_port: HashMap<u16, (u64, Side, bool)>,
    sessions: HashMap<u64, Session>,
    next: u64,
}

impl Relay {
    pub fn new(cfg: RelayConfig) -> Relay {
        let start = cfg.ports.start() + (cfg.ports.start() % 2);
        // Even RTP ports whose RTCP port (p + 1) is still inside the range.
        let free = (start..*cfg.ports.end()).step_by(2).collect();
        Relay { cfg, free, by_port: HashMap::new(), sessions: HashMap::new(), next: 0 }
    }

    /// Ports (RTP + RTCP) held by sessions.
    pub fn ports_in_use(&self) -> usize {
        self.by_port.len()
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    fn take_pair(&mut self) -> Option<u16> {
        let p = *self.free.iter().next()?;
        self.free.remove(&p);
        Some(p)
    }

    /// Opens a session: two RTP/RTCP port pairs. Returns (session, A's RTP port, B's RTP port).
    pub fn open(&mut self, now: Instant) -> Result<(u64, u16, u16), RelayError> {
        let pa = self.take_pair().ok_or(RelayError::NoPorts)?;
        let Some(pb) = self.take_pair() else {
            self.free.insert(pa);
            return Err(RelayError::NoPorts);
        };
        self.next += 1;
        let id = self.next;
        for (p, side) in [(pa, Side::A), (pb, Side::B)] {
            self.by_port.insert(p, (id, side, false));
            self.by_port.insert(p + 1, (id, side, true));
        }
        let leg = |p| Leg { rtp_port: p, clock_rate: 8000, ..Default::default() };
        self.sessions.insert(id, Session { a: leg(pa), b: leg(pb), created: now, last_activity: now });
        Ok((id, pa, pb))
    }

    /// Sets where a leg is expected (from its SDP): RTP address, RTCP address, rtcp-mux,
    /// clock rate. Latching resets when the address changes (re-INVITE to a new endpoint).
    pub fn set_remote(
        &mut self,
        id: u64,
        side: Side,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
        mux: bool,
        clock_rate: u32,
    ) -> Result<(), RelayError> {
        let s = self.sessions.get_mut(&id).ok_or(RelayError::UnknownSession)?;
        let l = s.leg(side);
        if l.expected_rtp != Some(rtp) {
            l.latched_rtp = None;
            l.latched_rtcp = None;
        }
        l.expected_rtp = Some(rtp);
        l.expected_rtcp = rtcp.or(Some(SocketAddr::new(rtp.ip(), if mux { rtp.port() } else { rtp.port().wrapping_add(1) })));
        l.rtcp_mux = mux;
        l.clock_rate = clock_rate;
        Ok(())
    }

    /// A datagram arrived on relay port `port` from `src`: where it goes, if anywhere.
    pub fn handle_packet(&mut self, now: Instant, port: u16, src: SocketAddr, data: &[u8]) -> Option<Forward> {
        let &(id, side, on_rtcp_port) = self.by_port.get(&port)?;
        let strict = self.cfg.strict_latching;
        let s = self.sessions.get_mut(&id)?;
        let rtcp = on_rtcp_port || is_rtcp(data);
        let since = now.saturating_duration_since(s.created).as_secs_f64();
        {
            let l = s.leg(side);
            let latched = if rtcp { &mut l.latched_rtcp } else { &mut l.latched_rtp };
            match latched {
                None => *latched = Some(src),
                Some(a) if *a != src => {
                    if strict {
                        l.stats.foreign_dropped += 1;
                        return None;
                    }
                    *latched = Some(src);
                }
                _ => {}
            }
            if rtcp {
                l.stats.rtcp_packets += 1;
            } else {
                l.stats.packets += 1;
                l.stats.bytes += data.len() as u64;
                if let Ok(h) = RtpHeader::parse(data) {
                    l.seq.record(h.sequence);
                    let arrival = (since * l.clock_rate as f64) as u64;
                    l.jitter.record(arrival, h.timestamp);
                }
            }
        }
        s.last_activity = now;
        let out = s.leg(side.other());
        let (to, from_port) = if rtcp {
            let to = out.latched_rtcp.or(out.expected_rtcp)?;
            (to, if out.rtcp_mux { out.rtp_port } else { out.rtp_port + 1 })
        } else {
            (out.latched_rtp.or(out.expected_rtp)?, out.rtp_port)
        };
        Some(Forward { from_port, to })
    }

    /// Live figures of a session.
    pub fn report(&self, id: u64, now: Instant) -> Option<SessionReport> {
        let s = self.sessions.get(&id)?;
        Some(SessionReport { from_a: s.a.report(), from_b: s.b.report(), duration: now.saturating_duration_since(s.created) })
    }

    /// Closes a session and frees its ports.
    pub fn close(&mut self, id: u64, now: Instant) -> Option<SessionReport> {
        let r = self.report(id, now);
        let s = self.sessions.remove(&id)?;
        for p in [s.a.rtp_port, s.b.rtp_port] {
            self.by_port.remove(&p);
            self.by_port.remove(&(p + 1));
            self.free.insert(p);
        }
        r
    }

    /// When the next session may become inactive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions.values().map(|s| s.last_activity + self.cfg.inactivity).min()
    }

    /// Sessions idle for the inactivity time at `now` (the call should be torn down).
    pub fn inactive(&self, now: Instant) -> Vec<u64> {
        self.sessions.iter().filter(|(_, s)| now >= s.last_activity + self.cfg.inactivity).map(|(id, _)| *id).collect()
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

    #[test]
    fn forwards_both_ways_latches_and_ignores_foreign_sources() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig { ports: 40000..=40007, ..Default::default() });
        let (id, pa, pb) = r.open(t0).unwrap();
        assert_eq!(r.ports_in_use(), 4);
        r.set_remote(id, Side::A, a("10.0.0.1:5000"), None, false, 8000).unwrap();
        r.set_remote(id, Side::B, a("10.0.0.2:6000"), None, false, 8000).unwrap();
        // A sends from behind NAT (a different address than its SDP): latched there.
        let nat_a = a("198.51.100.7:31000");
        assert_eq!(r.handle_packet(t0, pa, nat_a, &rtp(1)), Some(Forward { from_port: pb, to: a("10.0.0.2:6000") }));
        // B answers: goes to A's latched address, from A's port.
        assert_eq!(r.handle_packet(t0, pb, a("10.0.0.2:6000"), &rtp(100)), Some(Forward { from_port: pa, to: nat_a }));
        // 10k packets from a foreign source on A's port are dropped and do not move the latch.
        for i in 0..10_000u16 {
            assert_eq!(r.handle_packet(t0, pa, a("203.0.113.66:9999"), &rtp(i)), None);
        }
        assert_eq!(r.handle_packet(t0, pb, a("10.0.0.2:6000"), &rtp(101)), Some(Forward { from_port: pa, to: nat_a }));
        // RTCP on the odd port goes out of the other leg's RTCP port.
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 7];
        assert_eq!(r.handle_packet(t0, pa + 1, a("198.51.100.7:31001"), &rr), Some(Forward { from_port: pb + 1, to: a("10.0.0.2:6001") }));
        let rep = r.close(id, t0 + Duration::from_secs(1)).unwrap();
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
        let (id, pa, _) = r.open(t0).unwrap();
        r.set_remote(id, Side::B, a("10.0.0.2:6000"), None, false, 8000).unwrap();
        for i in 0..1000u16 {
            if i % 20 == 7 {
                continue; // 5% lost
            }
            let now = t0 + Duration::from_millis(20 * i as u64);
            r.handle_packet(now, pa, a("10.0.0.1:5000"), &rtp(i));
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
        let (id, _, _) = r.open(t0).unwrap();
        assert_eq!(r.open(t0), Err(RelayError::NoPorts));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        assert!(r.inactive(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(r.inactive(t0 + Duration::from_secs(30)), vec![id]);
        r.close(id, t0);
        assert!(r.open(t0).is_ok(), "ports are reusable after close");
    }
}
