//! Selective forwarding unit for WebRTC meeting rooms.
//!
//! Sans-IO cores, each tested on a virtual clock: [`room`] (membership, moderator, lobby,
//! timeouts), [`speaker`] (RFC 6464 active speaker, speaking order, last-N), [`forward`]
//! (simulcast layer choice, switching at key frames, sequence/timestamp/picture-ID
//! rewriting, unwatched layers), [`keyframe`] (PLI throttle), and [`core`]: str0m
//! participants (ICE-lite, DTLS-SRTP) publishing with WHIP and watching with WHEP. Still to
//! come (issue #7): the room WebSocket protocol, simulcast/last-N wired into `core`, the
//! meeting page, SIP phones in rooms (see docs/SFU.md).

pub mod core;
pub mod forward;
pub mod keyframe;
pub mod room;
pub mod rt;
pub mod speaker;

/// The meeting page (`/meet/{room}`): plain HTML and JavaScript speaking the room protocol.
pub const MEET_HTML: &str = include_str!("../web/meet.html");
