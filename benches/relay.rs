//! Criterion: the relay's forwarding decision per packet (latching check, counters, RFC 3550
//! loss and jitter, next hop) for 1000 anchored calls, plain and with SDES-SRTP bridging
//! (unprotect from the SRTP leg + nothing on the plain leg). Sockets are not involved: this
//! is the CPU of `Relay::handle_packet`; `benches/relay_vs_rtpengine.sh` measures the whole
//! process (system calls included) against rtpengine.

#![allow(clippy::disallowed_methods)]

use codec::quality::CodecImpairment;
use codec::srtp::{Profile, Srtp};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edge::media::relay::{NoSockets, Relay, RelayConfig, RemoteMedia, Side};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const CALLS: u16 = 1000;

fn packet(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5u8, 160));
    p
}

fn remote(port: u16) -> RemoteMedia {
    RemoteMedia {
        rtp: SocketAddr::from(([127, 0, 0, 1], port)),
        rtcp: None,
        mux: false,
        clock_rate: 8000,
        codec: CodecImpairment::G711_PLC,
    }
}

/// 1000 sessions; returns (relay, A's relay port per call).
fn setup(srtp: bool) -> (Relay, Vec<u16>) {
    let t0 = Instant::now();
    let mut r = Relay::new(RelayConfig { ports: 20000..=29999, ..Default::default() });
    let mut ports = Vec::new();
    for i in 0..CALLS {
        let (id, pa, _) = r.open(t0, &mut NoSockets).unwrap();
        r.set_remote(id, Side::A, remote(40000 + 2 * i)).unwrap();
        r.set_remote(id, Side::B, remote(50000 + 2 * i)).unwrap();
        if srtp {
            r.set_srtp(id, Side::A, Some(Srtp::new(Profile::Aes128CmSha1_80, &[7; 16], &[9; 14])), None).unwrap();
        }
        ports.push(pa);
    }
    (r, ports)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    {
        let (mut r, ports) = setup(false);
        let mut seq = 0u16;
        let mut i = 0usize;
        let mut buf = Vec::with_capacity(2048);
        let tmpl = packet(0, 0xabc);
        g.bench_function("forward_plain_1000_calls", |b| {
            b.iter(|| {
                i = (i + 1) % ports.len();
                if i == 0 {
                    seq = seq.wrapping_add(1);
                }
                buf.clear();
                buf.extend_from_slice(&tmpl);
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                let src = SocketAddr::from(([127, 0, 0, 1], 40000 + 2 * i as u16));
                black_box(r.handle_packet(t0 + Duration::from_millis(seq as u64 * 20), ports[i], src, &mut buf));
            })
        });
    }
    {
        // SRTP leg A -> plain leg B: every packet is authenticated and decrypted.
        let (mut r, ports) = setup(true);
        let mut senders: Vec<Srtp> = (0..CALLS).map(|_| Srtp::new(Profile::Aes128CmSha1_80, &[7; 16], &[9; 14])).collect();
        // Pre-protect a batch per call (sequence order, replay-free).
        let rounds = 256u16;
        let mut pkts: Vec<Vec<Vec<u8>>> = Vec::new();
        for s in senders.iter_mut() {
            pkts.push(
                (0..rounds)
                    .map(|q| {
                        let mut p = packet(q, 0xabc);
                        s.protect_rtp(&mut p).ok();
                        p
                    })
                    .collect(),
            );
        }
        let mut n = 0usize;
        let mut buf = Vec::with_capacity(2048);
        g.bench_function("forward_srtp_to_plain_1000_calls", |b| {
            b.iter(|| {
                let i = n % CALLS as usize;
                let q = (n / CALLS as usize) % rounds as usize;
                n += 1;
                if n == CALLS as usize * rounds as usize {
                    // Start over with fresh contexts (the replay window would reject).
                    let (r2, _) = setup(true);
                    r = r2;
                    n = 0;
                }
                buf.clear();
                buf.extend_from_slice(&pkts[i][q]);
                let src = SocketAddr::from(([127, 0, 0, 1], 40000 + 2 * i as u16));
                black_box(r.handle_packet(t0, ports[i], src, &mut buf));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
