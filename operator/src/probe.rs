//! Asking a running sidecar what it sees (`GET /v1/status`, docs/sidecar-contract.md): its GPUs
//! (with MIG slices and compute processes), what the model server serves (and where it holds
//! the model), and whether codex's command sandbox works in its container; and draining it
//! before its pod is replaced (`POST`/`DELETE /v1/drain`, see [`crate::rollout`]).
//!
//! The request carries a short-lived JWT minted from the agent's own key (ES256 with the
//! generated key pair's private key, HS256 with an `auth.jwtSecretRef` secret; claims `sub`,
//! `iat`, `exp` 60 s ahead, and `aud`: the agent's `jwtAudience`, or the default audience of a
//! key pair, see [`crate::resources::audience`]). The fetch is behind the
//! [`SidecarProbe`] trait so reconciler tests can fake it.
//!
//! During a key rotation the operator reads the new key from the Secret at once, while the pod
//! sees it only when the kubelet has updated the Secret volume (up to its sync period, about a
//! minute) and the sidecar has re-read the file (`--jwt-key-reload-interval`): [`AcceptedKeys`]
//! remembers the key each agent's pod last accepted and retries a 401 with it, so a rotation
//! does not flip `GPUVerified` or `SandboxReady`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::api_key::SigningKey;

/// Lifetime of a probe token.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// `sub` claim of probe tokens: the subject the sidecar lets drain it.
pub const TOKEN_SUBJECT: &str = codex_sidecar::settings::OPERATOR_SUBJECT;

/// One GPU as the sidecar reports it (`/v1/status` `gpu.devices[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// NVML index.
    pub index: u32,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// GPU UUID.
    #[serde(default)]
    pub uuid: String,
    /// Total memory in bytes.
    #[serde(default)]
    pub memory_total_bytes: u64,
    /// Used memory in bytes.
    #[serde(default)]
    pub memory_used_bytes: u64,
    /// MIG mode is on (`null`: the GPU has no MIG, or a sidecar older than this operator).
    #[serde(default)]
    pub mig_mode: Option<bool>,
    /// The MIG devices (slices) of this GPU the container sees.
    #[serde(default)]
    pub mig_devices: Vec<MigDevice>,
    /// The compute processes NVML lists on it (`null`: not listed).
    #[serde(default)]
    pub processes: Option<Vec<GpuProcess>>,
}

/// One MIG device as the sidecar reports it (`gpu.devices[].mig_devices[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigDevice {
    /// MIG index on the parent GPU.
    #[serde(default)]
    pub index: u32,
    /// `MIG-…` UUID.
    #[serde(default)]
    pub uuid: String,
    /// NVML's name, e.g. `NVIDIA A100-SXM4-40GB MIG 1g.5gb`.
    #[serde(default)]
    pub name: String,
    /// The profile, e.g. `1g.5gb` (as in the resource `nvidia.com/mig-1g.5gb`).
    #[serde(default)]
    pub profile: Option<String>,
    /// The slice's memory, bytes.
    #[serde(default)]
    pub memory_total_bytes: u64,
}

/// One compute process on a GPU (`gpu.devices[].processes[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Host PID.
    pub pid: u32,
    /// Its name, where NVML could read it.
    #[serde(default)]
    pub name: Option<String>,
    /// GPU memory it uses, bytes, where NVML says.
    #[serde(default)]
    pub used_memory_bytes: Option<u64>,
}

