//! A TLS client (tokio-rustls) and WebSocket clients (tokio-tungstenite, plain and over
//! TLS) register with digest auth and call through the edge to a UDP sipp UAS: REGISTER
//! (401, SHA-256 digest, 200), INVITE (407, ACK, INVITE with credentials, 180, 200), ACK
//! and BYE along the Record-Route route set.

#![allow(clippy::disallowed_methods)]

use e2e_tests::{Edge, Sipp, all_headers, authorization, free_port, header, require_sipp, scenario, status};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// One SIP message per send/recv, whatever the transport.
enum Conn<S> {
    Stream(S, Vec<u8>),
    Ws(Box<WebSocketStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, m: &str) {
        match self {
            Conn::Stream(s, _) => s.write_all(m.as_bytes()).await.expect("write"),
            Conn::Ws(w) => w.send(Ws::text(m)).await.expect("ws send"),
        }
    }

    async fn recv_any(&mut self) -> String {
        match self {
            Conn::Ws(w) => loop {
                match w.next().await.expect("ws closed").expect("ws error") {
                    Ws::Text(t) => return t.as_str().to_string(),
                    Ws::Binary(b) => return String::from_utf8_lossy(&b).to_string(),
                    _ => continue,
                }
            },
            Conn::Stream(s, buf) => loop {
                while buf.starts_with(b"\r\n") {
                    buf.drain(..2);
                }
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
                    let cl: usize =
                        header(&head, "Content-Length").or_else(|| header(&head, "l")).and_then(|v| v.parse().ok()).unwrap_or(0);
                    if buf.len() >= end + 4 + cl {
                        let msg: Vec<u8> = buf.drain(..end + 4 + cl).collect();
                        return String::from_utf8_lossy(&msg).to_string();
                    }
                }
                let mut tmp = [0u8; 4096];
                let n = s.read(&mut tmp).await.expect("read");
                assert!(n > 0, "connection closed by the edge");
                buf.extend_from_slice(&tmp[..n]);
            },
        }
    }

    /// Next message that is not a 100 Trying, with a time limit.
    async fn recv(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.recv_any()).await.expect("no message from the edge within 10 s");
            if status(&m) != Some(100) {
                return m;
            }
        }
    }
}

/// Registers `user` and places one call to sip:service@example.net (the upstream UAS).
async fn register_and_call<S: AsyncRead + AsyncWrite + Unpin>(mut c: Conn<S>, via_t: &str, uri_t: &str, user: &str) {
    let host = format!("{user}-client.invalid");
    let contact = format!("<sip:{user}@{host};transport={uri_t}>");
    let from = format!("<sip:{user}@edge.test>;tag=f{user}");
    let call_reg = format!("reg-{user}");
    let reg = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:edge.test SIP/2.0\r\nVia: SIP/2.0/{via_t} {host};branch=z9hG4bKreg{cseq}{user}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:{user}@edge.test>\r\nCall-ID: {call_reg}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact};expires=600\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    c.send(&reg(1, "")).await;
    let r = c.recv().await;
    assert_eq!(status(&r), Some(401), "{r}");
    let auth = authorization(&all_headers(&r, "WWW-Authenticate"), user, "pw-of-user", "REGISTER", "sip:edge.test");
    c.send(&reg(2, &format!("Authorization: {auth}\r\n"))).await;
    let r = c.recv().await;
    assert_eq!(status(&r), Some(200), "{r}");
    assert!(header(&r, "Contact").is_some_and(|v| v.contains(&host)), "binding not listed: {r}");

    let call = format!("call-{user}");
    let invite = |cseq: u32, branch: &str, auth: &str| {
        format!(
            "INVITE sip:service@example.net SIP/2.0\r\nVia: SIP/2.0/{via_t} {host};branch={branch}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:service@example.net>\r\nCall-ID: {call}\r\nCSeq: {cseq} INVITE\r\nContact: {contact}\r\n{auth}Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n"
        )
    };
    c.send(&invite(1, "z9hG4bKinv1", "")).await;
    let r = c.recv().await;
    assert_eq!(status(&r), Some(407), "a local caller must authenticate: {r}");
    let to407 = header(&r, "To").unwrap().to_string();
    c.send(&format!("ACK sip:service@example.net SIP/2.0\r\nVia: SIP/2.0/{via_t} {host};branch=z9hG4bKinv1\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to407}\r\nCall-ID: {call}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")).await;
    let auth = authorization(&all_headers(&r, "Proxy-Authenticate"), user, "pw-of-user", "INVITE", "sip:service@example.net");
    c.send(&invite(2, "z9hG4bKinv2", &format!("Proxy-Authorization: {auth}\r\n"))).await;
    let mut r = c.recv().await;
    while status(&r).is_some_and(|s| s < 200) {
        r = c.recv().await;
    }
    assert_eq!(status(&r), Some(200), "call not answered: {r}");
    let to = header(&r, "To").unwrap().to_string();
    let target = header(&r, "Contact").unwrap().trim_start_matches('<').split('>').next().unwrap().to_string();
    let mut rr: Vec<String> = all_headers(&r, "Record-Route").iter().flat_map(|v| v.split(", ")).map(str::to_string).collect();
    assert!(!rr.is_empty(), "edge must Record-Route: {r}");
    assert!(
        rr.iter().any(|x| x.contains(&format!("transport={uri_t}"))),
        "double Record-Route expected when the transport changes: {rr:?}"
    );
    rr.reverse();
    let routes = format!("Route: {}\r\n", rr.join(", "));
    c.send(&format!("ACK {target} SIP/2.0\r\nVia: SIP/2.0/{via_t} {host};branch=z9hG4bKack2\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call}\r\nCSeq: 2 ACK\r\n{routes}Content-Length: 0\r\n\r\n")).await;
    c.send(&format!("BYE {target} SIP/2.0\r\nVia: SIP/2.0/{via_t} {host};branch=z9hG4bKbye3\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call}\r\nCSeq: 3 BYE\r\n{routes}Content-Length: 0\r\n\r\n")).await;
    let r = c.recv().await;
    assert_eq!(status(&r), Some(200), "BYE not answered: {r}");
    assert!(header(&r, "CSeq").unwrap().ends_with("BYE"));
}

