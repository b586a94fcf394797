//! A `codex app-server` child process and the JSON-RPC connection to it over stdio.
//!
//! Framing (observed with codex 0.169.0, see `shared/reference/codex-app-server.md`): one JSON object
//! per line in each direction; requests are `{"id","method","params"}` with no `"jsonrpc"` field;
//! responses carry `result` or `error{code,message}`; notifications have a `method` and no `id`;
//! server-to-client requests (approvals) have both and must be answered with the same `id`.
//!
//! [`AppServer::spawn`] starts the child and two tasks: a reader that routes responses to the
//! waiting [`AppServer::request`] and everything else to [`AppServer::incoming`], and a stderr
//! drain that keeps the last lines (redacted) for error reports. The child is the supervisor
//! (`codex-sidecar supervise`, [`crate::codex::supervise`]) with codex under it: it confines codex
//! with Landlock when isolation is on and ends every process the session started (also orphaned
//! `setsid` ones) when codex exits, when it gets SIGTERM (the [`AppServer`] is dropped or shut
//! down) or when the sidecar dies.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::redact::Redactor;

/// How long a request may wait for its response before [`RpcError::Timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How many stderr lines of a child are kept for error messages.
const STDERR_TAIL_LINES: usize = 20;
/// How long one line may take to go into a child's stdin. A child that stops reading (stuck,
/// or stopped) fills the pipe and the write waits: past this it is [`RpcError::WriteTimeout`] and
/// the child is treated as unresponsive.
pub const STDIN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// JSON-RPC error code codex answers when it is overloaded ("retry later"); see
/// `shared/reference/codex-app-server.md`.
pub const OVERLOADED: i64 = -32001;
/// How often a request answered [`OVERLOADED`] is sent again (after 0.2, 0.4, 0.8, 1.6, 3.2 s)
/// before the error is returned.
const OVERLOAD_RETRIES: u32 = 5;
/// The wait before the first retry of an overloaded request; doubled each time.
const OVERLOAD_BACKOFF: Duration = Duration::from_millis(200);

/// What can go wrong talking to a child.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The child could not be started (binary missing, not executable...).
    #[error("cannot start {bin}: {source}")]
    Spawn {
        /// The codex binary.
        bin: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The child answered with a JSON-RPC error (codex uses -32600 for most of them).
    #[error("codex error {code}: {message}")]
    Server {
        /// JSON-RPC error code.
        code: i64,
        /// Its message (already redacted).
        message: String,
    },
    /// The child exited or closed stdout before answering.
    #[error("codex app-server exited{}", stderr_suffix(.stderr_tail))]
    Closed {
        /// Last stderr lines (redacted), for the operator.
        stderr_tail: String,
    },
    /// No answer within the timeout.
    #[error("codex did not answer `{method}` within {secs} s")]
    Timeout {
        /// The request's method.
        method: String,
        /// The timeout in seconds.
        secs: u64,
    },
    /// Writing to the child's stdin failed (it is gone).
    #[error("cannot write to codex app-server: {0}")]
    Write(std::io::Error),
    /// A line could not be written to the child's stdin within [`STDIN_WRITE_TIMEOUT`]: it stopped
    /// reading. The line may be half written: the child must be stopped.
    #[error("codex app-server did not read its input for {} s", STDIN_WRITE_TIMEOUT.as_secs())]
    WriteTimeout,
}

fn stderr_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

impl RpcError {
    /// Whether the child is gone (as opposed to one request failing).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Closed { .. } | Self::Write(_) | Self::Spawn { .. } | Self::WriteTimeout
        )
    }

    /// Whether codex said it is overloaded (retry later).
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Self::Server { code, .. } if *code == OVERLOADED)
    }
}

/// The wait before retry number `attempt` (0-based) of an overloaded request, or `None` when
/// [`OVERLOAD_RETRIES`] are used up.
fn overload_backoff(attempt: u32) -> Option<Duration> {
    (attempt < OVERLOAD_RETRIES).then(|| OVERLOAD_BACKOFF * 2u32.pow(attempt))
}

/// A message from the child that is not a response to one of our requests.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A notification: `method` and `params` (`Value::Null` when absent).
    Notification {
        /// e.g. `item/agentMessage/delta`.
        method: String,
        /// The params object.
        params: Value,
    },
    /// A server-to-client request that must be answered with [`AppServer::respond`].
    Request {
        /// The request id, echoed back verbatim.
        id: Value,
        /// e.g. `item/commandExecution/requestApproval`.
        method: String,
        /// The params object.
        params: Value,
    },
}

