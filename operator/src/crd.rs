//! The `CodexAgent` custom resource (`agents.codex-operator.dev/v1alpha1`).
//!
//! One `CodexAgent` is one Codex agent: a pod running `codex-sidecar` (the HTTP API in front of
//! `codex app-server`), optionally a local model server in the same pod, a Service on port 8080, a
//! ConfigMap with the sidecar's config file, a PVC for sessions and the workspace and, unless the
//! user brings one, a Secret with the key for the API's JWTs (a generated ES256 pair, or the
//! user's HS256 secret).
//!
//! Doc comments on the spec types become the CRD's OpenAPI descriptions (`kubectl explain
//! codexagent.spec...`). Rules that the API server enforces at `kubectl apply` time are written
//! as schema constraints (enums, ranges, patterns) and CEL `x-kubernetes-validations`; the same
//! rules are checked in Rust by [`CodexAgentSpec::validate`] because the Docker runtime has no
//! API server in front of it.

use std::collections::BTreeMap;

use codex_sidecar::settings::{AgentSettings, ProviderKind};
use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the CRD.
pub const GROUP: &str = "agents.codex-operator.dev";
/// Sidecar HTTP port (docs/sidecar-contract.md: listen `0.0.0.0:8080`).
pub const SIDECAR_PORT: i32 = 8080;
/// Default GPU extended resource, as advertised by the NVIDIA device plugin.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";
/// GPU Feature Discovery node label holding the GPU product name (e.g. `NVIDIA-H100-80GB-HBM3`).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Label (value `"true"`) by which a Secret's owner lets CodexAgents in its namespace use it:
/// `auth.jwtSecretRef`, `provider.authJsonSecretRef`, `provider.apiKeySecretRef` and
/// `imagePullSecrets` are only mounted, read or handed to the kubelet when the Secret carries
/// it, so that being allowed to create a CodexAgent is not being allowed to use every Secret of
/// the namespace (the operator itself may read them all). Labelling a Secret takes `patch` on
/// it, and whoever may patch a Secret can already read it (a patch answers with the object).
/// A Secret controlled by the agent itself (the generated `<agent>-jwt`) needs no label. The
/// Docker runtime reads files the host's operator placed and does not look at it.
pub const ALLOW_USE_LABEL: &str = "agents.codex-operator.dev/allow-use";
/// Default size of the state/workspace volume.
pub const DEFAULT_STORAGE_SIZE: &str = "10Gi";

/// Desired state of one Codex agent.
// kube-derive's repeated `printcolumn(type_ = ...)` trips clippy's duplicated-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "agents.codex-operator.dev",
    version = "v1alpha1",
    kind = "CodexAgent",
    plural = "codexagents",
    shortname = "cxa",
    namespaced,
    // The agent's name names its Service (an RFC 1035 label) and its pod's hostname: refuse at
    // `kubectl apply` what cannot name them, instead of an agent that never starts.
    validation = Rule::new(
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63"
    ).message(
        "metadata.name must be a DNS label (RFC 1035: at most 63 characters, lowercase letters, \
         digits and '-', starting with a letter and ending with a letter or digit): it names the \
         agent's Service"
    ),
    status = "CodexAgentStatus",
    derive = "PartialEq",
    doc = "A Codex agent: the codex CLI behind codex-sidecar's authenticated HTTP API, scheduled as \
           one pod (optionally with a local model server and GPUs), a Service on port 8080 and a \
           persistent state/workspace volume.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(name = "GPU", type_ = "integer", json_path = ".spec.gpu.count"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.sidecar) || (!has(self.sidecar.model) && !has(self.sidecar.provider) && !has(self.sidecar.providerBaseUrl) && !has(self.sidecar.providerEnvKey))",
        "message": "set the model and provider with spec.model and spec.provider, not in spec.sidecar"
    },
    {
        "rule": "!has(self.sidecar) || !has(self.sidecar.warmChildren) || self.sidecar.warmChildren <= (has(self.sidecar.maxLiveSessions) ? self.sidecar.maxLiveSessions : 8)",
        "message": "sidecar.warmChildren must not exceed sidecar.maxLiveSessions (default 8): warm children are counted inside it"
    }
]))]
pub struct CodexAgentSpec {
    /// Model name codex sends to the provider, e.g. `gpt-5.1-codex` (openai) or `gpt-oss:20b`
    /// (a local ollama server).
    #[schemars(length(min = 1))]
    pub model: String,

