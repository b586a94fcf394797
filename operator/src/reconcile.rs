//! The level-triggered reconciler: one `CodexAgent` in, its children and status out.
//!
//! Each call reads the world and converges it, in a fixed order (tests rely on it):
//! 1. JWT Secret: `GET`; when absent and generated, `POST` it (create-if-absent: never
//!    overwritten, a 409 from a racing replica is fine); when absent and user-supplied, the agent
//!    reports `MissingSecret`. Then `GET` the provider Secret, if any, then each
//!    `imagePullSecrets` entry. A Secret the spec names (every one but the generated JWT Secret)
//!    is used only when it carries [`ALLOW_USE_LABEL`]` = "true"`; otherwise its data is not read
//!    and the agent reports `SecretNotAllowed`.
//! 2. ConfigMap, PVC, Service, NetworkPolicy (when `spec.networkPolicy` is set; otherwise
//!    one this agent made is deleted): `GET`, then server-side apply (field manager
//!    [`FIELD_MANAGER`], forced) only when the observed child's [`HASH_ANNOTATION`] differs from
//!    the desired one. The PVC is only ever created: a bound claim's spec is immutable.
//! 3. Pod: `GET`; suspended: `DELETE` it; otherwise create it when absent, or `DELETE` it when its
//!    hash is stale (pod specs are immutable; the next reconcile creates the new one): at once
//!    when it serves nothing, through [`crate::rollout`] (a cluster-wide slot, then a drain of
//!    its sidecar) when it serves. No pod is
//!    created while a Secret is missing, invalid or not allowed; a pod that uses a Secret no
//!    longer allowed (its label removed) is deleted.
//! 4. GPU probe (`/v1/status`) when GPUs sit on the sidecar and the sidecar is ready.
//! 5. Status: server-side apply on the status subresource only when it changed.
//! 6. Events for transitions of the Ready reason and for created/deleted pods.
//!
//! A reconcile with nothing changed therefore sends only `GET`s. An agent being deleted is left
//! to the garbage collector (no requests at all).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::api_key::SigningKey;
use crate::crd::{ALLOW_USE_LABEL, CodexAgent};
use crate::metrics::Metrics;
use crate::probe::{ProbeTarget, SidecarProbe};
use crate::resources::{self, BuildError, HASH_ANNOTATION, OperatorConfig, SIDECAR_CONTAINER};
use crate::rollout::Step;
use crate::status::{self, Observed, reasons, types};

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "codex-operator";
/// Requeue interval of a Ready agent (refreshes the GPU check).
pub const REQUEUE_READY: Duration = Duration::from_secs(300);
/// Requeue interval of an agent that is not Ready yet (pod changes also trigger reconciles).
pub const REQUEUE_NOT_READY: Duration = Duration::from_secs(30);
/// First retry delay after an error; doubles per consecutive failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay after errors.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How soon to look again while an agent's pod still holds the JWT key its Secret had before
/// (a rotation the kubelet and the sidecar have not caught up with yet).
pub const KEY_ROTATION_RECHECK: Duration = Duration::from_secs(10);

/// Reconcile errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Building the desired children failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The OS random source failed while generating the API key pair.
    #[error(transparent)]
    Random(#[from] crate::api_key::GenerateError),
    /// The object lacks a namespace (the CRD is namespaced, so this is a bug).
    #[error("CodexAgent has no namespace")]
    NoNamespace,
}

impl Error {
    /// Short label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Build(_) => "build",
            Error::Random(_) => "random",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Operator-wide defaults.
    pub config: OperatorConfig,
    /// GPU probe (real HTTP, or a fake in tests).
    pub probe: Arc<dyn SidecarProbe>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for the error backoff.
    pub failures: Mutex<HashMap<ObjectRef<CodexAgent>, u32>>,
    /// Failed pods seen per agent, for the replacement backoff.
    pub replacements: Mutex<HashMap<ObjectRef<CodexAgent>, Replacement>>,
    /// The JWT key each agent's pod last accepted (key rotation, see [`crate::probe`]).
    pub accepted_keys: crate::probe::AcceptedKeys,
    /// Cluster-wide rollout slots ([`crate::rollout`]).
    pub rollouts: crate::rollout::Rollouts,
}

impl Context {
    /// A context with a recorder reporting as `codex-operator` (instance `instance`).
    pub fn new(
        client: Client,
        config: OperatorConfig,
        probe: Arc<dyn SidecarProbe>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance,
            },
        );
        Self {
            client,
            rollouts: crate::rollout::Rollouts::new(config.max_concurrent_rollouts),
            config,
            probe,
            recorder,
            metrics,
            failures: Mutex::new(HashMap::new()),
            replacements: Mutex::new(HashMap::new()),
            accepted_keys: Default::default(),
        }
    }
}

