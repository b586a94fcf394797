//! Desired child objects of a `CodexAgent`, built as plain values (no API calls).
//!
//! Every child carries the agent's labels, an owner reference with `controller: true` (so
//! deleting the CodexAgent garbage-collects it) and the annotation [`HASH_ANNOTATION`]: a digest
//! of the desired object. The reconciler compares that digest with the one on the observed child
//! and skips the server-side apply when they match, so a reconcile with nothing changed writes
//! nothing (an apply would still bump `resourceVersion` and re-trigger `.owns()` watches:
//! restate-operator #138).
//!
//! Names: Pod and Service `<agent>`, ConfigMap `<agent>-config`, PVC `<agent>-state`, generated
//! JWT Secret `<agent>-jwt`.

use std::collections::BTreeMap;

use codex_sidecar::settings::{PathSettings, ProviderKind, ServeSettings};

use crate::api_key::{DEFAULT_AUDIENCE, GENERATED_JWT_PUBLIC_KEY, KeyPair, PodKey};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::core::v1::{ResourceRequirements, Secret};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::{
    CodexAgent, CodexAgentSpec, Engine, GENERATED_JWT_KEY, GpuSpec, ProviderType, SIDECAR_PORT,
};

/// Annotation holding the digest of the desired object (see the module docs).
pub const HASH_ANNOTATION: &str = "agents.codex-operator.dev/desired-hash";
/// Label naming the owning agent; the Service selects the pod with it.
pub const AGENT_LABEL: &str = "agents.codex-operator.dev/agent";
/// Name of the sidecar container.
pub const SIDECAR_CONTAINER: &str = "sidecar";
/// Name of the local model server container.
pub const MODEL_CONTAINER: &str = "model-server";
/// Where the state/workspace volume is mounted (docs/sidecar-contract.md).
pub const STATE_DIR: &str = "/var/lib/codex-sidecar";
/// Config file path in the sidecar container (docs/sidecar-contract.md).
pub const CONFIG_PATH: &str = "/etc/codex-sidecar/config.toml";
/// Directory of the JWT key (docs/sidecar-contract.md: `/etc/codex-sidecar/jwt/<key>`).
pub const JWT_DIR: &str = "/etc/codex-sidecar/jwt";
/// auth.json path (docs/sidecar-contract.md).
pub const AUTH_JSON_PATH: &str = "/etc/codex-sidecar/auth/auth.json";
/// OpenAI API key file path (docs/sidecar-contract.md).
pub const API_KEY_PATH: &str = "/etc/codex-sidecar/openai/api-key";
/// Environment variable holding a `custom` provider's bearer token (`providerEnvKey`).
pub const CUSTOM_KEY_ENV: &str = "CODEX_PROVIDER_API_KEY";
/// Key of the sidecar config inside the ConfigMap.
pub const CONFIG_KEY: &str = "config.toml";
/// uid/gid the sidecar image runs as (docs/sidecar-contract.md).
pub const SIDECAR_UID: i64 = 10001;

/// Sidecar image used when neither `spec.image` nor `--sidecar-image`/`SIDECAR_IMAGE` is given.
pub const DEFAULT_SIDECAR_IMAGE: &str = "ghcr.io/codex-operator/codex-operator:latest";

/// Operator-wide settings that shape children.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Default sidecar image (`--sidecar-image` / `SIDECAR_IMAGE`).
    pub sidecar_image: String,
    /// The pods' `securityContext.fsGroup`: `--fs-group` resolved at start-up
    /// ([`crate::platform::resolve_fs_group`]); `None` sets none (OpenShift assigns one).
    pub fs_group: Option<i64>,
    /// Agents whose serving pod may be replaced at once, cluster-wide
    /// (`--max-concurrent-rollouts`, see [`crate::rollout`]).
    pub max_concurrent_rollouts: usize,
    /// The namespace the operator runs in (`POD_NAMESPACE`): an agent's NetworkPolicy admits
    /// its probes.
    pub namespace: String,
}