    /// Where the model runs: OpenAI, any Responses-API endpoint, or a model server in the pod.
    pub provider: ProviderSpec,

    /// GPUs for the pod. Absent: no GPU is requested. The GPUs go to the local model server
    /// container when `provider.type` is `local`, otherwise to the sidecar container (where codex
    /// runs the agent's commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,

    /// Compute resources of the sidecar container (requests/limits of cpu, memory, ...). The GPU
    /// limit is added by the operator from `gpu`; do not put it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the pod must match (merged with `nvidia.com/gpu.product` from `gpu.product`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Extra tolerations for the pod. A toleration of the `nvidia.com/gpu` NoSchedule taint is
    /// added automatically when GPUs are requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Scheduling affinity of the pod (copied verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Secrets used to pull the sidecar and model server images. Each one that exists must carry
    /// the label `agents.codex-operator.dev/allow-use: "true"` (its owner's consent), else no pod
    /// is created (`SecretNotAllowed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Sidecar image (holds codex-sidecar and the pinned codex). Default: the operator's
    /// `--sidecar-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// The sidecar's agent settings (codex policies, limits, MCP servers); the same keys as the
    /// sidecar's config file. `model`, `provider`, `providerBaseUrl` and `providerEnvKey` are set
    /// by the operator from `spec.model` and `spec.provider` and must be left out here.
    #[serde(default)]
    pub sidecar: AgentSettings,

    /// The persistent volume holding session state and the workspace (`/var/lib/codex-sidecar`).
    /// It is kept while the agent is suspended and deleted with the CodexAgent.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Authentication of the agent's HTTP API.
    #[serde(default)]
    pub auth: AuthSpec,

    /// Stop the agent: the pod is deleted, the volume, Service and Secrets are kept. Setting it
    /// back to false starts a new pod on the same volume.
    #[serde(default)]
    pub suspend: bool,

    /// A NetworkPolicy `<agent>` for the pod: ingress only to the sidecar's port 8080, only from
    /// pods in the namespaces named here and in the operator's (its probes). Absent: none (and
    /// one the operator made before is deleted). It takes effect where the cluster's network
    /// plugin enforces NetworkPolicies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
}

/// `spec.networkPolicy`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// Namespaces (by name, the `kubernetes.io/metadata.name` label) whose pods may call the
    /// sidecar, e.g. the agent's own namespace. The operator's namespace is always added. Empty:
    /// only the operator reaches the pod.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub from_namespaces: Vec<String>,
}

/// Which model provider the agent uses.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// OpenAI (codex's built-in provider): needs `authJsonSecretRef` or `apiKeySecretRef`.
    Openai,
    /// Any OpenAI Responses-API endpoint at `baseUrl` (a gateway, a remote vLLM, ...).
    Custom,
    /// A model server container in the agent's pod (`local`).
    Local,
}

/// The model provider.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'custom' || has(self.baseUrl)", "message": "provider type custom needs baseUrl"},
    {"rule": "self.type == 'custom' || !has(self.baseUrl)", "message": "baseUrl is only used by provider type custom"},
    {"rule": "self.type != 'openai' || has(self.authJsonSecretRef) || has(self.apiKeySecretRef)", "message": "provider type openai needs authJsonSecretRef or apiKeySecretRef"},
    {"rule": "!(has(self.authJsonSecretRef) && has(self.apiKeySecretRef))", "message": "set only one of authJsonSecretRef and apiKeySecretRef"},
    {"rule": "self.type == 'openai' || !has(self.authJsonSecretRef)", "message": "authJsonSecretRef is only used by provider type openai"},
    {"rule": "self.type != 'local' || has(self.local)", "message": "provider type local needs local"},
    {"rule": "self.type == 'local' || !has(self.local)", "message": "local is only used by provider type local"},
    {"rule": "self.type != 'local' || !has(self.apiKeySecretRef)", "message": "apiKeySecretRef is not used by provider type local"}
]))]
pub struct ProviderSpec {
    /// `openai`, `custom` or `local`.
    #[serde(rename = "type")]
    pub type_: ProviderType,

    /// A Secret key holding an `auth.json` from `codex login` (ChatGPT or API-key login);
    /// mounted at `/etc/codex-sidecar/auth/auth.json`. `openai` only. The Secret must carry the
    /// label `agents.codex-operator.dev/allow-use: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_json_secret_ref: Option<SecretKeyRef>,

