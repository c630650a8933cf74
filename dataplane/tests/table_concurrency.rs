//! The session table under concurrent control: a property test with real threads.
//!
//! The concurrency model: a worker's `SessionTable` has exactly one owner (the worker), so its
//! readers (the packet path) never block and never race; the control process changes it only
//! through the worker's wait-free single-producer single-consumer command ring, drained by the
//! worker between batches. The properties that must hold whatever the interleaving:
//!
//! 1. **Sequential consistency at batch boundaries**: after the worker has taken `k` commands
//!    off the ring, the table equals a plain sequential model after the first `k` commands —
//!    commands are applied whole, once, in order, and nothing else changes the table.
//! 2. **An install never replaces** an installed session (its per-packet state, here a
//!    counter the worker advances, is never rolled back by the control process).
//! 3. **Capacity is a hard bound**: an install into a full table is refused, never a resize.
//! 4. **Nothing is lost**: every command the producer pushed is eventually applied or
//!    refused; the producer never blocks the worker (a full ring makes the *producer* retry).
//!
//! Each case runs a producer thread (random commands, random yields, a ring of 4 so it is full
//! often) against the worker's loop in the test thread (random batch sizes, and between
//! batches "packets": lookups plus the owner's own per-packet mutation), and checks the
//! table against the model after every batch.

use std::collections::HashMap;

use jumping_dataplane::commands::{channel, Command, Update};
use jumping_dataplane::table::SessionTable;
use jumping_protocol::SessionId;
use proptest::prelude::*;

/// A session's state in the test: `control` is what the control process set, `packets` the
/// per-packet state only the worker advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    control: u64,
    packets: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Add(u64);

impl Update<State> for Add {
    fn apply(self, s: &mut State) {
        s.control = s.control.wrapping_add(self.0);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Install(u64, u64),
    Update(u64, u64),
    Retire(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..12, 0u64..1000).prop_map(|(id, v)| Op::Install(id, v)),
        (1u64..12, 1u64..10).prop_map(|(id, d)| Op::Update(id, d)),
        (1u64..12).prop_map(Op::Retire),
    ]
}

const CAPACITY: usize = 6;

/// The sequential model: control values after each prefix of `ops` (per-packet state is
/// tracked separately, since only the worker advances it).
fn model_after(ops: &[Op]) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for o in ops {
        match *o {
            Op::Install(id, v) => {
                if !m.contains_key(&id) && m.len() < CAPACITY {
                    m.insert(id, v);
                }
            }
            Op::Update(id, d) => {
                if let Some(x) = m.get_mut(&id) {
                    *x = u64::wrapping_add(*x, d);
                }
            }
            Op::Retire(id) => {
                m.remove(&id);
            }
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn worker_sees_a_sequential_prefix_at_every_batch(
        ops in proptest::collection::vec(op(), 1..120),
        batches in proptest::collection::vec(1usize..5, 1..40),
        yields in proptest::collection::vec(any::<bool>(), 1..64),
    ) {
        let (mut tx, mut rx) = channel::<State, Add>(4);
        let producer_ops = ops.clone();
        let producer = std::thread::spawn(move || {
            for (i, o) in producer_ops.into_iter().enumerate() {
                let mut cmd = match o {
                    Op::Install(id, v) => Command::Install {
                        id: SessionId(id),
                        state: State { control: v, packets: 0 },
                    },
                    Op::Update(id, d) => Command::Update { id: SessionId(id), update: Add(d) },
                    Op::Retire(id) => Command::Retire { id: SessionId(id) },
                };
                // Property 4: a full ring pushes back on the producer, never drops.
                loop {
                    match tx.send(cmd) {
                        Ok(()) => break,
                        Err(back) => {
                            cmd = back;
                            std::thread::yield_now();
                        }
                    }
                }
                if yields[i % yields.len()] {
                    std::thread::yield_now();
                }
            }
        });

        let mut table: SessionTable<State> = SessionTable::with_capacity(CAPACITY);
        // Per-packet state the worker advanced, per session life (reset when it is retired).
        let mut packets: HashMap<u64, u64> = HashMap::new();
        let mut taken = 0usize;
        let mut b = 0usize;
        while taken < ops.len() {
            let applied = rx.apply(&mut table, batches[b % batches.len()]);
            b += 1;
            let batch = &ops[taken..taken + applied.commands];
            taken += applied.commands;
            // A session retired in this batch lost its per-packet state (a later install of
            // the same id in the batch starts afresh).
            for o in batch {
                if let Op::Retire(id) = o {
                    packets.remove(id);
                }
            }
            let model = model_after(&ops[..taken]);
            // Property 1 (and 3): the table is exactly the model after `taken` commands.
            prop_assert!(table.len() <= CAPACITY);
            let mut seen: HashMap<u64, u64> = HashMap::new();
            for (id, s) in table.iter() {
                seen.insert(id.0, s.control);
                // Property 2: the worker's per-packet state survived every install.
                prop_assert_eq!(s.packets, packets.get(&id.0).copied().unwrap_or(0));
            }
            prop_assert_eq!(&seen, &model, "after {} commands", taken);
            // Packets between batches: lookups by every id, and the owner's mutation.
            for id in 1u64..12 {
                let present = model.contains_key(&id);
                prop_assert_eq!(table.get(SessionId(id)).is_some(), present);
                if let Some(s) = table.get_mut(SessionId(id)) {
                    s.packets += 1;
                    *packets.entry(id).or_insert(0) += 1;
                }
            }
            if applied.commands == 0 {
                std::thread::yield_now();
            }
        }
        producer.join().expect("producer");
        prop_assert_eq!(rx.apply(&mut table, 16).commands, 0, "nothing left over");
    }
}
