//! Media anchoring of calls (sans-IO): the proxy hands every SDP body of an anchored
//! dialog here; each `m=` line gets a relay session, the body is rewritten to the relay's
//! address and ports (RFC 3264 offer/answer, RFC 3605 `a=rtcp`), SDES-SRTP is bridged per
//! leg policy (RFC 4568), and at the end a call record with per-direction quality is made.

use super::bridge::{Bridge as MediaBridge, BridgeError, SipAudio};
use super::interwork::{PlainAudio, PlainSdp, read_plain, sip_offer_formats};
use super::relay::{Datagram, Forward, NoSockets, Ports, Relay, RelayConfig, RelayError, RemoteMedia, SessionReport, Side};
use super::sdp::{Direction, Sdp};
use super::webrtc::{WebRtcError, WebRtcLeg, is_webrtc};
use crate::config::SrtpPolicy;
use crate::core::Peer;
use base64::Engine as _;
use codec::quality::CodecImpairment;
use codec::srtp::{Profile, Srtp};
use codec::voice::VoiceCodec;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Whether an SDP body is an offer or an answer (RFC 3264).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    Offer,
    Answer,
}

/// Why a body could not be anchored (mapped to a SIP response by the proxy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("malformed SDP: {0}")]
    Sdp(#[from] super::sdp::SdpError),
    #[error("{0}")]
    Relay(#[from] RelayError),
    #[error("SRTP (RTP/SAVP with a=crypto) required on this leg")]
    SrtpRequired,
    #[error("no supported a=crypto suite offered")]
    NoCryptoSuite,
    #[error("{0}")]
    WebRtc(#[from] WebRtcError),
    #[error("{0}")]
    Bridge(#[from] BridgeError),
    #[error("no common audio codec and no transcoding path (the edge transcodes opus, PCMU and PCMA)")]
    NoCommonCodec,
    #[error("a new offer crossed one in progress on a call bridged to WebRTC")]
    BridgedReoffer,
}

impl MediaError {
    /// The SIP status for this failure.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            MediaError::Relay(_) => (503, "Service Unavailable (no media relay ports)"),
            MediaError::Sdp(_) => (400, "Bad Request (malformed SDP)"),
            // Glare (RFC 3261 14.2): the sender tries again later.
            MediaError::BridgedReoffer => (491, "Request Pending"),
            _ => (488, "Not Acceptable Here"),
        }
    }

    /// The response that refuses the request: status, reason phrase and the `Warning`
    /// header.
    pub fn reply(&self) -> (u16, &'static str, String) {
        let (code, reason) = self.status();
        (code, reason, self.warning())
    }

    /// The `Warning` header (RFC 3261 20.43) that says why: 305 for media formats, 399
    /// otherwise.
    pub fn warning(&self) -> String {
        let code = match self {
            MediaError::NoCommonCodec | MediaError::WebRtc(WebRtcError::NoCodec) | MediaError::NoCryptoSuite => 305,
            _ => 399,
        };
        format!("Warning: {code} edge \"{}\"\r\n", self.to_string().replace('"', "'"))
    }
}

/// Why a call ended (in the call record).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A BYE from the caller (A) or the callee (B).
    ByeFromCaller,
    ByeFromCallee,
    /// CANCEL before an answer (487).
    Cancelled,
    /// The INVITE failed with this final status.
    Failed(u16),
    /// No media in either direction for the inactivity time: the edge sent BYE both ways.
    MediaTimeout,
    /// Hung up through the admin API.
    HungUp,
    /// Longer than `sip.max_call_secs` (or its BYE was never seen).
    MaxDuration,
    /// The answer of a WebRTC <-> SIP call could not be bridged (no codec the edge can
    /// handle, no fingerprint): the edge sent BYE both ways.
    Unbridgeable,
}

/// A call in progress, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActiveCall {
    pub call_id: String,
    #[serde(flatten)]
    pub parties: CallParties,
    /// `ringing`, `answered` or `trying`.
    pub state: &'static str,
    pub anchored: bool,
    /// Seconds since the INVITE, and since the answer.
    pub age_secs: f64,
    pub talk_secs: f64,
    /// Transport and address of the previous hop towards the caller and of the next hop
    /// towards the callee (known once answered).
    pub caller_leg: Option<String>,
    pub callee_leg: Option<String>,
    /// Live media figures per anchored media line.
    pub media: Vec<SessionReport>,
}

/// Who a call is between, as a contact-centre pop-up or a call log shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallParties {
    /// `inbound` (to a local user), `outbound` (from a local user to a trunk), `internal`
    /// (local to local) or `transit`.
    pub direction: &'static str,
    /// Caller ID: the From user part (number) and display name.
    pub caller: String,
    pub caller_name: Option<String>,
    /// The called number or user (Request-URI user part).
    pub called: String,
    /// The local user the call is for (inbound/internal), or that placed it (outbound).
    pub agent: Option<String>,
}

/// Where a call is transferred (REFER, RFC 3515).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transfer {
    /// User part (number) of the Refer-To target.
    pub to: String,
    /// `caller` or `callee`: who sent the REFER.
    pub by: &'static str,
}

/// What happens to a call, for subscribers (SSE, webhooks).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallEvent {
    /// `ringing`, `answered`, `transferred` or `ended`.
    pub event: &'static str,
    pub call_id: String,
    #[serde(flatten)]
    pub parties: CallParties,
    /// Set on `ended`: why, durations and the per-direction quality.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<CallRecord>,
    /// Set on `transferred`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// What the edge needs to end a confirmed dialog by itself (BYE to both ends).
#[derive(Debug, Clone)]
pub struct DialogEnds {
    /// Previous hop towards the caller and next hop towards the callee.
    pub caller_peer: Peer,
    pub callee_peer: Peer,
    /// Remote targets (Contact URIs).
    pub caller_contact: String,
    pub callee_contact: String,
    /// From of the INVITE (caller's tag) and To of the 2xx (callee's tag), full values.
    pub from: String,
    pub to: String,
    /// Route sets towards each end (Record-Route entries beyond us).
    pub routes_to_caller: Vec<String>,
    pub routes_to_callee: Vec<String>,
}

/// One leg's SDES state of one media line.
#[derive(Default, Clone)]
struct Keys {
    /// The key (key||salt) the relay gave this leg, with its suite.
    ours: Option<(Profile, Vec<u8>)>,
    /// The key this leg announced for what it sends.
    theirs: Option<Vec<u8>>,
}

/// What was done to an offer's media line, applied again to its answer.
#[derive(Debug, Clone, PartialEq)]
enum Bridge {
    None,
    /// The offerer sends SRTP, the answerer gets plain RTP.
    DecryptOfferer {
        tag: String,
        profile: Profile,
        proto: String,
    },
    /// The offerer sends plain RTP, the answerer gets SDES-SRTP.
    EncryptAnswerer {
        proto: String,
    },
}

struct MLine {
    session: Option<u64>,
    keys: [Keys; 2],
    held: [bool; 2],
}

/// A call whose one leg is a browser (WebRTC) and the other a SIP endpoint (issue #8).
struct WebCall {
    /// The browser's leg.
    web: Side,
    sid: u64,
    state: WebState,
    /// What the last answer became, given again for a second answer (183, then 200).
    answered: Option<Vec<u8>>,
    /// The SIP leg's profile and the `a=crypto` value the edge gave it (re-offers repeat them).
    sip_proto: &'static str,
    sip_crypto: Option<String>,
    /// `o=` version of the SDP the edge writes for the SIP leg.
    version: u64,
    /// RTCP multiplexed on the SIP leg (RFC 5761), as negotiated.
    sip_mux: bool,
}

