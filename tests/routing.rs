//! RFC 3263 routing against a real DNS server: dnsmasq on loopback serves NAPTR, SRV and A
//! records for `trunk.test` with two gateways (two `loadgen answer` on different ports).
//! Weighted SRV split, fail-over when the primary dies, recovery after good OPTIONS
//! probes, 503 + Retry-After, the cache outliving a dead DNS server until the TTL, and no
//! DNS query per call.
#![allow(clippy::disallowed_methods)]

use e2e_tests::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A dnsmasq instance on 127.0.0.1:`port` (killed on drop), logging its queries.
struct Dns {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dns {
    /// Serves `trunk.test`: NAPTR -> `_sip._udp.trunk.test` SRV with the given
    /// (port, priority, weight) gateways, all on 127.0.0.1, records with `ttl` seconds.
    fn start(gws: &[(u16, u16, u16)], ttl: u32) -> Dns {
        let found = Command::new("sh").args(["-c", "command -v dnsmasq"]).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        assert!(found, "dnsmasq missing: run scripts/setup.sh");
        let dir = tempfile::tempdir().unwrap();
        let mut conf = String::from("naptr-record=trunk.test,10,10,S,SIP+D2U,,_sip._udp.trunk.test\n");
        for (i, (port, prio, weight)) in gws.iter().enumerate() {
            conf +=
                &format!("srv-host=_sip._udp.trunk.test,gw{i}.trunk.test,{port},{prio},{weight}\nhost-record=gw{i}.trunk.test,127.0.0.1\n");
        }
        std::fs::write(dir.path().join("dnsmasq.conf"), conf).unwrap();
        let port = free_port();
        let log = dir.path().join("queries.log");
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--user=root",
                "--log-queries",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--conf-file={}", dir.path().join("dnsmasq.conf").display()))
            .arg(format!("--local-ttl={ttl}"))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        assert!(
            wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("started"))),
            "dnsmasq did not start"
        );
        Dns { child, port, log, _dir: dir }
    }

    /// Queries answered so far.
    fn queries(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches(": query[").count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An edge whose preferred trunk is `sip:trunk.test`, resolved through `dns`.
fn edge_for(dns: &Dns, trunk_extra: &str) -> Edge {
    Edge::start(
        &format!(
            "[dns]\nservers = [\"127.0.0.1:{}\"]\ntimeout_ms = 500\nmin_ttl_secs = 1\n[[upstream]]\nname = \"trunk\"\nuri = \"sip:trunk.test\"\n{trunk_extra}\n",
            dns.port
        ),
        &[],
    )
}

/// `loadgen answer` on `port` writing its report to `dir`; `stop` ends it (SIGINT) and
/// returns the calls it handled.
struct Gateway {
    a: Option<Answer>,
    report: PathBuf,
}

impl Gateway {
    fn start(port: u16, dir: &Path, extra: &[&str]) -> Gateway {
        let report = dir.join(format!("gw{port}-{}.json", rand_suffix()));
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["--listen", &addr, "--report-json", report.to_str().unwrap()];
        args.extend_from_slice(extra);
        Gateway { a: Some(Answer::start(&args)), report }
    }

    /// Stops it cleanly; the number of calls it answered (or rejected).
    fn stop(&mut self) -> u64 {
        let Some(a) = self.a.take() else { return 0 };
        let pid = a.0.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        assert!(wait_until(Duration::from_secs(10), || self.report.exists()), "no report from the gateway");
        std::thread::sleep(Duration::from_millis(100));
        json(&self.report)["calls_attempted"].as_u64().unwrap_or(0)
    }

    /// Kills it at once (a crashed gateway).
    fn kill(&mut self) {
        if let Some(mut a) = self.a.take() {
            let _ = a.0.kill();
            let _ = a.0.wait();
        }
    }
}

/// A number unique in this process (report file names).
fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn calls(edge: &Edge, n: u32, rate: u32, dir: &Path) -> serde_json::Value {
    let rj = dir.join(format!("calls-{}.json", rand_suffix()));
    let o = run(
        &[
            "call",
            "--target",
            &format!("sip:{}", edge.udp),
            "--to",
            "sip:5551234@example.net",
            "--calls",
            &n.to_string(),
            "--rate",
            &rate.to_string(),
            "--hold-ms",
            "20",
            "--timeout-ms",
            "5000",
            "--quiet",
            "--report-json",
            rj.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert!(rj.exists(), "no call report: {}", text(&o));
    json(&rj)
}

fn api(edge: &Edge, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let tok = std::fs::read_to_string(edge.dir.path().join("data").join("admin.token")).unwrap();
    let addr: SocketAddr = edge.admin.unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", tok.trim()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    serde_json::from_str(out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("null")).unwrap_or(serde_json::Value::Null)
}

/// `usable` of the target on `port`, from the admin API.
fn usable(edge: &Edge, port: u16) -> Option<bool> {
    let v = api(edge, "/api/v1/upstreams/trunk");
    v["targets"].as_array()?.iter().find(|t| t["target"] == format!("udp 127.0.0.1:{port}").as_str()).and_then(|t| t["usable"].as_bool())
}

#[test]
fn srv_weights_80_20_split_1000_calls_without_a_dns_query_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let dns = Dns::start(&[(p1, 10, 80), (p2, 10, 20)], 300);
    let mut g1 = Gateway::start(p1, dir.path(), &[]);
    let mut g2 = Gateway::start(p2, dir.path(), &[]);
    let edge = edge_for(&dns, "");
    assert!(wait_until(Duration::from_secs(5), || edge.log().contains("trunk host resolved")), "{}", edge.log());
    let before = dns.queries();
    let r = calls(&edge, 1000, 250, dir.path());
    let after = dns.queries();
    assert_eq!(r["calls_succeeded"].as_u64(), Some(1000), "{r}");
    let (n1, n2) = (g1.stop(), g2.stop());
    assert_eq!(n1 + n2, 1000);
    let share = n1 as f64 / 1000.0;
    assert!((0.75..=0.85).contains(&share), "80/20 weights: {n1} / {n2}");
    assert_eq!(after, before, "no DNS query for 1000 calls while the records are valid");
    let m = http_get(edge.admin.unwrap(), "/metrics");
    assert!(metric(&m, "edge_dns_queries_total") >= 3.0, "NAPTR, SRV and A were counted");
}

#[test]
fn a_dead_primary_is_skipped_and_comes_back_after_good_probes() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let dns = Dns::start(&[(p1, 10, 100), (p2, 20, 100)], 300);
    let mut g1 = Gateway::start(p1, dir.path(), &[]);
    let mut g2 = Gateway::start(p2, dir.path(), &[]);
    let edge = edge_for(
        &dns,
        "invite_timeout_ms = 500\nfailover_block_secs = 60\nprobe_interval_ms = 300\nprobe_timeout_ms = 300\nprobe_down_after = 2\nprobe_up_after = 3\n",
    );
    assert!(wait_until(Duration::from_secs(5), || usable(&edge, p1) == Some(true) && usable(&edge, p2) == Some(true)));
    // 150 calls at 25/s; the primary dies after 2 s.
    let d = dir.path().to_path_buf();
    let e_udp = edge.udp;
    let runner = std::thread::spawn(move || {
        let rj = d.join("run.json");
        run(
            &[
                "call",
                "--target",
                &format!("sip:{e_udp}"),
                "--to",
                "sip:5551234@example.net",
                "--calls",
                "150",
                "--rate",
                "25",
                "--hold-ms",
                "20",
                "--timeout-ms",
                "5000",
                "--quiet",
                "--report-json",
                rj.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        );
        json(&rj)
    });
    std::thread::sleep(Duration::from_secs(2));
    g1.kill();
    let killed = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || usable(&edge, p1) == Some(false)), "the dead primary is marked down");
    let detected = killed.elapsed();
    let r = runner.join().unwrap();
    // Only calls in their 20 ms hold on the primary at the kill can fail (their BYE has
    // nowhere to go); calls without a provisional response are retried on the secondary.
    assert!(r["calls_succeeded"].as_u64().unwrap() >= 147, "{r}\n{}", edge.log());
    assert!(detected <= Duration::from_millis(1500), "detected after {detected:?}");
    // (6) Only the dead target is marked: the secondary stays usable.
    assert_eq!(usable(&edge, p2), Some(true));
    let log = edge.log();
    assert_eq!(log.matches("upstream target down").count(), 1, "one log line per state change: {log}");
    // The primary comes back: usable again after 3 good probes (long before its 60 s block).
    let mut g1 = Gateway::start(p1, dir.path(), &[]);
    let back = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || usable(&edge, p1) == Some(true)), "back after good probes");
    assert!(back.elapsed() >= Duration::from_millis(600), "not before 3 probes");
    assert!(edge.log().contains("upstream target up again"));
    let r = calls(&edge, 20, 20, dir.path());
    assert_eq!(r["calls_succeeded"].as_u64(), Some(20), "{r}");
    assert_eq!(g1.stop(), 20, "the primary takes the traffic again");
    g2.stop();
}

