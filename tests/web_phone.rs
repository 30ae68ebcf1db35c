//! WebRTC <-> SIP calls with a real browser (issue #8): headless Chromium (fake microphone)
//! loads the edge's web phone page (`/phone`, SIP.js from npm), registers over WSS with
//! digest, and calls a `loadgen answer` that takes only PCMU (with an RTP echo that counts
//! what reaches the SIP side); then a SIP phone (loadgen with RTP) calls the browser,
//! which answers by itself. The edge terminates ICE and DTLS-SRTP and bridges to RTP.
#![allow(clippy::disallowed_methods)]

use e2e_tests::*;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One browser test at a time (two Chromium calls on 2 cores starve each other).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn latest(r: &Reports) -> serde_json::Value {
    r.lock().unwrap().last().cloned().unwrap_or(serde_json::Value::Null)
}

const USERS: &str = "[[user]]\nname = \"alice\"\npassword = \"wonderland\"\n";

fn phone_url(edge: &Edge, report: u16, extra: &str) -> String {
    format!(
        "http://{}/phone?server=wss://{}&aor=sip:alice@edge.test&password=wonderland&name=alice&register=1&report=http://127.0.0.1:{report}/report{extra}",
        edge.admin.unwrap(),
        edge.wss
    )
}

/// A browser calls a PCMU-only SIP endpoint; `codecs` limits what the browser offers
/// (`opus`: the edge transcodes); `telephone_event`: whether the phone takes RFC 4733
/// events (else the browser's digits must reach it as in-band tones); `dtmf_via`: how the
/// page sends its digits (`rtp`: RFC 4733 from RTCDTMFSender, `info`: SIP INFO).
fn browser_calls_a_pcmu_phone(codecs: Option<&str>, telephone_event: bool, dtmf_via: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pbx = free_port();
    let cfg = format!(
        "{USERS}[[upstream]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:{pbx}\"\n[[route]]\nname = \"pbx\"\nprefix = \"9\"\nupstream = \"pbx\"\n"
    );
    let edge = Edge::start(&cfg, &[]);
    let dir = tempfile::tempdir().unwrap();
    let rj = dir.path().join("answer.json");
    let listen = format!("127.0.0.1:{pbx}");
    let mut answer = Command::new(loadgen_bin())
        .args(["answer", "--listen", &listen, "--codec", "pcmu", "--rtp-echo", "--calls", "1", "--duration-s", "60", "--quiet"])
        .args(if telephone_event { &[][..] } else { &["--no-telephone-event"][..] })
        .arg("--report-json")
        .arg(&rj)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("loadgen answer");
    let (port, reports) = page_server();
    let codecs = codecs.map(|c| format!("&codecs={c}")).unwrap_or_default();
    let extra =
        format!("&target=sip:9000@edge.test&call=1&hangup_after=7&dtmf=1590&dtmf_via={dtmf_via}&hold_after=3&resume_after=4.5{codecs}");
    let _browser = Browser::open_with(&phone_url(&edge, port, &extra), &["--ignore-certificate-errors"]);
    // Registered over WSS (digest), in the call, and the echo of its own audio comes back.
    let ok = wait_until(Duration::from_secs(40), || {
        let r = latest(&reports);
        r["registered"] == true && r["inbound_audio_bytes"].as_u64().unwrap_or(0) > 4_000
    });
    let r = latest(&reports);
    assert!(ok, "browser: {r}\n{}", edge.log());
    assert_eq!(r["calls"], 1, "{r}");
    if codecs.is_empty() {
        assert_eq!(r["codec"], "audio/PCMU", "the browser speaks PCMU with the phone (no transcoding): {r}");
    } else {
        assert_eq!(r["codec"], "audio/opus", "the browser speaks Opus, the phone PCMU: {r}");
    }
    let first = r["inbound_audio_bytes"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || latest(&reports)["inbound_audio_bytes"].as_u64().unwrap_or(0) > first + 2_000),
        "inbound audio keeps growing: {}",
        latest(&reports)
    );
    // The browser holds (re-INVITE, sendonly) and resumes: both accepted through the
    // bridge, and audio flows again after the resume.
    assert!(
        wait_until(Duration::from_secs(10), || latest(&reports)["reinvites_ok"] == 2),
        "hold and resume: {}\n{}",
        latest(&reports),
        edge.log()
    );
    let resumed = latest(&reports)["inbound_audio_bytes"].as_u64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(3), || latest(&reports)["inbound_audio_bytes"].as_u64().unwrap_or(0) > resumed + 2_000),
        "audio after the resume: {}",
        latest(&reports)
    );
    // The browser hangs up after 6 s: the phone sees the BYE (its report is written).
    let exited = wait_until(Duration::from_secs(20), || answer.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = answer.kill();
    }
    assert!(exited, "the SIP side got the BYE: {}\n{}", latest(&reports), edge.log());
    let a = json(&rj);
    assert_eq!(a["uas_calls_ended_ok"], 1, "{a}");
    let echo = &a["echo"];
    assert!(echo["packets"].as_u64().unwrap_or(0) > 150, "RTP reached the SIP side: {echo}");
    assert!(echo["payload_types"]["0"].as_u64().unwrap_or(0) > 150, "as PCMU: {echo}");
    // The page's digits (RTCDTMFSender: RFC 4733 in the RTP stream) reach the phone as
    // telephone-events (the echo sends them back towards the browser), or, when the phone
    // took none, as their tone pairs in its PCMU.
    if dtmf_via == "info" {
        assert_eq!(latest(&reports)["dtmf_sent"], "1590", "every INFO answered 200: {}", latest(&reports));
    }
    if telephone_event {
        assert_eq!(echo["digits"], "1590", "{echo}");
    } else {
        assert_eq!((&echo["digits"], &echo["inband_digits"]), (&"".into(), &"1590".into()), "{echo}");
    }
    // The call is over for the edge too: record written, relay ports free.
    assert!(
        wait_until(Duration::from_secs(5), || edge.call_records().iter().any(|c| c["reason"] == "bye_from_caller")),
        "{:?}",
        edge.call_records()
    );
    let rec = edge.call_records().into_iter().find(|c| c["reason"] == "bye_from_caller").unwrap();
    let m = &rec["media"][0];
    assert!(m["from_a"]["packets"].as_u64().unwrap_or(0) > 100, "the browser leg's figures (str0m): {rec}");
    assert!(m["from_b"]["packets"].as_u64().unwrap_or(0) > 100, "the phone leg's: {rec}");
    let w = &m["webrtc"];
    assert_eq!(w["transcoding"], !codecs.is_empty(), "{w}");
    assert_eq!(w["sip_codec"], "PCMU", "{w}");
    if telephone_event {
        assert!(w["dtmf_to_sip"].as_u64().unwrap_or(0) >= 4, "the browser's events to the phone: {w}");
        assert!(w["dtmf_to_web"].as_u64().unwrap_or(0) >= 4, "the phone's (echoed) events to the browser leg: {w}");
    } else {
        assert!(w["dtmf_inband"].as_u64().unwrap_or(0) >= 4, "the browser's events played as tones: {w}");
        assert_eq!(w["dtmf_to_sip"], 0, "{w}");
    }
    let text = edge.metrics();
    let transcoded = format!("edge_webrtc_bridged_calls_total{{transcoding=\"{}\"}}", !codecs.is_empty());
    assert_eq!(metric(&text, &transcoded), 1.0, "{}", text.lines().filter(|l| l.contains("webrtc")).collect::<Vec<_>>().join("\n"));
    assert!(metric(&text, "edge_webrtc_dtmf_packets_total") >= 4.0);
    assert!(
        wait_until(Duration::from_secs(5), || metric(&edge.metrics(), "edge_media_ports_in_use") == 0.0),
        "relay ports freed: {}",
        edge.metrics().lines().filter(|l| l.starts_with("edge_media")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_browser_registers_over_wss_and_calls_a_pcmu_only_phone() {
    browser_calls_a_pcmu_phone(None, true, "rtp");
}

#[test]
fn a_browser_offering_only_opus_calls_a_pcmu_only_phone_through_the_transcoder() {
    browser_calls_a_pcmu_phone(Some("opus"), true, "rtp");
}

/// SIP.js's SimpleUser and JsSIP send DTMF as SIP INFO: the edge takes the INFO and the
/// phone gets RFC 4733 events in its RTP (PCMU passed through: the events' sequence numbers
/// are slotted into the browser's).
#[test]
fn a_browser_sending_dtmf_as_sip_info_reaches_the_phone_as_telephone_events() {
    browser_calls_a_pcmu_phone(None, true, "info");
}

#[test]
fn a_browser_calls_a_phone_without_telephone_event_and_its_digits_arrive_as_tones() {
    browser_calls_a_pcmu_phone(Some("opus"), false, "rtp");
}

#[test]
fn a_sip_phone_calls_the_registered_browser_which_answers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let edge = Edge::start(USERS, &[]);
    let (port, reports) = page_server();
    let _browser = Browser::open_with(&phone_url(&edge, port, "&autoanswer=1"), &["--ignore-certificate-errors"]);
    assert!(
        wait_until(Duration::from_secs(30), || latest(&reports)["registered"] == true),
        "browser: {}\n{}",
        latest(&reports),
        edge.log()
    );
    // A desk phone (loadgen, PCMU with RTP: a tone) calls alice for 6 s.
    let (out, r) = desk_phone_calls_alice(&edge, 6000);
    assert!(out.status.success(), "{}\n{r}\nbrowser: {}\n{}", text(&out), latest(&reports), edge.log());
    assert_eq!(r["calls_succeeded"], 1, "{r}");
    let s = &r["media"]["per_stream"][0];
    // The browser's fake microphone (a beep) reaches the phone.
    assert!(s["packets_received"].as_u64().unwrap_or(0) > 150, "{s}\n{}", edge.log());
    assert!(s["voiced_frames"].as_u64().unwrap_or(0) > 10, "the phone hears the browser: {s}");
    let b = latest(&reports);
    assert!(b["inbound_audio_bytes"].as_u64().unwrap_or(0) > 4_000, "the browser hears the phone: {b}");
    assert!(wait_until(Duration::from_secs(5), || latest(&reports)["ended"] == 1), "the phone's BYE ended it: {}", latest(&reports));
    assert!(
        wait_until(Duration::from_secs(5), || metric(&edge.metrics(), "edge_media_ports_in_use") == 0.0),
        "relay ports freed after the phone's BYE"
    );
    let rec = edge.call_records().into_iter().find(|c| c["reason"] == "bye_from_caller").expect("a call record");
    assert_eq!(rec["media"][0]["webrtc"]["web_leg"], "b", "{rec}");
}

/// Sends `invite` over UDP and returns the first final response.
fn final_response(edge: &Edge, invite: &str) -> String {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = sock.local_addr().unwrap();
    sock.send_to(invite.replace("ME", &me.to_string()).as_bytes(), edge.udp).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf).expect("a response");
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        if status(&m).is_some_and(|s| s >= 200) {
            return m;
        }
    }
}

