//! Configuration through the real binary: precedence flags > env > file >
//! defaults, unknown keys, redacted secrets.

use std::process::Command;

fn parlor() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_parlor"));
    // Start from a clean slate whatever the developer's shell exports.
    for (k, _) in std::env::vars() {
        if k.starts_with("PARLOR_") {
            c.env_remove(k);
        }
    }
    c
}

fn value<'a>(toml: &'a str, key: &str) -> &'a str {
    toml.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} missing in:\n{toml}"))
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parlor.toml");
    std::fs::write(
        &file,
        "workers = 5\nmax-frame-bytes = 1000\nheartbeat-ms = 111\nallowed-origins = [\"https://a.example\", \"https://b.example\"]\n",
    )
    .unwrap();
    let out = parlor()
        .args(["config", "print", "--workers", "7", "--config"])
        .arg(&file)
        .env("PARLOR_WORKERS", "6")
        .env("PARLOR_MAX_FRAME_BYTES", "2000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(value(&toml, "workers"), "7", "flag wins");
    assert_eq!(value(&toml, "max-frame-bytes"), "2000", "env beats file");
    assert_eq!(value(&toml, "heartbeat-ms"), "111", "file beats default");
    assert_eq!(value(&toml, "max-content-bytes"), "16384", "default");
    assert_eq!(
        value(&toml, "allowed-origins"),
        r#"["https://a.example", "https://b.example"]"#
    );
}

#[test]
fn unknown_keys_are_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parlor.toml");
    std::fs::write(&file, "workers = 2\nmax-frame-byts = 10\n").unwrap();
    let out = parlor().arg("--config").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-frame-byts"), "{err}");
}

#[test]
fn secrets_are_redacted() {
    let out = parlor()
        .args(["config", "print", "--api-key", "hunter2"])
        .env("PARLOR_JWT_SECRET", "s3cret")
        .output()
        .unwrap();
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(
        !toml.contains("hunter2") && !toml.contains("s3cret"),
        "{toml}"
    );
    assert_eq!(value(&toml, "api-key"), "\"<redacted>\"");
    assert_eq!(value(&toml, "jwt-secret"), "\"<redacted>\"");
}

#[test]
fn help_documents_every_flag_with_its_env_var() {
    let out = parlor().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--addr",
        "--data-dir",
        "--store",
        "--durability",
        "--workers",
        "--shards",
        "--max-frame-bytes",
        "--outbox-bytes",
        "--heartbeat-ms",
        "--replay-limit",
        "--history-on-join",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("PARLOR_MAX_FRAME_BYTES"));
    assert!(help.contains("[default: 65536]"));
}

#[test]
fn the_cluster_url_comes_from_flag_env_or_file_with_its_password_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parlor.toml");
    std::fs::write(
        &file,
        "cluster = [\"redis://:filepw@a:7000\", \"redis://:filepw@b:7001\"]\ncluster-mode = \"cluster\"\n",
    )
    .unwrap();
    let print = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from_file = print(parlor().args(["config", "print", "--config"]).arg(&file));
    assert_eq!(
        value(&from_file, "cluster"),
        r#"["redis://:<redacted>@a:7000", "redis://:<redacted>@b:7001"]"#
    );
    assert_eq!(value(&from_file, "cluster-mode"), "\"cluster\"");
    let from_env = print(
        parlor()
            .args(["config", "print"])
            .env("PARLOR_CLUSTER", "rediss://user:envpw@redis.example:6380/0"),
    );
    assert_eq!(
        value(&from_env, "cluster"),
        r#"["rediss://user:<redacted>@redis.example:6380/0"]"#
    );
    for toml in [&from_file, &from_env] {
        assert!(
            !toml.contains("filepw") && !toml.contains("envpw"),
            "{toml}"
        );
    }
    let from_flag = print(parlor().args(["config", "print", "--cluster", "redis://h:6379"]));
    assert_eq!(value(&from_flag, "cluster"), r#"["redis://h:6379"]"#);
}

#[test]
fn a_cluster_that_cannot_be_reached_stops_parlor_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = parlor()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--cluster-timeout-ms",
            "500",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--cluster", &format!("redis://:pw@127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach Redis"), "{err}");
    assert!(!err.contains("pw@"), "the password leaked: {err}");
}