/// Replacement history of one agent's failed pods (phase `Failed`: evicted, node shutdown,
/// `UnexpectedAdmissionError`, a container that exited with `restartPolicy` not `Always`).
#[derive(Debug, Clone)]
pub struct Replacement {
    /// Failed pods replaced since the agent was last Ready.
    pub count: u32,
    /// The failed pod now waiting for its replacement, and since when.
    pub waiting: Option<(String, std::time::Instant)>,
}

impl Context {
    /// How long the failed pod `uid` of `agent` must still wait before it is replaced:
    /// `None` means replace it now. The first failure is replaced at once, later ones after
    /// [`backoff`] of the number already replaced, so a pod that fails at every start does not
    /// churn the API server or the node.
    fn replacement_wait(&self, agent: &ObjectRef<CodexAgent>, uid: &str) -> Option<Duration> {
        let mut map = self.replacements.lock().ok()?;
        let r = map.entry(agent.clone()).or_insert(Replacement {
            count: 0,
            waiting: None,
        });
        let since = match &r.waiting {
            Some((u, at)) if u == uid => *at,
            _ => {
                let now = std::time::Instant::now();
                r.waiting = Some((uid.to_owned(), now));
                now
            }
        };
        let delay = if r.count == 0 {
            Duration::ZERO
        } else {
            backoff(r.count)
        };
        let waited = since.elapsed();
        if waited >= delay {
            r.count += 1;
            r.waiting = None;
            None
        } else {
            Some(delay - waited)
        }
    }

    fn forget_replacements(&self, agent: &ObjectRef<CodexAgent>) {
        if let Ok(mut map) = self.replacements.lock() {
            map.remove(agent);
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn hash_of<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()?
        .get(HASH_ANNOTATION)
        .map(String::as_str)
}

/// When `meta` (an existing object named like one of the agent's children) is not controlled
/// by `agent` (no controller owner reference with its UID), the message saying so: the operator
/// never adopts, overwrites or deletes it.
pub fn foreign(agent: &CodexAgent, kind: &str, meta: &kube::api::ObjectMeta) -> Option<String> {
    let uid = agent.metadata.uid.as_deref().unwrap_or_default();
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    if owners
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
    {
        return None;
    }
    let name = meta.name.as_deref().unwrap_or_default();
    let ns = meta.namespace.as_deref().unwrap_or_default();
    Some(
        match owners
            .iter()
            .find(|o| o.kind == "CodexAgent" && o.controller == Some(true))
        {
            Some(old) => format!(
                "{kind} {ns}/{name} belongs to an earlier CodexAgent of the same name (uid {}); \
             waiting for the garbage collector to remove it (it is never reused)",
                old.uid
            ),
            None => format!(
                "{kind} {ns}/{name} already exists and is not controlled by this CodexAgent: the \
             operator leaves it alone; rename the agent or remove the {kind}"
            ),
        },
    )
}

/// Applies `desired` unless the observed object carries the same hash. Returns the conflict
/// message, without writing, when the observed object is not controlled by `agent`.
async fn apply_if_changed<K>(
    api: &Api<K>,
    desired: &K,
    agent: &CodexAgent,
    kind: &str,
) -> Result<Option<String>, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let observed = api.get_opt(&name).await?;
    if let Some(o) = &observed {
        if let Some(conflict) = foreign(agent, kind, o.meta()) {
            return Ok(Some(conflict));
        }
        if hash_of(o) == hash_of(desired) {
            return Ok(None);
        }
    }
    api.patch(&name, &apply_params(), &Patch::Apply(desired))
        .await?;
    Ok(None)
}

/// Compares an existing claim with `spec.storage`: the `StorageSynced` reason and message, and
/// whether the claim should be grown to `storage.size` (a claim can only grow, and its
/// StorageClass never changes).
pub fn storage_sync(
    agent: &CodexAgent,
    pvc: &PersistentVolumeClaim,
) -> ((&'static str, String), bool) {
    let want = &agent.spec.storage;
    let spec = pvc.spec.clone().unwrap_or_default();
    let requested = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    let capacity = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone());
    if let Some(class) = &want.storage_class_name
        && spec.storage_class_name.as_deref() != Some(class.as_str())
    {
        return (
            (
                reasons::STORAGE_CHANGE_NOT_APPLIED,
                format!(
                    "storage.storageClassName is {class} but the claim was made with {}: a claim's \
                     class cannot change (suspend, move the data, delete the claim)",
                    spec.storage_class_name
                        .as_deref()
                        .unwrap_or("the default class")
                ),
            ),
            false,
        );
    }
    let (Some(w), Some(r)) = (quantity_bytes(&want.size), quantity_bytes(&requested)) else {
        return ((reasons::SYNCED, format!("{requested} requested")), false);
    };
    if w < r {
        return (
            (
                reasons::STORAGE_CHANGE_NOT_APPLIED,
                format!(
                    "storage.size {} is smaller than the claim's {requested}: volumes only grow",
                    want.size
                ),
            ),
            false,
        );
    }
    if w > r {
        return (
            (
                reasons::RESIZING,
                format!("expanding the claim from {requested} to {}", want.size),
            ),
            true,
        );
    }
    match capacity.as_deref().and_then(quantity_bytes) {
        Some(c) if c < r => (
            (
                reasons::RESIZING,
                format!(
                    "the claim asks for {requested}; the volume has {}",
                    capacity.unwrap_or_default()
                ),
            ),
            false,
        ),
        _ => ((reasons::SYNCED, format!("{requested} requested")), false),
    }
}

/// Bytes of a Kubernetes quantity as `storage.size` allows it (`10Gi`, `500M`, `1.5Ti`).
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let mult: u128 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u128 = int.parse().ok()?;
    let scale = 10u128.checked_pow(frac.len() as u32)?;
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    Some(int.checked_mul(mult)? + frac.checked_mul(mult)? / scale)
}

