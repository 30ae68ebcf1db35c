//! The WebRTC <-> SIP media bridge on a virtual clock, with a str0m peer standing in for a
//! browser (ICE, DTLS-SRTP, Opus and telephone-event/48000 only) and plain PCMU RTP on the
//! SIP side: both directions carry a tone at its frequency through Opus <-> PCMU
//! transcoding, and RFC 4733 digits cross in both directions with their clocks mapped.
#![allow(clippy::disallowed_methods)] // a virtual clock starting now

use codec::voice::{Decoder, Encoder, FRAME, VoiceCodec};
use edge::media::bridge::{Bridge, BridgeOutput, SipAudio};
use edge::media::webrtc::{WebRtcError, WebRtcLeg, is_webrtc};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::SdpAnswer;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};

const EDGE: &str = "127.0.0.1:30000";
const BROWSER: &str = "127.0.0.1:50000";

struct Browser {
    rtc: Rtc,
    mid: Mid,
    connected: bool,
    /// (payload type, timestamp, payload) of every RTP packet received.
    got: Vec<(u8, u32, Vec<u8>)>,
}

fn browser(now: Instant) -> (Browser, String, str0m::change::SdpPendingOffer) {
    let mut b = Rtc::builder().set_rtp_mode(true).clear_codecs().enable_opus(true, false);
    b.codec_config().add_config(110.into(), None, Codec::Tele, Frequency::FORTY_EIGHT_KHZ, None, FormatParams::default());
    let mut rtc = b.build(now);
    rtc.add_local_candidate(Candidate::host(BROWSER.parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    (Browser { rtc, mid, connected: false, got: vec![] }, offer.to_sdp_string(), pending)
}

fn drain_browser(b: &mut Browser) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = vec![];
    while let Ok(o) = b.rtc.poll_output() {
        match o {
            Output::Timeout(_) => break,
            Output::Transmit(t) => out.push((t.source, t.contents.to_vec())),
            Output::Event(Event::Connected) => b.connected = true,
            Output::Event(Event::RtpPacket(p)) => b.got.push((*p.header.payload_type, p.header.timestamp, p.payload.to_vec())),
            Output::Event(_) => {}
        }
    }
    out
}

/// Moves datagrams both ways until nothing moves; RTP for the SIP side is collected.
fn pump(now: Instant, bridge: &mut Bridge, b: &mut Browser, sip: &mut Vec<Vec<u8>>) {
    for _ in 0..50 {
        let mut moved = false;
        for (from, data) in drain_browser(b) {
            bridge.handle_web(now, from, &data);
            moved = true;
        }
        while let Some(o) = bridge.poll_output() {
            match o {
                BridgeOutput::ToWeb { to, data } => {
                    assert_eq!(to, BROWSER.parse().unwrap());
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: EDGE.parse().unwrap(),
                            destination: to,
                            contents: data.as_slice().try_into().unwrap(),
                        },
                    );
                    b.rtc.handle_input(input).unwrap();
                    // RTP mode keeps one packet for the next poll.
                    for (from, data) in drain_browser(b) {
                        bridge.handle_web(now, from, &data);
                    }
                    moved = true;
                }
                BridgeOutput::ToSip(p) => sip.push(p),
            }
        }
        if !moved {
            break;
        }
    }
}

fn tick(now: Instant, bridge: &mut Bridge, b: &mut Browser, sip: &mut Vec<Vec<u8>>) {
    b.rtc.handle_input(Input::Timeout(now)).unwrap();
    bridge.handle_timeout(now);
    pump(now, bridge, b, sip);
}

fn frequency(x: &[i16], rate: f64) -> f64 {
    let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (x.len() as f64 / rate)
}

/// The browser sends one RTP packet on its audio m-line.
fn send(b: &mut Browser, w: RtpWrite) {
    let mut api = b.rtc.direct_api();
    let tx = api.stream_tx_by_mid(b.mid, None).unwrap();
    tx.write_rtp(w);
}

/// 48 kHz PCM of `payloads` decoded in order.
fn decode<'a>(codec: VoiceCodec, payloads: impl Iterator<Item = &'a [u8]>) -> Vec<i16> {
    let mut dec = Decoder::new(codec).unwrap();
    let mut pcm = vec![];
    for p in payloads {
        dec.decode_into(p, &mut pcm).unwrap();
    }
    pcm
}

