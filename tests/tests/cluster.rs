//! The operator and the chart on a real Kubernetes cluster (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet and kube-proxy built from their Go modules;
//! containerd, runc and the CNI plugins from Debian), the pods running the project's image
//! imported from the local Docker engine. Each scenario asserts what a user sees: `kubectl get
//! cxa`, conditions, Events, the objects the garbage collector leaves.
//!
//! Needs root, the binaries of `tests/cluster/build-tools.sh`, a Docker engine with the project
//! image (`tests/cluster/build-image.sh`, tag in `CODEX_E2E_IMAGE`), containerd, runc and
//! containernetworking-plugins; `tests/run.sh` provides the binaries and the image. Without them
//! the test prints `NOTICE: skipping` (and fails under `CI=true`).
//!
//! Run alone: `tests/run.sh --cluster-only` (or `cargo test -p codex-e2e --test cluster -- --nocapture`
//! with the tools in place).
//!
//! The same scenarios against a cluster of yours (a throwaway one: kind, k3d, a GPU test cluster;
//! the test installs and removes the chart, the CRD and its namespaces), opt-in:
//!
//! ```sh
//! CODEX_E2E_KUBECONFIG=~/.kube/config \
//! CODEX_E2E_IMAGE=<the project image, pullable by the cluster or preloaded> \
//! CODEX_E2E_MODEL_ADDR=<an address of this machine that the cluster's pods reach, e.g. 172.18.0.1 for kind> \
//!   cargo test -p codex-e2e --test cluster -- --nocapture
//! ```
//!
//! There, what needs the harness's own node is left out with a `NOTICE: skipping` line: GPUs
//! advertised on the node (3), the Docker-host turn (4b), the expandable StorageClass (5b), and
//! SIGKILL of the leader (7 deletes the leader's pod instead, so only the handover is timed).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use codex_e2e::cluster::node::{NODE_NAME, Node};
use codex_e2e::cluster::{self, ControlPlane};
use codex_e2e::harness::{Api, mint_with};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

const RELEASE: &str = "cxo";
const OPERATOR_NS: &str = "codex-system";
const CRD: &str = "codexagents.agents.codex-operator.dev";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What every scenario shares.
struct World {
    // Fields drop in order: the node (its pods) before the control plane.
    /// The harness's node; `None` on an external cluster (`CODEX_E2E_KUBECONFIG`).
    node: Option<Node>,
    cp: ControlPlane,
    /// Kept alive for the pods (their provider).
    _model: ScriptedModel,
    /// The model server as pods reach it: `http://GATEWAY:PORT/v1`.
    model_url: String,
    image: String,
    /// `Never` for the image imported into the harness's node, `IfNotPresent` elsewhere.
    pull_policy: &'static str,
}

fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the cluster e2e cannot run in CI: {why}");
    }
    eprintln!("NOTICE: skipping the cluster e2e: {why}");
}

/// An external cluster (`CODEX_E2E_KUBECONFIG`): nothing is started but the scripted model.
async fn external_world(kubeconfig: &Path) -> World {
    let bin = cluster::bin_dir_with(cluster::CLIENT_TOOLS)
        .unwrap_or_else(|e| panic!("{e} (tests/cluster/build-tools.sh helm fetches them)"));
    let image = std::env::var("CODEX_E2E_IMAGE")
        .expect("CODEX_E2E_IMAGE: the project image the cluster can pull");
    let addr: std::net::IpAddr = std::env::var("CODEX_E2E_MODEL_ADDR")
        .expect("CODEX_E2E_MODEL_ADDR: an address of this machine that the cluster's pods reach")
        .parse()
        .expect("CODEX_E2E_MODEL_ADDR is an IP address");
    let cp = ControlPlane::external(&bin, kubeconfig)
        .await
        .expect("the cluster of CODEX_E2E_KUBECONFIG");
    eprintln!("cluster: external cluster at {}", cp.server);
    let model = ScriptedModel::start_on(std::net::SocketAddr::new(addr, 0), None)
        .await
        .expect("scripted model");
    let model_url = format!("http://{}/v1", model.addr());
    World {
        node: None,
        cp,
        _model: model,
        model_url,
        image,
        pull_policy: "IfNotPresent",
    }
}

async fn world() -> Option<World> {
    if let Some(kc) = std::env::var_os("CODEX_E2E_KUBECONFIG") {
        return Some(external_world(Path::new(&kc)).await);
    }
    let bin = match cluster::bin_dir() {
        Ok(b) => b,
        Err(e) => {
            skip_or_fail(&e);
            return None;
        }
    };
    let gateway = match cluster::docker_gateway() {
        Ok(g) => g,
        Err(e) => {
            skip_or_fail(&format!(
                "{e} (install and start one: apt-get install docker.io && dockerd &)"
            ));
            return None;
        }
    };
    let image = std::env::var("CODEX_E2E_IMAGE").unwrap_or_else(|_| "codex-operator:e2e".into());
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        skip_or_fail(&format!(
            "the image {image} is not in the local Docker engine (tests/cluster/build-image.sh builds it)"
        ));
        return None;
    }
    if let Err(e) = codex_e2e::cluster::node::check_host() {
        skip_or_fail(&e);
        return None;
    }
    let cp = ControlPlane::start(&bin, gateway)
        .await
        .expect("control plane");
    eprintln!(
        "cluster: control plane up in {:.1}s at {}",
        cp.startup.as_secs_f64(),
        cp.server
    );
    let node = Node::start(&cp).await.expect("node");
    let t = Instant::now();
    node.import_image(&image).expect("importing the image");
    eprintln!(
        "cluster: node {NODE_NAME} Ready in {:.1}s (kubelet, containerd, kube-proxy); {image} imported in {:.1}s",
        node.startup.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    let model = ScriptedModel::start_on(std::net::SocketAddr::new(gateway, 0), None)
        .await
        .expect("scripted model");
    let model_url = format!("http://{}/v1", model.addr());
    Some(World {
        node: Some(node),
        cp,
        _model: model,
        model_url,
        image,
        pull_policy: "Never",
    })
}

// ---------------------------------------------------------------------------------------------
// Small helpers over kubectl (what a user types) and polling.

