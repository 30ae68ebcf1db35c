//! SDP (RFC 8866) as an editable list of lines: session and media sections are found,
//! the fields the media relay rewrites are typed (connection address `c=`, media port and
//! protocol `m=`, `a=rtcp` (RFC 3605), `a=rtcp-mux` (RFC 5761), direction attributes
//! (RFC 3264 5.1), `a=crypto` (RFC 4568)), and every other line is written back unchanged.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Why a body is not usable SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP is not UTF-8")]
    NotUtf8,
    #[error("SDP does not start with v=0")]
    Version,
    #[error("malformed SDP line {0}")]
    Line(usize),
    #[error("malformed m= line {0}")]
    Media(usize),
}

/// Media direction (RFC 3264 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attr(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// One media section: index of its `m=` line and of the following lines up to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// Line index of `m=`.
    pub m_line: usize,
    /// Lines of this section (after `m=`), as a range of line indices.
    pub end: usize,
    pub kind: String,
    pub port: u16,
    /// Port count (`m=audio 49170/2 ...`), usually 1.
    pub ports: u16,
    pub proto: String,
    pub formats: Vec<String>,
}

/// An SDP body as lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Each line as `(type char, value)`, without the line terminator.
    pub lines: Vec<(char, String)>,
    /// Index of the first `m=` line (end of the session section).
    pub session_end: usize,
    pub media: Vec<Media>,
}