    /// A Secret key holding an API key: for `openai`, mounted at
    /// `/etc/codex-sidecar/openai/api-key`; for `custom`, exported to the sidecar as
    /// `CODEX_PROVIDER_API_KEY` and sent as `Authorization: Bearer`. The Secret must carry the
    /// label `agents.codex-operator.dev/allow-use: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// Base URL of the Responses API, e.g. `https://gateway.example/v1`. `custom` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub base_url: Option<String>,

    /// The model server container. `local` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalModelServer>,
}

/// A reference to one key of a Secret in the agent's namespace. The operator uses the Secret only
/// when it carries the label `agents.codex-operator.dev/allow-use: "true"`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Model server software run by a `local` provider.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Ollama (`ollama serve`, port 11434); the model is pulled at start.
    Ollama,
    /// vLLM's OpenAI-compatible server (port 8000).
    Vllm,
    /// LM Studio's server (port 1234); `image` is required (no official image).
    Lmstudio,
    /// Any OpenAI Responses-API server; `image` and `port` are required.
    Other,
}

impl Engine {
    /// Default listen port of the engine (its documented default).
    pub fn default_port(self) -> i32 {
        match self {
            Engine::Ollama => 11434,
            Engine::Vllm => 8000,
            Engine::Lmstudio => 1234,
            Engine::Other => 8000,
        }
    }

    /// Default image, where the engine publishes one.
    pub fn default_image(self) -> Option<&'static str> {
        match self {
            Engine::Ollama => Some("docker.io/ollama/ollama:latest"),
            Engine::Vllm => Some("docker.io/vllm/vllm-openai:latest"),
            Engine::Lmstudio | Engine::Other => None,
        }
    }

    /// The codex provider that talks to this engine (docs/sidecar-contract.md).
    pub fn codex_provider(self) -> ProviderKind {
        match self {
            Engine::Ollama => ProviderKind::Ollama,
            Engine::Lmstudio => ProviderKind::Lmstudio,
            Engine::Vllm | Engine::Other => ProviderKind::Custom,
        }
    }

    /// Lowercase name, as in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Ollama => "ollama",
            Engine::Vllm => "vllm",
            Engine::Lmstudio => "lmstudio",
            Engine::Other => "other",
        }
    }
}

/// A model server container in the agent's pod, reached by the sidecar at
/// `http://127.0.0.1:<port>/v1`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(self.engine in ['lmstudio', 'other']) || has(self.image)", "message": "engine lmstudio or other needs image"},
    {"rule": "self.engine != 'other' || has(self.port)", "message": "engine other needs port"}
]))]
pub struct LocalModelServer {
    /// `ollama`, `vllm`, `lmstudio` or `other`.
    pub engine: Engine,
    /// Model the server loads (ollama: pulled at start; vllm: `--model`). Default: `spec.model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub model: Option<String>,
    /// Container image. Default: the engine's official image (ollama, vllm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Port the server listens on inside the pod. Default: the engine's (11434, 8000, 1234).
    /// 8080 is the sidecar's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self != 8080", "message": "port 8080 is the sidecar's"}]))]
    pub port: Option<i32>,
    /// Extra arguments for the server (appended after the operator's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Compute resources of the model server container; the GPU limit is added from `spec.gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// UID the model server runs as; with it the container also sets `runAsNonRoot: true`.
    /// Needed where PodSecurity `restricted` is enforced (the official ollama and vllm images
    /// run as root, which `restricted` refuses: use an image that works as this UID). Leave it
    /// unset on OpenShift, whose `restricted-v2` SCC assigns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub run_as_user: Option<i64>,
}

impl LocalModelServer {
    /// The port actually used: `port` or the engine's default.
    pub fn effective_port(&self) -> i32 {
        self.port.unwrap_or_else(|| self.engine.default_port())
    }
}