/// Shortest HS256 key the sidecar accepts (RFC 7518 section 3.2: at least the hash size), after
/// trailing newlines are removed, as both sides read it.
pub const MIN_JWT_KEY_LEN: usize = 32;

/// Longest Event note the API server accepts (events.k8s.io/v1 `note`: 1 KiB).
pub const EVENT_NOTE_MAX: usize = 1024;

/// `note` cut to [`EVENT_NOTE_MAX`] bytes on a character boundary ("..." marks the cut).
pub fn event_note(note: String) -> String {
    if note.len() <= EVENT_NOTE_MAX {
        return note;
    }
    let mut end = EVENT_NOTE_MAX - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

/// When the API server refused a write for a reason the agent's owner must fix or wait out
/// (400 Bad Request, 403 Forbidden by admission such as PodSecurity or ResourceQuota,
/// 422 Invalid), the message to show in the agent's status; `None` for other errors, which
/// are retried with backoff.
pub fn rejection(e: &Error, kind: &str, name: &str) -> Option<String> {
    match e {
        Error::Kube(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 422) => Some(format!(
            "the API server refused {kind} {name}: {}",
            s.message
        )),
        _ => None,
    }
}

/// Records `result`'s refusal in `obs` (see [`rejection`]) or passes other errors on.
fn note_rejection<T>(
    obs: &mut Observed,
    result: Result<T, Error>,
    kind: &str,
    name: &str,
) -> Result<Option<T>, Error> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) => match rejection(&e, kind, name) {
            Some(m) => {
                warn!(%kind, %name, message = %m, "child refused");
                obs.rejected.get_or_insert(m);
                Ok(None)
            }
            None => Err(e),
        },
    }
}

/// True when `secret` carries [`ALLOW_USE_LABEL`] with the value `"true"`: its owner lets the
/// CodexAgents of its namespace use it.
pub fn use_allowed(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ALLOW_USE_LABEL))
        .is_some_and(|v| v == "true")
}

/// True when `agent` may use `secret`: its owner allowed it ([`use_allowed`]), or it is the
/// agent's own (controlled by it: the generated JWT Secret).
fn may_use(agent: &CodexAgent, secret: &Secret) -> bool {
    use_allowed(secret) || foreign(agent, "Secret", &secret.metadata).is_none()
}

/// The `SecretNotAllowed` message for the Secrets of namespace `ns` that lack the opt-in label,
/// as `(name, spec field)` pairs in spec order: which ones, why, and the `kubectl label` command
/// that allows them. Names only, never a value.
pub fn not_allowed_message(ns: &str, refused: &[(String, &'static str)]) -> String {
    let mut by_name: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, field) in refused {
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, fields)) => {
                if !fields.contains(field) {
                    fields.push(field);
                }
            }
            None => by_name.push((name, vec![field])),
        }
    }
    let listed: Vec<String> = by_name
        .iter()
        .map(|(n, f)| format!("{ns}/{n} ({})", f.join(", ")))
        .collect();
    let names: Vec<&str> = by_name.iter().map(|(n, _)| *n).collect();
    let (noun, verb, them) = if by_name.len() == 1 {
        ("Secret", "does", "it")
    } else {
        ("Secrets", "do", "them")
    };
    format!(
        "{noun} {} {verb} not carry the label {ALLOW_USE_LABEL}=true, so the operator does not use \
         {them}: a CodexAgent may only use the Secrets their owners allowed. Whoever may change \
         the {noun} allows {them} with: kubectl label secret {} {ALLOW_USE_LABEL}=true -n {ns}",
        listed.join(", "),
        names.join(" ")
    )
}

/// The signing key `secret` holds: for a `generated` one see [`crate::api_key::from_generated`],
/// else the HS256 secret under `key`.
fn signing_key(secret: Secret, generated: bool, key: &str) -> Option<SigningKey> {
    if generated {
        let data = secret.data.unwrap_or_default();
        crate::api_key::from_generated(|k| data.get(k).map(|b| b.0.clone()))
    } else {
        secret_key(secret, key).map(SigningKey::Hs256)
    }
}

/// `key` of `secret`, trailing newlines removed (both sides read a key file identically).
fn secret_key(secret: Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|b| trim_key(b.0))
}

