//! The control-to-worker command path: one wait-free single-producer single-consumer ring per
//! worker ([`rtrb`]), carrying session installs, updates and retirements. The control process
//! pushes; the worker drains the ring between packet batches ([`CommandReceiver::apply`]), so a
//! change is applied at a batch boundary, in order, and never makes the worker wait.

use jumping_protocol::SessionId;
use rtrb::{Consumer, Producer, PushError, RingBuffer};

use crate::table::{SessionTable, TableFull};

/// A change to part of a session's state, applied by the worker. Changes are partial on
/// purpose: the worker owns the per-packet state (send counter, replay window), and a
/// wholesale replacement from the control process would roll it back and repeat a nonce.
pub trait Update<T> {
    /// Apply the change.
    fn apply(self, state: &mut T);
}

/// A change to a worker's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<T, U> {
    /// Install a new session. Refused if the session is already installed.
    Install {
        /// Session.
        id: SessionId,
        /// Its state for the worker.
        state: T,
    },
    /// Change part of an installed session (new active path after a reattach, next key epoch
    /// after a rekey).
    Update {
        /// Session.
        id: SessionId,
        /// The change.
        update: U,
    },
    /// Remove a session (terminated, or moved to another core).
    Retire {
        /// Session.
        id: SessionId,
    },
}

/// The control process's end of a worker's ring.
#[derive(Debug)]
pub struct CommandSender<T, U>(Producer<Command<T, U>>);

/// The worker's end.
#[derive(Debug)]
pub struct CommandReceiver<T, U>(Consumer<Command<T, U>>);

/// A ring for one worker, holding up to `capacity` commands in flight.
#[must_use]
pub fn channel<T, U>(capacity: usize) -> (CommandSender<T, U>, CommandReceiver<T, U>) {
    let (p, c) = RingBuffer::new(capacity);
    (CommandSender(p), CommandReceiver(c))
}

impl<T, U> CommandSender<T, U> {
    /// Queue a command.
    ///
    /// # Errors
    /// The command back when the ring is full (the worker is behind): the caller retries later;
    /// nothing is dropped silently.
    pub fn send(&mut self, cmd: Command<T, U>) -> Result<(), Command<T, U>> {
        self.0.push(cmd).map_err(|PushError::Full(c)| c)
    }
}

/// What one [`CommandReceiver::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Commands taken off the ring (every one below, plus retirements of absent sessions).
    pub commands: usize,
    /// New sessions installed.
    pub installed: usize,
    /// Updates applied.
    pub updated: usize,
    /// Sessions removed.
    pub retired: usize,
    /// Installs refused (table full, or the session is already installed) and updates for a
    /// session that is not here; reported to the control process.
    pub refused: usize,
}

impl<T, U: Update<T>> CommandReceiver<T, U> {
    /// Apply up to `max` queued commands to `table`, in order. Call between packet batches.
    pub fn apply(&mut self, table: &mut SessionTable<T>, max: usize) -> Applied {
        let mut done = Applied::default();
        for _ in 0..max {
            let Ok(cmd) = self.0.pop() else { break };
            done.commands += 1;
            match cmd {
                Command::Install { id, state } => {
                    if table.get(id).is_some() {
                        done.refused += 1;
                    } else {
                        match table.insert(id, state) {
                            Ok(_) => done.installed += 1,
                            Err(TableFull(_)) => done.refused += 1,
                        }
                    }
                }
                Command::Update { id, update } => match table.get_mut(id) {
                    Some(state) => {
                        update.apply(state);
                        done.updated += 1;
                    }
                    None => done.refused += 1,
                },
                Command::Retire { id } => {
                    if table.remove(id).is_some() {
                        done.retired += 1;
                    }
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Test update: add to the state.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Add(u64);
    impl Update<u64> for Add {
        fn apply(self, state: &mut u64) {
            *state += self.0;
        }
    }

    /// The control thread installs, updates and retires sessions while the worker thread
    /// applies commands in batches and looks sessions up between batches. Afterwards the
    /// worker's table equals the model built from the command sequence, and during the run a
    /// lookup never saw a state that was not, at some point, sent for that session.
    #[test]
    fn concurrent_control_and_worker_agree_with_the_model() {
        const N: u64 = 200_000;
        let (mut tx, mut rx) = channel::<u64, Add>(256);
        let script: Vec<Command<u64, Add>> = (0..N)
            .map(|i| {
                let id = SessionId((i % 5000) + 1);
                match i % 7 {
                    3 => Command::Retire { id },
                    5 => Command::Update {
                        id,
                        update: Add(5000),
                    },
                    _ => Command::Install { id, state: i },
                }
            })
            .collect();
        let mut model: HashMap<u64, u64> = HashMap::new();
        for c in &script {
            match c {
                Command::Install { id, state } => {
                    model.entry(id.0).or_insert(*state);
                }
                Command::Update { id, update } => {
                    if let Some(v) = model.get_mut(&id.0) {
                        *v += update.0;
                    }
                }
                Command::Retire { id } => {
                    model.remove(&id.0);
                }
            }
        }
        let producer = std::thread::spawn(move || {
            for mut cmd in script {
                loop {
                    match tx.send(cmd) {
                        Ok(()) => break,
                        Err(back) => {
                            cmd = back;
                            std::thread::yield_now();
                        }
                    }
                }
            }
        });
        let mut table = SessionTable::with_capacity(5000);
        let mut seen_ops = 0;
        let mut probe = 1u64;
        loop {
            let a = rx.apply(&mut table, 64);
            seen_ops += a.installed + a.updated + a.retired + a.refused;
            // A state found must be one the control plane sent for this id: i % 5000 + 1 == id.
            if let Some(&v) = table.get(SessionId(probe)) {
                assert_eq!(
                    v % 5000 + 1,
                    probe,
                    "session {probe} holds another session's state"
                );
            }
            probe = probe % 5000 + 1;
            if producer.is_finished() && rx.0.is_empty() {
                break;
            }
        }
        producer.join().expect("control thread");
        assert!(seen_ops > 0);
        let got: HashMap<u64, u64> = table.iter().map(|(k, v)| (k.0, *v)).collect();
        assert_eq!(got, model);
    }

    #[test]
    fn install_never_replaces_and_update_needs_a_session() {
        let (mut tx, mut rx) = channel::<u64, Add>(8);
        let id = SessionId(9);
        tx.send(Command::Install { id, state: 1 }).expect("room");
        tx.send(Command::Update { id, update: Add(2) })
            .expect("room");
        tx.send(Command::Install { id, state: 100 }).expect("room");
        tx.send(Command::Update {
            id: SessionId(10),
            update: Add(1),
        })
        .expect("room");
        let mut t = SessionTable::with_capacity(4);
        let a = rx.apply(&mut t, 10);
        assert_eq!((a.installed, a.updated, a.refused), (1, 1, 2));
        assert_eq!(t.get(id), Some(&3));
    }

    #[test]
    fn full_ring_hands_the_command_back() {
        let (mut tx, mut rx) = channel::<u64, Add>(2);
        tx.send(Command::Retire { id: SessionId(1) }).expect("room");
        tx.send(Command::Retire { id: SessionId(2) }).expect("room");
        let back = tx
            .send(Command::Retire { id: SessionId(3) })
            .expect_err("full");
        assert_eq!(back, Command::Retire { id: SessionId(3) });
        let mut t = SessionTable::with_capacity(4);
        // Both retirements of absent sessions are taken off the ring and change nothing.
        assert_eq!(
            rx.apply(&mut t, 10),
            Applied {
                commands: 2,
                ..Applied::default()
            }
        );
    }
}