/// GPU request of the agent.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// Number of GPUs (the container limit of `resourceName`).
    #[schemars(range(min = 1, max = 64))]
    pub count: u32,
    /// Extended resource name to request: `nvidia.com/gpu`, or a MIG profile such as
    /// `nvidia.com/mig-1g.10gb`.
    #[serde(default = "default_gpu_resource")]
    #[schemars(regex(
        pattern = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
    ))]
    pub resource_name: String,
    /// GPU product required, matched against the GPU Feature Discovery node label
    /// `nvidia.com/gpu.product` (e.g. `NVIDIA-H100-80GB-HBM3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub product: Option<String>,
    /// RuntimeClass for the pod (e.g. `nvidia` or `nvidia-cdi`) on clusters where the NVIDIA
    /// container runtime is not the default. Without it such pods see no GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,
    /// Add a toleration of the `nvidia.com/gpu` NoSchedule taint (GPU nodes are commonly tainted
    /// with it). Default true.
    #[serde(default = "default_true")]
    pub tolerate_gpu_taint: bool,
}

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_string()
}

fn default_true() -> bool {
    true
}

/// The state/workspace volume.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size (a Kubernetes quantity). Default `10Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    /// StorageClass of the PVC. Default: the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> String {
    DEFAULT_STORAGE_SIZE.to_string()
}

/// Authentication of the agent's HTTP API (JWTs, docs/sidecar-contract.md): ES256 with a
/// generated key pair, or HS256 with a secret the user brings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// A Secret key holding an HS256 signing key (at least 32 bytes), mounted into the pod; the
    /// Secret must carry the label `agents.codex-operator.dev/allow-use: "true"`. Absent: the
    /// operator creates the Secret `<name>-jwt` once and never overwrites it (that one needs no
    /// label) with an ES256 key pair: `jwt.key` the private key (PKCS#8 PEM) clients sign with,
    /// `jwt.pub` the public key (SPKI PEM), the only half the pod mounts. Tokens for it carry
    /// `aud` = `sidecar.jwtAudience`, default `codex-sidecar`. A generated Secret from before
    /// ES256 (only an HS256 `jwt.key`) keeps working as it is until it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
}

/// Coarse lifecycle phase of the agent (`status.phase`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// The pod does not run yet (waiting for a Secret, the volume or the scheduler).
    Pending,
    /// The pod is scheduled; containers are starting or not ready yet.
    Starting,
    /// The sidecar serves (and, with GPUs on the sidecar, saw them).
    Ready,
    /// `spec.suspend` is true: no pod runs.
    Suspended,
    /// The pod failed or cannot start (image pull, crash loop, no GPU in the container).
    Failed,
}

/// Observed state of the agent, written through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodexAgentStatus {
    /// Coarse phase: Pending, Starting, Ready, Suspended, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// In-cluster URL of the agent's API (`http://<name>.<namespace>.svc:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Name of the agent's pod, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Node the pod is scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Name of the Secret holding the API's signing key: the generated `<name>-jwt` (ES256 pair,
    /// keys `jwt.key` and `jwt.pub`) or `auth.jwtSecretRef`'s (HS256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_name: Option<String>,
    /// Conditions (metav1.Condition): Ready, PodScheduled, ModelReady, GPUVerified, Suspended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A spec that violates a rule the CRD schema also enforces.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CodexAgent spec: {0}")]
pub struct SpecError(pub String);

