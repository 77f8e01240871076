//! The `dongle:` section of the agent file through the public API: `config::parse` validates
//! it with the top-level settings the role needs, `AgentConfig::dongle_role` resolves it.

use tether_agent::config::parse;
use tether_agent::dongle::config::DongleProtocol;

const MIN: &str = "server_url: http://127.0.0.1:8080/\ntoken: ${TOK}\ndata_dir: /tmp/x\ndongle:\n  listen: 127.0.0.1:20100\n";

fn env(n: &str) -> Option<String> {
    (n == "TOK").then(|| "secret".to_owned())
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
    assert_eq!(role.protocol, DongleProtocol::Remp);
    assert!(cfg.metering.is_none());
}

#[test]
fn server_url_is_one_url_a_list_or_comma_separated() {
    let list = MIN.replace(
        "server_url: http://127.0.0.1:8080/",
        "server_url:\n  - http://127.0.0.1:8080/\n  - https://b.example:8443",
    );
    let role = parse(&list, &env, &[])
        .expect("parses")
        .dongle_role()
        .expect("valid")
        .expect("dongle section");
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
    let over = parse(&from_env, &env_list, &[])
        .expect("parses")
        .dongle_role()
        .expect("valid")
        .expect("dongle section");
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
