//! The room protocol on a virtual clock with str0m members: each member offers its own
//! tracks, the SFU offers every remote track back (renegotiation), and with last-N = 1 a
//! member receives only the video of the most recent speaker, following the speaking order
//! from RFC 6464 audio levels.
#![allow(clippy::disallowed_methods)]

use sfu::core::{Sfu, SfuConfig, Signal};
use sfu::room::{ClientType, ParticipantId, RoomConfig, RoomEvent};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const SFU: &str = "127.0.0.1:40100";

struct Member {
    id: ParticipantId,
    rtc: Rtc,
    addr: SocketAddr,
    own: Vec<(Mid, MediaKind)>,
    /// Remote mid -> the participant it carries.
    remote: HashMap<String, u64>,
    /// Video frames received, by source participant.
    video_from: HashMap<u64, u32>,
    /// The SFU's latest offer.
    last_offer: String,
    /// Video frames received per remote mid.
    by_mid: HashMap<String, u32>,
}

fn join(s: &mut Sfu, now: Instant, port: u16, name: &str, video: bool) -> Member {
    let id = s.handle_join(now, "r", name, ClientType::Web).unwrap();
    let mut rtc = Rtc::builder().build(now);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mut own = vec![(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None), MediaKind::Audio)];
    if video {
        own.push((api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None), MediaKind::Video));
    }
    let (offer, pending) = api.apply().unwrap();
    let answer = s.handle_offer(now, id, &offer.to_sdp_string()).unwrap();
    rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    Member { id, rtc, addr, own, remote: HashMap::new(), video_from: HashMap::new(), last_offer: String::new(), by_mid: HashMap::new() }
}

/// Moves datagrams and signals until nothing moves.
fn pump(now: Instant, s: &mut Sfu, ms: &mut [Member]) {
    for _ in 0..30 {
        let mut moved = false;
        for m in ms.iter_mut() {
            while let Ok(o) = m.rtc.poll_output() {
                match o {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        s.handle_receive(now, t.source, t.destination, &t.contents);
                        moved = true;
                    }
                    Output::Event(Event::MediaData(d)) => {
                        if let Some(src) = m.remote.get(&d.mid.to_string())
                            && m.rtc.media(d.mid).is_some_and(|x| x.kind() == MediaKind::Video)
                        {
                            *m.video_from.entry(*src).or_default() += 1;
                            *m.by_mid.entry(d.mid.to_string()).or_default() += 1;
                        }
                    }
                    Output::Event(_) => {}
                }
            }
        }
        while let Some(t) = s.poll_transmit() {
            if let Some(m) = ms.iter_mut().find(|m| m.addr == t.destination) {
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: t.source,
                        destination: t.destination,
                        contents: t.data.as_slice().try_into().unwrap(),
                    },
                );
                m.rtc.handle_input(input).unwrap();
                moved = true;
            }
        }
        while let Some((id, sig)) = s.poll_signal() {
            let Some(m) = ms.iter_mut().find(|m| m.id == id) else { continue };
            if let Signal::Offer { sdp, tracks } = sig {
                for (mid, src) in tracks {
                    m.remote.insert(mid, src);
                }
                m.last_offer = sdp.clone();
                let answer = m.rtc.sdp_api().accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap()).unwrap();
                s.handle_answer(now, id, &answer.to_sdp_string()).unwrap();
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
}

