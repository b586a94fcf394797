//! The cluster's one node: a Node object kept Ready, and a small kubelet stand-in that runs the
//! pods the real scheduler binds to it as Docker containers on the local engine.
//!
//! What it does, as a kubelet would:
//! - registers the Node (capacity, allocatable, `Ready`), removes the `not-ready` taint that
//!   the TaintNodesByCondition admission plugin puts on new nodes, and can advertise extended
//!   resources (`nvidia.com/gpu`, MIG names) in the node status ([`Node::set_extended`]);
//! - for every pod bound to the node: a sandbox container (the pod IP, shared by the pod's
//!   containers), then each container with the pod's command/args, env (values, Secret and
//!   ConfigMap keys, field refs, `KUBERNETES_SERVICE_HOST/PORT`), volumes (Secret, ConfigMap,
//!   emptyDir, PVC, and the projected service-account token made with the TokenRequest API),
//!   `subPath`, user/group/fsGroup, read-only root, capabilities and no-new-privileges;
//! - refuses what a kubelet refuses: an image not present locally (no registry is reachable:
//!   `ImagePullBackOff`), `runAsNonRoot` with a root or non-numeric image user
//!   (`CreateContainerConfigError`), a Secret or ConfigMap key that is missing;
//! - reports status: phase, pod IP, conditions, container states (running, waiting, terminated
//!   with `OOMKilled`/`Error`), restart counts, readiness from the pod's HTTP readiness probes;
//!   restarts exited containers (`restartPolicy: Always`) with a short back-off;
//! - on deletion: SIGTERM with the pod's grace period (`docker stop -t`), then removes the pod
//!   object (grace 0, UID precondition), as the kubelet does;
//! - provisions a hostPath PersistentVolume for each claim of its StorageClass (`Immediate`, or
//!   `WaitForFirstConsumer` once the scheduler picked the node), so volumes outlive pods.
//!
//! Not done (see docs/operator.md): liveness and startup probes, resource limits, image pulls,
//! device plugins (GPUs are advertised as extended resources, no device is handed out), and
//! RuntimeClass handlers (`runtimeClassName` is admitted and scheduled, then run with runc).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node as NodeObj, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The node's name.
pub const NODE_NAME: &str = "e2e-node";
/// The StorageClass whose claims the node provisions (made default by [`Node::start`]).
pub const STORAGE_CLASS: &str = "codex-e2e-hostpath";
const PROVISIONER: &str = "codex-e2e.dev/hostpath";
const LABEL: &str = "codex-e2e.cluster";

/// A running node. Dropping it stops its tasks and removes its containers.
pub struct Node {
    client: Client,
    tasks: Vec<JoinHandle<()>>,
    pods: Arc<Mutex<HashMap<String, watch::Sender<bool>>>>,
    id: String,
    /// Where volumes live on the host.
    pub dir: PathBuf,
}

/// What the pods of this node are given to reach the API server.
#[derive(Clone)]
struct Env {
    client: Client,
    api_host: String,
    api_port: u16,
    dir: PathBuf,
    id: String,
}

impl Node {
    /// Registers the node and starts its pod and volume loops. `api` is the API server address
    /// pods are given (`KUBERNETES_SERVICE_HOST/PORT`); `dir` holds pod volumes.
    pub async fn start(
        client: Client,
        api: std::net::SocketAddr,
        dir: &Path,
    ) -> anyhow::Result<Node> {
        std::fs::create_dir_all(dir)?;
        // hostPath volumes must be absolute paths without `..`.
        let dir = &std::fs::canonicalize(dir)?;
        let id = format!(
            "{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        );
        let nodes: Api<NodeObj> = Api::all(client.clone());
        let node: NodeObj = serde_json::from_value(json!({
            "metadata": {"name": NODE_NAME, "labels": {
                "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"}},
            "spec": {},
            "status": {
                "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"},
                "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"},
                "conditions": ready_conditions(),
                "addresses": [{"type": "InternalIP", "address": api.ip().to_string()},
                              {"type": "Hostname", "address": NODE_NAME}],
                "nodeInfo": {"machineID": "e2e", "systemUUID": "e2e", "bootID": "e2e",
                    "kernelVersion": "", "osImage": "codex-e2e simulated node",
                    "containerRuntimeVersion": "docker://", "kubeletVersion": "v1.37.2",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}
            }
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        // TaintNodesByCondition put node.kubernetes.io/not-ready on the new node; the node
        // lifecycle controller (off here) would lift it once Ready.
        nodes
            .patch(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": null}})),
            )
            .await?;
        // The status sent at create may be dropped by the API server's strategy: send it again.
        nodes
            .patch_status(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node.status})),
            )
            .await?;

