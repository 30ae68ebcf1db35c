//! Offer/answer on the SIP leg of a call the edge bridges to a browser (RFC 3264 on each
//! leg separately, as rtpengine does beside Kamailio): the SIP leg's audio read from its
//! SDP, and the SDP the edge writes for it (one audio m-line at the relay port, RTP/AVP or
//! RTP/SAVP with the edge's SDES key, telephone-event kept).

use super::sdp::{Direction, Sdp};
use codec::voice::VoiceCodec;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// The SIP leg's audio, from its SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainAudio {
    /// Index of the m-line.
    pub index: usize,
    /// Voice formats the edge can handle, in the SDP's order of preference.
    pub formats: Vec<(u8, VoiceCodec)>,
    /// RFC 4733 telephone-event payload type at 8 kHz (G.711) or 48 kHz (Opus).
    pub dtmf: Vec<(u8, u32)>,
    /// Where the leg receives RTP and RTCP (`None` for a 0.0.0.0 hold address).
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
    pub mux: bool,
    pub proto: String,
    /// `a=crypto` lines (RFC 4568).
    pub crypto: Vec<String>,
    pub direction: Direction,
}

impl PlainAudio {
    /// The telephone-event payload type that goes with `codec` (same clock), if offered.
    pub fn dtmf_for(&self, codec: VoiceCodec) -> Option<u8> {
        self.dtmf.iter().find(|(_, c)| *c == codec.clock()).map(|(pt, _)| *pt)
    }
}

/// Reads the first audio m-line that is not rejected. `None` when there is none.
pub fn read_plain(sdp: &Sdp) -> Option<PlainAudio> {
    let (index, m) = sdp.media.iter().enumerate().find(|(_, m)| m.kind == "audio" && m.port != 0)?;
    let mut formats = vec![];
    let mut dtmf = vec![];
    for f in &m.formats {
        let Ok(pt) = f.parse::<u8>() else { continue };
        let (name, clock) = match sdp.rtpmap(m, f) {
            Some(enc) => {
                let mut it = enc.split('/');
                (it.next().unwrap_or("").to_string(), it.next().and_then(|c| c.parse().ok()).unwrap_or(0))
            }
            // Static payload types (RFC 3551 6).
            None => match pt {
                0 => ("PCMU".into(), 8_000),
                8 => ("PCMA".into(), 8_000),
                _ => continue,
            },
        };
        if name.eq_ignore_ascii_case("telephone-event") {
            dtmf.push((pt, clock));
        } else if let Some(c) = VoiceCodec::from_rtpmap(&name, clock) {
            formats.push((pt, c));
        }
    }
    let conn = sdp.connection(m).filter(|ip| !ip.is_unspecified());
    let rtp = conn.map(|ip| SocketAddr::new(ip, m.port));
    let mux = sdp.rtcp_mux(m);
    let rtcp = conn.map(|ip| SocketAddr::new(ip, if mux { m.port } else { sdp.rtcp_port(m) }));
    Some(PlainAudio {
        index,
        formats,
        dtmf,
        rtp,
        rtcp,
        mux,
        proto: m.proto.clone(),
        crypto: sdp.media_attrs(m, "crypto").map(String::from).collect(),
        direction: sdp.direction(m),
    })
}

/// What the edge writes for the SIP leg.
pub struct PlainSdp<'a> {
    pub addr: IpAddr,
    pub port: u16,
    /// `o=` session id and version (the version grows with each new SDP of the leg).
    pub session: (u64, u64),
    pub formats: &'a [(u8, VoiceCodec)],
    pub dtmf: Option<(u8, u32)>,
    /// `RTP/AVP` or `RTP/SAVP`.
    pub proto: &'a str,
    /// The value of an `a=crypto:` line (tag, suite, key), for RTP/SAVP.
    pub crypto: Option<String>,
    pub direction: Direction,
    /// `a=rtcp-mux` (RFC 5761): offered by the edge (with `a=rtcp` as the fallback), in an
    /// answer as the SIP leg offered.
    pub mux: bool,
}

