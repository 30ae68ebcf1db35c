//! sipp against the running `edge` binary, over UDP and over TCP:
//! (a) 1000 calls uac -> edge -> uas, (b) REGISTER with digest then a call to that AOR,
//! (c) CANCEL after 180 gives 487, (d) a call forks to three contacts, the first answer
//! wins and the other two are cancelled with a Reason (RFC 3326).

use e2e_tests::{Edge, Sipp, free_port, lines, require_sipp, scenario, wait_until};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy)]
enum T {
    Udp,
    Tcp,
}

impl T {
    fn sipp(self) -> &'static str {
        match self {
            T::Udp => "u1",
            T::Tcp => "t1",
        }
    }
    fn uri_param(self) -> &'static str {
        match self {
            T::Udp => "",
            T::Tcp => ";transport=tcp",
        }
    }
    fn edge_addr(self, e: &Edge) -> String {
        match self {
            T::Udp => e.udp.to_string(),
            T::Tcp => e.tcp.to_string(),
        }
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn sipp_args(scen: &str, remote: Option<&str>, port: u16, t: T, extra: &[&str]) -> Vec<String> {
    let mut a = s(&["-sf", &scenario(scen)]);
    if let Some(r) = remote {
        a.push(r.to_string());
    }
    a.extend(s(&["-i", "127.0.0.1", "-p", &port.to_string(), "-t", t.sipp(), "-timeout", "120s"]));
    a.extend(s(extra));
    a
}

fn calls_through_edge(t: T) {
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{uas_port}{}", t.uri_param())]);
    let mut uas = Sipp::spawn("uas", dir.path(), &sipp_args("uas_load.xml", None, uas_port, t, &["-m", "1000"]));
    std::thread::sleep(Duration::from_millis(300));
    let target = t.edge_addr(&edge);
    let mut uac = Sipp::spawn(
        "uac",
        dir.path(),
        &sipp_args("uac_call.xml", Some(&target), free_port(), t, &["-r", "200", "-m", "1000", "-l", "400"]),
    );
    let code = uac.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "uac failed:\n{}\nedge log:\n{}", uac.output(), edge.log());
    assert_eq!(uas.wait(Duration::from_secs(20)), Some(0), "uas failed:\n{}", uas.output());
}

#[test]
fn a_1000_calls_udp() {
    calls_through_edge(T::Udp);
}

#[test]
fn a_1000_calls_tcp() {
    calls_through_edge(T::Tcp);
}

/// Starts a sipp that registers `alice` with digest and answers calls with `ooc`.
fn registered_callee(dir: &Path, name: &str, edge: &Edge, t: T, ooc: &str) -> Sipp {
    let target = t.edge_addr(edge);
    let reg = dir.join(format!("{name}.registered"));
    let answered = dir.join(format!("{name}.answered"));
    let reasons = dir.join(format!("{name}.reasons"));
    let (reg, answered, reasons) = (reg.display().to_string(), answered.display().to_string(), reasons.display().to_string());
    let ooc = scenario(ooc);
    let extra = [
        "-oocsf",
        ooc.as_str(),
        "-m",
        "1",
        "-key",
        "user",
        "alice",
        "-au",
        "alice",
        "-ap",
        "secret",
        "-key",
        "registered",
        reg.as_str(),
        "-key",
        "answered",
        answered.as_str(),
        "-key",
        "reasons",
        reasons.as_str(),
        "-aa",
    ];
    let sp = Sipp::spawn(name, dir, &sipp_args("register.xml", Some(&target), free_port(), t, &extra));
    let regp = dir.join(format!("{name}.registered"));
    assert!(
        wait_until(Duration::from_secs(15), || !lines(&regp).is_empty()),
        "{name} did not register:\n{}\nedge log:\n{}",
        sp.output(),
        edge.log()
    );
    sp
}

/// sipp answers only the first challenge and knows only MD5: MD5 first (also the default).
const ALICE: &str = "[auth]\nalgorithms = [\"MD5\", \"SHA-256\"]\n[[user]]\nname = \"alice\"\npassword = \"secret\"\n";

fn register_then_call(t: T) {
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(ALICE, &[]);
    let _alice = registered_callee(dir.path(), "alice", &edge, t, "uas_answer.xml");
    let target = t.edge_addr(&edge);
    let mut caller =
        Sipp::spawn("bob", dir.path(), &sipp_args("uac_call_local.xml", Some(&target), free_port(), t, &["-s", "alice", "-m", "1"]));
    assert_eq!(caller.wait(Duration::from_secs(60)), Some(0), "call to alice failed:\n{}\nedge log:\n{}", caller.output(), edge.log());
    let answered = dir.path().join("alice.answered");
    assert!(wait_until(Duration::from_secs(5), || lines(&answered).len() == 1), "alice did not answer the call");
}

#[test]
fn b_register_with_digest_then_call_udp() {
    register_then_call(T::Udp);
}

#[test]
fn b_register_with_digest_then_call_tcp() {
    register_then_call(T::Tcp);
}

