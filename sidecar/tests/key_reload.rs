//! JWT key rotation through the real router: a new key written to the key file (the way the
//! kubelet updates a Secret volume: a `..data` symlink swapped atomically) is accepted without a
//! restart, the replaced key keeps working for the overlap, and an unusable file changes nothing.
//! Needs no codex binary: these requests are answered before any session runs.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use codex_sidecar::auth::mint_hs256;
use codex_sidecar::auth::reload::{KeyRing, spawn_watcher};
use codex_sidecar::config::{CodexAuth, Config, Limits};
use codex_sidecar::engine::Engine;
use codex_sidecar::gpu::GpuProbe;
use codex_sidecar::http::{AppState, ops::ReadyCache, router};
use codex_sidecar::metrics::Metrics;
use codex_sidecar::redact::Redactor;
use codex_sidecar::settings::{ApprovalDecision, ApprovalPolicy, ProviderKind, SandboxMode};
use tower::ServiceExt as _;

const KEY_A: &str = "rotation-key-a-0123456789abcdef0123456789abcdef";
const KEY_B: &str = "rotation-key-b-fedcba9876543210fedcba9876543210";
const POLL: Duration = Duration::from_millis(50);

/// A Secret volume as the kubelet lays it out: `<dir>/jwt.key -> ..data/jwt.key`,
/// `..data -> ..<version>/`; [`SecretVolume::update`] swaps `..data` with a rename.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path, key: &str) -> Self {
        let mut v = Self {
            dir: dir.to_path_buf(),
            version: 0,
        };
        v.update(key.as_bytes());
        symlink("..data/jwt.key", dir.join("jwt.key")).expect("key symlink");
        v
    }

    fn update(&mut self, bytes: &[u8]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).expect("version dir");
        std::fs::write(self.dir.join(&version).join("jwt.key"), bytes).expect("write key");
        let tmp = self.dir.join("..data_tmp");
        symlink(&version, &tmp).expect("data symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }

    fn key_file(&self) -> PathBuf {
        self.dir.join("jwt.key")
    }
}

struct Server {
    app: axum::Router,
    watcher: tokio::task::JoinHandle<()>,
    _state_dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn config(state_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        state_dir: state_dir.to_path_buf(),
        codex_bin: PathBuf::from("/nonexistent/codex"),
        codex_version: "codex-cli 0.0.0-test".into(),
        codex_auth: CodexAuth::None,
        provider: ProviderKind::Custom,
        provider_base_url: Some("http://127.0.0.1:9/v1".into()),
        provider_env_key: None,
        stream_idle_timeout_ms: None,
        model: None,
        codex_config: Vec::new(),
        approval_policy: ApprovalPolicy::Never,
        approval_decision: ApprovalDecision::Decline,
        sandbox: SandboxMode::DangerFullAccess,
        compact_at_tokens: 0,
        max_live_sessions: 1,
        warm_children: 0,
        idle_timeout: Duration::from_secs(60),
        turn_timeout: Duration::from_secs(60),
        mcp_servers: Default::default(),
        limits: Limits::default(),
        insecure_no_auth: false,
        jwt_key_reload_interval: Some(POLL),
        jwt_key_overlap: Duration::from_secs(300),
        server: Default::default(),
        resume_attempts: codex_sidecar::config::DEFAULT_RESUME_ATTEMPTS,
        isolation: codex_sidecar::codex::isolation::Isolation::off(),
    }
}

fn server(key_file: &Path, overlap: Duration) -> Server {
    let state_dir = tempfile::tempdir().expect("state dir");
    let metrics = Arc::new(Metrics::new());
    let ring = KeyRing::from_files(Some(key_file), None, None, false, overlap).expect("key ring");
    let auth = Arc::new(ring);
    let watcher = spawn_watcher(auth.clone(), POLL, metrics.clone()).expect("watcher");
    let engine = Engine::open(
        config(state_dir.path()),
        metrics.clone(),
        Arc::new(Redactor::new()),
    )
    .expect("engine");
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let state = AppState {
        engine,
        auth,
        metrics,
        gpu: Arc::new(GpuProbe::unavailable("test")),
        sandbox: Arc::new(codex_sidecar::codex::sandbox::SandboxCheck {
            mode: "danger-full-access",
            ok: true,
            error: None,
            hint: None,
            enforced_by: "none",
        }),
        ready: Arc::new(ReadyCache::default()),
        started: Instant::now(),
        shutdown,
    };
    Server {
        app: router(state),
        watcher,
        _state_dir: state_dir,
    }
}

