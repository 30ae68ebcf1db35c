//! RTP/RTCP, SRTP, Opus, jitter buffer and call-quality (E-model MOS) library.
//!
//! Pure: no sockets, no clock. Present so far: the RTP fixed header view ([`rtp`]),
//! G.711 ([`g711`]) and call quality ([`quality`]: RFC 3550 jitter and loss, ITU-T G.107
//! E-model). RTCP, SRTP, Opus and the jitter buffer arrive with the media issue.

pub mod g711;
pub mod quality;
pub mod rtp;
