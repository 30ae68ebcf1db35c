//! The SFU core (sans-IO): rooms of participants, one str0m `Rtc` each (ICE-lite,
//! DTLS-SRTP), all on one UDP address and told apart by `Rtc::accepts` (ICE ufrag, then
//! the 5-tuple). WHIP (RFC 9725) publishers send into a room; WHEP viewers receive it.
//! Media is forwarded frame by frame (str0m depacketizes and packetizes again, so each
//! viewer gets continuous sequence numbers, its own NACK/RTX answers and TWCC); key-frame
//! requests from viewers reach the publisher at most once per second per track.
//!
//! Driven like str0m: `handle_*(now, ...)`, then `poll_transmit` / `poll_timeout`; it
//! never reads the clock or touches a socket (the runtime is `rt.rs`).

use crate::forward::{Layer, Packet, Selector, Verdict, choose_layer, wanted_layers};
use crate::keyframe::KeyframeRequests;
use crate::mixer::{Decoder, Encoder, FRAME, Mix, Pcm, PhoneCodec};
use crate::room::{ClientType, ParticipantId, Room, RoomConfig, RoomError, RoomEvent};
use crate::speaker::{SpeakerConfig, Speakers};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
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
    /// Each member receives the video of the `last_n` most recent speakers.
    pub last_n: usize,
    /// In rooms larger than `all_audio_up_to`, only the `audio_n` most recent speakers
    /// are heard.
    pub audio_n: usize,
    pub all_audio_up_to: usize,
    /// ICE-TCP (RFC 6544): a passive TCP host candidate at this address too, for clients
    /// whose networks block UDP (framed as RFC 4571 by the runtime). `None`: UDP only.
    pub tcp_addr: Option<SocketAddr>,
}

impl SfuConfig {
    /// Defaults for a media address: last-N 25, 3 voices above 10 participants, UDP only.
    pub fn new(media_addr: SocketAddr, room: RoomConfig) -> SfuConfig {
        SfuConfig { media_addr, room, last_n: 25, audio_n: 3, all_audio_up_to: 10, tcp_addr: None }
    }
}

/// Whether a peer sends into the room or watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// WHIP: publishes its tracks.
    Publisher,
    /// WHEP: receives the room's first publisher.
    Viewer,
    /// Room protocol (WebSocket): publishes its tracks and receives everyone else's,
    /// the SFU offering a new transceiver for each new remote track.
    Member,
}

/// A message for a room-protocol member (sent over its WebSocket).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Signal {
    /// An SDP offer from the SFU (new subscription slots: sendonly m-lines); `tracks` maps
    /// each new mid to the participant whose track it carries (`null`: none yet).
    Offer { sdp: String, tracks: Vec<(String, Option<u64>)> },
    /// The participant each of the member's slots carries now (`null`: none), sent when
    /// the speaking order, a join or a departure moves tracks between slots.
    Slots { map: Vec<(String, Option<u64>)> },
    /// The answer to the member's offer.
    Answer { sdp: String },
    /// Something happened in the room.
    Event { event: RoomEvent },
    /// A request was refused.
    Error { reason: String },
    /// The member's connection ends (removed, timed out).
    Closed { reason: String },
    /// Simulcast layers of the member's track `mid` that somebody watches: the member
    /// pauses the others (`RTCRtpSender.setParameters`, `encodings[i].active`).
    Layers { mid: String, active: Vec<String> },
}

/// What a member asks of the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Admit(ParticipantId),
    Reject(ParticipantId),
    Remove(ParticipantId),
    MakeModerator(ParticipantId),
    State {
        muted: bool,
        video: bool,
        hand_raised: bool,
    },
    /// The largest video height the member shows (its tile size): simulcast layers above
    /// it are not sent to it. 0: it shows no video.
    VideoSize {
        height: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// To be added in the SFU's next offer.
    ToOpen,
    /// In an offer waiting for the member's answer.
    Negotiating(Mid),
    Open(Mid),
}

/// A subscription slot: one sendonly transceiver of a member that carries one remote track
/// at a time. A member has as many as it needs at once (last-N videos, heard voices), never
/// one per participant of the room, so a 100-person room is not a 200 m-line session
/// renegotiated at every join; when the speaking order changes, slots change source
/// (`Signal::Slots`) without any SDP. Slots are never stopped (RFC 8829 5.2.2 would leave
/// a recyclable m-line behind anyway).
#[derive(Debug, Clone)]
struct Slot {
    kind: MediaKind,
    state: SlotState,
    /// The remote track it carries now (publisher, its mid).
    source: Option<(ParticipantId, Mid)>,
    /// Layer choice and timestamp rewriting: a change of layer or of source continues the
    /// stream's timeline (advanced by the wall-clock gap) at a key frame.
    sel: Selector,
    /// RTP mode: the last output sequence number, extended (str0m takes 64-bit ones).
    seq_ext: Option<u64>,
}

impl Slot {
    fn new(kind: MediaKind, source: (ParticipantId, Mid)) -> Slot {
        let clock = if kind == MediaKind::Audio { 48_000 } else { 90_000 };
        Slot { kind, state: SlotState::ToOpen, source: Some(source), sel: Selector::new(clock), seq_ext: None }
    }

    fn mid(&self) -> Option<Mid> {
        match self.state {
            SlotState::ToOpen => None,
            SlotState::Negotiating(m) | SlotState::Open(m) => Some(m),
        }
    }

    /// Carries `source` from now on (its first frame sent is a key frame).
    fn set_source(&mut self, source: Option<(ParticipantId, Mid)>) {
        self.source = source;
        self.sel.restart();
    }

    /// The 64-bit form of an output sequence number (continuing across 16-bit wraps).
    fn extend_seq(&mut self, seq: u16) -> u64 {
        let out = match self.seq_ext {
            Some(last) => last.wrapping_add_signed(seq.wrapping_sub(last as u16) as i16 as i64),
            None => seq as u64,
        };
        if self.seq_ext.is_none_or(|l| out > l) {
            self.seq_ext = Some(out);
        }
        out
    }
}

#[derive(Debug)]
struct Track {
    mid: Mid,
    kind: MediaKind,
    /// Bytes this second and bit/s last second (video without simulcast: its cost for a
    /// subscriber's bandwidth).
    bytes: u64,
    bps: u64,
}

struct Peer {
    rtc: Rtc,
    /// Shared, so the per-packet path takes it without allocating.
    room: std::sync::Arc<str>,
    kind: PeerKind,
    /// Tracks it sends to us.
    incoming: Vec<Track>,
    /// Tracks we send to it.
    outgoing: Vec<Track>,
    connected: bool,
    /// When str0m wants `handle_timeout` next.
    next: Option<Instant>,
    /// Members: subscription slots and the offer waiting for its answer.
    outs: Vec<Slot>,
    pending: Option<SdpPendingOffer>,
    /// Members: the first offer was accepted.
    negotiated: bool,
    /// Per (mid, direction out?) quality.
    quality: HashMap<(Mid, bool), QualityState>,
    /// Publishing: simulcast layers of its video tracks.
    simulcast: HashMap<Mid, SimLayers>,
    /// Subscribing: str0m's TWCC/GCC estimate of the bandwidth towards it (bit/s).
    bwe_bps: Option<u64>,
    /// Subscribing: the largest video it shows (`Action::VideoSize`).
    max_height: u16,
    /// Subscribing: how many videos its bandwidth estimate carries at the lowest layer
    /// (its last-N is cut to this).
    video_cap: VideoCap,
    /// Subscribing: the highest fraction lost its receiver reports gave for a video since
    /// the last allocation pass (RFC 3550 6.4.1), the evidence that a queue overflows.
    video_loss: f32,
    /// Subscribing: how many video slots carry a source (last-N), for the budget per video.
    videos: usize,
    /// Members: when the SFU last sent an offer.
    offered_at: Option<Instant>,
    /// Members: `outs` has slots to open (set where they are added, so `negotiate` and
    /// `poll_timeout` need not scan every member's slots per datagram).
    outs_changed: bool,
    /// Members: a negotiated slot changed source since the last `Signal::Slots`.
    slots_changed: bool,
}

/// Shortest time between two SFU offers to one member, per 10 participants in its room
/// (each offer and answer is an SDP of every remote track: in large rooms during a join
/// storm, fewer and larger renegotiations).
const RENEGOTIATE_EVERY: Duration = Duration::from_millis(500);

/// Bandwidth allocation never cuts a subscriber below this many videos (a small meeting
/// keeps everyone's video while the estimate ramps up).
const MIN_VIDEOS: usize = 4;

fn renegotiate_every(room_size: usize) -> Duration {
    RENEGOTIATE_EVERY * (room_size / 10).max(1) as u32
}

/// The simulcast layers of one published video track: rids from its SDP, ranked lowest
/// first by measured bitrate once known.
#[derive(Debug, Default)]
struct SimLayers {
    rids: Vec<Rid>,
    /// Per rid: bytes this second, bit/s last second, height from the latest key frame (VP8
    /// frame header or H.264 SPS).
    stats: HashMap<Rid, (u64, u64, u16)>,
    /// Layers somebody watches, as last told to the publisher.
    active: Vec<bool>,
    /// `rids` is in quality order: by the heights of their key frames as soon as all
    /// are known (normally before anyone subscribes), else by bitrate after 3 s.
    ranked: bool,
    passes: u32,
    /// `layers()` as of the last change (read per frame without allocating).
    cached: std::sync::Arc<[Layer]>,
}

impl SimLayers {
    fn refresh(&mut self) {
        self.cached = self.layers().into();
    }

