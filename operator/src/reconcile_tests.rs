//! Reconciler tests through kube's mock transport: every request is asserted in order.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::crd::{ALLOW_USE_LABEL, CodexAgent};
use crate::fixtures::{self, ApiServerVerifier, agent, conflict_status, testing, timeout};
use crate::probe::{GpuDevice, GpuReport, MigDevice, ModelServerReport};
use crate::reconcile::{self, Context};
use crate::resources::{self, OperatorConfig};

const JWT: &str = "/api/v1/namespaces/ns/secrets/a1-jwt";
const SECRETS: &str = "/api/v1/namespaces/ns/secrets";
const CM: &str = "/api/v1/namespaces/ns/configmaps/a1-config";
const PVC: &str = "/api/v1/namespaces/ns/persistentvolumeclaims/a1-state";
const SVC: &str = "/api/v1/namespaces/ns/services/a1";
const POD: &str = "/api/v1/namespaces/ns/pods/a1";
const STATUS: &str = "/apis/agents.codex-operator.dev/v1alpha1/namespaces/ns/codexagents/a1/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn gpu_agent() -> CodexAgent {
    agent(json!({
        "model": "gpt-5.1-codex",
        "provider": {"type": "openai", "apiKeySecretRef": {"name": "openai", "key": "api-key"}},
        "gpu": {"count": 2, "resourceName": "nvidia.com/mig-1g.10gb", "product": "NVIDIA-H100-80GB-HBM3",
                "runtimeClassName": "nvidia"},
        "nodeSelector": {"pool": "agents"},
    }))
}

fn secret(key: &str) -> Value {
    // base64("secret-key-of-at-least-32-bytes!!"): as long as an HS256 key must be. Owned by the
    // agent, as the generated one is (so it needs no opt-in label). `jwt.key` is the generated
    // Secret's shape: an ES256 pair (`jwt.key` private, `jwt.pub` public).
    let data = if key == "jwt.key" {
        json!({"jwt.key": b64(EC_PRIVATE), "jwt.pub": b64(EC_PUBLIC)})
    } else {
        json!({key: "c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0zMi1ieXRlcyEh"})
    };
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "ns",
           "ownerReferences": [{"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
                                "name": "a1", "uid": "uid-a1", "controller": true}]},
           "data": data})
}

const EC_PRIVATE: &str = include_str!("../../sidecar/tests/fixtures/es256-private.pem");
const EC_PUBLIC: &str = include_str!("../../sidecar/tests/fixtures/es256-public.pem");

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unb64(v: &Value) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .expect("base64");
    String::from_utf8(bytes).expect("utf8")
}

/// A Secret a user made and allowed CodexAgents to use (the opt-in label, no owner).
fn user_secret(key: &str) -> Value {
    let mut s = secret(key);
    s["metadata"] = json!({"name": "x", "namespace": "ns", "labels": {ALLOW_USE_LABEL: "true"}});
    s
}

/// The children as the API server would hold them after a previous reconcile.
fn world(a: &CodexAgent) -> (Value, Value, Value, Value) {
    let c = resources::build(
        a,
        &OperatorConfig {
            sidecar_image: "registry.test/codex-sidecar:1".into(),
            fs_group: Some(crate::resources::SIDECAR_UID),
            ..Default::default()
        },
    )
    .expect("build");
    let v = |x: &dyn erased::Ser| x.to_value();
    (v(&c.config_map), v(&c.pvc), v(&c.service), v(&c.pod))
}

mod erased {
    pub trait Ser {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("serializes")
        }
    }
}

/// Adds a pod status: PodScheduled (status, reason, message) and container readiness.
fn with_pod_status(
    mut pod: Value,
    scheduled: (&str, &str, &str),
    containers: &[(&str, bool, Option<&str>)],
) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, ready, waiting)| {
            let state = match waiting {
                Some(r) => json!({"waiting": {"reason": r, "message": format!("{r} for image")}}),
                None => json!({"running": {}}),
            };
            json!({"name": name, "ready": ready, "restartCount": 0, "image": "i", "imageID": "", "state": state})
        })
        .collect();
    pod["spec"]["nodeName"] = json!("gpu-node-1");
    pod["status"] = json!({
        "phase": "Running",
        "podIP": "10.0.0.7",
        "conditions": [{"type": "PodScheduled", "status": scheduled.0, "reason": scheduled.1, "message": scheduled.2}],
        "containerStatuses": statuses,
    });
    pod
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn assert_owned(obj: &Value) {
    let refs = &obj["metadata"]["ownerReferences"];
    assert_eq!(
        refs,
        &json!([{"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent", "name": "a1",
                 "uid": "uid-a1", "controller": true}]),
        "owner reference on {}",
        obj["metadata"]["name"]
    );
}

fn assert_apply(query: &str) {
    assert!(query.contains("fieldManager=codex-operator"), "{query}");
    assert!(query.contains("force=true"), "{query}");
}

async fn run(a: CodexAgent, ctx: Arc<Context>) -> kube::runtime::controller::Action {
    timeout(reconcile::reconcile(Arc::new(a), ctx))
        .await
        .expect("reconcile succeeds")
}

/// Runs the reconciler against `scenario`; both must finish, and nothing else may be sent.
async fn scenario<F>(
    a: CodexAgent,
    f: impl FnOnce(ApiServerVerifier) -> F,
) -> Arc<fixtures::FakeProbe>
where
    F: std::future::Future<Output = ApiServerVerifier> + Send + 'static,
{
    scenario_with(a, None, f).await
}

async fn scenario_with<F>(
    a: CodexAgent,
    report: Option<GpuReport>,
    f: impl FnOnce(ApiServerVerifier) -> F,
) -> Arc<fixtures::FakeProbe>
where
    F: std::future::Future<Output = ApiServerVerifier> + Send + 'static,
{
    let (ctx, verifier, probe) = testing();
    *probe.report.lock().expect("lock") = report;
    let server = tokio::spawn(f(verifier));
    run(a, ctx).await;
    let verifier = timeout(server).await.expect("scenario passed");
    verifier.done().await;
    probe
}

