//! Bytes per registration binding at 100k bindings (goal: at most 1 KB).
//!
//! Inserts 100,000 realistic bindings (one per address of record, softphone-style
//! contacts; a third with RFC 5626 instance/reg-id) into the location service and reports
//! the growth of the process's resident memory divided by the count.
//! Run: `cargo bench -p benches --bench binding_memory`

#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

use edge::location::{Binding, Location, Source};
use edge::transport::Transport;
use std::time::{Duration, Instant};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    const N: usize = 100_000;
    let now = Instant::now();
    let loc = Location::new();
    let before = rss_bytes();
    for i in 0..N {
        let aor = format!("user{i:06}@edge.test");
        let ip = format!("198.51.{}.{}", (i / 250) % 250, i % 250 + 1);
        let port = 5060 + (i % 1000) as u16;
        let (params, instance, reg_id) = if i % 3 == 0 {
            let inst = format!("\"<urn:uuid:{:08x}-7dec-11d0-a765-00a0c91e6bf6>\"", i);
            (format!(";+sip.instance={inst};reg-id=1"), Some(inst.into_boxed_str()), Some(1))
        } else {
            (String::new(), None, None)
        };
        let b = Binding {
            uri: format!("sip:user{i:06}@{ip}:{port};transport=udp").into(),
            params: params.into(),
            expires: now + Duration::from_secs(3600),
            call_id: format!("{:016x}{:016x}@{ip}", i as u64 * 7919, i as u64 * 104729).into(),
            cseq: 2,
            instance,
            reg_id,
            path: vec![],
            source: Source { transport: Transport::Udp, addr: format!("{ip}:{port}").parse().unwrap(), flow: None },
            since: now,
        };
        loc.update(now, &aor, |v| v.push(b));
    }
    let after = rss_bytes();
    assert_eq!(loc.len(), N);
    let per = (after.saturating_sub(before)) as f64 / N as f64;
    println!("bindings: {N}");
    println!("rss growth: {:.1} MiB", (after - before) as f64 / 1048576.0);
    println!("bytes per binding (RSS growth / bindings): {per:.0}");
    let t = Instant::now();
    let mut found = 0;
    for i in (0..N).step_by(7) {
        found += loc.lookup(now, &format!("user{i:06}@edge.test")).len();
    }
    println!("lookups: {found} in {:?}", t.elapsed());
}