type Pending = Arc<Mutex<HashMap<i64, oneshot::Sender<Result<Value, RpcError>>>>>;

/// The variables a codex child keeps from the sidecar's environment; every other one (API keys,
/// database passwords, cloud credentials the sidecar's own process was given) is dropped, so
/// neither codex nor a command the model runs sees it. Locale, time zone, temp dir, CA bundles
/// and proxies are kept because commands need them to work as on the host.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "TERM",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "RUST_LOG",
];

/// Clears `cmd`'s environment down to [`INHERITED_ENV`] (those the sidecar has).
pub fn clear_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for k in INHERITED_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd
}

/// How to start one child.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The codex CLI.
    pub bin: PathBuf,
    /// The child's CODEX_HOME.
    pub codex_home: PathBuf,
    /// Its working directory.
    pub cwd: PathBuf,
    /// `-c KEY=VALUE` overrides, passed through.
    pub config_overrides: Vec<String>,
    /// The child's variables besides [`INHERITED_ENV`] and `CODEX_HOME`: the provider key
    /// variable (`env_key`) codex reads.
    pub env: Vec<(String, String)>,
    /// The Landlock ruleset, `(read, write)` paths, when isolation is on.
    pub landlock: Option<(Vec<PathBuf>, Vec<PathBuf>)>,
    /// The session's private temporary directory (`TMPDIR` of codex and its commands).
    pub tmp_dir: Option<PathBuf>,
}

/// The program started as the supervisor of each codex child: this very executable (through
/// `/proc/self/exe`, so a binary replaced on disk meanwhile does not matter).
pub const SUPERVISOR_EXE: &str = "/proc/self/exe";
/// How long a supervisor told to stop (SIGTERM) has to end its descendants before the whole
/// process group is killed.
const SUPERVISOR_STOP_GRACE: Duration = Duration::from_secs(5);

/// The supervisor's command line for `spec`: `codex-sidecar supervise [--landlock --read P..
/// --write P..] -- <codex> app-server -c ...`.
fn supervised_command(spec: &SpawnSpec) -> Command {
    let mut cmd = Command::new(SUPERVISOR_EXE);
    cmd.arg("supervise");
    if let Some((read, write)) = &spec.landlock {
        cmd.arg("--landlock");
        for p in read {
            cmd.arg("--read").arg(p);
        }
        for p in write {
            cmd.arg("--write").arg(p);
        }
    }
    cmd.arg("--").arg(&spec.bin).arg("app-server");
    for kv in &spec.config_overrides {
        cmd.arg("-c").arg(kv);
    }
    cmd
}

/// A live `codex app-server` child.
#[derive(Debug)]
pub struct AppServer {
    child: Child,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    next_id: AtomicI64,
    pending: Pending,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    redactor: Arc<Redactor>,
    pid: Option<u32>,
}

impl AppServer {
    /// Starts `codex app-server` and completes the `initialize` / `initialized` handshake.
    ///
    /// # Errors
    /// [`RpcError::Spawn`] when the binary cannot run; any error of the `initialize` request.
    pub async fn spawn(spec: &SpawnSpec, redactor: Arc<Redactor>) -> Result<Self, RpcError> {
        let mut cmd = supervised_command(spec);
        if let Some(tmp) = &spec.tmp_dir {
            std::fs::create_dir_all(tmp).map_err(|source| RpcError::Spawn {
                bin: tmp.clone(),
                source,
            })?;
        }
        clear_env(&mut cmd)
            .env("CODEX_HOME", &spec.codex_home)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&spec.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Not killed on drop: SIGKILL would stop the supervisor before it ends the session's
            // processes; Drop sends it SIGTERM instead.
            .kill_on_drop(false)
            .process_group(0);
        if let Some(tmp) = &spec.tmp_dir {
            cmd.env("TMPDIR", tmp);
        }
        let mut child = cmd.spawn().map_err(|source| RpcError::Spawn {
            bin: spec.bin.clone(),
            source,
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();

        let pending: Pending = Arc::default();
        let stderr_tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (tx, incoming) = mpsc::unbounded_channel();

        if let Some(stderr) = stderr {
            let tail = stderr_tail.clone();
            let redactor = redactor.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = redactor.redact(&line).into_owned();
                    tracing::trace!(target: "codex_stderr", "{line}");
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            });
        }
        if let Some(stdout) = stdout {
            tokio::spawn(read_loop(
                stdout,
                pending.clone(),
                tx,
                stderr_tail.clone(),
                redactor.clone(),
            ));
        }

        let server = AppServer {
            child,
            stdin: tokio::sync::Mutex::new(stdin),
            next_id: AtomicI64::new(1),
            pending,
            incoming,
            stderr_tail,
            redactor,
            pid,
        };
        server
            .request(
                "initialize",
                json!({
                    "clientInfo": {
                        "name": "codex-sidecar",
                        "title": "codex-sidecar",
                        "version": env!("CARGO_PKG_VERSION"),
                    }
                }),
                DEFAULT_REQUEST_TIMEOUT,
            )
            .await?;
        server.notify("initialized", Value::Null).await?;
        Ok(server)
    }

