//! Runs the real sidecar process for end-to-end tests: a private state dir, a JWT secret, a free
//! loopback port, the real `codex`, and a small HTTP client ([`Api`]) that mints its own tokens
//! (with `jsonwebtoken`, independently of the sidecar's code).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The HS256 secret every test sidecar verifies with (32+ bytes, RFC 7518 §3.2).
pub const TEST_SECRET: &str = "e2e-test-secret-0123456789abcdef-0123456789";

/// The codex binary the tests drive: `CODEX_BIN`, else the npm package's native binary, else
/// `codex` on PATH.
pub fn codex_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CODEX_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(out) = std::process::Command::new("npm")
        .args(["root", "-g"])
        .output()
    {
        let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let native = Path::new(&root)
            .join("@openai/codex/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex");
        if native.is_file() {
            return native;
        }
    }
    PathBuf::from("codex")
}

/// The sidecar binary: `CODEX_SIDECAR_BIN`, else `codex-sidecar-under-test` built beside the
/// running test (cargo puts test executables in `target/<profile>/deps/` and binaries one level up).
pub fn sidecar_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CODEX_SIDECAR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join("codex-sidecar-under-test")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running sidecar.
pub struct Sidecar {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The state dir (kept across restarts).
    pub state_dir: PathBuf,
    _tmp: tempfile::TempDir,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log_path: PathBuf,
    /// The JWT secret file.
    pub secret_file: PathBuf,
    /// `RLIMIT_NOFILE` (soft and hard) for the next (re)start, if set.
    open_files_limit: Option<u64>,
}

impl Sidecar {
    /// Starts a sidecar against `model_base_url` (a custom provider) with extra flags, and waits
    /// for `/healthz`.
    pub async fn start(model_base_url: &str, extra: &[&str]) -> anyhow::Result<Sidecar> {
        Self::start_with_env(model_base_url, extra, &[]).await
    }

    /// Like [`Sidecar::start`], with extra environment variables.
    pub async fn start_with_env(
        model_base_url: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Sidecar> {
        Self::start_provider("custom", model_base_url, "scripted", extra, envs).await
    }

    /// Starts a sidecar with `--provider provider --provider-base-url base_url --model model`
    /// (e.g. `ollama` against the scripted model, which also answers as Ollama), extra flags and
    /// environment variables, and waits for `/healthz`.
    pub async fn start_provider(
        provider: &str,
        base_url: &str,
        model: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Sidecar> {
        let tmp = tempfile::Builder::new()
            .prefix("codex-e2e-")
            .tempdir_in(tmp_root())?;
        let state_dir = tmp.path().join("state");
        let secret_file = tmp.path().join("jwt-secret");
        std::fs::write(&secret_file, format!("{TEST_SECRET}\n"))?;
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--codex-bin".into(),
            codex_bin().display().to_string(),
            "--jwt-secret-file".into(),
            secret_file.display().to_string(),
            "--provider".into(),
            provider.into(),
            "--provider-base-url".into(),
            base_url.to_owned(),
            "--model".into(),
            model.into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut s = Sidecar {
            child: None,
            base: String::new(),
            state_dir,
            log_path: tmp.path().join("sidecar.log"),
            _tmp: tmp,
            args,
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            secret_file,
            open_files_limit: None,
        };
        s.spawn().await?;
        Ok(s)
    }

    /// Starts the sidecar on a free port and waits for `/healthz`. The port is free when picked
    /// but another process can take it before the sidecar binds it (parallel tests): a start-up
    /// that fails with "Address already in use" is tried again on another port, twice at most.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            let logged = std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
            match self.spawn_on_free_port().await {
                Err(_)
                    if attempt < 2 && self.log_since(logged).contains("Address already in use") =>
                {
                    attempt += 1;
                    eprintln!("the sidecar's port was taken before it bound it; trying another");
                }
                r => return r,
            }
        }
    }

    /// What the sidecar logged after the first `from` bytes.
    fn log_since(&self, from: u64) -> String {
        let log = self.log();
        log.get(usize::try_from(from).unwrap_or(0)..)
            .unwrap_or_default()
            .to_owned()
    }

