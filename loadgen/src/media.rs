//! Per-call RTP streams (G.711, 20 ms packets): sending with seeded impairments (random
//! loss, Gilbert-Elliott burst loss, jitter, reordering) and measuring what comes back
//! (RFC 3550 loss and interarrival jitter, ITU-T G.107 MOS from the `codec` crate).

#![allow(clippy::disallowed_methods)] // media pacing runs on the real clock (runtime side)

use codec::quality::{CodecImpairment, EModelInput, Jitter, SeqTracker, mos, r_factor};
use codec::rtp::{RtpHeader, is_rtcp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one received stream measured.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StreamReport {
    pub call_id: String,
    pub codec: String,
    pub packets_sent: u64,
    pub packets_expected: u64,
    pub packets_received: u64,
    pub loss_pct: f64,
    pub jitter_ms: f64,
    pub r_factor: f64,
    pub mos: f64,
    /// Received packets whose decoded 20 ms are louder than -50 dBov (not silence): a call
    /// with none heard nothing (one-way or silent audio).
    pub voiced_frames: u64,
    /// Mean level of the received audio in dBov (-127: silence).
    pub mean_level_dbov: f64,
}

/// G.711 variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    Pcmu,
    Pcma,
    /// Opus (RFC 7587: dynamic payload type 111, 48 kHz clock, `opus/48000/2`), mono
    /// 20 ms frames of a 440 Hz tone encoded with libopus.
    Opus,
}

impl Codec {
    pub fn pt(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::Opus => 111,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Opus => "opus",
        }
    }
    /// The `a=rtpmap` encoding of this codec.
    pub fn rtpmap(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU/8000",
            Codec::Pcma => "PCMA/8000",
            Codec::Opus => "opus/48000/2",
        }
    }
    /// RTP clock rate.
    pub fn clock(self) -> u32 {
        match self {
            Codec::Opus => 48000,
            _ => 8000,
        }
    }
    /// E-model impairment values (see `codec::quality`).
    pub fn impairment(self) -> CodecImpairment {
        match self {
            Codec::Opus => CodecImpairment::OPUS,
            _ => CodecImpairment::G711_PLC,
        }
    }
}

/// Produces one 20 ms payload per call.
pub(crate) enum PayloadSource {
    G711(Vec<u8>),
    Opus { enc: Box<opus::Encoder>, phase: f64, pcm: Vec<i16>, out: Vec<u8> },
}

impl PayloadSource {
    pub(crate) fn new(c: Codec) -> Option<PayloadSource> {
        Some(match c {
            Codec::Pcmu => PayloadSource::G711(vec![codec::g711::linear_to_ulaw(0); 160]),
            Codec::Pcma => PayloadSource::G711(vec![codec::g711::linear_to_alaw(0); 160]),
            Codec::Opus => PayloadSource::Opus {
                enc: Box::new(opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).ok()?),
                phase: 0.0,
                pcm: vec![0; 960],
                out: vec![0; 1500],
            },
        })
    }

    pub(crate) fn next(&mut self) -> &[u8] {
        match self {
            PayloadSource::G711(b) => b,
            PayloadSource::Opus { enc, phase, pcm, out } => {
                for s in pcm.iter_mut() {
                    *s = (phase.sin() * 8000.0) as i16;
                    *phase += 2.0 * std::f64::consts::PI * 440.0 / 48000.0;
                }
                let n = enc.encode(pcm, out).unwrap_or(0);
                &out[..n]
            }
        }
    }
}

/// Impairments applied on send (seeded, reproducible).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Random (Bernoulli) loss in percent.
    pub loss_pct: f64,
    /// Gilbert-Elliott: P(good->bad) and P(bad->good) per packet; all packets are lost in
    /// the bad state. `None` disables it.
    pub gilbert: Option<(f64, f64)>,
    /// Extra send delay, uniform in 0..jitter_ms.
    pub jitter_ms: f64,
    /// Share (percent) of packets held back by 3 packet times (reordering).
    pub reorder_pct: f64,
}

/// Media of a whole run: sockets per call, sender/receiver tasks, reports.
pub struct MediaPlan {
    codec: Codec,
    imp: Impairment,
    seed: u64,
    ip: IpAddr,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<u16, std::net::UdpSocket>,
    calls: HashMap<String, Stream>,
}

struct Stream {
    sock: Option<std::net::UdpSocket>,
    stop: Arc<AtomicBool>,
    rx: Arc<Mutex<RxStats>>,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Default)]
