//! Gradual replacement of serving pods whose spec changed (a new default sidecar image after a
//! `helm upgrade`, an edited agent): at most [`OperatorConfig::max_concurrent_rollouts`] agents
//! across the cluster are replaced at once, and a serving sidecar is drained first so that no
//! running turn is cut.
//!
//! For each agent whose pod serves (sidecar container ready) but carries a stale spec hash:
//! 1. **Slot.** The agent takes one of the cluster-wide rollout slots, or waits
//!    (`UpToDate=False/RolloutWaiting`). A slot is held until the agent's new pod is ready, or
//!    for at most [`SLOT_TIMEOUT`] (so that one agent whose new pod never starts slows the
//!    rollout down but does not stop it); slots live in the leader's memory, so a new leader
//!    starts with all of them free.
//! 2. **Drain.** `POST /v1/drain` on the sidecar: from then on it accepts messages (202, kept in
//!    the agent's volume) but starts no turn; it answers how many turns still run
//!    (`UpToDate=False/Draining` meanwhile, the pod stays Ready).
//! 3. **Replace.** Once no turn runs, or the agent's turn timeout (plus [`DRAIN_MARGIN`]) has
//!    passed since the drain began, the pod is deleted; the next reconcile creates the new one,
//!    which runs the messages that waited. A sidecar too old to drain (no `/v1/drain`) is
//!    replaced once its `/v1/status` counts no running turn.
//!
//! A pod that does not serve (pending, crash-looping, not ready) is replaced at once: nothing
//! runs on it. If the spec changes back while a pod drains, the drain is ended
//! (`DELETE /v1/drain`) and the pod stays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;

use crate::api_key::SigningKey;
use crate::crd::CodexAgent;
use crate::probe::{DrainReport, ProbeError, ProbeTarget, SidecarProbe};
use crate::status::reasons;

/// Longest time one agent holds a rollout slot.
pub const SLOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Added to the agent's turn timeout before a drain gives up waiting for its turns.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(30);
/// How soon to look again at an agent that waits for a slot or for its turns to end.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Default of `--max-concurrent-rollouts`.
pub const DEFAULT_MAX_CONCURRENT_ROLLOUTS: u16 = 4;

/// What to do with a serving pod whose spec is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Delete it now; the note says why (for the Event).
    Replace(String),
    /// Keep it for now: `UpToDate=False` with this reason and message; look again in
    /// [`RECHECK`].
    Wait {
        /// [`reasons::ROLLOUT_WAITING`] or [`reasons::DRAINING`].
        reason: &'static str,
        /// The condition's message.
        message: String,
    },
}

/// One agent's rollout in progress.
#[derive(Debug, Clone)]
struct Slot {
    /// When the agent took the slot.
    since: Instant,
    /// The pod being drained and when its drain began.
    draining: Option<(String, Instant)>,
}

/// The cluster-wide rollout slots (in the leader's memory).
#[derive(Debug)]
pub struct Rollouts {
    limit: usize,
    slots: Mutex<HashMap<ObjectRef<CodexAgent>, Slot>>,
}

impl Rollouts {
    /// At most `limit` agents replaced at once (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Takes (or keeps) a slot for `agent` and returns when its drain of pod `pod_uid` began
    /// (now, on the first call for that pod), or `Err(holders)` when every slot is taken.
    fn take(&self, agent: &ObjectRef<CodexAgent>, pod_uid: &str) -> Result<Instant, usize> {
        let Ok(mut slots) = self.slots.lock() else {
            return Ok(Instant::now());
        };
        slots.retain(|_, s| s.since.elapsed() < SLOT_TIMEOUT);
        if !slots.contains_key(agent) && slots.len() >= self.limit {
            return Err(slots.len());
        }
        let slot = slots.entry(agent.clone()).or_insert(Slot {
            since: Instant::now(),
            draining: None,
        });
        match &slot.draining {
            Some((uid, at)) if uid == pod_uid => Ok(*at),
            _ => {
                let now = Instant::now();
                slot.draining = Some((pod_uid.to_owned(), now));
                Ok(now)
            }
        }
    }

    /// Frees `agent`'s slot (its new pod is ready, or it is gone).
    pub fn release(&self, agent: &ObjectRef<CodexAgent>) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(agent);
        }
    }

    /// Agents holding a slot now.
    pub fn in_progress(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// The rollout step for `agent`'s serving, stale pod: takes a slot, drains the sidecar
    /// (`target`; `fallback_key`, the key the pod last accepted, is tried after a 401) and says
    /// whether the pod may go. `turn_timeout` is the agent's.
    pub async fn step(
        &self,
        agent: &CodexAgent,
        pod: &Pod,
        probe: &dyn SidecarProbe,
        target: &ProbeTarget,
        fallback_key: Option<SigningKey>,
        turn_timeout: Duration,
    ) -> Step {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let began = match self.take(&ObjectRef::from_obj(agent), uid) {
            Ok(at) => at,
            Err(holders) => {
                return Step::Wait {
                    reason: reasons::ROLLOUT_WAITING,
                    message: format!(
                        "the pod runs an older spec; {holders} agents are being replaced \
                         (--max-concurrent-rollouts {}): waiting for a free slot",
                        self.limit
                    ),
                };
            }
        };
        let drained = drain(probe, target, fallback_key).await;
        decide(drained, began.elapsed(), turn_timeout)
    }
}

