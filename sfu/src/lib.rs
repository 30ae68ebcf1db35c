//! Selective forwarding unit for WebRTC meeting rooms.
//!
//! Sans-IO cores, each tested on a virtual clock: [`room`] (membership, moderator, lobby,
//! timeouts), [`speaker`] (RFC 6464 active speaker, speaking order, last-N), [`forward`]
//! (simulcast layer choice, switching at key frames, sequence/timestamp/picture-ID
//! rewriting, unwatched layers), [`keyframe`] (PLI throttle), [`mixer`] (Opus/G.711 mixes
//! for SIP phones), and [`core`]: str0m participants (ICE-lite, DTLS-SRTP) publishing with
//! WHIP, watching with WHEP, meeting with the room protocol, plus SIP phones. Still to come
//! (issue #7): simulcast chosen per subscriber in `core`, RTP-mode forwarding (docs/SFU.md).

pub mod core;
pub mod forward;
pub mod keyframe;
pub mod mixer;
pub mod room;
pub mod rt;
pub mod speaker;

/// The meeting page (`/meet/{room}`): plain HTML and JavaScript speaking the room protocol.
pub const MEET_HTML: &str = include_str!("../web/meet.html");