async fn eventually<T>(what: &str, limit: Duration, f: impl AsyncFnMut() -> Option<T>) -> T {
    match within(limit, f).await {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

async fn within<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl World {
    fn k(&self, args: &[&str]) -> String {
        self.cp
            .kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        self.cp
            .kubectl(&a)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    fn agent(&self, ns: &str, name: &str) -> Option<Value> {
        self.json(&["-n", ns, "get", "cxa", name])
    }

    /// `(status, reason, message)` of an agent's condition.
    fn condition(&self, ns: &str, name: &str, type_: &str) -> Option<(String, String, String)> {
        let a = self.agent(ns, name)?;
        let c = a["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)?
            .clone();
        Some((
            c["status"].as_str()?.to_owned(),
            c["reason"].as_str().unwrap_or_default().to_owned(),
            c["message"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    async fn wait_condition(
        &self,
        ns: &str,
        name: &str,
        type_: &str,
        status: &str,
        limit: Duration,
    ) -> (String, String, String) {
        match within(limit, async || {
            self.condition(ns, name, type_).filter(|c| c.0 == status)
        })
        .await
        {
            Some(c) => c,
            None => {
                self.dump(ns, name);
                panic!("timed out after {limit:?} waiting for {ns}/{name} {type_}={status}")
            }
        }
    }

    /// `kubectl patch cxa NAME --type=merge -p '{"spec":{"suspend":...}}'`.
    fn set_suspend(&self, ns: &str, name: &str, suspend: bool) {
        let patch = json!({"spec": {"suspend": suspend}}).to_string();
        self.k(&["-n", ns, "patch", "cxa", name, "--type=merge", "-p", &patch]);
    }

    /// Waits for a condition with `reason`; returns its message.
    async fn wait_reason(
        &self,
        ns: &str,
        name: &str,
        type_: &str,
        reason: &str,
        limit: Duration,
    ) -> String {
        match within(limit, async || {
            self.condition(ns, name, type_).filter(|c| c.1 == reason)
        })
        .await
        {
            Some(c) => c.2,
            None => {
                self.dump(ns, name);
                panic!(
                    "timed out after {limit:?} waiting for {type_} reason {reason} on {ns}/{name}"
                )
            }
        }
    }

    /// Waits for a condition to exist, whatever its status.
    async fn wait_condition_any(
        &self,
        ns: &str,
        name: &str,
        type_: &str,
        limit: Duration,
    ) -> (String, String, String) {
        match within(limit, async || self.condition(ns, name, type_)).await {
            Some(c) => c,
            None => {
                self.dump(ns, name);
                panic!("timed out after {limit:?} waiting for a {type_} condition on {ns}/{name}")
            }
        }
    }

    /// Prints what a user would look at when an agent is stuck: the agent, its pod, the
    /// Events, the containers' logs, the operator's log.
    fn dump(&self, ns: &str, name: &str) {
        eprintln!(
            "==== {ns}/{name} ====\n{}",
            self.cp
                .kubectl(&["-n", ns, "get", "cxa", name, "-o", "yaml"])
                .unwrap_or_else(|e| e)
        );
        eprintln!(
            "==== pod ====\n{}",
            self.cp
                .kubectl(&["-n", ns, "get", "pod", name, "-o", "yaml"])
                .unwrap_or_else(|e| e)
        );
        eprintln!(
            "==== events ====\n{}",
            self.cp
                .kubectl(&["-n", ns, "get", "events"])
                .unwrap_or_else(|e| e)
        );
        eprintln!(
            "==== sidecar log ====\n{}",
            self.logs_tail(ns, name, "sidecar")
        );
        for p in self.operator_pods() {
            if let Some(pod) = p["metadata"]["name"].as_str() {
                eprintln!(
                    "==== operator {pod} log ====\n{}",
                    self.logs_tail(OPERATOR_NS, pod, "operator")
                );
            }
        }
        if let Some(node) = &self.node {
            eprintln!("==== kubelet ====\n{}", node.log_tail("kubelet", 30));
        }
    }

    /// Creates (applies) a namespace, labelled `codex-e2e=scenario` for the cleanup of an
    /// external cluster.
    fn namespace(&self, ns: &str, labels: &[(&str, &str)]) {
        let mut meta = json!({"name": ns, "labels": {"codex-e2e": "scenario"}});
        for (k, v) in labels {
            meta["labels"][*k] = json!(v);
        }
        let doc = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta});
        self.cp.apply(&doc.to_string(), &[]).expect("namespace");
    }

    fn apply_agent(&self, ns: &str, name: &str, spec: Value) {
        let doc = json!({"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
                         "metadata": {"name": name, "namespace": ns}, "spec": spec});
        self.cp
            .apply(&doc.to_string(), &[])
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }

    fn custom_spec(&self) -> Value {
        json!({"model": "scripted", "provider": {"type": "custom", "baseUrl": self.model_url},
               "storage": {"size": "1Gi"}})
    }

    /// `kubectl get cxa` as printed for the user.
    fn table(&self, ns: &str) -> String {
        self.cp
            .kubectl(&["-n", ns, "get", "cxa"])
            .unwrap_or_else(|e| e)
    }

    /// `kubectl get events` about one object (core v1 view, which also lists events.k8s.io ones).
    fn events(&self, ns: &str, name: &str) -> String {
        self.cp
            .kubectl(&[
                "-n",
                ns,
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={name}"),
            ])
            .unwrap_or_default()
    }

    /// `kubectl logs POD -c CONTAINER` (through the API server and the kubelet): all of it.
    fn logs(&self, ns: &str, pod: &str, container: &str) -> String {
        self.cp
            .kubectl(&["-n", ns, "logs", pod, "-c", container])
            .unwrap_or_else(|e| e)
    }

    /// The last 200 lines of [`World::logs`].
    fn logs_tail(&self, ns: &str, pod: &str, container: &str) -> String {
        let all = self.logs(ns, pod, container);
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(200)..].join("\n")
    }

    fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        self.json(&["-n", ns, "get", "pod", name])
    }

    /// The operator pods of the release and the Lease holder.
    fn operator_pods(&self) -> Vec<Value> {
        self.json(&[
            "-n",
            OPERATOR_NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=codex-operator",
        ])
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
    }

    fn lease_holder(&self, ns: &str) -> Option<String> {
        self.json(&["-n", ns, "get", "lease", "codex-operator"])
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
            .filter(|h| !h.is_empty())
    }

    /// The sidecar API of an agent, reached through its Service's endpoints (the EndpointSlice
    /// the controller-manager fills from the pod's readiness), with a token signed by the key in
    /// the agent's generated JWT Secret.
    /// On an external cluster, whose pod IPs this machine may not reach, through `kubectl
    /// port-forward` to the agent's pod instead.
    async fn sidecar(&self, ns: &str, name: &str, sub: &str) -> Sidecar {
        let (ip, port) = eventually(
            "the agent's Service endpoints",
            Duration::from_secs(60),
            async || {
                let slices = self.json(&[
                    "-n",
                    ns,
                    "get",
                    "endpointslices",
                    "-l",
                    &format!("kubernetes.io/service-name={name}"),
                ])?;
                let slice = slices["items"].as_array()?.first()?.clone();
                let ep = slice["endpoints"]
                    .as_array()?
                    .iter()
                    .find(|e| e["conditions"]["ready"] == true)?
                    .clone();
                let ip = ep["addresses"][0].as_str()?.to_owned();
                let port = slice["ports"][0]["port"].as_u64()?;
                Some((ip, port))
            },
        )
        .await;
        let secret = self
            .json(&["-n", ns, "get", "secret", &format!("{name}-jwt")])
            .expect("the JWT Secret");
        let token = Some(mint_from_secret(&secret, sub));
        if self.node.is_some() {
            return Sidecar {
                api: Api::new(&format!("http://{ip}:{port}"), token),
                _forward: None,
            };
        }
        let (forward, local) = self.port_forward(ns, name, port as u16);
        Sidecar {
            api: Api::new(&format!("http://127.0.0.1:{local}"), token),
            _forward: Some(forward),
        }
    }

    /// `kubectl port-forward pod/POD :PORT`; the local port it chose.
    fn port_forward(&self, ns: &str, pod: &str, port: u16) -> (PortForward, u16) {
        let mut child = std::process::Command::new(self.cp.bin.join("kubectl"))
            .env("KUBECONFIG", &self.cp.admin_kubeconfig)
            .args([
                "-n",
                ns,
                "port-forward",
                &format!("pod/{pod}"),
                &format!(":{port}"),
            ])
            .args(["--address", "127.0.0.1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl port-forward");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let local = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| {
                l.strip_prefix("Forwarding from 127.0.0.1:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("kubectl port-forward names its local port");
        // kubectl writes a line per connection: keep reading, or it dies of EPIPE.
        std::thread::spawn(move || lines.for_each(drop));
        (PortForward(child), local)
    }

    /// Whether the cluster is the harness's own (with its node); else prints why `what` is
    /// skipped on an external cluster.
    fn own_node(&self, what: &str) -> Option<&Node> {
        if self.node.is_none() {
            eprintln!(
                "NOTICE: skipping {what} on an external cluster: it needs the harness's own node"
            );
        }
        self.node.as_ref()
    }

    /// After the scenarios on an external cluster: removes what they made.
    fn clean_external(&self) {
        let _ = self
            .cp
            .helm(&["uninstall", RELEASE, "-n", OPERATOR_NS, "--wait"]);
        let _ = self.cp.kubectl(&[
            "delete",
            "namespace",
            "-l",
            "codex-e2e=scenario",
            "--wait=false",
        ]);
        let _ = self.cp.kubectl(&[
            "delete",
            "namespace",
            OPERATOR_NS,
            "codex-operator",
            "--wait=false",
        ]);
        let _ = self
            .cp
            .kubectl(&["delete", "runtimeclass", "nvidia", "--ignore-not-found"]);
        let _ = self
            .cp
            .kubectl(&["delete", "crd", CRD, "--ignore-not-found"]);
    }
}

/// A sidecar API client, and the port-forward it goes through (if any).
struct Sidecar {
    api: Api,
    _forward: Option<PortForward>,
}

impl std::ops::Deref for Sidecar {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A `kubectl port-forward` process, killed on drop.
struct PortForward(std::process::Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_e2e() {
    let t0 = Instant::now();
    let Some(w) = world().await else { return };
    let mut timings = Vec::new();
    macro_rules! scenario {
        ($name:literal, $f:expr) => {{
            let t = Instant::now();
            eprintln!("cluster: --- {} ---", $name);
            $f.await;
            timings.push(($name, t.elapsed()));
            eprintln!(
                "cluster: {} passed in {:.1}s",
                $name,
                t.elapsed().as_secs_f64()
            );
        }};
    }
    scenario!(
        "1. helm install, upgrade, uninstall; plain install",
        install(&w)
    );
    scenario!("2. examples and refused agents", examples_and_refusals(&w));
    scenario!(
        "2b. one agent the operator cannot decode stops no other",
        undecodable_agent(&w)
    );
    scenario!(
        "3. GPU scheduling by the real scheduler",
        gpu_scheduling(&w)
    );
    scenario!("4. a real turn through the cluster", real_turn(&w));
    scenario!("4b. the same turn on a Docker host", docker_host_turn(&w));
    scenario!(
        "5. suspend keeps the volume; resume keeps the sessions",
        suspend_resume(&w)
    );
    scenario!(
        "5b. storage changes on an existing claim",
        storage_changes(&w)
    );
    scenario!(
        "6. deleting an agent: the garbage collector removes every child",
        delete_agent(&w)
    );
    scenario!(
        "6b. names taken by other objects; delete and re-create",
        name_conflicts(&w)
    );
    scenario!(
        "8. PodSecurity restricted; a child the API server refuses",
        restricted(&w)
    );
    scenario!(
        "9. a new default image rolls out one agent at a time, cutting no turn; network policies",
        rollout_and_network_policy(&w)
    );
    scenario!(
        "7. two operator replicas: one leader, handover on kill",
        two_replicas(&w)
    );
    if w.node.is_none() {
        w.clean_external();
    }
    eprintln!(
        "cluster: start-up {:.1}s; e2e total {:.1}s",
        w.cp.startup.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    for (n, d) in timings {
        eprintln!("cluster:   {:>6.1}s  {n}", d.as_secs_f64());
    }
}

fn helm_install(w: &World, extra: &[&str]) -> Result<String, String> {
    let chart = repo().join("charts/codex-operator");
    let chart = chart.to_string_lossy();
    let repo_arg = format!(
        "image.repository={}",
        w.image.split(':').next().unwrap_or_default()
    );
    let tag_arg = format!(
        "image.tag={}",
        w.image.split(':').nth(1).unwrap_or("latest")
    );
    let pull_arg = format!("image.pullPolicy={}", w.pull_policy);
    let mut args = vec![
        "install",
        RELEASE,
        &chart,
        "-n",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        &repo_arg,
        "--set",
        &tag_arg,
        "--set",
        &pull_arg,
        "--wait",
        "--timeout",
        "3m",
    ];
    args.extend_from_slice(extra);
    w.cp.helm(&args)
}

/// `helm upgrade` of the release with `chart`, its values kept (`--reuse-values`) but for `sets`
/// (`--set` each), waiting up to 3 minutes.
fn helm_upgrade(w: &World, chart: &Path, sets: &[&str]) -> Result<String, String> {
    let chart = chart.to_string_lossy();
    let mut args = vec![
        "upgrade",
        RELEASE,
        &chart,
        "-n",
        OPERATOR_NS,
        "--reuse-values",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(["--wait", "--timeout", "3m"]);
    w.cp.helm(&args)
}

async fn install(w: &World) {
    // helm install on an empty cluster: the operator runs in the cluster (a pod on the node)
    // with the chart's ServiceAccount, so the chart's RBAC is what it has.
    let out = helm_install(w, &[]).unwrap_or_else(|e| panic!("helm install: {e}"));
    assert!(out.contains("STATUS: deployed"), "{out}");
    let pods = w.operator_pods();
    assert_eq!(pods.len(), 1, "one operator pod: {pods:?}");
    assert_eq!(
        pods[0]["spec"]["serviceAccountName"],
        format!("{RELEASE}-codex-operator")
    );
    assert_eq!(pods[0]["status"]["phase"], "Running");
    let holder = eventually(
        "the operator to take the Lease",
        Duration::from_secs(60),
        async || w.lease_holder(OPERATOR_NS),
    )
    .await;
    assert_eq!(
        holder,
        pods[0]["metadata"]["name"].as_str().unwrap_or_default()
    );

    // It reconciles: an agent becomes Ready (a sidecar pod on the node, probed for real).
    w.namespace("install", &[]);
    w.apply_agent("install", "first", w.custom_spec());
    w.wait_condition(
        "install",
        "first",
        "Ready",
        "True",
        Duration::from_secs(120),
    )
    .await;
    let table = w.table("install");
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("first") && l.contains("True")),
        "{table}"
    );

    // helm upgrade with a changed CRD (a new printer column) updates the CRD.
    let tmp = tempfile::tempdir().expect("tmp");
    let chart = tmp.path().join("codex-operator");
    copy_dir(&repo().join("charts/codex-operator"), &chart);
    let crd_file = chart.join("files/crd.yaml");
    let crd = std::fs::read_to_string(&crd_file).expect("crd");
    let marker = "  - additionalPrinterColumns:\n";
    assert!(crd.contains(marker), "the CRD has printer columns");
    std::fs::write(&crd_file, crd.replacen(marker, &format!("{marker}    - jsonPath: .spec.model\n      name: E2E-Upgraded\n      type: string\n"), 1)).expect("write");
    // On a cluster without the Prometheus Operator, and with one replica: neither a
    // ServiceMonitor (its API is absent) nor a PodDisruptionBudget (it would block drains).
    let out = helm_upgrade(
        w,
        &chart,
        &[
            "metrics.serviceMonitor.enabled=true",
            "podDisruptionBudget.enabled=true",
        ],
    )
    .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
    assert!(out.contains("has been upgraded"), "{out}");
    let cols = w.k(&[
        "get",
        "crd",
        CRD,
        "-o",
        "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
    ]);
    let pdbs = w.k(&["-n", OPERATOR_NS, "get", "pdb", "-o", "name"]);
    assert!(
        pdbs.trim().is_empty(),
        "no PodDisruptionBudget for one replica: {pdbs}"
    );
    assert!(
        cols.contains("E2E-Upgraded"),
        "helm upgrade updated the CRD: {cols}"
    );

    // helm uninstall keeps the CRD (resource-policy keep) and every CodexAgent.
    w.cp.helm(&["uninstall", RELEASE, "-n", OPERATOR_NS, "--wait"])
        .expect("helm uninstall");
    eventually(
        "the operator pods to go",
        Duration::from_secs(60),
        async || w.operator_pods().is_empty().then_some(()),
    )
    .await;
    assert!(
        w.cp.kubectl(&["get", "crd", CRD]).is_ok(),
        "the CRD survives helm uninstall"
    );
    assert!(
        w.agent("install", "first").is_some(),
        "the CodexAgent survives helm uninstall"
    );
    assert!(
        w.pod("install", "first").is_some(),
        "the agent's pod is left running"
    );

    // The plain path: kubectl apply --server-side the CRD, then install.yaml (image replaced).
    let crd_path = repo().join("manifests/crd.yaml");
    w.k(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &crd_path.to_string_lossy(),
    ]);
    let cols = w.k(&[
        "get",
        "crd",
        CRD,
        "-o",
        "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
    ]);
    assert!(
        !cols.contains("E2E-Upgraded"),
        "the plain CRD replaced the upgraded one: {cols}"
    );
    let install =
        std::fs::read_to_string(repo().join("manifests/install.yaml")).expect("install.yaml");
    let shipped = install
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("image: ")
                .map(|s| s.trim_matches('"').to_owned())
        })
        .expect("an image in install.yaml");
    let install = install.replace(&shipped, &w.image).replace(
        "imagePullPolicy: IfNotPresent",
        &format!("imagePullPolicy: {}", w.pull_policy),
    );
    w.cp.apply(&install, &[])
        .unwrap_or_else(|e| panic!("kubectl apply -f install.yaml: {e}"));
    w.k(&[
        "-n",
        "codex-operator",
        "rollout",
        "status",
        "deployment/codex-operator",
        "--timeout=180s",
    ]);
    w.apply_agent("install", "second", w.custom_spec());
    w.wait_condition(
        "install",
        "second",
        "Ready",
        "True",
        Duration::from_secs(120),
    )
    .await;
    w.cp.kubectl_as(
        &w.cp.admin_kubeconfig,
        &["delete", "-f", "-", "--wait"],
        Some(&install),
    )
    .expect("delete install.yaml");
    w.k(&["delete", "namespace", "install", "--wait=false"]);

    // helm install after the CRD was applied with kubectl only (no Helm metadata on it):
    // refused without adoption, then done with --take-ownership (what docs/operator.md says).
    w.k(&[
        "annotate",
        "crd",
        CRD,
        "meta.helm.sh/release-name-",
        "meta.helm.sh/release-namespace-",
        "helm.sh/resource-policy-",
    ]);
    w.k(&["label", "crd", CRD, "app.kubernetes.io/managed-by-"]);
    let err = helm_install(w, &[]).expect_err("helm refuses a CRD it does not own");
    assert!(
        err.contains("invalid ownership metadata") || err.contains("cannot be imported"),
        "{err}"
    );
    helm_install(w, &["--take-ownership"])
        .unwrap_or_else(|e| panic!("helm install --take-ownership: {e}"));
    eventually(
        "the reinstalled operator to lead",
        Duration::from_secs(60),
        async || {
            let pods = w.operator_pods();
            let holder = w.lease_holder(OPERATOR_NS)?;
            pods.iter()
                .any(|p| p["metadata"]["name"] == holder.as_str())
                .then_some(())
        },
    )
    .await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

async fn examples_and_refusals(w: &World) {
    // Every example, applied as a user would (with the Secrets it ships), is admitted and gets
    // a status from the operator.
    w.namespace("examples", &[]);
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("manifests/examples"))
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in &files {
        let out = w.k(&["-n", "examples", "apply", "-f", &f.to_string_lossy()]);
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("codexagent.agents.codex-operator.dev/") {
                names.push(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    }
    assert_eq!(
        names.len(),
        files.len(),
        "one CodexAgent per example: {names:?}"
    );
    for n in &names {
        let Some((_, reason, message)) = within(Duration::from_secs(90), async || {
            w.condition("examples", n, "Ready")
        })
        .await
        else {
            w.dump("examples", n);
            panic!("no Ready condition on example {n} in 90 s");
        };
        eprintln!("cluster: example {n}: Ready reason {reason}: {message}");
    }
    eprintln!("{}", w.table("examples"));

    // Bad agents refused by the API server at apply time, with the message the user reads.
    let base = w.custom_spec();
    let with = |patch: Value| {
        let mut s = base.clone();
        merge(&mut s, patch);
        s
    };
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "bad-provider",
            "unknown provider type",
            with(json!({"provider": {"type": "anthropic", "baseUrl": null}})),
            "Unsupported value: \"anthropic\"",
        ),
        (
            "no-base-url",
            "custom without baseUrl",
            with(json!({"provider": {"baseUrl": null}})),
            "provider type custom needs baseUrl",
        ),
        (
            "zero-gpus",
            "gpu.count below its minimum",
            with(json!({"gpu": {"count": 0}})),
            "spec.gpu.count",
        ),
        (
            "bad-port",
            "a local model server on the sidecar's port",
            json!({"model": "m", "provider": {"type": "local", "local": {"engine": "other", "image": "x", "port": 8080}}}),
            "port 8080 is the sidecar's",
        ),
        (
            "huge-weight",
            "an affinity weight out of range",
            with(
                json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 3000000000u64, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}]}}}),
            ),
            "weight",
        ),
        (
            "coder.v2",
            "a name with a dot (cannot name the Service)",
            base.clone(),
            "metadata.name",
        ),
        (
            "1coder",
            "a name starting with a digit (cannot name the Service)",
            base.clone(),
            "metadata.name",
        ),
        (
            "a234567890123456789012345678901234567890123456789012345678901234",
            "a name over 63 characters",
            base.clone(),
            "metadata.name",
        ),
    ];
    let mut failures = Vec::new();
    for (name, what, spec, want) in cases {
        let doc = json!({"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
                         "metadata": {"name": name, "namespace": "examples"}, "spec": spec});
        match w.cp.apply(&doc.to_string(), &[]) {
            Ok(out) => failures.push(format!("{what}: accepted ({out})")),
            Err(e) if e.contains(want) => eprintln!("cluster: refused {what}: {}", e.trim()),
            Err(e) => failures.push(format!("{what}: refused without {want:?}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // A JWT key the sidecar would refuse (under 32 bytes): no crash-looping pod, a condition.
    let short = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "short-key", "namespace": "examples",
                       "labels": {"agents.codex-operator.dev/allow-use": "true"}},
                       "stringData": {"jwt.key": "too-short\n"}});
    w.cp.apply(&short.to_string(), &[]).expect("secret");
    let mut spec = w.custom_spec();
    spec["auth"] = json!({"jwtSecretRef": {"name": "short-key", "key": "jwt.key"}});
    w.apply_agent("examples", "weak-key", spec);
    let message = w
        .wait_reason(
            "examples",
            "weak-key",
            "Ready",
            "InvalidSecret",
            Duration::from_secs(60),
        )
        .await;
    assert!(
        message.contains("holds 9 bytes") && message.contains("at least 32"),
        "{message}"
    );
    assert!(
        w.pod("examples", "weak-key").is_none(),
        "no pod with a key the sidecar refuses"
    );

    // A Secret whose owner has not allowed CodexAgents to use it (no opt-in label): not used,
    // no pod, and the condition says how to allow it; once labelled, the agent proceeds.
    let unlabelled = json!({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "not-offered", "namespace": "examples"},
                            "stringData": {"jwt.key": "a-signing-key-nobody-offered-0123456789"}});
    w.cp.apply(&unlabelled.to_string(), &[]).expect("secret");
    let mut spec = w.custom_spec();
    spec["auth"] = json!({"jwtSecretRef": {"name": "not-offered", "key": "jwt.key"}});
    w.apply_agent("examples", "borrower", spec);
    let message = w
        .wait_reason(
            "examples",
            "borrower",
            "Ready",
            "SecretNotAllowed",
            Duration::from_secs(60),
        )
        .await;
    assert!(
        message.contains(
            "kubectl label secret not-offered agents.codex-operator.dev/allow-use=true -n examples"
        ),
        "{message}"
    );
    assert!(
        !message.contains("nobody-offered"),
        "names only, never a value: {message}"
    );
    eventually(
        "a SecretNotAllowed Event",
        Duration::from_secs(30),
        async || {
            w.events("examples", "borrower")
                .contains("SecretNotAllowed")
                .then_some(())
        },
    )
    .await;
    assert!(
        w.pod("examples", "borrower").is_none(),
        "no pod with a Secret its owner did not allow"
    );
    w.k(&[
        "-n",
        "examples",
        "label",
        "secret",
        "not-offered",
        "agents.codex-operator.dev/allow-use=true",
    ]);
    let (_, reason, _) = eventually(
        "the labelled Secret to be used",
        Duration::from_secs(90),
        async || {
            w.condition("examples", "borrower", "Ready")
                .filter(|c| c.1 != "SecretNotAllowed")
        },
    )
    .await;
    eventually("the agent's pod", Duration::from_secs(30), async || {
        w.pod("examples", "borrower")
    })
    .await;
    eprintln!("cluster: an unlabelled Secret was refused; once labelled, Ready reason {reason}");
    w.k(&["delete", "namespace", "examples", "--wait=false"]);
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// Removes the bounds of every `weight` in a CRD schema (what the CRD looked like before they
/// were added).
fn unbound_weights(v: &mut Value) {
    if let Some(obj) = v.as_object_mut() {
        if let Some(w) = obj
            .get_mut("properties")
            .and_then(|p| p.get_mut("weight"))
            .and_then(Value::as_object_mut)
        {
            for k in ["minimum", "maximum", "format"] {
                w.remove(k);
            }
        }
        for child in obj.values_mut() {
            unbound_weights(child);
        }
    } else if let Some(items) = v.as_array_mut() {
        for child in items {
            unbound_weights(child);
        }
    }
}

/// An agent stored while the CRD had no bounds on affinity weights (3000000000 does not fit the
/// Rust `i32`): after the operator restarts, every other agent is still reconciled, and the bad
/// one is reported on itself (Event, condition), not in a LIST that fails for everyone.
async fn undecodable_agent(w: &World) {
    w.namespace("decode", &[]);
    let mut crd: Value =
        serde_json::from_str(&w.k(&["get", "crd", CRD, "-o", "json"])).expect("crd json");
    let meta = crd["metadata"].as_object_mut().expect("metadata");
    for k in [
        "resourceVersion",
        "managedFields",
        "uid",
        "creationTimestamp",
        "generation",
    ] {
        meta.remove(k);
    }
    crd.as_object_mut().expect("crd").remove("status");
    let original = crd.to_string();
    let mut loose = crd.clone();
    unbound_weights(&mut loose);
    w.cp.kubectl_as(
        &w.cp.admin_kubeconfig,
        &["replace", "-f", "-"],
        Some(&loose.to_string()),
    )
    .expect("the CRD without weight bounds");
    let mut bad = w.custom_spec();
    bad["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 3_000_000_000u64, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/os", "operator": "Exists"}]}}]}});
    let stored = eventually("the loose CRD to take effect", Duration::from_secs(30), async || {
        let doc = json!({"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
                         "metadata": {"name": "huge-weight", "namespace": "decode"}, "spec": bad});
        w.cp.apply(&doc.to_string(), &[]).ok()
    })
    .await;
    eprintln!("cluster: stored under the loose CRD: {}", stored.trim());
    w.cp.kubectl_as(
        &w.cp.admin_kubeconfig,
        &["replace", "-f", "-"],
        Some(&original),
    )
    .expect("the CRD restored");
    // A restart makes the operator LIST every agent again.
    for p in w.operator_pods() {
        if let Some(pod) = p["metadata"]["name"].as_str() {
            w.k(&["-n", OPERATOR_NS, "delete", "pod", pod, "--wait=false"]);
        }
    }
    w.apply_agent("decode", "fine", w.custom_spec());
    w.wait_condition("decode", "fine", "Ready", "True", Duration::from_secs(150))
        .await;
    let message = w
        .wait_reason(
            "decode",
            "huge-weight",
            "Ready",
            "InvalidObject",
            Duration::from_secs(60),
        )
        .await;
    eprintln!("cluster: the undecodable agent: InvalidObject: {message}");
    assert!(message.contains("3000000000"), "{message}");
    let events = w.events("decode", "huge-weight");
    assert!(events.contains("InvalidObject"), "{events}");
    let logs: String = w
        .operator_pods()
        .iter()
        .filter_map(|p| {
            p["metadata"]["name"]
                .as_str()
                .map(|n| w.logs(OPERATOR_NS, n, "operator"))
        })
        .collect();
    assert!(
        logs.contains("skipping a CodexAgent that does not decode") && logs.contains("huge-weight"),
        "a log line names it"
    );
    eprintln!("{}", w.table("decode"));
    w.k(&["delete", "namespace", "decode", "--wait=false"]);
}

