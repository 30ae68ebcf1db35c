//! WebRTC through the SFU with real browsers: headless Chromium (fake camera and
//! microphone) publishes with WHIP from one page and watches with WHEP from another, both
//! loaded from a different origin than the edge (so CORS matters). The viewer's
//! `getStats()` must show inbound audio and video bytes growing and frames decoded. Also
//! aiortc, loadgen and SIP phones in rooms, and a str0m publisher over ICE-TCP.
#![allow(clippy::disallowed_methods)]

use e2e_tests::*;
use std::io::{Read, Write};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

/// The media tests of this file run one at a time: several Chromium instances and
/// WebRTC load on 2 cores at once starve each other into freezes no user would see.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn latest(reports: &Reports, role: &str) -> Option<serde_json::Value> {
    reports.lock().unwrap().iter().rev().find(|r| r["role"] == role).cloned()
}

#[test]
fn chromium_publishes_with_whip_and_another_chromium_watches_with_whep() {
    let _one = exclusive();
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap();
    let (port, reports) = page_server();
    let sfu = format!("http://{admin}");
    let _publisher = Browser::open(&format!("http://127.0.0.1:{port}/whip-publish.html?sfu={sfu}&room=demo"));
    assert!(
        wait_until(Duration::from_secs(20), || latest(&reports, "pub")
            .is_some_and(|r| r["state"] == "connected" || r["error"].is_string())),
        "publisher never connected: {:?}\n{}",
        latest(&reports, "pub"),
        edge.log()
    );
    let p = latest(&reports, "pub").unwrap();
    assert!(p["error"].is_null(), "{p}");
    assert!(p["location"].as_str().is_some_and(|l| l.starts_with("/whip/demo/")), "Location readable cross-origin: {p}");
    let _viewer = Browser::open(&format!("http://127.0.0.1:{port}/whep-view.html?sfu={sfu}&room=demo"));
    let grown = |r: &serde_json::Value, kind: &str, min: u64| r["inbound"][kind]["bytes"].as_u64().unwrap_or(0) > min;
    assert!(
        wait_until(Duration::from_secs(25), || latest(&reports, "view")
            .is_some_and(|r| grown(&r, "video", 20_000) && grown(&r, "audio", 2_000))),
        "viewer did not receive media: {:?}\n{}",
        latest(&reports, "view"),
        edge.log()
    );
    let first = latest(&reports, "view").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let later = latest(&reports, "view").unwrap();
    for kind in ["audio", "video"] {
        let (a, b) = (first["inbound"][kind]["bytes"].as_u64().unwrap(), later["inbound"][kind]["bytes"].as_u64().unwrap());
        assert!(b > a, "{kind} bytes keep growing: {a} -> {b}");
    }
    assert!(later["inbound"]["video"]["frames"].as_u64().unwrap_or(0) > 10, "frames decoded: {later}");
    let m = http_get(admin, "/metrics");
    assert!(metric(&m, "edge_sfu_frames_forwarded_total") > 100.0, "forwarded frames are counted");
    // The admin API lists the room; removing the viewer ends its media.
    let tok = std::fs::read_to_string(edge.dir.path().join("data").join("admin.token")).unwrap();
    let call = |method: &str, path: &str| -> (u16, String) {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", tok.trim()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
    };
    let (code, body) = call("GET", "/api/v1/rooms/demo");
    assert_eq!(code, 200, "{body}");
    let room: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ps = room["participants"].as_array().unwrap();
    assert_eq!(ps.len(), 2, "{room}");
    assert_eq!(ps[0]["role"], "moderator", "the first one in moderates: {room}");
    let viewer_id = later["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(call("DELETE", &format!("/api/v1/rooms/demo/participants/{viewer_id}")).0, 204);
    assert_eq!(call("DELETE", &format!("/api/v1/rooms/demo/participants/{viewer_id}")).0, 404);
    let (_, body) = call("GET", "/api/v1/rooms/demo");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["participants"].as_array().unwrap().len(), 1);
    std::thread::sleep(Duration::from_secs(2));
    let a = latest(&reports, "view").unwrap()["inbound"]["video"]["bytes"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let b = latest(&reports, "view").unwrap()["inbound"]["video"]["bytes"].as_u64().unwrap();
    assert_eq!(a, b, "no media after removal");
    assert_eq!(call("GET", "/api/v1/rooms/none").0, 404);
}

/// Runs `tests/whip_aiortc.py MODE URL SECONDS`; its stdout lines go to the returned file.
fn aiortc(mode: &str, url: &str, secs: u32, dir: &std::path::Path) -> (Child, std::path::PathBuf) {
    let out = dir.join(format!("{mode}.out"));
    let child = Command::new("python3")
        .arg(root().join("tests/whip_aiortc.py"))
        .args([mode, url, &secs.to_string()])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{mode}.err"))).unwrap())
        .spawn()
        .expect("python3 with aiortc (scripts/setup.sh installs it)");
    (child, out)
}

/// The last JSON line `aiortc` printed, once the process has ended (killed after `limit`).
fn aiortc_report(mut child: Child, out: &std::path::Path, limit: Duration) -> serde_json::Value {
    let ended = wait_until(limit, || child.try_wait().ok().flatten().is_some());
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let err = std::fs::read_to_string(out.with_extension("err")).unwrap_or_default();
    assert!(ended, "aiortc did not finish: {text}\n{err}");
    let last = text.lines().last().unwrap_or("null");
    serde_json::from_str(last).unwrap_or_else(|_| panic!("no report: {text}\n{err}"))
}

/// WHIP/WHEP interop with a WebRTC stack that shares nothing with str0m or Chromium
/// (aiortc: aioice, DTLS on OpenSSL, libsrtp, libvpx and libopus through PyAV).
#[test]
fn aiortc_publishes_with_whip_and_another_aiortc_watches_with_whep() {
    let _one = exclusive();
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (publisher, pub_out) = aiortc("publish", &format!("http://{admin}/whip/interop"), 16, dir.path());
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&pub_out).is_ok_and(|t| t.contains("answered"))),
        "publisher got no answer: {}\n{}",
        std::fs::read_to_string(&pub_out).unwrap_or_default(),
        edge.log()
    );
    let (viewer, view_out) = aiortc("watch", &format!("http://{admin}/whep/interop"), 8, dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || metric(&http_get(admin, "/metrics"), "edge_sfu_participants") == 2.0),
        "publisher and viewer in the room"
    );
    let v = aiortc_report(viewer, &view_out, Duration::from_secs(30));
    assert_eq!(v["status"], 201, "{v}");
    assert!(v["location"].as_str().is_some_and(|l| l.starts_with("/whep/interop/")), "{v}");
    assert_eq!(v["connected"], true, "{v}");
    // 8 s of 30 fps video and 20 ms audio frames, decoded by libvpx and libopus.
    assert!(v["video_frames"].as_u64().unwrap_or(0) >= 60, "{v}");
    assert!(v["audio_frames"].as_u64().unwrap_or(0) >= 100, "{v}");
    assert_eq!(v["video_size"], serde_json::json!([640, 480]), "{v}");
    assert_eq!(v["deleted"], true, "DELETE of the Location ends the session: {v}");
    let p = aiortc_report(publisher, &pub_out, Duration::from_secs(30));
    assert_eq!(p["status"], 201, "{p}");
    assert_eq!(p["connected"], true, "{p}");
    assert_eq!(p["deleted"], true, "{p}");
    assert!(
        wait_until(Duration::from_secs(5), || metric(&http_get(admin, "/metrics"), "edge_sfu_participants") == 0.0),
        "both sessions left the room"
    );
}

