//! The key that signs an agent's API tokens, and what its pod gets of it.
//!
//! A generated key is an ES256 key pair (ECDSA P-256 with SHA-256, RFC 7518 §3.4), kept in the
//! Secret `<agent>-jwt` as two PEM texts: [`GENERATED_JWT_KEY`] (`jwt.key`, the private key as
//! PKCS#8, RFC 5208) and [`GENERATED_JWT_PUBLIC_KEY`] (`jwt.pub`, the public key as SPKI,
//! RFC 5480). The pod mounts only `jwt.pub` and its sidecar runs with `--jwt-public-key-file`, so a
//! key file read inside the pod (by a command the model runs, say) cannot mint tokens; clients and
//! the operator sign with `jwt.key` from the Secret. Tokens checked with a public key must carry
//! an audience: `spec.sidecar.jwtAudience`, or [`DEFAULT_AUDIENCE`].
//!
//! A generated Secret from before ES256 holds only an HS256 `jwt.key` (64 hex characters): it
//! keeps working as it is (the pod mounts it, the sidecar runs with `--jwt-secret-file`) until
//! someone deletes the Secret, after which the operator generates a key pair and replaces the
//! pod. A user's `auth.jwtSecretRef` is an HS256 secret, as before.

use std::fmt;

use jsonwebtoken::{Algorithm, EncodingKey};

pub use crate::crd::GENERATED_JWT_KEY;

/// Data key of the public key in the generated JWT Secret (SPKI PEM).
pub const GENERATED_JWT_PUBLIC_KEY: &str = "jwt.pub";

/// The `aud` the sidecar of an agent with a generated key pair requires when the spec sets no
/// `sidecar.jwtAudience` (a sidecar checking a public key always requires one).
pub const DEFAULT_AUDIENCE: &str = "codex-sidecar";

/// What signs an agent's tokens. `Debug` never shows key bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum SigningKey {
    /// An HS256 shared secret (`auth.jwtSecretRef`, or a generated Secret from before ES256),
    /// trailing newlines removed as the sidecar reads it.
    Hs256(Vec<u8>),
    /// The PKCS#8 PEM of a P-256 private key (the generated `jwt.key`).
    Es256(Vec<u8>),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hs256(_) => f.write_str("SigningKey::Hs256([redacted])"),
            Self::Es256(_) => f.write_str("SigningKey::Es256([redacted])"),
        }
    }
}

impl SigningKey {
    /// The JWS `alg` of tokens this key signs.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hs256(_) => Algorithm::HS256,
            Self::Es256(_) => Algorithm::ES256,
        }
    }

    /// The key for `jsonwebtoken::encode`.
    ///
    /// # Errors
    /// An ES256 key that is not a P-256 private key in PEM.
    pub fn encoding_key(&self) -> Result<EncodingKey, jsonwebtoken::errors::Error> {
        match self {
            Self::Hs256(k) => Ok(EncodingKey::from_secret(k)),
            Self::Es256(pem) => EncodingKey::from_ec_pem(pem),
        }
    }

    /// How the pod verifies tokens of this key.
    pub fn pod_key(&self) -> PodKey {
        match self {
            Self::Hs256(_) => PodKey::SharedSecret,
            Self::Es256(_) => PodKey::PublicKey,
        }
    }
}

/// What the pod's sidecar gets of the key (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodKey {
    /// The public key [`GENERATED_JWT_PUBLIC_KEY`], checked with `--jwt-public-key-file` and an
    /// audience. What a generated key is.
    #[default]
    PublicKey,
    /// The HS256 secret itself (`--jwt-secret-file`).
    SharedSecret,
}

/// A freshly generated ES256 key pair, both halves PEM.
pub struct KeyPair {
    /// PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub private_pem: String,
    /// SPKI (`-----BEGIN PUBLIC KEY-----`).
    pub public_pem: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("private_pem", &"[redacted]")
            .field("public_pem", &self.public_pem)
            .finish()
    }
}

/// Generating a key pair failed (the OS random source, in practice).
#[derive(Debug, thiserror::Error)]
#[error("generating the ES256 API key pair: {0}")]
pub struct GenerateError(#[from] rcgen::Error);

/// A new P-256 key pair from the OS random source.
///
/// # Errors
/// [`GenerateError`] when the random source fails.
pub fn generate_es256() -> Result<KeyPair, GenerateError> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok(KeyPair {
        private_pem: pair.serialize_pem(),
        public_pem: pair.public_key_pem(),
    })
}

/// The signing key of a generated Secret's data: ES256 when it holds both `jwt.key` and
/// `jwt.pub`, HS256 (a Secret from before ES256) when it holds only `jwt.key`, `None` when it
/// holds no `jwt.key`. `get` looks a data key up.
pub fn from_generated(get: impl Fn(&str) -> Option<Vec<u8>>) -> Option<SigningKey> {
    let private = get(GENERATED_JWT_KEY)?;
    Some(match get(GENERATED_JWT_PUBLIC_KEY) {
        Some(_) => SigningKey::Es256(private),
        None => SigningKey::Hs256(crate::reconcile::trim_key(private)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_signs_tokens_the_sidecar_accepts_with_the_public_half_only() {
        let pair = generate_es256().expect("pair");
        assert!(pair.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(!format!("{pair:?}").contains(&pair.private_pem[30..60]));
        let key = SigningKey::Es256(pair.private_pem.clone().into_bytes());
        assert_eq!(key.algorithm(), Algorithm::ES256);
        assert_eq!(format!("{key:?}"), "SigningKey::Es256([redacted])");
        let claims = serde_json::json!({"sub": "alice", "aud": DEFAULT_AUDIENCE,
            "exp": jsonwebtoken::get_current_timestamp() + 60});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(key.algorithm()),
            &claims,
            &key.encoding_key().expect("encoding key"),
        )
        .expect("sign");
        let auth = codex_sidecar::auth::Authenticator::public_key_pem(
            pair.public_pem.as_bytes(),
            Some(DEFAULT_AUDIENCE.into()),
        )
        .expect("the sidecar takes the public key");
        let subject = auth
            .verify(Some(&format!("Bearer {token}")))
            .expect("accepted")
            .subject;
        assert_eq!(subject, "alice");
        // The sidecar refuses the private half as its key: the pod must get the public one.
        assert!(
            codex_sidecar::auth::Authenticator::public_key_pem(
                pair.private_pem.as_bytes(),
                Some(DEFAULT_AUDIENCE.into())
            )
            .is_err()
        );
        // Two pairs differ.
        assert_ne!(generate_es256().expect("pair").public_pem, pair.public_pem);
    }

    #[test]
    fn a_generated_secret_is_es256_with_both_halves_and_hs256_before() {
        let both = |k: &str| match k {
            "jwt.key" => Some(b"PRIVATE".to_vec()),
            "jwt.pub" => Some(b"PUBLIC".to_vec()),
            _ => None,
        };
        assert_eq!(
            from_generated(both),
            Some(SigningKey::Es256(b"PRIVATE".to_vec()))
        );
        let legacy = |k: &str| (k == "jwt.key").then(|| b"0123abcd\n".to_vec());
        let key = from_generated(legacy).expect("legacy");
        assert_eq!(key, SigningKey::Hs256(b"0123abcd".to_vec()));
        assert_eq!(key.pod_key(), PodKey::SharedSecret);
        assert_eq!(from_generated(|_| None), None);
    }
}
