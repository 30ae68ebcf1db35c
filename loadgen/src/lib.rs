//! SIP/RTP/WebRTC load generator.
//!
//! Not yet implemented: scenarios, scheduler and reports arrive with the loadgen issue.
//! Until then, SIP load is generated with sipp (see `tests/` and `benches/`).