async fn gpu_scheduling(w: &World) {
    if w.node.is_none() && std::env::var("CODEX_E2E_GPUS").is_ok_and(|v| v == "1") {
        return gpu_on_external(w).await;
    }
    let Some(node) = w.own_node("GPU scheduling (it advertises GPUs on the node; CODEX_E2E_GPUS=1 runs an agent on a real GPU instead)") else {
        return;
    };
    w.namespace("gpu", &[]);
    // The node is labelled with its GPU product (as GPU feature discovery does) but has no GPU
    // resource yet: the scheduler's reason is the missing resource, not the selector.
    node.label(&[("nvidia.com/gpu.product", Some("NVIDIA-H200"))])
        .await
        .expect("label");
    // RuntimeClass admission needs the class to exist (the GPU operator installs it).
    w.cp.apply(&json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"}).to_string(), &[])
        .expect("RuntimeClass");

    w.apply_agent("gpu", "gpu-agent", {
        let mut s = w.custom_spec();
        s["gpu"] = json!({"count": 1, "product": "NVIDIA-H200", "runtimeClassName": "nvidia"});
        s
    });
    let mig = {
        let mut s = w.custom_spec();
        s["gpu"] = json!({"count": 1, "resourceName": "nvidia.com/mig-1g.10gb"});
        s
    };
    w.apply_agent("gpu", "mig-agent", mig);
    for name in ["gpu-agent", "mig-agent"] {
        let Some((_, reason, message)) = within(Duration::from_secs(90), async || {
            // (The first attempt may still see the volume claim unbound.)
            w.condition("gpu", name, "PodScheduled")
                .filter(|c| c.0 == "False" && c.2.contains("Insufficient"))
        })
        .await
        else {
            w.dump("gpu", name);
            panic!("{name}: no PodScheduled=False Unschedulable");
        };
        assert!(
            message.contains("Insufficient nvidia.com/"),
            "{name}: the scheduler's reason reaches the agent: {reason}: {message}"
        );
        let pod = w.pod("gpu", name).expect("pod");
        assert_eq!(pod["spec"]["nodeName"], Value::Null, "{name} not scheduled");
    }
    let table = w.table("gpu");
    eprintln!("{table}");
    assert!(
        table.contains("Insufficient"),
        "kubectl get cxa shows why: {table}"
    );

    // The node advertises the resources (what a device plugin does): both get scheduled.
    node.set_extended("nvidia.com/gpu", 1).await.expect("gpu");
    node.set_extended("nvidia.com/mig-1g.10gb", 1)
        .await
        .expect("mig");
    for (name, resource) in [
        ("gpu-agent", "nvidia.com/gpu"),
        ("mig-agent", "nvidia.com/mig-1g.10gb"),
    ] {
        w.wait_condition("gpu", name, "PodScheduled", "True", Duration::from_secs(90))
            .await;
        let pod = w.pod("gpu", name).expect("pod");
        assert_eq!(pod["spec"]["nodeName"], NODE_NAME);
        let sidecar = &pod["spec"]["containers"][0];
        assert_eq!(
            sidecar["resources"]["limits"][resource], "1",
            "{name}: {sidecar}"
        );
        let tolerations = pod["spec"]["tolerations"].to_string();
        assert!(
            tolerations.contains("nvidia.com/gpu"),
            "{name}: GPU taint tolerated: {tolerations}"
        );
        if name == "gpu-agent" {
            assert_eq!(pod["spec"]["runtimeClassName"], "nvidia");
            assert_eq!(
                pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"],
                "NVIDIA-H200"
            );
        }
    }
    // A RuntimeClass whose handler the node's runtime lacks: the pod is scheduled, its sandbox
    // cannot be created, and the agent says so with the runtime's message (the pod only says
    // ContainerCreating; the kubelet's FailedCreatePodSandBox Event says why).
    w.cp.apply(&json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "missing-runtime"}, "handler": "no-such-handler"}).to_string(), &[])
        .expect("RuntimeClass");
    node.set_extended("nvidia.com/gpu", 2).await.expect("gpu");
    w.apply_agent("gpu", "no-runtime", {
        let mut s = w.custom_spec();
        s["gpu"] = json!({"count": 1, "runtimeClassName": "missing-runtime"});
        s
    });
    let message = w
        .wait_reason(
            "gpu",
            "no-runtime",
            "Ready",
            "SandboxCreationFailed",
            Duration::from_secs(90),
        )
        .await;
    eprintln!("cluster: a RuntimeClass the node cannot run: SandboxCreationFailed: {message}");
    assert!(
        message.contains("no-such-handler"),
        "the runtime's message: {message}"
    );
    w.k(&["delete", "namespace", "gpu", "--wait=false"]);
    w.k(&["delete", "runtimeclass", "missing-runtime"]);
    node.set_extended("nvidia.com/gpu", 0).await.expect("gpu");
    node.set_extended("nvidia.com/mig-1g.10gb", 0)
        .await
        .expect("mig");
}