/// A key file's bytes as the sidecar reads them: every trailing `\n` and `\r` removed (the
/// sidecar's `auth::trim_key`), so both sides sign and verify with the same key.
pub fn trim_key(mut v: Vec<u8>) -> Vec<u8> {
    while v.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        v.pop();
    }
    v
}

async fn publish(
    ctx: &Context,
    agent: &CodexAgent,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(event_note(note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &agent.object_ref(&())).await {
        warn!(error = %e, agent = %agent.name_any(), "publishing an event failed");
    }
}

/// Reconciles one agent (see the module docs for the exact sequence of requests).
///
/// # Errors
/// [`Error`] when an API request fails; the controller retries with [`error_policy`]'s backoff.
pub async fn reconcile(agent: Arc<CodexAgent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let result = reconcile_inner(&agent, &ctx).await;
    if result.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&ObjectRef::from_obj(agent.as_ref()));
    }
    result
}

async fn reconcile_inner(agent: &CodexAgent, ctx: &Context) -> Result<Action, Error> {
    let ns = agent.namespace().ok_or(Error::NoNamespace)?;
    if agent.metadata.deletion_timestamp.is_some() {
        // Being deleted (e.g. foreground deletion): the garbage collector removes the children;
        // recreating them now would fight it.
        ctx.accepted_keys
            .forget(&format!("{ns}/{}", agent.name_any()));
        ctx.rollouts.release(&ObjectRef::from_obj(agent));
        return Ok(Action::await_change());
    }
    let name = agent.name_any();
    let client = ctx.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut obs = Observed::default();

    let mut children = match resources::build(agent, &ctx.config) {
        Ok(c) => Some(c),
        Err(BuildError::Spec(e)) => {
            obs.invalid_spec = Some(e.0.clone());
            None
        }
        Err(e) => return Err(e.into()),
    };

    // 1. Secrets.
    let jwt_ref = agent.spec.jwt_secret(&name);
    let mut jwt_key = None;
    let generated = agent.spec.auth.jwt_secret_ref.is_none();
    if children.is_some() {
        let found = secrets.get_opt(&jwt_ref.name).await?;
        // A generated key must be this agent's own: never one a user made under that name,
        // nor the key of an earlier agent of the same name.
        let foreign = found
            .as_ref()
            .filter(|_| generated)
            .and_then(|s| foreign(agent, "Secret", &s.metadata));
        // Secrets the spec names that lack the opt-in label: never read, never mounted.
        let mut refused: Vec<(String, &'static str)> = Vec::new();
        match (foreign, found) {
            (Some(c), _) => {
                obs.name_conflict.get_or_insert(c);
            }
            (None, Some(s)) if !generated && !may_use(agent, &s) => {
                refused.push((jwt_ref.name.clone(), "auth.jwtSecretRef"));
            }
            (None, found) => jwt_key = found.and_then(|s| signing_key(s, generated, &jwt_ref.key)),
        }
        if jwt_key.is_none() && generated && obs.name_conflict.is_none() {
            let pair = crate::api_key::generate_es256()?;
            let secret = resources::jwt_secret(agent, &pair)?;
            match secrets
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &secret,
                )
                .await
            {
                Ok(_) => {
                    jwt_key = Some(SigningKey::Es256(pair.private_pem.into_bytes()));
                    publish(
                        ctx,
                        agent,
                        EventType::Normal,
                        "SecretGenerated",
                        "CreateSecret",
                        format!("generated the API signing key Secret {}", jwt_ref.name),
                    )
                    .await;
                }
                // Another replica (or a user) created it first: never overwrite it, use theirs.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    jwt_key = secrets
                        .get_opt(&jwt_ref.name)
                        .await?
                        .and_then(|s| signing_key(s, generated, &jwt_ref.key));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(SigningKey::Hs256(k)) = &jwt_key
            && k.len() < MIN_JWT_KEY_LEN
        {
            // The sidecar would refuse it at start-up and crash-loop: say why instead.
            obs.invalid_secret = Some(format!(
                "Secret {ns}/{} key {:?} holds {} bytes; an HS256 key needs at least {MIN_JWT_KEY_LEN} \
                 (RFC 7518 section 3.2; e.g. `openssl rand -hex 32`)",
                jwt_ref.name,
                jwt_ref.key,
                k.len()
            ));
        }
        if let Some(key @ SigningKey::Es256(_)) = &jwt_key
            && key.encoding_key().is_err()
        {
            obs.invalid_secret = Some(format!(
                "Secret {ns}/{} key {:?} is not a P-256 private key in PEM (PKCS#8); delete the \
                 Secret and the operator generates a new key pair",
                jwt_ref.name, jwt_ref.key
            ));
        }
        // A generated Secret from before ES256 holds an HS256 key: its pod keeps verifying with
        // it (see crate::api_key) until the Secret is deleted.
        if let (Some(key), Some(c)) = (&jwt_key, &mut children)
            && key.pod_key() != resources::default_pod_key(&agent.spec)
        {
            *c = resources::build_for(agent, &ctx.config, key.pod_key())?;
        }
        if jwt_key.is_none() && obs.name_conflict.is_none() && refused.is_empty() {
            obs.missing_secret = Some(format!(
                "Secret {ns}/{} has no key {:?} (auth.jwtSecretRef)",
                jwt_ref.name, jwt_ref.key
            ));
        }
        let p = &agent.spec.provider;
        let provider = match (&p.auth_json_secret_ref, &p.api_key_secret_ref) {
            (Some(r), _) => Some((r, "provider.authJsonSecretRef")),
            (None, Some(r)) => Some((r, "provider.apiKeySecretRef")),
            (None, None) => None,
        };
        if let Some((r, field)) = provider
            && obs.missing_secret.is_none()
        {
            match secrets.get_opt(&r.name).await? {
                Some(s) if !may_use(agent, &s) => refused.push((r.name.clone(), field)),
                s => {
                    if s.and_then(|s| secret_key(s, &r.key)).is_none() {
                        obs.missing_secret = Some(format!(
                            "Secret {ns}/{} has no key {:?} (provider)",
                            r.name, r.key
                        ));
                    }
                }
            }
        }
        // A pull Secret that does not exist is no error (the kubelet pulls without it, as for
        // any pod); one that exists is handed to the kubelet only with its owner's consent.
        for r in &agent.spec.image_pull_secrets {
            if let Some(s) = secrets.get_opt(&r.name).await?
                && !may_use(agent, &s)
            {
                refused.push((r.name.clone(), "imagePullSecrets"));
            }
        }
        if !refused.is_empty() {
            obs.secret_not_allowed = Some(not_allowed_message(&ns, &refused));
        }
    }

    // 2. ConfigMap, PVC, Service.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut requeue_soon = false;
    let mut requeue_after: Option<Duration> = None;
    if let Some(children) = &children {
        let cm_name = resources::names::config_map(&name);
        let applied = apply_if_changed(
            &Api::<ConfigMap>::namespaced(client.clone(), &ns),
            &children.config_map,
            agent,
            "ConfigMap",
        )
        .await;
        if let Some(Some(c)) = note_rejection(&mut obs, applied, "ConfigMap", &cm_name)? {
            obs.name_conflict.get_or_insert(c);
        }
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let pvc_name = resources::names::pvc(&name);
        obs.pvc = match pvcs.get_opt(&pvc_name).await? {
            // A claim this agent does not control (a user's, or an earlier agent's of the same
            // name) is never mounted.
            Some(p) => match foreign(agent, "PersistentVolumeClaim", &p.metadata) {
                Some(c) => {
                    obs.name_conflict.get_or_insert(c);
                    None
                }
                None => {
                    let (storage, grow) = storage_sync(agent, &p);
                    obs.storage = Some(storage);
                    if grow {
                        // Expansion: only the size is applied (the StorageClass must allow it;
                        // a refusal shows as ChildRejected).
                        let body = serde_json::json!({"spec": {"resources": {"requests": {
                            "storage": agent.spec.storage.size}}}});
                        let grown = pvcs
                            .patch(&pvc_name, &PatchParams::default(), &Patch::Merge(&body))
                            .await
                            .map_err(Error::from);
                        note_rejection(&mut obs, grown, "PersistentVolumeClaim", &pvc_name)?
                            .or(Some(p))
                    } else {
                        Some(p)
                    }
                }
            },
            None => {
                let created = pvcs
                    .patch(&pvc_name, &apply_params(), &Patch::Apply(&children.pvc))
                    .await
                    .map_err(Error::from);
                note_rejection(&mut obs, created, "PersistentVolumeClaim", &pvc_name)?
            }
        };
        let applied = apply_if_changed(
            &Api::<Service>::namespaced(client.clone(), &ns),
            &children.service,
            agent,
            "Service",
        )
        .await;
        if let Some(Some(c)) = note_rejection(&mut obs, applied, "Service", &name)? {
            obs.name_conflict.get_or_insert(c);
        }

        // NetworkPolicy: applied when the spec asks for one; one this agent made earlier is
        // deleted when it no longer does.
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        match &children.network_policy {
            Some(np) => {
                let applied = apply_if_changed(&policies, np, agent, "NetworkPolicy").await;
                if let Some(Some(c)) = note_rejection(&mut obs, applied, "NetworkPolicy", &name)? {
                    obs.name_conflict.get_or_insert(c);
                }
            }
            // Only looked for after a spec change (one without networkPolicy may have removed
            // it), so an agent that never asked for one costs no request.
            None if spec_changed(agent) => {
                if let Some(old) = policies.get_opt(&name).await?
                    && foreign(agent, "NetworkPolicy", &old.metadata).is_none()
                {
                    policies.delete(&name, &DeleteParams::default()).await?;
                }
            }
            None => {}
        }

        // 3. Pod (never one this agent does not control: it is reported, not deleted).
        let observed = pods.get_opt(&name).await?;
        if let Some(c) = observed
            .as_ref()
            .and_then(|p| foreign(agent, "Pod", &p.metadata))
        {
            obs.name_conflict.get_or_insert(c);
            return finish(agent, ctx, &obs, false).await;
        }
        let terminating = observed
            .as_ref()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
        match observed {
            Some(_) if agent.spec.suspend => {
                if !terminating {
                    pods.delete(&name, &DeleteParams::default()).await?;
                    publish(
                        ctx,
                        agent,
                        EventType::Normal,
                        "Suspended",
                        "DeletePod",
                        format!("deleted pod {name}; volume {pvc_name} is kept"),
                    )
                    .await;
                }
            }
            Some(pod) if terminating => {
                requeue_after = Some(terminating_wait(&pod, k8s_openapi::jiff::Timestamp::now()));
            }
            // A Secret's owner withdrew consent (or a Secret of that name was made anew without
            // it): the pod, which mounts it, must not go on using it.
            Some(_) if obs.secret_not_allowed.is_some() => {
                pods.delete(&name, &DeleteParams::default()).await?;
                publish(
                    ctx,
                    agent,
                    EventType::Warning,
                    reasons::SECRET_NOT_ALLOWED,
                    "DeletePod",
                    format!(
                        "deleted pod {name}: it uses a Secret this agent may not use (see the \
                         Ready condition)"
                    ),
                )
                .await;
            }
            Some(pod) if status::pod_failed(&pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                match ctx.replacement_wait(&ObjectRef::from_obj(agent), &uid) {
                    None => {
                        pods.delete(&name, &DeleteParams::default()).await?;
                        publish(
                            ctx,
                            agent,
                            EventType::Warning,
                            "PodReplaced",
                            "DeletePod",
                            format!(
                                "deleted failed pod {name} ({}); a new one follows",
                                status::pod_failure(&pod)
                            ),
                        )
                        .await;
                        requeue_soon = true;
                    }
                    Some(wait) => {
                        requeue_after = Some(wait);
                        obs.pod = Some(pod);
                    }
                }
            }
            Some(pod) if hash_of(&pod) != hash_of(&children.pod) => {
                // A serving pod goes only through the rollout (a slot, then a drain); one that
                // serves nothing is replaced at once.
                let step = match (&jwt_key, serving_url(&pod)) {
                    (Some(key), Some(base_url)) => {
                        let target = ProbeTarget {
                            base_url,
                            key: key.clone(),
                            audience: resources::audience(&agent.spec, key.pod_key()),
                        };
                        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                        let fallback = ctx
                            .accepted_keys
                            .last_accepted(&format!("{ns}/{name}"), uid);
                        let timeout = crate::rollout::turn_timeout(agent);
                        ctx.rollouts
                            .step(agent, &pod, &*ctx.probe, &target, fallback, timeout)
                            .await
                    }
                    _ => Step::Replace("it serves no turn".to_owned()),
                };
                match step {
                    Step::Replace(why) => {
                        pods.delete(&name, &DeleteParams::default()).await?;
                        publish(
                            ctx,
                            agent,
                            EventType::Normal,
                            "SpecChanged",
                            "DeletePod",
                            format!("deleted pod {name} to apply the changed spec: {why}"),
                        )
                        .await;
                        requeue_soon = true;
                    }
                    Step::Wait { reason, message } => {
                        obs.rollout = Some((reason, message));
                        obs.pod = Some(pod);
                        requeue_after = Some(crate::rollout::RECHECK);
                    }
                }
            }
            Some(pod) => {
                if status::container_ready(&pod, SIDECAR_CONTAINER) {
                    ctx.rollouts.release(&ObjectRef::from_obj(agent));
                }
                obs.pod = Some(pod);
            }
            None if agent.spec.suspend => {}
            None if obs.missing_secret.is_some()
                || obs.name_conflict.is_some()
                || obs.invalid_secret.is_some()
                || obs.secret_not_allowed.is_some() => {}
            None => {
                let created = pods
                    .patch(&name, &apply_params(), &Patch::Apply(&children.pod))
                    .await
                    .map_err(Error::from);
                let Some(pod) = note_rejection(&mut obs, created, "Pod", &name)? else {
                    return finish(agent, ctx, &obs, false).await;
                };
                let resumed = status::condition(agent.status.as_ref(), types::SUSPENDED)
                    .is_some_and(|c| c.status == "True");
                publish(
                    ctx,
                    agent,
                    EventType::Normal,
                    if resumed { "Resumed" } else { "PodCreated" },
                    "CreatePod",
                    format!("created pod {name}"),
                )
                .await;
                obs.pod = Some(pod);
            }
        }
    }

    // 4. Sidecar probe (`/v1/status`: GPUs, sandbox, model server) once the sidecar runs; its
    // GPU and sandbox reports count once it is ready (its /readyz fails while the model is not
    // served, which `model_server` then explains).
    let sidecar_ready = obs
        .pod
        .as_ref()
        .is_some_and(|p| status::container_ready(p, SIDECAR_CONTAINER));
    if let (Some(pod), Some(key)) = (&obs.pod, &jwt_key)
        && status::container_running(pod, SIDECAR_CONTAINER)
        && let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone())
    {
        let target = ProbeTarget {
            base_url: sidecar_url(&ip, crate::crd::SIDECAR_PORT),
            key: key.clone(),
            audience: resources::audience(&agent.spec, key.pod_key()),
        };
        let probed = ctx
            .accepted_keys
            .status(
                &*ctx.probe,
                &format!("{ns}/{name}"),
                pod.metadata.uid.as_deref().unwrap_or_default(),
                &target,
            )
            .await;
        if probed.rotating {
            // The pod has not loaded the Secret's new key yet; look again soon.
            requeue_after =
                Some(requeue_after.map_or(KEY_ROTATION_RECHECK, |w| w.min(KEY_ROTATION_RECHECK)));
        }
        if sidecar_ready
            && obs.rollout.is_none()
            && probed.report.as_ref().is_ok_and(|r| r.draining)
        {
            // The spec changed back while this pod drained (or a leader that drained it
            // is gone): let it run turns again.
            match ctx.probe.drain(&target, false).await {
                Ok(_) => tracing::info!(agent = %name, "ended the sidecar's drain: its pod stays"),
                Err(e) => warn!(agent = %name, error = %e, "ending the sidecar's drain"),
            }
            ctx.rollouts.release(&ObjectRef::from_obj(agent));
        }
        let report = probed.report.map_err(|e| e.to_string());
        obs.model_server = report.as_ref().ok().and_then(|r| r.model_server.clone());
        if sidecar_ready {
            if agent.spec.gpu.is_some() {
                obs.gpu = Some(report.as_ref().map(|r| r.gpu.clone()).map_err(Clone::clone));
            }
            obs.sandbox = report.ok().and_then(|r| r.sandbox_check);
        }
    }

    // 4b. A pod on a node whose containers are not being created: only its Events say why (a
    // volume that cannot be mounted, a sandbox the runtime cannot create).
    if let Some(pod) = &obs.pod {
        match crate::pod_events::startup_failure(&ctx.client, pod).await {
            Ok(failure) => obs.startup_failure = failure,
            Err(e) => tracing::debug!(agent = %name, error = %e, "listing the pod's Events"),
        }
    }

    let action = finish(agent, ctx, &obs, requeue_soon).await?;
    if status::condition(agent.status.as_ref(), types::READY).is_some_and(|c| c.status == "True")
        && obs.pod.as_ref().is_some_and(|p| !status::pod_failed(p))
    {
        ctx.forget_replacements(&ObjectRef::from_obj(agent));
    }
    Ok(match requeue_after {
        Some(wait) => Action::requeue(wait.max(Duration::from_secs(1))),
        None => action,
    })
}

/// Steps 5 and 6: writes the status computed from `obs` when it changed, publishes an Event on
/// a Ready transition, and says when to reconcile again.
async fn finish(
    agent: &CodexAgent,
    ctx: &Context,
    obs: &Observed,
    requeue_soon: bool,
) -> Result<Action, Error> {
    let ns = agent.namespace().ok_or(Error::NoNamespace)?;
    let name = agent.name_any();
    // 5. Status.
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new = status::compute(agent, obs, agent.status.as_ref(), &now);
    if agent.status.as_ref() != Some(&new) {
        let api: Api<CodexAgent> = Api::namespaced(ctx.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": "agents.codex-operator.dev/v1alpha1",
            "kind": "CodexAgent",
            "status": new,
        });
        api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
            .await?;
    }

    // 6. Events on Ready transitions.
    let old_ready = status::condition(agent.status.as_ref(), types::READY);
    let new_ready = status::condition(Some(&new), types::READY);
    if let Some(n) = new_ready
        && old_ready.map(|o| o.reason.as_str()) != Some(n.reason.as_str())
        && n.reason != reasons::POD_PENDING
    {
        let type_ = if n.status == "True" || n.reason == reasons::SUSPENDED {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(ctx, agent, type_, &n.reason, "Reconcile", n.message.clone()).await;
    }

    let ready = new_ready.is_some_and(|c| c.status == "True");
    Ok(if requeue_soon {
        Action::requeue(Duration::from_secs(2))
    } else if ready {
        Action::requeue(REQUEUE_READY)
    } else if agent.spec.suspend || obs.invalid_spec.is_some() {
        Action::await_change()
    } else {
        Action::requeue(REQUEUE_NOT_READY)
    })
}

/// The spec changed since the last status write (`status.observedGeneration` behind
/// `metadata.generation`).
fn spec_changed(agent: &CodexAgent) -> bool {
    agent
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|g| Some(g) != agent.metadata.generation)
}

