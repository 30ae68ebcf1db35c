//! DTMF in SIP INFO bodies, as web and desk phones send it (no RFC; the de-facto formats):
//! `application/dtmf-relay` (`Signal=5\r\nDuration=160\r\n`, Cisco; SIP.js's SimpleUser and
//! JsSIP send it) and `application/dtmf` (the digit alone). Read into an RFC 4733 event
//! code (3.2) and a duration.

use std::time::Duration;

/// Shortest and longest duration played for one INFO digit: clients send anything from
/// 100 ms to 2 s (SIP.js SimpleUser says 2000 ms); a digit is held at most this long so that
/// digits typed quickly are not queued behind long ones.
pub const MIN_DURATION: Duration = Duration::from_millis(100);
pub const MAX_DURATION: Duration = Duration::from_millis(500);

/// Duration when the body gives none.
const DEFAULT_DURATION: Duration = Duration::from_millis(250);

/// The RFC 4733 event of a digit character or number (`0`-`9`, `*` or `10`, `#` or `11`,
/// `A`-`D` or `12`-`15`, any case).
fn event_of(signal: &str) -> Option<u8> {
    let s = signal.trim();
    match s.as_bytes() {
        [c @ b'0'..=b'9'] => Some(c - b'0'),
        [b'*'] => Some(10),
        [b'#'] => Some(11),
        [c @ (b'A'..=b'D' | b'a'..=b'd')] => Some(c.to_ascii_uppercase() - b'A' + 12),
        _ => s.parse::<u8>().ok().filter(|n| (10..=15).contains(n)),
    }
}

/// The digit and duration of an INFO body of `content_type`, clamped to
/// [`MIN_DURATION`, `MAX_DURATION`]. `None` for other content types or bodies without a
/// digit.
pub fn parse(content_type: &str, body: &[u8]) -> Option<(u8, Duration)> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let text = std::str::from_utf8(body).ok()?;
    let (event, duration) = if ct.eq_ignore_ascii_case("application/dtmf-relay") {
        let mut signal = None;
        let mut duration = None;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            match k.trim().to_ascii_lowercase().as_str() {
                "signal" => signal = event_of(v),
                "duration" => duration = v.trim().parse::<u64>().ok().map(Duration::from_millis),
                _ => {}
            }
        }
        (signal?, duration)
    } else if ct.eq_ignore_ascii_case("application/dtmf") {
        (event_of(text)?, None)
    } else {
        return None;
    };
    Some((event, duration.unwrap_or(DEFAULT_DURATION).clamp(MIN_DURATION, MAX_DURATION)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_relay_and_dtmf_bodies() {
        let ms = Duration::from_millis;
        assert_eq!(parse("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"), Some((5, ms(160))));
        assert_eq!(parse("Application/DTMF-Relay; charset=x", b"signal= #\nduration = 2000"), Some((11, ms(500))), "clamped");
        assert_eq!(parse("application/dtmf-relay", b"Signal=10\r\nDuration=40\r\n"), Some((10, ms(100))), "* as 10");
        assert_eq!(parse("application/dtmf-relay", b"Signal=d\r\n"), Some((15, ms(250))));
        assert_eq!(parse("application/dtmf", b"7"), Some((7, ms(250))));
        assert_eq!(parse("application/dtmf-relay", b"Signal=E\r\n"), None);
        assert_eq!(parse("application/dtmf-relay", b"Duration=100\r\n"), None);
        assert_eq!(parse("application/dtmf-relay", b"Signal=16\r\n"), None);
        assert_eq!(parse("application/sdp", b"Signal=5"), None);
        assert_eq!(parse("application/dtmf", b"\xff"), None);
    }
}
