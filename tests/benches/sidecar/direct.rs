//! The direct path: `codex app-server` over stdio, without the sidecar.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use codex_e2e::direct::{DirectCodex, Options, method_of};
use serde_json::{Value, json};

use crate::TURN_TIMEOUT;

/// A [`DirectCodex`] configured like the sidecar configures its children (same provider table;
/// the thread gets the sidecar's approval policy and sandbox), so that the only difference
/// between the two paths is the sidecar; returns it with its thread's id.
pub async fn direct_codex(model_base_url: &str) -> anyhow::Result<(DirectCodex, String)> {
    let options = Options {
        timeout: TURN_TIMEOUT,
        ..Options::default()
    };
    let mut direct = DirectCodex::spawn(model_base_url, &options).await?;
    direct.initialize("codex-bench").await?;
    let cwd = direct.workdir().display().to_string();
    let thread_id = direct
        .start_thread(json!({"cwd": cwd, "approvalPolicy": "never", "sandbox": "workspace-write"}))
        .await?;
    Ok((direct, thread_id))
}

/// One direct turn: the time from writing `turn/start` to reading its `turn/completed`.
pub async fn direct_timed_turn(
    direct: &mut DirectCodex,
    thread_id: &str,
    text: &str,
) -> anyhow::Result<DirectTurn> {
    let t0 = Instant::now();
    let started = direct.start_turn(thread_id, text).await?;
    let answered = t0.elapsed();
    let turn_id = started
        .pointer("/turn/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let (t1, done) = direct
        .read_until(|m| {
            method_of(m) == Some("turn/completed")
                && (turn_id.is_empty()
                    || m.pointer("/params/turn/id").and_then(Value::as_str)
                        == Some(turn_id.as_str()))
        })
        .await?
        .pop()
        .context("no turn/completed")?;
    let status = done
        .pointer("/params/turn/status")
        .and_then(Value::as_str)
        .unwrap_or("?");
    ensure!(status == "completed", "direct turn ended {status}: {done}");
    Ok(DirectTurn {
        total: t1.duration_since(t0),
        answered,
    })
}

/// One direct turn's times.
pub struct DirectTurn {
    /// `turn/start` written -> `turn/completed` read.
    pub total: Duration,
    /// `turn/start` written -> its answer read.
    pub answered: Duration,
}

/// A spawn-per-query client, as NanoClaw drives codex: every query starts `codex app-server` in
/// the same CODEX_HOME, runs `initialize`, `thread/resume` (or `thread/start` the first time),
/// `turn/start`, reads the turn to `turn/completed`, and stops the process.
pub struct SpawnPerQuery {
    /// The CODEX_HOME every process shares (its threads survive the processes).
    home: tempfile::TempDir,
    /// The model server's base URL.
    model_base_url: String,
    /// The thread every query after the first resumes.
    thread_id: Option<String>,
}

/// How one spawn-per-query query went, from the client's side.
pub struct QueryTimes {
    /// Spawn -> the turn's first `item/agentMessage/delta` read.
    pub first_delta: Duration,
    /// Spawn -> `initialize` answered.
    pub initialized: Duration,
    /// Spawn -> `thread/resume` answered.
    pub resumed: Duration,
}

impl SpawnPerQuery {
    /// A client with a fresh CODEX_HOME (configured like [`direct_codex`]'s) and no thread yet.
    ///
    /// # Errors
    /// The temporary directory could not be made.
    pub fn new(model_base_url: &str) -> anyhow::Result<SpawnPerQuery> {
        let home = tempfile::Builder::new()
            .prefix("spawn-per-query-")
            .tempdir_in(codex_e2e::harness::tmp_root())?;
        Ok(SpawnPerQuery {
            home,
            model_base_url: model_base_url.to_owned(),
            thread_id: None,
        })
    }

    /// One query: a new codex process over the shared CODEX_HOME, one turn of `text`, the process
    /// stopped afterwards (not timed).
    ///
    /// # Errors
    /// Spawning codex, a request, or the turn failed.
    pub async fn query(&mut self, text: &str) -> anyhow::Result<QueryTimes> {
        let options = Options {
            timeout: TURN_TIMEOUT,
            ..Options::default()
        };
        let t0 = Instant::now();
        let mut codex =
            DirectCodex::spawn_in(self.home.path(), &self.model_base_url, &options).await?;
        codex.initialize("codex-bench").await?;
        let initialized = t0.elapsed();
        let cwd = codex.workdir();
        let params = json!({"cwd": cwd.display().to_string(), "approvalPolicy": "never", "sandbox": "workspace-write"});
        let thread_id = match &self.thread_id {
            Some(id) => {
                let mut p = params;
                p["threadId"] = json!(id);
                p["excludeTurns"] = json!(true);
                codex.request("thread/resume", p).await?;
                id.clone()
            }
            None => {
                let id = codex.start_thread(params).await?;
                self.thread_id = Some(id.clone());
                id
            }
        };
        let resumed = t0.elapsed();
        codex.start_turn(&thread_id, text).await?;
        let (at, _) = codex
            .read_until(|m| method_of(m) == Some("item/agentMessage/delta"))
            .await?
            .pop()
            .context("no delta")?;
        let first_delta = at.duration_since(t0);
        let done = codex.collect_until("turn/completed").await?;
        let last = done.last().context("no turn/completed")?;
        let status = last
            .pointer("/params/turn/status")
            .and_then(Value::as_str)
            .unwrap_or("?");
        ensure!(status == "completed", "query turn ended {status}: {last}");
        codex.stop().await;
        Ok(QueryTimes {
            first_delta,
            initialized,
            resumed,
        })
    }
}

/// One direct turn timed from writing `turn/start` to reading its first
/// `item/agentMessage/delta`; the rest of the turn is read (untimed) up to `turn/completed`.
///
/// # Errors
/// The turn failed or codex stopped answering.
pub async fn direct_first_delta(
    direct: &mut DirectCodex,
    thread_id: &str,
    text: &str,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    direct.start_turn(thread_id, text).await?;
    let (at, _) = direct
        .read_until(|m| method_of(m) == Some("item/agentMessage/delta"))
        .await?
        .pop()
        .context("no delta")?;
    direct.collect_until("turn/completed").await?;
    Ok(at.duration_since(t0))
}
