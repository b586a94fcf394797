//! Computing `CodexAgent.status` from what the reconciler observed (pure functions).
//!
//! Conditions follow the `metav1.Condition` shape; `lastTransitionTime` is kept from the
//! previous status while a condition's `status` does not change, so an unchanged world yields a
//! byte-identical status and the reconciler skips the status patch.

use k8s_openapi::api::core::v1::{ContainerStatus, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{CodexAgent, CodexAgentStatus, Phase, ProviderType, SIDECAR_PORT};
use crate::probe::GpuReport;
use crate::resources::{MODEL_CONTAINER, SIDECAR_CONTAINER};

/// Condition types written by the operator.
pub mod types {
    /// The agent serves: pod ready, model server ready, GPUs verified where checked.
    pub const READY: &str = "Ready";
    /// Mirrored from the pod's `PodScheduled` condition.
    pub const POD_SCHEDULED: &str = "PodScheduled";
    /// The local model server container is ready (provider `local` only).
    pub const MODEL_READY: &str = "ModelReady";
    /// The sidecar's `/v1/status` shows at least `gpu.count` GPUs (GPUs on the sidecar only).
    pub const GPU_VERIFIED: &str = "GPUVerified";
    /// `spec.suspend` is true and no pod runs.
    pub const SUSPENDED: &str = "Suspended";
    /// The volume matches `spec.storage` (or is being expanded to it); False when a change
    /// cannot be applied to an existing claim (a smaller size, another StorageClass).
    pub const STORAGE_SYNCED: &str = "StorageSynced";
    /// Codex's command sandbox works in the sidecar's container (from `/v1/status`
    /// `sandbox_check`; absent until the sidecar has answered).
    pub const SANDBOX_READY: &str = "SandboxReady";
    /// The pod runs the agent's current spec (False while a changed spec rolls out:
    /// [`crate::rollout`]).
    pub const UP_TO_DATE: &str = "UpToDate";
}

/// Stable `reason` values (CamelCase, as Kubernetes conventions require).
pub mod reasons {
    /// Everything serves.
    pub const READY: &str = "Ready";
    /// `spec.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
    /// `spec.suspend` is false.
    pub const RUNNING: &str = "NotSuspended";
    /// The spec breaks a rule (only reachable when admission validation was bypassed).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Secret (or its key) does not exist.
    pub const MISSING_SECRET: &str = "MissingSecret";
    /// A Secret the spec names lacks the opt-in label [`crate::crd::ALLOW_USE_LABEL`] (value
    /// `"true"`): the operator does not use it, no pod is created and a running one is deleted.
    /// The message names the Secrets and the `kubectl label` command that allows them.
    pub const SECRET_NOT_ALLOWED: &str = "SecretNotAllowed";
    /// A referenced Secret holds an unusable value (a JWT key under 32 bytes); no pod is created.
    pub const INVALID_SECRET: &str = "InvalidSecret";
    /// An object with a child's name exists and is not controlled by this agent (a user's, or
    /// an earlier agent's of the same name waiting for garbage collection): left alone.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// The API server refused to create or update a child (admission: PodSecurity,
    /// ResourceQuota, RuntimeClass, a webhook; or validation): the message is the API's.
    pub const CHILD_REJECTED: &str = "ChildRejected";
    /// The pod has not been created or observed yet.
    pub const POD_PENDING: &str = "PodPending";
    /// The scheduler found no node with enough free GPUs ("Insufficient nvidia.com/gpu").
    pub const INSUFFICIENT_GPU: &str = "InsufficientGPU";
    /// The PVC is not bound (e.g. no default StorageClass).
    pub const PVC_PENDING: &str = "PVCPending";
    /// The scheduler cannot place the pod for another reason (see the message).
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// An image cannot be pulled (ErrImagePull, ImagePullBackOff, InvalidImageName).
    pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
    /// A container keeps crashing.
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
    /// A container keeps being killed for exceeding its memory limit (`OOMKilled`).
    pub const OOM_KILLED: &str = "OOMKilled";
    /// The kubelet cannot attach or mount one of the pod's volumes (its `FailedMount` Event).
    pub const VOLUME_MOUNT_FAILED: &str = "VolumeMountFailed";
    /// The container runtime cannot create the pod's sandbox, e.g. no handler for the
    /// RuntimeClass (its `FailedCreatePodSandBox` Event).
    pub const SANDBOX_CREATION_FAILED: &str = "SandboxCreationFailed";
    /// The runtime cannot create a container (`CreateContainerError`: e.g. a bad command).
    pub const CREATE_CONTAINER_ERROR: &str = "CreateContainerError";
    /// The runtime cannot start a container (`RunContainerError`, `StartError`).
    pub const RUN_CONTAINER_ERROR: &str = "RunContainerError";
    /// The kubelet cannot build a container's config (often a missing Secret key).
    pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
    /// The pod terminated.
    pub const POD_FAILED: &str = "PodFailed";
    /// The local model server is not ready yet.
    pub const MODEL_NOT_READY: &str = "ModelNotReady";
    /// The sidecar's readiness probe (`/readyz`) fails.
    pub const SIDECAR_NOT_READY: &str = "SidecarNotReady";
    /// The sidecar sees fewer GPUs than requested (often a missing `runtimeClassName`).
    pub const NO_GPU: &str = "NoGPU";
    /// The sidecar sees the requested GPUs.
    pub const GPUS_VISIBLE: &str = "GPUsVisible";
    /// `/v1/status` could not be fetched.
    pub const GPU_PROBE_FAILED: &str = "GPUProbeFailed";
    /// The container is ready.
    pub const CONTAINER_READY: &str = "ContainerReady";
    /// The claim has the requested size and class.
    pub const SYNCED: &str = "Synced";
    /// A larger `storage.size` was requested; the claim is being expanded.
    pub const RESIZING: &str = "Resizing";
    /// `storage` asks for what an existing claim cannot become.
    pub const STORAGE_CHANGE_NOT_APPLIED: &str = "StorageChangeNotApplied";
    /// Codex's sandbox runs commands in the sidecar's container.
    pub const SANDBOX_WORKS: &str = "SandboxWorks";
    /// UpToDate: the pod runs the current spec.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// UpToDate: the spec changed; every cluster-wide rollout slot is taken.
    pub const ROLLOUT_WAITING: &str = "RolloutWaiting";
    /// UpToDate: the spec changed; the sidecar drains before its pod is replaced.
    pub const DRAINING: &str = "Draining";
    /// Codex's sandbox cannot run in the sidecar's container (usually: user namespaces are
    /// forbidden by the seccomp profile); commands the model runs will fail.
    pub const SANDBOX_UNAVAILABLE: &str = "SandboxUnavailable";
}

/// What the reconciler saw this round.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// The spec breaks a rule (message).
    pub invalid_spec: Option<String>,
    /// A referenced Secret or key is missing (message naming it).
    pub missing_secret: Option<String>,
    /// The API server refused a child (the first refusal this round, with the API's message).
    pub rejected: Option<String>,
    /// An object with a child's name that this agent does not control (message naming it).
    pub name_conflict: Option<String>,
    /// A referenced Secret holds an unusable value (message naming it).
    pub invalid_secret: Option<String>,
    /// Secrets the spec names that lack the opt-in label (message naming them and the fix).
    pub secret_not_allowed: Option<String>,
    /// How the claim compares with `spec.storage`: `(reason, message)` from
    /// [`crate::reconcile`]'s storage step.
    pub storage: Option<(&'static str, String)>,
    /// The agent's pod, if it exists and is not being deleted.
    pub pod: Option<Pod>,
    /// The agent's PVC, if it exists.
    pub pvc: Option<PersistentVolumeClaim>,
    /// Result of the GPU probe, when one was made (`Err` holds the error message).
    pub gpu: Option<Result<GpuReport, String>>,
    /// The sidecar's sandbox check, when it answered `/v1/status`.
    pub sandbox: Option<crate::probe::SandboxReport>,
    /// Why a scheduled pod's containers are not being created, from its Events:
    /// `(reason, kubelet's message)` ([`crate::pod_events`]).
    pub startup_failure: Option<(&'static str, String)>,
    /// A rollout the pod waits for ([`crate::rollout::Step::Wait`]): reason and message.
    pub rollout: Option<(&'static str, String)>,
}

/// True when GPUs are attached to the sidecar container (so `/v1/status` can verify them).
pub fn gpus_on_sidecar(agent: &CodexAgent) -> bool {
    agent.spec.gpu.is_some() && agent.spec.provider.type_ != ProviderType::Local
}

fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

/// True when the pod reached phase `Failed` (it will never run again: the kubelet does not
/// restart a failed pod, so the operator replaces it).
pub fn pod_failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

/// Why a failed pod failed, as the kubelet said: the pod's own reason and message
/// (`Evicted: The node was low on resource: memory.`, `UnexpectedAdmissionError`, `Shutdown`),
/// else the first terminated container's (`container sidecar: OOMKilled (exit code 137)`).
pub fn pod_failure(pod: &Pod) -> String {
    let st = pod.status.as_ref();
    if let Some(reason) = st.and_then(|s| s.reason.as_deref()) {
        return match st
            .and_then(|s| s.message.as_deref())
            .filter(|m| !m.is_empty())
        {
            Some(m) => format!("{reason}: {m}"),
            None => reason.to_owned(),
        };
    }
    st.and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter().find_map(|c| {
                let t = c.state.as_ref()?.terminated.as_ref()?;
                Some(format!(
                    "container {}: {} (exit code {})",
                    c.name,
                    t.reason.as_deref().unwrap_or("terminated"),
                    t.exit_code
                ))
            })
        })
        .unwrap_or_else(|| "no reason given".to_owned())
}

/// True when the named container reports `ready`.
pub fn container_ready(pod: &Pod, name: &str) -> bool {
    container(pod, name).is_some_and(|c| c.ready)
}

fn pod_condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// A waiting container's problem, mapped to a stable reason: (reason, message).
fn container_problem(pod: &Pod) -> Option<(&'static str, String)> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = match w.reason.as_deref()? {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => {
                reasons::IMAGE_PULL_BACK_OFF
            }
            // A container killed for exceeding its memory limit, now backing off.
            "CrashLoopBackOff"
                if c.last_state
                    .as_ref()
                    .and_then(|l| l.terminated.as_ref())
                    .and_then(|t| t.reason.as_deref())
                    == Some("OOMKilled") =>
            {
                reasons::OOM_KILLED
            }
            "CrashLoopBackOff" => reasons::CRASH_LOOP_BACK_OFF,
            "CreateContainerConfigError" => reasons::CREATE_CONTAINER_CONFIG_ERROR,
            "CreateContainerError" => reasons::CREATE_CONTAINER_ERROR,
            "RunContainerError" | "StartError" => reasons::RUN_CONTAINER_ERROR,
            _ => return None,
        };
        Some((
            reason,
            format!(
                "container {}: {}",
                c.name,
                w.message.clone().unwrap_or_default()
            ),
        ))
    })
}

