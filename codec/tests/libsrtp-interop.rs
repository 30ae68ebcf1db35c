//! SRTP/SRTCP interoperability with libsrtp2 (Debian libsrtp2-dev) in both directions:
//! a small C peer (tests/srtp_tool.c) protects what we unprotect and the other way round.

use codec::srtp::{Profile, Srtp};
use std::io::Write;
use std::process::{Command, Stdio};

fn tool() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = std::env::temp_dir().join(format!("srtp_tool_{}", std::process::id()));
    let st = Command::new("cc").arg(dir.join("srtp_tool.c")).arg("-o").arg(&out).arg("-lsrtp2").status().expect("cc");
    assert!(st.success(), "building the libsrtp2 peer failed: is libsrtp2-dev installed? (scripts/setup.sh installs it)");
    out
}

fn frame(pkts: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![];
    for p in pkts {
        v.extend_from_slice(&(p.len() as u16).to_be_bytes());
        v.extend_from_slice(p);
    }
    v
}

fn unframe(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut v = vec![];
    while b.len() >= 2 {
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        v.push(b[2..2 + n].to_vec());
        b = &b[2 + n..];
    }
    v
}

fn run(tool: &std::path::Path, args: &[&str], input: Vec<u8>) -> Vec<Vec<u8>> {
    let mut c =
        Command::new(tool).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run tool");
    c.stdin.take().unwrap().write_all(&input).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "libsrtp peer failed: {}", String::from_utf8_lossy(&o.stderr));
    unframe(&o.stdout)
}

/// Protects every packet with `ctx` (RTP or RTCP).
fn protect_all(ctx: &mut Srtp, pkts: &[Vec<u8>], rtcp: bool) -> Vec<Vec<u8>> {
    pkts.iter()
        .map(|p| {
            let mut p = p.clone();
            if rtcp { ctx.protect_rtcp(&mut p) } else { ctx.protect_rtp(&mut p) }.unwrap();
            p
        })
        .collect()
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(seq as u32 * 160).to_be_bytes());
    p.extend((0..160u16).map(|i| (i as u8).wrapping_add(seq as u8)));
    p
}

#[test]
fn interoperates_with_libsrtp2_both_ways() {
    let tool = tool();
    let keysalt: Vec<u8> = (0..30u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let hexkey: String = keysalt.iter().map(|b| format!("{b:02x}")).collect();
    // Sequence numbers crossing the 16-bit wrap exercise the rollover counter.
    let plain: Vec<Vec<u8>> = (65500u32..65600).map(|s| rtp(s as u16)).collect();
    for (profile, tag) in [(Profile::Aes128CmSha1_80, "80"), (Profile::Aes128CmSha1_32, "32"), (Profile::AeadAes128Gcm, "gcm")] {
        let keysalt = &keysalt[..16 + profile.salt_len()];
        let hexkey: String = keysalt.iter().map(|b| format!("{b:02x}")).collect();
        // libsrtp protects, we unprotect.
        let theirs = run(&tool, &["protect", "rtp", tag, &hexkey], frame(&plain));
        let mut rx = Srtp::from_inline(profile, keysalt).unwrap();
        for (i, p) in theirs.into_iter().enumerate() {
            let mut p = p;
            rx.unprotect_rtp(&mut p).unwrap_or_else(|e| panic!("{tag}: packet {i}: {e}"));
            assert_eq!(p, plain[i]);
        }
        // We protect, libsrtp unprotects.
        let mut tx = Srtp::from_inline(profile, keysalt).unwrap();
        let ours = protect_all(&mut tx, &plain, false);
        assert_eq!(run(&tool, &["unprotect", "rtp", tag, &hexkey], frame(&ours)), plain);
        if profile == Profile::AeadAes128Gcm {
            // SRTCP with GCM both ways.
            let mut buf = [0u8; 64];
            let n = codec::rtcp::write_rr(&mut buf, 0xdeadbeef, &[]);
            let rtcp: Vec<Vec<u8>> = (0..3).map(|_| buf[..n].to_vec()).collect();
            let mut rx = Srtp::from_inline(profile, keysalt).unwrap();
            for mut p in run(&tool, &["protect", "rtcp", tag, &hexkey], frame(&rtcp)) {
                rx.unprotect_rtcp(&mut p).unwrap();
                assert_eq!(p, rtcp[0]);
            }
            let mut tx = Srtp::from_inline(profile, keysalt).unwrap();
            let ours = protect_all(&mut tx, &rtcp, true);
            assert_eq!(run(&tool, &["unprotect", "rtcp", tag, &hexkey], frame(&ours)), rtcp);
        }
    }
    // SRTCP both ways.
    let mut buf = [0u8; 128];
    let rb = codec::rtcp::ReportBlock { ssrc: 9, fraction_lost: 3, cumulative_lost: 7, highest_seq: 65600, jitter: 12, lsr: 1, dlsr: 2 };
    let n = codec::rtcp::write_sr(&mut buf, 0xdeadbeef, 42, 160, 100, 16000, &[rb]);
    let rtcp: Vec<Vec<u8>> = (0..5).map(|_| buf[..n].to_vec()).collect();
    let theirs = run(&tool, &["protect", "rtcp", "80", &hexkey], frame(&rtcp));
    let mut rx = Srtp::from_inline(Profile::Aes128CmSha1_80, &keysalt).unwrap();
    for mut p in theirs {
        rx.unprotect_rtcp(&mut p).unwrap();
        assert_eq!(p, rtcp[0]);
    }
    let mut tx = Srtp::from_inline(Profile::Aes128CmSha1_80, &keysalt).unwrap();
    let ours = protect_all(&mut tx, &rtcp, true);
    assert_eq!(run(&tool, &["unprotect", "rtcp", "80", &hexkey], frame(&ours)), rtcp);
    let _ = std::fs::remove_file(tool);
}
