//! Crash safety: the edge is killed with SIGKILL while registrations and calls are under
//! way, then started again on the same data directory. Every binding acknowledged with
//! 200 before the kill is back (and reachable: an INVITE to the user arrives at its
//! contact), and every call that finished before the kill has its call record.

#![allow(clippy::disallowed_methods)]

use e2e_tests::{Answer, Edge, all_headers, free_port, header, json, register_udp, run, status};
use edge::store::{CallQuery, SqliteStore, Store};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USERS: usize = 2000;

fn recv(s: &UdpSocket, limit: Duration) -> Option<String> {
    let _ = s.set_read_timeout(Some(limit));
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s.recv(&mut buf).ok()?;
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        if status(&m) != Some(100) {
            return Some(m);
        }
    }
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_binding_or_finished_call() {
    let uas = free_port();
    let users: String = (0..USERS).map(|i| format!("[[user]]\nname = \"p{i}\"\npassword = \"pw{i}\"\n")).collect();
    let edge = Edge::start(&users, &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    let _answer = Answer::start(&["--listen", &format!("127.0.0.1:{uas}")]);
    let edge_udp = edge.udp;
    // Registrations: one socket, users one after the other, until the edge stops answering.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let reg = {
        let (acked, stop, sock) = (acked.clone(), stop.clone(), sock.clone());
        std::thread::spawn(move || {
            for i in 0..USERS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let user = format!("p{i}");
                match register_udp(&sock, edge_udp, &user, &format!("pw{i}"), 3600) {
                    Some(200) => acked.lock().unwrap().push(user),
                    _ => break,
                }
                // A steady registration rate, so the kill lands in the middle.
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // Calls through the edge at the same time (short calls: many finish before the kill).
    let dir = tempfile::tempdir().unwrap();
    let rj = dir.path().join("calls.json");
    let target = format!("sip:{}", edge.udp);
    let rj2 = rj.clone();
    let calls = std::thread::spawn(move || {
        run(
            &[
                "call",
                "--target",
                &target,
                "--to",
                "sip:svc@example.net",
                "--rate",
                "40",
                "--calls",
                "400",
                "--hold-ms",
                "200",
                "--timeout-ms",
                "2000",
                "--max-time-s",
                "30",
                "--quiet",
                "--report-json",
                rj2.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        )
    });
    std::thread::sleep(Duration::from_millis(2500));
    let data = edge.kill9();
    stop.store(true, Ordering::Relaxed);
    reg.join().unwrap();
    let _ = calls.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let r = json(&rj);
    let finished = r["calls_succeeded"].as_u64().unwrap();
    assert!(acked.len() >= 20 && acked.len() < USERS, "the kill happened during the registrations: {} acked", acked.len());
    assert!(finished >= 10 && r["calls_failed"].as_u64().unwrap() > 0, "the kill happened during the calls: {r}");

    let edge = Edge::restart(data, &["--upstream", &format!("sip:127.0.0.1:{uas}")]);
    assert!(edge.restored >= acked.len(), "restored {} bindings, {} were acknowledged", edge.restored, acked.len());
    // Every acknowledged user is reachable at its contact.
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = caller.local_addr().unwrap();
    let mut reached = 0;
    for user in &acked {
        let inv = format!(
            "INVITE sip:{user}@edge.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKi{user};rport\r\nMax-Forwards: 70\r\nFrom: <sip:x@example.org>;tag=x\r\nTo: <sip:{user}@edge.test>\r\nCall-ID: after-{user}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{me}>\r\nContent-Length: 0\r\n\r\n"
        );
        caller.send_to(inv.as_bytes(), edge.udp).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let Some(m) = recv(&sock, Duration::from_millis(500)) else { continue };
            if m.starts_with(&format!("INVITE sip:{user}@")) {
                reached += 1;
                // Decline, so the edge's transaction ends.
                let resp = format!(
                    "SIP/2.0 486 Busy Here\r\n{}\r\nFrom: {}\r\nTo: {};tag=b\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
                    all_headers(&m, "Via").iter().map(|v| format!("Via: {v}")).collect::<Vec<_>>().join("\r\n"),
                    header(&m, "From").unwrap(),
                    header(&m, "To").unwrap(),
                    header(&m, "Call-ID").unwrap()
                );
                sock.send_to(resp.as_bytes(), edge.udp).unwrap();
                break;
            }
        }
    }
    assert_eq!(reached, acked.len(), "every acknowledged binding routes calls after the restart");
    // Every finished call has its record (read from the store the edge wrote).
    let store = SqliteStore::open(&edge.dir.path().join("data").join("edge.db")).unwrap();
    let records = store.call_records(&CallQuery { limit: 10_000, ..Default::default() }).unwrap();
    let ended_ok = records.iter().filter(|v| v["reason"] == "bye_from_caller").count() as u64;
    eprintln!("acked {} restored {} reached {reached}; calls finished {finished}, records {ended_ok}", acked.len(), edge.restored);
    assert!(ended_ok >= finished, "{ended_ok} call records with a BYE, {finished} calls finished before the kill");
}
