//! Key rotation without a restart: [`KeyRing`] holds the key in use plus the keys it replaced
//! within the overlap, and [`spawn_watcher`] re-reads the key file every few seconds.
//!
//! A Kubernetes Secret volume updates its files by swapping a `..data` symlink atomically, which
//! inotify-style watches on the file itself miss; so the watcher simply reads the file (it is
//! tiny) every `--jwt-key-reload-interval` seconds and compares a SHA-256 of its bytes with the
//! one in use. When they differ and the new bytes are an acceptable key (the same checks as at
//! start-up: HS256 at least 32 bytes after trailing newlines, RSA ≥ 2048 bits, P-256), the new key
//! becomes the primary one and the replaced key is still accepted for `--jwt-key-overlap` seconds,
//! so that clients holding tokens signed with it can switch over. A file that cannot be read or
//! holds an unacceptable key leaves the keys in use untouched; the problem is logged (path and
//! reason, never key bytes), counted once per distinct failure in
//! `codex_sidecar_jwt_key_reloads_total{result="failed"}`, and shown in `/v1/status`.
//!
//! Every key replaced within the overlap stays valid (up to [`MAX_PREVIOUS_KEYS`]), so a file
//! caught half-written by a poll cannot evict the real previous key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    AuthConfigError, AuthError, Authenticator, Principal, TokenRules, key_file_flag,
    require_audience,
};
use crate::metrics::Metrics;

/// Most replaced keys kept for their overlap at once; the oldest is dropped beyond it.
pub const MAX_PREVIOUS_KEYS: usize = 4;

/// The API's verifier: the key in use, the keys it recently replaced, and where to reload from.
/// Shared as `Arc<KeyRing>` between the HTTP layer and the watcher; `Send + Sync`.
pub struct KeyRing {
    source: Option<Source>,
    overlap: Duration,
    keys: RwLock<Arc<Keys>>,
    failure: Mutex<Option<Failure>>,
    /// Scrubs every HS256 secret this ring loads out of codex's output (see
    /// [`KeyRing::feed_redactor`]).
    redactor: std::sync::OnceLock<Arc<crate::redact::Redactor>>,
}

/// The key file and what to build from it.
struct Source {
    flag: &'static str,
    path: PathBuf,
    audience: Option<String>,
    rules: TokenRules,
}

/// One immutable snapshot of the keys; replaced whole on reload.
struct Keys {
    current: Authenticator,
    fingerprint: Option<[u8; 32]>,
    loaded_at: SystemTime,
    /// Newest first.
    previous: Vec<Previous>,
}

#[derive(Clone)]
struct Previous {
    auth: Authenticator,
    expires: Instant,
    expires_at: SystemTime,
}

/// The last reload that failed, until one succeeds or the file holds the key in use again.
struct Failure {
    what: FailedOn,
    message: String,
}

#[derive(PartialEq, Eq)]
enum FailedOn {
    Read(String),
    Content([u8; 32]),
}

/// What one [`KeyRing::reload`] did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file holds the key in use, or this ring has no key file (disabled authentication, or
    /// a key given directly).
    Unchanged,
    /// The file held a new key, now the primary one. The key it replaced stays valid until
    /// `previous_expires_at` (`None` when the overlap is zero: it was dropped at once).
    Reloaded {
        /// When the replaced key stops being accepted.
        previous_expires_at: Option<SystemTime>,
    },
    /// The file cannot be read or holds no acceptable key; the keys in use are kept.
    Failed {
        /// What is wrong (names the flag and file, never key bytes).
        error: AuthConfigError,
        /// Whether the previous reload failed the same way (same error, or same file content),
        /// i.e. this failure was already reported.
        repeated: bool,
    },
}

/// The key state shown in `/v1/status` as `auth_key`. Holds no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyStatus {
    /// The key file being watched; `None` when the key was given directly.
    pub file: Option<PathBuf>,
    /// When the key in use was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// When the last still-accepted replaced key stops being accepted (RFC 3339, UTC); `None`
    /// when no replaced key is accepted any more.
    pub previous_key_expires_at: Option<String>,
    /// Why the last reload failed, while the file still does not hold a usable key; `None`
    /// otherwise. Names the flag and file, never key bytes.
    pub last_reload_error: Option<String>,
}