/// The `model_server` section of `/v1/status`: what the model server says about the model
/// (the sidecar's `codex_sidecar::model_server::ModelServerStatus`; `null` = unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelServerReport {
    /// `ollama`, `vllm`, `lmstudio`, `custom` or `openai`.
    #[serde(default)]
    pub engine: String,
    /// The Responses-API base URL.
    #[serde(default)]
    pub base_url: String,
    /// The server answered.
    #[serde(default)]
    pub reachable: Option<bool>,
    /// The model asked for.
    #[serde(default)]
    pub model: Option<String>,
    /// The server lists the model.
    #[serde(default)]
    pub served: Option<bool>,
    /// The model is loaded.
    #[serde(default)]
    pub loaded: Option<bool>,
    /// Share of the loaded model in GPU memory, 0..1 (Ollama `size_vram / size`).
    #[serde(default)]
    pub gpu_fraction: Option<f64>,
    /// The loaded model's GPU memory, bytes (Ollama `size_vram`).
    #[serde(default)]
    pub size_vram_bytes: Option<u64>,
    /// As `ollama ps` prints it: `100% GPU`, `48%/52% CPU/GPU`, `100% CPU`.
    #[serde(default)]
    pub processor: Option<String>,
    /// The models the server lists.
    #[serde(default)]
    pub models: Vec<String>,
    /// What could not be learnt, and why.
    #[serde(default)]
    pub error: Option<String>,
    /// When the sidecar asked (RFC 3339).
    #[serde(default)]
    pub checked_at: Option<String>,
}

/// The `gpu` section of `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GpuReport {
    /// NVML initialised and answered.
    pub available: bool,
    /// Driver version, when NVML answered.
    #[serde(default)]
    pub driver_version: Option<String>,
    /// Devices visible to the sidecar container.
    #[serde(default)]
    pub devices: Vec<GpuDevice>,
    /// NVML's error when it did not answer (e.g. no driver in the container).
    #[serde(default)]
    pub error: Option<String>,
}

/// The `sandbox_check` section of `/v1/status`: whether codex's command sandbox (bubblewrap)
/// works in the sidecar's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SandboxReport {
    /// The sidecar's `--sandbox` mode.
    pub mode: String,
    /// Commands can run under that mode.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default)]
    pub error: Option<String>,
    /// What to do about it, when `ok` is false.
    #[serde(default)]
    pub hint: Option<String>,
}

/// What the operator reads from `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SidecarReport {
    /// The `gpu` section.
    pub gpu: GpuReport,
    /// The `sandbox_check` section (absent from sidecars older than this operator).
    #[serde(default)]
    pub sandbox_check: Option<SandboxReport>,
    /// The `model_server` section (absent from sidecars older than this operator).
    #[serde(default)]
    pub model_server: Option<ModelServerReport>,
    /// The sidecar drains (`POST /v1/drain`): it starts no turn until `DELETE /v1/drain`.
    #[serde(default)]
    pub draining: bool,
    /// The `counts` section.
    #[serde(default)]
    pub counts: SidecarCounts,
}

/// The `counts` section of `/v1/status` (the parts the operator reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SidecarCounts {
    /// Sessions running a turn or compaction.
    #[serde(default)]
    pub running: u64,
    /// Messages waiting, all sessions.
    #[serde(default)]
    pub queued: u64,
}

/// The answer of `POST`/`DELETE /v1/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DrainReport {
    /// Whether the sidecar now drains.
    pub draining: bool,
    /// Turns and compactions still under way (0: the pod can go without cutting one).
    pub running: u64,
    /// Messages waiting; they are kept in the pod's volume and run in the next pod.
    #[serde(default)]
    pub queued: u64,
}

/// Where and how to reach one sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Base URL, e.g. `http://10.0.0.7:8080`.
    pub base_url: String,
    /// The key to sign with (from the agent's JWT Secret).
    pub key: SigningKey,
    /// `aud` claim to include ([`crate::resources::audience`]).
    pub audience: Option<String>,
}

/// Errors fetching `/v1/status`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The token could not be signed.
    #[error("minting the probe token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// Connection, timeout, non-2xx status or a body without a `gpu` section.
    #[error("GET /v1/status: {0}")]
    Http(#[from] reqwest::Error),
    /// The sidecar refused the token (401), from probes that do not go through reqwest.
    #[error("GET /v1/status: 401 Unauthorized")]
    Unauthorized,
}

impl ProbeError {
    /// The sidecar answered 401: it does not (yet) accept the token's key.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ProbeError::Http(e) if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED))
            || matches!(self, ProbeError::Unauthorized)
    }
}

