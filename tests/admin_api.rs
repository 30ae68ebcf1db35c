//! The admin HTTP API against the real binary: token auth on every protected endpoint,
//! JSON errors with 4xx codes for bad input, and the effect on SIP (a user created through
//! the API registers, a changed password takes effect, a forced logout removes the
//! binding, a deleted user is gone), the call log, `/openapi.json`, and `promtool check
//! metrics` on `/metrics`.

#![allow(clippy::disallowed_methods)]

use e2e_tests::{Answer, Edge, free_port, run, status, text};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

/// (status, body) of one HTTP request to the admin listener.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    let ct = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let out = String::from_utf8_lossy(&raw).to_string();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut b = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    if out.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        b = dechunk(&b);
    }
    (code, b)
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn token(edge: &Edge) -> String {
    std::fs::read_to_string(edge.dir.path().join("data").join("admin.token")).expect("token file").trim().to_string()
}

/// REGISTER with digest; returns the final status.
fn register(sock: &UdpSocket, edge: SocketAddr, user: &str, pass: &str, expires: u32) -> u16 {
    e2e_tests::register_udp(sock, edge, user, pass, expires).expect("response to REGISTER")
}

#[test]
fn every_endpoint_needs_the_token_and_answers_bad_input_with_4xx() {
    let edge = Edge::start("[[user]]\nname = \"cfg\"\npassword = \"x\"\n", &[]);
    let admin = edge.admin.unwrap();
    let t = token(&edge);
    // Public.
    assert_eq!(http(admin, "GET", "/health", None, None).0, 200);
    assert_eq!(http(admin, "GET", "/metrics", None, None).0, 200);
    // Protected: 401 without and with a wrong token, JSON error body.
    for (m, p, b) in [
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", Some("{\"name\":\"n\",\"password\":\"p\"}")),
        ("GET", "/api/v1/users/cfg", None),
        ("PUT", "/api/v1/users/cfg", Some("{\"password\":\"p\"}")),
        ("DELETE", "/api/v1/users/cfg", None),
        ("GET", "/api/v1/registrations", None),
        ("DELETE", "/api/v1/registrations/cfg", None),
        ("GET", "/api/v1/calls/log", None),
        ("GET", "/openapi.json", None),
        ("GET", "/events", None),
        ("GET", "/api/v1/tls", None),
        ("POST", "/api/v1/tls/reload", None),
        ("GET", "/api/v1/captures", None),
        ("POST", "/api/v1/captures", Some("{\"user\":\"cfg\"}")),
        ("GET", "/api/v1/captures/1", None),
        ("DELETE", "/api/v1/captures/1", None),
        ("GET", "/api/v1/captures/1/pcap", None),
        ("POST", "/api/v1/captures/1/stop", None),
        ("GET", "/api/v1/calls", None),
        ("DELETE", "/api/v1/calls/x", None),
        ("GET", "/api/v1/upstreams", None),
        ("POST", "/api/v1/upstreams", Some("{\"name\":\"u\",\"uri\":\"sip:127.0.0.1\"}")),
        ("GET", "/api/v1/upstreams/u", None),
        ("PUT", "/api/v1/upstreams/u", Some("{\"uri\":\"sip:127.0.0.1\"}")),
        ("DELETE", "/api/v1/upstreams/u", None),
        ("GET", "/api/v1/routes", None),
        ("POST", "/api/v1/routes", Some("{\"name\":\"r\",\"upstream\":\"u\"}")),
        ("GET", "/api/v1/routes/r", None),
        ("PUT", "/api/v1/routes/r", Some("{\"upstream\":\"u\"}")),
        ("DELETE", "/api/v1/routes/r", None),
    ] {
        for tok in [None, Some("wrong")] {
            let (code, body) = http(admin, m, p, tok, b);
            assert_eq!(code, 401, "{m} {p} with {tok:?}: {body}");
            assert_eq!(json(&body)["error"], "unauthorized");
        }
    }
    let t = Some(t.as_str());
    // Bad input: 400 / 404 / 405 / 409, always JSON.
    for (m, p, b, want) in [
        ("POST", "/api/v1/users", Some("not json"), 400),
        ("POST", "/api/v1/users", Some("{\"password\":\"p\"}"), 400),
        ("POST", "/api/v1/users", Some("{\"name\":\"a b\",\"password\":\"p\"}"), 400),
        ("POST", "/api/v1/users", Some("{\"name\":\"n\",\"password\":\"\"}"), 400),
        ("POST", "/api/v1/users", Some("{\"name\":\"n\",\"password\":null}"), 400),
        ("POST", "/api/v1/users", Some("{\"name\":\"n\",\"max_contacts\":2.5}"), 400),
        ("POST", "/api/v1/users", Some("{\"name\":\"n\",\"max_contacts\":0}"), 400),
        ("POST", "/api/v1/users", Some("{\"name\":\"n\",\"ha1_md5\":\"xyz\"}"), 400),
        ("POST", "/api/v1/users", Some("{\"name\":\"n\",\"password\":\"p\",\"surprise\":1}"), 400),
        ("POST", "/api/v1/users", Some("{\"name\":\"cfg\",\"password\":\"p\"}"), 409),
        ("GET", "/api/v1/users/nobody", None, 404),
        ("PUT", "/api/v1/users/nobody", Some("{\"password\":\"p\"}"), 404),
        ("PUT", "/api/v1/users/cfg", Some("{\"password\":\"p\"}"), 409),
        ("DELETE", "/api/v1/users/cfg", None, 409),
        ("DELETE", "/api/v1/users/nobody", None, 404),
        ("DELETE", "/api/v1/registrations/nobody", None, 404),
        ("DELETE", "/api/v1/registrations/cfg", None, 404),
        ("GET", "/api/v1/registrations?bogus=1", None, 400),
        ("GET", "/api/v1/calls/log?limit=0", None, 400),
        ("GET", "/api/v1/calls/log?since=yesterday", None, 400),
        ("GET", "/api/v1/nothing-here", None, 404),
        ("PATCH", "/api/v1/users", None, 405),
    ] {
        let (code, body) = http(admin, m, p, t, b);
        assert_eq!(code, want, "{m} {p} {b:?}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    // The OpenAPI document lists every endpoint.
    let (code, doc) = http(admin, "GET", "/openapi.json", t, None);
    assert_eq!(code, 200);
    let doc = json(&doc);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/users",
        "/api/v1/users/{name}",
        "/api/v1/registrations",
        "/api/v1/registrations/{user}",
        "/api/v1/calls/log",
        "/events",
        "/health",
        "/metrics",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from /openapi.json");
    }
}

