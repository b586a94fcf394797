//! The operator at scale against a real kube-apiserver (a plain `main`, `harness = false`).
//!
//! ```sh
//! cargo bench -p codex-e2e --bench operator               # 1000 agents
//! CODEX_BENCH_AGENTS=200 cargo bench -p codex-e2e --bench operator
//! ```
//!
//! Starts the harness's control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler of `tests/cluster/build-tools.sh`; no node, so every agent's pod stays
//! Pending, which is the state where the operator requeues most), installs the CRD, runs the
//! operator's controller in this process with a client that counts every API request, creates
//! the agents, and prints:
//! - `create`: agents created per second (the admin client, 16 at a time);
//! - `first pass`: time until every agent has a status, reconciles/s, reconciles per agent (the
//!   operator's own child and status writes must not each cause another), API requests per
//!   reconcile (reads served from the API server: GETs, the LISTs of a creating pod's Events);
//! - `steady`: over 60 s with nothing changing, reconciles/s and requests per reconcile (agents
//!   that are not Ready are looked at again every 30 s, by design);
//! - `memory`: this process's VmRSS before the controller starts and with every agent in its
//!   caches, and per agent.
//!
//! Prints `NOTICE: skipping` when the control-plane binaries are missing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use codex_e2e::cluster::{self, ControlPlane};
use codex_operator::crd::CodexAgent;
use codex_operator::metrics::Metrics;
use codex_operator::probe::{ProbeError, ProbeTarget, SidecarProbe, SidecarReport};
use codex_operator::reconcile::Context;
use codex_operator::resources::OperatorConfig;
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const NS: &str = "bench";

/// Pods never become ready here, so the probe is never called.
struct NoProbe;

impl SidecarProbe for NoProbe {
    fn status<'a>(
        &'a self,
        _target: &'a ProbeTarget,
    ) -> BoxFuture<'a, Result<SidecarReport, ProbeError>> {
        Box::pin(async { Err(ProbeError::Unauthorized) })
    }

    fn drain<'a>(
        &'a self,
        _target: &'a ProbeTarget,
        _on: bool,
    ) -> BoxFuture<'a, Result<codex_operator::probe::DrainReport, ProbeError>> {
        Box::pin(async { Err(ProbeError::Unauthorized) })
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn reconciles(m: &Metrics) -> u64 {
    m.reconciles.get()
}

/// A kube client whose every request increments `counter`.
async fn counting_client(
    path: &std::path::Path,
    counter: Arc<AtomicU64>,
) -> anyhow::Result<kube::Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counter.fetch_add(1, Ordering::Relaxed);
        req
    });
    Ok(kube::client::ClientBuilder::try_from(cfg)?
        .with_layer(&layer)
        .build())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("CODEX_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let bin = match cluster::bin_dir() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("NOTICE: skipping the operator benchmark: {e}");
            return Ok(());
        }
    };
    let cp = ControlPlane::start(&bin, "127.0.0.1".parse()?).await?;
    println!(
        "control plane v{} up in {:.1}s",
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../KUBERNETES_VERSION")
        )?
        .trim()
        .trim_start_matches('v'),
        cp.startup.as_secs_f64()
    );
    let crd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crd.yaml");
    cp.kubectl(&["apply", "--server-side", "-f", &crd.to_string_lossy()])
        .map_err(anyhow::Error::msg)?;
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/codexagents.agents.codex-operator.dev",
    ])
    .map_err(anyhow::Error::msg)?;
    cp.kubectl(&["create", "namespace", NS])
        .map_err(anyhow::Error::msg)?;

    let requests = Arc::new(AtomicU64::new(0));
    let client = counting_client(&cp.admin_kubeconfig, requests.clone()).await?;
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(Context::new(
        client,
        OperatorConfig {
            sidecar_image: "codex-operator:bench".into(),
            fs_group: Some(codex_operator::resources::SIDECAR_UID),
            ..Default::default()
        },
        Arc::new(NoProbe),
        metrics.clone(),
        Some("bench".into()),
    ));
    let rss_before = rss_kib();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(codex_operator::controller::run(
        ctx,
        codex_operator::controller::Options::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Create the agents with the admin client.
    let admin = cp.client().await?;
    let agents: Api<CodexAgent> = Api::namespaced(admin.clone(), NS);
    let t = Instant::now();
    let created = stream::iter(0..n)
        .map(|i| {
            let agents = agents.clone();
            async move {
                let a: CodexAgent = serde_json::from_value(json!({
                    "apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
                    "metadata": {"name": format!("agent-{i:05}"), "namespace": NS},
                    "spec": {"model": "gpt-5-codex",
                             "provider": {"type": "custom", "baseUrl": "http://model.bench.svc:8000/v1"},
                             "storage": {"size": "1Gi"}}
                }))
                .expect("agent");
                agents.create(&PostParams::default(), &a).await.is_ok()
            }
        })
        .buffer_unordered(16)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let create_s = t.elapsed().as_secs_f64();
    println!(
        "create:     {created} agents in {create_s:.1}s = {:.0} agents/s",
        created as f64 / create_s
    );

    // First pass: until every agent has a status.
    loop {
        let list = agents.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|a| a.status.as_ref().is_some_and(|s| !s.conditions.is_empty()))
            .count();
        if done >= created {
            break;
        }
        if t.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("only {done} of {created} agents have a status after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first_s = t.elapsed().as_secs_f64();
    let first_reconciles = reconciles(&metrics);
    let first_requests = requests.load(Ordering::Relaxed);
    println!(
        "first pass: {created} agents reconciled in {first_s:.1}s: {first_reconciles} reconciles = {:.1} reconciles/s, {:.2} reconciles per agent, {:.1} API requests per reconcile",
        first_reconciles as f64 / first_s,
        first_reconciles as f64 / created as f64,
        first_requests as f64 / first_reconciles.max(1) as f64
    );
    let rss_loaded = rss_kib();

    // Steady state.
    let window = Duration::from_secs(60);
    let (r0, q0) = (reconciles(&metrics), requests.load(Ordering::Relaxed));
    tokio::time::sleep(window).await;
    let (r1, q1) = (reconciles(&metrics), requests.load(Ordering::Relaxed));
    println!(
        "steady:     {} reconciles in {}s = {:.1} reconciles/s ({:.2} per agent per minute), {:.1} API requests per reconcile",
        r1 - r0,
        window.as_secs(),
        (r1 - r0) as f64 / window.as_secs_f64(),
        (r1 - r0) as f64 / created as f64,
        (q1 - q0) as f64 / (r1 - r0).max(1) as f64
    );
    println!(
        "memory:     VmRSS {:.1} MiB before the controller, {:.1} MiB with {created} agents cached = {:.1} KiB per agent",
        rss_before as f64 / 1024.0,
        rss_loaded as f64 / 1024.0,
        rss_loaded.saturating_sub(rss_before) as f64 / created as f64
    );
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    Ok(())
}