impl WebCall {
    /// The edge's next SDP for the SIP leg of a bridged call (a re-offer or the answer to
    /// one): the negotiated codec and telephone-event, the same profile and `a=crypto`, a new
    /// `o=` version (RFC 3264 8).
    fn next_sip_sdp(&mut self, addr: IpAddr, port: u16, sip: SipAudio, direction: Direction, mux: bool) -> Vec<u8> {
        self.version += 1;
        PlainSdp {
            addr,
            port,
            session: (self.sid, self.version),
            formats: &[(sip.pt, sip.codec)],
            dtmf: sip.dtmf_pt.map(|d| (d, sip.codec.clock())),
            proto: self.sip_proto,
            crypto: self.sip_crypto.clone(),
            direction,
            mux,
        }
        .write()
        .into_bytes()
    }
}

enum WebState {
    /// The browser offered; the SIP leg was offered the browser's codecs and G.711.
    BrowserOffered {
        offer: String,
        browser: Vec<(u8, VoiceCodec)>,
        sip_offer: Vec<(u8, VoiceCodec)>,
    },
    /// The SIP leg offered; the browser was offered by this leg.
    SipOffered {
        leg: Box<WebRtcLeg>,
        sip: PlainAudio,
    },
    Bridged,
    /// The browser sent a new offer (hold, resume, ICE restart): str0m's answer waits for
    /// the SIP leg's answer to the edge's new offer.
    WebReoffer {
        answer: String,
    },
    /// The SIP leg sent a new offer in this direction; the browser got str0m's new offer.
    SipReoffer {
        direction: Direction,
        mux: bool,
    },
}

struct Call {
    /// Media goes through the relay (else the dialog is only tracked).
    anchored: bool,
    /// The callee is reached over WebSocket: a browser (issue #8).
    callee_webrtc: bool,
    /// Both legs are browsers: their SDP (ICE, DTLS) passes untouched.
    passthrough: bool,
    /// The first offer went to browsers and SIP devices with different bodies (`Some`, with
    /// whether the caller is a browser); the first final answer decides which path stays,
    /// early answers (183) go through their own path meanwhile.
    forked_mixed: Option<bool>,
    web: Option<WebCall>,
    parties: CallParties,
    ringing: bool,
    /// Why the bridged call's answer could not be taken: the edge ends the call.
    unbridgeable: Option<String>,
    caller_tag: String,
    policy: [SrtpPolicy; 2],
    lines: Vec<MLine>,
    last_offer: Option<(Side, Vec<Bridge>)>,
    started: Instant,
    answered: Option<Instant>,
    from_uri: String,
    to_uri: String,
    dialog: Option<DialogEnds>,
    cseq: [u32; 2],
}

/// End-of-call record: written as one JSON line by the runtime, logged, and fed into the
/// Prometheus histograms.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallRecord {
    pub call_id: String,
    #[serde(flatten)]
    pub parties: CallParties,
    pub from: String,
    pub to: String,
    pub reason: EndReason,
    /// Seconds from INVITE to the end, and from the answer to the end (0 if never answered).
    pub duration_secs: f64,
    pub talk_secs: f64,
    /// One entry per anchored media line.
    pub media: Vec<SessionReport>,
}

fn idx(s: Side) -> usize {
    match s {
        Side::A => 0,
        Side::B => 1,
    }
}

/// Per-worker media anchoring.
pub struct Anchor {
    relay: Relay,
    ports: Box<dyn Ports>,
    advertise: IpAddr,
    calls: HashMap<String, Call>,
    by_session: HashMap<u64, String>,
}

impl Anchor {
    /// An anchor writing `advertise` into SDP, binding relay sockets through `ports`.
    pub fn new(cfg: RelayConfig, advertise: IpAddr, ports: Box<dyn Ports>) -> Anchor {
        Anchor { relay: Relay::new(cfg), ports, advertise, calls: HashMap::new(), by_session: HashMap::new() }
    }

    /// An anchor without sockets (tests).
    pub fn detached(cfg: RelayConfig, advertise: IpAddr) -> Anchor {
        Anchor::new(cfg, advertise, Box::new(NoSockets))
    }

    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Calls currently anchored.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    pub fn has(&self, call_id: &str) -> bool {
        self.calls.contains_key(call_id)
    }