/// What [`AcceptedKeys::status`] learnt.
#[derive(Debug)]
pub struct Probed {
    /// The report, or the error of the probe with the current key.
    pub report: Result<SidecarReport, ProbeError>,
    /// The pod still accepts only the key it accepted before (a rotation in progress): the
    /// report came from a probe signed with that key. Reconcile again soon.
    pub rotating: bool,
}

/// The key each agent's pod last accepted (keyed by `namespace/name`, holding the pod UID), so
/// that a probe during a key rotation can fall back to it. Never logged.
#[derive(Default)]
pub struct AcceptedKeys {
    keys: Mutex<HashMap<String, (String, SigningKey)>>,
}

impl AcceptedKeys {
    /// Probes `target` (signed with the Secret's current key); on a 401, probes again with the
    /// key pod `pod_uid` of `agent` (`namespace/name`) accepted last, if it differs.
    pub async fn status(
        &self,
        probe: &dyn SidecarProbe,
        agent: &str,
        pod_uid: &str,
        target: &ProbeTarget,
    ) -> Probed {
        let report = probe.status(target).await;
        match &report {
            Ok(_) => self.remember(agent, pod_uid, &target.key),
            Err(e) if e.is_unauthorized() => {
                let previous = self.keys.lock().ok().and_then(|m| {
                    m.get(agent)
                        .filter(|(uid, key)| uid == pod_uid && *key != target.key)
                        .map(|(_, key)| key.clone())
                });
                if let Some(key) = previous {
                    let old = ProbeTarget {
                        key,
                        ..target.clone()
                    };
                    if let Ok(r) = probe.status(&old).await {
                        return Probed {
                            report: Ok(r),
                            rotating: true,
                        };
                    }
                }
            }
            Err(_) => {}
        }
        Probed {
            report,
            rotating: false,
        }
    }

    fn remember(&self, agent: &str, pod_uid: &str, key: &SigningKey) {
        if let Ok(mut m) = self.keys.lock() {
            m.insert(agent.to_owned(), (pod_uid.to_owned(), key.clone()));
        }
    }

    /// The key pod `pod_uid` of `agent` (`namespace/name`) accepted last, if known.
    pub fn last_accepted(&self, agent: &str, pod_uid: &str) -> Option<SigningKey> {
        let m = self.keys.lock().ok()?;
        m.get(agent)
            .filter(|(uid, _)| uid == pod_uid)
            .map(|(_, key)| key.clone())
    }

    /// Forgets an agent (deleted).
    pub fn forget(&self, agent: &str) {
        if let Ok(mut m) = self.keys.lock() {
            m.remove(agent);
        }
    }
}

/// Fetches the sidecar's report.
pub trait SidecarProbe: Send + Sync {
    /// `GET {base_url}/v1/status` with a fresh JWT; returns its `gpu` and `sandbox_check`.
    fn status<'a>(
        &'a self,
        target: &'a ProbeTarget,
    ) -> BoxFuture<'a, Result<SidecarReport, ProbeError>>;

    /// `POST {base_url}/v1/drain` (`on`) or `DELETE` (`!on`) with a fresh JWT.
    fn drain<'a>(
        &'a self,
        target: &'a ProbeTarget,
        on: bool,
    ) -> BoxFuture<'a, Result<DrainReport, ProbeError>>;
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Signs a token for the sidecar API with `key` (its algorithm), valid for [`TOKEN_TTL`].
///
/// # Errors
/// jsonwebtoken's error if signing fails (an ES256 key that is not a P-256 private key).
pub fn mint_token(
    key: &SigningKey,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: TOKEN_SUBJECT,
        iat: now,
        exp: now + TOKEN_TTL.as_secs(),
        aud: audience,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(key.algorithm()),
        &claims,
        &key.encoding_key()?,
    )
}

/// The real probe: reqwest with a 3 s timeout.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    client: reqwest::Client,
}

