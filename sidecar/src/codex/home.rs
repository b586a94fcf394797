//! Each session's private CODEX_HOME: the generated `config.toml` (provider, model, MCP servers) and
//! a 0600 copy of auth.json, plus [`AuthStore`], which keeps those copies from diverging.
//!
//! Why the store: with a ChatGPT login, codex refreshes the tokens in auth.json inside the
//! CODEX_HOME of whichever session made the request, and OpenAI refresh tokens rotate (the old one
//! stops working). So after every turn the session's copy is compared with the master copy in
//! `<state-dir>/auth/auth.json`; a newer copy (by its `last_refresh` field, else by mtime) becomes
//! the master and is written to every other session's CODEX_HOME. Codex re-reads auth.json from
//! disk when a request is refused, so even live children pick up the new tokens.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::codex::rpc::SpawnSpec;
use crate::config::{CodexAuth, Config};
use crate::redact::Redactor;
use crate::settings::ProviderKind;

/// The provider id written to config.toml for `--provider custom` (ids `openai`, `ollama`,
/// `lmstudio` are reserved by codex).
pub const CUSTOM_PROVIDER_ID: &str = "sidecar";
/// The provider id written to config.toml for `--provider ollama`.
pub const OLLAMA_PROVIDER_ID: &str = "sidecar-ollama";
/// The provider id written to config.toml for `--provider lmstudio`.
pub const LMSTUDIO_PROVIDER_ID: &str = "sidecar-lmstudio";

/// The one provider codex may use, as `(id, [model_providers.<id>] table)`; `None` for `openai`
/// (codex's built-in provider).
///
/// Every other provider is written out in full rather than left to codex's built-in `ollama`
/// and `lmstudio` entries, so that the generated config.toml alone says where requests go
/// (`base_url`, Responses API) and can carry `stream_idle_timeout_ms`; `model_provider` names
/// it, and no other provider, profile or OSS default appears, so codex has no path to any other
/// (cloud) provider. Requests that fail are not retried elsewhere: codex never falls back.
fn provider_table(
    config: &Config,
    redactor: &Arc<Redactor>,
) -> Option<(&'static str, toml::Table)> {
    let (id, name) = match config.provider {
        ProviderKind::Openai => return None,
        ProviderKind::Ollama => (OLLAMA_PROVIDER_ID, "Ollama (codex-sidecar)"),
        ProviderKind::Lmstudio => (LMSTUDIO_PROVIDER_ID, "LM Studio (codex-sidecar)"),
        ProviderKind::Custom => (CUSTOM_PROVIDER_ID, "codex-sidecar custom provider"),
    };
    let mut p = toml::Table::new();
    p.insert("name".into(), name.into());
    p.insert("base_url".into(), config.provider_base().into());
    if let Some(key) = &config.provider_env_key {
        p.insert("env_key".into(), key.clone().into());
        if let Ok(v) = std::env::var(key) {
            redactor.add(&v);
        }
    }
    p.insert("wire_api".into(), "responses".into());
    if let Some(ms) = config.stream_idle_timeout_ms {
        p.insert(
            "stream_idle_timeout_ms".into(),
            toml::Value::Integer(i64::try_from(ms).unwrap_or(i64::MAX)),
        );
    }
    Some((id, p))
}

/// Whether `path` is a regular file of mode 0600 holding exactly `bytes`.
fn holds_private(path: &Path, bytes: &[u8]) -> bool {
    let mode_ok = fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o777 == 0o600);
    mode_ok && fs::read(path).is_ok_and(|b| b == bytes)
}

