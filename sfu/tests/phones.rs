//! SIP phones in a room, on a virtual clock: every 20 ms each phone gets one frame of the
//! room's mix in its own codec, minus its own voice; the room limit and removals apply to
//! phones as to everyone.
#![allow(clippy::disallowed_methods)]

use sfu::core::{Sfu, SfuConfig, SfuError, Signal};
use sfu::mixer::{Decoder, Encoder, FRAME, PhoneCodec, level};
use sfu::room::{ParticipantId, RoomConfig, RoomError};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn sfu(max: usize) -> Sfu {
    let room = RoomConfig { max_participants: max, lobby: false, vanish_after: Duration::from_secs(30) };
    Sfu::new(SfuConfig::new("127.0.0.1:40200".parse().unwrap(), room))
}

fn tone() -> [i16; FRAME] {
    let mut p = [0i16; FRAME];
    for (i, s) in p.iter_mut().enumerate() {
        *s = ((2.0 * std::f64::consts::PI * 440.0 * i as f64 / 48_000.0).sin() * 8000.0) as i16;
    }
    p
}

/// Runs the clock for `frames` x 20 ms, phone `talker` sending a tone every 20 ms; returns
/// the frames each phone received and how many of them (after the first three) were audible.
fn run(
    s: &mut Sfu,
    t: &mut Instant,
    frames: u32,
    talker: ParticipantId,
    codec: PhoneCodec,
    codecs: &HashMap<ParticipantId, PhoneCodec>,
) -> HashMap<ParticipantId, (u32, u32)> {
    let mut enc = Encoder::new(codec).unwrap();
    let mut got: HashMap<ParticipantId, (u32, u32)> = HashMap::new();
    let mut decs: HashMap<ParticipantId, Decoder> = codecs.iter().map(|(id, c)| (*id, Decoder::new(*c).unwrap())).collect();
    let mut pcm = [0i16; FRAME];
    for i in 0..frames {
        *t += Duration::from_millis(20);
        s.handle_phone_audio(*t, talker, &enc.encode(&tone()));
        while let Some(at) = s.poll_timeout() {
            if at > *t {
                break;
            }
            s.handle_timeout(at.max(*t));
        }
        while let Some((id, data)) = s.poll_phone_audio() {
            let e = got.entry(id).or_default();
            e.0 += 1;
            // The first frames still carry the previous run's tail (queued frames, the
            // resampling filters' 1.5 ms delay): only later ones count as audible.
            if decs.get_mut(&id).unwrap().decode(&data, &mut pcm) && level(&pcm) < 50 && i >= 3 {
                e.1 += 1;
            }
        }
    }
    got
}

#[test]
fn phones_hear_each_other_but_not_themselves_each_in_its_codec() {
    let mut s = sfu(10);
    let mut t = Instant::now();
    let a = s.handle_phone_join(t, "r", "alice", PhoneCodec::Opus).unwrap();
    let b = s.handle_phone_join(t, "r", "bob", PhoneCodec::Pcmu).unwrap();
    let c = s.handle_phone_join(t, "r", "carol", PhoneCodec::Pcma).unwrap();
    let codecs: HashMap<_, _> = [(a, PhoneCodec::Opus), (b, PhoneCodec::Pcmu), (c, PhoneCodec::Pcma)].into();
    let got = run(&mut s, &mut t, 50, a, PhoneCodec::Opus, &codecs);
    // One frame per 20 ms for everyone (49 or 50 depending on where the tick falls).
    for id in [a, b, c] {
        assert!((49..=50).contains(&got[&id].0), "{id:?}: {:?}", got[&id]);
    }
    // Alice talks: Bob (G.711 u-law) and Carol (A-law) hear her, Alice hears silence.
    assert!(got[&b].1 >= 45, "{got:?}");
    assert!(got[&c].1 >= 45, "{got:?}");
    assert_eq!(got[&a].1, 0, "mix-minus: {got:?}");
    // Bob talks in G.711 now: Alice hears him through her Opus mix.
    let got = run(&mut s, &mut t, 50, b, PhoneCodec::Pcmu, &codecs);
    assert!(got[&a].1 >= 40, "{got:?}");
    assert_eq!(got[&b].1, 0, "{got:?}");
}

#[test]
fn a_full_room_refuses_a_phone_and_a_leaving_phone_stops_its_mix() {
    let mut s = sfu(2);
    let t = Instant::now();
    let a = s.handle_phone_join(t, "r", "a", PhoneCodec::Pcmu).unwrap();
    let _b = s.handle_phone_join(t, "r", "b", PhoneCodec::Pcmu).unwrap();
    assert!(matches!(s.handle_phone_join(t, "r", "c", PhoneCodec::Pcmu), Err(SfuError::Room(RoomError::Full(2)))));
    assert_eq!(s.participant_count(), 2);
    s.handle_phone_leave(t, a).unwrap();
    assert_eq!(s.participant_count(), 1);
    // Nothing more for the phone that left.
    s.handle_timeout(t + Duration::from_millis(40));
    assert!(std::iter::from_fn(|| s.poll_phone_audio()).all(|(id, _)| id != a));
    assert!(s.handle_phone_leave(t, a).is_err());
}

#[test]
fn a_silent_phone_is_timed_out_and_told_so() {
    let mut s = sfu(10);
    let t = Instant::now();
    let a = s.handle_phone_join(t, "r", "a", PhoneCodec::Pcmu).unwrap();
    // No RTP for longer than the vanish time: the room drops the phone.
    let mut now = t;
    while now < t + Duration::from_secs(40) {
        now += Duration::from_secs(1);
        s.handle_timeout(now);
    }
    let closed = std::iter::from_fn(|| s.poll_signal()).any(|(id, sig)| id == a && matches!(sig, Signal::Closed { .. }));
    assert!(closed, "the runtime learns the phone is gone (it sends BYE)");
    assert_eq!(s.participant_count(), 0);
}