#[tokio::test]
async fn first_reconcile_creates_every_child_owned_and_gpu_scheduled() {
    scenario(gpu_agent(), |mut s| async move {
        s.not_found(JWT).await;
        let created = s.echo(Method::POST, SECRETS).await;
        assert_eq!(created.body["metadata"]["name"], "a1-jwt");
        // An ES256 pair: the private key for the clients, the public key for the pod.
        let data = &created.body["data"];
        assert_eq!(data.as_object().map(|d| d.len()), Some(2), "{data}");
        let private = unb64(&data["jwt.key"]);
        let public = unb64(&data["jwt.pub"]);
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "SPKI");
        let verifier = codex_sidecar::auth::Authenticator::public_key_pem(
            public.as_bytes(),
            Some("codex-sidecar".into()),
        )
        .expect("the sidecar takes jwt.pub");
        assert_eq!(verifier.algorithm(), Some("ES256"));
        let signer = crate::api_key::SigningKey::Es256(private.into_bytes());
        let token = crate::probe::mint_token(&signer, Some("codex-sidecar")).expect("mint");
        assert!(verifier.verify(Some(&format!("Bearer {token}"))).is_ok());
        assert_owned(&created.body);
        let ev = s.echo(Method::POST, EVENTS).await;
        assert_eq!(ev.body["reason"], "SecretGenerated");
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;

        s.not_found(CM).await;
        let cm = s.echo(Method::PATCH, CM).await;
        assert_apply(&cm.query);
        assert_owned(&cm.body);
        let toml = cm.body["data"]["config.toml"].as_str().expect("config");
        assert!(toml.contains("model = \"gpt-5.1-codex\""), "{toml}");
        assert!(
            toml.contains("openaiApiKeyFile = \"/etc/codex-sidecar/openai/api-key\""),
            "{toml}"
        );
        assert!(
            toml.contains("jwtPublicKeyFile = \"/etc/codex-sidecar/jwt/jwt.pub\"")
                && toml.contains("jwtAudience = \"codex-sidecar\"")
                && !toml.contains("jwtSecretFile"),
            "{toml}"
        );

        s.not_found(PVC).await;
        let pvc = s.echo(Method::PATCH, PVC).await;
        assert_apply(&pvc.query);
        assert_owned(&pvc.body);
        assert_eq!(pvc.body["spec"]["resources"]["requests"]["storage"], "10Gi");

        s.not_found(SVC).await;
        let svc = s.echo(Method::PATCH, SVC).await;
        assert_apply(&svc.query);
        assert_owned(&svc.body);
        assert_eq!(svc.body["spec"]["ports"][0]["port"], 8080);
        assert_eq!(
            svc.body["spec"]["selector"]["agents.codex-operator.dev/agent"],
            "a1"
        );

        s.not_found(POD).await;
        let pod = s.echo(Method::PATCH, POD).await;
        assert_apply(&pod.query);
        assert_owned(&pod.body);
        let spec = &pod.body["spec"];
        let sidecar = &spec["containers"][0];
        assert_eq!(sidecar["image"], "registry.test/codex-sidecar:1");
        assert_eq!(
            sidecar["resources"]["limits"]["nvidia.com/mig-1g.10gb"],
            "2"
        );
        assert_only_the_public_key_is_mounted(spec);
        assert_eq!(spec["runtimeClassName"], "nvidia");
        assert_eq!(
            spec["nodeSelector"],
            json!({"pool": "agents", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
        );
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
        );
        let ev = s.echo(Method::POST, EVENTS).await;
        assert_eq!(ev.body["reason"], "PodCreated");

        let st = s.echo(Method::PATCH, STATUS).await;
        assert_apply(&st.query);
        let status = &st.body["status"];
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status["endpoint"], "http://a1.ns.svc:8080");
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(condition(status, "Ready")["reason"], "PodPending");
        assert_eq!(condition(status, "Suspended")["status"], "False");
        assert_eq!(condition(status, "GPUVerified")["status"], "Unknown");
        s
    })
    .await;
}