impl Default for OperatorConfig {
    /// The defaults of `codex-operator run`.
    fn default() -> Self {
        Self {
            sidecar_image: DEFAULT_SIDECAR_IMAGE.to_owned(),
            fs_group: Some(crate::resources::SIDECAR_UID),
            max_concurrent_rollouts: usize::from(crate::rollout::DEFAULT_MAX_CONCURRENT_ROLLOUTS),
            namespace: "default".to_owned(),
        }
    }
}

/// Errors building the desired children.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The CodexAgent has no namespace or name (it was not read from the API).
    #[error("CodexAgent is missing metadata.{0}")]
    MissingMetadata(&'static str),
    /// The sidecar config could not be rendered as TOML.
    #[error("rendering the sidecar config: {0}")]
    Toml(#[from] toml::ser::Error),
    /// The spec breaks a CRD rule.
    #[error(transparent)]
    Spec(#[from] crate::crd::SpecError),
}

/// Child object names of an agent.
pub mod names {
    /// ConfigMap with the sidecar config.
    pub fn config_map(agent: &str) -> String {
        format!("{agent}-config")
    }
    /// PVC with state and workspace.
    pub fn pvc(agent: &str) -> String {
        format!("{agent}-state")
    }
}

/// Everything the reconciler applies for one agent.
#[derive(Debug, Clone)]
pub struct Children {
    /// The sidecar config file.
    pub config_map: ConfigMap,
    /// The state/workspace volume.
    pub pvc: PersistentVolumeClaim,
    /// Port 8080 -> sidecar.
    pub service: Service,
    /// The agent's pod.
    pub pod: Pod,
    /// Its NetworkPolicy, when `spec.networkPolicy` is set.
    pub network_policy: Option<NetworkPolicy>,
}

/// Labels on every child: the recommended `app.kubernetes.io/*` set plus [`AGENT_LABEL`].
pub fn labels(agent: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "codex-agent".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), agent.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "codex-operator".to_string(),
        ),
        (AGENT_LABEL.to_string(), agent.to_string()),
    ])
}

/// Hex SHA-256 (first 16 bytes) of a value's JSON form. Deterministic: k8s-openapi structs
/// serialize fields in declaration order and maps are `BTreeMap`s.
pub fn digest<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let sum = Sha256::digest(&bytes);
    sum[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn meta(agent: &CodexAgent, name: String, oref: &OwnerReference) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(
            agent
                .namespace()
                .ok_or(BuildError::MissingMetadata("namespace"))?,
        ),
        labels: Some(labels(&agent.name_any())),
        owner_references: Some(vec![oref.clone()]),
        ..ObjectMeta::default()
    })
}

/// Stamps [`HASH_ANNOTATION`] with the digest of the object as built so far.
fn stamp<K: Resource + Serialize>(mut obj: K) -> K {
    let hash = digest(&obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_ANNOTATION.into(), hash);
    obj
}

/// How the pod of an agent verifies tokens when nothing else is known: with the generated key
/// pair's public key, or with the HS256 secret of `auth.jwtSecretRef`. (A generated Secret from
/// before ES256 holds an HS256 key: [`crate::api_key::SigningKey::pod_key`].)
pub fn default_pod_key(spec: &CodexAgentSpec) -> PodKey {
    if spec.auth.jwt_secret_ref.is_some() {
        PodKey::SharedSecret
    } else {
        PodKey::PublicKey
    }
}

/// The `aud` the agent's sidecar requires (and the operator's tokens carry): the spec's
/// `sidecar.jwtAudience`, else [`DEFAULT_AUDIENCE`] when the pod checks a public key.
pub fn audience(spec: &CodexAgentSpec, pod_key: PodKey) -> Option<String> {
    match (&spec.sidecar.jwt_audience, pod_key) {
        (Some(a), _) => Some(a.clone()),
        (None, PodKey::PublicKey) => Some(DEFAULT_AUDIENCE.to_owned()),
        (None, PodKey::SharedSecret) => None,
    }
}

