//! Media interworking of one call between a WebRTC leg ([`WebRtcLeg`]: ICE, DTLS-SRTP,
//! str0m) and a plain SIP leg (RTP/AVP or SDES-SRTP, protected by the relay). Sans-IO.
//!
//! - Same codec on both legs: RTP is passed through with the payload type rewritten and
//!   sequence numbers and timestamps shifted by a fixed offset (gaps stay gaps).
//! - Different codecs: each direction decodes to 48 kHz PCM and re-encodes in 20 ms frames
//!   (`codec::voice`: Opus <-> G.711 with 48 <-> 8 kHz resampling). Short gaps (up to 60 ms)
//!   are concealed (Opus PLC, else silence) so timing stays continuous; longer ones (DTX,
//!   silence suppression, a DTMF digit) move the output timeline on by the same time and
//!   mark the next packet (RFC 3551 4.1 talkspurt).
//! - RFC 4733 telephone-events are mapped to the other leg's telephone-event payload type,
//!   with timestamps in its timeline and durations in its clock; a leg without
//!   telephone-event does not get them.

use super::webrtc::{LegEvent, WebRtcLeg};
use codec::voice::{Decoder, Encoder, FRAME, VoiceCodec};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The SIP leg's negotiated audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipAudio {
    pub codec: VoiceCodec,
    pub pt: u8,
    /// RFC 4733 telephone-event payload type (its clock is the codec's).
    pub dtmf_pt: Option<u8>,
}

/// What the runtime is to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeOutput {
    /// A datagram of the WebRTC leg (ICE, DTLS, SRTP, SRTCP) from its port.
    ToWeb { to: SocketAddr, data: Vec<u8> },
    /// A plain RTP packet for the SIP leg (the relay protects it when that leg is SRTP).
    ToSip(Vec<u8>),
}

/// Why two legs cannot be bridged (a 488 with this as the Warning text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    #[error("the WebRTC leg negotiated no voice codec")]
    NoWebCodec,
    #[error("codec: {0}")]
    Codec(String),
}

/// Counters of one bridge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    pub to_web_packets: u64,
    pub to_sip_packets: u64,
    pub dtmf_to_web: u64,
    pub dtmf_to_sip: u64,
    /// Packets dropped: unknown payload type, undecodable, late or duplicate.
    pub dropped: u64,
    /// Transcoding: samples concealed for lost packets.
    pub concealed_samples: u64,
    /// RFC 4733 event packets played as tones to a leg without telephone-event.
    pub dtmf_inband: u64,
}

/// An outgoing RTP packet before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packet {
    pt: u8,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
}

/// One packet from a leg, as the bridge reads it.
#[derive(Debug, Clone, Copy)]
struct In<'a> {
    pt: u8,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: &'a [u8],
}

/// Gaps up to this many 48 kHz samples are concealed; longer ones resynchronise.
const CONCEAL_MAX: usize = 3 * FRAME;

enum Mode {
    /// Same codec: fixed offsets, set at the first packet.
    Pass { offsets: Option<(u16, u32)> },
    Transcode {
        dec: Box<Decoder>,
        enc: Box<Encoder>,
        /// Decoded 48 kHz samples not yet encoded; `out_ts` is the timestamp of the first.
        pcm: Vec<i16>,
        /// The input timestamp expected next (after the last audio decoded).
        next_in: Option<u32>,
        last_seq: Option<u16>,
        mark_next: bool,
    },
}

/// One direction of the bridge.
struct Way {
    in_pt: u8,
    in_clock: u32,
    /// Telephone-event payload types accepted from the input, with their clocks.
    in_dtmf: Vec<(u8, u32)>,
    out_pt: u8,
    out_clock: u32,
    /// The output's telephone-event payload type and clock.
    out_dtmf: Option<(u8, u32)>,
    mode: Mode,
    /// Transcoding: the next output sequence number and timestamp.
    out_seq: u16,
    out_ts: u32,
    /// The telephone-event being mapped: (input timestamp, output timestamp).
    event: Option<(u32, u32)>,
    /// The output's codec (in-band tones written when passing through).
    out_codec: VoiceCodec,
    tone: Option<Tone>,
    scratch: Vec<u8>,
}

fn scale(ticks: u64, from: u32, to: u32) -> u64 {
    ticks * to as u64 / from.max(1) as u64
}

impl Way {
    fn new(from: (u8, VoiceCodec, Vec<(u8, u32)>), to: (u8, VoiceCodec, Option<(u8, u32)>), start: (u16, u32)) -> Result<Way, BridgeError> {
        let mode = if from.1 == to.1 {
            Mode::Pass { offsets: None }
        } else {
            Mode::Transcode {
                dec: Box::new(Decoder::new(from.1).map_err(BridgeError::Codec)?),
                enc: Box::new(Encoder::new(to.1).map_err(BridgeError::Codec)?),
                pcm: Vec::with_capacity(4 * FRAME),
                next_in: None,
                last_seq: None,
                mark_next: true,
            }
        };
        Ok(Way {
            in_pt: from.0,
            in_clock: from.1.clock(),
            in_dtmf: from.2,
            out_pt: to.0,
            out_clock: to.1.clock(),
            out_dtmf: to.2,
            mode,
            out_seq: start.0,
            out_ts: start.1,
            event: None,
            out_codec: to.1,
            tone: None,
            scratch: Vec::with_capacity(1500),
        })
    }