struct RxStats {
    seq: SeqTracker,
    jitter: Jitter,
    voiced: u64,
    /// Sum of the per-frame levels in -dBov and their count.
    level_sum: f64,
    frames: u64,
}

/// Decodes received payloads to measure what is heard.
struct Listener {
    /// G.711 expansion, or an Opus decoder.
    g711: Option<fn(u8) -> i16>,
    opus: Option<Box<opus::Decoder>>,
    pcm: Vec<i16>,
}

impl Listener {
    fn new(c: Codec) -> Option<Listener> {
        let (g711, opus) = match c {
            Codec::Pcmu => (Some(codec::g711::ulaw_to_linear as fn(u8) -> i16), None),
            Codec::Pcma => (Some(codec::g711::alaw_to_linear as fn(u8) -> i16), None),
            Codec::Opus => (None, Some(Box::new(opus::Decoder::new(48000, opus::Channels::Mono).ok()?))),
        };
        Some(Listener { g711, opus, pcm: vec![0; 5760] })
    }

    /// The level of one payload in -dBov (RFC 6464 scale: 0 loudest, 127 silence).
    fn level(&mut self, payload: &[u8]) -> Option<f64> {
        let n = match (self.g711, self.opus.as_mut()) {
            (Some(f), _) => {
                for (o, b) in self.pcm.iter_mut().zip(payload) {
                    *o = f(*b);
                }
                payload.len().min(self.pcm.len())
            }
            (None, Some(d)) => d.decode(payload, &mut self.pcm, false).ok()?,
            (None, None) => return None,
        };
        (n > 0).then(|| codec::audio_level::dbov(&self.pcm[..n]))
    }
}

