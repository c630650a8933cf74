//! The built binary: help, start-up validation and the operator commands without a client.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jumping-client"))
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("jumping-client-it-{}-{name}", std::process::id()))
}

#[test]
fn help_documents_every_flag() {
    let out = bin().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--gateway ",
        "--gateway-public ",
        "--gateway-public-file",
        "--key",
        "--address",
        "--route",
        "--tun",
        "--mtu",
        "--path",
        "dev:IFNAME",
        "--status-socket",
        "--status",
        "--switch",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_address_is_refused_naming_the_flag() {
    let key = temp("key");
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").expect("write");
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&key).expect("meta").permissions(),
        0o600,
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = bin()
        .args(["--gateway", "192.0.2.1:51820"])
        .args([
            "--gateway-public",
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        ])
        .arg("--key")
        .arg(&key)
        .args(["--address", "10.99.0.2"])
        .args(["--path", "127.0.0.1"])
        .args(["--status-socket"])
        .arg(temp("never.sock"))
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&key);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--address"), "{err}");
    assert!(err.contains("PREFIX"), "{err}");
}

#[test]
fn group_readable_key_is_refused() {
    let key = temp("key644");
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").expect("write");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let out = bin()
        .args(["--gateway", "192.0.2.1:51820"])
        .args([
            "--gateway-public",
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        ])
        .arg("--key")
        .arg(&key)
        .args(["--address", "10.99.0.2/32"])
        .args(["--path", "127.0.0.1"])
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&key);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--key") && err.contains("chmod 600"), "{err}");
    assert!(!err.contains("AAAAAAAA"), "the key was printed: {err}");
}

#[test]
fn status_without_a_client_exits_1() {
    let sock = temp("absent.sock");
    for extra in [&["--status"][..], &["--switch", "1"][..]] {
        let out = bin()
            .args(extra)
            .arg("--status-socket")
            .arg(&sock)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no jumping-client is running"), "{err}");
    }
}
