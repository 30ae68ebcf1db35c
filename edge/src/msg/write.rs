//! Writing messages: responses to a request (RFC 3261 8.2.6, 16.7) and forwarded copies
//! of a received message with the edits a proxy makes (RFC 3261 16.6). Headers that are
//! not edited are copied byte for byte.

use super::header::HeaderName;
use super::message::{Message, StartLine};
use super::text::split_commas;
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::Write as _;

/// Standard reason phrases (RFC 3261 section 21).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        430 => "Flow Failed",
        433 => "Anonymity Disallowed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "Unknown",
    }
}

/// A BYE within a dialog (RFC 3261 15.1.1 with 12.2.1.1): to the remote `target`, along the
/// dialog's route set `routes` (in order), with our `via` value (`SIP/2.0/UDP host;branch=..`),
/// the dialog's `from` (ours, with our tag) and `to`, and `extra` complete header lines.
#[allow(clippy::too_many_arguments)]
pub fn bye(target: &str, via: &str, routes: &[String], from: &str, to: &str, call_id: &str, seq: u32, extra: &str) -> Bytes {
    let mut s = String::with_capacity(512);
    let _ = write!(s, "BYE {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n");
    if !routes.is_empty() {
        let _ = write!(s, "Route: {}\r\n", routes.join(", "));
    }
    let _ = write!(s, "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {seq} BYE\r\n{extra}Content-Length: 0\r\n\r\n");
    Bytes::from(s)
}

/// Builds a response to `req` (RFC 3261 8.2.6.2): Via (with `top_via` replacing the first
/// value when given, e.g. with `received`/`rport` added), From, To (plus `to_tag` when
/// the request's To has none), Call-ID and CSeq copied; `extra` is zero or more complete
/// header lines, each ending in CRLF; `body` is sent with its Content-Length.
pub fn response(req: &Message, code: u16, reason: &str, top_via: Option<&str>, to_tag: Option<&str>, extra: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(512 + extra.len() + body.len());
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    let mut first_via = true;
    for h in req.headers() {
        match h.name {
            HeaderName::Via => {
                for v in split_commas(req.value(h)) {
                    let v = if first_via { top_via.unwrap_or(v) } else { v };
                    first_via = false;
                    let _ = write!(out, "Via: {v}\r\n");
                }
            }
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                out.put_slice(req.slice(h.line));
                out.put_slice(b"\r\n");
            }
            HeaderName::To => {
                out.put_slice(req.slice(h.line));
                if let Some(tag) = to_tag {
                    let has_tag = req.to_hdr().map(|t| t.tag().is_some()).unwrap_or(true);
                    if !has_tag && code > 100 {
                        let _ = write!(out, ";tag={tag}");
                    }
                }
                out.put_slice(b"\r\n");
            }
            _ => {}
        }
    }
    out.put_slice(extra.as_bytes());
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    out.put_slice(body);
    out.freeze()
}

/// A response to bytes that did not parse as a message (bad header line, oversize
/// stream message): Via, From, To, Call-ID and CSeq lines are copied as text. `None`
/// when the bytes are a response or carry no Via (nobody to answer).
pub fn error_response_raw(raw: &[u8], code: u16, reason: &str) -> Option<Bytes> {
    let start = raw.iter().position(|&c| c != b'\r' && c != b'\n')?;
    let raw = &raw[start..];
    if raw.starts_with(b"SIP/") {
        return None;
    }
    let head_end = memchr::memmem::find(raw, b"\r\n\r\n").unwrap_or(raw.len());
    let mut out = BytesMut::with_capacity(512);
    let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    let mut via = false;
    for line in raw[..head_end].split(|&c| c == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else { continue };
        let raw_name = line[..colon].trim_ascii_end();
        if raw_name.is_empty() || !raw_name.iter().all(|c| c.is_ascii_graphic()) || line.iter().any(|&c| c == b'\r' || c == 0) {
            continue;
        }
        let name = HeaderName::from_bytes(raw_name);
        if matches!(name, HeaderName::Via | HeaderName::From | HeaderName::To | HeaderName::CallId | HeaderName::CSeq)
            && std::str::from_utf8(line).is_ok()
        {
            via |= name == HeaderName::Via;
            out.put_slice(line);
            out.put_slice(b"\r\n");
        }
    }
    if !via {
        return None;
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
    Some(out.freeze())
}

/// Edits applied when forwarding a received message. Everything not named here is
/// copied verbatim, in order.
#[derive(Debug, Default)]
pub struct Forward<'a> {
    /// New Request-URI (requests only).
    pub request_uri: Option<&'a str>,
    /// Header lines (each ending CRLF) inserted before the first header, e.g. our Via
    /// and Record-Route.
    pub prepend: &'a str,
    /// Replaces the first Via value (e.g. to add `received`/`rport`).
    pub top_via: Option<&'a str>,
    /// Number of Via values removed from the top (1 when forwarding a response).
    pub drop_vias: usize,
    /// Number of Route values removed from the top (our own, RFC 3261 16.4).
    pub drop_routes: usize,
    /// Route values (each `<uri>`) to insert before the existing ones (RFC 3261 16.6 step 7).
    pub push_routes: &'a [String],
    /// New Max-Forwards value; added when the message had none.
    pub max_forwards: Option<u32>,
    /// Header lines appended after the copied headers (each ending CRLF).
    pub append: &'a str,
    /// Replaces the body (Content-Length follows), e.g. SDP rewritten for the media relay.
    pub body: Option<&'a [u8]>,
    /// New CSeq number (the method stays), e.g. for a dialog whose CSeq the edge shifted
    /// after answering a trunk's digest challenge.
    pub cseq: Option<u32>,
    /// Names of headers (not interpreted ones) left out, case-insensitive, e.g.
    /// `P-Asserted-Identity` towards an untrusted trunk (RFC 3325 5).
    pub drop_headers: &'a [&'a str],
}