#[tokio::test]
async fn local_model_server_runs_in_the_pod_with_the_gpus() {
    let a = agent(json!({
        "model": "qwen3-coder",
        "provider": {"type": "local", "local": {"engine": "vllm", "model": "Qwen/Qwen3-Coder-30B"}},
        "gpu": {"count": 1},
        "auth": {"jwtSecretRef": {"name": "mine", "key": "k"}},
    }));
    scenario(a, |mut s| async move {
        s.found(&format!("{SECRETS}/mine"), user_secret("k")).await;
        s.not_found(CM).await;
        let cm = s.echo(Method::PATCH, CM).await;
        let toml = cm.body["data"]["config.toml"].as_str().expect("config");
        assert!(toml.contains("provider = \"custom\""), "{toml}");
        assert!(
            toml.contains("providerBaseUrl = \"http://127.0.0.1:8000/v1\""),
            "{toml}"
        );
        assert!(
            toml.contains("jwtSecretFile = \"/etc/codex-sidecar/jwt/k\""),
            "{toml}"
        );
        s.not_found(PVC).await;
        s.echo(Method::PATCH, PVC).await;
        s.not_found(SVC).await;
        s.echo(Method::PATCH, SVC).await;
        s.not_found(POD).await;
        let pod = s.echo(Method::PATCH, POD).await;
        let containers = pod.body["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 2);
        let model = &containers[1];
        assert_eq!(model["name"], "model-server");
        assert_eq!(model["image"], "docker.io/vllm/vllm-openai:latest");
        assert_eq!(model["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(
            model["args"],
            json!([
                "--model",
                "Qwen/Qwen3-Coder-30B",
                "--served-model-name",
                "qwen3-coder",
                "--port",
                "8000",
                "--host",
                "127.0.0.1"
            ])
        );
        // Loopback only, so the readiness check runs inside the container.
        assert!(
            model["readinessProbe"]["exec"]["command"][2]
                .as_str()
                .is_some_and(|c| c.contains("http://127.0.0.1:8000/health")),
            "{}",
            model["readinessProbe"]
        );
        assert!(
            containers[0]["resources"].is_null(),
            "the GPU goes to the model server, not the sidecar"
        );
        assert_eq!(
            pod.body["spec"]["volumes"][2]["secret"]["secretName"],
            "mine"
        );
        s.echo(Method::POST, EVENTS).await;
        let st = s.echo(Method::PATCH, STATUS).await;
        assert_eq!(
            condition(&st.body["status"], "ModelReady")["status"],
            "False"
        );
        s
    })
    .await;
}

/// Existing children, a pod in the given state: expects GETs, then (maybe) a status patch.
async fn observe(
    a: CodexAgent,
    pod: Value,
    report: Option<GpuReport>,
    expect_status: bool,
) -> (Option<Value>, Vec<String>, Arc<fixtures::FakeProbe>) {
    let (cm, pvc, svc, _) = world(&a);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let probe = scenario_with(a, report, move |mut s| async move {
        s.found(JWT, secret("jwt.key")).await;
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.found(POD, pod).await;
        let mut status = None;
        let mut events = Vec::new();
        if expect_status {
            status = Some(s.echo(Method::PATCH, STATUS).await.body["status"].clone());
            // Transitions of the Ready reason are published as Events.
            if let Ok(Some(seen)) =
                tokio::time::timeout(std::time::Duration::from_millis(300), async {
                    Some(s.echo(Method::POST, EVENTS).await)
                })
                .await
            {
                events.push(format!(
                    "{} {}",
                    seen.body["type"].as_str().unwrap_or(""),
                    seen.body["reason"].as_str().unwrap_or("")
                ));
            }
        }
        let _ = tx.send((status, events));
        s
    })
    .await;
    let (status, events) = rx.await.expect("scenario result");
    (status, events, probe)
}

/// What NVML shows in a pod given `n` of gpu_agent's `nvidia.com/mig-1g.10gb` slices: their
/// parent H100 in MIG mode, with the slices under it.
fn report(n: usize) -> GpuReport {
    GpuReport {
        available: n > 0,
        driver_version: Some("570.86".into()),
        devices: (n > 0)
            .then(|| GpuDevice {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-0".into(),
                memory_total_bytes: 85_520_809_984,
                memory_used_bytes: 0,
                mig_mode: Some(true),
                mig_devices: (0..n)
                    .map(|i| MigDevice {
                        index: i as u32,
                        uuid: format!("MIG-{i}"),
                        name: "NVIDIA H100 80GB HBM3 MIG 1g.10gb".into(),
                        profile: Some("1g.10gb".into()),
                        memory_total_bytes: 10 << 30,
                    })
                    .collect(),
                processes: None,
            })
            .into_iter()
            .collect(),
        error: (n == 0).then(|| "NVML: no CUDA-capable device is detected".into()),
    }
}

#[tokio::test]
async fn unschedulable_for_lack_of_gpus_says_so() {
    let a = gpu_agent();
    let pod = with_pod_status(
        world(&a).3,
        (
            "False",
            "Unschedulable",
            "0/3 nodes are available: 3 Insufficient nvidia.com/mig-1g.10gb.",
        ),
        &[],
    );
    let (status, events, probe) = observe(a, pod, None, true).await;
    let status = status.expect("status written");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InsufficientGPU");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("no node has 2 free nvidia.com/mig-1g.10gb")),
        "{ready}"
    );
    let scheduled = condition(&status, "PodScheduled");
    assert_eq!(
        (scheduled["status"].as_str(), scheduled["reason"].as_str()),
        (Some("False"), Some("Unschedulable"))
    );
    assert_eq!(status["phase"], "Pending");
    assert_eq!(events, ["Warning InsufficientGPU"]);
    assert!(
        probe.calls.lock().expect("lock").is_empty(),
        "no GPU probe before the pod runs"
    );
}

#[tokio::test]
async fn scheduled_but_image_pull_failing_is_reported() {
    let a = gpu_agent();
    let pod = with_pod_status(
        world(&a).3,
        ("True", "", ""),
        &[("sidecar", false, Some("ImagePullBackOff"))],
    );
    let (status, _, _) = observe(a, pod, None, true).await;
    let status = status.expect("status");
    assert_eq!(condition(&status, "PodScheduled")["status"], "True");
    assert_eq!(condition(&status, "Ready")["reason"], "ImagePullBackOff");
    assert_eq!(status["nodeName"], "gpu-node-1");
}

#[tokio::test]
async fn ready_pod_with_visible_gpus_is_ready() {
    let a = gpu_agent();
    let pod = with_pod_status(world(&a).3, ("True", "", ""), &[("sidecar", true, None)]);
    let (status, events, probe) = observe(a, pod, Some(report(2)), true).await;
    let status = status.expect("status");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "GPUVerified")["reason"], "GPUsVisible");
    assert_eq!(status["phase"], "Ready");
    assert_eq!(status["podName"], "a1");
    assert_eq!(events, ["Normal Ready"]);
    let calls = probe.calls.lock().expect("lock");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].base_url, "http://10.0.0.7:8080");
    assert_eq!(
        calls[0].key,
        crate::api_key::SigningKey::Es256(EC_PRIVATE.as_bytes().to_vec()),
        "probe token signed with the agent's own private key"
    );
    assert_eq!(calls[0].audience.as_deref(), Some("codex-sidecar"));
}

#[tokio::test]
async fn ready_pod_without_gpus_reports_nogpu() {
    let a = gpu_agent();
    let pod = with_pod_status(world(&a).3, ("True", "", ""), &[("sidecar", true, None)]);
    let (status, events, _) = observe(a, pod, Some(report(0)), true).await;
    let status = status.expect("status");
    let gpu = condition(&status, "GPUVerified");
    assert_eq!(
        (gpu["status"].as_str(), gpu["reason"].as_str()),
        (Some("False"), Some("NoGPU"))
    );
    assert!(
        gpu["message"]
            .as_str()
            .is_some_and(|m| m.contains("runtimeClassName")),
        "{gpu}"
    );
    assert_eq!(condition(&status, "Ready")["reason"], "NoGPU");
    assert_eq!(status["phase"], "Failed");
    assert_eq!(events, ["Warning NoGPU"]);
}

