//! Header names (RFC 3261 section 7.3, compact forms in section 7.3.3 and 20).

/// The headers the edge reads or writes. Everything else is [`HeaderName::Other`] and is
/// passed through byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    Route,
    RecordRoute,
    MaxForwards,
    ContentLength,
    ContentType,
    Expires,
    MinExpires,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Path,
    Supported,
    Require,
    ProxyRequire,
    Unsupported,
    Allow,
    Reason,
    /// Any header the edge does not interpret.
    Other,
}

impl HeaderName {
    /// Classifies a header name, case-insensitively, including compact forms (RFC 3261 7.3.3).
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        if name.is_empty() {
            return Other;
        }
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'k' => Supported,
                _ => Other,
            };
        }
        let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        match (name.len(), name[0].to_ascii_lowercase()) {
            (3, b'v') if eq("via") => Via,
            (4, b'f') if eq("from") => From,
            (2, b't') if eq("to") => To,
            (7, b'c') if eq("call-id") => CallId,
            (4, b'c') if eq("cseq") => CSeq,
            (7, b'c') if eq("contact") => Contact,
            (5, b'r') if eq("route") => Route,
            (12, b'r') if eq("record-route") => RecordRoute,
            (12, b'm') if eq("max-forwards") => MaxForwards,
            (14, b'c') if eq("content-length") => ContentLength,
            (12, b'c') if eq("content-type") => ContentType,
            (7, b'e') if eq("expires") => Expires,
            (11, b'm') if eq("min-expires") => MinExpires,
            (13, b'a') if eq("authorization") => Authorization,
            (19, b'p') if eq("proxy-authorization") => ProxyAuthorization,
            (16, b'w') if eq("www-authenticate") => WwwAuthenticate,
            (18, b'p') if eq("proxy-authenticate") => ProxyAuthenticate,
            (4, b'p') if eq("path") => Path,
            (9, b's') if eq("supported") => Supported,
            (7, b'r') if eq("require") => Require,
            (13, b'p') if eq("proxy-require") => ProxyRequire,
            (11, b'u') if eq("unsupported") => Unsupported,
            (5, b'a') if eq("allow") => Allow,
            (6, b'r') if eq("reason") => Reason,
            _ => Other,
        }
    }

    /// The canonical long name, used in error reason phrases and generated headers.
    pub fn as_str(self) -> &'static str {
        use HeaderName::*;
        match self {
            Via => "Via",
            From => "From",
            To => "To",
            CallId => "Call-ID",
            CSeq => "CSeq",
            Contact => "Contact",
            Route => "Route",
            RecordRoute => "Record-Route",
            MaxForwards => "Max-Forwards",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            Expires => "Expires",
            MinExpires => "Min-Expires",
            Authorization => "Authorization",
            ProxyAuthorization => "Proxy-Authorization",
            WwwAuthenticate => "WWW-Authenticate",
            ProxyAuthenticate => "Proxy-Authenticate",
            Path => "Path",
            Supported => "Supported",
            Require => "Require",
            ProxyRequire => "Proxy-Require",
            Unsupported => "Unsupported",
            Allow => "Allow",
            Reason => "Reason",
            Other => "Other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_long_forms() {
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"VIA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"Call-Id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"m"), HeaderName::Contact);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"record-route"), HeaderName::RecordRoute);
        assert_eq!(HeaderName::from_bytes(b"X-Foo"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"Max-Forwards"), HeaderName::MaxForwards);
    }
}
