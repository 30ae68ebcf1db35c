//! ICMP errors on the SIP UDP sockets (Linux `IP_RECVERR` / `IPV6_RECVERR`, RFC 3261 18.4).
//!
//! An unconnected UDP socket hears nothing of the ICMP "port unreachable" a dead next hop
//! sends back, so a dead trunk would only be found by the INVITE timeout. With `IP_RECVERR`
//! the kernel queues one entry per ICMP error, naming the destination of the datagram that
//! caused it; the edge reads them and fails the branches towards that destination over at
//! once (a transport error, RFC 3261 17.1.4). The entries are charged to the socket's
//! receive buffer: a socket with the option on must drain its queue, or it stops receiving
//! once enough peers have answered "unreachable".

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt};
use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

/// SO_EE_ORIGIN_ICMP / SO_EE_ORIGIN_ICMP6 (linux/errqueue.h).
const ORIGIN_ICMP: u8 = 2;
const ORIGIN_ICMP6: u8 = 3;

/// Turns the error queue on for `sock` (IPv4, and IPv6 for an IPv6 socket; an IPv6 socket
/// that also carries IPv4 needs both).
pub fn enable(sock: &impl AsFd, ipv6: bool) -> std::io::Result<()> {
    if ipv6 {
        setsockopt(sock, sockopt::Ipv6RecvErr, &true)?;
        // Dual-stack sockets get IPv4 ICMP errors only with the IPv4 option; v6-only refuses it.
        let _ = setsockopt(sock, sockopt::Ipv4RecvErr, &true);
    } else {
        setsockopt(sock, sockopt::Ipv4RecvErr, &true)?;
    }
    Ok(())
}

/// Reads every queued error off `sock` (non-blocking) and hands `f` the destination of
/// each datagram that came back as ICMP "unreachable" (port, host, network, prohibited;
/// IPv4-mapped IPv6 addresses as IPv4). Returns the number of queue entries read once the
/// queue is empty; other errors (a closed socket) are returned as they are.
pub fn drain(sock: &impl AsRawFd, mut f: impl FnMut(SocketAddr)) -> std::io::Result<usize> {
    let fd = sock.as_raw_fd();
    let mut data = [0u8; 1];
    // Room for the error and the offender, plus what else the socket asks for on every
    // message (quinn-udp turns on IP_PKTINFO and IP_TOS): a short buffer truncates them.
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6, libc::in6_pktinfo, libc::c_int, [u8; 128]);
    let mut read = 0;
    loop {
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg = match recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return Ok(read),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        read += 1;
        let to = msg.address.as_ref().and_then(socket_addr);
        let Ok(cmsgs) = msg.cmsgs() else { continue };
        for c in cmsgs {
            let err = match c {
                ControlMessageOwned::Ipv4RecvErr(e, _) | ControlMessageOwned::Ipv6RecvErr(e, _) => e,
                _ => continue,
            };
            if (err.ee_origin == ORIGIN_ICMP || err.ee_origin == ORIGIN_ICMP6)
                && is_unreachable(err.ee_errno as i32)
                && let Some(to) = to
            {
                f(to);
            }
        }
    }
}

/// The errno values the kernel gives ICMP destination-unreachable messages.
fn is_unreachable(errno: i32) -> bool {
    matches!(errno, libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES | libc::EPROTO)
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    let v6 = SocketAddrV6::from(*s.as_sockaddr_in6()?);
    Some(match v6.ip().to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(v4.into(), v6.port()),
        None => SocketAddr::V6(v6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram to a closed loopback port comes back as an error queue entry naming it.
    #[test]
    fn port_unreachable_is_read_from_the_error_queue() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(&sock, false).unwrap();
        // As on the edge's sockets: quinn-udp adds IP_PKTINFO and IP_TOS to every message.
        let _state = quinn_udp::UdpSocketState::new((&sock).into()).unwrap();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        sock.send_to(b"x", closed).unwrap();
        let mut seen = Vec::new();
        let mut read = 0;
        for _ in 0..100 {
            read += drain(&sock, |to| seen.push(to)).unwrap();
            if !seen.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen, vec![closed]);
        assert_eq!(read, 1);
        assert_eq!(drain(&sock, |_| panic!("queue is empty")).unwrap(), 0);
    }

    /// With the option on and no draining, a socket that provoked enough ICMP errors
    /// receives nothing more; with draining it keeps receiving.
    #[test]
    fn an_undrained_error_queue_starves_the_socket_and_draining_frees_it() {
        let starve = |drain_it: bool| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_recv_buffer_size(65_536).unwrap();
            s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
            let sock: std::net::UdpSocket = s.into();
            enable(&sock, false).unwrap();
            sock.set_nonblocking(true).unwrap();
            let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            for _ in 0..2000 {
                let _ = sock.send_to(&[0u8; 100], closed);
                if drain_it {
                    drain(&sock, |_| {}).unwrap();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            if drain_it {
                drain(&sock, |_| {}).unwrap();
            }
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..10 {
                peer.send_to(b"hello", sock.local_addr().unwrap()).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut got = 0;
            let mut buf = [0u8; 64];
            for _ in 0..100 {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) if &buf[..n] == b"hello" => got += 1,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {} // the pending socket error (ECONNREFUSED) is reported once
                }
            }
            got
        };
        assert_eq!(starve(false), 0, "the kernel charges queued ICMP errors to the receive buffer");
        assert_eq!(starve(true), 10);
    }
}
