//! Persistence of the control process's authority (sessions, keys, versions, owners; client
//! handshake timestamps and revocations), so the process can restart without losing a session.
//!
//! One file per session (`sessions/<id>`) and one for the node (`node`), each sealed with
//! ChaCha20-Poly1305 under a key derived from the gateway's static key (the files hold session
//! keys: they are no more exposing than the key file itself), the file name as associated data
//! (a record cannot be swapped for another's). Written atomically (a temporary file, then
//! `rename`); the node record is synced to disk, session records are not (they are valid only
//! within one boot): see [`Store::save_batch`]. Records are taken on `CLOCK_BOOTTIME`: `boot_id` tells
//! whether they are from this boot; records of another boot are discarded (the data plane's
//! sessions died with that boot).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use jumping_protocol::persist::{NodeRecord, SessionRecord};
use jumping_protocol::SessionId;
use rand_core::{OsRng, RngCore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use zeroize::Zeroizing;

/// The state directory.
pub struct Store {
    dir: PathBuf,
    key: LessSafeKey,
}

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
        Ok(Store {
            dir: dir.to_path_buf(),
            key,
        })
    }

    fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
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

    /// Persist a session.
    ///
    /// # Errors
    /// What could not be written, one line per file.
    pub fn save_session(&self, rec: &SessionRecord) -> Result<(), Vec<String>> {
        self.save_batch(&[rec], None)
    }

    /// Persist the node record and this boot's id.
    ///
    /// # Errors
    /// What could not be written, one line per file.
    pub fn save_node(&self, rec: &NodeRecord) -> Result<(), Vec<String>> {
        self.save_batch(&[], Some(rec))
    }

    /// Persist `sessions` (and the node record with this boot's id), each file atomically: a
    /// temporary file, then `rename`.
    ///
    /// Session records are not synced to disk, on purpose: they are read back only within the
    /// same boot (`boot_id`), and a crash or restart of the process leaves the page cache
    /// intact, so a renamed record is complete and visible to the next start; a power loss,
    /// the only thing a sync would guard against, discards them anyway (the data plane's
    /// sessions die with the boot). Two `fsync`s per record capped the control process at a
    /// few hundred reattaches a second and stalled it for seconds when a thousand sessions
    /// failed over at once. The node record outlives the boot (handshake timestamps against
    /// replays, revocations, the SessionId allocator): it is synced, file and directory, once
    /// per batch.
    ///
    /// # Errors
    /// What could not be written, one line per file; the others are persisted.
    pub fn save_batch(
        &self,
        sessions: &[&SessionRecord],
        node: Option<&NodeRecord>,
    ) -> Result<(), Vec<String>> {
        let mut failed = Vec::new();
        for r in sessions {
            let name = Self::session_name(r.id);
            let sealed = self.seal(&name, &r.encode());
            if let Err(e) = self.write_atomic(&name, &sealed, false) {
                failed.push(format!("{name}: {e}"));
            }
        }
        if let Some(n) = node {
            let sealed = self.seal("node", &n.encode());
            for (name, bytes) in [("node", sealed), ("boot_id", boot_id().into_bytes())] {
                if let Err(e) = self.write_atomic(name, &bytes, true) {
                    failed.push(format!("{name}: {e}"));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
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
    /// Removing failed (a missing file is fine).
    pub fn remove_session(&self, id: SessionId) -> std::io::Result<()> {
        match fs::remove_file(self.dir.join(Self::session_name(id))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Everything persisted, sessions only if they are from this boot.
    #[must_use]
    pub fn load(&self) -> Loaded {
        let mut out = Loaded::default();
        if let Ok(bytes) = fs::read(self.dir.join("node")) {
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
        let same_boot =
            fs::read_to_string(self.dir.join("boot_id")).is_ok_and(|b| b.trim() == boot_id());
        let Ok(entries) = fs::read_dir(self.dir.join("sessions")) else {
            return out;
        };
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
                Some(Ok(r)) if format!("sessions/{}", r.id) == name => out.sessions.push(r),
                Some(Ok(_)) => out.discarded.push(format!("{name}: id mismatch")),
                Some(Err(err)) => out.discarded.push(format!("{name}: {err}")),
                None => out
                    .discarded
                    .push(format!("{name}: unreadable or not authentic")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_round_trip_and_tamper_detection() {
        let dir = std::env::temp_dir().join(format!("jumping-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = Store::open(&dir, &[9; 32]).expect("open");
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
        let other = Store::open(&dir, &[8; 32]).expect("open");
        let l = other.load();
        assert!(l.node.is_none() && !l.discarded.is_empty());
        // A flipped byte is detected.
        let mut bytes = fs::read(dir.join("node")).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(dir.join("node"), bytes).expect("write");
        assert!(s.load().node.is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_is_persisted_whole_and_a_torn_write_is_discarded() {
        let dir = std::env::temp_dir().join(format!("jumping-batch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = Store::open(&dir, &[9; 32]).expect("open");
        let mut records = Vec::new();
        let mut node = None;
        for seed in 0..20 {
            let mut sim =
                jumping_protocol::testing::Sim::new(seed, jumping_protocol::Policy::default());
            let sid = sim.connect();
            records.push(sim.gw.export_session(sim.now, sid).expect("record"));
            node = Some(sim.gw.export_node());
        }
        let refs: Vec<_> = records.iter().collect();
        s.save_batch(&refs, node.as_ref()).expect("save");
        let loaded = s.load();
        assert_eq!(loaded.node, node);
        assert!(loaded.discarded.is_empty(), "{:?}", loaded.discarded);
        let mut got: Vec<_> = loaded
            .sessions
            .iter()
            .map(|r| r.encode().to_vec())
            .collect();
        let mut want: Vec<_> = records.iter().map(|r| r.encode().to_vec()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "every record of the batch, as written");
        // A crash between writing a temporary file and renaming it: the record on disk is
        // the previous one, the temporary file is discarded at the next start.
        let name = format!("sessions/{}", records[0].id);
        fs::write(dir.join(&name).with_extension("tmp"), b"torn").expect("write");
        let loaded = s.load();
        assert_eq!(loaded.sessions.len(), records.len());
        assert!(!dir.join(&name).with_extension("tmp").exists());
        // Nothing written when the directory is gone: every file is reported.
        fs::remove_dir_all(&dir).expect("rm");
        let err = s.save_batch(&refs[..2], None).expect_err("no directory");
        assert_eq!(err.len(), 2, "{err:?}");
    }
}
