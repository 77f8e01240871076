//! The shipped example config loads; `--check-config` reports unset variables by name and bad
//! values; environment overrides apply.

use std::process::Command;

fn check(extra_env: &[(&str, &str)], unset: &[&str]) -> std::process::Output {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/examples/metering.yaml"
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    c.args(["agent", "--config", example, "--check-config"]);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    for k in unset {
        c.env_remove(k);
    }
    c.output().expect("run tether")
}

#[test]
fn example_config_passes_check_config() {
    let out = check(
        &[
            ("TETHER_SERVER_ID", "speech-eu-1"),
            ("TETHER_CONTROL_PLANE_API_KEY", "k"),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

#[test]
fn unset_variable_is_named() {
    let out = check(
        &[("TETHER_SERVER_ID", "speech-eu-1")],
        &["TETHER_CONTROL_PLANE_API_KEY"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TETHER_CONTROL_PLANE_API_KEY is not set"),
        "{err}"
    );
}

#[test]
fn environment_overrides_are_validated_too() {
    let out = check(
        &[
            ("TETHER_SERVER_ID", "speech-eu-1"),
            ("TETHER_CONTROL_PLANE_API_KEY", "k"),
            (
                "TETHER_METERING__CONTROL_PLANE__BASE_URL",
                "http://control.example.com",
            ),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only allowed to loopback"));
    let out = check(
        &[
            ("TETHER_SERVER_ID", "speech-eu-1"),
            ("TETHER_CONTROL_PLANE_API_KEY", "k"),
            ("TETHER_METERING__QUEUES__BATCH_SIZE", "0"),
        ],
        &[],
    );
    assert!(!out.status.success());
}