/// The data key of the agent's JWT Secret the pod mounts: `jwt.pub` for [`PodKey::PublicKey`],
/// the HS256 key otherwise.
pub fn pod_key_item(spec: &CodexAgentSpec, agent_name: &str, pod_key: PodKey) -> String {
    match pod_key {
        PodKey::PublicKey => GENERATED_JWT_PUBLIC_KEY.to_owned(),
        PodKey::SharedSecret => spec.jwt_secret(agent_name).key,
    }
}

/// [`sidecar_settings_for`] with the [`default_pod_key`].
pub fn sidecar_settings(spec: &CodexAgentSpec) -> ServeSettings {
    sidecar_settings_for(spec, default_pod_key(spec))
}

/// The sidecar's config file for this agent (paths per docs/sidecar-contract.md, agent settings
/// from `spec.sidecar` with model and provider filled in from `spec.model`/`spec.provider`), its
/// API key per `pod_key`: `jwtPublicKeyFile` `/etc/codex-sidecar/jwt/jwt.pub` with an audience
/// ([`audience`]), or `jwtSecretFile` `/etc/codex-sidecar/jwt/<key>`.
pub fn sidecar_settings_for(spec: &CodexAgentSpec, pod_key: PodKey) -> ServeSettings {
    let key_file = Some(format!("{JWT_DIR}/{}", pod_key_item(spec, "unused", pod_key)).into());
    let (jwt_secret_file, jwt_public_key_file) = match pod_key {
        PodKey::PublicKey => (None, key_file),
        PodKey::SharedSecret => (key_file, None),
    };
    let p = &spec.provider;
    let mut agent = spec.sidecar.clone();
    agent.jwt_audience = audience(spec, pod_key);
    agent.model = Some(spec.model.clone());
    match p.type_ {
        ProviderType::Openai => agent.provider = Some(ProviderKind::Openai),
        ProviderType::Custom => {
            agent.provider = Some(ProviderKind::Custom);
            agent.provider_base_url = p.base_url.clone();
            if p.api_key_secret_ref.is_some() {
                agent.provider_env_key = Some(CUSTOM_KEY_ENV.to_string());
            }
        }
        ProviderType::Local => {
            if let Some(local) = &p.local {
                agent.provider = Some(local.engine.codex_provider());
                agent.provider_base_url =
                    Some(format!("http://127.0.0.1:{}/v1", local.effective_port()));
            }
        }
    }
    let openai = p.type_ == ProviderType::Openai;
    ServeSettings {
        paths: PathSettings {
            // Every address family (IPv6-only and dual-stack clusters probe the IPv6 address);
            // the sidecar falls back to 0.0.0.0 where IPv6 is disabled.
            listen: Some(format!("[::]:{SIDECAR_PORT}")),
            state_dir: Some(STATE_DIR.into()),
            auth_json: (openai && p.auth_json_secret_ref.is_some()).then(|| AUTH_JSON_PATH.into()),
            openai_api_key_file: (openai && p.api_key_secret_ref.is_some())
                .then(|| API_KEY_PATH.into()),
            jwt_secret_file,
            jwt_public_key_file,
            ..PathSettings::default()
        },
        agent,
    }
}

/// Builds every child of `agent` (all but the JWT Secret, see [`jwt_secret`]).
///
/// # Errors
/// [`BuildError`] when the agent lacks metadata, breaks a spec rule, or its config cannot be
/// rendered.
pub fn build(agent: &CodexAgent, cfg: &OperatorConfig) -> Result<Children, BuildError> {
    build_for(agent, cfg, default_pod_key(&agent.spec))
}

