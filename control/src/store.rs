//! Persistence of the control process's authority (sessions, keys, versions, owners; client
//! handshake timestamps and revocations), so the process can restart without losing a session.
//!
//! Session records live in one file of fixed-size slots (`sessions.slots`, one slot per
//! session, rewritten in place with a single `pwrite`); a record too large for a slot (a policy
//! allowing hundreds of switches a minute keeps that many timestamps) goes to a file of its own,
//! `sessions/<id>`. The node record is one file, `node`. Each record is sealed with
//! ChaCha20-Poly1305 under a key derived from the gateway's static key (they hold session keys:
//! no more exposing than the key file itself), with `sessions/<id>` or `node` as associated data
//! (a record cannot be passed off as another's). The node record is written atomically (a
//! temporary file, then `rename`) and synced to disk; session records are not synced (they are
//! valid only within one boot): see [`Store::save_batch`]. Records are taken on `CLOCK_BOOTTIME`: `boot_id` tells
//! whether they are from this boot; records of another boot are discarded (the data plane's
//! sessions died with that boot).

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use jumping_protocol::persist::{NodeRecord, SessionRecord};
use jumping_protocol::SessionId;
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use zeroize::Zeroizing;

/// Size of a session slot in `sessions.slots`: a 12-byte header (sealed length, SessionId)
/// and the sealed record. A record with the default switch budget takes about 1 KiB.
const SLOT: usize = 2048;
const SLOT_HEADER: usize = 12;

/// The state directory.
pub struct Store {
    dir: PathBuf,
    key: LessSafeKey,
    /// Record nonces: a ChaCha20 generator seeded from the OS (a system call per record was
    /// 2 % of the control process in a mass rebind).
    nonces: ChaCha20Rng,
    slots: fs::File,
    /// The slot of each session stored in `sessions.slots`.
    slot_of: HashMap<SessionId, u64>,
    /// Slots free for reuse, and the first never used.
    free: Vec<u64>,
    end: u64,
    /// Sessions stored in a file of their own (too large for a slot).
    overflow: std::collections::HashSet<SessionId>,
    /// `node.journal`: changes to the node record since `node` was written.
    journal: fs::File,
    journal_len: u64,
    /// Size of the last `node` written or read.
    snapshot_len: u64,
    /// This boot's id has been written.
    boot_written: bool,
}

/// The journal is folded into a new `node` once it is larger than the snapshot and this.
const JOURNAL_MIN_FOLD: u64 = 1 << 20;

impl core::fmt::Debug for Store {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What was found at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Session records of this boot.
    pub sessions: Vec<SessionRecord>,
    /// The node record.
    pub node: Option<NodeRecord>,
    /// Records discarded (another boot, unreadable, or not authentic), with why.
    pub discarded: Vec<String>,
}