impl KeyRing {
    /// A ring around `auth` that never reloads (disabled authentication, tests).
    pub fn fixed(auth: Authenticator) -> Self {
        Self::new(None, auth, None, Duration::ZERO)
    }

    /// Loads the key file the settings name, as [`Authenticator::from_files`] does, and
    /// remembers it for [`Self::reload`]. `overlap`: how long a replaced key stays valid.
    ///
    /// # Errors
    /// Those of [`Authenticator::from_files`].
    pub fn from_files(
        secret_file: Option<&Path>,
        public_key_file: Option<&Path>,
        audience: Option<String>,
        insecure_no_auth: bool,
        overlap: Duration,
    ) -> Result<Self, AuthConfigError> {
        let Some((flag, path)) = key_file_flag(secret_file, public_key_file, insecure_no_auth)?
        else {
            return Ok(Self::fixed(Authenticator::disabled()));
        };
        require_audience(flag, audience.as_deref())?;
        let (auth, bytes) = Authenticator::from_key_file(flag, path, audience.clone())?;
        let source = Source {
            flag,
            path: path.to_path_buf(),
            audience,
            rules: TokenRules::default(),
        };
        Ok(Self::new(
            Some(source),
            auth,
            Some(fingerprint(&bytes)),
            overlap,
        ))
    }

    /// This ring with the extra claim checks of `rules` (see [`Authenticator::with_rules`]),
    /// for the key in use and every key a reload brings. Call before sharing the ring.
    ///
    /// # Errors
    /// Those of [`Authenticator::with_rules`].
    pub fn with_rules(mut self, rules: TokenRules) -> Result<Self, AuthConfigError> {
        let keys = self.keys.get_mut().unwrap_or_else(PoisonError::into_inner);
        let current = keys.current.clone().with_rules(&rules)?;
        let previous = keys
            .previous
            .iter()
            .map(|p| {
                Ok(Previous {
                    auth: p.auth.clone().with_rules(&rules)?,
                    ..p.clone()
                })
            })
            .collect::<Result<Vec<_>, AuthConfigError>>()?;
        *keys = Arc::new(Keys {
            current,
            fingerprint: keys.fingerprint,
            loaded_at: keys.loaded_at,
            previous,
        });
        if let Some(src) = &mut self.source {
            src.rules = rules;
        }
        Ok(self)
    }

    fn new(
        source: Option<Source>,
        current: Authenticator,
        fingerprint: Option<[u8; 32]>,
        overlap: Duration,
    ) -> Self {
        Self {
            source,
            redactor: std::sync::OnceLock::new(),
            overlap,
            keys: RwLock::new(Arc::new(Keys {
                current,
                fingerprint,
                loaded_at: SystemTime::now(),
                previous: Vec::new(),
            })),
            failure: Mutex::new(None),
        }
    }

    /// [`Authenticator::verify`] with the key in use, then, when the token's signature or `alg`
    /// does not match it, with each replaced key still within its overlap. The error is the one
    /// from the key in use, unless a replaced key verified the signature and refused the claims
    /// (then that refusal, e.g. [`AuthError::Expired`]).
    ///
    /// # Errors
    /// An [`AuthError`]; see [`Authenticator::verify`].
    pub fn verify(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        self.verify_at(authorization, Instant::now())
    }

    /// [`Self::verify`] as of `now` (the overlap is measured on this clock).
    ///
    /// # Errors
    /// As [`Self::verify`].
    pub fn verify_at(
        &self,
        authorization: Option<&str>,
        now: Instant,
    ) -> Result<Principal, AuthError> {
        let keys = self.snapshot();
        let mut error = match keys.current.verify(authorization) {
            Err(e @ (AuthError::BadSignature | AuthError::AlgorithmNotAllowed)) => e,
            other => return other,
        };
        for p in keys.previous.iter().filter(|p| now < p.expires) {
            match p.auth.verify(authorization) {
                Ok(principal) => return Ok(principal),
                Err(AuthError::BadSignature | AuthError::AlgorithmNotAllowed) => {}
                // Signed with this key, refused for its claims (e.g. expired): say that.
                Err(e) => error = e,
            }
        }
        Err(error)
    }

