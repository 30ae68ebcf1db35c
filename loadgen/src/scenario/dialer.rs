//! Power dialer (contact-centre pattern): for each free agent, ring K numbers at once;
//! the first answer wins and the other lines are cancelled (CANCEL-heavy load).

use super::uac::{Uac, UacConfig};
use super::{Event, Local, Transmit};
use edge::msg::Message;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// One round of an agent: the K lines rung at once.
struct Round {
    agent: usize,
    /// Call-IDs of the lines.
    lines: Vec<String>,
    /// Lines not finished yet.
    open: usize,
    answered: bool,
}

/// The dialer engine (wraps a UAC engine).
pub struct Dialer {
    uac: Uac,
    lines: usize,
    rounds: HashMap<u64, Round>,
    by_call: HashMap<String, u64>,
    next: u64,
    free: VecDeque<usize>,
    events: VecDeque<Event>,
    /// Rounds finished, and how many of them had an answer.
    pub rounds_done: u64,
    pub rounds_answered: u64,
}

impl Dialer {
    pub fn new(cfg: UacConfig, local: Local, prefix: String, seed: u64, agents: usize, lines: usize) -> Dialer {
        Dialer {
            uac: Uac::new(UacConfig { to_sequence: true, ..cfg }, local, prefix, seed),
            lines: lines.max(1),
            rounds: HashMap::new(),
            by_call: HashMap::new(),
            next: 0,
            free: (0..agents).collect(),
            events: VecDeque::new(),
            rounds_done: 0,
            rounds_answered: 0,
        }
    }

    /// Agents waiting for their next round.
    pub fn free_agents(&self) -> usize {
        self.free.len()
    }

    pub fn active_calls(&self) -> usize {
        self.uac.active()
    }

    /// Starts a round for the next free agent; `false` if none is free.
    pub fn start_round(&mut self, now: Instant) -> bool {
        let Some(agent) = self.free.pop_front() else { return false };
        self.next += 1;
        let mut lines = Vec::with_capacity(self.lines);
        for _ in 0..self.lines {
            let cid = self.uac.start_call(now, None);
            self.by_call.insert(cid.clone(), self.next);
            lines.push(cid);
        }
        self.rounds.insert(self.next, Round { agent, open: lines.len(), lines, answered: false });
        true
    }

    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        self.uac.handle_message(now, msg);
        self.pump();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.uac.handle_timeout(now);
        self.pump();
    }

    fn pump(&mut self) {
        while let Some(ev) = self.uac.poll_event() {
            match ev {
                Event::Established { call_id } => {
                    let Some(&r) = self.by_call.get(&call_id) else { continue };
                    let Some(round) = self.rounds.get_mut(&r) else { continue };
                    if round.answered {
                        continue;
                    }
                    round.answered = true;
                    let others: Vec<String> = round.lines.iter().filter(|c| **c != call_id).cloned().collect();
                    for o in others {
                        self.uac.cancel(&o);
                    }
                }
                Event::CallDone { ref call_id, .. } => {
                    if let Some(r) = self.by_call.remove(call_id)
                        && let Some(round) = self.rounds.get_mut(&r)
                    {
                        round.open -= 1;
                        if round.open == 0 {
                            let agent = round.agent;
                            let answered = round.answered;
                            self.rounds.remove(&r);
                            self.rounds_done += 1;
                            self.rounds_answered += answered as u64;
                            self.free.push_back(agent);
                        }
                    }
                    self.events.push_back(ev);
                }
                other => self.events.push_back(other),
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.uac.poll_transmit()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.uac.poll_timeout()
    }
    pub fn abort_all(&mut self, reason: &str) {
        self.uac.abort_all(reason);
        self.pump();
    }
}
