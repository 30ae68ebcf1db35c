//! INVITE client transaction (RFC 3261 17.1.1, with the Accepted state of RFC 6026 7.2).

use super::timer::{Timer, TimerConfig, TimerTable};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Calling,
    Proceeding,
    Completed,
    Accepted,
    Terminated,
}

/// What the transaction asks of its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the stored request again.
    Retransmit,
    /// Hand this response to the transaction user.
    Deliver,
    /// Send an ACK for the non-2xx final response just received (17.1.1.3).
    SendAck,
    /// Send the ACK again (a retransmitted final response arrived).
    ResendAck,
    /// Timer B fired: no response; the TU acts as if a 408 arrived.
    Timeout,
    /// Nothing to do (response absorbed).
    None,
}

/// INVITE client transaction state machine.
#[derive(Debug)]
pub struct ClientInvite {
    state: State,
    reliable: bool,
    cfg: TimerConfig,
    timers: TimerTable,
    interval: Duration,
}

impl ClientInvite {
    /// Starts in Calling; the owner sends the request now.
    pub fn new(now: Instant, reliable: bool, cfg: TimerConfig) -> ClientInvite {
        let mut timers = TimerTable::default();
        if !reliable {
            timers.set(Timer::A, now + cfg.t1);
        }
        timers.set(Timer::B, now + cfg.t64());
        ClientInvite { state: State::Calling, reliable, cfg, timers, interval: cfg.t1 }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// A response with this status code arrived.
    pub fn handle_response(&mut self, now: Instant, code: u16) -> Action {
        match (self.state, code) {
            (State::Calling | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                self.timers.stop(Timer::A);
                self.timers.stop(Timer::B);
                Action::Deliver
            }
            (State::Calling | State::Proceeding | State::Accepted, 200..=299) => {
                if self.state != State::Accepted {
                    self.state = State::Accepted;
                    self.timers.clear();
                    self.timers.set(Timer::M, now + self.cfg.t64());
                }
                Action::Deliver
            }
            (State::Calling | State::Proceeding, 300..=699) => {
                self.state = State::Completed;
                self.timers.clear();
                let d = if self.reliable { Duration::ZERO } else { Duration::from_secs(32).max(self.cfg.t64()) };
                self.timers.set(Timer::D, now + d);
                Action::SendAck
            }
            (State::Completed, 300..=699) => Action::ResendAck,
            _ => Action::None,
        }
    }

    /// A transport error while sending (17.1.4): the transaction ends as a timeout.
    pub fn handle_transport_error(&mut self) -> Action {
        if matches!(self.state, State::Calling | State::Proceeding) {
            self.state = State::Terminated;
            self.timers.clear();
            return Action::Timeout;
        }
        Action::None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Fires due timers; returns at most one action per call (call until `None`).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        let t = self.timers.expired(now)?;
        Some(match t {
            Timer::A => {
                self.interval *= 2;
                self.timers.set(Timer::A, now + self.interval);
                Action::Retransmit
            }
            Timer::B => {
                self.state = State::Terminated;
                self.timers.clear();
                Action::Timeout
            }
            Timer::D | Timer::M => {
                self.state = State::Terminated;
                self.timers.clear();
                Action::None
            }
            _ => Action::None,
        })
    }
}
