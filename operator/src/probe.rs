//! Asking a running sidecar what it sees (`GET /v1/status`, docs/sidecar-contract.md): its GPUs,
//! and whether codex's command sandbox works in its container.
//!
//! The request carries a short-lived HS256 JWT minted from the agent's own key (claims `sub`,
//! `iat`, `exp` 60 s ahead, and `aud` when the agent sets `jwtAudience`). The fetch is behind the
//! [`SidecarProbe`] trait so reconciler tests can fake it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Lifetime of a probe token.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// `sub` claim of probe tokens.
pub const TOKEN_SUBJECT: &str = "codex-operator";

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SidecarReport {
    /// The `gpu` section.
    pub gpu: GpuReport,
    /// The `sandbox_check` section (absent from sidecars older than this operator).
    #[serde(default)]
    pub sandbox_check: Option<SandboxReport>,
}

/// Where and how to reach one sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Base URL, e.g. `http://10.0.0.7:8080`.
    pub base_url: String,
    /// The HS256 key (the Secret's bytes, trailing newline removed).
    pub key: Vec<u8>,
    /// `aud` claim to include (the agent's `jwtAudience`).
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
}

/// Fetches the sidecar's report.
pub trait SidecarProbe: Send + Sync {
    /// `GET {base_url}/v1/status` with a fresh JWT; returns its `gpu` and `sandbox_check`.
    fn status<'a>(
        &'a self,
        target: &'a ProbeTarget,
    ) -> BoxFuture<'a, Result<SidecarReport, ProbeError>>;
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Signs an HS256 token for the sidecar API valid for [`TOKEN_TTL`].
///
/// # Errors
/// jsonwebtoken's error if signing fails.
pub fn mint_token(
    key: &[u8],
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
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
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

impl SidecarProbe for HttpProbe {
    fn status<'a>(
        &'a self,
        target: &'a ProbeTarget,
    ) -> BoxFuture<'a, Result<SidecarReport, ProbeError>> {
        Box::pin(async move {
            let token = mint_token(&target.key, target.audience.as_deref())?;
            let body: SidecarReport = self
                .client
                .get(format!(
                    "{}/v1/status",
                    target.base_url.trim_end_matches('/')
                ))
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok(body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_verifies_with_the_same_key_and_audience() {
        let token = mint_token(b"secret-key", Some("agents")).expect("signs");
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
                    "sandbox_check": {"mode": "workspace-write", "ok": false, "error": "bwrap: No permissions", "hint": "use danger-full-access"}})))
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
                key: b"k".to_vec(),
                audience: None,
            })
            .await
            .expect("probe");
        assert!(report.gpu.available);
        assert_eq!(report.gpu.devices.len(), 1);
        let sandbox = report.sandbox_check.expect("sandbox_check");
        assert!(!sandbox.ok);
        assert_eq!(sandbox.error.as_deref(), Some("bwrap: No permissions"));
    }
}