impl HttpProbe {
    /// A probe whose requests time out after 3 s.
    ///
    /// # Errors
    /// reqwest's error when the HTTP client cannot be built (TLS backend initialisation).
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?,
        })
    }
}

impl HttpProbe {
    /// `method {base_url}{path}` with a fresh JWT; the JSON answer of a 2xx.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        target: &ProbeTarget,
        path: &str,
    ) -> Result<T, ProbeError> {
        let token = mint_token(&target.key, target.audience.as_deref())?;
        let url = format!("{}{path}", target.base_url.trim_end_matches('/'));
        Ok(self
            .client
            .request(method, url)
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

impl SidecarProbe for HttpProbe {
    fn status<'a>(
        &'a self,
        target: &'a ProbeTarget,
    ) -> BoxFuture<'a, Result<SidecarReport, ProbeError>> {
        Box::pin(self.call(reqwest::Method::GET, target, "/v1/status"))
    }

    fn drain<'a>(
        &'a self,
        target: &'a ProbeTarget,
        on: bool,
    ) -> BoxFuture<'a, Result<DrainReport, ProbeError>> {
        let method = if on {
            reqwest::Method::POST
        } else {
            reqwest::Method::DELETE
        };
        Box::pin(self.call(method, target, "/v1/drain"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sidecar that accepts exactly one key, which the test changes (the pod's key file).
    struct OneKey(Mutex<SigningKey>);

    impl SidecarProbe for OneKey {
        fn status<'a>(
            &'a self,
            target: &'a ProbeTarget,
        ) -> BoxFuture<'a, Result<SidecarReport, ProbeError>> {
            let ok = self.0.lock().is_ok_and(|k| *k == target.key);
            Box::pin(async move {
                if ok {
                    Ok(SidecarReport::default())
                } else {
                    Err(ProbeError::Unauthorized)
                }
            })
        }

        fn drain<'a>(
            &'a self,
            _target: &'a ProbeTarget,
            _on: bool,
        ) -> BoxFuture<'a, Result<DrainReport, ProbeError>> {
            Box::pin(async { Err(ProbeError::Unauthorized) })
        }
    }

    fn target(key: &[u8]) -> ProbeTarget {
        ProbeTarget {
            base_url: "http://10.0.0.7:8080".into(),
            key: SigningKey::Hs256(key.to_vec()),
            audience: None,
        }
    }

    #[tokio::test]
    async fn a_rotation_in_progress_is_probed_with_the_key_the_pod_still_has() {
        let old = b"old-key-old-key-old-key-old-key-1".to_vec();
        let new = b"new-key-new-key-new-key-new-key-2".to_vec();
        let sidecar = OneKey(Mutex::new(SigningKey::Hs256(old.clone())));
        let keys = AcceptedKeys::default();
        // Before the rotation: the current key works and is remembered.
        let p = keys.status(&sidecar, "ns/a", "uid-1", &target(&old)).await;
        assert!(p.report.is_ok() && !p.rotating);
        // The Secret has the new key, the pod not yet: the old key answers, rotation flagged.
        let p = keys.status(&sidecar, "ns/a", "uid-1", &target(&new)).await;
        assert!(p.report.is_ok(), "{:?}", p.report);
        assert!(p.rotating);
        // The pod has reloaded: the new key works and replaces the old one.
        *sidecar.0.lock().expect("lock") = SigningKey::Hs256(new.clone());
        let p = keys.status(&sidecar, "ns/a", "uid-1", &target(&new)).await;
        assert!(p.report.is_ok() && !p.rotating);
        // A key the pod never had is a real 401 (no fallback to a key it dropped).
        *sidecar.0.lock().expect("lock") =
            SigningKey::Hs256(b"third-key-third-key-third-key-333".to_vec());
        let p = keys.status(&sidecar, "ns/a", "uid-1", &target(&new)).await;
        assert!(p.report.as_ref().is_err_and(ProbeError::is_unauthorized));
        assert!(!p.rotating);
    }

    #[tokio::test]
    async fn a_new_pod_gets_no_fallback_to_the_old_pods_key() {
        let old = b"old-key-old-key-old-key-old-key-1".to_vec();
        let new = b"new-key-new-key-new-key-new-key-2".to_vec();
        let sidecar = OneKey(Mutex::new(SigningKey::Hs256(old.clone())));
        let keys = AcceptedKeys::default();
        keys.status(&sidecar, "ns/a", "uid-1", &target(&old)).await;
        let p = keys.status(&sidecar, "ns/a", "uid-2", &target(&new)).await;
        assert!(p.report.is_err() && !p.rotating);
    }

    #[test]
    fn token_verifies_with_the_same_key_and_audience() {
        let token =
            mint_token(&SigningKey::Hs256(b"secret-key".to_vec()), Some("agents")).expect("signs");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&["agents"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret-key"),
            &v,
        )
        .expect("verifies");
        assert_eq!(data.claims["sub"], "codex-operator");
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(b"other"),
                &v
            )
            .is_err()
        );
    }

    #[test]
    fn an_es256_token_verifies_with_the_public_key_only() {
        let pair = crate::api_key::generate_es256().expect("pair");
        let key = SigningKey::Es256(pair.private_pem.into_bytes());
        let token = mint_token(&key, Some("codex-sidecar")).expect("signs");
        let auth = codex_sidecar::auth::Authenticator::public_key_pem(
            pair.public_pem.as_bytes(),
            Some("codex-sidecar".into()),
        )
        .expect("public key");
        let who = auth
            .verify(Some(&format!("Bearer {token}")))
            .expect("accepted");
        assert_eq!(who.subject, "codex-operator");
        let other = crate::api_key::generate_es256().expect("pair");
        let auth = codex_sidecar::auth::Authenticator::public_key_pem(
            other.public_pem.as_bytes(),
            Some("codex-sidecar".into()),
        )
        .expect("public key");
        assert!(auth.verify(Some(&format!("Bearer {token}"))).is_err());
    }

    #[tokio::test]
    async fn http_probe_reads_the_gpu_and_sandbox_sections_with_a_bearer_token() {
        use axum::{Json, Router, http::HeaderMap, routing::get};
        let app = Router::new().route(
            "/v1/status",
            get(|h: HeaderMap| async move {
                let ok = h.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("Bearer ey"));
                if !ok {
                    return Err(axum::http::StatusCode::UNAUTHORIZED);
                }
                Ok(Json(serde_json::json!({"version": "0", "gpu": {"available": true, "driver_version": "570",
                    "devices": [{"index": 0, "name": "H100", "uuid": "GPU-1", "memory_total_bytes": 1, "memory_used_bytes": 0}],
                    "error": null},
                    "sandbox_check": {"mode": "workspace-write", "ok": false, "error": "bwrap: No permissions", "hint": "use danger-full-access"},
                    "model_server": {"engine": "ollama", "base_url": "http://127.0.0.1:11434/v1", "reachable": true,
                        "model": "gpt-oss:20b", "served": true, "loaded": true, "gpu_fraction": 1.0,
                        "size_bytes": 1, "size_vram_bytes": 1, "processor": "100% GPU", "version": "0.12.0",
                        "models": ["gpt-oss:20b"], "error": null, "checked_at": "2026-01-01T00:00:00Z"}})))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let probe = HttpProbe::new().expect("client");
        let report = probe
            .status(&ProbeTarget {
                base_url: format!("http://{addr}"),
                key: SigningKey::Hs256(b"k".to_vec()),
                audience: None,
            })
            .await
            .expect("probe");
        assert!(report.gpu.available);
        assert_eq!(report.gpu.devices.len(), 1);
        let ms = report.model_server.as_ref().expect("model_server");
        assert_eq!((ms.served, ms.gpu_fraction), (Some(true), Some(1.0)));
        let sandbox = report.sandbox_check.expect("sandbox_check");
        assert!(!sandbox.ok);
        assert_eq!(sandbox.error.as_deref(), Some("bwrap: No permissions"));
    }
}