    fn layers(&self) -> Vec<Layer> {
        let n = self.rids.len();
        self.rids
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let st = self.stats.get(r).copied().unwrap_or_default();
                // Unknown height: 720 for the top layer, halved per layer below.
                let h = if st.2 > 0 { st.2 } else { 720 >> (n - 1 - i).min(4) };
                // Unknown bitrate: nominal 150 k / 500 k / 1.5 M style ladder.
                let b = if st.1 > 0 { st.1 as u32 } else { [150_000, 500_000, 1_500_000, 3_000_000][i.min(3)] };
                Layer { height: h, bitrate: b }
            })
            .collect()
    }
}

/// How many videos a subscriber gets (see `Sfu::allocate_bandwidth`), updated once a
/// second from its estimate and the cost of one video at its lowest layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VideoCap {
    /// `usize::MAX`: its whole last-N.
    cap: usize,
    /// Seconds in a row its estimate carried fewer videos than it gets, and the most it
    /// carried in those seconds.
    short: u8,
    short_fits: usize,
}

/// Seconds an estimate must stay short before videos are taken away (GCC estimates swing;
/// each change of video costs a key frame).
const SHORT_FOR: u8 = 3;

/// Busy share of the SFU's thread above which last-N is cut (`Sfu::handle_load`), and below
/// which it grows back.
const OVERLOAD: f32 = 0.9;
const RECOVER: f32 = 0.75;

/// Fraction lost (receiver reports) on a subscriber's videos that counts as congestion.
const CONGESTED_LOSS: f32 = 0.02;

impl VideoCap {
    const ALL: VideoCap = VideoCap { cap: usize::MAX, short: 0, short_fits: 0 };

    /// One second's figures: `bwe` and `per_video` in bit/s, `videos` it receives now,
    /// `congested`: its receiver reported loss on its videos in that second.
    /// Returns `true` if the cap changed. Down to the best of `SHORT_FOR` congested seconds
    /// in which it carried less than three quarters of its videos, never below `MIN_VIDEOS`;
    /// up by a quarter (at least 2) per second; `usize::MAX` once last-N fits.
    fn update(&mut self, bwe: u64, per_video: u64, videos: usize, last_n: usize, congested: bool) -> bool {
        // Headroom for audio, RTCP and retransmissions.
        let fits = (((bwe * 9 / 10) / per_video.max(1)) as usize).max(MIN_VIDEOS);
        let before = self.cap;
        // Short: clearly (by a quarter) below what it gets, and losing packets.
        if fits * 4 < videos.min(self.cap) * 3 && congested {
            self.short += 1;
            self.short_fits = self.short_fits.max(fits);
            if self.short >= SHORT_FOR {
                self.cap = self.short_fits;
                (self.short, self.short_fits) = (0, 0);
            }
        } else {
            (self.short, self.short_fits) = (0, 0);
            if fits > self.cap {
                self.cap = fits.min(self.cap.saturating_add((self.cap / 4).max(2)));
            }
        }
        if self.cap >= last_n {
            self.cap = usize::MAX;
        }
        self.cap != before
    }
}

/// The picture height a key frame's packet tells: the VP8 frame header after a descriptor
/// of `vp8_descriptor` bytes, or an H.264 sequence parameter set (sent with each IDR by
/// browsers). `None` for other codecs and packets without it.
fn key_frame_height(codec: str0m::format::Codec, vp8_descriptor: Option<usize>, payload: &[u8]) -> Option<u16> {
    match (codec, vp8_descriptor) {
        (str0m::format::Codec::Vp8, Some(len)) => vp8_height(payload.get(len..)?),
        (str0m::format::Codec::H264, _) => codec::h264::sps_height(payload),
        _ => None,
    }
}

/// Height of a VP8 key frame (RFC 6386 9.1: 3-byte tag, start code, 14-bit width/height).
fn vp8_height(frame: &[u8]) -> Option<u16> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff)
}

/// Quality of one track of a participant: `in` is what the SFU receives from it (its
/// publishing), `out` what it reports receiving from the SFU (RTCP receiver reports).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TrackQuality {
    pub kind: &'static str,
    pub direction: &'static str,
    pub packets: u64,
    pub bitrate_bps: f64,
    pub loss_pct: f64,
    pub jitter_ms: f64,
    pub rtt_ms: Option<f64>,
    /// ITU-T G.107 E-model MOS (audio only).
    pub mos: Option<f64>,
}

/// A quality figure for metrics (room, participant, track).
#[derive(Debug, Clone)]
pub struct QualitySample {
    pub room: String,
    pub participant: ParticipantId,
    pub q: TrackQuality,
}

#[derive(Debug, Clone, Copy)]
struct QualityState {
    q: TrackQuality,
    bytes: u64,
    at: Instant,
}

impl Peer {
    fn new(rtc: Rtc, room: &str, kind: PeerKind) -> Peer {
        Peer {
            rtc,
            room: room.into(),
            kind,
            incoming: vec![],
            outgoing: vec![],
            connected: false,
            next: None,
            outs: vec![],
            pending: None,
            // Members offer first; WHIP/WHEP peers are negotiated by their offer.
            negotiated: kind != PeerKind::Member,
            quality: HashMap::new(),
            simulcast: HashMap::new(),
            bwe_bps: None,
            max_height: u16::MAX,
            video_cap: VideoCap::ALL,
            video_loss: 0.0,
            videos: 0,
            offered_at: None,
            outs_changed: false,
            slots_changed: false,
        }
    }
}

/// The mid under which a phone's audio is offered to the room's members.
pub const PHONE_MID: &str = "sip";

/// A SIP phone in a room (joined through the edge, `conference:{room}`): no WebRTC
/// session; it sends and receives one audio stream in its own codec.
struct Phone {
    room: String,
    /// Encodes its mix of the room.
    enc: Encoder,
    /// Decodes what it says (for the other phones' mixes and its level).
    dec: Decoder,
    /// G.711 phones: what it says, encoded in Opus for the browsers.
    to_opus: Option<Encoder>,
    /// 48 kHz time of its next frame towards the browsers, and a frame counter.
    ticks: u64,
    frames: u16,
    pcm: Box<Pcm>,
}

/// The mix of a room with phones, taken every 20 ms.
struct RoomMix {
    mix: Mix<ParticipantId>,
    next: Instant,
}

const MIX_EVERY: Duration = Duration::from_millis(20);

/// A datagram to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// UDP, or TCP (ICE-TCP: the runtime frames it, RFC 4571).
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: Vec<u8>,
}

/// Counters the runtime turns into metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct SfuStats {
    pub frames_in: u64,
    pub frames_forwarded: u64,
    /// str0m `handle_timeout` calls (one per participant whose timer was due).
    pub rtc_timeouts: u64,
}

/// A room's routes: each source track (publisher, its mid) -> (member, slot index) pairs.
type Routes = HashMap<(ParticipantId, Mid), Vec<(ParticipantId, usize)>>;

/// Every room and peer of this SFU.
pub struct Sfu {
    cfg: SfuConfig,
    rooms: HashMap<String, Room>,
    peers: HashMap<ParticipantId, Peer>,
    next_id: u64,
    out: VecDeque<Transmit>,
    keyframes: KeyframeRequests<(ParticipantId, Mid)>,
    events: VecDeque<(String, RoomEvent)>,
    signals: VecDeque<(ParticipantId, Signal)>,
    stats: SfuStats,
    /// Active speaker per room.
    speakers: HashMap<String, Speakers<ParticipantId>>,
    quality_samples: VecDeque<QualitySample>,
    /// Peers with possibly something to poll (input, writes, due timers): `drive` polls
    /// only these, so one packet does not cost a poll of every participant.
    dirty: Vec<ParticipantId>,
    /// Per room: each source track -> the (member, slot index) pairs that carry it now.
    routes: HashMap<String, Routes>,
    /// Rooms whose slots are to be assigned again (join, leave, new track, speaking order).
    reassign: Vec<String>,
    /// Videos per subscriber the SFU's CPU carries (see `handle_load`); `usize::MAX`: last-N.
    load_cap: usize,
    phones: HashMap<ParticipantId, Phone>,
    /// Rooms with at least one phone.
    mixes: HashMap<String, RoomMix>,
    /// Encoded mixes for phones (the runtime puts them in RTP).
    phone_audio: VecDeque<(ParticipantId, Vec<u8>)>,
    /// Last per-second simulcast bookkeeping (`layer_pass`).
    layer_pass_at: Option<Instant>,
    /// Remote address -> participant, so a datagram does not scan every peer.
    by_source: HashMap<SocketAddr, ParticipantId>,
    /// The time of the latest input (for the deferred polls of `poll_transmit`).
    last_now: Option<Instant>,
    /// `dirty` set aside while `handle_receive` polls the sender (a second buffer, so no
    /// allocation per datagram).
    parked: Vec<ParticipantId>,
    /// `drive`'s second buffer for `dirty`.
    spare: Vec<ParticipantId>,
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
            signals: VecDeque::new(),
            stats: SfuStats::default(),
            speakers: HashMap::new(),
            quality_samples: VecDeque::new(),
            dirty: Vec::new(),
            routes: HashMap::new(),
            reassign: Vec::new(),
            load_cap: usize::MAX,
            phones: HashMap::new(),
            mixes: HashMap::new(),
            phone_audio: VecDeque::new(),
            layer_pass_at: None,
            by_source: HashMap::new(),
            last_now: None,
            parked: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Rooms with their members.
    pub fn rooms(&self) -> impl Iterator<Item = (&String, &Room)> {
        self.rooms.iter()
    }

    /// Participants in all rooms.
    pub fn participant_count(&self) -> usize {
        self.peers.len() + self.phones.len()
    }