struct Cond {
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
}

fn cond(
    type_: &'static str,
    ok: Option<bool>,
    reason: &'static str,
    message: impl Into<String>,
) -> Cond {
    let status = match ok {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    Cond {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

/// Computes the new status. `previous` supplies `lastTransitionTime`s; `now` stamps changes.
pub fn compute(
    agent: &CodexAgent,
    obs: &Observed,
    previous: Option<&CodexAgentStatus>,
    now: &Time,
) -> CodexAgentStatus {
    let spec = &agent.spec;
    let generation = agent.metadata.generation;
    let pod = obs.pod.as_ref();
    let mut conds: Vec<Cond> = Vec::new();

    // Suspended
    conds.push(if spec.suspend {
        cond(
            types::SUSPENDED,
            Some(true),
            reasons::SUSPENDED,
            "spec.suspend is true: the pod is deleted, the volume is kept",
        )
    } else {
        cond(types::SUSPENDED, Some(false), reasons::RUNNING, "")
    });

    // PodScheduled, mirrored from the pod.
    let scheduled = pod.and_then(|p| pod_condition(p, "PodScheduled"));
    conds.push(match (pod, scheduled) {
        (_, Some(c)) => Cond {
            type_: types::POD_SCHEDULED,
            status: match c.status.as_str() {
                "True" => "True",
                "False" => "False",
                _ => "Unknown",
            },
            reason: match c.reason.as_deref() {
                Some("Unschedulable") => reasons::UNSCHEDULABLE,
                Some("SchedulingGated") => "SchedulingGated",
                _ if c.status == "True" => "Scheduled",
                _ => reasons::POD_PENDING,
            },
            message: c.message.clone().unwrap_or_default(),
        },
        (Some(_), None) => cond(
            types::POD_SCHEDULED,
            None,
            reasons::POD_PENDING,
            "the scheduler has not looked at the pod yet",
        ),
        (None, _) if spec.suspend => cond(
            types::POD_SCHEDULED,
            Some(false),
            reasons::SUSPENDED,
            "no pod while suspended",
        ),
        (None, _) => cond(
            types::POD_SCHEDULED,
            Some(false),
            reasons::POD_PENDING,
            "the pod does not exist yet",
        ),
    });
    let sched_false = scheduled.filter(|c| c.status == "False");

    // ModelReady (local model server only).
    let local = spec.provider.type_ == ProviderType::Local;
    let model_ready = pod.is_some_and(|p| container_ready(p, MODEL_CONTAINER));
    if local {
        conds.push(if model_ready {
            cond(
                types::MODEL_READY,
                Some(true),
                reasons::CONTAINER_READY,
                "the model server container is ready",
            )
        } else {
            cond(
                types::MODEL_READY,
                Some(false),
                reasons::MODEL_NOT_READY,
                "the model server container is not ready",
            )
        });
    }

    // StorageSynced, once the claim exists.
    if let Some((reason, message)) = &obs.storage {
        conds.push(cond(
            types::STORAGE_SYNCED,
            Some(*reason != reasons::STORAGE_CHANGE_NOT_APPLIED),
            reason,
            message.clone(),
        ));
    }

    // UpToDate, while a pod exists.
    if let Some((reason, message)) = &obs.rollout {
        conds.push(cond(
            types::UP_TO_DATE,
            Some(false),
            reason,
            message.clone(),
        ));
    } else if pod.is_some() {
        conds.push(cond(
            types::UP_TO_DATE,
            Some(true),
            reasons::UP_TO_DATE,
            "the pod runs the agent's current spec",
        ));
    }

    // SandboxReady, once the sidecar has said whether codex's sandbox works in its container.
    if let Some(sb) = &obs.sandbox {
        conds.push(if sb.ok {
            cond(
                types::SANDBOX_READY,
                Some(true),
                reasons::SANDBOX_WORKS,
                format!(
                    "codex's {} sandbox runs commands in the sidecar container",
                    sb.mode
                ),
            )
        } else {
            cond(
                types::SANDBOX_READY,
                Some(false),
                reasons::SANDBOX_UNAVAILABLE,
                format!(
                    "codex's {} sandbox cannot run here: {}; {}",
                    sb.mode,
                    sb.error.as_deref().unwrap_or("unknown error"),
                    sb.hint.as_deref().unwrap_or_default()
                ),
            )
        });
    }

    // GPUVerified (GPUs on the sidecar only).
    let want_gpus = spec.gpu.as_ref().map(|g| g.count as usize).unwrap_or(0);
    let mut gpu_state: Option<Option<bool>> = None;
    if gpus_on_sidecar(agent) {
        let c = match &obs.gpu {
            Some(Ok(r)) if r.available && r.devices.len() >= want_gpus => {
                let names: Vec<&str> = r.devices.iter().map(|d| d.name.as_str()).collect();
                cond(
                    types::GPU_VERIFIED,
                    Some(true),
                    reasons::GPUS_VISIBLE,
                    format!(
                        "{} GPU(s) visible: {}; driver {}",
                        r.devices.len(),
                        names.join(", "),
                        r.driver_version.as_deref().unwrap_or("unknown")
                    ),
                )
            }
            Some(Ok(r)) => cond(
                types::GPU_VERIFIED,
                Some(false),
                reasons::NO_GPU,
                format!(
                    "the sidecar sees {} of {want_gpus} GPU(s){}; check gpu.runtimeClassName (e.g. nvidia) and the NVIDIA device plugin",
                    r.devices.len(),
                    r.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            ),
            Some(Err(e)) => cond(
                types::GPU_VERIFIED,
                None,
                reasons::GPU_PROBE_FAILED,
                format!("GET /v1/status failed: {e}"),
            ),
            None => cond(
                types::GPU_VERIFIED,
                None,
                reasons::SIDECAR_NOT_READY,
                "waiting for the sidecar to serve",
            ),
        };
        gpu_state = Some(match c.status {
            "True" => Some(true),
            "False" => Some(false),
            _ => None,
        });
        conds.push(c);
    }

    // Ready: the first failing check wins.
    let gpu_resource = spec
        .gpu
        .as_ref()
        .map(|g| g.resource_name.as_str())
        .unwrap_or(crate::crd::DEFAULT_GPU_RESOURCE);
    // With WaitForFirstConsumer storage (GKE, EKS, AKS, kind) a claim stays Pending until its
    // pod is scheduled, so a Pending claim is the cause only when the scheduler says so.
    let volume_blocked = |msg: &str| {
        msg.contains("unbound immediate PersistentVolumeClaims")
            || msg.contains("persistentvolumeclaim")
            || msg.contains("didn't find available persistent volumes")
    };
    let pod_phase = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref());
    let (ready, phase) = if let Some(m) = &obs.invalid_spec {
        (
            cond(types::READY, Some(false), reasons::INVALID_SPEC, m.clone()),
            Phase::Failed,
        )
    } else if spec.suspend {
        (
            cond(
                types::READY,
                Some(false),
                reasons::SUSPENDED,
                "the agent is suspended",
            ),
            Phase::Suspended,
        )
    } else if let Some(m) = &obs.secret_not_allowed {
        (
            cond(
                types::READY,
                Some(false),
                reasons::SECRET_NOT_ALLOWED,
                m.clone(),
            ),
            Phase::Pending,
        )
    } else if let Some(m) = &obs.missing_secret {
        (
            cond(
                types::READY,
                Some(false),
                reasons::MISSING_SECRET,
                m.clone(),
            ),
            Phase::Pending,
        )
    } else if let Some(m) = &obs.invalid_secret {
        (
            cond(
                types::READY,
                Some(false),
                reasons::INVALID_SECRET,
                m.clone(),
            ),
            Phase::Pending,
        )
    } else if let Some(m) = &obs.name_conflict {
        (
            cond(types::READY, Some(false), reasons::NAME_CONFLICT, m.clone()),
            Phase::Pending,
        )
    } else if let Some(m) = &obs.rejected {
        (
            cond(
                types::READY,
                Some(false),
                reasons::CHILD_REJECTED,
                m.clone(),
            ),
            Phase::Failed,
        )
    } else if pod.is_none() {
        (
            cond(
                types::READY,
                Some(false),
                reasons::POD_PENDING,
                "creating the pod",
            ),
            Phase::Pending,
        )
    } else if pod_phase == Some("Failed") {
        (
            cond(
                types::READY,
                Some(false),
                reasons::POD_FAILED,
                format!(
                    "the pod failed ({}); the operator replaces it, with backoff when it keeps failing",
                    pod.map(pod_failure).unwrap_or_default()
                ),
            ),
            Phase::Failed,
        )
    } else if let Some((reason, message)) = pod.and_then(container_problem) {
        (
            cond(types::READY, Some(false), reason, message),
            Phase::Failed,
        )
    } else if let Some((reason, message)) = &obs.startup_failure {
        // The kubelet retries mounts and sandboxes: Pending, not Failed.
        (
            cond(types::READY, Some(false), reason, message.clone()),
            Phase::Pending,
        )
    } else if let Some(c) = sched_false {
        let msg = c.message.clone().unwrap_or_default();
        if msg.contains(&format!("Insufficient {gpu_resource}")) {
            let n = spec.gpu.as_ref().map(|g| g.count).unwrap_or(0);
            (
                cond(
                    types::READY,
                    Some(false),
                    reasons::INSUFFICIENT_GPU,
                    format!("no node has {n} free {gpu_resource}: {msg}"),
                ),
                Phase::Pending,
            )
        } else if volume_blocked(&msg) {
            (
                cond(
                    types::READY,
                    Some(false),
                    reasons::PVC_PENDING,
                    format!(
                        "the volume claim is not bound (is there a default StorageClass, or set storage.storageClassName): {msg}"
                    ),
                ),
                Phase::Pending,
            )
        } else {
            (
                cond(types::READY, Some(false), reasons::UNSCHEDULABLE, msg),
                Phase::Pending,
            )
        }
    } else if scheduled.is_none_or(|c| c.status != "True") {
        (
            cond(
                types::READY,
                Some(false),
                reasons::POD_PENDING,
                "waiting for the scheduler",
            ),
            Phase::Pending,
        )
    } else if local && !model_ready {
        (
            cond(
                types::READY,
                Some(false),
                reasons::MODEL_NOT_READY,
                "the model server container is not ready",
            ),
            Phase::Starting,
        )
    } else if !pod.is_some_and(|p| container_ready(p, SIDECAR_CONTAINER)) {
        (
            cond(
                types::READY,
                Some(false),
                reasons::SIDECAR_NOT_READY,
                "the sidecar's /readyz does not answer 200 yet",
            ),
            Phase::Starting,
        )
    } else if gpu_state == Some(Some(false)) {
        (
            cond(
                types::READY,
                Some(false),
                reasons::NO_GPU,
                format!(
                    "the sidecar sees fewer than {want_gpus} GPU(s); see the GPUVerified condition"
                ),
            ),
            Phase::Failed,
        )
    } else if gpu_state == Some(None) {
        (
            cond(
                types::READY,
                Some(false),
                reasons::GPU_PROBE_FAILED,
                "waiting for the GPU check; see the GPUVerified condition",
            ),
            Phase::Starting,
        )
    } else {
        (
            cond(types::READY, Some(true), reasons::READY, "the agent serves"),
            Phase::Ready,
        )
    };
    conds.insert(0, ready);

    let prev_conds = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let conditions = conds
        .into_iter()
        .map(|c| {
            let last = prev_conds
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.to_string(),
                status: c.status.to_string(),
                reason: c.reason.to_string(),
                message: c.message,
                last_transition_time: last,
                observed_generation: generation,
            }
        })
        .collect();

    let ns = agent.namespace().unwrap_or_default();
    CodexAgentStatus {
        phase: Some(phase),
        endpoint: Some(format!(
            "http://{}.{ns}.svc:{SIDECAR_PORT}",
            agent.name_any()
        )),
        pod_name: pod.map(|p| p.name_any()),
        node_name: pod
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.node_name.clone()),
        observed_generation: generation,
        jwt_secret_name: Some(spec.jwt_secret(&agent.name_any()).name),
        conditions,
    }
}

/// The condition of `type_` in `status`, if any.
pub fn condition<'a>(status: Option<&'a CodexAgentStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(spec: serde_json::Value) -> CodexAgent {
        serde_json::from_value(json!({"apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
            "metadata": {"name": "a1", "namespace": "ns", "uid": "u", "generation": 2}, "spec": spec}))
        .expect("agent")
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "a1"}, "spec": {"containers": []}, "status": status}),
        )
        .expect("pod")
    }

    fn t(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    fn get<'a>(s: &'a CodexAgentStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    #[test]
    fn a_claim_waiting_for_its_first_consumer_is_not_the_reason() {
        // WaitForFirstConsumer: the claim is Pending because the pod is unschedulable for
        // another reason, which is what the agent must say.
        let a =
            agent(json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://x/v1"}}));
        let obs = Observed {
            pod: Some(pod(
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."}]}),
            )),
            pvc: Some(
                serde_json::from_value(
                    json!({"metadata": {"name": "a1-state"}, "status": {"phase": "Pending"}}),
                )
                .expect("pvc"),
            ),
            ..Observed::default()
        };
        let s = compute(&a, &obs, None, &t("2026-01-01T00:00:00Z"));
        assert_eq!(get(&s, types::READY).reason, reasons::UNSCHEDULABLE);
    }

    #[test]
    fn oom_kills_and_runtime_errors_get_their_own_reasons() {
        let a =
            agent(json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://x/v1"}}));
        let with = |waiting: &str, last: serde_json::Value| Observed {
            pod: Some(pod(
                json!({"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "sidecar", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                    "state": {"waiting": {"reason": waiting, "message": "m"}}, "lastState": last}]}),
            )),
            ..Observed::default()
        };
        let reason = |o: &Observed| {
            get(
                &compute(&a, o, None, &t("2026-01-01T00:00:00Z")),
                types::READY,
            )
            .reason
            .clone()
        };
        let oom = json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}});
        assert_eq!(reason(&with("CrashLoopBackOff", oom)), reasons::OOM_KILLED);
        let err = json!({"terminated": {"reason": "Error", "exitCode": 1}});
        assert_eq!(
            reason(&with("CrashLoopBackOff", err)),
            reasons::CRASH_LOOP_BACK_OFF
        );
        assert_eq!(
            reason(&with("CreateContainerError", json!({}))),
            reasons::CREATE_CONTAINER_ERROR
        );
        assert_eq!(
            reason(&with("RunContainerError", json!({}))),
            reasons::RUN_CONTAINER_ERROR
        );
    }

    #[test]
    fn unbound_claim_reads_pvc_pending() {
        let a =
            agent(json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://x/v1"}}));
        let obs = Observed {
            pod: Some(pod(
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]}),
            )),
            pvc: Some(
                serde_json::from_value(
                    json!({"metadata": {"name": "a1-state"}, "status": {"phase": "Pending"}}),
                )
                .expect("pvc"),
            ),
            ..Observed::default()
        };
        let s = compute(&a, &obs, None, &t("2026-01-01T00:00:00Z"));
        assert_eq!(get(&s, types::READY).reason, reasons::PVC_PENDING);
        assert!(get(&s, types::READY).message.contains("storageClassName"));
        assert_eq!(s.phase, Some(Phase::Pending));
    }

    #[test]
    fn local_model_server_gates_ready_and_crash_loops_are_named() {
        let a = agent(
            json!({"model": "m", "provider": {"type": "local", "local": {"engine": "vllm"}}, "gpu": {"count": 1}}),
        );
        let scheduled = json!([{"type": "PodScheduled", "status": "True"}]);
        let loading = Observed {
            pod: Some(pod(
                json!({"phase": "Running", "conditions": scheduled, "containerStatuses": [
                {"name": "sidecar", "ready": true, "restartCount": 0, "image": "", "imageID": ""},
                {"name": "model-server", "ready": false, "restartCount": 0, "image": "", "imageID": ""}]}),
            )),
            ..Observed::default()
        };
        let s = compute(&a, &loading, None, &t("2026-01-01T00:00:00Z"));
        assert_eq!(get(&s, types::READY).reason, reasons::MODEL_NOT_READY);
        assert_eq!(get(&s, types::MODEL_READY).status, "False");
        assert!(
            s.conditions.iter().all(|c| c.type_ != types::GPU_VERIFIED),
            "GPUs are the model server's"
        );

        let crashing = Observed {
            pod: Some(pod(
                json!({"phase": "Running", "conditions": scheduled, "containerStatuses": [
                {"name": "model-server", "ready": false, "restartCount": 5, "image": "", "imageID": "",
                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}}]}),
            )),
            ..Observed::default()
        };
        let s = compute(&a, &crashing, None, &t("2026-01-01T00:00:00Z"));
        assert_eq!(get(&s, types::READY).reason, reasons::CRASH_LOOP_BACK_OFF);
        assert!(get(&s, types::READY).message.contains("model-server"));
        assert_eq!(s.phase, Some(Phase::Failed));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let a =
            agent(json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://x/v1"}}));
        let first = compute(&a, &Observed::default(), None, &t("2026-01-01T00:00:00Z"));
        let same = compute(
            &a,
            &Observed::default(),
            Some(&first),
            &t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(first, same, "nothing changed: identical status, no patch");
        let mut suspended = a.clone();
        suspended.spec.suspend = true;
        let later = compute(
            &suspended,
            &Observed::default(),
            Some(&first),
            &t("2026-01-03T00:00:00Z"),
        );
        assert_eq!(
            get(&later, types::SUSPENDED).last_transition_time,
            t("2026-01-03T00:00:00Z")
        );
        assert_eq!(
            get(&later, types::READY).last_transition_time,
            t("2026-01-01T00:00:00Z"),
            "Ready stayed False"
        );
        assert_eq!(get(&later, types::READY).observed_generation, Some(2));
    }
}