    /// Starts tracking a dialog at its initial INVITE (anchoring its media when
    /// `anchored`). `policy` is the SRTP policy of (caller leg, callee leg).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        now: Instant,
        call_id: &str,
        caller_tag: &str,
        anchored: bool,
        parties: CallParties,
        policy: (SrtpPolicy, SrtpPolicy),
        from: &str,
        to: &str,
    ) {
        self.calls.entry(call_id.to_string()).or_insert_with(|| Call {
            anchored,
            callee_webrtc: false,
            passthrough: false,
            forked_mixed: None,
            web: None,
            parties,
            ringing: false,
            unbridgeable: None,
            caller_tag: caller_tag.to_string(),
            policy: [policy.0, policy.1],
            lines: Vec::new(),
            last_offer: None,
            started: now,
            answered: None,
            from_uri: from.to_string(),
            to_uri: to.to_string(),
            dialog: None,
            cseq: [0, 0],
        });
    }

    /// Whether an offer from the caller may need a WebRTC <-> SIP bridge, given whether the
    /// request goes to WS/WSS targets (browsers) and to others (so the call must be anchored
    /// whatever the anchoring policy says).
    pub fn needs_bridge(offer: &[u8], ws_targets: bool, other_targets: bool) -> bool {
        if is_webrtc(offer) { other_targets } else { ws_targets }
    }

    /// The caller's first offer, forwarded to WS/WSS targets (`ws_targets`: browsers) and/or
    /// others. Returns the body for the other targets and, when the call goes to both kinds
    /// (a user's browser and desk phone), a different body for the WS/WSS ones: the
    /// browser's offer untouched (browser caller) or a WebRTC offer made by the edge (SIP
    /// caller). Whichever kind answers first decides; the other path is dropped then.
    pub fn handle_initial_offer(
        &mut self,
        now: Instant,
        call_id: &str,
        body: &[u8],
        ws_targets: bool,
        other_targets: bool,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), MediaError> {
        let Some(call) = self.calls.get_mut(call_id).filter(|c| c.anchored) else { return Ok((body.to_vec(), None)) };
        if !(ws_targets && other_targets) {
            call.callee_webrtc = ws_targets;
            return Ok((self.handle_sdp(now, call_id, Side::A, SdpKind::Offer, body)?, None));
        }
        call.forked_mixed = Some(is_webrtc(body));
        if is_webrtc(body) {
            // SIP devices get the bridge's plain offer, browsers the caller's own.
            let plain = self.start_web(now, call_id, Side::A, body, true)?;
            return Ok((plain, Some(body.to_vec())));
        }
        // SIP devices get the anchored offer (first: it takes the m-line indices of the
        // relay sessions), browsers a WebRTC offer of the bridge (a session of its own).
        let plain = self.handle_sdp(now, call_id, Side::A, SdpKind::Offer, body)?;
        let web = self.start_web(now, call_id, Side::A, body, false)?;
        Ok((plain, Some(web)))
    }

    /// A call forked to both kinds was answered by `web_answered` (a browser) or not: the
    /// other path's relay sessions and state go.
    fn settle_forked(&mut self, call_id: &str, web_answered: bool, now: Instant) {
        let Some(call) = self.calls.get_mut(call_id) else { return };
        let Some(browser_offered) = call.forked_mixed.take() else { return };
        let web_sid = call.web.as_ref().map(|w| w.sid);
        // Browser caller + browser answer, or SIP caller + SIP answer: the bridge goes.
        let drop_bridge = web_answered == browser_offered;
        let mut closing = vec![];
        call.lines.retain(|l| {
            let keep = match l.session {
                Some(s) if Some(s) == web_sid => !drop_bridge,
                _ => drop_bridge,
            };
            if !keep && let Some(s) = l.session {
                closing.push(s);
            }
            keep
        });
        if drop_bridge {
            call.web = None;
            call.passthrough = browser_offered;
        }
        for s in closing {
            self.by_session.remove(&s);
            self.relay.close(s, now, self.ports.as_mut());
        }
    }

    /// Which side sent an in-dialog request, from its From tag.
    pub fn side_of(&self, call_id: &str, from_tag: &str) -> Option<Side> {
        let c = self.calls.get(call_id)?;
        Some(if c.caller_tag == from_tag { Side::A } else { Side::B })
    }

    /// Notes a request's CSeq (for BYEs the edge may have to send itself).
    pub fn note_cseq(&mut self, call_id: &str, side: Side, cseq: u32) {
        if let Some(c) = self.calls.get_mut(call_id) {
            let v = &mut c.cseq[idx(side)];
            *v = (*v).max(cseq);
        }
    }

    /// A call's parties, the first time it rings (`None` afterwards or if unknown).
    pub fn ringing(&mut self, call_id: &str) -> Option<CallParties> {
        let c = self.calls.get_mut(call_id)?;
        if c.ringing || c.answered.is_some() {
            return None;
        }
        c.ringing = true;
        Some(c.parties.clone())
    }

    /// Seconds since a call's INVITE.
    pub fn age(&self, call_id: &str, now: Instant) -> Option<f64> {
        self.calls.get(call_id).map(|c| now.saturating_duration_since(c.started).as_secs_f64())
    }

    /// A call's parties.
    pub fn parties(&self, call_id: &str) -> Option<CallParties> {
        self.calls.get(call_id).map(|c| c.parties.clone())
    }

    /// An answer to a bridged call (WebRTC on one leg) was refused with `error`: the call
    /// cannot carry media, so [`Anchor::unbridgeable`] reports it for teardown. `false` when
    /// the call is not bridged (its answer then passes untouched, as before).
    pub fn answer_refused(&mut self, call_id: &str, error: &MediaError) -> bool {
        match self.calls.get_mut(call_id) {
            Some(c) if c.web.is_some() => {
                c.unbridgeable = Some(error.to_string());
                true
            }
            _ => false,
        }
    }

    /// Answered calls whose answer could not be bridged, with why.
    pub fn unbridgeable(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.answered.is_some())
            .filter_map(|(id, c)| c.unbridgeable.clone().map(|why| (id.clone(), why)))
            .collect();
        v.sort();
        v
    }

    /// A DTMF digit in a SIP INFO sent by `from` on a bridged call: when `from` is the
    /// browser and the SIP leg negotiated telephone-event, the bridge sends it there as an
    /// RFC 4733 event and `true` says the INFO was taken (answer it, do not forward it).
    pub fn info_digit(&mut self, now: Instant, call_id: &str, from: Side, event: u8, duration: Duration) -> bool {
        let Some(web) = self.calls.get(call_id).and_then(|c| c.web.as_ref()) else { return false };
        if from != web.web || !matches!(web.state, WebState::Bridged) {
            return false;
        }
        let sid = web.sid;
        self.relay.bridge_mut(sid).is_some_and(|b| b.send_digit(now, event, duration))
    }

    /// `true` once the call was answered.
    pub fn is_answered(&self, call_id: &str) -> bool {
        self.calls.get(call_id).is_some_and(|c| c.answered.is_some())
    }

    /// The dialog was answered (2xx to the initial INVITE).
    pub fn answered(&mut self, now: Instant, call_id: &str, ends: DialogEnds) {
        if let Some(c) = self.calls.get_mut(call_id) {
            if c.answered.is_none() {
                for s in c.lines.iter().filter_map(|l| l.session) {
                    self.relay.touch(s, now);
                }
            }
            c.answered.get_or_insert(now);
            c.dialog.get_or_insert(ends);
        }
    }

    /// The dialog data and next CSeq per side, for the edge's own BYEs.
    pub fn dialog(&self, call_id: &str) -> Option<(&DialogEnds, [u32; 2])> {
        let c = self.calls.get(call_id)?;
        Some((c.dialog.as_ref()?, c.cseq))
    }

    /// Rewrites an SDP body sent by `from` in dialog `call_id` for the other leg, and
    /// updates the relay. Returns the new body.
    pub fn handle_sdp(&mut self, now: Instant, call_id: &str, from: Side, kind: SdpKind, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let Some(call) = self.calls.get_mut(call_id).filter(|c| c.anchored) else { return Ok(body.to_vec()) };
        if kind == SdpKind::Answer && call.forked_mixed.is_some() {
            self.settle_forked(call_id, is_webrtc(body), now);
        }
        self.handle_sdp_on(now, call_id, from, kind, body, None)
    }

    /// An answer in a provisional response (183 with SDP: early media). On a call forked to
    /// browsers and SIP devices each kind's early answer goes through its own path and
    /// nothing is settled: another branch may still answer for good (RFC 3261 13.2.2.4,
    /// one early dialog per branch). Otherwise as [`Anchor::handle_sdp`].
    pub fn handle_early_answer(&mut self, now: Instant, call_id: &str, from: Side, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let Some(call) = self.calls.get_mut(call_id).filter(|c| c.anchored) else { return Ok(body.to_vec()) };
        let Some(browser_caller) = call.forked_mixed else { return self.handle_sdp(now, call_id, from, SdpKind::Answer, body) };
        let web_answer = is_webrtc(body);
        if browser_caller && web_answer {
            // Browser to browser: untouched.
            return Ok(body.to_vec());
        }
        // A phone answering a browser, or a browser answering a phone, meets the bridge; a
        // phone answering a phone, the plain anchoring.
        let bridge = browser_caller || web_answer;
        self.handle_sdp_on(now, call_id, from, SdpKind::Answer, body, Some(bridge))
    }

    /// [`Anchor::handle_sdp`] once a fork is settled, or for an early answer of a fork
    /// (`bridge`: whether it is for the bridge's path or the plain one).
    fn handle_sdp_on(
        &mut self,
        now: Instant,
        call_id: &str,
        from: Side,
        kind: SdpKind,
        body: &[u8],
        bridge: Option<bool>,
    ) -> Result<Vec<u8>, MediaError> {
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(body.to_vec()) };
        if call.passthrough {
            return Ok(body.to_vec());
        }
        if call.web.is_some() && bridge != Some(false) {
            return self.handle_web_sdp(now, call_id, from, kind, body);
        }
        if kind == SdpKind::Offer {
            let web_from = is_webrtc(body);
            let web_to = match from {
                Side::A => call.callee_webrtc,
                // The callee's re-offer towards the caller: the caller's first offer said.
                Side::B => false,
            };
            if web_from && web_to {
                // Browser to browser: ICE and DTLS end to end.
                call.passthrough = true;
                return Ok(body.to_vec());
            }
            if web_from != web_to {
                return self.start_web(now, call_id, from, body, web_from);
            }
        }
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(body.to_vec()) };
        let mut sdp = Sdp::parse(body)?;
        let to = from.other();
        let mut bridges = Vec::with_capacity(sdp.media.len());
        let prior = match kind {
            SdpKind::Answer => call.last_offer.clone().filter(|(s, _)| *s == to).map(|(_, b)| b),
            SdpKind::Offer => None,
        };
        for i in 0..sdp.media.len() {
            let m = sdp.media[i].clone();
            let anchorable = m.port != 0 && m.proto.starts_with("RTP/") && m.kind != "application";
            if !anchorable {
                bridges.push(Bridge::None);
                continue;
            }
            while call.lines.len() <= i {
                call.lines.push(MLine { session: None, keys: Default::default(), held: [false; 2] });
            }
            let sid = match call.lines[i].session {
                Some(s) => s,
                None => {
                    let (s, _, _) = self.relay.open(now, self.ports.as_mut())?;
                    self.by_session.insert(s, call_id.to_string());
                    call.lines[i].session = Some(s);
                    s
                }
            };
            // Where this leg is and what it sends.
            let conn = sdp.connection(&m);
            let unspecified = conn.is_none_or(|ip| ip.is_unspecified());
            if let Some(ip) = conn.filter(|_| !unspecified) {
                let rtcp_port = sdp.rtcp_port(&m);
                let (clock_rate, codec) = codec_of(&sdp, &m);
                let mux = sdp.rtcp_mux(&m);
                self.relay.set_remote(
                    sid,
                    from,
                    RemoteMedia { rtp: SocketAddr::new(ip, m.port), rtcp: Some(SocketAddr::new(ip, rtcp_port)), mux, clock_rate, codec },
                )?;
            }
            call.lines[i].held[idx(from)] = unspecified || sdp.direction(&m) != Direction::SendRecv;
            let held = call.lines[i].held.iter().any(|h| *h);
            self.relay.set_hold(sid, held);

            // SDES-SRTP.
            let crypto: Vec<String> = sdp.media_attrs(&m, "crypto").map(String::from).collect();
            let secure = m.proto.contains("SAVP") && !crypto.is_empty();
            let bridge = match kind {
                SdpKind::Offer => {
                    if call.policy[idx(from)] == SrtpPolicy::Sdes && !secure {
                        return Err(MediaError::SrtpRequired);
                    }
                    if secure && call.policy[idx(to)] == SrtpPolicy::Plain {
                        let (tag, profile, key) = pick_crypto(&crypto).ok_or(MediaError::NoCryptoSuite)?;
                        set_theirs(&mut self.relay, sid, from, &mut call.lines[i].keys[idx(from)], profile, key)?;
                        sdp.remove_attr(i, "crypto");
                        set_proto(&mut sdp, i, &m.proto.replace("SAVP", "AVP"));
                        Bridge::DecryptOfferer { tag, profile, proto: m.proto.clone() }
                    } else if !m.proto.contains("SAVP") && call.policy[idx(to)] == SrtpPolicy::Sdes {
                        let key = ours(&mut self.relay, sid, to, &mut call.lines[i].keys[idx(to)], Profile::Aes128CmSha1_80)?;
                        set_proto(&mut sdp, i, &m.proto.replace("AVP", "SAVP"));
                        add_attr(&mut sdp, i, format!("crypto:1 {} inline:{key}", Profile::Aes128CmSha1_80.name()));
                        Bridge::EncryptAnswerer { proto: m.proto.clone() }
                    } else {
                        self.relay.set_srtp(sid, from, None, None)?;
                        self.relay.set_srtp(sid, to, None, None)?;
                        Bridge::None
                    }
                }
                SdpKind::Answer => match prior.as_ref().and_then(|p| p.get(i)).cloned().unwrap_or(Bridge::None) {
                    Bridge::DecryptOfferer { tag, profile, proto } => {
                        // The answerer (plain) is `from`; the offerer `to` gets our key.
                        let key = ours(&mut self.relay, sid, to, &mut call.lines[i].keys[idx(to)], profile)?;
                        sdp.remove_attr(i, "crypto");
                        set_proto(&mut sdp, i, &proto);
                        add_attr(&mut sdp, i, format!("crypto:{tag} {} inline:{key}", profile.name()));
                        Bridge::None
                    }
                    Bridge::EncryptAnswerer { proto } => {
                        if secure {
                            let (_, profile, key) = pick_crypto(&crypto).ok_or(MediaError::NoCryptoSuite)?;
                            set_theirs(&mut self.relay, sid, from, &mut call.lines[i].keys[idx(from)], profile, key)?;
                        }
                        sdp.remove_attr(i, "crypto");
                        set_proto(&mut sdp, i, &proto);
                        Bridge::None
                    }
                    Bridge::None => Bridge::None,
                },
            };
            bridges.push(bridge);
            // Point the receiver at the relay: it sends to its own leg's port.
            let port = self.relay.port(sid, to).ok_or(RelayError::UnknownSession)?;
            let has_rtcp_attr = sdp.media_attrs(&sdp.media[i], "rtcp").next().is_some();
            if unspecified {
                // Hold with c=0.0.0.0 (RFC 2543 style): keep the null address, hide the port.
                let keep = sdp.connection(&sdp.media[i]).unwrap_or(IpAddr::from([0, 0, 0, 0]));
                sdp.set_address(i, keep, port, has_rtcp_attr.then_some(port + 1), false);
            } else {
                sdp.set_address(i, self.advertise, port, has_rtcp_attr.then_some(port + 1), true);
            }
            // ICE candidates would send media around the relay.
            for a in ["candidate", "remote-candidates", "end-of-candidates", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite"] {
                sdp.remove_attr(i, a);
            }
        }
        if kind == SdpKind::Offer {
            call.last_offer = Some((from, bridges));
        }
        Ok(sdp.write().into_bytes())
    }

    /// The first offer of a call with one browser leg: `from` offered, and it is the
    /// browser when `browser_offered`.
    fn start_web(&mut self, now: Instant, call_id: &str, from: Side, body: &[u8], browser_offered: bool) -> Result<Vec<u8>, MediaError> {
        let to = from.other();
        let sdp = Sdp::parse(body)?;
        if browser_offered {
            let text = std::str::from_utf8(body).map_err(|_| super::sdp::SdpError::NotUtf8)?;
            WebRtcLeg::check_remote(text)?;
        }
        let audio = read_plain(&sdp).ok_or(WebRtcError::NoAudio)?;
        if audio.formats.is_empty() {
            return Err(MediaError::NoCommonCodec);
        }
        let call = self.calls.get_mut(call_id).ok_or(RelayError::UnknownSession)?;
        let policy = call.policy;
        if !browser_offered && policy[idx(from)] == SrtpPolicy::Sdes && !audio.proto.contains("SAVP") {
            return Err(MediaError::SrtpRequired);
        }
        let (sid, _, _) = self.relay.open(now, self.ports.as_mut())?;
        self.by_session.insert(sid, call_id.to_string());
        call.lines.push(MLine { session: Some(sid), keys: Default::default(), held: [false; 2] });
        let line = call.lines.len() - 1;
        let port_to = self.relay.port(sid, to).ok_or(RelayError::UnknownSession)?;
        if browser_offered {
            // The SIP leg is offered the browser's codecs and G.711 (transcoded), and
            // telephone-event/8000.
            let formats = sip_offer_formats(&audio.formats);
            let dtmf_pt = audio.dtmf.iter().find(|d| d.1 == 8_000).map(|d| d.0).unwrap_or(101);
            let (proto, crypto) = if policy[idx(to)] == SrtpPolicy::Sdes {
                let key = ours(&mut self.relay, sid, to, &mut call.lines[line].keys[idx(to)], Profile::Aes128CmSha1_80)?;
                ("RTP/SAVP", Some(format!("1 {} inline:{key}", Profile::Aes128CmSha1_80.name())))
            } else {
                ("RTP/AVP", None)
            };
            let out = PlainSdp {
                addr: self.advertise,
                port: port_to,
                session: (sid, 1),
                formats: &formats,
                dtmf: Some((dtmf_pt, 8_000)),
                proto,
                crypto,
                direction: Direction::SendRecv,
                mux: true,
            }
            .write();
            let offer = String::from_utf8_lossy(body).into_owned();
            let sip_crypto = (proto == "RTP/SAVP").then(|| out.lines().find_map(|l| l.strip_prefix("a=crypto:")).unwrap_or("").to_string());
            call.web = Some(WebCall {
                web: from,
                sid,
                state: WebState::BrowserOffered { offer, browser: audio.formats, sip_offer: formats },
                answered: None,
                sip_proto: proto,
                sip_crypto,
                version: 1,
                sip_mux: false,
            });
            return Ok(out.into_bytes());
        }
        // The SIP leg offered: it is reached where its SDP says; SDES keys are taken.
        set_sip_remote(&mut self.relay, sid, from, &audio)?;
        if audio.proto.contains("SAVP") {
            let (_, profile, key) = pick_crypto(&audio.crypto).ok_or(MediaError::NoCryptoSuite)?;
            set_theirs(&mut self.relay, sid, from, &mut call.lines[line].keys[idx(from)], profile, key)?;
        }
        // The browser is offered the SIP leg's codecs first (no transcoding if it takes
        // one), then the others the edge transcodes.
        let mut codecs: Vec<VoiceCodec> = audio.formats.iter().map(|f| f.1).collect();
        for c in [VoiceCodec::Opus, VoiceCodec::Pcmu, VoiceCodec::Pcma] {
            if !codecs.contains(&c) {
                codecs.push(c);
            }
        }
        codecs.dedup();
        let mut leg = WebRtcLeg::new(now, SocketAddr::new(self.advertise, port_to), &codecs);
        let offer = leg.create_offer();
        call.web = Some(WebCall {
            web: to,
            sid,
            state: WebState::SipOffered { leg: Box::new(leg), sip: audio },
            answered: None,
            sip_proto: "RTP/AVP",
            sip_crypto: None,
            version: 1,
            sip_mux: false,
        });
        Ok(offer.into_bytes())
    }

    /// SDP of a call with one browser leg after its first offer: the answer sets up the
    /// bridge; a second answer (a 200 after a 183) gets the same; new offers are refused.
    fn handle_web_sdp(&mut self, now: Instant, call_id: &str, from: Side, kind: SdpKind, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let call = self.calls.get_mut(call_id).ok_or(RelayError::UnknownSession)?;
        let Some(web) = call.web.as_mut() else { return Ok(body.to_vec()) };
        if kind == SdpKind::Offer {
            return self.web_reoffer(call_id, from, body);
        }
        let sid = web.sid;
        let port_web = self.relay.port(sid, web.web).ok_or(RelayError::UnknownSession)?;
        let port_sip = self.relay.port(sid, web.web.other()).ok_or(RelayError::UnknownSession)?;
        let ssrc = fnv(call_id.as_bytes()) as u32 | 1;
        let start = ((fnv(call_id.as_bytes()) >> 32) as u16 & 0x7fff, (fnv(call_id.as_bytes()) >> 8) as u32);
        let line = call.lines.iter().position(|l| l.session == Some(sid)).unwrap_or(0);
        match std::mem::replace(&mut web.state, WebState::Bridged) {
            WebState::Bridged => {
                // A second answer: the SIP leg may have moved.
                if from != web.web
                    && let Ok(sdp) = Sdp::parse(body)
                    && let Some(a) = read_plain(&sdp)
                {
                    let web_side = web.web;
                    let again = web.answered.clone().unwrap_or_default();
                    set_sip_remote(&mut self.relay, sid, web_side.other(), &a)?;
                    return Ok(again);
                }
                Ok(web.answered.clone().unwrap_or_default())
            }
            WebState::WebReoffer { answer } => {
                // The SIP leg answered the edge's new offer: the browser gets str0m's answer.
                if let Ok(sdp) = Sdp::parse(body)
                    && let Some(a) = read_plain(&sdp)
                {
                    set_sip_remote(&mut self.relay, sid, from, &a)?;
                }
                web.answered = Some(answer.clone().into_bytes());
                Ok(answer.into_bytes())
            }
            WebState::SipReoffer { direction, mux } => {
                // The browser answered str0m's new offer: the SIP leg gets the edge's answer.
                let text = std::str::from_utf8(body).map_err(|_| super::sdp::SdpError::NotUtf8)?;
                let bridge = self.relay.bridge_mut(sid).ok_or(RelayError::UnknownSession)?;
                bridge.web_mut().accept_answer(text)?;
                Ok(web.next_sip_sdp(self.advertise, port_sip, bridge.sip(), answer_direction(direction), mux))
            }
            WebState::BrowserOffered { offer, browser, sip_offer } => {
                // The SIP leg answered.
                let web_side = web.web;
                let sdp = Sdp::parse(body)?;
                let a = read_plain(&sdp).ok_or(MediaError::NoCommonCodec)?;
                let Some(&(pt, codec)) = a.formats.iter().find(|f| sip_offer.contains(f)).or(a.formats.first()) else {
                    web.state = WebState::BrowserOffered { offer, browser, sip_offer };
                    return Err(MediaError::NoCommonCodec);
                };
                if a.proto.contains("SAVP") {
                    let (_, profile, key) = pick_crypto(&a.crypto).ok_or(MediaError::NoCryptoSuite)?;
                    set_theirs(&mut self.relay, sid, from, &mut call.lines[line].keys[idx(from)], profile, key)?;
                }
                // The browser answers with the SIP leg's codec when it offered it (no
                // transcoding), else with its own ones.
                let codecs: Vec<VoiceCodec> =
                    if browser.iter().any(|b| b.1 == codec) { vec![codec] } else { browser.iter().map(|b| b.1).collect() };
                let mut leg = WebRtcLeg::new(now, SocketAddr::new(self.advertise, port_web), &codecs);
                let answer = leg.accept_offer(&offer)?;
                let bridge = MediaBridge::new(leg, SipAudio { codec, pt, dtmf_pt: a.dtmf_for(codec) }, ssrc, start)?;
                set_sip_remote(&mut self.relay, sid, from, &a)?;
                self.relay.set_bridge(sid, web_side, bridge)?;
                let call = self.calls.get_mut(call_id).ok_or(RelayError::UnknownSession)?;
                if let Some(w) = call.web.as_mut() {
                    w.answered = Some(answer.clone().into_bytes());
                    w.sip_mux = a.mux;
                }
                Ok(answer.into_bytes())
            }
            WebState::SipOffered { mut leg, sip } => {
                // The browser answered.
                let web_side = web.web;
                let text = std::str::from_utf8(body).map_err(|_| super::sdp::SdpError::NotUtf8)?;
                leg.accept_answer(text)?;
                let web_codecs = leg.voice_formats();
                let Some(&(pt, codec)) = sip
                    .formats
                    .iter()
                    .find(|f| web_codecs.first().is_some_and(|w| w.1 == f.1))
                    .or_else(|| sip.formats.iter().find(|f| web_codecs.iter().any(|w| w.1 == f.1)))
                    .or(sip.formats.first())
                else {
                    return Err(MediaError::NoCommonCodec);
                };
                let dtmf = sip.dtmf_for(codec);
                let bridge = MediaBridge::new(*leg, SipAudio { codec, pt, dtmf_pt: dtmf }, ssrc, start)?;
                self.relay.set_bridge(sid, web_side, bridge)?;
                let secure = sip.proto.contains("SAVP");
                let crypto = if secure {
                    let (tag, profile, _) = pick_crypto(&sip.crypto).ok_or(MediaError::NoCryptoSuite)?;
                    let sip_side = web_side.other();
                    let key = ours(&mut self.relay, sid, sip_side, &mut call.lines[line].keys[idx(sip_side)], profile)?;
                    Some(format!("{tag} {} inline:{key}", profile.name()))
                } else {
                    None
                };
                let out = PlainSdp {
                    addr: self.advertise,
                    port: port_sip,
                    session: (sid, 1),
                    formats: &[(pt, codec)],
                    dtmf: dtmf.map(|d| (d, codec.clock())),
                    proto: if secure { "RTP/SAVP" } else { "RTP/AVP" },
                    crypto,
                    direction: Direction::SendRecv,
                    mux: sip.mux,
                }
                .write()
                .into_bytes();
                if let Some(w) = call.web.as_mut() {
                    w.answered = Some(out.clone());
                    w.sip_mux = sip.mux;
                    w.sip_proto = if secure { "RTP/SAVP" } else { "RTP/AVP" };
                    w.sip_crypto = String::from_utf8_lossy(&out).lines().find_map(|l| l.strip_prefix("a=crypto:")).map(String::from);
                }
                Ok(out)
            }
        }
    }

    /// A new offer on a bridged call (hold, resume, a new address, ICE restart). The
    /// codec stays; the direction goes across. From the browser: str0m answers at once, the
    /// SIP leg gets a new offer and its answer releases str0m's. From the SIP leg: the
    /// browser gets a new offer from str0m (an ICE restart when nothing else changed, so
    /// that there is one) and its answer makes the SIP leg's.
    fn web_reoffer(&mut self, call_id: &str, from: Side, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let call = self.calls.get_mut(call_id).ok_or(RelayError::UnknownSession)?;
        let Some(web) = call.web.as_mut() else { return Ok(body.to_vec()) };
        if !matches!(web.state, WebState::Bridged) {
            // An offer crossing ours (glare) or before the first answer.
            return Err(MediaError::BridgedReoffer);
        }
        let sid = web.sid;
        let sdp = Sdp::parse(body)?;
        let audio = sdp.media.iter().find(|m| m.kind == "audio").ok_or(WebRtcError::NoAudio)?;
        // c=0.0.0.0 is RFC 2543 hold from a SIP endpoint; from a browser it is what every
        // ICE offer says (RFC 8839 4.2.1).
        let null_hold = from != web.web && sdp.connection(audio).is_some_and(|ip| ip.is_unspecified());
        let direction = if null_hold { Direction::Inactive } else { sdp.direction(audio) };
        let held = direction != Direction::SendRecv;
        if from == web.web {
            let text = std::str::from_utf8(body).map_err(|_| super::sdp::SdpError::NotUtf8)?;
            WebRtcLeg::check_remote(text)?;
            let port_sip = self.relay.port(sid, from.other()).ok_or(RelayError::UnknownSession)?;
            let bridge = self.relay.bridge_mut(sid).ok_or(RelayError::UnknownSession)?;
            let answer = bridge.web_mut().accept_offer(text)?;
            let sip = bridge.sip();
            web.state = WebState::WebReoffer { answer };
            self.relay.set_hold(sid, held);
            let mux = web.sip_mux;
            return Ok(web.next_sip_sdp(self.advertise, port_sip, sip, direction, mux));
        }
        let a = read_plain(&sdp).ok_or(MediaError::NoCommonCodec)?;
        let bridge = self.relay.bridge_mut(sid).ok_or(RelayError::UnknownSession)?;
        // The codec in use if it is still offered (its payload type may have moved), else
        // the first one offered: a PBX re-INVITE after a transfer brings another phone's.
        let current = bridge.sip().codec;
        let &(pt, codec) = a.formats.iter().find(|f| f.1 == current).or(a.formats.first()).ok_or(MediaError::NoCommonCodec)?;
        bridge.set_sip(SipAudio { codec, pt, dtmf_pt: a.dtmf_for(codec) })?;
        let offer = bridge.web_mut().reoffer(str0m_direction(direction));
        set_sip_remote(&mut self.relay, sid, from, &a)?;
        self.relay.set_hold(sid, held);
        if let Some(w) = self.calls.get_mut(call_id).and_then(|c| c.web.as_mut()) {
            w.state = WebState::SipReoffer { direction, mux: a.mux };
        }
        Ok(offer.into_bytes())
    }

    /// Next datagram a WebRTC bridge sends: see [`Relay::poll_output`].
    pub fn poll_output(&mut self) -> Option<Datagram> {
        self.relay.poll_output()
    }

    /// When the WebRTC bridges' timers are next due.
    pub fn poll_bridge_timeout(&self) -> Option<Instant> {
        self.relay.poll_bridge_timeout()
    }

    pub fn handle_bridge_timeout(&mut self, now: Instant) {
        self.relay.handle_bridge_timeout(now);
    }

    /// A datagram on relay port `port`: see [`Relay::handle_packet`].
    #[inline]
    pub fn handle_packet(&mut self, now: Instant, port: u16, src: SocketAddr, pkt: &mut Vec<u8>) -> Option<Forward> {
        self.relay.handle_packet(now, port, src, pkt)
    }

    /// Ends a call: frees its relay ports and returns its record.
    pub fn end(&mut self, now: Instant, call_id: &str, reason: EndReason) -> Option<CallRecord> {
        let call = self.calls.remove(call_id)?;
        let mut media = Vec::new();
        for l in &call.lines {
            if let Some(s) = l.session {
                self.by_session.remove(&s);
                if let Some(r) = self.relay.close(s, now, self.ports.as_mut()) {
                    media.push(r);
                }
            }
        }
        Some(CallRecord {
            call_id: call_id.to_string(),
            parties: call.parties,
            from: call.from_uri,
            to: call.to_uri,
            reason,
            duration_secs: now.saturating_duration_since(call.started).as_secs_f64(),
            talk_secs: call.answered.map(|a| now.saturating_duration_since(a).as_secs_f64()).unwrap_or(0.0),
            media,
        })
    }

    /// Every call in progress.
    pub fn active(&self, now: Instant) -> Vec<ActiveCall> {
        let leg = |p: &Peer| format!("{} {}", p.transport.uri_param(), p.addr);
        self.calls
            .iter()
            .map(|(id, c)| ActiveCall {
                call_id: id.clone(),
                parties: c.parties.clone(),
                state: if c.answered.is_some() {
                    "answered"
                } else if c.ringing {
                    "ringing"
                } else {
                    "trying"
                },
                anchored: c.anchored,
                age_secs: now.saturating_duration_since(c.started).as_secs_f64(),
                talk_secs: c.answered.map(|a| now.saturating_duration_since(a).as_secs_f64()).unwrap_or(0.0),
                caller_leg: c.dialog.as_ref().map(|d| leg(&d.caller_peer)),
                callee_leg: c.dialog.as_ref().map(|d| leg(&d.callee_peer)),
                media: c.lines.iter().filter_map(|l| self.relay.report(l.session?, now)).collect(),
            })
            .collect()
    }

    /// When [`Anchor::inactive`] may next report something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relay.poll_timeout()
    }

    /// Calls whose media has been idle for the inactivity time.
    pub fn inactive(&self, now: Instant) -> Vec<String> {
        let mut v: Vec<String> = self.relay.inactive(now).into_iter().filter_map(|s| self.by_session.get(&s).cloned()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Calls started more than `max` ago.
    pub fn too_old(&self, now: Instant, max: Duration) -> Vec<String> {
        self.calls.iter().filter(|(_, c)| now.saturating_duration_since(c.started) >= max).map(|(id, _)| id.clone()).collect()
    }

    /// Longest a session may stay idle before [`Anchor::inactive`] reports it.
    pub fn sweep_interval() -> Duration {
        Duration::from_secs(1)
    }
}

/// Where the SIP leg of a bridged call receives (from its SDP).
fn set_sip_remote(relay: &mut Relay, sid: u64, side: Side, a: &PlainAudio) -> Result<(), MediaError> {
    let Some(rtp) = a.rtp else { return Ok(()) };
    // The codec the bridge uses on that leg once there is one, else the first offered.
    let used = relay.bridge(sid).map(|b| b.sip_codec()).or(a.formats.first().map(|f| f.1));
    let (clock_rate, codec) = match used {
        Some(VoiceCodec::Opus) => (48_000, CodecImpairment::OPUS),
        _ => (8_000, CodecImpairment::G711_PLC),
    };
    relay.set_remote(sid, side, RemoteMedia { rtp, rtcp: a.rtcp, mux: a.mux, clock_rate, codec })?;
    Ok(())
}

/// The direction of an answer to an offer in direction `d` (RFC 3264 6.1).
fn answer_direction(d: Direction) -> Direction {
    match d {
        Direction::SendOnly => Direction::RecvOnly,
        Direction::RecvOnly => Direction::SendOnly,
        x => x,
    }
}

fn str0m_direction(d: Direction) -> str0m::media::Direction {
    match d {
        Direction::SendRecv => str0m::media::Direction::SendRecv,
        Direction::SendOnly => str0m::media::Direction::SendOnly,
        Direction::RecvOnly => str0m::media::Direction::RecvOnly,
        Direction::Inactive => str0m::media::Direction::Inactive,
    }
}

/// FNV-1a: seeds for a bridge's SSRC and first sequence number / timestamp.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x100_0000_01b3))
}