    /// A SIP phone joins `room` as an audio participant (its codec chosen by the edge from
    /// its offer). It hears the mix of the current speakers, and the members receive its
    /// audio as a track (mid [`PHONE_MID`]).
    pub fn handle_phone_join(&mut self, now: Instant, room: &str, name: &str, codec: PhoneCodec) -> Result<ParticipantId, SfuError> {
        let bad = |e: String| SfuError::Unsupported(e);
        let enc = Encoder::new(codec).map_err(bad)?;
        let dec = Decoder::new(codec).map_err(bad)?;
        let to_opus = match codec {
            PhoneCodec::Opus => None,
            _ => Some(Encoder::new(PhoneCodec::Opus).map_err(bad)?),
        };
        let id = ParticipantId(self.next_id);
        let r = self.rooms.entry(room.to_string()).or_insert_with(|| Room::new(self.cfg.room));
        if let Err(e) = r.handle_join(now, id, name, ClientType::Phone) {
            if r.is_empty() {
                self.rooms.remove(room);
            }
            return Err(e.into());
        }
        self.next_id += 1;
        self.phones.insert(id, Phone { room: room.to_string(), enc, dec, to_opus, ticks: 0, frames: 0, pcm: Box::new([0; FRAME]) });
        self.mixes.entry(room.to_string()).or_insert_with(|| RoomMix { mix: Mix::default(), next: now + MIX_EVERY });
        self.speakers.entry(room.to_string()).or_insert_with(|| Speakers::new(SpeakerConfig::default())).add(id);
        self.drain_room_events(room);
        self.drive(now);
        Ok(id)
    }

    /// One RTP payload (20 ms) from a phone, in its codec.
    pub fn handle_phone_audio(&mut self, now: Instant, id: ParticipantId, payload: &[u8]) {
        let Some(ph) = self.phones.get_mut(&id) else { return };
        if !ph.dec.decode(payload, &mut ph.pcm) {
            return;
        }
        let level = crate::mixer::level(&ph.pcm[..]);
        let opus = match ph.to_opus.as_mut() {
            Some(e) => e.encode(&ph.pcm),
            None => payload.to_vec(),
        };
        let time = str0m::media::MediaTime::new(ph.ticks, str0m::media::Frequency::FORTY_EIGHT_KHZ);
        ph.ticks += FRAME as u64;
        let frame = ph.frames;
        ph.frames = ph.frames.wrapping_add(1);
        let room = ph.room.clone();
        let pcm = *ph.pcm;
        if let Some(r) = self.rooms.get_mut(&room) {
            r.handle_activity(now, id);
        }
        self.speaker_level(now, &room, id, level);
        if self.heard(&room, id)
            && let Some(m) = self.mixes.get_mut(&room)
        {
            m.mix.push_pcm(id, &pcm);
        }
        let opus: std::sync::Arc<[u8]> = opus.into();
        // To the members whose audio slots carry it (heard, not in the lobby).
        let subs = self.routes.get(&room).and_then(|r| r.get(&(id, Mid::from(PHONE_MID)))).filter(|_| !opus.is_empty());
        let pkt = Packet { layer: 0, seq: frame, ts: time.numer() as u32, keyframe: true, picture_id: None, tl0: None };
        for (pid, idx) in subs.into_iter().flatten() {
            let Some(p) = self.peers.get_mut(pid).filter(|p| p.connected) else { continue };
            let Some(slot) = p.outs.get_mut(*idx) else { continue };
            let SlotState::Open(out) = slot.state else { continue };
            slot.sel.set_target(Some(0));
            let Verdict::Forward { seq, ts, .. } = slot.sel.handle_packet(now, pkt) else { continue };
            let seq = slot.extend_seq(seq);
            let Some(pt) = p.rtc.codec_config().find(|pp| pp.spec().codec == str0m::format::Codec::Opus).map(|pp| pp.pt()) else {
                continue;
            };
            let ext = str0m::rtp::ExtensionValues {
                audio_level: Some(-(level.min(127) as i8)),
                voice_activity: Some(level < 127),
                ..Default::default()
            };
            let mut api = p.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(out, None) else { continue };
            tx.write_rtp(str0m::rtp::RtpWrite::new(pt, seq.into(), ts, now, opus.clone()).marker(true).ext_vals(ext));
            self.stats.frames_forwarded += 1;
            self.dirty.push(*pid);
        }
        self.drive(now);
    }

    /// A phone hangs up.
    pub fn handle_phone_leave(&mut self, now: Instant, id: ParticipantId) -> Result<(), SfuError> {
        let ph = self.phones.get(&id).ok_or(SfuError::NoSuchParticipant)?;
        let room = ph.room.clone();
        if let Some(r) = self.rooms.get_mut(&room) {
            let _ = r.handle_leave(id);
        }
        self.drain_room_events(&room);
        self.drive(now);
        Ok(())
    }

    /// The next encoded 20 ms of audio for a phone.
    pub fn poll_phone_audio(&mut self) -> Option<(ParticipantId, Vec<u8>)> {
        self.phone_audio.pop_front()
    }

    /// Once a second: layer bitrates (and which rid is the low one), how many videos each
    /// subscriber's bandwidth carries, and the layers nobody watches, which the publisher
    /// is told to pause.
    fn layer_pass(&mut self) {
        let mut reranked: Vec<(ParticipantId, Mid)> = vec![];
        for p in self.peers.values_mut() {
            for t in p.incoming.iter_mut() {
                t.bps = t.bytes * 8;
                t.bytes = 0;
            }
        }
        for (id, p) in self.peers.iter_mut() {
            for (mid, sl) in p.simulcast.iter_mut() {
                for st in sl.stats.values_mut() {
                    st.1 = st.0 * 8;
                    st.0 = 0;
                }
                sl.refresh();
                // Publishers list their rids in any order: rank them by what they carry, once.
                sl.passes += 1;
                if !sl.ranked && sl.passes >= 3 && sl.rids.iter().all(|r| sl.stats.get(r).is_some_and(|st| st.1 > 0)) {
                    sl.ranked = true;
                    let before = sl.rids.clone();
                    sl.rids.sort_by_key(|r| sl.stats.get(r).map_or(0, |st| st.1));
                    sl.refresh();
                    if sl.rids != before {
                        reranked.push((*id, *mid));
                    }
                }
            }
        }
        // Subscribers of a re-ranked track start over at a key frame of their layer.
        for p in self.peers.values_mut() {
            for slot in p.outs.iter_mut().filter(|t| t.source.is_some_and(|s| reranked.contains(&s))) {
                slot.sel.restart();
            }
        }
        self.allocate_bandwidth();
        // (publisher, its mid) -> the layer each subscriber targets; the layer being sent
        // stays on until the switch to the target is done.
        let mut targets: HashMap<(ParticipantId, Mid), Vec<Option<u8>>> = HashMap::new();
        for p in self.peers.values() {
            for t in p.outs.iter().filter(|t| t.kind == MediaKind::Video && matches!(t.state, SlotState::Open(_))) {
                if let Some(src) = t.source {
                    let e = targets.entry(src).or_default();
                    e.push(t.sel.target());
                    e.push(t.sel.current());
                }
            }
        }
        for (id, p) in self.peers.iter_mut() {
            for (mid, sl) in p.simulcast.iter_mut() {
                let want = match targets.get(&(*id, *mid)) {
                    Some(t) => wanted_layers(t.iter().copied(), sl.rids.len()),
                    // Nobody subscribed yet: keep the lowest layer ready for the first one.
                    None => (0..sl.rids.len()).map(|i| i == 0).collect(),
                };
                if want != sl.active && p.kind == PeerKind::Member {
                    let active = sl.rids.iter().zip(&want).filter(|(_, w)| **w).map(|(r, _)| r.to_string()).collect();
                    self.signals.push_back((*id, Signal::Layers { mid: mid.to_string(), active }));
                }
                sl.active = want;
            }
        }
    }

    /// The runtime's busy share of the last second (0..1: time spent handling input, timers
    /// and sends, not waiting). While the SFU's thread is saturated (`OVERLOAD`), every
    /// subscriber's videos are cut by a quarter a second (down to `MIN_VIDEOS`): fewer
    /// streams to forward instead of a receive queue that overflows into freezes for
    /// everyone. Below `RECOVER` they come back, a quarter (at least 2) a second, up to
    /// last-N. (Jitsi Videobridge's last-N reducer does the same.) Returns the cap.
    pub fn handle_load(&mut self, busy: f32) -> Option<usize> {
        let before = self.load_cap;
        let most = self.peers.values().filter(|p| p.kind == PeerKind::Member).map(|p| p.videos).max().unwrap_or(0);
        if busy >= OVERLOAD && most > MIN_VIDEOS {
            self.load_cap = (self.load_cap.min(most) * 3 / 4).max(MIN_VIDEOS);
        } else if busy < RECOVER && self.load_cap != usize::MAX {
            self.load_cap += (self.load_cap / 4).max(2);
            if self.load_cap >= self.cfg.last_n {
                self.load_cap = usize::MAX;
            }
        }
        if self.load_cap != before {
            tracing::info!(busy, videos = self.load_cap, "SFU load: videos per subscriber");
            for r in self.rooms.keys() {
                if !self.reassign.contains(r) {
                    self.reassign.push(r.clone());
                }
            }
        }
        (self.load_cap != usize::MAX).then_some(self.load_cap)
    }