/// On an external cluster with GPUs (`CODEX_E2E_GPUS=1`): an agent asking for one GPU is
/// scheduled, becomes Ready, and the sidecar's NVML sees the GPU (`GPUVerified=True`).
async fn gpu_on_external(w: &World) {
    w.namespace("gpu", &[]);
    let mut spec = w.custom_spec();
    spec["gpu"] = json!({"count": 1});
    w.apply_agent("gpu", "gpu-agent", spec);
    w.wait_condition(
        "gpu",
        "gpu-agent",
        "Ready",
        "True",
        Duration::from_secs(600),
    )
    .await;
    let (_, reason, message) = w
        .wait_condition(
            "gpu",
            "gpu-agent",
            "GPUVerified",
            "True",
            Duration::from_secs(120),
        )
        .await;
    eprintln!("cluster: GPUVerified {reason}: {message}");
    w.k(&["delete", "namespace", "gpu", "--wait=false"]);
}

async fn real_turn(w: &World) {
    w.namespace("chat", &[]);
    w.apply_agent("chat", "chat", w.custom_spec());
    w.wait_condition("chat", "chat", "Ready", "True", Duration::from_secs(120))
        .await;
    // Nothing in an agent's pod calls the API: no service-account token is mounted.
    let pod = w.pod("chat", "chat").expect("pod");
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(
        !volumes.contains("serviceAccountToken"),
        "no token volume: {volumes}"
    );
    let api = w.sidecar("chat", "chat", "alice").await;
    let (code, body) = api.create(json!({"id": "s1"})).await;
    assert!(code == 201 || code == 200, "{code} {body}");
    let (code, body) = api.send("s1", "hello from the cluster").await;
    assert_eq!(code, 202, "{body}");
    let events = api
        .until_results("s1", 0, 1, Duration::from_secs(60))
        .await
        .expect("events");
    let result = events
        .iter()
        .rev()
        .find(|e| e["type"] == "result")
        .expect("a result");
    assert_eq!(result["status"], "completed", "{result}");
    assert!(
        result["text"]
            .as_str()
            .is_some_and(|t| t.contains("hello from the cluster")),
        "{result}"
    );
    // PID 1 of the sidecar container is the image's tini (the pod sets only arguments), so what
    // codex leaves behind is reaped: no zombie after codex started and ran a turn.
    let procs = w.k(&[
        "-n",
        "chat",
        "exec",
        "chat",
        "-c",
        "sidecar",
        "--",
        "sh",
        "-c",
        "cat /proc/1/comm; for s in /proc/[0-9]*/stat; do cut -d' ' -f2,3 \"$s\"; done 2>/dev/null",
    ]);
    assert_eq!(procs.lines().next(), Some("tini"), "{procs}");
    assert!(
        !procs.lines().any(|l| l.ends_with(" Z")),
        "no zombie in the sidecar container: {procs}"
    );
    // The generated key is an ES256 pair; the pod holds only its public half.
    let secret = w
        .json(&["-n", "chat", "get", "secret", "chat-jwt"])
        .expect("the JWT Secret");
    let mut keys: Vec<&String> = secret["data"].as_object().expect("data").keys().collect();
    keys.sort();
    assert_eq!(keys, ["jwt.key", "jwt.pub"], "{}", secret["data"]);
    assert_no_private_key_in_the_pod(w, "chat", "chat");
    // The sidecar checks ES256 with an audience: a token without the audience is refused.
    let (code, body) = api
        .with_token({
            let key = secret["data"]["jwt.key"].as_str().expect("jwt.key");
            use base64::Engine;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(key)
                .expect("base64");
            let now = jsonwebtoken::get_current_timestamp();
            Some(
                jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
                    &json!({"sub": "alice", "exp": now + 60}),
                    &jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("ec"),
                )
                .expect("sign"),
            )
        })
        .call("GET", "/v1/status", None)
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (401, Some("missing_claim")),
        "{body}"
    );
    // Another subject sees nothing of alice's.
    let bob = w.sidecar("chat", "chat", "bob").await;
    let (code, _) = bob.events("s1", 0, 0).await;
    assert_eq!(code, 404);

    // A turn whose model asks for a shell command: codex runs it inside the pod, under the
    // agent's sandbox setting.
    for (agent, sandbox) in [("chat", "workspace-write"), ("full", "danger-full-access")] {
        if agent != "chat" {
            let mut spec = w.custom_spec();
            spec["sidecar"] = json!({"sandbox": sandbox});
            w.apply_agent("chat", agent, spec);
            w.wait_condition("chat", agent, "Ready", "True", Duration::from_secs(120))
                .await;
        }
        let api = w.sidecar("chat", agent, "alice").await;
        let (_, st) = api.call("GET", "/v1/status", None).await;
        let check = st["sandbox_check"].clone();
        assert_eq!(check["mode"], sandbox, "{st}");
        let (cond_status, reason, message) = w
            .wait_condition_any("chat", agent, "SandboxReady", Duration::from_secs(60))
            .await;
        eprintln!(
            "cluster: {sandbox}: /v1/status sandbox_check {check}; SandboxReady={cond_status} {reason}: {message}"
        );
        if check["ok"] == false {
            // Codex's sandbox cannot work in this container: the sidecar says so, and why, in
            // /v1/status, in its start-up log and in the agent's condition.
            assert_ne!(sandbox, "danger-full-access", "no sandbox to fail");
            let error = check["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("bwrap") || error.contains("sandbox"),
                "{check}"
            );
            assert_eq!(
                (cond_status.as_str(), reason.as_str()),
                ("False", "SandboxUnavailable"),
                "{message}"
            );
            assert!(
                message.contains(error),
                "the condition carries the sidecar's reason: {message}"
            );
            assert!(
                w.logs("chat", agent, "sidecar")
                    .contains("codex's sandbox does not work here"),
                "start-up log"
            );
            continue;
        }
        assert_eq!(
            (cond_status.as_str(), reason.as_str()),
            ("True", "SandboxWorks"),
            "{message}"
        );
        let id = format!("shell-{agent}");
        let (code, body) = api.create(json!({"id": id})).await;
        assert!(code == 201 || code == 200, "{code} {body}");
        let (code, body) = api
            .send(
                &id,
                "[[exec=echo ran-in-$(hostname) > proof.txt && cat proof.txt && id -u]]",
            )
            .await;
        assert_eq!(code, 202, "{body}");
        let events = api
            .until_results(&id, 0, 1, Duration::from_secs(90))
            .await
            .expect("events");
        let result = events
            .iter()
            .rev()
            .find(|e| e["type"] == "result")
            .expect("a result");
        let text = result["text"].as_str().unwrap_or_default();
        eprintln!("cluster: shell command under {sandbox}: {text}");
        assert_eq!(result["status"], "completed", "{result}");
        assert!(
            text.contains(&format!("ran-in-{agent}")),
            "{sandbox}: the command ran in the agent's pod: {text}"
        );
    }

    key_rotation(w, "chat", "full").await;
}

