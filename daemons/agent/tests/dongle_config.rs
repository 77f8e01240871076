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
    assert_eq!(role.ws_url, "ws://127.0.0.1:8080/ws/data");
    assert_eq!(role.server_url, "http://127.0.0.1:8080");
    assert_eq!(role.protocol, DongleProtocol::Remp);
    assert!(cfg.metering.is_none());
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
