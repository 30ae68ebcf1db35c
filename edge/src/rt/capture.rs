//! Packet captures for support staff: every SIP message to or from one user (or of one
//! Call-ID), whatever the transport, written as a pcap file (LINKTYPE_RAW: a synthesized
//! IPv4/IPv6 + UDP header around each message, so Wireshark and tshark decode the SIP;
//! stream transports appear as UDP between the same addresses and ports). A capture stops at
//! its deadline, when the user logs out (a REGISTER answered with no binding left, or a
//! forced logout through the API), or on request. With no capture running the hot path pays
//! one atomic load per message.

use crate::core::Peer;
use crate::msg::{HeaderName, Message, SipUri};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a capture selects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    User(String),
    CallId(String),
}

/// A capture as listed by the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureInfo {
    pub id: u64,
    #[serde(flatten)]
    pub target: Target,
    /// Unix seconds.
    pub started: f64,
    pub until: f64,
    pub active: bool,
    /// Why it stopped: `deadline`, `logout`, `stopped`.
    pub ended: Option<&'static str>,
    pub packets: u64,
    pub bytes: u64,
    pub file: String,
}

struct Capture {
    info: CaptureInfo,
    deadline: Instant,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

/// All captures of the process.
pub struct Captures {
    dir: PathBuf,
    active: AtomicUsize,
    list: Mutex<Vec<Capture>>,
    next: AtomicUsize,
}

fn unix_now() -> f64 {
    #[allow(clippy::disallowed_methods)]
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Captures {
    /// Captures written into `dir` (created on first use).
    pub fn new(dir: PathBuf) -> Captures {
        Captures { dir, active: AtomicUsize::new(0), list: Mutex::new(Vec::new()), next: AtomicUsize::new(1) }
    }

    /// Starts a capture; returns its description.
    pub fn start(&self, now: Instant, target: Target, duration: Duration) -> Result<CaptureInfo, String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let id = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        let started = unix_now();
        let label: String = match &target {
            Target::User(u) => format!("user-{u}"),
            Target::CallId(c) => format!("call-{c}"),
        }
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(60)
        .collect();
        let path = self.dir.join(format!("{id}-{label}.pcap"));
        let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = std::io::BufWriter::new(f);
        // pcap global header: magic, v2.4, thiszone, sigfigs, snaplen, LINKTYPE_RAW (101).
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&65_535u32.to_le_bytes());
        h.extend_from_slice(&101u32.to_le_bytes());
        out.write_all(&h).and_then(|_| out.flush()).map_err(|e| format!("{}: {e}", path.display()))?;
        let info = CaptureInfo {
            id,
            target,
            started,
            until: started + duration.as_secs_f64(),
            active: true,
            ended: None,
            packets: 0,
            bytes: 0,
            file: path.display().to_string(),
        };
        let mut l = self.list.lock().map_err(|_| "lock".to_string())?;
        l.push(Capture { info: info.clone(), deadline: now + duration, out: Some(out) });
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(info)
    }

    /// Every capture, newest first.
    pub fn list(&self) -> Vec<CaptureInfo> {
        let l = self.list.lock().map(|l| l.iter().map(|c| c.info.clone()).collect::<Vec<_>>()).unwrap_or_default();
        l.into_iter().rev().collect()
    }

    /// One capture.
    pub fn get(&self, id: u64) -> Option<CaptureInfo> {
        self.list.lock().ok()?.iter().find(|c| c.info.id == id).map(|c| c.info.clone())
    }

    fn stop_where(&self, why: &'static str, mut pred: impl FnMut(&Capture) -> bool) -> usize {
        let Ok(mut l) = self.list.lock() else { return 0 };
        let mut n = 0;
        for c in l.iter_mut().filter(|c| c.info.active) {
            if pred(c) {
                if let Some(mut o) = c.out.take() {
                    let _ = o.flush();
                }
                c.info.active = false;
                c.info.ended = Some(why);
                n += 1;
            }
        }
        self.active.fetch_sub(n, Ordering::Relaxed);
        n
    }

    /// Stops a capture on request; `false` if it is unknown or already stopped.
    pub fn stop(&self, id: u64) -> bool {
        self.stop_where("stopped", |c| c.info.id == id) > 0
    }

    /// Deletes a capture and its file (stopping it first); `false` if unknown.
    pub fn delete(&self, id: u64) -> bool {
        self.stop(id);
        let Ok(mut l) = self.list.lock() else { return false };
        let Some(i) = l.iter().position(|c| c.info.id == id) else { return false };
        let c = l.remove(i);
        let _ = std::fs::remove_file(&c.info.file);
        true
    }

    /// Stops the captures of a user who logged out.
    pub fn user_logged_out(&self, user: &str) {
        if self.active.load(Ordering::Relaxed) > 0 {
            self.stop_where("logout", |c| c.info.target == Target::User(user.to_string()));
        }
    }