    fn is_transcoding(&self) -> bool {
        matches!(self.mode, Mode::Transcode { .. })
    }

    /// A sequence number for a packet the bridge adds to this output (`next`: the one after
    /// the last sent); what passes through afterwards moves up by one so that none repeats.
    fn take_seq(&mut self, next: u16) -> u16 {
        match &mut self.mode {
            Mode::Pass { offsets: Some((so, _)) } => {
                *so = so.wrapping_add(1);
                next
            }
            Mode::Pass { offsets: None } => {
                self.out_seq = self.out_seq.wrapping_add(1);
                next
            }
            Mode::Transcode { .. } => {
                let s = self.out_seq;
                self.out_seq = self.out_seq.wrapping_add(1);
                s
            }
        }
    }

    /// One packet from the input leg; what to send to the output leg goes to `out`.
    fn handle(&mut self, p: In, stats: &mut BridgeStats, out: &mut Vec<Packet>) {
        if let Some(&(_, clock)) = self.in_dtmf.iter().find(|d| d.0 == p.pt) {
            self.dtmf(p, clock, stats, out);
        } else if p.pt == self.in_pt {
            self.audio(p, stats, out);
        } else {
            stats.dropped += 1;
        }
    }

    fn audio(&mut self, p: In, stats: &mut BridgeStats, out: &mut Vec<Packet>) {
        let payload = p.payload;
        self.emit(p, stats, out, |dec, pcm| dec.decode_into(payload, pcm).map_err(|_| ()), || payload.to_vec());
    }

    /// One input packet's audio to the output: passed through (`raw` gives the payload:
    /// same codec) or decoded by `fill` (it appends 48 kHz samples, returns how many) and
    /// re-encoded in 20 ms frames.
    fn emit(
        &mut self,
        p: In,
        stats: &mut BridgeStats,
        out: &mut Vec<Packet>,
        fill: impl FnOnce(&mut Decoder, &mut Vec<i16>) -> Result<usize, ()>,
        raw: impl FnOnce() -> Vec<u8>,
    ) {
        let In { seq, ts, marker, .. } = p;
        let (in_clock, out_clock) = (self.in_clock, self.out_clock);
        match &mut self.mode {
            Mode::Pass { offsets } => {
                let (so, to) = *offsets.get_or_insert((self.out_seq.wrapping_sub(seq), self.out_ts.wrapping_sub(ts)));
                out.push(Packet { pt: self.out_pt, seq: seq.wrapping_add(so), ts: ts.wrapping_add(to), marker, payload: raw() });
            }
            Mode::Transcode { dec, enc, pcm, next_in, last_seq, mark_next } => {
                if last_seq.is_some_and(|l| (seq.wrapping_sub(l) as i16) <= 0) {
                    // Late or duplicate: its time has been played out already.
                    stats.dropped += 1;
                    return;
                }
                *last_seq = Some(seq);
                if let Some(exp) = *next_in {
                    let gap = ts.wrapping_sub(exp) as i32;
                    if gap < 0 {
                        stats.dropped += 1;
                        return;
                    }
                    let gap48 = scale(gap as u64, in_clock, 48_000) as usize;
                    if gap48 > CONCEAL_MAX || marker {
                        // A new talkspurt (or a long hole): the output timeline moves on by
                        // the same time; what was buffered is flushed as silence-padded frame.
                        let pending = pcm.len();
                        pcm.clear();
                        self.out_ts = self.out_ts.wrapping_add(scale((pending + gap48) as u64, 48_000, out_clock) as u32);
                        *mark_next = true;
                    } else if gap48 > 0 {
                        dec.conceal_into(gap48, pcm);
                        stats.concealed_samples += gap48 as u64;
                    }
                }
                let Ok(n) = fill(dec, pcm) else {
                    stats.dropped += 1;
                    return;
                };
                *next_in = Some(ts.wrapping_add(scale(n as u64, 48_000, in_clock) as u32));
                let mut start = 0;
                while pcm.len() - start >= FRAME {
                    self.scratch.clear();
                    if enc.encode_into(&pcm[start..start + FRAME], &mut self.scratch).is_ok() {
                        out.push(Packet {
                            pt: self.out_pt,
                            seq: self.out_seq,
                            ts: self.out_ts,
                            marker: std::mem::take(mark_next),
                            payload: self.scratch.clone(),
                        });
                        self.out_seq = self.out_seq.wrapping_add(1);
                    }
                    self.out_ts = self.out_ts.wrapping_add(scale(FRAME as u64, 48_000, out_clock) as u32);
                    start += FRAME;
                }
                pcm.drain(..start);
            }
        }
    }