fn tls_connector(edge: &Edge) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(edge.dir.path().join("data/tls/cert.pem")).expect("generated certificate in the data directory");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.expect("pem")).expect("add root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn ws_request(addr: std::net::SocketAddr, scheme: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{scheme}://localhost:{}/", addr.port()).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_websocket_clients_register_and_call_a_udp_uas() {
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_port();
    let users = "[[user]]\nname = \"tina\"\npassword = \"pw-of-user\"\n[[user]]\nname = \"walt\"\npassword = \"pw-of-user\"\n[[user]]\nname = \"wendy\"\npassword = \"pw-of-user\"\n";
    // These clients answer SHA-256 (RFC 8760) over every transport; browsers over WS/WSS
    // get MD5 only by default (`websocket_algorithms`), so this test asks for SHA-256 there.
    let users = format!("{users}[auth]\nwebsocket_algorithms = [\"SHA-256\", \"MD5\"]\n");
    let edge = Edge::start(&users, &["--upstream", &format!("sip:127.0.0.1:{uas_port}")]);
    let mut uas = Sipp::spawn(
        "uas",
        dir.path(),
        &["-sf", &scenario("uas_load.xml"), "-i", "127.0.0.1", "-p", &uas_port.to_string(), "-t", "u1", "-m", "3", "-timeout", "60s"]
            .map(String::from),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIP over TLS (RFC 3261 26.2).
    let tcp = TcpStream::connect(edge.tls).await.unwrap();
    let tls = tls_connector(&edge).connect("localhost".try_into().unwrap(), tcp).await.expect("TLS handshake with the edge");
    register_and_call(Conn::Stream(tls, Vec::new()), "TLS", "tls", "tina").await;

    // SIP over WebSocket (RFC 7118), subprotocol "sip".
    let tcp = TcpStream::connect(edge.ws).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(ws_request(edge.ws, "ws"), tcp).await.expect("WebSocket handshake");
    assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap()), Some("sip"));
    register_and_call(Conn::Ws(Box::new(ws)), "WS", "ws", "walt").await;

    // SIP over secure WebSocket.
    let tcp = TcpStream::connect(edge.wss).await.unwrap();
    let tls = tls_connector(&edge).connect("localhost".try_into().unwrap(), tcp).await.expect("TLS handshake (WSS)");
    let (wss, _) = tokio_tungstenite::client_async(ws_request(edge.wss, "wss"), tls).await.expect("WebSocket handshake over TLS");
    register_and_call(Conn::Ws(Box::new(wss)), "WSS", "wss", "wendy").await;

    let code = tokio::task::spawn_blocking(move || {
        let c = uas.wait(Duration::from_secs(20));
        (c, uas.output())
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "UDP UAS did not complete 3 calls:\n{}\nedge log:\n{}", code.1, edge.log());
}

#[tokio::test]
async fn websocket_without_sip_subprotocol_is_refused() {
    let edge = Edge::start("", &[]);
    let tcp = TcpStream::connect(edge.ws).await.unwrap();
    let req = format!("ws://localhost:{}/", edge.ws.port()).into_client_request().unwrap();
    assert!(tokio_tungstenite::client_async(req, tcp).await.is_err());
}
