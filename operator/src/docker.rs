//! The same `CodexAgent` spec on a plain Docker host (bollard), for machines without Kubernetes.
//!
//! `codex-operator docker apply -f agent.yaml` converges the host to the spec:
//! - network `codex-<name>` and volume `codex-<name>-state` (and `codex-<name>-models` for a
//!   local model server's cache), all labelled [`AGENT_LABEL`]`=<name>`;
//! - container `codex-<name>-sidecar` (the sidecar image, uid 10001, port 8080 published on
//!   `127.0.0.1:<ephemeral>`), with its config file and keys uploaded into the created container
//!   at the paths of docs/sidecar-contract.md before it starts (no host bind mounts, so a remote
//!   `DOCKER_HOST` works too);
//! - for `provider.type: local`, container `codex-<name>-model` sharing the sidecar's network
//!   namespace (`network_mode: container:...`), so the sidecar reaches it on `127.0.0.1:<port>`
//!   exactly as in a pod;
//! - GPUs through a `DeviceRequest` (driver `nvidia`, `count`, capabilities `[["gpu"]]`) on the
//!   container that gets them in Kubernetes (the model server when local, else the sidecar).
//!
//! Each container carries a label with the digest of its desired config; a re-apply with nothing
//! changed leaves running containers alone, a change recreates them. `suspend: true` removes the
//! containers and keeps the volumes.
//!
//! Secrets: a `SecretKeyRef {name, key}` is read from the file `<secrets dir>/<name>/<key>`
//! (`CODEX_OPERATOR_SECRETS_DIR`, default `<data dir>/secrets`). The generated API key is an
//! ES256 pair (see [`crate::api_key`]) in `<data dir>/<agent>/` (`CODEX_OPERATOR_DOCKER_DIR`,
//! default `$XDG_STATE_HOME/codex-operator/docker` or `~/.local/state/codex-operator/docker`):
//! `jwt.key`, the private key clients sign with (mode 0600, created once, never overwritten and
//! never copied into a container), and `jwt.pub`, its public key, the only half the sidecar
//! container gets (`--jwt-public-key-file`). A `jwt.key` from before ES256 (an HS256 secret) is
//! kept and used as it is until it is deleted.
//!
//! bollard defaults to API 1.53, which older daemons (dockerd 20.10 speaks 1.41) refuse on
//! versioned paths, so every connection calls `negotiate_version()`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType, NetworkCreateRequest,
    PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};

use crate::api_key::{GENERATED_JWT_PUBLIC_KEY, PodKey, SigningKey};
use crate::crd::{
    CodexAgent, GENERATED_JWT_KEY, GpuSpec, ProviderType, SIDECAR_PORT, SecretKeyRef,
};
use crate::resources::{
    self, API_KEY_PATH, AUTH_JSON_PATH, CONFIG_PATH, CUSTOM_KEY_ENV, JWT_DIR, SIDECAR_UID,
    STATE_DIR,
};

/// Label naming the agent on every Docker object.
pub const AGENT_LABEL: &str = resources::AGENT_LABEL;
/// Label holding the digest of a container's desired config.
pub const HASH_LABEL: &str = resources::HASH_ANNOTATION;
/// Label marking objects managed by this tool.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "codex-operator");

