//! The SFU core (sans-IO): rooms of participants, one str0m `Rtc` each (ICE-lite,
//! DTLS-SRTP), all on one UDP address and told apart by `Rtc::accepts` (ICE ufrag, then
//! the 5-tuple). WHIP (RFC 9725) publishers send into a room; WHEP viewers receive it.
//! Media is forwarded frame by frame (str0m depacketizes and packetizes again, so each
//! viewer gets continuous sequence numbers, its own NACK/RTX answers and TWCC); key-frame
//! requests from viewers reach the publisher at most once per second per track.
//!
//! Driven like str0m: `handle_*(now, ...)`, then `poll_transmit` / `poll_timeout`; it
//! never reads the clock or touches a socket (the runtime is `rt.rs`).

use crate::keyframe::KeyframeRequests;
use crate::room::{ClientType, ParticipantId, Room, RoomConfig, RoomError, RoomEvent};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

/// Why an offer or request was refused (the HTTP layer maps these to 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfuError {
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    #[error("unsupported offer: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Room(#[from] RoomError),
    #[error("no such participant")]
    NoSuchParticipant,
}

/// SFU settings.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The address the media socket listens on (our ICE host candidate).
    pub media_addr: SocketAddr,
    pub room: RoomConfig,
}

/// Whether a peer sends into the room or watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// WHIP: publishes its tracks.
    Publisher,
    /// WHEP: receives the room's first publisher.
    Viewer,
}

#[derive(Debug)]
struct Track {
    mid: Mid,
    kind: MediaKind,
}

struct Peer {
    rtc: Rtc,
    room: String,
    kind: PeerKind,
    /// Tracks it sends to us.
    incoming: Vec<Track>,
    /// Tracks we send to it.
    outgoing: Vec<Track>,
    connected: bool,
    /// When str0m wants `handle_timeout` next.
    next: Option<Instant>,
}

/// A datagram to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: Vec<u8>,
}

/// Counters the runtime turns into metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct SfuStats {
    pub frames_in: u64,
    pub frames_forwarded: u64,
}

/// Every room and peer of this SFU.
pub struct Sfu {
    cfg: SfuConfig,
    rooms: HashMap<String, Room>,
    peers: HashMap<ParticipantId, Peer>,
    next_id: u64,
    out: VecDeque<Transmit>,
    keyframes: KeyframeRequests<(ParticipantId, Mid)>,
    events: VecDeque<(String, RoomEvent)>,
    stats: SfuStats,
}

impl Sfu {
    pub fn new(cfg: SfuConfig) -> Sfu {
        // DTLS and SRTP through aws-lc-rs (as rustls); a no-op once installed.
        str0m::crypto::from_feature_flags().install_process_default();
        Sfu {
            cfg,
            rooms: HashMap::new(),
            peers: HashMap::new(),
            next_id: 1,
            out: VecDeque::new(),
            keyframes: KeyframeRequests::new(Duration::from_secs(1)),
            events: VecDeque::new(),
            stats: SfuStats::default(),
        }
    }

    /// Rooms with their members.
    pub fn rooms(&self) -> impl Iterator<Item = (&String, &Room)> {
        self.rooms.iter()
    }

    /// Participants in all rooms.
    pub fn participant_count(&self) -> usize {
        self.peers.len()
    }

    pub fn take_stats(&mut self) -> SfuStats {
        std::mem::take(&mut self.stats)
    }

    /// Room events (joined, left, ...) with their room.
    pub fn poll_event(&mut self) -> Option<(String, RoomEvent)> {
        self.events.pop_front()
    }