fn token(key: &str, sub: &str) -> String {
    mint_hs256(key.as_bytes(), sub, None, Duration::from_secs(600)).expect("mint")
}

/// `GET path` with `token`; returns the status and the body.
async fn get(server: &Server, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = server
        .app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `GET path` with `token` until it answers `want` (at most 10 s).
async fn wait_for(server: &Server, path: &str, token: &str, want: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(server, path, Some(token)).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} {body}, want {want}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn metric(server: &Server, result: &str) -> Option<String> {
    let (_, text) = get(server, "/metrics", None).await;
    let prefix = format!("codex_sidecar_jwt_key_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

#[tokio::test]
async fn rotated_key_is_used_without_restart_and_the_old_one_during_the_overlap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut volume = SecretVolume::new(dir.path(), &format!("{KEY_A}\n"));
    let server = server(&volume.key_file(), Duration::from_secs(300));
    let (a, b) = (token(KEY_A, "alice"), token(KEY_B, "bob"));

    assert_eq!(
        get(&server, "/v1/sessions", Some(&a)).await.0,
        StatusCode::OK
    );
    let (status, body) = get(&server, "/v1/sessions", Some(&b)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("invalid_signature"), "{body}");

    // The Secret gets a new key (with a CRLF ending: read like the operator reads it).
    volume.update(format!("{KEY_B}\r\n").as_bytes());
    wait_for(&server, "/v1/sessions", &b, StatusCode::OK).await;
    let (status, body) = get(&server, "/v1/sessions", Some(&a)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the replaced key works during the overlap: {body}"
    );
    assert_eq!(metric(&server, "reloaded").await.as_deref(), Some("1"));

    let (status, body) = get(&server, "/v1/status", Some(&b)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["auth"], "HS256");
    assert!(
        v["auth_key"]["previous_key_expires_at"].is_string(),
        "{body}"
    );
    assert!(v["auth_key"]["loaded_at"].is_string(), "{body}");
    assert!(v["auth_key"]["last_reload_error"].is_null(), "{body}");

    // A key that is too short is refused: both keys keep working, the failure is counted once
    // and shown, never with the key's bytes.
    volume.update(b"too-short-key-xyz\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "failed").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the failed reload is not counted"
        );
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(POLL * 4).await;
    assert_eq!(metric(&server, "failed").await.as_deref(), Some("1"));
    assert_eq!(
        get(&server, "/v1/sessions", Some(&b)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&server, "/v1/sessions", Some(&a)).await.0,
        StatusCode::OK
    );
    let (_, body) = get(&server, "/v1/status", Some(&b)).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let error = v["auth_key"]["last_reload_error"]
        .as_str()
        .expect("error shown");
    assert!(
        error.contains("17 bytes") && error.contains("at least 32"),
        "{error}"
    );
    assert!(!body.contains("too-short-key"), "{body}");
}

#[tokio::test]
async fn without_an_overlap_the_replaced_key_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut volume = SecretVolume::new(dir.path(), KEY_A);
    let server = server(&volume.key_file(), Duration::ZERO);
    let (a, b) = (token(KEY_A, "alice"), token(KEY_B, "bob"));
    assert_eq!(
        get(&server, "/v1/sessions", Some(&a)).await.0,
        StatusCode::OK
    );

    volume.update(KEY_B.as_bytes());
    wait_for(&server, "/v1/sessions", &b, StatusCode::OK).await;
    let (status, body) = get(&server, "/v1/sessions", Some(&a)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("invalid_signature"), "{body}");
    let (_, body) = get(&server, "/v1/status", Some(&b)).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v["auth_key"]["previous_key_expires_at"].is_null(), "{body}");
}
