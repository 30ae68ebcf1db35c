//! WHIP publish and WHEP watch through the SFU core on a virtual clock, with str0m peers
//! standing in for browsers (ICE, DTLS-SRTP, real RTP): the viewer receives the publisher's
//! audio and video; it stops when the viewer leaves; offers the SFU cannot take get an
//! error and change nothing; a full room refuses the next one; a peer that vanishes is
//! timed out.
#![allow(clippy::disallowed_methods)]

use sfu::core::{Sfu, SfuConfig, SfuError};
use sfu::room::{LeaveReason, RoomConfig, RoomError, RoomEvent};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const SFU: &str = "127.0.0.1:40000";

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    connected: bool,
    got: Vec<MediaKind>,
    mids: Vec<(Mid, MediaKind)>,
    /// RTP mode clients: every packet's (payload type, sequence number, timestamp).
    rtp: Vec<(u8, u16, u32)>,
}

fn client(now: Instant, port: u16, dir: Direction) -> (Client, String, SdpPendingOffer) {
    client_with(Rtc::builder().build(now), port, dir)
}

fn client_with(mut rtc: Rtc, port: u16, dir: Direction) -> (Client, String, SdpPendingOffer) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    let a = api.add_media(MediaKind::Audio, dir, None, None, None);
    let v = api.add_media(MediaKind::Video, dir, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    (
        Client { rtc, addr, connected: false, got: vec![], rtp: vec![], mids: vec![(a, MediaKind::Audio), (v, MediaKind::Video)] },
        offer.to_sdp_string(),
        pending,
    )
}

fn accept(c: &mut Client, pending: SdpPendingOffer, answer: &str) {
    c.rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(answer).unwrap()).unwrap();
}

/// Polls a client until it waits for time: its events are recorded, its datagrams returned.
fn drain(c: &mut Client) -> Vec<str0m::net::Transmit> {
    let mut out = vec![];
    while let Ok(o) = c.rtc.poll_output() {
        match o {
            Output::Timeout(_) => break,
            Output::Transmit(t) => out.push(t),
            Output::Event(Event::Connected) => c.connected = true,
            Output::Event(Event::MediaData(d)) => {
                if let Some((_, k)) = c.mids.iter().find(|(m, _)| *m == d.mid) {
                    c.got.push(*k);
                }
            }
            Output::Event(Event::RtpPacket(p)) => c.rtp.push((*p.header.payload_type, p.header.sequence_number, p.header.timestamp)),
            Output::Event(_) => {}
        }
    }
    out
}

