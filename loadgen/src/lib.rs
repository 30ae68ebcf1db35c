//! SIP load generator: outbound calls, answering, registrations, a power dialer and soak
//! runs, with optional RTP media and call quality, live progress and reports.
//!
//! Scenarios ([`scenario`]) are sans-IO state machines; [`rt`] drives them with an
//! open-loop scheduler on tokio; [`stats`] and [`report`] turn events into figures.

pub mod cli;
/// Digest answers (shared with the edge, which answers trunks' challenges).
pub mod digest {
    pub use edge::digest_client::*;
}
pub mod media;
pub mod report;
pub mod resolve;
pub mod rt;
pub mod scenario;
pub mod sfu;
pub mod stats;
