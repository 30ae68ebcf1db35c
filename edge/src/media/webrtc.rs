//! The WebRTC leg of a call the edge bridges to plain SIP media (sans-IO): ICE-lite
//! (RFC 8445 2.5), DTLS-SRTP (RFC 5763/5764), rtcp-mux (RFC 5761) and BUNDLE (RFC 9143)
//! with one audio m-line, as browsers speak it (RFC 8829/8834), on str0m in RTP mode: the
//! bridge sees and writes plain RTP, str0m does the ICE, DTLS, SRTP, RTCP and NACK work.
//!
//! `handle_*` with `now`, then `poll_event` until it returns `None`; `poll_timeout` says
//! when `handle_timeout` is next due. The runtime owns the socket (the call's relay port).

use codec::voice::VoiceCodec;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

/// Whether an SDP body describes a WebRTC endpoint: a DTLS-SRTP profile
/// (`UDP/TLS/RTP/SAVP(F)`, RFC 5764 8) on an audio or video m-line.
pub fn is_webrtc(body: &[u8]) -> bool {
    body.split(|b| *b == b'\n').any(|l| {
        let l = std::str::from_utf8(l).unwrap_or("");
        (l.starts_with("m=audio") || l.starts_with("m=video")) && l.contains("UDP/TLS/RTP/SAVP")
    })
}

/// The `a=mid` of the first audio m-line that is not rejected (port 0).
fn audio_mid(sdp: &str) -> Option<String> {
    let mut in_audio = false;
    for l in sdp.lines() {
        if let Some(m) = l.strip_prefix("m=") {
            in_audio = m.starts_with("audio ") && !m.starts_with("audio 0 ");
        } else if in_audio && let Some(mid) = l.strip_prefix("a=mid:") {
            return Some(mid.trim().to_string());
        }
    }
    None
}

/// Why a WebRTC offer or answer cannot be taken (a 488 with this as the Warning text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebRtcError {
    #[error("WebRTC offer without a DTLS fingerprint (RFC 8122 a=fingerprint)")]
    NoFingerprint,
    #[error("WebRTC offer without ICE credentials (a=ice-ufrag/a=ice-pwd)")]
    NoIce,
    #[error("no audio m-line")]
    NoAudio,
    #[error("no common audio codec (the edge takes opus/48000, PCMU/8000, PCMA/8000)")]
    NoCodec,
    #[error("malformed WebRTC SDP: {0}")]
    Sdp(String),
    #[error("no offer of ours waits for an answer")]
    NoPendingOffer,
}

/// An audio payload format negotiated on the WebRTC leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Voice(VoiceCodec),
    /// RFC 4733 telephone-event at this RTP clock.
    Dtmf(u32),
}

/// What the leg has for the bridge.
#[derive(Debug)]
pub enum LegEvent {
    /// A datagram to send from the leg's port.
    Transmit { to: SocketAddr, data: Vec<u8> },
    /// An RTP packet from the browser (decrypted, RTX unwrapped, de-duplicated).
    Rtp(Box<RtpPacket>),
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// ICE failed or timed out, or DTLS closed: the leg is dead.
    Closed,
}

/// Per-direction figures str0m reports once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegStats {
    pub packets: u64,
    pub bytes: u64,
    /// Fraction lost in the last report, 0..1.
    pub loss: f32,
    /// Interarrival jitter (RFC 3550 6.4.1) in RTP clock units (ingress only).
    pub jitter: u32,
    pub rtt: Option<Duration>,
}

/// One browser's audio media session.
pub struct WebRtcLeg {
    rtc: Rtc,
    local: SocketAddr,
    mid: Option<Mid>,
    pending: Option<SdpPendingOffer>,
    connected: bool,
    closed: bool,
    next: Option<Instant>,
    events: VecDeque<LegEvent>,
    /// Extended sequence number of the last packet written (str0m takes 64-bit ones).
    seq_out: Option<u64>,
    pub ingress: LegStats,
    pub egress: LegStats,
}