/// The sidecar's URL when `pod` serves (its sidecar container is ready and it has an IP).
fn serving_url(pod: &Pod) -> Option<String> {
    if !status::container_ready(pod, SIDECAR_CONTAINER) {
        return None;
    }
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
    Some(sidecar_url(ip, crate::crd::SIDECAR_PORT))
}

/// When to look again at a pod that is being deleted: 2 s at first (a pod normally goes within
/// its grace period), then half the time it has been terminating, at most 60 s, so a pod stuck
/// Terminating on a lost node is not polled every 2 s forever.
pub fn terminating_wait(pod: &Pod, now: k8s_openapi::jiff::Timestamp) -> Duration {
    let since = pod
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| now.duration_since(t.0).as_secs().max(0) as u64)
        .unwrap_or(0);
    Duration::from_secs((since / 2).clamp(2, 60))
}

/// `http://IP:PORT/`, with an IPv6 literal in brackets (RFC 3986 section 3.2.2).
pub fn sidecar_url(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

/// Backoff delay after `failures` consecutive errors: 5 s, 10 s, 20 s, ... capped at 300 s.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

/// Error policy: counts the error and retries with exponential backoff per object.
pub fn error_policy(agent: Arc<CodexAgent>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(agent = %agent.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(error.metric_label());
    let n = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(ObjectRef::from_obj(agent.as_ref())).or_insert(0);
            *n += 1;
            *n
        }
        Err(_) => 1,
    };
    Action::requeue(backoff(n))
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CRD is not installed (the list call answered 404).
    #[error(
        "the CodexAgent CRD is not installed: run `codex-operator crd | kubectl apply -f -` \
         (or apply manifests/crd.yaml) and restart the operator"
    )]
    CrdMissing,
    /// Any other API error while checking for the CRD.
    #[error("checking for the CodexAgent CRD: {0}")]
    Kube(#[from] kube::Error),
}

