//! The allow-list file: one client per line, `<public key base64> <inner address>`, `#`
//! comments. Checked whole: a bad line refuses the file (at start-up, or on reload, where the
//! previous list stays in force) with its line number.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

/// Allowed clients and their inner addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Client public key → inner address.
    pub clients: HashMap<[u8; 32], IpAddr>,
}

/// Why the allow-list was refused.
#[derive(Debug, thiserror::Error)]
pub enum AllowListError {
    /// Reading failed.
    #[error("cannot read clients file {path}: {err}")]
    Read {
        /// File.
        path: String,
        /// Error.
        err: std::io::Error,
    },
    /// A line is wrong.
    #[error("clients file line {line}: {msg}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
}

impl AllowList {
    /// Parse the file's text.
    ///
    /// # Errors
    /// The first bad line.
    pub fn parse(text: &str) -> Result<AllowList, AllowListError> {
        let mut clients = HashMap::new();
        let mut addrs = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let err = |msg: String| AllowListError::Line { line, msg };
            let mut fields = content.split_whitespace();
            let (Some(key), Some(addr), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(err("expected `<public key base64> <inner address>`".into()));
            };
            let key = jumping_protocol::keyfmt::decode(key)
                .map_err(|e| err(format!("public key: {e}")))?;
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| err(format!("`{addr}` is not an IP address")))?;
            if addr.is_unspecified() || addr.is_multicast() {
                return Err(err(format!("`{addr}` cannot be a client address")));
            }
            if let Some(prev) = addrs.insert(addr, line) {
                return Err(err(format!("address {addr} already given on line {prev}")));
            }
            if clients.insert(*key, addr).is_some() {
                return Err(err("this key is listed twice".into()));
            }
        }
        Ok(AllowList { clients })
    }

    /// Read and parse `path`.
    ///
    /// # Errors
    /// Reading or parsing failed.
    pub fn load(path: &Path) -> Result<AllowList, AllowListError> {
        let text = std::fs::read_to_string(path).map_err(|err| AllowListError::Read {
            path: path.display().to_string(),
            err,
        })?;
        AllowList::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jumping_protocol::keyfmt::encode;

    #[test]
    fn parses_and_refuses_with_line_numbers() {
        let (a, b) = (encode(&[1; 32]), encode(&[2; 32]));
        let l =
            AllowList::parse(&format!("# c\n{a} 10.99.0.2\n\n{b} fd00::2 # x\n")).expect("good");
        assert_eq!(l.clients.len(), 2);
        for (text, want) in [
            (format!("{a}\n"), "line 1: expected"),
            (format!("{a} 10.99.0.2\n{b} 10.99.0.2\n"), "line 2: address"),
            (
                format!("{a} 10.99.0.2\n{a} 10.99.0.3\n"),
                "line 2: this key",
            ),
            ("abc 10.0.0.1\n".to_string(), "line 1: public key"),
            (format!("{a} ten\n"), "not an IP"),
            (format!("{a} 0.0.0.0\n"), "cannot be"),
        ] {
            let e = AllowList::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{e} / {want}");
        }
    }
}
