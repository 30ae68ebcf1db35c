//! Non-INVITE server transaction (RFC 3261 17.2.2).

use super::timer::{Timer, TimerConfig, TimerTable};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retransmit,
    None,
}

/// Non-INVITE server transaction state machine.
#[derive(Debug)]
pub struct ServerNonInvite {
    state: State,
    reliable: bool,
    cfg: TimerConfig,
    timers: TimerTable,
}

impl ServerNonInvite {
    pub fn new(reliable: bool, cfg: TimerConfig) -> ServerNonInvite {
        ServerNonInvite { state: State::Trying, reliable, cfg, timers: TimerTable::default() }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The TU sends a response; `false` if a final one was already sent.
    pub fn send_response(&mut self, now: Instant, code: u16) -> bool {
        match (self.state, code) {
            (State::Trying | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                true
            }
            (State::Trying | State::Proceeding, 200..=699) => {
                self.state = State::Completed;
                let j = if self.reliable { Duration::ZERO } else { self.cfg.t64() };
                self.timers.set(Timer::J, now + j);
                true
            }
            _ => false,
        }
    }

    pub fn handle_request_retransmit(&mut self) -> Action {
        match self.state {
            State::Proceeding | State::Completed => Action::Retransmit,
            _ => Action::None,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        let t = self.timers.expired(now)?;
        if t == Timer::J {
            self.state = State::Terminated;
            self.timers.clear();
        }
        Some(Action::None)
    }
}