/// Open (create, mode 0600) a state file for reading and writing; `append` for the journal.
fn open_state_file(path: &Path, append: bool) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.read(true).create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(false);
    }
    o.open(path)
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Store {
    /// Open (create, mode 0700) `dir`, sealing under a key derived from `gateway_secret`.
    ///
    /// # Errors
    /// Creating the directories.
    pub fn open(dir: &Path, gateway_secret: &[u8; 32]) -> std::io::Result<Store> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("sessions"))?;
        let k = Zeroizing::new(jumping_protocol::crypto::hash(&[
            b"jumping control state v1",
            gateway_secret,
        ]));
        let key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &*k).map_err(|_| std::io::Error::other("key"))?,
        );
        let slots = open_state_file(&dir.join("sessions.slots"), false)?;
        let journal = open_state_file(&dir.join("node.journal"), true)?;
        let journal_len = journal.metadata()?.len();
        Ok(Store {
            dir: dir.to_path_buf(),
            key,
            nonces: ChaCha20Rng::from_rng(OsRng)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            slots,
            slot_of: HashMap::new(),
            free: Vec::new(),
            end: 0,
            overflow: std::collections::HashSet::new(),
            journal,
            journal_len,
            snapshot_len: 0,
            boot_written: false,
        })
    }

    fn seal(&mut self, name: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.nonces.fill_bytes(&mut nonce);
        let mut buf = Zeroizing::new(plain.to_vec());
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map(|t| t.as_ref().to_vec())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        out
    }

    fn open_sealed(&self, name: &str, mut bytes: Vec<u8>) -> Option<Zeroizing<Vec<u8>>> {
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let mut body = Zeroizing::new(bytes.split_off(NONCE_LEN));
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .ok()?
            .len();
        body.truncate(n);
        Some(body)
    }

    fn session_name(id: SessionId) -> String {
        format!("sessions/{id}")
    }

    /// Persist the whole node record (`node`, atomically and synced), then empty the journal
    /// it now contains.
    ///
    /// # Errors
    /// What could not be written, one line per file.
    pub fn save_node(&mut self, rec: &NodeRecord) -> Result<(), Vec<String>> {
        let sealed = self.seal("node", &rec.encode());
        self.write_atomic("node", &sealed, true)
            .map_err(|e| vec![format!("node: {e}")])?;
        self.snapshot_len = sealed.len() as u64;
        // A crash before the truncation leaves changes already in `node`: merged again.
        self.journal
            .set_len(0)
            .and_then(|()| self.journal.sync_data())
            .map_err(|e| vec![format!("node.journal: {e}")])?;
        self.journal_len = 0;
        Ok(())
    }

    /// The journal has grown past the snapshot: time for [`Store::save_node`] with the whole
    /// record (appending is then amortised O(1) per change).
    #[must_use]
    pub fn wants_node_snapshot(&self) -> bool {
        self.journal_len > self.snapshot_len.max(JOURNAL_MIN_FOLD)
    }

    /// Append `changes` to the node journal and sync it (`fdatasync`).
    fn append_node(&mut self, changes: &NodeRecord) -> std::io::Result<()> {
        let sealed = self.seal("node.journal", &changes.encode());
        let mut entry = Vec::with_capacity(4 + sealed.len());
        entry.extend_from_slice(
            &u32::try_from(sealed.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        entry.extend_from_slice(&sealed);
        self.journal.write_all(&entry)?;
        self.journal.sync_data()?;
        self.journal_len += entry.len() as u64;
        Ok(())
    }

    /// Write this boot's id once (synced): session records are valid only with it.
    fn write_boot_id(&mut self) -> std::io::Result<()> {
        if !self.boot_written {
            self.write_atomic("boot_id", boot_id().as_bytes(), true)?;
            self.boot_written = true;
        }
        Ok(())
    }

    /// Persist `sessions`, and `node`: the node's changes since the last save (see
    /// `Gateway::export_node_changes`), appended to `node.journal` and synced.
    ///
    /// A session record is rewritten in its slot with one `pwrite` (no directory operation:
    /// a temporary file and a `rename` per record in a directory of 100 000 entries took a
    /// quarter of the control process's time at 40 000 sessions); a crash of the process
    /// cannot tear a single `pwrite` into the page cache, and a slot that does not open
    /// (a torn write after a power loss) is discarded at the next start like any record of
    /// another boot. Session records are not synced to disk, on purpose: they are read back
    /// only within the same boot (`boot_id`), and a crash or restart of the process leaves
    /// the page cache intact; a power loss, the only thing a sync would guard against,
    /// discards them anyway (the data plane's sessions die with the boot). Two `fsync`s per
    /// record capped the control process at a few hundred reattaches a second and stalled it
    /// for seconds when a thousand sessions failed over at once. The node record outlives
    /// the boot (handshake timestamps against replays, revocations, the SessionId
    /// allocator): its changes are appended to a journal and synced (`fdatasync`) once per
    /// batch, before anything they protect is sent; [`Store::save_node`] folds the journal
    /// into a new `node` (written atomically and synced) when it has grown past it. Writing
    /// the whole record every time (41 bytes per allowed identity, 4 MB at 100 000) capped
    /// the control process's handshakes at 100 000 identities.
    ///
    /// # Errors
    /// What could not be written, one line per record; the others are persisted.
    pub fn save_batch(
        &mut self,
        sessions: &[&SessionRecord],
        node: Option<&NodeRecord>,
    ) -> Result<(), Vec<String>> {
        let mut failed = Vec::new();
        if let Err(e) = self.write_boot_id() {
            failed.push(format!("boot_id: {e}"));
        }
        for r in sessions {
            if let Err(e) = self.save_one(r) {
                failed.push(format!("{}: {e}", Self::session_name(r.id)));
            }
        }
        if let Some(n) = node {
            if let Err(e) = self.append_node(n) {
                failed.push(format!("node.journal: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    fn save_one(&mut self, r: &SessionRecord) -> std::io::Result<()> {
        let name = Self::session_name(r.id);
        let sealed = self.seal(&name, &r.encode());
        if SLOT_HEADER + sealed.len() > SLOT {
            // Too large for a slot: a file of its own, then free the slot it had.
            self.write_atomic(&name, &sealed, false)?;
            self.overflow.insert(r.id);
            if let Some(slot) = self.slot_of.remove(&r.id) {
                self.clear_slot(slot)?;
            }
            return Ok(());
        }
        let slot = match self.slot_of.get(&r.id) {
            Some(s) => *s,
            None => {
                let s = self.free.pop().unwrap_or_else(|| {
                    self.end += 1;
                    self.end - 1
                });
                self.slot_of.insert(r.id, s);
                s
            }
        };
        let mut buf = Zeroizing::new(vec![0u8; SLOT]);
        let len = u32::try_from(sealed.len()).unwrap_or(u32::MAX);
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf[4..SLOT_HEADER].copy_from_slice(&r.id.0.to_be_bytes());
        buf[SLOT_HEADER..SLOT_HEADER + sealed.len()].copy_from_slice(&sealed);
        self.slots.write_all_at(&buf, slot * SLOT as u64)?;
        if self.overflow.remove(&r.id) {
            // It fits again: the slot is now the record.
            let _ = fs::remove_file(self.dir.join(&name));
        }
        Ok(())
    }

    /// Mark `slot` free on disk and for reuse.
    fn clear_slot(&mut self, slot: u64) -> std::io::Result<()> {
        self.free.push(slot);
        self.slots
            .write_all_at(&[0u8; SLOT_HEADER], slot * SLOT as u64)
    }

    /// A temporary file, `rename`; with `durable`, `fsync` of the file before the rename and
    /// of the directory after it.
    fn write_atomic(&self, rel: &str, bytes: &[u8], durable: bool) -> std::io::Result<()> {
        let path = self.dir.join(rel);
        let tmp = path.with_extension("tmp");
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                if durable {
                    f.sync_all()?;
                }
                Ok(())
            })
            .and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        if durable {
            if let Some(parent) = path.parent() {
                fs::File::open(parent)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// Forget a session.
    ///
    /// # Errors
    /// Clearing its slot or removing its file failed (a missing file is fine).
    pub fn remove_session(&mut self, id: SessionId) -> std::io::Result<()> {
        if let Some(slot) = self.slot_of.remove(&id) {
            self.clear_slot(slot)?;
        }
        if self.overflow.remove(&id) {
            match fs::remove_file(self.dir.join(Self::session_name(id))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Move `name`, none of whose records opens under this key, to `<name>.unreadable` (for
    /// the operator: a wrong key file is a misconfiguration, not a reason to destroy state),
    /// and start an empty one.
    fn set_aside(&self, name: &str, append: bool, out: &mut Loaded) -> Option<fs::File> {
        let aside = self.dir.join(format!("{name}.unreadable"));
        out.discarded.push(format!(
            "{name}: not authentic under this gateway key (moved to {})",
            aside.display()
        ));
        let _ = fs::rename(self.dir.join(name), &aside);
        open_state_file(&self.dir.join(name), append).ok()
    }

    /// Merge `node.journal` into `out.node`, entry by entry; a torn or unreadable entry ends
    /// it (appended after the last sync: nothing it holds was acted on) and is cut off.
    fn load_journal(&mut self, out: &mut Loaded) {
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &self.journal, &mut bytes);
        let mut at = 0usize;
        while let Some(len) = bytes.get(at..at + 4) {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let Some(sealed) = bytes.get(at + 4..at + 4 + len) else {
                break;
            };
            let Some(Ok(changes)) = self
                .open_sealed("node.journal", sealed.to_vec())
                .map(|b| NodeRecord::decode(&b))
            else {
                break;
            };
            merge_node(out.node.get_or_insert_with(NodeRecord::default), changes);
            at += 4 + len;
        }
        if at == 0 && !bytes.is_empty() {
            // Not one entry opens: another gateway key (a misconfiguration), not a torn
            // write. Kept aside for the operator, not destroyed; a new journal starts.
            if let Some(f) = self.set_aside("node.journal", true, out) {
                self.journal = f;
            }
        } else if at < bytes.len() {
            out.discarded.push(format!(
                "node.journal: {} bytes after the last whole entry (a torn append)",
                bytes.len() - at
            ));
            let _ = self.journal.set_len(at as u64);
        }
        self.journal_len = at as u64;
    }

    /// Everything persisted, sessions only if they are from this boot. Takes the slots in use
    /// (later saves of a loaded session rewrite its slot); clears what it discards.
    #[must_use]
    pub fn load(&mut self) -> Loaded {
        let mut out = Loaded::default();
        if let Ok(bytes) = fs::read(self.dir.join("node")) {
            self.snapshot_len = bytes.len() as u64;
            match self
                .open_sealed("node", bytes)
                .map(|b| NodeRecord::decode(&b))
            {
                Some(Ok(n)) => out.node = Some(n),
                Some(Err(e)) => out.discarded.push(format!("node: {e}")),
                None => out
                    .discarded
                    .push("node: not authentic under this gateway key".into()),
            }
        }
        self.load_journal(&mut out);
        let same_boot =
            fs::read_to_string(self.dir.join("boot_id")).is_ok_and(|b| b.trim() == boot_id());
        self.slot_of.clear();
        self.free.clear();
        self.overflow.clear();
        // Where each loaded session came from: Some(slot), or None for its own file.
        let mut found: HashMap<SessionId, (SessionRecord, Option<u64>)> = HashMap::new();
        let mut keep = |out: &mut Loaded, rec: SessionRecord, from: Option<u64>| -> Option<u64> {
            // The same session twice (a crash between moving a record into or out of its
            // slot): the later record wins; the loser's slot, if any, is returned to free.
            match found.remove(&rec.id) {
                Some((old, old_from)) if old.at > rec.at => {
                    out.discarded
                        .push(format!("{}: older copy", Self::session_name(rec.id)));
                    found.insert(old.id, (old, old_from));
                    from
                }
                Some((old, old_from)) => {
                    out.discarded
                        .push(format!("{}: older copy", Self::session_name(old.id)));
                    found.insert(rec.id, (rec, from));
                    old_from
                }
                None => {
                    found.insert(rec.id, (rec, from));
                    None
                }
            }
        };
        let mut slots = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &self.slots, &mut slots);
        self.end = (slots.len() / SLOT) as u64;
        let mut to_clear = Vec::new();
        for (i, slot) in slots.chunks_exact(SLOT).enumerate() {
            let i = i as u64;
            let len = u32::from_be_bytes([slot[0], slot[1], slot[2], slot[3]]) as usize;
            if len == 0 {
                self.free.push(i);
                continue;
            }
            let mut idb = [0u8; 8];
            idb.copy_from_slice(&slot[4..SLOT_HEADER]);
            let id = SessionId(u64::from_be_bytes(idb));
            let name = Self::session_name(id);
            if !same_boot {
                out.discarded.push(format!("{name}: from another boot"));
                to_clear.push(i);
                continue;
            }
            let rec = slot
                .get(SLOT_HEADER..SLOT_HEADER + len)
                .and_then(|b| self.open_sealed(&name, b.to_vec()))
                .map(|b| SessionRecord::decode(&b));
            match rec {
                Some(Ok(r)) if r.id == id => {
                    if let Some(lost) = keep(&mut out, r, Some(i)) {
                        to_clear.push(lost);
                    }
                }
                Some(Ok(_)) => {
                    out.discarded.push(format!("{name}: id mismatch"));
                    to_clear.push(i);
                }
                Some(Err(err)) => {
                    out.discarded.push(format!("{name}: {err}"));
                    to_clear.push(i);
                }
                None => {
                    out.discarded
                        .push(format!("{name}: unreadable or not authentic"));
                    to_clear.push(i);
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.dir.join("sessions")) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().to_string();
                let name = format!("sessions/{file}");
                if !same_boot || file.ends_with(".tmp") {
                    let _ = fs::remove_file(e.path());
                    out.discarded.push(format!("{name}: from another boot"));
                    continue;
                }
                let rec = fs::read(e.path())
                    .ok()
                    .and_then(|b| self.open_sealed(&name, b))
                    .map(|b| SessionRecord::decode(&b));
                match rec {
                    Some(Ok(r)) if Self::session_name(r.id) == name => {
                        if let Some(lost) = keep(&mut out, r, None) {
                            to_clear.push(lost);
                        }
                    }
                    Some(Ok(_)) => out.discarded.push(format!("{name}: id mismatch")),
                    Some(Err(err)) => out.discarded.push(format!("{name}: {err}")),
                    None => out
                        .discarded
                        .push(format!("{name}: unreadable or not authentic")),
                }
            }
        }
        if same_boot && found.is_empty() && !to_clear.is_empty() {
            // Not one slot opens: another gateway key, not torn writes. Kept aside.
            if let Some(f) = self.set_aside("sessions.slots", false, &mut out) {
                self.slots = f;
            }
            self.free.clear();
            self.end = 0;
            to_clear.clear();
        }
        for slot in to_clear {
            let _ = self.clear_slot(slot);
        }
        if let Err(e) = self.write_boot_id() {
            out.discarded.push(format!("boot_id: cannot write: {e}"));
        }
        for (id, (rec, from)) in found {
            match from {
                Some(slot) => {
                    self.slot_of.insert(id, slot);
                    // A file of its own that lost to the slot.
                    let _ = fs::remove_file(self.dir.join(Self::session_name(id)));
                }
                None => {
                    self.overflow.insert(id);
                }
            }
            out.sessions.push(rec);
        }
        out
    }
}

/// Fold `changes` into `base`: later timestamps win, revocations stay, the allocator is the
/// latest (the same rule as `Gateway::restore_node`).
fn merge_node(base: &mut NodeRecord, changes: NodeRecord) {
    let mut at: HashMap<[u8; 32], usize> = base
        .clients
        .iter()
        .enumerate()
        .map(|(i, c)| (c.0, i))
        .collect();
    for (k, ts, revoked) in changes.clients {
        match at.get(&k) {
            Some(&i) => {
                let c = &mut base.clients[i];
                c.1 = c.1.max(ts);
                c.2 |= revoked;
            }
            None => {
                at.insert(k, base.clients.len());
                base.clients.push((k, ts, revoked));
            }
        }
    }
    // The largest counter: a journal entry older than the snapshot (a crash between writing
    // `node` and emptying the journal) must not wind the allocator back.
    match (&mut base.ids, changes.ids) {
        (Some(b), Some(c)) if b.key == c.key => b.counter = b.counter.max(c.counter),
        (b, Some(c)) => *b = Some(c),
        (_, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of this test's own.
    fn fresh_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("jumping-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn node_round_trip_and_tamper_detection() {
        let dir = fresh_dir("store");
        let mut s = Store::open(&dir, &[9; 32]).expect("open");
        let rec = NodeRecord {
            clients: vec![([1; 32], Some(5), false), ([2; 32], None, true)],
            ids: Some(jumping_protocol::persist::IdAllocatorRecord {
                key: Zeroizing::new([7; 32]),
                counter: 99,
            }),
        };
        s.save_node(&rec).expect("save");
        assert_eq!(s.load().node, Some(rec.clone()));
        // Another gateway key cannot read it.
        let mut other = Store::open(&dir, &[8; 32]).expect("open");
        let l = other.load();
        assert!(l.node.is_none() && !l.discarded.is_empty());
        // Nor its journal, which it keeps aside instead of cutting it off.
        s.save_batch(&[], Some(&rec)).expect("append");
        let l = Store::open(&dir, &[8; 32]).expect("open").load();
        assert!(l.node.is_none(), "{:?}", l.discarded);
        assert!(dir.join("node.journal.unreadable").exists());
        // A flipped byte is detected.
        let mut bytes = fs::read(dir.join("node")).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(dir.join("node"), bytes).expect("write");
        assert!(s.load().node.is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    fn records(n: u64) -> (Vec<SessionRecord>, NodeRecord) {
        let mut records = Vec::new();
        let mut node = None;
        for seed in 0..n {
            let mut sim =
                jumping_protocol::testing::Sim::new(seed, jumping_protocol::Policy::default());
            let sid = sim.connect();
            records.push(sim.gw.export_session(sim.now, sid).expect("record"));
            node = Some(sim.gw.export_node());
        }
        (records, node.expect("node"))
    }

    fn encoded(v: &[SessionRecord]) -> Vec<Vec<u8>> {
        let mut e: Vec<_> = v.iter().map(|r| r.encode().to_vec()).collect();
        e.sort();
        e
    }

    #[test]
    fn a_batch_is_persisted_whole_and_read_back_by_the_next_start() {
        let dir = fresh_dir("batch");
        let mut s = Store::open(&dir, &[9; 32]).expect("open");
        let (records, node) = records(20);
        let refs: Vec<_> = records.iter().collect();
        s.save_batch(&refs, Some(&node)).expect("save");
        // Rewriting a record uses its slot again: the file does not grow.
        let size = fs::metadata(dir.join("sessions.slots"))
            .expect("slots")
            .len();
        assert_eq!(size, 20 * SLOT as u64);
        s.save_batch(&refs[..5], None).expect("save again");
        assert_eq!(
            fs::metadata(dir.join("sessions.slots"))
                .expect("slots")
                .len(),
            size
        );
        // The next start (a new Store on the same directory) reads all of it.
        let mut next = Store::open(&dir, &[9; 32]).expect("open");
        let loaded = next.load();
        assert_eq!(loaded.node, Some(node));
        assert!(loaded.discarded.is_empty(), "{:?}", loaded.discarded);
        assert_eq!(encoded(&loaded.sessions), encoded(&records));
        // Forgetting a session frees its slot for the next one; the others stay.
        next.remove_session(records[3].id).expect("remove");
        let loaded = Store::open(&dir, &[9; 32]).expect("open").load();
        assert_eq!(loaded.sessions.len(), 19);
        assert!(loaded.sessions.iter().all(|r| r.id != records[3].id));
        next.save_batch(&refs[3..4], None).expect("save");
        assert_eq!(
            fs::metadata(dir.join("sessions.slots"))
                .expect("slots")
                .len(),
            size
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_or_tampered_slot_is_discarded_and_the_rest_kept() {
        let dir = fresh_dir("torn");
        let mut s = Store::open(&dir, &[9; 32]).expect("open");
        let (records, node) = records(4);
        let refs: Vec<_> = records.iter().collect();
        s.save_batch(&refs, Some(&node)).expect("save");
        let mut slots = fs::read(dir.join("sessions.slots")).expect("read");
        slots[SLOT + SLOT_HEADER + 40] ^= 1;
        fs::write(dir.join("sessions.slots"), &slots).expect("write");
        let mut next = Store::open(&dir, &[9; 32]).expect("open");
        let loaded = next.load();
        assert_eq!(loaded.sessions.len(), 3);
        assert_eq!(loaded.discarded.len(), 1, "{:?}", loaded.discarded);
        // The bad slot was cleared: the start after that finds nothing to discard.
        let loaded = Store::open(&dir, &[9; 32]).expect("open").load();
        assert_eq!(loaded.sessions.len(), 3);
        assert!(loaded.discarded.is_empty(), "{:?}", loaded.discarded);
        // Records of another boot are all discarded.
        fs::write(dir.join("boot_id"), "another boot").expect("write");
        let loaded = Store::open(&dir, &[9; 32]).expect("open").load();
        assert!(loaded.sessions.is_empty());
        assert_eq!(loaded.discarded.len(), 3, "{:?}", loaded.discarded);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_too_large_for_a_slot_has_a_file_of_its_own_until_it_fits_again() {
        let dir = fresh_dir("big");
        let mut s = Store::open(&dir, &[9; 32]).expect("open");
        let (records, node) = records(2);
        s.save_batch(&[&records[0], &records[1]], Some(&node))
            .expect("save");
        // A policy of hundreds of switches a minute keeps that many timestamps.
        let mut big = SessionRecord::decode(&records[0].encode()).expect("decode");
        for _ in 0..300 {
            big.recent_switches.push_back(big.at);
        }
        s.save_batch(&[&big], None).expect("save big");
        let file = dir.join(Store::session_name(big.id));
        assert!(file.exists());
        let loaded = Store::open(&dir, &[9; 32]).expect("open").load();
        assert_eq!(
            encoded(&loaded.sessions),
            encoded(&[
                big,
                SessionRecord::decode(&records[1].encode()).expect("decode")
            ])
        );
        assert!(loaded.discarded.is_empty(), "{:?}", loaded.discarded);
        // Back into a slot: the file goes.
        s.save_batch(&[&records[0]], None).expect("save small");
        assert!(!file.exists());
        let loaded = Store::open(&dir, &[9; 32]).expect("open").load();
        assert_eq!(encoded(&loaded.sessions), encoded(&records));
        let _ = fs::remove_dir_all(&dir);
    }

    fn node_with(clients: &[(u8, Option<u64>, bool)], counter: u64) -> NodeRecord {
        NodeRecord {
            clients: clients.iter().map(|&(k, t, r)| ([k; 32], t, r)).collect(),
            ids: Some(jumping_protocol::persist::IdAllocatorRecord {
                key: Zeroizing::new([7; 32]),
                counter,
            }),
        }
    }

    #[test]
    fn node_changes_are_journalled_merged_at_start_and_folded_into_the_snapshot() {
        let dir = fresh_dir("journal");
        let mut s = Store::open(&dir, &[9; 32]).expect("open");
        s.save_node(&node_with(&[(1, Some(5), false), (2, None, false)], 10))
            .expect("snapshot");
        s.save_batch(&[], Some(&node_with(&[(2, Some(7), false)], 11)))
            .expect("append");
        s.save_batch(
            &[],
            Some(&node_with(&[(3, Some(1), true), (1, Some(6), false)], 12)),
        )
        .expect("append");
        let want = node_with(
            &[(1, Some(6), false), (2, Some(7), false), (3, Some(1), true)],
            12,
        );
        let mut next = Store::open(&dir, &[9; 32]).expect("open");
        let loaded = next.load();
        assert_eq!(loaded.node, Some(want.clone()));
        assert!(loaded.discarded.is_empty(), "{:?}", loaded.discarded);
        // A torn last entry (appended, never synced whole) is cut off; the rest stands and
        // the journal goes on after it.
        let journal = dir.join("node.journal");
        let mut bytes = fs::read(&journal).expect("read");
        let whole = bytes.len();
        bytes.extend_from_slice(&[0, 0, 0, 200, 1, 2, 3]);
        fs::write(&journal, &bytes).expect("write");
        let mut next = Store::open(&dir, &[9; 32]).expect("open");
        let loaded = next.load();
        assert_eq!(loaded.node, Some(want));
        assert_eq!(loaded.discarded.len(), 1, "{:?}", loaded.discarded);
        assert_eq!(fs::metadata(&journal).expect("journal").len(), whole as u64);
        next.save_batch(&[], Some(&node_with(&[(4, Some(9), false)], 13)))
            .expect("append");
        let loaded = Store::open(&dir, &[9; 32]).expect("open").load();
        assert_eq!(loaded.node.expect("node").clients.len(), 4);
        // Past the threshold the daemon folds the journal into a snapshot: empty journal,
        // same state.
        assert!(!next.wants_node_snapshot());
        let big: Vec<(u8, Option<u64>, bool)> = (0..=255u8).map(|k| (k, Some(99), false)).collect();
        while !next.wants_node_snapshot() {
            next.save_batch(&[], Some(&node_with(&big, 14)))
                .expect("append");
        }
        let full = Store::open(&dir, &[9; 32])
            .expect("open")
            .load()
            .node
            .expect("node");
        next.save_node(&full).expect("fold");
        assert_eq!(fs::metadata(&journal).expect("journal").len(), 0);
        assert_eq!(
            Store::open(&dir, &[9; 32]).expect("open").load().node,
            Some(full)
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// A crash between writing a new snapshot and emptying the journal merges journal entries
    /// older than the snapshot: nothing goes back, the SessionId counter least of all.
    #[test]
    fn an_old_journal_entry_moves_nothing_back() {
        let mut base = node_with(&[(1, Some(50), true)], 20);
        merge_node(&mut base, node_with(&[(1, Some(40), false)], 10));
        assert_eq!(base, node_with(&[(1, Some(50), true)], 20));
    }
}