#[tokio::test]
async fn second_reconcile_with_nothing_changed_writes_nothing() {
    let mut a = gpu_agent();
    let pod = with_pod_status(world(&a).3, ("True", "", ""), &[("sidecar", true, None)]);
    let (status, _, _) = observe(a.clone(), pod.clone(), Some(report(2)), true).await;
    a.status = Some(serde_json::from_value(status.expect("status")).expect("status parses"));
    // Same world, status already current: only GETs (observe asserts nothing else is sent).
    let (status, events, _) = observe(a, pod, Some(report(2)), false).await;
    assert!(status.is_none() && events.is_empty());
}

#[tokio::test]
async fn suspend_deletes_the_pod_and_keeps_the_volume() {
    let mut a = gpu_agent();
    let pod = world(&a).3;
    a.spec.suspend = true;
    let (cm, pvc, svc, _) = world(&a);
    scenario(a, |mut s| async move {
        s.found(JWT, secret("jwt.key")).await;
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.found(POD, pod.clone()).await;
        s.expect(Method::DELETE, POD, StatusCode::OK, pod).await;
        assert_eq!(
            s.echo(Method::POST, EVENTS).await.body["reason"],
            "Suspended"
        );
        let st = s.echo(Method::PATCH, STATUS).await.body["status"].clone();
        assert_eq!(condition(&st, "Suspended")["status"], "True");
        assert_eq!(condition(&st, "Ready")["reason"], "Suspended");
        assert_eq!(st["phase"], "Suspended");
        assert_eq!(
            s.echo(Method::POST, EVENTS).await.body["reason"],
            "Suspended"
        );
        s
    })
    .await;
}

#[tokio::test]
async fn resume_recreates_the_pod_on_the_same_volume() {
    let mut a = gpu_agent();
    a.status = Some(serde_json::from_value(json!({"phase": "Suspended", "conditions": [
        {"type": "Suspended", "status": "True", "reason": "Suspended", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Ready", "status": "False", "reason": "Suspended", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    ]})).expect("status"));
    let (cm, pvc, svc, _) = world(&a);
    scenario(a, |mut s| async move {
        s.found(JWT, secret("jwt.key")).await;
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.not_found(POD).await;
        let pod = s.echo(Method::PATCH, POD).await;
        assert_eq!(
            pod.body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "a1-state"
        );
        assert_eq!(s.echo(Method::POST, EVENTS).await.body["reason"], "Resumed");
        let st = s.echo(Method::PATCH, STATUS).await.body["status"].clone();
        assert_eq!(condition(&st, "Suspended")["status"], "False");
        s
    })
    .await;
}

#[tokio::test]
async fn changed_spec_replaces_the_pod() {
    let a = gpu_agent();
    let mut old_pod = world(&a).3;
    old_pod["metadata"]["annotations"]["agents.codex-operator.dev/desired-hash"] = json!("stale");
    let (cm, pvc, svc, _) = world(&a);
    scenario(a, |mut s| async move {
        s.found(JWT, secret("jwt.key")).await;
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.found(POD, old_pod.clone()).await;
        s.expect(Method::DELETE, POD, StatusCode::OK, old_pod).await;
        assert_eq!(
            s.echo(Method::POST, EVENTS).await.body["reason"],
            "SpecChanged"
        );
        s.echo(Method::PATCH, STATUS).await;
        s
    })
    .await;
}

#[tokio::test]
async fn changed_config_is_reapplied() {
    let a = gpu_agent();
    let (mut cm, pvc, svc, pod) = world(&a);
    cm["metadata"]["annotations"]["agents.codex-operator.dev/desired-hash"] = json!("old");
    let mut done = a.clone();
    let pod = with_pod_status(pod, ("True", "", ""), &[("sidecar", false, None)]);
    let (status, _, _) = observe(done.clone(), pod.clone(), None, true).await;
    done.status = Some(serde_json::from_value(status.expect("status")).expect("parses"));
    scenario(done, |mut s| async move {
        s.found(JWT, secret("jwt.key")).await;
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;
        s.found(CM, cm).await;
        let applied = s.echo(Method::PATCH, CM).await;
        assert_ne!(
            applied.body["metadata"]["annotations"]["agents.codex-operator.dev/desired-hash"],
            "old"
        );
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.found(POD, pod).await;
        s
    })
    .await;
}

#[tokio::test]
async fn generated_jwt_secret_is_never_overwritten() {
    // Another replica created the Secret between our GET and POST: we must read theirs, not
    // replace it.
    let a = gpu_agent();
    let (cm, pvc, svc, _) = world(&a);
    scenario(a, |mut s| async move {
        s.not_found(JWT).await;
        let post = s
            .expect(
                Method::POST,
                SECRETS,
                StatusCode::CONFLICT,
                conflict_status(),
            )
            .await;
        assert_eq!(post.body["metadata"]["name"], "a1-jwt");
        s.found(JWT, secret("jwt.key")).await;
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.not_found(POD).await;
        s.echo(Method::PATCH, POD).await;
        s.echo(Method::POST, EVENTS).await;
        s.echo(Method::PATCH, STATUS).await;
        s
    })
    .await;
}

#[tokio::test]
async fn missing_user_secret_blocks_the_pod_and_says_which() {
    let a = agent(json!({
        "model": "m",
        "provider": {"type": "custom", "baseUrl": "https://gw.example/v1"},
        "auth": {"jwtSecretRef": {"name": "api-jwt", "key": "hs256"}},
    }));
    let (cm, pvc, svc, _) = world(&a);
    scenario(a, |mut s| async move {
        s.not_found(&format!("{SECRETS}/api-jwt")).await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.not_found(POD).await;
        let st = s.echo(Method::PATCH, STATUS).await.body["status"].clone();
        let ready = condition(&st, "Ready");
        assert_eq!(ready["reason"], "MissingSecret");
        assert!(
            ready["message"]
                .as_str()
                .is_some_and(|m| m.contains("ns/api-jwt")),
            "{ready}"
        );
        assert_eq!(s.echo(Method::POST, EVENTS).await.body["type"], "Warning");
        s
    })
    .await;
}

#[tokio::test]
async fn api_errors_back_off_exponentially() {
    let (ctx, mut s, _) = testing();
    let a = Arc::new(gpu_agent());
    let server = tokio::spawn(async move {
        s.expect(Method::GET, JWT, StatusCode::INTERNAL_SERVER_ERROR, json!({"kind": "Status", "apiVersion": "v1",
            "metadata": {}, "status": "Failure", "message": "boom", "reason": "InternalError", "code": 500})).await;
        s
    });
    let err = timeout(reconcile::reconcile(a.clone(), ctx.clone()))
        .await
        .expect_err("500 is an error");
    timeout(server).await.expect("scenario");
    let first = reconcile::error_policy(a.clone(), &err, ctx.clone());
    let second = reconcile::error_policy(a, &err, ctx.clone());
    assert_eq!(
        first,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(5))
    );
    assert_eq!(
        second,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(10))
    );
    assert!(
        ctx.metrics
            .render()
            .contains("codex_operator_reconcile_errors_total{error=\"kube\"} 2")
    );
}

#[tokio::test]
async fn missing_crd_gives_an_install_hint() {
    let (ctx, mut s, _) = testing();
    let server = tokio::spawn(async move {
        s.expect(
            Method::GET,
            "/apis/agents.codex-operator.dev/v1alpha1/codexagents",
            StatusCode::NOT_FOUND,
            fixtures::not_found_status(),
        )
        .await;
        s
    });
    let err = timeout(reconcile::check_crd(&ctx.client))
        .await
        .expect_err("missing");
    timeout(server).await.expect("scenario");
    assert!(
        err.to_string()
            .contains("codex-operator crd | kubectl apply -f -"),
        "{err}"
    );
}

#[tokio::test]
async fn an_agent_being_deleted_is_left_to_the_garbage_collector() {
    let mut a = gpu_agent();
    a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().expect("time"),
    ));
    a.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    // No request at all: the scenario expects none.
    scenario(a, |s| async move { s }).await;
}

/// The status patch of a reconcile that leaves the agent not Ready with `reason` and a message
/// containing `contains`, then the Warning Event of that transition.
async fn expect_not_ready(s: &mut ApiServerVerifier, reason: &str, contains: &str) {
    let st = s.echo(Method::PATCH, STATUS).await.body["status"].clone();
    let ready = condition(&st, "Ready");
    assert_eq!(ready["reason"], reason);
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains(contains)),
        "{ready}"
    );
    assert_eq!(s.echo(Method::POST, EVENTS).await.body["reason"], reason);
}

