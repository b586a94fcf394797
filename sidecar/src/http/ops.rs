//! Operational endpoints: `/healthz` (the process answers), `/readyz` (codex runs and the model
//! provider answers), `/metrics` (Prometheus text) and `/v1/status` (versions, provider, limits,
//! counts, GPU).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AppState, Owner};
use crate::error::ApiError;
use crate::redact::display_url;
use crate::settings::OPERATOR_SUBJECT;

/// How long a readiness result is reused.
const READY_TTL: Duration = Duration::from_secs(5);

/// Caches the last readiness check so probes do not hammer the provider, and runs at most one
/// check at a time: concurrent (unauthenticated) callers wait for it and share its answer, so
/// 40 calls at once start one `codex --version`, not 40.
#[derive(Debug, Default)]
pub struct ReadyCache {
    last: Mutex<Option<(Instant, bool, Value)>>,
    checking: tokio::sync::Mutex<()>,
}

impl ReadyCache {
    fn fresh(&self) -> Option<(bool, Value)> {
        let guard = self.last.lock().ok()?;
        let (at, ok, body) = guard.as_ref()?;
        (at.elapsed() < READY_TTL).then(|| (*ok, body.clone()))
    }
}

/// `GET /healthz` -> 200 `{"status":"ok"}` while the process serves.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz` -> 200 when `codex --version` runs, the provider's `/models` answers with any
/// HTTP status below 500 but 404 (a base URL without the model API), and the model server does not say that it lacks the model
/// ([`crate::model_server::ModelServerStatus::served`] is not `false`); 503 otherwise. Body:
/// `{"ready", "checks":{"codex":{...},"provider":{...},"model":{"ok","model","served","error"?}}}`.
pub async fn readyz(State(st): State<AppState>) -> Response {
    if let Some((ok, body)) = st.ready.fresh() {
        return ready_response(ok, body);
    }
    let _one_at_a_time = st.ready.checking.lock().await;
    // Whoever held the lock before may just have answered.
    if let Some((ok, body)) = st.ready.fresh() {
        return ready_response(ok, body);
    }
    let cfg = &st.engine.ctx().config;
    let codex = crate::codex::rpc::codex_version(&cfg.codex_bin).await;
    let url = cfg.provider_probe_url();
    let provider = probe(&url).await;
    let server = crate::model_server::check(cfg).await;
    let model_ok = server.served != Some(false);
    let ok = codex.is_ok() && provider.is_ok() && model_ok;
    let body = json!({
        "ready": ok,
        "checks": {
            "codex": match &codex {
                Ok(v) => json!({"ok": true, "version": v}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            "provider": match &provider {
                Ok(status) => json!({"ok": true, "url": display_url(&url), "status": status}),
                Err(e) => json!({"ok": false, "url": display_url(&url), "error": e}),
            },
            "model": if model_ok {
                json!({"ok": true, "model": server.model, "served": server.served})
            } else {
                json!({"ok": false, "model": server.model, "served": false,
                       "error": server.failure().map(|f| f.1)})
            },
        }
    });
    if let Ok(mut guard) = st.ready.last.lock() {
        *guard = Some((Instant::now(), ok, body.clone()));
    }
    ready_response(ok, body)
}

fn ready_response(ok: bool, body: Value) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn probe(url: &str) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    match client.get(url).send().await {
        // Something answers there, but not a model API: the base URL is wrong (a missing `/v1`).
        Ok(r) if r.status().as_u16() == 404 => Err(
            "HTTP 404: no model list at this URL; check --provider-base-url (it usually ends in /v1)"
                .to_owned(),
        ),
        // 401/403 still prove a model API answers (the key is codex's business).
        Ok(r) if r.status().as_u16() < 500 => Ok(r.status().as_u16()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) if e.is_timeout() => Err("timed out after 3 s".to_owned()),
        Err(e) if e.is_connect() => Err("connection refused or unreachable".to_owned()),
        Err(_) => Err("request failed".to_owned()),
    }
}

/// `GET /metrics` -> Prometheus text exposition.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let c = st.engine.counts();
    st.metrics.live_sessions.set(c.live as i64);
    st.metrics.sessions.set(c.sessions as i64);
    st.metrics.queue_depth.set(c.queued as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

/// `POST /v1/drain` (the operator's token only: `sub` [`OPERATOR_SUBJECT`]) -> 200
/// `{"draining": true, "running": N, "queued": M}`: from now on no turn or compaction starts
/// (messages are still accepted and kept); `running` is the number of turns and compactions
/// still going. Idempotent: the operator calls it until `running` is 0, then replaces the pod.
///
/// # Errors
/// 403 `forbidden` for any other subject.
pub async fn drain(State(st): State<AppState>, owner: Owner) -> Result<Json<Value>, ApiError> {
    set_draining(&st, &owner, true)
}

/// `DELETE /v1/drain` (the operator's token only) -> 200 `{"draining": false, ...}`: turns start
/// again, beginning with the messages that waited.
///
/// # Errors
/// 403 `forbidden` for any other subject.
pub async fn undrain(State(st): State<AppState>, owner: Owner) -> Result<Json<Value>, ApiError> {
    set_draining(&st, &owner, false)
}

fn set_draining(st: &AppState, owner: &Owner, on: bool) -> Result<Json<Value>, ApiError> {
    if owner.0 != OPERATOR_SUBJECT {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("only the operator (sub `{OPERATOR_SUBJECT}`) may drain the sidecar"),
        ));
    }
    if on != st.engine.draining() {
        tracing::info!(
            draining = on,
            "drain {}",
            if on { "started" } else { "ended" }
        );
    }
    st.engine.set_draining(on);
    let c = st.engine.counts();
    Ok(Json(
        json!({"draining": on, "running": st.engine.busy(), "queued": c.queued}),
    ))
}