#[test]
fn users_created_through_the_api_register_and_forced_logout_removes_the_binding() {
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap();
    let tok = token(&edge);
    let t = Some(tok.as_str());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Unknown users are refused like a wrong password (no user enumeration).
    assert_eq!(register(&sock, edge.udp, "dana", "pw1", 600), 403, "unknown before creation");
    let (code, body) = http(admin, "POST", "/api/v1/users", t, Some("{\"name\":\"dana\",\"password\":\"pw1\",\"max_contacts\":2}"));
    assert_eq!(code, 201, "{body}");
    assert_eq!(json(&body)["aor"], "dana@edge.test");
    assert_eq!(register(&sock, edge.udp, "dana", "pw1", 600), 200, "a user created through the API registers");
    let (_, regs) = http(admin, "GET", "/api/v1/registrations?user=dana", t, None);
    let regs = json(&regs);
    assert_eq!(regs.as_array().unwrap().len(), 1, "{regs}");
    let contact = regs[0]["contact"].as_str().unwrap().to_string();
    assert!(regs[0]["expires_in"].as_u64().unwrap() > 500);
    // Password change takes effect at once.
    assert_eq!(http(admin, "PUT", "/api/v1/users/dana", t, Some("{\"password\":\"pw2\"}")).0, 200);
    assert_eq!(register(&sock, edge.udp, "dana", "pw1", 600), 403, "old password refused");
    assert_eq!(register(&sock, edge.udp, "dana", "pw2", 600), 200);
    // Forced logout of that device: the binding is gone, calls to dana get 480.
    let path = format!("/api/v1/registrations/dana?contact={}", contact.replace(':', "%3A").replace('@', "%40"));
    let (code, body) = http(admin, "DELETE", &path, t, None);
    assert_eq!(code, 204, "{body}");
    let (_, regs) = http(admin, "GET", "/api/v1/registrations?user=dana", t, None);
    assert_eq!(json(&regs).as_array().unwrap().len(), 0);
    let me = sock.local_addr().unwrap();
    let inv = format!(
        "INVITE sip:dana@edge.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKinvd;rport\r\nMax-Forwards: 70\r\nFrom: <sip:x@example.org>;tag=x\r\nTo: <sip:dana@edge.test>\r\nCall-ID: api-inv-dana\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(inv.as_bytes(), edge.udp).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    for _ in 0..3 {
        let n = sock.recv(&mut buf).unwrap();
        got = status(&String::from_utf8_lossy(&buf[..n])).unwrap_or(0);
        if got != 100 {
            break;
        }
    }
    assert_eq!(got, 480, "no binding after the forced logout");
    // Deleting the user: REGISTER is 404 again, and the list no longer has it.
    assert_eq!(http(admin, "DELETE", "/api/v1/users/dana", t, None).0, 204);
    assert_eq!(register(&sock, edge.udp, "dana", "pw2", 600), 403);
    let (_, users) = http(admin, "GET", "/api/v1/users", t, None);
    assert!(!users.contains("dana"), "{users}");
}