        let sc = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "volumeBindingMode": "Immediate", "reclaimPolicy": "Retain",
            "allowVolumeExpansion": true
        });
        let scs: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
        scs.create(&PostParams::default(), &serde_json::from_value(sc)?)
            .await?;

        let env = Env {
            client: client.clone(),
            api_host: api.ip().to_string(),
            api_port: api.port(),
            dir: dir.to_path_buf(),
            id: id.clone(),
        };
        let pods = Arc::new(Mutex::new(HashMap::new()));
        let tasks = vec![
            tokio::spawn(pod_loop(env.clone(), pods.clone())),
            tokio::spawn(provisioner_loop(env.clone())),
            tokio::spawn(heartbeat_loop(client.clone())),
        ];
        Ok(Node {
            client,
            tasks,
            pods,
            id,
            dir: dir.to_path_buf(),
        })
    }

    /// Sets an extended resource's capacity and allocatable in the node status (a device
    /// plugin's effect), e.g. `("nvidia.com/gpu", 2)`; 0 removes it.
    pub async fn set_extended(&self, resource: &str, count: u32) -> anyhow::Result<()> {
        let nodes: Api<NodeObj> = Api::all(self.client.clone());
        let v = if count == 0 {
            Value::Null
        } else {
            json!(count.to_string())
        };
        nodes
            .patch_status(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"capacity": {resource: v}, "allocatable": {resource: v}}}),
                ),
            )
            .await?;
        Ok(())
    }

    /// Sets node labels (`None` removes one).
    pub async fn label(&self, labels: &[(&str, Option<&str>)]) -> anyhow::Result<()> {
        let nodes: Api<NodeObj> = Api::all(self.client.clone());
        let map: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map_or(Value::Null, |v| json!(v))))
            .collect();
        nodes
            .patch(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": map}})),
            )
            .await?;
        Ok(())
    }

    /// The Docker container of a pod's container (for `docker logs`/`docker kill` in tests).
    pub fn container_name(pod_uid: &str, container: &str) -> String {
        format!("k8s_{}_{}", container, &pod_uid[..pod_uid.len().min(13)])
    }

    /// The logs of a pod's container (`docker logs`).
    pub fn logs(pod_uid: &str, container: &str) -> String {
        let out = std::process::Command::new("docker")
            .args([
                "logs",
                "--tail",
                "200",
                &Self::container_name(pod_uid, container),
            ])
            .output();
        out.map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default()
    }

    /// How many pods this node is running now.
    pub fn running_pods(&self) -> usize {
        self.pods.lock().map(|p| p.len()).unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(pods) = self.pods.lock() {
            for tx in pods.values() {
                let _ = tx.send(true);
            }
        }
        remove_containers(&self.id);
    }
}

/// Removes every container this node made (label `codex-e2e.cluster=ID`).
fn remove_containers(id: &str) {
    let Ok(out) = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={LABEL}={id}")])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .output();
    }
}