    /// Bandwidth allocation: a subscriber whose estimate (str0m TWCC/GCC) cannot carry its
    /// last-N at the lowest layer, and whose receiver reports loss on its videos, gets fewer
    /// videos (the least recent speakers' slots are freed, down to `MIN_VIDEOS`, after
    /// `SHORT_FOR` such seconds) instead of a queue that overflows into freezes for all of
    /// them; as the estimate grows, videos come back, a quarter more (at least 2) per second.
    /// A low estimate alone takes nothing away: the delay-based estimate also drops when the
    /// receiving host is merely busy (measured: 0.7-4.2 Mbit/s swings on loopback with no loss).
    fn allocate_bandwidth(&mut self) {
        // Per room: the mean cost of one video at its lowest layer (bit/s).
        let mut cost: HashMap<String, (u64, u64)> = HashMap::new();
        for p in self.peers.values() {
            for t in p.incoming.iter().filter(|t| t.kind == MediaKind::Video) {
                let bps = match p.simulcast.get(&t.mid) {
                    Some(sl) => sl.cached.first().map_or(150_000, |l| l.bitrate as u64),
                    None if t.bps > 0 => t.bps,
                    None => 150_000,
                };
                let e = match cost.get_mut(&*p.room) {
                    Some(e) => e,
                    None => cost.entry(p.room.to_string()).or_default(),
                };
                e.0 += bps;
                e.1 += 1;
            }
        }
        let mut changed: Vec<String> = vec![];
        for p in self.peers.values_mut().filter(|p| p.kind == PeerKind::Member) {
            let (Some(bwe), Some((sum, n))) = (p.bwe_bps, cost.get(&*p.room)) else { continue };
            let per_video = (sum / (*n).max(1)).max(30_000);
            let congested = std::mem::take(&mut p.video_loss) >= CONGESTED_LOSS;
            if p.video_cap.update(bwe, per_video, p.videos, self.cfg.last_n, congested) {
                tracing::debug!(room = &*p.room, bwe, per_video, videos = p.video_cap.cap, "bandwidth allocation");
                if !changed.iter().any(|r| **r == *p.room) {
                    changed.push(p.room.to_string());
                }
            }
        }
        for r in changed {
            if !self.reassign.contains(&r) {
                self.reassign.push(r);
            }
        }
    }

    /// Mixes due rooms: one frame for each phone, every 20 ms.
    fn mix_phones(&mut self, now: Instant) {
        for (room, m) in self.mixes.iter_mut() {
            if m.next > now {
                continue;
            }
            m.next = if now - m.next > MIX_EVERY * 5 { now + MIX_EVERY } else { m.next + MIX_EVERY };
            m.mix.tick();
            for (id, ph) in self.phones.iter_mut().filter(|(_, ph)| &ph.room == room) {
                let pcm = m.mix.mix_for(*id).unwrap_or([0; FRAME]);
                let data = ph.enc.encode(&pcm);
                if !data.is_empty() {
                    self.phone_audio.push_back((*id, data));
                }
            }
        }
    }

    /// Guests waiting in the lobby of `room` (no allocation when nobody waits).
    fn lobby_of(&self, room: &str) -> Vec<ParticipantId> {
        match self.rooms.get(room) {
            Some(r) if r.members().iter().any(|m| m.in_lobby) => r.members().iter().filter(|m| m.in_lobby).map(|m| m.id).collect(),
            _ => Vec::new(),
        }
    }

    /// `true` if `from` is heard in `room`: small rooms hear everyone, larger ones the
    /// `audio_n` most recent speakers.
    fn heard(&self, room: &str, from: ParticipantId) -> bool {
        let size = self.rooms.get(room).map_or(0, |r| r.members().len());
        size <= self.cfg.all_audio_up_to || self.speakers.get(room).is_some_and(|s| s.rank(&from).is_some_and(|r| r < self.cfg.audio_n))
    }

    /// An RFC 6464 level of `from`: active-speaker changes become room events.
    fn speaker_level(&mut self, now: Instant, room: &str, from: ParticipantId, level: u8) {
        if !self.speakers.contains_key(room) {
            self.speakers.insert(room.to_string(), Speakers::new(SpeakerConfig::default()));
        }
        let Some(sp) = self.speakers.get_mut(room) else { return };
        if sp.handle_level(now, from, level.min(127)) && !self.reassign.iter().any(|r| r == room) {
            // A new most recent speaker: last-N videos and heard voices may change.
            self.reassign.push(room.to_string());
        }
        if let Some(id) = sp.poll_change() {
            let e = RoomEvent::ActiveSpeaker { id };
            for (pid, p) in &self.peers {
                if *p.room == *room && p.kind == PeerKind::Member {
                    self.signals.push_back((*pid, Signal::Event { event: e.clone() }));
                }
            }
            self.events.push_back((room.to_string(), e));
        }
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
        let mut rtc = self.new_rtc(now)?;
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| SfuError::Unsupported(e.to_string()))?;
        let id = ParticipantId(self.next_id);
        let r = self.rooms.entry(room.to_string()).or_insert_with(|| Room::new(self.cfg.room));
        let name = match kind {
            PeerKind::Publisher => format!("whip-{}", id.0),
            PeerKind::Viewer | PeerKind::Member => format!("whep-{}", id.0),
        };
        if let Err(e) = r.handle_join(now, id, &name, ClientType::Web) {
            if r.is_empty() {
                self.rooms.remove(room);
            }
            return Err(e.into());
        }
        self.next_id += 1;
        self.peers.insert(id, Peer::new(rtc, room, kind));
        self.speakers.entry(room.to_string()).or_insert_with(|| Speakers::new(SpeakerConfig::default())).add(id);
        self.dirty.push(id);
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

    /// A str0m peer for a new participant: ICE-lite, stats every second, our host candidate.
    fn new_rtc(&self, now: Instant) -> Result<Rtc, SfuError> {
        // BWE (TWCC/GCC) towards each participant picks its simulcast layers.
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .enable_bwe(Some(str0m::bwe::Bitrate::kbps(1_000)))
            .set_rtp_mode(true)
            .build(now);
        rtc.bwe().set_bitrate(str0m::bwe::Bitrate::kbps(100), str0m::bwe::Bitrate::mbps(20));
        let cand = Candidate::host(self.cfg.media_addr, "udp").map_err(|e| SfuError::Unsupported(e.to_string()))?;
        rtc.add_local_candidate(cand);
        if let Some(tcp) = self.cfg.tcp_addr {
            // RFC 6544 4.5: the SFU only accepts connections (passive).
            let cand = Candidate::builder()
                .tcp()
                .host(tcp)
                .tcptype(str0m::net::TcpType::Passive)
                .build()
                .map_err(|e| SfuError::Unsupported(e.to_string()))?;
            rtc.add_local_candidate(cand);
        }
        Ok(rtc)
    }

    /// A member joins `room` with the room protocol (its media follows with `handle_offer`).
    pub fn handle_join(&mut self, now: Instant, room: &str, name: &str, client: ClientType) -> Result<ParticipantId, SfuError> {
        let rtc = self.new_rtc(now)?;
        let id = ParticipantId(self.next_id);
        let r = self.rooms.entry(room.to_string()).or_insert_with(|| Room::new(self.cfg.room));
        if let Err(e) = r.handle_join(now, id, name, client) {
            if r.is_empty() {
                self.rooms.remove(room);
            }
            return Err(e.into());
        }
        self.next_id += 1;
        self.peers.insert(id, Peer::new(rtc, room, PeerKind::Member));
        self.speakers.entry(room.to_string()).or_insert_with(|| Speakers::new(SpeakerConfig::default())).add(id);
        self.dirty.push(id);
        self.drain_room_events(room);
        Ok(id)
    }