    /// Re-reads the key file and switches to its key if it changed; see [`ReloadOutcome`].
    pub fn reload(&self) -> ReloadOutcome {
        self.reload_at(Instant::now(), SystemTime::now())
    }

    /// Makes the HS256 secret in use, and every one a reload brings, a secret `redactor` scrubs
    /// (a model that `cat`s the key file never shows it in an event). Public keys are not secrets.
    pub fn feed_redactor(&self, redactor: Arc<crate::redact::Redactor>) {
        let _ = self.redactor.set(redactor);
        if let Some(src) = &self.source
            && let Ok(bytes) = super::read_key_file(src.flag, &src.path)
        {
            self.redact_secret(src, &bytes);
        }
    }

    fn redact_secret(&self, src: &Source, bytes: &[u8]) {
        if src.flag == super::SECRET_FLAG
            && let Some(r) = self.redactor.get()
        {
            r.add(&String::from_utf8_lossy(super::trim_key(bytes)));
        }
    }

    /// [`Self::reload`] as of `now` (monotonic, for the overlap) and `wall` (for the status).
    pub fn reload_at(&self, now: Instant, wall: SystemTime) -> ReloadOutcome {
        let Some(src) = &self.source else {
            return ReloadOutcome::Unchanged;
        };
        let bytes = match super::read_key_file(src.flag, &src.path) {
            Ok(bytes) => bytes,
            Err(error) => return self.failed(FailedOn::Read(error.to_string()), error),
        };
        let digest = fingerprint(&bytes);
        if self.snapshot().fingerprint == Some(digest) {
            self.clear_failure();
            return ReloadOutcome::Unchanged;
        }
        let auth =
            match Authenticator::from_key_bytes(src.flag, &src.path, &bytes, src.audience.clone())
                .and_then(|auth| auth.with_rules(&src.rules))
            {
                Ok(auth) => auth,
                Err(error) => return self.failed(FailedOn::Content(digest), error),
            };
        self.redact_secret(src, &bytes);
        let mut guard = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let mut previous: Vec<Previous> = Vec::with_capacity(MAX_PREVIOUS_KEYS);
        let mut previous_expires_at = None;
        if !self.overlap.is_zero() {
            // An overlap too large for the clock (only reachable by direct use; the settings cap
            // it) ends at once rather than panicking.
            let expires = now.checked_add(self.overlap).unwrap_or(now);
            let expires_at = wall.checked_add(self.overlap).unwrap_or(wall);
            previous.push(Previous {
                auth: guard.current.clone(),
                expires,
                expires_at,
            });
            previous_expires_at = Some(expires_at);
        }
        previous.extend(guard.previous.iter().filter(|p| now < p.expires).cloned());
        previous.truncate(MAX_PREVIOUS_KEYS);
        *guard = Arc::new(Keys {
            current: auth,
            fingerprint: Some(digest),
            loaded_at: wall,
            previous,
        });
        drop(guard);
        self.clear_failure();
        ReloadOutcome::Reloaded {
            previous_expires_at,
        }
    }

    /// Forgets the replaced keys whose overlap ended by `now`; returns how many.
    pub fn prune_at(&self, now: Instant) -> usize {
        if self.snapshot().previous.iter().all(|p| now < p.expires) {
            return 0;
        }
        let mut guard = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let kept: Vec<Previous> = guard
            .previous
            .iter()
            .filter(|p| now < p.expires)
            .cloned()
            .collect();
        let dropped = guard.previous.len() - kept.len();
        *guard = Arc::new(Keys {
            current: guard.current.clone(),
            fingerprint: guard.fingerprint,
            loaded_at: guard.loaded_at,
            previous: kept,
        });
        dropped
    }

