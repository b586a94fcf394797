//! A direct client for the real `codex app-server` over stdio (newline-delimited JSON-RPC,
//! reference "Framing" / "Handshake"), without the sidecar: tests use it to check what codex does
//! on its own, the benchmark to compare against the sidecar.
//!
//! [`DirectCodex::spawn`] starts codex ([`codex_bin`]) in a fresh CODEX_HOME whose config.toml
//! points a custom provider at a Responses-API base URL, the way the sidecar configures its
//! children for `--provider custom`. Every message codex writes is kept with the [`Instant`] the
//! reader task parsed it, so that callers can time notifications.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::harness::codex_bin;

/// A message read from codex, with the instant the reader task parsed it.
pub type Received = (Instant, Value);

/// How [`DirectCodex::spawn`] sets codex up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The provider's `env_key` and the value codex finds in that variable (it sends it as
    /// `Authorization: Bearer <value>`); `None`: no `env_key`.
    pub api_key: Option<(String, String)>,
    /// `request_max_retries = 0` and `stream_max_retries = 0` for the provider, so that a failed
    /// model request fails the turn at once.
    pub no_retries: bool,
    /// How long one read waits for a message from codex before giving up.
    pub timeout: Duration,
}

impl Default for Options {
    /// No `env_key`, codex's default retries, a 60 s read timeout.
    fn default() -> Options {
        Options {
            api_key: None,
            no_retries: false,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A `codex app-server` child process driven over its stdio; killed when dropped.
pub struct DirectCodex {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Every message codex writes, with the instant the reader task parsed it.
    rx: mpsc::UnboundedReceiver<Received>,
    /// Messages read while waiting for something else.
    backlog: VecDeque<Received>,
    next_id: u64,
    timeout: Duration,
    home: Home,
}

/// The CODEX_HOME a [`DirectCodex`] runs in: its own (removed with it) or the caller's.
enum Home {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Home::Temp(t) => t.path(),
            Home::Kept(p) => p,
        }
    }
}

impl DirectCodex {
    /// Spawns `codex app-server` with a fresh CODEX_HOME whose config.toml matches the sidecar's
    /// for `--provider custom --provider-base-url <model_base_url> --model scripted`, plus what
    /// `options` asks for. Its working directory is [`DirectCodex::workdir`].
    ///
    /// # Errors
    /// Writing the CODEX_HOME, or spawning codex, failed.
    pub async fn spawn(model_base_url: &str, options: &Options) -> anyhow::Result<DirectCodex> {
        let home = tempfile::Builder::new()
            .prefix("direct-codex-")
            .tempdir_in(crate::harness::tmp_root())?;
        Self::spawn_home(Home::Temp(home), model_base_url, options).await
    }

    /// Like [`DirectCodex::spawn`], in the caller's CODEX_HOME `home` (created if missing, kept
    /// when this codex is dropped): what a spawn-per-query client does, one process per query
    /// over a CODEX_HOME that keeps its threads between them.
    ///
    /// # Errors
    /// As [`DirectCodex::spawn`].
    pub async fn spawn_in(
        home: &Path,
        model_base_url: &str,
        options: &Options,
    ) -> anyhow::Result<DirectCodex> {
        std::fs::create_dir_all(home)?;
        Self::spawn_home(Home::Kept(home.to_owned()), model_base_url, options).await
    }

    async fn spawn_home(
        home: Home,
        model_base_url: &str,
        options: &Options,
    ) -> anyhow::Result<DirectCodex> {
        std::fs::write(
            home.path().join("config.toml"),
            config_toml(model_base_url, options),
        )?;
        let workdir = home.path().join("workspace");
        std::fs::create_dir_all(&workdir)?;
        let stderr = std::fs::File::create(home.path().join("stderr.log"))?;
        let mut cmd = Command::new(codex_bin());
        cmd.arg("app-server")
            .env("CODEX_HOME", home.path())
            .current_dir(&workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some((key, value)) = &options.api_key {
            cmd.env(key, value);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", codex_bin().display()))?;
        let stdin = child.stdin.take().context("codex has no stdin")?;
        let stdout = child.stdout.take().context("codex has no stdout")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send((at, v)).is_err()
                {
                    break;
                }
            }
        });
        Ok(DirectCodex {
            child,
            stdin: Some(stdin),
            rx,
            backlog: VecDeque::new(),
            next_id: 1,
            timeout: options.timeout,
            home,
        })
    }

    /// The working directory codex runs in (`workspace/` inside its CODEX_HOME).
    pub fn workdir(&self) -> PathBuf {
        self.home.path().join("workspace")
    }