/// One SDP media description: address and port of the first audio stream.
pub fn sdp_audio_target(sdp: &[u8]) -> Option<SocketAddr> {
    let s = std::str::from_utf8(sdp).ok()?;
    let mut ip: Option<IpAddr> = None;
    let mut port = None;
    for line in s.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix("c=IN ") {
            ip = c.split_whitespace().nth(1).and_then(|a| a.parse().ok()).or(ip);
        } else if let Some(m) = line.strip_prefix("m=audio ") {
            port = m.split_whitespace().next().and_then(|p| p.parse::<u16>().ok());
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

impl MediaPlan {
    pub fn new(codec: Codec, imp: Impairment, seed: u64, ip: IpAddr) -> MediaPlan {
        MediaPlan { codec, imp, seed, ip, inner: Mutex::new(Inner::default()) }
    }

    /// Binds an RTP socket and returns the SDP offer for it and its port.
    pub fn offer(&self) -> (String, u16) {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(self.ip, 0));
        let Ok(sock) = sock else { return (String::new(), 0) };
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
        let sdp = crate::scenario::sdp(&self.ip.to_string(), port, self.codec.pt(), self.codec.rtpmap());
        if let Ok(mut i) = self.inner.lock() {
            i.pending.insert(port, sock);
        }
        (sdp, port)
    }

    /// Ties the socket offered on `port` to a call.
    pub fn bind_call(&self, call_id: String, port: u16) {
        let Ok(mut i) = self.inner.lock() else { return };
        let sock = i.pending.remove(&port);
        i.calls.insert(call_id, Stream { sock, stop: Arc::default(), rx: Arc::default(), sent: Arc::default() });
    }

    /// The call was answered with `answer` SDP: start sending and receiving.
    pub fn start(&self, call_id: &str, answer: &[u8]) {
        let Some(remote) = sdp_audio_target(answer) else { return };
        let Ok(mut i) = self.inner.lock() else { return };
        let Some(st) = i.calls.get_mut(call_id) else { return };
        let Some(sock) = st.sock.take() else { return };
        let _ = sock.set_nonblocking(true);
        let Ok(sock) = tokio::net::UdpSocket::from_std(sock) else { return };
        let sock = Arc::new(sock);
        let mut h: u64 = self.seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in call_id.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        tokio::spawn(send_loop(sock.clone(), remote, self.codec, self.imp, h, st.stop.clone(), st.sent.clone()));
        tokio::spawn(recv_loop(sock, st.rx.clone(), st.stop.clone(), self.codec));
    }

    /// The call ended: stop its streams and report what was received.
    pub fn stop(&self, call_id: &str) -> Option<StreamReport> {
        let st = self.inner.lock().ok()?.calls.remove(call_id)?;
        st.stop.store(true, Ordering::Relaxed);
        if st.sock.is_some() {
            return None; // never started (not answered)
        }
        let rx = st.rx.lock().ok()?;
        let loss = rx.seq.loss_pct();
        let jitter_ms = rx.jitter.ms(self.codec.clock());
        // Mouth-to-ear delay: packetisation (20 ms) + a jitter buffer of twice the jitter.
        let input = EModelInput { codec: self.codec.impairment(), loss_pct: loss, burst_ratio: 1.0, delay_ms: 20.0 + 2.0 * jitter_ms };
        Some(StreamReport {
            call_id: call_id.to_string(),
            codec: self.codec.name().into(),
            packets_sent: st.sent.load(Ordering::Relaxed),
            packets_expected: rx.seq.expected(),
            packets_received: rx.seq.received(),
            loss_pct: loss,
            jitter_ms,
            r_factor: r_factor(input),
            mos: mos(input),
            voiced_frames: rx.voiced,
            mean_level_dbov: if rx.frames > 0 { -(rx.level_sum / rx.frames as f64) } else { -127.0 },
        })
    }
}

async fn send_loop(
    sock: Arc<tokio::net::UdpSocket>,
    to: SocketAddr,
    codec: Codec,
    imp: Impairment,
    seed: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ssrc: u32 = rng.r#gen();
    let mut seq: u16 = rng.r#gen();
    let mut ts: u32 = rng.r#gen();
    let t0 = Instant::now();
    let mut bad = false;
    let mut queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut i: u64 = 0;
    let Some(mut source) = PayloadSource::new(codec) else { return };
    let step = codec.clock() / 50;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        // Produce every packet due by now (20 ms each).
        while t0 + Duration::from_millis(20 * i) <= now {
            let payload = source.next();
            let mut pkt = vec![0u8; 12 + payload.len()];
            pkt[12..].copy_from_slice(payload);
            let end = pkt.len();
            RtpHeader {
                marker: i == 0,
                payload_type: codec.pt(),
                sequence: seq,
                timestamp: ts,
                ssrc,
                payload_offset: 12,
                payload_end: end,
            }
            .write_to(&mut pkt);
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(step);
            let at = t0 + Duration::from_millis(20 * i);
            i += 1;
            let mut lost = imp.loss_pct > 0.0 && rng.r#gen::<f64>() * 100.0 < imp.loss_pct;
            if let Some((p_gb, p_bg)) = imp.gilbert {
                bad = if bad { rng.r#gen::<f64>() >= p_bg } else { rng.r#gen::<f64>() < p_gb };
                lost |= bad;
            }
            if lost {
                continue;
            }
            let mut delay =
                if imp.jitter_ms > 0.0 { Duration::from_secs_f64(rng.r#gen::<f64>() * imp.jitter_ms / 1000.0) } else { Duration::ZERO };
            if imp.reorder_pct > 0.0 && rng.r#gen::<f64>() * 100.0 < imp.reorder_pct {
                delay += Duration::from_millis(60);
            }
            queue.push(Reverse((at + delay, i, pkt)));
        }
        while let Some(Reverse((at, _, _))) = queue.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, _, pkt))) = queue.pop()
                && sock.send_to(&pkt, to).await.is_ok()
            {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        let next_gen = t0 + Duration::from_millis(20 * i);
        let next = queue.peek().map(|Reverse((a, _, _))| (*a).min(next_gen)).unwrap_or(next_gen);
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
}

async fn recv_loop(sock: Arc<tokio::net::UdpSocket>, rx: Arc<Mutex<RxStats>>, stop: Arc<AtomicBool>, codec: Codec) {
    let clock = codec.clock();
    let mut listener = Listener::new(codec);
    let t0 = Instant::now();
    let mut buf = vec![0u8; 2048];
    loop {
        let r = tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(Ok((n, _))) = r else { continue };
        let p = &buf[..n];
        if is_rtcp(p) {
            continue;
        }
        let Ok(h) = RtpHeader::parse(p) else { continue };
        let arrival = (t0.elapsed().as_secs_f64() * clock as f64) as u64;
        let level =
            if h.payload_type == codec.pt() { listener.as_mut().and_then(|l| l.level(&p[h.payload_offset..h.payload_end])) } else { None };
        if let Ok(mut s) = rx.lock() {
            s.seq.record(h.sequence);
            s.jitter.record(arrival, h.timestamp);
            if let Some(l) = level {
                s.frames += 1;
                s.level_sum += l;
                s.voiced += u64::from(l < 50.0);
            }
        }
    }
}

/// A UDP socket that sends every packet back where it came from (an RTP echo for a UAS).
pub async fn echo_socket(ip: IpAddr) -> std::io::Result<u16> {
    Ok(echo_socket_counted(ip).await?.0)
}

/// An RTP echo that also counts what it gets: packets, payload types, RFC 4733
/// telephone-events (payload types 96-127 with a 4-byte event payload; one digit per
/// event timestamp), and DTMF tones in PCMU/PCMA audio.
pub async fn echo_socket_counted(ip: IpAddr) -> std::io::Result<(u16, std::sync::Arc<std::sync::Mutex<crate::report::EchoSummary>>)> {
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    let port = sock.local_addr()?.port();
    let summary = std::sync::Arc::new(std::sync::Mutex::new(crate::report::EchoSummary::default()));
    let s2 = summary.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut last_event: Option<(u32, u32)> = None;
        let mut inband = InbandDigits::default();
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
            let p = &buf[..n];
            if n < 12 || p[0] >> 6 != 2 || (200..=207).contains(&p[1]) {
                continue; // not RTP (RTCP shares the port with rtcp-mux)
            }
            let pt = p[1] & 0x7f;
            let mut s = s2.lock().unwrap_or_else(|e| e.into_inner());
            s.packets += 1;
            s.bytes += n as u64;
            *s.payload_types.entry(pt).or_default() += 1;
            let cc = (p[0] & 0x0f) as usize;
            let mut off = 12 + 4 * cc;
            if p[0] & 0x10 != 0 && n >= off + 4 {
                off += 4 + 4 * u16::from_be_bytes([p[off + 2], p[off + 3]]) as usize;
            }
            if (pt == 0 || pt == 8)
                && n > off
                && let Some(d) = inband.packet(pt, &p[off..])
            {
                s.inband_digits.push(d);
            }
            if pt >= 96 && n == off + 4 {
                s.telephone_events += 1;
                let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
                if last_event != Some((ssrc, ts)) {
                    last_event = Some((ssrc, ts));
                    let digit = match p[off] {
                        d @ 0..=9 => (b'0' + d) as char,
                        10 => '*',
                        11 => '#',
                        d @ 12..=15 => (b'A' + d - 12) as char,
                        _ => '?',
                    };
                    s.digits.push(digit);
                }
            }
        }
    });
    Ok((port, summary))
}

