//! Relay sockets of one worker: one UDP socket per relay port (RTP and RTCP of each leg),
//! all registered in a mio poller whose epoll descriptor is itself watched by the worker's
//! tokio runtime. A wake-up drains every ready socket with quinn-udp (`recvmmsg`, up to
//! `BATCH` datagrams per call), asks the worker's core where each packet goes, and sends it
//! out of the other leg's socket. The receive storage and the packet buffer are reused:
//! nothing is allocated per packet.

use super::Worker;
use crate::media::relay::Ports;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token};
use quinn_udp::{RecvMeta, UdpSocketState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{ErrorKind, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// Largest relayed datagram.
const SLOT: usize = 2048;
/// Datagrams per receive call.
const BATCH: usize = if quinn_udp::BATCH_SIZE < 32 { quinn_udp::BATCH_SIZE } else { 32 };

struct Sock {
    sock: UdpSocket,
    state: UdpSocketState,
}

/// The sockets of one worker's relay ports.
pub struct RelaySockets {
    bind_ip: IpAddr,
    registry: Registry,
    socks: HashMap<u16, Sock>,
}

impl RelaySockets {
    fn open(&mut self, port: u16) -> std::io::Result<()> {
        let std = std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, port))?;
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std).into())?;
        let mut sock = UdpSocket::from_std(std);
        self.registry.register(&mut sock, Token(port as usize), Interest::READABLE)?;
        self.socks.insert(port, Sock { sock, state });
        Ok(())
    }
}

/// [`Ports`] for the anchor: binds and closes real sockets.
pub struct SocketPorts(pub Rc<RefCell<RelaySockets>>);

impl Ports for SocketPorts {
    fn bind(&mut self, port: u16) -> bool {
        let mut s = self.0.borrow_mut();
        match s.open(port) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(port, error = %e, "relay port unavailable");
                false
            }
        }
    }

    fn release(&mut self, port: u16) {
        let mut s = self.0.borrow_mut();
        if let Some(mut sk) = s.socks.remove(&port) {
            let _ = s.registry.deregister(&mut sk.sock);
        }
    }
}

/// A worker's poller and sockets.
pub struct RelayIo {
    poll: AsyncFd<Poll>,
    pub sockets: Rc<RefCell<RelaySockets>>,
}

impl RelayIo {
    /// A poller for relay sockets bound on `bind_ip` (must run inside the worker's runtime).
    pub fn new(bind_ip: IpAddr) -> std::io::Result<RelayIo> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let sockets = Rc::new(RefCell::new(RelaySockets { bind_ip, registry, socks: HashMap::new() }));
        // `AsyncFd::new` is deprecated in favour of the unsafe `register` because a type
        // could return different descriptors over time; `mio::Poll` owns one epoll
        // descriptor for its whole life, which is exactly the condition `register` asks for.
        #[allow(deprecated)]
        let poll = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
        Ok(RelayIo { poll, sockets })
    }
}