/// Moves every datagram between the clients and the SFU at `now`, dropping the SFU's
/// datagrams for which `lose` says so.
fn pump_lossy(now: Instant, sfu: &mut Sfu, clients: &mut [&mut Client], lose: &mut dyn FnMut(&sfu::core::Transmit) -> bool) {
    for _ in 0..20 {
        let mut moved = false;
        for c in clients.iter_mut() {
            for t in drain(c) {
                sfu.handle_receive_on(now, t.proto, t.source, t.destination, &t.contents);
                moved = true;
            }
        }
        while let Some(t) = sfu.poll_transmit() {
            if lose(&t) {
                continue;
            }
            if let Some(c) = clients.iter_mut().find(|c| c.addr == t.destination) {
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: t.proto,
                        source: t.source,
                        destination: t.destination,
                        contents: t.data.as_slice().try_into().unwrap(),
                    },
                );
                c.rtc.handle_input(input).unwrap();
                // str0m's RTP mode keeps one received packet for the next poll: poll now.
                for t in drain(c) {
                    sfu.handle_receive_on(now, t.proto, t.source, t.destination, &t.contents);
                }
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
}

fn tick(now: Instant, sfu: &mut Sfu, clients: &mut [&mut Client]) {
    tick_lossy(now, sfu, clients, &mut |_| false)
}

fn tick_lossy(now: Instant, sfu: &mut Sfu, clients: &mut [&mut Client], lose: &mut dyn FnMut(&sfu::core::Transmit) -> bool) {
    for c in clients.iter_mut() {
        c.rtc.handle_input(Input::Timeout(now)).unwrap();
    }
    sfu.handle_timeout(now);
    pump_lossy(now, sfu, clients, lose);
}

fn sfu(max: usize) -> Sfu {
    Sfu::new(SfuConfig::new(SFU.parse().unwrap(), RoomConfig { max_participants: max, lobby: true, vanish_after: Duration::from_secs(10) }))
}

#[test]
fn a_whep_viewer_receives_what_a_whip_publisher_sends() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = sfu(10);
    let (mut publ, offer, pending) = client(now, 50000, Direction::SendOnly);
    let (pid, answer) = s.handle_whip(now, "r1", &offer).unwrap();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    accept(&mut publ, pending, &answer);
    let (mut view, offer, pending) = client(now, 50001, Direction::RecvOnly);
    let (vid, answer) = s.handle_whep(now, "r1", &offer).unwrap();
    accept(&mut view, pending, &answer);
    for _ in 0..2000 {
        now += Duration::from_millis(1);
        tick(now, &mut s, &mut [&mut publ, &mut view]);
        if publ.connected && view.connected {
            break;
        }
    }
    assert!(publ.connected && view.connected, "ICE and DTLS with the SFU");
    let opus = publ.rtc.writer(publ.mids[0].0).unwrap().payload_params().find(|p| p.spec().codec == Codec::Opus).unwrap().pt();
    let vp8 = publ.rtc.writer(publ.mids[1].0).unwrap().payload_params().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
    // Two seconds of 20 ms audio frames and 33 ms video frames (a VP8 key frame every 10).
    let start = now;
    for i in 0..2000u64 {
        now += Duration::from_millis(1);
        let since = now - start;
        if i % 20 == 0 {
            let (mid, _) = publ.mids[0];
            publ.rtc.writer(mid).unwrap().audio_level(-20, true).write(opus, now, since.into(), vec![0xf8; 60]).unwrap();
        }
        if i % 33 == 0 {
            let (mid, _) = publ.mids[1];
            let key = (i / 33) % 10 == 0;
            let mut frame = vec![if key { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a];
            frame.resize(900, 0x55);
            publ.rtc.writer(mid).unwrap().write(vp8, now, since.into(), frame).unwrap();
        }
        tick(now, &mut s, &mut [&mut publ, &mut view]);
    }
    let audio = view.got.iter().filter(|k| **k == MediaKind::Audio).count();
    let video = view.got.iter().filter(|k| **k == MediaKind::Video).count();
    assert!(audio > 80, "audio frames at the viewer: {audio}");
    assert!(video > 40, "video frames at the viewer: {video}");
    assert_eq!(s.active_speaker("r1"), Some(pid), "the publisher talks (RFC 6464 level -20 dBov)");
    let stats = s.take_stats();
    assert!(stats.frames_forwarded as usize >= audio + video);
    // The viewer leaves: nothing more reaches it; the room has only the publisher.
    s.handle_leave(now, vid).unwrap();
    let before = view.got.len();
    for _ in 0..200 {
        now += Duration::from_millis(1);
        tick(now, &mut s, &mut [&mut publ, &mut view]);
    }
    assert_eq!(view.got.len(), before);
    assert_eq!(s.participant_count(), 1);
    assert_eq!(s.handle_leave(now, vid), Err(SfuError::NoSuchParticipant));
    let events: Vec<RoomEvent> = std::iter::from_fn(|| s.poll_event()).map(|(_, e)| e).collect();
    assert!(events.contains(&RoomEvent::Left { id: vid, reason: LeaveReason::Left }), "{events:?}");
    // The publisher vanishes (no packets): timed out and cleaned up.
    for _ in 0..12 {
        now += Duration::from_secs(1);
        s.handle_timeout(now);
    }
    assert_eq!(s.participant_count(), 0, "the vanished publisher was cleaned up");
    let events: Vec<RoomEvent> = std::iter::from_fn(|| s.poll_event()).map(|(_, e)| e).collect();
    assert!(
        events.iter().any(|e| matches!(e, RoomEvent::Left { id, reason: LeaveReason::TimedOut | LeaveReason::Left } if *id == pid)),
        "{events:?}"
    );
    assert_eq!(s.rooms().count(), 0, "empty rooms are dropped");
}

/// ICE-TCP (RFC 6544): a viewer whose network blocks UDP has only an active TCP candidate;
/// the SFU's answer carries a passive TCP candidate too, and everything to and from that
/// viewer goes over TCP while the publisher stays on UDP.
#[test]
fn a_viewer_without_udp_connects_over_ice_tcp() {
    let mut now = Instant::now();
    let mut cfg =
        SfuConfig::new(SFU.parse().unwrap(), RoomConfig { max_participants: 10, lobby: true, vanish_after: Duration::from_secs(10) });
    cfg.tcp_addr = Some(SFU.parse().unwrap());
    let mut s = Sfu::new(cfg);
    let (mut publ, offer, pending) = client(now, 50040, Direction::SendOnly);
    let (_, answer) = s.handle_whip(now, "tcp", &offer).unwrap();
    assert!(answer.contains(" tcp ") && answer.contains("tcptype passive"), "{answer}");
    accept(&mut publ, pending, &answer);
    let addr: SocketAddr = "127.0.0.1:50041".parse().unwrap();
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::builder().tcp().host(addr).tcptype(str0m::net::TcpType::Active).build().unwrap());
    let mut api = rtc.sdp_api();
    let a = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let v = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let mut view =
        Client { rtc, addr, connected: false, got: vec![], rtp: vec![], mids: vec![(a, MediaKind::Audio), (v, MediaKind::Video)] };
    let (_, answer) = s.handle_whep(now, "tcp", &offer.to_sdp_string()).unwrap();
    accept(&mut view, pending, &answer);
    let mut protos = vec![];
    for i in 0..3000u64 {
        now += Duration::from_millis(1);
        if publ.connected && i % 33 == 0 {
            let vp8 = publ.rtc.writer(publ.mids[1].0).unwrap().payload_params().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
            let mut frame = vec![if i % 330 == 0 { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a];
            frame.resize(900, 0x55);
            publ.rtc.writer(publ.mids[1].0).unwrap().write(vp8, now, Duration::from_millis(i).into(), frame).unwrap();
        }
        tick_lossy(now, &mut s, &mut [&mut publ, &mut view], &mut |t| {
            if t.destination == addr {
                protos.push(t.proto);
            }
            false
        });
    }
    assert!(view.connected, "ICE over TCP and DTLS with the SFU");
    assert!(view.got.iter().filter(|k| **k == MediaKind::Video).count() > 20, "video over TCP: {}", view.got.len());
    assert!(!protos.is_empty() && protos.iter().all(|p| *p == Protocol::Tcp), "everything to the viewer over TCP");
}

#[test]
fn bad_offers_and_full_rooms_are_refused_without_changing_the_room() {
    let now = Instant::now();
    let mut s = sfu(1);
    assert!(matches!(s.handle_whip(now, "r", "not sdp"), Err(SfuError::Unsupported(_) | SfuError::BadOffer(_))));
    let no_media = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";
    assert!(matches!(s.handle_whip(now, "r", no_media), Err(SfuError::Unsupported(_))));
    let garbled = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=garbage\r\n";
    assert!(s.handle_whip(now, "r", garbled).is_err(), "no ICE credentials or fingerprint");
    assert_eq!(s.participant_count(), 0);
    let (_, offer, _) = client(now, 50010, Direction::SendOnly);
    s.handle_whip(now, "r", &offer).unwrap();
    let (_, offer, _) = client(now, 50011, Direction::RecvOnly);
    assert_eq!(s.handle_whep(now, "r", &offer).unwrap_err(), SfuError::Room(RoomError::Full(1)));
    assert_eq!(s.participant_count(), 1);
}

#[test]
fn lost_packets_towards_a_viewer_are_retransmitted_on_nack() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = sfu(10);
    let (mut publ, offer, pending) = client(now, 50020, Direction::SendOnly);
    let (_, answer) = s.handle_whip(now, "r2", &offer).unwrap();
    accept(&mut publ, pending, &answer);
    let (mut view, offer, pending) = client(now, 50021, Direction::RecvOnly);
    let (_, answer) = s.handle_whep(now, "r2", &offer).unwrap();
    accept(&mut view, pending, &answer);
    for _ in 0..2000 {
        now += Duration::from_millis(1);
        tick(now, &mut s, &mut [&mut publ, &mut view]);
        if publ.connected && view.connected {
            break;
        }
    }
    assert!(publ.connected && view.connected);
    let vp8 = publ.rtc.writer(publ.mids[1].0).unwrap().payload_params().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
    // 10 % of the SFU's datagrams to the viewer are lost (seeded); frames span 3 packets,
    // so without retransmission about a quarter of the frames would be incomplete.
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let viewer = view.addr;
    let dropped = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let d2 = dropped.clone();
    let mut lose = move |t: &sfu::core::Transmit| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let lost = t.destination == viewer && t.data.len() > 200 && rng % 100 < 10;
        d2.set(d2.get() + lost as u32);
        lost
    };
    let start = now;
    let mut sent = 0;
    for i in 0..3000u64 {
        now += Duration::from_millis(1);
        if i % 33 == 0 && i < 2700 {
            let (mid, _) = publ.mids[1];
            let mut frame = vec![if (i / 33) % 30 == 0 { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a];
            frame.resize(3200, (i % 251) as u8);
            publ.rtc.writer(mid).unwrap().write(vp8, now, (now - start).into(), frame).unwrap();
            sent += 1;
        }
        tick_lossy(now, &mut s, &mut [&mut publ, &mut view], &mut lose);
    }
    let got = view.got.iter().filter(|k| **k == MediaKind::Video).count();
    // Each lost packet would cost a frame: with 10 and more lost, 97 % complete frames need
    // the retransmissions.
    assert!(dropped.get() >= 10, "{} packets lost", dropped.get());
    assert!(got * 100 >= sent * 97, "{got} of {sent} frames complete at the viewer despite 10 % loss: NACK/RTX works");
}

