//! Batched UDP send with `sendmmsg(2)`: one system call for every datagram a flush
//! produced (quinn-udp batches receive, and sends only GSO runs of equal-size segments to
//! one destination, which SIP messages are not).
//!
//! This is the one place in loadgen with `unsafe`: the FFI call. Its buffers are built from
//! safe slices that outlive the call.
#![allow(unsafe_code)]

use socket2::SockAddr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// At most this many datagrams per system call (Linux UIO_MAXIOV is 1024).
pub const MAX_BATCH: usize = 64;

/// Sends `msgs` (destination, payload) on the UDP socket `fd`. Returns how many were sent
/// (fewer on `EAGAIN` part way); an error only when the first one fails.
pub fn send_batch(fd: RawFd, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < msgs.len() {
        let chunk = &msgs[sent..msgs.len().min(sent + MAX_BATCH)];
        let addrs: Vec<SockAddr> = chunk.iter().map(|(a, _)| SockAddr::from(*a)).collect();
        let mut iovs: Vec<libc::iovec> =
            chunk.iter().map(|(_, d)| libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() }).collect();
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(chunk.len());
        for (i, a) in addrs.iter().enumerate() {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value that we then fill.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = a.len();
            h.msg_hdr.msg_iov = &mut iovs[i] as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
            hdrs.push(h);
        }
        // SAFETY: `hdrs` points at `iovs` and `addrs`, which live until after the call;
        // the kernel reads at most `hdrs.len()` entries and writes only `msg_len`.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if sent > 0 && e.kind() == io::ErrorKind::WouldBlock {
                return Ok(sent);
            }
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return if sent > 0 { Ok(sent) } else { Err(e) };
        }
        sent += n as usize;
        if (n as usize) < chunk.len() {
            return Ok(sent);
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn sends_a_batch_to_several_destinations() {
        let rx1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a1, a2) = (rx1.local_addr().unwrap(), rx2.local_addr().unwrap());
        let msgs: Vec<(SocketAddr, &[u8])> = vec![(a1, b"one"), (a2, b"two!"), (a1, b"three")];
        assert_eq!(send_batch(tx.as_raw_fd(), &msgs).unwrap(), 3);
        let mut b = [0u8; 16];
        let n = rx1.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"one");
        let n = rx1.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"three");
        let n = rx2.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"two!");
    }
}
