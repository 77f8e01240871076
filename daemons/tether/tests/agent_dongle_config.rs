//! `tether agent --check-config` with dongle-role files: the shipped example loads, bad files
//! are refused with a message naming the problem, and nothing is started or written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn check(path: &std::path::Path, token: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(["agent", "--check-config", "--config"]).arg(path);
    cmd.env_remove("TETHER_AGENT_TOKEN");
    if let Some(t) = token {
        cmd.env("TETHER_AGENT_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn example_config_loads() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/examples/agent-dongle.yaml"
    );
    let (ok, text) = check(std::path::Path::new(example), Some("tok"));
    assert!(ok, "{text}");
    assert!(text.contains("configuration OK"), "{text}");
    let (ok, text) = check(std::path::Path::new(example), None);
    assert!(!ok);
    assert!(text.contains("TETHER_AGENT_TOKEN is not set"), "{text}");
}

#[test]
fn bad_configs_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let good = "server_url: http://127.0.0.1:8080\ntoken: t\ndata_dir: DATA\ndongle:\n  listen: 127.0.0.1:20100\n";
    let data = dir.path().join("never-created");
    let good = good.replace("DATA", &data.display().to_string());
    let cases = [
        (
            good.replace("127.0.0.1:20100", "localhost"),
            "dongle.listen",
        ),
        (
            good.replace("http://127.0.0.1:8080", "127.0.0.1:8080"),
            "server_url must start with http",
        ),
        (good.replace("token: t\n", ""), "token is required"),
        (
            good.replace("token: t\n", "token: \"\"\n"),
            "token is empty",
        ),
        (good.clone() + "  protocol: slcan\n", "unknown variant"),
        (
            good.clone() + "  batch_max_frames: 100000\n",
            "batch_max_frames",
        ),
        (good.clone() + "  lisen: 1\n", "unknown field"),
        (good.clone() + "  reconnect_max: 0.01\n", "reconnect_min"),
        ("dongle: [\n".to_owned(), "not valid YAML"),
        ("server_url: http://x\n".to_owned(), "no role configured"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let (ok, out) = check(&path, None);
        assert!(!ok, "case {i} should fail:\n{text}");
        assert!(out.contains(want), "case {i}: expected {want:?} in {out}");
        assert!(!out.contains("panicked"), "{out}");
    }
    assert!(!data.exists(), "checking a config creates nothing");
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, &good).unwrap();
    let (ok, out) = check(&path, None);
    assert!(ok, "{out}");
}
