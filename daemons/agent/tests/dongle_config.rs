//! The `dongle:` section of the agent file through the public API: `config::parse` validates
//! it with the top-level settings the role needs, `AgentConfig::dongle_role` resolves it.

use tether_agent::config::parse;
use tether_agent::dongle::config::{DongleEdge, DongleProtocol, DongleRole};

const MIN: &str = "server_url: http://127.0.0.1:8080/\ntoken: ${TOK}\ndata_dir: /tmp/x\ndongle:\n  listen: 127.0.0.1:20100\n";

fn env(n: &str) -> Option<String> {
    (n == "TOK").then(|| "secret".to_owned())
}

/// The dongle role of the file `text` (with variables from `env`), which must be valid.
fn dongle_role(text: &str, env: &dyn Fn(&str) -> Option<String>) -> DongleRole {
    parse(text, env, &[])
        .expect("parses")
        .dongle_role()
        .expect("valid")
        .expect("dongle section")
}

#[test]
fn minimal_dongle_config() {
    let cfg = parse(MIN, &env, &[]).expect("parses");
    let role = cfg.dongle_role().expect("valid").expect("dongle section");
    assert_eq!(role.token, "secret");
    assert_eq!(role.servers.as_slice().len(), 1);
    assert_eq!(
        role.servers.first().ws("/ws/data"),
        "ws://127.0.0.1:8080/ws/data"
    );
    assert_eq!(role.servers.first().base, "http://127.0.0.1:8080");
    assert_eq!(role.protocol(), DongleProtocol::Remp);
    assert!(cfg.metering.is_none());
}

#[test]
fn server_url_is_one_url_a_list_or_comma_separated() {
    let list = MIN.replace(
        "server_url: http://127.0.0.1:8080/",
        "server_url:\n  - http://127.0.0.1:8080/\n  - https://b.example:8443",
    );
    let role = dongle_role(&list, &env);
    let bases: Vec<&str> = role.servers.as_slice().iter().map(|u| &*u.base).collect();
    assert_eq!(bases, ["http://127.0.0.1:8080", "https://b.example:8443"]);
    assert_eq!(
        role.servers.as_slice()[1].ws("/ws/data"),
        "wss://b.example:8443/ws/data"
    );
    // From the environment, the list is one comma-separated string.
    let from_env = MIN.replace(
        "server_url: http://127.0.0.1:8080/",
        "server_url: ${TETHER_SERVERS}",
    );
    let env_list = |n: &str| match n {
        "TETHER_SERVERS" => Some("http://127.0.0.1:8080, https://b.example:8443/".to_owned()),
        other => env(other),
    };
    let over = dongle_role(&from_env, &env_list);
    assert_eq!(over.servers, role.servers);
    // The telemetry role uplinks to the same servers, in the same order.
    let telemetry = list.replace(
        "dongle:\n  listen: 127.0.0.1:20100\n",
        "telemetry:\n  enable_can_listener: false\n",
    );
    let t = parse(&telemetry, &env, &[])
        .expect("parses")
        .telemetry_role()
        .expect("valid")
        .expect("telemetry section");
    assert_eq!(
        t.remote_endpoints(),
        [
            "ws://127.0.0.1:8080/ws/telemetry/upload",
            "wss://b.example:8443/ws/telemetry/upload"
        ]
    );
    for (bad, why) in [
        ("server_url: []", "lists no server"),
        ("server_url: [http://a:1, http://a:1/]", "listed twice"),
        ("server_url: 'http://a:1,,http://b:2'", "entry 2 is empty"),
        ("server_url: {a: 1}", "server_url"),
    ] {
        let text = MIN.replace("server_url: http://127.0.0.1:8080/", bad);
        let err = parse(&text, &env, &[]).expect_err(bad);
        assert!(format!("{err:#}").contains(why), "{bad}: {err:#}");
    }
}

#[test]
fn bad_dongle_configs_are_refused() {
    for (bad, why) in [
        (MIN.replace("127.0.0.1:20100", "nowhere"), "dongle.listen"),
        (MIN.replace("http://", "ftp://"), "server_url must start"),
        (MIN.replace("token: ${TOK}\n", ""), "token is required"),
        (
            MIN.replace("data_dir: /tmp/x\n", ""),
            "data_dir is required",
        ),
        (
            MIN.to_owned() + "  protocol: canbus\n",
            "<config>:6: dongle.protocol: unknown variant `canbus`",
        ),
        (
            MIN.to_owned() + "  outbox_max_frames: 0\n",
            "outbox_max_frames",
        ),
        (
            MIN.to_owned() + "  listne: 1\n",
            "<config>:6: dongle.listne: unknown field `listne`",
        ),
        (MIN.to_owned() + "  reconnect_min: -1\n", "reconnect_min"),
    ] {
        let err = parse(&bad, &env, &[]).expect_err(why);
        assert!(format!("{err:#}").contains(why), "{why}: {err:#}");
    }
    let err = parse(MIN, &|_| None, &[]).expect_err("unset");
    assert!(format!("{err:#}").contains("TOK is not set"), "{err:#}");
}

