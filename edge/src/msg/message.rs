//! The SIP message (RFC 3261 section 7): a zero-copy view over one received buffer.
//!
//! Parsing finds the start line and the header lines and records byte ranges; nothing is
//! copied and no header value is interpreted until asked for. Headers stay in wire order
//! so a forwarded message keeps every header it does not touch byte for byte.

use super::header::HeaderName;
use super::name_addr::NameAddr;
use super::text::{split_commas, trim};
use super::via::Via;
use bytes::Bytes;
use std::ops::Range;

/// A request method (RFC 3261 7.1, plus extension methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    /// An extension method (RFC 3261 7.1: any token).
    Extension,
}

impl Method {
    /// Classifies a method token (case-sensitive, RFC 3261 7.1).
    pub fn from_token(t: &[u8]) -> Method {
        match t {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Extension,
        }
    }

    /// Every method, in declaration order (`ALL[m as usize] == m`).
    pub const ALL: [Method; 15] = [
        Method::Invite,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Register,
        Method::Options,
        Method::Info,
        Method::Update,
        Method::Prack,
        Method::Subscribe,
        Method::Notify,
        Method::Refer,
        Method::Message,
        Method::Publish,
        Method::Extension,
    ];

    /// The method's name (`"other"` for extension methods), e.g. for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Extension => "other",
        }
    }
}

/// One header line: its kind and byte ranges of name and (possibly folded) value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    /// Range of the whole line, without the line terminator (folded lines included).
    pub line: (u32, u32),
    /// Range of the value: after the colon and leading white space, to the end of the line.
    pub value: (u32, u32),
}

/// Request line or status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, method_range: (u32, u32), uri: (u32, u32) },
    Response { code: u16, reason: (u32, u32) },
}

/// Why a buffer is not a SIP message, or which header is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("malformed start line")]
    StartLine,
    #[error("malformed header line")]
    HeaderLine,
    #[error("header section is not UTF-8")]
    NotUtf8,
    #[error("missing header section terminator")]
    Truncated,
    #[error("Bad Header: {}", .0.as_str())]
    BadHeader(HeaderName),
    #[error("Missing Header: {}", .0.as_str())]
    MissingHeader(HeaderName),
}

/// CSeq (RFC 3261 20.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a str,
}

/// A parsed SIP message that borrows nothing: it owns a `Bytes` and ranges into it.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    headers: Vec<Header>,
    /// Offset of the first header line (after the start line's terminator).
    headers_start: u32,
    /// Offset where the body begins.
    body_start: u32,
    body_end: u32,
}

fn find_line(b: &[u8], from: usize) -> Option<(usize, usize)> {
    // returns (end of content, start of next line)
    let nl = memchr::memchr(b'\n', &b[from..])? + from;
    let end = if nl > from && b[nl - 1] == b'\r' { nl - 1 } else { nl };
    Some((end, nl + 1))
}

impl Message {
    /// Parses a complete message. For datagrams the body is the rest of the buffer,
    /// cut to Content-Length when that is shorter (RFC 3261 18.3); a Content-Length
    /// larger than what arrived is a malformed Content-Length.
    pub fn parse(buf: Bytes) -> Result<Message, ParseError> {
        let b = &buf[..];
        if b.len() > u32::MAX as usize {
            return Err(ParseError::Truncated);
        }
        // RFC 3261 7.5: ignore empty lines before the start line.
        let mut pos = 0;
        while pos < b.len() && (b[pos] == b'\r' || b[pos] == b'\n') {
            pos += 1;
        }
        if pos >= b.len() {
            return Err(ParseError::Empty);
        }
        let (sl_end, mut next) = find_line(b, pos).ok_or(ParseError::Truncated)?;
        let start = parse_start_line(b, pos, sl_end)?;
        let headers_start = next as u32;
        let mut headers: Vec<Header> = Vec::with_capacity(16);
        let body_start;
        loop {
            let (end, nl) = find_line(b, next).ok_or(ParseError::Truncated)?;
            if end == next {
                body_start = nl;
                break;
            }
            let first = b[next];
            if first == b' ' || first == b'\t' {
                // folded continuation (RFC 3261 7.3.1)
                let last = headers.last_mut().ok_or(ParseError::HeaderLine)?;
                last.line.1 = end as u32;
                last.value.1 = end as u32;
            } else {
                let line = &b[next..end];
                let colon = memchr::memchr(b':', line).ok_or(ParseError::HeaderLine)?;
                let mut name_end = colon;
                while name_end > 0 && (line[name_end - 1] == b' ' || line[name_end - 1] == b'\t') {
                    name_end -= 1;
                }
                if name_end == 0 {
                    return Err(ParseError::HeaderLine);
                }
                let name_bytes = &line[..name_end];
                if !name_bytes.iter().all(|&c| c.is_ascii_graphic()) {
                    return Err(ParseError::HeaderLine);
                }
                let mut vs = colon + 1;
                while vs < line.len() && (line[vs] == b' ' || line[vs] == b'\t') {
                    vs += 1;
                }
                headers.push(Header {
                    name: HeaderName::from_bytes(name_bytes),
                    line: (next as u32, end as u32),
                    value: ((next + vs) as u32, end as u32),
                });
            }
            next = nl;
        }
        if std::str::from_utf8(&b[pos..body_start]).is_err() {
            return Err(ParseError::NotUtf8);
        }
        let mut msg = Message { start, headers, headers_start, body_start: body_start as u32, body_end: b.len() as u32, buf: Bytes::new() };
        msg.buf = buf;
        if let Some(cl) = msg.header(HeaderName::ContentLength) {
            let n: usize = trim(cl).parse().map_err(|_| ParseError::BadHeader(HeaderName::ContentLength))?;
            let avail = msg.buf.len() - body_start;
            if n > avail {
                return Err(ParseError::BadHeader(HeaderName::ContentLength));
            }
            msg.body_end = (body_start + n) as u32;
        }
        Ok(msg)
    }

