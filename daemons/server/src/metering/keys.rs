//! The control plane's command-signing keys: Ed25519, generated here, kept in `metering.db`;
//! commands are JWTs (`alg` EdDSA, `kid`) that the agent's `metering-core::commands::KeyRing`
//! verifies with the public keys of `GET /api/v1/servers/{id}/public-keys`.
//!
//! Rotation adds a new key; the newest is the current (signs), the one before it is the
//! previous (still served, so commands signed before a rotation stay verifiable until they
//! expire). Older keys are no longer served.

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde_json::{Value, json};

use super::store::{MeteringStore, SigningKeyRow};
use crate::error::ServerError;

/// A fresh key with id `ed25519-<date>-<random>`.
pub fn generate(now: DateTime<Utc>) -> Result<SigningKeyRow, ServerError> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let der = key
        .to_pkcs8_der()
        .map_err(ServerError::task_failed("signing key"))?
        .as_bytes()
        .to_vec();
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(ServerError::task_failed("signing key"))?;
    let mut tag = [0u8; 4];
    rand::rng().fill_bytes(&mut tag);
    Ok(SigningKeyRow {
        kid: format!(
            "ed25519-{}-{}",
            now.format("%Y%m%d%H%M%S"),
            hex::encode(tag)
        ),
        private_der: der,
        public_pem: pem,
    })
}

/// Adds a new current key. Returns its id.
pub fn rotate(store: &MeteringStore, now: DateTime<Utc>) -> Result<String, ServerError> {
    let key = generate(now)?;
    store.add_signing_key(&key, now)?;
    Ok(key.kid)
}

/// The current key, generating the first one when there is none.
pub fn current(store: &MeteringStore, now: DateTime<Utc>) -> Result<SigningKeyRow, ServerError> {
    if let Some(k) = store.signing_keys()?.into_iter().next() {
        return Ok(k);
    }
    rotate(store, now)?;
    store
        .signing_keys()?
        .into_iter()
        .next()
        .ok_or(ServerError::TaskFailed {
            task: "signing key",
            detail: "no key after generating one".into(),
        })
}

/// `{"keys": [{"kid", "alg": "EdDSA", "public_key_pem"}]}`: current first, then previous.
pub fn public_keys(store: &MeteringStore, now: DateTime<Utc>) -> Result<Value, ServerError> {
    current(store, now)?;
    let keys: Vec<Value> = store
        .signing_keys()?
        .into_iter()
        .map(|k| json!({"kid": k.kid, "alg": "EdDSA", "public_key_pem": k.public_pem}))
        .collect();
    Ok(json!({ "keys": keys }))
}

/// Signs a command for `server_id` (audience) with the current key.
pub fn sign_command(
    key: &SigningKeyRow,
    server_id: &str,
    command_id: &str,
    command: &str,
    params: &Value,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<String, ServerError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    let claims = json!({
        "command_id": command_id,
        "command": command,
        "aud": server_id,
        "iat": now.timestamp(),
        "exp": expires_at.timestamp(),
        "params": params,
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ed_der(&key.private_der),
    )
    .map_err(ServerError::task_failed("signing a command"))
}