/// Relays packets forever.
pub(super) async fn relay_loop(w: Rc<Worker>, io: RelayIo) {
    let RelayIo { mut poll, sockets } = io;
    let mut events = Events::with_capacity(1024);
    let mut storage = vec![0u8; SLOT * BATCH];
    let mut meta = [RecvMeta::default(); BATCH];
    let mut pkt: Vec<u8> = Vec::with_capacity(SLOT + 64);
    let mut ready: Vec<u16> = Vec::with_capacity(1024);
    let packets = metrics::counter!("edge_media_packets_relayed_total");
    let dropped = metrics::counter!("edge_media_packets_dropped_total");
    let bytes = metrics::counter!("edge_media_bytes_relayed_total");
    loop {
        // WebRTC bridges (issue #8) have timers (ICE consent, DTLS retransmission, RTCP,
        // pacing): wake for them too. A bridge starts with the browser's first STUN
        // check, which arrives on a socket of this poller.
        let deadline = w.core.borrow().media_bridge_timeout();
        // Signalling may give a bridge work too (a SIP INFO digit): `media_wake`.
        let woke = match deadline {
            Some(at) => tokio::select! {
                g = poll.readable_mut() => Some(g),
                _ = tokio::time::sleep_until(at.into()) => None,
                _ = w.media_wake.notified() => None,
            },
            None => tokio::select! {
                g = poll.readable_mut() => Some(g),
                _ = w.media_wake.notified() => None,
            },
        };
        let mut guard = match woke {
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                tracing::error!(error = %e, "relay poller");
                return;
            }
            None => {
                let mut core = w.core.borrow_mut();
                core.handle_media_bridge_timeout(Instant::now());
                flush_bridges(&mut core, &sockets.borrow());
                continue;
            }
        };
        // Edge-triggered registrations: every reported socket is drained (a short recvmmsg
        // batch means the socket is empty).
        loop {
            events.clear();
            if let Err(e) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                tracing::debug!(error = %e, "relay poll");
                break;
            }
            if events.is_empty() {
                break;
            }
            ready.clear();
            ready.extend(events.iter().map(|e| e.token().0 as u16));
            let now = Instant::now();
            let (mut fwd, mut drop, mut fwd_bytes) = (0u64, 0u64, 0u64);
            for &port in &ready {
                loop {
                    let n = {
                        let socks = sockets.borrow();
                        let Some(s) = socks.socks.get(&port) else { break };
                        let mut slices: [IoSliceMut<'_>; BATCH] = slot_slices(&mut storage);
                        match s.state.recv((&s.sock).into(), &mut slices, &mut meta) {
                            Ok(n) => n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => {
                                tracing::debug!(port, error = %e, "relay receive");
                                break;
                            }
                        }
                    };
                    let mut core = w.core.borrow_mut();
                    let socks = sockets.borrow();
                    for (i, m) in meta.iter().take(n).enumerate() {
                        let buf = &storage[i * SLOT..i * SLOT + m.len.min(SLOT)];
                        let stride = if m.stride == 0 { buf.len().max(1) } else { m.stride };
                        for d in buf.chunks(stride) {
                            pkt.clear();
                            pkt.extend_from_slice(d);
                            let src = unmap(m.addr);
                            match core.handle_media(now, port, src, &mut pkt) {
                                Some(f) => match socks.socks.get(&f.from_port).map(|o| o.sock.send_to(&pkt, f.to)) {
                                    Some(Ok(n)) => {
                                        fwd += 1;
                                        fwd_bytes += n as u64;
                                    }
                                    _ => drop += 1,
                                },
                                None => drop += 1,
                            }
                        }
                    }
                    flush_bridges(&mut core, &socks);
                    if n < BATCH {
                        // A short batch: the socket is (nearly always) empty; one more
                        // call would only return WouldBlock.
                        break;
                    }
                }
            }
            packets.increment(fwd);
            bytes.increment(fwd_bytes);
            dropped.increment(drop);
            if events.iter().count() < events.capacity() {
                // Everything ready was drained. A packet arriving from now on makes the
                // poller's descriptor readable again, a fresh edge for the runtime: no need
                // for a confirming (empty) poll.
                break;
            }
        }
        guard.clear_ready();
    }
}

/// Sends what the WebRTC bridges have queued.
fn flush_bridges(core: &mut super::Core, socks: &RelaySockets) {
    while let Some(d) = core.poll_media_output() {
        match socks.socks.get(&d.from_port).map(|s| s.sock.send_to(&d.data, d.to)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!(port = d.from_port, to = %d.to, error = %e, "bridge send"),
            None => {}
        }
    }
}

fn slot_slices(storage: &mut [u8]) -> [IoSliceMut<'_>; BATCH] {
    let mut it = storage.chunks_mut(SLOT);
    std::array::from_fn(|_| IoSliceMut::new(it.next().unwrap_or_default()))
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}