    /// The whole buffer this message was parsed from.
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    #[inline]
    fn str_at(&self, r: (u32, u32)) -> &str {
        std::str::from_utf8(&self.buf[r.0 as usize..r.1 as usize]).unwrap_or("")
    }

    /// The raw bytes of a range.
    #[inline]
    pub fn slice(&self, r: (u32, u32)) -> &[u8] {
        &self.buf[r.0 as usize..r.1 as usize]
    }

    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method of a request; for a response, the CSeq method classified.
    pub fn method(&self) -> Method {
        match &self.start {
            StartLine::Request { method, .. } => *method,
            StartLine::Response { .. } => self.cseq().map(|c| Method::from_token(c.method.as_bytes())).unwrap_or(Method::Extension),
        }
    }

    /// The method token as written (needed for extension methods).
    pub fn method_str(&self) -> &str {
        match &self.start {
            StartLine::Request { method_range, .. } => self.str_at(*method_range),
            StartLine::Response { .. } => self.cseq().map(|c| c.method).unwrap_or(""),
        }
    }

    /// Request-URI text of a request.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(self.str_at(*uri)),
            _ => None,
        }
    }

    /// Status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(self.str_at(*reason)),
            _ => None,
        }
    }

    /// All header lines in wire order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Value text of one header line.
    pub fn value(&self, h: &Header) -> &str {
        self.str_at(h.value)
    }

    /// Offset of the first header line.
    pub fn headers_start(&self) -> usize {
        self.headers_start as usize
    }

    /// The first header of a kind.
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.iter().find(|h| h.name == name).map(|h| self.value(h))
    }

    /// All header lines of a kind (values not split on commas).
    pub fn header_lines(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        self.headers.iter().filter(move |h| h.name == name).map(|h| self.value(h))
    }

    /// All values of a list header, across lines and commas (RFC 3261 7.3.1).
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        self.header_lines(name).flat_map(split_commas)
    }

    /// First header by name for headers without a typed kind (case-insensitive).
    pub fn header_other(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| {
                h.name == HeaderName::Other && {
                    let line = self.slice(h.line);
                    let raw = line.split(|&c| c == b':').next().unwrap_or(b"").trim_ascii_end();
                    raw.eq_ignore_ascii_case(name.as_bytes())
                }
            })
            .map(|h| self.value(h))
    }

    /// The message body (exactly Content-Length bytes when given).
    pub fn body(&self) -> Bytes {
        self.buf.slice(self.body_start as usize..self.body_end as usize)
    }

    pub fn body_range(&self) -> Range<usize> {
        self.body_start as usize..self.body_end as usize
    }

    /// Call-ID (RFC 3261 20.8).
    pub fn call_id(&self) -> Option<&str> {
        self.header(HeaderName::CallId).map(trim).filter(|s| !s.is_empty())
    }

    /// CSeq (RFC 3261 20.16).
    pub fn cseq(&self) -> Option<CSeq<'_>> {
        let v = trim(self.header(HeaderName::CSeq)?);
        let mut it = v.split([' ', '\t', '\r', '\n']).filter(|s| !s.is_empty());
        let seq = it.next()?.parse::<u32>().ok()?;
        let method = it.next()?;
        if it.next().is_some() || !method.bytes().all(|c| c.is_ascii_graphic()) {
            return None;
        }
        Some(CSeq { seq, method })
    }

    /// The topmost Via value (first value of the first Via line).
    pub fn top_via_str(&self) -> Option<&str> {
        self.values(HeaderName::Via).next()
    }

    pub fn top_via(&self) -> Option<Via<'_>> {
        Via::parse(self.top_via_str()?)
    }

    pub fn from_hdr(&self) -> Option<NameAddr<'_>> {
        NameAddr::parse(self.header(HeaderName::From)?)
    }

    pub fn to_hdr(&self) -> Option<NameAddr<'_>> {
        NameAddr::parse(self.header(HeaderName::To)?)
    }

    /// Max-Forwards (RFC 3261 20.22); `Some(Err)` when malformed.
    pub fn max_forwards(&self) -> Option<Result<u32, ()>> {
        self.header(HeaderName::MaxForwards).map(|v| trim(v).parse::<u32>().map_err(|_| ()))
    }

    /// Expires header (RFC 3261 20.19); `Some(Err)` when malformed.
    pub fn expires(&self) -> Option<Result<u32, ()>> {
        self.header(HeaderName::Expires).map(|v| trim(v).parse::<u32>().map_err(|_| ()))
    }

    /// Checks the headers every request and response must carry and the ones the edge
    /// interprets (RFC 3261 8.1.1, 16.3). The error names the offending header, which
    /// becomes the reason phrase of a 400.
    pub fn validate(&self) -> Result<(), ParseError> {
        use HeaderName as H;
        let mut vias = 0;
        for v in self.values(H::Via) {
            Via::parse(v).ok_or(ParseError::BadHeader(H::Via))?;
            vias += 1;
        }
        if vias == 0 {
            return Err(ParseError::MissingHeader(H::Via));
        }
        for (name, required) in [(H::From, true), (H::To, true)] {
            match self.header(name) {
                Some(v) => {
                    let na = NameAddr::parse(v).ok_or(ParseError::BadHeader(name))?;
                    if na.uri.find(':').is_none() {
                        return Err(ParseError::BadHeader(name));
                    }
                }
                None if required => return Err(ParseError::MissingHeader(name)),
                None => {}
            }
        }
        if self.header(H::CallId).is_none() {
            return Err(ParseError::MissingHeader(H::CallId));
        }
        let cid = self.call_id().ok_or(ParseError::BadHeader(H::CallId))?;
        if cid.contains(char::is_whitespace) {
            return Err(ParseError::BadHeader(H::CallId));
        }
        if self.header(H::CSeq).is_none() {
            return Err(ParseError::MissingHeader(H::CSeq));
        }
        let cseq = self.cseq().ok_or(ParseError::BadHeader(H::CSeq))?;
        if let StartLine::Request { method_range, .. } = &self.start {
            let m = self.str_at(*method_range);
            // RFC 3261 8.2.3: CSeq method must match the request method (ACK/CANCEL included).
            if cseq.method != m {
                return Err(ParseError::BadHeader(H::CSeq));
            }
        }
        if let Some(Err(())) = self.max_forwards() {
            return Err(ParseError::BadHeader(H::MaxForwards));
        }
        if let Some(Err(())) = self.expires() {
            return Err(ParseError::BadHeader(H::Expires));
        }
        for name in [H::Route, H::RecordRoute, H::Path] {
            for v in self.values(name) {
                let na = NameAddr::parse(v).ok_or(ParseError::BadHeader(name))?;
                super::uri::SipUri::parse(na.uri).map_err(|_| ParseError::BadHeader(name))?;
            }
        }
        for v in self.values(H::Contact) {
            if v == "*" {
                continue;
            }
            let na = NameAddr::parse(v).ok_or(ParseError::BadHeader(H::Contact))?;
            if na.uri.find(':').is_none() {
                return Err(ParseError::BadHeader(H::Contact));
            }
            if let Some(e) = na.param("expires") {
                e.and_then(|e| trim(e).parse::<u32>().ok()).ok_or(ParseError::BadHeader(H::Contact))?;
            }
        }
        Ok(())
    }
}

