//! Media anchoring: SDP parsing and rewriting (`sdp`), the sans-IO RTP/RTCP relay with
//! latching, SRTP bridging and quality (`relay`), and per-dialog offer/answer handling and
//! call records (`anchor`).

pub mod anchor;
pub mod relay;
pub mod sdp;
