//! Meeting-room rules (sans-IO), from the web client product (docs/SFU.md): the first web
//! participant is moderator; the moderator admits or rejects guests waiting in the lobby,
//! removes participants and hands the role to another web participant; a moderator who
//! leaves hands it to the longest-present web participant; a room holds at most
//! `max_participants` (a clear refusal beyond); participants that vanish without leaving
//! are timed out. Every change is an event for the room's participants.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A participant, unique within the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ParticipantId(pub u64);

/// What the participant uses (roles depend on it: only web participants moderate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientType {
    Web,
    Mobile,
    Tablet,
    /// A SIP phone joined through the edge (`conference:{room}`).
    Phone,
    /// Joined by link without an account (name and e-mail only): waits in the lobby.
    Guest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Moderator,
    Participant,
}

/// Room settings.
#[derive(Debug, Clone, Copy)]
pub struct RoomConfig {
    pub max_participants: usize,
    /// Guests wait in a lobby until the moderator admits them.
    pub lobby: bool,
    /// A participant not heard from (media or signalling) for this long is removed.
    pub vanish_after: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig { max_participants: 100, lobby: true, vanish_after: Duration::from_secs(30) }
    }
}

/// One member (joined or waiting in the lobby).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub id: ParticipantId,
    pub name: String,
    pub client: ClientType,
    pub role: Role,
    pub in_lobby: bool,
    pub muted: bool,
    pub video: bool,
    pub hand_raised: bool,
    #[serde(skip)]
    pub last_seen: Instant,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("the room is full ({0} participants)")]
    Full(usize),
    #[error("already in this room")]
    AlreadyJoined,
    #[error("no such participant in this room")]
    NoSuchParticipant,
    #[error("only the moderator may do this")]
    NotModerator,
    #[error("the participant is not waiting in the lobby")]
    NotInLobby,
    #[error("only a web participant can be moderator")]
    NotEligible,
}

/// Why someone left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    Left,
    Removed,
    Rejected,
    TimedOut,
}

/// A change the room's participants are told about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RoomEvent {
    Joined {
        id: ParticipantId,
        name: String,
        role: Role,
        client: ClientType,
    },
    Waiting {
        id: ParticipantId,
        name: String,
    },
    Admitted {
        id: ParticipantId,
    },
    Left {
        id: ParticipantId,
        reason: LeaveReason,
    },
    ModeratorChanged {
        id: Option<ParticipantId>,
    },
    State {
        id: ParticipantId,
        muted: bool,
        video: bool,
        hand_raised: bool,
    },
    /// The dominant speaker changed (RFC 6464 levels, see `speaker.rs`).
    ActiveSpeaker {
        id: ParticipantId,
    },
}

/// One room.
#[derive(Debug)]
pub struct Room {
    cfg: RoomConfig,
    /// In joining order.
    members: Vec<Member>,
    events: VecDeque<RoomEvent>,
}

impl Room {
    pub fn new(cfg: RoomConfig) -> Room {
        Room { cfg, members: Vec::new(), events: VecDeque::new() }
    }

