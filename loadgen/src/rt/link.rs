//! Transports of the load generator: a client link towards the target (UDP socket, or one
//! TCP/TLS/WS/WSS connection) and a server link for `answer` (UDP socket or listener).
//! Received messages arrive framed on one channel; sending never blocks the engine.

use bytes::Bytes;
use edge::msg::framing::{Frame, Framer};
use futures_util::{SinkExt, StreamExt};
use quinn_udp::{RecvMeta, UdpSocketState};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Transport of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Proto {
    pub fn via(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
            Proto::Tls => "TLS",
            Proto::Ws => "WS",
            Proto::Wss => "WSS",
        }
    }
}

/// TLS client options.
#[derive(Debug, Clone, Default)]
pub struct TlsOpts {
    /// PEM file with the CA (or self-signed certificate) to trust.
    pub ca: Option<PathBuf>,
    /// Accept any certificate (test rigs only).
    pub insecure: bool,
    /// Server name to verify; defaults to the target host.
    pub server_name: Option<String>,
    /// Certificate and key for a TLS/WSS `answer` listener.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Inbound messages: (source, bytes). The source is the peer for UDP and connections.
pub type Inbound = mpsc::UnboundedReceiver<(SocketAddr, Bytes)>;

/// Sending half.
#[derive(Clone)]
pub enum Tx {
    Udp { sock: Arc<UdpSocket>, target: Option<SocketAddr> },
    Stream(mpsc::UnboundedSender<Bytes>),
    Server { udp: Option<Arc<UdpSocket>>, conns: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Bytes>>>> },
}

impl Tx {
    /// Sends everything in `batch`: over UDP with one `sendmmsg` per 64 datagrams, else one
    /// by one. Datagrams the socket could not take at once are sent asynchronously.
    pub fn send_all(&self, batch: Vec<(Option<SocketAddr>, Bytes)>) {
        let (sock, target) = match self {
            Tx::Udp { sock, target } => (sock, *target),
            Tx::Server { udp: Some(sock), conns } if conns.lock().map(|c| c.is_empty()).unwrap_or(false) => (sock, None),
            _ => {
                for (to, d) in batch {
                    let _ = self.send(to, d);
                }
                return;
            }
        };
        use std::os::fd::AsRawFd;
        let msgs: Vec<(SocketAddr, Bytes)> = batch.into_iter().filter_map(|(to, d)| to.or(target).map(|a| (a, d))).collect();
        let refs: Vec<(SocketAddr, &[u8])> = msgs.iter().map(|(a, d)| (*a, &d[..])).collect();
        let n = super::sendmmsg::send_batch(sock.as_raw_fd(), &refs).unwrap_or(0);
        for (a, d) in msgs.into_iter().skip(n) {
            let sock = sock.clone();
            tokio::spawn(async move {
                let _ = sock.send_to(&d, a).await;
            });
        }
    }

    /// Sends to `to`, or to the link's target. Returns `false` if it cannot.
    pub fn send(&self, to: Option<SocketAddr>, data: Bytes) -> bool {
        match self {
            Tx::Udp { sock, target } => match to.or(*target) {
                Some(a) => match sock.try_send_to(&data, a) {
                    Ok(_) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let sock = sock.clone();
                        tokio::spawn(async move {
                            let _ = sock.send_to(&data, a).await;
                        });
                        true
                    }
                    Err(_) => false,
                },
                None => false,
            },
            Tx::Stream(tx) => tx.send(data).is_ok(),
            Tx::Server { udp, conns } => {
                let Some(to) = to else { return false };
                if let Some(c) = conns.lock().ok().and_then(|m| m.get(&to).cloned()) {
                    return c.send(data).is_ok();
                }
                match udp {
                    Some(s) => s.try_send_to(&data, to).is_ok(),
                    None => false,
                }
            }
        }
    }
}