    /// A member's SDP offer (its own tracks, sendonly or sendrecv): the answer.
    pub fn handle_offer(&mut self, now: Instant, id: ParticipantId, sdp: &str) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::BadOffer(e.to_string()))?;
        let p = self.peers.get_mut(&id).ok_or(SfuError::NoSuchParticipant)?;
        if p.kind != PeerKind::Member {
            return Err(SfuError::Unsupported("not a room-protocol participant".into()));
        }
        if p.pending.is_some() {
            return Err(SfuError::Unsupported("an offer of the SFU waits for its answer (glare): answer it first".into()));
        }
        let answer = p.rtc.sdp_api().accept_offer(offer).map_err(|e| SfuError::Unsupported(e.to_string()))?;
        let first = !p.negotiated;
        p.negotiated = true;
        if first {
            // The newcomer gets slots for what it is to see and hear in the room.
            let room = p.room.to_string();
            self.reassign.push(room);
        }
        self.dirty.push(id);
        self.drive(now);
        Ok(answer.to_sdp_string())
    }

    /// A member's answer to the SFU's offer.
    pub fn handle_answer(&mut self, now: Instant, id: ParticipantId, sdp: &str) -> Result<(), SfuError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::BadOffer(e.to_string()))?;
        let p = self.peers.get_mut(&id).ok_or(SfuError::NoSuchParticipant)?;
        let pending = p.pending.take().ok_or_else(|| SfuError::Unsupported("no offer of the SFU is waiting for an answer".into()))?;
        p.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| SfuError::Unsupported(e.to_string()))?;
        // The new slots are open; a video one starts at a key frame of its source (asked
        // for by its selector on the first frame).
        for t in &mut p.outs {
            if let SlotState::Negotiating(m) = t.state {
                t.state = SlotState::Open(m);
            }
        }
        self.dirty.push(id);
        self.drive(now);
        Ok(())
    }

    /// A member's request to the room (moderator actions, its own state).
    pub fn handle_action(&mut self, now: Instant, id: ParticipantId, a: Action) -> Result<(), SfuError> {
        let room = self.peers.get(&id).ok_or(SfuError::NoSuchParticipant)?.room.clone();
        if let Action::VideoSize { height } = a {
            if let Some(p) = self.peers.get_mut(&id) {
                p.max_height = height;
            }
            return Ok(());
        }
        let r = self.rooms.get_mut(&*room).ok_or(SfuError::NoSuchParticipant)?;
        match a {
            Action::Admit(who) => r.handle_admit(id, who)?,
            Action::Reject(who) => r.handle_reject(id, who)?,
            Action::Remove(who) => r.handle_remove(id, who)?,
            Action::MakeModerator(who) => r.handle_make_moderator(id, who)?,
            Action::State { muted, video, hand_raised } => r.handle_state(id, muted, video, hand_raised)?,
            Action::VideoSize { .. } => {}
        }
        r.handle_activity(now, id);
        self.drain_room_events(&room);
        self.drive(now);
        Ok(())
    }

    /// The next message for a room-protocol member.
    pub fn poll_signal(&mut self) -> Option<(ParticipantId, Signal)> {
        self.signals.pop_front()
    }

    /// Quality figures since the last call (for metrics).
    pub fn poll_quality(&mut self) -> Option<QualitySample> {
        self.quality_samples.pop_front()
    }

    /// The latest quality of every track of every participant of `room`.
    pub fn quality(&self, room: &str) -> HashMap<ParticipantId, Vec<TrackQuality>> {
        self.peers.iter().filter(|(_, p)| *p.room == *room).map(|(id, p)| (*id, p.quality.values().map(|s| s.q).collect())).collect()
    }

    /// The dominant speaker of a room.
    pub fn active_speaker(&self, room: &str) -> Option<ParticipantId> {
        self.speakers.get(room).and_then(|s| s.dominant())
    }

    /// The room's members (for a newcomer's roster).
    pub fn roster(&self, room: &str) -> Vec<crate::room::Member> {
        self.rooms.get(room).map(|r| r.members().to_vec()).unwrap_or_default()
    }

    /// A peer leaves (WHIP/WHEP DELETE).
    pub fn handle_leave(&mut self, now: Instant, id: ParticipantId) -> Result<(), SfuError> {
        let mut p = self.peers.remove(&id).ok_or(SfuError::NoSuchParticipant)?;
        p.rtc.disconnect();
        if let Some(r) = self.rooms.get_mut(&*p.room) {
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
        self.handle_receive_on(now, Protocol::Udp, source, destination, data);
    }

    /// A datagram over `proto`: UDP, or one RFC 4571 frame of an ICE-TCP connection from
    /// `source` (the runtime removed the length prefix).
    pub fn handle_receive_on(&mut self, now: Instant, proto: Protocol, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else { return };
        let input = Input::Receive(now, Receive { proto, source, destination, contents });
        // The participant last seen at this address, else a scan (ICE ufrag, then 5-tuple).
        let known = self.by_source.get(&source).copied().filter(|id| self.peers.get(id).is_some_and(|p| p.rtc.accepts(&input)));
        let id = match known {
            Some(id) => id,
            None => {
                let Some((&id, _)) = self.peers.iter().find(|(_, p)| p.rtc.accepts(&input)) else {
                    tracing::trace!(%source, "datagram for no participant");
                    return;
                };
                if self.by_source.len() > 4 * self.peers.len() + 64 {
                    // Addresses of participants that left.
                    let peers = &self.peers;
                    self.by_source.retain(|_, id| peers.contains_key(id));
                }
                self.by_source.insert(source, id);
                id
            }
        };
        if let Some(p) = self.peers.get_mut(&id) {
            if let Err(e) = p.rtc.handle_input(input) {
                tracing::debug!(participant = id.0, error = %e, "participant input failed: disconnecting");
                p.rtc.disconnect();
            }
            if let Some(r) = self.rooms.get_mut(&*p.room) {
                r.handle_activity(now, id);
            }
        }
        // The sender is polled now (its frames are forwarded: written into the subscribers'
        // sessions); the subscribers are polled once for a whole batch of datagrams, in
        // `poll_transmit`, not once per frame each.
        std::mem::swap(&mut self.dirty, &mut self.parked);
        self.dirty.push(id);
        self.drive_rounds(now, 1);
        let parked = std::mem::take(&mut self.parked);
        self.dirty.extend_from_slice(&parked);
        self.parked = parked;
        self.parked.clear();
        self.last_now = Some(now);
    }

    /// Time passes.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (id, p) in self.peers.iter_mut() {
            if p.next.is_none_or(|t| t <= now) || !p.rtc.is_alive() {
                if p.rtc.is_alive() {
                    let _ = p.rtc.handle_input(Input::Timeout(now));
                    self.stats.rtc_timeouts += 1;
                }
                self.dirty.push(*id);
            }
        }
        self.mix_phones(now);
        if self.layer_pass_at.is_none_or(|t| now >= t + Duration::from_secs(1)) {
            self.layer_pass_at = Some(now);
            self.layer_pass();
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

    /// Next datagram to send (polling the sessions that have something to send first).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(now) = self.last_now.filter(|_| self.out.is_empty() && !self.dirty.is_empty()) {
            self.drive(now);
        }
        self.out.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(now) = self.last_now.filter(|_| !self.dirty.is_empty()) {
            // Sessions written to and not polled yet (see `handle_receive`).
            return Some(now);
        }
        let rooms = self.rooms.values().filter_map(|r| r.poll_timeout());
        let mixes = self.mixes.values().map(|m| m.next);
        // A deferred offer (see `negotiate`).
        let offers = self.peers.values().filter(|p| p.outs_changed && p.pending.is_none()).filter_map(|p| {
            let size = self.rooms.get(&*p.room).map_or(0, |r| r.members().len());
            p.offered_at.map(|t| t + renegotiate_every(size))
        });
        rooms.chain(mixes).chain(offers).chain(self.peers.values().filter_map(|p| p.next)).min()
    }

    /// Room events: departures (timeouts, removals) end the peer's connection.
    fn drain_room_events(&mut self, room: &str) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let mut gone = vec![];
        let mut evs = vec![];
        while let Some(e) = r.poll_event() {
            if let RoomEvent::Left { id, reason } = &e {
                gone.push((*id, *reason));
            }
            evs.push(e);
        }
        let empty = r.is_empty();
        let changed = !evs.is_empty();
        let members: Vec<ParticipantId> =
            self.peers.iter().filter(|(_, p)| *p.room == *room && p.kind == PeerKind::Member).map(|(id, _)| *id).collect();
        for e in evs {
            for m in &members {
                self.signals.push_back((*m, Signal::Event { event: e.clone() }));
            }
            self.events.push_back((room.to_string(), e));
        }
        if let Some(sp) = self.speakers.get_mut(room) {
            for (id, _) in &gone {
                sp.remove(*id);
            }
        }
        if empty {
            self.speakers.remove(room);
        }
        for (id, reason) in gone {
            let reason = format!("{reason:?}").to_ascii_lowercase();
            if let Some(mut p) = self.peers.remove(&id) {
                p.rtc.disconnect();
                if p.kind == PeerKind::Member {
                    self.signals.push_back((id, Signal::Closed { reason }));
                }
            } else if self.phones.remove(&id).is_some() {
                self.signals.push_back((id, Signal::Closed { reason }));
                if let Some(m) = self.mixes.get_mut(room) {
                    m.mix.remove(id);
                }
                if !self.phones.values().any(|ph| ph.room == room) {
                    self.mixes.remove(room);
                }
            }
        }
        if empty {
            self.rooms.remove(room);
            self.routes.remove(room);
        } else if changed && !self.reassign.iter().any(|r| r == room) {
            // Who sees and hears whom may change (joined, left, admitted, ...): the slots
            // of those who left are given to others (or left empty) without an offer.
            self.reassign.push(room.to_string());
        }
    }

    /// Polls every peer until it has nothing more, forwarding media between them.
    fn drive(&mut self, now: Instant) {
        self.drive_rounds(now, 8);
    }

    /// `drive` for at most `rounds` rounds (a round polls the dirty peers and forwards what
    /// they received, which makes their subscribers dirty).
    fn drive_rounds(&mut self, now: Instant, rounds: usize) {
        let mut rtp: Vec<(ParticipantId, Mid, Option<Rid>, str0m::rtp::RtpPacket)> = vec![];
        let mut kf_asks: Vec<(ParticipantId, Mid)> = vec![];
        // Rooms with a published track added or removed.
        let mut new_tracks: Vec<String> = vec![];
        let mut dead = vec![];
        // This round's peers; `dirty` collects the next round's (the two buffers are
        // swapped, not reallocated, per round).
        let mut ids = std::mem::take(&mut self.spare);
        for _round in 0..rounds {
            ids.clear();
            std::mem::swap(&mut ids, &mut self.dirty);
            ids.sort_unstable();
            ids.dedup();
            if ids.is_empty() {
                break;
            }
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
                        Ok(Output::Transmit(t)) => self.out.push_back(Transmit {
                            proto: t.proto,
                            source: t.source,
                            destination: t.destination,
                            data: t.contents.into(),
                        }),
                        Ok(Output::Event(e)) => match e {
                            Event::Connected => p.connected = true,
                            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => p.rtc.disconnect(),
                            Event::MediaAdded(m) => {
                                let t = Track { mid: m.mid, kind: m.kind, bytes: 0, bps: 0 };
                                match m.direction {
                                    Direction::RecvOnly => p.incoming.push(t),
                                    Direction::SendOnly => p.outgoing.push(t),
                                    Direction::SendRecv => {
                                        p.incoming.push(Track { mid: m.mid, kind: m.kind, bytes: 0, bps: 0 });
                                        p.outgoing.push(t)
                                    }
                                    Direction::Inactive => {}
                                }
                                if let Some(sc) = m.simulcast.as_ref().filter(|_| m.kind == MediaKind::Video) {
                                    let rids: Vec<Rid> =
                                        if sc.recv.is_empty() { &sc.send } else { &sc.recv }.iter().map(|l| l.rid).collect();
                                    if rids.len() > 1 {
                                        let active = vec![true; rids.len()];
                                        p.simulcast.insert(
                                            m.mid,
                                            SimLayers {
                                                rids,
                                                stats: HashMap::new(),
                                                active,
                                                ranked: false,
                                                passes: 0,
                                                cached: std::sync::Arc::from([]),
                                            },
                                        );
                                    }
                                }
                                if p.kind == PeerKind::Viewer && m.kind == MediaKind::Video {
                                    kf_asks.push((*id, m.mid));
                                }
                                if p.kind != PeerKind::Viewer && matches!(m.direction, Direction::RecvOnly | Direction::SendRecv) {
                                    new_tracks.push(p.room.to_string());
                                }
                            }
                            Event::MediaChanged(m) => {
                                // A member stops publishing a track (e.g. the end of a screen
                                // share: `inactive`) or publishes it again.
                                let sending = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
                                let had = p.incoming.iter().any(|t| t.mid == m.mid);
                                if sending != had && p.kind != PeerKind::Viewer {
                                    if sending {
                                        let kind = p.rtc.media(m.mid).map_or(MediaKind::Audio, |x| x.kind());
                                        p.incoming.push(Track { mid: m.mid, kind, bytes: 0, bps: 0 });
                                    } else {
                                        p.incoming.retain(|t| t.mid != m.mid);
                                    }
                                    new_tracks.push(p.room.to_string());
                                }
                            }
                            Event::RtpPacket(pk) => {
                                if let Some((mid, rid)) = p.rtc.direct_api().stream_rx(&pk.header.ssrc).map(|s| (s.mid(), s.rid())) {
                                    rtp.push((*id, mid, rid, pk));
                                }
                            }
                            Event::MediaIngressStats(st) => {
                                let kind = p.incoming.iter().find(|t| t.mid == st.mid).map(|t| t.kind);
                                if let Some(q) =
                                    update_quality(p, st.mid, false, kind, st.bytes, st.packets, st.loss, st.jitter, st.rtt, st.timestamp)
                                {
                                    self.quality_samples.push_back(QualitySample { room: p.room.to_string(), participant: *id, q });
                                }
                            }
                            Event::MediaEgressStats(st) => {
                                let kind = p
                                    .outs
                                    .iter()
                                    .find(|t| t.state == SlotState::Open(st.mid))
                                    .map(|t| t.kind)
                                    .or_else(|| p.outgoing.iter().find(|t| t.mid == st.mid).map(|t| t.kind));
                                if kind == Some(MediaKind::Video) {
                                    p.video_loss = p.video_loss.max(st.loss.unwrap_or(0.0));
                                }
                                if let Some(q) = update_quality(
                                    p,
                                    st.mid,
                                    true,
                                    kind,
                                    st.bytes,
                                    st.packets,
                                    st.loss,
                                    st.remote.as_ref().map_or(0, |r| r.jitter),
                                    st.rtt,
                                    st.timestamp,
                                ) {
                                    self.quality_samples.push_back(QualitySample { room: p.room.to_string(), participant: *id, q });
                                }
                            }
                            Event::KeyframeRequest(k) => kf_asks.push((*id, k.mid)),
                            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc { estimate, .. }) => p.bwe_bps = Some(estimate.as_u64()),
                            _ => {}
                        },
                        Err(e) => {
                            tracing::debug!(participant = id.0, error = %e, "participant failed: disconnecting");
                            p.rtc.disconnect();
                        }
                    }
                }
            }
            for room in new_tracks.drain(..) {
                if !self.reassign.contains(&room) {
                    self.reassign.push(room);
                }
            }
            self.negotiate(now);
            for (from, mid, rid, pk) in rtp.drain(..) {
                self.forward_rtp(from, mid, rid, &pk);
            }
            for (viewer, mid) in kf_asks.drain(..) {
                self.ask_keyframe(now, viewer, mid);
            }
        }
        ids.clear();
        self.spare = ids;
        // Offers for tracks added or stopped outside a poll (a member left, a removal).
        self.negotiate(now);
        dead.sort();
        dead.dedup();
        for id in dead {
            if let Some(p) = self.peers.remove(&id) {
                tracing::info!(participant = id.0, room = &*p.room, "participant gone");
                if let Some(r) = self.rooms.get_mut(&*p.room) {
                    let _ = r.handle_leave(id);
                }
                let room = p.room.clone();
                self.drain_room_events(&room);
            }
        }
    }

    /// Gives each member's slots the tracks it is to receive now: the audio of everyone
    /// (small rooms) or of the `audio_n` most recent speakers, and the video of its last-N,
    /// nothing for guests in the lobby or from them. A slot keeps its source while it is
    /// still wanted; freed slots take new sources; a member gets a new slot (and an offer)
    /// only when all of its slots of that kind are busy.
    fn assign(&mut self, room: &str) {
        let Some(r) = self.rooms.get(room) else { return };
        let size = r.members().len();
        let lobby: Vec<ParticipantId> = r.members().iter().filter(|m| m.in_lobby).map(|m| m.id).collect();
        let sp = self.speakers.get(room);
        let rank = |p: &ParticipantId| sp.and_then(|s| s.rank(p)).unwrap_or(usize::MAX);
        // Every published track of the room, most recent speaker first.
        let mut sources: Vec<(usize, ParticipantId, Mid, MediaKind)> = self
            .peers
            .iter()
            .filter(|(id, p)| *p.room == *room && p.kind != PeerKind::Viewer && !lobby.contains(id))
            .flat_map(|(id, p)| p.incoming.iter().map(move |t| (rank(id), *id, t.mid, t.kind)))
            .chain(
                self.phones
                    .iter()
                    .filter(|(id, ph)| ph.room == room && !lobby.contains(id))
                    .map(|(id, _)| (rank(id), *id, Mid::from(PHONE_MID), MediaKind::Audio)),
            )
            .collect();
        sources.sort_unstable_by_key(|a| (a.0, a.1, a.2));
        let all_audio = size <= self.cfg.all_audio_up_to;
        let (last_n, audio_n) = (self.cfg.last_n, self.cfg.audio_n);
        let mut routes = Routes::new();
        let load_cap = self.load_cap;
        for (id, p) in self.peers.iter_mut().filter(|(_, p)| *p.room == *room && p.kind == PeerKind::Member && p.negotiated) {
            let wanted: Vec<(ParticipantId, Mid, MediaKind)> = if lobby.contains(id) {
                vec![]
            } else {
                sources
                    .iter()
                    .filter(|(r, from, _, kind)| {
                        from != id
                            && match kind {
                                MediaKind::Audio => all_audio || *r < audio_n,
                                MediaKind::Video => sp.is_none_or(|s| s.in_last_n(id, from, last_n)),
                            }
                    })
                    .map(|(_, from, mid, kind)| (*from, *mid, *kind))
                    .collect()
            };
            // Its bandwidth carries only `video_cap` videos, the SFU's CPU only `load_cap`:
            // the most recent speakers'.
            let mut videos = 0;
            let wanted: Vec<(ParticipantId, Mid, MediaKind)> = wanted
                .into_iter()
                .filter(|w| {
                    videos += (w.2 == MediaKind::Video) as usize;
                    w.2 == MediaKind::Audio || videos <= p.video_cap.cap.min(load_cap)
                })
                .collect();
            for slot in p.outs.iter_mut() {
                if slot.source.is_some_and(|s| !wanted.iter().any(|w| (w.0, w.1) == s)) {
                    slot.set_source(None);
                    p.slots_changed |= slot.mid().is_some();
                }
            }
            for (from, mid, kind) in wanted {
                if p.outs.iter().any(|t| t.source == Some((from, mid))) {
                    continue;
                }
                match p.outs.iter_mut().find(|t| t.kind == kind && t.source.is_none()) {
                    Some(slot) => {
                        slot.set_source(Some((from, mid)));
                        p.slots_changed |= slot.mid().is_some();
                    }
                    None => {
                        p.outs.push(Slot::new(kind, (from, mid)));
                        p.outs_changed = true;
                    }
                }
            }
            p.videos = p.outs.iter().filter(|t| t.kind == MediaKind::Video && t.source.is_some()).count();
            for (i, t) in p.outs.iter().enumerate() {
                if let Some(src) = t.source {
                    routes.entry(src).or_default().push((*id, i));
                }
            }
        }
        self.routes.insert(room.to_string(), routes);
    }

    /// Assigns the slots of rooms that changed, offers members the slots they do not have
    /// yet (one offer at a time each), and tells them which participant each slot carries.
    fn negotiate(&mut self, now: Instant) {
        while let Some(room) = self.reassign.pop() {
            self.assign(&room);
        }
        for (id, p) in self.peers.iter_mut() {
            if p.kind != PeerKind::Member || !p.negotiated {
                continue;
            }
            let due = p.outs_changed
                && p.pending.is_none()
                // Join storms: changes are gathered into one offer per `renegotiate_every`.
                && p.offered_at.is_none_or(|t| now >= t + renegotiate_every(self.rooms.get(&*p.room).map_or(0, |r| r.members().len())));
            if due {
                p.offered_at = Some(now);
                p.outs_changed = false;
                let mut api = p.rtc.sdp_api();
                let mut tracks = vec![];
                for (i, t) in p.outs.iter_mut().enumerate() {
                    if t.state == SlotState::ToOpen {
                        let mid = api.add_media(t.kind, Direction::SendOnly, Some(format!("slot{i}")), None, None);
                        t.state = SlotState::Negotiating(mid);
                        tracks.push((mid.to_string(), t.source.map(|s| s.0.0)));
                    }
                }
                if let Some((offer, pending)) = api.apply() {
                    p.pending = Some(pending);
                    self.signals.push_back((*id, Signal::Offer { sdp: offer.to_sdp_string(), tracks }));
                }
            }
            if p.slots_changed {
                p.slots_changed = false;
                let map = p.outs.iter().filter_map(|t| Some((t.mid()?.to_string(), t.source.map(|s| s.0.0)))).collect();
                self.signals.push_back((*id, Signal::Slots { map }));
            }
        }
    }

    /// The publisher a viewer of `room` receives: the first one that joined.
    fn source_of(&self, room: &str) -> Option<ParticipantId> {
        let r = self.rooms.get(room)?;
        r.members().iter().map(|m| m.id).find(|id| self.peers.get(id).is_some_and(|p| p.kind == PeerKind::Publisher))
    }

    /// RTP mode: one packet of a publisher's track to the slots that carry it (members;
    /// simulcast layer per subscriber, switching at key frames, sequence numbers and
    /// timestamps rewritten by the slot's `Selector`) and to the room's WHEP viewers. The
    /// payload is shared (`Arc`), not copied, per subscriber.
    fn forward_rtp(&mut self, from: ParticipantId, src_mid: Mid, rid: Option<Rid>, pk: &str0m::rtp::RtpPacket) {
        let Some(src) = self.peers.get_mut(&from) else { return };
        let room = src.room.clone();
        let Some(kind) = src.incoming.iter().find(|t| t.mid == src_mid).map(|t| t.kind) else { return };
        let is_publisher = src.kind == PeerKind::Publisher;
        let Some(params) = src.rtc.codec_config().find(|p| p.pt() == pk.header.payload_type).copied() else { return };
        let codec = params.spec().codec;
        let payload: &[u8] = &pk.payload;
        let vp8 = (codec == str0m::format::Codec::Vp8).then(|| codec::vp8::Vp8Descriptor::parse(payload)).flatten();
        let keyframe = match codec {
            str0m::format::Codec::Vp8 => vp8.is_some_and(|d| d.keyframe),
            str0m::format::Codec::H264 => codec::h264::is_keyframe(payload),
            _ => kind == MediaKind::Audio,
        };
        if pk.header.marker || kind == MediaKind::Audio {
            self.stats.frames_in += 1;
        }
        let layer: Option<(u8, std::sync::Arc<[Layer]>)> = match (rid, src.simulcast.get_mut(&src_mid)) {
            (Some(rid), Some(sl)) => {
                if !sl.rids.contains(&rid) {
                    return;
                }
                let st = sl.stats.entry(rid).or_default();
                st.0 += payload.len() as u64;
                if keyframe && let Some(h) = key_frame_height(codec, vp8.map(|d| d.header_len), payload) {
                    st.2 = h;
                }
                let new_height = keyframe && st.2 > 0 && sl.cached.iter().all(|l| l.height != st.2);
                if !sl.ranked && sl.rids.iter().all(|r| sl.stats.get(r).is_some_and(|st| st.2 > 0)) {
                    sl.ranked = true;
                    sl.rids.sort_by_key(|r| sl.stats.get(r).map_or(0, |st| st.2));
                }
                if new_height || sl.cached.len() != sl.rids.len() {
                    sl.refresh();
                }
                let Some(idx) = sl.rids.iter().position(|r| *r == rid) else { return };
                Some((idx as u8, sl.cached.clone()))
            }
            _ => {
                if let Some(t) = src.incoming.iter_mut().find(|t| t.mid == src_mid) {
                    t.bytes += payload.len() as u64;
                }
                None
            }
        };
        if self.lobby_of(&room).contains(&from) {
            return;
        }
        if let (MediaKind::Audio, Some(level)) = (kind, pk.header.ext_vals.audio_level) {
            self.speaker_level(pk.timestamp, &room, from, level.unsigned_abs());
        }
        // Phones in the room hear it in their mix.
        if kind == MediaKind::Audio
            && self.mixes.contains_key(&*room)
            && self.heard(&room, from)
            && let Some(m) = self.mixes.get_mut(&*room)
        {
            m.mix.push(from, PhoneCodec::Opus, payload);
        }
        let (layer, layers) = match layer {
            Some((l, ls)) => (l, Some(ls)),
            None => (0, None),
        };
        let pkt = Packet {
            layer,
            seq: pk.header.sequence_number,
            ts: pk.header.timestamp,
            keyframe,
            picture_id: vp8.and_then(|d| d.picture_id.map(|p| p.0)),
            tl0: vp8.and_then(|d| d.tl0_pic_idx),
        };
        // VP8: picture ID and TL0PICIDX continue across layer and source switches (a
        // decoder drops frames whose picture ID is older than one it decoded), patched in
        // as str0m writes the packet; the shared payload is not copied.
        let vp8_desc = vp8.and_then(|_| str0m::rtp::Vp8Descriptor::parse(payload).ok());
        let ext = str0m::rtp::ExtensionValues {
            audio_level: pk.header.ext_vals.audio_level,
            voice_activity: pk.header.ext_vals.voice_activity,
            ..Default::default()
        };
        let now = pk.timestamp;
        let out = OutPacket { pkt, params, pk, ext, vp8_desc, vp8, kind };
        let mut layer_asks: Vec<u8> = vec![];
        let subs = self.routes.get(&*room).and_then(|r| r.get(&(from, src_mid)));
        for (pid, idx) in subs.into_iter().flatten() {
            let Some(p) = self.peers.get_mut(pid).filter(|p| p.connected) else { continue };
            let (bwe, videos, max_height) = (p.bwe_bps, p.videos, p.max_height);
            let Some(slot) = p.outs.get_mut(*idx) else { continue };
            let target = match (&layers, kind) {
                (Some(layers), _) => choose_layer(layers, bwe.map_or(u64::MAX, |b| b / videos.max(1) as u64), max_height),
                (None, MediaKind::Video) if max_height == 0 => None,
                _ => Some(0),
            };
            slot.sel.set_target(target);
            let w = write_to_slot(p, *idx, &out);
            w.record(*pid, &mut self.stats, &mut self.dirty, &mut layer_asks);
        }
        // Only a WHIP publisher is watched by WHEP viewers (members never are): no scan of the
        // room's members per packet for the others.
        if is_publisher && self.source_of(&room) == Some(from) {
            // WHEP viewers get the room's first publisher, through a slot of their own per
            // kind (its simulcast layer chosen from their estimate; a new source, when the
            // first publisher leaves, continues their numbering at its key frame).
            for (pid, p) in self.peers.iter_mut().filter(|(_, p)| p.room == room && p.kind == PeerKind::Viewer && p.connected) {
                let Some(mid) = p.outgoing.iter().find(|t| t.kind == kind).map(|t| t.mid) else { continue };
                let idx = match p.outs.iter().position(|t| t.kind == kind) {
                    Some(i) => i,
                    None => {
                        let mut slot = Slot::new(kind, (from, src_mid));
                        slot.state = SlotState::Open(mid);
                        p.outs.push(slot);
                        p.outs.len() - 1
                    }
                };
                let bwe = p.bwe_bps.unwrap_or(u64::MAX);
                let slot = &mut p.outs[idx];
                if slot.source != Some((from, src_mid)) {
                    slot.set_source(Some((from, src_mid)));
                }
                slot.sel.set_target(match &layers {
                    Some(layers) => choose_layer(layers, bwe, u16::MAX),
                    None => Some(0),
                });
                let w = write_to_slot(p, idx, &out);
                w.record(*pid, &mut self.stats, &mut self.dirty, &mut layer_asks);
            }
        }
        layer_asks.sort_unstable();
        layer_asks.dedup();
        for l in layer_asks {
            self.request_keyframe(now, from, src_mid, l);
        }
    }

    /// A viewer needs a key frame of `mid` (a new viewer, or its PLI/FIR): ask the
    /// publisher, at most once a second per publisher track.
    fn ask_keyframe(&mut self, now: Instant, viewer: ParticipantId, mid: Mid) {
        let Some(v) = self.peers.get(&viewer) else { return };
        // (publisher, its track, the simulcast layer the viewer gets).
        let (src, src_mid, layer) = match v.kind {
            // A publisher asked for a key frame of what it receives: nothing, it receives nothing.
            PeerKind::Publisher => return,
            // A member's slot, or a viewer's once it carries something: its source and layer.
            _ if let Some(t) = v.outs.iter().find(|t| t.mid() == Some(mid)) => {
                let Some(src) = t.source else { return };
                (src.0, src.1, t.sel.current().or(t.sel.target()).unwrap_or(0))
            }
            PeerKind::Member => return,
            PeerKind::Viewer => {
                let kind = v.outgoing.iter().find(|t| t.mid == mid).map(|t| t.kind);
                let (Some(kind), Some(src)) = (kind, self.source_of(&v.room.clone())) else { return };
                let Some(p) = self.peers.get(&src) else { return };
                let Some(m) = p.incoming.iter().find(|t| t.kind == kind).map(|t| t.mid) else { return };
                (src, m, 0)
            }
        };
        self.request_keyframe(now, src, src_mid, layer);
    }

    /// Asks publisher `src` for a key frame of its track `src_mid` (of simulcast layer
    /// `layer`; else of the whole track) with a PLI, at most once a second per layer.
    fn request_keyframe(&mut self, now: Instant, src: ParticipantId, src_mid: Mid, layer: u8) {
        let Some(p) = self.peers.get_mut(&src) else { return };
        let rid = p.simulcast.get(&src_mid).and_then(|sl| sl.rids.get(layer as usize).copied());
        if !self.keyframes.request(now, (src, src_mid), if rid.is_some() { layer } else { 0 }) {
            return;
        }
        if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(src_mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
        self.dirty.push(src);
    }
}

