//! The gateway's sessions, keyed by SessionId, with an index of their timer deadlines, so
//! that running the timers visits only the sessions with something due instead of all of
//! them (a walk over 100 000 sessions of a few KiB each costs tens of milliseconds).
//!
//! The invariant: every session has an entry in the index at or before its true next
//! deadline, or is in the `touched` list (its deadline is recomputed before the index is
//! read). [`SessionTable::get_mut`] and [`SessionTable::insert`] put a session in `touched`;
//! [`SessionTable::get_mut_deadline_not_earlier`] does not, for updates that can only move
//! deadlines later (fresh activity): the stale, earlier entry makes the timers visit the
//! session early, find nothing due, and index it again at its real deadline.

use std::collections::{BTreeSet, HashMap};

use crate::session::GatewaySession;
use crate::time::Instant;
use crate::wire::SessionId;

/// Sessions and their deadline index.
#[derive(Default)]
pub(crate) struct SessionTable {
    map: HashMap<SessionId, GatewaySession>,
    /// (deadline, session) for every indexed session.
    index: BTreeSet<(Instant, SessionId)>,
    /// The deadline each indexed session has in `index`.
    scheduled: HashMap<SessionId, Instant>,
    /// Sessions changed since they were last indexed (may repeat).
    touched: Vec<SessionId>,
    /// Every session changed (`values_mut`): recompute all.
    all_touched: bool,
}

impl SessionTable {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn contains_key(&self, id: &SessionId) -> bool {
        self.map.contains_key(id)
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<&GatewaySession> {
        self.map.get(id)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &GatewaySession> {
        self.map.values()
    }

    /// A session to change; its deadline is recomputed before the index is next read.
    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut GatewaySession> {
        let s = self.map.get_mut(id)?;
        self.touched.push(*id);
        Some(s)
    }

    /// A session to change in a way that moves none of its deadlines earlier (only later):
    /// the index is left as it is.
    pub(crate) fn get_mut_deadline_not_earlier(
        &mut self,
        id: &SessionId,
    ) -> Option<&mut GatewaySession> {
        self.map.get_mut(id)
    }

    /// `id` changed in a way that may move a deadline earlier.
    pub(crate) fn touch(&mut self, id: SessionId) {
        self.touched.push(id);
    }

    /// Every session, to change.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut GatewaySession> {
        self.all_touched = true;
        self.map.values_mut()
    }

    /// Every deadline must be recomputed (the policy changed).
    pub(crate) fn touch_all(&mut self) {
        self.all_touched = true;
    }

    pub(crate) fn insert(&mut self, id: SessionId, s: GatewaySession) {
        self.touched.push(id);
        self.map.insert(id, s);
    }

    pub(crate) fn remove(&mut self, id: &SessionId) -> Option<GatewaySession> {
        if let Some(t) = self.scheduled.remove(id) {
            self.index.remove(&(t, *id));
        }
        self.map.remove(id)
    }

    /// Bring the index up to date with `deadline` (a session's next deadline).
    pub(crate) fn reindex(&mut self, deadline: impl Fn(&GatewaySession) -> Option<Instant>) {
        if self.all_touched {
            self.all_touched = false;
            self.touched.clear();
            self.index.clear();
            self.scheduled.clear();
            for (id, s) in &self.map {
                if let Some(t) = deadline(s) {
                    self.index.insert((t, *id));
                    self.scheduled.insert(*id, t);
                }
            }
            return;
        }
        for id in self.touched.drain(..) {
            let new = self.map.get(&id).and_then(&deadline);
            // Most touches (a heartbeat, a second touch in the same turn) leave the deadline
            // where it was: no index work then.
            if self.scheduled.get(&id) == new.as_ref() {
                continue;
            }
            if let Some(t) = self.scheduled.remove(&id) {
                self.index.remove(&(t, id));
            }
            if let Some(t) = new {
                self.index.insert((t, id));
                self.scheduled.insert(id, t);
            }
        }
    }

    /// The earliest deadline (after bringing the index up to date).
    pub(crate) fn next_deadline(
        &mut self,
        deadline: impl Fn(&GatewaySession) -> Option<Instant>,
    ) -> Option<Instant> {
        self.reindex(deadline);
        self.index.first().map(|(t, _)| *t)
    }

    /// Check the invariant at `now`: every session not waiting in `touched` is indexed at or
    /// before its next deadline after `now`. For tests (the simulation checks it at every
    /// step); `Err` names the first session that breaks it.
    pub(crate) fn check(
        &self,
        now: Instant,
        deadline: impl Fn(&GatewaySession) -> Option<Instant>,
    ) -> Result<(), String> {
        if self.all_touched {
            return Ok(());
        }
        for (id, s) in &self.map {
            if self.touched.contains(id) {
                continue;
            }
            let Some(t) = deadline(s) else { continue };
            match self.scheduled.get(id) {
                Some(at) if *at <= t.max(now) && self.index.contains(&(*at, *id)) => {}
                other => {
                    return Err(format!(
                        "session {id}: next deadline {t:?}, indexed at {other:?} (now {now:?})"
                    ))
                }
            }
        }
        Ok(())
    }

    /// The sessions with a deadline at or before `now`, taken out of the index (the caller
    /// changes them through [`SessionTable::get_mut`], which indexes them again).
    pub(crate) fn take_due(
        &mut self,
        now: Instant,
        deadline: impl Fn(&GatewaySession) -> Option<Instant>,
    ) -> Vec<SessionId> {
        self.reindex(deadline);
        let mut due = Vec::new();
        while let Some(&(t, id)) = self.index.first() {
            if t > now {
                break;
            }
            self.index.pop_first();
            self.scheduled.remove(&id);
            // Indexed again by the caller's `get_mut`; if it has none, here.
            self.touched.push(id);
            due.push(id);
        }
        due
    }
}