/// Clock rate and E-model impairment of a media line's first format.
fn codec_of(sdp: &Sdp, m: &super::sdp::Media) -> (u32, CodecImpairment) {
    let Some(pt) = m.formats.first() else { return (8000, CodecImpairment::G711_PLC) };
    match sdp.rtpmap(m, pt) {
        Some(enc) => {
            let mut it = enc.split('/');
            let name = it.next().unwrap_or("");
            let rate = it.next().and_then(|r| r.parse().ok()).unwrap_or(8000);
            let codec = if name == "opus" { CodecImpairment::OPUS } else { CodecImpairment::G711_PLC };
            (rate, codec)
        }
        // Static payload types 0 (PCMU) and 8 (PCMA) are 8 kHz (RFC 3551).
        None => (8000, CodecImpairment::G711_PLC),
    }
}

/// The first `a=crypto` with a suite we implement and no MKI (RFC 4568 9.1): tag, suite, key||salt.
fn pick_crypto(lines: &[String]) -> Option<(String, Profile, Vec<u8>)> {
    for l in lines {
        let mut it = l.split_whitespace();
        let (Some(tag), Some(suite), Some(params)) = (it.next(), it.next(), it.next()) else { continue };
        let Some(profile) = Profile::from_name(suite) else { continue };
        let Some(inline) = params.strip_prefix("inline:") else { continue };
        let mut parts = inline.split('|');
        let b64 = parts.next().unwrap_or("");
        if parts.any(|p| p.contains(':')) {
            continue; // MKI
        }
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(b64) else { continue };
        if key.len() != 16 + profile.salt_len() {
            continue;
        }
        return Some((tag.to_string(), profile, key));
    }
    None
}