    /// Whether the child has exited (a warm child that died while it waited).
    pub fn has_exited(&mut self) -> bool {
        self.pid.is_none() || matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Sends a request and waits for its result.
    ///
    /// # Errors
    /// [`RpcError::Server`] for a JSON-RPC error answer, [`RpcError::Timeout`], or a fatal error
    /// when the child is gone.
    pub async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        self.request_then(method, params, timeout, || {}).await
    }

    /// [`AppServer::request`], calling `written` once the request is in codex's stdin (the first
    /// time). A request codex answers with [`OVERLOADED`] is sent again with backoff (bounded).
    ///
    /// # Errors
    /// As [`AppServer::request`].
    pub async fn request_then(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
        written: impl FnOnce(),
    ) -> Result<Value, RpcError> {
        let mut written = Some(written);
        let mut attempt = 0;
        loop {
            let r = self
                .request_once(method, params.clone(), timeout, &mut written)
                .await;
            match (&r, overload_backoff(attempt)) {
                (Err(e), Some(wait)) if e.is_overloaded() => {
                    tracing::debug!(method, attempt, "codex is overloaded; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return r,
            }
        }
    }

    async fn request_once(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
        written: &mut Option<impl FnOnce()>,
    ) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        let line = json!({"id": id, "method": method, "params": params});
        if let Err(e) = self.write_line(&line).await {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&id);
            }
            return Err(e);
        }
        if let Some(f) = written.take() {
            f();
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RpcError::Closed {
                stderr_tail: self.stderr_tail(),
            }),
            Err(_) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&id);
                }
                Err(RpcError::Timeout {
                    method: method.to_owned(),
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    /// Sends a notification (no answer expected).
    ///
    /// # Errors
    /// [`RpcError::Write`] when the child's stdin is closed.
    pub async fn notify(&self, method: &str, params: Value) -> Result<(), RpcError> {
        let line = if params.is_null() {
            json!({"method": method})
        } else {
            json!({"method": method, "params": params})
        };
        self.write_line(&line).await
    }

    /// Answers a server-to-client request with a result.
    ///
    /// # Errors
    /// [`RpcError::Write`] when the child's stdin is closed.
    pub async fn respond(&self, id: Value, result: Value) -> Result<(), RpcError> {
        self.write_line(&json!({"id": id, "result": result})).await
    }

    /// Answers a server-to-client request with a JSON-RPC error.
    ///
    /// # Errors
    /// [`RpcError::Write`] when the child's stdin is closed.
    pub async fn respond_error(&self, id: Value, code: i64, message: &str) -> Result<(), RpcError> {
        self.write_line(&json!({"id": id, "error": {"code": code, "message": message}}))
            .await
    }

    /// The next notification or server request; `None` once the child has closed stdout (exited).
    pub async fn next_incoming(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// The last stderr lines of the child, redacted and joined with ` | `.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }

    /// Closes stdin (codex exits 0 when it does, and the supervisor then ends every other
    /// process of the session), waits up to `grace`; then tells the supervisor to stop
    /// (SIGTERM: it kills codex and all its descendants) and, past [`SUPERVISOR_STOP_GRACE`],
    /// kills the whole process group.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stdin.lock().await.take();
        let mut exited = tokio::time::timeout(grace, self.child.wait()).await.is_ok();
        if !exited {
            self.signal(libc::SIGTERM);
            exited = tokio::time::timeout(SUPERVISOR_STOP_GRACE, self.child.wait())
                .await
                .is_ok();
        }
        if !exited {
            self.kill_group();
            let _ = self.child.wait().await;
        }
        // The child is reaped; Drop must not signal a pid that may be reused.
        self.pid = None;
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid
            && let Ok(pid) = i32::try_from(pid)
        {
            // SAFETY: kill only sends a signal to the supervisor this AppServer started.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    fn kill_group(&mut self) {
        if let Some(pid) = self.pid
            && let Ok(pid) = i32::try_from(pid)
        {
            // SAFETY: killpg only sends a signal; the group was created by process_group(0).
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
    }

    async fn write_line(&self, value: &Value) -> Result<(), RpcError> {
        let mut text = value.to_string();
        text.push('\n');
        let write = async {
            let mut guard = self.stdin.lock().await;
            let stdin = guard.as_mut().ok_or_else(|| {
                RpcError::Write(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "stdin closed",
                ))
            })?;
            let written = async {
                stdin.write_all(text.as_bytes()).await?;
                stdin.flush().await
            };
            match tokio::time::timeout(STDIN_WRITE_TIMEOUT, written).await {
                Ok(r) => r.map_err(RpcError::Write),
                Err(_) => {
                    // Half a line may be in the pipe: nothing more may follow it.
                    guard.take();
                    Err(RpcError::WriteTimeout)
                }
            }
        };
        write.await
    }

    /// The redactor this child's output passes through.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        // The supervisor ends codex and every process it started, then exits (tokio reaps it).
        if self.pid.is_some() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.signal(libc::SIGTERM);
        }
    }
}

