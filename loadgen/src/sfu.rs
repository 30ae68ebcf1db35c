//! `loadgen sfu`: meeting participants against an SFU's room protocol (the edge's
//! `/room/{room}/ws`, docs/SFU.md). Each participant is a str0m peer on its own UDP socket:
//! it joins, offers Opus audio (with RFC 6464 levels; a few participants take turns
//! speaking) and synthetic simulcast VP8 video (three layers at realistic sizes and key
//! frame interval), answers the SFU's offers for remote tracks, and behaves like a browser
//! on RTCP (str0m: NACK on loss, TWCC feedback, receiver reports; a PLI when a remote video
//! starts without a key frame; a key frame when the SFU asks). It pauses the layers the SFU
//! says nobody watches. Reported per subscriber: join time, received bitrate, loss, freezes.
#![allow(clippy::disallowed_methods)] // a load generator runs on the real clock

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec as RtcCodec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// `loadgen sfu` options.
#[derive(Args, Debug, Clone)]
pub struct SfuArgs {
    /// The edge's HTTP listener (host:port) serving the room WebSocket.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Room name (with --rooms > 1: NAME-1, NAME-2, ...).
    #[arg(long, default_value = "load")]
    pub room: String,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Participants per room.
    #[arg(long, default_value_t = 10)]
    pub participants: usize,
    /// How long each participant stays once joined.
    #[arg(long, default_value_t = 30.0)]
    pub duration_s: f64,
    /// Joins per second (a high rate is a join storm).
    #[arg(long, default_value_t = 50.0)]
    pub join_rate: f64,
    /// Video layers in kbit/s, lowest first (three: simulcast q/h/f; one: no simulcast;
    /// empty: audio only).
    #[arg(long, default_value = "150,500,1500")]
    pub layers_kbps: String,
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Seconds between key frames (plus any the SFU asks for).
    #[arg(long, default_value_t = 2.0)]
    pub keyframe_s: f64,
    /// The first N participants take turns speaking (4 s each); the others are silent.
    #[arg(long, default_value_t = 3)]
    pub speakers: usize,
    /// Tell the SFU the largest video height shown (simulcast layer cap).
    #[arg(long)]
    pub max_height: Option<u16>,
    /// Bearer token of the room (`?token=`).
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
}

/// What one participant measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ParticipantReport {
    pub name: String,
    pub room: String,
    /// WebSocket connect to ICE/DTLS connected, in ms (`None`: never connected).
    pub join_ms: Option<f64>,
    pub error: Option<String>,
    /// Video slots (remote video tracks) that delivered frames.
    pub video_tracks: usize,
    /// Times one of its video slots was given another participant (speaking order).
    pub video_switches: u64,
    /// Longest time from such a change to the new participant's first frame, in ms.
    pub switch_ms_max: Option<f64>,
    pub video_kbps_in: f64,
    pub audio_kbps_in: f64,
    pub packets_in: u64,
    /// Mean loss over its remote tracks (receiver-side RTCP figures), percent.
    pub loss_pct: f64,
    /// Gaps of more than 500 ms between frames of a remote video that then resumed (a
    /// slot's change of participant starts over: its wait is in `switch_ms_max`).
    pub freezes: u64,
    pub frames_in: u64,
    pub packets_out: u64,
    pub keyframes_asked: u64,
}

/// The run's summary (`--report-json`).
#[derive(Debug, Clone, Serialize)]
pub struct SfuReport {
    pub mode: &'static str,
    pub participants: usize,
    pub joined: usize,
    pub join_ms_p50: f64,
    pub join_ms_p90: f64,
    pub join_ms_max: f64,
    /// Time from the first join attempt until every participant was connected.
    pub join_storm_s: f64,
    pub duration_s: f64,
    /// Media packets received per second by all participants together (what the SFU
    /// forwarded and delivered).
    pub packets_in_per_s: f64,
    pub packets_out_per_s: f64,
    pub loss_pct_mean: f64,
    pub loss_pct_max: f64,
    pub freezes_total: u64,
    pub video_switches_total: u64,
    /// Over participants: the longest wait for a new participant's video in a slot, ms.
    pub switch_ms_max: f64,
    pub video_kbps_in_mean: f64,
    pub per_participant: Vec<ParticipantReport>,
}