#[test]
fn an_icmp_port_unreachable_from_the_primary_fails_over_without_waiting_for_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the primary's port: the kernel answers with ICMP port unreachable.
    let (p1, p2) = (free_port(), free_port());
    let dns = Dns::start(&[(p1, 10, 100), (p2, 20, 100)], 300);
    let mut g2 = Gateway::start(p2, dir.path(), &[]);
    // An INVITE timeout far beyond the callers' 5 s: only the ICMP error can move these calls.
    let edge = edge_for(&dns, "invite_timeout_ms = 30000\nfailover_block_secs = 60\n");
    assert!(wait_until(Duration::from_secs(5), || edge.log().contains("trunk host resolved")), "{}", edge.log());
    let r = calls(&edge, 10, 10, dir.path());
    assert_eq!(r["calls_succeeded"].as_u64(), Some(10), "{r}\n{}", edge.log());
    assert_eq!(usable(&edge, p1), Some(false), "the unreachable primary is skipped");
    assert_eq!(usable(&edge, p2), Some(true));
    assert_eq!(g2.stop(), 10);
}

#[test]
fn a_503_with_retry_after_skips_the_primary_for_that_time() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let dns = Dns::start(&[(p1, 10, 100), (p2, 20, 100)], 300);
    let mut g1 = Gateway::start(p1, dir.path(), &["--reject-pct", "100", "--reject-code", "503", "--retry-after", "4"]);
    let mut g2 = Gateway::start(p2, dir.path(), &[]);
    let edge = edge_for(&dns, "");
    assert!(wait_until(Duration::from_secs(5), || usable(&edge, p1) == Some(true)));
    let t0 = Instant::now();
    let r = calls(&edge, 20, 10, dir.path());
    assert_eq!(r["calls_succeeded"].as_u64(), Some(20), "the secondary takes every call at once: {r}");
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert_eq!(usable(&edge, p1), Some(false), "skipped for Retry-After");
    // After the 4 s the primary is tried again (and answers 503 again).
    assert!(wait_until(Duration::from_secs(6), || usable(&edge, p1) == Some(true)));
    assert_eq!(calls(&edge, 1, 1, dir.path())["calls_succeeded"].as_u64(), Some(1));
    assert_eq!(g1.stop(), 2, "one call before the block, one after");
    assert_eq!(g2.stop(), 21);
}