impl WebRtcLeg {
    /// A leg on `local` (the relay port the browser is to reach), offering or accepting
    /// `codecs` (in order of preference) and telephone-event at 48 and 8 kHz.
    pub fn new(now: Instant, local: SocketAddr, codecs: &[VoiceCodec]) -> WebRtcLeg {
        let mut cfg = Rtc::builder().set_ice_lite(true).set_rtp_mode(true).set_stats_interval(Some(Duration::from_secs(1))).clear_codecs();
        for c in codecs {
            cfg = match c {
                VoiceCodec::Opus => cfg.enable_opus(true, false),
                VoiceCodec::Pcmu => cfg.enable_pcmu(true, false),
                VoiceCodec::Pcma => cfg.enable_pcma(true, false),
            };
        }
        let cc = cfg.codec_config();
        // Payload types as Chrome numbers them (the answerer takes the offerer's anyway).
        cc.add_config(110.into(), None, Codec::Tele, str0m::media::Frequency::FORTY_EIGHT_KHZ, None, FormatParams::default());
        cc.add_config(126.into(), None, Codec::Tele, str0m::media::Frequency::EIGHT_KHZ, None, FormatParams::default());
        let mut rtc = cfg.build(now);
        if let Ok(c) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(c);
        }
        WebRtcLeg {
            rtc,
            local,
            mid: None,
            pending: None,
            connected: false,
            closed: false,
            next: Some(now),
            events: VecDeque::new(),
            seq_out: None,
            ingress: LegStats::default(),
            egress: LegStats::default(),
        }
    }

    /// Checks what str0m does not: a DTLS fingerprint and ICE credentials (RFC 8839 5.4,
    /// session or media level) and an audio m-line.
    pub fn check_remote(sdp: &str) -> Result<(), WebRtcError> {
        if !sdp.lines().any(|l| l.starts_with("m=audio")) {
            return Err(WebRtcError::NoAudio);
        }
        if !sdp.lines().any(|l| l.starts_with("a=fingerprint:")) {
            return Err(WebRtcError::NoFingerprint);
        }
        if !sdp.lines().any(|l| l.starts_with("a=ice-ufrag:")) || !sdp.lines().any(|l| l.starts_with("a=ice-pwd:")) {
            return Err(WebRtcError::NoIce);
        }
        Ok(())
    }

    /// Answers a browser's offer (its audio m-line; video m-lines are rejected with port 0).
    pub fn accept_offer(&mut self, offer: &str) -> Result<String, WebRtcError> {
        Self::check_remote(offer)?;
        let o = SdpOffer::from_sdp_string(offer).map_err(|e| WebRtcError::Sdp(e.to_string()))?;
        let answer = self.rtc.sdp_api().accept_offer(o).map_err(|e| WebRtcError::Sdp(e.to_string()))?.to_sdp_string();
        self.drain();
        // The audio m-line's mid (str0m announces it with an event only once connected).
        self.mid = audio_mid(&answer).map(|m| Mid::from(m.as_str()));
        if self.mid.is_none() {
            // The offer has audio (checked above) but str0m rejected it: nothing in common.
            return Err(WebRtcError::NoCodec);
        }
        if self.voice_formats().is_empty() {
            return Err(WebRtcError::NoCodec);
        }
        Ok(answer)
    }

    /// Our offer to a browser: one sendrecv audio m-line.
    pub fn create_offer(&mut self) -> String {
        let mut api = self.rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        self.mid = Some(mid);
        let (offer, pending) = api.apply().expect("a new m-line is a change");
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    /// A new offer to the browser with the audio in `dir` (hold, resume). When that changes
    /// nothing, an ICE restart (RFC 8445 9) makes it an offer all the same (str0m offers only
    /// changes).
    pub fn reoffer(&mut self, dir: Direction) -> String {
        let mut api = self.rtc.sdp_api();
        if let Some(mid) = self.mid {
            api.set_direction(mid, dir);
        }
        if !api.has_changes() {
            api.ice_restart(true);
        }
        let (offer, pending) = api.apply().expect("a direction change or an ICE restart is a change");
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    /// The browser's answer to [`Self::create_offer`] or [`Self::reoffer`].
    pub fn accept_answer(&mut self, answer: &str) -> Result<(), WebRtcError> {
        Self::check_remote(answer)?;
        let a = SdpAnswer::from_sdp_string(answer).map_err(|e| WebRtcError::Sdp(e.to_string()))?;
        let pending = self.pending.take().ok_or(WebRtcError::NoPendingOffer)?;
        self.rtc.sdp_api().accept_answer(pending, a).map_err(|e| WebRtcError::Sdp(e.to_string()))?;
        self.drain();
        if self.voice_formats().is_empty() {
            return Err(WebRtcError::NoCodec);
        }
        Ok(())
    }

    /// The negotiated payload types of the audio m-line, in the remote's order.
    pub fn formats(&self) -> Vec<(u8, Format)> {
        let Some(mid) = self.mid else { return vec![] };
        let Some(m) = self.rtc.media(mid) else { return vec![] };
        let cc = self.rtc.codec_config();
        m.remote_pts()
            .iter()
            .filter_map(|pt| {
                let p = cc.find(|p| p.pt() == *pt)?;
                let spec = p.spec();
                let f = match spec.codec {
                    Codec::Tele => Format::Dtmf(spec.clock_rate.get()),
                    c => Format::Voice(VoiceCodec::from_rtpmap(&c.to_string(), spec.clock_rate.get())?),
                };
                Some((**pt, f))
            })
            .collect()
    }

    /// The negotiated voice codecs (payload type, codec), the remote's preference first.
    pub fn voice_formats(&self) -> Vec<(u8, VoiceCodec)> {
        self.formats()
            .into_iter()
            .filter_map(|(pt, f)| match f {
                Format::Voice(c) => Some((pt, c)),
                Format::Dtmf(_) => None,
            })
            .collect()
    }

    /// The telephone-event payload type at `clock`, if negotiated.
    pub fn dtmf_pt(&self, clock: u32) -> Option<u8> {
        self.formats().into_iter().find(|(_, f)| *f == Format::Dtmf(clock)).map(|(pt, _)| pt)
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a datagram from `source` belongs to this leg (STUN with our ufrag, or the
    /// 5-tuple ICE selected).
    pub fn accepts(&self, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
        let Ok(contents) = data.try_into() else { return false };
        self.rtc.accepts(&Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: self.local, contents }))
    }

    /// A datagram from the browser.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else { return };
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: self.local, contents });
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(error = %e, "webrtc leg: input failed");
        }
        // RTP mode holds one received packet until the next poll: drain now.
        self.drain();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next.is_some_and(|at| at > now) {
            return;
        }
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(error = %e, "webrtc leg: timeout failed");
        }
        self.drain();
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed { None } else { self.next }
    }

    pub fn poll_event(&mut self) -> Option<LegEvent> {
        self.events.pop_front()
    }

    /// Sends an RTP packet to the browser (str0m numbers it on from `seq`, protects and
    /// paces it). `seq` is extended across 16-bit wraps here.
    pub fn write_rtp(&mut self, now: Instant, pt: u8, seq: u16, ts: u32, marker: bool, payload: Vec<u8>) {
        let Some(mid) = self.mid else { return };
        if !self.connected {
            return;
        }
        let ext = match self.seq_out {
            Some(last) => last.wrapping_add_signed(seq.wrapping_sub(last as u16) as i16 as i64),
            None => seq as u64,
        };
        if self.seq_out.is_none_or(|l| ext > l) {
            self.seq_out = Some(ext);
        }
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else { return };
        tx.write_rtp(RtpWrite::new(pt.into(), ext.into(), ts, now, payload).marker(marker));
        self.drain();
    }

    /// Ends the session (DTLS close alert is not sent by str0m; the browser's ICE consent
    /// freshness, RFC 7675, notices).
    pub fn close(&mut self) {
        self.rtc.disconnect();
        self.closed = true;
    }

    fn drain(&mut self) {
        loop {
            if !self.rtc.is_alive() {
                if !self.closed {
                    self.closed = true;
                    self.events.push_back(LegEvent::Closed);
                }
                self.next = None;
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    self.next = Some(at);
                    return;
                }
                Ok(Output::Transmit(t)) => self.events.push_back(LegEvent::Transmit { to: t.destination, data: t.contents.into() }),
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.connected = true;
                        self.events.push_back(LegEvent::Connected);
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.rtc.disconnect(),
                    Event::MediaAdded(m) if m.kind == MediaKind::Audio && self.mid.is_none() => self.mid = Some(m.mid),
                    Event::RtpPacket(p) => self.events.push_back(LegEvent::Rtp(Box::new(p))),
                    Event::MediaIngressStats(s) => {
                        self.ingress =
                            LegStats { packets: s.packets, bytes: s.bytes, loss: s.loss.unwrap_or(0.0), jitter: s.jitter, rtt: s.rtt }
                    }
                    Event::MediaEgressStats(s) => {
                        self.egress = LegStats { packets: s.packets, bytes: s.bytes, loss: s.loss.unwrap_or(0.0), jitter: 0, rtt: s.rtt }
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::debug!(error = %e, "webrtc leg: poll failed");
                    self.rtc.disconnect();
                }
            }
        }
    }
}
