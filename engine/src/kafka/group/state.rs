//! One consumer group's membership and rebalance state machine (Kafka's classic protocol).
//!
//! ```text
//!  Empty --join--> PreparingRebalance --all joined / timeout--> CompletingRebalance
//!    ^                   ^   ^                                        |
//!    |   last member     |   +--- join, leave, expiry ---------------+  leader's SyncGroup
//!    +--- leaves --------+-------- join, leave, expiry --- Stable <---+
//! ```
//!
//! Pure logic: time comes in as `now`, answers go out through flume senders, so the rules are
//! unit-tested without a network. A rebalance starts when a member joins, leaves or misses its
//! session; it completes when every member has rejoined (or the rebalance timeout passes, and
//! the members that did not rejoin are removed). The first member of an empty group waits
//! `initial_delay` for others, so a group starting together rebalances once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::kafka::codec::code;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// A JoinGroup as the state machine needs it.
#[derive(Debug, Clone)]
pub(crate) struct Join {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, Default)]
pub(crate) struct Joined {
    pub(crate) error_code: i16,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// Only for the leader: every member and its metadata for the chosen protocol.
    pub(crate) members: Vec<(String, Option<String>, Bytes)>,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, Default)]
pub(crate) struct Synced {
    pub(crate) error_code: i16,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) assignment: Bytes,
}

fn joined_error(error_code: i16, member_id: &str) -> Joined {
    Joined { error_code, generation: -1, member_id: member_id.to_string(), ..Joined::default() }
}

fn synced_error(error_code: i16) -> Synced {
    Synced { error_code, ..Synced::default() }
}

#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    pub(crate) protocols: Vec<(String, Bytes)>,
    pub(crate) assignment: Bytes,
    /// When the session expires unless the member is heard from.
    deadline: Instant,
    join: Option<flume::Sender<Joined>>,
    sync: Option<flume::Sender<Synced>>,
}

impl Member {
    /// Members waiting for a rebalance to finish are not expired meanwhile.
    fn kept_alive(&self) -> bool {
        self.join.is_some() || self.sync.is_some()
    }
}

/// Rules shared by every group of a coordinator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) session_min: Duration,
    pub(crate) session_max: Duration,
    pub(crate) initial_delay: Duration,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) state: State,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: Option<String>,
    pub(crate) members: BTreeMap<String, Member>,
    /// PreparingRebalance: complete by then anyway. CompletingRebalance: the leader's sync is
    /// due by then.
    rebalance_deadline: Option<Instant>,
    /// The first join into an empty group waits for others until then.
    initial_delay_until: Option<Instant>,
    member_nonce: u64,
    members_made: u64,
}

