//! Bearer-token authentication of the `/v1/*` API.
//!
//! Every request carries `Authorization: Bearer <JWT>` (RFC 6750 §2.1). The token is a JWS in
//! compact serialization (RFC 7515 §3.1) whose payload is a JWT claims set (RFC 7519):
//!
//! * the signature is checked with the configured key, and the header's `alg` (RFC 7515 §4.1.1)
//!   must be exactly the algorithm of that key: `HS256` for a shared secret, `RS256` for an RSA
//!   public key, `ES256` for a P-256 public key (RFC 7518 §3.1). `none` and any other algorithm are
//!   refused, so an attacker cannot downgrade to an unsigned token nor sign an `HS256` token with
//!   the (public) RSA key's bytes as the HMAC secret;
//! * `exp` (RFC 7519 §4.1.4) is required and checked with [`LEEWAY_SECS`] of clock-skew leeway;
//!   `nbf` (§4.1.5) is checked when present;
//! * `aud` (§4.1.3) is required and must contain the configured audience when one is configured,
//!   and is not looked at otherwise;
//! * `sub` (§4.1.2) is required: it is the [`Principal`] that owns sessions;
//! * with [`TokenRules`] (`--jwt-issuer`, `--jwt-max-ttl`): `iss` (§4.1.1) must equal the
//!   configured issuer, and a token may not live longer than the configured maximum (`exp - iat`
//!   when `iat` is present, and `exp - now` beyond [`LEEWAY_SECS`]).
//!
//! A public key (`--jwt-public-key-file`) is accepted only together with an audience
//! (`--jwt-audience`): a key pair's public half is typically shared by many verifiers, and the
//! audience keeps a token minted for one of them from being replayed against another.
//!
//! An HS256 key file is read as its bytes with every trailing `\n` and `\r` removed, exactly as
//! the operator reads the same key from the agent's Secret (so both sides agree on the key and on
//! its length, which must be at least [`MIN_HS256_SECRET_LEN`] bytes).
//!
//! The key in use can be replaced while the sidecar runs: [`reload::KeyRing`] re-reads the key
//! file when it changes and keeps the previous key valid for an overlap.
//!
//! Secrets never leave this module: neither [`AuthError`] nor [`AuthConfigError`] (nor the
//! `Debug` of [`Authenticator`]) contains key bytes or token text, and this module logs nothing
//! except [`reload::spawn_watcher`], which logs the key file's path and what is wrong with it.

mod keys;
pub mod reload;
mod rules;

pub use keys::{KeyProblem, MIN_HS256_SECRET_LEN, MIN_RSA_BITS, trim_key};
use keys::{checked_secret, parse_public_key, read_key_file};
pub use rules::TokenRules;
use rules::{check_lifetime, require_audience};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock-skew leeway, in seconds, applied to `exp` and `nbf` (RFC 7519 §4.1.4 allows "some small
/// leeway").
pub const LEEWAY_SECS: u64 = 30;

/// Longest accepted token, in bytes. Longer values are refused before any decoding work.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest accepted `sub` claim, in bytes.
pub const MAX_SUBJECT_LEN: usize = 1024;

/// The subject of every request when authentication is disabled (`--insecure-no-auth`).
pub const ANONYMOUS_SUBJECT: &str = "anonymous";

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The token's `sub` claim (RFC 7519 §4.1.2), verbatim: non-empty, at most
    /// [`MAX_SUBJECT_LEN`] bytes, no control characters. [`ANONYMOUS_SUBJECT`] when authentication
    /// is disabled. Sessions are owned by this string.
    pub subject: String,
}

/// Why a request's credentials were refused. Every variant means HTTP 401 (RFC 6750 §3.1); the
/// `Display` text is safe to return to the client and to log (it never contains the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing Authorization header (expected `Authorization: Bearer <JWT>`)")]
    MissingToken,
    /// The header is not `Bearer <token>` (scheme case-insensitive, one space).
    #[error("malformed Authorization header (expected `Bearer <JWT>`)")]
    MalformedHeader,
    /// The token is not a well-formed JWS compact serialization carrying a JSON claims set
    /// (RFC 7515 §7.1, RFC 7519 §7.2); the text says which part is wrong.
    #[error("malformed token: {0}")]
    MalformedToken(&'static str),
    /// `exp` (RFC 7519 §4.1.4) is in the past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` (RFC 7519 §4.1.5) is in the future, beyond the leeway.
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    /// The signature does not verify with the configured key.
    #[error("invalid token signature")]
    BadSignature,
    /// An audience is configured and the token's `aud` (RFC 7519 §4.1.3) does not contain it.
    #[error("token audience does not match")]
    WrongAudience,
    /// The header's `alg` (RFC 7515 §4.1.1) is not the one algorithm this server accepts
    /// (includes `none`, RFC 7518 §3.6).
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// A required claim is absent (or not of its RFC 7519 type): `exp`, `sub`, or `aud` when an
    /// audience is configured.
    #[error("token lacks the required claim `{0}`")]
    MissingClaim(&'static str),
    /// A claim is present but unacceptable (e.g. empty `sub`, non-numeric `exp`).
    #[error("token claim `{0}` is invalid")]
    InvalidClaim(&'static str),
    /// An issuer is configured (`--jwt-issuer`) and the token's `iss` (RFC 7519 §4.1.1) differs.
    #[error("token issuer does not match")]
    WrongIssuer,
    /// A maximum lifetime is configured (`--jwt-max-ttl`) and the token's `exp - iat`, or its
    /// `exp - now` beyond the leeway, exceeds it.
    #[error("token lifetime exceeds the maximum of {max_secs} seconds")]
    LifetimeTooLong {
        /// The configured maximum, seconds.
        max_secs: u64,
    },
}

impl AuthError {
    /// A stable snake_case code for API error bodies and metrics: `missing_token`,
    /// `invalid_authorization_header`, `invalid_token`, `token_expired`, `token_not_yet_valid`,
    /// `invalid_signature`, `invalid_audience`, `algorithm_not_allowed`, `missing_claim`,
    /// `invalid_claim`, `invalid_issuer`, `token_lifetime_too_long`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MalformedHeader => "invalid_authorization_header",
            Self::MalformedToken(_) => "invalid_token",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::BadSignature => "invalid_signature",
            Self::WrongAudience => "invalid_audience",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::WrongIssuer => "invalid_issuer",
            Self::LifetimeTooLong { .. } => "token_lifetime_too_long",
        }
    }

    /// The `WWW-Authenticate` header value for the 401 response (RFC 6750 §3): no error code when
    /// the request had no credentials (§3.1), `error="invalid_token"` otherwise (malformed
    /// headers included, since they carry an attempted credential).
    pub fn www_authenticate(&self) -> &'static str {
        match self {
            Self::MissingToken => "Bearer realm=\"codex-sidecar\"",
            _ => "Bearer realm=\"codex-sidecar\", error=\"invalid_token\"",
        }
    }
}