    /// The one accepted `alg` of the key in use; see [`Authenticator::algorithm`].
    pub fn algorithm(&self) -> Option<&'static str> {
        self.snapshot().current.algorithm()
    }

    /// Whether authentication is disabled (`--insecure-no-auth`).
    pub fn is_disabled(&self) -> bool {
        self.snapshot().current.is_disabled()
    }

    /// Whether [`Self::reload`] can do anything (the key came from a file).
    pub fn reloads(&self) -> bool {
        self.source.is_some()
    }

    /// The key state for `/v1/status`; `None` when authentication is disabled.
    pub fn status(&self) -> Option<KeyStatus> {
        self.status_at(Instant::now())
    }

    /// [`Self::status`] as of `now`.
    pub fn status_at(&self, now: Instant) -> Option<KeyStatus> {
        let keys = self.snapshot();
        if keys.current.is_disabled() {
            return None;
        }
        let last_reload_error = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|f| f.message.clone());
        Some(KeyStatus {
            file: self.source.as_ref().map(|s| s.path.clone()),
            loaded_at: rfc3339(keys.loaded_at),
            previous_key_expires_at: keys
                .previous
                .iter()
                .filter(|p| now < p.expires)
                .map(|p| p.expires_at)
                .max()
                .map(rfc3339),
            last_reload_error,
        })
    }

    fn snapshot(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed(&self, what: FailedOn, error: AuthConfigError) -> ReloadOutcome {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        let repeated = failure.as_ref().is_some_and(|f| f.what == what);
        *failure = Some(Failure {
            what,
            message: error.to_string(),
        });
        ReloadOutcome::Failed { error, repeated }
    }

    fn clear_failure(&self) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.snapshot();
        f.debug_struct("KeyRing")
            .field("current", &keys.current)
            .field("previous", &keys.previous.len())
            .field("file", &self.source.as_ref().map(|s| &s.path))
            .field("overlap", &self.overlap)
            .finish()
    }
}

/// Starts the task that calls [`KeyRing::reload`] and [`KeyRing::prune_at`] every `interval`
/// (the first time one `interval` after start-up), logging and counting what happens:
/// `info` for a new key and for a replaced key whose overlap ended, `warn` for a failed reload
/// (once per distinct failure), and `codex_sidecar_jwt_key_reloads_total{result}` with `result`
/// `reloaded` or `failed`. Needs a Tokio runtime; the task runs until aborted. Returns `None`
/// (and starts nothing) when `ring` has no key file or `interval` is zero.
pub fn spawn_watcher(
    ring: Arc<KeyRing>,
    interval: Duration,
    metrics: Arc<Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !ring.reloads() || interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let r = ring.clone();
            let Ok((outcome, dropped)) = tokio::task::spawn_blocking(move || {
                let outcome = r.reload();
                (outcome, r.prune_at(Instant::now()))
            })
            .await
            else {
                continue;
            };
            report(&ring, outcome, dropped, &metrics);
        }
    }))
}

fn report(ring: &KeyRing, outcome: ReloadOutcome, dropped: usize, metrics: &Metrics) {
    let file = ring
        .source
        .as_ref()
        .map(|s| s.path.display().to_string())
        .unwrap_or_default();
    match outcome {
        ReloadOutcome::Unchanged => {}
        ReloadOutcome::Reloaded {
            previous_expires_at,
        } => {
            metrics.jwt_key_reloads.get_or_create(&RELOADED).inc();
            let replaced = match previous_expires_at {
                Some(t) => format!("the replaced key is accepted until {}", rfc3339(t)),
                None => "the replaced key is refused from now on (overlap 0)".to_owned(),
            };
            let alg = ring.algorithm().unwrap_or("none");
            tracing::info!(%file, alg, "loaded a new API token key; {replaced}");
        }
        ReloadOutcome::Failed { error, repeated } => {
            if !repeated {
                metrics.jwt_key_reloads.get_or_create(&FAILED).inc();
                tracing::warn!(%error, "cannot reload the API token key; keeping the keys in use");
            }
        }
    }
    if dropped > 0 {
        tracing::info!(
            %file,
            dropped,
            "a replaced API token key reached the end of its overlap; no longer accepted"
        );
    }
}