#[test]
fn offers_the_edge_cannot_bridge_get_488_with_a_warning() {
    // Calls to 9... go to a trunk over UDP: a browser's offer must be bridged.
    let cfg = "[[upstream]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:9\"\n[[route]]\nname = \"pbx\"\nprefix = \"9\"\nupstream = \"pbx\"\n";
    let edge = Edge::start(cfg, &[]);
    let invite = |call: &str, sdp: &str| {
        let sdp = sdp.replace('\n', "\r\n");
        format!(
            "INVITE sip:9000@edge.test SIP/2.0\r\nVia: SIP/2.0/UDP ME;branch=z9hG4bK{call}\r\nMax-Forwards: 70\r\nFrom: <sip:web@client.test>;tag=1\r\nTo: <sip:9000@edge.test>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:web@ME>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    let webrtc = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\na=group:BUNDLE 0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\nc=IN IP4 0.0.0.0\na=mid:0\na=ice-ufrag:abcd\na=ice-pwd:abcdefghijklmnopqrstuvwx\na=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\na=setup:actpass\na=rtcp-mux\na=sendrecv\na=rtpmap:111 opus/48000/2\n";
    let no_fingerprint: String = webrtc.lines().filter(|l| !l.starts_with("a=fingerprint")).map(|l| format!("{l}\n")).collect();
    let r = final_response(&edge, &invite("nofp", &no_fingerprint));
    assert!(r.starts_with("SIP/2.0 488"), "{r}");
    assert!(header(&r, "Warning").is_some_and(|w| w.contains("DTLS fingerprint")), "{r}");
    let g729 = webrtc.replace("SAVPF 111", "SAVPF 18").replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:18 G729/8000");
    let r = final_response(&edge, &invite("g729", &g729));
    assert!(r.starts_with("SIP/2.0 488"), "{r}");
    assert!(header(&r, "Warning").is_some_and(|w| w.starts_with("305 ") && w.contains("codec")), "{r}");
    // Nothing was left behind.
    assert_eq!(metric(&edge.metrics(), "edge_media_ports_in_use"), 0.0);
}

/// A response to `req` copying Via, From, To (with `tag`), Call-ID and CSeq (RFC 3261 8.2.6).
fn response_to(req: &str, code: u16, reason: &str, tag: &str) -> String {
    let mut r = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = l.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => r.push_str(&format!("{l}\r\n")),
            "to" | "t" if !l.contains("tag=") => r.push_str(&format!("{l};tag={tag}\r\n")),
            "to" | "t" => r.push_str(&format!("{l}\r\n")),
            _ => {}
        }
    }
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

#[test]
fn a_call_to_a_user_with_a_browser_and_a_desk_phone_rings_both_and_the_browser_takes_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let edge = Edge::start(USERS, &[]);
    // The desk phone: registered as alice over UDP; it rings and never answers.
    let desk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(register_udp(&desk, edge.udp, "alice", "wonderland", 300), Some(200));
    let invites: Arc<Mutex<Vec<String>>> = Arc::default();
    let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (desk, invites, cancelled) = (desk.try_clone().unwrap(), invites.clone(), cancelled.clone());
        std::thread::spawn(move || {
            let _ = desk.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = vec![0u8; 65536];
            let mut invite = String::new();
            for _ in 0..300 {
                let Ok((n, from)) = desk.recv_from(&mut buf) else { continue };
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("INVITE ") {
                    invite = m.clone();
                    invites.lock().unwrap().push(m.clone());
                    let _ = desk.send_to(response_to(&m, 180, "Ringing", "desk").as_bytes(), from);
                } else if m.starts_with("CANCEL ") {
                    cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = desk.send_to(response_to(&m, 200, "OK", "desk").as_bytes(), from);
                    let _ = desk.send_to(response_to(&invite, 487, "Request Terminated", "desk").as_bytes(), from);
                }
            }
        });
    }
    let (port, reports) = page_server();
    let _browser = Browser::open_with(&phone_url(&edge, port, "&autoanswer=1"), &["--ignore-certificate-errors"]);
    assert!(wait_until(Duration::from_secs(30), || latest(&reports)["registered"] == true), "{}", latest(&reports));
    let (out, r) = desk_phone_calls_alice(&edge, 5000);
    assert!(out.status.success(), "{}\n{r}\n{}", text(&out), edge.log());
    // Both rang, each with its own kind of offer.
    let inv = invites.lock().unwrap().first().cloned().expect("the desk phone got the INVITE");
    assert!(inv.contains("m=audio") && inv.contains("RTP/AVP") && !inv.contains("a=fingerprint"), "plain SDP for the desk phone: {inv}");
    assert_eq!(latest(&reports)["calls"], 1, "the browser answered: {}", latest(&reports));
    assert!(cancelled.load(std::sync::atomic::Ordering::Relaxed), "the desk phone's branch was cancelled");
    let s = &r["media"]["per_stream"][0];
    assert!(s["voiced_frames"].as_u64().unwrap_or(0) > 10, "the caller hears the browser through the bridge: {s}");
    let rec = edge.call_records().into_iter().next().expect("a call record");
    assert_eq!(rec["media"].as_array().map(|a| a.len()), Some(1), "only the bridged path's session is left: {rec}");
    assert_eq!(rec["media"][0]["webrtc"]["web_leg"], "b", "{rec}");
}

/// A desk phone (loadgen, PCMU with RTP: a tone) calls alice over UDP for `hold_ms`: its exit
/// and its JSON report.
fn desk_phone_calls_alice(edge: &Edge, hold_ms: u32) -> (std::process::Output, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let rj = dir.path().join("call.json");
    let (target, hold) = (format!("sip:{}", edge.udp), hold_ms.to_string());
    let args = ["call", "--target", &target, "--to", "sip:alice@edge.test", "--from", "sip:desk@pbx.test", "--calls", "1"];
    let media = ["--hold-ms", &hold, "--rtp", "--codec", "pcmu", "--quiet", "--report-json", rj.to_str().unwrap()];
    let out = run(&[&args[..], &media[..]].concat(), Duration::from_secs(40));
    let r = json(&rj);
    (out, r)
}