async fn read_loop(
    stdout: tokio::process::ChildStdout,
    pending: Pending,
    tx: mpsc::UnboundedSender<Incoming>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    redactor: Arc<Redactor>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::debug!("ignoring a non-JSON line from codex");
            continue;
        };
        let method = msg.get("method").and_then(Value::as_str).map(str::to_owned);
        let id = msg.get("id").cloned();
        match (method, id) {
            (Some(method), Some(id)) => {
                let params = msg.get("params").cloned().unwrap_or(Value::Null);
                let _ = tx.send(Incoming::Request { id, method, params });
            }
            (Some(method), None) => {
                let params = msg.get("params").cloned().unwrap_or(Value::Null);
                let _ = tx.send(Incoming::Notification { method, params });
            }
            (None, Some(id)) => {
                let Some(id) = id.as_i64() else { continue };
                let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(waiter) = waiter {
                    let result = match msg.get("error") {
                        Some(err) => Err(RpcError::Server {
                            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                            message: redactor
                                .redact(err.get("message").and_then(Value::as_str).unwrap_or(""))
                                .into_owned(),
                        }),
                        None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                    };
                    let _ = waiter.send(result);
                }
            }
            (None, None) => {}
        }
    }
    // EOF: fail every waiter so nobody hangs.
    let tail = stderr_tail
        .lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
        .unwrap_or_default();
    if let Ok(mut p) = pending.lock() {
        for (_, waiter) in p.drain() {
            let _ = waiter.send(Err(RpcError::Closed {
                stderr_tail: tail.clone(),
            }));
        }
    }
}

/// Runs `codex --version` and returns its output (e.g. `codex-cli 0.169.0`).
///
/// # Errors
/// A message naming the binary when it cannot run or exits non-zero.
pub async fn codex_version(bin: &Path) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        clear_env(&mut Command::new(bin))
            .arg("--version")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .map_err(|_| format!("{}: `--version` did not finish within 30 s", bin.display()))?
    .map_err(|e| format!("{}: cannot run: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{}: `--version` exited with {}",
            bin.display(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overloaded_request_is_retried_a_bounded_number_of_times() {
        let waits: Vec<_> = (0..).map_while(overload_backoff).collect();
        assert_eq!(waits.len(), OVERLOAD_RETRIES as usize);
        assert_eq!(waits[0], Duration::from_millis(200));
        assert_eq!(waits[4], Duration::from_millis(3200));
        let overloaded = RpcError::Server {
            code: OVERLOADED,
            message: "Server overloaded; retry later.".into(),
        };
        assert!(overloaded.is_overloaded() && !overloaded.is_fatal());
        assert!(RpcError::WriteTimeout.is_fatal());
    }
}