/// Why the authenticator could not be configured. Names the flag (and file) at fault, never the
/// key bytes.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A key file could not be read.
    #[error("{flag} {}: cannot read: {source}", path.display())]
    Read {
        /// The flag that named the file (`--jwt-secret-file` or `--jwt-public-key-file`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key file is larger than any key (1 MiB).
    #[error("{flag} {}: file too large for a key", path.display())]
    TooLarge {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A key file's contents are not an acceptable key.
    #[error("{flag} {}: {problem}", path.display())]
    KeyFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with the key.
        problem: KeyProblem,
    },
    /// A key given directly (not from a file) is not acceptable.
    #[error("JWT key: {0}")]
    Key(#[from] KeyProblem),
    /// Neither a secret nor a public key was given, and authentication is not disabled.
    #[error(
        "no API authentication configured: give --jwt-secret-file or --jwt-public-key-file \
         (or --insecure-no-auth)"
    )]
    NoKey,
    /// Both a secret and a public key were given.
    #[error("--jwt-secret-file and --jwt-public-key-file cannot both be given")]
    BothKeys,
    /// `--insecure-no-auth` was combined with a key file: ambiguous, so refused.
    #[error("--insecure-no-auth cannot be combined with {0}")]
    InsecureWithKey(&'static str),
    /// The configured audience is empty.
    #[error("--jwt-audience must not be empty")]
    EmptyAudience,
    /// A public key was given without an audience (see the module docs).
    #[error(
        "--jwt-public-key-file needs --jwt-audience: tokens checked with a public key must name \
         this sidecar in `aud`"
    )]
    PublicKeyWithoutAudience,
    /// The configured issuer is empty.
    #[error("--jwt-issuer must not be empty")]
    EmptyIssuer,
    /// The configured maximum token lifetime is zero.
    #[error("--jwt-max-ttl must be at least 1 second")]
    ZeroMaxTtl,
    /// [`mint_hs256`] was asked for a token with an empty subject.
    #[error("token subject must not be empty")]
    EmptySubject,
    /// [`mint_hs256`] failed to sign.
    #[error("cannot sign token")]
    Signing,
}

const SECRET_FLAG: &str = "--jwt-secret-file";
const PUBLIC_KEY_FLAG: &str = "--jwt-public-key-file";

/// Verifies the bearer tokens of API requests. Built once at start-up and shared (it is
/// `Send + Sync` and cheap to [`Clone`]).
#[derive(Clone)]
pub struct Authenticator {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Disabled,
    Jwt {
        alg: Algorithm,
        key: DecodingKey,
        validation: Box<Validation>,
        /// `--jwt-max-ttl`, seconds.
        max_ttl: Option<u64>,
    },
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Disabled => f.write_str("Authenticator(disabled)"),
            Mode::Jwt {
                alg, validation, ..
            } => f
                .debug_struct("Authenticator")
                .field("alg", alg)
                .field("audience", &validation.aud)
                .field("key", &"[redacted]")
                .finish(),
        }
    }
}

/// The claims this module reads itself; `exp`/`nbf`/`aud`/`iss` are checked by `jsonwebtoken`
/// (`exp` and `iat` are read again here for the maximum lifetime).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<serde_json::Value>,
}

impl Authenticator {
    /// HS256 (HMAC with SHA-256, RFC 7518 §3.2) with a shared secret.
    ///
    /// `secret` is a key file's bytes: every trailing `\n` and `\r` is removed (as the operator
    /// does), and what remains must be at least [`MIN_HS256_SECRET_LEN`] bytes. `audience`: see
    /// [`Self::public_key_pem`].
    ///
    /// # Errors
    /// [`AuthConfigError::Key`] with [`KeyProblem::EmptySecret`] or
    /// [`KeyProblem::SecretTooShort`]; [`AuthConfigError::EmptyAudience`].
    pub fn hs256(secret: &[u8], audience: Option<String>) -> Result<Self, AuthConfigError> {
        let secret = checked_secret(secret)?;
        Self::jwt(Algorithm::HS256, DecodingKey::from_secret(secret), audience)
    }

    /// RS256 (RSASSA-PKCS1-v1_5 with SHA-256, RFC 7518 §3.3) or ES256 (ECDSA P-256 with SHA-256,
    /// RFC 7518 §3.4), chosen by the key found in `pem`: an RSA public key as `PUBLIC KEY` (SPKI,
    /// RFC 5280) or `RSA PUBLIC KEY` (PKCS#1, RFC 8017), at least [`MIN_RSA_BITS`] bits; or a P-256
    /// public key as `PUBLIC KEY` (SPKI, RFC 5480). Private keys and certificates are refused.
    ///
    /// `audience`: when `Some`, tokens must carry an `aud` claim containing it (RFC 7519 §4.1.3);
    /// when `None`, `aud` is ignored.
    ///
    /// # Errors
    /// [`AuthConfigError::Key`] saying what the PEM is instead; [`AuthConfigError::EmptyAudience`].
    pub fn public_key_pem(pem: &[u8], audience: Option<String>) -> Result<Self, AuthConfigError> {
        let (alg, key) = parse_public_key(pem)?;
        Self::jwt(alg, key, audience)
    }

    /// No authentication (`--insecure-no-auth`): [`Self::verify`] accepts every request, with or
    /// without a token, as the subject [`ANONYMOUS_SUBJECT`].
    pub fn disabled() -> Self {
        Self {
            mode: Mode::Disabled,
        }
    }