/// The reads of a reconcile whose Secrets, ConfigMap, PVC and Service are all up to date.
async fn unchanged_children(s: &mut ApiServerVerifier, cm: &Value, pvc: &Value, svc: &Value) {
    s.found(JWT, secret("jwt.key")).await;
    s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
        .await;
    s.found(CM, cm.clone()).await;
    s.found(PVC, pvc.clone()).await;
    s.found(SVC, svc.clone()).await;
}

#[tokio::test]
async fn a_failed_pod_is_replaced_at_once_then_with_backoff_and_its_reason_shown() {
    let a = gpu_agent();
    let (cm, pvc, svc, pod) = world(&a);
    let failed = |uid: &str| {
        let mut p = pod.clone();
        p["metadata"]["uid"] = json!(uid);
        p["status"] = json!({"phase": "Failed", "reason": "Evicted",
                             "message": "The node was low on resource: memory."});
        p
    };
    let (ctx, verifier, _probe) = testing();
    let (first, second) = (failed("pod-1"), failed("pod-2"));
    let server = tokio::spawn(async move {
        let mut s = verifier;
        // The first failed pod (evicted) is deleted at once; an Event says why.
        unchanged_children(&mut s, &cm, &pvc, &svc).await;
        s.found(POD, first.clone()).await;
        s.expect(Method::DELETE, POD, StatusCode::OK, first).await;
        let ev = s.echo(Method::POST, EVENTS).await;
        assert_eq!(ev.body["reason"], "PodReplaced");
        assert_eq!(ev.body["type"], "Warning");
        let note = ev.body["note"].as_str().unwrap_or_default().to_owned();
        assert!(
            note.contains("Evicted: The node was low on resource: memory."),
            "{note}"
        );
        s.echo(Method::PATCH, STATUS).await;
        // Its replacement fails too: kept (with backoff) and reported with the pod's reason.
        unchanged_children(&mut s, &cm, &pvc, &svc).await;
        s.found(POD, second).await;
        expect_not_ready(
            &mut s,
            "PodFailed",
            "Evicted: The node was low on resource: memory.",
        )
        .await;
        s
    });
    let first_action = run(a.clone(), ctx.clone()).await;
    assert_eq!(
        first_action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(2))
    );
    let second_action = run(a, ctx).await;
    let wait = format!("{second_action:?}");
    assert!(
        second_action != kube::runtime::controller::Action::await_change(),
        "requeued to replace it after the backoff: {wait}"
    );
    let verifier = timeout(server).await.expect("scenario passed");
    verifier.done().await;
}

#[tokio::test]
async fn a_jwt_key_under_32_bytes_blocks_the_pod_and_says_so() {
    let a = agent(
        json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://x/v1"},
                         "auth": {"jwtSecretRef": {"name": "mine", "key": "k"}}}),
    );
    let (cm, pvc, svc, _) = world(&a);
    scenario(a, |mut s| async move {
        // base64("short\n"): 5 bytes once the newline is removed.
        s.found(
            &format!("{SECRETS}/mine"),
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "mine", "namespace": "ns", "labels": {ALLOW_USE_LABEL: "true"}},
            "data": {"k": "c2hvcnQK"}}),
        )
        .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.not_found(POD).await;
        expect_not_ready(&mut s, "InvalidSecret", "holds 5 bytes").await;
        s
    })
    .await;
}