impl Group {
    /// `nonce` makes member ids unique across restarts of the process.
    pub(crate) fn new(nonce: u64) -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            member_nonce: nonce,
            members_made: 0,
        }
    }

    /// Protocols every member supports (the candidates for the next generation).
    fn candidates(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else { return Vec::new() };
        let mut names: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for member in members {
            names.retain(|n| member.protocols.iter().any(|(m, _)| m == n));
        }
        names
    }

    pub(crate) fn join(
        &mut self,
        join: Join,
        limits: &Limits,
        now: Instant,
    ) -> Result<flume::Receiver<Joined>, Box<Joined>> {
        if join.session_timeout < limits.session_min || join.session_timeout > limits.session_max {
            return Err(Box::new(joined_error(code::INVALID_SESSION_TIMEOUT, &join.member_id)));
        }
        if join.protocols.is_empty() || join.protocol_type.is_empty() {
            return Err(Box::new(joined_error(code::INCONSISTENT_GROUP_PROTOCOL, &join.member_id)));
        }
        let known = self.members.contains_key(&join.member_id);
        if !join.member_id.is_empty() && !known {
            return Err(Box::new(joined_error(code::UNKNOWN_MEMBER_ID, &join.member_id)));
        }
        let others = self.members.len() - usize::from(known);
        if others > 0 {
            let type_matches = self.protocol_type.as_deref() == Some(join.protocol_type.as_str());
            let candidates = self.candidates();
            let common = join.protocols.iter().any(|(n, _)| candidates.contains(n))
                || (known && self.members.len() == 1);
            if !type_matches || !common {
                return Err(Box::new(joined_error(
                    code::INCONSISTENT_GROUP_PROTOCOL,
                    &join.member_id,
                )));
            }
        }
        let member_id = if known {
            join.member_id.clone()
        } else {
            self.members_made += 1;
            format!("{}-{:08x}-{}", join.client_id, self.member_nonce as u32, self.members_made)
        };
        let (tx, rx) = flume::bounded(1);
        let member = self.members.entry(member_id.clone()).or_insert_with(|| Member {
            id: member_id.clone(),
            instance_id: None,
            client_id: String::new(),
            client_host: String::new(),
            session_timeout: join.session_timeout,
            rebalance_timeout: join.rebalance_timeout,
            protocols: Vec::new(),
            assignment: Bytes::new(),
            deadline: now,
            join: None,
            sync: None,
        });
        member.instance_id = join.instance_id;
        member.client_id = join.client_id;
        member.client_host = join.client_host;
        member.session_timeout = join.session_timeout;
        member.rebalance_timeout = join.rebalance_timeout;
        member.protocols = join.protocols;
        member.deadline = now + join.session_timeout;
        if let Some(old) = member.join.replace(tx) {
            // The same member joined again before the last join was answered.
            let _ = old.send(joined_error(code::UNKNOWN_MEMBER_ID, &member_id));
        }
        self.protocol_type = Some(join.protocol_type);
        match self.state {
            State::Empty => {
                let delay = limits.initial_delay.min(join.rebalance_timeout);
                if !delay.is_zero() {
                    self.initial_delay_until = Some(now + delay);
                }
                self.prepare_rebalance(now);
            }
            State::Stable | State::CompletingRebalance => self.prepare_rebalance(now),
            State::PreparingRebalance => {}
        }
        self.try_complete_join(now);
        Ok(rx)
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == State::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(sync) = member.sync.take() {
                    let _ = sync.send(synced_error(code::REBALANCE_IN_PROGRESS));
                }
            }
        }
        let timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        self.state = State::PreparingRebalance;
        self.rebalance_deadline = Some(now + timeout);
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let delayed = self.initial_delay_until.is_some_and(|t| now < t);
        let all_joined = self.members.values().all(|m| m.join.is_some());
        let timed_out = self.rebalance_deadline.is_some_and(|t| now >= t);
        if (all_joined && !delayed) || timed_out {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        self.members.retain(|_, m| m.join.is_some());
        self.initial_delay_until = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        // Each member votes for its most preferred candidate; most votes wins.
        let candidates = self.candidates();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let protocol = votes
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(p, _)| p.to_string())
            .or_else(|| candidates.first().cloned());
        self.protocol = protocol.clone();
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let everyone: Vec<(String, Option<String>, Bytes)> = self
            .members
            .values()
            .map(|m| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == protocol.as_ref())
                    .map_or_else(Bytes::new, |(_, md)| md.clone());
                (m.id.clone(), m.instance_id.clone(), metadata)
            })
            .collect();
        let timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        self.state = State::CompletingRebalance;
        self.rebalance_deadline = Some(now + timeout);
        for member in self.members.values_mut() {
            member.deadline = now + member.session_timeout;
            member.assignment = Bytes::new();
            if let Some(join) = member.join.take() {
                let _ = join.send(Joined {
                    error_code: code::NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: protocol.clone(),
                    leader: leader.clone(),
                    member_id: member.id.clone(),
                    members: if member.id == leader { everyone.clone() } else { Vec::new() },
                });
            }
        }
    }

    fn become_empty(&mut self) {
        self.state = State::Empty;
        self.protocol = None;
        self.protocol_type = None;
        self.leader = None;
        self.rebalance_deadline = None;
        self.initial_delay_until = None;
    }

    pub(crate) fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Result<flume::Receiver<Synced>, Synced> {
        let Some(member) = self.members.get_mut(member_id) else {
            return Err(synced_error(code::UNKNOWN_MEMBER_ID));
        };
        if generation != self.generation {
            return Err(synced_error(code::ILLEGAL_GENERATION));
        }
        member.deadline = now + member.session_timeout;
        match self.state {
            State::Empty => Err(synced_error(code::UNKNOWN_MEMBER_ID)),
            State::PreparingRebalance => Err(synced_error(code::REBALANCE_IN_PROGRESS)),
            State::Stable => Err(Synced {
                error_code: code::NONE,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                assignment: member.assignment.clone(),
            }),
            State::CompletingRebalance => {
                let (tx, rx) = flume::bounded(1);
                member.sync = Some(tx);
                if self.leader.as_deref() == Some(member_id) {
                    let mut assignments: BTreeMap<String, Bytes> =
                        assignments.into_iter().collect();
                    self.state = State::Stable;
                    self.rebalance_deadline = None;
                    for m in self.members.values_mut() {
                        m.assignment = assignments.remove(&m.id).unwrap_or_default();
                        m.deadline = now + m.session_timeout;
                        if let Some(sync) = m.sync.take() {
                            let _ = sync.send(Synced {
                                error_code: code::NONE,
                                protocol_type: self.protocol_type.clone(),
                                protocol: self.protocol.clone(),
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                }
                Ok(rx)
            }
        }
    }

    pub(crate) fn heartbeat(&mut self, member_id: &str, generation: i32, now: Instant) -> i16 {
        let Some(member) = self.members.get_mut(member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        member.deadline = now + member.session_timeout;
        match self.state {
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    pub(crate) fn leave(&mut self, member_id: &str, now: Instant) -> i16 {
        let Some(mut member) = self.members.remove(member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if let Some(join) = member.join.take() {
            let _ = join.send(joined_error(code::UNKNOWN_MEMBER_ID, member_id));
        }
        if let Some(sync) = member.sync.take() {
            let _ = sync.send(synced_error(code::UNKNOWN_MEMBER_ID));
        }
        self.after_removal(now);
        code::NONE
    }

    fn after_removal(&mut self, now: Instant) {
        match self.state {
            State::Stable | State::CompletingRebalance => self.prepare_rebalance(now),
            State::PreparingRebalance | State::Empty => {}
        }
        self.try_complete_join(now);
    }

    /// Whether an offset commit from this member and generation is accepted now.
    pub(crate) fn check_commit(&mut self, member_id: &str, generation: i32, now: Instant) -> i16 {
        if generation < 0 && self.members.is_empty() {
            // A group used only to store offsets (assign, not subscribe).
            return code::NONE;
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        member.deadline = now + member.session_timeout;
        match self.state {
            State::CompletingRebalance => code::REBALANCE_IN_PROGRESS,
            // Stable, or PreparingRebalance: a member commits before it rejoins.
            _ => code::NONE,
        }
    }

    /// Expires silent members, completes or restarts overdue rebalances.
    pub(crate) fn tick(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.kept_alive() && m.deadline <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(member = %id, "consumer group member's session expired");
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.after_removal(now);
        }
        match self.state {
            State::PreparingRebalance => self.try_complete_join(now),
            State::CompletingRebalance if self.rebalance_deadline.is_some_and(|t| now >= t) => {
                // The leader never sent its assignment: members that did not sync go, the
                // others rebalance again.
                self.members.retain(|_, m| m.sync.is_some());
                self.prepare_rebalance(now);
                self.try_complete_join(now);
            }
            _ => {}
        }
    }

    /// The next moment `tick` has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let sessions = self.members.values().filter(|m| !m.kept_alive()).map(|m| m.deadline);
        sessions.chain(self.rebalance_deadline).chain(self.initial_delay_until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        session_min: Duration::from_millis(100),
        session_max: Duration::from_secs(60),
        initial_delay: Duration::ZERO,
    };

    fn join(member_id: &str, protocols: &[&str]) -> Join {
        Join {
            member_id: member_id.to_string(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                .collect(),
        }
    }

    fn answer<T>(rx: &flume::Receiver<T>) -> T {
        rx.try_recv().expect("answered")
    }

    #[test]
    fn a_rebalance_waits_for_every_member_then_the_leader_assigns() {
        let now = crate::kafka::util::now();
        let mut g = Group::new(1);
        let a = g.join(join("", &["range", "roundrobin"]), &LIMITS, now).expect("joins");
        let a = answer(&a);
        assert_eq!((a.error_code, a.generation, a.members.len()), (0, 1, 1));
        assert_eq!(a.protocol.as_deref(), Some("range"));
        let sa = g.sync(&a.member_id, 1, vec![(a.member_id.clone(), Bytes::from("p0,p1"))], now);
        assert_eq!(answer(&sa.expect("waits")).assignment, Bytes::from("p0,p1"));
        assert_eq!(g.state, State::Stable);

        // B joins: A learns of the rebalance from its heartbeat and rejoins.
        let b = g.join(join("", &["roundrobin", "range"]), &LIMITS, now).expect("joins");
        assert!(b.try_recv().is_err(), "waits for A");
        assert_eq!(g.heartbeat(&a.member_id, 1, now), code::REBALANCE_IN_PROGRESS);
        let a2 =
            g.join(join(&a.member_id, &["range", "roundrobin"]), &LIMITS, now).expect("rejoins");
        let (a2, b) = (answer(&a2), answer(&b));
        assert_eq!((a2.generation, b.generation), (2, 2));
        assert_eq!(a2.leader, a.member_id, "the leader stays");
        assert_eq!((a2.members.len(), b.members.len()), (2, 0));
        let sb = g.sync(&b.member_id, 2, Vec::new(), now).expect("waits");
        assert!(sb.try_recv().is_err(), "a follower waits for the leader");
        let assignments = vec![
            (a.member_id.clone(), Bytes::from("p0")),
            (b.member_id.clone(), Bytes::from("p1")),
        ];
        let sa = g.sync(&a.member_id, 2, assignments, now).expect("leader");
        assert_eq!(answer(&sa).assignment, Bytes::from("p0"));
        assert_eq!(answer(&sb).assignment, Bytes::from("p1"));
        assert_eq!(g.heartbeat(&b.member_id, 2, now), code::NONE);
        assert_eq!(g.heartbeat(&b.member_id, 1, now), code::ILLEGAL_GENERATION);
        assert_eq!(g.check_commit(&b.member_id, 2, now), code::NONE);
        assert_eq!(g.check_commit("stranger", 2, now), code::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn leaving_and_silence_rebalance_and_an_empty_group_takes_simple_commits() {
        let now = crate::kafka::util::now();
        let mut g = Group::new(2);
        let a = answer(&g.join(join("", &["range"]), &LIMITS, now).expect("a"));
        g.sync(&a.member_id, 1, Vec::new(), now).expect("sync");
        let b_rx = g.join(join("", &["range"]), &LIMITS, now).expect("b");
        let a2 = answer(&g.join(join(&a.member_id, &["range"]), &LIMITS, now).expect("a again"));
        let b = answer(&b_rx);
        g.sync(&b.member_id, a2.generation, Vec::new(), now).expect("b sync");
        g.sync(&a.member_id, a2.generation, Vec::new(), now).expect("a sync");
        assert_eq!(g.state, State::Stable);
        assert_eq!(g.check_commit("", -1, now), code::UNKNOWN_MEMBER_ID, "not empty");

        // A leaves: B must rejoin, and completes the next generation alone.
        assert_eq!(g.leave(&a.member_id, now), code::NONE);
        assert_eq!(g.state, State::PreparingRebalance);
        let b2 = answer(&g.join(join(&b.member_id, &["range"]), &LIMITS, now).expect("b rejoins"));
        assert_eq!((b2.generation, b2.leader.as_str()), (a2.generation + 1, b.member_id.as_str()));
        g.sync(&b.member_id, b2.generation, Vec::new(), now).expect("sync");

        // B goes silent: its session expires and the group empties.
        let later = now + Duration::from_secs(11);
        assert_eq!(g.next_deadline(), Some(now + Duration::from_secs(10)));
        g.tick(later);
        assert_eq!(g.state, State::Empty);
        assert!(g.members.is_empty());
        assert_eq!(g.check_commit("", -1, later), code::NONE);
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout() {
        let now = crate::kafka::util::now();
        let mut g = Group::new(3);
        let a = answer(&g.join(join("", &["range"]), &LIMITS, now).expect("a"));
        g.sync(&a.member_id, 1, Vec::new(), now).expect("sync");
        let b = g.join(join("", &["range"]), &LIMITS, now).expect("b");
        // A keeps heartbeating (its session stays alive) but never rejoins.
        for s in [9, 18, 27] {
            let at = now + Duration::from_secs(s);
            assert_eq!(g.heartbeat(&a.member_id, 1, at), code::REBALANCE_IN_PROGRESS);
            g.tick(at);
        }
        g.tick(now + Duration::from_secs(29));
        assert!(b.try_recv().is_err());
        g.tick(now + Duration::from_secs(31));
        let b = answer(&b);
        assert_eq!((b.error_code, b.members.len()), (code::NONE, 1), "B leads alone");
        assert!(!g.members.contains_key(&a.member_id));
    }

    #[test]
    fn the_initial_delay_gathers_members_and_protocols_must_match() {
        let now = crate::kafka::util::now();
        let limits = Limits { initial_delay: Duration::from_secs(3), ..LIMITS };
        let mut g = Group::new(4);
        let a = g.join(join("", &["range"]), &limits, now).expect("a");
        let b = g.join(join("", &["range"]), &limits, now).expect("b");
        assert!(a.try_recv().is_err() && b.try_recv().is_err(), "still gathering");
        let mut other = join("", &["sticky"]);
        assert_eq!(
            g.join(other.clone(), &limits, now).expect_err("a refused join").error_code,
            code::INCONSISTENT_GROUP_PROTOCOL
        );
        other.protocols = vec![("range".into(), Bytes::new())];
        other.session_timeout = Duration::from_millis(1);
        assert_eq!(
            g.join(other, &limits, now).expect_err("a refused join").error_code,
            code::INVALID_SESSION_TIMEOUT
        );
        assert_eq!(g.next_deadline(), Some(now + Duration::from_secs(3)));
        g.tick(now + Duration::from_secs(3));
        let (a, b) = (answer(&a), answer(&b));
        assert_eq!((a.generation, b.generation), (1, 1));
        assert_eq!(a.members.len() + b.members.len(), 2, "one leader sees both");
    }
}