impl SfuReport {
    pub fn summary(&self) -> String {
        format!(
            "sfu: {}/{} joined (join ms p50 {:.0} p90 {:.0} max {:.0}; all in {:.1} s); {:.0} packets/s received, {:.0} sent; loss mean {:.2}% max {:.2}%; freezes {}; video switches {} (max {:.0} ms to the new video); video in {:.0} kbit/s per participant\n",
            self.joined,
            self.participants,
            self.join_ms_p50,
            self.join_ms_p90,
            self.join_ms_max,
            self.join_storm_s,
            self.packets_in_per_s,
            self.packets_out_per_s,
            self.loss_pct_mean,
            self.loss_pct_max,
            self.freezes_total,
            self.video_switches_total,
            self.switch_ms_max,
            self.video_kbps_in_mean
        )
    }
}

struct Shared {
    args: SfuArgs,
    layers: Vec<u32>,
    /// Opus frames: a 440 Hz tone (speaking) and near-silence.
    tone: Vec<u8>,
    quiet: Vec<u8>,
    start: Instant,
}

const HEIGHTS: [u16; 3] = [180, 360, 720];
const RIDS: [&str; 3] = ["q", "h", "f"];

/// A 440 Hz tone frame (the call media's source, past the encoder's start) and a silent one.
fn opus_frames() -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut src = crate::media::PayloadSource::new(crate::media::Codec::Opus).ok_or("opus encoder")?;
    let mut tone = vec![];
    for _ in 0..3 {
        tone = src.next().to_vec();
    }
    let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; 1500];
    let n = enc.encode(&[0i16; 960], &mut out).map_err(|e| e.to_string())?;
    Ok((tone, out[..n].to_vec()))
}

/// A synthetic VP8 frame (RFC 6386 9.1 frame tag; key frames carry the start code and
/// the size, so an SFU can read the resolution).
fn vp8_frame(size: usize, key: bool, height: u16) -> Vec<u8> {
    let mut f = vec![0u8; size.max(16)];
    f[0] = if key { 0x10 } else { 0x11 };
    if key {
        f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        let w = height / 9 * 16;
        f[6..8].copy_from_slice(&w.to_le_bytes());
        f[8..10].copy_from_slice(&height.to_le_bytes());
    }
    for (i, b) in f.iter_mut().enumerate().skip(10) {
        *b = (i as u8).wrapping_mul(31);
    }
    f
}

/// Runs the whole load: participants join at `join_rate`, stay `duration_s`, leave.
pub async fn run(args: SfuArgs) -> Result<SfuReport, String> {
    let layers: Vec<u32> = args
        .layers_kbps
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--layers-kbps: {e}"))?;
    if layers.len() > 3 {
        return Err("--layers-kbps: at most three layers".into());
    }
    if args.participants == 0 || args.rooms == 0 {
        return Err("--participants and --rooms must be at least 1".into());
    }
    let (tone, quiet) = opus_frames()?;
    let sh = Arc::new(Shared { args: args.clone(), layers, tone, quiet, start: Instant::now() });
    let total = args.rooms * args.participants;
    let mut handles = Vec::with_capacity(total);
    let gap = Duration::from_secs_f64(1.0 / args.join_rate.max(0.1));
    for i in 0..total {
        let room = if args.rooms > 1 { format!("{}-{}", args.room, i / args.participants + 1) } else { args.room.clone() };
        let sh = sh.clone();
        handles.push(tokio::spawn(async move {
            let name = format!("lg{i}");
            let mut rep = ParticipantReport { name: name.clone(), room: room.clone(), ..Default::default() };
            if let Err(e) = participant(i, &room, &name, &sh, &mut rep).await {
                rep.error = Some(e);
            }
            rep
        }));
        tokio::time::sleep(gap).await;
    }
    let mut reps = Vec::with_capacity(total);
    for h in handles {
        reps.push(h.await.map_err(|e| e.to_string())?);
    }
    let elapsed = sh.start.elapsed().as_secs_f64();
    let mut joins: Vec<f64> = reps.iter().filter_map(|r| r.join_ms).collect();
    joins.sort_by(f64::total_cmp);
    let pct = |p: f64| if joins.is_empty() { 0.0 } else { joins[((joins.len() - 1) as f64 * p).round() as usize] };
    let storm =
        reps.iter().enumerate().filter_map(|(i, r)| r.join_ms.map(|j| i as f64 * gap.as_secs_f64() + j / 1000.0)).fold(0.0, f64::max);
    let n = reps.len().max(1) as f64;
    let dur = args.duration_s.max(0.001);
    Ok(SfuReport {
        mode: "sfu",
        participants: total,
        joined: joins.len(),
        join_ms_p50: pct(0.5),
        join_ms_p90: pct(0.9),
        join_ms_max: joins.last().copied().unwrap_or(0.0),
        join_storm_s: storm,
        duration_s: elapsed,
        packets_in_per_s: reps.iter().map(|r| r.packets_in).sum::<u64>() as f64 / dur,
        packets_out_per_s: reps.iter().map(|r| r.packets_out).sum::<u64>() as f64 / dur,
        loss_pct_mean: reps.iter().map(|r| r.loss_pct).sum::<f64>() / n,
        loss_pct_max: reps.iter().map(|r| r.loss_pct).fold(0.0, f64::max),
        freezes_total: reps.iter().map(|r| r.freezes).sum(),
        video_switches_total: reps.iter().map(|r| r.video_switches).sum(),
        switch_ms_max: reps.iter().filter_map(|r| r.switch_ms_max).fold(0.0, f64::max),
        video_kbps_in_mean: reps.iter().map(|r| r.video_kbps_in).sum::<f64>() / n,
        per_participant: reps,
    })
}

