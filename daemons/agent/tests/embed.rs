//! The roles as futures in the caller's runtime: the dongle role runs as a task until its stop
//! future completes, holds its state directory while it runs (a second role on the same
//! directory is refused), and releases it when it returns; `tether_agent::run` runs the roles a
//! configuration switches on.

use std::time::Duration;

use tether_agent::config::parse;
use tether_agent::dongle::config::DongleRole;
use tokio::sync::oneshot;

/// A dongle role on `state`, serving `/healthz` on `metrics` when given.
fn role(state: &std::path::Path, metrics: Option<u16>) -> anyhow::Result<DongleRole> {
    let mut yaml = "server_url: http://127.0.0.1:9\ntoken: ta_test\ndata_dir: ${STATE}\n\
                    dongle:\n  listen: 127.0.0.1:0\n"
        .to_owned();
    if let Some(port) = metrics {
        yaml.push_str(&format!("  metrics_listen: 127.0.0.1:{port}\n"));
    }
    let state = state.display().to_string();
    let env = move |name: &str| (name == "STATE").then(|| state.clone());
    parse(&yaml, &env, &[])?
        .dongle_role()?
        .ok_or_else(|| anyhow::anyhow!("no dongle section"))
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn dongle_role_runs_until_stopped_and_owns_its_state_directory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let port = free_tcp_port()?;
    let running = tokio::spawn(tether_agent::dongle::run(
        role(dir.path(), Some(port))?,
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Started once its metrics listener answers (it binds after taking the directory's lock).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        anyhow::ensure!(
            !running.is_finished(),
            "the role ended before it was stopped"
        );
        let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
        if let Ok(answer) = health
            && answer.text().await? == "ok"
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the role did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While it runs, a second role on the same directory is refused.
    let refused = tether_agent::dongle::run(role(dir.path(), None)?, async {})
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a second role on the same directory started"))?;
    assert!(
        format!("{refused:#}").contains("another tether agent is using"),
        "{refused:#}"
    );
    assert!(!running.is_finished());

    // Stopped: it returns Ok, its state file is there, and the directory is free again.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), running).await???;
    assert!(dir.path().join(tether_agent::dongle::STATE_FILE).exists());
    tether_agent::dongle::run(role(dir.path(), None)?, async {}).await?;
    Ok(())
}

#[tokio::test]
async fn run_starts_the_configured_roles_and_stops_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let yaml = "server_url: http://127.0.0.1:9\ntoken: ta_test\ndata_dir: ${STATE}\n\
                dongle:\n  listen: 127.0.0.1:0\n";
    let state = dir.path().display().to_string();
    let env = move |name: &str| (name == "STATE").then(|| state.clone());
    let config = parse(yaml, &env, &[])?;
    assert_eq!(config.log_level(), "info");
    tether_agent::run(config, async {}).await?;
    assert!(dir.path().join(tether_agent::dongle::STATE_FILE).exists());
    Ok(())
}

/// `protocol: socketcan` on an interface that is not there (and, on the machines this is
/// built on, a kernel without `AF_CAN`): the start fails naming the protocol, the address and
/// the interface, before anything is served.
#[tokio::test]
async fn a_socketcan_role_without_its_interface_fails_to_start_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let yaml = "server_url: http://127.0.0.1:9\ntoken: ta_test\ndata_dir: ${STATE}\n\
                dongle:\n  protocol: socketcan\n  listen: tether-nocan0\n  serial: VEH-1\n";
    let state = dir.path().display().to_string();
    let env = move |name: &str| (name == "STATE").then(|| state.clone());
    let config = parse(yaml, &env, &[])?;
    let err = tokio::time::timeout(Duration::from_secs(20), tether_agent::run(config, async {}))
        .await?
        .err()
        .ok_or_else(|| anyhow::anyhow!("a role on a missing interface started"))?;
    let text = format!("{err:#}");
    assert!(
        text.contains("opening socketcan://tether-nocan0 (dongle.protocol socketcan)")
            && text.contains("cannot open CAN interface \"tether-nocan0\""),
        "{text}"
    );
    Ok(())
}