/// One publisher packet, parsed once, on its way to the slots that carry it.
struct OutPacket<'a> {
    pkt: Packet,
    params: str0m::format::PayloadParams,
    pk: &'a str0m::rtp::RtpPacket,
    ext: str0m::rtp::ExtensionValues,
    vp8_desc: Option<str0m::rtp::Vp8Descriptor>,
    vp8: Option<codec::vp8::Vp8Descriptor>,
    kind: MediaKind,
}

/// What [`write_to_slot`] did.
enum Written {
    /// The last packet of a frame (or an audio packet) went out.
    Frame,
    Packet,
    /// Not sent: the slot's target layer needs a key frame.
    NeedKeyframe(u8),
    Nothing,
}

impl Written {
    /// Notes what was written to subscriber `pid`: a frame counted, the subscriber to be
    /// polled, or the layer whose key frame to ask for.
    fn record(self, pid: ParticipantId, stats: &mut SfuStats, dirty: &mut Vec<ParticipantId>, asks: &mut Vec<u8>) {
        match self {
            Written::Frame => {
                stats.frames_forwarded += 1;
                dirty.push(pid);
            }
            Written::Packet => dirty.push(pid),
            Written::NeedKeyframe(l) => asks.push(l),
            Written::Nothing => {}
        }
    }
}

