//! The control-to-worker command path: one wait-free single-producer single-consumer ring per
//! worker ([`rtrb`]), carrying session installs, updates and retirements. The control process
//! pushes; the worker drains the ring between packet batches ([`CommandReceiver::apply`]), so a
//! change is applied at a batch boundary, in order, and never makes the worker wait.

use jumping_protocol::SessionId;
use rtrb::{Consumer, Producer, PushError, RingBuffer};

use crate::table::{SessionTable, TableFull};

/// A change to a worker's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<T> {
    /// Install a new session, or replace the state of an existing one (new keys, new active
    /// path after a reattach).
    Install {
        /// Session.
        id: SessionId,
        /// Its state for the worker.
        state: T,
    },
    /// Remove a session (terminated, or moved to another core).
    Retire {
        /// Session.
        id: SessionId,
    },
}

/// The control process's end of a worker's ring.
#[derive(Debug)]
pub struct CommandSender<T>(Producer<Command<T>>);

/// The worker's end.
#[derive(Debug)]
pub struct CommandReceiver<T>(Consumer<Command<T>>);

/// A ring for one worker, holding up to `capacity` commands in flight.
#[must_use]
pub fn channel<T>(capacity: usize) -> (CommandSender<T>, CommandReceiver<T>) {
    let (p, c) = RingBuffer::new(capacity);
    (CommandSender(p), CommandReceiver(c))
}

impl<T> CommandSender<T> {
    /// Queue a command.
    ///
    /// # Errors
    /// The command back when the ring is full (the worker is behind): the caller retries later;
    /// nothing is dropped silently.
    pub fn send(&mut self, cmd: Command<T>) -> Result<(), Command<T>> {
        self.0.push(cmd).map_err(|PushError::Full(c)| c)
    }
}

/// What one [`CommandReceiver::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// New sessions installed.
    pub installed: usize,
    /// Existing sessions whose state was replaced.
    pub updated: usize,
    /// Sessions removed.
    pub retired: usize,
    /// Installs refused because the table is full (reported to the control process).
    pub refused: usize,
}

impl<T> CommandReceiver<T> {
    /// Apply up to `max` queued commands to `table`, in order. Call between packet batches.
    pub fn apply(&mut self, table: &mut SessionTable<T>, max: usize) -> Applied {
        let mut done = Applied::default();
        for _ in 0..max {
            let Ok(cmd) = self.0.pop() else { break };
            match cmd {
                Command::Install { id, state } => match table.insert(id, state) {
                    Ok(None) => done.installed += 1,
                    Ok(Some(_old)) => done.updated += 1,
                    Err(TableFull(_)) => done.refused += 1,
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

    /// The control thread installs, updates and retires sessions while the worker thread
    /// applies commands in batches and looks sessions up between batches. Afterwards the
    /// worker's table equals the model built from the command sequence, and during the run a
    /// lookup never saw a state that was not, at some point, sent for that session.
    #[test]
    fn concurrent_control_and_worker_agree_with_the_model() {
        const N: u64 = 200_000;
        let (mut tx, mut rx) = channel::<u64>(256);
        let script: Vec<Command<u64>> = (0..N)
            .map(|i| {
                let id = SessionId((i % 5000) + 1);
                if i % 7 == 3 {
                    Command::Retire { id }
                } else {
                    Command::Install { id, state: i }
                }
            })
            .collect();
        let mut model: HashMap<u64, u64> = HashMap::new();
        for c in &script {
            match c {
                Command::Install { id, state } => {
                    model.insert(id.0, *state);
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
            seen_ops += a.installed + a.updated + a.retired;
            assert_eq!(a.refused, 0);
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
    fn full_ring_hands_the_command_back() {
        let (mut tx, mut rx) = channel::<u8>(2);
        tx.send(Command::Retire { id: SessionId(1) }).expect("room");
        tx.send(Command::Retire { id: SessionId(2) }).expect("room");
        let back = tx
            .send(Command::Retire { id: SessionId(3) })
            .expect_err("full");
        assert_eq!(back, Command::Retire { id: SessionId(3) });
        let mut t = SessionTable::with_capacity(4);
        assert_eq!(rx.apply(&mut t, 10), Applied::default());
    }
}
