//! The room protocol on a virtual clock with str0m members: each member offers its own
//! tracks, the SFU offers subscription slots back (renegotiation only when a member needs
//! more slots), and with last-N = 1 a member's one video slot carries the most recent
//! speaker, following the speaking order from RFC 6464 audio levels without any new offer.
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
    /// Remote mid (slot) -> the participant it carries now.
    remote: HashMap<String, Option<u64>>,
    /// Offers received from the SFU.
    offers: usize,
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
    Member {
        id,
        rtc,
        addr,
        own,
        remote: HashMap::new(),
        video_from: HashMap::new(),
        last_offer: String::new(),
        by_mid: HashMap::new(),
        offers: 0,
    }
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
                        if let Some(Some(src)) = m.remote.get(&d.mid.to_string())
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
            if let Signal::Slots { map } = &sig {
                m.remote.extend(map.iter().cloned());
            }
            if let Signal::Offer { sdp, tracks } = sig {
                for (mid, src) in tracks {
                    m.remote.insert(mid, src);
                }
                m.offers += 1;
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

/// One millisecond of virtual time for everyone.
fn step(now: &mut Instant, s: &mut Sfu, ms: &mut [Member]) {
    *now += Duration::from_millis(1);
    for m in ms.iter_mut() {
        m.rtc.handle_input(Input::Timeout(*now)).unwrap();
    }
    s.handle_timeout(*now);
    pump(*now, s, ms);
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
        step(&mut now, &mut s, &mut ms);
        if ms.iter().all(|m| m.rtc.is_connected()) && ms[3].remote.len() == 4 {
            break;
        }
    }
    let ids: Vec<u64> = ms.iter().map(|m| m.id.0).collect();
    let carried = |m: &Member| {
        let mut v: Vec<u64> = m.remote.values().flatten().copied().collect();
        v.sort();
        v
    };
    // Small room: everyone is heard (3 audio slots); last-N 1: one video slot.
    assert_eq!(ms[3].remote.len(), 4, "v has 3 audio slots and 1 video slot: {:?}", ms[3].remote);
    assert_eq!(carried(&ms[3]), vec![ids[0], ids[0], ids[1], ids[2]], "v hears a, b, c and sees a (first in the order)");
    assert_eq!(ms[0].remote.len(), 4, "a: b's, c's and v's audio, and one video: {:?}", ms[0].remote);
    assert_eq!(carried(&ms[0]), vec![ids[1], ids[1], ids[2], ids[3]], "a sees b (the next in the order)");
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
    // The offers so far: tracks are known once their publishers connect.
    let offers = ms[3].offers;
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
    // Following the speaker took no SDP: v had all the slots it needs.
    assert_eq!(ms[3].offers, offers, "no offer to v while the speaker changed");
    // c leaves: its slots in the others' sessions are freed, without a new offer.
    let c = ms[2].id;
    s.handle_leave(now, c).unwrap();
    now += Duration::from_millis(1);
    pump(now, &mut s, &mut ms);
    assert!(!carried(&ms[3]).contains(&c.0), "no slot of v carries c: {:?}", ms[3].remote);
    assert_eq!(ms[3].remote.values().filter(|x| x.is_none()).count(), 1, "c's audio slot is free: {:?}", ms[3].remote);
    assert_eq!(ms[3].offers, offers, "no renegotiation when somebody leaves");
    // A newcomer takes the free audio slot: still no offer to v.
    ms.push(join(&mut s, now, 51004, "d", true));
    for _ in 0..2000 {
        step(&mut now, &mut s, &mut ms);
    }
    let d = ms[4].id.0;
    assert!(carried(&ms[3]).contains(&d), "v hears d in c's old slot: {:?}", ms[3].remote);
    assert_eq!(ms[3].offers, offers, "and was not offered anything new");
    assert_eq!(ms[4].remote.len(), 4, "d: 3 audio slots (a, b, v) and 1 video slot: {:?}", ms[4].remote);
}