#[tokio::test]
async fn a_users_service_with_the_agents_name_is_left_alone_and_reported() {
    let a = gpu_agent();
    let (cm, pvc, _, _) = world(&a);
    let users = json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "a1", "namespace": "ns", "uid": "svc-1"},
                       "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}});
    scenario(a, |mut s| async move {
        unchanged_children(&mut s, &cm, &pvc, &users).await;
        s.not_found(POD).await;
        // No apply over the user's Service, no pod: only the status (and its Event).
        let st = s.echo(Method::PATCH, STATUS).await.body["status"].clone();
        let ready = condition(&st, "Ready");
        assert_eq!(ready["reason"], "NameConflict");
        assert!(
            ready["message"]
                .as_str()
                .is_some_and(|m| m.contains("Service ns/a1") && m.contains("not controlled")),
            "{ready}"
        );
        assert_eq!(
            s.echo(Method::POST, EVENTS).await.body["reason"],
            "NameConflict"
        );
        s
    })
    .await;
}

/// A Secret a user made, without the opt-in label.
fn unlabelled_secret(name: &str, key: &str) -> Value {
    // base64("super-secret-token"): must never show up in a message.
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ns"},
           "data": {key: "c3VwZXItc2VjcmV0LXRva2Vu"}})
}

#[tokio::test]
async fn a_secret_without_the_opt_in_label_is_not_used_and_says_how_to_allow_it() {
    let a = agent(json!({
        "model": "m",
        "provider": {"type": "custom", "baseUrl": "https://gw.example/v1",
                     "apiKeySecretRef": {"name": "gw-key", "key": "token"}},
    }));
    let (cm, pvc, svc, _) = world(&a);
    scenario(a, |mut s| async move {
        // The generated JWT Secret is the agent's own: it needs no label.
        s.found(JWT, secret("jwt.key")).await;
        s.found(
            &format!("{SECRETS}/gw-key"),
            unlabelled_secret("gw-key", "token"),
        )
        .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.not_found(POD).await;
        // No pod is created: only the status and its Event.
        let st = s.echo(Method::PATCH, STATUS).await.body["status"].clone();
        let ready = condition(&st, "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "SecretNotAllowed");
        let fix = "kubectl label secret gw-key agents.codex-operator.dev/allow-use=true -n ns";
        let message = ready["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("Secret ns/gw-key (provider.apiKeySecretRef)")
                && message.contains(fix),
            "{message}"
        );
        assert!(
            !message.contains("c3VwZXI") && !message.contains("super-secret"),
            "names only, never a value: {message}"
        );
        assert_eq!(st["phase"], "Pending");
        assert!(st["podName"].is_null(), "{st}");
        let ev = s.echo(Method::POST, EVENTS).await;
        assert_eq!(ev.body["type"], "Warning");
        assert_eq!(ev.body["reason"], "SecretNotAllowed");
        assert!(
            ev.body["note"].as_str().is_some_and(|n| n.contains(fix)),
            "{}",
            ev.body
        );
        s
    })
    .await;
}

#[tokio::test]
async fn a_pod_using_a_secret_no_longer_allowed_is_deleted() {
    // The JWT Secret is allowed; the existing pull Secret lost its label (or was made anew
    // without it); a pull Secret that does not exist is no error, as for any pod.
    let a = agent(json!({
        "model": "m",
        "provider": {"type": "custom", "baseUrl": "https://gw.example/v1"},
        "auth": {"jwtSecretRef": {"name": "api-jwt", "key": "k"}},
        "imagePullSecrets": [{"name": "regcred"}, {"name": "gone"}],
    }));
    let (cm, pvc, svc, pod) = world(&a);
    scenario(a, |mut s| async move {
        s.found(&format!("{SECRETS}/api-jwt"), user_secret("k"))
            .await;
        s.found(
            &format!("{SECRETS}/regcred"),
            unlabelled_secret("regcred", ".dockerconfigjson"),
        )
        .await;
        s.not_found(&format!("{SECRETS}/gone")).await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.found(POD, pod.clone()).await;
        s.expect(Method::DELETE, POD, StatusCode::OK, pod).await;
        let ev = s.echo(Method::POST, EVENTS).await;
        assert_eq!(ev.body["type"], "Warning");
        assert_eq!(ev.body["reason"], "SecretNotAllowed");
        assert!(
            ev.body["note"]
                .as_str()
                .is_some_and(|n| n.contains("deleted pod a1")),
            "{}",
            ev.body
        );
        expect_not_ready(
            &mut s,
            "SecretNotAllowed",
            "ns/regcred (imagePullSecrets) does not carry the label \
             agents.codex-operator.dev/allow-use=true",
        )
        .await;
        s
    })
    .await;
}

#[tokio::test]
async fn another_agents_signing_key_is_not_used_without_the_label() {
    // b1's generated key: controlled by b1, not by a1, and not labelled by anyone.
    let a = agent(json!({
        "model": "m",
        "provider": {"type": "custom", "baseUrl": "https://gw.example/v1"},
        "auth": {"jwtSecretRef": {"name": "b1-jwt", "key": "jwt.key"}},
    }));
    let (cm, pvc, svc, _) = world(&a);
    let mut theirs = secret("jwt.key");
    theirs["metadata"]["name"] = json!("b1-jwt");
    theirs["metadata"]["ownerReferences"][0]["name"] = json!("b1");
    theirs["metadata"]["ownerReferences"][0]["uid"] = json!("uid-b1");
    let probe = scenario(a, |mut s| async move {
        s.found(&format!("{SECRETS}/b1-jwt"), theirs).await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.not_found(POD).await;
        expect_not_ready(
            &mut s,
            "SecretNotAllowed",
            "Secret ns/b1-jwt (auth.jwtSecretRef) does not carry the label",
        )
        .await;
        s
    })
    .await;
    assert!(probe.calls.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn whole_gpus_are_not_the_mig_slices_asked_for() {
    let a = gpu_agent();
    let pod = with_pod_status(world(&a).3, ("True", "", ""), &[("sidecar", true, None)]);
    // Two whole H100s (MIG off) where two 1g.10gb slices were asked for.
    let mut whole = report(1);
    whole.devices = (0..2)
        .map(|i| GpuDevice {
            index: i,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: format!("GPU-{i}"),
            memory_total_bytes: 85_520_809_984,
            memory_used_bytes: 0,
            mig_mode: Some(false),
            mig_devices: Vec::new(),
            processes: None,
        })
        .collect();
    let (status, _, _) = observe(a, pod, Some(whole), true).await;
    let status = status.expect("status");
    let gpu = condition(&status, "GPUVerified");
    assert_eq!(gpu["reason"], "NoGPU", "{gpu}");
    assert!(
        gpu["message"]
            .as_str()
            .is_some_and(|m| m.contains("0 of 2 MIG 1g.10gb slice(s)")
                && m.contains("GPU 1 NVIDIA H100 80GB HBM3 (MIG off)")),
        "{gpu}"
    );
    assert_eq!(condition(&status, "Ready")["reason"], "NoGPU");
}

#[tokio::test]
async fn a_misspelt_model_is_named_before_the_first_turn() {
    let a = agent(json!({
        "model": "gpt-os:20b",
        "provider": {"type": "local", "local": {"engine": "ollama"}},
        "gpu": {"count": 1},
        "auth": {"jwtSecretRef": {"name": "mine", "key": "k"}},
    }));
    let (cm, pvc, svc, pod) = world(&a);
    // The sidecar runs but is not ready: its /readyz fails because the model is not served.
    let pod = with_pod_status(
        pod,
        ("True", "", ""),
        &[("sidecar", false, None), ("model-server", true, None)],
    );
    let (ctx, verifier, probe) = testing();
    *probe.report.lock().expect("lock") = Some(GpuReport {
        error: Some("NVML not available: libnvidia-ml.so.1: cannot open shared object file".into()),
        ..GpuReport::default()
    });
    *probe.model_server.lock().expect("lock") = Some(ModelServerReport {
        engine: "ollama".into(),
        base_url: "http://127.0.0.1:11434/v1".into(),
        reachable: Some(true),
        model: Some("gpt-os:20b".into()),
        served: Some(false),
        models: vec!["gpt-oss:20b".into()],
        ..ModelServerReport::default()
    });
    let server = tokio::spawn(async move {
        let mut s = verifier;
        s.found(&format!("{SECRETS}/mine"), user_secret("k")).await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.found(POD, pod).await;
        let st = s.echo(Method::PATCH, STATUS).await.body["status"].clone();
        let model = condition(&st, "ModelReady");
        assert_eq!(
            (model["status"].as_str(), model["reason"].as_str()),
            (Some("False"), Some("ModelNotServed")),
            "{model}"
        );
        assert!(
            model["message"]
                .as_str()
                .is_some_and(|m| m.contains("gpt-os:20b") && m.contains("it lists: gpt-oss:20b")),
            "{model}"
        );
        assert_eq!(condition(&st, "Ready")["reason"], "ModelNotServed");
        assert_eq!(
            s.echo(Method::POST, EVENTS).await.body["reason"],
            "ModelNotServed"
        );
        s
    });
    run(a, ctx).await;
    timeout(server).await.expect("scenario").done().await;
    assert_eq!(
        probe.calls.lock().expect("lock").len(),
        1,
        "probed while not ready"
    );
}

/// One reconcile of `a` whose pod (stale spec, sidecar ready) is `pod`, through `ctx`: the
/// status written and whether the pod was deleted.
async fn reconcile_stale_serving(
    a: CodexAgent,
    pod: Value,
    ctx: Arc<Context>,
    verifier: ApiServerVerifier,
    expect_delete: bool,
) -> (Value, ApiServerVerifier) {
    let (cm, pvc, svc, _) = world(&a);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let mut s = verifier;
        s.found(JWT, secret("jwt.key")).await;
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        s.found(POD, pod.clone()).await;
        if expect_delete {
            s.expect(Method::DELETE, POD, StatusCode::OK, pod).await;
            let event = s.echo(Method::POST, EVENTS).await;
            assert_eq!(event.body["reason"], "SpecChanged");
            let _ = tx.send(event.body["note"].clone());
            s.echo(Method::PATCH, STATUS).await;
        } else {
            let status = s.echo(Method::PATCH, STATUS).await.body["status"].clone();
            let _ = tx.send(status);
        }
        // A first status may publish its Ready transition.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), async {
            s.echo(Method::POST, EVENTS).await
        })
        .await;
        s
    });
    run(a, ctx).await;
    let verifier = timeout(server).await.expect("scenario passed");
    (rx.await.expect("result"), verifier)
}