fn parse_start_line(b: &[u8], start: usize, end: usize) -> Result<StartLine, ParseError> {
    let line = &b[start..end];
    if line.starts_with(b"SIP/2.0 ") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        if line.len() < 11 {
            return Err(ParseError::StartLine);
        }
        let code_b = &line[8..11];
        if !code_b.iter().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::StartLine);
        }
        let code = (code_b[0] - b'0') as u16 * 100 + (code_b[1] - b'0') as u16 * 10 + (code_b[2] - b'0') as u16;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine);
        }
        if line.len() > 11 && line[11] != b' ' {
            return Err(ParseError::StartLine);
        }
        let rs = (start + 12).min(end);
        return Ok(StartLine::Response { code, reason: (rs as u32, end as u32) });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::StartLine)?;
    let sp2 = memchr::memrchr(b' ', line).ok_or(ParseError::StartLine)?;
    if sp2 <= sp1 + 1 || &line[sp2 + 1..] != b"SIP/2.0" {
        return Err(ParseError::StartLine);
    }
    let method = &line[..sp1];
    if method.is_empty() || !method.iter().all(|&c| c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)) {
        return Err(ParseError::StartLine);
    }
    let uri = &line[sp1 + 1..sp2];
    if uri.contains(&b' ') || !uri.contains(&b':') {
        return Err(ParseError::StartLine);
    }
    Ok(StartLine::Request {
        method: Method::from_token(method),
        method_range: (start as u32, (start + sp1) as u32),
        uri: ((start + sp1 + 1) as u32, (start + sp2) as u32),
    })
}

