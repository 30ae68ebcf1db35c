//! Criterion: parsing a typical INVITE (goal: at least 1 million parses per second on
//! one core), reading the headers a proxy needs, and writing the forwarded copy.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edge::msg::write::Forward;
use edge::msg::{HeaderName, Message};
use std::hint::black_box;

/// A typical softphone INVITE with SDP (about 900 bytes).
pub const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice Liddell\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: \"Bob\" <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 31862 INVITE\r\n\
Contact: <sip:alice@192.0.2.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\"\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE, UPDATE\r\n\
Supported: replaces, timer, 100rel\r\n\
User-Agent: Softphone 8.1.2\r\n\
Session-Expires: 1800\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 300\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 9 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=rtcp:49171 IN IP4 192.0.2.10\r\n\
a=x-padding:0000000000000000000000\r\n";

fn bench(c: &mut Criterion) {
    let buf = Bytes::from_static(INVITE.as_bytes());
    assert!(Message::parse(buf.clone()).is_ok());
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_invite", |b| b.iter(|| Message::parse(black_box(buf.clone())).map(|m| m.headers().len())));
    g.bench_function("parse_invite_and_read_routing_headers", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(buf.clone())).ok()?;
            let branch = m.top_via()?.branch()?.len();
            let cid = m.call_id()?.len();
            let seq = m.cseq()?.seq;
            let tag = m.from_hdr()?.tag()?.len();
            let mf = m.max_forwards()?.ok()?;
            Some(branch + cid + seq as usize + tag + mf as usize)
        })
    });
    g.bench_function("parse_validate_invite", |b| b.iter(|| Message::parse(black_box(buf.clone())).map(|m| m.validate().is_ok())));
    let m = Message::parse(buf.clone()).unwrap();
    g.bench_function("write_forwarded_invite", |b| {
        b.iter(|| {
            Forward {
                prepend: "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK0123456789abcdef.1\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\n",
                max_forwards: Some(69),
                ..Default::default()
            }
            .write(black_box(&m))
        })
    });
    g.bench_function("values_via", |b| b.iter(|| black_box(&m).values(HeaderName::Via).count()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