/// Errors of the Docker runtime.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The Docker API refused or failed a call.
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
    /// Reading the manifest, a secret file or the key store failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The manifest is not a CodexAgent.
    #[error("parsing {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The spec breaks a CRD rule, or the agent has no usable name.
    #[error(transparent)]
    Build(#[from] resources::BuildError),
    /// A referenced secret file is missing.
    #[error("secret {name}/{key} not found: expected the file {path}")]
    MissingSecret {
        /// Secret name.
        name: String,
        /// Key.
        key: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The OS random source failed.
    #[error(transparent)]
    Random(#[from] crate::api_key::GenerateError),
    /// The generated `jwt.key` holds a PEM text that is not a P-256 private key.
    #[error("{}: not a P-256 private key in PEM (PKCS#8); delete it to generate a new pair", path.display())]
    BadJwtKey {
        /// The key file.
        path: PathBuf,
    },
    /// The JWT key file is too short to sign with (the sidecar refuses it too).
    #[error(
        "the JWT key in {path} has {len} bytes (trailing newlines removed); at least {min} are needed"
    )]
    WeakJwtKey {
        /// The key file.
        path: PathBuf,
        /// Its length after trimming.
        len: usize,
        /// [`crate::reconcile::MIN_JWT_KEY_LEN`].
        min: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DockerError + '_ {
    move |source| DockerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the Docker runtime keeps its files, and the default image.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Sidecar image when the spec has none.
    pub sidecar_image: String,
    /// Holds `<agent>/jwt.key` and `<agent>/jwt.pub` (generated keys).
    pub data_dir: PathBuf,
    /// Holds `<secret>/<key>` files for `SecretKeyRef`s.
    pub secrets_dir: PathBuf,
}

impl DockerOptions {
    /// From the environment: `SIDECAR_IMAGE`, `CODEX_OPERATOR_DOCKER_DIR`,
    /// `CODEX_OPERATOR_SECRETS_DIR` (see the module docs for the defaults).
    pub fn from_env() -> Self {
        let data_dir = std::env::var_os("CODEX_OPERATOR_DOCKER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let state = std::env::var_os("XDG_STATE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                            .join(".local/state")
                    });
                state.join("codex-operator/docker")
            });
        let secrets_dir = std::env::var_os("CODEX_OPERATOR_SECRETS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("secrets"));
        let sidecar_image = std::env::var("SIDECAR_IMAGE")
            .unwrap_or_else(|_| resources::DEFAULT_SIDECAR_IMAGE.to_string());
        Self {
            sidecar_image,
            data_dir,
            secrets_dir,
        }
    }
}

/// Docker object names of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Bridge network.
    pub network: String,
    /// State/workspace volume.
    pub volume: String,
    /// Model cache volume (local model server).
    pub models_volume: String,
    /// Sidecar container.
    pub sidecar: String,
    /// Model server container.
    pub model: String,
}

impl Names {
    /// Names for agent `name`.
    pub fn new(name: &str) -> Self {
        Self {
            network: format!("codex-{name}"),
            volume: format!("codex-{name}-state"),
            models_volume: format!("codex-{name}-models"),
            sidecar: format!("codex-{name}-sidecar"),
            model: format!("codex-{name}-model"),
        }
    }
}

/// One file uploaded into the sidecar container before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFile {
    /// Absolute path in the container.
    pub path: String,
    /// Contents.
    pub contents: Vec<u8>,
    /// Unix mode.
    pub mode: u32,
}

/// A container to create: name, body (labels included) and the files to upload.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Container name.
    pub name: String,
    /// Create body.
    pub body: ContainerCreateBody,
    /// Files uploaded before start.
    pub files: Vec<UploadFile>,
    /// Digest of body and files (also in [`HASH_LABEL`]).
    pub hash: String,
}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Containers created (and started) this time.
    pub created: Vec<String>,
    /// Containers left running because they were already up to date.
    pub unchanged: Vec<String>,
    /// Containers removed (stale, or suspended).
    pub removed: Vec<String>,
    /// `http://127.0.0.1:<port>` of the sidecar, when it runs.
    pub endpoint: Option<String>,
    /// File holding the key clients sign API tokens with: the generated ES256 private key, or
    /// the HS256 secret.
    pub jwt_key_file: PathBuf,
    /// File holding the generated key pair's public key (what the container got); `None` with
    /// an HS256 secret.
    pub jwt_public_key_file: Option<PathBuf>,
    /// The `aud` the sidecar requires, when it requires one.
    pub jwt_audience: Option<String>,
}

/// Connects with DOCKER_HOST (or the local socket) and negotiates the API version.
///
/// # Errors
/// bollard's error when no daemon answers.
pub async fn connect() -> Result<Docker, DockerError> {
    Ok(Docker::connect_with_defaults()?.negotiate_version().await?)
}

