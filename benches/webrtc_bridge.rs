//! CPU per WebRTC <-> SIP bridged call (issue #8): `CALLS` bridges (default 20), each with a
//! str0m peer standing in for the browser (ICE, DTLS-SRTP) and a SIP phone sending 20 ms
//! frames, run for `BENCH_SECONDS` (default 10) of virtual time. Only the edge's side is timed
//! (the bridge: SRTP, str0m, transcoding, RTP building); the peers' work is not. Printed:
//! edge CPU per call-second and calls per core, passthrough (PCMU both legs) and
//! transcoding (Opus browser, PCMU phone).
//!
//! `cargo bench -p benches --bench webrtc_bridge`
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

use codec::voice::{Encoder, FRAME, VoiceCodec};
use edge::media::bridge::{Bridge, BridgeOutput, SipAudio};
use edge::media::webrtc::WebRtcLeg;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::SdpAnswer;
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};

struct Call {
    bridge: Bridge,
    browser: Rtc,
    mid: str0m::media::Mid,
    pt: str0m::media::Pt,
    edge_addr: SocketAddr,
    browser_addr: SocketAddr,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn setup(now: Instant, i: u16, browser_codec: VoiceCodec) -> Call {
    let edge_addr: SocketAddr = format!("127.0.0.1:{}", 30_000 + i * 2).parse().unwrap();
    let browser_addr: SocketAddr = format!("127.0.0.2:{}", 40_000 + i).parse().unwrap();
    let b = Rtc::builder().clear_codecs();
    let b = match browser_codec {
        VoiceCodec::Opus => b.enable_opus(true, false),
        _ => b.enable_pcmu(true, false),
    };
    let mut browser = b.build(now);
    browser.add_local_candidate(Candidate::host(browser_addr, "udp").unwrap());
    let mut api = browser.sdp_api();
    let mid = api.add_media(str0m::media::MediaKind::Audio, str0m::media::Direction::SendRecv, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let mut leg = WebRtcLeg::new(now, edge_addr, &[VoiceCodec::Opus, VoiceCodec::Pcmu]);
    let answer = leg.accept_offer(&offer.to_sdp_string()).unwrap();
    browser.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    let bridge = Bridge::new(leg, SipAudio { codec: VoiceCodec::Pcmu, pt: 0, dtmf_pt: None }, 0x1000 + i as u32, (1, 0)).unwrap();
    let pt = browser.codec_config().params().iter().find(|p| p.spec().codec != str0m::format::Codec::Tele).unwrap().pt();
    Call { bridge, browser, mid, pt, edge_addr, browser_addr }
}

/// Moves datagrams between the peer and the bridge; returns the time spent in the bridge.
fn pump(now: Instant, c: &mut Call) -> Duration {
    let mut edge = Duration::ZERO;
    for _ in 0..20 {
        let mut moved = false;
        let mut out = vec![];
        while let Ok(o) = c.browser.poll_output() {
            match o {
                Output::Timeout(_) => break,
                Output::Transmit(t) => out.push(t.contents.to_vec()),
                Output::Event(Event::Connected) | Output::Event(_) => {}
            }
        }
        for d in out {
            let t = Instant::now();
            c.bridge.handle_web(now, c.browser_addr, &d);
            edge += t.elapsed();
            moved = true;
        }
        loop {
            let t = Instant::now();
            let o = c.bridge.poll_output();
            edge += t.elapsed();
            let Some(o) = o else { break };
            if let BridgeOutput::ToWeb { data, .. } = o {
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: c.edge_addr,
                        destination: c.browser_addr,
                        contents: data.as_slice().try_into().unwrap(),
                    },
                );
                c.browser.handle_input(input).unwrap();
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    edge
}

fn rtp(seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, 0];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&0x55u32.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn run(browser_codec: VoiceCodec, calls: u16, seconds: u64) -> (f64, bool) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut cs: Vec<Call> = (0..calls).map(|i| setup(now, i, browser_codec)).collect();
    for _ in 0..3000 {
        now += Duration::from_millis(1);
        for c in cs.iter_mut() {
            c.browser.handle_input(Input::Timeout(now)).unwrap();
            c.bridge.handle_timeout(now);
            pump(now, c);
        }
        if cs.iter().all(|c| c.bridge.web().is_connected()) {
            break;
        }
    }
    assert!(cs.iter().all(|c| c.bridge.web().is_connected()), "every leg connects");
    let tone: Vec<i16> = (0..FRAME).map(|i| (6_000.0 * (i as f64 * 0.057).sin()) as i16).collect();
    let mut enc_sip = Encoder::new(VoiceCodec::Pcmu).unwrap();
    let mut enc_web = Encoder::new(browser_codec).unwrap();
    let (mut sip_frame, mut web_frame) = (vec![], vec![]);
    enc_sip.encode_into(&tone, &mut sip_frame).unwrap();
    enc_web.encode_into(&tone, &mut web_frame).unwrap();
    let ticks = if browser_codec == VoiceCodec::Opus { 960 } else { 160 };
    let mut edge = Duration::ZERO;
    for f in 0..seconds * 50 {
        now += Duration::from_millis(20);
        for c in cs.iter_mut() {
            let t = Instant::now();
            c.bridge.handle_sip(now, &rtp(f as u16, 160 * f as u32, &sip_frame));
            c.bridge.handle_timeout(now);
            edge += t.elapsed();
            let mut api = c.browser.direct_api();
            api.stream_tx_by_mid(c.mid, None).unwrap().write_rtp(RtpWrite::new(
                c.pt,
                (f + 1).into(),
                ticks * f as u32,
                now,
                web_frame.clone(),
            ));
            c.browser.handle_input(Input::Timeout(now)).unwrap();
            edge += pump(now, c);
        }
    }
    let transcoding = cs[0].bridge.is_transcoding();
    let sent = cs.iter().map(|c| c.bridge.stats.to_sip_packets + c.bridge.stats.to_web_packets).sum::<u64>();
    assert!(sent >= calls as u64 * seconds * 50 * 2 * 9 / 10, "media flowed both ways: {sent} packets");
    (edge.as_secs_f64() / (calls as f64 * seconds as f64), transcoding)
}

fn main() {
    let calls = env("CALLS", 20) as u16;
    let seconds = env("BENCH_SECONDS", 10);
    for (name, codec) in [("passthrough (PCMU both legs)", VoiceCodec::Pcmu), ("transcoding (Opus browser, PCMU phone)", VoiceCodec::Opus)]
    {
        let (per_call_second, transcoding) = run(codec, calls, seconds);
        assert_eq!(transcoding, codec == VoiceCodec::Opus);
        println!(
            "{name:40} {calls} calls x {seconds} s: edge CPU {:.1} us per call-second ({:.3} % of a core per call) => {:.0} calls per core",
            per_call_second * 1e6,
            per_call_second * 100.0,
            1.0 / per_call_second
        );
    }
}