    /// The last 4000 bytes codex wrote to stderr.
    fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(self.home.path().join("stderr.log")).unwrap_or_default();
        let start = s.len().saturating_sub(4000);
        s.get(start..).unwrap_or_default().to_owned()
    }

    async fn send(&mut self, msg: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        let stdin = self.stdin.as_mut().context("codex stdin already closed")?;
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// The next message codex writes (the backlog aside).
    async fn recv(&mut self) -> anyhow::Result<Received> {
        match tokio::time::timeout(self.timeout, self.rx.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => bail!("codex closed stdout; stderr:\n{}", self.stderr_tail()),
            Err(_) => bail!(
                "no message from codex within {:?}; stderr:\n{}",
                self.timeout,
                self.stderr_tail()
            ),
        }
    }

    /// Sends a request and returns its `result`; every other message read meanwhile is kept for
    /// [`DirectCodex::read_until`].
    ///
    /// # Errors
    /// Codex answered with an error, closed stdout, or said nothing within the timeout.
    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"id": id, "method": method, "params": params}))
            .await?;
        loop {
            let (at, msg) = self.recv().await?;
            if msg.get("id") == Some(&json!(id)) && msg.get("method").is_none() {
                if let Some(err) = msg.get("error") {
                    bail!("{method} failed: {err}");
                }
                return Ok(msg.get("result").cloned().unwrap_or(Value::Null));
            }
            self.backlog.push_back((at, msg));
        }
    }

    /// `initialize` (as client `client_name`), then the `initialized` notification.
    ///
    /// # Errors
    /// As [`DirectCodex::request`].
    pub async fn initialize(&mut self, client_name: &str) -> anyhow::Result<()> {
        self.request(
            "initialize",
            json!({"clientInfo": {"name": client_name, "title": client_name, "version": "0.1.0"}}),
        )
        .await?;
        self.send(&json!({"method": "initialized"})).await
    }

    /// `thread/start` with `params`; returns the new thread's id.
    ///
    /// # Errors
    /// As [`DirectCodex::request`], or a result without `thread.id`.
    pub async fn start_thread(&mut self, params: Value) -> anyhow::Result<String> {
        let res = self.request("thread/start", params).await?;
        res.pointer("/thread/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("thread/start result without thread.id: {res}"))
    }

    /// `turn/start` of one text message on `thread_id`; returns the request's result (its
    /// `turn.id`). The turn's notifications follow (see [`DirectCodex::read_until`]).
    ///
    /// # Errors
    /// As [`DirectCodex::request`].
    pub async fn start_turn(&mut self, thread_id: &str, text: &str) -> anyhow::Result<Value> {
        self.request(
            "turn/start",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": text}]}),
        )
        .await
    }

    /// Runs one text turn; returns its notifications through the first `turn/completed`.
    ///
    /// # Errors
    /// As [`DirectCodex::start_turn`] and [`DirectCodex::collect_until`].
    pub async fn turn(&mut self, thread_id: &str, text: &str) -> anyhow::Result<Vec<Value>> {
        self.start_turn(thread_id, text).await?;
        self.collect_until("turn/completed").await
    }

    /// Every message up to and including the first one that satisfies `done`, each with the
    /// instant it was read. Codex never asks for approval here (policy `never`): a request from
    /// codex is an error.
    ///
    /// # Errors
    /// A request from codex, codex closed stdout, or a read timed out.
    pub async fn read_until(
        &mut self,
        mut done: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<Vec<Received>> {
        let mut seen = Vec::new();
        loop {
            let (at, msg) = match self.backlog.pop_front() {
                Some(m) => m,
                None => self.recv().await?,
            };
            if msg.get("id").is_some() && msg.get("method").is_some() {
                bail!("unexpected request from codex (approvals are off): {msg}");
            }
            let finished = done(&msg);
            seen.push((at, msg));
            if finished {
                return Ok(seen);
            }
        }
    }

    /// Every notification up to and including the first one named `method`.
    ///
    /// # Errors
    /// As [`DirectCodex::read_until`].
    pub async fn collect_until(&mut self, method: &str) -> anyhow::Result<Vec<Value>> {
        let seen = self.read_until(|m| method_of(m) == Some(method)).await?;
        Ok(seen.into_iter().map(|(_, msg)| msg).collect())
    }

    /// Closes codex's stdin (it exits) and waits for it, at most 5 s.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for DirectCodex {
    /// Kills codex (a no-op once it has exited).
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The `method` of a JSON-RPC message (`None` for a response).
pub fn method_of(msg: &Value) -> Option<&str> {
    msg.get("method").and_then(Value::as_str)
}

/// config.toml for [`DirectCodex::spawn`]: what the sidecar writes for a custom provider.
fn config_toml(model_base_url: &str, options: &Options) -> String {
    let mut config = format!(
        "cli_auth_credentials_store = \"file\"\nmodel = \"scripted\"\nmodel_provider = \"sidecar\"\n\n\
         [model_providers.sidecar]\nname = \"codex-sidecar custom provider\"\nbase_url = {}\nwire_api = \"responses\"\n",
        toml_string(model_base_url)
    );
    if let Some((key, _)) = &options.api_key {
        config.push_str(&format!("env_key = {}\n", toml_string(key)));
    }
    if options.no_retries {
        config.push_str("request_max_retries = 0\nstream_max_retries = 0\n");
    }
    config
}

/// A TOML basic string for `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\"), "\"a\\\"b\\\\\"");
        assert_eq!(toml_string("x\ny"), "\"x\\u000Ay\"");
    }

    #[test]
    fn config_has_the_provider_and_the_options() {
        let plain = config_toml("http://127.0.0.1:1/v1", &Options::default());
        assert!(plain.contains("base_url = \"http://127.0.0.1:1/v1\"\n"));
        assert!(!plain.contains("env_key") && !plain.contains("retries"));
        let options = Options {
            api_key: Some(("KEY_VAR".into(), "secret".into())),
            no_retries: true,
            ..Options::default()
        };
        let full = config_toml("http://h/v1", &options);
        assert!(full.contains("env_key = \"KEY_VAR\"\n"), "{full}");
        assert!(full.contains("request_max_retries = 0\nstream_max_retries = 0\n"));
        assert!(!full.contains("secret"));
    }
}
