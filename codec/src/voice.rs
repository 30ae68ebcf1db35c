//! Voice codecs of the edge's own audio paths (phones in SFU rooms, WebRTC <-> SIP
//! bridging): Opus (RFC 6716, RTP clock 48 kHz per RFC 7587) and G.711 u-law / A-law
//! (8 kHz), decoded to and encoded from 48 kHz mono PCM. G.711 goes through the
//! [`resample`](crate::resample) filters, one state per stream.

use crate::resample::{Downsampler, Upsampler};

/// Samples of one 20 ms frame at 48 kHz, mono.
pub const FRAME: usize = 960;

/// One 20 ms frame of 48 kHz mono samples.
pub type Pcm = [i16; FRAME];

/// A voice codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VoiceCodec {
    /// Opus at 48 kHz (RFC 7587 `opus/48000/2`, sent mono).
    Opus,
    /// G.711 u-law (`PCMU/8000`, payload type 0).
    Pcmu,
    /// G.711 A-law (`PCMA/8000`, payload type 8).
    Pcma,
}

impl VoiceCodec {
    /// RTP clock rate.
    pub fn clock(self) -> u32 {
        match self {
            VoiceCodec::Opus => 48_000,
            VoiceCodec::Pcmu | VoiceCodec::Pcma => 8_000,
        }
    }

    /// RTP timestamp increment of one 20 ms frame.
    pub fn frame_ticks(self) -> u32 {
        self.clock() / 50
    }

    /// The SDP encoding name (RFC 3551 / RFC 7587), as in `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            VoiceCodec::Opus => "opus",
            VoiceCodec::Pcmu => "PCMU",
            VoiceCodec::Pcma => "PCMA",
        }
    }

    /// The codec of an `a=rtpmap` encoding name (case-insensitive) at `clock` Hz.
    pub fn from_rtpmap(name: &str, clock: u32) -> Option<VoiceCodec> {
        match (name.to_ascii_lowercase().as_str(), clock) {
            ("opus", 48_000) => Some(VoiceCodec::Opus),
            ("pcmu", 8_000) => Some(VoiceCodec::Pcmu),
            ("pcma", 8_000) => Some(VoiceCodec::Pcma),
            _ => None,
        }
    }
}

/// Decodes one stream's frames to 48 kHz mono.
pub struct Decoder {
    codec: VoiceCodec,
    opus: Option<opus::Decoder>,
    up: Upsampler,
    narrow: Vec<i16>,
}

impl Decoder {
    pub fn new(codec: VoiceCodec) -> Result<Decoder, String> {
        let opus = match codec {
            VoiceCodec::Opus => Some(opus::Decoder::new(48_000, opus::Channels::Mono).map_err(|e| format!("opus decoder: {e}"))?),
            _ => None,
        };
        Ok(Decoder { codec, opus, up: Upsampler::new(), narrow: Vec::with_capacity(480) })
    }

    pub fn codec(&self) -> VoiceCodec {
        self.codec
    }

    /// Appends the samples of one frame (any duration the codec allows: 2.5-120 ms of
    /// Opus, any number of G.711 samples) to `out`; the number appended, or an error when
    /// the payload is not valid for the codec.
    pub fn decode_into(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, String> {
        let before = out.len();
        match (self.codec, self.opus.as_mut()) {
            (VoiceCodec::Opus, Some(d)) => {
                let n = d.get_nb_samples(payload).map_err(|e| format!("opus: {e}"))?;
                out.resize(before + n, 0);
                let got = d.decode(payload, &mut out[before..], false).map_err(|e| format!("opus: {e}"))?;
                out.truncate(before + got);
            }
            (c, _) => {
                let to_linear = if c == VoiceCodec::Pcmu { crate::g711::ulaw_to_linear } else { crate::g711::alaw_to_linear };
                self.narrow.clear();
                self.narrow.extend(payload.iter().map(|b| to_linear(*b)));
                self.up.process(&self.narrow, out);
            }
        }
        Ok(out.len() - before)
    }

    /// Packet loss concealment (Opus only): `samples` of audio standing in for a lost frame.
    pub fn conceal_into(&mut self, samples: usize, out: &mut Vec<i16>) {
        let before = out.len();
        out.resize(before + samples, 0);
        if let Some(d) = self.opus.as_mut() {
            let got = d.decode(&[], &mut out[before..], false).unwrap_or(0);
            out.truncate(before + got);
            out.resize(before + samples, 0);
        }
    }

    /// Decodes one frame into `out` (zero-padded when shorter than 20 ms, cut when longer);
    /// `false` when the payload is not valid for the codec.
    pub fn decode(&mut self, payload: &[u8], out: &mut Pcm) -> bool {
        let mut v = Vec::with_capacity(FRAME * 6);
        match self.decode_into(payload, &mut v) {
            Ok(n) => {
                let n = n.min(FRAME);
                out[..n].copy_from_slice(&v[..n]);
                out[n..].fill(0);
                n > 0
            }
            Err(_) => false,
        }
    }
}

/// Encodes 48 kHz mono audio in one stream's codec.
pub struct Encoder {
    codec: VoiceCodec,
    opus: Option<opus::Encoder>,
    down: Downsampler,
    narrow: Vec<i16>,
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new(codec: VoiceCodec) -> Result<Encoder, String> {
        let opus = match codec {
            VoiceCodec::Opus => {
                Some(opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).map_err(|e| format!("opus encoder: {e}"))?)
            }
            _ => None,
        };
        Ok(Encoder { codec, opus, down: Downsampler::new(), narrow: Vec::with_capacity(480), buf: vec![0; 1500] })
    }