fn ready_conditions() -> Value {
    let now = now();
    let c = |t: &str, s: &str, r: &str| {
        json!({"type": t, "status": s, "reason": r, "message": "simulated node",
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!([
        c("Ready", "True", "KubeletReady"),
        c("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        c("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        c("PIDPressure", "False", "KubeletHasSufficientPID"),
    ])
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

async fn heartbeat_loop(client: Client) {
    let nodes: Api<NodeObj> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(20)).await;
        let _ = nodes
            .patch_status(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": {"conditions": ready_conditions()}})),
            )
            .await;
    }
}

// ----------------------------------------------------------------------------------------
// Volumes

async fn provisioner_loop(env: Env) {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(env.client.clone());
    let pvs: Api<PersistentVolume> = Api::all(env.client.clone());
    let scs: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(env.client.clone());
    let mut reported = std::collections::HashSet::new();
    loop {
        if let Ok(list) = pvcs.list(&ListParams::default()).await {
            for pvc in list {
                if let Err(e) = provision(&env, &pvs, &scs, &pvc).await
                    && reported.insert(e.to_string())
                {
                    eprintln!(
                        "simulated node: provisioning a volume for {}/{}: {e}",
                        pvc.namespace().unwrap_or_default(),
                        pvc.name_any()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn provision(
    env: &Env,
    pvs: &Api<PersistentVolume>,
    scs: &Api<k8s_openapi::api::storage::v1::StorageClass>,
    pvc: &PersistentVolumeClaim,
) -> anyhow::Result<()> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if phase != "Pending" || spec.volume_name.is_some() {
        return Ok(());
    }
    let class = spec.storage_class_name.clone().unwrap_or_default();
    let Some(sc) = scs.get_opt(&class).await? else {
        return Ok(());
    };
    if sc.provisioner != PROVISIONER {
        return Ok(());
    }
    let annotations = pvc.annotations();
    if sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && annotations
            .get("volume.kubernetes.io/selected-node")
            .map(String::as_str)
            != Some(NODE_NAME)
    {
        return Ok(());
    }
    let uid = pvc.uid().unwrap_or_default();
    let name = format!("pvc-{uid}");
    if pvs.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let path = env.dir.join("pv").join(&uid);
    std::fs::create_dir_all(&path)?;
    set_mode(&path, 0o777)?;
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": class,
            "hostPath": {"path": path.display().to_string(), "type": "Directory"},
            "claimRef": {"namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}
        }
    }))?;
    pvs.create(&PostParams::default(), &pv).await?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, uid, gid)
}

/// fsGroup semantics: group-owned by `gid`, group read/write, setgid on directories.
fn apply_fs_group(path: &Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    chown(path, None, Some(gid))?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        set_mode(path, mode | 0o2070)?;
        for e in std::fs::read_dir(path)? {
            apply_fs_group(&e?.path(), gid)?;
        }
    } else {
        set_mode(path, mode | 0o060)?;
    }
    Ok(())
}

/// Writes Secret or ConfigMap data into `dir` (the `items` selection or every key).
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    default_mode: i32,
    fs_group: Option<u32>,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let pairs: Vec<(String, String, i32)> = match items {
        Some(items) => items
            .iter()
            .map(|i| {
                (
                    i.key.clone(),
                    i.path.clone(),
                    i.mode.unwrap_or(default_mode),
                )
            })
            .collect(),
        None => data
            .keys()
            .map(|k| (k.clone(), k.clone(), default_mode))
            .collect(),
    };
    for (key, path, mode) in pairs {
        let Some(bytes) = data.get(&key) else {
            return Err(format!("couldn't find key {key}"));
        };
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
        set_mode(&file, mode as u32).map_err(|e| e.to_string())?;
        if let Some(g) = fs_group {
            chown(&file, Some(0), Some(g)).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A Secret or ConfigMap volume: its keys written into `dir`, with the kubelet's messages when
/// the object (`None`) or a key is missing.
#[allow(clippy::too_many_arguments)]
fn mount_keys(
    dir: &Path,
    volume: &str,
    kind: &str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    mode: i32,
    fs_group: Option<u32>,
) -> Result<(), String> {
    let fail = |e: String| format!("MountVolume.SetUp failed for volume \"{volume}\" : {e}");
    let data = data.ok_or_else(|| fail(format!("{kind} \"{name}\" not found")))?;
    write_keys(dir, &data, items, mode, fs_group).map_err(fail)
}

// ----------------------------------------------------------------------------------------
// Pods

async fn pod_loop(env: Env, running: Arc<Mutex<HashMap<String, watch::Sender<bool>>>>) {
    let pods: Api<Pod> = Api::all(env.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}"));
    let mut stream = watcher(pods, cfg).default_backoff().boxed();
    while let Ok(Some(ev)) = stream.try_next().await {
        let (pod, deleted) = match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
            watcher::Event::Delete(p) => (p, true),
            _ => continue,
        };
        let uid = pod.uid().unwrap_or_default();
        let stopping = deleted || pod.metadata.deletion_timestamp.is_some();
        let Ok(mut map) = running.lock() else { return };
        match map.get(&uid) {
            Some(tx) if stopping => {
                let _ = tx.send(true);
            }
            Some(_) => {}
            None if stopping => {
                if !deleted {
                    // Never started (or started by an earlier run): finish the deletion.
                    let env = env.clone();
                    tokio::spawn(async move { finalize(&env, &pod).await });
                }
            }
            None => {
                let (tx, rx) = watch::channel(false);
                map.insert(uid.clone(), tx);
                let env = env.clone();
                let running = running.clone();
                tokio::spawn(async move {
                    PodRun::new(env, pod).run(rx).await;
                    if let Ok(mut m) = running.lock() {
                        m.remove(&uid);
                    }
                });
            }
        }
    }
}

async fn finalize(env: &Env, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let _ = api.delete(&pod.name_any(), &dp).await;
}

/// The state of one container of a running pod.
#[derive(Clone, Default)]
struct ContainerRun {
    docker: Option<String>,
    waiting: Option<(String, String)>,
    last_terminated: Option<Value>,
    restarts: i32,
    ready: bool,
    started_at: Option<String>,
    next_restart: Option<Instant>,
}

struct PodRun {
    env: Env,
    pod: Pod,
    ns: String,
    uid: String,
    dir: PathBuf,
    ip: Option<String>,
    sandbox: Option<String>,
    containers: Vec<ContainerRun>,
    start_time: String,
    last_status: Value,
    http: reqwest::Client,
}

impl PodRun {
    fn new(env: Env, pod: Pod) -> PodRun {
        let ns = pod.namespace().unwrap_or_default();
        let uid = pod.uid().unwrap_or_default();
        let dir = env.dir.join("pods").join(&uid);
        let n = pod.spec.as_ref().map_or(0, |s| s.containers.len());
        PodRun {
            env,
            pod,
            ns,
            uid,
            dir,
            ip: None,
            sandbox: None,
            containers: vec![ContainerRun::default(); n],
            start_time: now(),
            last_status: Value::Null,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    fn spec(&self) -> k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.clone().unwrap_or_default()
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if let Err(e) = self.start().await {
            eprintln!(
                "simulated node: starting pod {}/{}: {e:#}",
                self.ns,
                self.pod.name_any()
            );
        }
        loop {
            self.sync().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        self.stop().await;
        finalize(&self.env, &self.pod).await;
    }

    /// Sandbox, volumes, containers. Per-container failures are recorded as waiting states.
    async fn start(&mut self) -> anyhow::Result<()> {
        let spec = self.spec();
        std::fs::create_dir_all(&self.dir)?;
        // Images: only what the local engine has (no registry is reachable).
        let mut missing = false;
        for (i, c) in spec.containers.iter().enumerate() {
            let image = c.image.clone().unwrap_or_default();
            if image_user(&image).is_none() {
                self.containers[i].waiting = Some((
                    "ImagePullBackOff".into(),
                    format!(
                        "Back-off pulling image \"{image}\": no registry is reachable from this node"
                    ),
                ));
                missing = true;
            }
        }
        if missing {
            return Ok(());
        }
        let sandbox_image = spec.containers[0].image.clone().unwrap_or_default();
        let name = format!("k8s_POD_{}", &self.uid[..self.uid.len().min(13)]);
        let sandbox = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &format!("{LABEL}={}", self.env.id),
            "--hostname",
            &self.pod.name_any(),
            "--network",
            "bridge",
            "--entrypoint",
            "sleep",
            "--user",
            "65534:65534",
            "--cap-drop",
            "ALL",
            &sandbox_image,
            "infinity",
        ])?;
        let ip = docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &sandbox])?;
        self.sandbox = Some(sandbox);
        self.ip = Some(ip);
        let volumes = match self.volumes().await {
            Ok(v) => v,
            Err(e) => {
                for c in &mut self.containers {
                    c.waiting = Some(("ContainerCreating".into(), e.clone()));
                }
                self.event("FailedMount", &e).await;
                return Ok(());
            }
        };
        for i in 0..spec.containers.len() {
            self.start_container(i, &volumes).await;
        }
        Ok(())
    }

    async fn event(&self, reason: &str, message: &str) {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.env.client.clone(), &self.ns);
        let ev = json!({
            "metadata": {"generateName": format!("{}.", self.pod.name_any())},
            "involvedObject": {"kind": "Pod", "namespace": self.ns, "name": self.pod.name_any(),
                               "uid": self.uid, "apiVersion": "v1"},
            "reason": reason, "message": message, "type": "Warning",
            "source": {"component": "kubelet", "host": NODE_NAME},
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1
        });
        if let Ok(ev) = serde_json::from_value(ev) {
            let _ = events.create(&PostParams::default(), &ev).await;
        }
    }

    fn fs_group(&self) -> Option<u32> {
        self.spec()
            .security_context
            .and_then(|s| s.fs_group)
            .map(|g| g as u32)
    }

    /// Materialises the pod's volumes on the host: name -> host path.
    async fn volumes(&self) -> Result<HashMap<String, PathBuf>, String> {
        let spec = self.spec();
        let mut out = HashMap::new();
        let fs_group = self.fs_group();
        let c = self.env.client.clone();
        for v in spec.volumes.unwrap_or_default() {
            let dir = self.dir.join("volumes").join(&v.name);
            if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let data = Api::<Secret>::namespaced(c.clone(), &self.ns)
                    .get_opt(&name)
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|o| {
                        o.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect()
                    });
                let mode = s.default_mode.unwrap_or(0o644);
                mount_keys(
                    &dir,
                    &v.name,
                    "secret",
                    &name,
                    data,
                    s.items.as_ref(),
                    mode,
                    fs_group,
                )?;
            } else if let Some(cm) = &v.config_map {
                let name = cm.name.clone();
                let data = Api::<ConfigMap>::namespaced(c.clone(), &self.ns)
                    .get_opt(&name)
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|o| {
                        o.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes()))
                            .collect()
                    });
                let mode = cm.default_mode.unwrap_or(0o644);
                mount_keys(
                    &dir,
                    &v.name,
                    "configmap",
                    &name,
                    data,
                    cm.items.as_ref(),
                    mode,
                    fs_group,
                )?;
            } else if v.empty_dir.is_some() {
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                set_mode(&dir, 0o777).map_err(|e| e.to_string())?;
            } else if let Some(p) = &v.persistent_volume_claim {
                let pvc = Api::<PersistentVolumeClaim>::namespaced(c.clone(), &self.ns)
                    .get_opt(&p.claim_name)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!("persistentvolumeclaim \"{}\" not found", p.claim_name)
                    })?;
                let pv_name = pvc.spec.and_then(|s| s.volume_name).ok_or_else(|| {
                    format!("persistentvolumeclaim \"{}\" is not bound", p.claim_name)
                })?;
                let pv = Api::<PersistentVolume>::all(c.clone())
                    .get(&pv_name)
                    .await
                    .map_err(|e| e.to_string())?;
                let path = pv
                    .spec
                    .and_then(|s| s.host_path)
                    .map(|h| PathBuf::from(h.path))
                    .ok_or_else(|| format!("volume {pv_name} is not a hostPath volume"))?;
                if let Some(g) = fs_group {
                    apply_fs_group(&path, g).map_err(|e| e.to_string())?;
                }
                out.insert(v.name.clone(), path);
                continue;
            } else if let Some(p) = &v.projected {
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                for src in p.sources.clone().unwrap_or_default() {
                    if let Some(t) = src.service_account_token {
                        let sa = spec
                            .service_account_name
                            .clone()
                            .unwrap_or_else(|| "default".into());
                        let req = TokenRequest {
                            spec: TokenRequestSpec {
                                audiences: t.audience.clone().into_iter().collect(),
                                expiration_seconds: t.expiration_seconds,
                                bound_object_ref: Some(BoundObjectReference {
                                    api_version: Some("v1".into()),
                                    kind: Some("Pod".into()),
                                    name: Some(self.pod.name_any()),
                                    uid: Some(self.uid.clone()),
                                }),
                            },
                            ..TokenRequest::default()
                        };
                        let tr = Api::<ServiceAccount>::namespaced(c.clone(), &self.ns)
                            .create_token_request(&sa, &PostParams::default(), &req)
                            .await
                            .map_err(|e| format!("requesting a token for {sa}: {e}"))?;
                        let token = tr.status.map(|s| s.token).unwrap_or_default();
                        let f = dir.join(&t.path);
                        std::fs::write(&f, token).map_err(|e| e.to_string())?;
                        set_mode(&f, 0o644).map_err(|e| e.to_string())?;
                    }
                    if let Some(cm) = src.config_map {
                        let obj = Api::<ConfigMap>::namespaced(c.clone(), &self.ns)
                            .get(&cm.name)
                            .await
                            .map_err(|e| e.to_string())?;
                        let data: BTreeMap<String, Vec<u8>> = obj
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes()))
                            .collect();
                        write_keys(&dir, &data, cm.items.as_ref(), 0o644, None)?;
                    }
                    if let Some(d) = src.downward_api {
                        for item in d.items.unwrap_or_default() {
                            let value = item
                                .field_ref
                                .map(|f| self.field(&f.field_path))
                                .unwrap_or_default();
                            std::fs::write(dir.join(&item.path), value)
                                .map_err(|e| e.to_string())?;
                        }
                    }
                }
            } else {
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            }
            out.insert(v.name.clone(), dir);
        }
        Ok(out)
    }

    fn field(&self, path: &str) -> String {
        match path {
            "metadata.name" => self.pod.name_any(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => NODE_NAME.into(),
            "spec.serviceAccountName" => self.spec().service_account_name.unwrap_or_default(),
            "status.podIP" => self.ip.clone().unwrap_or_default(),
            "status.hostIP" => self.env.api_host.clone(),
            _ => String::new(),
        }
    }

    async fn env_of(&self, c: &Container) -> Result<Vec<String>, (String, String)> {
        let mut env = vec![
            format!("KUBERNETES_SERVICE_HOST={}", self.env.api_host),
            format!("KUBERNETES_SERVICE_PORT={}", self.env.api_port),
            format!("KUBERNETES_SERVICE_PORT_HTTPS={}", self.env.api_port),
        ];
        let config_error = |m: String| ("CreateContainerConfigError".to_owned(), m);
        for e in c.env.clone().unwrap_or_default() {
            let value = if let Some(v) = e.value {
                v
            } else if let Some(src) = e.value_from {
                if let Some(s) = src.secret_key_ref {
                    let secret = Api::<Secret>::namespaced(self.env.client.clone(), &self.ns)
                        .get_opt(&s.name)
                        .await
                        .ok()
                        .flatten();
                    match secret
                        .and_then(|x| x.data)
                        .and_then(|mut d| d.remove(&s.key))
                    {
                        Some(b) => String::from_utf8_lossy(&b.0).into_owned(),
                        None if s.optional == Some(true) => continue,
                        None => {
                            return Err(config_error(format!(
                                "couldn't find key {} in Secret {}/{}",
                                s.key, self.ns, s.name
                            )));
                        }
                    }
                } else if let Some(m) = src.config_map_key_ref {
                    let cm = Api::<ConfigMap>::namespaced(self.env.client.clone(), &self.ns)
                        .get_opt(&m.name)
                        .await
                        .ok()
                        .flatten();
                    match cm.and_then(|x| x.data).and_then(|mut d| d.remove(&m.key)) {
                        Some(v) => v,
                        None if m.optional == Some(true) => continue,
                        None => {
                            return Err(config_error(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                m.key, self.ns, m.name
                            )));
                        }
                    }
                } else if let Some(f) = src.field_ref {
                    self.field(&f.field_path)
                } else {
                    continue;
                }
            } else {
                String::new()
            };
            env.push(format!("{}={value}", e.name));
        }
        Ok(env)
    }

    async fn start_container(&mut self, i: usize, volumes: &HashMap<String, PathBuf>) {
        let spec = self.spec();
        let c = spec.containers[i].clone();
        let image = c.image.clone().unwrap_or_default();
        let env = match self.env_of(&c).await {
            Ok(e) => e,
            Err(w) => {
                self.containers[i].waiting = Some(w);
                return;
            }
        };
        let psc = spec.security_context.clone().unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(psc.run_as_user);
        let gid = sc.run_as_group.or(psc.run_as_group);
        if sc.run_as_non_root.or(psc.run_as_non_root) == Some(true) {
            let effective = match uid {
                Some(u) => Some(u),
                None => image_user(&image)
                    .flatten()
                    .and_then(|u| u.split(':').next()?.parse().ok()),
            };
            match effective {
                Some(0) => {
                    self.containers[i].waiting = Some((
                        "CreateContainerConfigError".into(),
                        "container has runAsNonRoot and image will run as root".into(),
                    ));
                    return;
                }
                None => {
                    self.containers[i].waiting = Some((
                        "CreateContainerConfigError".into(),
                        format!(
                            "container has runAsNonRoot and image has non-numeric user, cannot verify user is non-root (pod: \"{}\", container: {})",
                            self.pod.name_any(),
                            c.name
                        ),
                    ));
                    return;
                }
                Some(_) => {}
            }
        }
        let name = Node::container_name(&self.uid, &c.name);
        let _ = docker(&["rm", "-f", &name]);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.clone(),
            "--label".into(),
            format!("{LABEL}={}", self.env.id),
            "--network".into(),
            format!("container:{}", self.sandbox.clone().unwrap_or_default()),
        ];
        match (uid, gid) {
            (Some(u), Some(g)) => args.extend(["--user".into(), format!("{u}:{g}")]),
            (Some(u), None) => args.extend(["--user".into(), format!("{u}")]),
            (None, Some(g)) => {
                let u = image_user(&image)
                    .flatten()
                    .and_then(|u| u.split(':').next().map(str::to_owned))
                    .unwrap_or_else(|| "0".into());
                args.extend(["--user".into(), format!("{u}:{g}")]);
            }
            (None, None) => {}
        }
        for g in psc
            .fs_group
            .into_iter()
            .chain(psc.supplemental_groups.unwrap_or_default())
        {
            args.extend(["--group-add".into(), g.to_string()]);
        }
        if sc.read_only_root_filesystem == Some(true) {
            args.push("--read-only".into());
        }
        if sc.allow_privilege_escalation == Some(false) {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        if let Some(caps) = &sc.capabilities {
            for d in caps.drop.clone().unwrap_or_default() {
                args.extend(["--cap-drop".into(), d]);
            }
            for a in caps.add.clone().unwrap_or_default() {
                args.extend(["--cap-add".into(), a]);
            }
        }
        for e in env {
            args.extend(["-e".into(), e]);
        }
        for m in c.volume_mounts.clone().unwrap_or_default() {
            let Some(host) = volumes.get(&m.name) else {
                self.containers[i].waiting = Some((
                    "CreateContainerConfigError".into(),
                    format!("volume {} not found", m.name),
                ));
                return;
            };
            let mut src = host.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                src = host.join(sub);
                if !src.exists() {
                    let _ = std::fs::create_dir_all(&src);
                    if let Some(g) = self.fs_group() {
                        let _ = apply_fs_group(&src, g);
                    }
                }
            }
            let ro = if m.read_only == Some(true) { ":ro" } else { "" };
            args.extend([
                "-v".into(),
                format!("{}:{}{ro}", src.display(), m.mount_path),
            ]);
        }
        if let Some(wd) = &c.working_dir {
            args.extend(["-w".into(), wd.clone()]);
        }
        let mut tail: Vec<String> = Vec::new();
        if let Some(cmd) = c.command.clone().filter(|c| !c.is_empty()) {
            args.extend(["--entrypoint".into(), cmd[0].clone()]);
            tail.extend(cmd[1..].iter().cloned());
            tail.extend(c.args.clone().unwrap_or_default());
            args.push(image.clone());
        } else {
            args.push(image.clone());
            tail.extend(c.args.clone().unwrap_or_default());
        }
        args.extend(tail);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        match docker(&refs) {
            Ok(id) => {
                let cr = &mut self.containers[i];
                cr.docker = Some(id);
                cr.waiting = None;
                cr.started_at = Some(now());
                cr.ready = false;
            }
            Err(e) => {
                self.containers[i].waiting = Some(("RunContainerError".into(), e.to_string()));
            }
        }
    }

    /// Checks containers (exits, restarts), probes readiness and writes the status if changed.
    async fn sync(&mut self) {
        let spec = self.spec();
        let mut volumes = None;
        for i in 0..self.containers.len() {
            let c = &spec.containers[i];
            if let Some(id) = self.containers[i].docker.clone() {
                let state = docker(&["inspect", "-f", "{{.State.Running}} {{.State.ExitCode}} {{.State.OOMKilled}} {{.State.FinishedAt}}", &id]).unwrap_or_default();
                let mut parts = state.split_whitespace();
                let running = parts.next() == Some("true");
                if !running {
                    let code: i32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
                    let oom = parts.next() == Some("true");
                    let finished = parts.next().unwrap_or_default().to_owned();
                    let reason = if oom {
                        "OOMKilled"
                    } else if code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    };
                    let cr = &mut self.containers[i];
                    cr.last_terminated = Some(
                        json!({"terminated": {"exitCode": code, "reason": reason,
                        "startedAt": cr.started_at, "finishedAt": finished.split('.').next().map(|s| format!("{s}Z"))}}),
                    );
                    cr.docker = None;
                    cr.ready = false;
                    let backoff = Duration::from_secs(
                        2u64.saturating_pow(cr.restarts.min(4) as u32 + 1).min(20),
                    );
                    cr.next_restart = Some(Instant::now() + backoff);
                    cr.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!("back-off restarting failed container {}", c.name),
                    ));
                    continue;
                }
                self.containers[i].ready = match &c.readiness_probe {
                    Some(p) => self.probe(c, p).await,
                    None => true,
                };
            } else if let Some(at) = self.containers[i].next_restart
                && Instant::now() >= at
                && self.sandbox.is_some()
            {
                if volumes.is_none() {
                    volumes = self.volumes().await.ok();
                }
                if let Some(v) = volumes.clone() {
                    self.containers[i].restarts += 1;
                    self.containers[i].next_restart = None;
                    self.start_container(i, &v).await;
                }
            }
        }
        if let Err(e) = self.write_status().await {
            eprintln!(
                "simulated node: status of pod {}/{}: {e:#}",
                self.ns,
                self.pod.name_any()
            );
        }
    }

    async fn probe(&self, c: &Container, p: &k8s_openapi::api::core::v1::Probe) -> bool {
        let Some(get) = &p.http_get else { return true };
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => c
                .ports
                .clone()
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map_or(0, |p| p.container_port),
        };
        let Some(ip) = &self.ip else { return false };
        let url = format!("http://{ip}:{port}{}", get.path.as_deref().unwrap_or("/"));
        self.http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() >= 200 && r.status().as_u16() < 400)
    }

    async fn write_status(&mut self) -> anyhow::Result<()> {
        let spec = self.spec();
        let api: Api<Pod> = Api::namespaced(self.env.client.clone(), &self.ns);
        let current = api.get_status(&self.pod.name_any()).await?;
        if current.uid() != Some(self.uid.clone()) {
            return Ok(());
        }
        let mut statuses = Vec::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let cr = &self.containers[i];
            let state = if cr.docker.is_some() {
                json!({"running": {"startedAt": cr.started_at}})
            } else if let Some((reason, message)) = &cr.waiting {
                json!({"waiting": {"reason": reason, "message": message}})
            } else {
                json!({"waiting": {"reason": "ContainerCreating"}})
            };
            statuses.push(json!({
                "name": c.name, "image": c.image, "imageID": "",
                "containerID": cr.docker.as_ref().map(|d| format!("docker://{d}")),
                "ready": cr.ready, "started": cr.docker.is_some(), "restartCount": cr.restarts,
                "state": state, "lastState": cr.last_terminated.clone().unwrap_or(json!({}))
            }));
        }
        let all_ready = !self.containers.is_empty() && self.containers.iter().all(|c| c.ready);
        let any_started = self.containers.iter().any(|c| c.docker.is_some());
        let phase = if any_started || self.containers.iter().any(|c| c.last_terminated.is_some()) {
            "Running"
        } else {
            "Pending"
        };
        let old: Vec<Value> = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let keep = |t: &str| old.iter().find(|c| c["type"] == t).cloned();
        let cond = |t: &str, ok: bool, reason: Option<&str>| {
            let status = if ok { "True" } else { "False" };
            match keep(t) {
                Some(c) if c["status"] == status => c,
                _ => {
                    json!({"type": t, "status": status, "lastTransitionTime": now(), "reason": reason})
                }
            }
        };
        let mut conditions = Vec::new();
        if let Some(s) = keep("PodScheduled") {
            conditions.push(s);
        }
        conditions.push(cond(
            "PodReadyToStartContainers",
            self.sandbox.is_some(),
            None,
        ));
        conditions.push(cond("Initialized", true, None));
        conditions.push(cond(
            "ContainersReady",
            all_ready,
            (!all_ready).then_some("ContainersNotReady"),
        ));
        conditions.push(cond(
            "Ready",
            all_ready,
            (!all_ready).then_some("ContainersNotReady"),
        ));
        let status = json!({
            "phase": phase, "hostIP": self.env.api_host, "hostIPs": [{"ip": self.env.api_host}],
            "podIP": self.ip, "podIPs": self.ip.as_ref().map(|ip| vec![json!({"ip": ip})]),
            "startTime": self.start_time, "conditions": conditions, "containerStatuses": statuses,
            "qosClass": current.status.as_ref().and_then(|s| s.qos_class.clone()),
        });
        if status == self.last_status {
            return Ok(());
        }
        api.patch_status(
            &self.pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        self.last_status = status;
        Ok(())
    }

    async fn stop(&mut self) {
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        // The pod object as it is now: its deletion grace period may be shorter.
        let api: Api<Pod> = Api::namespaced(self.env.client.clone(), &self.ns);
        let grace = api
            .get_opt(&self.pod.name_any())
            .await
            .ok()
            .flatten()
            .and_then(|p| p.metadata.deletion_grace_period_seconds)
            .unwrap_or(grace)
            .max(0);
        let ids: Vec<String> = self
            .containers
            .iter()
            .filter_map(|c| c.docker.clone())
            .collect();
        let stops: Vec<_> = ids
            .iter()
            .map(|id| {
                let id = id.clone();
                tokio::task::spawn_blocking(move || {
                    docker(&["stop", "-t", &grace.to_string(), &id])
                })
            })
            .collect();
        for s in stops {
            let _ = s.await;
        }
        for id in ids.iter().chain(self.sandbox.iter()) {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The image's configured user (`Some(None)` for none), or `None` when the image is absent.
fn image_user(image: &str) -> Option<Option<String>> {
    let out = docker(&["image", "inspect", "-f", "{{.Config.User}}", image]).ok()?;
    Some((!out.is_empty()).then_some(out))
}

/// Runs the docker CLI; `Ok(trimmed stdout)` on success.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