    /// Builds the authenticator from the settings' files: `secret_file` (`--jwt-secret-file`, see
    /// [`Self::hs256`]) or `public_key_file` (`--jwt-public-key-file`, see
    /// [`Self::public_key_pem`]) — exactly one of them — or neither with `insecure_no_auth`.
    ///
    /// # Errors
    /// [`AuthConfigError::NoKey`], [`AuthConfigError::BothKeys`],
    /// [`AuthConfigError::InsecureWithKey`], [`AuthConfigError::Read`],
    /// [`AuthConfigError::TooLarge`], [`AuthConfigError::KeyFile`] (naming the flag and the
    /// file), [`AuthConfigError::EmptyAudience`].
    pub fn from_files(
        secret_file: Option<&Path>,
        public_key_file: Option<&Path>,
        audience: Option<String>,
        insecure_no_auth: bool,
    ) -> Result<Self, AuthConfigError> {
        match key_file_flag(secret_file, public_key_file, insecure_no_auth)? {
            None => Ok(Self::disabled()),
            Some((flag, path)) => {
                require_audience(flag, audience.as_deref())?;
                Ok(Self::from_key_file(flag, path, audience)?.0)
            }
        }
    }

    /// Reads the key file `path` that `flag` names and builds the authenticator of its kind (see
    /// [`Self::from_key_bytes`]). Returns it with the file's bytes (for change detection).
    fn from_key_file(
        flag: &'static str,
        path: &Path,
        audience: Option<String>,
    ) -> Result<(Self, Vec<u8>), AuthConfigError> {
        let bytes = read_key_file(flag, path)?;
        Ok((Self::from_key_bytes(flag, path, &bytes, audience)?, bytes))
    }

    /// The authenticator for the bytes of the key file `path` that `flag` names:
    /// [`Self::hs256`] for [`SECRET_FLAG`], [`Self::public_key_pem`] otherwise; errors name the
    /// flag and file.
    fn from_key_bytes(
        flag: &'static str,
        path: &Path,
        bytes: &[u8],
        audience: Option<String>,
    ) -> Result<Self, AuthConfigError> {
        let auth = if flag == SECRET_FLAG {
            Self::hs256(bytes, audience)
        } else {
            Self::public_key_pem(bytes, audience)
        };
        auth.map_err(|e| in_file(e, flag, path))
    }

    /// Verifies a request's `Authorization` header value (`None` when the header is absent) and
    /// returns the token's subject.
    ///
    /// The value must be `Bearer <token>`: the scheme case-insensitive (RFC 9110 §11.1), exactly
    /// one space, the token made of base64url characters and two dots, at most
    /// [`MAX_TOKEN_LEN`] bytes. Surrounding whitespace of the whole value is ignored.
    ///
    /// # Errors
    /// An [`AuthError`] for the first check that fails; see its variants.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let (alg, key, validation, max_ttl) = match &self.mode {
            Mode::Disabled => {
                return Ok(Principal {
                    subject: ANONYMOUS_SUBJECT.to_owned(),
                });
            }
            Mode::Jwt {
                alg,
                key,
                validation,
                max_ttl,
            } => (*alg, key, validation, *max_ttl),
        };
        let token = bearer_token(authorization)?;
        check_header(token, alg)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        if let Some(max) = max_ttl {
            check_lifetime(&data.claims, max, jsonwebtoken::get_current_timestamp())?;
        }
        let subject = data.claims.sub.ok_or(AuthError::MissingClaim("sub"))?;
        if subject.trim().is_empty()
            || subject.len() > MAX_SUBJECT_LEN
            || subject.chars().any(char::is_control)
        {
            return Err(AuthError::InvalidClaim("sub"));
        }
        Ok(Principal { subject })
    }

    /// The one accepted JWS `alg` (RFC 7518 §3.1): `"HS256"`, `"RS256"` or `"ES256"`; `None` when
    /// authentication is disabled.
    pub fn algorithm(&self) -> Option<&'static str> {
        match &self.mode {
            Mode::Disabled => None,
            Mode::Jwt { alg, .. } => Some(alg_name(*alg)),
        }
    }

    /// Whether authentication is disabled (`--insecure-no-auth`).
    pub fn is_disabled(&self) -> bool {
        matches!(self.mode, Mode::Disabled)
    }

    fn jwt(
        alg: Algorithm,
        key: DecodingKey,
        audience: Option<String>,
    ) -> Result<Self, AuthConfigError> {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        match audience {
            Some(aud) if aud.trim().is_empty() => return Err(AuthConfigError::EmptyAudience),
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
                validation.validate_aud = true;
            }
            None => validation.validate_aud = false,
        }
        Ok(Self {
            mode: Mode::Jwt {
                alg,
                key,
                validation: Box::new(validation),
                max_ttl: None,
            },
        })
    }
}

/// Signs an HS256 token for `subject` valid for `ttl` (claims `sub`, `iat`, `exp`, and `aud` when
/// given), with the same secret handling as [`Authenticator::hs256`] (so a key file's bytes can be
/// passed as they are). For tests, tooling and clients written in Rust.
///
/// # Errors
/// [`AuthConfigError::Key`] for an unacceptable secret, [`AuthConfigError::EmptySubject`],
/// [`AuthConfigError::Signing`].
pub fn mint_hs256(
    secret: &[u8],
    subject: &str,
    audience: Option<&str>,
    ttl: Duration,
) -> Result<String, AuthConfigError> {
    #[derive(Serialize)]
    struct MintClaims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
    }
    let secret = checked_secret(secret)?;
    if subject.is_empty() {
        return Err(AuthConfigError::EmptySubject);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = MintClaims {
        sub: subject,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        aud: audience,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| AuthConfigError::Signing)
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // Only the three above are ever configured.
        _ => "unsupported",
    }
}

/// Which key file the settings name: `(flag, path)`, or `None` when authentication is disabled.
fn key_file_flag<'a>(
    secret_file: Option<&'a Path>,
    public_key_file: Option<&'a Path>,
    insecure_no_auth: bool,
) -> Result<Option<(&'static str, &'a Path)>, AuthConfigError> {
    match (secret_file, public_key_file, insecure_no_auth) {
        (None, None, true) => Ok(None),
        (Some(_), _, true) => Err(AuthConfigError::InsecureWithKey(SECRET_FLAG)),
        (None, Some(_), true) => Err(AuthConfigError::InsecureWithKey(PUBLIC_KEY_FLAG)),
        (None, None, false) => Err(AuthConfigError::NoKey),
        (Some(_), Some(_), false) => Err(AuthConfigError::BothKeys),
        (Some(path), None, false) => Ok(Some((SECRET_FLAG, path))),
        (None, Some(path), false) => Ok(Some((PUBLIC_KEY_FLAG, path))),
    }
}