impl Sdp {
    /// Parses an SDP body. Tolerates LF line ends and a missing final terminator.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
        let mut lines = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.is_empty() {
                continue;
            }
            let mut ch = l.chars();
            let (Some(t), Some('=')) = (ch.next(), ch.next()) else { return Err(SdpError::Line(i + 1)) };
            if !t.is_ascii_lowercase() {
                return Err(SdpError::Line(i + 1));
            }
            lines.push((t, l[2..].to_string()));
        }
        if lines.first().map(|(t, v)| (*t, v.as_str())) != Some(('v', "0")) {
            return Err(SdpError::Version);
        }
        let mut media = Vec::new();
        for (i, (t, v)) in lines.iter().enumerate() {
            if *t != 'm' {
                continue;
            }
            let mut it = v.split_whitespace();
            let (Some(kind), Some(portspec), Some(proto)) = (it.next(), it.next(), it.next()) else { return Err(SdpError::Media(i + 1)) };
            let (port, ports) = match portspec.split_once('/') {
                Some((p, n)) => (p.parse().map_err(|_| SdpError::Media(i + 1))?, n.parse().map_err(|_| SdpError::Media(i + 1))?),
                None => (portspec.parse().map_err(|_| SdpError::Media(i + 1))?, 1),
            };
            if let Some(last) = media.last_mut() {
                let last: &mut Media = last;
                last.end = i;
            }
            media.push(Media {
                m_line: i,
                end: lines.len(),
                kind: kind.into(),
                port,
                ports,
                proto: proto.into(),
                formats: it.map(String::from).collect(),
            });
        }
        let session_end = media.first().map(|m| m.m_line).unwrap_or(lines.len());
        Ok(Sdp { lines, session_end, media })
    }

    /// Writes the body with CRLF line ends.
    pub fn write(&self) -> String {
        let mut s = String::with_capacity(self.lines.len() * 32);
        for (t, v) in &self.lines {
            let _ = write!(s, "{t}={v}\r\n");
        }
        s
    }

    fn attrs(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = (usize, &str)> {
        range.filter_map(|i| match &self.lines[i] {
            ('a', v) => Some((i, v.as_str())),
            _ => None,
        })
    }

    /// Attribute values of media `m` named `name` (`a=name:value` or `a=name`).
    pub fn media_attrs<'a>(&'a self, m: &Media, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.attrs(m.m_line + 1..m.end).filter_map(move |(_, v)| {
            let (n, val) = v.split_once(':').unwrap_or((v, ""));
            (n == name).then_some(val)
        })
    }

    /// The `a=rtpmap` encoding of payload type `pt` in media `m` (`opus/48000/2`), lowercase
    /// (RFC 4566 6: encoding names are case-insensitive).
    pub fn rtpmap(&self, m: &Media, pt: &str) -> Option<String> {
        self.media_attrs(m, "rtpmap").find_map(|v| {
            let (p, enc) = v.split_once(' ')?;
            (p.trim() == pt).then(|| enc.trim().to_ascii_lowercase())
        })
    }

    /// The connection address of media `m`: its own `c=` or the session's.
    pub fn connection(&self, m: &Media) -> Option<IpAddr> {
        let find = |r: std::ops::Range<usize>| {
            r.filter_map(|i| match &self.lines[i] {
                ('c', v) => v.split_whitespace().nth(2).and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok()),
                _ => None,
            })
            .next()
        };
        find(m.m_line + 1..m.end).or_else(|| find(0..self.session_end))
    }

    /// Direction of media `m` (media attribute, else session attribute, else sendrecv).
    pub fn direction(&self, m: &Media) -> Direction {
        let dir = |v: &str| match v {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        };
        self.attrs(m.m_line + 1..m.end)
            .find_map(|(_, v)| dir(v))
            .or_else(|| self.attrs(0..self.session_end).find_map(|(_, v)| dir(v)))
            .unwrap_or(Direction::SendRecv)
    }

    /// `true` if media `m` offers or accepts RTCP multiplexing (RFC 5761).
    pub fn rtcp_mux(&self, m: &Media) -> bool {
        self.media_attrs(m, "rtcp-mux").next().is_some()
    }

    /// The RTCP port of media `m` (RFC 3605 `a=rtcp`, else RTP port + 1, or the RTP port with rtcp-mux).
    pub fn rtcp_port(&self, m: &Media) -> u16 {
        if self.rtcp_mux(m) {
            return m.port;
        }
        self.media_attrs(m, "rtcp")
            .next()
            .and_then(|v| v.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(m.port.wrapping_add(1))
    }

    /// Points media `index` at `addr`:`port` (and RTCP at `rtcp_port` when given): rewrites
    /// or adds the media `c=`, the `m=` port and an existing `a=rtcp`. The session `c=` and
    /// `o=` addresses are rewritten too when `hide_origin` (topology hiding).
    pub fn set_address(&mut self, index: usize, addr: IpAddr, port: u16, rtcp_port: Option<u16>, hide_origin: bool) {
        let Some(m) = self.media.get(index).cloned() else { return };
        let ipv = if addr.is_ipv4() { "IP4" } else { "IP6" };
        // m= port
        let rest: Vec<&str> = self.lines[m.m_line].1.split_whitespace().collect();
        let portspec = if m.ports > 1 { format!("{port}/{}", m.ports) } else { port.to_string() };
        let mut new_m = format!("{} {portspec}", m.kind);
        for r in rest.iter().skip(2) {
            new_m.push(' ');
            new_m.push_str(r);
        }
        self.lines[m.m_line].1 = new_m;
        self.media[index].port = port;
        // media c= (added right after m= if missing: RFC 8866 5.7 allows media-level c=)
        let conn = format!("IN {ipv} {addr}");
        match (m.m_line + 1..m.end).find(|&i| self.lines[i].0 == 'c') {
            Some(i) => self.lines[i].1 = conn,
            None => self.insert(m.m_line + 1, ('c', conn)),
        }
        let m = self.media[index].clone();
        if let Some(rp) = rtcp_port {
            for i in m.m_line + 1..m.end {
                if self.lines[i].0 == 'a' && self.lines[i].1.starts_with("rtcp:") {
                    self.lines[i].1 = format!("rtcp:{rp} IN {ipv} {addr}");
                }
            }
        }
        if hide_origin {
            for i in 0..self.session_end {
                match self.lines[i].0 {
                    'c' => self.lines[i].1 = format!("IN {ipv} {addr}"),
                    'o' => {
                        let mut f: Vec<String> = self.lines[i].1.split_whitespace().map(String::from).collect();
                        if f.len() == 6 {
                            f[4] = ipv.into();
                            f[5] = addr.to_string();
                            self.lines[i].1 = f.join(" ");
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sets the direction attribute of media `index` (hold: sendonly/inactive).
    pub fn set_direction(&mut self, index: usize, d: Direction) {
        let Some(m) = self.media.get(index).cloned() else { return };
        let is_dir = |v: &str| matches!(v, "sendrecv" | "sendonly" | "recvonly" | "inactive");
        match (m.m_line + 1..m.end).find(|&i| self.lines[i].0 == 'a' && is_dir(&self.lines[i].1)) {
            Some(i) => self.lines[i].1 = d.attr().into(),
            None => self.insert(m.end, ('a', d.attr().into())),
        }
    }

    /// Removes every `a=crypto` of media `index` (SDES bridging to plain RTP).
    pub fn remove_attr(&mut self, index: usize, name: &str) {
        let Some(m) = self.media.get(index).cloned() else { return };
        let mut i = m.m_line + 1;
        let mut end = m.end;
        while i < end {
            let is = self.lines[i].0 == 'a' && self.lines[i].1.split(':').next() == Some(name);
            if is {
                self.remove(i);
                end -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// Appends a line at the end of media section `index` (e.g. an `a=crypto`).
    pub fn push_media_line(&mut self, index: usize, line: (char, String)) {
        let Some(end) = self.media.get(index).map(|m| m.end) else { return };
        self.insert(end, line);
    }

    fn insert(&mut self, at: usize, line: (char, String)) {
        self.lines.insert(at, line);
        self.shift(at, 1);
    }

    fn remove(&mut self, at: usize) {
        self.lines.remove(at);
        self.shift(at + 1, -1);
    }

    fn shift(&mut self, from: usize, d: isize) {
        let adj = |x: &mut usize| {
            if *x >= from {
                *x = (*x as isize + d) as usize;
            }
        };
        for m in &mut self.media {
            adj(&mut m.m_line);
            adj(&mut m.end);
        }
        self.session_end = self.media.first().map(|m| m.m_line).unwrap_or(self.lines.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:49171\r\na=sendrecv\r\nm=video 51372 RTP/SAVP 96\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\na=rtcp-mux\r\n";

    #[test]
    fn parse_and_round_trip() {
        let s = Sdp::parse(OFFER.as_bytes()).unwrap();
        assert_eq!(s.write(), OFFER);
        assert_eq!(s.media.len(), 2);
        let (a, v) = (&s.media[0], &s.media[1]);
        assert_eq!((a.kind.as_str(), a.port, a.proto.as_str()), ("audio", 49170, "RTP/AVP"));
        assert_eq!(a.formats, vec!["0", "8", "101"]);
        assert_eq!(s.connection(a), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(s.rtcp_port(a), 49171);
        assert!(!s.rtcp_mux(a));
        assert!(s.rtcp_mux(v));
        assert_eq!(s.rtcp_port(v), 51372);
        assert_eq!(s.media_attrs(v, "crypto").count(), 1);
        assert_eq!(s.direction(a), Direction::SendRecv);
    }

    #[test]
    fn rewrite_for_the_relay() {
        let mut s = Sdp::parse(OFFER.as_bytes()).unwrap();
        let relay: IpAddr = "192.0.2.1".parse().unwrap();
        s.set_address(0, relay, 30000, Some(30001), true);
        s.set_address(1, relay, 30002, None, true);
        s.set_direction(0, Direction::SendOnly);
        s.remove_attr(1, "crypto");
        let out = s.write();
        let again = Sdp::parse(out.as_bytes()).unwrap();
        assert_eq!(again.media[0].port, 30000);
        assert_eq!(again.connection(&again.media[0]), Some(relay));
        assert_eq!(again.connection(&again.media[1]), Some(relay));
        assert_eq!(again.rtcp_port(&again.media[0]), 30001);
        assert_eq!(again.direction(&again.media[0]), Direction::SendOnly);
        assert_eq!(again.media_attrs(&again.media[1], "crypto").count(), 0);
        assert!(!out.contains("10.0.0.5"), "topology hidden: {out}");
        assert!(out.contains("a=rtpmap:101 telephone-event/8000"), "other lines kept");
    }

    #[test]
    fn bad_sdp() {
        assert_eq!(Sdp::parse(b"x=1\r\n"), Err(SdpError::Version));
        assert_eq!(Sdp::parse(b"v=0\r\nm=audio x RTP/AVP 0\r\n"), Err(SdpError::Media(2)));
        assert_eq!(Sdp::parse(b"v=0\r\nnonsense\r\n"), Err(SdpError::Line(2)));
        assert_eq!(Sdp::parse(&[0xff, 0xfe]), Err(SdpError::NotUtf8));
    }
}