/// [`build`] for a pod that verifies tokens per `pod_key` (see [`sidecar_settings_for`]).
///
/// # Errors
/// As [`build`].
pub fn build_for(
    agent: &CodexAgent,
    cfg: &OperatorConfig,
    pod_key: PodKey,
) -> Result<Children, BuildError> {
    agent.spec.validate()?;
    let name = agent.name_any();
    let oref = agent
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    let toml = sidecar_settings_for(&agent.spec, pod_key).to_toml()?;
    let config_hash = digest(&toml);

    let config_map = stamp(ConfigMap {
        metadata: meta(agent, names::config_map(&name), &oref)?,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), toml)])),
        ..ConfigMap::default()
    });
    let pvc = stamp(PersistentVolumeClaim {
        metadata: meta(agent, names::pvc(&name), &oref)?,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: agent.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(agent.spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    });
    let service = stamp(Service {
        metadata: meta(agent, name.clone(), &oref)?,
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(AGENT_LABEL.to_string(), name.clone())])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SIDECAR_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    });
    let mut pod_meta = meta(agent, name.clone(), &oref)?;
    pod_meta.annotations = Some(BTreeMap::from([(
        "agents.codex-operator.dev/config-hash".to_string(),
        config_hash,
    )]));
    let pod = stamp(Pod {
        metadata: pod_meta,
        spec: Some(pod_spec(agent, cfg, pod_key)),
        ..Pod::default()
    });
    let network_policy = match &agent.spec.network_policy {
        Some(np) => Some(stamp(network_policy(
            meta(agent, name.clone(), &oref)?,
            &name,
            np,
            &cfg.namespace,
        ))),
        None => None,
    };
    Ok(Children {
        config_map,
        pvc,
        service,
        pod,
        network_policy,
    })
}

