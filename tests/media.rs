//! Media anchoring end to end on loopback: the real `edge` binary relays RTP between
//! `loadgen call --rtp` and `loadgen answer` (and sipp's RTP echo), a tshark capture shows
//! the relay ports on the wire, call records carry the per-call quality, SDES-SRTP meets
//! plain RTP both ways, hold/resume by re-INVITE, ports are released after BYE and after
//! the inactivity timeout, and a foreign-source flood does not disturb a latched stream.

#![allow(clippy::disallowed_methods)]

use codec::srtp::{Profile, Srtp};
use e2e_tests::{Answer, Edge, Sipp, free_port, header, json, metric, require_sipp, run, scenario, status, text, wait_until};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RELAY_RANGE: (u16, u16) = (30000, 39999);

fn in_relay_range(p: u16) -> bool {
    (RELAY_RANGE.0..=RELAY_RANGE.1).contains(&p)
}

// ------------------------------------------------------------------ a minimal SIP UA

/// One endpoint: a SIP socket and an RTP socket on 127.0.0.1.
struct Ua {
    sip: UdpSocket,
    rtp: UdpSocket,
}

impl Ua {
    fn new(sip_port: u16) -> Ua {
        let sip = UdpSocket::bind(("127.0.0.1", sip_port)).expect("sip socket");
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp socket");
        Ua { sip, rtp }
    }
    fn sip_addr(&self) -> SocketAddr {
        self.sip.local_addr().unwrap()
    }
    fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }
    /// The next SIP message matching `pred` (others are skipped), within 5 s.
    fn recv(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let _ = self.sip.set_read_timeout(Some(Duration::from_millis(200)));
            if let Ok(n) = self.sip.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if pred(&m) {
                    return m;
                }
                seen.push(m.lines().next().unwrap_or("").to_string());
            }
        }
        panic!("{what}: not received within 5 s (saw {seen:?})");
    }
    fn send(&self, to: SocketAddr, msg: &str) {
        self.sip.send_to(msg.as_bytes(), to).expect("sip send");
    }
}

fn is_request(m: &str, method: &str) -> bool {
    m.starts_with(&format!("{method} "))
}

fn is_response(m: &str, code: u16, method: &str) -> bool {
    status(m) == Some(code) && header(m, "CSeq").is_some_and(|c| c.ends_with(method))
}