    pub fn codec(&self) -> VoiceCodec {
        self.codec
    }

    /// Encodes one frame of 48 kHz samples (Opus: 2.5, 5, 10, 20, 40 or 60 ms; G.711: a
    /// multiple of 6 samples), appending the payload to `out`.
    pub fn encode_into(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), String> {
        match (self.codec, self.opus.as_mut()) {
            (VoiceCodec::Opus, Some(e)) => {
                let n = e.encode(pcm, &mut self.buf).map_err(|e| format!("opus: {e}"))?;
                out.extend_from_slice(&self.buf[..n]);
            }
            (c, _) => {
                let from_linear = if c == VoiceCodec::Pcmu { crate::g711::linear_to_ulaw } else { crate::g711::linear_to_alaw };
                self.narrow.clear();
                self.down.process(pcm, &mut self.narrow);
                out.extend(self.narrow.iter().map(|s| from_linear(*s)));
            }
        }
        Ok(())
    }

    /// One encoded 20 ms frame (empty if the encoder failed).
    pub fn encode(&mut self, pcm: &Pcm) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        if self.encode_into(pcm, &mut out).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, n: usize) -> Vec<i16> {
        (0..n).map(|i| (8_000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin()) as i16).collect()
    }

    fn frequency(x: &[i16], rate: f64) -> f64 {
        let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        crossings as f64 / 2.0 / (x.len() as f64 / rate)
    }

    /// A tone through every codec pair (encode in one, decode, re-encode in the other, as
    /// a bridge does) keeps its frequency.
    #[test]
    fn a_tone_survives_transcoding_between_every_pair() {
        let codecs = [VoiceCodec::Opus, VoiceCodec::Pcmu, VoiceCodec::Pcma];
        for a in codecs {
            for b in codecs {
                let src = tone(1_000.0, 48_000);
                let (mut ea, mut da, mut eb, mut db) =
                    (Encoder::new(a).unwrap(), Decoder::new(a).unwrap(), Encoder::new(b).unwrap(), Decoder::new(b).unwrap());
                let mut out = vec![];
                for f in src.chunks(FRAME) {
                    let mut p = vec![];
                    ea.encode_into(f, &mut p).unwrap();
                    let mut mid = vec![];
                    assert_eq!(da.decode_into(&p, &mut mid).unwrap(), FRAME, "{a:?}");
                    let mut q = vec![];
                    eb.encode_into(&mid, &mut q).unwrap();
                    if b != VoiceCodec::Opus {
                        assert_eq!(q.len(), 160, "20 ms of G.711 at 8 kHz");
                    }
                    db.decode_into(&q, &mut out).unwrap();
                }
                let f = frequency(&out[9_600..], 48_000.0);
                assert!((f - 1_000.0).abs() < 15.0, "{a:?} -> {b:?}: {f} Hz");
            }
        }
    }

    #[test]
    fn bad_opus_is_an_error_and_names_map_to_codecs() {
        let mut d = Decoder::new(VoiceCodec::Opus).unwrap();
        let mut out = vec![];
        assert!(d.decode_into(&[0xff, 0xff, 0xff], &mut out).is_err() || out.is_empty());
        assert_eq!(VoiceCodec::from_rtpmap("PCMU", 8_000), Some(VoiceCodec::Pcmu));
        assert_eq!(VoiceCodec::from_rtpmap("opus", 48_000), Some(VoiceCodec::Opus));
        assert_eq!(VoiceCodec::from_rtpmap("G729", 8_000), None);
        assert_eq!(VoiceCodec::from_rtpmap("pcma", 16_000), None);
    }
}
