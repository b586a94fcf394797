//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! reconcile at once.
//!
//! The protocol is client-go's `leaderelection` in miniature:
//! - a free Lease (absent, no holder, or not renewed for `leaseDurationSeconds` as measured on
//!   *our* clock since we last saw its record change, so clock skew between replicas does not
//!   matter) is taken by a `replace` carrying the observed `resourceVersion`; a 409 means another
//!   replica won the race;
//! - the holder renews every [`RENEW_PERIOD`]; if it cannot renew within [`RENEW_DEADLINE`] it must
//!   stop reconciling (the binary exits) before anyone else may take the Lease at
//!   [`LEASE_DURATION`];
//! - on shutdown the holder clears `holderIdentity` so a successor starts at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the holder keeps trying to renew before it gives up leadership.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between renewals and between acquisition attempts.
pub const RENEW_PERIOD: Duration = Duration::from_secs(2);

/// One replica's handle on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// The last record seen (serialized spec) and when we first saw it.
    observed: Mutex<Option<(String, Instant)>>,
}

/// The whole leader record, as client-go compares it: any change restarts the expiry clock.
fn record_key(spec: &LeaseSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

impl LeaseLock {
    /// A lock on Lease `name` (in `api`'s namespace) for the replica `identity` (its pod name).
    pub fn new(api: Api<Lease>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            observed: Mutex::new(None),
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn spec(&self, prev: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let ours = prev.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: if ours {
                prev.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                prev.and_then(|p| p.lease_transitions).unwrap_or(0)
                    + if ours || prev.is_none() { 0 } else { 1 },
            ),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the Lease. `Ok(true)`: we hold it now; `Ok(false)`: another replica does.
    ///
    /// # Errors
    /// API errors other than a lost race (409).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let prev = lease.spec.clone().unwrap_or_default();
        let holder = prev.holder_identity.as_deref().unwrap_or("");
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() && !self.expired(&prev) {
            return Ok(false);
        }
        let updated = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(self.spec(Some(&prev))),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True when the record has not changed for its `leaseDurationSeconds` on our clock.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let key = record_key(spec);
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(LEASE_DURATION);
        let Ok(mut observed) = self.observed.lock() else {
            return false;
        };
        match observed.as_ref() {
            Some((k, since)) if *k == key => since.elapsed() > duration,
            _ => {
                *observed = Some((key, Instant::now()));
                false
            }
        }
    }

    /// Clears `holderIdentity` if we hold the Lease (on shutdown), so a successor need not wait.
    ///
    /// # Errors
    /// API errors.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(lease) = self.api.get_opt(&self.name).await?
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            let mut spec = lease.spec.clone().unwrap_or_default();
            spec.holder_identity = None;
            let updated = Lease {
                metadata: lease.metadata,
                spec: Some(spec),
            };
            self.api
                .replace(&self.name, &PostParams::default(), &updated)
                .await?;
        }
        Ok(())
    }

    /// Blocks until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "lease acquisition failed")
                }
            }
            tokio::time::sleep(RENEW_PERIOD).await;
        }
    }

    /// Renews until renewal fails for [`RENEW_DEADLINE`] or another replica holds the Lease;
    /// returns then (the caller must stop reconciling).
    pub async fn keep_renewing(&self) {
        // The last renewal that succeeded, timed from when its request was *sent* (the API
        // server stamped it no earlier): leadership is given up RENEW_DEADLINE after that, before
        // any other replica may take the Lease at LEASE_DURATION.
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_PERIOD).await;
            let left = RENEW_DEADLINE.saturating_sub(last_ok.elapsed());
            if left.is_zero() {
                tracing::error!(lease = %self.name, "could not renew the lease within {RENEW_DEADLINE:?}");
                return;
            }
            let sent = tokio::time::Instant::now();
            // Each attempt is bounded by what is left of the deadline: a hung request (or the
            // client's retries) must not outlive our claim on the Lease.
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_ok = sent,
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.name, "another replica holds the lease");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %self.name, "lease renewal failed");
                }
                Err(_) => {
                    tracing::error!(lease = %self.name, "lease renewal did not answer within {left:?}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{conflict_status, testing, timeout};
    use http::{Method, StatusCode};
    use serde_json::json;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/codex-operator";

    fn lease(holder: &str, duration: i32) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "codex-operator", "namespace": "ops", "resourceVersion": "7"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                        "renewTime": "2026-01-01T00:00:00.000000Z"}})
    }

    /// A renewal whose request hangs (an API server that accepts and never answers, or a
    /// client retrying for minutes) ends leadership within the renew deadline, before the Lease
    /// can expire for the other replicas.
    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_gives_up_leadership_within_the_renew_deadline() {
        let (ctx, s, _) = testing();
        let lock = LeaseLock::new(
            Api::namespaced(ctx.client.clone(), "ops"),
            "codex-operator",
            "replica-a",
        );
        let started = tokio::time::Instant::now();
        // Nobody answers: `s` is kept alive but never serves the request.
        lock.keep_renewing().await;
        let took = started.elapsed();
        drop(s);
        assert!(
            took <= RENEW_DEADLINE + Duration::from_millis(50),
            "gave up after {took:?}"
        );
        assert!(took < LEASE_DURATION);
    }

    #[tokio::test]
    async fn absent_lease_is_created_and_held() {
        let (ctx, mut s, _) = testing();
        let lock = LeaseLock::new(
            Api::namespaced(ctx.client.clone(), "ops"),
            "codex-operator",
            "replica-a",
        );
        let server = tokio::spawn(async move {
            s.not_found(LEASE).await;
            let created = s
                .echo(
                    Method::POST,
                    "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
                )
                .await;
            assert_eq!(created.body["spec"]["holderIdentity"], "replica-a");
            assert_eq!(created.body["spec"]["leaseDurationSeconds"], 15);
            s
        });
        assert!(timeout(lock.try_acquire_or_renew()).await.expect("api"));
        timeout(server).await.expect("scenario").done().await;
    }

    #[tokio::test]
    async fn a_live_lease_of_another_replica_is_respected_until_it_expires() {
        let (ctx, mut s, _) = testing();
        let lock = LeaseLock::new(
            Api::namespaced(ctx.client.clone(), "ops"),
            "codex-operator",
            "replica-b",
        );
        let server = tokio::spawn(async move {
            // Live (15 s) lease of replica-a: no write.
            s.found(LEASE, lease("replica-a", 15)).await;
            // A lease with duration 0 that we have seen unchanged before: expired, taken over with
            // the observed resourceVersion.
            s.found(LEASE, lease("replica-a", 0)).await;
            s.found(LEASE, lease("replica-a", 0)).await;
            let put = s.echo(Method::PUT, LEASE).await;
            assert_eq!(
                put.body["metadata"]["resourceVersion"], "7",
                "optimistic concurrency"
            );
            assert_eq!(put.body["spec"]["holderIdentity"], "replica-b");
            assert_eq!(put.body["spec"]["leaseTransitions"], 1);
            s
        });
        assert!(
            !timeout(lock.try_acquire_or_renew()).await.expect("api"),
            "live lease of another replica"
        );
        assert!(
            !timeout(lock.try_acquire_or_renew()).await.expect("api"),
            "first sight of a new record"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            timeout(lock.try_acquire_or_renew()).await.expect("api"),
            "expired lease is taken"
        );
        timeout(server).await.expect("scenario").done().await;
    }

    #[tokio::test]
    async fn renewal_race_lost_on_conflict() {
        let (ctx, mut s, _) = testing();
        let lock = LeaseLock::new(
            Api::namespaced(ctx.client.clone(), "ops"),
            "codex-operator",
            "replica-a",
        );
        let server = tokio::spawn(async move {
            s.found(LEASE, lease("replica-a", 15)).await;
            s.expect(Method::PUT, LEASE, StatusCode::CONFLICT, conflict_status())
                .await;
            s
        });
        assert!(!timeout(lock.try_acquire_or_renew()).await.expect("api"));
        timeout(server).await.expect("scenario").done().await;
    }
}