/// `MIN` with `lines` in its `dongle:` section, resolved.
fn edge(lines: &str) -> anyhow::Result<DongleEdge> {
    Ok(parse(&format!("{MIN}{lines}"), &env, &[])?
        .dongle_role()?
        .ok_or_else(|| anyhow::anyhow!("no dongle section"))?
        .edge)
}

#[test]
fn socketcan_names_an_interface_and_the_one_dongle_serial() {
    for listen in ["can0", "socketcan://can0", "'socketcan://can0/'"] {
        let text =
            MIN.replace("127.0.0.1:20100", listen) + "  protocol: socketcan\n  serial: VEH-42\n";
        let role = dongle_role(&text, &env);
        assert_eq!(role.protocol(), DongleProtocol::Socketcan);
        match role.edge {
            DongleEdge::SocketCan { interface, serial } => {
                assert_eq!((interface.as_str(), serial.as_str()), ("can0", "VEH-42"));
            }
            other => panic!("{listen}: {other:?}"),
        }
    }
    for (listen, why) in [
        ("much-too-long-name0", "socketcan://IFACE expected"),
        ("'can 0'", "socketcan://IFACE expected"),
        ("cannelloni://127.0.0.1:20000", "must name a CAN interface"),
    ] {
        let text = MIN.replace("127.0.0.1:20100", listen) + "  protocol: socketcan\n  serial: V\n";
        let err = parse(&text, &env, &[]).expect_err(listen);
        let text = format!("{err:#}");
        assert!(
            text.contains("dongle.listen") && text.contains(why),
            "{listen}: {text}"
        );
    }
}

#[test]
fn cannelloni_listens_on_udp_and_answers_the_peer() {
    match edge("  protocol: cannelloni\n  serial: VEH-43\n").expect("valid") {
        DongleEdge::Cannelloni {
            listen,
            peer,
            serial,
        } => {
            assert_eq!(listen.to_string(), "127.0.0.1:20100");
            assert_eq!(peer, None);
            assert_eq!(serial, "VEH-43");
        }
        other => panic!("{other:?}"),
    }
    match edge("  protocol: cannelloni\n  serial: VEH-43\n  peer: 192.0.2.10:20000\n") {
        Ok(DongleEdge::Cannelloni { peer, .. }) => {
            assert_eq!(
                peer.map(|p| p.to_string()).as_deref(),
                Some("192.0.2.10:20000")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_protocol_refuses_the_settings_of_the_others() {
    let key = "ab".repeat(16);
    for (lines, why) in [
        (
            "  protocol: cannelloni\n",
            "dongle.serial is required by protocol cannelloni",
        ),
        (
            "  protocol: socketcan\n",
            "dongle.serial is required by protocol socketcan",
        ),
        (
            "  protocol: cannelloni\n  serial: 'two words'\n",
            "printable ASCII without spaces",
        ),
        ("  serial: VEH-1\n", "REMP dongles name themselves"),
        (
            "  peer: 127.0.0.1:1\n",
            "dongle.peer is a setting of protocol cannelloni, not remp",
        ),
        (
            "  protocol: socketcan\n  serial: V\n  peer: 127.0.0.1:1\n",
            "not socketcan",
        ),
        (
            "  protocol: cannelloni\n  serial: V\n  require_auth: true\n",
            "protocol cannelloni has no authentication",
        ),
        (
            &format!("  protocol: socketcan\n  serial: V\n  keys:\n    V: {key}\n"),
            "protocol socketcan has no authentication",
        ),
        (
            "  protocol: cannelloni\n  serial: V\n  peer: somewhere\n",
            "dongle.peer must be an IP:PORT address",
        ),
    ] {
        let err = edge(lines).expect_err(why);
        assert!(format!("{err:#}").contains(why), "{lines}: {err:#}");
    }
    let socketcan_listen = MIN.replace("127.0.0.1:20100", "can0");
    let err = parse(&socketcan_listen, &env, &[]).expect_err("remp needs IP:PORT");
    assert!(
        format!("{err:#}").contains("dongle.listen must be an IP:PORT address (protocol remp)"),
        "{err:#}"
    );
}

#[test]
fn a_shared_diagnostics_bus_needs_a_remp_dongle_role() {
    let text = format!(
        "{MIN}  protocol: cannelloni\n  serial: VEH-1\ndiagnostics:\n  buses:\n    - dongle: VEH-1\n"
    );
    let err = parse(&text, &env, &[]).expect_err("shared bus on cannelloni");
    let text = format!("{err:#}");
    assert!(
        text.contains("`dongle: SERIAL`") && text.contains("dongle.protocol is cannelloni"),
        "{text}"
    );
    assert!(
        parse(
            &format!("{MIN}diagnostics:\n  buses:\n    - dongle: VEH-1\n"),
            &env,
            &[]
        )
        .is_ok(),
        "the same bus on a REMP dongle role"
    );
}
