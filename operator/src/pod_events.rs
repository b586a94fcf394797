//! Why a scheduled pod's containers are not being created. The kubelet reports a volume it
//! cannot mount, or a pod sandbox it cannot create (a RuntimeClass handler the runtime lacks, a
//! CNI failure), only in Events on the pod (`FailedMount`, `FailedAttachVolume`,
//! `FailedMapVolume`, `FailedCreatePodSandBox`); the pod itself shows its containers waiting
//! with reason `ContainerCreating` and no message. So for such a pod the reconciler lists the
//! pod's Events (core v1, field selector `involvedObject.uid`) and turns the newest of those
//! into a condition reason.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::status::reasons;

/// The kubelet's Event reasons for a volume that cannot be attached or mounted.
const MOUNT_REASONS: &[&str] = &["FailedMount", "FailedAttachVolume", "FailedMapVolume"];
/// The kubelet's Event reason for a sandbox the container runtime could not create.
const SANDBOX_REASON: &str = "FailedCreatePodSandBox";

/// True when `pod` is bound to a node and still creating its containers (none running, none
/// terminated, each waiting in `ContainerCreating`/`PodInitializing` or not reported yet): the
/// state in which only Events say what is wrong.
pub fn creating(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    if !bound || status.phase.as_deref() != Some("Pending") {
        return false;
    }
    status.container_statuses.as_ref().is_none_or(|cs| {
        cs.iter().all(|c| {
            c.state.as_ref().is_none_or(|s| {
                s.running.is_none()
                    && s.terminated.is_none()
                    && s.waiting.as_ref().is_none_or(|w| {
                        matches!(
                            w.reason.as_deref(),
                            None | Some("ContainerCreating" | "PodInitializing")
                        )
                    })
            })
        })
    })
}

/// The newest mount or sandbox failure among `events`, as `(reason, message)`: the condition
/// reason ([`reasons::VOLUME_MOUNT_FAILED`] or [`reasons::SANDBOX_CREATION_FAILED`]) and the
/// kubelet's message.
pub fn classify(events: &[Event]) -> Option<(&'static str, String)> {
    events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| {
            let reason = match e.reason.as_deref()? {
                r if MOUNT_REASONS.contains(&r) => reasons::VOLUME_MOUNT_FAILED,
                SANDBOX_REASON => reasons::SANDBOX_CREATION_FAILED,
                _ => return None,
            };
            Some((last_seen(e), reason, e.message.clone().unwrap_or_default()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, reason, message)| (reason, message))
}

/// When an Event was last seen, as an RFC 3339 string (they sort as text within one offset:
/// the API server writes UTC).
fn last_seen(e: &Event) -> String {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0.to_string())
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0.to_string()))
        .unwrap_or_default()
}

/// Lists the Events of `pod` (when it is [`creating`]) and [`classify`]s them.
///
/// # Errors
/// The API's error for the LIST (the caller treats it as "nothing known").
pub async fn startup_failure(
    client: &Client,
    pod: &Pod,
) -> Result<Option<(&'static str, String)>, kube::Error> {
    if !creating(pod) {
        return Ok(None);
    }
    let (Some(ns), Some(uid)) = (pod.namespace(), pod.uid()) else {
        return Ok(None);
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await?;
    Ok(classify(&list.items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(reason: &str, type_: &str, at: &str, message: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{reason}-{at}")},
            "involvedObject": {"kind": "Pod", "name": "a"},
            "reason": reason, "type": type_, "message": message,
            "lastTimestamp": at
        }))
        .expect("event")
    }

    #[test]
    fn the_newest_mount_or_sandbox_failure_names_the_reason() {
        let events = [
            event("Scheduled", "Normal", "2026-01-01T00:00:00Z", "assigned"),
            event(
                "FailedMount",
                "Warning",
                "2026-01-01T00:00:05Z",
                "MountVolume.SetUp failed for volume \"state\": hostPath type check failed",
            ),
            event(
                "FailedCreatePodSandBox",
                "Warning",
                "2026-01-01T00:00:09Z",
                "Failed to create pod sandbox: no runtime for \"x\" is configured",
            ),
        ];
        let (reason, message) = classify(&events).expect("a failure");
        assert_eq!(reason, reasons::SANDBOX_CREATION_FAILED);
        assert!(message.contains("no runtime"), "{message}");
        let (reason, message) = classify(&events[..2]).expect("a failure");
        assert_eq!(reason, reasons::VOLUME_MOUNT_FAILED);
        assert!(message.contains("hostPath type check failed"), "{message}");
        assert!(
            classify(&events[..1]).is_none(),
            "Normal events say nothing is wrong"
        );
    }

    #[test]
    fn only_a_bound_pod_still_creating_its_containers_is_looked_at() {
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).expect("pod") };
        let creating_pod = pod(json!({
            "metadata": {"name": "a", "namespace": "n", "uid": "u"},
            "spec": {"nodeName": "n1", "containers": [{"name": "sidecar"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "sidecar", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}
        }));
        assert!(creating(&creating_pod));
        let unbound = pod(json!({
            "metadata": {"name": "a"}, "spec": {"containers": [{"name": "sidecar"}]},
            "status": {"phase": "Pending"}
        }));
        assert!(
            !creating(&unbound),
            "the scheduler's reason covers unbound pods"
        );
        let pulling = pod(json!({
            "metadata": {"name": "a"},
            "spec": {"nodeName": "n1", "containers": [{"name": "sidecar"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "sidecar", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
        }));
        assert!(!creating(&pulling), "the container's own reason covers it");
        let running = pod(json!({
            "metadata": {"name": "a"},
            "spec": {"nodeName": "n1", "containers": [{"name": "sidecar"}]},
            "status": {"phase": "Running"}
        }));
        assert!(!creating(&running));
    }
}
