//! Key files and keys: reading a key file, the HS256 secret's trimming and length, and the
//! checks on PEM public keys (RSA size, P-256 curve). Re-exported by [`super`]; nothing here logs
//! or puts key bytes in an error.

use std::io::Read;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthConfigError;

/// Shortest accepted HS256 secret, in bytes: RFC 7518 §3.2 says a key of at least the hash output
/// size (256 bits for HS256) MUST be used.
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// Smallest accepted RSA modulus, in bits (RFC 7518 §3.3: "A key of size 2048 bits or larger MUST
/// be used").
pub const MIN_RSA_BITS: usize = 2048;

/// Largest key file [`read_key_file`] reads, in bytes.
const MAX_KEY_FILE_LEN: u64 = 1024 * 1024;

/// What is wrong with a key given to [`Authenticator::hs256`](super::Authenticator::hs256) or
/// [`Authenticator::public_key_pem`](super::Authenticator::public_key_pem). Never contains key
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// The HS256 secret is empty (after removing trailing `\n` and `\r` bytes).
    #[error("the secret is empty")]
    EmptySecret,
    /// The HS256 secret is shorter than [`MIN_HS256_SECRET_LEN`] bytes.
    #[error(
        "the secret is {len} bytes; HS256 needs at least {MIN_HS256_SECRET_LEN} (RFC 7518 §3.2); \
         generate one with `openssl rand -hex 32`"
    )]
    SecretTooShort {
        /// The secret's length in bytes.
        len: usize,
    },
    /// The file holds a private key; the sidecar only needs (and should only get) the public key.
    #[error("is a private key; give the public key instead (`openssl pkey -in KEY -pubout`)")]
    PrivateKey,
    /// The file is a PEM certificate, not a bare public key.
    #[error(
        "is a certificate; give its public key instead (`openssl x509 -in CERT -pubkey -noout`)"
    )]
    Certificate,
    /// Not a PEM `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1) holding an RSA or P-256 key.
    #[error("not an RSA or P-256 public key in PEM")]
    NotAPublicKey,
    /// An elliptic-curve key on a curve other than P-256 (only ES256 is supported).
    #[error("EC public key is not on P-256 (only ES256 is supported)")]
    NotP256,
    /// The RSA modulus is smaller than [`MIN_RSA_BITS`].
    #[error("RSA key is {bits} bits; at least {MIN_RSA_BITS} are required (RFC 7518 §3.3)")]
    RsaTooSmall {
        /// The modulus size in bits.
        bits: usize,
    },
    /// The key parses as PEM but its contents are not a usable key of its type.
    #[error("invalid {0} public key")]
    Invalid(&'static str),
}

/// The HS256 key in a key file's bytes: every trailing `\n` and `\r` removed. The operator's
/// `secret_key` (operator/src/reconcile.rs) trims the Secret's value the same way, so both sides
/// sign and verify with the same bytes and check the same length.
pub fn trim_key(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Trims the secret ([`trim_key`]) and checks the length.
pub(super) fn checked_secret(secret: &[u8]) -> Result<&[u8], KeyProblem> {
    let secret = trim_key(secret);
    if secret.is_empty() {
        return Err(KeyProblem::EmptySecret);
    }
    if secret.len() < MIN_HS256_SECRET_LEN {
        return Err(KeyProblem::SecretTooShort { len: secret.len() });
    }
    Ok(secret)
}

pub(super) fn read_key_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    let read_err = |source| AuthConfigError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(AuthConfigError::TooLarge {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// The label of the first PEM block (`-----BEGIN <label>-----`), if any.
fn pem_label(text: &str) -> Option<&str> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

pub(super) fn parse_public_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), KeyProblem> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyProblem::NotAPublicKey)?;
    match pem_label(text) {
        Some("PUBLIC KEY" | "RSA PUBLIC KEY") => {}
        Some("CERTIFICATE" | "TRUSTED CERTIFICATE") => return Err(KeyProblem::Certificate),
        Some(label) if label.contains("PRIVATE KEY") => return Err(KeyProblem::PrivateKey),
        _ => return Err(KeyProblem::NotAPublicKey),
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        check_rsa_key(&key)?;
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        check_p256_key(&key)?;
        return Ok((Algorithm::ES256, key));
    }
    Err(KeyProblem::NotAPublicKey)
}

/// Parses the PKCS#1 `RSAPublicKey` now (the verifier would otherwise only parse it per request)
/// and checks the modulus size.
fn check_rsa_key(key: &DecodingKey) -> Result<(), KeyProblem> {
    let der = key
        .try_get_as_bytes()
        .map_err(|_| KeyProblem::Invalid("RSA"))?;
    let (n, _e) = (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
        .key_utils
        .rsa_pub_components_from_public_key)(der)
    .map_err(|_| KeyProblem::Invalid("RSA"))?;
    let bits = match n.iter().position(|b| *b != 0) {
        Some(i) => (n.len() - i) * 8 - n[i].leading_zeros() as usize,
        None => 0,
    };
    if bits < MIN_RSA_BITS {
        return Err(KeyProblem::RsaTooSmall { bits });
    }
    Ok(())
}

/// Checks that the SEC1 point is a P-256 point (65 bytes uncompressed or 33 compressed, RFC 5480
/// §2.2) on the curve.
fn check_p256_key(key: &DecodingKey) -> Result<(), KeyProblem> {
    let point = key
        .try_get_as_bytes()
        .map_err(|_| KeyProblem::Invalid("EC"))?;
    let p256_sized = matches!(
        (point.len(), point.first()),
        (65, Some(4)) | (33, Some(2 | 3))
    );
    if !p256_sized {
        return Err(KeyProblem::NotP256);
    }
    // Building the ES256 verifier parses the point; a dummy signature then just fails to verify.
    match jsonwebtoken::crypto::verify("AA", b"probe", key, Algorithm::ES256) {
        Ok(_) => Ok(()),
        Err(_) => Err(KeyProblem::Invalid("P-256")),
    }
}