#[test]
fn whip_refuses_what_it_cannot_take_with_a_reason() {
    use std::net::TcpStream;
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap();
    let post = |path: &str, ct: &str, body: &str| -> String {
        let mut s = TcpStream::connect(admin).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let r = post("/whip/demo", "application/sdp", "v=0\r\nnot really sdp\r\n");
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("offer"), "{r}");
    assert!(r.to_ascii_lowercase().contains("access-control-allow-origin: *"), "CORS on errors too: {r}");
    let r = post("/whip/demo", "application/json", "{}");
    assert!(r.starts_with("HTTP/1.1 415"), "{r}");
    let r = post("/whep/bad%20room", "application/sdp", "v=0\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let mut s = TcpStream::connect(admin).unwrap();
    write!(
        s,
        "OPTIONS /whip/demo HTTP/1.1\r\nHost: x\r\nOrigin: http://other\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 204") && out.to_ascii_lowercase().contains("access-control-expose-headers: location"), "{out}");
    let mut s = TcpStream::connect(admin).unwrap();
    write!(s, "DELETE /whip/demo/999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
}

fn by_name(reports: &Reports, name: &str) -> Option<serde_json::Value> {
    reports.lock().unwrap().iter().rev().find(|r| r["name"] == name).cloned()
}

/// Remote participants whose audio and video bytes at this page are above the minimums.
fn receiving(r: &serde_json::Value, audio: u64, video: u64) -> usize {
    r["inbound"]
        .as_object()
        .map_or(0, |m| m.values().filter(|v| v["audio"].as_u64().unwrap_or(0) > audio && v["video"].as_u64().unwrap_or(0) > video).count())
}

#[test]
fn three_chromium_pages_meet_one_leaves_and_the_moderator_removes_another() {
    let _one = exclusive();
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap();
    let (port, reports, controls) = page_server_with_control();
    let url = |name: &str| {
        format!(
            "http://{admin}/meet/team?name={name}&autojoin=1&report=http://127.0.0.1:{port}/report&control=http://127.0.0.1:{port}/control"
        )
    };
    let _ann = Browser::open(&url("Ann"));
    assert!(
        wait_until(Duration::from_secs(20), || by_name(&reports, "Ann").is_some_and(|r| r["id"].is_u64())),
        "Ann did not join: {:?}\n{}",
        by_name(&reports, "Ann"),
        edge.log()
    );
    let _bob = Browser::open(&url("Bob"));
    let cid = Browser::open(&url("Cid"));
    let all_see_two = || ["Ann", "Bob", "Cid"].iter().all(|n| by_name(&reports, n).is_some_and(|r| receiving(&r, 2_000, 20_000) >= 2));
    assert!(
        wait_until(Duration::from_secs(40), all_see_two),
        "every page receives the other two: {:?} {:?} {:?}\n{}",
        by_name(&reports, "Ann"),
        by_name(&reports, "Bob"),
        by_name(&reports, "Cid"),
        edge.log()
    );
    // Bytes keep growing.
    let before = by_name(&reports, "Bob").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = by_name(&reports, "Bob").unwrap();
    for (pid, v) in after["inbound"].as_object().unwrap() {
        for kind in ["audio", "video"] {
            let (a, b) = (before["inbound"][pid][kind].as_u64().unwrap_or(0), v[kind].as_u64().unwrap_or(0));
            assert!(b > a, "Bob's {kind} from {pid} grows: {a} -> {b}");
        }
    }
    let ann = by_name(&reports, "Ann").unwrap();
    assert_eq!(ann["moderator"], ann["id"], "the first to join moderates: {ann}");
    // Quality per participant and track in the admin API, and in /metrics.
    let tok = std::fs::read_to_string(edge.dir.path().join("data").join("admin.token")).unwrap();
    let room = {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        write!(s, "GET /api/v1/rooms/team HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", tok.trim())
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        serde_json::from_str::<serde_json::Value>(out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("null")).unwrap()
    };
    let tracks: Vec<&serde_json::Value> =
        room["participants"].as_array().unwrap().iter().flat_map(|p| p["tracks"].as_array().unwrap().iter()).collect();
    assert!(
        tracks.iter().any(|t| t["kind"] == "audio"
            && t["direction"] == "in"
            && t["bitrate_bps"].as_f64().unwrap_or(0.0) > 1000.0
            && t["mos"].as_f64().unwrap_or(0.0) > 3.5),
        "audio quality per participant: {room}"
    );
    assert!(tracks.iter().any(|t| t["kind"] == "video" && t["bitrate_bps"].as_f64().unwrap_or(0.0) > 10_000.0), "{room}");
    assert!(metric(&http_get(admin, "/metrics"), "edge_sfu_audio_mos_count") > 0.0);
    assert!(ann["speaker"].is_u64(), "the SFU names an active speaker from the audio levels: {ann}");
    // Cid closes the page: the others see Cid go.
    drop(cid);
    let without = |who: &str, gone: &str| {
        by_name(&reports, who).is_some_and(|r| r["roster"].as_array().is_some_and(|a| !a.iter().any(|n| n == gone)))
    };
    assert!(wait_until(Duration::from_secs(15), || without("Ann", "Cid") && without("Bob", "Cid")), "{:?}", by_name(&reports, "Ann"));
    // The moderator removes Bob: Bob's page is disconnected, Ann's roster drops Bob.
    controls.lock().unwrap().insert("Ann".into(), serde_json::json!({"remove": "Bob"}));
    assert!(
        wait_until(Duration::from_secs(15), || by_name(&reports, "Bob").is_some_and(|r| r["closed"] == "removed")),
        "{:?}",
        by_name(&reports, "Bob")
    );
    assert!(wait_until(Duration::from_secs(10), || without("Ann", "Bob")));
}

#[test]
fn a_sip_phone_dials_into_a_room_with_two_browsers_and_hears_the_mix() {
    let _one = exclusive();
    // `conference:*`: the number dialled names the room.
    let edge = Edge::start("[[route]]\nname = \"rooms\"\nprefix = \"team\"\nupstream = \"conference:*\"\n", &[]);
    let admin = edge.admin.unwrap();
    let (port, reports, _) = page_server_with_control();
    let url = |name: &str| format!("http://{admin}/meet/team7?name={name}&autojoin=1&report=http://127.0.0.1:{port}/report");
    let _ann = Browser::open(&url("Ann"));
    let _bob = Browser::open(&url("Bob"));
    assert!(
        wait_until(Duration::from_secs(40), || ["Ann", "Bob"]
            .iter()
            .all(|n| by_name(&reports, n).is_some_and(|r| receiving(&r, 2_000, 20_000) >= 1))),
        "the two pages receive each other: {:?} {:?}\n{}",
        by_name(&reports, "Ann"),
        by_name(&reports, "Bob"),
        edge.log()
    );
    // A phone (loadgen with Opus RTP: a 440 Hz tone) calls sip:team7@edge.test for 8 s.
    // A second phone offers only G.711 (PCMU): its mix is encoded in G.711.
    let dir = tempfile::tempdir().unwrap();
    let call = |from: &str, codec: &str| {
        let rj = dir.path().join(format!("{from}.json"));
        let target = format!("sip:{}", edge.udp);
        let (from, codec) = (format!("sip:{from}@edge.test"), codec.to_string());
        let rj2 = rj.clone();
        let h = std::thread::spawn(move || {
            run(
                &[
                    "call",
                    "--target",
                    &target,
                    "--to",
                    "sip:team7@edge.test",
                    "--from",
                    &from,
                    "--calls",
                    "1",
                    "--hold-ms",
                    "8000",
                    "--rtp",
                    "--codec",
                    &codec,
                    "--quiet",
                    "--report-json",
                    rj2.to_str().unwrap(),
                ],
                Duration::from_secs(40),
            )
        });
        (h, rj)
    };
    let (phone, rj) = call("deskphone", "opus");
    let (pcmu_phone, rj_pcmu) = call("analog", "pcmu");
    // While the call lasts: the room lists the phone, and both pages receive its audio.
    let phone_id = || {
        by_name(&reports, "Ann")
            .and_then(|r| r["members"].as_array().and_then(|a| a.iter().find(|m| m["name"] == "deskphone").and_then(|m| m["id"].as_u64())))
    };
    let hears_phone = |who: &str| {
        let Some(id) = phone_id() else { return false };
        by_name(&reports, who).is_some_and(|r| r["inbound"][id.to_string()]["audio"].as_u64().unwrap_or(0) > 2_000)
    };
    assert!(
        wait_until(Duration::from_secs(20), || hears_phone("Ann") && hears_phone("Bob")),
        "the pages receive the phone's audio: {:?}\n{}",
        by_name(&reports, "Ann"),
        edge.log()
    );
    let out = phone.join().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), edge.log());
    let r = json(&rj);
    let s = &r["media"]["per_stream"][0];
    assert_eq!(r["calls_succeeded"], 1, "{r}\n{}", edge.log());
    // 8 s of 20 ms frames: the mix of the two browsers' audio (Chromium's fake
    // microphone beeps) comes back, and is not all silence.
    assert!(s["packets_received"].as_u64().unwrap_or(0) > 250, "{s}\n{}", edge.log());
    assert!(s["voiced_frames"].as_u64().unwrap_or(0) > 10, "the phone hears the browsers: {s}");
    let out = pcmu_phone.join().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), edge.log());
    let r = json(&rj_pcmu);
    let s = &r["media"]["per_stream"][0];
    assert_eq!(s["codec"], "PCMU", "{s}");
    assert!(s["packets_received"].as_u64().unwrap_or(0) > 250, "{s}");
    assert!(s["voiced_frames"].as_u64().unwrap_or(0) > 10, "the G.711 phone hears the room: {s}");
    // The phone hung up: gone from the room.
    assert!(
        wait_until(Duration::from_secs(10), || by_name(&reports, "Ann")
            .is_some_and(|r| r["members"].as_array().is_some_and(|a| !a.iter().any(|m| m["client"] == "phone")))),
        "{:?}",
        by_name(&reports, "Ann")
    );
}