/// Writes `o` into subscriber `p`'s open slot `idx` (its selector decides the layer and
/// rewrites sequence number, timestamp and VP8 picture ID / TL0PICIDX; the payload is
/// shared, not copied).
fn write_to_slot(p: &mut Peer, idx: usize, o: &OutPacket) -> Written {
    let Some(slot) = p.outs.get_mut(idx) else { return Written::Nothing };
    let SlotState::Open(mid) = slot.state else { return Written::Nothing };
    let now = o.pk.timestamp;
    let (seq, ts, picture_id, tl0) = match slot.sel.handle_packet(now, o.pkt) {
        Verdict::Forward { seq, ts, picture_id, tl0 } => (seq, ts, picture_id, tl0),
        Verdict::NeedKeyframe(l) => return Written::NeedKeyframe(l),
        Verdict::Drop => return Written::Nothing,
    };
    let seq = slot.extend_seq(seq);
    let Some(pt) = p.rtc.codec_config().match_params(o.params).map(|x| x.pt()) else { return Written::Nothing };
    let mut api = p.rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else { return Written::Nothing };
    let marker = o.pk.header.marker;
    let mut w = str0m::rtp::RtpWrite::new(pt, seq.into(), ts, now, o.pk.payload.clone())
        .marker(marker)
        .ext_vals(o.ext.clone())
        .nackable(o.kind == MediaKind::Video);
    if let (Some(d), Some(v)) = (&o.vp8_desc, &o.vp8) {
        let mut b = d.patch();
        if let Some((_, long)) = v.picture_id {
            b = b.picture_id(if long { picture_id & 0x7fff } else { picture_id & 0x7f });
        }
        if v.tl0_pic_idx.is_some() {
            b = b.tl0_pic_idx(tl0);
        }
        if let Ok(patch) = b.build() {
            w = w.vp8_patch(patch);
        }
    }
    tx.write_rtp(w);
    if marker || o.kind == MediaKind::Audio { Written::Frame } else { Written::Packet }
}