    /// Members, in joining order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, id: ParticipantId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn moderator(&self) -> Option<ParticipantId> {
        self.members.iter().find(|m| m.role == Role::Moderator).map(|m| m.id)
    }

    /// Someone asks to join. Guests wait in the lobby when the room has one; the first web
    /// participant becomes moderator.
    pub fn handle_join(&mut self, now: Instant, id: ParticipantId, name: &str, client: ClientType) -> Result<&Member, RoomError> {
        if self.member(id).is_some() {
            return Err(RoomError::AlreadyJoined);
        }
        if self.members.len() >= self.cfg.max_participants {
            return Err(RoomError::Full(self.cfg.max_participants));
        }
        let in_lobby = self.cfg.lobby && client == ClientType::Guest;
        let role = if client == ClientType::Web && self.moderator().is_none() { Role::Moderator } else { Role::Participant };
        self.members.push(Member {
            id,
            name: name.to_string(),
            client,
            role,
            in_lobby,
            muted: false,
            video: true,
            hand_raised: false,
            last_seen: now,
        });
        if in_lobby {
            self.events.push_back(RoomEvent::Waiting { id, name: name.to_string() });
        } else {
            self.events.push_back(RoomEvent::Joined { id, name: name.to_string(), role, client });
        }
        if role == Role::Moderator {
            self.events.push_back(RoomEvent::ModeratorChanged { id: Some(id) });
        }
        Ok(self.members.last().expect("just pushed"))
    }

    fn check_moderator(&self, by: ParticipantId) -> Result<(), RoomError> {
        if self.moderator() == Some(by) { Ok(()) } else { Err(RoomError::NotModerator) }
    }

    /// The moderator admits a guest from the lobby.
    pub fn handle_admit(&mut self, by: ParticipantId, who: ParticipantId) -> Result<(), RoomError> {
        self.check_moderator(by)?;
        let m = self.members.iter_mut().find(|m| m.id == who).ok_or(RoomError::NoSuchParticipant)?;
        if !m.in_lobby {
            return Err(RoomError::NotInLobby);
        }
        m.in_lobby = false;
        let (name, role, client) = (m.name.clone(), m.role, m.client);
        self.events.push_back(RoomEvent::Admitted { id: who });
        self.events.push_back(RoomEvent::Joined { id: who, name, role, client });
        Ok(())
    }

    /// The moderator turns a guest in the lobby away.
    pub fn handle_reject(&mut self, by: ParticipantId, who: ParticipantId) -> Result<(), RoomError> {
        self.check_moderator(by)?;
        if !self.member(who).ok_or(RoomError::NoSuchParticipant)?.in_lobby {
            return Err(RoomError::NotInLobby);
        }
        self.drop_member(who, LeaveReason::Rejected);
        Ok(())
    }

    /// The moderator removes a participant.
    pub fn handle_remove(&mut self, by: ParticipantId, who: ParticipantId) -> Result<(), RoomError> {
        self.check_moderator(by)?;
        self.member(who).ok_or(RoomError::NoSuchParticipant)?;
        self.drop_member(who, LeaveReason::Removed);
        Ok(())
    }

    /// The moderator hands the role to another web participant (a transfer: the old
    /// moderator becomes a participant).
    pub fn handle_make_moderator(&mut self, by: ParticipantId, who: ParticipantId) -> Result<(), RoomError> {
        self.check_moderator(by)?;
        let m = self.member(who).ok_or(RoomError::NoSuchParticipant)?;
        if m.client != ClientType::Web || m.in_lobby {
            return Err(RoomError::NotEligible);
        }
        for m in &mut self.members {
            m.role = if m.id == who { Role::Moderator } else { Role::Participant };
        }
        self.events.push_back(RoomEvent::ModeratorChanged { id: Some(who) });
        Ok(())
    }

    /// An operator removes a participant (admin API): no moderator needed.
    pub fn handle_evict(&mut self, who: ParticipantId) -> Result<(), RoomError> {
        self.member(who).ok_or(RoomError::NoSuchParticipant)?;
        self.drop_member(who, LeaveReason::Removed);
        Ok(())
    }

    /// A participant leaves.
    pub fn handle_leave(&mut self, who: ParticipantId) -> Result<(), RoomError> {
        self.member(who).ok_or(RoomError::NoSuchParticipant)?;
        self.drop_member(who, LeaveReason::Left);
        Ok(())
    }

    /// Mute, camera and raised-hand state of a participant.
    pub fn handle_state(&mut self, who: ParticipantId, muted: bool, video: bool, hand_raised: bool) -> Result<(), RoomError> {
        let m = self.members.iter_mut().find(|m| m.id == who).ok_or(RoomError::NoSuchParticipant)?;
        if (m.muted, m.video, m.hand_raised) != (muted, video, hand_raised) {
            (m.muted, m.video, m.hand_raised) = (muted, video, hand_raised);
            self.events.push_back(RoomEvent::State { id: who, muted, video, hand_raised });
        }
        Ok(())
    }

    /// Something (media, RTCP, a signalling message) arrived from `who`.
    pub fn handle_activity(&mut self, now: Instant, who: ParticipantId) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == who) {
            m.last_seen = now;
        }
    }

    /// Removes participants not heard from for `vanish_after`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let gone: Vec<ParticipantId> =
            self.members.iter().filter(|m| now.saturating_duration_since(m.last_seen) >= self.cfg.vanish_after).map(|m| m.id).collect();
        for id in gone {
            self.drop_member(id, LeaveReason::TimedOut);
        }
    }

    /// When [`Room::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.members.iter().map(|m| m.last_seen + self.cfg.vanish_after).min()
    }

    /// The next event for the room's participants.
    pub fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events.pop_front()
    }

    fn drop_member(&mut self, who: ParticipantId, reason: LeaveReason) {
        let was_moderator = self.moderator() == Some(who);
        self.members.retain(|m| m.id != who);
        self.events.push_back(RoomEvent::Left { id: who, reason });
        if was_moderator {
            // The longest-present web participant takes over (none: no moderator until one joins).
            let next = self.members.iter_mut().find(|m| m.client == ClientType::Web && !m.in_lobby);
            let id = next.map(|m| {
                m.role = Role::Moderator;
                m.id
            });
            self.events.push_back(RoomEvent::ModeratorChanged { id });
        }
    }

    /// `true` if `who` waits in the lobby (gets and sends no media).
    pub fn in_lobby(&self, who: ParticipantId) -> bool {
        self.member(who).is_some_and(|m| m.in_lobby)
    }

    /// Joined (not waiting) participants.
    pub fn joined(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.in_lobby)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn p(n: u64) -> ParticipantId {
        ParticipantId(n)
    }

    fn events(r: &mut Room) -> Vec<RoomEvent> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    #[test]
    fn first_web_participant_moderates_guests_wait_and_the_role_moves_on() {
        let t0 = Instant::now();
        let mut r = Room::new(RoomConfig { max_participants: 4, ..Default::default() });
        r.handle_join(t0, p(1), "mobile", ClientType::Mobile).unwrap();
        assert_eq!(r.member(p(1)).unwrap().role, Role::Participant, "mobile users cannot moderate");
        r.handle_join(t0, p(2), "ann", ClientType::Web).unwrap();
        assert_eq!(r.member(p(2)).unwrap().role, Role::Moderator);
        r.handle_join(t0, p(3), "guest", ClientType::Guest).unwrap();
        assert!(r.member(p(3)).unwrap().in_lobby);
        events(&mut r);
        assert_eq!(r.handle_admit(p(1), p(3)), Err(RoomError::NotModerator));
        r.handle_admit(p(2), p(3)).unwrap();
        assert_eq!(
            events(&mut r),
            [
                RoomEvent::Admitted { id: p(3) },
                RoomEvent::Joined { id: p(3), name: "guest".into(), role: Role::Participant, client: ClientType::Guest }
            ]
        );
        assert_eq!(r.handle_admit(p(2), p(3)), Err(RoomError::NotInLobby));
        r.handle_join(t0, p(4), "bob", ClientType::Web).unwrap();
        assert_eq!(r.handle_join(t0, p(5), "late", ClientType::Web).unwrap_err(), RoomError::Full(4));
        assert_eq!(r.handle_make_moderator(p(2), p(1)), Err(RoomError::NotEligible));
        r.handle_make_moderator(p(2), p(4)).unwrap();
        assert_eq!((r.member(p(2)).unwrap().role, r.member(p(4)).unwrap().role), (Role::Participant, Role::Moderator));
        events(&mut r);
        // The moderator leaves: the longest-present web participant takes over.
        r.handle_leave(p(4)).unwrap();
        assert_eq!(
            events(&mut r),
            [RoomEvent::Left { id: p(4), reason: LeaveReason::Left }, RoomEvent::ModeratorChanged { id: Some(p(2)) }]
        );
        r.handle_remove(p(2), p(3)).unwrap();
        assert_eq!(events(&mut r), [RoomEvent::Left { id: p(3), reason: LeaveReason::Removed }]);
    }

    #[test]
    fn a_guest_can_be_rejected_and_vanished_participants_time_out() {
        let t0 = Instant::now();
        let mut r = Room::new(RoomConfig { vanish_after: Duration::from_secs(10), ..Default::default() });
        r.handle_join(t0, p(1), "ann", ClientType::Web).unwrap();
        r.handle_join(t0, p(2), "guest", ClientType::Guest).unwrap();
        r.handle_reject(p(1), p(2)).unwrap();
        assert!(r.member(p(2)).is_none());
        r.handle_join(t0, p(3), "bob", ClientType::Web).unwrap();
        events(&mut r);
        r.handle_activity(t0 + Duration::from_secs(8), p(3));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        r.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(
            events(&mut r),
            [RoomEvent::Left { id: p(1), reason: LeaveReason::TimedOut }, RoomEvent::ModeratorChanged { id: Some(p(3)) }]
        );
        r.handle_state(p(3), true, false, true).unwrap();
        r.handle_state(p(3), true, false, true).unwrap();
        assert_eq!(events(&mut r), [RoomEvent::State { id: p(3), muted: true, video: false, hand_raised: true }], "one event per change");
        r.handle_timeout(t0 + Duration::from_secs(18));
        assert!(r.is_empty());
    }
}