#[test]
fn api_users_survive_a_restart_and_the_call_log_has_the_calls() {
    let uas = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let admin = edge.admin.unwrap();
    let tok = token(&edge);
    assert_eq!(http(admin, "POST", "/api/v1/users", Some(&tok), Some("{\"name\":\"erin\",\"password\":\"pw\"}")).0, 201);
    let _a = Answer::start(&["--listen", &format!("127.0.0.1:{uas}")]);
    let o = run(
        &[
            "call",
            "--target",
            &format!("sip:{}", edge.udp),
            "--from",
            "sip:erin@edge.test",
            "--user",
            "erin:pw",
            "--to",
            "sip:svc@example.net",
            "--calls",
            "3",
            "--rate",
            "10",
            "--hold-ms",
            "100",
            "--quiet",
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o));
    let (code, log) = http(admin, "GET", "/api/v1/calls/log?user=erin", Some(&tok), None);
    assert_eq!(code, 200);
    let log = json(&log);
    assert_eq!(log.as_array().unwrap().len(), 3, "{log}");
    assert_eq!(log[0]["reason"], "bye_from_caller");
    // What the phone's call history shows, seen from erin.
    let ph = &log[0]["phone"];
    assert_eq!(ph["type"], "outbound", "{ph}");
    assert_eq!(ph["name_or_number"], "svc");
    assert_eq!(ph["line"], "erin");
    assert!(ph["duration_secs"].as_f64().unwrap() >= 0.09, "{ph}");
    assert!(ph["start"].as_f64().unwrap() <= log[0]["ended_at"].as_f64().unwrap());
    assert!(log[0]["ended_at"].as_f64().unwrap() > 1.7e9);
    let (_, out) = http(admin, "GET", "/api/v1/calls/log?user=erin&direction=outbound&limit=2", Some(&tok), None);
    assert_eq!(json(&out).as_array().unwrap().len(), 2);
    let (_, inb) = http(admin, "GET", "/api/v1/calls/log?user=erin&direction=inbound", Some(&tok), None);
    assert_eq!(json(&inb).as_array().unwrap().len(), 0);
    assert_eq!(http(admin, "GET", "/api/v1/calls/log?direction=sideways", Some(&tok), None).0, 400);
    let (_, none) = http(admin, "GET", "/api/v1/calls/log?user=nobody", Some(&tok), None);
    assert_eq!(json(&none).as_array().unwrap().len(), 0);
    // Restart: the API user and the token are still there.
    let dir = edge.kill9();
    let edge = Edge::restart(dir, &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    assert_eq!(token(&edge), tok, "the token is kept");
    let (code, body) = http(edge.admin.unwrap(), "GET", "/api/v1/users/erin", Some(&tok), None);
    assert_eq!(code, 200, "{body}");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(register(&sock, edge.udp, "erin", "pw", 60), 200);
}

#[test]
fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let ok = Command::new("schemathesis").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "schemathesis is missing: run scripts/test.sh (it installs it from PyPI)");
    let edge = Edge::start("[[user]]\nname = \"cfg\"\npassword = \"x\"\n", &[]);
    let admin = edge.admin.unwrap();
    let t = token(&edge);
    // Run in a scratch directory: schemathesis keeps a cache where it runs.
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .current_dir(scratch.path())
        .args(["240", "schemathesis", "run", &format!("http://{admin}/openapi.json"), "-H", &format!("Authorization: Bearer {t}")])
        // `/events` is an endless stream (tested on its own below).
        .args(["--checks", "all", "--max-examples", "25", "--seed", "1", "--exclude-path", "/events"])
        // Routes and trunks have rules no JSON Schema states (a regex must compile, a route's
        // trunks must exist, a URI host must be well-formed): such schema-valid bodies get 400
        // by design, so "positive data acceptance" is not checked; every other check is.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .stdin(Stdio::null())
        .output()
        .expect("schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("passed"), "{text}");
}

