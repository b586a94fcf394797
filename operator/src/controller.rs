//! The controller loop: watches CodexAgents and the children they own, and runs
//! [`reconcile::reconcile`] for each agent.
//!
//! CodexAgents are watched untyped ([`DynamicObject`]) and decoded one at a time. With a typed
//! `Api<CodexAgent>`, one object that the API server stored but this operator cannot decode (a
//! number out of range for its Rust type, stored before the CRD bounded it or by a CRD of another
//! version) fails the decoding of the whole LIST, so after a restart or a failover no agent in
//! any namespace is reconciled. Here such an object is reported on itself only: a Warning Event
//! `InvalidObject` and a log line naming it, `Ready=False` with reason `InvalidObject` where the
//! API server accepts that status, and it is looked at again only when it changes.
//!
//! At scale ([`Options`]): at most `concurrency` reconciles run at once; changes to an agent
//! trigger a reconcile only when its `metadata.generation` moves (a spec change), so the
//! operator's own status writes cause no extra reconcile; events on the children are debounced,
//! so creating five children causes one more reconcile, not five.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{self as kube_controller, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::CodexAgent;
use crate::reconcile::{self, Context, Error};
use crate::status::types;

/// The reason (Event and condition) for an agent this operator cannot decode.
pub const INVALID_OBJECT: &str = "InvalidObject";

/// The CodexAgent kind as an untyped resource.
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<CodexAgent>(&())
}

/// Decodes one watched object into a [`CodexAgent`].
///
/// # Errors
/// serde's error, naming the field and value it could not take (e.g. `invalid value: integer
/// 3000000000, expected i32`).
pub fn decode(obj: &DynamicObject) -> Result<CodexAgent, serde_json::Error> {
    serde_json::from_value(serde_json::to_value(obj)?)
}

async fn reconcile_object(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    match decode(&obj) {
        Ok(agent) => reconcile::reconcile(Arc::new(agent), ctx).await,
        Err(e) => {
            report_undecodable(&obj, &e, &ctx).await;
            Ok(Action::await_change())
        }
    }
}

fn error_policy_object(obj: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    match decode(&obj) {
        Ok(agent) => reconcile::error_policy(Arc::new(agent), error, ctx),
        Err(_) => Action::await_change(),
    }
}

/// Marks one undecodable agent: log line, Warning Event, and (best effort) its Ready condition.
async fn report_undecodable(obj: &DynamicObject, error: &serde_json::Error, ctx: &Context) {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let message = format!(
        "this CodexAgent cannot be read by the operator ({error}); fix the field with kubectl edit \
         or re-apply it: the API server's current schema refuses such values"
    );
    warn!(namespace = %ns, agent = %name, %error, "skipping a CodexAgent that does not decode");
    ctx.metrics.reconcile_failed("undecodable");
    let ev = Event {
        type_: EventType::Warning,
        reason: INVALID_OBJECT.into(),
        note: Some(reconcile::event_note(message.clone())),
        action: "Decode".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&ev, &obj.object_ref(&api_resource()))
        .await
    {
        warn!(error = %e, agent = %name, "publishing an event failed");
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = serde_json::json!({
        "apiVersion": api_resource().api_version,
        "kind": api_resource().kind,
        "status": {"conditions": [{
            "type": types::READY, "status": "False", "reason": INVALID_OBJECT,
            "message": reconcile::event_note(message), "lastTransitionTime": now,
            "observedGeneration": obj.metadata.generation,
        }]}
    });
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &api_resource());
    if let Err(e) = api
        .patch_status(
            &name,
            &PatchParams::apply(reconcile::FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
    {
        info!(error = %e, agent = %name, "marking an undecodable CodexAgent in its status failed");
    }
}

/// How the controller schedules reconciles.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Reconciles running at once, across all agents (`--max-concurrent-reconciles`).
    pub concurrency: u16,
    /// How long a burst of events for one agent is collected into one reconcile.
    pub debounce: Duration,
}

impl Default for Options {
    /// 16 at once, 1 s debounce.
    fn default() -> Self {
        Self {
            concurrency: 16,
            debounce: Duration::from_secs(1),
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ar = api_resource();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=codex-operator");
    let writer = Writer::new(ar.clone());
    let reader = writer.as_reader();
    // Only spec changes (and first sight) trigger: the operator's own status writes do not.
    let agents = watcher(
        Api::<DynamicObject>::all_with(client.clone(), &ar),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream_with(agents, reader, ar)
        .with_config(
            kube_controller::Config::default()
                .concurrency(options.concurrency)
                .debounce(options.debounce),
        )
        .owns(Api::<Pod>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
        .owns(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            owned.clone(),
        )
        .owns(Api::<Secret>::all(client.clone()), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile_object, error_policy_object, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(agent = %obj, "reconciled"),
                Err(e) => info!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(weight: i64) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1"},
            "spec": {"model": "m", "provider": {"type": "custom", "baseUrl": "http://m/v1"},
                     "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                         {"weight": weight, "preference": {"matchExpressions": [
                             {"key": "k", "operator": "Exists"}]}}]}}}
        }))
        .expect("a DynamicObject takes any object")
    }

    #[test]
    fn an_object_out_of_range_for_the_rust_type_fails_alone_with_a_message_naming_the_value() {
        // What a LIST holds after the CRD was tightened: one good item, one stored earlier.
        let list: kube::core::ObjectList<DynamicObject> =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "List", "metadata": {},
                "items": [object(50), object(3_000_000_000)]
            }))
            .expect("the untyped LIST decodes whatever one item holds");
        let good = decode(&list.items[0]).expect("the good agent decodes");
        assert_eq!(good.spec.model, "m");
        let err = decode(&list.items[1]).expect_err("the bad one does not");
        assert!(err.to_string().contains("3000000000"), "{err}");
        // The typed LIST the controller used before: one bad item fails every agent.
        let typed: Result<kube::core::ObjectList<CodexAgent>, _> =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "List", "metadata": {},
                "items": [object(50), object(3_000_000_000)]
            }));
        assert!(typed.is_err());
    }
}