fn body(m: &str) -> &str {
    m.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// (connection address, port, proto, crypto lines, direction) of the first m= line.
struct MediaDesc {
    addr: IpAddr,
    port: u16,
    proto: String,
    crypto: Vec<String>,
    direction: String,
}

fn media_of(sdp: &str) -> MediaDesc {
    let mut addr = None;
    let mut port = 0;
    let mut proto = String::new();
    let mut crypto = Vec::new();
    let mut direction = "sendrecv".to_string();
    for l in sdp.lines() {
        if let Some(c) = l.strip_prefix("c=IN IP4 ") {
            addr = c.trim().parse().ok();
        } else if let Some(m) = l.strip_prefix("m=audio ") {
            let f: Vec<&str> = m.split_whitespace().collect();
            port = f[0].parse().unwrap();
            proto = f[1].to_string();
        } else if let Some(c) = l.strip_prefix("a=crypto:") {
            crypto.push(c.trim().to_string());
        } else if matches!(l.trim(), "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive") {
            direction = l.trim()[2..].to_string();
        }
    }
    MediaDesc { addr: addr.expect("c= line"), port, proto, crypto, direction }
}

fn sdp(user: &str, port: u16, proto: &str, extra: &str) -> String {
    format!(
        "v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n{extra}"
    )
}

/// A response to `req` (Via, From, To with `tag`, Call-ID, CSeq, Record-Route copied).
fn respond(req: &str, code: u16, reason: &str, tag: &str, contact: SocketAddr, body: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.split("\r\n\r\n").next().unwrap_or("").lines().skip(1) {
        let name = l.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" | "record-route" => {
                out.push_str(l);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(l);
                if !l.contains(";tag=") {
                    out.push_str(&format!(";tag={tag}"));
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str(&format!("Contact: <sip:b@{contact}>\r\n"));
    if !body.is_empty() {
        out.push_str("Content-Type: application/sdp\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// A dialog set up through the edge: A (caller) -> edge -> B (callee, the upstream).
struct Call {
    a: Ua,
    b: Ua,
    edge: SocketAddr,
    call_id: String,
    a_tag: String,
    b_tag: String,
    /// Route set of A (Record-Route of the 2xx, reversed) and B's Contact.
    a_routes: Vec<String>,
    b_target: String,
    /// Where each side sends RTP (the relay ports it was given).
    a_to: SocketAddr,
    b_to: SocketAddr,
    /// The SDPs each side received.
    a_got: String,
    b_got: String,
    cseq: u32,
}

impl Call {
    /// INVITE with `offer` from A, 200 with `answer(b's view of the offer)` from B, ACK.
    fn setup(edge: &Edge, b_port: u16, offer_proto: &str, offer_extra: &str, answer: impl Fn(&MediaDesc, u16) -> String) -> Call {
        let a = Ua::new(0);
        let b = Ua::new(b_port);
        let call_id = format!("media-{}-{}", std::process::id(), a.sip_addr().port());
        let offer = sdp("a", a.rtp_port(), offer_proto, offer_extra);
        let invite = format!(
            "INVITE sip:svc@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKinv{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@example.org>;tag=atag\r\nTo: <sip:svc@example.net>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            a.sip_addr(),
            a.sip_addr().port(),
            a.sip_addr(),
            offer.len()
        );
        a.send(edge.udp, &invite);
        let inv = b.recv("INVITE at B", |m| is_request(m, "INVITE"));
        let b_got = body(&inv).to_string();
        let bm = media_of(&b_got);
        let ans = answer(&bm, b.rtp_port());
        b.send(edge.udp, &respond(&inv, 200, "OK", "btag", b.sip_addr(), &ans));
        let ok = a.recv("200 at A", |m| is_response(m, 200, "INVITE"));
        let a_got = body(&ok).to_string();
        let am = media_of(&a_got);
        let mut rr: Vec<String> = ok
            .lines()
            .filter_map(|l| l.strip_prefix("Record-Route: "))
            .flat_map(|v| v.split(", ").map(|s| s.trim().to_string()).collect::<Vec<_>>())
            .collect();
        rr.reverse();
        let b_target = header(&ok, "Contact").unwrap().trim_start_matches('<').trim_end_matches('>').to_string();
        let call = Call {
            a,
            b,
            edge: edge.udp,
            call_id,
            a_tag: "atag".into(),
            b_tag: "btag".into(),
            a_routes: rr,
            b_target,
            a_to: SocketAddr::new(am.addr, am.port),
            b_to: SocketAddr::new(bm.addr, bm.port),
            a_got,
            b_got,
            cseq: 1,
        };
        call.a_request("ACK", 1, "");
        call.b.recv("ACK at B", |m| is_request(m, "ACK"));
        call
    }

    /// An in-dialog request from A (through the edge, by its Record-Route).
    fn a_request(&self, method: &str, cseq: u32, sdp_body: &str) {
        let routes = if self.a_routes.is_empty() { String::new() } else { format!("Route: {}\r\n", self.a_routes.join(", ")) };
        let ct = if sdp_body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
        let msg = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{method}{cseq}x{};rport\r\n{routes}Max-Forwards: 70\r\nFrom: <sip:a@example.org>;tag={}\r\nTo: <sip:svc@example.net>;tag={}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:a@{}>\r\n{ct}Content-Length: {}\r\n\r\n{sdp_body}",
            self.b_target,
            self.a.sip_addr(),
            self.a.sip_addr().port(),
            self.a_tag,
            self.b_tag,
            self.call_id,
            self.a.sip_addr(),
            sdp_body.len()
        );
        self.a.send(self.edge, &msg);
    }

    fn bye_from_a(&mut self) {
        self.cseq += 1;
        self.a_request("BYE", self.cseq, "");
        let bye = self.b.recv("BYE at B", |m| is_request(m, "BYE"));
        self.b.send(self.edge, &respond(&bye, 200, "OK", "btag", self.b.sip_addr(), ""));
        self.a.recv("200 BYE at A", |m| is_response(m, 200, "BYE"));
    }
}

// ------------------------------------------------------------------ RTP helpers

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn payload(tag: u8, seq: u16) -> Vec<u8> {
    (0..160u16).map(|i| tag ^ (i as u8).wrapping_add(seq as u8)).collect()
}

fn recv_rtp(s: &UdpSocket) -> Option<Vec<u8>> {
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = vec![0u8; 2048];
    let n = s.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn inline_key(crypto: &str) -> Vec<u8> {
    use base64::Engine as _;
    let k = crypto.split("inline:").nth(1).unwrap().split('|').next().unwrap();
    base64::engine::general_purpose::STANDARD.decode(k).unwrap()
}

fn upstream(b_port: u16, extra: &str) -> String {
    format!("[[upstream]]\nuri = \"sip:127.0.0.1:{b_port}\"\n{extra}")
}

// ------------------------------------------------------------------ tests

#[test]
fn loadgen_rtp_through_the_relay_with_loss_in_the_call_records() {
    let uas = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let _a = Answer::start(&["--listen", &format!("127.0.0.1:{uas}"), "--rtp-echo"]);
    let dir = tempfile::tempdir().unwrap();
    let target = format!("sip:{}", edge.udp);
    let rj = dir.path().join("r.json");
    let o = run(
        &[
            "call",
            "--target",
            &target,
            "--to",
            "sip:echo@example.net",
            "--rate",
            "10",
            "--calls",
            "20",
            "--hold-ms",
            "3000",
            "--rtp",
            "--loss-pct",
            "5",
            "--seed",
            "11",
            "--quiet",
            "--report-json",
            rj.to_str().unwrap(),
        ],
        Duration::from_secs(90),
    );
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&rj);
    assert_eq!(r["media"]["streams"], 20, "{r}");
    assert!(wait_until(Duration::from_secs(5), || edge.call_records().len() >= 20), "records: {}", edge.call_records().len());
    let recs = edge.call_records();
    let mut losses = vec![];
    for rec in &recs {
        assert_eq!(rec["reason"], "bye_from_caller", "{rec}");
        let m = &rec["media"][0];
        let (fa, fb) = (&m["from_a"], &m["from_b"]);
        // ~3 s of 50 packets/s each way went through the relay.
        assert!(fa["packets"].as_u64().unwrap() >= 120, "{rec}");
        assert!(fb["packets"].as_u64().unwrap() >= 120, "{rec}");
        let loss = fa["loss_pct"].as_f64().unwrap();
        losses.push(loss);
        // The relay's MOS is the E-model at the loss it measured (G.711 with PLC).
        let expected = codec::quality::mos(codec::quality::EModelInput {
            codec: codec::quality::CodecImpairment::G711_PLC,
            loss_pct: loss,
            burst_ratio: 1.0,
            delay_ms: 20.0 + 2.0 * fa["jitter_ms"].as_f64().unwrap(),
        });
        assert!((fa["mos"].as_f64().unwrap() - expected).abs() < 0.05, "{rec}");
        // The loadgen caller measured what it received back: the same loss in both reports
        // for that call (the echo returns what the relay delivered).
        let cid = rec["call_id"].as_str().unwrap();
        let mine = r["media"]["per_stream"].as_array().unwrap().iter().find(|s| s["call_id"] == cid).expect("stream of the call");
        assert!((mine["loss_pct"].as_f64().unwrap() - fb["loss_pct"].as_f64().unwrap()).abs() < 2.5, "{rec} vs {mine}");
    }
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    assert!((3.5..=6.5).contains(&mean), "mean loss {mean}% for 5% injected: {losses:?}");
    let mean_mos = recs.iter().map(|r| r["media"][0]["from_a"]["mos"].as_f64().unwrap()).sum::<f64>() / recs.len() as f64;
    assert!((mean_mos - 3.92).abs() < 0.2, "MOS {mean_mos} at 5% loss (E-model: 3.92)");
    // Counters and histograms; every relay port is free again.
    let m = edge.metrics();
    assert!(metric(&m, "edge_media_packets_relayed_total") >= 20.0 * 2.0 * 120.0, "{m}");
    assert_eq!(metric(&m, "edge_calls_ended_total"), 20.0, "{m}");
    assert_eq!(metric(&m, "edge_call_mos_count"), 40.0, "{m}");
    assert!(metric(&m, "edge_call_loss_ratio_count") >= 40.0, "{m}");
    assert_eq!(metric(&m, "edge_media_ports_in_use"), 0.0, "{m}");
}

/// Installs tshark (Debian) if missing; `false` if that is impossible here.
fn have_tshark() -> bool {
    Command::new("tshark").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn capture_shows_rewritten_sdp_and_rtp_on_the_relay_ports() {
    assert!(have_tshark(), "tshark is missing: run scripts/test.sh (it installs Debian's tshark)");
    let b_port = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{b_port}")]);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("cap.pcap");
    let filter = format!("udp and (port {b_port} or portrange {}-{})", RELAY_RANGE.0, RELAY_RANGE.1);
    let mut ts = Command::new("tshark")
        .args(["-i", "lo", "-f", &filter, "-w", pcap.to_str().unwrap(), "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark");
    // tshark prints "Capturing on 'Loopback: lo'" once it is ready.
    {
        use std::io::BufRead;
        let mut rd = std::io::BufReader::new(ts.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if rd.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("tshark did not start capturing: {seen}");
            }
            seen.push_str(&line);
            if line.contains("Capturing") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut rd, &mut std::io::sink()));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut call = Call::setup(&edge, b_port, "RTP/AVP", "", |_, port| sdp("b", port, "RTP/AVP", ""));
    // The SDP each side got names the edge, on a relay port, not the other endpoint.
    assert!(in_relay_range(call.a_to.port()) && in_relay_range(call.b_to.port()), "{} {}", call.a_got, call.b_got);
    assert!(!call.b_got.contains(&format!(" {} ", call.a.rtp_port())), "{}", call.b_got);
    for i in 0..50u16 {
        call.a.rtp.send_to(&rtp(i, 0xa, &payload(1, i)), call.a_to).unwrap();
        call.b.rtp.send_to(&rtp(i, 0xb, &payload(2, i)), call.b_to).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut got_a = 0;
    let mut got_b = 0;
    while let Some(p) = recv_rtp(&call.b.rtp) {
        got_b += 1;
        if got_b == 50 {
            assert_eq!(&p[12..], &payload(1, 49)[..]);
            break;
        }
    }
    while let Some(_p) = recv_rtp(&call.a.rtp) {
        got_a += 1;
        if got_a == 50 {
            break;
        }
    }
    assert_eq!((got_a, got_b), (50, 50));
    call.bye_from_a();
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-INT", &ts.id().to_string()]).status();
    let _ = ts.wait();
    let fields = |filter: &str, f: &[&str]| -> Vec<String> {
        let mut args = vec!["-r", pcap.to_str().unwrap(), "-Y", filter, "-T", "fields"];
        for x in f {
            args.push("-e");
            args.push(x);
        }
        let o = Command::new("tshark").args(&args).output().expect("tshark -r");
        String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
    };
    // The INVITE on the wire towards B carries the relay's port (B sends to it).
    let media = fields(&format!("sip.Method == \"INVITE\" && udp.dstport == {b_port}"), &["sdp.media.port"]);
    assert_eq!(media, vec![call.b_to.port().to_string()], "captured INVITE media port");
    // RTP between B and its relay port, in both directions, and between A and its port.
    let count = |f: String| fields(&f, &["frame.number"]).len();
    let b_rtp = call.b.rtp_port();
    let a_rtp = call.a.rtp_port();
    assert_eq!(count(format!("udp.srcport == {b_rtp} && udp.dstport == {}", call.b_to.port())), 50);
    assert_eq!(count(format!("udp.srcport == {} && udp.dstport == {b_rtp}", call.b_to.port())), 50);
    assert_eq!(count(format!("udp.srcport == {a_rtp} && udp.dstport == {}", call.a_to.port())), 50);
    assert_eq!(count(format!("udp.srcport == {} && udp.dstport == {a_rtp}", call.a_to.port())), 50);
    // Nothing went directly between the endpoints.
    assert_eq!(count(format!("udp.port == {a_rtp} && udp.port == {b_rtp}")), 0);
}

#[test]
fn sipp_rtp_echo_through_the_relay() {
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let uas = free_port();
    let mp = free_port();
    let mut sipp = Sipp::spawn(
        "uas",
        dir.path(),
        &[
            "-sf",
            &scenario("uas_load.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            &uas.to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &mp.to_string(),
            "-rtp_echo",
            "-m",
            "5",
            "-timeout",
            "60s",
        ]
        .map(String::from),
    );
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let rj = dir.path().join("r.json");
    let o = run(
        &[
            "call",
            "--target",
            &format!("sip:{}", edge.udp),
            "--to",
            "sip:echo@example.net",
            "--rate",
            "5",
            "--calls",
            "5",
            "--hold-ms",
            "2000",
            "--rtp",
            "--quiet",
            "--report-json",
            rj.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}\n{}", text(&o), sipp.output());
    let r = json(&rj);
    for s in r["media"]["per_stream"].as_array().unwrap() {
        assert!(s["packets_received"].as_u64().unwrap() >= 80, "echoed through the relay: {s}");
        assert!(s["loss_pct"].as_f64().unwrap() < 1.0, "{s}");
    }
    assert!(wait_until(Duration::from_secs(5), || edge.call_records().len() >= 5));
    for rec in edge.call_records() {
        let m = &rec["media"][0];
        assert!(m["from_a"]["packets"].as_u64().unwrap() >= 80 && m["from_b"]["packets"].as_u64().unwrap() >= 80, "{rec}");
    }
    assert_eq!(sipp.wait(Duration::from_secs(30)), Some(0), "{}", sipp.output());
}

/// SRTP leg A (SDES) <-> plain leg B: every payload arrives intact both ways.
#[test]
fn sdes_srtp_caller_meets_plain_trunk_both_ways() {
    let b_port = free_port();
    let edge = Edge::start(&upstream(b_port, "srtp = \"plain\"\n"), &[]);
    let a_key: Vec<u8> = (0..30u8).map(|i| i.wrapping_mul(7).wrapping_add(3)).collect();
    let crypto = {
        use base64::Engine as _;
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n", base64::engine::general_purpose::STANDARD.encode(&a_key))
    };
    let mut call = Call::setup(&edge, b_port, "RTP/SAVP", &crypto, |m, port| {
        assert_eq!(m.proto, "RTP/AVP", "the plain trunk is offered RTP/AVP");
        assert!(m.crypto.is_empty(), "no keys towards the plain leg");
        sdp("b", port, "RTP/AVP", "")
    });
    let am = media_of(&call.a_got);
    assert_eq!(am.proto, "RTP/SAVP", "{}", call.a_got);
    assert_eq!(am.crypto.len(), 1, "{}", call.a_got);
    assert!(am.crypto[0].starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"), "{:?}", am.crypto);
    let mut a_tx = Srtp::from_inline(Profile::Aes128CmSha1_80, &a_key).unwrap();
    let mut a_rx = Srtp::from_inline(Profile::Aes128CmSha1_80, &inline_key(&am.crypto[0])).unwrap();
    for i in 0..100u16 {
        let plain = rtp(i, 0xa1, &payload(0x11, i));
        let mut p = plain.clone();
        a_tx.protect_rtp(&mut p).unwrap();
        call.a.rtp.send_to(&p, call.a_to).unwrap();
        let got = recv_rtp(&call.b.rtp).expect("B receives");
        assert_eq!(got, plain, "B gets A's audio decrypted (packet {i})");
        let plain_b = rtp(i, 0xb1, &payload(0x22, i));
        call.b.rtp.send_to(&plain_b, call.b_to).unwrap();
        let mut got = recv_rtp(&call.a.rtp).expect("A receives");
        assert_ne!(got, plain_b, "A gets SRTP");
        a_rx.unprotect_rtp(&mut got).expect("authenticates with the key the edge gave A");
        assert_eq!(got, plain_b, "A decrypts B's audio (packet {i})");
    }
    call.bye_from_a();
    assert!(wait_until(Duration::from_secs(5), || !edge.call_records().is_empty()));
    let rec = &edge.call_records()[0];
    assert_eq!(rec["media"][0]["from_a"]["packets"], 100, "{rec}");
    assert_eq!(rec["media"][0]["from_a"]["srtp_errors"], 0, "{rec}");
}

/// Plain leg A <-> SDES trunk B: the relay offers B its own key and decrypts B's SRTP.
#[test]
fn plain_caller_meets_sdes_trunk_both_ways() {
    let b_port = free_port();
    let edge = Edge::start(&upstream(b_port, "srtp = \"sdes\"\n"), &[]);
    let b_key: Vec<u8> = (0..30u8).map(|i| i.wrapping_mul(13).wrapping_add(1)).collect();
    let b_crypto = {
        use base64::Engine as _;
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n", base64::engine::general_purpose::STANDARD.encode(&b_key))
    };
    let call = Call::setup(&edge, b_port, "RTP/AVP", "", |m, port| {
        assert_eq!(m.proto, "RTP/SAVP", "the SDES trunk is offered SRTP");
        assert_eq!(m.crypto.len(), 1);
        sdp("b", port, "RTP/SAVP", &b_crypto)
    });
    let am = media_of(&call.a_got);
    assert_eq!(am.proto, "RTP/AVP", "{}", call.a_got);
    assert!(am.crypto.is_empty(), "{}", call.a_got);
    let bm = media_of(&call.b_got);
    let mut b_rx = Srtp::from_inline(Profile::Aes128CmSha1_80, &inline_key(&bm.crypto[0])).unwrap();
    let mut b_tx = Srtp::from_inline(Profile::Aes128CmSha1_80, &b_key).unwrap();
    for i in 0..100u16 {
        let plain = rtp(i, 0xa2, &payload(0x33, i));
        call.a.rtp.send_to(&plain, call.a_to).unwrap();
        let mut got = recv_rtp(&call.b.rtp).expect("B receives");
        b_rx.unprotect_rtp(&mut got).expect("B authenticates the relay's SRTP");
        assert_eq!(got, plain, "packet {i}");
        let plain_b = rtp(i, 0xb2, &payload(0x44, i));
        let mut p = plain_b.clone();
        b_tx.protect_rtp(&mut p).unwrap();
        call.b.rtp.send_to(&p, call.b_to).unwrap();
        assert_eq!(recv_rtp(&call.a.rtp).expect("A receives"), plain_b, "packet {i}");
    }
    // A plain caller towards an SDES-only policy on its own leg is refused with 488.
    let edge2 = Edge::start("[media]\nsrtp = \"sdes\"\n", &["--upstream", &format!("sip:127.0.0.1:{}", free_port())]);
    let a = Ua::new(0);
    let offer = sdp("a", a.rtp_port(), "RTP/AVP", "");
    a.send(
        edge2.udp,
        &format!(
            "INVITE sip:svc@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKrefuse;rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@example.org>;tag=x\r\nTo: <sip:svc@example.net>\r\nCall-ID: refuse-{}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            a.sip_addr(),
            std::process::id(),
            a.sip_addr(),
            offer.len()
        ),
    );
    a.recv("488", |m| is_response(m, 488, "INVITE"));
}

#[test]
fn hold_and_resume_by_reinvite_then_bye_releases_the_ports() {
    let b_port = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{b_port}")]);
    let mut call = Call::setup(&edge, b_port, "RTP/AVP", "", |_, port| sdp("b", port, "RTP/AVP", ""));
    assert_eq!(metric(&edge.metrics(), "edge_media_ports_in_use"), 4.0);
    // Hold: A re-offers sendonly; B answers recvonly; the relay keeps its ports.
    for (dir, answer_dir, i0) in [("sendonly", "recvonly", 0u16), ("sendrecv", "sendrecv", 100)] {
        call.cseq += 1;
        let offer = sdp("a", call.a.rtp_port(), "RTP/AVP", &format!("a={dir}\r\n"));
        call.a_request("INVITE", call.cseq, &offer);
        let re = call.b.recv("re-INVITE at B", |m| is_request(m, "INVITE"));
        let bm = media_of(body(&re));
        assert_eq!(bm.direction, dir, "{re}");
        assert_eq!(SocketAddr::new(bm.addr, bm.port), call.b_to, "same relay port for B");
        let ans = sdp("b", call.b.rtp_port(), "RTP/AVP", &format!("a={answer_dir}\r\n"));
        call.b.send(edge.udp, &respond(&re, 200, "OK", "btag", call.b.sip_addr(), &ans));
        let ok = call.a.recv("200 re-INVITE at A", |m| is_response(m, 200, "INVITE"));
        let am = media_of(body(&ok));
        assert_eq!(am.direction, answer_dir);
        assert_eq!(SocketAddr::new(am.addr, am.port), call.a_to, "same relay port for A");
        call.a_request("ACK", call.cseq, "");
        call.b.recv("ACK at B", |m| is_request(m, "ACK"));
        // Media from A reaches B on hold (sendonly) and after resume.
        for i in i0..i0 + 10 {
            call.a.rtp.send_to(&rtp(i, 0xa, &payload(5, i)), call.a_to).unwrap();
            assert_eq!(recv_rtp(&call.b.rtp).expect("B receives")[12..], payload(5, i)[..]);
        }
    }
    call.bye_from_a();
    assert!(wait_until(Duration::from_secs(3), || metric(&edge.metrics(), "edge_media_ports_in_use") == 0.0), "ports released after BYE");
    assert!(wait_until(Duration::from_secs(3), || edge.call_records().len() == 1));
    assert_eq!(edge.call_records()[0]["reason"], "bye_from_caller");
    assert_eq!(edge.call_records()[0]["media"][0]["from_a"]["packets"], 20);
}

#[test]
fn media_inactivity_ends_the_call_with_bye_both_ways() {
    let b_port = free_port();
    let edge = Edge::start("[media]\ninactivity_secs = 2\n", &["--upstream", &format!("sip:127.0.0.1:{b_port}")]);
    let call = Call::setup(&edge, b_port, "RTP/AVP", "", |_, port| sdp("b", port, "RTP/AVP", ""));
    for i in 0..5u16 {
        call.a.rtp.send_to(&rtp(i, 0xa, &payload(1, i)), call.a_to).unwrap();
        call.b.rtp.send_to(&rtp(i, 0xb, &payload(2, i)), call.b_to).unwrap();
    }
    let t0 = Instant::now();
    // Both ends get a BYE from the edge within the timeout (+ sweep granularity).
    let bye_b = call.b.recv("edge's BYE at B", |m| is_request(m, "BYE"));
    let bye_a = call.a.recv("edge's BYE at A", |m| is_request(m, "BYE"));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(bye_b.contains("media timeout") && bye_a.contains("media timeout"));
    assert!(bye_b.starts_with(&format!("BYE {}", call.b_target)) || bye_b.contains(&call.b.sip_addr().to_string()), "{bye_b}");
    assert!(bye_a.starts_with(&format!("BYE sip:a@{}", call.a.sip_addr())), "{bye_a}");
    assert!(header(&bye_a, "From").unwrap().contains("tag=btag") && header(&bye_a, "To").unwrap().contains("tag=atag"), "{bye_a}");
    assert!(header(&bye_b, "From").unwrap().contains("tag=atag") && header(&bye_b, "To").unwrap().contains("tag=btag"), "{bye_b}");
    // Answered: the edge's client transactions absorb the 200s.
    call.b.send(edge.udp, &respond(&bye_b, 200, "OK", "btag", call.b.sip_addr(), ""));
    call.a.send(edge.udp, &respond(&bye_a, 200, "OK", "atag", call.a.sip_addr(), ""));
    assert!(wait_until(Duration::from_secs(3), || edge.call_records().len() == 1));
    let rec = &edge.call_records()[0];
    assert_eq!(rec["reason"], "media_timeout", "{rec}");
    assert_eq!(rec["media"][0]["from_a"]["packets"], 5);
    assert_eq!(metric(&edge.metrics(), "edge_media_ports_in_use"), 0.0);
}

#[test]
fn ten_thousand_foreign_packets_do_not_disturb_the_latched_stream() {
    let b_port = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{b_port}")]);
    let mut call = Call::setup(&edge, b_port, "RTP/AVP", "", |_, port| sdp("b", port, "RTP/AVP", ""));
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Latch A with its first packet.
    call.a.rtp.send_to(&rtp(0, 0xa, &payload(1, 0)), call.a_to).unwrap();
    assert_eq!(recv_rtp(&call.b.rtp).unwrap()[12..], payload(1, 0)[..]);
    let _ = call.b.rtp.set_read_timeout(Some(Duration::from_millis(500)));
    let mut received = Vec::new();
    let mut buf = vec![0u8; 2048];
    for i in 0..10_000u16 {
        attacker.send_to(&rtp(i, 0xbad, &[0xee; 160]), call.a_to).unwrap();
        if i % 50 == 49 {
            // ~50k packets/s: a heavy flood, paced so the kernel's socket buffer (shared
            // with the real stream) is not what gets measured.
            std::thread::sleep(Duration::from_millis(1));
        }
        if i % 100 == 0 {
            let seq = 1 + i / 100;
            call.a.rtp.send_to(&rtp(seq, 0xa, &payload(1, seq)), call.a_to).unwrap();
        }
        if i % 1000 == 999 {
            // Let the relay keep up (bounded socket buffers), collecting what B got.
            std::thread::sleep(Duration::from_millis(20));
            let _ = call.b.rtp.set_nonblocking(true);
            while let Ok(n) = call.b.rtp.recv(&mut buf) {
                received.push(buf[..n].to_vec());
            }
            let _ = call.b.rtp.set_nonblocking(false);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    while let Some(p) = recv_rtp(&call.b.rtp) {
        received.push(p);
    }
    assert_eq!(received.len(), 100, "only A's packets reach B");
    for (k, p) in received.iter().enumerate() {
        let seq = k as u16 + 1;
        assert_eq!(p[8..12], 0xau32.to_be_bytes(), "SSRC of A only");
        assert_eq!(p[12..], payload(1, seq)[..], "packet {seq} intact");
    }
    call.bye_from_a();
    assert!(wait_until(Duration::from_secs(3), || edge.call_records().len() == 1));
    let rec = &edge.call_records()[0];
    assert_eq!(rec["media"][0]["from_a"]["foreign_dropped"], 10_000, "{rec}");
    assert_eq!(rec["media"][0]["from_a"]["packets"], 101, "{rec}");
    assert_eq!(rec["media"][0]["from_a"]["loss_pct"], 0.0, "{rec}");
}