fn cancel_after_ringing(t: T) {
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_port();
    let edge = Edge::start("", &["--upstream", &format!("sip:127.0.0.1:{uas_port}{}", t.uri_param())]);
    let reasons = dir.path().join("uas.reasons").display().to_string();
    let mut uas =
        Sipp::spawn("uas", dir.path(), &sipp_args("uas_ring_cancel.xml", None, uas_port, t, &["-m", "1", "-key", "reasons", &reasons]));
    std::thread::sleep(Duration::from_millis(300));
    let target = t.edge_addr(&edge);
    let mut uac = Sipp::spawn("uac", dir.path(), &sipp_args("uac_cancel.xml", Some(&target), free_port(), t, &["-m", "1"]));
    assert_eq!(
        uac.wait(Duration::from_secs(60)),
        Some(0),
        "caller did not get 200 (CANCEL) and 487:\n{}\nedge log:\n{}",
        uac.output(),
        edge.log()
    );
    assert_eq!(uas.wait(Duration::from_secs(20)), Some(0), "callee did not see CANCEL/ACK:\n{}", uas.output());
}

#[test]
fn c_cancel_after_180_gives_487_udp() {
    cancel_after_ringing(T::Udp);
}

#[test]
fn c_cancel_after_180_gives_487_tcp() {
    cancel_after_ringing(T::Tcp);
}

fn forking(t: T) {
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(ALICE, &[]);
    let _r1 = registered_callee(dir.path(), "ringer1", &edge, t, "uas_ring_cancel.xml");
    let _r2 = registered_callee(dir.path(), "ringer2", &edge, t, "uas_ring_cancel.xml");
    let _w = registered_callee(dir.path(), "winner", &edge, t, "uas_answer.xml");
    let target = t.edge_addr(&edge);
    let mut caller =
        Sipp::spawn("bob", dir.path(), &sipp_args("uac_call_local.xml", Some(&target), free_port(), t, &["-s", "alice", "-m", "1"]));
    assert_eq!(caller.wait(Duration::from_secs(60)), Some(0), "forked call failed:\n{}\nedge log:\n{}", caller.output(), edge.log());
    let answered = dir.path().join("winner.answered");
    assert!(wait_until(Duration::from_secs(5), || lines(&answered).len() == 1), "winner did not answer");
    for r in ["ringer1", "ringer2"] {
        let p = dir.path().join(format!("{r}.reasons"));
        assert!(wait_until(Duration::from_secs(10), || lines(&p).len() == 1), "{r} was not cancelled; edge log:\n{}", edge.log());
        let l = lines(&p);
        assert!(l[0].contains("cause=200") && l[0].contains("Call completed elsewhere"), "{r}: CANCEL without RFC 3326 Reason: {l:?}");
    }
}

#[test]
fn d_fork_to_three_contacts_first_answer_wins_udp() {
    forking(T::Udp);
}

#[test]
fn d_fork_to_three_contacts_first_answer_wins_tcp() {
    forking(T::Tcp);
}

#[test]
fn fourth_contact_is_refused_by_default() {
    // max_contacts = 3, on_max_contacts = "reject": a fourth device gets 403 and no binding.
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(ALICE, &[]);
    let _a = registered_callee(dir.path(), "d1", &edge, T::Udp, "uas_answer.xml");
    let _b = registered_callee(dir.path(), "d2", &edge, T::Udp, "uas_answer.xml");
    let _c = registered_callee(dir.path(), "d3", &edge, T::Udp, "uas_answer.xml");
    let target = edge.udp.to_string();
    let reg = dir.path().join("d4.registered").display().to_string();
    let mut d4 = Sipp::spawn(
        "d4",
        dir.path(),
        &sipp_args(
            "register.xml",
            Some(&target),
            free_port(),
            T::Udp,
            &["-m", "1", "-key", "user", "alice", "-au", "alice", "-ap", "secret", "-key", "registered", &reg],
        ),
    );
    let code = d4.wait(Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(lines(Path::new(&reg)).is_empty());
    assert!(d4.output().contains("403"), "expected a 403 for the fourth contact:\n{}", d4.output());
}

/// A trunk that wants digest (sipp checks the credentials with its own verifyauth): the
/// edge answers the 401 with the trunk's credentials and the next CSeq, and the rest of the
/// dialog keeps CSeqs consistent on both sides (caller: 1/1/2, trunk: 2/2/3).
#[test]
fn trunk_digest_challenge_is_answered_for_the_caller() {
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_port();
    let edge = Edge::start(
        &format!("[[upstream]]\nuri = \"sip:127.0.0.1:{uas_port}\"\nauth_user = \"edge-acct\"\nauth_password = \"s3cret\"\n"),
        &[],
    );
    let verified = dir.path().join("uas.verified").display().to_string();
    let mut uas =
        Sipp::spawn("uas", dir.path(), &sipp_args("uas_auth.xml", None, uas_port, T::Udp, &["-m", "1", "-key", "verified", &verified]));
    std::thread::sleep(Duration::from_millis(300));
    let target = T::Udp.edge_addr(&edge);
    let mut uac = Sipp::spawn("uac", dir.path(), &sipp_args("uac_call.xml", Some(&target), free_port(), T::Udp, &["-m", "1"]));
    let code = uac.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "caller:\n{}\ntrunk:\n{}\nedge log:\n{}", uac.output(), uas.output(), edge.log());
    assert_eq!(uas.wait(Duration::from_secs(30)), Some(0), "trunk:\n{}\nedge log:\n{}", uas.output(), edge.log());
    assert_eq!(lines(Path::new(&verified)).len(), 1, "sipp verified the credentials and the CSeqs");
}
