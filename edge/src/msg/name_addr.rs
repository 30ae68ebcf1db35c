//! name-addr / addr-spec values of From, To, Contact, Route, Record-Route, Path
//! (RFC 3261 section 20.10, 20.20, 20.39, 25.1).

use super::text::{param, trim, unquote};

/// `"Display" <uri>;params`, or a bare `uri;params`. Borrowed from the header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quotes kept), if any.
    pub display: Option<&'a str>,
    /// The URI, without angle brackets.
    pub uri: &'a str,
    /// Header parameters (`;tag=..`, `;expires=..`, `;q=..`), including the leading `;`.
    pub params: &'a str,
}

impl<'a> NameAddr<'a> {
    /// Parses one name-addr or addr-spec value. Returns `None` if it is malformed.
    pub fn parse(s: &'a str) -> Option<NameAddr<'a>> {
        let s = trim(s);
        if s.is_empty() {
            return None;
        }
        let b = s.as_bytes();
        let (display, after_display) = if b[0] == b'"' {
            let mut i = 1;
            let mut close = None;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 1,
                    b'"' => {
                        close = Some(i);
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
            let close = close?;
            (Some(&s[..=close]), trim(&s[close + 1..]))
        } else {
            (None, s)
        };
        if let Some(lt) = after_display.find('<') {
            if display.is_some() && lt != 0 {
                return None;
            }
            let gt = after_display[lt..].find('>')? + lt;
            let uri = trim(&after_display[lt + 1..gt]);
            if uri.is_empty() {
                return None;
            }
            let disp = if display.is_some() {
                display
            } else {
                let d = trim(&after_display[..lt]);
                if d.is_empty() { None } else { Some(d) }
            };
            let params = trim(&after_display[gt + 1..]);
            if !params.is_empty() && !params.starts_with(';') {
                return None;
            }
            Some(NameAddr { display: disp, uri, params })
        } else {
            if display.is_some() {
                return None;
            }
            // addr-spec: parameters after the URI belong to the header (RFC 3261 20).
            let (uri, params) = match after_display.find(';') {
                Some(p) => (trim(&after_display[..p]), &after_display[p..]),
                None => (after_display, ""),
            };
            if uri.is_empty() || uri.contains(char::is_whitespace) {
                return None;
            }
            Some(NameAddr { display: None, uri, params })
        }
    }

    /// A header parameter such as `tag`, `expires`, `q`, `+sip.instance`, `reg-id`.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param(self.params, name)
    }

    /// The `tag` parameter (RFC 3261 19.3).
    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten()
    }

    /// Display name without quotes.
    pub fn display_name(&self) -> Option<std::borrow::Cow<'a, str>> {
        self.display.map(unquote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let n = NameAddr::parse(r#""Alice \"A\"" <sip:alice@x.com;transport=tcp>;tag=abc"#).unwrap();
        assert_eq!(n.display_name().unwrap(), "Alice \"A\"");
        assert_eq!(n.uri, "sip:alice@x.com;transport=tcp");
        assert_eq!(n.tag(), Some("abc"));
        let n = NameAddr::parse("Bob <sip:bob@y>").unwrap();
        assert_eq!(n.display, Some("Bob"));
        let n = NameAddr::parse("sip:carol@z;tag=1").unwrap();
        assert_eq!(n.uri, "sip:carol@z");
        assert_eq!(n.tag(), Some("1"));
        assert!(NameAddr::parse("<sip:x").is_none());
        assert!(NameAddr::parse("\"unterminated <sip:x>").is_none());
        assert!(NameAddr::parse("").is_none());
        assert!(NameAddr::parse("<sip:a>junk").is_none());
    }
}