#[test]
fn when_the_watched_publisher_leaves_the_viewer_gets_the_next_one_with_continuous_numbers() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = sfu(10);
    let (mut a, offer, pending) = client(now, 50030, Direction::SendOnly);
    let (aid, answer) = s.handle_whip(now, "r3", &offer).unwrap();
    accept(&mut a, pending, &answer);
    let (mut b, offer, pending) = client(now, 50031, Direction::SendOnly);
    let (_, answer) = s.handle_whip(now, "r3", &offer).unwrap();
    accept(&mut b, pending, &answer);
    let (mut view, offer, pending) = client_with(Rtc::builder().set_rtp_mode(true).build(now), 50032, Direction::RecvOnly);
    let (_, answer) = s.handle_whep(now, "r3", &offer).unwrap();
    accept(&mut view, pending, &answer);
    for _ in 0..2000 {
        now += Duration::from_millis(1);
        tick(now, &mut s, &mut [&mut a, &mut b, &mut view]);
        if a.connected && b.connected && view.connected {
            break;
        }
    }
    assert!(a.connected && b.connected && view.connected);
    let pt = |c: &mut Client, i: usize, codec: Codec| {
        c.rtc.writer(c.mids[i].0).unwrap().payload_params().find(|p| p.spec().codec == codec).unwrap().pt()
    };
    let (a_opus, a_vp8, b_opus, b_vp8) =
        (pt(&mut a, 0, Codec::Opus), pt(&mut a, 1, Codec::Vp8), pt(&mut b, 0, Codec::Opus), pt(&mut b, 1, Codec::Vp8));
    // Both send audio and video (B's numbering and timestamps start far from A's); A leaves
    // after a second.
    let start = now;
    let mut switched_at = 0;
    for i in 0..2000u64 {
        now += Duration::from_millis(1);
        if i == 1000 {
            s.handle_leave(now, aid).unwrap();
            switched_at = view.rtp.len();
        }
        let since = now - start;
        for (first, c, opus, vp8, skew) in [(true, &mut a, a_opus, a_vp8, 0u64), (false, &mut b, b_opus, b_vp8, 3_600_000)] {
            if i >= 1000 && first {
                continue;
            }
            let since = since + Duration::from_millis(skew);
            if i % 20 == 0 {
                c.rtc.writer(c.mids[0].0).unwrap().audio_level(-20, true).write(opus, now, since.into(), vec![0xf8; 60]).unwrap();
            }
            if i % 33 == 0 {
                let key = (i / 33) % 10 == 0;
                let mut frame = vec![if key { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a];
                frame.resize(2500, 0x55);
                c.rtc.writer(c.mids[1].0).unwrap().write(vp8, now, since.into(), frame).unwrap();
            }
        }
        tick(now, &mut s, &mut [&mut a, &mut b, &mut view]);
    }
    let vp8 = view.rtc.codec_config().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
    let video: Vec<(u16, u32)> = view.rtp.iter().filter(|p| p.0 == *vp8).map(|p| (p.1, p.2)).collect();
    let after = view.rtp[switched_at..].iter().filter(|p| p.0 == *vp8).count();
    assert!(after > 50, "the viewer gets B's video after A left: {after} packets");
    for w in video.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1), "one continuous sequence: {:?}", w);
        let dt = w[1].1.wrapping_sub(w[0].1);
        assert!(dt < 90_000, "timestamps advance by less than a second: {:?}", w);
    }
    let audio: Vec<u16> = view.rtp.iter().filter(|p| p.0 != *vp8).map(|p| p.1).collect();
    assert!(audio.len() > 80);
    for w in audio.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "audio continues too");
    }
}
