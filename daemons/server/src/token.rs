//! API tokens: random secrets shown once, stored only as SHA-256 hashes.
//!
//! A token is `<prefix><64 hex digits>` (32 random bytes). Its first 16 hex digits after the
//! prefix are the *lookup key*: stored in clear (indexed, and shown by `token list`) so a
//! request finds its row without scanning. The whole token is hashed with SHA-256 and the stored
//! hash is compared with [`subtle`] in constant time, so neither the lookup nor the comparison
//! leaks how much of a guessed secret was right.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Number of random bytes in a token.
const SECRET_BYTES: usize = 32;
/// Hex digits of the secret used as the lookup key.
const LOOKUP_LEN: usize = 16;

/// Who a token authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A user's API token (`tu_…`), for the REST API and consoles.
    User,
    /// An agent's token (`ta_…`), for the agent endpoints and `/ws/data`.
    Agent,
}

impl TokenKind {
    /// The text every token of this kind starts with.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::User => "tu_",
            TokenKind::Agent => "ta_",
        }
    }
}

/// A freshly generated token: the secret to hand out once, and what the store keeps.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The full token. Shown to its owner once, never stored.
    pub secret: String,
    /// The lookup key stored in clear.
    pub lookup: String,
    /// SHA-256 of the full token.
    pub hash: [u8; 32],
}

/// Generates a new random token of `kind`.
pub fn issue(kind: TokenKind) -> IssuedToken {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{}{}", kind.prefix(), hex::encode(bytes));
    let lookup = secret[kind.prefix().len()..kind.prefix().len() + LOOKUP_LEN].to_owned();
    let hash = hash(&secret);
    IssuedToken {
        secret,
        lookup,
        hash,
    }
}

/// SHA-256 of a presented token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Splits a presented token into its lookup key, or `None` when it cannot be a token of `kind`
/// (wrong prefix, length or characters) — such tokens are refused without touching the store.
pub fn lookup_key(kind: TokenKind, token: &str) -> Option<&str> {
    let rest = token.strip_prefix(kind.prefix())?;
    if rest.len() != SECRET_BYTES * 2 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    rest.get(..LOOKUP_LEN)
}

/// Constant-time comparison of a presented token with a stored hash.
pub fn matches(token: &str, stored_hash: &[u8]) -> bool {
    let presented = hash(token);
    presented.as_slice().ct_eq(stored_hash).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_differ() {
        let a = issue(TokenKind::User);
        let b = issue(TokenKind::User);
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with("tu_"));
        assert_eq!(a.secret.len(), 3 + 64);
        assert_eq!(
            lookup_key(TokenKind::User, &a.secret),
            Some(a.lookup.as_str())
        );
        assert!(matches(&a.secret, &a.hash));
        assert!(!matches(&b.secret, &a.hash));
    }

    #[test]
    fn malformed_tokens_have_no_lookup_key() {
        let agent = issue(TokenKind::Agent);
        assert_eq!(lookup_key(TokenKind::User, &agent.secret), None);
        assert_eq!(lookup_key(TokenKind::Agent, "ta_short"), None);
        let non_hex = format!("ta_{}", "z".repeat(64));
        assert_eq!(lookup_key(TokenKind::Agent, &non_hex), None);
        // Multi-byte characters must not make slicing panic.
        let wide = format!("ta_{}", "é".repeat(32));
        assert_eq!(lookup_key(TokenKind::Agent, &wide), None);
    }

    #[test]
    fn hash_length_mismatch_never_matches() {
        let t = issue(TokenKind::Agent);
        assert!(!matches(&t.secret, &t.hash[..16]));
    }
}
