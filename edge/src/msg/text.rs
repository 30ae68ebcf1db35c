//! Lexical helpers shared by the typed header views (RFC 3261 section 25.1).

/// Linear white space, including the CR/LF of a folded header line.
#[inline]
pub fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trims linear white space (folding included) from both ends.
#[inline]
pub fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_lws(c as u8))
}

/// Splits a header value on the commas that separate values (RFC 3261 7.3.1), ignoring
/// commas inside quoted strings and `<...>` URIs. Empty elements are skipped.
pub fn split_commas(s: &str) -> CommaSplit<'_> {
    CommaSplit { rest: s }
}

/// Iterator of [`split_commas`].
pub struct CommaSplit<'a> {
    rest: &'a str,
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let b = self.rest.as_bytes();
            let mut in_quote = false;
            let mut in_angle = false;
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'\\' if in_quote => i += 1,
                    b'"' => in_quote = !in_quote,
                    b'<' if !in_quote => in_angle = true,
                    b'>' if !in_quote => in_angle = false,
                    b',' if !in_quote && !in_angle => break,
                    _ => {}
                }
                i += 1;
            }
            let end = i.min(b.len());
            let item = trim(&self.rest[..end]);
            self.rest = if end < b.len() { &self.rest[end + 1..] } else { "" };
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

/// Iterates `;name[=value]` parameters (RFC 3261 section 19.1.1 / 20), yielding trimmed
/// `(name, value)` pairs; quoted values keep their quotes.
pub fn params(s: &str) -> Params<'_> {
    Params { rest: s }
}

/// Iterator of [`params`].
pub struct Params<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a str, Option<&'a str>);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let s = self.rest.trim_start_matches(|c: char| c == ';' || (c.is_ascii() && is_lws(c as u8)));
            if s.is_empty() {
                self.rest = s;
                return None;
            }
            let b = s.as_bytes();
            let mut in_quote = false;
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'\\' if in_quote => i += 1,
                    b'"' => in_quote = !in_quote,
                    b';' if !in_quote => break,
                    _ => {}
                }
                i += 1;
            }
            let end = i.min(b.len());
            let item = &s[..end];
            self.rest = &s[end..];
            let (name, value) = match item.find('=') {
                Some(eq) => (trim(&item[..eq]), Some(trim(&item[eq + 1..]))),
                None => (trim(item), None),
            };
            if !name.is_empty() {
                return Some((name, value));
            }
        }
    }
}

/// Looks up one parameter by name (case-insensitive). `Some(None)` means present without a value.
pub fn param<'a>(s: &'a str, name: &str) -> Option<Option<&'a str>> {
    params(s).find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// Removes surrounding double quotes and backslash escapes' backslashes (quoted-string).
pub fn unquote(s: &str) -> std::borrow::Cow<'_, str> {
    let s = trim(s);
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let inner = &s[1..s.len() - 1];
        if inner.contains('\\') {
            let mut out = String::with_capacity(inner.len());
            let mut esc = false;
            for c in inner.chars() {
                if esc {
                    out.push(c);
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else {
                    out.push(c);
                }
            }
            return std::borrow::Cow::Owned(out);
        }
        return std::borrow::Cow::Borrowed(inner);
    }
    std::borrow::Cow::Borrowed(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_respect_quotes_and_angles() {
        let v: Vec<_> = split_commas(r#""a, b" <sip:x@y;p=1,2>;q=1 , <sip:z>,,"#).collect();
        assert_eq!(v, vec![r#""a, b" <sip:x@y;p=1,2>;q=1"#, "<sip:z>"]);
    }

    #[test]
    fn params_parse() {
        let v: Vec<_> = params(";branch=z9hG4bK1 ; rport;received=1.2.3.4;x=\"a;b\"").collect();
        assert_eq!(v, vec![("branch", Some("z9hG4bK1")), ("rport", None), ("received", Some("1.2.3.4")), ("x", Some("\"a;b\""))]);
        assert_eq!(param(";lr;Transport=TCP", "transport"), Some(Some("TCP")));
    }

    #[test]
    fn unquote_escapes() {
        assert_eq!(unquote(r#""a\"b""#), "a\"b");
        assert_eq!(unquote("plain"), "plain");
    }
}