/// A new key in the agent's JWT Secret reaches the sidecar without a pod restart (the kubelet
/// updates the Secret volume, the sidecar re-reads its key file); tokens of the old key stay
/// valid for the overlap; the operator's probe keeps working throughout (`SandboxReady` stays).
async fn key_rotation(w: &World, ns: &str, agent: &str) {
    let uid = |w: &World| w.pod(ns, agent).map(|p| p["metadata"]["uid"].clone());
    let before = uid(w);
    let old = w.sidecar(ns, agent, "alice").await;
    assert_eq!(old.call("GET", "/v1/status", None).await.0, 200);
    let t = Instant::now();
    // A new ES256 pair, as a user rotating the generated key would write it.
    let pair = rcgen::KeyPair::generate().expect("a P-256 key pair");
    let patch =
        json!({"stringData": {"jwt.key": pair.serialize_pem(), "jwt.pub": pair.public_key_pem()}})
            .to_string();
    w.k(&[
        "-n",
        ns,
        "patch",
        "secret",
        &format!("{agent}-jwt"),
        "--type=merge",
        "-p",
        &patch,
    ]);
    let new = w.sidecar(ns, agent, "alice").await;
    eventually(
        "the sidecar to accept the Secret's new key",
        Duration::from_secs(150),
        async || (new.call("GET", "/v1/status", None).await.0 == 200).then_some(()),
    )
    .await;
    eprintln!(
        "cluster: a rotated JWT key reached the running sidecar in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let (code, st) = old.call("GET", "/v1/status", None).await;
    assert_eq!(
        code, 200,
        "the old key is still valid during the overlap: {st}"
    );
    assert_eq!(uid(w), before, "no pod restart");
    assert_no_private_key_in_the_pod(w, ns, agent);
    let (status, reason, _) = w
        .condition(ns, agent, "SandboxReady")
        .expect("SandboxReady");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "SandboxWorks"));
    let (status, _, message) = w.condition(ns, agent, "Ready").expect("Ready");
    assert_eq!(status, "True", "{message}");
}