/// Writes `bytes` to `path` atomically (temp file + rename) with mode 0600.
///
/// # Errors
/// Any I/O error.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Flushes a directory's entries (a create, rename or unlink in it) to stable storage: without
/// it a file that was itself fsynced can still vanish after a power loss.
///
/// # Errors
/// Any I/O error.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Creates a directory (and parents) with mode 0700, and syncs the parent of every directory it
/// created, so that the new entries survive a power loss.
///
/// # Errors
/// Any I/O error.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let created: Vec<&Path> = path.ancestors().take_while(|p| !p.is_dir()).collect();
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    for dir in created {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// How every session's codex is set up: config.toml text, auth, environment and `-c` overrides.
#[derive(Debug)]
pub struct CodexSetup {
    bin: PathBuf,
    config_toml: String,
    overrides: Vec<String>,
    env: Vec<(String, String)>,
    auth: Option<AuthStore>,
    api_key: Option<String>,
    isolation: crate::codex::isolation::Isolation,
    sandbox: crate::settings::SandboxMode,
}

impl CodexSetup {
    /// Renders the config and initialises the auth master copy from `--auth-json`.
    ///
    /// # Errors
    /// I/O errors on the state dir or the auth.json (message names the path, never the content).
    pub fn new(config: &Config, redactor: &Arc<Redactor>) -> io::Result<Self> {
        let mut table = toml::Table::new();
        table.insert("cli_auth_credentials_store".into(), "file".into());
        if let Some(model) = &config.model {
            table.insert("model".into(), model.clone().into());
        }
        // The provider key variables codex reads (`env_key`: ours, and any a `-c` names) are
        // the only ones it gets beyond the allowlist (`rpc::INHERITED_ENV`); commands the model
        // runs never see them.
        let mut key_vars: Vec<String> = config.provider_env_key.iter().cloned().collect();
        key_vars.extend(config.codex_config.iter().filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.trim()
                .ends_with("env_key")
                .then(|| v.trim().trim_matches('"').to_owned())
        }));
        key_vars.sort();
        key_vars.dedup();
        let env: Vec<(String, String)> = key_vars
            .iter()
            .filter_map(|k| Some((k.clone(), std::env::var(k).ok()?)))
            .collect();
        let mut policy = toml::Table::new();
        policy.insert("inherit".into(), "all".into());
        policy.insert("ignore_default_excludes".into(), false.into());
        policy.insert(
            "exclude".into(),
            key_vars
                .iter()
                .cloned()
                .map(toml::Value::from)
                .collect::<Vec<_>>()
                .into(),
        );
        table.insert("shell_environment_policy".into(), policy.into());
        if let Some((id, provider)) = provider_table(config, redactor) {
            table.insert("model_provider".into(), id.into());
            let mut providers = toml::Table::new();
            providers.insert(id.into(), provider.into());
            table.insert("model_providers".into(), providers.into());
        }
        if !config.mcp_servers.is_empty() {
            let mut servers = toml::Table::new();
            for (name, s) in &config.mcp_servers {
                let mut t = toml::Table::new();
                t.insert("command".into(), s.command.clone().into());
                if !s.args.is_empty() {
                    t.insert(
                        "args".into(),
                        s.args
                            .iter()
                            .cloned()
                            .map(toml::Value::from)
                            .collect::<Vec<_>>()
                            .into(),
                    );
                }
                if !s.env.is_empty() {
                    // An MCP server's environment holds its credentials.
                    for v in s.env.values() {
                        redactor.add(v);
                    }
                    let env: toml::Table = s
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().into()))
                        .collect();
                    t.insert("env".into(), env.into());
                }
                servers.insert(name.clone(), t.into());
            }
            table.insert("mcp_servers".into(), servers.into());
        }
        let config_toml = format!(
            "# Generated by codex-sidecar for this session; rewritten at every start.\n{}",
            toml::to_string(&table).map_err(io::Error::other)?
        );

        redactor.add_config_overrides(&config.codex_config);
        let (auth, api_key) = match &config.codex_auth {
            CodexAuth::AuthJson(src) => (
                Some(AuthStore::init(&config.state_dir, src, redactor)?),
                None,
            ),
            CodexAuth::ApiKey(key) => {
                redactor.add(key);
                (None, Some(key.clone()))
            }
            CodexAuth::None => (None, None),
        };
        Ok(Self {
            bin: config.codex_bin.clone(),
            config_toml,
            overrides: config.codex_config.clone(),
            env,
            auth,
            api_key,
            isolation: config.isolation.clone(),
            sandbox: config.sandbox,
        })
    }

    /// Creates `home` (0700), writes config.toml and installs the newest auth.json (0600).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn prepare_home(&self, home: &Path) -> io::Result<()> {
        create_private_dir(home)?;
        // Rewritten (fsync, rename, directory fsync) only when it differs: a session's every
        // codex start comes here, and the file rarely changes.
        let config = home.join("config.toml");
        if !holds_private(&config, self.config_toml.as_bytes()) {
            write_private(&config, self.config_toml.as_bytes())?;
        }
        if let Some(auth) = &self.auth {
            auth.install(home)?;
        }
        Ok(())
    }

    /// The API key to log in with (`account/login/start`) when the home has no auth.json yet.
    pub fn api_key_login(&self, home: &Path) -> Option<&str> {
        self.api_key
            .as_deref()
            .filter(|_| !home.join("auth.json").exists())
    }

    /// After a turn in `home`: adopts its auth.json if codex refreshed it, and propagates.
    pub fn sync_auth_from(&self, home: &Path) {
        if let Some(auth) = &self.auth
            && let Err(e) = auth.sync_from(home)
        {
            tracing::warn!(error = %e, "auth.json sync failed");
        }
    }

    /// Registers a session's CODEX_HOME for auth propagation.
    pub fn register_home(&self, home: &Path) {
        if let Some(auth) = &self.auth {
            auth.register(home);
        }
    }

    /// Forgets a deleted session's CODEX_HOME.
    pub fn unregister_home(&self, home: &Path) {
        if let Some(auth) = &self.auth {
            auth.unregister(home);
        }
    }

    /// How to spawn this session's child; `home` and `cwd` are the `codex-home` and `workspace`
    /// of the session directory that also holds its `tmp` (and, under isolation, the Landlock
    /// ruleset that confines it to those three).
    pub fn spawn_spec(&self, home: &Path, cwd: &Path) -> SpawnSpec {
        let dir = home.parent().unwrap_or(home);
        let landlock = self.isolation.session_rules(dir, self.sandbox);
        if landlock.is_some() {
            // A ruleset can only name directories that exist: the images of messages that
            // arrive while this child runs go here.
            let images = dir.join(crate::codex::isolation::SESSION_IMAGES_DIR);
            if let Err(e) = create_private_dir(&images) {
                tracing::warn!(dir = %images.display(), error = %e, "cannot create the session's images directory");
            }
        }
        SpawnSpec {
            bin: self.bin.clone(),
            codex_home: home.to_path_buf(),
            cwd: cwd.to_path_buf(),
            config_overrides: self.overrides.clone(),
            env: self.env.clone(),
            landlock,
            tmp_dir: Some(dir.join(crate::codex::isolation::SESSION_TMP_DIR)),
        }
    }

    /// The generated config.toml (for tests and `/v1/status` diagnostics; holds no secret).
    pub fn config_toml(&self) -> &str {
        &self.config_toml
    }
}