/// Parses a CodexAgent manifest (YAML or JSON).
///
/// # Errors
/// [`DockerError::Io`] or [`DockerError::Manifest`].
pub fn read_manifest(path: &Path) -> Result<CodexAgent, DockerError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_saphyr::from_str::<CodexAgent>(&text).map_err(|e| DockerError::Manifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// `codex-operator docker apply -f FILE`: converge and print a summary.
///
/// # Errors
/// See [`DockerError`].
pub async fn apply_file(path: &Path) -> Result<(), DockerError> {
    let agent = read_manifest(path)?;
    let docker = connect().await?;
    let report = apply(&docker, &agent, &DockerOptions::from_env()).await?;
    for c in &report.removed {
        println!("removed   {c}");
    }
    for c in &report.created {
        println!("created   {c}");
    }
    for c in &report.unchanged {
        println!("unchanged {c}");
    }
    if let Some(e) = &report.endpoint {
        println!("endpoint  {e}");
    }
    println!("jwt key   {}", report.jwt_key_file.display());
    if let Some(p) = &report.jwt_public_key_file {
        println!("jwt pub   {}", p.display());
    }
    if let Some(a) = &report.jwt_audience {
        println!("jwt aud   {a}");
    }
    Ok(())
}

/// `codex-operator docker delete NAME`: remove containers and network (and volumes if asked).
///
/// # Errors
/// See [`DockerError`].
pub async fn delete(name: &str, volumes: bool) -> Result<(), DockerError> {
    let docker = connect().await?;
    for removed in delete_with(&docker, name, volumes).await? {
        println!("removed {removed}");
    }
    Ok(())
}

fn read_secret(opts: &DockerOptions, r: &SecretKeyRef) -> Result<Vec<u8>, DockerError> {
    let path = opts.secrets_dir.join(&r.name).join(&r.key);
    std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DockerError::MissingSecret {
            name: r.name.clone(),
            key: r.key.clone(),
            path,
        },
        _ => DockerError::Io {
            path: path.clone(),
            source: e,
        },
    })
}

/// The agent's API key on this host, as [`jwt_key`] found it.
#[derive(Debug, Clone)]
pub struct JwtKey {
    /// What signs tokens (the operator's and the clients').
    pub signing: SigningKey,
    /// The bytes the sidecar container gets: the public key PEM, or the HS256 secret.
    pub mounted: Vec<u8>,
    /// The file clients sign with (`jwt.key`, or `auth.jwtSecretRef`'s file).
    pub file: PathBuf,
    /// The public key's file (`jwt.pub`), for a generated pair.
    pub public_file: Option<PathBuf>,
}

impl JwtKey {
    /// How the container verifies tokens.
    pub fn pod_key(&self) -> PodKey {
        self.signing.pod_key()
    }
}

/// The JWT key: `auth.jwtSecretRef`'s file (HS256), or the generated pair in
/// `<data dir>/<agent>/` (see the module docs): `jwt.key` created once (exclusive create, mode
/// 0600) and never overwritten, `jwt.pub` (re)written from it. A `jwt.key` that is not PEM is an
/// HS256 secret from before ES256 and is used as such.
///
/// # Errors
/// I/O errors, a missing secret file, a random source failure, a PEM `jwt.key` that is not a
/// P-256 private key ([`DockerError::BadJwtKey`]), or an HS256 key shorter than
/// [`crate::reconcile::MIN_JWT_KEY_LEN`] bytes ([`DockerError::WeakJwtKey`]).
pub fn jwt_key(agent: &CodexAgent, opts: &DockerOptions) -> Result<JwtKey, DockerError> {
    let min = crate::reconcile::MIN_JWT_KEY_LEN;
    let hs256 = |key: Vec<u8>, path: PathBuf| {
        if key.len() < min {
            return Err(DockerError::WeakJwtKey {
                path,
                len: key.len(),
                min,
            });
        }
        Ok(JwtKey {
            signing: SigningKey::Hs256(key.clone()),
            mounted: key,
            file: path,
            public_file: None,
        })
    };
    if let Some(r) = &agent.spec.auth.jwt_secret_ref {
        let path = opts.secrets_dir.join(&r.name).join(&r.key);
        return hs256(crate::reconcile::trim_key(read_secret(opts, r)?), path);
    }
    let dir = opts
        .data_dir
        .join(agent.metadata.name.clone().unwrap_or_default());
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = dir.join(GENERATED_JWT_KEY);
    if !path.exists() {
        let pair = crate::api_key::generate_es256()?;
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        match open.open(&path) {
            Ok(mut f) => f
                .write_all(pair.private_pem.as_bytes())
                .map_err(io_err(&path))?,
            // Another apply created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(DockerError::Io { path, source: e }),
        }
    }
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    if !bytes.starts_with(b"-----BEGIN") {
        return hs256(crate::reconcile::trim_key(bytes), path);
    }
    let public = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|pem| rcgen::KeyPair::from_pem(pem).ok())
        .filter(|k| k.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256)
        .map(|k| k.public_key_pem())
        .ok_or_else(|| DockerError::BadJwtKey { path: path.clone() })?;
    let public_file = dir.join(GENERATED_JWT_PUBLIC_KEY);
    if std::fs::read(&public_file).ok().as_deref() != Some(public.as_bytes()) {
        std::fs::write(&public_file, &public).map_err(io_err(&public_file))?;
    }
    Ok(JwtKey {
        signing: SigningKey::Es256(bytes),
        mounted: public.into_bytes(),
        file: path,
        public_file: Some(public_file),
    })
}