fn stale_serving_pod(a: &CodexAgent) -> Value {
    let mut pod = with_pod_status(world(a).3, ("True", "", ""), &[("sidecar", true, None)]);
    pod["metadata"]["annotations"]["agents.codex-operator.dev/desired-hash"] = json!("stale");
    pod["metadata"]["uid"] = json!("pod-uid-1");
    pod
}

#[tokio::test]
async fn a_serving_pod_with_a_stale_spec_is_drained_before_it_is_replaced() {
    let (ctx, verifier, probe) = testing();
    let a = gpu_agent();
    *probe.report.lock().expect("lock") = Some(report(2));
    // A turn runs: the sidecar is drained, the pod stays, the condition says why.
    *probe.running.lock().expect("lock") = 1;
    let (status, verifier) = reconcile_stale_serving(
        a.clone(),
        stale_serving_pod(&a),
        ctx.clone(),
        verifier,
        false,
    )
    .await;
    let up = condition(&status, "UpToDate");
    assert_eq!(
        (up["status"].as_str(), up["reason"].as_str()),
        (Some("False"), Some("Draining"))
    );
    assert!(
        up["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 running turns")),
        "{up}"
    );
    assert_eq!(
        condition(&status, "Ready")["status"],
        "True",
        "a draining pod still serves"
    );
    assert_eq!(*probe.drains.lock().expect("lock"), [true]);
    // The turn ended: the pod goes, and the Event says it was drained.
    *probe.running.lock().expect("lock") = 0;
    let (note, verifier) = reconcile_stale_serving(
        a.clone(),
        stale_serving_pod(&a),
        ctx.clone(),
        verifier,
        true,
    )
    .await;
    assert!(
        note.as_str()
            .is_some_and(|n| n.contains("drained: no turn running")),
        "{note}"
    );
    verifier.done().await;
}

