//! Selective forwarding unit for WebRTC meeting rooms (built on str0m).
//!
//! Not yet implemented: the rooms, forwarding and signalling arrive with the SFU issue.
//! The crate exists so the workspace layout matches the product brief.