fn in_file(err: AuthConfigError, flag: &'static str, path: &Path) -> AuthConfigError {
    match err {
        AuthConfigError::Key(problem) => AuthConfigError::KeyFile {
            flag,
            path: path.to_path_buf(),
            problem,
        },
        other => other,
    }
}

/// Extracts the token from `Bearer <token>`.
fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::MissingToken)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.starts_with(' ') {
        return Err(AuthError::MalformedHeader);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::MalformedToken("longer than 8 KiB"));
    }
    let shape_ok = token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && token.bytes().filter(|b| *b == b'.').count() == 2;
    if !shape_ok {
        return Err(AuthError::MalformedToken(
            "not a JWS compact serialization (three base64url parts separated by dots)",
        ));
    }
    Ok(token)
}

/// Reads the JOSE header (RFC 7515 §4) before any verification and refuses an `alg` other than
/// the configured one (so `none`, and HS256 against an RSA key, are named as such) and any
/// `crit` extension (RFC 7515 §4.1.11: none is understood here).
fn check_header(token: &str, alg: Algorithm) -> Result<(), AuthError> {
    const BAD_HEADER: AuthError = AuthError::MalformedToken("the header is not base64url JSON");
    let header_b64 = token.split('.').next().unwrap_or_default();
    let header_json = b64url_decode(header_b64).ok_or(BAD_HEADER)?;
    let header: serde_json::Value = serde_json::from_slice(&header_json).map_err(|_| BAD_HEADER)?;
    let header = header.as_object().ok_or(BAD_HEADER)?;
    match header.get("alg").and_then(serde_json::Value::as_str) {
        Some(name) if name == alg_name(alg) => {}
        Some(_) => return Err(AuthError::AlgorithmNotAllowed),
        None => return Err(AuthError::MalformedToken("the header has no alg")),
    }
    if header.contains_key("crit") {
        return Err(AuthError::MalformedToken(
            "the header has an unsupported crit extension",
        ));
    }
    Ok(())
}

/// Decodes unpadded base64url (RFC 4648 §5), as JWS uses (RFC 7515 §2).
fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A length of 1 mod 4 leaves 6 dangling bits: not valid base64.
    (bits < 6).then_some(out)
}

