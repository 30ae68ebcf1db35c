//! Shared support for the end-to-end tests: start the real `edge` binary on loopback
//! with ephemeral ports, run sipp with bounded counts and time, small SIP helpers.

#![allow(clippy::disallowed_methods)] // tests read the real clock to bound waits

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Path of the `edge` binary built by `cargo build -p edge` (scripts/test.sh does it).
pub fn edge_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let p = target.join("debug").join("edge");
    assert!(p.exists(), "{} is missing: build it first with `cargo build -p edge` (scripts/test.sh does)", p.display());
    p
}

/// Path of the `loadgen` binary built by `cargo build -p loadgen` (scripts/test.sh does).
pub fn loadgen_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let p = target.join("debug").join("loadgen");
    assert!(p.exists(), "{} is missing: build it first with `cargo build -p loadgen` (scripts/test.sh does)", p.display());
    p
}

/// A scenario file kept in tests/scenarios.
pub fn scenario(name: &str) -> String {
    root().join("tests").join("scenarios").join(name).display().to_string()
}

/// A port free for both UDP and TCP on 127.0.0.1.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(u) = UdpSocket::bind("127.0.0.1:0") else { continue };
        let Ok(a) = u.local_addr() else { continue };
        if TcpListener::bind(a).is_ok() {
            return a.port();
        }
    }
    panic!("no free port");
}

/// A running edge process; killed on drop.
pub struct Edge {
    child: Child,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    /// The admin HTTP listener (Prometheus `/metrics`), when configured.
    pub admin: Option<SocketAddr>,
    /// Bindings the edge restored from its store at start.
    pub restored: usize,
    pub dir: tempfile::TempDir,
}

impl Edge {
    /// Starts the edge for domain `edge.test` with every listener on 127.0.0.1 and an
    /// ephemeral port. `extra` is appended to the generated TOML; `args` go to `edge run`.
    pub fn start(extra: &str, args: &[&str]) -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = format!(
            "data_dir = \"{}\"\nlog = \"info\"\n[sip]\ndomain = \"edge.test\"\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\ntls = [\"127.0.0.1:0\"]\nws = [\"127.0.0.1:0\"]\nwss = [\"127.0.0.1:0\"]\nworkers = 2\n{extra}\n{admin}",
            dir.path().join("data").display(),
            admin = if extra.contains("[admin]") { "" } else { "[admin]\nlisten = [\"127.0.0.1:0\"]\n" },
        );
        let cfg_path = dir.path().join("edge.toml");
        std::fs::write(&cfg_path, cfg).expect("write config");
        Edge::spawn_in(dir, args)
    }

    /// Kills the edge with SIGKILL (no shutdown of any kind) and keeps its directory.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Starts an edge again on the configuration and data of an earlier one.
    pub fn restart(dir: tempfile::TempDir, args: &[&str]) -> Edge {
        Edge::spawn_in(dir, args)
    }

    fn spawn_in(dir: tempfile::TempDir, args: &[&str]) -> Edge {
        let cfg_path = dir.path().join("edge.toml");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("edge.log")).expect("log file");
        let mut child = Command::new(edge_bin())
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn edge");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addrs = std::collections::HashMap::new();
        let mut restored = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("edge did not start: {}", std::fs::read_to_string(dir.path().join("edge.log")).unwrap_or_default());
                }
            };
            if let Some(rest) = line.strip_prefix("edge: listening ") {
                let mut it = rest.split_whitespace();
                if let (Some(t), Some(a)) = (it.next(), it.next()) {
                    addrs.insert(t.to_string(), a.parse::<SocketAddr>().expect("addr"));
                }
            }
            if let Some(rest) = line.strip_prefix("edge: restored ") {
                restored = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
            if line.starts_with("edge: domain") {
                break;
            }
        }
        let get = |t: &str| *addrs.get(t).unwrap_or_else(|| panic!("no {t} listener"));
        Edge {
            udp: get("udp"),
            tcp: get("tcp"),
            tls: get("tls"),
            ws: get("ws"),
            wss: get("wss"),
            admin: addrs.get("admin").copied(),
            restored,
            child,
            dir,
        }
    }

    /// What the edge logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default()
    }

    /// `true` while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails clearly when sipp is missing (scripts/test.sh installs Debian's sip-tester).
