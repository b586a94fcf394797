//! The cluster's one node, real: the kubelet and kube-proxy of `KUBERNETES_VERSION` (built by
//! `tests/cluster/build-tools.sh`), a private containerd with runc (Debian's `containerd` and
//! `runc`, which come with `docker.io`) and the CNI plugins of `containernetworking-plugins`.
//!
//! - containerd: its own root, state and sockets under a short directory in `/run`, the CRI
//!   plugin with the `runc` runtime (cgroupfs) and an `nvidia` runtime handler that is runc too (a
//!   GPU node's RuntimeClass handler, without devices), `restrict_oom_score_adj` (the kubelet's
//!   OOM score for system-critical pods may not be settable in a container) and a local pod
//!   sandbox image (tests/cluster/pause, imported: no registry is reachable);
//! - images: the project's image is `docker save`d from the local engine and imported into
//!   containerd's `k8s.io` namespace ([`Node::import_image`]), so pods start it without a pull;
//! - CNI: a bridge with host-local IPAM on [`POD_CIDR`], masquerade, portmap and the firewall
//!   plugin (Docker's `FORWARD` policy is DROP: the firewall plugin lets pod traffic through);
//! - kubelet: x509 client certificate `system:node:e2e-node` (the Node authorizer and the
//!   NodeRestriction plugin apply), cgroupfs driver, cgroup v1 allowed, swap allowed, eviction
//!   thresholds low enough for a busy CI disk; the API server reaches it with a client
//!   certificate of the cluster CA (`kubectl logs`, `exec`);
//! - kube-proxy in iptables mode, so the `kubernetes` Service's ClusterIP reaches the API server
//!   from pods (the operator runs in the cluster) and Services route to pods.
//!
//! The kubelet and kube-proxy own host-wide state (iptables chains, the CNI bridge, cgroups), so
//! one node runs per machine at a time: [`Node::start`] waits for a lock file.
//!
//! Dropping the node cordons it, force-deletes every pod and waits for the kubelet to tear them
//! down (containers, CNI, mounts), then stops the kubelet, containerd and kube-proxy (with
//! `kube-proxy --cleanup`), and removes what is left: mounts, the bridge, the pod cgroups.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node as NodeObj;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::ControlPlane;
use super::storage::Provisioner;
use crate::harness::free_port;

/// The node's name.
pub const NODE_NAME: &str = "e2e-node";
/// The pods' addresses (the CNI bridge's host-local range).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The CNI bridge's name on the host.
const BRIDGE: &str = "cxe2e0";
/// The pod sandbox image (tests/cluster/pause), as containerd names it.
const PAUSE_IMAGE: &str = "docker.io/codex-e2e/pause:1";
/// Where the CNI plugins are (Debian's containernetworking-plugins).
pub const CNI_BIN: &str = "/usr/lib/cni";
/// Serialises nodes on one machine.
const LOCK: &str = "/run/codex-e2e-node.lock";

