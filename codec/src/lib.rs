//! RTP/RTCP, SRTP, Opus, jitter buffer and call-quality (E-model MOS) library.
//!
//! Pure: no sockets, no clock. Present so far: RTP header view, RFC 8285 extensions and
//! sequence/timestamp unwrapping ([`rtp`]), RTCP compound packets and feedback ([`rtcp`]),
//! G.711 ([`g711`]), DTMF tone pairs and their detection ([`dtmf`]), RFC 6464 audio levels ([`audio_level`]) and call quality ([`quality`]: RFC 3550 jitter and loss, ITU-T G.107
//! E-model), SRTP/SRTCP with AES-CM + HMAC-SHA1 and AEAD-AES-128-GCM ([`srtp`]), and an
//! adaptive jitter buffer ([`jitter`]), VP8 payload descriptors ([`vp8`]) and H.264
//! key-frame detection ([`h264`]) for the SFU, and voice codecs ([`voice`]: Opus and G.711
//! to and from 48 kHz PCM, with the 48 <-> 8 kHz [`resample`] filters) for the SFU's phone
//! mixes and WebRTC <-> SIP transcoding.

pub mod audio_level;
pub mod dtmf;
pub mod g711;
pub mod h264;
pub mod jitter;
pub mod quality;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod srtp;
pub mod voice;
pub mod vp8;