/// Installs the leg's own key (what it sends) as the inbound context, if new.
fn set_theirs(relay: &mut Relay, sid: u64, side: Side, k: &mut Keys, profile: Profile, key: Vec<u8>) -> Result<(), MediaError> {
    if k.theirs.as_ref() != Some(&key) {
        let ctx = Srtp::from_inline(profile, &key).ok_or(MediaError::NoCryptoSuite)?;
        relay.set_srtp_direction(sid, side, true, Some(ctx))?;
        k.theirs = Some(key);
    }
    Ok(())
}

/// The key the relay uses towards a leg (made once per media line and leg); installs the
/// outbound context. Returns it base64-encoded for `inline:`.
fn ours(relay: &mut Relay, sid: u64, side: Side, k: &mut Keys, profile: Profile) -> Result<String, MediaError> {
    let fresh = !matches!(&k.ours, Some((p, _)) if *p == profile);
    if fresh {
        let mut key = vec![0u8; 16 + profile.salt_len()];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
        let ctx = Srtp::from_inline(profile, &key).ok_or(MediaError::NoCryptoSuite)?;
        relay.set_srtp_direction(sid, side, false, Some(ctx))?;
        k.ours = Some((profile, key));
    }
    let key = k.ours.as_ref().map(|(_, k)| k.as_slice()).unwrap_or(&[]);
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

fn set_proto(sdp: &mut Sdp, i: usize, proto: &str) {
    let Some(m) = sdp.media.get(i) else { return };
    let line = m.m_line;
    let mut f: Vec<String> = sdp.lines[line].1.split_whitespace().map(String::from).collect();
    if f.len() >= 3 {
        f[2] = proto.to_string();
        sdp.lines[line].1 = f.join(" ");
        sdp.media[i].proto = proto.to_string();
    }
}

fn add_attr(sdp: &mut Sdp, i: usize, value: String) {
    sdp.push_media_line(i, ('a', value));
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const OFFER_PLAIN: &str =
        "v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=rtcp:5001\r\na=sendrecv\r\n";
    const ANSWER_PLAIN: &str = "v=0\r\no=b 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    const OFFER_SRTP: &str = "v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\na=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20\r\n";

    fn anchor() -> (Anchor, Instant) {
        let t0 = Instant::now();
        (Anchor::detached(RelayConfig { ports: 40000..=40099, ..Default::default() }, "192.0.2.1".parse().unwrap()), t0)
    }

    #[test]
    fn offer_and_answer_point_both_legs_at_the_relay() {
        let (mut an, t0) = anchor();
        an.start(t0, "c1", "tagA", true, CallParties::default(), (SrtpPolicy::Keep, SrtpPolicy::Keep), "sip:a@x", "sip:b@x");
        let to_b = an.handle_sdp(t0, "c1", Side::A, SdpKind::Offer, OFFER_PLAIN.as_bytes()).unwrap();
        let o = Sdp::parse(&to_b).unwrap();
        let pb = o.media[0].port;
        assert_eq!(o.connection(&o.media[0]), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(o.rtcp_port(&o.media[0]), pb + 1);
        assert!(!String::from_utf8_lossy(&to_b).contains("10.0.0.1"));
        let to_a = an.handle_sdp(t0, "c1", Side::B, SdpKind::Answer, ANSWER_PLAIN.as_bytes()).unwrap();
        let a = Sdp::parse(&to_a).unwrap();
        let pa = a.media[0].port;
        assert_ne!(pa, pb);
        // A's packet to its port goes to B's SDP address, out of B's port.
        let mut pkt = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9, 0xff];
        let f = an.handle_packet(t0, pa, "10.0.0.1:5000".parse().unwrap(), &mut pkt).unwrap();
        assert_eq!((f.from_port, f.to), (pb, "10.0.0.2:6000".parse().unwrap()));
        assert_eq!(an.relay().ports_in_use(), 4);
        let rec = an.end(t0 + Duration::from_secs(3), "c1", EndReason::ByeFromCaller).unwrap();
        assert_eq!(rec.media.len(), 1);
        assert_eq!(rec.media[0].from_a.packets, 1);
        assert_eq!(an.relay().ports_in_use(), 0);
    }

    #[test]
    fn sdes_leg_meets_plain_leg_and_audio_survives_both_ways() {
        let (mut an, t0) = anchor();
        an.start(t0, "c2", "tagA", true, CallParties::default(), (SrtpPolicy::Keep, SrtpPolicy::Plain), "a", "b");
        let to_b = an.handle_sdp(t0, "c2", Side::A, SdpKind::Offer, OFFER_SRTP.as_bytes()).unwrap();
        let o = Sdp::parse(&to_b).unwrap();
        assert_eq!(o.media[0].proto, "RTP/AVP");
        assert_eq!(o.media_attrs(&o.media[0], "crypto").count(), 0);
        let pb = o.media[0].port;
        let to_a = an.handle_sdp(t0, "c2", Side::B, SdpKind::Answer, ANSWER_PLAIN.as_bytes()).unwrap();
        let a = Sdp::parse(&to_a).unwrap();
        assert_eq!(a.media[0].proto, "RTP/SAVP");
        let crypto: Vec<&str> = a.media_attrs(&a.media[0], "crypto").collect();
        assert_eq!(crypto.len(), 1);
        assert!(crypto[0].starts_with("2 AES_CM_128_HMAC_SHA1_80 inline:"), "tag of the accepted offer line: {crypto:?}");
        let pa = a.media[0].port;
        // A encrypts with its key (the second line: the first has an MKI).
        let a_key = base64::engine::general_purpose::STANDARD.decode("PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR").unwrap();
        let mut a_tx = Srtp::from_inline(Profile::Aes128CmSha1_80, &a_key).unwrap();
        let plain = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9, 1, 2, 3, 4];
        let mut p = plain.clone();
        a_tx.protect_rtp(&mut p).unwrap();
        let f = an.handle_packet(t0, pa, "10.0.0.1:5000".parse().unwrap(), &mut p).unwrap();
        assert_eq!(f.to, "10.0.0.2:6000".parse().unwrap());
        assert_eq!(p, plain, "B receives plain RTP");
        // B's plain packet reaches A encrypted with the key the relay gave A.
        let our_key = crypto[0].split("inline:").nth(1).unwrap();
        let mut a_rx =
            Srtp::from_inline(Profile::Aes128CmSha1_80, &base64::engine::general_purpose::STANDARD.decode(our_key).unwrap()).unwrap();
        let mut q = plain.clone();
        let f = an.handle_packet(t0, pb, "10.0.0.2:6000".parse().unwrap(), &mut q).unwrap();
        assert_eq!(f.to, "10.0.0.1:5000".parse().unwrap());
        assert_ne!(q, plain);
        a_rx.unprotect_rtp(&mut q).unwrap();
        assert_eq!(q, plain);
        // SRTCP from A (on its RTCP port) reaches B as plain RTCP, and back.
        let mut sr = vec![0u8; 64];
        let n = codec::rtcp::write_sr(&mut sr, 9, 1 << 32, 160, 1, 160, &[]);
        sr.truncate(n);
        let mut s = sr.clone();
        a_tx.protect_rtcp(&mut s).unwrap();
        let f = an.handle_packet(t0, pa + 1, "10.0.0.1:5001".parse().unwrap(), &mut s).unwrap();
        assert_eq!((f.from_port, f.to), (pb + 1, "10.0.0.2:6001".parse().unwrap()));
        assert_eq!(s, sr, "B gets plain RTCP");
        let mut s = sr.clone();
        an.handle_packet(t0, pb + 1, "10.0.0.2:6001".parse().unwrap(), &mut s).unwrap();
        a_rx.unprotect_rtcp(&mut s).unwrap();
        assert_eq!(s, sr, "A gets SRTCP with the relay's key");
    }

    #[test]
    fn plain_offer_to_an_sdes_leg_gets_a_key_and_a_plain_offer_from_an_sdes_leg_is_refused() {
        let (mut an, t0) = anchor();
        an.start(t0, "c3", "tagA", true, CallParties::default(), (SrtpPolicy::Keep, SrtpPolicy::Sdes), "a", "b");
        let to_b = an.handle_sdp(t0, "c3", Side::A, SdpKind::Offer, OFFER_PLAIN.as_bytes()).unwrap();
        let o = Sdp::parse(&to_b).unwrap();
        assert_eq!(o.media[0].proto, "RTP/SAVP");
        assert_eq!(o.media_attrs(&o.media[0], "crypto").count(), 1);
        an.start(t0, "c4", "tagA", true, CallParties::default(), (SrtpPolicy::Sdes, SrtpPolicy::Keep), "a", "b");
        let e = an.handle_sdp(t0, "c4", Side::A, SdpKind::Offer, OFFER_PLAIN.as_bytes()).unwrap_err();
        assert_eq!(e.status().0, 488);
    }

    #[test]
    fn hold_keeps_the_null_address_and_uses_the_hold_timeout() {
        let (mut an, t0) = anchor();
        an.start(t0, "c5", "tagA", true, CallParties::default(), (SrtpPolicy::Keep, SrtpPolicy::Keep), "a", "b");
        an.handle_sdp(t0, "c5", Side::A, SdpKind::Offer, OFFER_PLAIN.as_bytes()).unwrap();
        an.handle_sdp(t0, "c5", Side::B, SdpKind::Answer, ANSWER_PLAIN.as_bytes()).unwrap();
        assert_eq!(an.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        let hold = OFFER_PLAIN.replace("a=sendrecv", "a=sendonly");
        let out = an.handle_sdp(t0, "c5", Side::A, SdpKind::Offer, hold.as_bytes()).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("a=sendonly"));
        assert_eq!(an.poll_timeout(), Some(t0 + Duration::from_secs(3600)));
        let resume = an.handle_sdp(t0, "c5", Side::A, SdpKind::Offer, OFFER_PLAIN.as_bytes()).unwrap();
        assert!(String::from_utf8_lossy(&resume).contains("a=sendrecv"));
        assert_eq!(an.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(an.inactive(t0 + Duration::from_secs(61)), vec!["c5".to_string()]);
    }
}
