//! SFU forwarding cost: RTP packets sent per second of SFU CPU (one core), for one
//! publisher (Opus 50 packets/s + VP8 30 frames/s of one packet each) and N subscribers
//! (room-protocol members, last-N covering everyone), measured on the sans-IO core with
//! str0m peers in the same process. Only the SFU's calls are timed (receiving, SRTP,
//! depacketizing, packetizing, SRTP for each subscriber); the peers' work is not counted.
//! Run: `cargo bench -p benches --bench sfu_forward` (goal: 170k packets/s per core);
//! `BENCH_ALL_AUDIO=1` for every subscriber hearing every participant.

#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

use sfu::core::{Sfu, SfuConfig, Signal};
use sfu::room::{ClientType, ParticipantId, RoomConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc};

struct Peer {
    id: ParticipantId,
    rtc: Rtc,
    addr: SocketAddr,
    own: Vec<Mid>,
}

fn member(s: &mut Sfu, now: Instant, port: u16, publish: bool) -> Peer {
    let id = s.handle_join(now, "bench", &format!("p{port}"), ClientType::Web).unwrap();
    let mut rtc = Rtc::builder().build(now);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mut own = vec![];
    if publish {
        own.push(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        own.push(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
    } else {
        own.push(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
    }
    let (offer, pending) = api.apply().unwrap();
    let answer = s.handle_offer(now, id, &offer.to_sdp_string()).unwrap();
    rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    Peer { id, rtc, addr, own }
}

/// Moves everything between the peers and the SFU; returns (SFU time, packets the SFU sent).
fn pump(now: Instant, s: &mut Sfu, peers: &mut [Peer], deliver: bool) -> (Duration, u64) {
    let mut spent = Duration::ZERO;
    let mut sent = 0;
    for _ in 0..30 {
        let mut moved = false;
        for p in peers.iter_mut() {
            while let Ok(o) = p.rtc.poll_output() {
                match o {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        let t0 = Instant::now();
                        s.handle_receive(now, t.source, t.destination, &t.contents);
                        spent += t0.elapsed();
                        moved = true;
                    }
                    Output::Event(_) => {}
                }
            }
        }
        loop {
            let t0 = Instant::now();
            let t = s.poll_transmit();
            spent += t0.elapsed();
            let Some(t) = t else { break };
            sent += 1;
            if deliver && let Some(p) = peers.iter_mut().find(|p| p.addr == t.destination) {
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: t.source,
                        destination: t.destination,
                        contents: t.data.as_slice().try_into().unwrap(),
                    },
                );
                let _ = p.rtc.handle_input(input);
                moved = true;
            }
        }
        while let Some((id, sig)) = s.poll_signal() {
            if let (Some(p), Signal::Offer { sdp, .. }) = (peers.iter_mut().find(|p| p.id == id), sig) {
                let answer = p.rtc.sdp_api().accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap()).unwrap();
                s.handle_answer(now, id, &answer.to_sdp_string()).unwrap();
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    (spent, sent)
}

fn run(subscribers: u16) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut cfg = SfuConfig::new("127.0.0.1:40500".parse().unwrap(), RoomConfig { max_participants: 1000, ..RoomConfig::default() });
    // The room's rules as configured by default: in a room of more than 10 only the 3 most
    // recent speakers are heard, so a subscriber has a few audio slots. BENCH_ALL_AUDIO=1:
    // every subscriber hears everyone (one audio slot per participant: O(N) streams in each
    // subscriber's str0m session, O(N^2) in all).
    if std::env::var_os("BENCH_ALL_AUDIO").is_some() {
        cfg.all_audio_up_to = 10_000;
    }
    let mut s = Sfu::new(cfg);
    let mut peers = vec![member(&mut s, now, 52000, true)];
    for i in 0..subscribers {
        peers.push(member(&mut s, now, 52001 + i, false));
    }
    for _ in 0..5000 {
        now += Duration::from_millis(1);
        for p in peers.iter_mut() {
            let _ = p.rtc.handle_input(Input::Timeout(now));
        }
        s.handle_timeout(now);
        pump(now, &mut s, &mut peers, true);
        if peers.iter().all(|p| p.rtc.is_connected()) {
            break;
        }
    }
    // Let the renegotiations and first key frames settle, delivering everything.
    let (a_mid, v_mid) = (peers[0].own[0], peers[0].own[1]);
    let opus = peers[0].rtc.writer(a_mid).unwrap().payload_params().find(|p| p.spec().codec == Codec::Opus).unwrap().pt();
    let vp8 = peers[0].rtc.writer(v_mid).unwrap().payload_params().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
    let start = now;
    let mut spent = Duration::ZERO;
    let mut sent = 0u64;
    let mut tmo = Duration::ZERO;
    let mut frame = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
    frame.resize(1000, 0x55);
    // Measured after 6 s: the SFU's second offer to each member (the remote tracks known
    // after the joins) comes up to 500 ms x room size / 10 after the first one.
    let (warm_ms, total_ms) = (6000u64, 10_000u64);
    for i in 0..total_ms {
        now += Duration::from_millis(1);
        let t = now - start;
        let (a, v) = (a_mid, v_mid);
        if i % 20 == 0 {
            peers[0].rtc.writer(a).unwrap().audio_level(-20, true).write(opus, now, t.into(), vec![0xf8; 60]).unwrap();
        }
        if i % 33 == 0 {
            peers[0].rtc.writer(v).unwrap().write(vp8, now, t.into(), frame.clone()).unwrap();
        }
        let _ = peers[0].rtc.handle_input(Input::Timeout(now));
        // The runtime's timer pass, once per millisecond (`sfu::rt` TICK).
        let t1 = Instant::now();
        s.handle_timeout(now);
        let d = t1.elapsed();
        // Subscribers' feedback only every 100 ms (RTCP), so most time is forwarding.
        let deliver = i % 100 == 0;
        if deliver {
            for p in peers.iter_mut().skip(1) {
                let _ = p.rtc.handle_input(Input::Timeout(now));
            }
        }
        let (x, n) = pump(now, &mut s, &mut peers, deliver);
        if i >= warm_ms {
            spent += d + x;
            tmo += d;
            sent += n;
        }
    }
    let secs = spent.as_secs_f64();
    let timeouts = s.take_stats().rtc_timeouts;
    println!(
        "subscribers {subscribers:4}: {sent:8} packets sent in {:.3} s of SFU CPU => {:.0} packets/s per core ({:.2} us/packet; {:.0} % in the 1 ms timer pass; {} str0m timeouts per session-second)",
        secs,
        sent as f64 / secs,
        secs * 1e6 / sent.max(1) as f64,
        tmo.as_secs_f64() * 100.0 / secs.max(1e-9),
        timeouts / (subscribers as u64 + 1) / (total_ms / 1000)
    );
}

fn main() {
    for n in [10u16, 50, 100] {
        run(n);
    }
}