/// Drains with the current key, then with the key the pod accepted last after a 401. A sidecar
/// without `/v1/drain` (an image older than this operator) answers 404 or 405: its
/// `/v1/status` running count stands in for the drain's.
async fn drain(
    probe: &dyn SidecarProbe,
    target: &ProbeTarget,
    fallback_key: Option<SigningKey>,
) -> Result<Drained, ProbeError> {
    let mut r = probe.drain(target, true).await;
    let retry = fallback_key.filter(|k| *k != target.key);
    if let (Err(e), Some(key)) = (&r, retry)
        && e.is_unauthorized()
    {
        let old = ProbeTarget {
            key,
            ..target.clone()
        };
        return probe.drain(&old, true).await.map(Drained::Drain);
    }
    if let Err(ProbeError::Http(e)) = &r
        && matches!(e.status().map(|s| s.as_u16()), Some(404 | 405))
    {
        r = match probe.status(target).await {
            Ok(report) => {
                return Ok(Drained::Old {
                    running: report.counts.running,
                });
            }
            Err(e) => Err(e),
        };
    }
    r.map(Drained::Drain)
}

/// What the sidecar said about its turns.
#[derive(Debug)]
enum Drained {
    /// A drain answer.
    Drain(DrainReport),
    /// A sidecar that cannot drain: its running turns (new ones may still start).
    Old { running: u64 },
}

/// Pure decision from the drain answer and the time since the drain began.
fn decide(drained: Result<Drained, ProbeError>, waited: Duration, turn_timeout: Duration) -> Step {
    let limit = turn_timeout + DRAIN_MARGIN;
    let (running, queued, old) = match &drained {
        Ok(Drained::Drain(r)) => (Some(r.running), r.queued, false),
        Ok(Drained::Old { running }) => (Some(*running), 0, true),
        Err(_) => (None, 0, false),
    };
    if running == Some(0) {
        return Step::Replace(if old {
            "no turn running (the sidecar is too old to drain)".to_owned()
        } else {
            format!("drained: no turn running, {queued} messages wait for the new pod")
        });
    }
    if waited >= limit {
        return Step::Replace(match &drained {
            Err(e) => format!(
                "the sidecar did not answer the drain for {}s ({e})",
                waited.as_secs()
            ),
            Ok(_) => format!(
                "{} turns still running after {}s (turn timeout {}s + {}s)",
                running.unwrap_or_default(),
                waited.as_secs(),
                turn_timeout.as_secs(),
                DRAIN_MARGIN.as_secs()
            ),
        });
    }
    let left = (limit - waited).as_secs();
    Step::Wait {
        reason: reasons::DRAINING,
        message: match &drained {
            Err(e) => format!(
                "the pod runs an older spec; draining its sidecar failed ({e}), retrying for at most {left}s"
            ),
            Ok(_) => format!(
                "the pod runs an older spec; waiting for {} running turns to end before \
                 replacing it (at most {left}s more)",
                running.unwrap_or_default()
            ),
        },
    }
}

/// The agent's turn timeout (`spec.sidecar.turnTimeout`, else the sidecar's default).
pub fn turn_timeout(agent: &CodexAgent) -> Duration {
    Duration::from_secs(
        agent
            .spec
            .sidecar
            .turn_timeout
            .unwrap_or(codex_sidecar::settings::DEFAULT_TURN_TIMEOUT_SECS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_answer(running: u64) -> Result<Drained, ProbeError> {
        Ok(Drained::Drain(DrainReport {
            draining: true,
            running,
            queued: 2,
        }))
    }

    #[test]
    fn a_drained_sidecar_is_replaced_and_a_busy_one_waits_up_to_its_turn_timeout() {
        let tt = Duration::from_secs(60);
        assert!(matches!(
            decide(drain_answer(0), Duration::ZERO, tt),
            Step::Replace(n) if n.contains("2 messages wait")
        ));
        assert!(matches!(
            decide(drain_answer(1), Duration::from_secs(89), tt),
            Step::Wait { reason: reasons::DRAINING, message } if message.contains("1 running turns")
        ));
        assert!(matches!(
            decide(drain_answer(1), Duration::from_secs(90), tt),
            Step::Replace(n) if n.contains("still running after 90s")
        ));
        // A sidecar that does not answer is retried, then replaced by the same deadline.
        assert!(matches!(
            decide(Err(ProbeError::Unauthorized), Duration::from_secs(10), tt),
            Step::Wait { .. }
        ));
        assert!(matches!(
            decide(Err(ProbeError::Unauthorized), Duration::from_secs(95), tt),
            Step::Replace(_)
        ));
        assert!(matches!(
            decide(Ok(Drained::Old { running: 0 }), Duration::ZERO, tt),
            Step::Replace(n) if n.contains("too old")
        ));
    }

    #[test]
    fn slots_are_limited_cluster_wide_and_kept_by_their_holder() {
        let r = Rollouts::new(2);
        let a = ObjectRef::<CodexAgent>::new("a").within("ns");
        let b = ObjectRef::<CodexAgent>::new("b").within("ns");
        let c = ObjectRef::<CodexAgent>::new("c").within("other");
        let t = r.take(&a, "pa").expect("free");
        assert!(r.take(&b, "pb").is_ok());
        assert_eq!(r.take(&c, "pc"), Err(2), "a third agent waits");
        // The holder keeps its slot, and its drain's start.
        assert_eq!(r.take(&a, "pa"), Ok(t));
        r.release(&a);
        assert!(r.take(&c, "pc").is_ok(), "a freed slot goes to the next");
        assert_eq!(r.in_progress(), 2);
    }
}