    async fn spawn_on_free_port(&mut self) -> anyhow::Result<()> {
        let port = free_port();
        self.base = format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        // A HOME of its own, so that the login shells codex runs commands in read no profile of
        // the machine's user (a stale pyenv rehash lock in root's .bashrc made every command
        // wait 60 s); a test may still set HOME itself.
        let home = self.log_path.with_file_name("home");
        std::fs::create_dir_all(&home)?;
        let mut cmd = Command::new(sidecar_bin());
        cmd.args(&self.args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("HOME", &home)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("E2E_SIDECAR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(n) = self.open_files_limit {
            // SAFETY: setrlimit is async-signal-safe and touches only the child being spawned.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().context("spawn the sidecar")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("sidecar exited with {status} at start-up:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "sidecar did not answer /healthz within 60 s:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` of the sidecar process (its codex children lose their stdin and exit).
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                // SAFETY: sends SIGKILL to the child we spawned.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            let _ = c.wait().await;
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; returns how long it took.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let Some(mut c) = self.child.take() else {
            bail!("not running")
        };
        let t0 = Instant::now();
        if let Some(pid) = c.id() {
            // SAFETY: signals the sidecar process this harness started.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(limit, c.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "sidecar exited with {status} after SIGTERM:\n{}",
                        self.log()
                    );
                }
                Ok(t0.elapsed())
            }
            Err(_) => {
                let _ = c.kill().await;
                bail!("sidecar still running {limit:?} after SIGTERM")
            }
        }
    }

    /// Sets the sidecar's open-files limit (soft and hard, so it cannot raise it) for the next
    /// (re)start; `None` inherits the harness's.
    pub fn set_open_files_limit(&mut self, n: Option<u64>) {
        self.open_files_limit = n;
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.envs.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.envs.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Waits up to `limit` for the sidecar process to exit by itself (e.g. a test-only crash
    /// point); true when it did.
    pub async fn wait_exited(&mut self, limit: Duration) -> bool {
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        let exited = tokio::time::timeout(limit, c.wait()).await.is_ok();
        if exited {
            self.child = None;
        }
        exited
    }

    /// Starts the sidecar again on the same state dir (a new port).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await;
        self.spawn().await
    }

    /// Everything the sidecar logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A client acting as subject `sub`.
    pub fn api(&self, sub: &str) -> Api {
        Api::new(&self.base, Some(mint(sub, None, 600)))
    }

    /// The pid of the sidecar process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

impl Drop for Sidecar {
    /// Stops the sidecar with SIGTERM (it stops its codex children and exits) and waits up to 10 s,
    /// so the temporary state dir can be removed without a child still writing into it.
    fn drop(&mut self) {
        let Some(pid) = self.pid() else { return };
        // SAFETY: signals the sidecar process this harness started.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // gone, or a zombie waiting to be reaped: it has finished its shutdown
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where test state dirs and scratch CODEX_HOMEs go: `target/e2e-tmp` (codex warns about a
/// CODEX_HOME under /tmp).
pub fn tmp_root() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-tmp");
    let _ = std::fs::create_dir_all(&p);
    p
}

/// An HS256 token for `sub` signed with [`TEST_SECRET`], valid for `ttl` seconds (negative:
/// already expired).
pub fn mint(sub: &str, aud: Option<&str>, ttl: i64) -> String {
    mint_with(sub, aud, ttl, TEST_SECRET.as_bytes())
}

/// An HS256 token signed with `secret`.
pub fn mint_with(sub: &str, aud: Option<&str>, ttl: i64, secret: &[u8]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut claims = json!({"sub": sub, "exp": now + ttl, "iat": now});
    if let Some(aud) = aud {
        claims["aud"] = aud.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// A small client for the sidecar API. Every call returns `(status, body as JSON or Null)`.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// A client for `base` sending `Authorization: Bearer <token>` when given.
    pub fn new(base: &str, token: Option<String>) -> Api {
        Api {
            base: base.to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// The same client pointed at another base URL (after a restart).
    pub fn with_base(&self, base: &str) -> Api {
        Api {
            base: base.to_owned(),
            ..self.clone()
        }
    }

    /// The same client with another bearer token (`None`: no `Authorization` header).
    pub fn with_token(&self, token: Option<String>) -> Api {
        Api {
            token,
            ..self.clone()
        }
    }

    /// Any request.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(Duration::from_secs(180));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"transport_error": e.to_string()})),
        }
    }

    /// `POST /v1/sessions`.
    pub async fn create(&self, body: Value) -> (u16, Value) {
        self.call("POST", "/v1/sessions", Some(body)).await
    }

    /// `POST /v1/sessions/{id}/messages`.
    pub async fn send(&self, id: &str, text: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/sessions/{id}/messages"),
            Some(json!({"text": text})),
        )
        .await
    }

    /// `POST /v1/sessions/{id}/messages` with an idempotency key.
    pub async fn send_keyed(&self, id: &str, text: &str, key: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/sessions/{id}/messages"),
            Some(json!({"text": text, "idempotency_key": key})),
        )
        .await
    }

    /// `GET /v1/sessions/{id}/events?after=&wait=`.
    pub async fn events(&self, id: &str, after: u64, wait: u64) -> (u16, Value) {
        self.call(
            "GET",
            &format!("/v1/sessions/{id}/events?after={after}&wait={wait}"),
            None,
        )
        .await
    }

    /// Polls events after `after` until one satisfies `done` (or the timeout passes); returns every
    /// event collected, in order.
    pub async fn collect_until(
        &self,
        id: &str,
        after: u64,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut cursor = after;
        let mut out: Vec<Value> = Vec::new();
        loop {
            let (status, body) = self.events(id, cursor, 5).await;
            if status != 200 {
                bail!("events poll answered {status}: {body}");
            }
            let events = body["events"].as_array().cloned().unwrap_or_default();
            for e in events {
                cursor = e["seq"].as_u64().unwrap_or(cursor);
                let finished = done(&e);
                out.push(e);
                if finished {
                    return Ok(out);
                }
            }
            if body["next"].as_u64() != Some(cursor) {
                bail!(
                    "`next` {} does not match the last seq {cursor}",
                    body["next"]
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?}; events so far: {}",
                    Value::Array(out)
                );
            }
        }
    }

    /// Collects events until `n` `result` events arrived.
    pub async fn until_results(
        &self,
        id: &str,
        after: u64,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let count = std::sync::atomic::AtomicUsize::new(0);
        self.collect_until(id, after, timeout, |e| {
            e["type"] == "result"
                && count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n
        })
        .await
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses, so they start after the last `)`): state, parent pid, ...
fn proc_stat_fields(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')').map(|(_, rest)| rest.to_owned())
}

/// The pids whose parent is `parent` (from `/proc/*/stat`); empty when /proc cannot be read.
pub fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat_fields(pid)
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// The pids of the `codex app-server` processes of a sidecar: the children of its children (each
/// codex runs under a `codex-sidecar supervise` process).
pub fn codex_pids(sidecar: u32) -> Vec<u32> {
    child_pids(sidecar)
        .into_iter()
        .flat_map(child_pids)
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    proc_stat_fields(pid).is_some_and(|rest| !rest.trim_start().starts_with('Z'))
}

/// Every file under `dir` (recursively, not through symlinked directories) whose path satisfies
/// `pred`.
pub fn files_under(dir: &Path, pred: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            // Not through symlinks: a session's alias under `<state>/warm/` would count it twice.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if pred(&p) {
                found.push(p);
            }
        }
    }
    found
}

/// Every file under `dir` called `name`.
pub fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    files_under(dir, |p| {
        p.file_name().and_then(|n| n.to_str()) == Some(name)
    })
}

/// Every event of this type.
pub fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

/// Asserts seqs are exactly `first, first+1, ...`.
pub fn assert_gapless(events: &[Value], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(first + i as u64),
            "gap or duplicate at {i}: {e}"
        );
    }
}

/// Polls `f` every 100 ms until it returns true.
///
/// # Errors
/// `f` was still false after `timeout`; the error names `what`.
pub async fn wait_for<F, Fut>(what: &str, f: F, timeout: Duration) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
