//! Signed control-plane commands: public-key ring and JWT verification (no I/O).
//!
//! A command is a JWT signed with an asymmetric key (EdDSA, ES256, ES384, RS256/384/512,
//! PS256/384/512; HMAC is refused) whose audience is this server's id, with `exp`, a unique
//! `command_id` and the `command` name.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{MeteringError, Result};

/// Commands the metering role understands.
pub const KNOWN_COMMANDS: [&str; 3] = ["refresh_public_keys", "health_check", "get_metrics"];

/// Claims of a command token.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CommandClaims {
    /// Unique id; executed ids are remembered 24 h.
    pub command_id: String,
    /// Command name.
    pub command: String,
    /// Expiry (unix seconds), checked.
    pub exp: i64,
    /// Optional parameters.
    #[serde(default)]
    pub params: Value,
}

struct RingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The control plane's public keys, as fetched from `GET /api/v1/servers/{id}/public-keys`.
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn parse_alg(s: &str) -> Result<Algorithm> {
    let alg = match s {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        other => {
            return Err(MeteringError::CommandRefused(format!(
                "algorithm {other} not allowed"
            )));
        }
    };
    Ok(alg)
}

impl KeyRing {
    /// Parse `{"keys": [{"kid", "alg", "public_key_pem"}]}`. Unusable keys are an error.
    pub fn from_response(v: &Value) -> Result<Self> {
        let bad = |reason: String| MeteringError::Decode {
            what: "public keys".into(),
            reason,
        };
        let list = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no keys array".into()))?;
        let mut keys = Vec::new();
        for k in list {
            let alg_s = k
                .get("alg")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("key without alg".into()))?;
            let pem = k
                .get("public_key_pem")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("key without public_key_pem".into()))?;
            let alg = parse_alg(alg_s).map_err(|e| bad(e.to_string()))?;
            let key = match alg {
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
                _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
            }
            .map_err(|e| bad(format!("{alg_s} key: {e}")))?;
            let kid = k.get("kid").and_then(Value::as_str).map(str::to_owned);
            keys.push(RingKey { kid, alg, key });
        }
        Ok(KeyRing { keys })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no keys are loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verify signature, audience (= `server_id`) and expiry.
    pub fn verify(&self, token: &str, server_id: &str) -> Result<CommandClaims> {
        let refuse = |s: String| MeteringError::CommandRefused(s);
        let header = decode_header(token).map_err(|e| refuse(format!("bad token header: {e}")))?;
        let alg_name = format!("{:?}", header.alg);
        parse_alg(&alg_name)?;
        let candidates = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid));
        let mut last = refuse(format!(
            "no public key for alg {alg_name} kid {:?}",
            header.kid
        ));
        for k in candidates {
            let mut v = Validation::new(k.alg);
            v.set_audience(&[server_id]);
            v.set_required_spec_claims(&["exp", "aud"]);
            v.leeway = 5;
            match decode::<CommandClaims>(token, &k.key, &v) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = refuse(format!("token rejected: {e}")),
            }
        }
        Err(last)
    }
}