#[test]
fn promtool_accepts_the_metrics() {
    let ok = Command::new("promtool").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "promtool is missing: run scripts/test.sh (it installs Debian's prometheus)");
    let uas = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let _a = Answer::start(&["--listen", &format!("127.0.0.1:{uas}"), "--rtp-echo"]);
    let o = run(
        &[
            "call",
            "--target",
            &format!("sip:{}", edge.udp),
            "--to",
            "sip:svc@example.net",
            "--calls",
            "2",
            "--hold-ms",
            "500",
            "--rtp",
            "--quiet",
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(300));
    let (code, m) = http(edge.admin.unwrap(), "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(m.contains("edge_call_mos_bucket"), "{m}");
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        p.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    }
    let out = p.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool: {}{}\n{m}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Reads Server-Sent Events from `GET /events` (HTTP/1.0: the body is the raw stream).
fn sse_events(addr: SocketAddr, token: &str, query: &str, want: usize, limit: Duration) -> Vec<(String, serde_json::Value)> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /events{query} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
    let _ = s.set_read_timeout(Some(limit));
    let mut rd = BufReader::new(s);
    let mut out = Vec::new();
    let mut name = String::new();
    let mut line = String::new();
    while out.len() < want {
        line.clear();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let l = line.trim_end();
        if let Some(n) = l.strip_prefix("event: ").or_else(|| l.strip_prefix("event:")) {
            name = n.trim().to_string();
        } else if let Some(d) = l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")) {
            out.push((name.clone(), json(d.trim())));
        }
    }
    out
}

