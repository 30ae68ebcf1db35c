//! Stream transports: SIP over TCP and TLS (RFC 3261 18.3 framing) and over WebSocket
//! (RFC 7118: one SIP message per WebSocket message, subprotocol `sip`), plain and TLS.
//! Each connection is a flow; its writer queue is reachable from every worker.

use super::RtShared;
use crate::core::{Input, Peer, Transmit};
use crate::msg::Message;
use crate::msg::framing::{Frame, FrameError, Framer};
use crate::msg::write::error_response_raw;
use crate::transport::{FlowId, Transport};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::{Message as WsMessage, WebSocketConfig};

/// Binds a TCP listener with `SO_REUSEADDR`.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Accepts connections of one listener forever.
pub async fn accept_loop(rt: Arc<RtShared>, t: Transport, l: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (sock, remote) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let rt = rt.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let timeout = std::time::Duration::from_secs(10);
            let gauge = metrics::gauge!("edge_connections", "transport" => t.uri_param());
            gauge.increment(1.0);
            metrics::counter!("edge_connections_accepted_total", "transport" => t.uri_param()).increment(1);
            match (t, acceptor) {
                (Transport::Tcp, _) => run_stream(rt, sock, t, remote, None).await,
                (Transport::Ws, _) => run_ws(rt, sock, t, remote).await,
                (Transport::Tls, Some(a)) => match tokio::time::timeout(timeout, a.accept(sock)).await {
                    Ok(Ok(s)) => run_stream(rt, s, t, remote, None).await,
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                },
                (Transport::Wss, Some(a)) => match tokio::time::timeout(timeout, a.accept(sock)).await {
                    Ok(Ok(s)) => run_ws(rt, s, t, remote).await,
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                },
                _ => {}
            }
            gauge.decrement(1.0);
        });
    }
}

/// Parses one framed message and hands it to its worker; answers what cannot be parsed.
fn deliver(rt: &RtShared, from: Peer, data: Bytes, reply: &tokio::sync::mpsc::UnboundedSender<Bytes>) {
    match Message::parse(data.clone()) {
        Ok(msg) => {
            super::count_sip(&msg);
            if rt.captures.is_active() {
                rt.captures.offer(&data, Some(&msg), from.addr, super::capture::local_for(&rt.core, &from));
            }
            rt.dispatch(from, msg)
        }
        Err(e) => {
            tracing::debug!(remote = %from.addr, error = %e, "unparsable message on stream");
            if let Some(r) = error_response_raw(&data, 400, &e.to_string()) {
                let _ = reply.send(r);
            }
        }
    }
}

fn closed(rt: &RtShared, flow: FlowId) {
    rt.flows.remove(flow);
    let _ = rt.workers[0].send(Input::FlowClosed(flow));
}

/// Runs a TCP or TLS connection: framing by Content-Length, CRLF keepalives answered.
pub async fn run_stream<S>(rt: Arc<RtShared>, stream: S, t: Transport, remote: SocketAddr, first: Option<Bytes>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (flow, mut rx) = rt.flows.register(t, remote);
    tracing::debug!(%remote, flow = flow.0, transport = %t, "connection open");
    let reply = match rt.flows.get(flow) {
        Some(h) => h.tx,
        None => return,
    };
    if let Some(b) = first {
        let _ = reply.send(b);
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let from = Peer { transport: t, addr: remote, flow: Some(flow) };
    let mut framer = Framer::new(rt.max_message_size);
    'read: loop {
        framer.buffer().reserve(8192);
        match rd.read_buf(framer.buffer()).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Ping)) => {
                    let _ = reply.send(Bytes::from_static(b"\r\n"));
                }
                Ok(Some(Frame::Message(m))) => deliver(&rt, from, m, &reply),
                Ok(None) => break,
                Err(e) => {
                    let (code, reason) = match e {
                        FrameError::TooLarge(_) => (513, "Message Too Large"),
                        FrameError::BadContentLength => (400, "Bad Header: Content-Length"),
                    };
                    tracing::debug!(%remote, error = %e, "closing connection");
                    if let Some(r) = error_response_raw(framer.buffer(), code, reason) {
                        let _ = reply.send(r);
                    }
                    break 'read;
                }
            }
        }
    }
    closed(&rt, flow);
    drop(reply);
    let _ = writer.await;
}