fn labels(agent: &str, hash: &str) -> HashMap<String, String> {
    HashMap::from([
        (AGENT_LABEL.to_string(), agent.to_string()),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (HASH_LABEL.to_string(), hash.to_string()),
    ])
}

fn device_requests(gpu: Option<&GpuSpec>) -> Option<Vec<DeviceRequest>> {
    gpu.map(|g| {
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: Some(i64::from(g.count)),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..DeviceRequest::default()
        }]
    })
}

fn finish(
    name: String,
    mut body: ContainerCreateBody,
    files: Vec<UploadFile>,
    agent: &str,
) -> ContainerPlan {
    let files_digest: Vec<(&str, String, u32)> = files
        .iter()
        .map(|f| (f.path.as_str(), resources::digest(&f.contents), f.mode))
        .collect();
    let hash = resources::digest(&(
        serde_json::to_value(&body).unwrap_or_default(),
        files_digest,
    ));
    body.labels = Some(labels(agent, &hash));
    ContainerPlan {
        name,
        body,
        files,
        hash,
    }
}

/// The containers for `agent` (pure: reads secrets but calls no Docker API).
///
/// # Errors
/// Spec rule violations, missing secret files.
pub fn plan(
    agent: &CodexAgent,
    opts: &DockerOptions,
    jwt: &JwtKey,
) -> Result<(ContainerPlan, Option<ContainerPlan>), DockerError> {
    agent.spec.validate().map_err(resources::BuildError::from)?;
    let name = agent
        .metadata
        .name
        .clone()
        .ok_or(resources::BuildError::MissingMetadata("name"))?;
    let names = Names::new(&name);
    let spec = &agent.spec;
    let settings = resources::sidecar_settings_for(spec, jwt.pod_key());
    let toml = settings.to_toml().map_err(resources::BuildError::from)?;
    let jwt_item = resources::pod_key_item(spec, &name, jwt.pod_key());
    let mut files = vec![
        UploadFile {
            path: CONFIG_PATH.into(),
            contents: toml.into_bytes(),
            mode: 0o444,
        },
        UploadFile {
            // Only what the sidecar verifies with: the public key of a generated pair.
            path: format!("{JWT_DIR}/{jwt_item}"),
            contents: jwt.mounted.clone(),
            mode: 0o400,
        },
    ];
    let mut env = Vec::new();
    let p = &spec.provider;
    if let Some(r) = &p.auth_json_secret_ref {
        files.push(UploadFile {
            path: AUTH_JSON_PATH.into(),
            contents: read_secret(opts, r)?,
            mode: 0o400,
        });
    }
    if let Some(r) = &p.api_key_secret_ref {
        let key = read_secret(opts, r)?;
        if p.type_ == ProviderType::Openai {
            files.push(UploadFile {
                path: API_KEY_PATH.into(),
                contents: key,
                mode: 0o400,
            });
        } else {
            env.push(format!(
                "{CUSTOM_KEY_ENV}={}",
                String::from_utf8_lossy(&key).trim_end()
            ));
        }
    }
    let local = p.local.as_ref();
    let gpu = spec.gpu.as_ref();
    let port_key = format!("{SIDECAR_PORT}/tcp");
    let sidecar_body = ContainerCreateBody {
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| opts.sidecar_image.clone()),
        ),
        // The command only: the image's entrypoint (tini) stays PID 1 and reaps orphans.
        cmd: Some(vec![
            "codex-sidecar".into(),
            "serve".into(),
            "--config".into(),
            CONFIG_PATH.into(),
        ]),
        user: Some(format!("{SIDECAR_UID}:{SIDECAR_UID}")),
        env: (!env.is_empty()).then_some(env),
        exposed_ports: Some(vec![port_key.clone()]),
        host_config: Some(HostConfig {
            network_mode: Some(names.network.clone()),
            port_bindings: Some(HashMap::from([(
                port_key,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            )])),
            mounts: Some(vec![Mount {
                target: Some(STATE_DIR.into()),
                source: Some(names.volume.clone()),
                typ: Some(MountType::VOLUME),
                ..Mount::default()
            }]),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            device_requests: if local.is_none() {
                device_requests(gpu)
            } else {
                None
            },
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let sidecar = finish(names.sidecar.clone(), sidecar_body, files, &name);

    let model = local.map(|l| {
        let cmd = resources::model_server_command(l, &spec.model);
        let env: Vec<String> = cmd.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let body = ContainerCreateBody {
            image: l
                .image
                .clone()
                .or_else(|| l.engine.default_image().map(str::to_string)),
            entrypoint: cmd.entrypoint.clone(),
            cmd: (!cmd.args.is_empty()).then(|| cmd.args.clone()),
            env: (!env.is_empty()).then_some(env),
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{}", names.sidecar)),
                mounts: cmd.cache_dir.map(|c| {
                    vec![Mount {
                        target: Some(c.into()),
                        source: Some(names.models_volume.clone()),
                        typ: Some(MountType::VOLUME),
                        ..Mount::default()
                    }]
                }),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                device_requests: device_requests(gpu),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        finish(names.model.clone(), body, Vec::new(), &name)
    });
    Ok((sidecar, model))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A tar archive (rooted at `/`) of the files, plus the state directory owned by uid 10001 so
/// the sidecar can write to a fresh volume.
fn archive(files: &[UploadFile]) -> Result<Vec<u8>, std::io::Error> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o750);
    dir.set_uid(SIDECAR_UID as u64);
    dir.set_gid(SIDECAR_UID as u64);
    dir.set_size(0);
    tar.append_data(
        &mut dir,
        STATE_DIR.trim_start_matches('/'),
        std::io::empty(),
    )?;
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(f.mode);
        h.set_uid(SIDECAR_UID as u64);
        h.set_gid(SIDECAR_UID as u64);
        h.set_size(f.contents.len() as u64);
        tar.append_data(
            &mut h,
            f.path.trim_start_matches('/'),
            f.contents.as_slice(),
        )?;
    }
    tar.into_inner()
}