#[test]
fn members_get_each_other_and_last_n_follows_the_speaker() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut cfg = SfuConfig::new(SFU.parse().unwrap(), RoomConfig::default());
    cfg.last_n = 1;
    let mut s = Sfu::new(cfg);
    let mut ms = vec![
        join(&mut s, now, 51000, "a", true),
        join(&mut s, now, 51001, "b", true),
        join(&mut s, now, 51002, "c", true),
        join(&mut s, now, 51003, "v", false),
    ];
    for _ in 0..3000 {
        now += Duration::from_millis(1);
        for m in ms.iter_mut() {
            m.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
        s.handle_timeout(now);
        pump(now, &mut s, &mut ms);
        if ms.iter().all(|m| m.rtc.is_connected()) && ms[3].remote.len() == 6 {
            break;
        }
    }
    assert_eq!(ms[3].remote.len(), 6, "v was offered the audio and video of a, b and c");
    assert_eq!(ms[0].remote.len(), 5, "a gets b's and c's tracks and v's audio");
    let pts: Vec<_> = ms
        .iter_mut()
        .map(|m| {
            let a = m.rtc.writer(m.own[0].0).unwrap().payload_params().find(|p| p.spec().codec == Codec::Opus).unwrap().pt();
            let v = m
                .own
                .get(1)
                .map(|(mid, _)| m.rtc.writer(*mid).unwrap().payload_params().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt());
            (a, v)
        })
        .collect();
    let start = now;
    // `loud[i]`: the RFC 6464 level member i sends (negative dBov; -127 is silence).
    let run = |s: &mut Sfu, ms: &mut Vec<Member>, now: &mut Instant, ms_total: u64, loud: [i8; 4]| {
        for i in 0..ms_total {
            *now += Duration::from_millis(1);
            let t = *now - start;
            for (k, m) in ms.iter_mut().enumerate() {
                if i % 20 == 0 {
                    let (mid, _) = m.own[0];
                    m.rtc.writer(mid).unwrap().audio_level(loud[k], loud[k] > -60).write(pts[k].0, *now, t.into(), vec![0xf8; 40]).unwrap();
                }
                if i % 33 == 0
                    && let (Some((mid, _)), Some(pt)) = (m.own.get(1).copied(), pts[k].1)
                {
                    let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
                    f.resize(600, 0x33);
                    m.rtc.writer(mid).unwrap().write(pt, *now, t.into(), f).unwrap();
                }
                m.rtc.handle_input(Input::Timeout(*now)).unwrap();
            }
            s.handle_timeout(*now);
            pump(*now, s, ms);
        }
    };
    // a talks: v sees a's video only.
    run(&mut s, &mut ms, &mut now, 3000, [-10, -127, -127, -127]);
    let (a, b) = (ms[0].id.0, ms[1].id.0);
    let first = ms[3].video_from.clone();
    assert!(first.get(&a).copied().unwrap_or(0) > 50, "v gets a's video: {first:?}");
    assert!(first.get(&b).copied().unwrap_or(0) < 5 && first.get(&ms[2].id.0).copied().unwrap_or(0) < 5, "and nobody else's: {first:?}");
    // b talks (a is silent now): after the hold time v gets b's video instead.
    run(&mut s, &mut ms, &mut now, 3000, [-127, -5, -127, -127]);
    let second = &ms[3].video_from;
    let from_b = second.get(&b).copied().unwrap_or(0) - first.get(&b).copied().unwrap_or(0);
    let from_a = second.get(&a).copied().unwrap_or(0) - first.get(&a).copied().unwrap_or(0);
    assert!(from_b > 50, "v follows the speaker to b: {second:?}");
    assert!(from_a < 30, "a's video stops soon after b starts: {from_a}");
    // With last-N 1, a sees the most recent speaker other than itself: b.
    assert!(ms[0].video_from.get(&b).copied().unwrap_or(0) > 50);
    let events: Vec<RoomEvent> = std::iter::from_fn(|| s.poll_event()).map(|(_, e)| e).collect();
    assert!(events.contains(&RoomEvent::ActiveSpeaker { id: ParticipantId(b) }), "{events:?}");
    // c leaves: the others get an offer that stops c's two m-lines (port 0), and answer it.
    let c = ms[2].id;
    s.handle_leave(now, c).unwrap();
    let offers_before = ms[3].last_offer.clone();
    now += Duration::from_millis(1);
    pump(now, &mut s, &mut ms);
    let stopped = ms[3].last_offer.lines().filter(|l| l.starts_with("m=") && l.split_whitespace().nth(1) == Some("0")).count();
    assert!(ms[3].last_offer != offers_before, "a new offer after c left");
    assert_eq!(stopped, 2, "c's audio and video stopped in v's session");
}

#[test]
fn a_screen_share_is_an_extra_track_offered_to_the_others() {
    let mut now = Instant::now();
    let mut s = Sfu::new(SfuConfig::new(SFU.parse().unwrap(), RoomConfig::default()));
    let mut ms = vec![join(&mut s, now, 52000, "a", true), join(&mut s, now, 52001, "b", true)];
    for _ in 0..3000 {
        now += Duration::from_millis(1);
        for m in ms.iter_mut() {
            m.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
        s.handle_timeout(now);
        pump(now, &mut s, &mut ms);
        if ms.iter().all(|m| m.rtc.is_connected()) && ms[1].remote.len() == 2 {
            break;
        }
    }
    assert_eq!(ms[1].remote.len(), 2, "b has a's camera and microphone");
    // a shares its screen: a second video track, in a new offer of a's.
    let mut api = ms[0].rtc.sdp_api();
    let screen = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = s.handle_offer(now, ms[0].id, &offer.to_sdp_string()).unwrap();
    ms[0].rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    let pt = ms[0].rtc.writer(screen).unwrap().payload_params().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
    let a = ms[0].id.0;
    let start = now;
    for i in 0..3000u64 {
        now += Duration::from_millis(1);
        if i % 33 == 0 && ms[0].rtc.is_connected() {
            let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
            f.resize(800, 0x44);
            let _ = ms[0].rtc.writer(screen).unwrap().write(pt, now, (now - start).into(), f);
        }
        for m in ms.iter_mut() {
            m.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
        s.handle_timeout(now);
        pump(now, &mut s, &mut ms);
    }
    let from_a: Vec<&String> = ms[1].remote.iter().filter(|(_, src)| **src == a).map(|(mid, _)| mid).collect();
    assert_eq!(from_a.len(), 3, "b was offered a's screen as a third track: {:?}", ms[1].remote);
    let screen_frames = from_a.iter().map(|mid| ms[1].by_mid.get(*mid).copied().unwrap_or(0)).max().unwrap_or(0);
    assert!(screen_frames > 50, "b receives the screen frames: {:?}", ms[1].by_mid);
}
