//! Stream framing for SIP over TCP and TLS (RFC 3261 section 18.3): messages are
//! delimited by the header terminator plus Content-Length, which is mandatory on streams.
//! Keepalives (RFC 5626 section 4.4.1): a CRLFCRLF "ping" is answered with a CRLF "pong".

use super::header::HeaderName;
use bytes::{Buf, Bytes, BytesMut};

/// One item taken off a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete message (start line to end of body).
    Message(Bytes),
    /// A CRLFCRLF keepalive ping: answer with CRLF.
    Ping,
}

/// Framing failures; the connection is answered 513 (too large) or 400 and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("message exceeds the maximum size of {0} bytes")]
    TooLarge(usize),
    #[error("missing or malformed Content-Length on a stream")]
    BadContentLength,
}

/// Accumulates stream bytes and cuts them into messages.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    max: usize,
}

impl Framer {
    /// `max` is the largest message (headers plus body) accepted.
    pub fn new(max: usize) -> Framer {
        Framer { buf: BytesMut::with_capacity(4096), max }
    }

    /// Buffer to read into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the next complete frame, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        // Leading CRLFs: a double CRLF is a ping; a single CRLF is a pong (ignored).
        let mut lead = 0;
        while lead < self.buf.len() && (self.buf[lead] == b'\r' || self.buf[lead] == b'\n') {
            lead += 1;
        }
        if lead > 0 {
            if lead == self.buf.len() && lead < 4 && self.buf.starts_with(b"\r\n\r") {
                return Ok(None); // wait for the rest of a ping
            }
            let ping = self.buf[..lead].windows(4).any(|w| w == b"\r\n\r\n");
            self.buf.advance(lead);
            if ping {
                return Ok(Some(Frame::Ping));
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let Some(hend) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > self.max {
                return Err(FrameError::TooLarge(self.max));
            }
            return Ok(None);
        };
        let body_start = hend + 4;
        let cl = content_length(&self.buf[..hend]).ok_or(FrameError::BadContentLength)?;
        let total = body_start.checked_add(cl).ok_or(FrameError::TooLarge(self.max))?;
        if total > self.max {
            return Err(FrameError::TooLarge(self.max));
        }
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }
}

/// Finds Content-Length (or `l`) in a header block. Folded values are not expected here.
fn content_length(head: &[u8]) -> Option<usize> {
    let mut found = None;
    for line in head.split(|&c| c == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else { continue };
        let name = line[..colon].trim_ascii_end();
        if HeaderName::from_bytes(name) == HeaderName::ContentLength {
            let v = std::str::from_utf8(&line[colon + 1..]).ok()?.trim();
            let n: usize = v.parse().ok()?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_keepalive() {
        let mut f = Framer::new(1000);
        let m1 = b"OPTIONS sip:a SIP/2.0\r\nl: 3\r\n\r\nabc";
        let m2 = b"OPTIONS sip:b SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        f.extend(b"\r\n\r\n");
        f.extend(&m1[..10]);
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Ping));
        assert_eq!(f.next_frame().unwrap(), None);
        f.extend(&m1[10..]);
        f.extend(m2);
        f.extend(b"\r\n");
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Message(Bytes::from_static(m1))));
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Message(Bytes::from_static(m2))));
        assert_eq!(f.next_frame().unwrap(), None);
    }

    #[test]
    fn oversize_and_missing_length() {
        let mut f = Framer::new(64);
        f.extend(b"INVITE sip:a SIP/2.0\r\nContent-Length: 100\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge(64)));
        let mut f = Framer::new(64);
        f.extend(&[b'a'; 100]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge(64)));
        let mut f = Framer::new(640);
        f.extend(b"INVITE sip:a SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::BadContentLength));
    }
}