/// Folds one str0m stats report of a track into the participant's quality figures.
#[allow(clippy::too_many_arguments)]
fn update_quality(
    p: &mut Peer,
    mid: Mid,
    out: bool,
    kind: Option<MediaKind>,
    bytes: u64,
    packets: u64,
    loss: Option<f32>,
    jitter: u32,
    rtt: Option<Duration>,
    at: Instant,
) -> Option<TrackQuality> {
    let kind = kind?;
    let clock = if kind == MediaKind::Audio { 48_000.0 } else { 90_000.0 };
    let loss_pct = loss.map_or(0.0, |l| (l as f64 * 100.0).clamp(0.0, 100.0));
    let jitter_ms = jitter as f64 * 1000.0 / clock;
    let rtt_ms = rtt.map(|r| r.as_secs_f64() * 1000.0);
    let prev = p.quality.get(&(mid, out)).copied();
    let bitrate_bps = match prev {
        Some(s) if at > s.at => bytes.saturating_sub(s.bytes) as f64 * 8.0 / (at - s.at).as_secs_f64(),
        Some(s) => s.q.bitrate_bps,
        None => 0.0,
    };
    let mos = (kind == MediaKind::Audio).then(|| {
        codec::quality::mos(codec::quality::EModelInput {
            codec: codec::quality::CodecImpairment::OPUS,
            loss_pct,
            burst_ratio: 1.0,
            // One way: half the round trip, the jitter buffer (2 x jitter) and a 20 ms frame.
            delay_ms: rtt_ms.unwrap_or(0.0) / 2.0 + 2.0 * jitter_ms + 20.0,
        })
    });
    let q = TrackQuality {
        kind: if kind == MediaKind::Audio { "audio" } else { "video" },
        direction: if out { "out" } else { "in" },
        packets,
        bitrate_bps,
        loss_pct,
        jitter_ms,
        rtt_ms,
        mos,
    };
    p.quality.insert((mid, out), QualityState { q, bytes, at });
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_frames_tell_their_height_in_vp8_and_h264() {
        use str0m::format::Codec;
        // VP8: 1-byte descriptor, frame tag (key frame), start code, 640x360.
        let vp8 = [0x10, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
        assert_eq!(key_frame_height(Codec::Vp8, Some(1), &vp8), Some(360));
        // H.264: OpenH264's 1280x720 SPS in a STAP-A with its PPS.
        let sps = [0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x8d, 0x40, 0x28, 0x02, 0xdd, 0x00, 0xf0, 0x88, 0x46, 0xa0];
        let mut stap = vec![0x78, 0x00, sps.len() as u8];
        stap.extend_from_slice(&sps);
        stap.extend_from_slice(&[0x00, 0x04, 0x68, 0xce, 0x3c, 0x80]);
        assert_eq!(key_frame_height(Codec::H264, None, &stap), Some(720));
        // An IDR slice without an SPS, another codec, a descriptor longer than the packet.
        assert_eq!(key_frame_height(Codec::H264, None, &[0x65, 0x88, 0x80]), None);
        assert_eq!(key_frame_height(Codec::Vp9, None, &vp8), None);
        assert_eq!(key_frame_height(Codec::Vp8, Some(20), &vp8), None);
    }

    #[test]
    fn a_subscriber_gets_as_many_videos_as_its_estimate_carries() {
        const K: u64 = 1000;
        let mut c = VideoCap::ALL;
        // 25 videos at 150 kbit/s fit in 4.2 Mbit/s (with 10 % headroom): no cap.
        assert!(!c.update(4_200 * K, 150 * K, 25, 25, true));
        // 1 Mbit/s (6 videos) for one or two seconds: nothing taken yet (estimates swing).
        assert!(!c.update(1_000 * K, 150 * K, 25, 25, true));
        assert!(!c.update(1_200 * K, 150 * K, 25, 25, true));
        // The third short and lossy second: down to the best of the three (7).
        assert!(c.update(1_000 * K, 150 * K, 25, 25, true));
        assert_eq!(c.cap, 7);
        // A good second in between starts the count over.
        let mut d = VideoCap::ALL;
        d.update(1_000 * K, 150 * K, 25, 25, true);
        d.update(1_000 * K, 150 * K, 25, 25, true);
        d.update(4_200 * K, 150 * K, 25, 25, true);
        assert!(!d.update(1_000 * K, 150 * K, 25, 25, true));
        assert_eq!(d.cap, usize::MAX);
        // Never below 4, even on a poor link.
        for _ in 0..3 {
            c.update(100 * K, 150 * K, 7, 25, true);
        }
        assert_eq!(c.cap, MIN_VIDEOS);
        // The estimate grows: back up by a quarter (at least 2) per second, then uncapped.
        let up: Vec<usize> = (0..8)
            .map(|_| {
                c.update(4_000 * K, 150 * K, c.cap, 25, true);
                c.cap
            })
            .collect();
        assert_eq!(up, [6, 8, 10, 12, 15, 18, 22, 24]);
        c.update(4_200 * K, 150 * K, 24, 25, true);
        assert_eq!(c.cap, usize::MAX);
        // An estimate a little short (20 of 25 videos) takes nothing away.
        let mut f = VideoCap::ALL;
        for _ in 0..5 {
            assert!(!f.update(3_400 * K, 150 * K, 25, 25, true));
        }
        // A short estimate without loss (a busy receiving host, not a full queue) takes
        // nothing away; loss in one second of three does not either.
        let mut g = VideoCap::ALL;
        for _ in 0..5 {
            assert!(!g.update(1_000 * K, 150 * K, 25, 25, false));
        }
        assert!(!g.update(1_000 * K, 150 * K, 25, 25, true));
        assert!(!g.update(1_000 * K, 150 * K, 25, 25, false));
        assert!(!g.update(1_000 * K, 150 * K, 25, 25, true));
        assert!(!g.update(1_000 * K, 150 * K, 25, 25, true));
        assert!(g.update(1_000 * K, 150 * K, 25, 25, true), "three lossy short seconds in a row");
        // A small meeting with fewer videos than its estimate carries keeps them all.
        let mut e = VideoCap::ALL;
        for _ in 0..5 {
            assert!(!e.update(1_000 * K, 800 * K, 2, 25, true));
        }
    }
}
