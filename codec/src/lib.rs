//! RTP/RTCP, SRTP, Opus, jitter buffer and call-quality (E-model MOS) library.
//!
//! Not yet implemented: the wire formats and quality code arrive with the media issue.
//! The crate exists so the workspace layout matches the product brief.