    /// RFC 4733 2.3: an event's packets share its start timestamp; the duration field is in
    /// RTP clock units. Mapped to the output's telephone-event type, timeline and clock.
    fn dtmf(&mut self, p: In, in_clock: u32, stats: &mut BridgeStats, out: &mut Vec<Packet>) {
        let In { seq, ts, marker, payload, .. } = p;
        if payload.len() < 4 {
            stats.dropped += 1;
            return;
        }
        let Some((out_pt, out_clock)) = self.out_dtmf else {
            self.inband(p, in_clock, stats, out);
            return;
        };
        // The event's duration in the output's telephone-event clock.
        let mut ev = payload[..4].to_vec();
        let dur = u16::from_be_bytes([ev[2], ev[3]]) as u64;
        let d = scale(dur, in_clock, out_clock).min(u16::MAX as u64) as u16;
        ev[2..4].copy_from_slice(&d.to_be_bytes());
        let audio_out_clock = self.out_clock;
        match &mut self.mode {
            Mode::Pass { offsets } => {
                let (so, to) = *offsets.get_or_insert((self.out_seq.wrapping_sub(seq), self.out_ts.wrapping_sub(ts)));
                out.push(Packet { pt: out_pt, seq: seq.wrapping_add(so), ts: ts.wrapping_add(to), marker, payload: ev });
            }
            Mode::Transcode { pcm, .. } => {
                let out_ts = match self.event {
                    Some((in_ts, out_ts)) if in_ts == ts => out_ts,
                    _ => {
                        // A new event starts where the audio received so far ends.
                        let at = self.out_ts.wrapping_add(scale(pcm.len() as u64, 48_000, audio_out_clock) as u32);
                        self.event = Some((ts, at));
                        at
                    }
                };
                out.push(Packet { pt: out_pt, seq: self.out_seq, ts: out_ts, marker, payload: ev });
                self.out_seq = self.out_seq.wrapping_add(1);
            }
        }
    }
}

impl Way {
    /// An RFC 4733 event for an output that negotiated no telephone-event: played as its
    /// Q.23 tone pair in the output's audio (as rtpengine does), so an IVR behind a trunk
    /// without telephone-event still hears the digits. Each update adds the tone for the
    /// time its duration grew; repeated end packets add nothing.
    fn inband(&mut self, p: In, in_clock: u32, stats: &mut BridgeStats, out: &mut Vec<Packet>) {
        let (event, end) = (p.payload[0], p.payload[1] & 0x80 != 0);
        let dur = u16::from_be_bytes([p.payload[2], p.payload[3]]) as u64;
        let pass = matches!(self.mode, Mode::Pass { .. });
        if pass && self.out_codec == VoiceCodec::Opus {
            // Opus passed through without telephone-event on the output: no tone written.
            stats.dropped += 1;
            self.unsent();
            return;
        }
        let (done, shift) = match self.tone {
            Some(t) if t.ts == p.ts => (t.done, t.shift),
            // A new event; an event timestamp behind the audio already decoded (a sender
            // that stamps it with its last audio frame's) starts where that audio ends.
            _ => match self.mode {
                Mode::Transcode { next_in: Some(exp), .. } if (p.ts.wrapping_sub(exp) as i32) < 0 => (0, exp.wrapping_sub(p.ts)),
                _ => (0, 0),
            },
        };
        if self.tone.is_some_and(|t| t.ts == p.ts && t.ended) || dur <= done || codec::dtmf::frequencies(event).is_none() {
            // A repeated end packet (or nothing new): no packet for it.
            self.unsent();
            return;
        }
        self.tone = Some(Tone { ts: p.ts, shift, done: dur, ended: end });
        stats.dtmf_inband += 1;
        // The new part of the tone, as if it were audio from (event start + done). The
        // event's timestamp is on the audio's timeline, its duration in its own clock.
        let offset = scale(done, in_clock, self.in_clock) as u32;
        let at = In { ts: p.ts.wrapping_add(shift).wrapping_add(offset), marker: done == 0, ..p };
        let (from48, n48) = (scale(done, in_clock, 48_000), scale(dur - done, in_clock, 48_000) as usize);
        let out_clock = self.out_clock;
        let out_codec = self.out_codec;
        self.emit(
            at,
            stats,
            out,
            |_, pcm| {
                codec::dtmf::tone(event, from48, n48, 48_000, pcm);
                Ok(n48)
            },
            || {
                // Passed through: the output is G.711 at 8 kHz; the tone is written in it.
                let mut x = Vec::with_capacity(scale(dur - done, in_clock, out_clock) as usize);
                codec::dtmf::tone(
                    event,
                    scale(done, in_clock, out_clock),
                    scale(dur - done, in_clock, out_clock) as usize,
                    out_clock,
                    &mut x,
                );
                x.iter()
                    .map(|&v| if out_codec == VoiceCodec::Pcma { codec::g711::linear_to_alaw(v) } else { codec::g711::linear_to_ulaw(v) })
                    .collect()
            },
        );
    }
}