impl PlainSdp<'_> {
    /// The SDP body (RFC 8866), CRLF line ends.
    pub fn write(&self) -> String {
        let net = if self.addr.is_ipv4() { "IP4" } else { "IP6" };
        let mut s = String::with_capacity(400);
        let _ = write!(
            s,
            "v=0\r\no=edge {} {} IN {net} {}\r\ns=-\r\nc=IN {net} {}\r\nt=0 0\r\n",
            self.session.0, self.session.1, self.addr, self.addr
        );
        let _ = write!(s, "m=audio {} {}", self.port, self.proto);
        for (pt, _) in self.formats {
            let _ = write!(s, " {pt}");
        }
        if let Some((pt, _)) = self.dtmf {
            let _ = write!(s, " {pt}");
        }
        s.push_str("\r\n");
        for (pt, c) in self.formats {
            match c {
                VoiceCodec::Opus => {
                    let _ = write!(s, "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} minptime=10;useinbandfec=1\r\n");
                }
                c => {
                    let _ = write!(s, "a=rtpmap:{pt} {}/{}\r\n", c.encoding_name(), c.clock());
                }
            }
        }
        if let Some((pt, clock)) = self.dtmf {
            let _ = write!(s, "a=rtpmap:{pt} telephone-event/{clock}\r\na=fmtp:{pt} 0-16\r\n");
        }
        let _ = write!(s, "a=rtcp:{}\r\na=ptime:20\r\n", self.port + 1);
        if self.mux {
            s.push_str("a=rtcp-mux\r\n");
        }
        if let Some(c) = &self.crypto {
            let _ = write!(s, "a=crypto:{c}\r\n");
        }
        let dir = match self.direction {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        };
        let _ = write!(s, "a={dir}\r\n");
        s
    }
}

/// Payload types of the formats to offer the SIP leg for a browser's codecs: the browser's
/// voice codecs the edge knows (its numbers, its order), then G.711 (PCMU, PCMA) that the
/// edge can transcode to, if the browser did not offer them.
pub fn sip_offer_formats(browser: &[(u8, VoiceCodec)]) -> Vec<(u8, VoiceCodec)> {
    let mut out: Vec<(u8, VoiceCodec)> = browser.to_vec();
    for (pt, c) in [(0u8, VoiceCodec::Pcmu), (8, VoiceCodec::Pcma)] {
        if !out.iter().any(|(_, x)| *x == c) && !out.iter().any(|(p, _)| *p == pt) {
            out.push((pt, c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_phones_audio_and_writes_an_answer_back() {
        let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18 0 8 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n";
        let a = read_plain(&Sdp::parse(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(a.formats, [(0, VoiceCodec::Pcmu), (8, VoiceCodec::Pcma)], "G.729 is not ours");
        assert_eq!(a.dtmf_for(VoiceCodec::Pcmu), Some(101));
        assert_eq!(a.dtmf_for(VoiceCodec::Opus), None);
        assert_eq!(a.rtp, Some("10.0.0.5:4000".parse().unwrap()));
        assert_eq!(a.rtcp, Some("10.0.0.5:4001".parse().unwrap()));
        let out = PlainSdp {
            addr: "127.0.0.1".parse().unwrap(),
            port: 30_002,
            session: (7, 2),
            formats: &[(0, VoiceCodec::Pcmu)],
            dtmf: Some((101, 8_000)),
            proto: "RTP/AVP",
            crypto: None,
            direction: Direction::SendRecv,
            mux: false,
        }
        .write();
        assert!(out.contains("m=audio 30002 RTP/AVP 0 101\r\n"), "{out}");
        assert!(out.contains("c=IN IP4 127.0.0.1\r\n") && out.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        let back = read_plain(&Sdp::parse(out.as_bytes()).unwrap()).unwrap();
        assert_eq!((back.formats, back.dtmf), (vec![(0, VoiceCodec::Pcmu)], vec![(101, 8_000)]));
    }

    #[test]
    fn the_sip_leg_is_offered_the_browsers_codecs_and_g711() {
        assert_eq!(sip_offer_formats(&[(111, VoiceCodec::Opus)]), [(111, VoiceCodec::Opus), (0, VoiceCodec::Pcmu), (8, VoiceCodec::Pcma)]);
        assert_eq!(
            sip_offer_formats(&[(111, VoiceCodec::Opus), (0, VoiceCodec::Pcmu)]),
            [(111, VoiceCodec::Opus), (0, VoiceCodec::Pcmu), (8, VoiceCodec::Pcma)]
        );
    }
}
