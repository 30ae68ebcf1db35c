//! SIP edge: stateful proxy, registrar and session border controller.
//!
//! Protocol logic lives in sans-IO cores (`msg`, `tsx`, `proxy`, `registrar`, `auth`)
//! that take `now: Instant` and input and return output; [`rt`] owns sockets, TLS,
//! WebSocket, threads and the clock.

pub mod auth;
pub mod conference;
pub mod config;
pub mod core;
pub mod dialplan;
pub mod digest_client;
pub mod location;
pub mod media;
pub mod msg;
pub mod proxy;
pub mod registrar;
pub mod resolve;
pub mod rt;
pub mod store;
pub mod transport;
pub mod trunk;
pub mod tsx;
