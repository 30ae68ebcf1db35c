//! Batched UDP: one `SO_REUSEPORT` socket per worker, received with quinn-udp (recvmmsg,
//! up to `BATCH_SIZE` datagrams per system call, GRO where the kernel has it).

use super::Worker;
use crate::core::{Input, Peer};
use crate::msg::Message;
use crate::transport::Transport;
use bytes::Bytes;
use quinn_udp::{RecvMeta, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;
use tokio::io::Interest;

/// Receive slot size: the largest UDP payload.
const SLOT: usize = 65_536;
/// Datagrams per receive call.
const BATCH: usize = if quinn_udp::BATCH_SIZE < 16 { quinn_udp::BATCH_SIZE } else { 16 };

/// Fails if another process already holds `addr` (SO_REUSEPORT would otherwise let a second
/// edge share the port silently and split the traffic): a plain bind without the option
/// is refused while any socket is bound there.
pub fn ensure_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    std::net::UdpSocket::bind(addr).map(drop)
}

/// Binds a UDP socket with `SO_REUSEPORT` so each worker can have its own.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Large buffers: bursts of signalling must not be dropped by the kernel.
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    // ICMP errors are read by `error_loop` (a dead next hop fails over at once).
    super::icmp::enable(&s, addr.is_ipv6())?;
    Ok(s.into())
}

/// Wraps a bound socket for tokio and quinn-udp.
pub fn prepare(s: std::net::UdpSocket) -> std::io::Result<(tokio::net::UdpSocket, UdpSocketState)> {
    let state = UdpSocketState::new((&s).into())?;
    let sock = tokio::net::UdpSocket::from_std(s)?;
    Ok((sock, state))
}

/// Receives batches forever and feeds the worker's core (or the owning worker).
pub(super) async fn recv_loop(w: Rc<Worker>, sock: Rc<tokio::net::UdpSocket>, state: UdpSocketState) {
    let mut storage = vec![0u8; SLOT * BATCH];
    let mut meta = [RecvMeta::default(); BATCH];
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let n = {
            let mut slices: Vec<IoSliceMut<'_>> = storage.chunks_mut(SLOT).map(IoSliceMut::new).collect();
            match sock.try_io(Interest::READABLE, || state.recv((&*sock).into(), &mut slices, &mut meta)) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    // The socket's pending ICMP error; the queue itself is read by `error_loop`.
                    tracing::debug!(error = %e, "udp receive error");
                    continue;
                }
            }
        };
        let now = Instant::now();
        for (i, m) in meta.iter().take(n).enumerate() {
            let buf = &storage[i * SLOT..i * SLOT + m.len.min(SLOT)];
            let stride = if m.stride == 0 { buf.len().max(1) } else { m.stride };
            for dgram in buf.chunks(stride) {
                on_datagram(&w, &sock, now, dgram, m.addr);
            }
        }
        w.flush();
    }
}

/// Reads the socket's ICMP error queue whenever the kernel reports an error on it (see
/// [`super::icmp`]) and tells the core which UDP destinations are unreachable, once per
/// destination per wake-up, at most `MAX_UNREACHABLE` destinations per wake-up.
pub(super) async fn error_loop(w: Rc<Worker>, sock: Rc<tokio::net::UdpSocket>) {
    /// Bounds the core's work when something provokes a flood of ICMP errors.
    const MAX_UNREACHABLE: usize = 64;
    let mut hit: Vec<SocketAddr> = Vec::new();
    loop {
        if sock.ready(Interest::ERROR).await.is_err() {
            return;
        }
        let r: std::io::Result<()> = sock.try_io(Interest::ERROR, || {
            super::icmp::drain(&*sock, |to| {
                if hit.len() < MAX_UNREACHABLE && !hit.contains(&to) {
                    hit.push(to);
                }
            })?;
            // Empty: clear the readiness until the kernel reports the next error.
            Err(std::io::ErrorKind::WouldBlock.into())
        });
        if let Err(e) = r
            && e.kind() != std::io::ErrorKind::WouldBlock
        {
            tracing::warn!(error = %e, "udp error queue");
            return;
        }
        if hit.is_empty() {
            continue;
        }
        let now = Instant::now();
        // SO_REUSEPORT: the kernel hands the ICMP error to the socket its hash picks for the
        // reverse flow, not necessarily the one that sent; every worker looks for its branches.
        for to in hit.drain(..) {
            tracing::debug!(%to, "ICMP unreachable");
            for (i, other) in w.rt.workers.iter().enumerate() {
                if i != w.idx {
                    let _ = other.send(Input::Unreachable { to });
                }
            }
            w.core.borrow_mut().handle_input(now, Input::Unreachable { to });
        }
        w.flush();
    }
}

fn on_datagram(w: &Worker, sock: &tokio::net::UdpSocket, now: Instant, data: &[u8], src: SocketAddr) {
    // Keepalives (CRLF, RFC 5626 4.4.1 style) carry nothing to answer over UDP.
    if data.iter().all(|&c| c == b'\r' || c == b'\n' || c == 0) {
        return;
    }
    let src = match src {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => src,
        },
        v4 => v4,
    };
    let bytes = Bytes::copy_from_slice(data);
    match Message::parse(bytes) {
        Ok(msg) => {
            super::count_sip(&msg);
            if w.rt.captures.is_active()
                && let Ok(local) = sock.local_addr()
            {
                w.rt.captures.offer(data, Some(&msg), src, local);
            }
            let from = Peer { transport: Transport::Udp, addr: src, flow: None };
            let owner = w.rt.owner(&msg);
            if owner == w.idx {
                w.core.borrow_mut().handle_input(now, Input::Message { from, msg });
            } else {
                let _ = w.rt.workers[owner].send(Input::Message { from, msg });
            }
        }
        Err(e) => {
            tracing::debug!(%src, error = %e, "unparsable datagram");
            if let Some(resp) = crate::msg::write::error_response_raw(data, 400, &e.to_string()) {
                let _ = sock.try_send_to(&resp, src);
            }
        }
    }
}
