//! Media anchoring (issue #4, in progress): SDP parsing and rewriting for the relay.

pub mod relay;
pub mod sdp;