#[test]
fn a_screen_share_is_an_extra_track_offered_to_the_others() {
    let mut now = Instant::now();
    let mut s = Sfu::new(SfuConfig::new(SFU.parse().unwrap(), RoomConfig::default()));
    let mut ms = vec![join(&mut s, now, 52000, "a", true), join(&mut s, now, 52001, "b", true)];
    for _ in 0..3000 {
        step(&mut now, &mut s, &mut ms);
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
    let from_a: Vec<&String> = ms[1].remote.iter().filter(|(_, src)| **src == Some(a)).map(|(mid, _)| mid).collect();
    assert_eq!(from_a.len(), 3, "b was offered a's screen as a third track: {:?}", ms[1].remote);
    let screen_frames = from_a.iter().map(|mid| ms[1].by_mid.get(*mid).copied().unwrap_or(0)).max().unwrap_or(0);
    assert!(screen_frames > 50, "b receives the screen frames: {:?}", ms[1].by_mid);
    // a stops sharing (its screen transceiver goes inactive): b's slot for it is freed,
    // without an offer.
    let offers = ms[1].offers;
    let mut api = ms[0].rtc.sdp_api();
    api.set_direction(screen, Direction::Inactive);
    let (offer, pending) = api.apply().unwrap();
    let answer = s.handle_offer(now, ms[0].id, &offer.to_sdp_string()).unwrap();
    ms[0].rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    for _ in 0..200 {
        step(&mut now, &mut s, &mut ms);
    }
    let carrying_a = ms[1].remote.values().filter(|src| **src == Some(a)).count();
    assert_eq!(carrying_a, 2, "b's slots carry a's camera and microphone only: {:?}", ms[1].remote);
    assert_eq!(ms[1].remote.values().filter(|src| src.is_none()).count(), 1, "the screen's slot is free: {:?}", ms[1].remote);
    assert_eq!(ms[1].offers, offers, "no offer to b for that");
}

#[test]
fn in_a_large_room_a_member_gets_slots_for_its_last_n_and_the_speakers_only() {
    let mut now = Instant::now();
    let mut cfg = SfuConfig::new(SFU.parse().unwrap(), RoomConfig::default());
    cfg.last_n = 3;
    cfg.audio_n = 2;
    cfg.all_audio_up_to = 2;
    let mut s = Sfu::new(cfg);
    let mut ms: Vec<Member> = (0..9).map(|i| join(&mut s, now, 53000 + i as u16, &format!("m{i}"), true)).collect();
    for _ in 0..4000 {
        step(&mut now, &mut s, &mut ms);
    }
    assert!(ms.iter().all(|m| m.rtc.is_connected()));
    for m in &ms {
        let video =
            m.remote.keys().filter(|mid| m.rtc.media(Mid::from(mid.as_str())).is_some_and(|x| x.kind() == MediaKind::Video)).count();
        let audio: Vec<u64> = m
            .remote
            .iter()
            .filter(|(mid, _)| m.rtc.media(Mid::from(mid.as_str())).is_some_and(|x| x.kind() == MediaKind::Audio))
            .filter_map(|(_, p)| *p)
            .collect();
        // 8 others with 2 tracks each: 16 remote tracks, but 3 video slots, and audio slots
        // for the 2 heard (nobody spoke: the first two in the order) other than itself.
        assert_eq!(video, 3, "{}: last-N 3 -> 3 video slots: {:?}", m.id.0, m.remote);
        assert!(
            m.remote.len() - video <= 3,
            "{}: 2 voices heard -> at most 2 (+1 while the room was small) audio slots: {:?}",
            m.id.0,
            m.remote
        );
        let heard: Vec<u64> = [ms[0].id.0, ms[1].id.0].into_iter().filter(|x| *x != m.id.0).collect();
        assert_eq!(audio.len(), heard.len(), "{}: {:?}", m.id.0, m.remote);
        assert!(audio.iter().all(|a| heard.contains(a)), "{}: hears {audio:?}, not {heard:?}", m.id.0);
        assert!(m.remote.values().flatten().all(|p| *p != m.id.0), "nobody gets its own tracks");
    }
}

/// Videos each member gets now: video slots that carry a source.
fn videos_shown(m: &Member) -> usize {
    m.remote
        .iter()
        .filter(|(mid, src)| src.is_some() && m.rtc.media(Mid::from(mid.as_str())).is_some_and(|x| x.kind() == MediaKind::Video))
        .count()
}

#[test]
fn an_overloaded_sfu_sends_fewer_videos_and_gives_them_back_when_the_load_falls() {
    let mut now = Instant::now();
    let mut cfg = SfuConfig::new(SFU.parse().unwrap(), RoomConfig::default());
    cfg.last_n = 8;
    let mut s = Sfu::new(cfg);
    let mut ms: Vec<Member> = (0..9).map(|i| join(&mut s, now, 53100 + i as u16, &format!("m{i}"), true)).collect();
    for _ in 0..4000 {
        step(&mut now, &mut s, &mut ms);
    }
    assert!(ms.iter().all(|m| videos_shown(m) == 8), "everyone sees the 8 others");
    let settle = |now: &mut Instant, s: &mut Sfu, ms: &mut [Member]| {
        for _ in 0..50 {
            step(now, s, ms);
        }
    };
    // A busy second below the threshold changes nothing.
    assert_eq!(s.handle_load(0.85), None);
    // Saturated: a quarter fewer per second, not below 4.
    assert_eq!(s.handle_load(0.97), Some(6));
    settle(&mut now, &mut s, &mut ms);
    assert!(ms.iter().all(|m| videos_shown(m) == 6), "{:?}", ms.iter().map(videos_shown).collect::<Vec<_>>());
    assert_eq!(s.handle_load(0.97), Some(4));
    assert_eq!(s.handle_load(0.99), Some(4));
    settle(&mut now, &mut s, &mut ms);
    assert!(ms.iter().all(|m| videos_shown(m) == 4));
    // Between the thresholds: held; below the recovery threshold: back, then all of last-N.
    assert_eq!(s.handle_load(0.8), Some(4));
    assert_eq!(s.handle_load(0.5), Some(6));
    assert_eq!(s.handle_load(0.5), None);
    settle(&mut now, &mut s, &mut ms);
    assert!(ms.iter().all(|m| videos_shown(m) == 8));
}