impl Way {
    /// An input packet passed through produces no output packet: what passes afterwards
    /// moves down by one, so that the output's sequence numbers stay without gaps.
    fn unsent(&mut self) {
        if let Mode::Pass { offsets: Some((so, _)) } = &mut self.mode {
            *so = so.wrapping_sub(1);
        }
    }
}

/// The in-band tone of the event being played (see [`Way::inband`]).
#[derive(Debug, Clone, Copy)]
struct Tone {
    /// The event's RTP timestamp, and how far its tone was moved to follow the audio.
    ts: u32,
    shift: u32,
    /// How much of it was played, in input clock units.
    done: u64,
    ended: bool,
}

/// One call's media bridge.
pub struct Bridge {
    web: WebRtcLeg,
    sip: SipAudio,
    to_web: Way,
    to_sip: Way,
    ssrc: u32,
    out: VecDeque<BridgeOutput>,
    batch: Vec<Packet>,
    /// Where each direction's output continues (sequence number, timestamp) when the ways
    /// are rebuilt for a new SIP codec: the first values, then after the last packet.
    next_to_web: (u16, u32),
    next_to_sip: (u16, u32),
    /// Digits to send to the SIP leg as RFC 4733 events (from SIP INFO on the browser's
    /// side), and the one being sent.
    digits: VecDeque<(u8, Duration)>,
    playing: Option<Digit>,
    /// When the next queued digit may start (a gap after the previous one).
    digit_gap_until: Option<Instant>,
    pub stats: BridgeStats,
}

/// An RFC 4733 event the bridge is sending (RFC 4733 2.5.1: updates while it lasts, the
/// end packet three times).
#[derive(Debug, Clone, Copy)]
struct Digit {
    event: u8,
    /// The event's RTP timestamp, payload type and clock.
    ts: u32,
    pt: u8,
    clock: u32,
    started: Instant,
    total: Duration,
    next: Instant,
    ends_sent: u8,
}

/// Updates of an event the bridge sends are this far apart; end packets 20 ms apart; the
/// next digit starts this long after the end.
const DIGIT_UPDATE: Duration = Duration::from_millis(50);
const DIGIT_GAP: Duration = Duration::from_millis(50);

impl Bridge {
    /// A bridge between a negotiated WebRTC leg and the SIP leg's audio. The WebRTC leg
    /// uses the SIP leg's codec when it negotiated it (no transcoding), else its own first
    /// one. `ssrc` and `start` (sequence number, timestamp) seed the SIP leg's stream.
    pub fn new(web: WebRtcLeg, sip: SipAudio, ssrc: u32, start: (u16, u32)) -> Result<Bridge, BridgeError> {
        let formats = web.voice_formats();
        let (web_pt, web_codec) =
            formats.iter().find(|(_, c)| *c == sip.codec).or_else(|| formats.first()).copied().ok_or(BridgeError::NoWebCodec)?;
        let (to_web, to_sip) = Self::ways(&web, (web_pt, web_codec), sip, (start, start))?;
        Ok(Bridge {
            sip,
            to_web,
            to_sip,
            web,
            ssrc,
            out: VecDeque::new(),
            batch: Vec::new(),
            next_to_web: start,
            next_to_sip: start,
            digits: VecDeque::new(),
            playing: None,
            digit_gap_until: None,
            stats: BridgeStats::default(),
        })
    }

    /// The SIP leg changed its codec (a re-offer after a transfer on a PBX, say): the
    /// browser keeps its codec, and the bridge passes through or transcodes as the pair now
    /// needs. Both directions continue their sequence numbers and timestamps.
    pub fn set_sip(&mut self, sip: SipAudio) -> Result<(), BridgeError> {
        if sip == self.sip {
            return Ok(());
        }
        let (to_web, to_sip) = Self::ways(&self.web, self.web_codec(), sip, (self.next_to_web, self.next_to_sip))?;
        (self.sip, self.to_web, self.to_sip) = (sip, to_web, to_sip);
        Ok(())
    }

    /// Both directions between the browser's codec `web` and the SIP leg's, starting at
    /// `start` (towards the browser, towards the SIP leg).
    fn ways(web_leg: &WebRtcLeg, web: (u8, VoiceCodec), sip: SipAudio, start: ((u16, u32), (u16, u32))) -> Result<(Way, Way), BridgeError> {
        let (web_pt, web_codec) = web;
        // Browsers send telephone-event at the clock of the audio codec when they can,
        // else at 8 kHz (Chrome used its 8 kHz type with Opus here): any negotiated one is
        // taken; towards the browser, the one at the codec's clock first.
        let web_in: Vec<(u8, u32)> = web_leg
            .formats()
            .into_iter()
            .filter_map(|(pt, f)| match f {
                super::webrtc::Format::Dtmf(clock) => Some((pt, clock)),
                super::webrtc::Format::Voice(_) => None,
            })
            .collect();
        let web_out = web_in.iter().find(|d| d.1 == web_codec.clock()).or(web_in.first()).copied();
        let sip_dtmf = sip.dtmf_pt.map(|pt| (pt, sip.codec.clock()));
        Ok((
            Way::new((sip.pt, sip.codec, sip_dtmf.into_iter().collect()), (web_pt, web_codec, web_out), start.0)?,
            Way::new((web_pt, web_codec, web_in), (sip.pt, sip.codec, sip_dtmf), start.1)?,
        ))
    }