/// Fails with [`StartError::CrdMissing`] when `codexagents.agents.codex-operator.dev` is absent.
///
/// # Errors
/// See [`StartError`].
pub async fn check_crd(client: &Client) -> Result<(), StartError> {
    let api: Api<CodexAgent> = Api::all(client.clone());
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(StartError::CrdMissing),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_to_the_api_limit_on_a_char_boundary() {
        assert_eq!(event_note("short".into()), "short");
        let long = "é".repeat(EVENT_NOTE_MAX);
        let cut = event_note(long);
        assert!(cut.len() <= EVENT_NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn a_pod_stuck_terminating_is_looked_at_less_and_less_often() {
        let now = k8s_openapi::jiff::Timestamp::now();
        let pod = |secs_ago: i64| {
            let mut p = Pod::default();
            p.metadata.deletion_timestamp = Some(Time(
                now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs_ago))
                    .expect("time"),
            ));
            p
        };
        assert_eq!(terminating_wait(&pod(1), now), Duration::from_secs(2));
        assert_eq!(terminating_wait(&pod(40), now), Duration::from_secs(20));
        assert_eq!(terminating_wait(&pod(3600), now), Duration::from_secs(60));
    }

    #[test]
    fn quantities_parse_as_the_api_server_reads_them() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("10"), Some(10));
        assert_eq!(quantity_bytes("1Xi"), None);
        assert!(quantity_bytes("2Gi") > quantity_bytes("2G"));
    }

    #[test]
    fn the_not_allowed_message_lists_each_secret_once_with_one_label_command() {
        let one = not_allowed_message("ns", &[("gw".into(), "provider.apiKeySecretRef")]);
        assert!(
            one.starts_with("Secret ns/gw (provider.apiKeySecretRef) does not carry the label"),
            "{one}"
        );
        assert!(
            one.ends_with("kubectl label secret gw agents.codex-operator.dev/allow-use=true -n ns"),
            "{one}"
        );
        let many = not_allowed_message(
            "team",
            &[
                ("shared".into(), "auth.jwtSecretRef"),
                ("shared".into(), "provider.apiKeySecretRef"),
                ("regcred".into(), "imagePullSecrets"),
                ("regcred".into(), "imagePullSecrets"),
            ],
        );
        assert!(
            many.starts_with(
                "Secrets team/shared (auth.jwtSecretRef, provider.apiKeySecretRef), \
                 team/regcred (imagePullSecrets) do not carry"
            ),
            "{many}"
        );
        assert!(
            many.ends_with(
                "kubectl label secret shared regcred agents.codex-operator.dev/allow-use=true -n team"
            ),
            "{many}"
        );
    }

    #[test]
    fn only_the_label_value_true_allows_a_secret() {
        let with = |labels: serde_json::Value| -> Secret {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s", "labels": labels}}))
                .expect("secret")
        };
        assert!(use_allowed(&with(
            serde_json::json!({ALLOW_USE_LABEL: "true"})
        )));
        assert!(!use_allowed(&with(
            serde_json::json!({ALLOW_USE_LABEL: "yes"})
        )));
        assert!(!use_allowed(&with(serde_json::json!({"other": "true"}))));
        assert!(!use_allowed(&Secret::default()));
    }

    #[test]
    fn sidecar_urls_bracket_ipv6() {
        assert_eq!(sidecar_url("10.0.0.7", 8080), "http://10.0.0.7:8080");
        assert_eq!(sidecar_url("fd00::7", 8080), "http://[fd00::7]:8080");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
