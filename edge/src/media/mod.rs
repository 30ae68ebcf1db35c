//! Media anchoring: SDP parsing and rewriting (`sdp`), the sans-IO RTP/RTCP relay with
//! latching, SRTP bridging and quality (`relay`), and per-dialog offer/answer handling and
//! call records (`anchor`); WebRTC <-> SIP interworking: the browser's ICE/DTLS-SRTP leg
//! (`webrtc`, str0m), the per-call codec/DTMF bridge (`bridge`) and the SIP leg's
//! offer/answer (`interwork`).

pub mod anchor;
pub mod bridge;
pub mod info_dtmf;
pub mod interwork;
pub mod relay;
pub mod sdp;
pub mod webrtc;
