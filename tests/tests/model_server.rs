//! Drives the REAL `codex app-server` against `ScriptedModel` over stdio (newline-delimited
//! JSON, reference "Framing" / "Handshake") to prove the scripted server is good enough for
//! codex: echo replies, `[[tokens=N]]` usage, bearer key from the provider's `env_key`, and
//! compaction requests.
//!
//! The codex binary comes from `CODEX_BIN`, else the native binary of the npm package, else
//! `codex` on PATH. The tiny JSON-RPC client below is local to this file on purpose.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use codex_e2e::model::{COMPACTION_PROMPT_PREFIX, COMPACTION_SUMMARY, ScriptedModel};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(30);
const NATIVE_CODEX: &str = "/usr/lib/node_modules/@openai/codex/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex";
const API_KEY: &str = "scripted-test-key";

fn codex_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CODEX_BIN") {
        return p.into();
    }
    if std::path::Path::new(NATIVE_CODEX).exists() {
        return NATIVE_CODEX.into();
    }
    "codex".into()
}

/// A `codex app-server` child process with a temporary CODEX_HOME.
struct AppServer {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::UnboundedReceiver<Value>,
    /// Messages read while waiting for something else.
    backlog: VecDeque<Value>,
    next_id: u64,
    home: tempfile::TempDir,
}

impl AppServer {
    async fn spawn(model: &ScriptedModel) -> anyhow::Result<AppServer> {
        let home = tempfile::tempdir()?;
        let config = format!(
            r#"model = "scripted"
model_provider = "scripted"
approval_policy = "never"
sandbox_mode = "read-only"

[model_providers.scripted]
name = "scripted"
base_url = "{}"
env_key = "SCRIPTED_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"#,
            model.base_url()
        );
        std::fs::write(home.path().join("config.toml"), config)?;
        std::fs::create_dir_all(home.path().join("work"))?;
        let stderr = std::fs::File::create(home.path().join("stderr.log"))?;
        let mut child = Command::new(codex_bin())
            .arg("app-server")
            .env("CODEX_HOME", home.path())
            .env("SCRIPTED_API_KEY", API_KEY)
            .current_dir(home.path().join("work"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", codex_bin().display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Ok(AppServer {
            child,
            stdin,
            rx,
            backlog: VecDeque::new(),
            next_id: 1,
            home,
        })
    }

    fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(self.home.path().join("stderr.log")).unwrap_or_default();
        let start = s.len().saturating_sub(4000);
        s.get(start..).unwrap_or_default().to_string()
    }

    async fn send(&mut self, msg: Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(&msg)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<Value> {
        match tokio::time::timeout(TIMEOUT, self.rx.recv()).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => bail!("codex closed stdout; stderr:\n{}", self.stderr_tail()),
            Err(_) => bail!(
                "no message from codex within {TIMEOUT:?}; stderr:\n{}",
                self.stderr_tail()
            ),
        }
    }

    /// Sends a request and returns its `result`; other messages go to the backlog.
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, "method": method, "params": params}))
            .await?;
        loop {
            let msg = self.recv().await?;
            if msg.get("id") == Some(&json!(id)) && msg.get("method").is_none() {
                if let Some(err) = msg.get("error") {
                    bail!("{method} failed: {err}");
                }
                return Ok(msg.get("result").cloned().unwrap_or(Value::Null));
            }
            self.backlog.push_back(msg);
        }
    }

    /// Returns every notification up to and including the first one named `method`.
    async fn collect_until(&mut self, method: &str) -> anyhow::Result<Vec<Value>> {
        let mut seen = Vec::new();
        loop {
            let msg = match self.backlog.pop_front() {
                Some(m) => m,
                None => self.recv().await?,
            };
            if msg.get("id").is_some() && msg.get("method").is_some() {
                bail!("unexpected server request (approvals are off): {msg}");
            }
            let done = msg.get("method").and_then(Value::as_str) == Some(method);
            seen.push(msg);
            if done {
                return Ok(seen);
            }
        }
    }

    async fn initialize(&mut self) -> anyhow::Result<()> {
        self.request(
            "initialize",
            json!({"clientInfo": {"name": "codex-e2e", "title": "codex-e2e model test", "version": "0.1.0"}}),
        )
        .await?;
        self.send(json!({"method": "initialized"})).await
    }

    async fn start_thread(&mut self) -> anyhow::Result<String> {
        let res = self
            .request(
                "thread/start",
                json!({"model": "scripted", "approvalPolicy": "never"}),
            )
            .await?;
        res.pointer("/thread/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("thread/start result without thread.id: {res}"))
    }

    /// Runs one text turn and returns its notifications (through `turn/completed`).
    async fn turn(&mut self, thread_id: &str, text: &str) -> anyhow::Result<Vec<Value>> {
        self.request(
            "turn/start",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": text}]}),
        )
        .await?;
        self.collect_until("turn/completed").await
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn of_method<'a>(notes: &'a [Value], method: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    notes
        .iter()
        .filter(move |n| n.get("method").and_then(Value::as_str) == Some(method))
}

fn turn_status(notes: &[Value]) -> Option<&str> {
    of_method(notes, "turn/completed")
        .last()?
        .pointer("/params/turn/status")?
        .as_str()
}

fn agent_text(notes: &[Value]) -> Option<String> {
    of_method(notes, "item/completed")
        .filter_map(|n| n.pointer("/params/item"))
        .filter(|i| i.get("type").and_then(Value::as_str) == Some("agentMessage"))
        .filter_map(|i| i.get("text").and_then(Value::as_str))
        .last()
        .map(str::to_string)
}

fn last_input_tokens(notes: &[Value]) -> Option<u64> {
    of_method(notes, "thread/tokenUsage/updated")
        .last()?
        .pointer("/params/tokenUsage/last/inputTokens")?
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_runs_a_turn_against_the_scripted_model() -> anyhow::Result<()> {
    let model = ScriptedModel::start_with_key(API_KEY).await?;
    let mut codex = AppServer::spawn(&model).await?;
    codex.initialize().await?;
    let thread_id = codex.start_thread().await?;

    let notes = codex.turn(&thread_id, "hello [[tokens=5000]]").await?;
    assert_eq!(
        turn_status(&notes),
        Some("completed"),
        "notifications: {notes:#?}"
    );
    assert_eq!(
        agent_text(&notes).as_deref(),
        Some("echo: hello [[tokens=5000]]")
    );
    let deltas: String = of_method(&notes, "item/agentMessage/delta")
        .filter_map(|n| n.pointer("/params/delta").and_then(Value::as_str))
        .collect();
    assert_eq!(deltas, "echo: hello [[tokens=5000]]");
    assert_eq!(
        last_input_tokens(&notes),
        Some(5000),
        "notifications: {notes:#?}"
    );

    let requests = model.requests();
    assert_eq!(requests.len(), 1, "requests: {requests:#?}");
    let req = &requests[0];
    assert!(!req.is_compaction);
    assert_eq!(
        req.authorization.as_deref(),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(req.last_user_text.as_deref(), Some("hello [[tokens=5000]]"));
    assert_eq!(req.body.get("stream"), Some(&json!(true)));
    assert_eq!(req.body.get("prompt_cache_key"), Some(&json!(thread_id)));

    // A second turn: codex resends the conversation, only the last user message counts.
    let notes = codex
        .turn(&thread_id, "again [[reply=custom answer]]")
        .await?;
    assert_eq!(turn_status(&notes), Some("completed"));
    assert_eq!(agent_text(&notes).as_deref(), Some("custom answer"));
    assert_ne!(last_input_tokens(&notes), Some(5000));
    let second = &model.requests()[1];
    let body = second.body.to_string();
    assert!(
        body.contains("echo: hello [[tokens=5000]]"),
        "history resent: {body}"
    );
    model.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_compaction_goes_through_the_scripted_model() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut codex = AppServer::spawn(&model).await?;
    codex.initialize().await?;
    let thread_id = codex.start_thread().await?;

    let notes = codex
        .turn(&thread_id, "before compaction [[tokens=90000]]")
        .await?;
    assert_eq!(
        turn_status(&notes),
        Some("completed"),
        "notifications: {notes:#?}"
    );
    assert_eq!(model.compaction_requests(), 0);

    codex
        .request("thread/compact/start", json!({"threadId": thread_id}))
        .await?;
    let notes = codex.collect_until("turn/completed").await?;
    assert_eq!(
        turn_status(&notes),
        Some("completed"),
        "notifications: {notes:#?}"
    );
    assert!(
        of_method(&notes, "item/completed")
            .any(|n| n.pointer("/params/item/type") == Some(&json!("contextCompaction"))),
        "no contextCompaction item: {notes:#?}"
    );
    assert_eq!(
        model.compaction_requests(),
        1,
        "requests: {:#?}",
        model.requests()
    );
    let compaction = model
        .requests()
        .into_iter()
        .find(|r| r.is_compaction)
        .context("no compaction")?;
    assert!(
        compaction
            .last_user_text
            .as_deref()
            .unwrap_or_default()
            .starts_with(COMPACTION_PROMPT_PREFIX)
    );

    // The next turn carries the summary instead of the old conversation.
    let notes = codex.turn(&thread_id, "after compaction").await?;
    assert_eq!(
        agent_text(&notes).as_deref(),
        Some("echo: after compaction")
    );
    let last = model.requests().pop().context("no request")?;
    assert!(!last.is_compaction);
    assert!(
        last.body.to_string().contains(COMPACTION_SUMMARY),
        "summary missing: {}",
        last.body
    );
    assert_eq!(model.compaction_requests(), 1);
    model.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_hang_interrupt_and_failure_against_the_scripted_model() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut codex = AppServer::spawn(&model).await?;
    codex.initialize().await?;
    let thread_id = codex.start_thread().await?;

    // Steering: a message sent while a turn runs joins it; codex drops the slow stream and
    // asks again with both messages as separate user items. The echo shows both.
    codex
        .request(
            "turn/start",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": "slow [[delay_ms=3000]]"}]}),
        )
        .await?;
    model.wait_for_requests(1, TIMEOUT).await?;
    codex
        .request(
            "turn/start",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": "steer one"}]}),
        )
        .await?;
    let notes = codex.collect_until("turn/completed").await?;
    assert_eq!(
        turn_status(&notes),
        Some("completed"),
        "notifications: {notes:#?}"
    );
    assert_eq!(
        agent_text(&notes).as_deref(),
        Some("echo: slow [[delay_ms=3000]]\nsteer one")
    );
    let steered = model.requests().pop().context("no request")?;
    assert_eq!(
        steered.turn_user_texts,
        vec!["slow [[delay_ms=3000]]", "steer one"]
    );
    assert_eq!(steered.last_user_text.as_deref(), Some("steer one"));

    // [[hang]] keeps the stream open until codex lets go of it on turn/interrupt.
    let before = model.requests().len();
    let started = codex
        .request(
            "turn/start",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": "hang [[hang]]"}]}),
        )
        .await?;
    let turn_id = started
        .pointer("/turn/id")
        .and_then(Value::as_str)
        .context("no turn id")?
        .to_string();
    model.wait_for_requests(before + 1, TIMEOUT).await?;
    assert_eq!(model.open_streams(), 1);
    codex
        .request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
        )
        .await?;
    let notes = codex.collect_until("turn/completed").await?;
    assert_eq!(
        turn_status(&notes),
        Some("interrupted"),
        "notifications: {notes:#?}"
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while model.open_streams() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hung stream still open after interrupt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // [[fail=500]] fails the turn (the provider has request_max_retries = 0).
    let notes = codex.turn(&thread_id, "boom [[fail=500]]").await?;
    assert_eq!(
        turn_status(&notes),
        Some("failed"),
        "notifications: {notes:#?}"
    );
    assert!(
        of_method(&notes, "error").next().is_some(),
        "no error notification: {notes:#?}"
    );
    assert_eq!(model.requests().pop().context("no request")?.status, 500);

    // Messages of the interrupted and failed turns are not echoed again.
    let notes = codex.turn(&thread_id, "after").await?;
    assert_eq!(agent_text(&notes).as_deref(), Some("echo: after"));
    assert!(
        model.unhandled_requests().is_empty(),
        "{:?}",
        model.unhandled_requests()
    );
    model.shutdown().await;
    Ok(())
}
