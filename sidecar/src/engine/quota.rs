//! Per-owner caps: how many sessions one owner (JWT `sub`) may hold, and how many long-polls and
//! event streams it may keep open at once, so that one tenant cannot take a sidecar's memory,
//! file descriptors or connections from the others (`--max-sessions-per-owner`,
//! `--max-polls-per-owner`; both answer 429).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use crate::error::ApiError;

/// Counts per owner, shared by the permits it hands out.
#[derive(Debug, Default, Clone)]
pub struct OwnerCounts(Arc<Mutex<HashMap<String, usize>>>);

/// One unit of an owner's count, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    counts: OwnerCounts,
    owner: String,
}

impl OwnerCounts {
    /// Takes one unit for `owner` when `held` (what it holds besides these permits) plus the
    /// permits already out stay under `cap`; else `None`.
    pub fn take(&self, owner: &str, held: usize, cap: usize) -> Option<Permit> {
        let mut counts = self.0.lock().ok()?;
        let out = counts.entry(owner.to_owned()).or_default();
        if held + *out >= cap {
            if *out == 0 {
                counts.remove(owner);
            }
            return None;
        }
        *out += 1;
        Some(Permit {
            counts: self.clone(),
            owner: owner.to_owned(),
        })
    }

    /// Permits out, all owners.
    pub fn total(&self) -> usize {
        self.0.lock().map(|c| c.values().sum()).unwrap_or_default()
    }

    /// Permits out for `owner`.
    pub fn out(&self, owner: &str) -> usize {
        self.0
            .lock()
            .ok()
            .and_then(|c| c.get(owner).copied())
            .unwrap_or_default()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.0.lock()
            && let Some(n) = counts.get_mut(&self.owner)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.owner);
            }
        }
    }
}

/// 429 `too_many_sessions`.
pub fn too_many_sessions(cap: usize) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_sessions",
        format!(
            "this owner already holds {cap} sessions (--max-sessions-per-owner); delete one first"
        ),
    )
}

/// 429 `too_many_polls`.
pub fn too_many_polls(cap: usize) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_polls",
        format!(
            "this owner already has {cap} long-polls and event streams open (--max-polls-per-owner); close one first"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_capped_per_owner_and_given_back() {
        let c = OwnerCounts::default();
        let a1 = c.take("alice", 0, 2).expect("first");
        let _a2 = c.take("alice", 0, 2).expect("second");
        assert!(c.take("alice", 0, 2).is_none(), "third is over the cap");
        assert!(c.take("bob", 0, 2).is_some(), "bob has his own count");
        assert!(
            c.take("alice", 1, 3).is_none(),
            "what alice holds counts too"
        );
        assert_eq!(c.total(), 2, "alice holds two; bob gave his back");
        drop(a1);
        assert_eq!(c.out("alice"), 1);
        assert!(
            c.take("alice", 0, 2).is_some(),
            "a permit given back frees a unit"
        );
    }
}
