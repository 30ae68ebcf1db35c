//! SIP transactions (RFC 3261 section 17, RFC 6026): the four transaction kinds as
//! sans-IO state machines with a timer table. The owner passes `now`, feeds responses,
//! requests and timeouts, and acts on the returned actions.

pub mod client;
pub mod client_inv;
pub mod server;
pub mod server_inv;
pub mod timer;

pub use timer::{Timer, TimerConfig, TimerTable};

use crate::msg::{Message, Method};

/// Server transaction key (RFC 3261 17.2.3): branch, sent-by and method, where ACK
/// matches the INVITE transaction. For pre-RFC 3261 branches (no magic cookie) the key
/// falls back to Call-ID, CSeq number, From tag and the top Via.
pub fn server_key(msg: &Message) -> Option<String> {
    let via = msg.top_via()?;
    let method = match msg.method() {
        Method::Ack => "INVITE",
        _ => msg.method_str(),
    };
    let port = via.port.unwrap_or(0);
    match via.branch() {
        Some(b) if b.starts_with(crate::msg::via::MAGIC_COOKIE) => Some(format!("{b}|{}:{port}|{method}", via.host)),
        _ => {
            let cseq = msg.cseq()?;
            let ftag = msg.from_hdr().and_then(|f| f.tag()).unwrap_or("");
            Some(format!("{}|{}|{ftag}|{}:{port}|{method}", msg.call_id()?, cseq.seq, via.host))
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a virtual clock needs one real starting point
mod tests {
    //! Every timer on a virtual clock: `now` is advanced by hand, nothing sleeps.
    use super::*;
    use std::time::{Duration, Instant};

    fn cfg() -> TimerConfig {
        TimerConfig::default()
    }

    /// Steps a virtual clock to each deadline, collecting (time offset, action).
    fn drive<A: Copy>(
        start: Instant,
        until: Duration,
        mut next: impl FnMut() -> Option<Instant>,
        mut fire: impl FnMut(Instant) -> Option<A>,
    ) -> Vec<(Duration, A)> {
        let mut out = vec![];
        while let Some(at) = next() {
            if at > start + until {
                break;
            }
            while let Some(a) = fire(at) {
                out.push((at - start, a));
            }
        }
        out
    }

    #[test]
    fn timer_a_doubles_and_timer_b_times_out() {
        let t0 = Instant::now();
        let mut c = client_inv::ClientInvite::new(t0, false, cfg());
        let cell = std::cell::RefCell::new(&mut c);
        let acts = drive(t0, Duration::from_secs(60), || cell.borrow().poll_timeout(), |n| cell.borrow_mut().handle_timeout(n));
        let retx: Vec<u64> = acts.iter().filter(|(_, a)| *a == client_inv::Action::Retransmit).map(|(d, _)| d.as_millis() as u64).collect();
        // A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s (interval doubles each time, no T2 cap)
        assert_eq!(retx, vec![500, 1500, 3500, 7500, 15500, 31500]);
        let last = acts.last().unwrap();
        assert_eq!(last.1, client_inv::Action::Timeout);
        assert_eq!(last.0, Duration::from_secs(32)); // B = 64*T1
        assert_eq!(c.state(), client_inv::State::Terminated);
    }

    #[test]
    fn invite_client_provisional_stops_a_and_b_then_timer_d() {
        let t0 = Instant::now();
        let mut c = client_inv::ClientInvite::new(t0, false, cfg());
        assert_eq!(c.handle_response(t0 + Duration::from_millis(100), 180), client_inv::Action::Deliver);
        assert_eq!(c.poll_timeout(), None);
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(c.handle_response(t1, 486), client_inv::Action::SendAck);
        assert_eq!(c.handle_response(t1, 486), client_inv::Action::ResendAck);
        assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_secs(32))); // D >= 32 s
        assert_eq!(c.handle_timeout(t1 + Duration::from_secs(31)), None);
        c.handle_timeout(t1 + Duration::from_secs(32));
        assert_eq!(c.state(), client_inv::State::Terminated);
        // Reliable: D = 0.
        let mut c = client_inv::ClientInvite::new(t0, true, cfg());
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(32))); // only B, no A
        c.handle_response(t0, 503);
        assert_eq!(c.poll_timeout(), Some(t0));
    }

    #[test]
    fn invite_client_accepted_timer_m() {
        let t0 = Instant::now();
        let mut c = client_inv::ClientInvite::new(t0, false, cfg());
        assert_eq!(c.handle_response(t0, 200), client_inv::Action::Deliver);
        assert_eq!(c.state(), client_inv::State::Accepted);
        // 2xx retransmissions are delivered (RFC 6026 7.2).
        assert_eq!(c.handle_response(t0 + Duration::from_secs(1), 200), client_inv::Action::Deliver);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        c.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(c.state(), client_inv::State::Terminated);
    }

    #[test]
    fn timer_e_caps_at_t2_and_timer_f() {
        let t0 = Instant::now();
        let mut c = client::ClientNonInvite::new(t0, false, cfg());
        let cell = std::cell::RefCell::new(&mut c);
        let acts = drive(t0, Duration::from_secs(60), || cell.borrow().poll_timeout(), |n| cell.borrow_mut().handle_timeout(n));
        let retx: Vec<u64> = acts.iter().filter(|(_, a)| *a == client::Action::Retransmit).map(|(d, _)| d.as_millis() as u64).collect();
        assert_eq!(&retx[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        assert_eq!(acts.last().unwrap(), &(Duration::from_secs(32), client::Action::Timeout));
    }

    #[test]
    fn timer_e_is_t2_when_proceeding_and_timer_k() {
        let t0 = Instant::now();
        let mut c = client::ClientNonInvite::new(t0, false, cfg());
        c.handle_response(t0 + Duration::from_millis(100), 100);
        let due = c.poll_timeout().unwrap();
        assert_eq!(c.handle_timeout(due), Some(client::Action::Retransmit));
        assert_eq!(c.poll_timeout(), Some(due + Duration::from_secs(4)));
        let tf = t0 + Duration::from_secs(2);
        assert_eq!(c.handle_response(tf, 200), client::Action::Deliver);
        assert_eq!(c.handle_response(tf, 200), client::Action::None);
        assert_eq!(c.poll_timeout(), Some(tf + Duration::from_secs(5))); // K = T4
        c.handle_timeout(tf + Duration::from_secs(5));
        assert_eq!(c.state(), client::State::Terminated);
    }

    #[test]
    fn timer_g_h_for_non_2xx_final() {
        let t0 = Instant::now();
        let mut s = server_inv::ServerInvite::new(false, cfg());
        assert_eq!(s.handle_request_retransmit(), server_inv::Action::None);
        assert!(s.send_response(t0, 100));
        assert_eq!(s.handle_request_retransmit(), server_inv::Action::Retransmit);
        assert!(s.send_response(t0, 486));
        assert!(!s.send_response(t0, 200));
        let cell = std::cell::RefCell::new(&mut s);
        let acts = drive(t0, Duration::from_secs(60), || cell.borrow().poll_timeout(), |n| cell.borrow_mut().handle_timeout(n));
        let retx: Vec<u64> = acts.iter().filter(|(_, a)| *a == server_inv::Action::Retransmit).map(|(d, _)| d.as_millis() as u64).collect();
        assert_eq!(&retx[..5], &[500, 1500, 3500, 7500, 11500]); // G doubles to T2
        assert_eq!(acts.last().unwrap(), &(Duration::from_secs(32), server_inv::Action::Timeout)); // H
        assert_eq!(s.state(), server_inv::State::Terminated);
    }

    #[test]
    fn ack_confirms_and_timer_i() {
        let t0 = Instant::now();
        let mut s = server_inv::ServerInvite::new(false, cfg());
        s.send_response(t0, 404);
        let ta = t0 + Duration::from_millis(700);
        s.handle_ack(ta);
        assert_eq!(s.state(), server_inv::State::Confirmed);
        assert_eq!(s.poll_timeout(), Some(ta + Duration::from_secs(5))); // I = T4
        s.handle_timeout(ta + Duration::from_secs(5));
        assert_eq!(s.state(), server_inv::State::Terminated);
        // Reliable: no G, I = 0.
        let mut s = server_inv::ServerInvite::new(true, cfg());
        s.send_response(t0, 404);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        s.handle_ack(t0);
        assert_eq!(s.poll_timeout(), Some(t0));
    }

    #[test]
    fn accepted_timer_l() {
        let t0 = Instant::now();
        let mut s = server_inv::ServerInvite::new(false, cfg());
        assert!(s.send_response(t0, 200));
        assert_eq!(s.state(), server_inv::State::Accepted);
        assert!(s.send_response(t0 + Duration::from_secs(1), 200)); // 2xx retransmission passes
        assert_eq!(s.handle_request_retransmit(), server_inv::Action::None); // absorbed
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        s.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(s.state(), server_inv::State::Terminated);
    }

    #[test]
    fn timer_j() {
        let t0 = Instant::now();
        let mut s = server::ServerNonInvite::new(false, cfg());
        assert_eq!(s.handle_request_retransmit(), server::Action::None);
        s.send_response(t0, 200);
        assert_eq!(s.handle_request_retransmit(), server::Action::Retransmit);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        s.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(s.state(), server::State::Terminated);
        let mut s = server::ServerNonInvite::new(true, cfg());
        s.send_response(t0, 200);
        assert_eq!(s.poll_timeout(), Some(t0));
    }

    #[test]
    fn transport_error_ends_client_transactions() {
        let t0 = Instant::now();
        let mut c = client_inv::ClientInvite::new(t0, true, cfg());
        assert_eq!(c.handle_transport_error(), client_inv::Action::Timeout);
        let mut c = client::ClientNonInvite::new(t0, true, cfg());
        assert_eq!(c.handle_transport_error(), client::Action::Timeout);
    }
}