    /// Stops captures past their deadline (called every second).
    pub fn expire(&self, now: Instant) {
        if self.active.load(Ordering::Relaxed) > 0 {
            self.stop_where("deadline", |c| now >= c.deadline);
        }
    }

    /// `true` while any capture runs (check before computing addresses for [`Captures::offer`]).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Records a message if a capture wants it. `src`/`dst` are the wire addresses.
    #[inline]
    pub fn offer(&self, data: &[u8], parsed: Option<&Message>, src: SocketAddr, dst: SocketAddr) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.offer_slow(data, parsed, src, dst);
    }

    fn offer_slow(&self, data: &[u8], parsed: Option<&Message>, src: SocketAddr, dst: SocketAddr) {
        let owned;
        let msg = match parsed {
            Some(m) => m,
            None => match Message::parse(bytes::Bytes::copy_from_slice(data)) {
                Ok(m) => {
                    owned = m;
                    &owned
                }
                Err(_) => return,
            },
        };
        let users = users_of(msg);
        let call_id = msg.call_id().unwrap_or("");
        let logout = logout_of(msg);
        let Ok(mut l) = self.list.lock() else { return };
        let mut record: Option<Vec<u8>> = None;
        for c in l.iter_mut().filter(|c| c.info.active) {
            let hit = match &c.info.target {
                Target::User(u) => users.iter().any(|x| x == u),
                Target::CallId(id) => id == call_id,
            };
            if !hit {
                continue;
            }
            let rec = record.get_or_insert_with(|| pcap_record(data, src, dst));
            if let Some(o) = c.out.as_mut()
                && o.write_all(rec).and_then(|_| o.flush()).is_ok()
            {
                c.info.packets += 1;
                c.info.bytes += data.len() as u64;
            }
        }
        drop(l);
        if let Some(u) = logout {
            self.user_logged_out(&u);
        }
    }
}

/// User parts of the Request-URI, From and To.
fn users_of(msg: &Message) -> Vec<String> {
    let mut v = Vec::with_capacity(3);
    let mut add = |uri: &str| {
        if let Ok(u) = SipUri::parse(uri)
            && let Some(user) = u.user
        {
            v.push(crate::msg::uri::percent_decode(user).to_string());
        }
    };
    if let Some(r) = msg.request_uri() {
        add(r);
    }
    if let Some(f) = msg.from_hdr() {
        add(f.uri);
    }
    if let Some(t) = msg.to_hdr() {
        add(t.uri);
    }
    v
}

/// The user whose last binding a 200 to REGISTER removed (no Contact left in the answer).
fn logout_of(msg: &Message) -> Option<String> {
    if msg.status() != Some(200) || msg.cseq().is_none_or(|c| c.method != "REGISTER") || msg.header(HeaderName::Contact).is_some() {
        return None;
    }
    let to = msg.to_hdr()?;
    let u = SipUri::parse(to.uri).ok()?;
    Some(crate::msg::uri::percent_decode(u.user?).to_string())
}

fn checksum(words: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for ch in words.chunks(2) {
        let w = if ch.len() == 2 { u16::from_be_bytes([ch[0], ch[1]]) } else { u16::from_be_bytes([ch[0], 0]) };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One pcap record: header + IP + UDP + payload.
fn pcap_record(data: &[u8], src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let now = unix_now();
    let udp_len = (8 + data.len()).min(65_535 - 40) as u16;
    let payload = &data[..(udp_len as usize - 8)];
    let mut pkt = Vec::with_capacity(48 + payload.len());
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(x) => Some(x),
        IpAddr::V6(x) => x.to_ipv4_mapped(),
    };
    match (v4(src.ip()), v4(dst.ip())) {
        (Some(s), Some(d)) => {
            let total = 20 + udp_len;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[8] = 64;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            pkt.extend_from_slice(&ip);
        }
        _ => {
            let six = |a: IpAddr| match a {
                IpAddr::V4(x) => x.to_ipv6_mapped(),
                IpAddr::V6(x) => x,
            };
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = 17;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&six(src.ip()).octets());
            ip[24..40].copy_from_slice(&six(dst.ip()).octets());
            pkt.extend_from_slice(&ip);
        }
    }
    pkt.extend_from_slice(&src.port().to_be_bytes());
    pkt.extend_from_slice(&dst.port().to_be_bytes());
    pkt.extend_from_slice(&udp_len.to_be_bytes());
    pkt.extend_from_slice(&[0, 0]); // UDP checksum optional over IPv4
    pkt.extend_from_slice(payload);
    let mut rec = Vec::with_capacity(16 + pkt.len());
    rec.extend_from_slice(&(now as u32).to_le_bytes());
    rec.extend_from_slice(&((now.fract() * 1e6) as u32).to_le_bytes());
    rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
    rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
    rec.extend_from_slice(&pkt);
    rec
}

/// The local address a message to or from `peer` used (for the synthesized headers).
pub fn local_for(sh: &crate::core::Shared, peer: &Peer) -> SocketAddr {
    sh.local_addr(peer.transport).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Where captures go under the data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("captures")
}
