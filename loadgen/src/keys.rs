//! Client identities for a load run: one static key pair and one inner address per simulated
//! client. [`generate`] writes the load generator's key file (secret keys, mode 0600) and the
//! gateway's `clients_file` (public keys) from the same list.

use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::keyfmt;

/// One simulated client.
#[derive(Debug)]
pub struct Identity {
    /// Its static key pair.
    pub keypair: StaticKeypair,
    /// Its inner (tunnel) address, as in the gateway's clients file.
    pub inner: Ipv4Addr,
}

/// The inner address of client `i` counted from `base` (`base + 1 + i`).
///
/// # Errors
/// The address space after `base` is exhausted.
pub fn inner_address(base: Ipv4Addr, i: usize) -> Result<Ipv4Addr> {
    let n = u32::try_from(i)
        .ok()
        .and_then(|i| u32::from(base).checked_add(i)?.checked_add(1));
    match n {
        Some(n) => Ok(Ipv4Addr::from(n)),
        None => bail!("no inner address for client {i} after {base}"),
    }
}

/// Make `count` identities with inner addresses after `base`; write the secrets to `keys_file`
/// (`<secret> <inner address>` lines, mode 0600) and the gateway's allow list to
/// `clients_file` (`<public key> <inner address>`).
///
/// # Errors
/// Writing failed, or the addresses ran out.
pub fn generate(count: usize, base: Ipv4Addr, keys_file: &Path, clients_file: &Path) -> Result<()> {
    let mut rng = rand_core::OsRng;
    let mut keys = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(keys_file)
        .with_context(|| format!("create {}", keys_file.display()))?;
    let mut clients = String::with_capacity(count * 60);
    let mut secrets = String::with_capacity(count * 60);
    for i in 0..count {
        let kp = StaticKeypair::generate(&mut rng);
        let inner = inner_address(base, i)?;
        secrets.push_str(&format!("{} {inner}\n", keyfmt::encode(&kp.secret_bytes())));
        clients.push_str(&format!("{} {inner}\n", keyfmt::encode(&kp.public())));
    }
    keys.write_all(secrets.as_bytes())?;
    zeroize::Zeroize::zeroize(&mut secrets);
    fs::write(clients_file, clients)
        .with_context(|| format!("write {}", clients_file.display()))?;
    Ok(())
}

/// Read a key file written by [`generate`]. Blank lines and `#` comments are skipped.
///
/// # Errors
/// A line that is not `<secret key> <IPv4 address>`, named by its number.
pub fn load(path: &Path) -> Result<Vec<Identity>> {
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
    );
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(k), Some(a), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!(
                "{}:{}: expected `<secret key> <inner IPv4 address>`",
                path.display(),
                n + 1
            );
        };
        let secret = keyfmt::decode(k)
            .map_err(|e| anyhow::anyhow!("{}:{}: key: {e}", path.display(), n + 1))?;
        let inner: Ipv4Addr = a
            .parse()
            .with_context(|| format!("{}:{}: address `{a}`", path.display(), n + 1))?;
        out.push(Identity {
            keypair: StaticKeypair::from_secret_bytes(*secret),
            inner,
        });
    }
    if out.is_empty() {
        bail!("{}: no client keys", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load() {
        let dir = std::env::temp_dir().join(format!("jumping-loadgen-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let (k, c) = (dir.join("keys"), dir.join("clients"));
        generate(3, Ipv4Addr::new(10, 100, 0, 0), &k, &c).expect("generate");
        let ids = load(&k).expect("load");
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[2].inner, Ipv4Addr::new(10, 100, 0, 3));
        let clients = fs::read_to_string(&c).expect("clients");
        let first = clients.lines().next().expect("line");
        assert_eq!(
            first,
            format!("{} 10.100.0.1", keyfmt::encode(&ids[0].keypair.public()))
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&k).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(&k, "nonsense\n").expect("write");
        assert!(load(&k).unwrap_err().to_string().contains(":1:"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn addresses_run_out_cleanly() {
        assert!(inner_address(Ipv4Addr::new(255, 255, 255, 254), 1).is_err());
        assert_eq!(
            inner_address(Ipv4Addr::new(10, 100, 0, 255), 0).expect("ok"),
            Ipv4Addr::new(10, 100, 1, 0)
        );
    }
}