fn tone48(hz: f64, frame: usize) -> Vec<i16> {
    (frame * FRAME..(frame + 1) * FRAME).map(|i| (8_000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin()) as i16).collect()
}

fn rtp(pt: u8, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, (marker as u8) << 7 | pt];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn a_browser_and_a_pcmu_phone_hear_each_others_tones_and_digits() {
    let t0 = Instant::now();
    let mut now = t0;
    let (mut b, offer, pending) = browser(now);
    assert!(is_webrtc(offer.as_bytes()), "{offer}");
    let mut leg = WebRtcLeg::new(now, EDGE.parse().unwrap(), &[VoiceCodec::Opus, VoiceCodec::Pcmu, VoiceCodec::Pcma]);
    let answer = leg.accept_offer(&offer).unwrap();
    assert!(answer.contains("a=ice-lite") && answer.contains("a=fingerprint:") && answer.contains("a=rtcp-mux"), "{answer}");
    assert!(answer.contains("opus/48000") && !answer.contains("PCMU"), "the browser offered only Opus: {answer}");
    b.rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    let mut bridge = Bridge::new(leg, SipAudio { codec: VoiceCodec::Pcmu, pt: 0, dtmf_pt: Some(101) }, 0xabcd, (100, 8_000)).unwrap();
    assert!(bridge.is_transcoding());
    let mut sip: Vec<Vec<u8>> = vec![];
    for _ in 0..3000 {
        now += Duration::from_millis(1);
        tick(now, &mut bridge, &mut b, &mut sip);
        if b.connected && bridge.web().is_connected() {
            break;
        }
    }
    assert!(b.connected && bridge.web().is_connected(), "ICE and DTLS between the browser and the edge");

    // One second each way: a 1 kHz tone from the phone (PCMU, 20 ms), 600 Hz from the
    // browser (Opus, 20 ms), 50 packets each.
    let mut phone_enc = Encoder::new(VoiceCodec::Pcmu).unwrap();
    let mut browser_enc = Encoder::new(VoiceCodec::Opus).unwrap();
    let opus_pt = b.rtc.codec_config().find(|p| p.spec().codec == Codec::Opus).unwrap().pt();
    for i in 0..50u16 {
        now += Duration::from_millis(20);
        let mut p = vec![];
        phone_enc.encode_into(&tone48(1_000.0, i as usize), &mut p).unwrap();
        bridge.handle_sip(now, &rtp(0, 7000 + i, 160 * i as u32, i == 0, &p));
        let mut q = vec![];
        browser_enc.encode_into(&tone48(600.0, i as usize), &mut q).unwrap();
        send(&mut b, RtpWrite::new(opus_pt, (i as u64 + 1).into(), 960 * i as u32, now, q).marker(i == 0));
        tick(now, &mut bridge, &mut b, &mut sip);
    }
    for _ in 0..100 {
        now += Duration::from_millis(1);
        tick(now, &mut bridge, &mut b, &mut sip);
    }
    // The browser got Opus that decodes to 1 kHz.
    let opus: Vec<&(u8, u32, Vec<u8>)> = b.got.iter().filter(|g| g.0 == *opus_pt).collect();
    assert!(opus.len() >= 45, "Opus packets at the browser: {}", opus.len());
    assert!(opus.windows(2).all(|w| w[1].1.wrapping_sub(w[0].1) == 960), "20 ms apart, continuous");
    let pcm = decode(VoiceCodec::Opus, opus.iter().map(|g| &g.2[..]));
    let f = frequency(&pcm[9_600..], 48_000.0);
    assert!((f - 1_000.0).abs() < 20.0, "the phone's tone at the browser: {f} Hz");
    // The phone got PCMU that decodes to 600 Hz.
    let pcmu: Vec<codec::rtp::RtpHeader> = sip.iter().map(|p| codec::rtp::RtpHeader::parse(p).unwrap()).collect();
    assert!(pcmu.len() >= 45, "PCMU packets at the phone: {}", pcmu.len());
    assert!(pcmu.iter().all(|h| h.payload_type == 0 && h.ssrc == 0xabcd));
    assert!(pcmu.windows(2).all(|w| w[1].sequence == w[0].sequence.wrapping_add(1) && w[1].timestamp.wrapping_sub(w[0].timestamp) == 160));
    assert!(pcmu.iter().all(|h| h.payload_end - h.payload_offset == 160));
    let pcm = decode(VoiceCodec::Pcmu, sip.iter().zip(&pcmu).map(|(p, h)| &p[h.payload_offset..h.payload_end]));
    let f = frequency(&pcm[9_600..], 48_000.0);
    assert!((f - 600.0).abs() < 15.0, "the browser's tone at the phone: {f} Hz");

    // Digit 7 from the phone (telephone-event/8000 pt 101): at the browser as pt 110 with
    // durations in 48 kHz units.
    let ts = 160 * 50;
    for (k, (dur, end)) in [(160u16, false), (320, false), (480, true), (480, true), (480, true)].into_iter().enumerate() {
        now += Duration::from_millis(20);
        let d = dur.to_be_bytes();
        bridge.handle_sip(now, &rtp(101, 7050 + k as u16, ts, k == 0, &[7, if end { 0x8a } else { 0x0a }, d[0], d[1]]));
        tick(now, &mut bridge, &mut b, &mut sip);
    }
    let tele: Vec<&(u8, u32, Vec<u8>)> = b.got.iter().filter(|g| g.0 == 110).collect();
    assert_eq!(tele.len(), 5, "{tele:?}");
    assert!(tele.iter().all(|g| g.2[0] == 7 && g.1 == tele[0].1));
    assert_eq!(u16::from_be_bytes([tele[4].2[2], tele[4].2[3]]), 2_880);
    assert_eq!(tele[4].2[1] & 0x80, 0x80, "end of event");

    // Digit 3 from the browser (pt 110, 48 kHz durations): at the phone as pt 101, 8 kHz.
    sip.clear();
    let ts = 960 * 50;
    for (k, (dur, end)) in [(960u16, false), (1920, true), (1920, true), (1920, true)].into_iter().enumerate() {
        now += Duration::from_millis(20);
        let d = dur.to_be_bytes();
        send(
            &mut b,
            RtpWrite::new(110.into(), (51 + k as u64).into(), ts, now, vec![3, if end { 0x8a } else { 0x0a }, d[0], d[1]]).marker(k == 0),
        );
        tick(now, &mut bridge, &mut b, &mut sip);
    }
    let hs: Vec<codec::rtp::RtpHeader> = sip.iter().map(|p| codec::rtp::RtpHeader::parse(p).unwrap()).collect();
    let tele: Vec<(&Vec<u8>, &codec::rtp::RtpHeader)> = sip.iter().zip(&hs).filter(|(_, h)| h.payload_type == 101).collect();
    assert_eq!(tele.len(), 4, "{hs:?}");
    assert!(tele[0].1.marker);
    let last = &tele[3].0[tele[3].1.payload_offset..];
    assert_eq!((last[0], last[1] & 0x80, u16::from_be_bytes([last[2], last[3]])), (3, 0x80, 320));
    assert_eq!(bridge.stats.dtmf_to_sip, 4);
    assert_eq!(bridge.stats.dtmf_to_web, 5);

    // The browser restarts ICE (RFC 8445 9: new credentials in a new offer): the leg takes
    // the offer, the checks run again, and the phone's audio still reaches the browser.
    let mut api = b.rtc.sdp_api();
    api.ice_restart(true);
    let (offer, pending) = api.apply().unwrap();
    let offer = offer.to_sdp_string();
    let answer = bridge.web_mut().accept_offer(&offer).unwrap();
    assert_ne!(offer.lines().find(|l| l.starts_with("a=ice-ufrag")), answer.lines().find(|l| l.starts_with("a=ice-ufrag")), "{answer}");
    b.rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    let before = b.got.iter().filter(|g| g.0 == *opus_pt).count();
    for i in 0..50u16 {
        now += Duration::from_millis(20);
        let mut p = vec![];
        phone_enc.encode_into(&tone48(1_000.0, 60 + i as usize), &mut p).unwrap();
        bridge.handle_sip(now, &rtp(0, 7100 + i, 160 * (60 + i as u32), false, &p));
        tick(now, &mut bridge, &mut b, &mut sip);
    }
    let after = b.got.iter().filter(|g| g.0 == *opus_pt).count();
    assert!(after - before >= 45, "audio after the ICE restart: {} packets", after - before);
    assert!(bridge.web().is_connected());

    // The SIP leg moves to PCMA (a PBX re-INVITE after a transfer): the browser keeps Opus,
    // both directions continue their numbering, and the tones still arrive at frequency.
    bridge.set_sip(SipAudio { codec: VoiceCodec::Pcma, pt: 8, dtmf_pt: Some(101) }).unwrap();
    assert_eq!(bridge.sip_codec(), VoiceCodec::Pcma);
    let last_web = b.got.iter().rfind(|g| g.0 == *opus_pt).unwrap().1;
    let last_sip = codec::rtp::RtpHeader::parse(sip.last().unwrap()).unwrap();
    sip.clear();
    let mut phone_enc = Encoder::new(VoiceCodec::Pcma).unwrap();
    let from = b.got.len();
    for i in 0..50u16 {
        now += Duration::from_millis(20);
        let mut p = vec![];
        phone_enc.encode_into(&tone48(1_000.0, i as usize), &mut p).unwrap();
        bridge.handle_sip(now, &rtp(8, 9000 + i, 160 * i as u32, i == 0, &p));
        let mut q = vec![];
        browser_enc.encode_into(&tone48(600.0, 200 + i as usize), &mut q).unwrap();
        send(&mut b, RtpWrite::new(opus_pt, (200 + i as u64).into(), 960 * (200 + i as u32), now, q));
        tick(now, &mut bridge, &mut b, &mut sip);
    }
    let opus: Vec<&(u8, u32, Vec<u8>)> = b.got[from..].iter().filter(|g| g.0 == *opus_pt).collect();
    assert!(opus.len() >= 45, "Opus packets at the browser after the switch: {}", opus.len());
    assert_eq!(opus[0].1.wrapping_sub(last_web), 960, "the browser's stream continues");
    let pcm = decode(VoiceCodec::Opus, opus.iter().map(|g| &g.2[..]));
    let f = frequency(&pcm[9_600..], 48_000.0);
    assert!((f - 1_000.0).abs() < 20.0, "the PCMA phone's tone at the browser: {f} Hz");
    let pcma: Vec<codec::rtp::RtpHeader> = sip.iter().map(|p| codec::rtp::RtpHeader::parse(p).unwrap()).collect();
    assert!(pcma.len() >= 45 && pcma.iter().all(|h| h.payload_type == 8), "{pcma:?}");
    assert_eq!(pcma[0].sequence, last_sip.sequence.wrapping_add(1), "the SIP leg's stream continues");
    let pcm = decode(VoiceCodec::Pcma, sip.iter().zip(&pcma).map(|(p, h)| &p[h.payload_offset..h.payload_end]));
    let f = frequency(&pcm[9_600..], 48_000.0);
    assert!((f - 600.0).abs() < 15.0, "the browser's tone at the PCMA phone: {f} Hz");

    // A digit from a SIP INFO of the browser's: RFC 4733 events to the phone (pt 101, 8 kHz)
    // while the browser's audio keeps flowing: updates as it lasts, the end three times,
    // one timestamp, and no sequence number used twice.
    sip.clear();
    assert!(bridge.send_digit(now, 9, Duration::from_millis(200)));
    for i in 0..20u16 {
        now += Duration::from_millis(20);
        let mut q = vec![];
        browser_enc.encode_into(&tone48(600.0, 300 + i as usize), &mut q).unwrap();
        send(&mut b, RtpWrite::new(opus_pt, (300 + i as u64).into(), 960 * (300 + i as u32), now, q));
        tick(now, &mut bridge, &mut b, &mut sip);
    }
    let hs: Vec<codec::rtp::RtpHeader> = sip.iter().map(|p| codec::rtp::RtpHeader::parse(p).unwrap()).collect();
    let events: Vec<(&codec::rtp::RtpHeader, &[u8])> =
        hs.iter().zip(&sip).filter(|(h, _)| h.payload_type == 101).map(|(h, p)| (h, &p[h.payload_offset..h.payload_end])).collect();
    assert!(events.len() >= 6, "updates and three ends: {events:?}");
    assert!(events[0].0.marker && events.iter().skip(1).all(|e| !e.0.marker));
    assert!(events.iter().all(|e| e.1[0] == 9 && e.0.timestamp == events[0].0.timestamp));
    let ends: Vec<_> = events.iter().filter(|e| e.1[1] & 0x80 != 0).collect();
    assert_eq!(ends.len(), 3);
    assert!(ends.iter().all(|e| u16::from_be_bytes([e.1[2], e.1[3]]) == 1_600), "200 ms at 8 kHz");
    let durations: Vec<u16> = events.iter().map(|e| u16::from_be_bytes([e.1[2], e.1[3]])).collect();
    assert!(durations.windows(2).all(|w| w[1] >= w[0]), "{durations:?}");
    assert!(hs.iter().filter(|h| h.payload_type == 8).count() >= 15, "audio kept flowing");
    assert!(hs.windows(2).all(|w| w[1].sequence == w[0].sequence.wrapping_add(1)), "one sequence, no repeats");
    assert_eq!(bridge.stats.dtmf_to_sip, 4 + events.len() as u64);
    // A SIP leg without telephone-event: the INFO is not taken (it goes on as it is).
    bridge.set_sip(SipAudio { codec: VoiceCodec::Pcma, pt: 8, dtmf_pt: None }).unwrap();
    assert!(!bridge.send_digit(now, 9, Duration::from_millis(200)));
}