#[test]
fn with_dns_down_cached_records_work_until_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = free_port();
    let mut dns = Dns::start(&[(p1, 10, 100)], 6);
    let mut g1 = Gateway::start(p1, dir.path(), &[]);
    let edge = edge_for(&dns, "");
    assert!(wait_until(Duration::from_secs(5), || edge.log().contains("trunk host resolved")));
    let resolved = Instant::now();
    dns.stop();
    // Within the TTL: calls keep working; the refresh fails and the log says why, once.
    assert_eq!(calls(&edge, 10, 10, dir.path())["calls_succeeded"].as_u64(), Some(10));
    assert!(
        wait_until(Duration::from_secs(6), || edge.log().contains("DNS lookup failed: using the cached records until their TTL runs out")),
        "{}",
        edge.log()
    );
    if resolved.elapsed() < Duration::from_secs(5) {
        assert_eq!(calls(&edge, 2, 10, dir.path())["calls_succeeded"].as_u64(), Some(2), "still within the TTL");
    }
    // After the TTL: no records, calls get 503, and the log says so.
    assert!(wait_until(Duration::from_secs(8), || edge.log().contains("cached DNS records expired")), "{}", edge.log());
    let r = calls(&edge, 2, 10, dir.path());
    assert_eq!(r["calls_succeeded"].as_u64(), Some(0), "{r}");
    assert_eq!(edge.log().matches("using the cached records").count(), 1, "logged once");
    assert!(g1.stop() >= 10);
}

/// A self-signed certificate for `names` (DNS names or addresses) written to `dir`.
fn cert(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let (c, k) = (dir.join(format!("{tag}.crt")), dir.join(format!("{tag}.key")));
    std::fs::write(&c, ck.cert.pem()).unwrap();
    std::fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
    (c, k)
}