    fn new_peer(&mut self, now: Instant, room: &str, offer: &str, kind: PeerKind) -> Result<(ParticipantId, String), SfuError> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadOffer(e.to_string()))?;
        let mut rtc = Rtc::builder().set_ice_lite(true).build(now);
        let cand = Candidate::host(self.cfg.media_addr, "udp").map_err(|e| SfuError::Unsupported(e.to_string()))?;
        rtc.add_local_candidate(cand);
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| SfuError::Unsupported(e.to_string()))?;
        let id = ParticipantId(self.next_id);
        let r = self.rooms.entry(room.to_string()).or_insert_with(|| Room::new(self.cfg.room));
        let name = match kind {
            PeerKind::Publisher => format!("whip-{}", id.0),
            PeerKind::Viewer => format!("whep-{}", id.0),
        };
        if let Err(e) = r.handle_join(now, id, &name, ClientType::Web) {
            if r.is_empty() {
                self.rooms.remove(room);
            }
            return Err(e.into());
        }
        self.next_id += 1;
        self.peers.insert(id, Peer { rtc, room: room.to_string(), kind, incoming: vec![], outgoing: vec![], connected: false, next: None });
        self.drain_room_events(room);
        self.drive(now);
        Ok((id, answer.to_sdp_string()))
    }

    /// A WHIP offer: a new publisher in `room`. Returns its id and the SDP answer.
    pub fn handle_whip(&mut self, now: Instant, room: &str, offer: &str) -> Result<(ParticipantId, String), SfuError> {
        if !offer.lines().any(|l| l.starts_with("m=audio") || l.starts_with("m=video")) {
            return Err(SfuError::Unsupported("the offer has no audio or video".into()));
        }
        self.new_peer(now, room, offer, PeerKind::Publisher)
    }

    /// A WHEP offer: a new viewer of `room`.
    pub fn handle_whep(&mut self, now: Instant, room: &str, offer: &str) -> Result<(ParticipantId, String), SfuError> {
        if !offer.lines().any(|l| l.starts_with("m=audio") || l.starts_with("m=video")) {
            return Err(SfuError::Unsupported("the offer has no audio or video".into()));
        }
        self.new_peer(now, room, offer, PeerKind::Viewer)
    }

    /// A peer leaves (WHIP/WHEP DELETE).
    pub fn handle_leave(&mut self, now: Instant, id: ParticipantId) -> Result<(), SfuError> {
        let mut p = self.peers.remove(&id).ok_or(SfuError::NoSuchParticipant)?;
        p.rtc.disconnect();
        if let Some(r) = self.rooms.get_mut(&p.room) {
            let _ = r.handle_leave(id);
        }
        self.keyframes.forget_where(|(pid, _)| *pid == id);
        let room = p.room.clone();
        self.drain_room_events(&room);
        self.drive(now);
        Ok(())
    }

    /// An operator removes participant `id` from `room` (its connection ends; the others
    /// see it leave as removed).
    pub fn handle_remove(&mut self, now: Instant, room: &str, id: ParticipantId) -> Result<(), SfuError> {
        let r = self.rooms.get_mut(room).ok_or(SfuError::NoSuchParticipant)?;
        r.handle_evict(id)?;
        self.keyframes.forget_where(|(pid, _)| *pid == id);
        self.drain_room_events(room);
        self.drive(now);
        Ok(())
    }

    /// A datagram on the media socket.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else { return };
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination, contents });
        let Some((&id, _)) = self.peers.iter().find(|(_, p)| p.rtc.accepts(&input)) else {
            tracing::trace!(%source, "datagram for no participant");
            return;
        };
        if let Some(p) = self.peers.get_mut(&id) {
            if let Err(e) = p.rtc.handle_input(input) {
                tracing::debug!(participant = id.0, error = %e, "participant input failed: disconnecting");
                p.rtc.disconnect();
            }
            let room = p.room.clone();
            if let Some(r) = self.rooms.get_mut(&room) {
                r.handle_activity(now, id);
            }
        }
        self.drive(now);
    }

    /// Time passes.
    pub fn handle_timeout(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            if p.rtc.is_alive() {
                let _ = p.rtc.handle_input(Input::Timeout(now));
            }
        }
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for r in &rooms {
            if let Some(room) = self.rooms.get_mut(r) {
                room.handle_timeout(now);
            }
            self.drain_room_events(r);
        }
        self.drive(now);
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rooms = self.rooms.values().filter_map(|r| r.poll_timeout());
        rooms.chain(self.peers.values().filter_map(|p| p.next)).min()
    }

    /// Room events: departures (timeouts, removals) end the peer's connection.
    fn drain_room_events(&mut self, room: &str) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let mut gone = vec![];
        while let Some(e) = r.poll_event() {
            if let RoomEvent::Left { id, .. } = &e {
                gone.push(*id);
            }
            self.events.push_back((room.to_string(), e));
        }
        let empty = r.is_empty();
        for id in gone {
            if let Some(mut p) = self.peers.remove(&id) {
                p.rtc.disconnect();
            }
        }
        if empty {
            self.rooms.remove(room);
        }
    }

    /// Polls every peer until it has nothing more, forwarding media between them.
    fn drive(&mut self, now: Instant) {
        let mut media: Vec<(ParticipantId, MediaData)> = vec![];
        let mut kf_asks: Vec<(ParticipantId, Mid)> = vec![];
        let mut dead = vec![];
        for _round in 0..4 {
            let ids: Vec<ParticipantId> = self.peers.keys().copied().collect();
            for id in &ids {
                let Some(p) = self.peers.get_mut(id) else { continue };
                loop {
                    if !p.rtc.is_alive() {
                        dead.push(*id);
                        break;
                    }
                    match p.rtc.poll_output() {
                        Ok(Output::Timeout(at)) => {
                            p.next = Some(at);
                            break;
                        }
                        Ok(Output::Transmit(t)) => {
                            self.out.push_back(Transmit { source: t.source, destination: t.destination, data: t.contents.to_vec() })
                        }
                        Ok(Output::Event(e)) => match e {
                            Event::Connected => p.connected = true,
                            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => p.rtc.disconnect(),
                            Event::MediaAdded(m) => {
                                let t = Track { mid: m.mid, kind: m.kind };
                                match m.direction {
                                    Direction::RecvOnly => p.incoming.push(t),
                                    Direction::SendOnly => p.outgoing.push(t),
                                    Direction::SendRecv => {
                                        p.incoming.push(Track { mid: m.mid, kind: m.kind });
                                        p.outgoing.push(t)
                                    }
                                    Direction::Inactive => {}
                                }
                                if p.kind == PeerKind::Viewer && m.kind == MediaKind::Video {
                                    kf_asks.push((*id, m.mid));
                                }
                            }
                            Event::MediaData(d) => media.push((*id, d)),
                            Event::KeyframeRequest(k) => kf_asks.push((*id, k.mid)),
                            _ => {}
                        },
                        Err(e) => {
                            tracing::debug!(participant = id.0, error = %e, "participant failed: disconnecting");
                            p.rtc.disconnect();
                        }
                    }
                }
            }
            if media.is_empty() && kf_asks.is_empty() {
                break;
            }
            for (from, d) in media.drain(..) {
                self.forward(from, &d);
            }
            for (viewer, mid) in kf_asks.drain(..) {
                self.ask_keyframe(now, viewer, mid);
            }
        }
        dead.sort();
        dead.dedup();
        for id in dead {
            if let Some(p) = self.peers.remove(&id) {
                tracing::info!(participant = id.0, room = p.room, "participant gone");
                if let Some(r) = self.rooms.get_mut(&p.room) {
                    let _ = r.handle_leave(id);
                }
                let room = p.room.clone();
                self.drain_room_events(&room);
            }
        }
    }

    /// The publisher a viewer of `room` receives: the first one that joined.
    fn source_of(&self, room: &str) -> Option<ParticipantId> {
        let r = self.rooms.get(room)?;
        r.members().iter().map(|m| m.id).find(|id| self.peers.get(id).is_some_and(|p| p.kind == PeerKind::Publisher))
    }

    /// One frame from publisher `from`: to every viewer of its room (same kind of track).
    fn forward(&mut self, from: ParticipantId, d: &MediaData) {
        self.stats.frames_in += 1;
        let Some(src) = self.peers.get(&from) else { return };
        let room = src.room.clone();
        let Some(kind) = src.incoming.iter().find(|t| t.mid == d.mid).map(|t| t.kind) else { return };
        if self.source_of(&room) != Some(from) {
            return;
        }
        for p in self.peers.values_mut().filter(|p| p.room == room && p.kind == PeerKind::Viewer && p.connected) {
            let Some(mid) = p.outgoing.iter().find(|t| t.kind == kind).map(|t| t.mid) else { continue };
            let Some(writer) = p.rtc.writer(mid) else { continue };
            let Some(pt) = writer.match_params(d.params) else { continue };
            if writer.write(pt, d.network_time, d.time, d.data.clone()).is_ok() {
                self.stats.frames_forwarded += 1;
            }
        }
    }

    /// A viewer needs a key frame of `mid` (a new viewer, or its PLI/FIR): ask the
    /// publisher, at most once a second per publisher track.
    fn ask_keyframe(&mut self, now: Instant, viewer: ParticipantId, mid: Mid) {
        let Some(v) = self.peers.get(&viewer) else { return };
        let (room, kind) = match v.kind {
            // A publisher asked for a key frame of what it receives: nothing, it receives nothing.
            PeerKind::Publisher => return,
            PeerKind::Viewer => (v.room.clone(), v.outgoing.iter().find(|t| t.mid == mid).map(|t| t.kind)),
        };
        let (Some(kind), Some(src)) = (kind, self.source_of(&room)) else { return };
        let Some(p) = self.peers.get_mut(&src) else { return };
        let Some(src_mid) = p.incoming.iter().find(|t| t.kind == kind).map(|t| t.mid) else { return };
        if !self.keyframes.request(now, (src, src_mid), 0) {
            return;
        }
        if let Some(mut w) = p.rtc.writer(src_mid) {
            let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
        }
    }
}