#[cfg(test)]
pub(crate) mod tests {

    #[test]
    fn method_table_is_indexed_by_discriminant() {
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
            assert_eq!(Method::from_token(m.name().as_bytes()), if *m == Method::Extension { Method::Extension } else { *m });
        }
    }

    use super::*;

    pub const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    #[test]
    fn parses_invite() {
        let m = Message::parse(Bytes::from_static(INVITE.as_bytes())).unwrap();
        assert_eq!(m.method(), Method::Invite);
        assert_eq!(m.request_uri(), Some("sip:bob@biloxi.example.com"));
        assert_eq!(m.call_id(), Some("a84b4c76e66710"));
        assert_eq!(m.cseq(), Some(CSeq { seq: 314159, method: "INVITE" }));
        assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bKnashds8"));
        assert_eq!(m.from_hdr().unwrap().tag(), Some("1928301774"));
        assert_eq!(&m.body()[..], b"v=0\n");
        assert_eq!(m.max_forwards(), Some(Ok(70)));
        m.validate().unwrap();
    }

    #[test]
    fn compact_folded_and_multi_via() {
        let raw = "OPTIONS sip:x@y SIP/2.0\r\n\
v: SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP c.example\r\n\
\x20;branch=z9hG4bK3\r\n\
f: <sip:a@b>;tag=x\r\nt: <sip:x@y>\r\ni: abc@host\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
        let m = Message::parse(Bytes::from(raw)).unwrap();
        m.validate().unwrap();
        let vias: Vec<_> = m.values(HeaderName::Via).map(|v| Via::parse(v).unwrap().branch().unwrap()).collect();
        assert_eq!(vias, vec!["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]);
        assert_eq!(m.call_id(), Some("abc@host"));
    }

    #[test]
    fn extension_method_and_response() {
        let m = Message::parse(Bytes::from_static(b"FOO sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 2 FOO\r\n\r\n")).unwrap();
        assert_eq!(m.method(), Method::Extension);
        assert_eq!(m.method_str(), "FOO");
        m.validate().unwrap();
        let r = Message::parse(Bytes::from_static(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>;tag=2\r\nCall-ID: c\r\nCSeq: 2 INVITE\r\n\r\n")).unwrap();
        assert_eq!(r.status(), Some(180));
        assert_eq!(r.reason(), Some("Ringing"));
        assert_eq!(r.method(), Method::Invite);
    }

    #[test]
    fn malformed_headers_are_named() {
        let base = |h: &str| {
            format!(
                "INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{h}\r\n"
            )
        };
        let m = Message::parse(Bytes::from(base("Max-Forwards: abc\r\n"))).unwrap();
        assert_eq!(m.validate(), Err(ParseError::BadHeader(HeaderName::MaxForwards)));
        let m = Message::parse(Bytes::from(base("Contact: <sip:a@b>;expires=x\r\n"))).unwrap();
        assert_eq!(m.validate(), Err(ParseError::BadHeader(HeaderName::Contact)));
        let m = Message::parse(Bytes::from(base("Route: <http://x>\r\n"))).unwrap();
        assert_eq!(m.validate(), Err(ParseError::BadHeader(HeaderName::Route)));
        let err = Message::parse(Bytes::from(base("Content-Length: 99\r\n"))).unwrap_err();
        assert_eq!(err, ParseError::BadHeader(HeaderName::ContentLength));
        assert_eq!(err.to_string(), "Bad Header: Content-Length");
        let raw = "INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: one INVITE\r\n\r\n";
        let m = Message::parse(Bytes::from(raw)).unwrap();
        assert_eq!(m.validate(), Err(ParseError::BadHeader(HeaderName::CSeq)));
    }

    #[test]
    fn bad_start_lines() {
        for raw in
            ["", "\r\n\r\n", "INVITE\r\n\r\n", "SIP/2.0 99 x\r\n\r\n", "INVITE sip:x SIP/1.0\r\n\r\n", "SIP/2.0 200 OK\r\nNoColon\r\n\r\n"]
        {
            assert!(Message::parse(Bytes::from(raw)).is_err(), "{raw:?}");
        }
    }
}