/// Binds a UDP socket (optionally `SO_REUSEPORT`).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Reads UDP in batches (recvmmsg through quinn-udp) into the inbound channel.
fn spawn_udp_reader(sock: Arc<UdpSocket>, tx: mpsc::UnboundedSender<(SocketAddr, Bytes)>) -> std::io::Result<()> {
    let state = UdpSocketState::new((&*sock).into())?;
    tokio::spawn(async move {
        const SLOT: usize = 65_536;
        let batch = quinn_udp::BATCH_SIZE.min(16);
        let mut storage = vec![0u8; SLOT * batch];
        let mut meta = vec![RecvMeta::default(); batch];
        loop {
            if sock.readable().await.is_err() {
                return;
            }
            let n = {
                let mut slices: Vec<IoSliceMut<'_>> = storage.chunks_mut(SLOT).map(IoSliceMut::new).collect();
                match sock.try_io(Interest::READABLE, || state.recv((&*sock).into(), &mut slices, &mut meta)) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => continue,
                }
            };
            for (i, m) in meta.iter().take(n).enumerate() {
                let buf = &storage[i * SLOT..i * SLOT + m.len.min(SLOT)];
                let stride = if m.stride == 0 { buf.len().max(1) } else { m.stride };
                for d in buf.chunks(stride) {
                    if tx.send((m.addr, Bytes::copy_from_slice(d))).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(())
}

/// Runs a byte stream: frames messages into `inbound`, writes what `rx` gives.
fn spawn_stream<S>(s: S, peer: SocketAddr, inbound: mpsc::UnboundedSender<(SocketAddr, Bytes)>, mut rx: mpsc::UnboundedReceiver<Bytes>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(s);
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut f = Framer::new(1 << 20);
        loop {
            f.buffer().reserve(16384);
            match rd.read_buf(f.buffer()).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            loop {
                match f.next_frame() {
                    Ok(Some(Frame::Message(m))) => {
                        if inbound.send((peer, m)).is_err() {
                            return;
                        }
                    }
                    Ok(Some(Frame::Ping)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    });
}

/// Runs a WebSocket (one SIP message per WebSocket message, RFC 7118).
fn spawn_ws<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    peer: SocketAddr,
    inbound: mpsc::UnboundedSender<(SocketAddr, Bytes)>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            let m = match std::str::from_utf8(&b) {
                Ok(s) => Ws::text(s),
                Err(_) => Ws::binary(b),
            };
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            let b = match m {
                Ws::Text(t) => Bytes::from(t.as_str().to_owned()),
                Ws::Binary(b) => b,
                Ws::Close(_) => return,
                _ => continue,
            };
            if inbound.send((peer, b)).is_err() {
                return;
            }
        }
    });
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector(opts: &TlsOpts) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let cfg = if opts.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let Some(ca) = &opts.ca else {
            return Err("TLS needs --ca FILE (the CA or self-signed certificate to trust) or --insecure".into());
        };
        let pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(c.map_err(|e| format!("--ca {}: {e}", ca.display()))?).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// A client link towards `target`.
pub struct ClientLink {
    pub tx: Tx,
    pub rx: Inbound,
    /// Our address as the target sees it (for Via/Contact).
    pub local: SocketAddr,
}

/// Opens a client link. Fails with a clear message when the target refuses.
pub async fn connect(proto: Proto, target: SocketAddr, host: &str, tls: &TlsOpts) -> Result<ClientLink, String> {
    let (itx, irx) = mpsc::unbounded_channel();
    let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0".parse().unwrap_or(target) } else { "[::]:0".parse().unwrap_or(target) };
    let bind = if target.ip().is_loopback() { SocketAddr::new(target.ip(), 0) } else { bind };
    match proto {
        Proto::Udp => {
            let sock = Arc::new(bind_udp(bind).map_err(|e| format!("udp bind: {e}"))?);
            let local = sock.local_addr().map_err(|e| e.to_string())?;
            spawn_udp_reader(sock.clone(), itx).map_err(|e| e.to_string())?;
            Ok(ClientLink { tx: Tx::Udp { sock, target: Some(target) }, rx: irx, local })
        }
        _ => {
            let tcp = tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(target))
                .await
                .map_err(|_| format!("connecting to {target}: timed out"))?
                .map_err(|e| format!("connecting to {target}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().map_err(|e| e.to_string())?;
            let (wtx, wrx) = mpsc::unbounded_channel();
            let name = tls.server_name.clone().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_string());
            let server_name = || ServerName::try_from(name.clone()).map_err(|e| format!("TLS server name {name:?}: {e}"));
            match proto {
                Proto::Tcp => spawn_stream(tcp, target, itx, wrx),
                Proto::Tls => {
                    let s =
                        tls_connector(tls)?.connect(server_name()?, tcp).await.map_err(|e| format!("TLS handshake with {target}: {e}"))?;
                    spawn_stream(s, target, itx, wrx)
                }
                Proto::Ws | Proto::Wss => {
                    let scheme = if proto == Proto::Ws { "ws" } else { "wss" };
                    let mut req = format!(
                        "{scheme}://{}:{}/",
                        if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() },
                        target.port()
                    )
                    .into_client_request()
                    .map_err(|e| e.to_string())?;
                    req.headers_mut()
                        .insert("Sec-WebSocket-Protocol", tokio_tungstenite::tungstenite::http::HeaderValue::from_static("sip"));
                    if proto == Proto::Ws {
                        let (ws, _) = tokio_tungstenite::client_async(req, tcp)
                            .await
                            .map_err(|e| format!("WebSocket handshake with {target}: {e}"))?;
                        spawn_ws(ws, target, itx, wrx);
                    } else {
                        let s = tls_connector(tls)?
                            .connect(server_name()?, tcp)
                            .await
                            .map_err(|e| format!("TLS handshake with {target}: {e}"))?;
                        let (ws, _) =
                            tokio_tungstenite::client_async(req, s).await.map_err(|e| format!("WebSocket handshake with {target}: {e}"))?;
                        spawn_ws(ws, target, itx, wrx);
                    }
                }
                Proto::Udp => {}
            }
            Ok(ClientLink { tx: Tx::Stream(wtx), rx: irx, local })
        }
    }
}

/// A server link for `answer`.
pub struct ServerLink {
    pub tx: Tx,
    pub rx: Inbound,
    pub local: SocketAddr,
}

/// Listens on `addr` with `proto`.
pub async fn listen(proto: Proto, addr: SocketAddr, tls: &TlsOpts) -> Result<ServerLink, String> {
    let (itx, irx) = mpsc::unbounded_channel();
    let conns: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Bytes>>>> = Arc::default();
    if proto == Proto::Udp {
        let sock = Arc::new(bind_udp(addr).map_err(|e| format!("udp {addr}: {e}"))?);
        let local = sock.local_addr().map_err(|e| e.to_string())?;
        spawn_udp_reader(sock.clone(), itx).map_err(|e| e.to_string())?;
        return Ok(ServerLink { tx: Tx::Server { udp: Some(sock), conns }, rx: irx, local });
    }
    let acceptor = match proto {
        Proto::Tls | Proto::Wss => {
            let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
                return Err("a TLS/WSS listener needs --cert FILE and --key FILE (PEM)".into());
            };
            Some(tokio_rustls::TlsAcceptor::from(edge::rt::tls::server_config(Arc::new(edge::rt::tls::CertStore::load(cert, key)?))?))
        }
        _ => None,
    };
    let l = TcpListener::bind(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    let c2 = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let (wtx, wrx) = mpsc::unbounded_channel();
            if let Ok(mut m) = c2.lock() {
                m.insert(peer, wtx);
            }
            let itx = itx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The callback's error type is fixed by tungstenite's `Callback` trait.
                #[allow(clippy::result_large_err)]
                let ws_check = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                                mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    let _ = req;
                    resp.headers_mut()
                        .insert("Sec-WebSocket-Protocol", tokio_tungstenite::tungstenite::http::HeaderValue::from_static("sip"));
                    Ok(resp)
                };
                match (proto, acceptor) {
                    (Proto::Tcp, _) => spawn_stream(s, peer, itx, wrx),
                    (Proto::Tls, Some(a)) => {
                        if let Ok(t) = a.accept(s).await {
                            spawn_stream(t, peer, itx, wrx)
                        }
                    }
                    (Proto::Ws, _) => {
                        if let Ok(ws) = tokio_tungstenite::accept_hdr_async(s, ws_check).await {
                            spawn_ws(ws, peer, itx, wrx)
                        }
                    }
                    (Proto::Wss, Some(a)) => {
                        if let Ok(t) = a.accept(s).await
                            && let Ok(ws) = tokio_tungstenite::accept_hdr_async(t, ws_check).await
                        {
                            spawn_ws(ws, peer, itx, wrx)
                        }
                    }
                    _ => {}
                }
            });
        }
    });
    Ok(ServerLink { tx: Tx::Server { udp: None, conns }, rx: irx, local })
}