/// The master auth.json and the set of CODEX_HOMEs that hold copies of it.
#[derive(Debug)]
pub struct AuthStore {
    master: PathBuf,
    homes: Mutex<BTreeSet<PathBuf>>,
    /// Learns every token codex refreshes, so new tokens are scrubbed like the first ones.
    redactor: Arc<Redactor>,
}

/// One auth.json as read from disk: its bytes and how fresh it is.
struct AuthCopy {
    bytes: Vec<u8>,
    freshness: (String, SystemTime),
}

fn read_copy(path: &Path) -> io::Result<Option<AuthCopy>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mtime = fs::metadata(path)?
        .modified()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    // `last_refresh` is an RFC 3339 UTC timestamp that codex writes on every refresh; such strings
    // order chronologically. Files without it order by mtime only.
    let last_refresh = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.get("last_refresh")
                .and_then(|r| r.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Ok(Some(AuthCopy {
        bytes,
        freshness: (last_refresh, mtime),
    }))
}

impl AuthStore {
    /// Creates `<state_dir>/auth/auth.json` from `source`, unless the master already holds a fresher
    /// copy (tokens codex refreshed during an earlier run).
    ///
    /// # Errors
    /// I/O errors (the message names the path).
    pub fn init(state_dir: &Path, source: &Path, redactor: &Arc<Redactor>) -> io::Result<Self> {
        let dir = state_dir.join("auth");
        create_private_dir(&dir)?;
        let master = dir.join("auth.json");
        let src = read_copy(source)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: not found", source.display()),
                )
            })?;
        let existing = read_copy(&master)?;
        let keep_existing = existing
            .as_ref()
            .is_some_and(|m| m.freshness.0 > src.freshness.0);
        if !keep_existing {
            write_private(&master, &src.bytes)?;
        }
        for copy in [Some(src), existing].into_iter().flatten() {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&copy.bytes) {
                redactor.add_json_strings(&v);
            }
        }
        Ok(Self {
            master,
            homes: Mutex::new(BTreeSet::new()),
            redactor: redactor.clone(),
        })
    }

    /// Adds a CODEX_HOME to the propagation set.
    pub fn register(&self, home: &Path) {
        if let Ok(mut h) = self.homes.lock() {
            h.insert(home.to_path_buf());
        }
    }

    /// Removes a CODEX_HOME from the propagation set.
    pub fn unregister(&self, home: &Path) {
        if let Ok(mut h) = self.homes.lock() {
            h.remove(home);
        }
    }

    /// Copies the master into `home/auth.json` (0600) unless it is already identical.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn install(&self, home: &Path) -> io::Result<()> {
        let _guard = self
            .homes
            .lock()
            .map_err(|_| io::Error::other("auth store poisoned"))?;
        self.install_locked(home)
    }

    fn install_locked(&self, home: &Path) -> io::Result<()> {
        let Some(master) = read_copy(&self.master)? else {
            return Ok(());
        };
        let target = home.join("auth.json");
        let same = fs::read(&target)
            .map(|b| b == master.bytes)
            .unwrap_or(false);
        if !same {
            write_private(&target, &master.bytes)?;
        }
        Ok(())
    }

    /// If `home/auth.json` is fresher than the master, it becomes the master and is written to
    /// every registered CODEX_HOME.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn sync_from(&self, home: &Path) -> io::Result<()> {
        let homes = self
            .homes
            .lock()
            .map_err(|_| io::Error::other("auth store poisoned"))?;
        let Some(copy) = read_copy(&home.join("auth.json"))? else {
            return Ok(());
        };
        let master = read_copy(&self.master)?;
        let newer = match &master {
            None => true,
            Some(m) => m.bytes != copy.bytes && copy.freshness > m.freshness,
        };
        if !newer {
            return Ok(());
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&copy.bytes) {
            self.redactor.add_json_strings(&v);
        }
        write_private(&self.master, &copy.bytes)?;
        tracing::info!(from = %home.display(), "auth.json was refreshed by codex; propagating to every session");
        for other in homes.iter().filter(|h| h.as_path() != home) {
            if other.exists() {
                self.install_locked(other)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(refresh: &str, token: &str) -> String {
        format!(r#"{{"tokens":{{"refresh_token":"{token}"}},"last_refresh":"{refresh}"}}"#)
    }

    #[test]
    fn only_an_identical_private_file_is_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.toml");
        assert!(!holds_private(&p, b"a = 1\n"), "missing");
        write_private(&p, b"a = 1\n").expect("write");
        assert!(holds_private(&p, b"a = 1\n"));
        assert!(!holds_private(&p, b"a = 2\n"), "other content");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(!holds_private(&p, b"a = 1\n"), "readable by others");
    }

    #[test]
    fn refreshed_copy_propagates_to_every_home_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("given-auth.json");
        fs::write(&src, auth("2026-01-01T00:00:00Z", "rt-old-000000")).expect("write");
        let redactor = Arc::new(Redactor::new());
        let store = AuthStore::init(dir.path(), &src, &redactor).expect("init");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for h in [&a, &b] {
            create_private_dir(h).expect("mkdir");
            store.register(h);
            store.install(h).expect("install");
        }
        // codex refreshes the tokens inside session a's home
        fs::write(
            a.join("auth.json"),
            auth("2026-02-01T00:00:00Z", "rt-new-111111"),
        )
        .expect("write");
        store.sync_from(&a).expect("sync");
        let b_text = fs::read_to_string(b.join("auth.json")).expect("read");
        assert!(b_text.contains("rt-new-111111"), "{b_text}");
        assert_eq!(
            redactor.redact("x rt-new-111111"),
            "x [REDACTED]",
            "refreshed tokens are secrets too"
        );
        let mode = fs::metadata(b.join("auth.json"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // an older copy never wins
        fs::write(
            b.join("auth.json"),
            auth("2025-12-01T00:00:00Z", "rt-stale-22222"),
        )
        .expect("write");
        store.sync_from(&b).expect("sync");
        assert!(
            fs::read_to_string(a.join("auth.json"))
                .expect("read")
                .contains("rt-new-111111")
        );
        // secrets from the given file are known to the redactor
        assert_eq!(redactor.redact("x rt-old-000000"), "x [REDACTED]");
    }

    #[test]
    fn restart_keeps_tokens_refreshed_during_an_earlier_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("given-auth.json");
        fs::write(&src, auth("2026-01-01T00:00:00Z", "rt-old-000000")).expect("write");
        let store = AuthStore::init(dir.path(), &src, &Arc::new(Redactor::new())).expect("init");
        let a = dir.path().join("a");
        create_private_dir(&a).expect("mkdir");
        store.register(&a);
        fs::write(
            a.join("auth.json"),
            auth("2026-03-01T00:00:00Z", "rt-new-111111"),
        )
        .expect("write");
        store.sync_from(&a).expect("sync");
        drop(store);
        let store =
            AuthStore::init(dir.path(), &src, &Arc::new(Redactor::new())).expect("init again");
        let c = dir.path().join("c");
        create_private_dir(&c).expect("mkdir");
        store.install(&c).expect("install");
        assert!(
            fs::read_to_string(c.join("auth.json"))
                .expect("read")
                .contains("rt-new-111111")
        );
    }
}
