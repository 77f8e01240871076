//! The real `tether` binary: `server token create|list|revoke`, `server` itself, its
//! configuration file and graceful shutdown on SIGTERM.

#[path = "../../server/tests/server_support/mod.rs"]
mod server_support;

mod cli_support;

use std::path::Path;
use std::process::{Command, Output};

use cli_support::{TETHER, start_server, stdout, stop, tether, token};
use reqwest::StatusCode;
use server_support::{Api, TestResult, code, refused_after_revocation};

#[tokio::test]
async fn token_create_then_server_then_revoke() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data_arg = data.to_str().ok_or("non-UTF-8 temp path")?;
    let created = token(&["create", "--user", "alice"], data_arg)?;
    assert!(created.status.success(), "{created:?}");
    let first = stdout(&created);
    assert!(first.starts_with("tu_") && first.len() == 67, "{first}");
    assert!(data.join("tether.db").exists());

    let (child, addr) = start_server(&data, None)?;
    let api = Api::checked(addr);
    let (status, body) = api.get("/api/v1/agents", &first).await?;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({ "agents": [] }))
    );

    // A second token for the same user, created while the server runs (WAL, busy timeout).
    let second = token(&["create", "--user", "alice"], data_arg)?;
    assert!(second.status.success());
    let listed = token(&["list", "--user", "alice"], data_arg)?;
    let listing = stdout(&listed);
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{listing}");
    assert!(!listing.contains(&first), "secrets are never listed");
    assert!(listing.contains(&first[3..19]), "the lookup key is");
    let first_id = rows
        .iter()
        .find(|r| r.contains(&first[3..19]))
        .and_then(|r| r.split('\t').next())
        .ok_or("token row")?
        .to_owned();

    let revoked = token(&["revoke", &first_id], data_arg)?;
    assert!(revoked.status.success(), "{revoked:?}");
    let (status, body) =
        refused_after_revocation(&api.client, &api.url("/api/v1/agents"), &first).await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (still, _) = api.get("/api/v1/agents", &stdout(&second)).await?;
    assert_eq!(still, StatusCode::OK);
    let listed = token(&["list"], data_arg)?;
    assert_eq!(stdout(&listed).matches("revoked").count(), 1);
    let unknown = token(&["revoke", &uuid::Uuid::new_v4().to_string()], data_arg)?;
    assert!(!unknown.status.success());

    stop(child)
}

#[test]
fn config_file_with_env_substitution_and_flag_overrides() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = server_yaml(
        dir.path(),
        "listen: \"127.0.0.1:${TETHER_TEST_PORT}\"\ndata_dir: ${TETHER_TEST_DIR}/data\nmax_body_bytes: 4096\n",
    )?;
    let run = |extra: &[&str], port: Option<&str>| -> TestResult<Output> {
        let mut cmd = Command::new(TETHER);
        cmd.args(["server", "--check-config", "--config", config.as_str()])
            .args(extra)
            .env_remove("REDIS_URL")
            .env("TETHER_TEST_DIR", dir.path());
        match port {
            Some(port) => cmd.env("TETHER_TEST_PORT", port),
            None => cmd.env_remove("TETHER_TEST_PORT"),
        };
        Ok(cmd.output()?)
    };
    let ok = run(&[], Some("9123"))?;
    let text = assert_checked(&ok, "127.0.0.1:9123", &dir.path().join("data"));
    assert!(
        text.contains("max_body_bytes: 4096") && text.contains("redis: not configured"),
        "{text}"
    );
    // Flags override the file.
    let flagged = run(
        &[
            "--listen",
            "127.0.0.1:7000",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ],
        Some("9123"),
    )?;
    let text = stdout(&flagged);
    assert!(
        text.contains("listen: 127.0.0.1:7000") && text.contains("redis: configured"),
        "{text}"
    );
    // An unset variable is an error naming it.
    let unset = run(&[], None)?;
    assert!(!unset.status.success());
    let err = String::from_utf8_lossy(&unset.stderr);
    assert!(err.contains("TETHER_TEST_PORT"), "{err}");
    // A bad value is refused before anything starts.
    let bad = run(&["--listen", "nowhere"], Some("9123"))?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("listen address"));
    assert!(
        !dir.path().join("data").exists(),
        "--check-config creates nothing"
    );
    Ok(())
}

#[test]
fn token_create_uses_the_config_files_data_dir() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = server_yaml(
        dir.path(),
        &format!("data_dir: {}/from-config\n", dir.path().display()),
    )?;
    let out = tether(
        &[
            "server", "token", "create", "--user", "bob", "--config", &config,
        ],
        None,
    )?;
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("from-config/tether.db").exists());
    let empty = token(
        &["create", "--user", "  "],
        dir.path().to_str().ok_or("path")?,
    )?;
    assert!(!empty.status.success());
    Ok(())
}

#[test]
fn shipped_example_config_is_valid() -> TestResult {
    let dir = tempfile::tempdir()?;
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../server/examples/server.yaml"
    );
    let out = Command::new(TETHER)
        .args(["server", "--check-config", "--config", example])
        .env_remove("REDIS_URL")
        .env("TETHER_DATA_DIR", dir.path())
        .output()?;
    assert_checked(&out, "127.0.0.1:8080", dir.path());
    Ok(())
}

/// Writes `text` to `dir/server.yaml`; returns the file's path.
fn server_yaml(dir: &Path, text: &str) -> TestResult<String> {
    let path = dir.join("server.yaml");
    std::fs::write(&path, text)?;
    Ok(path.to_str().ok_or("non-UTF-8 temp path")?.to_owned())
}

/// Asserts that `tether server --check-config` succeeded and printed `listen` and `data_dir` as
/// the effective settings; returns all it printed.
fn assert_checked(out: &Output, listen: &str, data_dir: &Path) -> String {
    assert!(out.status.success(), "{out:?}");
    let text = stdout(out);
    assert!(text.contains(&format!("listen: {listen}")), "{text}");
    assert!(
        text.contains(&format!("data_dir: {}", data_dir.display())),
        "{text}"
    );
    text
}
