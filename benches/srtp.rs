//! Criterion: SRTP protect and unprotect of a 172-byte G.711 RTP packet (20 ms), per
//! profile. The relay's per-packet budget at 150k packets/s per core is about 6.7 µs.

use codec::srtp::{Profile, Srtp};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xca, 0xfe, 0xba, 0xbe];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend(std::iter::repeat_n(0xffu8, 160));
    p
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp");
    g.throughput(Throughput::Elements(1));
    for profile in [Profile::Aes128CmSha1_80, Profile::AeadAes128Gcm] {
        let key = [7u8; 16];
        let salt = [9u8; 14];
        let mut tx = Srtp::new(profile, &key, &salt);
        let mut seq = 0u16;
        let mut buf = Vec::with_capacity(256);
        g.bench_function(format!("protect_{}", profile.name()), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                buf.clear();
                buf.extend_from_slice(&packet(seq));
                tx.protect_rtp(black_box(&mut buf)).ok();
            })
        });
        // Unprotect: pre-protect a window of packets, replay-free order.
        let mut tx = Srtp::new(profile, &key, &salt);
        let protected: Vec<Vec<u8>> = (0..50_000u32)
            .map(|i| {
                let mut p = packet(i as u16);
                tx.protect_rtp(&mut p).ok();
                p
            })
            .collect();
        let mut rx = Srtp::new(profile, &key, &salt);
        let mut i = 0usize;
        g.bench_function(format!("unprotect_{}", profile.name()), |b| {
            b.iter(|| {
                if i == protected.len() {
                    rx = Srtp::new(profile, &key, &salt);
                    i = 0;
                }
                buf.clear();
                buf.extend_from_slice(&protected[i]);
                i += 1;
                rx.unprotect_rtp(black_box(&mut buf)).ok();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