/// Reads DTMF digits from G.711 packets as they come: a digit once its tone pair was
/// heard in two packets in a row, the next only after a packet without it.
#[derive(Default)]
struct InbandDigits {
    /// The tone heard in the last packet, and whether it was already counted.
    last: Option<(u8, bool)>,
    pcm: Vec<i16>,
}

impl InbandDigits {
    fn packet(&mut self, pt: u8, payload: &[u8]) -> Option<char> {
        self.pcm.clear();
        let law = if pt == 8 { codec::g711::alaw_to_linear } else { codec::g711::ulaw_to_linear };
        self.pcm.extend(payload.iter().map(|&b| law(b)));
        let heard = codec::dtmf::detect(&self.pcm, 8_000);
        let (out, next) = match (heard, self.last) {
            (None, _) => (None, None),
            (Some(e), Some((l, counted))) if e == l => ((!counted).then_some(e), Some((e, true))),
            (Some(e), _) => (None, Some((e, false))),
        };
        self.last = next;
        out.and_then(codec::dtmf::event_char)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inband_digits_are_read_once_per_tone() {
        let mut r = InbandDigits::default();
        let mut got = String::new();
        let packet = |e: Option<u8>, k: u64| {
            let mut x = vec![];
            match e {
                Some(e) => codec::dtmf::tone(e, k * 160, 160, 8_000, &mut x),
                None => x.resize(160, 0),
            }
            x.into_iter().map(codec::g711::linear_to_ulaw).collect::<Vec<u8>>()
        };
        // 1 for 80 ms, a gap, 1 again for 60 ms, 5 for 20 ms only (too short), 9 for 40 ms.
        let seq = [Some(1), Some(1), Some(1), Some(1), None, Some(1), Some(1), Some(1), None, Some(5), None, Some(9), Some(9)];
        for (k, e) in seq.into_iter().enumerate() {
            got.extend(r.packet(0, &packet(e, k as u64)));
        }
        assert_eq!(got, "119");
    }

    #[test]
    fn sdp_target() {
        let s = crate::scenario::sdp("127.0.0.1", 40000, 0, "PCMU/8000");
        assert_eq!(sdp_audio_target(s.as_bytes()), Some("127.0.0.1:40000".parse().unwrap()));
        assert_eq!(sdp_audio_target(b"v=0\r\n"), None);
    }
}