/// Runs a WebSocket connection (RFC 7118).
pub async fn run_ws<S>(rt: Arc<RtShared>, stream: S, t: Transport, remote: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // The callback's error type is fixed by tungstenite's `Callback` trait.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offers_sip = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("sip"));
        if !offers_sip {
            let mut e = ErrorResponse::new(Some("WebSocket subprotocol \"sip\" required (RFC 7118)".into()));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST;
            return Err(e);
        }
        resp.headers_mut().insert("Sec-WebSocket-Protocol", tokio_tungstenite::tungstenite::http::HeaderValue::from_static("sip"));
        Ok(resp)
    };
    let mut wscfg = WebSocketConfig::default();
    wscfg.max_message_size = Some(rt.max_message_size * 2);
    wscfg.max_frame_size = Some(rt.max_message_size * 2);
    let ws = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(wscfg)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "WebSocket handshake failed");
            return;
        }
        Err(_) => return,
    };
    let (flow, mut rx) = rt.flows.register(t, remote);
    let reply = match rt.flows.get(flow) {
        Some(h) => h.tx,
        None => return,
    };
    let (mut sink, mut source) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            let msg = match std::str::from_utf8(&b) {
                Ok(s) => WsMessage::text(s),
                Err(_) => WsMessage::binary(b),
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let from = Peer { transport: t, addr: remote, flow: Some(flow) };
    while let Some(m) = source.next().await {
        let data: Bytes = match m {
            Ok(WsMessage::Text(s)) => Bytes::from(s.as_str().to_owned()),
            Ok(WsMessage::Binary(b)) => b,
            Ok(WsMessage::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if data.len() > rt.max_message_size {
            if let Some(r) = error_response_raw(&data, 513, "Message Too Large") {
                let _ = reply.send(r);
            }
            break;
        }
        if data.iter().all(|&c| c == b'\r' || c == b'\n') {
            continue;
        }
        deliver(&rt, from, data, &reply);
    }
    closed(&rt, flow);
    drop(reply);
    let _ = writer.await;
}

/// Sends on a stream transport from a worker: over the given flow, over an existing
/// connection to the address, or (TCP only) over a new connection. Returns `false` when
/// it fails at once; a failed connect is reported later as [`Input::SendFailed`].
pub fn send(rt: &Arc<RtShared>, worker: usize, t: Transmit) -> bool {
    // When the flow is gone, fall back to the address for TCP/TLS peers (RFC 5626 5.3
    // says 430 for outbound flows; a plain reconnect is what non-outbound clients expect).
    if let Some(flow) = t.to.flow
        && let Some(h) = rt.flows.get(flow)
    {
        return h.tx.send(t.data).is_ok();
    }
    if let Some(h) = rt.flows.by_addr(t.to.transport, t.to.addr) {
        return h.tx.send(t.data).is_ok();
    }
    match t.to.transport {
        Transport::Tcp => {
            let rt2 = rt.clone();
            rt.conn.spawn(async move {
                let r = tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(t.to.addr)).await;
                match r {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        run_stream(rt2, s, Transport::Tcp, t.to.addr, Some(t.data)).await;
                    }
                    _ => {
                        tracing::debug!(to = %t.to.addr, "TCP connect failed");
                        if let Some(tsx) = t.tsx {
                            let _ = rt2.workers[worker].send(Input::SendFailed { tsx });
                        }
                    }
                }
            });
            true
        }
        Transport::Tls => {
            let Some(connector) = rt.tls_client.clone() else { return false };
            #[allow(clippy::disallowed_methods)]
            let name = rt.core.tls_name_for(t.to.addr, std::time::Instant::now()).unwrap_or_else(|| t.to.addr.ip().to_string());
            let rt2 = rt.clone();
            rt.conn.spawn(async move {
                let limit = std::time::Duration::from_secs(5);
                let r: Result<_, String> = async {
                    let server = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| format!("server name {name:?}: {e}"))?;
                    let tcp = tokio::time::timeout(limit, TcpStream::connect(t.to.addr))
                        .await
                        .map_err(|_| "TCP connect timed out".to_string())?
                        .map_err(|e| format!("TCP connect: {e}"))?;
                    let _ = tcp.set_nodelay(true);
                    tokio::time::timeout(limit, connector.connect(server, tcp))
                        .await
                        .map_err(|_| "TLS handshake timed out".to_string())?
                        .map_err(|e| format!("TLS handshake: {e}"))
                }
                .await;
                match r {
                    Ok(s) => run_stream(rt2, s, Transport::Tls, t.to.addr, Some(t.data)).await,
                    Err(e) => {
                        tracing::warn!(to = %t.to.addr, name, error = e, "TLS connection failed");
                        if let Some(tsx) = t.tsx {
                            let _ = rt2.workers[worker].send(Input::SendFailed { tsx });
                        }
                    }
                }
            });
            true
        }
        // Outbound WS connections are not opened by the edge: WS peers are only reachable
        // over the flow they opened.
        _ => false,
    }
}