impl CodexAgentSpec {
    /// Checks the rules of the CRD's schema and CEL validations (the API server enforces them
    /// on `kubectl apply`; the Docker runtime relies on this function).
    ///
    /// # Errors
    /// [`SpecError`] with the same message as the violated CEL rule.
    pub fn validate(&self) -> Result<(), SpecError> {
        let fail = |m: &str| Err(SpecError(m.to_string()));
        if self.model.is_empty() {
            return fail("model must not be empty");
        }
        let s = &self.sidecar;
        if s.model.is_some()
            || s.provider.is_some()
            || s.provider_base_url.is_some()
            || s.provider_env_key.is_some()
        {
            return fail(
                "set the model and provider with spec.model and spec.provider, not in spec.sidecar",
            );
        }
        let p = &self.provider;
        match p.type_ {
            ProviderType::Custom if p.base_url.is_none() => {
                return fail("provider type custom needs baseUrl");
            }
            ProviderType::Openai
                if p.auth_json_secret_ref.is_none() && p.api_key_secret_ref.is_none() =>
            {
                return fail("provider type openai needs authJsonSecretRef or apiKeySecretRef");
            }
            ProviderType::Local if p.local.is_none() => {
                return fail("provider type local needs local");
            }
            _ => {}
        }
        if p.type_ != ProviderType::Custom && p.base_url.is_some() {
            return fail("baseUrl is only used by provider type custom");
        }
        if let Some(url) = &p.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return fail("baseUrl must start with http:// or https://");
        }
        if p.auth_json_secret_ref.is_some() && p.api_key_secret_ref.is_some() {
            return fail("set only one of authJsonSecretRef and apiKeySecretRef");
        }
        if p.type_ != ProviderType::Openai && p.auth_json_secret_ref.is_some() {
            return fail("authJsonSecretRef is only used by provider type openai");
        }
        if p.type_ != ProviderType::Local && p.local.is_some() {
            return fail("local is only used by provider type local");
        }
        if p.type_ == ProviderType::Local && p.api_key_secret_ref.is_some() {
            return fail("apiKeySecretRef is not used by provider type local");
        }
        if let Some(local) = &p.local {
            if matches!(local.engine, Engine::Lmstudio | Engine::Other) && local.image.is_none() {
                return fail("engine lmstudio or other needs image");
            }
            if local.engine == Engine::Other && local.port.is_none() {
                return fail("engine other needs port");
            }
            if let Some(port) = local.port
                && !(1..=65535).contains(&port)
            {
                return fail("local.port must be between 1 and 65535");
            }
            if local.port == Some(SIDECAR_PORT) {
                return fail("port 8080 is the sidecar's");
            }
        }
        let max_live = s
            .max_live_sessions
            .unwrap_or(codex_sidecar::settings::DEFAULT_MAX_LIVE_SESSIONS);
        if s.warm_children.is_some_and(|w| w > max_live) {
            return fail(
                "sidecar.warmChildren must not exceed sidecar.maxLiveSessions (default 8): warm children are counted inside it",
            );
        }
        if let Some(gpu) = &self.gpu
            && !(1..=64).contains(&gpu.count)
        {
            return fail("gpu.count must be between 1 and 64");
        }
        Ok(())
    }

    /// The Secret and key holding the API's signing key: `auth.jwtSecretRef` (HS256), or the
    /// generated `<agent>-jwt` / `jwt.key` (the ES256 private key; its public key is
    /// [`crate::api_key::GENERATED_JWT_PUBLIC_KEY`]).
    pub fn jwt_secret(&self, agent_name: &str) -> SecretKeyRef {
        self.auth
            .jwt_secret_ref
            .clone()
            .unwrap_or_else(|| SecretKeyRef {
                name: format!("{agent_name}-jwt"),
                key: GENERATED_JWT_KEY.to_string(),
            })
    }
}

/// Data key of the generated JWT Secret's private key (an HS256 secret in Secrets from before
/// ES256).
pub const GENERATED_JWT_KEY: &str = "jwt.key";

/// The CRD as YAML, exactly what `codex-operator crd` prints and `manifests/crd.yaml` holds.
///
/// # Errors
/// Only if the CRD cannot be serialized (a bug).
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(&crd())
}

/// The CodexAgent CRD: the derived schema with every number bounded to what both the Rust
/// type and Kubernetes accept, so that the API server refuses at `kubectl apply` any value the
/// operator could not decode (one undecodable object would otherwise fail every LIST):
/// affinity `weight`s to 1..=100 (the range the scheduler documents), and unsigned 64-bit
/// fields to 2^53 (inside the int64 the API server stores, exact in every JSON client).
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = CodexAgent::crd();
    for v in &mut crd.spec.versions {
        if let Some(s) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            bound_numbers(s, None);
        }
    }
    crd
}