/// A token for `sub` signed with the key a generated JWT Secret holds: ES256 with its private
/// key `jwt.key` and the default audience when it also holds `jwt.pub` (a key pair), HS256 with
/// `jwt.key` otherwise.
fn mint_from_secret(secret: &Value, sub: &str) -> String {
    use base64::Engine;
    let field = |k: &str| {
        secret["data"][k].as_str().map(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .expect("base64")
        })
    };
    let mut key = field("jwt.key").expect("jwt.key");
    if field("jwt.pub").is_some() {
        return mint_es256(sub, &key);
    }
    // As the sidecar and the operator read a key: trailing newlines are not part of it.
    while key.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        key.pop();
    }
    mint_with(sub, None, 600, &key)
}

/// An ES256 token for `sub` (10 minutes, `aud` `codex-sidecar`, the operator's default for a
/// generated key pair) signed with the PKCS#8 PEM `private_key`.
fn mint_es256(sub: &str, private_key: &[u8]) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"sub": sub, "iat": now, "exp": now + 600, "aud": "codex-sidecar"});
    let key = jsonwebtoken::EncodingKey::from_ec_pem(private_key).expect("a P-256 private key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .expect("sign")
}

/// The pod's filesystem holds the public key of the agent's generated pair and no private key:
/// the JWT mount lists only `jwt.pub`, and no file under `/etc/codex-sidecar` is a private key
/// (so a command the model runs cannot mint tokens).
fn assert_no_private_key_in_the_pod(w: &World, ns: &str, pod: &str) {
    let listing = w.k(&[
        "-n",
        ns,
        "exec",
        pod,
        "-c",
        "sidecar",
        "--",
        "sh",
        "-c",
        "ls -A /etc/codex-sidecar/jwt/; echo ---; grep -rl 'PRIVATE KEY' /etc/codex-sidecar/ 2>/dev/null; true",
    ]);
    let (mount, private) = listing.split_once("---").expect("both parts");
    let names: Vec<&str> = mount
        .split_whitespace()
        .filter(|n| !n.starts_with(".."))
        .collect();
    assert_eq!(names, ["jwt.pub"], "the JWT mount: {listing}");
    assert!(
        private.trim().is_empty(),
        "files holding a private key in the pod: {listing}"
    );
    eprintln!("cluster: the pod's JWT mount holds only {names:?}");
}

/// `codex-operator docker apply -f agent.yaml` with the project's image on the local engine: a
/// real turn and a shell command, then `docker delete --volumes`.
async fn docker_host_turn(w: &World) {
    if w.own_node("the Docker-host turn").is_none() {
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    let operator = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("codex-operator");
    assert!(
        operator.is_file(),
        "{} (cargo build --workspace --bins)",
        operator.display()
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let manifest = tmp.path().join("agent.yaml");
    let name = format!("e2e-docker-{}", std::process::id());
    let agent = json!({"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
        "metadata": {"name": name},
        "spec": {"model": "scripted", "image": w.image, "provider": {"type": "custom", "baseUrl": w.model_url},
                 "sidecar": {"sandbox": "danger-full-access"}}});
    std::fs::write(&manifest, agent.to_string()).expect("manifest");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&operator)
            .args(args)
            .env("CODEX_OPERATOR_DOCKER_DIR", tmp.path().join("state"))
            .env("CODEX_OPERATOR_SECRETS_DIR", tmp.path().join("secrets"))
            .output()
            .expect("codex-operator");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "codex-operator {}: {text}",
            args.join(" ")
        );
        text
    };
    let out = run(&["docker", "apply", "-f", &manifest.to_string_lossy()]);
    eprintln!("cluster: codex-operator docker apply:\n{out}");
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_owned()))
    };
    let endpoint = field("endpoint").expect("an endpoint");
    // The generated key is an ES256 pair on the host: the private key (0600) for clients, the
    // public key for the container, which requires the default audience.
    let key_file = PathBuf::from(field("jwt key").expect("a key file"));
    let key = std::fs::read(&key_file).expect("the key");
    assert!(
        key.starts_with(b"-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 PEM"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{}", key_file.display());
    }
    assert!(field("jwt pub").is_some(), "{out}");
    assert_eq!(field("jwt aud").as_deref(), Some("codex-sidecar"), "{out}");
    let api = Api::new(&endpoint, Some(mint_es256("alice", &key)));
    eventually(
        "the sidecar on the Docker host to be ready",
        Duration::from_secs(60),
        async || {
            let (code, _) = api.call("GET", "/readyz", None).await;
            (code == 200).then_some(())
        },
    )
    .await;
    let (code, body) = api.create(json!({"id": "d1"})).await;
    assert!(code == 201 || code == 200, "{code} {body}");
    api.send("d1", "hello from docker").await;
    api.send(
        "d1",
        "[[exec=echo ran-on-the-docker-host && id -u && echo keys: $(ls -A /etc/codex-sidecar/jwt)]]",
    )
    .await;
    let events = api
        .until_results("d1", 0, 2, Duration::from_secs(90))
        .await
        .expect("events");
    let texts: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "result")
        .filter_map(|e| e["text"].as_str())
        .collect();
    eprintln!("cluster: Docker host results: {texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("hello from docker")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("ran-on-the-docker-host")),
        "{texts:?}"
    );
    // The container holds the public half of the key only (seen from outside the sandbox), and
    // a command the model runs finds no private key: under Landlock isolation it cannot even
    // list the key directory.
    let container = field("created").expect("the container's name");
    let listed = std::process::Command::new("docker")
        .args(["exec", &container, "ls", "-A", "/etc/codex-sidecar/jwt"])
        .output()
        .expect("docker exec");
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "jwt.pub",
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("keys: jwt.pub") || t.contains("Permission denied"))
            && !texts.iter().any(|t| t.contains("jwt.key")),
        "{texts:?}"
    );
    run(&["docker", "delete", &name, "--volumes"]);
}

/// Reads every event of session `id` from the start.
async fn all_events(api: &Api, id: &str) -> Vec<Value> {
    let (code, body) = api.events(id, 0, 0).await;
    assert_eq!(code, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

async fn suspend_resume(w: &World) {
    let api = w.sidecar("chat", "chat", "alice").await;
    let (_, before) = api.call("GET", "/v1/sessions/s1", None).await;
    let events_before = all_events(&api, "s1").await;
    let pod_uid = w
        .pod("chat", "chat")
        .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned))
        .expect("pod");
    w.set_suspend("chat", "chat", true);
    eventually("the pod to go", Duration::from_secs(60), async || {
        w.pod("chat", "chat").is_none().then_some(())
    })
    .await;
    let (_, reason, _) = w
        .wait_condition("chat", "chat", "Suspended", "True", Duration::from_secs(30))
        .await;
    eprintln!("cluster: suspended ({reason})\n{}", w.table("chat"));
    let pvc = w
        .json(&["-n", "chat", "get", "pvc", "chat-state"])
        .expect("the PVC is kept");
    assert_eq!(pvc["status"]["phase"], "Bound");

    w.set_suspend("chat", "chat", false);
    w.wait_condition("chat", "chat", "Ready", "True", Duration::from_secs(120))
        .await;
    let new_uid = w
        .pod("chat", "chat")
        .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned))
        .expect("pod");
    assert_ne!(new_uid, pod_uid, "a new pod");
    let api = w.sidecar("chat", "chat", "alice").await;
    let (code, after) = api.call("GET", "/v1/sessions/s1", None).await;
    assert_eq!(code, 200, "the session survives: {after}");
    assert_eq!(after["thread_id"], before["thread_id"], "same thread");
    let events_after = all_events(&api, "s1").await;
    assert!(
        events_after.len() >= events_before.len(),
        "the event log survives"
    );
    assert_eq!(
        events_after[..events_before.len()],
        events_before[..],
        "the same events, in order"
    );
    // And the thread continues where it was.
    let (code, _) = api.send("s1", "still there?").await;
    assert_eq!(code, 202);
    let next = events_after
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0);
    let events = api
        .until_results("s1", next, 1, Duration::from_secs(60))
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "result" && e["status"] == "completed"),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| e["type"] == "init"),
        "no new thread: {events:?}"
    );
}