/// `GET /v1/status` (authenticated) -> versions, provider, model, sandbox (and whether it
/// works here, and what enforces it: `sandbox_check`), `isolation` (whether sessions are kept
/// out of each other's files: [`crate::codex::isolation::IsolationStatus`]), `auth` (the accepted `alg`, or `none`), `auth_key` (the key
/// file, when its key was loaded, until when a replaced key is still accepted, the last reload
/// error: [`crate::auth::reload::KeyStatus`]; `null` without authentication), limits, counts,
/// GPU ([`crate::gpu::GpuStatus`]) and `model_server` (what the model server serves, asked now:
/// [`crate::model_server::ModelServerStatus`]).
pub async fn status(State(st): State<AppState>, Owner(_owner): Owner) -> Json<Value> {
    let cfg = &st.engine.ctx().config;
    let gpu = st.gpu.clone();
    let gpu_status = tokio::task::spawn_blocking(move || gpu.status()).await.ok();
    let model_server = crate::model_server::check(cfg).await;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "codex_version": cfg.codex_version,
        "provider": cfg.provider.as_str(),
        "provider_base_url": cfg.provider_base_url.as_deref().map(display_url),
        "model": cfg.model,
        "approval_policy": cfg.approval_policy.as_str(),
        "sandbox": cfg.sandbox.as_str(),
        "sandbox_check": *st.sandbox,
        "isolation": cfg.isolation.status(),
        "auth": st.auth.algorithm().unwrap_or("none"),
        "auth_key": st.auth.status(),
        "limits": {
            "max_live_sessions": cfg.max_live_sessions,
            "warm_children": cfg.warm_children,
            "compact_at_tokens": cfg.compact_at_tokens,
            "idle_timeout_secs": cfg.idle_timeout.as_secs(),
            "turn_timeout_secs": cfg.turn_timeout.as_secs(),
            "body_bytes": cfg.limits.body_bytes,
            "text_bytes": cfg.limits.text_bytes,
            "message_body_bytes": cfg.limits.message_body_bytes,
            "image_bytes": cfg.limits.image_bytes,
            "message_image_bytes": cfg.limits.message_image_bytes,
            "images_per_message": cfg.limits.images_per_message,
            "queued_messages": cfg.limits.queued_messages,
            "sessions_per_owner": cfg.limits.sessions_per_owner,
            "polls_per_owner": cfg.limits.polls_per_owner,
        },
        "counts": st.engine.counts(),
        "draining": st.engine.draining(),
        "uptime_seconds": st.started.elapsed().as_secs(),
        "gpu": gpu_status,
        "model_server": model_server,
    }))
}