fn claim_name(name: &str) -> &'static str {
    match name {
        "exp" => "exp",
        "sub" => "sub",
        "aud" => "aud",
        "nbf" => "nbf",
        "iss" => "iss",
        "iat" => "iat",
        _ => "unknown",
    }
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(claim_name(c)),
        ErrorKind::InvalidClaimFormat(c) => AuthError::InvalidClaim(claim_name(c)),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            AuthError::MalformedToken("a part is not valid base64url")
        }
        ErrorKind::Json(_) => {
            AuthError::MalformedToken("the claims are not a JSON object with a string `sub`")
        }
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat => {
            AuthError::BadSignature
        }
        _ => AuthError::MalformedToken("rejected by the JWT validator"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-only";
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/rs256-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rs256-public.pem");
    const RSA_PUBLIC_PKCS1: &[u8] = include_bytes!("../tests/fixtures/rs256-public-pkcs1.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/es256-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/es256-public.pem");
    const P384_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/es384-public.pem");
    const ED25519_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/ed25519-public.pem");
    const RSA1024_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa1024-public.pem");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign test token")
    }

    fn hs(claims: serde_json::Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn b64url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn hs_auth(aud: Option<&str>) -> Authenticator {
        Authenticator::hs256(SECRET, aud.map(str::to_owned)).expect("hs256 authenticator")
    }

    fn check(auth: &Authenticator, token: &str) -> Result<Principal, AuthError> {
        auth.verify(Some(&bearer(token)))
    }

    #[test]
    fn authenticator_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Authenticator>();
        assert_send_sync::<AuthError>();
        assert_send_sync::<AuthConfigError>();
    }

    #[test]
    fn hs256_valid_token() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() + 600}));
        assert_eq!(
            check(&auth, &token),
            Ok(Principal {
                subject: "alice".into()
            })
        );
        assert_eq!(auth.algorithm(), Some("HS256"));
        // Extra claims and an `aud` are fine when no audience is configured.
        let token =
            hs(serde_json::json!({"sub": "bob", "exp": now() + 600, "aud": "x", "iat": now()}));
        assert_eq!(check(&auth, &token).map(|p| p.subject), Ok("bob".into()));
    }

    #[test]
    fn hs256_secret_trailing_newline_is_trimmed() {
        let mut with_lf = SECRET.to_vec();
        with_lf.push(b'\n');
        let mut with_crlf = SECRET.to_vec();
        with_crlf.extend_from_slice(b"\r\n");
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() + 600}));
        for secret in [with_lf, with_crlf] {
            let auth = Authenticator::hs256(&secret, None).expect("authenticator");
            assert!(check(&auth, &token).is_ok());
        }
    }

    /// The operator (operator/src/reconcile.rs `secret_key`) removes every trailing `\n`/`\r`
    /// before it signs its probe token and checks the 32-byte minimum; the sidecar must read the
    /// same file as the same key, whatever the line ending.
    #[test]
    fn key_file_is_read_like_the_operator_reads_it() {
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() + 600}));
        for ending in [
            &b""[..],
            b"\n",
            b"\r\n",
            b"\n\n",
            b"\r",
            b"\r\n\r\n",
            b"\n\r\n",
        ] {
            let mut file = SECRET.to_vec();
            file.extend_from_slice(ending);
            assert_eq!(trim_key(&file), SECRET, "{ending:?}");
            let auth = Authenticator::hs256(&file, None).expect("authenticator");
            assert!(check(&auth, &token).is_ok(), "{ending:?}");
            // `codex-sidecar token` signs with the same bytes.
            let minted = mint_hs256(&file, "bob", None, Duration::from_secs(60)).expect("mint");
            let plain = Authenticator::hs256(SECRET, None).expect("authenticator");
            assert!(check(&plain, &minted).is_ok(), "{ending:?}");
        }
        // 31 bytes followed by newlines is 31 bytes: refused, as the operator refuses it.
        let short = b"0123456789abcdef0123456789abcde\n\n";
        assert!(matches!(
            Authenticator::hs256(short, None),
            Err(AuthConfigError::Key(KeyProblem::SecretTooShort { len: 31 }))
        ));
        // Inner newlines are part of the key.
        assert_eq!(trim_key(b"a\nb\r\n"), b"a\nb");
        assert_eq!(trim_key(b"\r\n\n"), b"");
    }

    #[test]
    fn hs256_secret_empty_or_short_is_refused() {
        for secret in [&b""[..], b"\n", b"\r\n"] {
            assert!(matches!(
                Authenticator::hs256(secret, None),
                Err(AuthConfigError::Key(KeyProblem::EmptySecret))
            ));
        }
        let err = Authenticator::hs256(b"short-secret\n", None).expect_err("too short");
        assert!(matches!(
            err,
            AuthConfigError::Key(KeyProblem::SecretTooShort { len: 12 })
        ));
        assert!(!err.to_string().contains("short-secret"), "{err}");
    }

    #[test]
    fn expired_token_is_refused() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() - 3600}));
        let err = check(&auth, &token).expect_err("expired");
        assert_eq!(err, AuthError::Expired);
        assert_eq!(err.code(), "token_expired");
    }

    #[test]
    fn expiry_within_leeway_is_accepted() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() - 5}));
        assert!(check(&auth, &token).is_ok());
    }

    #[test]
    fn future_nbf_is_refused() {
        let auth = hs_auth(None);
        let token =
            hs(serde_json::json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}));
        let err = check(&auth, &token).expect_err("not yet valid");
        assert_eq!(err, AuthError::NotYetValid);
        assert_eq!(err.code(), "token_not_yet_valid");
    }

    #[test]
    fn missing_exp_is_refused() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"sub": "alice"}));
        let err = check(&auth, &token).expect_err("no exp");
        assert_eq!(err, AuthError::MissingClaim("exp"));
        assert_eq!(err.code(), "missing_claim");
    }

    #[test]
    fn non_numeric_exp_is_refused() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"sub": "alice", "exp": "tomorrow"}));
        let err = check(&auth, &token).expect_err("bad exp");
        assert!(matches!(
            err,
            AuthError::MissingClaim("exp") | AuthError::InvalidClaim("exp")
        ));
    }

    #[test]
    fn missing_or_empty_sub_is_refused() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"exp": now() + 600}));
        assert_eq!(check(&auth, &token), Err(AuthError::MissingClaim("sub")));
        for sub in ["", "   ", "a\nb"] {
            let token = hs(serde_json::json!({"sub": sub, "exp": now() + 600}));
            assert_eq!(
                check(&auth, &token),
                Err(AuthError::InvalidClaim("sub")),
                "{sub:?}"
            );
        }
        let token = hs(serde_json::json!({"sub": 42, "exp": now() + 600}));
        assert!(check(&auth, &token).is_err());
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let auth = hs_auth(Some("codex-sidecar"));
        let ok = hs(serde_json::json!({"sub": "a", "exp": now() + 600, "aud": "codex-sidecar"}));
        assert!(check(&auth, &ok).is_ok());
        let ok_list =
            hs(serde_json::json!({"sub": "a", "exp": now() + 600, "aud": ["x", "codex-sidecar"]}));
        assert!(check(&auth, &ok_list).is_ok());

        let wrong = hs(serde_json::json!({"sub": "a", "exp": now() + 600, "aud": "other"}));
        let err = check(&auth, &wrong).expect_err("wrong aud");
        assert_eq!(err, AuthError::WrongAudience);
        assert_eq!(err.code(), "invalid_audience");
    }

    #[test]
    fn missing_audience_is_refused_when_configured() {
        let auth = hs_auth(Some("codex-sidecar"));
        let token = hs(serde_json::json!({"sub": "a", "exp": now() + 600}));
        assert_eq!(check(&auth, &token), Err(AuthError::MissingClaim("aud")));
    }

    fn ruled(issuer: Option<&str>, max_ttl: Option<u64>) -> Authenticator {
        hs_auth(None)
            .with_rules(&TokenRules {
                issuer: issuer.map(str::to_owned),
                max_ttl: max_ttl.map(Duration::from_secs),
            })
            .expect("rules")
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let auth = ruled(Some("https://issuer.example"), None);
        let ok =
            hs(serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "https://issuer.example"}));
        assert_eq!(check(&auth, &ok).map(|p| p.subject), Ok("a".into()));
        let other =
            hs(serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "https://evil.example"}));
        let err = check(&auth, &other).expect_err("wrong iss");
        assert_eq!(
            (err.clone(), err.code()),
            (AuthError::WrongIssuer, "invalid_issuer")
        );
        let none = hs(serde_json::json!({"sub": "a", "exp": now() + 60}));
        let err = check(&auth, &none).expect_err("no iss");
        assert_eq!(
            (err.clone(), err.code()),
            (AuthError::MissingClaim("iss"), "missing_claim")
        );
        // Without the rule, `iss` is not looked at.
        assert!(check(&hs_auth(None), &other).is_ok());
    }

    #[test]
    fn max_ttl_refuses_long_lived_tokens() {
        let auth = ruled(None, Some(300));
        let t = now();
        let ok = hs(serde_json::json!({"sub": "a", "iat": t, "exp": t + 300}));
        assert!(check(&auth, &ok).is_ok(), "exactly the maximum is fine");
        // No iat: the remaining lifetime counts, with the clock-skew leeway.
        let ok = hs(serde_json::json!({"sub": "a", "exp": t + 300 + LEEWAY_SECS - 5}));
        assert!(check(&auth, &ok).is_ok());
        for claims in [
            serde_json::json!({"sub": "a", "iat": t, "exp": t + 301}),
            // A token issued long ago whose exp is near: exp - iat still counts.
            serde_json::json!({"sub": "a", "iat": t - 86_400, "exp": t + 10}),
            serde_json::json!({"sub": "a", "exp": t + 86_400}),
            // A backdated iat cannot hide a far exp: exp - now counts too.
            serde_json::json!({"sub": "a", "iat": t + 86_000, "exp": t + 86_100}),
        ] {
            let err = check(&auth, &hs(claims.clone())).expect_err("too long");
            assert_eq!(
                err,
                AuthError::LifetimeTooLong { max_secs: 300 },
                "{claims}"
            );
            assert_eq!(err.code(), "token_lifetime_too_long");
            assert!(err.to_string().contains("300 seconds"), "{err}");
        }
        let bad_iat = hs(serde_json::json!({"sub": "a", "iat": "yesterday", "exp": t + 10}));
        assert_eq!(check(&auth, &bad_iat), Err(AuthError::InvalidClaim("iat")));
        // exp stays required.
        let no_exp = hs(serde_json::json!({"sub": "a", "iat": t}));
        assert_eq!(check(&auth, &no_exp), Err(AuthError::MissingClaim("exp")));
        // Without the rule, a day-long token is fine.
        let long = hs(serde_json::json!({"sub": "a", "iat": t, "exp": t + 86_400}));
        assert!(check(&hs_auth(None), &long).is_ok());
    }

    #[test]
    fn bad_rules_are_config_errors() {
        let rules = |issuer: Option<&str>, secs: Option<u64>| TokenRules {
            issuer: issuer.map(str::to_owned),
            max_ttl: secs.map(Duration::from_secs),
        };
        assert!(matches!(
            hs_auth(None).with_rules(&rules(Some(" "), None)),
            Err(AuthConfigError::EmptyIssuer)
        ));
        assert!(matches!(
            hs_auth(None).with_rules(&rules(None, Some(0))),
            Err(AuthConfigError::ZeroMaxTtl)
        ));
        assert!(
            Authenticator::disabled()
                .with_rules(&rules(Some("i"), Some(5)))
                .is_ok()
        );
    }

    #[test]
    fn a_public_key_file_needs_an_audience() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.pub");
        std::fs::write(&path, EC_PUBLIC).expect("write");
        let err = Authenticator::from_files(None, Some(&path), None, false).expect_err("no aud");
        assert!(matches!(err, AuthConfigError::PublicKeyWithoutAudience));
        assert!(err.to_string().contains("--jwt-audience"), "{err}");
        let auth = Authenticator::from_files(None, Some(&path), Some("api".into()), false)
            .expect("with aud");
        let key = EncodingKey::from_ec_pem(EC_PRIVATE).expect("ec");
        let token = sign(
            Algorithm::ES256,
            &key,
            serde_json::json!({"sub": "a", "exp": now() + 60, "aud": "api"}),
        );
        assert!(check(&auth, &token).is_ok());
        // A shared secret keeps working without one.
        let secret = dir.path().join("jwt.key");
        std::fs::write(&secret, SECRET).expect("write");
        assert!(Authenticator::from_files(Some(&secret), None, None, false).is_ok());
    }

    #[test]
    fn empty_audience_is_a_config_error() {
        assert!(matches!(
            Authenticator::hs256(SECRET, Some(String::new())),
            Err(AuthConfigError::EmptyAudience)
        ));
    }

    #[test]
    fn wrong_key_is_refused() {
        let auth = hs_auth(None);
        let other = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!");
        let token = sign(
            Algorithm::HS256,
            &other,
            serde_json::json!({"sub": "a", "exp": now() + 600}),
        );
        let err = check(&auth, &token).expect_err("wrong key");
        assert_eq!(err, AuthError::BadSignature);
        assert_eq!(err.code(), "invalid_signature");
    }

    #[test]
    fn tampered_payload_is_refused() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() + 600}));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64url(br#"{"sub":"admin","exp":9999999999}"#);
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(check(&auth, &tampered), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let payload = b64url(
            serde_json::json!({"sub": "alice", "exp": now() + 600})
                .to_string()
                .as_bytes(),
        );
        let ec_auth = Authenticator::public_key_pem(EC_PUBLIC, None).expect("es256");
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
        ] {
            let token = format!("{}.{payload}.", b64url(header.as_bytes()));
            for auth in [hs_auth(None), ec_auth.clone()] {
                let err = check(&auth, &token).expect_err("alg none");
                assert_eq!(err, AuthError::AlgorithmNotAllowed, "{header}");
                assert_eq!(err.code(), "algorithm_not_allowed");
            }
        }
        // The brief's literal form: header `{"alg":"none"}`.
        let token = format!("eyJhbGciOiJub25lIn0.{payload}.");
        assert_eq!(
            check(&hs_auth(None), &token),
            Err(AuthError::AlgorithmNotAllowed)
        );
        // With a (meaningless) signature part too.
        let token = format!("eyJhbGciOiJub25lIn0.{payload}.AAAA");
        assert_eq!(
            check(&hs_auth(None), &token),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn other_hmac_algorithms_are_refused_for_hs256() {
        let auth = hs_auth(None);
        let key = EncodingKey::from_secret(SECRET);
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(
                alg,
                &key,
                serde_json::json!({"sub": "a", "exp": now() + 600}),
            );
            assert_eq!(check(&auth, &token), Err(AuthError::AlgorithmNotAllowed));
        }
    }

    #[test]
    fn hs_rs_confusion_is_refused() {
        // The classic attack: sign HS256 with the RSA *public* key's bytes as the HMAC secret.
        let claims = serde_json::json!({"sub": "mallory", "exp": now() + 600});
        for public in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
            let auth = Authenticator::public_key_pem(public, None).expect("rs256");
            assert_eq!(auth.algorithm(), Some("RS256"));
            let forged = sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(public),
                claims.clone(),
            );
            let err = check(&auth, &forged).expect_err("HS/RS confusion");
            assert_eq!(err, AuthError::AlgorithmNotAllowed);
            // Even with the header's `alg` lying as RS256, the HMAC is not an RSA signature.
            let parts: Vec<&str> = forged.split('.').collect();
            let rs_header = b64url(br#"{"alg":"RS256","typ":"JWT"}"#);
            let lying = format!("{rs_header}.{}.{}", parts[1], parts[2]);
            assert_eq!(check(&auth, &lying), Err(AuthError::BadSignature));
        }
        // Same for the EC key.
        let auth = Authenticator::public_key_pem(EC_PUBLIC, None).expect("es256");
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(EC_PUBLIC),
            claims,
        );
        assert_eq!(check(&auth, &forged), Err(AuthError::AlgorithmNotAllowed));
    }

    #[test]
    fn rs256_token_is_refused_by_hs256_verifier() {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa private");
        let token = sign(
            Algorithm::RS256,
            &key,
            serde_json::json!({"sub": "a", "exp": now() + 600}),
        );
        assert_eq!(
            check(&hs_auth(None), &token),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn rs256_valid_token() {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa private");
        let claims = serde_json::json!({"sub": "carol", "exp": now() + 600, "aud": "api"});
        let token = sign(Algorithm::RS256, &key, claims);
        for public in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
            let auth = Authenticator::public_key_pem(public, Some("api".into())).expect("rs256");
            assert_eq!(check(&auth, &token).map(|p| p.subject), Ok("carol".into()));
        }
        // PS256 (same key family, other algorithm) is refused.
        let ps = sign(
            Algorithm::PS256,
            &key,
            serde_json::json!({"sub": "a", "exp": now() + 600}),
        );
        let auth = Authenticator::public_key_pem(RSA_PUBLIC, None).expect("rs256");
        assert_eq!(check(&auth, &ps), Err(AuthError::AlgorithmNotAllowed));
    }

    #[test]
    fn es256_valid_token() {
        let key = EncodingKey::from_ec_pem(EC_PRIVATE).expect("ec private");
        let token = sign(
            Algorithm::ES256,
            &key,
            serde_json::json!({"sub": "dave", "exp": now() + 600}),
        );
        let auth = Authenticator::public_key_pem(EC_PUBLIC, None).expect("es256");
        assert_eq!(auth.algorithm(), Some("ES256"));
        assert_eq!(check(&auth, &token).map(|p| p.subject), Ok("dave".into()));
        // An RS256 token (other key type) is refused by its alg before any verification.
        let rs = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa private");
        let token = sign(
            Algorithm::RS256,
            &rs,
            serde_json::json!({"sub": "a", "exp": now() + 600}),
        );
        assert_eq!(check(&auth, &token), Err(AuthError::AlgorithmNotAllowed));
    }

    #[test]
    fn unsupported_public_keys_are_refused() {
        let cases: [(&[u8], KeyProblem); 7] = [
            (P384_PUBLIC, KeyProblem::NotP256),
            (ED25519_PUBLIC, KeyProblem::NotAPublicKey),
            (RSA1024_PUBLIC, KeyProblem::RsaTooSmall { bits: 1024 }),
            (RSA_PRIVATE, KeyProblem::PrivateKey),
            (EC_PRIVATE, KeyProblem::PrivateKey),
            (b"not a pem at all", KeyProblem::NotAPublicKey),
            (
                b"-----BEGIN PUBLIC KEY-----\nc2VjcmV0LW1hcmtlcg==\n-----END PUBLIC KEY-----\n",
                KeyProblem::NotAPublicKey,
            ),
        ];
        for (pem, want) in cases {
            match Authenticator::public_key_pem(pem, None) {
                Err(AuthConfigError::Key(got)) => assert_eq!(got, want),
                other => panic!("expected {want:?}, got {other:?}"),
            }
        }
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            Authenticator::public_key_pem(cert, None),
            Err(AuthConfigError::Key(KeyProblem::Certificate))
        ));
    }

    #[test]
    fn malformed_header_is_refused() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() + 600}));
        assert_eq!(auth.verify(None), Err(AuthError::MissingToken));
        assert_eq!(AuthError::MissingToken.code(), "missing_token");
        for value in [
            String::new(),
            "Bearer".into(),
            "Bearer ".into(),
            format!("Basic {token}"),
            format!("Bearer  {token}"),
            format!("Bearer\t{token}"),
            format!("Token {token}"),
            token.clone(),
        ] {
            let err = auth.verify(Some(&value)).expect_err(&value);
            assert_eq!(err, AuthError::MalformedHeader, "{value:?}");
            assert_eq!(err.code(), "invalid_authorization_header");
        }
        // Scheme is case-insensitive; surrounding whitespace is ignored.
        for value in [
            format!("bearer {token}"),
            format!("BEARER {token}"),
            format!(" Bearer {token} "),
        ] {
            assert!(auth.verify(Some(&value)).is_ok(), "{value:?}");
        }
    }

    #[test]
    fn malformed_token_is_refused() {
        let auth = hs_auth(None);
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() + 600}));
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let cases = [
            "abc".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("{token} extra"),
            format!("{token}=="),
            "!!!.e30.sig".to_owned(),
            "e30.e30.sig".to_owned(), // header `{}`: no alg
            format!("{}.e30.sig", b64url(b"not json")),
            format!("{}.e30.sig", b64url(b"[1,2]")),
            long,
        ];
        for case in cases {
            let err = check(&auth, &case).expect_err(&case);
            assert!(
                matches!(err, AuthError::MalformedToken(_)),
                "{case:?}: {err:?}"
            );
            assert_eq!(err.code(), "invalid_token");
        }
        // crit extensions are not understood, so refused.
        let crit_header = b64url(br#"{"alg":"HS256","crit":["b64"],"b64":false}"#);
        let parts: Vec<&str> = token.split('.').collect();
        let crit = format!("{crit_header}.{}.{}", parts[1], parts[2]);
        assert!(matches!(
            check(&auth, &crit),
            Err(AuthError::MalformedToken(_))
        ));
    }

    #[test]
    fn disabled_accepts_everything_as_anonymous() {
        let auth = Authenticator::disabled();
        assert!(auth.is_disabled());
        assert_eq!(auth.algorithm(), None);
        for value in [None, Some("garbage"), Some("Bearer x.y.z")] {
            assert_eq!(
                auth.verify(value).map(|p| p.subject),
                Ok(ANONYMOUS_SUBJECT.to_owned())
            );
        }
    }

    #[test]
    fn errors_never_contain_token_or_key() {
        let auth = hs_auth(Some("aud-1"));
        let secret_text = std::str::from_utf8(SECRET).expect("ascii");
        let tokens = [
            hs(serde_json::json!({"sub": "alice", "exp": now() - 3600})),
            hs(serde_json::json!({"sub": "alice"})),
            hs(serde_json::json!({"sub": "alice", "exp": now() + 60, "aud": "zzz"})),
            hs(serde_json::json!({"sub": 12345, "exp": now() + 60, "aud": "aud-1"})),
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"wrong-wrong-wrong-wrong-wrong-wrong"),
                serde_json::json!({"sub": "alice", "exp": now() + 60, "aud": "aud-1"}),
            ),
            format!("eyJhbGciOiJub25lIn0.{}.", b64url(br#"{"sub":"alice"}"#)),
            format!(
                "{}.e30.sig",
                b64url(br#"{"alg":"HS256","x":"secret-marker"}"#)
            ),
        ];
        for token in &tokens {
            for value in [bearer(token), format!("Basic {token}")] {
                let err = auth.verify(Some(&value)).expect_err("refused");
                for text in [err.to_string(), format!("{err:?}")] {
                    assert!(!text.contains(token.as_str()), "{text}");
                    for part in token.split('.').filter(|p| p.len() > 3) {
                        assert!(!text.contains(part), "{text} contains a token part");
                    }
                    assert!(!text.contains(secret_text), "{text}");
                    assert!(
                        !text.contains("alice") && !text.contains("secret-marker"),
                        "{text}"
                    );
                }
            }
        }
        // Config errors and Debug of the authenticator don't contain key material.
        let dbg = format!("{auth:?}");
        assert!(
            !dbg.contains(secret_text) && dbg.contains("redacted"),
            "{dbg}"
        );
        let pem_text = std::str::from_utf8(RSA_PUBLIC).expect("ascii");
        let body_line = pem_text.lines().nth(1).expect("pem body");
        let rs = Authenticator::public_key_pem(RSA_PUBLIC, None).expect("rs256");
        assert!(!format!("{rs:?}").contains(body_line));
        let marker =
            b"-----BEGIN PUBLIC KEY-----\nc2VjcmV0LW1hcmtlcg==\n-----END PUBLIC KEY-----\n";
        let err = Authenticator::public_key_pem(marker, None).expect_err("garbage");
        assert!(!err.to_string().contains("c2VjcmV0LW1hcmtlcg"), "{err}");
        let err = Authenticator::public_key_pem(RSA_PRIVATE, None).expect_err("private");
        let private_line = std::str::from_utf8(RSA_PRIVATE)
            .expect("ascii")
            .lines()
            .nth(1);
        assert!(!err.to_string().contains(private_line.expect("pem body")));
    }

    #[test]
    fn from_files_reads_and_names_the_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_path = dir.path().join("secret");
        let mut file_bytes = SECRET.to_vec();
        file_bytes.push(b'\n');
        std::fs::write(&secret_path, &file_bytes).expect("write secret");
        let pub_path = dir.path().join("key.pem");
        std::fs::write(&pub_path, RSA_PUBLIC).expect("write key");

        let auth = Authenticator::from_files(Some(&secret_path), None, None, false).expect("hs");
        assert_eq!(auth.algorithm(), Some("HS256"));
        let token = hs(serde_json::json!({"sub": "alice", "exp": now() + 600}));
        assert!(check(&auth, &token).is_ok());

        let auth = Authenticator::from_files(None, Some(&pub_path), Some("api".into()), false)
            .expect("rs");
        assert_eq!(auth.algorithm(), Some("RS256"));

        let auth = Authenticator::from_files(None, None, None, true).expect("disabled");
        assert!(auth.is_disabled());

        assert!(matches!(
            Authenticator::from_files(None, None, None, false),
            Err(AuthConfigError::NoKey)
        ));
        assert!(matches!(
            Authenticator::from_files(Some(&secret_path), Some(&pub_path), None, false),
            Err(AuthConfigError::BothKeys)
        ));
        assert!(matches!(
            Authenticator::from_files(Some(&secret_path), None, None, true),
            Err(AuthConfigError::InsecureWithKey("--jwt-secret-file"))
        ));

        let missing = dir.path().join("nope");
        let err =
            Authenticator::from_files(Some(&missing), None, None, false).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "--jwt-secret-file {}: cannot read:",
                missing.display()
            )),
            "{msg}"
        );

        let short_path = dir.path().join("short");
        std::fs::write(&short_path, b"hunter2\n").expect("write");
        let err =
            Authenticator::from_files(Some(&short_path), None, None, false).expect_err("short");
        let msg = err.to_string();
        assert!(
            msg.starts_with("--jwt-secret-file ") && msg.contains("7 bytes"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");

        let err = Authenticator::from_files(None, Some(&secret_path), Some("api".into()), false)
            .expect_err("bad pem");
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "--jwt-public-key-file {}: not an RSA or P-256 public key in PEM",
                secret_path.display()
            )
        );
        assert!(!msg.contains(std::str::from_utf8(SECRET).expect("ascii")));
    }

    #[test]
    fn minted_token_verifies() {
        let mut file_bytes = SECRET.to_vec();
        file_bytes.push(b'\n');
        let token =
            mint_hs256(&file_bytes, "erin", Some("aud-1"), Duration::from_secs(300)).expect("mint");
        let auth = Authenticator::hs256(&file_bytes, Some("aud-1".into())).expect("auth");
        assert_eq!(check(&auth, &token).map(|p| p.subject), Ok("erin".into()));
        assert!(matches!(
            mint_hs256(SECRET, "", None, Duration::from_secs(1)),
            Err(AuthConfigError::EmptySubject)
        ));
    }

    #[test]
    fn b64url_decoder_matches_base64_crate() {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for len in 0..40u8 {
            let data: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(200))
                .collect();
            let encoded = engine.encode(&data);
            assert_eq!(b64url_decode(&encoded), Some(data));
        }
        assert_eq!(b64url_decode("A"), None);
        assert_eq!(b64url_decode("AA=="), None);
        assert_eq!(b64url_decode("A+"), None);
    }

    #[test]
    fn www_authenticate_follows_rfc6750() {
        assert!(
            !AuthError::MissingToken
                .www_authenticate()
                .contains("error=")
        );
        assert!(
            AuthError::Expired
                .www_authenticate()
                .contains("error=\"invalid_token\"")
        );
    }
}