/// What the node needs on the host; `Err` names what is missing and how to get it.
pub fn check_host() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the kubelet and containerd need root".into());
    }
    for tool in [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "iptables",
        "ip",
    ] {
        if which(tool).is_none() {
            return Err(format!(
                "{tool} is not installed (apt-get install docker.io containernetworking-plugins iproute2)"
            ));
        }
    }
    for plugin in ["bridge", "host-local", "loopback", "portmap", "firewall"] {
        if !Path::new(CNI_BIN).join(plugin).is_file() {
            return Err(format!(
                "the CNI plugin {plugin} is not in {CNI_BIN} (apt-get install containernetworking-plugins)"
            ));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A running node. See the module documentation for what dropping it does.
pub struct Node {
    client: Client,
    admin_kubeconfig: PathBuf,
    bin: PathBuf,
    procs: Vec<super::Proc>,
    /// containerd's gRPC socket.
    socket: PathBuf,
    /// Short-path directory in /run (sockets, containerd state).
    run_dir: PathBuf,
    /// Where the node keeps its data (kubelet root, containerd root, volumes, logs).
    pub dir: PathBuf,
    _provisioner: Provisioner,
    _lock: std::fs::File,
    /// How long [`Node::start`] took, until the node was Ready and untainted.
    pub startup: Duration,
}

impl Node {
    /// Starts containerd, imports the pause image, writes the CNI configuration, starts the
    /// kubelet and kube-proxy against `cp`, and waits until the Node is `Ready` without taints.
    /// Also starts the hostPath provisioner of the default StorageClass.
    pub async fn start(cp: &ControlPlane) -> anyhow::Result<Node> {
        check_host().map_err(anyhow::Error::msg)?;
        let t0 = Instant::now();
        let lock = take_lock().await?;
        let dir = cp.dir.join("node");
        std::fs::create_dir_all(&dir)?;
        let dir = std::fs::canonicalize(&dir)?;
        let run_dir = PathBuf::from(format!("/run/codex-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)?;
        let socket = run_dir.join("containerd.sock");
        let bin = cp.bin.clone();
        let client = cp.client().await?;
        // Leftovers of a run that was killed before its teardown.
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();

        let mut node = Node {
            client: client.clone(),
            admin_kubeconfig: cp.admin_kubeconfig.clone(),
            bin: bin.clone(),
            procs: Vec::new(),
            socket: socket.clone(),
            run_dir: run_dir.clone(),
            dir: dir.clone(),
            _provisioner: Provisioner::start(client.clone(), NODE_NAME, &dir.join("volumes"))
                .await?,
            _lock: lock,
            startup: Duration::ZERO,
        };

        // --- containerd --------------------------------------------------------------------
        let cni_conf = dir.join("cni");
        std::fs::create_dir_all(&cni_conf)?;
        let config = dir.join("containerd.toml");
        std::fs::write(&config, containerd_config(&dir, &run_dir, &cni_conf))?;
        node.spawn(
            "containerd",
            Path::new("containerd"),
            &[format!("--config={}", config.display())],
        )?;
        node.wait("containerd", Duration::from_secs(30), || {
            node.ctr(&["version"]).is_ok()
        })
        .await?;
        node.import_pause()?;
        std::fs::write(cni_conf.join("10-codex-e2e.conflist"), cni_config(&dir))?;

        // --- kubelet -----------------------------------------------------------------------
        let node_ip = cp.api_addr.ip();
        let ca_pem = &cp.ca_pem;
        let (Some(pki), Some(authority)) = (&cp.pki, &cp.authority) else {
            bail!(
                "a node joins only a control plane the harness started (it signs the node's certificates)"
            );
        };
        let kubelet_cert =
            authority.client(&format!("system:node:{NODE_NAME}"), &["system:nodes"])?;
        let kubelet_kc = dir.join("kubelet.kubeconfig");
        super::write_private(
            &kubelet_kc,
            &super::kubeconfig(&cp.server, ca_pem, &super::KubeUser::Cert(kubelet_cert)),
        )?;
        let kubelet_cfg = dir.join("kubelet.yaml");
        std::fs::write(&kubelet_cfg, kubelet_config(node_ip, &pki.ca_cert, &socket))?;
        let root = dir.join("kubelet");
        node.spawn(
            "kubelet",
            &bin.join("kubelet"),
            &[
                format!("--config={}", kubelet_cfg.display()),
                format!("--kubeconfig={}", kubelet_kc.display()),
                format!("--root-dir={}", root.display()),
                format!("--cert-dir={}", dir.join("kubelet-pki").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={node_ip}"),
                "--v=1".into(),
            ],
        )?;

        // --- kube-proxy --------------------------------------------------------------------
        let proxy_cert = authority.client("system:kube-proxy", &[])?;
        let proxy_kc = dir.join("kube-proxy.kubeconfig");
        super::write_private(
            &proxy_kc,
            &super::kubeconfig(&cp.server, ca_pem, &super::KubeUser::Cert(proxy_cert)),
        )?;
        let proxy_cfg = dir.join("kube-proxy.yaml");
        std::fs::write(&proxy_cfg, kube_proxy_config(&proxy_kc))?;
        node.spawn(
            "kube-proxy",
            &bin.join("kube-proxy"),
            &[format!("--config={}", proxy_cfg.display()), "--v=1".into()],
        )?;

        // --- Ready, untainted --------------------------------------------------------------
        let nodes: Api<NodeObj> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(n)) = nodes.get_opt(NODE_NAME).await {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let tainted = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| !t.is_empty());
                if ready && !tainted {
                    break;
                }
            }
            node.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "the node was not Ready and untainted in 120 s\n{}",
                    node.log_tail("kubelet", 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        node.startup = t0.elapsed();
        Ok(node)
    }

    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        self.procs
            .push(super::spawn_program(name, program, args, &log)?);
        Ok(())
    }

    async fn wait(&self, what: &str, limit: Duration, ok: impl Fn() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !ok() {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("{what} not up in {limit:?}\n{}", self.log_tail(what, 30));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Fails when containerd, the kubelet or kube-proxy has exited, with the end of its log.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        super::check_procs(&self.procs)
    }

    /// The last `n` lines of a node component's log (`containerd`, `kubelet`, `kube-proxy`).
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        super::tail_of(&self.dir.join(format!("{name}.log")), n)
    }

    /// Runs `ctr` against this node's containerd in the CRI's `k8s.io` namespace.
    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ctr")
            .arg(format!("--address={}", self.socket.display()))
            .args(["--namespace=k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Builds the pause image (FROM scratch, the `pause` binary) and imports it.
    fn import_pause(&self) -> anyhow::Result<()> {
        let ctx = self.dir.join("pause-image");
        std::fs::create_dir_all(&ctx)?;
        std::fs::copy(self.bin.join("pause"), ctx.join("pause"))?;
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT [\"/pause\"]\n",
        )?;
        let tag = PAUSE_IMAGE.trim_start_matches("docker.io/");
        let out = Command::new("docker")
            .args(["build", "-q", "-t", tag])
            .arg(&ctx)
            .output()
            .context("docker build of the pause image")?;
        if !out.status.success() {
            bail!(
                "docker build pause: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.import_image(tag)
    }

    /// Copies `image` from the local Docker engine into the node's containerd (`docker save |
    /// ctr images import`), so that pods using it start without a registry.
    pub fn import_image(&self, image: &str) -> anyhow::Result<()> {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .context("docker save")?;
        let stdout = save.stdout.take().context("docker save stdout")?;
        let out = Command::new("ctr")
            .arg(format!("--address={}", self.socket.display()))
            .args(["--namespace=k8s.io", "images", "import", "--no-unpack", "-"])
            .stdin(stdout)
            .output()
            .context("ctr images import")?;
        let saved = save.wait()?;
        if !saved.success() || !out.status.success() {
            bail!(
                "importing {image}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Sets an extended resource's capacity in the node status, e.g. `("nvidia.com/gpu", 2)`
    /// (what a device plugin advertises; the documented way to advertise a node-level extended
    /// resource by hand); 0 removes it. The kubelet keeps resources it does not manage and
    /// admits pods that ask for them.
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

    /// Sends SIGKILL to a running container (`containerd://ID` from the pod's
    /// `status.containerStatuses[].containerID`), as the kernel's OOM killer or a crash would:
    /// no SIGTERM, no grace period.
    pub fn kill_container(&self, container_id: &str) -> anyhow::Result<()> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id])?;
        Ok(())
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        super::run_tool(
            &self.bin.join("kubectl"),
            &self.admin_kubeconfig,
            args,
            None,
        )
    }

    /// The tasks (running containers) containerd still has.
    fn tasks(&self) -> Vec<String> {
        self.ctr(&["tasks", "ls", "-q"])
            .map(|o| o.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn stop(&mut self, name: &str) {
        if let Some(p) = self.procs.iter_mut().find(|p| p.name == name) {
            super::stop_proc(p, Duration::from_secs(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // 1. Let the kubelet tear the pods down (StopPodSandbox: containers, CNI DEL, netns,
        //    volume mounts). Cordoned first, so that replacements are not scheduled.
        let _ = self.kubectl(&["cordon", NODE_NAME]);
        let _ = self.kubectl(&[
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--force",
            "--grace-period=0",
            "--wait=false",
        ]);
        let deadline = Instant::now() + Duration::from_secs(45);
        while !self.tasks().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        self.stop("kubelet");
        // 2. Whatever is left: killed by containerd.
        for id in self.tasks() {
            let _ = self.ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", &id]);
        }
        std::thread::sleep(Duration::from_millis(300));
        for id in self.tasks() {
            let _ = self.ctr(&["tasks", "delete", "--force", &id]);
        }
        self.stop("containerd");
        self.stop("kube-proxy");
        let _ = Command::new(self.bin.join("kube-proxy"))
            .arg("--cleanup")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // 3. Mounts under the node's directories (deepest first), the bridge, the chains the
        //    kubelet and the CNI firewall plugin leave, pod cgroups.
        unmount_under(&[&self.dir, &self.run_dir]);
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        remove_chains();
        remove_cgroups("kubepods");
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Takes the machine-wide node lock, waiting up to 30 minutes for another run's node.
async fn take_lock() -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .with_context(|| format!("opening {LOCK}"))?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut said = false;
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if !said {
            eprintln!(
                "cluster: another cluster e2e's node runs on this machine; waiting for {LOCK}"
            );
            said = true;
        }
        if Instant::now() > deadline {
            bail!("{LOCK} held for 30 minutes");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(f)
}

fn unmount_under(dirs: &[&Path]) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| dirs.iter().any(|d| Path::new(p).starts_with(d)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a valid C string; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Removes the iptables chains (and the jumps to them) that the kubelet (`KUBE-FIREWALL`,
/// `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT`) and the CNI firewall plugin (`CNI-FORWARD`,
/// `CNI-ADMIN`) create and never remove; kube-proxy's own go with `kube-proxy --cleanup`.
fn remove_chains() {
    let ipt = |args: &[&str]| {
        let _ = Command::new("iptables")
            .args(["-w", "5"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    ipt(&["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"]);
    ipt(&["-t", "filter", "-D", "OUTPUT", "-j", "KUBE-FIREWALL"]);
    ipt(&[
        "-t",
        "filter",
        "-D",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "CNI firewall plugin rules",
        "-j",
        "CNI-FORWARD",
    ]);
    // The bridge plugin's masquerade rules of any sandbox not torn down by a CNI DEL (their
    // comment names the network `codex-e2e`), and the per-sandbox chains they jump to.
    let rules = Command::new("iptables")
        .args(["-w", "5", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for rule in rules.lines().filter(|l| l.contains("codex-e2e")) {
        let Some(spec) = rule.strip_prefix("-A ") else {
            continue;
        };
        // `iptables -S` prints a rule in shell syntax (the comment is quoted).
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("iptables -w 5 -t nat -D {spec}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(chain) = spec.split_whitespace().skip_while(|w| *w != "-j").nth(1) {
            ipt(&["-t", "nat", "-F", chain]);
            ipt(&["-t", "nat", "-X", chain]);
        }
    }
    for (table, chain) in [
        ("filter", "KUBE-FIREWALL"),
        ("filter", "CNI-FORWARD"),
        ("filter", "CNI-ADMIN"),
        ("filter", "KUBE-KUBELET-CANARY"),
        ("nat", "KUBE-KUBELET-CANARY"),
        ("mangle", "KUBE-KUBELET-CANARY"),
        ("mangle", "KUBE-IPTABLES-HINT"),
    ] {
        ipt(&["-t", table, "-F", chain]);
        ipt(&["-t", table, "-X", chain]);
    }
}

/// Removes the empty cgroups named `name` (and below) in every cgroup v1 hierarchy and in the
/// v2 one, deepest first.
fn remove_cgroups(name: &str) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path().join(name)).collect();
    roots.push(Path::new("/sys/fs/cgroup").join(name));
    for root in roots {
        let mut dirs = Vec::new();
        walk(&root, &mut dirs);
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn containerd_config(dir: &Path, run_dir: &Path, cni_conf: &Path) -> String {
    let d = dir.display();
    let r = run_dir.display();
    let runc = |name: &str| {
        format!(
            r#"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
        SystemdCgroup = false
        Root = "{r}/runc"
"#
        )
    };
    format!(
        r#"version = 2
root = "{d}/containerd"
state = "{r}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{r}/containerd.sock"
[ttrpc]
  address = "{r}/containerd.sock.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{c}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
{runc_default}{runc_nvidia}"#,
        c = cni_conf.display(),
        runc_default = runc("runc"),
        runc_nvidia = runc("nvidia"),
    )
}

fn cni_config(dir: &Path) -> String {
    json!({
        "cniVersion": "0.4.0",
        "name": "codex-e2e",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": dir.join("cni-ipam").display().to_string()}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall", "backend": "iptables"}
        ]
    })
    .to_string()
}

fn kubelet_config(node_ip: std::net::IpAddr, ca: &Path, socket: &Path) -> String {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip.to_string(),
        "port": free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": false},
            "x509": {"clientCAFile": ca.display().to_string()}
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "failSwapOn": false,
        "failCgroupV1": false,
        "containerRuntimeEndpoint": format!("unix://{}", socket.display()),
        "resolvConf": "/etc/resolv.conf",
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
        "maxPods": 110,
        "fileCheckFrequency": "5s",
        "syncFrequency": "10s",
        "shutdownGracePeriod": "0s"
    })
    .to_string()
}

fn kube_proxy_config(kubeconfig: &Path) -> String {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig.display().to_string()},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": format!("127.0.0.1:{}", free_port()),
        "metricsBindAddress": format!("127.0.0.1:{}", free_port()),
        // Leave the host's conntrack sysctls alone (read-only in a container).
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"localhostNodePorts": false}
    })
    .to_string()
}