#[test]
fn sse_delivers_ringing_answered_ended_in_order_with_the_pop_up_fields() {
    let uas = free_port();
    let edge = Edge::start("[[user]]\nname = \"erin\"\npassword = \"pw\"\n", &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let admin = edge.admin.unwrap();
    let tok = token(&edge);
    let _a = Answer::start(&["--listen", &format!("127.0.0.1:{uas}"), "--ring-ms", "100", "--answer-ms", "300"]);
    let t2 = tok.clone();
    let sub = std::thread::spawn(move || sse_events(admin, &t2, "?user=erin", 3, Duration::from_secs(20)));
    // A subscriber for someone else sees nothing of this call.
    let t3 = tok.clone();
    let other = std::thread::spawn(move || sse_events(admin, &t3, "?user=zoe", 1, Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(300));
    let o = run(
        &[
            "call",
            "--target",
            &format!("sip:{}", edge.udp),
            "--from",
            "sip:erin@edge.test",
            "--user",
            "erin:pw",
            "--to",
            "sip:5551234@example.net",
            "--calls",
            "1",
            "--hold-ms",
            "300",
            "--quiet",
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o));
    let ev = sub.join().unwrap();
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ringing", "answered", "ended"], "{ev:?}");
    let call_id = ev[0].1["call_id"].as_str().unwrap().to_string();
    for (n, d) in &ev {
        assert_eq!(d["event"], n.as_str());
        assert_eq!(d["call_id"], call_id.as_str(), "one call");
        assert_eq!(d["direction"], "outbound");
        assert_eq!(d["caller"], "erin");
        assert_eq!(d["called"], "5551234");
        assert_eq!(d["agent"], "erin");
        assert!(d["at"].as_f64().unwrap() > 1.7e9);
    }
    assert!(ev[0].1["at"].as_f64() <= ev[1].1["at"].as_f64() && ev[1].1["at"].as_f64() <= ev[2].1["at"].as_f64());
    assert_eq!(ev[2].1["record"]["reason"], "bye_from_caller", "{:?}", ev[2].1);
    assert!(ev[2].1["record"]["talk_secs"].as_f64().unwrap() >= 0.25);
    assert!(other.join().unwrap().is_empty(), "the filter keeps other users' calls out");
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A blocking TLS connection to the edge trusting only `ca_pem`.
fn tls_connect(addr: SocketAddr, ca_pem: &[u8]) -> Result<TlsStream, String> {
    use std::io::Write;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake now, so a refused certificate shows up here.
    s.flush().map_err(|e| e.to_string())?;
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// OPTIONS to the edge itself over `s`; the status of the answer.
fn options_over(s: &mut TlsStream, n: u32) -> u16 {
    use std::io::{Read, Write};
    let m = format!(
        "OPTIONS sip:edge.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKtlsopt{n}\r\nMax-Forwards: 70\r\nFrom: <sip:t@example.org>;tag=t\r\nTo: <sip:edge.test>\r\nCall-ID: tls-reload-{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(m.as_bytes()).unwrap();
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let k = s.read(&mut buf).expect("answer over the open TLS connection");
        assert!(k > 0, "connection closed");
        got.extend_from_slice(&buf[..k]);
    }
    status(&String::from_utf8_lossy(&got)).unwrap_or(0)
}

#[test]
fn tls_reload_serves_the_new_certificate_and_keeps_open_connections() {
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap();
    let tok = token(&edge);
    let tls_dir = edge.dir.path().join("data").join("tls");
    let old_pem = std::fs::read(tls_dir.join("cert.pem")).unwrap();
    let mut open = tls_connect(edge.tls, &old_pem).expect("TLS with the first certificate");
    assert_eq!(options_over(&mut open, 1), 200);
    // A new certificate and key on disk, then the reload call.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let new_pem = ck.cert.pem();
    std::fs::write(tls_dir.join("cert.pem"), &new_pem).unwrap();
    std::fs::write(tls_dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    let (code, body) = http(admin, "POST", "/api/v1/tls/reload", Some(&tok), None);
    assert_eq!(code, 200, "{body}");
    let der_hex: String = {
        use sha2::Digest;
        sha2::Sha256::digest(ck.cert.der()).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(json(&body)["sha256"], der_hex.as_str());
    // New connections get the new certificate: the old trust anchor no longer verifies.
    assert!(tls_connect(edge.tls, &old_pem).is_err(), "a new connection still got the old certificate");
    let mut fresh = tls_connect(edge.tls, new_pem.as_bytes()).expect("TLS with the new certificate");
    assert_eq!(options_over(&mut fresh, 2), 200);
    // The connection opened before the reload is still up.
    assert_eq!(options_over(&mut open, 3), 200);
    // A broken file is refused and the certificate in use stays.
    std::fs::write(tls_dir.join("cert.pem"), "not a certificate").unwrap();
    let (code, body) = http(admin, "POST", "/api/v1/tls/reload", Some(&tok), None);
    assert_eq!(code, 400, "{body}");
    let mut again = tls_connect(edge.tls, new_pem.as_bytes()).expect("still the new certificate");
    assert_eq!(options_over(&mut again, 4), 200);
    let (_, state) = http(admin, "GET", "/api/v1/tls", Some(&tok), None);
    assert_eq!(json(&state)["sha256"], der_hex.as_str());
}

#[test]
fn capture_of_a_user_has_its_invite_and_stops_at_logout_or_deadline() {
    let uas = free_port();
    let users = "[[user]]\nname = \"erin\"\npassword = \"pw\"\n[[user]]\nname = \"fred\"\npassword = \"pw\"\n";
    let edge = Edge::start(users, &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let admin = edge.admin.unwrap();
    let tok = token(&edge);
    let t = Some(tok.as_str());
    let _a = Answer::start(&["--listen", &format!("127.0.0.1:{uas}")]);
    let (code, body) = http(admin, "POST", "/api/v1/captures", t, Some("{\"user\":\"erin\",\"duration_secs\":120}"));
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_u64().unwrap();
    let (code, short) = http(admin, "POST", "/api/v1/captures", t, Some("{\"user\":\"fred\",\"duration_secs\":1}"));
    assert_eq!(code, 201, "{short}");
    let short_id = json(&short)["id"].as_u64().unwrap();
    for (m, b, want) in [
        ("POST", "{}", 400),
        ("POST", "{\"user\":\"erin\",\"call_id\":\"x\"}", 400),
        ("POST", "{\"user\":\"nobody\"}", 404),
        ("POST", "{\"user\":\"erin\",\"duration_secs\":999999}", 400),
    ] {
        assert_eq!(http(admin, m, "/api/v1/captures", t, Some(b)).0, want, "{b}");
    }
    assert_eq!(http(admin, "GET", "/api/v1/captures/999", t, None).0, 404);
    assert_eq!(http(admin, "GET", "/api/v1/captures/abc", t, None).0, 400);
    // erin calls out; a call of nobody in particular is not captured.
    for (from, user) in [("sip:erin@edge.test", "erin:pw"), ("sip:anon@example.org", "")] {
        let mut args = vec![
            "call",
            "--target",
            &format!("sip:{}", edge.udp).leak()[..],
            "--to",
            "sip:555@example.net",
            "--calls",
            "1",
            "--hold-ms",
            "100",
            "--quiet",
            "--from",
            from,
        ];
        if !user.is_empty() {
            args.extend(["--user", user]);
        }
        let o = run(&args, Duration::from_secs(60));
        assert!(o.status.success(), "{}", text(&o));
    }
    // Read the pcap back with tshark, decoding the edge's SIP port as SIP.
    let (code, _) = http(admin, "GET", &format!("/api/v1/captures/{id}/pcap"), t, None);
    assert_eq!(code, 200);
    let info = json(&http(admin, "GET", &format!("/api/v1/captures/{id}"), t, None).1);
    assert!(info["packets"].as_u64().unwrap() >= 8, "{info}");
    let file = edge.dir.path().join("data").join("captures").join(format!("{id}-user-erin.pcap"));
    let o = Command::new("tshark")
        .args([
            "-r",
            file.to_str().unwrap(),
            "-d",
            &format!("udp.port=={},sip", edge.udp.port()),
            "-Y",
            "sip.Method == \"INVITE\"",
            "-T",
            "fields",
            "-e",
            "sip.from.user",
        ])
        .output()
        .expect("tshark");
    let froms = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = froms.lines().collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| *l == "erin"), "INVITEs in the capture: {froms:?}");
    // The 1 s capture stopped at its deadline; erin's stops when erin logs out.
    assert!(e2e_tests::wait_until(Duration::from_secs(5), || {
        json(&http(admin, "GET", &format!("/api/v1/captures/{short_id}"), t, None).1)["ended"] == "deadline"
    }));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(register(&sock, edge.udp, "erin", "pw", 600), 200);
    assert_eq!(register(&sock, edge.udp, "erin", "pw", 0), 200, "unregister");
    let info = json(&http(admin, "GET", &format!("/api/v1/captures/{id}"), t, None).1);
    assert_eq!(info["ended"], "logout", "{info}");
    assert_eq!(info["active"], false);
    assert_eq!(http(admin, "POST", &format!("/api/v1/captures/{id}/stop"), t, None).0, 409, "already stopped");
    let (_, list) = http(admin, "GET", "/api/v1/captures", t, None);
    assert_eq!(json(&list).as_array().unwrap().len(), 2);
    // Delete: the entry and the file are gone.
    assert_eq!(http(admin, "DELETE", &format!("/api/v1/captures/{id}"), t, None).0, 204);
    assert_eq!(http(admin, "GET", &format!("/api/v1/captures/{id}/pcap"), t, None).0, 404);
    assert!(!file.exists());
}

#[test]
fn active_calls_are_listed_with_live_media_and_can_be_hung_up() {
    let uas = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let admin = edge.admin.unwrap();
    let tok = token(&edge);
    let t = Some(tok.as_str());
    let _a = Answer::start(&["--listen", &format!("127.0.0.1:{uas}"), "--rtp-echo"]);
    let target = format!("sip:{}", edge.udp);
    let caller = std::thread::spawn(move || {
        run(
            &[
                "call",
                "--target",
                &target,
                "--to",
                "sip:777@example.net",
                "--calls",
                "1",
                "--hold-ms",
                "20000",
                "--rtp",
                "--quiet",
                "--max-time-s",
                "30",
            ],
            Duration::from_secs(60),
        )
    });
    assert!(e2e_tests::wait_until(Duration::from_secs(10), || {
        let (_, b) = http(admin, "GET", "/api/v1/calls", t, None);
        json(&b).as_array().is_some_and(|a| {
            a.len() == 1 && a[0]["state"] == "answered" && a[0]["media"][0]["from_a"]["packets"].as_u64().unwrap_or(0) > 20
        })
    }));
    let (_, b) = http(admin, "GET", "/api/v1/calls", t, None);
    let call = json(&b)[0].clone();
    assert_eq!(call["called"], "777");
    assert_eq!(call["direction"], "transit");
    assert!(call["callee_leg"].as_str().unwrap().contains(&uas.to_string()), "{call}");
    assert!(call["anchored"].as_bool().unwrap());
    let id = call["call_id"].as_str().unwrap().to_string();
    assert_eq!(http(admin, "DELETE", "/api/v1/calls/no-such-call", t, None).0, 404);
    let t0 = std::time::Instant::now();
    assert_eq!(http(admin, "DELETE", &format!("/api/v1/calls/{id}"), t, None).0, 204);
    assert!(e2e_tests::wait_until(Duration::from_secs(5), || json(&http(admin, "GET", "/api/v1/calls", t, None).1)
        .as_array()
        .is_some_and(|a| a.is_empty())));
    let recs = edge.call_records();
    assert!(e2e_tests::wait_until(Duration::from_secs(5), || !edge.call_records().is_empty()), "{recs:?}");
    assert_eq!(edge.call_records()[0]["reason"], "hung_up");
    let _ = caller.join();
    assert!(t0.elapsed() < Duration::from_secs(15), "the caller's call ended well before its 20 s hold");
}

#[test]
fn a_trunk_created_through_the_api_takes_the_next_call_and_survives_a_restart() {
    let uas = free_port();
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap();
    let tok = token(&edge);
    let t = Some(tok.as_str());
    let _a = Answer::start(&["--listen", &format!("127.0.0.1:{uas}")]);
    let call = |edge: &Edge| {
        run(
            &[
                "call",
                "--target",
                &format!("sip:{}", edge.udp),
                "--to",
                "sip:555@example.net",
                "--calls",
                "1",
                "--hold-ms",
                "50",
                "--quiet",
            ],
            Duration::from_secs(60),
        )
    };
    let o = call(&edge);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stdout).contains("403"), "no trunk yet: {}", text(&o));
    let body = format!("{{\"name\":\"trunk1\",\"uri\":\"sip:127.0.0.1:{uas}\"}}");
    let (code, b) = http(admin, "POST", "/api/v1/upstreams", t, Some(&body));
    assert_eq!(code, 201, "{b}");
    assert_eq!(json(&b)["preferred"], true);
    assert_eq!(http(admin, "POST", "/api/v1/upstreams", t, Some(&body)).0, 409);
    for bad in [
        "{\"name\":\"x\",\"uri\":\"http://nope\"}",
        "{\"name\":\"x y\",\"uri\":\"sip:127.0.0.1\"}",
        "{\"name\":\"x\",\"uri\":\"sip:127.0.0.1\",\"srtp\":\"maybe\"}",
        "{\"uri\":\"sip:127.0.0.1\"}",
    ] {
        assert_eq!(http(admin, "POST", "/api/v1/upstreams", t, Some(bad)).0, 400, "{bad}");
    }
    let o = call(&edge);
    assert!(o.status.success(), "the new trunk takes the call: {}", text(&o));
    assert_eq!(
        http(admin, "PUT", "/api/v1/upstreams/trunk1", t, Some(&format!("{{\"uri\":\"sip:127.0.0.1:{uas}\",\"priority\":7}}"))).0,
        200
    );
    assert_eq!(json(&http(admin, "GET", "/api/v1/upstreams/trunk1", t, None).1)["priority"], 7);
    assert_eq!(http(admin, "GET", "/api/v1/upstreams/none", t, None).0, 404);
    // Restart: the trunk is still there and still takes calls.
    let dir = edge.kill9();
    let edge = Edge::restart(dir, &[]);
    let admin = edge.admin.unwrap();
    let (_, list) = http(admin, "GET", "/api/v1/upstreams", t, None);
    assert_eq!(json(&list)[0]["name"], "trunk1", "{list}");
    assert!(call(&edge).status.success());
    // Deleted: calls to other domains are refused again.
    assert_eq!(http(admin, "DELETE", "/api/v1/upstreams/trunk1", t, None).0, 204);
    assert_eq!(http(admin, "DELETE", "/api/v1/upstreams/trunk1", t, None).0, 404);
    assert!(!call(&edge).status.success());
}

/// A webhook receiver: answers the first POST with 500 (to exercise retries), later ones
/// with 200; returns every body it got, in order.
fn webhook_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        let mut n = 0;
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut rd = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if rd.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = rd.read_exact(&mut body);
            n += 1;
            let code = if n == 1 { "500 Internal Server Error" } else { "200 OK" };
            if let Ok(v) = serde_json::from_slice(&body) {
                g.lock().unwrap().push(v);
            }
            let _ = write!(s, "HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

#[test]
fn webhooks_get_every_event_in_order_with_retries() {
    let (hook, got) = webhook_server();
    let uas = free_port();
    let extra = format!(
        "[[user]]\nname = \"erin\"\npassword = \"pw\"\n[events]\nwebhooks = [\"http://127.0.0.1:{hook}/hook\"]\nwebhook_backoff_ms = 100\n"
    );
    let edge = Edge::start(&extra, &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let _a = Answer::start(&["--listen", &format!("127.0.0.1:{uas}"), "--ring-ms", "50", "--answer-ms", "200"]);
    let o = run(
        &[
            "call",
            "--target",
            &format!("sip:{}", edge.udp),
            "--from",
            "sip:erin@edge.test",
            "--user",
            "erin:pw",
            "--to",
            "sip:42@example.net",
            "--calls",
            "1",
            "--hold-ms",
            "200",
            "--quiet",
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(e2e_tests::wait_until(Duration::from_secs(10), || got.lock().unwrap().len() >= 4), "{:?}", got.lock().unwrap());
    let got = got.lock().unwrap().clone();
    let names: Vec<&str> = got.iter().map(|v| v["event"].as_str().unwrap()).collect();
    // The first delivery was refused (500) and retried.
    assert_eq!(names, ["ringing", "ringing", "answered", "ended"], "{got:?}");
    assert!(got.iter().all(|v| v["caller"] == "erin" && v["called"] == "42" && v["direction"] == "outbound"));
    assert_eq!(got[3]["record"]["reason"], "bye_from_caller");
    assert!(
        e2e_tests::wait_until(Duration::from_secs(5), || e2e_tests::metric(&edge.metrics(), "edge_webhook_delivered_total") == 3.0),
        "{}",
        edge.metrics()
    );
}

#[test]
fn routes_send_matching_numbers_to_their_trunk() {
    let (dead, live) = (free_port(), free_port());
    let edge = Edge::start("", &[]);
    let admin = edge.admin.unwrap();
    let tok = token(&edge);
    let t = Some(tok.as_str());
    let _b = Answer::start(&["--listen", &format!("127.0.0.1:{live}")]);
    // The preferred trunk answers nothing; "live" takes only what a route sends it.
    for (name, port, prio) in [("dead", dead, 10), ("live", live, 20)] {
        let body = format!("{{\"name\":\"{name}\",\"uri\":\"sip:127.0.0.1:{port}\",\"priority\":{prio}}}");
        assert_eq!(http(admin, "POST", "/api/v1/upstreams", t, Some(&body)).0, 201);
    }
    let call = |to: &str| {
        run(
            &[
                "call",
                "--target",
                &format!("sip:{}", edge.udp),
                "--to",
                to,
                "--calls",
                "1",
                "--hold-ms",
                "50",
                "--timeout-ms",
                "1500",
                "--max-time-s",
                "10",
                "--quiet",
            ],
            Duration::from_secs(30),
        )
        .status
        .success()
    };
    assert!(!call("sip:4930123@example.net"), "no route yet: the dead trunk gets it");
    let (code, b) = http(admin, "POST", "/api/v1/routes", t, Some("{\"name\":\"germany\",\"prefix\":\"49\",\"upstream\":\"live\"}"));
    assert_eq!(code, 201, "{b}");
    assert_eq!(http(admin, "POST", "/api/v1/routes", t, Some("{\"name\":\"x\",\"upstream\":\"nowhere\"}")).0, 409);
    assert_eq!(http(admin, "POST", "/api/v1/routes", t, Some("{\"name\":\"germany\",\"upstream\":\"live\"}")).0, 409);
    assert_eq!(http(admin, "POST", "/api/v1/routes", t, Some("{\"name\":\"y\",\"prefix\":\"4 9\",\"upstream\":\"live\"}")).0, 400);
    assert!(call("sip:4930123@example.net"), "the route sends 49... to the live trunk");
    assert!(!call("sip:3312345@example.net"), "other numbers still go to the preferred trunk");
    assert_eq!(http(admin, "PUT", "/api/v1/routes/germany", t, Some("{\"prefix\":\"33\",\"upstream\":\"live\"}")).0, 200);
    assert!(call("sip:3312345@example.net"));
    assert_eq!(json(&http(admin, "GET", "/api/v1/routes", t, None).1)[0]["prefix"], "33");
    assert_eq!(http(admin, "DELETE", "/api/v1/routes/germany", t, None).0, 204);
    assert_eq!(http(admin, "GET", "/api/v1/routes/germany", t, None).0, 404);
    assert!(!call("sip:3312345@example.net"));
}

#[test]
fn calls_fail_over_to_the_second_target_when_the_first_dies() {
    let (p1, p2) = (free_port(), free_port());
    let extra = format!("[[upstream]]\nuri = \"sip:127.0.0.1:{p1}\"\ntargets = [\"sip:127.0.0.1:{p2}\"]\ninvite_timeout_ms = 1000\n");
    let edge = Edge::start(&extra, &[]);
    let mut primary = Answer::start(&["--listen", &format!("127.0.0.1:{p1}")]);
    let _secondary = Answer::start(&["--listen", &format!("127.0.0.1:{p2}")]);
    let dir = tempfile::tempdir().unwrap();
    let rj = dir.path().join("r.json");
    let target = format!("sip:{}", edge.udp);
    let rj2 = rj.clone();
    let calls = std::thread::spawn(move || {
        run(
            &[
                "call",
                "--target",
                &target,
                "--to",
                "sip:42@example.net",
                "--rate",
                "20",
                "--calls",
                "120",
                "--hold-ms",
                "20",
                "--timeout-ms",
                "4000",
                "--quiet",
                "--report-json",
                rj2.to_str().unwrap(),
            ],
            Duration::from_secs(90),
        )
    });
    std::thread::sleep(Duration::from_millis(2000));
    let _ = primary.0.kill();
    let _ = primary.0.wait();
    let _ = calls.join().unwrap();
    let r = e2e_tests::json(&rj);
    let ok = r["calls_succeeded"].as_u64().unwrap();
    // Only calls in the middle of their 20 ms hold on the primary at the kill can fail
    // (their BYE has nowhere to go); every later call is retried on the secondary.
    assert!(ok >= 116, "{r}");
    let log = edge.log();
    assert_eq!(log.matches("upstream target down").count(), 1, "the failure is logged once: {log}");
    // The admin API shows the primary target skipped, the secondary usable.
    let tok = token(&edge);
    let (_, ups) = http(edge.admin.unwrap(), "GET", "/api/v1/upstreams", Some(&tok), None);
    let t = &json(&ups)[0]["targets"];
    assert_eq!(t[0]["target"], format!("udp 127.0.0.1:{p1}").as_str(), "{ups}");
    assert_eq!(t[0]["usable"], false, "{ups}");
    assert!(t[0]["blocked_for_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(t[1]["usable"], true);
}