impl Forward<'_> {
    /// Writes the forwarded message.
    pub fn write(&self, msg: &Message) -> Bytes {
        let raw = msg.bytes();
        let body: &[u8] = match self.body {
            Some(b) => b,
            None => &raw[msg.body_range()],
        };
        let mut out = BytesMut::with_capacity(raw.len() + self.prepend.len() + self.append.len() + 64);
        match msg.start_line() {
            StartLine::Request { method_range, uri, .. } => {
                out.put_slice(msg.slice(*method_range));
                out.put_u8(b' ');
                match self.request_uri {
                    Some(u) => out.put_slice(u.as_bytes()),
                    None => out.put_slice(msg.slice(*uri)),
                }
                out.put_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { .. } => {
                let end = msg.headers_start();
                let mut s = 0;
                while s < end && (raw[s] == b'\r' || raw[s] == b'\n') {
                    s += 1;
                }
                out.put_slice(&raw[s..end]);
            }
        }
        out.put_slice(self.prepend.as_bytes());
        let mut vias_to_drop = self.drop_vias;
        let mut replace_via = self.top_via;
        let mut routes_to_drop = self.drop_routes;
        let mut pushed_routes = self.push_routes.is_empty();
        let mut saw_mf = false;
        let mut saw_cl = false;
        for h in msg.headers() {
            match h.name {
                HeaderName::Via if vias_to_drop > 0 || replace_via.is_some() => {
                    let mut first = true;
                    let mut wrote_any = false;
                    for v in split_commas(msg.value(h)) {
                        if vias_to_drop > 0 {
                            vias_to_drop -= 1;
                            continue;
                        }
                        let v = match replace_via.take() {
                            Some(r) => r,
                            None => v,
                        };
                        out.put_slice(if first { b"Via: ".as_slice() } else { b", ".as_slice() });
                        out.put_slice(v.as_bytes());
                        first = false;
                        wrote_any = true;
                    }
                    if wrote_any {
                        out.put_slice(b"\r\n");
                    }
                }
                HeaderName::Route if routes_to_drop > 0 || !pushed_routes => {
                    let mut first = true;
                    if !pushed_routes {
                        for r in self.push_routes {
                            out.put_slice(if first { b"Route: ".as_slice() } else { b", ".as_slice() });
                            out.put_slice(r.as_bytes());
                            first = false;
                        }
                        pushed_routes = true;
                    }
                    for v in split_commas(msg.value(h)) {
                        if routes_to_drop > 0 {
                            routes_to_drop -= 1;
                            continue;
                        }
                        out.put_slice(if first { b"Route: ".as_slice() } else { b", ".as_slice() });
                        out.put_slice(v.as_bytes());
                        first = false;
                    }
                    if !first {
                        out.put_slice(b"\r\n");
                    }
                }
                HeaderName::MaxForwards if self.max_forwards.is_some() && !saw_mf => {
                    saw_mf = true;
                    let _ = write!(out, "Max-Forwards: {}\r\n", self.max_forwards.unwrap_or(70));
                }
                HeaderName::CSeq if self.cseq.is_some() => {
                    let v = msg.value(h);
                    let method = v.split_whitespace().nth(1).unwrap_or("");
                    let _ = write!(out, "CSeq: {} {method}\r\n", self.cseq.unwrap_or(0));
                }
                HeaderName::ContentLength => {
                    if !saw_cl {
                        saw_cl = true;
                        let _ = write!(out, "Content-Length: {}\r\n", body.len());
                    }
                }
                HeaderName::Other
                    if !self.drop_headers.is_empty() && {
                        let line = msg.slice(h.line);
                        let name = line.split(|&b| b == b':').next().unwrap_or(b"").trim_ascii();
                        self.drop_headers.iter().any(|d| d.as_bytes().eq_ignore_ascii_case(name))
                    } => {}
                _ => {
                    out.put_slice(msg.slice(h.line));
                    out.put_slice(b"\r\n");
                }
            }
        }
        if !pushed_routes {
            out.put_slice(b"Route: ");
            out.put_slice(self.push_routes.join(", ").as_bytes());
            out.put_slice(b"\r\n");
        }
        if let (Some(mf), false) = (self.max_forwards, saw_mf) {
            let _ = write!(out, "Max-Forwards: {mf}\r\n");
        }
        out.put_slice(self.append.as_bytes());
        if !saw_cl {
            let _ = write!(out, "Content-Length: {}\r\n", body.len());
        }
        out.put_slice(b"\r\n");
        out.put_slice(body);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::message::tests::INVITE;

    #[test]
    fn response_copies_and_tags() {
        let m = Message::parse(Bytes::from_static(INVITE.as_bytes())).unwrap();
        let r = response(
            &m,
            404,
            "Not Found",
            Some("SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;received=1.2.3.4"),
            Some("t1"),
            "X-A: b\r\n",
            b"",
        );
        let p = Message::parse(r).unwrap();
        assert_eq!(p.status(), Some(404));
        assert_eq!(p.to_hdr().unwrap().tag(), Some("t1"));
        assert_eq!(p.top_via().unwrap().received(), Some("1.2.3.4"));
        assert_eq!(p.header_other("X-A"), Some("b"));
        assert_eq!(p.call_id(), m.call_id());
        p.validate().unwrap();
    }

    #[test]
    fn forward_edits_and_passes_unknown_headers() {
        let raw = "INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP z;branch=z9hG4bK0\r\nRoute: <sip:me;lr>, <sip:next;lr>\r\nX-Weird :  keep   this \r\nMax-Forwards: 10\r\nFrom: <sip:a@a>;tag=1\r\nTo: <sip:bob@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\nhi";
        let m = Message::parse(Bytes::from(raw)).unwrap();
        let out = Forward {
            request_uri: Some("sip:bob@10.0.0.2"),
            prepend: "Via: SIP/2.0/UDP me;branch=z9hG4bKme\r\n",
            top_via: Some("SIP/2.0/UDP a;branch=z9hG4bK1;received=9.9.9.9"),
            drop_routes: 1,
            max_forwards: Some(9),
            ..Default::default()
        }
        .write(&m);
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.starts_with("INVITE sip:bob@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP me;branch=z9hG4bKme\r\n"));
        assert!(s.contains("Via: SIP/2.0/UDP a;branch=z9hG4bK1;received=9.9.9.9, SIP/2.0/UDP z;branch=z9hG4bK0\r\n"));
        assert!(s.contains("Route: <sip:next;lr>\r\n"));
        assert!(s.contains("X-Weird :  keep   this \r\n"));
        assert!(s.contains("Max-Forwards: 9\r\n"));
        assert!(s.ends_with("\r\n\r\nhi"));
        let p = Message::parse(out).unwrap();
        p.validate().unwrap();
        // Forwarding a response: drop the top Via only.
        let resp = Message::parse(Bytes::from("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP me;branch=z9hG4bKme\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@a>;tag=1\r\nTo: <sip:bob@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n")).unwrap();
        let out = Forward { drop_vias: 1, ..Default::default() }.write(&resp);
        let p = Message::parse(out).unwrap();
        assert_eq!(p.top_via().unwrap().branch(), Some("z9hG4bK1"));
        assert_eq!(p.values(HeaderName::Via).count(), 1);
        assert_eq!(p.status(), Some(200));
    }
}
