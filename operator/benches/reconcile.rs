//! Reconcile throughput and memory with 1,000 CodexAgents (a plain `main`, `harness = false`).
//!
//! ```sh
//! cargo bench -p codex-operator --bench reconcile            # 1000 agents
//! CODEX_BENCH_AGENTS=5000 cargo bench -p codex-operator --bench reconcile
//! ```
//!
//! The API server is an in-memory fake behind `kube::Client::new` (a `tower::service_fn` that
//! stores objects by URL path), so the numbers measure the operator's own cost per reconcile:
//! building children, hashing, (de)serialising every request and response, status computation.
//! Real API-server latency is not included.
//!
//! Printed:
//! - `create pass`: first reconcile of every agent (creates Secret, ConfigMap, PVC, Service, Pod,
//!   status), agents/s and API requests/s;
//! - `no-op pass`: the same agents again with their status current; must send no writes;
//! - `memory`: VmRSS of this process before and after a reflector store (the controller's cache
//!   of CodexAgents) holds every agent with a realistic status, and bytes per agent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use codex_operator::crd::CodexAgent;
use codex_operator::metrics::Metrics;
use codex_operator::probe::{ProbeError, ProbeTarget, SidecarProbe, SidecarReport};
use codex_operator::reconcile::{self, Context};
use codex_operator::resources::OperatorConfig;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};

const NS: &str = "bench";

#[derive(Clone, Default)]
struct FakeApi {
    objects: Arc<Mutex<HashMap<String, Value>>>,
    requests: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .body(Body::from(bytes))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404})
}

impl FakeApi {
    async fn handle(self, req: Request<Body>) -> Response<Body> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if method != Method::GET {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(mut objects) = self.objects.lock() else {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, &not_found());
        };
        match method {
            Method::GET => match objects.get(&path) {
                Some(v) => reply(StatusCode::OK, v),
                None => reply(StatusCode::NOT_FOUND, &not_found()),
            },
            Method::POST => {
                if path.contains("/events") {
                    return reply(StatusCode::CREATED, &body);
                }
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                objects.insert(format!("{path}/{name}"), body.clone());
                reply(StatusCode::CREATED, &body)
            }
            Method::PATCH => {
                if let Some(agent_path) = path.strip_suffix("/status") {
                    let Some(agent) = objects.get_mut(agent_path) else {
                        return reply(StatusCode::NOT_FOUND, &not_found());
                    };
                    agent["status"] = body["status"].clone();
                    return reply(StatusCode::OK, agent);
                }
                let mut obj = body;
                obj["metadata"]["uid"] = json!("uid");
                obj["metadata"]["resourceVersion"] = json!("1");
                objects.insert(path, obj.clone());
                reply(StatusCode::OK, &obj)
            }
            Method::DELETE => match objects.remove(&path) {
                Some(v) => reply(StatusCode::OK, &v),
                None => reply(StatusCode::NOT_FOUND, &not_found()),
            },
            _ => reply(StatusCode::METHOD_NOT_ALLOWED, &not_found()),
        }
    }
}

struct NoProbe;

impl SidecarProbe for NoProbe {
    fn status<'a>(
        &'a self,
        _: &'a ProbeTarget,
    ) -> BoxFuture<'a, Result<SidecarReport, ProbeError>> {
        Box::pin(async { Ok(SidecarReport::default()) })
    }

    fn drain<'a>(
        &'a self,
        _: &'a ProbeTarget,
        on: bool,
    ) -> BoxFuture<'a, Result<codex_operator::probe::DrainReport, ProbeError>> {
        Box::pin(async move {
            Ok(codex_operator::probe::DrainReport {
                draining: on,
                ..Default::default()
            })
        })
    }
}

