//! Prometheus metrics and the `/metrics` + `/healthz` HTTP server (axum).
//!
//! Metrics (OpenMetrics text, prometheus-client):
//! - `codex_operator_reconciles_total` (counter): reconciles started.
//! - `codex_operator_reconcile_errors_total{error}` (counter): failed reconciles by error kind.
//! - `codex_operator_reconcile_duration_seconds` (histogram): reconcile wall time.
//! - `codex_operator_leader` (gauge): 1 while this replica holds the lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error kind (see `reconcile::Error::metric_label`).
    pub error: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Failed reconciles by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds.
    pub duration: Histogram,
    /// 1 while leader.
    pub leader: Gauge<i64, AtomicI64>,
    /// Set when the controller task ended while this replica still leads: `/healthz` then
    /// answers 503 so the kubelet restarts the container.
    pub controller_dead: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("codex_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile wall time in seconds",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            controller_dead: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Measures one reconcile; observes the duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and starts its timer.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile of kind `error`.
    pub fn reconcile_failed(&self, error: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `/metrics` and `/healthz` routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.controller_dead.load(std::sync::atomic::Ordering::Relaxed) {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the controller has stopped",
                    )
                } else {
                    (StatusCode::OK, "ok")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
                    .into_response()
            }),
        )
        .with_state(metrics)
}

/// Serves [`router`] on `addr` until the process ends.
///
/// # Errors
/// The bind or serve error (e.g. address in use).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => match codex_sidecar::settings::ipv4_fallback(addr, &e) {
            Some(v4) => tokio::net::TcpListener::bind(v4).await?,
            None => return Err(e),
        },
    };
    axum::serve(listener, router(metrics)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_endpoint_exposes_counters_and_healthz() {
        let m = Arc::new(Metrics::default());
        drop(m.reconcile_started());
        m.reconcile_failed("kube");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = router(m.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        assert!(text.contains("codex_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains("codex_operator_reconcile_errors_total{error=\"kube\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("codex_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        let health = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .expect("get");
        assert_eq!(health.status(), 200);
        m.controller_dead
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let health = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .expect("get");
        assert_eq!(
            health.status(),
            503,
            "a dead controller fails the liveness probe"
        );
    }
}