const RELOADED: crate::metrics::ResultLabel = crate::metrics::ResultLabel { result: "reloaded" };
const FAILED: crate::metrics::ResultLabel = crate::metrics::ResultLabel { result: "failed" };

fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint_hs256;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    const KEY_A: &[u8] = b"key-a-0123456789abcdef0123456789abcdef";
    const KEY_B: &[u8] = b"key-b-fedcba9876543210fedcba9876543210";
    const OVERLAP: Duration = Duration::from_secs(300);

    fn token(key: &[u8], sub: &str) -> String {
        let t = mint_hs256(key, sub, None, Duration::from_secs(600)).expect("mint");
        format!("Bearer {t}")
    }

    fn ring(path: &Path, overlap: Duration) -> KeyRing {
        KeyRing::from_files(Some(path), None, None, false, overlap).expect("key ring")
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).expect("write key");
    }

    fn ok(ring: &KeyRing, header: &str, now: Instant) -> bool {
        ring.verify_at(Some(header), now).is_ok()
    }

    #[test]
    fn old_key_is_accepted_during_the_overlap_and_refused_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.key");
        write(&path, &[KEY_A, b"\n"].concat());
        let ring = ring(&path, OVERLAP);
        let (a, b) = (token(KEY_A, "alice"), token(KEY_B, "bob"));
        let t0 = Instant::now();
        assert!(ok(&ring, &a, t0));
        assert_eq!(ring.verify_at(Some(&b), t0), Err(AuthError::BadSignature));
        assert!(
            ring.status_at(t0)
                .expect("status")
                .previous_key_expires_at
                .is_none()
        );

        write(&path, &[KEY_B, b"\n"].concat());
        let wall = SystemTime::now();
        match ring.reload_at(t0, wall) {
            ReloadOutcome::Reloaded {
                previous_expires_at,
            } => assert_eq!(previous_expires_at, Some(wall + OVERLAP)),
            other => panic!("expected a reload, got {other:?}"),
        }
        // Both keys during the overlap.
        assert_eq!(
            ring.verify_at(Some(&b), t0).map(|p| p.subject),
            Ok("bob".to_owned())
        );
        let late = t0 + OVERLAP - Duration::from_secs(1);
        assert_eq!(
            ring.verify_at(Some(&a), late).map(|p| p.subject),
            Ok("alice".to_owned())
        );
        // An old-key token refused for its claims says why, during the overlap only.
        let expired_a = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "exp": 1}),
            &EncodingKey::from_secret(KEY_A),
        )
        .map(|t| format!("Bearer {t}"))
        .expect("sign");
        assert_eq!(
            ring.verify_at(Some(&expired_a), t0),
            Err(AuthError::Expired)
        );
        assert_eq!(
            ring.verify_at(Some(&expired_a), t0 + OVERLAP),
            Err(AuthError::BadSignature)
        );
        let status = ring.status_at(late).expect("status");
        assert_eq!(
            status.previous_key_expires_at,
            Some(rfc3339(wall + OVERLAP))
        );
        assert_eq!(status.loaded_at, rfc3339(wall));
        assert_eq!(status.file.as_deref(), Some(path.as_path()));
        // Only the new key after it.
        let after = t0 + OVERLAP;
        assert_eq!(
            ring.verify_at(Some(&a), after),
            Err(AuthError::BadSignature)
        );
        assert!(ok(&ring, &b, after));
        assert!(
            ring.status_at(after)
                .expect("status")
                .previous_key_expires_at
                .is_none()
        );
        assert_eq!(ring.prune_at(late), 0);
        assert_eq!(ring.prune_at(after), 1);
        assert_eq!(ring.snapshot().previous.len(), 0);
        // Non-signature errors come from the key in use, whatever the old keys say.
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "bob", "exp": 1}),
            &EncodingKey::from_secret(KEY_B),
        )
        .map(|t| format!("Bearer {t}"))
        .expect("sign");
        assert_eq!(ring.verify_at(Some(&expired), t0), Err(AuthError::Expired));
    }

    #[test]
    fn unchanged_file_is_not_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.key");
        write(&path, KEY_A);
        let ring = ring(&path, OVERLAP);
        let loaded = ring.status().expect("status").loaded_at;
        for _ in 0..3 {
            assert!(matches!(ring.reload(), ReloadOutcome::Unchanged));
        }
        assert_eq!(ring.status().expect("status").loaded_at, loaded);
        assert!(ring.snapshot().previous.is_empty());
    }

    #[test]
    fn failed_reload_keeps_the_keys_in_use_and_is_reported_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.key");
        write(&path, KEY_A);
        let ring = ring(&path, OVERLAP);
        let a = token(KEY_A, "alice");
        let now = Instant::now();
        let short = b"hunter2-too-short\n";
        let cases: [(&str, Option<&[u8]>); 4] = [
            ("cannot read", None),
            ("17 bytes", Some(short)),
            ("secret is empty", Some(b"\r\n")),
            ("file too large", Some(&[b'x'; 1024 * 1024 + 1])),
        ];
        for (want, content) in cases {
            match content {
                Some(bytes) => write(&path, bytes),
                None => std::fs::remove_file(&path).expect("remove"),
            }
            for repeated_want in [false, true] {
                match ring.reload() {
                    ReloadOutcome::Failed { error, repeated } => {
                        let msg = error.to_string();
                        assert!(msg.contains(want), "{msg}");
                        assert!(msg.contains("--jwt-secret-file"), "{msg}");
                        assert!(!msg.contains("hunter2"), "{msg}");
                        assert_eq!(repeated, repeated_want, "{msg}");
                    }
                    other => panic!("{want}: expected a failure, got {other:?}"),
                }
                assert!(ok(&ring, &a, now), "{want}: the key in use still works");
                let status = ring.status().expect("status");
                let shown = status.last_reload_error.expect("error shown");
                assert!(
                    shown.contains(want) && !shown.contains("hunter2"),
                    "{shown}"
                );
            }
        }
        // The key in use comes back: nothing to reload, and the error is cleared.
        write(&path, KEY_A);
        assert!(matches!(ring.reload(), ReloadOutcome::Unchanged));
        assert_eq!(ring.status().expect("status").last_reload_error, None);
        assert!(ring.snapshot().previous.is_empty());
        // A good key after a bad one is loaded.
        write(&path, short);
        assert!(matches!(ring.reload(), ReloadOutcome::Failed { .. }));
        write(&path, KEY_B);
        assert!(matches!(ring.reload(), ReloadOutcome::Reloaded { .. }));
        assert!(ok(&ring, &token(KEY_B, "bob"), now));
        assert_eq!(ring.status().expect("status").last_reload_error, None);
    }

    #[test]
    fn a_half_written_key_cannot_evict_the_previous_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.key");
        write(&path, KEY_A);
        let ring = ring(&path, OVERLAP);
        let t0 = Instant::now();
        // A poll catches the new key half-written (still 32+ bytes), then the whole key.
        write(&path, &KEY_B[..34]);
        assert!(matches!(
            ring.reload_at(t0, SystemTime::now()),
            ReloadOutcome::Reloaded { .. }
        ));
        write(&path, KEY_B);
        let t1 = t0 + Duration::from_secs(1);
        assert!(matches!(
            ring.reload_at(t1, SystemTime::now()),
            ReloadOutcome::Reloaded { .. }
        ));
        assert!(ok(&ring, &token(KEY_A, "alice"), t1));
        assert!(ok(&ring, &token(KEY_B, "bob"), t1));
        // At most MAX_PREVIOUS_KEYS replaced keys are kept.
        for i in 0..MAX_PREVIOUS_KEYS + 2 {
            write(
                &path,
                format!("{}-{i}", std::str::from_utf8(KEY_B).expect("ascii")).as_bytes(),
            );
            ring.reload_at(t1, SystemTime::now());
        }
        assert_eq!(ring.snapshot().previous.len(), MAX_PREVIOUS_KEYS);
    }

    #[test]
    fn zero_overlap_refuses_the_old_key_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.key");
        write(&path, KEY_A);
        let ring = ring(&path, Duration::ZERO);
        write(&path, KEY_B);
        assert!(matches!(
            ring.reload(),
            ReloadOutcome::Reloaded {
                previous_expires_at: None
            }
        ));
        let now = Instant::now();
        assert_eq!(
            ring.verify_at(Some(&token(KEY_A, "alice")), now),
            Err(AuthError::BadSignature)
        );
        assert!(ok(&ring, &token(KEY_B, "bob"), now));
    }

    #[test]
    fn public_key_rotation_may_change_the_algorithm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        write(
            &path,
            include_bytes!("../../tests/fixtures/rs256-public.pem"),
        );
        let ring = KeyRing::from_files(None, Some(&path), Some("api".into()), false, OVERLAP)
            .expect("ring");
        assert_eq!(ring.algorithm(), Some("RS256"));
        let claims = serde_json::json!({"sub": "carol", "aud": "api",
            "exp": jsonwebtoken::get_current_timestamp() + 600});
        let rs =
            EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/rs256-private.pem"))
                .expect("rsa");
        let es = EncodingKey::from_ec_pem(include_bytes!("../../tests/fixtures/es256-private.pem"))
            .expect("ec");
        let sign = |alg, key: &EncodingKey| {
            let t = jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign");
            format!("Bearer {t}")
        };
        let (rs_token, es_token) = (sign(Algorithm::RS256, &rs), sign(Algorithm::ES256, &es));
        // An unusable file (a private key) is refused and the RSA key kept.
        write(
            &path,
            include_bytes!("../../tests/fixtures/es256-private.pem"),
        );
        match ring.reload() {
            ReloadOutcome::Failed { error, .. } => {
                assert!(
                    error.to_string().contains("--jwt-public-key-file"),
                    "{error}"
                );
                assert!(error.to_string().contains("private key"), "{error}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        write(
            &path,
            include_bytes!("../../tests/fixtures/es256-public.pem"),
        );
        assert!(matches!(ring.reload(), ReloadOutcome::Reloaded { .. }));
        assert_eq!(ring.algorithm(), Some("ES256"));
        let now = Instant::now();
        assert!(ok(&ring, &es_token, now));
        assert!(
            ok(&ring, &rs_token, now),
            "the RSA key is still within its overlap"
        );
        assert_eq!(
            ring.verify_at(Some(&rs_token), now + OVERLAP),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn fixed_and_disabled_rings_never_reload() {
        let ring = KeyRing::from_files(None, None, None, true, OVERLAP).expect("disabled");
        assert!(ring.is_disabled() && !ring.reloads());
        assert!(matches!(ring.reload(), ReloadOutcome::Unchanged));
        assert_eq!(ring.status(), None);
        let fixed = KeyRing::fixed(Authenticator::hs256(KEY_A, None).expect("hs256"));
        assert!(!fixed.reloads());
        assert!(matches!(fixed.reload(), ReloadOutcome::Unchanged));
        assert_eq!(fixed.status().expect("status").file, None);
        assert!(fixed.verify(Some(&token(KEY_A, "alice"))).is_ok());
        assert!(matches!(
            KeyRing::from_files(None, None, None, false, OVERLAP),
            Err(AuthConfigError::NoKey)
        ));
    }

    #[test]
    fn no_key_material_in_debug_or_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.key");
        write(&path, KEY_A);
        let ring = ring(&path, OVERLAP);
        write(&path, KEY_B);
        ring.reload();
        write(&path, b"hunter2-too-short");
        ring.reload();
        let status = serde_json::to_string(&ring.status()).expect("json");
        let debug = format!("{ring:?}");
        for text in [status, debug] {
            for secret in ["key-a-0123", "key-b-fedc", "hunter2"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
    }

    #[test]
    fn key_ring_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<KeyRing>();
    }
}
