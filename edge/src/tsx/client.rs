//! Non-INVITE client transaction (RFC 3261 17.1.2).

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
    Deliver,
    /// Timer F fired (or a transport error): the TU acts as if a 408 arrived.
    Timeout,
    None,
}

/// Non-INVITE client transaction state machine.
#[derive(Debug)]
pub struct ClientNonInvite {
    state: State,
    reliable: bool,
    cfg: TimerConfig,
    timers: TimerTable,
    interval: Duration,
}

impl ClientNonInvite {
    pub fn new(now: Instant, reliable: bool, cfg: TimerConfig) -> ClientNonInvite {
        let mut timers = TimerTable::default();
        if !reliable {
            timers.set(Timer::E, now + cfg.t1);
        }
        timers.set(Timer::F, now + cfg.t64());
        ClientNonInvite { state: State::Trying, reliable, cfg, timers, interval: cfg.t1 }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn handle_response(&mut self, now: Instant, code: u16) -> Action {
        match (self.state, code) {
            (State::Trying | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                Action::Deliver
            }
            (State::Trying | State::Proceeding, 200..=699) => {
                self.state = State::Completed;
                self.timers.clear();
                let k = if self.reliable { Duration::ZERO } else { self.cfg.t4 };
                self.timers.set(Timer::K, now + k);
                Action::Deliver
            }
            _ => Action::None,
        }
    }

    pub fn handle_transport_error(&mut self) -> Action {
        if matches!(self.state, State::Trying | State::Proceeding) {
            self.state = State::Terminated;
            self.timers.clear();
            return Action::Timeout;
        }
        Action::None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        let t = self.timers.expired(now)?;
        Some(match t {
            Timer::E => {
                // 17.1.2.2: doubles up to T2 while Trying; T2 once Proceeding.
                self.interval = if self.state == State::Proceeding { self.cfg.t2 } else { (self.interval * 2).min(self.cfg.t2) };
                self.timers.set(Timer::E, now + self.interval);
                Action::Retransmit
            }
            Timer::F => {
                self.state = State::Terminated;
                self.timers.clear();
                Action::Timeout
            }
            Timer::K => {
                self.state = State::Terminated;
                self.timers.clear();
                Action::None
            }
            _ => Action::None,
        })
    }
}