/// Ensures `plan` runs: keeps an up-to-date running container, else (re)creates it.
/// Returns true when it created the container.
async fn ensure_container(
    docker: &Docker,
    plan: &ContainerPlan,
    force: bool,
    report: &mut ApplyReport,
) -> Result<bool, DockerError> {
    match docker.inspect_container(&plan.name, None).await {
        Ok(c) => {
            let same = c
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(HASH_LABEL))
                == Some(&plan.hash);
            let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            if same && running && !force {
                report.unchanged.push(plan.name.clone());
                return Ok(false);
            }
            docker
                .remove_container(
                    &plan.name,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await?;
            report.removed.push(plan.name.clone());
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&plan.name)
                    .build(),
            ),
            plan.body.clone(),
        )
        .await?;
    if !plan.files.is_empty() {
        let tar = archive(&plan.files).map_err(io_err(Path::new("<archive>")))?;
        docker
            .upload_to_container(
                &plan.name,
                Some(UploadToContainerOptionsBuilder::default().path("/").build()),
                bollard::body_full(tar.into()),
            )
            .await?;
    }
    docker.start_container(&plan.name, None).await?;
    report.created.push(plan.name.clone());
    Ok(true)
}

async fn remove_if_present(
    docker: &Docker,
    name: &str,
    report: &mut ApplyReport,
) -> Result<(), DockerError> {
    match docker
        .remove_container(
            name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
    {
        Ok(()) => {
            report.removed.push(name.to_string());
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Converges the Docker host to `agent` (see the module docs).
///
/// # Errors
/// See [`DockerError`].
pub async fn apply(
    docker: &Docker,
    agent: &CodexAgent,
    opts: &DockerOptions,
) -> Result<ApplyReport, DockerError> {
    let jwt = jwt_key(agent, opts)?;
    let (sidecar, model) = plan(agent, opts, &jwt)?;
    let name = agent.metadata.name.clone().unwrap_or_default();
    let names = Names::new(&name);
    let mut report = ApplyReport {
        jwt_audience: resources::audience(&agent.spec, jwt.pod_key()),
        jwt_key_file: jwt.file,
        jwt_public_key_file: jwt.public_file,
        ..ApplyReport::default()
    };
    let object_labels = HashMap::from([
        (AGENT_LABEL.to_string(), name.clone()),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
    ]);

    match docker
        .inspect_network(
            &names.network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {
            docker
                .create_network(NetworkCreateRequest {
                    name: names.network.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(object_labels.clone()),
                    ..NetworkCreateRequest::default()
                })
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    let mut vols = vec![names.volume.clone()];
    if model.is_some() {
        vols.push(names.models_volume.clone());
    }
    for v in vols {
        // Creating an existing named volume is a no-op that returns it.
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(v),
                labels: Some(object_labels.clone()),
                ..VolumeCreateRequest::default()
            })
            .await?;
    }

    if agent.spec.suspend {
        remove_if_present(docker, &names.model, &mut report).await?;
        remove_if_present(docker, &names.sidecar, &mut report).await?;
        return Ok(report);
    }
    let recreated = ensure_container(docker, &sidecar, false, &mut report).await?;
    match &model {
        // The model server lives in the sidecar's network namespace: a new sidecar needs a new one.
        Some(m) => {
            ensure_container(docker, m, recreated, &mut report).await?;
        }
        None => remove_if_present(docker, &names.model, &mut report).await?,
    }
    let inspect = docker.inspect_container(&names.sidecar, None).await?;
    report.endpoint = inspect
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get(&format!("{SIDECAR_PORT}/tcp")).cloned().flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port))
        .filter(|p| !p.is_empty())
        .map(|p| format!("http://127.0.0.1:{p}"));
    Ok(report)
}

/// Removes the agent's containers and network, and its volumes when `volumes`. Returns the
/// names removed.
///
/// # Errors
/// Docker API errors.
pub async fn delete_with(
    docker: &Docker,
    name: &str,
    volumes: bool,
) -> Result<Vec<String>, DockerError> {
    let names = Names::new(name);
    let mut report = ApplyReport::default();
    let filter = HashMap::from([("label".to_string(), vec![format!("{AGENT_LABEL}={name}")])]);
    let listed = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await?;
    // Model server first: it lives in the sidecar's network namespace.
    let mut containers: Vec<String> = listed
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
        .map(|n| n.trim_start_matches('/').to_string())
        .collect();
    containers.sort_by_key(|n| *n != names.model);
    for c in containers {
        remove_if_present(docker, &c, &mut report).await?;
    }
    match docker.remove_network(&names.network).await {
        Ok(()) => report.removed.push(names.network.clone()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    if volumes {
        for v in [&names.volume, &names.models_volume] {
            // Without `force`, a missing volume answers 404 (with it, dockerd reports success).
            match docker
                .remove_volume(v, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await
            {
                Ok(()) => report.removed.push(v.clone()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(report.removed)
}

#[cfg(test)]
#[path = "docker_tests.rs"]
mod tests;