    /// Whether the legs' codecs differ.
    pub fn is_transcoding(&self) -> bool {
        self.to_sip.is_transcoding()
    }

    /// The SIP leg's codec.
    pub fn sip_codec(&self) -> VoiceCodec {
        self.sip.codec
    }

    /// The SIP leg's audio as negotiated.
    pub fn sip(&self) -> SipAudio {
        self.sip
    }

    pub fn web_mut(&mut self) -> &mut WebRtcLeg {
        &mut self.web
    }

    /// The WebRTC leg's codec as used (payload type, codec).
    pub fn web_codec(&self) -> (u8, VoiceCodec) {
        let c = self.web.voice_formats().into_iter().find(|(pt, _)| *pt == self.to_sip.in_pt).map(|x| x.1);
        (self.to_sip.in_pt, c.unwrap_or(VoiceCodec::Opus))
    }

    pub fn web(&self) -> &WebRtcLeg {
        &self.web
    }

    /// A datagram on the WebRTC leg's port.
    pub fn handle_web(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.web.handle_receive(now, source, data);
        self.pump();
    }

    /// An RTP packet from the SIP leg (after SRTP, if any).
    pub fn handle_sip(&mut self, now: Instant, rtp: &[u8]) {
        let Ok(h) = codec::rtp::RtpHeader::parse(rtp) else {
            self.stats.dropped += 1;
            return;
        };
        let payload = &rtp[h.payload_offset..h.payload_end];
        self.batch.clear();
        let mut batch = std::mem::take(&mut self.batch);
        let p = In { pt: h.payload_type, seq: h.sequence, ts: h.timestamp, marker: h.marker, payload };
        self.to_web.handle(p, &mut self.stats, &mut batch);
        for p in batch.drain(..) {
            if self.to_web.out_dtmf.is_some_and(|d| d.0 == p.pt) {
                self.stats.dtmf_to_web += 1;
            }
            self.stats.to_web_packets += 1;
            self.next_to_web = next_after(&p, self.to_web.out_clock);
            self.web.write_rtp(now, p.pt, p.seq, p.ts, p.marker, p.payload);
        }
        self.batch = batch;
        self.pump();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.web.handle_timeout(now);
        self.pump();
        self.send_digits(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let digit = match self.playing {
            Some(d) => Some(d.next),
            // Queued digits wait for the gap after the last one (they start at once otherwise).
            None if !self.digits.is_empty() => self.digit_gap_until,
            None => None,
        };
        [self.web.poll_timeout(), digit].into_iter().flatten().min()
    }

    /// A digit for the SIP leg as an RFC 4733 event lasting `duration` (a SIP INFO from the
    /// browser's side: SIP.js and JsSIP send DTMF that way). `false` when the SIP leg
    /// negotiated no telephone-event (the INFO should then go on as it is).
    pub fn send_digit(&mut self, now: Instant, event: u8, duration: Duration) -> bool {
        if self.sip.dtmf_pt.is_none() || event > 15 {
            return false;
        }
        self.digits.push_back((event, duration));
        self.send_digits(now);
        true
    }

    /// Sends what is due of the digits queued by [`Bridge::send_digit`].
    fn send_digits(&mut self, now: Instant) {
        loop {
            let Some(mut d) = self.playing else {
                if self.digit_gap_until.is_some_and(|t| now < t) {
                    return;
                }
                let Some((event, total)) = self.digits.pop_front() else { return };
                let Some(pt) = self.sip.dtmf_pt else { return };
                let clock = self.sip.codec.clock();
                self.playing = Some(Digit { event, ts: self.next_to_sip.1, pt, clock, started: now, total, next: now, ends_sent: 0 });
                continue;
            };
            if now < d.next {
                self.playing = Some(d);
                return;
            }
            let elapsed = now.saturating_duration_since(d.started);
            let end = elapsed >= d.total;
            let shown = if end { d.total } else { elapsed.max(Duration::from_millis(1)) };
            let ticks = (shown.as_micros() as u64 * d.clock as u64 / 1_000_000).min(u16::MAX as u64) as u16;
            let seq = self.to_sip.take_seq(self.next_to_sip.0);
            let t = ticks.to_be_bytes();
            // RFC 4733 2.3: event, E bit and volume (10: -10 dBm0), duration.
            let payload = vec![d.event, if end { 0x8a } else { 0x0a }, t[0], t[1]];
            let q = Packet { pt: d.pt, seq, ts: d.ts, marker: now == d.started, payload };
            self.next_to_sip.0 = seq.wrapping_add(1);
            self.send_to_sip(&q);
            if end {
                d.ends_sent += 1;
                if d.ends_sent == 3 {
                    self.playing = None;
                    self.digit_gap_until = Some(now + DIGIT_GAP);
                    continue;
                }
                d.next = now + Duration::from_millis(20);
            } else {
                d.next = (now + DIGIT_UPDATE).min(d.started + d.total);
            }
            self.playing = Some(d);
        }
    }

    pub fn poll_output(&mut self) -> Option<BridgeOutput> {
        self.out.pop_front()
    }

    /// Ends the WebRTC leg.
    pub fn close(&mut self) {
        self.web.close();
    }

    /// Queues a packet for the SIP leg, counted (telephone-events apart).
    fn send_to_sip(&mut self, q: &Packet) {
        if self.to_sip.out_dtmf.is_some_and(|d| d.0 == q.pt) {
            self.stats.dtmf_to_sip += 1;
        }
        self.stats.to_sip_packets += 1;
        self.out.push_back(BridgeOutput::ToSip(rtp_packet(self.ssrc, q)));
    }

    fn pump(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        while let Some(e) = self.web.poll_event() {
            match e {
                LegEvent::Transmit { to, data } => self.out.push_back(BridgeOutput::ToWeb { to, data }),
                LegEvent::Rtp(p) => {
                    batch.clear();
                    let h = &p.header;
                    let i = In { pt: *h.payload_type, seq: h.sequence_number, ts: h.timestamp, marker: h.marker, payload: &p.payload };
                    self.to_sip.handle(i, &mut self.stats, &mut batch);
                    for q in batch.drain(..) {
                        self.next_to_sip = next_after(&q, self.to_sip.out_clock);
                        self.send_to_sip(&q);
                    }
                }
                LegEvent::Connected => tracing::debug!("webrtc bridge: connected"),
                LegEvent::Closed => tracing::debug!("webrtc bridge: the WebRTC leg closed"),
            }
        }
        self.batch = batch;
    }
}

/// The sequence number and timestamp a stream continues with after `p` (one 20 ms frame
/// later at `clock`).
fn next_after(p: &Packet, clock: u32) -> (u16, u32) {
    (p.seq.wrapping_add(1), p.ts.wrapping_add(scale(FRAME as u64, 48_000, clock) as u32))
}

/// An RTP packet (RFC 3550 5.1, no CSRC, no extension).
fn rtp_packet(ssrc: u32, p: &Packet) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + p.payload.len());
    v.push(0x80);
    v.push((p.marker as u8) << 7 | (p.pt & 0x7f));
    v.extend_from_slice(&p.seq.to_be_bytes());
    v.extend_from_slice(&p.ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(&p.payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass_way() -> Way {
        Way::new((0, VoiceCodec::Pcmu, vec![(101, 8_000)]), (0, VoiceCodec::Pcmu, Some((126, 8_000))), (1000, 50_000)).unwrap()
    }

    #[test]
    fn same_codec_passes_through_with_offsets_and_gaps_kept() {
        let mut w = pass_way();
        let mut st = BridgeStats::default();
        let mut out = vec![];
        w.handle(In { pt: 0, seq: 7, ts: 160, marker: true, payload: &[1; 160] }, &mut st, &mut out);
        w.handle(In { pt: 0, seq: 9, ts: 480, marker: false, payload: &[2; 160] }, &mut st, &mut out);
        w.handle(In { pt: 101, seq: 10, ts: 640, marker: true, payload: &[5, 0x0a, 0, 160] }, &mut st, &mut out);
        w.handle(In { pt: 18, seq: 11, ts: 800, marker: false, payload: &[0; 20] }, &mut st, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].seq, out[0].ts, out[0].marker), (1000, 50_000, true));
        assert_eq!((out[1].seq, out[1].ts), (1002, 50_320), "the lost packet stays a gap");
        assert_eq!((out[2].pt, out[2].seq, out[2].ts, out[2].payload.clone()), (126, 1003, 50_480, vec![5, 0x0a, 0, 160]));
        assert_eq!(st.dropped, 1, "G.729 was not negotiated");
    }

    fn tone8k(hz: f64, n: usize, from: usize) -> Vec<u8> {
        (from..from + n)
            .map(|i| codec::g711::linear_to_ulaw((8_000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8_000.0).sin()) as i16))
            .collect()
    }

    #[test]
    fn transcoding_reframes_conceals_short_gaps_and_resyncs_after_long_ones() {
        let mut w = Way::new((0, VoiceCodec::Pcmu, vec![]), (111, VoiceCodec::Opus, None), (1, 0)).unwrap();
        let mut st = BridgeStats::default();
        let mut out = vec![];
        // 10 ms PCMU packets: one 20 ms Opus frame per two.
        for i in 0..10u16 {
            w.handle(
                In { pt: 0, seq: i, ts: i as u32 * 80, marker: i == 0, payload: &tone8k(440.0, 80, i as usize * 80) },
                &mut st,
                &mut out,
            );
        }
        assert_eq!(out.len(), 5);
        assert!(out.iter().enumerate().all(|(i, p)| p.seq == 1 + i as u16 && p.ts == i as u32 * 960 && p.pt == 111));
        assert!(out[0].marker && !out[1].marker);
        // One 10 ms packet lost: concealed, the timeline continues.
        out.clear();
        w.handle(In { pt: 0, seq: 11, ts: 880, marker: false, payload: &tone8k(440.0, 80, 880) }, &mut st, &mut out);
        w.handle(In { pt: 0, seq: 12, ts: 960, marker: false, payload: &tone8k(440.0, 80, 960) }, &mut st, &mut out);
        assert_eq!(st.concealed_samples, 480);
        assert_eq!(out.iter().map(|p| p.ts).collect::<Vec<_>>(), [4_800], "10 ms of the next frame wait");
        // A late packet is dropped.
        w.handle(In { pt: 0, seq: 10, ts: 800, marker: false, payload: &tone8k(440.0, 80, 800) }, &mut st, &mut out);
        assert_eq!(st.dropped, 1);
        // Two seconds of silence suppression: the output jumps by two seconds, marked.
        out.clear();
        let t = 1_040 + 16_000;
        w.handle(In { pt: 0, seq: 13, ts: t, marker: true, payload: &tone8k(440.0, 160, 0) }, &mut st, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].marker);
        // Input timestamp 17,040 at 8 kHz is 102,240 at 48 kHz (the half frame waiting
        // was flushed, its time kept).
        assert_eq!(out[0].ts, 102_240);
    }

    #[test]
    fn dtmf_events_map_to_the_other_clock_and_timeline() {
        // SIP (PCMU, telephone-event/8000 pt 101) -> browser (Opus, telephone-event/48000 pt 110).
        let mut w =
            Way::new((0, VoiceCodec::Pcmu, vec![(101, 8_000)]), (111, VoiceCodec::Opus, Some((110, 48_000))), (500, 9_600)).unwrap();
        let mut st = BridgeStats::default();
        let mut out = vec![];
        w.handle(In { pt: 0, seq: 1, ts: 0, marker: true, payload: &tone8k(440.0, 160, 0) }, &mut st, &mut out);
        // Digit 5: three updates and three end packets, all with the event's timestamp 160.
        for (seq, dur, end) in [(2u16, 160u16, false), (3, 320, false), (4, 480, false), (5, 640, true), (6, 640, true), (7, 640, true)] {
            let flags = if end { 0x8a } else { 0x0a };
            let d = dur.to_be_bytes();
            w.handle(In { pt: 101, seq, ts: 160, marker: seq == 2, payload: &[5, flags, d[0], d[1]] }, &mut st, &mut out);
        }
        let events: Vec<&Packet> = out.iter().filter(|p| p.pt == 110).collect();
        assert_eq!(events.len(), 6);
        assert!(events.iter().all(|p| p.ts == 9_600 + 960), "one timestamp for the event, where the audio ended");
        assert!(events[0].marker && !events[1].marker);
        assert_eq!(u16::from_be_bytes([events[0].payload[2], events[0].payload[3]]), 960, "160 ticks at 8 kHz = 960 at 48 kHz");
        assert_eq!(u16::from_be_bytes([events[5].payload[2], events[5].payload[3]]), 3_840);
        assert_eq!(events[5].payload[1], 0x8a, "end bit and volume kept");
        let seqs: Vec<u16> = out.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, (500..507).collect::<Vec<_>>(), "events share the audio's sequence numbers");
        // Browser -> SIP: Chrome may send its 8 kHz telephone-event with Opus; either
        // negotiated type is taken, durations kept in the right clock.
        let mut w = Way::new((111, VoiceCodec::Opus, vec![(110, 48_000), (126, 8_000)]), (0, VoiceCodec::Pcmu, Some((101, 8_000))), (0, 0))
            .unwrap();
        out.clear();
        w.handle(In { pt: 126, seq: 1, ts: 960, marker: true, payload: &[9, 0x0a, 0, 160] }, &mut st, &mut out);
        w.handle(In { pt: 110, seq: 2, ts: 48_000, marker: true, payload: &[4, 0x0a, 0x03, 0xc0] }, &mut st, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].pt, out[0].payload.clone()), (101, vec![9, 0x0a, 0, 160]));
        assert_eq!((out[1].pt, out[1].payload.clone()), (101, vec![4, 0x0a, 0, 160]), "960 at 48 kHz = 160 at 8 kHz");
    }

    /// Digit `event` as RFC 4733 packets (pt, clock `k` ticks per 20 ms): three updates and
    /// three end packets, from sequence number `seq` and timestamp `ts`.
    fn digit(w: &mut Way, st: &mut BridgeStats, out: &mut Vec<Packet>, (pt, event, seq, ts, k): (u8, u8, u16, u32, u16)) {
        for (i, (n, end)) in [(1u16, false), (2, false), (3, false), (4, true), (4, true), (4, true)].into_iter().enumerate() {
            let d = (n * k).to_be_bytes();
            let flags = if end { 0x8a } else { 0x0a };
            w.handle(In { pt, seq: seq + i as u16, ts, marker: i == 0, payload: &[event, flags, d[0], d[1]] }, st, out);
        }
    }

    fn pcm_of(codec: VoiceCodec, packets: &[&Packet]) -> Vec<i16> {
        let mut dec = Decoder::new(codec).unwrap();
        let mut pcm = vec![];
        for p in packets {
            dec.decode_into(&p.payload, &mut pcm).unwrap();
        }
        pcm
    }

    #[test]
    fn digits_to_a_leg_without_telephone_event_are_played_as_their_tones() {
        let mut st = BridgeStats::default();
        let mut out = vec![];
        // Browser (Opus, telephone-event/8000 pt 126) -> phone with PCMU only: transcoded,
        // the digit's 80 ms become four 20 ms PCMU frames of its tone pair, in the audio's
        // timeline; the repeated end packets add nothing.
        let mut w = Way::new((111, VoiceCodec::Opus, vec![(126, 8_000)]), (0, VoiceCodec::Pcmu, None), (10, 0)).unwrap();
        let mut enc = Encoder::new(VoiceCodec::Opus).unwrap();
        let mut frame = vec![];
        enc.encode_into(&[0; FRAME], &mut frame).unwrap();
        w.handle(In { pt: 111, seq: 1, ts: 0, marker: true, payload: &frame }, &mut st, &mut out);
        digit(&mut w, &mut st, &mut out, (126, 5, 2, 960, 160));
        assert_eq!(out.len(), 5, "one audio frame, then four of tone: {out:?}");
        assert!(out.iter().all(|p| p.pt == 0 && p.payload.len() == 160));
        assert_eq!(out.iter().map(|p| (p.seq, p.ts)).collect::<Vec<_>>(), [(10, 0), (11, 160), (12, 320), (13, 480), (14, 640)]);
        let pcm = pcm_of(VoiceCodec::Pcmu, &out[1..].iter().collect::<Vec<_>>());
        assert_eq!(codec::dtmf::detect(&pcm[960..], 48_000), Some(5), "the phone hears a 5");
        assert_eq!(st.dtmf_inband, 4);
        // Audio after the digit continues the timeline.
        w.handle(In { pt: 111, seq: 8, ts: 960 * 5, marker: false, payload: &frame }, &mut st, &mut out);
        assert_eq!(out.last().map(|p| (p.seq, p.ts)), Some((15, 800)));

        // PCMU on both legs, none of them with telephone-event on the output: passed
        // through, the tone written in PCMU at the event's sequence numbers and times.
        let mut w = Way::new((0, VoiceCodec::Pcmu, vec![(101, 8_000)]), (0, VoiceCodec::Pcmu, None), (100, 1_000)).unwrap();
        out.clear();
        w.handle(In { pt: 0, seq: 1, ts: 0, marker: true, payload: &[0xff; 160] }, &mut st, &mut out);
        digit(&mut w, &mut st, &mut out, (101, 11, 2, 160, 160));
        assert_eq!(
            out.iter().map(|p| (p.seq, p.ts, p.payload.len())).collect::<Vec<_>>(),
            [(100, 1_000, 160), (101, 1_160, 160), (102, 1_320, 160), (103, 1_480, 160), (104, 1_640, 160)]
        );
        assert!(out[1].marker && !out[2].marker);
        let pcm = pcm_of(VoiceCodec::Pcmu, &out[1..].iter().collect::<Vec<_>>());
        assert_eq!(codec::dtmf::detect(&pcm, 48_000), Some(11), "a #");
        // The two repeated end packets (input 6 and 7) made nothing: the next audio (input 8)
        // follows without a gap.
        w.handle(In { pt: 0, seq: 8, ts: 800, marker: false, payload: &[0xff; 160] }, &mut st, &mut out);
        assert_eq!(out.last().map(|p| (p.seq, p.ts)), Some((105, 1_800)));

        // A sender that stamps the event with its last audio frame's timestamp: the tone
        // starts where that audio ends instead of being dropped as late.
        let mut w = Way::new((111, VoiceCodec::Opus, vec![(126, 8_000)]), (8, VoiceCodec::Pcma, None), (0, 0)).unwrap();
        out.clear();
        w.handle(In { pt: 111, seq: 1, ts: 0, marker: true, payload: &frame }, &mut st, &mut out);
        digit(&mut w, &mut st, &mut out, (126, 1, 2, 0, 160));
        assert_eq!(out.len(), 5);
        let pcm = pcm_of(VoiceCodec::Pcma, &out[1..].iter().collect::<Vec<_>>());
        assert_eq!(codec::dtmf::detect(&pcm[960..], 48_000), Some(1));

        // Opus passed through with no telephone-event on the output: nothing to write into.
        let mut w = Way::new((111, VoiceCodec::Opus, vec![(110, 48_000)]), (111, VoiceCodec::Opus, None), (0, 0)).unwrap();
        out.clear();
        w.handle(In { pt: 110, seq: 2, ts: 960, marker: true, payload: &[5, 0x0a, 3, 192] }, &mut st, &mut out);
        assert!(out.is_empty());
    }
}