#[test]
fn trunks_over_tls_are_verified_and_a_tls_failure_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    // The primary's certificate is not one the edge trusts; the secondary's is (ca_file).
    let (bad_c, bad_k) = cert(dir.path(), "bad", &["127.0.0.1"]);
    let (good_c, good_k) = cert(dir.path(), "good", &["127.0.0.1"]);
    let tls_args = |c: &Path, k: &Path| {
        ["--transport".to_string(), "tls".into(), "--cert".into(), c.display().to_string(), "--key".into(), k.display().to_string()]
    };
    let a1 = tls_args(&bad_c, &bad_k);
    let a2 = tls_args(&good_c, &good_k);
    let mut g1 = Gateway::start(p1, dir.path(), &a1.iter().map(String::as_str).collect::<Vec<_>>());
    let mut g2 = Gateway::start(p2, dir.path(), &a2.iter().map(String::as_str).collect::<Vec<_>>());
    let edge = Edge::start(
        &format!(
            "[tls]\nca_file = \"{}\"\n[[upstream]]\nname = \"trunk\"\nuri = \"sip:127.0.0.1:{p1};transport=tls\"\ntargets = [\"sip:127.0.0.1:{p2};transport=tls\"]\nselection = \"priority\"\n",
            good_c.display()
        ),
        &[],
    );
    let r = calls(&edge, 10, 10, dir.path());
    assert_eq!(r["calls_succeeded"].as_u64(), Some(10), "{r}\n{}", edge.log());
    let log = edge.log();
    assert!(log.contains("TLS connection failed") && log.contains("TLS handshake"), "{log}");
    assert_eq!(usable(&edge, p1), None, "targets are listed by transport");
    let v = api(&edge, "/api/v1/upstreams/trunk");
    let t = v["targets"].as_array().unwrap();
    assert_eq!(t[0]["target"], format!("tls 127.0.0.1:{p1}").as_str());
    assert_eq!(t[0]["usable"], false, "the target whose certificate failed is skipped: {v}");
    assert_eq!(t[1]["usable"], true);
    assert_eq!(g1.stop(), 0, "no call reached the untrusted gateway");
    assert_eq!(g2.stop(), 10, "every call went over verified TLS to the secondary");
}

#[test]
fn invalid_routes_and_trunks_are_refused_by_check_config_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        let o = Command::new(edge_bin()).args(["check-config", p.to_str().unwrap()]).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let trunk = "[[upstream]]\nname = \"carrier\"\nuri = \"sip:gw.carrier.test\"\n";
    let (code, err) = check(&format!("{trunk}[[route]]\nname = \"uk\"\nregex = \"^(44\"\nupstream = \"carrier\"\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("line 5") && err.contains("\"uk\"") && err.contains("regex"), "{err}");
    let (code, err) = check(&format!("{trunk}[[route]]\nname = \"fr\"\nprefix = \"33\"\nupstream = \"nowhere\"\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("\"fr\"") && err.contains("unknown upstream") && err.contains("nowhere"), "{err}");
    let (code, err) = check("[[upstream]]\nname = \"bad\"\nuri = \"sip:gw.test\"\ntargets = [\"sip:gw2.test\"]\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("\"bad\"") && err.contains("gw2.test") && err.contains("IP address"), "{err}");
    let (code, out) = check(&format!(
        "{trunk}[[route]]\nname = \"de\"\nprefix = \"0\"\nupstream = \"carrier\"\nconvert = [{{ prefix = \"0\", digits = 10, to = \"+49\" }}]\n"
    ));
    assert_eq!(code, Some(0), "{out}");

    // The admin API: refused with a message naming the route or trunk; nothing changes.
    use std::io::{Read, Write};
    let edge = Edge::start(trunk, &[]);
    let tok = std::fs::read_to_string(edge.dir.path().join("data").join("admin.token")).unwrap();
    let send = |method: &str, path: &str, body: &str| -> (u16, String) {
        let mut s = std::net::TcpStream::connect(edge.admin.unwrap()).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            tok.trim(),
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
    };
    let (code, out) = send("POST", "/api/v1/routes", r#"{"name":"uk","regex":"^(44","upstream":"carrier"}"#);
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("uk") && out.contains("regex"), "{out}");
    let (code, out) = send("POST", "/api/v1/routes", r#"{"name":"fr","prefix":"33","upstream":"nowhere"}"#);
    assert_eq!(code, 409, "{out}");
    assert!(out.contains("nowhere"), "{out}");
    let (code, out) = send("POST", "/api/v1/upstreams", r#"{"name":"t2","uri":"sip:gw..test"}"#);
    assert_eq!(code, 400, "{out}");
    let (code, out) = send("POST", "/api/v1/routes", r#"{"name":"ok","prefix":"33","upstream":"carrier","weights":[1,2]}"#);
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("weights"), "{out}");
    assert_eq!(api(&edge, "/api/v1/routes"), serde_json::json!([]), "nothing was stored");
    assert_eq!(api(&edge, "/api/v1/upstreams").as_array().map(|a| a.len()), Some(1));
}