/// `storage.size` grows the claim (the StorageClass allows expansion); a change a claim cannot
/// take (another StorageClass) shows in `StorageSynced` instead of being ignored.
async fn storage_changes(w: &World) {
    if w.own_node("storage changes (they need the harness's expandable StorageClass)")
        .is_none()
    {
        return;
    }
    let patch = json!({"spec": {"storage": {"size": "2Gi"}}}).to_string();
    w.k(&[
        "-n",
        "chat",
        "patch",
        "cxa",
        "chat",
        "--type=merge",
        "-p",
        &patch,
    ]);
    eventually(
        "the claim to ask for 2Gi",
        Duration::from_secs(60),
        async || {
            let pvc = w.json(&["-n", "chat", "get", "pvc", "chat-state"])?;
            (pvc["spec"]["resources"]["requests"]["storage"] == "2Gi").then_some(())
        },
    )
    .await;
    let (status, reason, message) = w
        .wait_condition_any("chat", "chat", "StorageSynced", Duration::from_secs(30))
        .await;
    eprintln!("cluster: after storage.size 2Gi: StorageSynced={status} {reason}: {message}");
    assert_eq!(status, "True", "{reason}: {message}");
    let patch = json!({"spec": {"storage": {"storageClassName": "another-class"}}}).to_string();
    w.k(&[
        "-n",
        "chat",
        "patch",
        "cxa",
        "chat",
        "--type=merge",
        "-p",
        &patch,
    ]);
    let message = w
        .wait_reason(
            "chat",
            "chat",
            "StorageSynced",
            "StorageChangeNotApplied",
            Duration::from_secs(60),
        )
        .await;
    assert!(message.contains("another-class"), "{message}");

    // A volume the kubelet cannot mount (its directory is gone while the agent was suspended):
    // the pod only says ContainerCreating; the agent says why, from the kubelet's Event.
    w.apply_agent("chat", "nomount", w.custom_spec());
    w.wait_condition("chat", "nomount", "Ready", "True", Duration::from_secs(120))
        .await;
    w.set_suspend("chat", "nomount", true);
    w.wait_reason(
        "chat",
        "nomount",
        "Ready",
        "Suspended",
        Duration::from_secs(60),
    )
    .await;
    eventually(
        "the suspended pod to go",
        Duration::from_secs(60),
        async || w.pod("chat", "nomount").is_none().then_some(()),
    )
    .await;
    let pv = w.k(&[
        "-n",
        "chat",
        "get",
        "pvc",
        "nomount-state",
        "-o",
        "jsonpath={.spec.volumeName}",
    ]);
    let path = w.k(&[
        "get",
        "pv",
        pv.trim(),
        "-o",
        "jsonpath={.spec.hostPath.path}",
    ]);
    std::fs::remove_dir_all(path.trim()).expect("removing the volume's directory");
    w.set_suspend("chat", "nomount", false);
    let message = w
        .wait_reason(
            "chat",
            "nomount",
            "Ready",
            "VolumeMountFailed",
            Duration::from_secs(120),
        )
        .await;
    eprintln!("cluster: a volume that cannot be mounted: VolumeMountFailed: {message}");
    assert!(
        message.contains("MountVolume"),
        "the kubelet's message: {message}"
    );
    let pod = w.pod("chat", "nomount").expect("pod");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating",
        "the pod itself says no more than ContainerCreating"
    );
    w.k(&["-n", "chat", "delete", "cxa", "nomount"]);
}

async fn delete_agent(w: &World) {
    let uid = w
        .agent("chat", "chat")
        .and_then(|a| a["metadata"]["uid"].as_str().map(str::to_owned))
        .expect("uid");
    w.k(&["-n", "chat", "delete", "cxa", "chat"]);
    let kinds = [
        "pod/chat",
        "service/chat",
        "configmap/chat-config",
        "secret/chat-jwt",
        "persistentvolumeclaim/chat-state",
    ];
    // The garbage collector re-reads discovery periodically: a new CRD's kind can take ~30-60 s.
    let left = within(Duration::from_secs(120), async || {
        let left: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| w.cp.kubectl(&["-n", "chat", "get", k]).is_ok())
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    if left.is_none() {
        let remaining: Vec<String> = kinds
            .iter()
            .filter_map(|k| {
                w.json(&["-n", "chat", "get", k])
                    .map(|o| format!("{k} owners {}", o["metadata"]["ownerReferences"]))
            })
            .collect();
        panic!(
            "the garbage collector left children of {uid}: {remaining:?}\n{}",
            w.cp.log_tail("kube-controller-manager", 20)
        );
    }
}

async fn name_conflicts(w: &World) {
    w.namespace("names", &[]);
    // A user's Service with the agent's name: left alone (no owner reference added, selector
    // kept) and reported; once the user removes it, the agent takes the name.
    let users = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "namespace": "names"},
                       "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}});
    w.cp.apply(&users.to_string(), &[]).expect("user's Service");
    w.apply_agent("names", "taken", w.custom_spec());
    let message = w
        .wait_reason(
            "names",
            "taken",
            "Ready",
            "NameConflict",
            Duration::from_secs(60),
        )
        .await;
    assert!(message.contains("Service names/taken"), "{message}");
    let svc = w
        .json(&["-n", "names", "get", "service", "taken"])
        .expect("service");
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app": "theirs"}),
        "untouched: {svc}"
    );
    assert_eq!(
        svc["metadata"]["ownerReferences"],
        Value::Null,
        "not adopted: {svc}"
    );
    assert!(
        w.pod("names", "taken").is_none(),
        "no pod while the name is taken"
    );
    w.k(&["-n", "names", "delete", "service", "taken"]);
    w.wait_condition("names", "taken", "Ready", "True", Duration::from_secs(120))
        .await;

    // Deleted and re-created at once under the same name: the new agent never reuses the old
    // one's key or volume (it waits for the garbage collector, then makes its own).
    let key = |w: &World| {
        w.json(&["-n", "names", "get", "secret", "taken-jwt"])
            .map(|s| s["data"]["jwt.key"].clone())
    };
    let pvc_uid = |w: &World| {
        w.json(&["-n", "names", "get", "pvc", "taken-state"])
            .map(|p| p["metadata"]["uid"].clone())
    };
    let (old_key, old_pvc) = (key(w).expect("key"), pvc_uid(w).expect("pvc"));
    w.k(&["-n", "names", "delete", "cxa", "taken", "--wait=false"]);
    w.apply_agent("names", "taken", w.custom_spec());
    w.wait_condition("names", "taken", "Ready", "True", Duration::from_secs(150))
        .await;
    assert_ne!(key(w).expect("key"), old_key, "a new signing key");
    assert_ne!(pvc_uid(w).expect("pvc"), old_pvc, "a new volume");
    w.k(&["delete", "namespace", "names", "--wait=false"]);
}

async fn restricted(w: &World) {
    w.namespace(
        "locked",
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
        ],
    );
    // An agent without a model server is admitted and serves.
    w.apply_agent("locked", "plain", w.custom_spec());
    w.wait_condition("locked", "plain", "Ready", "True", Duration::from_secs(120))
        .await;

    // A local model server: without a UID (the official images run as root) the API server
    // refuses the pod, and the agent's condition says why; with `local.runAsUser` it is admitted.
    let local = |uid: Option<i64>| {
        let mut l = json!({"engine": "ollama"});
        if let Some(u) = uid {
            l["runAsUser"] = json!(u);
        }
        json!({"model": "qwen3:8b", "provider": {"type": "local", "local": l}, "storage": {"size": "1Gi"}})
    };
    w.apply_agent("locked", "rootful", local(None));
    let message = w
        .wait_reason(
            "locked",
            "rootful",
            "Ready",
            "ChildRejected",
            Duration::from_secs(60),
        )
        .await;
    assert!(
        message.contains("violates PodSecurity \"restricted:latest\"")
            && message.contains("runAsNonRoot"),
        "{message}"
    );
    w.k(&["-n", "locked", "delete", "cxa", "rootful"]);
    w.apply_agent("locked", "local", local(Some(10001)));
    // The model server's image cannot be pulled here, but the pod was admitted.
    let (_, reason, message) = eventually(
        "the local agent's pod status",
        Duration::from_secs(60),
        async || {
            w.condition("locked", "local", "Ready")
                .filter(|c| c.1 != "PodPending")
        },
    )
    .await;
    assert!(
        w.pod("locked", "local").is_some(),
        "PodSecurity restricted admitted the pod with a model server: {reason}: {message}"
    );
    assert_ne!(reason, "ChildRejected", "{message}");

    // A ResourceQuota that leaves no room for another pod: the refusal shows in the agent's
    // conditions and Events, not only in the operator's log.
    w.cp.apply(
        &json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-more-pods", "namespace": "locked"},
                "spec": {"hard": {"pods": "2"}}})
        .to_string(),
        &[],
    )
    .expect("quota");
    w.apply_agent("locked", "third", w.custom_spec());
    let message = w
        .wait_reason(
            "locked",
            "third",
            "Ready",
            "ChildRejected",
            Duration::from_secs(60),
        )
        .await;
    assert!(message.contains("exceeded quota"), "{message}");
    let events = eventually("a Warning Event", Duration::from_secs(30), async || {
        let e = w.events("locked", "third");
        e.contains("ChildRejected").then_some(e)
    })
    .await;
    eprintln!(
        "cluster: quota refusal as the user sees it:\n{}\n{events}",
        w.table("locked")
    );
    w.k(&["delete", "namespace", "locked", "--wait=false"]);
}

/// What [`watch_rollout`] saw.
struct RolloutSeen {
    /// An agent showed `UpToDate=False/Draining`.
    draining: bool,
    /// An agent showed `UpToDate=False/RolloutWaiting`.
    waiting: bool,
}