pub fn require_sipp() {
    let ok = Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(ok, "sipp is not installed: run scripts/test.sh (it installs Debian's sip-tester)");
}

/// A sipp process (killed on drop).
pub struct Sipp {
    child: Child,
    pub name: String,
    dir: PathBuf,
}

impl Sipp {
    /// Starts sipp with `args` in `dir` (its logs go there).
    pub fn spawn(name: &str, dir: &Path, args: &[String]) -> Sipp {
        let out = std::fs::File::create(dir.join(format!("{name}.out"))).expect("sipp out");
        let err = out.try_clone().expect("clone");
        let child = Command::new("sipp")
            .args(args)
            .args(["-nostdin", "-trace_err"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn sipp");
        Sipp { child, name: name.to_string(), dir: dir.to_path_buf() }
    }

    /// Waits at most `limit` for exit; returns the exit code (None if killed on timeout).
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// sipp's screen output and error log, for assertion messages.
    pub fn output(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join(format!("{}.out", self.name))).unwrap_or_default();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.ends_with("_errors.log") {
                    s.push_str(&format!("\n--- {n}\n"));
                    s.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default().chars().take(4000).collect::<String>());
                }
            }
        }
        s
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Number of lines in a file (0 if missing).
pub fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// Reads a header value from a SIP message text (first match, case-insensitive name).
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").skip(1).take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Status code of a response text.
pub fn status(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// A parameter of a challenge (`nonce="..."`).
pub fn challenge_param(ch: &str, name: &str) -> Option<String> {
    let i = ch.find(&format!("{name}="))? + name.len() + 1;
    let rest = &ch[i..];
    if let Some(r) = rest.strip_prefix('"') {
        return Some(r[..r.find('"')?].to_string());
    }
    Some(rest.split([',', ' ']).next()?.to_string())
}

/// Runs loadgen (its arguments) to completion to completion with a time limit.
pub fn run(args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = Command::new(loadgen_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("loadgen {args:?} did not finish within {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A `loadgen answer` in the background (killed on drop).
pub struct Answer(pub std::process::Child);

impl Answer {
    pub fn start(args: &[&str]) -> Answer {
        let mut c = Command::new(loadgen_bin())
            .arg("answer")
            .args(args)
            .args(["--quiet", "--duration-s", "120"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn answer");
        // Wait for "loadgen: answering on ..."
        use std::io::BufRead;
        let out = c.stdout.take().expect("stdout");
        let mut rd = std::io::BufReader::new(out);
        let mut line = String::new();
        let _ = rd.read_line(&mut line);
        assert!(line.contains("answering on"), "answer did not start: {line:?}");
        // Keep draining so its final summary never hits a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut rd, &mut std::io::sink()));
        Answer(c)
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("report written")).expect("valid JSON")
}

/// `GET path` on the edge's admin listener; the response body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("admin write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Sum of the samples of a Prometheus metric (all label sets) whose line starts with `name`
/// followed by `{` or a space.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Edge {
    /// The edge's Prometheus exposition.
    pub fn metrics(&self) -> String {
        http_get(self.admin.expect("admin listener"), "/metrics")
    }

    /// Call records written so far (one JSON object per ended call).
    pub fn call_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("data").join("cdr.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

pub fn sha256_hex(s: &str) -> String {
    <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers a challenge with SHA-256 (RFC 7616 / RFC 8760).
pub fn authorization(challenge_headers: &[&str], user: &str, pass: &str, method: &str, uri: &str) -> String {
    let ch = challenge_headers.iter().find(|c| c.contains("SHA-256")).expect("a SHA-256 challenge (RFC 8760)");
    let realm = challenge_param(ch, "realm").expect("realm");
    let nonce = challenge_param(ch, "nonce").expect("nonce");
    let ha1 = sha256_hex(&format!("{user}:{realm}:{pass}"));
    let ha2 = sha256_hex(&format!("{method}:{uri}"));
    let cnonce = "0a4f113b";
    let resp = sha256_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=SHA-256, cnonce=\"{cnonce}\", qop=auth, nc=00000001"
    )
}

pub fn all_headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// REGISTERs `user` with digest (answering the 401) over UDP from `sock`, contact = the
/// socket; the final status, or `None` when the edge does not answer within 3 s.
pub fn register_udp(sock: &UdpSocket, edge: SocketAddr, user: &str, pass: &str, expires: u32) -> Option<u16> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let me = sock.local_addr().ok()?;
    let send = |auth: &str, cseq: u32| -> Option<String> {
        let m = format!(
            "REGISTER sip:edge.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{user}{n}x{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@edge.test>;tag=a\r\nTo: <sip:{user}@edge.test>\r\nCall-ID: reg-{user}-{me}\r\nCSeq: {} REGISTER\r\nContact: <sip:{user}@{me}>\r\nExpires: {expires}\r\n{auth}Content-Length: 0\r\n\r\n",
            n * 2 + cseq
        );
        sock.send_to(m.as_bytes(), edge).ok()?;
        let _ = sock.set_read_timeout(Some(Duration::from_secs(3)));
        let mut buf = vec![0u8; 65536];
        let k = sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..k]).to_string())
    };
    let ch = send("", 1)?;
    if status(&ch) != Some(401) {
        return status(&ch);
    }
    let a = authorization(&all_headers(&ch, "WWW-Authenticate"), user, pass, "REGISTER", "sip:edge.test");
    status(&send(&format!("Authorization: {a}\r\n"), 2)?)
}

/// Headless Chromium (fake camera and microphone) on `url`, killed on drop.
pub struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn open(url: &str) -> Browser {
        Browser::open_with(url, &[])
    }

    /// With more command-line flags (e.g. `--ignore-certificate-errors` for the edge's
    /// self-signed WSS certificate).
    pub fn open_with(url: &str, extra: &[&str]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--autoplay-policy=no-user-gesture-required",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (scripts/setup.sh installs it)");
        Browser { child, _profile: profile }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JSON reports the test pages POST.
pub type Reports = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
/// Actions the test sets for a page (by name), read by the page at `/control`.
pub type Controls = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>>;

/// Serves tests/pages/* and collects the JSON the pages POST to /report.
pub fn page_server() -> (u16, Reports) {
    let (port, reports, _) = page_server_with_control();
    (port, reports)
}

/// The same, plus `GET /control?name=N`: the action the test set for page N (CORS open).
pub fn page_server_with_control() -> (u16, Reports, Controls) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let reports: Reports = std::sync::Arc::default();
    let controls: Controls = std::sync::Arc::default();
    let c2 = controls.clone();
    let r2 = reports.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let r3 = r2.clone();
            let c3 = c2.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut rd = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if rd.read_line(&mut line).is_err() {
                    return;
                }
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if rd.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let path = target.split('?').next().unwrap_or("/").to_string();
                if path == "/control" {
                    let name = target.split("name=").nth(1).unwrap_or("").split('&').next().unwrap_or("").to_string();
                    let body = c3.lock().unwrap().remove(&name).unwrap_or(serde_json::Value::Null).to_string();
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                if line.starts_with("POST") {
                    let mut body = vec![0u8; len];
                    let _ = rd.read_exact(&mut body);
                    if let Ok(v) = serde_json::from_slice(&body) {
                        r3.lock().unwrap().push(v);
                    }
                    let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n");
                    return;
                }
                let file = root().join("tests/pages").join(path.trim_start_matches('/'));
                match std::fs::read(&file) {
                    Ok(b) => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        );
                        let _ = s.write_all(&b);
                    }
                    Err(_) => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            });
        }
    });
    (port, reports, controls)
}
