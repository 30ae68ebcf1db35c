//! Against the running binary: an oversize message on a stream gets 513 and the connection
//! is closed; a CRLFCRLF ping gets a CRLF pong (RFC 5626 4.4.1); a malformed header over UDP
//! gets a 400 that names it; OPTIONS to the edge gets 200.

#![allow(clippy::disallowed_methods)]

use e2e_tests::{Edge, status};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

fn read_some(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let mut out = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") || out == b"\r\n" {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

#[test]
fn oversize_stream_message_gets_513_and_close() {
    // Appended inside [sip].
    let edge = Edge::start("max_message_size = 4096\n", &[]);
    let mut s = TcpStream::connect(edge.tcp).unwrap();
    // Keepalive first.
    s.write_all(b"\r\n\r\n").unwrap();
    assert_eq!(read_some(&mut s), b"\r\n", "CRLF pong");
    let body = "x".repeat(100_000);
    let msg = format!(
        "MESSAGE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:40000;branch=z9hG4bKbig\r\nMax-Forwards: 70\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:bob@example.net>\r\nCall-ID: big-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes());
    let resp = String::from_utf8_lossy(&read_some(&mut s)).to_string();
    assert_eq!(status(&resp), Some(513), "{resp}");
    assert!(resp.contains("Call-ID: big-1"));
    // Then the edge closes the connection.
    let mut rest = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(s.read(&mut rest), Ok(0) | Err(_)));
}

#[test]
fn udp_malformed_header_gets_400_naming_it_and_options_gets_200() {
    let edge = Edge::start("", &[]);
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = u.local_addr().unwrap();
    let bad = format!(
        "OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm1\r\nMax-Forwards: seventy\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:x@example.net>\r\nCall-ID: m-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    u.send_to(bad.as_bytes(), edge.udp).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = u.recv_from(&mut buf).unwrap();
    let r = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(r.starts_with("SIP/2.0 400 Bad Header: Max-Forwards\r\n"), "{r}");
    let opt = format!(
        "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm2\r\nMax-Forwards: 70\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:{}>\r\nCall-ID: m-2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        edge.udp, edge.udp
    );
    u.send_to(opt.as_bytes(), edge.udp).unwrap();
    let (n, _) = u.recv_from(&mut buf).unwrap();
    let r = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(status(&r), Some(200), "{r}");
    assert!(r.contains("Allow: "));
}