fn agent(i: usize) -> CodexAgent {
    let spec = match i % 3 {
        0 => json!({"model": "gpt-5.1-codex", "provider": {"type": "openai",
                    "authJsonSecretRef": {"name": "codex-auth", "key": "auth.json"}}}),
        1 => {
            json!({"model": "gpt-5.1-codex", "provider": {"type": "custom", "baseUrl": "https://gw.example/v1"},
                    "gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3", "runtimeClassName": "nvidia"}})
        }
        _ => {
            json!({"model": "gpt-oss:20b", "provider": {"type": "local", "local": {"engine": "ollama"}},
                    "gpu": {"count": 1}, "sidecar": {"maxLiveSessions": 4}})
        }
    };
    serde_json::from_value(json!({
        "apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
        "metadata": {"name": format!("a{i}"), "namespace": NS, "uid": format!("uid-{i}"), "generation": 1,
                     "resourceVersion": "1", "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("bench agent {i}: {e}"))
}

fn agent_path(i: usize) -> String {
    format!("/apis/agents.codex-operator.dev/v1alpha1/namespaces/{NS}/codexagents/a{i}")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn pass(ctx: &Arc<Context>, agents: &[CodexAgent], concurrency: usize) -> f64 {
    use futures::StreamExt;
    let start = Instant::now();
    let results: Vec<_> = futures::stream::iter(agents.iter().cloned())
        .map(|a| reconcile::reconcile(Arc::new(a), ctx.clone()))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 0, "every reconcile succeeds");
    start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::var("CODEX_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let concurrency = 16;

    // Memory first, on a quiet heap: the controller's store of CodexAgents with statuses.
    let before = rss_kib();
    let mut writer: Writer<CodexAgent> = Writer::default();
    let reader = writer.as_reader();
    for i in 0..n {
        let mut a = agent(i);
        let conditions: Vec<Value> = [
            "Ready",
            "PodScheduled",
            "ModelReady",
            "GPUVerified",
            "Suspended",
        ]
        .iter()
        .map(|t| {
            json!({"type": t, "status": "True", "reason": "Ready", "message": "the agent serves",
                       "lastTransitionTime": "2026-11-01T00:00:00Z", "observedGeneration": 1})
        })
        .collect();
        a.status = Some(serde_json::from_value(json!({
            "phase": "Ready", "endpoint": format!("http://a{i}.{NS}.svc:8080"), "podName": format!("a{i}"),
            "nodeName": "gpu-node-1", "observedGeneration": 1, "jwtSecretName": format!("a{i}-jwt"),
            "conditions": conditions,
        }))
        .unwrap_or_default());
        writer.apply_watcher_event(&watcher::Event::Apply(a));
    }
    let after = rss_kib();
    println!(
        "memory: {n} CodexAgents in the reflector store: VmRSS {before} KiB -> {after} KiB (+{} KiB, {} bytes/agent); store holds {}",
        after.saturating_sub(before),
        after.saturating_sub(before) * 1024 / n.max(1) as u64,
        reader.len()
    );

    let api = FakeApi::default();
    let agents: Vec<CodexAgent> = (0..n).map(agent).collect();
    if let Ok(mut objects) = api.objects.lock() {
        for (i, a) in agents.iter().enumerate() {
            objects.insert(agent_path(i), serde_json::to_value(a).unwrap_or_default());
        }
        objects.insert(
            format!("/api/v1/namespaces/{NS}/secrets/codex-auth"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "codex-auth"}, "data": {"auth.json": "e30="}}),
        );
    }
    let svc_api = api.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let api = svc_api.clone();
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    let client = kube::Client::new(service, NS);
    let ctx = Arc::new(Context::new(
        client,
        OperatorConfig {
            sidecar_image: "registry.test/codex-sidecar:1".into(),
            fs_group: Some(codex_operator::resources::SIDECAR_UID),
            ..Default::default()
        },
        Arc::new(NoProbe),
        Arc::new(Metrics::default()),
        Some("bench".into()),
    ));

    let secs = pass(&ctx, &agents, concurrency).await;
    let reqs = api.requests.swap(0, Ordering::Relaxed);
    let writes = api.writes.swap(0, Ordering::Relaxed);
    println!(
        "create pass: {n} agents in {secs:.3} s = {:.0} CodexAgents/s ({reqs} requests, {writes} writes, {:.0} requests/s, concurrency {concurrency})",
        n as f64 / secs,
        reqs as f64 / secs
    );

    // Second pass: the agents as the controller would see them now (status written).
    let current: Vec<CodexAgent> = (0..n)
        .map(|i| {
            let stored = api
                .objects
                .lock()
                .ok()
                .and_then(|o| o.get(&agent_path(i)).cloned())
                .unwrap_or_default();
            serde_json::from_value(stored).unwrap_or_else(|_| agent(i))
        })
        .collect();
    let secs = pass(&ctx, &current, concurrency).await;
    let reqs = api.requests.swap(0, Ordering::Relaxed);
    let writes = api.writes.swap(0, Ordering::Relaxed);
    println!(
        "no-op pass: {n} agents in {secs:.3} s = {:.0} CodexAgents/s ({reqs} requests, {writes} writes)",
        n as f64 / secs
    );
    assert_eq!(writes, 0, "a no-op reconcile sends no writes");
    println!("memory: process VmRSS at exit {} KiB", rss_kib());
}