#[derive(Default)]
struct Remote {
    kind: Option<MediaKind>,
    frames: u64,
    bytes: u64,
    last: Option<Instant>,
    freezes: u64,
    started: bool,
    loss: Option<f32>,
    packets: u64,
    /// The participant the slot carries (`slots` message), and when that changed.
    owner: Option<u64>,
    switched_at: Option<Instant>,
}

async fn participant(i: usize, room: &str, name: &str, sh: &Shared, rep: &mut ParticipantReport) -> Result<(), String> {
    let a = &sh.args;
    let t0 = Instant::now();
    let tok = a.token.as_ref().map(|t| format!("?token={t}")).unwrap_or_default();
    let url = format!("ws://{}/room/{room}/ws{tok}", a.http);
    let tcp = tokio::net::TcpStream::connect(&a.http).await.map_err(|e| format!("connect {}: {e}", a.http))?;
    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp).await.map_err(|e| format!("websocket {url}: {e}"))?;
    let (mut wtx, mut wrx) = ws.split();
    let send = |v: serde_json::Value| WsMessage::Text(v.to_string().into());
    wtx.send(send(serde_json::json!({"type": "join", "name": name, "client": "web"}))).await.map_err(|e| e.to_string())?;
    // Until "joined" (or a refusal).
    loop {
        let m = wrx.next().await.ok_or("the SFU closed the WebSocket before joining")?.map_err(|e| e.to_string())?;
        let WsMessage::Text(t) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
        match v["type"].as_str() {
            Some("joined") => break,
            Some("error") => return Err(format!("join refused: {}", v["reason"])),
            _ => {}
        }
    }
    if let Some(h) = a.max_height {
        wtx.send(send(serde_json::json!({"type": "video_size", "height": h}))).await.map_err(|e| e.to_string())?;
    }
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let mut rtc = Rtc::builder().set_stats_interval(Some(Duration::from_secs(1))).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
    let mut api = rtc.sdp_api();
    let stream = Some(format!("lg{i}"));
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, stream.clone(), None, None);
    let video = (!sh.layers.is_empty()).then(|| {
        let sim = (sh.layers.len() > 1).then(|| {
            let mut s = Simulcast::new();
            for r in &RIDS[..sh.layers.len()] {
                s.add_send_layer(SimulcastLayer::new(r));
            }
            s
        });
        api.add_media(MediaKind::Video, Direction::SendOnly, stream, None, sim)
    });
    let (offer, pending) = api.apply().ok_or("no offer")?;
    let mut pending = Some(pending);
    wtx.send(send(serde_json::json!({"type": "offer", "sdp": offer.to_sdp_string()}))).await.map_err(|e| e.to_string())?;

    let speaker = i % a.participants.max(1) < a.speakers;
    let mut remotes: HashMap<Mid, Remote> = HashMap::new();
    let mut active: Vec<bool> = vec![true; sh.layers.len()];
    let mut key_due = vec![true; sh.layers.len()];
    let mut connected_at: Option<Instant> = None;
    let mut end = Instant::now() + Duration::from_secs(3600);
    let frame_every = Duration::from_secs_f64(1.0 / a.fps.max(1) as f64);
    let mut next_audio = Instant::now();
    let mut next_video = Instant::now();
    let mut last_key = Instant::now();
    let (mut audio_ts, mut video_ts) = (0u64, 0u64);
    let mut buf = vec![0u8; 2048];
    // Failures end the session but keep what was measured until then.
    let outcome: Result<(), String> = async {
        loop {
            // Everything str0m has to say.
            let timeout = loop {
                match rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        rep.packets_out += 1;
                        let _ = sock.try_send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(e)) => match e {
                        Event::Connected => {
                            let now = Instant::now();
                            connected_at = Some(now);
                            end = now + Duration::from_secs_f64(a.duration_s);
                            rep.join_ms = Some((now - t0).as_secs_f64() * 1000.0);
                        }
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                            return Err("ICE disconnected".into());
                        }
                        Event::MediaAdded(m) if m.mid != audio && Some(m.mid) != video => {
                            remotes.entry(m.mid).or_default().kind = Some(m.kind);
                        }
                        Event::MediaData(d) => {
                            let r = remotes.entry(d.mid).or_default();
                            let now = Instant::now();
                            r.frames += 1;
                            r.bytes += d.data.len() as u64;
                            if r.kind == Some(MediaKind::Video) {
                                if let Some(at) = r.switched_at.take() {
                                    let ms = (now - at).as_secs_f64() * 1000.0;
                                    rep.switch_ms_max = Some(rep.switch_ms_max.map_or(ms, |m| m.max(ms)));
                                }
                                if !r.started {
                                    r.started = true;
                                    // A decoder cannot start without a key frame: ask (PLI).
                                    if !d.is_keyframe()
                                        && let Some(mut w) = rtc.writer(d.mid)
                                    {
                                        let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
                                        rep.keyframes_asked += 1;
                                    }
                                }
                                if r.last.is_some_and(|l| now - l > Duration::from_millis(500)) {
                                    r.freezes += 1;
                                }
                            }
                            r.last = Some(now);
                        }
                        Event::MediaIngressStats(st) => {
                            let r = remotes.entry(st.mid).or_default();
                            r.loss = st.loss.or(r.loss);
                            r.packets = st.packets;
                        }
                        Event::KeyframeRequest(k) => {
                            let l = k.rid.and_then(|rid| RIDS.iter().position(|r| Rid::from(*r) == rid)).unwrap_or(0);
                            let last = key_due.len().saturating_sub(1);
                            match k.rid {
                                Some(_) => {
                                    if let Some(x) = key_due.get_mut(l.min(last)) {
                                        *x = true;
                                    }
                                }
                                None => key_due.iter_mut().for_each(|k| *k = true),
                            }
                        }
                        _ => {}
                    },
                    Err(e) => return Err(format!("str0m: {e}")),
                }
            };
            let now = Instant::now();
            if now >= end {
                break;
            }
            let media_due = if connected_at.is_some() { next_audio.min(if video.is_some() { next_video } else { next_audio }) } else { end };
            let wake = timeout.min(media_due).min(end).max(now);
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, src)) = r else { continue };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source: src, destination: local, contents });
                    rtc.handle_input(input).map_err(|e| format!("str0m input: {e}"))?;
                }
                m = wrx.next() => {
                    let Some(Ok(WsMessage::Text(t))) = m else { return Err("the SFU closed the WebSocket".into()) };
                    let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                    match v["type"].as_str() {
                        Some("answer") => {
                            let ans = SdpAnswer::from_sdp_string(v["sdp"].as_str().unwrap_or("")).map_err(|e| e.to_string())?;
                            if let Some(p) = pending.take() {
                                rtc.sdp_api().accept_answer(p, ans).map_err(|e| e.to_string())?;
                            }
                        }
                        Some("slots") => {
                            // Slots given to other participants: a new video starts at its
                            // key frame (the wait is measured, not counted as a freeze).
                            let now = Instant::now();
                            for e in v["map"].as_array().into_iter().flatten() {
                                let (Some(mid), owner) = (e[0].as_str(), e[1].as_u64()) else { continue };
                                let r = remotes.entry(Mid::from(mid)).or_default();
                                if r.owner != owner {
                                    r.owner = owner;
                                    r.last = None;
                                    if r.kind == Some(MediaKind::Video) && owner.is_some() {
                                        r.switched_at = Some(now);
                                        rep.video_switches += 1;
                                    }
                                }
                            }
                        }
                        Some("offer") => {
                            for e in v["tracks"].as_array().into_iter().flatten() {
                                if let Some(mid) = e[0].as_str() {
                                    remotes.entry(Mid::from(mid)).or_default().owner = e[1].as_u64();
                                }
                            }
                            let off = SdpOffer::from_sdp_string(v["sdp"].as_str().unwrap_or("")).map_err(|e| e.to_string())?;
                            let ans = rtc.sdp_api().accept_offer(off).map_err(|e| e.to_string())?;
                            wtx.send(send(serde_json::json!({"type": "answer", "sdp": ans.to_sdp_string()}))).await.map_err(|e| e.to_string())?;
                        }
                        Some("layers") => {
                            let on: Vec<&str> = v["active"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
                            for (k, r) in RIDS[..active.len()].iter().enumerate() {
                                let was = active[k];
                                active[k] = on.contains(r);
                                if active[k] && !was {
                                    key_due[k] = true; // a resumed layer starts with a key frame
                                }
                            }
                        }
                        Some("closed") => return Err(format!("removed: {}", v["reason"])),
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            let now = Instant::now();
            rtc.handle_input(Input::Timeout(now)).map_err(|e| format!("str0m: {e}"))?;
            if connected_at.is_none() {
                continue;
            }
            // 20 ms of Opus, with its level: speakers take turns of 4 s.
            while next_audio <= now {
                next_audio += Duration::from_millis(20);
                let turn = (sh.start.elapsed().as_secs() / 4) as usize % a.speakers.max(1);
                let talking = speaker && turn == i % a.participants.max(1);
                let pt = rtc.writer(audio).and_then(|w| w.payload_params().find(|p| p.spec().codec == RtcCodec::Opus).map(|p| p.pt()));
                if let (Some(pt), Some(w)) = (pt, rtc.writer(audio)) {
                    let (data, level) = if talking { (&sh.tone, 20) } else { (&sh.quiet, 127) };
                    let _ = w.audio_level(-level, talking).write(
                        pt,
                        now,
                        MediaTime::new(audio_ts, str0m::media::Frequency::FORTY_EIGHT_KHZ),
                        data.clone(),
                    );
                }
                audio_ts += 960;
            }
            // One frame per layer at the frame rate; key frames every keyframe_s or when asked.
            if let Some(vmid) = video {
                while next_video <= now {
                    next_video += frame_every;
                    video_ts += 90_000 / a.fps.max(1) as u64;
                    if now.duration_since(last_key).as_secs_f64() >= a.keyframe_s {
                        last_key = now;
                        key_due.iter_mut().for_each(|k| *k = true);
                    }
                    for (k, kbps) in sh.layers.iter().enumerate() {
                        if !active[k] {
                            continue;
                        }
                        let base = (*kbps as usize * 1000 / 8) / a.fps.max(1) as usize;
                        let key = std::mem::take(&mut key_due[k]);
                        let data = vp8_frame(if key { base * 4 } else { base }, key, HEIGHTS[k + 3 - sh.layers.len()]);
                        let pt = rtc.writer(vmid).and_then(|w| w.payload_params().find(|p| p.spec().codec == RtcCodec::Vp8).map(|p| p.pt()));
                        let (Some(pt), Some(w)) = (pt, rtc.writer(vmid)) else { break };
                        let w = if sh.layers.len() > 1 { w.rid(Rid::from(RIDS[k])) } else { w };
                        let _ = w.write(pt, now, MediaTime::from_90khz(video_ts), data);
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    let _ = wtx.send(send(serde_json::json!({"type": "leave"}))).await;
    rtc.disconnect();
    let secs = connected_at.map_or(0.0, |c| c.elapsed().as_secs_f64()).max(0.001);
    let kbps = |k: MediaKind| remotes.values().filter(|r| r.kind == Some(k)).map(|r| r.bytes).sum::<u64>() as f64 * 8.0 / 1000.0 / secs;
    rep.video_kbps_in = kbps(MediaKind::Video);
    rep.audio_kbps_in = kbps(MediaKind::Audio);
    rep.video_tracks = remotes.values().filter(|r| r.kind == Some(MediaKind::Video) && r.frames > 0).count();
    rep.frames_in = remotes.values().map(|r| r.frames).sum();
    rep.packets_in = remotes.values().map(|r| r.packets).sum();
    rep.freezes = remotes.values().map(|r| r.freezes).sum();
    let losses: Vec<f64> = remotes.values().filter_map(|r| r.loss).map(|l| (l as f64 * 100.0).clamp(0.0, 100.0)).collect();
    rep.loss_pct = if losses.is_empty() { 0.0 } else { losses.iter().sum::<f64>() / losses.len() as f64 };
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_vp8_key_frames_carry_their_size() {
        let k = vp8_frame(2000, true, 360);
        assert_eq!(k.len(), 2000);
        assert_eq!(k[0] & 1, 0, "key frame: P bit clear");
        assert_eq!(&k[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([k[8], k[9]]) & 0x3fff, 360);
        assert_eq!(vp8_frame(500, false, 360)[0] & 1, 1);
    }

    #[test]
    fn opus_frames_are_made() {
        let (t, q) = opus_frames().unwrap();
        assert!(t.len() > q.len(), "a tone takes more bytes than silence");
    }
}