#[tokio::test]
async fn stale_serving_pods_are_replaced_at_most_n_agents_at_a_time() {
    let (ctx, verifier, probe) = testing();
    assert_eq!(
        ctx.config.max_concurrent_rollouts, 4,
        "the default limit applies"
    );
    // Four other agents, each draining a busy sidecar, hold every slot.
    *probe.report.lock().expect("lock") = Some(report(2));
    *probe.running.lock().expect("lock") = 1;
    for n in ["b1", "b2", "b3", "b4"] {
        let mut other = gpu_agent();
        other.metadata.name = Some(n.into());
        let pod = stale_serving_pod(&other);
        let rollouts = &ctx.rollouts;
        let target = crate::probe::ProbeTarget {
            base_url: "http://10.0.0.8:8080".into(),
            key: crate::api_key::SigningKey::Hs256(b"k".to_vec()),
            audience: None,
        };
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).expect("pod");
        let step = rollouts
            .step(
                &other,
                &pod,
                &*probe,
                &target,
                None,
                std::time::Duration::from_secs(60),
            )
            .await;
        assert!(
            matches!(
                step,
                crate::rollout::Step::Wait {
                    reason: "Draining",
                    ..
                }
            ),
            "{step:?}"
        );
    }
    assert_eq!(ctx.rollouts.in_progress(), 4);
    let a = gpu_agent();
    let drains_before = probe.drains.lock().expect("lock").len();
    let (status, verifier) = reconcile_stale_serving(
        a.clone(),
        stale_serving_pod(&a),
        ctx.clone(),
        verifier,
        false,
    )
    .await;
    let up = condition(&status, "UpToDate");
    assert_eq!(up["reason"], "RolloutWaiting", "{up}");
    assert_eq!(
        probe.drains.lock().expect("lock").len(),
        drains_before,
        "an agent waiting for a slot is not drained"
    );
    verifier.done().await;
}

#[tokio::test]
async fn a_stale_pod_that_serves_nothing_is_replaced_at_once() {
    // Not ready (e.g. crash-looping on a bad spec): nothing to drain, no slot taken.
    let a = gpu_agent();
    let mut pod = with_pod_status(world(&a).3, ("True", "", ""), &[("sidecar", false, None)]);
    pod["metadata"]["annotations"]["agents.codex-operator.dev/desired-hash"] = json!("stale");
    let (ctx, verifier, probe) = testing();
    let (note, verifier) = reconcile_stale_serving(a, pod, ctx.clone(), verifier, true).await;
    assert!(
        note.as_str().is_some_and(|n| n.contains("serves no turn")),
        "{note}"
    );
    assert!(probe.drains.lock().expect("lock").is_empty());
    assert_eq!(ctx.rollouts.in_progress(), 0);
    verifier.done().await;
}

/// The pod's `jwt` volume projects only `jwt.pub` of `a1-jwt`, mounted as a directory (no
/// `subPath`, so a rotated Secret reaches the running pod).
fn assert_only_the_public_key_is_mounted(spec: &Value) {
    let volumes = spec["volumes"].as_array().expect("volumes");
    let jwt = volumes
        .iter()
        .find(|v| v["name"] == "jwt")
        .expect("jwt volume");
    assert_eq!(jwt["secret"]["secretName"], "a1-jwt");
    assert_eq!(
        jwt["secret"]["items"],
        json!([{"key": "jwt.pub", "path": "jwt.pub"}])
    );
    let mounts: Vec<&Value> = spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .chain(spec["initContainers"].as_array().into_iter().flatten())
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .filter(|m| m["name"] == "jwt")
        .collect();
    assert_eq!(mounts.len(), 1, "only the sidecar mounts it: {mounts:?}");
    assert_eq!(mounts[0]["mountPath"], "/etc/codex-sidecar/jwt");
    assert!(mounts[0].get("subPath").is_none(), "{}", mounts[0]);
    // No other volume holds the Secret.
    assert_eq!(
        volumes
            .iter()
            .filter(|v| v.to_string().contains("a1-jwt"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_generated_hs256_secret_from_before_es256_keeps_working_unchanged() {
    // An agent created by an older operator: its generated Secret holds only an HS256 `jwt.key`,
    // its pod mounts it and verifies with --jwt-secret-file. Nothing is regenerated or replaced.
    let a = gpu_agent();
    let old = resources::build_for(
        &a,
        &OperatorConfig {
            sidecar_image: "registry.test/codex-sidecar:1".into(),
            fs_group: Some(crate::resources::SIDECAR_UID),
            ..Default::default()
        },
        crate::api_key::PodKey::SharedSecret,
    )
    .expect("build");
    let v = |x: &dyn erased::Ser| x.to_value();
    let (cm, pvc, svc, pod) = (
        v(&old.config_map),
        v(&old.pvc),
        v(&old.service),
        v(&old.pod),
    );
    let toml = cm["data"]["config.toml"]
        .as_str()
        .expect("config")
        .to_owned();
    assert!(
        toml.contains("jwtSecretFile = \"/etc/codex-sidecar/jwt/jwt.key\"")
            && !toml.contains("jwtPublicKeyFile")
            && !toml.contains("jwtAudience"),
        "{toml}"
    );
    assert_eq!(
        pod["spec"]["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == "jwt"))
            .map(|v| v["secret"]["items"].clone()),
        Some(json!([{"key": "jwt.key", "path": "jwt.key"}]))
    );
    let mut legacy = secret("jwt.key");
    legacy["data"] =
        json!({"jwt.key": b64("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")});
    scenario(a, |mut s| async move {
        // Found: no POST of a new Secret, no SecretGenerated event.
        s.found(JWT, legacy).await;
        s.found(&format!("{SECRETS}/openai"), user_secret("api-key"))
            .await;
        s.found(CM, cm).await;
        s.found(PVC, pvc).await;
        s.found(SVC, svc).await;
        // The pod as the old operator made it is up to date: not deleted, not patched.
        s.found(POD, pod).await;
        s.echo(Method::PATCH, STATUS).await;
        s
    })
    .await;
}
