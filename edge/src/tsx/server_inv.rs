//! INVITE server transaction (RFC 3261 17.2.1, with the Accepted state of RFC 6026 7.1).

use super::timer::{Timer, TimerConfig, TimerTable};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the last response again.
    Retransmit,
    /// Timer H fired: no ACK arrived for the final response.
    Timeout,
    None,
}

/// INVITE server transaction state machine. The owner keeps the last response bytes.
#[derive(Debug)]
pub struct ServerInvite {
    state: State,
    reliable: bool,
    cfg: TimerConfig,
    timers: TimerTable,
    interval: Duration,
    /// Whether any response has been sent yet (retransmitted INVITEs get the last one).
    responded: bool,
}

impl ServerInvite {
    pub fn new(reliable: bool, cfg: TimerConfig) -> ServerInvite {
        ServerInvite { state: State::Proceeding, reliable, cfg, timers: TimerTable::default(), interval: cfg.t1, responded: false }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The TU sends a response with this code. Returns `false` if the state does not allow
    /// it (a final response was already sent; a 2xx retransmission in Accepted is allowed).
    pub fn send_response(&mut self, now: Instant, code: u16) -> bool {
        match (self.state, code) {
            (State::Proceeding, 100..=199) => {
                self.responded = true;
                true
            }
            (State::Proceeding, 200..=299) | (State::Accepted, 200..=299) => {
                self.responded = true;
                if self.state == State::Proceeding {
                    self.state = State::Accepted;
                    self.timers.set(Timer::L, now + self.cfg.t64());
                }
                true
            }
            (State::Proceeding, 300..=699) => {
                self.responded = true;
                self.state = State::Completed;
                if !self.reliable {
                    self.timers.set(Timer::G, now + self.cfg.t1);
                }
                self.timers.set(Timer::H, now + self.cfg.t64());
                true
            }
            _ => false,
        }
    }

    /// A retransmission of the INVITE arrived.
    pub fn handle_request_retransmit(&mut self) -> Action {
        match self.state {
            State::Proceeding | State::Completed if self.responded => Action::Retransmit,
            _ => Action::None,
        }
    }

    /// An ACK matching this transaction arrived (non-2xx final: 17.2.1).
    pub fn handle_ack(&mut self, now: Instant) -> Action {
        if self.state == State::Completed {
            self.state = State::Confirmed;
            self.timers.stop(Timer::G);
            self.timers.stop(Timer::H);
            let i = if self.reliable { Duration::ZERO } else { self.cfg.t4 };
            self.timers.set(Timer::I, now + i);
        }
        Action::None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        let t = self.timers.expired(now)?;
        Some(match t {
            Timer::G => {
                self.interval = (self.interval * 2).min(self.cfg.t2);
                self.timers.set(Timer::G, now + self.interval);
                Action::Retransmit
            }
            Timer::H => {
                self.state = State::Terminated;
                self.timers.clear();
                Action::Timeout
            }
            Timer::I | Timer::L => {
                self.state = State::Terminated;
                self.timers.clear();
                Action::None
            }
            _ => Action::None,
        })
    }
}