#[test]
fn offers_the_bridge_cannot_take_are_refused_with_a_reason() {
    let now = Instant::now();
    let (_, offer, _) = browser(now);
    let no_fp: String = offer.lines().filter(|l| !l.starts_with("a=fingerprint")).map(|l| format!("{l}\r\n")).collect();
    let mut leg = WebRtcLeg::new(now, EDGE.parse().unwrap(), &[VoiceCodec::Opus]);
    assert_eq!(leg.accept_offer(&no_fp), Err(WebRtcError::NoFingerprint));
    // Only G.722 offered: no common codec.
    let mut g722 = Rtc::builder().clear_codecs().enable_g722(true, false).build(now);
    g722.add_local_candidate(Candidate::host(BROWSER.parse().unwrap(), "udp").unwrap());
    let mut api = g722.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, _) = api.apply().unwrap();
    let mut leg = WebRtcLeg::new(now, EDGE.parse().unwrap(), &[VoiceCodec::Opus, VoiceCodec::Pcmu]);
    let r = leg.accept_offer(&offer.to_sdp_string());
    assert_eq!(r, Err(WebRtcError::NoCodec));
    assert!(!is_webrtc(b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n"));
}

/// The anchor's offer/answer for a bridged call, then new offers from either side (hold,
/// resume, a session refresh) with a str0m browser taking the edge's SDP each time.
#[test]
fn a_bridged_call_takes_new_offers_from_either_side() {
    use edge::config::SrtpPolicy;
    use edge::media::anchor::{Anchor, CallParties, SdpKind};
    use edge::media::relay::{RelayConfig, Side};
    let now = Instant::now();
    let mut an = Anchor::detached(RelayConfig { ports: 40000..=40099, ..Default::default() }, "127.0.0.1".parse().unwrap());
    an.start(now, "c1", "tagA", true, CallParties::default(), (SrtpPolicy::Keep, SrtpPolicy::Keep), "sip:web@x", "sip:9000@x");
    let (mut b, offer, pending) = browser(now);
    let to_sip = String::from_utf8(an.handle_sdp(now, "c1", Side::A, SdpKind::Offer, offer.as_bytes()).unwrap()).unwrap();
    assert!(to_sip.contains("RTP/AVP 111 0 8 126") || to_sip.contains("RTP/AVP 111 0 8 101"), "{to_sip}");
    assert!(!to_sip.contains("a=fingerprint") && !to_sip.contains("ice-ufrag"), "{to_sip}");
    assert!(to_sip.contains("a=rtcp-mux\r\n") && to_sip.contains("a=rtcp:"), "mux offered, a=rtcp the fallback: {to_sip}");
    let sip_answer = |dir: &str| {
        format!(
            "v=0\r\no=pbx 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na={dir}\r\n"
        )
    };
    let answer = String::from_utf8(an.handle_sdp(now, "c1", Side::B, SdpKind::Answer, sip_answer("sendrecv").as_bytes()).unwrap()).unwrap();
    b.rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    assert!(answer.contains("opus/48000"), "the browser offered only Opus: transcoding: {answer}");

    // The browser holds: the SIP leg is offered sendonly, its recvonly answer releases
    // str0m's answer for the browser.
    let mut api = b.rtc.sdp_api();
    api.set_direction(b.mid, Direction::SendOnly);
    let (offer, pending) = api.apply().unwrap();
    let to_sip = String::from_utf8(an.handle_sdp(now, "c1", Side::A, SdpKind::Offer, offer.to_sdp_string().as_bytes()).unwrap()).unwrap();
    assert!(to_sip.contains("a=sendonly") && to_sip.contains("m=audio") && to_sip.contains(" RTP/AVP 0 101"), "{to_sip}");
    assert!(to_sip.contains("o=edge ") && to_sip.contains(" 2 IN IP4"), "a new o= version: {to_sip}");
    assert!(!to_sip.contains("a=rtcp-mux"), "the phone's answer had no rtcp-mux: {to_sip}");
    let answer = String::from_utf8(an.handle_sdp(now, "c1", Side::B, SdpKind::Answer, sip_answer("recvonly").as_bytes()).unwrap()).unwrap();
    assert!(answer.contains("a=recvonly"), "{answer}");
    b.rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();

    // The phone holds and resumes, then refreshes the session with the same SDP: each time
    // the browser gets an offer from str0m it can take, and the phone the mirror answer.
    for (dir, want_offer, want_answer) in
        [("sendonly", "a=sendonly", "a=recvonly"), ("sendrecv", "a=sendrecv", "a=sendrecv"), ("sendrecv", "a=ice-ufrag", "a=sendrecv")]
    {
        let reoffer = sip_answer(dir).replace("o=pbx 1 1", "o=pbx 1 2");
        let to_web = String::from_utf8(an.handle_sdp(now, "c1", Side::B, SdpKind::Offer, reoffer.as_bytes()).unwrap()).unwrap();
        assert!(to_web.contains(want_offer) && to_web.contains("UDP/TLS/RTP/SAVPF"), "{dir}: {to_web}");
        let web_answer = b.rtc.sdp_api().accept_offer(str0m::change::SdpOffer::from_sdp_string(&to_web).unwrap()).unwrap();
        let to_sip =
            String::from_utf8(an.handle_sdp(now, "c1", Side::A, SdpKind::Answer, web_answer.to_sdp_string().as_bytes()).unwrap()).unwrap();
        assert!(to_sip.contains(want_answer) && to_sip.contains("RTP/AVP 0 101"), "{dir}: {to_sip}");
    }
    // The PBX transfers the call to a PCMA-only phone (a re-INVITE with its SDP): the
    // browser keeps Opus, the new phone is answered with PCMA and the bridge transcodes to it.
    let pcma = "v=0\r\no=pbx 1 3 IN IP4 10.0.0.3\r\ns=-\r\nc=IN IP4 10.0.0.3\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let to_web = String::from_utf8(an.handle_sdp(now, "c1", Side::B, SdpKind::Offer, pcma.as_bytes()).unwrap()).unwrap();
    let web_answer = b.rtc.sdp_api().accept_offer(str0m::change::SdpOffer::from_sdp_string(&to_web).unwrap()).unwrap();
    let to_sip =
        String::from_utf8(an.handle_sdp(now, "c1", Side::A, SdpKind::Answer, web_answer.to_sdp_string().as_bytes()).unwrap()).unwrap();
    assert!(to_sip.contains("m=audio") && to_sip.contains(" RTP/AVP 8 101") && to_sip.contains("PCMA/8000"), "{to_sip}");
    let bridge = (1..=4).find_map(|s| an.relay().bridge(s)).expect("the call's bridge");
    assert_eq!(bridge.sip_codec(), VoiceCodec::Pcma);
    assert_eq!(bridge.web_codec().1, VoiceCodec::Opus);
    // A re-offer with no codec the edge knows is refused, and the call keeps PCMA.
    let g729 = pcma.replace("RTP/AVP 8 101", "RTP/AVP 18").replace(" 1 3 ", " 1 4 ");
    assert!(an.handle_sdp(now, "c1", Side::B, SdpKind::Offer, g729.as_bytes()).is_err());
    assert_eq!((1..=4).find_map(|s| an.relay().bridge(s)).unwrap().sip_codec(), VoiceCodec::Pcma);

    // A new offer crossing one in progress (glare) is refused.
    let reoffer = sip_answer("sendonly");
    an.handle_sdp(now, "c1", Side::B, SdpKind::Offer, reoffer.as_bytes()).unwrap();
    assert!(an.handle_sdp(now, "c1", Side::B, SdpKind::Offer, reoffer.as_bytes()).is_err());
}

/// A user with a browser and a desk phone: the caller's offer goes to both with a body each,
/// and the first answer decides which path stays (the other's relay ports are freed).
#[test]
fn a_call_forked_to_a_browser_and_a_desk_phone_keeps_the_path_that_answers() {
    use edge::config::SrtpPolicy;
    use edge::media::anchor::{Anchor, CallParties, SdpKind};
    use edge::media::relay::{RelayConfig, Side};
    let now = Instant::now();
    let mut an = Anchor::detached(RelayConfig { ports: 40000..=40099, ..Default::default() }, "127.0.0.1".parse().unwrap());
    let start = |an: &mut Anchor, call: &str| {
        an.start(now, call, "tagA", true, CallParties::default(), (SrtpPolicy::Keep, SrtpPolicy::Keep), "sip:a@x", "sip:alice@x")
    };
    let phone_offer = "v=0\r\no=pbx 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let phone_answer = "v=0\r\no=dp 1 1 IN IP4 10.0.0.3\r\ns=-\r\nc=IN IP4 10.0.0.3\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";

    // A SIP caller; the browser answers: the bridge stays, the plain path goes.
    start(&mut an, "c1");
    let (plain, web) = an.handle_initial_offer(now, "c1", phone_offer.as_bytes(), true, true).unwrap();
    let (plain, web) = (String::from_utf8(plain).unwrap(), String::from_utf8(web.expect("a body for the browser")).unwrap());
    assert!(plain.contains("RTP/AVP") && !plain.contains("fingerprint"), "{plain}");
    assert!(web.contains("UDP/TLS/RTP/SAVPF") && web.contains("a=fingerprint"), "{web}");
    assert_eq!(an.relay().sessions(), 2);
    let mut b = Rtc::builder().set_rtp_mode(true).build(now);
    b.add_local_candidate(Candidate::host(BROWSER.parse().unwrap(), "udp").unwrap());
    let answer = b.sdp_api().accept_offer(str0m::change::SdpOffer::from_sdp_string(&web).unwrap()).unwrap();
    let to_caller =
        String::from_utf8(an.handle_sdp(now, "c1", Side::B, SdpKind::Answer, answer.to_sdp_string().as_bytes()).unwrap()).unwrap();
    assert!(to_caller.contains("RTP/AVP 0") && !to_caller.contains("fingerprint"), "{to_caller}");
    assert_eq!(an.relay().sessions(), 1, "the desk phone's path was dropped");
    assert!(an.relay().bridge(1).is_some() || an.relay().bridge(2).is_some());

    // A SIP caller; the desk phone answers: plain anchoring stays, the bridge goes.
    start(&mut an, "c2");
    let (plain, _) = an.handle_initial_offer(now, "c2", phone_offer.as_bytes(), true, true).unwrap();
    let port = edge::media::sdp::Sdp::parse(&plain).unwrap().media[0].port;
    let to_caller = String::from_utf8(an.handle_sdp(now, "c2", Side::B, SdpKind::Answer, phone_answer.as_bytes()).unwrap()).unwrap();
    assert!(to_caller.contains("RTP/AVP 0"), "{to_caller}");
    assert_eq!(an.relay().sessions(), 2, "c1's bridge and c2's plain session");
    assert!(port != 0);

    // A browser caller: the desk phone gets the bridge's plain offer, the browser the
    // caller's own; the browser answers: the SDP passes untouched and the bridge goes.
    start(&mut an, "c3");
    let (_, offer, _) = browser(now);
    let (plain, web) = an.handle_initial_offer(now, "c3", offer.as_bytes(), true, true).unwrap();
    assert!(String::from_utf8(plain).unwrap().contains("RTP/AVP 111 0 8"));
    assert_eq!(web.as_deref(), Some(offer.as_bytes()), "browser to browser: untouched");
    let (_, other_browser, _) = browser(now);
    let answer = other_browser.replace("a=setup:actpass", "a=setup:active");
    let back = an.handle_sdp(now, "c3", Side::B, SdpKind::Answer, answer.as_bytes()).unwrap();
    assert_eq!(back, answer.as_bytes());
    assert_eq!(an.relay().sessions(), 2, "c3's bridge session was freed");

    // Early media (183 with SDP) from one kind of branch settles nothing: each goes through
    // its own path, and the final answer decides.
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    // A SIP caller: the desk phone's 183 is anchored plainly; then the browser's 200 wins.
    start(&mut an, "c4");
    let (_, web) = an.handle_initial_offer(now, "c4", phone_offer.as_bytes(), true, true).unwrap();
    assert_eq!(an.relay().sessions(), 4);
    let early = text(an.handle_early_answer(now, "c4", Side::B, phone_answer.as_bytes()).unwrap());
    assert!(early.contains("RTP/AVP 0") && early.contains("c=IN IP4 127.0.0.1") && !early.contains("10.0.0.3"), "{early}");
    assert_eq!(an.relay().sessions(), 4, "both paths kept after the 183");
    let mut b = Rtc::builder().set_rtp_mode(true).build(now);
    b.add_local_candidate(Candidate::host(BROWSER.parse().unwrap(), "udp").unwrap());
    let answer = b.sdp_api().accept_offer(str0m::change::SdpOffer::from_sdp_string(&text(web.unwrap())).unwrap()).unwrap();
    let fin = text(an.handle_sdp(now, "c4", Side::B, SdpKind::Answer, answer.to_sdp_string().as_bytes()).unwrap());
    assert!(fin.contains("RTP/AVP 0") && !fin.contains("fingerprint"), "{fin}");
    assert_ne!(
        edge::media::sdp::Sdp::parse(early.as_bytes()).unwrap().media[0].port,
        edge::media::sdp::Sdp::parse(fin.as_bytes()).unwrap().media[0].port,
        "the bridge's port"
    );
    assert_eq!(an.relay().sessions(), 3, "the desk phone's path went at the 200");

    // A browser caller: the desk phone's 183 gets the browser a bridged answer; the other
    // browser's 200 then passes untouched and the bridge goes.
    start(&mut an, "c5");
    let (_, offer, _) = browser(now);
    an.handle_initial_offer(now, "c5", offer.as_bytes(), true, true).unwrap();
    assert_eq!(an.relay().sessions(), 4);
    let early = text(an.handle_early_answer(now, "c5", Side::B, phone_answer.as_bytes()).unwrap());
    assert!(early.contains("UDP/TLS/RTP/SAVPF") && early.contains("a=fingerprint"), "{early}");
    let (_, other_browser, _) = browser(now);
    let answer = other_browser.replace("a=setup:actpass", "a=setup:active");
    assert_eq!(an.handle_sdp(now, "c5", Side::B, SdpKind::Answer, answer.as_bytes()).unwrap(), answer.as_bytes());
    assert_eq!(an.relay().sessions(), 3, "c5's bridge went at the browser's 200");

    // A browser caller: the other browser's 183 passes untouched; the desk phone's 200
    // then gets the caller the bridge's answer, and the bridge stays.
    start(&mut an, "c6");
    let (_, offer, _) = browser(now);
    an.handle_initial_offer(now, "c6", offer.as_bytes(), true, true).unwrap();
    let (_, other_browser, _) = browser(now);
    let early_web = other_browser.replace("a=setup:actpass", "a=setup:active");
    assert_eq!(an.handle_early_answer(now, "c6", Side::B, early_web.as_bytes()).unwrap(), early_web.as_bytes());
    let fin = text(an.handle_sdp(now, "c6", Side::B, SdpKind::Answer, phone_answer.as_bytes()).unwrap());
    assert!(fin.contains("UDP/TLS/RTP/SAVPF") && fin.contains("a=fingerprint") && fin.contains("opus/48000"), "{fin}");
    assert_eq!(an.relay().sessions(), 4, "c6's bridge stays");
}
