//! SIP wire format (RFC 3261 sections 7, 18.3, 19, 20, 25): a zero-copy parser over
//! `bytes::Bytes`, typed header views on demand, a writer that passes unknown headers
//! through byte for byte, and stream framing.

pub mod framing;
pub mod header;
pub mod message;
pub mod name_addr;
pub mod text;
pub mod uri;
pub mod via;
pub mod write;

pub use header::HeaderName;
pub use message::{CSeq, Message, Method, ParseError, StartLine};
pub use name_addr::NameAddr;
pub use uri::SipUri;
pub use via::Via;