/// The NetworkPolicy of agent `name`: its pod (selected by [`AGENT_LABEL`]) admits TCP to the
/// sidecar's port only, only from pods in `np.fromNamespaces` and `operator_ns` (matched by the
/// `kubernetes.io/metadata.name` label the API server sets on every namespace). Egress is not
/// restricted (the model provider, MCP servers).
pub fn network_policy(
    metadata: ObjectMeta,
    name: &str,
    np: &crate::crd::NetworkPolicySpec,
    operator_ns: &str,
) -> NetworkPolicy {
    let mut namespaces: Vec<String> = np.from_namespaces.clone();
    namespaces.push(operator_ns.to_owned());
    namespaces.sort();
    namespaces.dedup();
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(AGENT_LABEL.to_string(), name.to_owned())])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "kubernetes.io/metadata.name".into(),
                            operator: "In".into(),
                            values: Some(namespaces),
                        }]),
                        ..LabelSelector::default()
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(SIDECAR_PORT)),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The generated JWT Secret `<agent>-jwt` holding `pair`: `jwt.key` the private key (PKCS#8
/// PEM), `jwt.pub` the public key (SPKI PEM). Created once, never updated.
///
/// # Errors
/// [`BuildError::MissingMetadata`] when the agent lacks a namespace or uid.
pub fn jwt_secret(agent: &CodexAgent, pair: &KeyPair) -> Result<Secret, BuildError> {
    let oref = agent
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    let name = agent.spec.jwt_secret(&agent.name_any()).name;
    Ok(Secret {
        metadata: meta(agent, name, &oref)?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                GENERATED_JWT_KEY.to_string(),
                ByteString(pair.private_pem.as_bytes().to_vec()),
            ),
            (
                GENERATED_JWT_PUBLIC_KEY.to_string(),
                ByteString(pair.public_pem.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    })
}

fn gpu_limits(
    gpu: Option<&GpuSpec>,
    base: Option<&ResourceRequirements>,
) -> Option<ResourceRequirements> {
    let mut r = base.cloned();
    if let Some(gpu) = gpu {
        let r = r.get_or_insert_with(ResourceRequirements::default);
        r.limits
            .get_or_insert_with(BTreeMap::new)
            .insert(gpu.resource_name.clone(), Quantity(gpu.count.to_string()));
    }
    r
}

fn secret_volume(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                mode: None,
            }]),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn http_probe(path: &str, port: IntOrString, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port,
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn pod_spec(agent: &CodexAgent, cfg: &OperatorConfig, pod_key: PodKey) -> PodSpec {
    let spec = &agent.spec;
    let name = agent.name_any();
    let jwt = spec.jwt_secret(&name);
    let local = spec.provider.local.as_ref();
    let gpu = spec.gpu.as_ref();

    let mut volumes = vec![
        Volume {
            name: "state".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::pvc(&name),
                read_only: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map(&name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // Only the key the sidecar verifies with (the public key of a generated pair), never the
        // private key; a whole-directory mount (no subPath) so a rotation reaches the pod.
        {
            let item = pod_key_item(spec, &name, pod_key);
            secret_volume("jwt", &jwt.name, &item, &item)
        },
    ];
    let mut mounts = vec![
        mount("state", STATE_DIR, false),
        VolumeMount {
            sub_path: Some(CONFIG_KEY.into()),
            ..mount("config", CONFIG_PATH, true)
        },
        mount("jwt", JWT_DIR, true),
    ];
    let mut env = Vec::new();
    let p = &spec.provider;
    if let Some(r) = &p.auth_json_secret_ref {
        volumes.push(secret_volume("auth-json", &r.name, &r.key, "auth.json"));
        mounts.push(mount("auth-json", "/etc/codex-sidecar/auth", true));
    }
    if let Some(r) = &p.api_key_secret_ref {
        if p.type_ == ProviderType::Openai {
            volumes.push(secret_volume("openai-key", &r.name, &r.key, "api-key"));
            mounts.push(mount("openai-key", "/etc/codex-sidecar/openai", true));
        } else {
            env.push(EnvVar {
                name: CUSTOM_KEY_ENV.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: r.name.clone(),
                        key: r.key.clone(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }

    let sidecar = Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| cfg.sidecar_image.clone()),
        ),
        // Arguments only: the image's entrypoint (tini, which reaps what codex leaves behind)
        // stays PID 1.
        args: Some(vec![
            "codex-sidecar".into(),
            "serve".into(),
            "--config".into(),
            CONFIG_PATH.into(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: SIDECAR_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        readiness_probe: Some(http_probe(
            "/readyz",
            IntOrString::String("http".into()),
            5,
            3,
        )),
        liveness_probe: Some(http_probe(
            "/healthz",
            IntOrString::String("http".into()),
            10,
            6,
        )),
        resources: gpu_limits(
            if local.is_none() { gpu } else { None },
            spec.resources.as_ref(),
        ),
        volume_mounts: Some(mounts),
        // No fixed UID: the image's numeric USER (10001) satisfies runAsNonRoot, and platforms
        // that assign UIDs (OpenShift restricted-v2) may.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut containers = vec![sidecar];
    if let Some(local) = local {
        containers.push(model_container(local, &spec.model, gpu));
    }

    let mut node_selector = spec.node_selector.clone();
    let mut tolerations = spec.tolerations.clone();
    if let Some(gpu) = gpu {
        if let Some(product) = &gpu.product {
            node_selector.insert(crate::crd::GPU_PRODUCT_LABEL.into(), product.clone());
        }
        if gpu.tolerate_gpu_taint {
            tolerations.push(Toleration {
                key: Some(crate::crd::DEFAULT_GPU_RESOURCE.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            });
        }
    }
    PodSpec {
        containers,
        volumes: Some(volumes),
        restart_policy: Some("Always".into()),
        enable_service_links: Some(false),
        // Nothing in the pod calls the Kubernetes API: no service-account token to steal.
        automount_service_account_token: Some(false),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        affinity: spec.affinity.clone(),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        runtime_class_name: gpu.and_then(|g| g.runtime_class_name.clone()),
        security_context: Some(PodSecurityContext {
            // 10001 by default; none on OpenShift, whose restricted-v2 SCC assigns one from the
            // namespace's range (and refuses any other): see `crate::platform`.
            fs_group: cfg.fs_group,
            // Re-chown a volume only when its root does not already match: a large model cache
            // is not walked at every start. It applies to an SCC-assigned fsGroup too.
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    }
}

/// How a local model server is started: shared by the pod and the Docker runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelServerCommand {
    /// Entrypoint override (`command` in a pod), if any.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments (the engine's, then `local.args`).
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Where the engine caches models (a volume is mounted there), if it has a cache.
    pub cache_dir: Option<&'static str>,
    /// Listen port.
    pub port: i32,
}

/// The start command of `local`'s engine serving `model` (`spec.model`, the name codex sends):
/// ollama serves, pulls the model (a no-op when cached) and waits; vLLM loads `local.model` and
/// serves it under `model`; lmstudio/other run their image with `local.args`.
pub fn model_server_command(
    local: &crate::crd::LocalModelServer,
    model: &str,
) -> ModelServerCommand {
    let port = local.effective_port();
    let served = local.model.clone().unwrap_or_else(|| model.to_string());
    let mut cmd = match local.engine {
        Engine::Ollama => ModelServerCommand {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            args: vec![
                "ollama serve & pid=$!; until ollama list >/dev/null 2>&1; do sleep 1; done; \
                 ollama pull \"$OLLAMA_MODEL\" || exit 1; wait $pid"
                    .into(),
            ],
            env: vec![
                ("OLLAMA_MODEL".into(), served),
                ("OLLAMA_HOST".into(), format!("127.0.0.1:{port}")),
            ],
            cache_dir: Some("/root/.ollama"),
            port,
        },
        Engine::Vllm => ModelServerCommand {
            entrypoint: None,
            args: vec![
                "--model".into(),
                served,
                "--served-model-name".into(),
                model.to_string(),
                "--port".into(),
                port.to_string(),
                // Loopback only: the sidecar is the pod's one entry (behind its JWT).
                "--host".into(),
                "127.0.0.1".into(),
            ],
            env: Vec::new(),
            cache_dir: Some("/root/.cache/huggingface"),
            port,
        },
        Engine::Lmstudio | Engine::Other => ModelServerCommand {
            entrypoint: None,
            args: Vec::new(),
            env: Vec::new(),
            cache_dir: None,
            port,
        },
    };
    cmd.args.extend(local.args.iter().cloned());
    cmd
}

fn model_container(
    local: &crate::crd::LocalModelServer,
    model: &str,
    gpu: Option<&GpuSpec>,
) -> Container {
    let cmd = model_server_command(local, model);
    let port = cmd.port;
    let readiness = match local.engine {
        // Ready once the model is pulled and loadable.
        Engine::Ollama => Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "ollama show \"$OLLAMA_MODEL\"".into(),
                ]),
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        // The server listens on loopback, which the kubelet's HTTP probes cannot reach (they
        // connect to the pod IP): probe from inside the container (vLLM's image has Python).
        Engine::Vllm => Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "python3".into(),
                    "-c".into(),
                    format!(
                        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=5)"
                    ),
                ]),
            }),
            period_seconds: Some(10),
            timeout_seconds: Some(8),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        // Their images differ (no shell or HTTP client to count on), and a probe at the pod IP
        // would force them to listen beyond loopback: the sidecar's readiness, which asks the
        // model server over loopback, stands for theirs.
        Engine::Lmstudio | Engine::Other => None,
    };
    let env: Vec<EnvVar> = cmd
        .env
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            ..EnvVar::default()
        })
        .collect();
    Container {
        name: MODEL_CONTAINER.into(),
        image: local
            .image
            .clone()
            .or_else(|| local.engine.default_image().map(str::to_string)),
        command: cmd.entrypoint,
        args: (!cmd.args.is_empty()).then_some(cmd.args),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![ContainerPort {
            name: Some("model".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: readiness,
        resources: gpu_limits(gpu, local.resources.as_ref()),
        security_context: Some(SecurityContext {
            run_as_user: local.run_as_user,
            run_as_non_root: local.run_as_user.map(|_| true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: cmd.cache_dir.map(|d| {
            vec![VolumeMount {
                sub_path: Some("models".into()),
                ..mount("state", d, false)
            }]
        }),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(spec: serde_json::Value) -> CodexAgent {
        let mut a = CodexAgent::new("a1", serde_json::from_value(spec).expect("spec"));
        a.metadata.namespace = Some("ns".into());
        a.metadata.uid = Some("uid-1".into());
        a
    }

    fn cfg() -> OperatorConfig {
        OperatorConfig {
            sidecar_image: "ghcr.io/x/codex:1".into(),
            fs_group: Some(SIDECAR_UID),
            ..Default::default()
        }
    }

    #[test]
    fn local_model_servers_listen_on_loopback_only() {
        for (engine, check) in [("ollama", "OLLAMA_HOST"), ("vllm", "--host")] {
            let a = agent(json!({"model": "m", "provider": {"type": "local",
                "local": {"engine": engine}}, "gpu": {"count": 1}}));
            let pod = build(&a, &cfg()).expect("build").pod;
            let c = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == MODEL_CONTAINER))
                .expect("model container")
                .clone();
            let env = serde_json::to_string(&c.env).expect("json");
            let args = c.args.clone().unwrap_or_default();
            match check {
                "OLLAMA_HOST" => assert!(env.contains("127.0.0.1:11434"), "{engine}: {env}"),
                _ => {
                    let i = args.iter().position(|a| a == "--host").expect("--host");
                    assert_eq!(args[i + 1], "127.0.0.1", "{engine}: {args:?}");
                }
            }
            // The kubelet's HTTP probes reach only the pod IP: readiness is probed inside.
            let probe = c.readiness_probe.expect("readiness");
            assert!(
                probe.http_get.is_none() && probe.exec.is_some(),
                "{engine}: {probe:?}"
            );
        }
    }

    #[test]
    fn sidecar_config_round_trips_and_uses_contract_paths() {
        let a = agent(
            json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://gw/v1",
            "apiKeySecretRef": {"name": "k", "key": "token"}}, "sidecar": {"maxLiveSessions": 3}}),
        );
        let c = build(&a, &cfg()).expect("build");
        let text = &c.config_map.data.as_ref().expect("data")[CONFIG_KEY];
        let s = ServeSettings::from_toml(text).expect("sidecar parses the operator's config");
        assert_eq!(s.paths.listen.as_deref(), Some("[::]:8080"));
        // A generated key pair: the public key, checked with the default audience.
        assert_eq!(
            s.paths.jwt_public_key_file.as_deref(),
            Some(std::path::Path::new("/etc/codex-sidecar/jwt/jwt.pub"))
        );
        assert_eq!(s.paths.jwt_secret_file, None);
        assert_eq!(s.agent.jwt_audience.as_deref(), Some("codex-sidecar"));
        // An HS256 secret (auth.jwtSecretRef): as before, no audience unless the spec sets one.
        let s = sidecar_settings_for(&a.spec, PodKey::SharedSecret);
        assert_eq!(
            s.paths.jwt_secret_file.as_deref(),
            Some(std::path::Path::new("/etc/codex-sidecar/jwt/jwt.key"))
        );
        assert_eq!(s.paths.jwt_public_key_file, None);
        assert_eq!(s.agent.jwt_audience, None);
        let mut with_aud = a.spec.clone();
        with_aud.sidecar.jwt_audience = Some("mine".into());
        let s = sidecar_settings_for(&with_aud, PodKey::PublicKey);
        assert_eq!(s.agent.jwt_audience.as_deref(), Some("mine"));
        let s = ServeSettings::from_toml(text).expect("parses");
        assert_eq!(s.agent.provider, Some(ProviderKind::Custom));
        assert_eq!(s.agent.provider_base_url.as_deref(), Some("http://gw/v1"));
        assert_eq!(s.agent.provider_env_key.as_deref(), Some(CUSTOM_KEY_ENV));
        assert_eq!(s.agent.max_live_sessions, Some(3));
        let env = c.pod.spec.as_ref().expect("spec").containers[0]
            .env
            .clone()
            .expect("env");
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|s| s.key.as_str()),
            Some("token")
        );
    }

    #[test]
    fn hash_changes_with_spec_and_is_stable() {
        let a = agent(
            json!({"model": "m", "provider": {"type": "openai", "authJsonSecretRef": {"name": "s", "key": "auth.json"}}}),
        );
        let h1 = build(&a, &cfg())
            .expect("b")
            .pod
            .metadata
            .annotations
            .expect("a")[HASH_ANNOTATION]
            .clone();
        let h2 = build(&a, &cfg())
            .expect("b")
            .pod
            .metadata
            .annotations
            .expect("a")[HASH_ANNOTATION]
            .clone();
        assert_eq!(h1, h2);
        let mut b = a.clone();
        b.spec.sidecar.turn_timeout = Some(5);
        let h3 = build(&b, &cfg())
            .expect("b")
            .pod
            .metadata
            .annotations
            .expect("a")[HASH_ANNOTATION]
            .clone();
        assert_ne!(h1, h3, "a config change must roll the pod");
    }

    fn pod_security(a: &CodexAgent, fs_group: Option<i64>) -> (PodSecurityContext, String) {
        let c = build(a, &OperatorConfig { fs_group, ..cfg() }).expect("build");
        let hash = c.pod.metadata.annotations.expect("annotations")[HASH_ANNOTATION].clone();
        let sc = c
            .pod
            .spec
            .expect("spec")
            .security_context
            .expect("pod securityContext");
        (sc, hash)
    }

    #[test]
    fn pod_fs_group_follows_the_operator_setting_and_keeps_on_root_mismatch() {
        let a =
            agent(json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://gw/v1"}}));
        let (vanilla, h_vanilla) = pod_security(&a, Some(SIDECAR_UID));
        assert_eq!(vanilla.fs_group, Some(10001));
        // `none`, or `auto` on OpenShift: the SCC assigns one.
        let (openshift, h_openshift) = pod_security(&a, None);
        assert_eq!(openshift.fs_group, None);
        let (gid, h_gid) = pod_security(&a, Some(1_000_680_000));
        assert_eq!(gid.fs_group, Some(1_000_680_000));
        for sc in [&vanilla, &openshift, &gid] {
            assert_eq!(sc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
            assert_eq!(
                sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                Some("RuntimeDefault")
            );
            // Never a pod-level UID or GID: the images' or the platform's.
            assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
        }
        // Omitted, not null, in what is applied.
        let applied = serde_json::to_value(&openshift).expect("json");
        assert_eq!(
            applied,
            json!({"fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}})
        );
        // A changed setting is a changed pod (fsGroup is immutable: the pod is recreated).
        assert_ne!(h_vanilla, h_openshift);
        assert_ne!(h_vanilla, h_gid);
    }

    #[test]
    fn every_container_is_restricted_without_a_fixed_uid() {
        let a = agent(json!({"model": "m", "provider": {"type": "local",
            "local": {"engine": "ollama"}}}));
        let c = build(&a, &cfg()).expect("build");
        let containers = c.pod.spec.expect("spec").containers;
        assert_eq!(containers.len(), 2);
        for ct in &containers {
            let sc = ct.security_context.as_ref().expect("securityContext");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", ct.name);
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()]),
                "{}",
                ct.name
            );
            assert_eq!(sc.run_as_user, None, "{}", ct.name);
            assert_eq!(sc.privileged, None, "{}", ct.name);
        }
        assert_eq!(
            containers[0]
                .security_context
                .as_ref()
                .and_then(|s| s.run_as_non_root),
            Some(true)
        );
    }

    #[test]
    fn invalid_spec_is_refused() {
        let a = agent(json!({"model": "m", "provider": {"type": "custom"}}));
        assert!(matches!(build(&a, &cfg()), Err(BuildError::Spec(_))));
    }
}