#[test]
fn loadgen_sfu_participants_publish_simulcast_and_get_their_layer() {
    let _one = exclusive();
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let sfu_run = |name: &str, extra: &[&str]| {
        let rj = dir.path().join(format!("{name}.json"));
        let mut args = vec!["sfu", "--http", &admin, "--room", name, "--duration-s", "8", "--quiet", "--report-json", rj.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = run(&args, Duration::from_secs(60));
        assert!(out.status.success(), "{}\n{}", text(&out), edge.log());
        json(&rj)
    };
    // Five participants, three simulcast layers each: everyone receives the other four
    // videos and audio, without loss or freezes on loopback.
    let r = sfu_run("five", &["--participants", "5"]);
    assert_eq!(r["joined"], 5, "{r}");
    for p in r["per_participant"].as_array().unwrap() {
        assert_eq!(p["error"], serde_json::Value::Null, "{p}");
        assert_eq!(p["video_tracks"], 4, "{p}");
        assert!(p["audio_kbps_in"].as_f64().unwrap() > 20.0, "{p}");
        assert!(p["loss_pct"].as_f64().unwrap() < 2.0, "{p}");
        // Layer switches do not stall (the old layer flows until the new one's key frame);
        // what remains is the join phase on a loaded 2-core machine (measured 0-3).
        assert!(p["freezes"].as_u64().unwrap() <= 4, "{p}");
    }
    // Subscribers showing 180-pixel tiles get the 150 kbit/s layer, not the others.
    let r = sfu_run("small", &["--participants", "3", "--max-height", "180"]);
    for p in r["per_participant"].as_array().unwrap() {
        let per_video = p["video_kbps_in"].as_f64().unwrap() / p["video_tracks"].as_f64().unwrap().max(1.0);
        assert!(per_video > 50.0 && per_video < 300.0, "lowest layer only: {per_video:.0} kbit/s per video: {p}");
    }
    // A join storm over two rooms: everyone gets in.
    let r = sfu_run("storm", &["--rooms", "2", "--participants", "4", "--join-rate", "1000", "--layers-kbps", "300"]);
    assert_eq!(r["joined"], 8, "{r}");
    assert!(r["join_storm_s"].as_f64().unwrap() < 10.0, "{r}");
}

/// ICE-TCP through the real binary (RFC 6544, RFC 4571 framing): a str0m publisher whose
/// only candidate is an active TCP one publishes with WHIP; the SFU's answer has a passive
/// TCP candidate on the media port, ICE and DTLS complete over one TCP connection, and the
/// publisher's audio reaches the SFU.
#[test]
fn a_whip_publisher_without_udp_connects_over_ice_tcp() {
    use str0m::media::{Direction, MediaKind};
    use str0m::net::{Protocol, Receive, TcpType};
    use str0m::{Candidate, Event, Input, Output, Rtc};
    let edge = Edge::start("", &[]);
    let t0 = std::time::Instant::now();
    let me: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut rtc = Rtc::builder().build(t0);
    rtc.add_local_candidate(Candidate::builder().tcp().host(me).tcptype(TcpType::Active).build().unwrap());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let offer = offer.to_sdp_string();
    // WHIP (RFC 9725): POST the offer, 201 with the answer.
    let admin = edge.admin.unwrap();
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "POST /whip/tcp HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{offer}", offer.len())
        .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let answer = resp.split_once("\r\n\r\n").unwrap().1.to_string();
    let cand = answer.lines().find(|l| l.contains(" tcp ") && l.contains("tcptype passive")).unwrap_or_else(|| panic!("{answer}"));
    let f: Vec<&str> = cand.split_whitespace().collect();
    let sfu: std::net::SocketAddr = format!("{}:{}", f[4], f[5]).parse().unwrap();
    rtc.sdp_api().accept_answer(pending, str0m::change::SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    let mut conn = std::net::TcpStream::connect(sfu).expect("the SFU accepts ICE-TCP on its media port");
    conn.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let (mut connected, mut sent, mut pending_in) = (false, 0, Vec::<u8>::new());
    let deadline = t0 + Duration::from_secs(15);
    while std::time::Instant::now() < deadline && sent < 100 {
        let now = std::time::Instant::now();
        if connected {
            let w = rtc.writer(mid).unwrap();
            let pt = w.payload_params().next().unwrap().pt();
            let _ = w.write(pt, now, t0.elapsed().into(), vec![0xf8; 60]);
            sent += 1;
        }
        rtc.handle_input(Input::Timeout(now)).unwrap();
        loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(t) => {
                    assert_eq!(t.proto, Protocol::Tcp, "only the TCP candidate is used");
                    let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&t.contents);
                    conn.write_all(&framed).unwrap();
                }
                Output::Event(Event::Connected) => connected = true,
                Output::Event(_) => {}
            }
        }
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(0) => panic!("the SFU closed the ICE-TCP connection"),
            Ok(n) => pending_in.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        // RFC 4571 frames: a 16-bit length, then the packet.
        while pending_in.len() >= 2 {
            let n = u16::from_be_bytes([pending_in[0], pending_in[1]]) as usize;
            if pending_in.len() < 2 + n {
                break;
            }
            let frame: Vec<u8> = pending_in.drain(..2 + n).skip(2).collect();
            let input = Input::Receive(
                std::time::Instant::now(),
                Receive { proto: Protocol::Tcp, source: sfu, destination: me, contents: frame.as_slice().try_into().unwrap() },
            );
            rtc.handle_input(input).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(connected, "ICE over TCP and DTLS with the SFU in the binary");
    assert!(
        wait_until(Duration::from_secs(5), || metric(&edge.metrics(), "edge_sfu_frames_received_total") >= 50.0),
        "the publisher's audio reached the SFU over TCP: {}",
        edge.metrics().lines().filter(|l| l.starts_with("edge_sfu")).collect::<Vec<_>>().join("\n")
    );
}