fn bound_numbers(
    s: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
    name: Option<&str>,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    if s.type_.as_deref() == Some("integer") {
        match (name, s.format.as_deref()) {
            (Some("weight"), Some("int32")) => {
                s.minimum.get_or_insert(1.0);
                s.maximum.get_or_insert(100.0);
            }
            (_, Some("uint64")) => {
                // 2^53: the largest integer every JSON client (kubectl, JavaScript) keeps exact,
                // and well inside the int64 the API server stores.
                s.maximum.get_or_insert(9_007_199_254_740_992.0);
            }
            _ => {}
        }
    }
    if let Some(props) = s.properties.as_mut() {
        for (k, p) in props.iter_mut() {
            bound_numbers(p, Some(k));
        }
    }
    match s.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(i)) => bound_numbers(i, None),
        Some(JSONSchemaPropsOrArray::Schemas(v)) => {
            v.iter_mut().for_each(|i| bound_numbers(i, None))
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> CodexAgentSpec {
        serde_json::from_value(json!({
            "model": "gpt-5.1-codex",
            "provider": {"type": "openai", "apiKeySecretRef": {"name": "openai", "key": "key"}}
        }))
        .expect("minimal spec parses")
    }

    #[test]
    fn crd_names_scope_and_columns() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("codexagents.agents.codex-operator.dev")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "CodexAgent");
        assert_eq!(crd.spec.names.short_names, Some(vec!["cxa".to_string()]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Ready", "Reason", "Model", "GPU", "Age"]);
    }

    #[test]
    fn crd_schema_carries_validations_and_docs() {
        let crd = serde_json::to_value(crd()).expect("json");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let provider = &spec["properties"]["provider"];
        let rules: Vec<&str> = provider["x-kubernetes-validations"]
            .as_array()
            .expect("provider rules")
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .collect();
        assert!(
            rules.contains(&"self.type != 'custom' || has(self.baseUrl)"),
            "{rules:?}"
        );
        assert_eq!(
            provider["properties"]["type"]["enum"],
            json!(["openai", "custom", "local"])
        );
        let local = &provider["properties"]["local"];
        assert_eq!(
            local["properties"]["engine"]["enum"],
            json!(["ollama", "vllm", "lmstudio", "other"])
        );
        assert!(
            local["x-kubernetes-validations"]
                .to_string()
                .contains("needs image")
        );
        assert_eq!(
            spec["properties"]["gpu"]["properties"]["count"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert!(
            spec["properties"]["model"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("Model name"))
        );
        // The shared AgentSettings schema is embedded as spec.sidecar, ranges included.
        assert_eq!(
            spec["properties"]["sidecar"]["properties"]["maxLiveSessions"]["maximum"].as_f64(),
            Some(1024.0)
        );
        let status =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert_eq!(
            status["properties"]["conditions"]["x-kubernetes-list-type"],
            json!("map")
        );
        assert_eq!(
            status["properties"]["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
    }

    #[test]
    fn crd_manifest_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crd.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        let generated = crd_yaml().expect("renders");
        assert!(
            on_disk == generated,
            "manifests/crd.yaml is stale: run `cargo run -p codex-operator -- crd > manifests/crd.yaml`"
        );
    }

    #[test]
    fn validate_accepts_minimal_and_defaults_apply() {
        let spec = minimal();
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.storage.size, "10Gi");
        assert!(!spec.suspend);
        let gpu: GpuSpec = serde_json::from_value(json!({"count": 2})).expect("gpu");
        assert_eq!(gpu.resource_name, "nvidia.com/gpu");
        assert!(gpu.tolerate_gpu_taint);
    }

    #[test]
    fn validate_refuses_what_the_cel_rules_refuse() {
        let cases = [
            (json!({"type": "custom"}), "custom needs baseUrl"),
            (
                json!({"type": "openai"}),
                "openai needs authJsonSecretRef or apiKeySecretRef",
            ),
            (json!({"type": "local"}), "local needs local"),
            (
                json!({"type": "local", "local": {"engine": "other", "port": 9000}}),
                "needs image",
            ),
            (
                json!({"type": "local", "local": {"engine": "vllm", "port": 8080}}),
                "sidecar's",
            ),
            (
                json!({"type": "openai", "baseUrl": "http://x/v1", "apiKeySecretRef": {"name": "a", "key": "b"}}),
                "baseUrl is only used",
            ),
        ];
        for (provider, want) in cases {
            let mut spec = minimal();
            spec.provider = serde_json::from_value(provider.clone()).expect("provider parses");
            let err = spec
                .validate()
                .expect_err(&format!("{provider} must be refused"));
            assert!(err.0.contains(want), "{provider}: {err}");
        }
        let mut spec = minimal();
        spec.sidecar.model = Some("other".into());
        assert!(spec.validate().is_err(), "model in spec.sidecar is refused");
    }

    fn crd_schema() -> serde_json::Value {
        let crd = serde_json::to_value(crd()).expect("json");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Every CodexAgent document in `manifests/examples/` (multi-document files; other kinds,
    /// e.g. Secrets, are skipped).
    fn examples() -> Vec<(String, String)> {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut out = Vec::new();
        for dir in [format!("{root}/../manifests/examples")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    let text = std::fs::read_to_string(&path).expect("read");
                    for doc in text.split("\n---") {
                        if doc.contains("kind: CodexAgent") {
                            out.push((path.display().to_string(), doc.to_string()));
                        }
                    }
                }
            }
        }
        assert!(
            out.len() >= 5,
            "one example per provider in manifests/examples"
        );
        out
    }

    #[test]
    fn examples_parse_validate_and_pass_the_cel_rules() {
        let schema = crd_schema();
        for (path, text) in examples() {
            let agent: CodexAgent =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            agent
                .spec
                .validate()
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let obj = serde_json::to_value(&agent).expect("json");
            kube_cel::validate(&schema, &obj, None)
                .unwrap_or_else(|e| panic!("{path}: CEL refused: {e}"));
        }
    }

    #[test]
    fn every_example_secret_carries_the_opt_in_label() {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut seen = 0;
        for entry in std::fs::read_dir(format!("{root}/../manifests/examples")).expect("examples") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            for doc in text.split("\n---").filter(|d| d.contains("kind: Secret")) {
                let secret: k8s_openapi::api::core::v1::Secret =
                    serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                let label = secret
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ALLOW_USE_LABEL));
                assert_eq!(
                    label.map(String::as_str),
                    Some("true"),
                    "{path:?}: Secret {:?} lacks {ALLOW_USE_LABEL}: \"true\"",
                    secret.metadata.name
                );
                seen += 1;
            }
        }
        assert!(seen >= 5, "the examples' Secrets: {seen}");
    }

    /// The rules the API server evaluates at `kubectl apply` (CEL `x-kubernetes-validations`),
    /// run client-side with kube-cel on raw objects (which need not even deserialize).
    #[test]
    fn cel_rules_refuse_bad_agents_like_the_api_server() {
        let schema = crd_schema();
        let cases = [
            (
                json!({"type": "custom"}),
                json!({}),
                "provider type custom needs baseUrl",
            ),
            (
                json!({"type": "openai"}),
                json!({}),
                "provider type openai needs authJsonSecretRef or apiKeySecretRef",
            ),
            (
                json!({"type": "local", "local": {"engine": "other", "port": 9000}}),
                json!({}),
                "engine lmstudio or other needs image",
            ),
            (
                json!({"type": "local", "local": {"engine": "other", "image": "x"}}),
                json!({}),
                "engine other needs port",
            ),
            (
                json!({"type": "local", "local": {"engine": "vllm", "port": 8080}}),
                json!({}),
                "port 8080 is the sidecar's",
            ),
            (
                json!({"type": "openai", "apiKeySecretRef": {"name": "a", "key": "b"}, "authJsonSecretRef": {"name": "a", "key": "c"}}),
                json!({}),
                "set only one of",
            ),
            (
                json!({"type": "custom", "baseUrl": "http://gw/v1"}),
                json!({"model": "other"}),
                "not in spec.sidecar",
            ),
            (
                json!({"type": "custom", "baseUrl": "http://gw/v1"}),
                json!({"warmChildren": 9}),
                "warmChildren must not exceed",
            ),
            (
                json!({"type": "custom", "baseUrl": "http://gw/v1"}),
                json!({"warmChildren": 3, "maxLiveSessions": 2}),
                "warmChildren must not exceed",
            ),
        ];
        for (provider, sidecar, want) in cases {
            let obj = json!({"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
                "metadata": {"name": "x"}, "spec": {"model": "m", "provider": provider, "sidecar": sidecar}});
            let err = kube_cel::validate(&schema, &obj, None)
                .expect_err(&format!("{obj} must be refused"));
            assert!(err.to_string().contains(want), "{provider}: {err}");
        }
        let ok = json!({"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent", "metadata": {"name": "x"},
            "spec": {"model": "m", "provider": {"type": "local", "local": {"engine": "ollama"}}, "gpu": {"count": 1},
                "sidecar": {"warmChildren": 2, "maxLiveSessions": 2}}});
        kube_cel::validate(&schema, &ok, None).expect("a valid agent passes");
        let mut spec: CodexAgentSpec = serde_json::from_value(ok["spec"].clone()).expect("spec");
        spec.validate().expect("validate agrees");
        spec.sidecar.warm_children = Some(3);
        let err = spec.validate().expect_err("3 warm children > 2 live");
        assert!(
            err.to_string().contains("warmChildren must not exceed"),
            "{err}"
        );
    }

    #[test]
    fn unknown_engine_is_a_parse_error() {
        let r: Result<ProviderSpec, _> =
            serde_json::from_value(json!({"type": "local", "local": {"engine": "tgi"}}));
        assert!(r.is_err());
    }
}