/// Watches `agents` until every one runs a new pod that is Ready and `UpToDate`, asserting that
/// never two of them are being replaced at once. With `send_to`, the first time that agent
/// drains a message is sent to it (and must be accepted).
async fn watch_rollout(
    w: &World,
    ns: &str,
    agents: &[&str],
    send_to: Option<(&str, &Api)>,
) -> RolloutSeen {
    let uid = |a: &str| {
        w.pod(ns, a)
            .map(|p| p["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
    };
    let before: Vec<Option<String>> = agents.iter().map(|a| uid(a)).collect();
    let mut seen = RolloutSeen {
        draining: false,
        waiting: false,
    };
    let mut sent = false;
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the rollout did not finish"
        );
        let (mut replacing, mut done) = (0, 0);
        for (i, a) in agents.iter().enumerate() {
            let up = w.condition(ns, a, "UpToDate");
            let ready = w.condition(ns, a, "Ready").is_some_and(|c| c.0 == "True");
            let current = uid(a);
            match up.as_ref().map(|c| c.1.as_str()) {
                Some("Draining") => {
                    seen.draining = true;
                    if let Some((target, api)) = send_to
                        && target == *a
                        && !sent
                    {
                        // Accepted while draining, answered by the next pod.
                        let (code, body) = api.send("long", "sent while draining").await;
                        assert_eq!(code, 202, "{body}");
                        sent = true;
                    }
                }
                Some("RolloutWaiting") => seen.waiting = true,
                _ => {}
            }
            if current != before[i] && !ready {
                replacing += 1;
            }
            if current.is_some()
                && current != before[i]
                && ready
                && up.is_some_and(|c| c.0 == "True")
            {
                done += 1;
            }
        }
        assert!(replacing <= 1, "two agents were being replaced at once");
        if done == agents.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "cluster: rollout of {} agents took {:.1}s (draining seen: {}, waiting seen: {})",
        agents.len(),
        t0.elapsed().as_secs_f64(),
        seen.draining,
        seen.waiting
    );
    if send_to.is_some() {
        assert!(sent, "a message was sent while draining");
    }
    seen
}

/// `helm upgrade` changing the default sidecar image (the same image under another name, so the
/// node has it) with `agents.maxConcurrentRollouts=1`: the agents are replaced one at a time.
/// Then both agents' specs change while one runs a turn: that one is replaced only after its
/// turn ended (`Draining`), and a message sent while it drains is answered by the new pod. Then
/// an agent's NetworkPolicy is created and removed.
async fn rollout_and_network_policy(w: &World) {
    let ns = "rollout";
    w.namespace(ns, &[]);
    let agents = ["r1", "r2"];
    for a in agents {
        w.apply_agent(ns, a, w.custom_spec());
    }
    for a in agents {
        w.wait_condition(ns, a, "Ready", "True", Duration::from_secs(120))
            .await;
        w.wait_condition(ns, a, "UpToDate", "True", Duration::from_secs(30))
            .await;
    }

    // 1. A new default image: the same image under another name, so every agent's pod changes.
    let (repo_name, tag) = w
        .image
        .split_once(':')
        .unwrap_or((w.image.as_str(), "latest"));
    if repo_name.contains('/') {
        println!(
            "NOTICE: skipping the image part of the rollout: image {} has a registry path, no second name for it",
            w.image
        );
    } else {
        let renamed = format!("sidecar.image.repository=docker.io/library/{repo_name}");
        let tag_arg = format!("sidecar.image.tag={tag}");
        helm_upgrade(
            w,
            &repo().join("charts/codex-operator"),
            &[&renamed, &tag_arg, "agents.maxConcurrentRollouts=1"],
        )
        .unwrap_or_else(|e| panic!("helm upgrade to a new sidecar image: {e}"));
        let seen = watch_rollout(w, ns, &agents, None).await;
        assert!(
            seen.waiting,
            "one agent waited for the rollout slot while the other was replaced"
        );
        for a in agents {
            let pod = w.pod(ns, a).expect("pod");
            assert!(
                pod["spec"]["containers"]
                    .to_string()
                    .contains("docker.io/library/"),
                "{a} runs the new default image"
            );
        }
    }

    // 2. A turn of about 60 s on r1 (15 words, 4 s before each), then both specs change.
    let api = w.sidecar(ns, "r1", "alice").await;
    assert_eq!(api.create(json!({"id": "long"})).await.0, 201);
    let (code, body) = api
        .send(
            "long",
            "[[reply=a b c d e f g h i j k l m n o]] [[delay_ms=4000]]",
        )
        .await;
    assert_eq!(code, 202, "{body}");
    api.collect_until("long", 0, Duration::from_secs(60), |e| {
        e["type"] == "turn_started"
    })
    .await
    .expect("the turn starts");
    for a in agents {
        let mut spec = w.custom_spec();
        spec["sidecar"]["idleTimeout"] = json!(1234);
        w.apply_agent(ns, a, spec);
    }
    let seen = watch_rollout(w, ns, &agents, Some(("r1", &api))).await;
    assert!(
        seen.draining,
        "the agent running a turn drained before its pod went"
    );
    // The turn that ran during the change ended normally, and what was sent while the sidecar
    // drained was answered by the new pod.
    let api = w.sidecar(ns, "r1", "alice").await;
    let events = api
        .until_results("long", 0, 2, Duration::from_secs(90))
        .await
        .expect("both turns");
    let results: Vec<&Value> = events.iter().filter(|e| e["type"] == "result").collect();
    assert_eq!(results[0]["status"], "completed", "not cut: {events:?}");
    assert_eq!(results[0]["text"], "a b c d e f g h i j k l m n o");
    assert_eq!(results[1]["status"], "completed", "{events:?}");
    assert!(
        results[1]["text"]
            .as_str()
            .is_some_and(|t| t.contains("sent while draining")),
        "{events:?}"
    );

    // NetworkPolicy: made from spec.networkPolicy, the operator's namespace admitted; the agent
    // stays reachable by the operator (Ready); removed with the field.
    let mut spec = w.custom_spec();
    spec["networkPolicy"] = json!({"fromNamespaces": [ns]});
    w.apply_agent(ns, "r2", spec);
    let np = eventually(
        "the agent's NetworkPolicy",
        Duration::from_secs(60),
        async || w.json(&["-n", ns, "get", "networkpolicy", "r2"]),
    )
    .await;
    assert_eq!(np["metadata"]["ownerReferences"][0]["kind"], "CodexAgent");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    let rule = &np["spec"]["ingress"][0];
    assert_eq!(rule["ports"], json!([{"port": 8080, "protocol": "TCP"}]));
    let allowed = &rule["from"][0]["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(allowed["key"], "kubernetes.io/metadata.name");
    let values = allowed["values"].to_string();
    assert!(
        values.contains(ns) && values.contains(OPERATOR_NS),
        "{values}"
    );
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"]["agents.codex-operator.dev/agent"],
        "r2"
    );
    w.wait_condition(ns, "r2", "Ready", "True", Duration::from_secs(120))
        .await;
    w.apply_agent(ns, "r2", w.custom_spec());
    eventually(
        "the NetworkPolicy to go",
        Duration::from_secs(60),
        async || {
            w.json(&["-n", ns, "get", "networkpolicy", "r2"])
                .is_none()
                .then_some(())
        },
    )
    .await;
    w.k(&["delete", "namespace", ns, "--wait=false"]);
}

async fn two_replicas(w: &World) {
    helm_upgrade(
        w,
        &repo().join("charts/codex-operator"),
        &["replicaCount=2", "podDisruptionBudget.enabled=true"],
    )
    .unwrap_or_else(|e| panic!("helm upgrade to 2 replicas: {e}"));
    let pods = eventually(
        "two running operator pods",
        Duration::from_secs(60),
        async || {
            let pods = w.operator_pods();
            (pods.len() == 2 && pods.iter().all(|p| p["status"]["phase"] == "Running"))
                .then_some(pods)
        },
    )
    .await;
    let pdb = w
        .json(&[
            "-n",
            OPERATOR_NS,
            "get",
            "pdb",
            &format!("{RELEASE}-codex-operator"),
        ])
        .expect("a PodDisruptionBudget with two replicas");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let holder = eventually("a Lease holder", Duration::from_secs(30), async || {
        w.lease_holder(OPERATOR_NS)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Exactly one replica leads: only its log says so.
    let leading: Vec<String> = pods
        .iter()
        .filter_map(|p| {
            let pod = p["metadata"]["name"].as_str()?;
            w.logs(OPERATOR_NS, pod, "operator")
                .contains("leading; starting the controller")
                .then(|| pod.to_owned())
        })
        .collect();
    assert_eq!(
        leading,
        vec![holder.clone()],
        "one leader, the Lease holder"
    );

    // Kill the leader (SIGKILL: no release of the Lease), then remove its pod: another replica
    // takes over once the Lease expires, and not before (no two leaders).
    let leader_container = pods
        .iter()
        .find(|p| p["metadata"]["name"] == holder.as_str())
        .and_then(|p| p["status"]["containerStatuses"][0]["containerID"].as_str())
        .expect("the leader's container")
        .to_owned();
    let t = Instant::now();
    let killed = match w.own_node("SIGKILL of the leader (its pod is deleted instead)") {
        Some(node) => {
            node.kill_container(&leader_container)
                .expect("SIGKILL the leader");
            w.k(&[
                "-n",
                OPERATOR_NS,
                "delete",
                "pod",
                &holder,
                "--grace-period=0",
                "--force",
            ]);
            true
        }
        None => {
            w.k(&["-n", OPERATOR_NS, "delete", "pod", &holder, "--wait=false"]);
            false
        }
    };
    let new = eventually("a new leader", Duration::from_secs(60), async || {
        w.lease_holder(OPERATOR_NS).filter(|h| *h != holder)
    })
    .await;
    let took = t.elapsed();
    eprintln!(
        "cluster: leader {holder} killed; {new} leads after {:.1}s",
        took.as_secs_f64()
    );
    assert!(
        !killed || took >= Duration::from_secs(15 - 2 - 1),
        "nobody took the Lease before it expired (15 s after the last renewal, renewed every 2 s): {took:?}"
    );
    assert!(
        took <= Duration::from_secs(15 + 2 + 5),
        "handover within the lease duration (15 s) plus a retry period: {took:?}"
    );
    // The new leader reconciles: a new agent becomes Ready.
    w.namespace("failover", &[]);
    w.apply_agent("failover", "after", w.custom_spec());
    w.wait_condition(
        "failover",
        "after",
        "Ready",
        "True",
        Duration::from_secs(120),
    )
    .await;
}
