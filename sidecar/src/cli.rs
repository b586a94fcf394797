//! The `codex-sidecar` command line: `serve` (the sidecar) and `token` (mint an HS256 API token
//! for curl and scripts).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::engine::Engine;
use crate::gpu::GpuProbe;
use crate::http::{AppState, ops::ReadyCache, router};
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::settings::ServeSettings;

/// Runs OpenAI Codex (`codex app-server`) sessions behind an authenticated HTTP poll-loop API.
#[derive(Debug, Parser)]
#[command(name = "codex-sidecar", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Print an HS256 API token signed with --jwt-secret-file (for curl and scripts).
    Token(TokenArgs),
    /// Run one codex child under supervision (started by `serve`; see
    /// [`crate::codex::supervise`]).
    #[command(hide = true)]
    Supervise(crate::codex::supervise::SuperviseArgs),
}

/// `codex-sidecar serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (camelCase or flag spelling); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The settings.
    #[command(flatten)]
    pub settings: ServeSettings,
}

/// `codex-sidecar token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The HS256 secret file the sidecar verifies with.
    #[arg(long, value_name = "PATH")]
    pub jwt_secret_file: PathBuf,
    /// The subject (`sub`): the owner of the sessions this token creates.
    #[arg(long, value_name = "SUB")]
    pub sub: String,
    /// The audience (`aud`), when the sidecar checks one.
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,
    /// Lifetime in seconds (`exp` = now + ttl).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub ttl: u64,
}

/// Parses the command line and runs; returns the process exit code. The supervisor of one
/// codex child (`supervise`) runs single-threaded, with no async runtime (it forks codex and
/// applies Landlock between fork and exec); everything else runs on a tokio runtime.
pub fn main() -> i32 {
    let command = Cli::parse().command;
    if let Cmd::Supervise(args) = command {
        return crate::codex::supervise::run(args);
    }
    // SAFETY: the process has one thread: the runtime (and its workers) starts below.
    let scrubbed = matches!(command, Cmd::Serve(_))
        .then(|| unsafe { crate::codex::isolation::scrub_environ_block() });
    if let Some(Err(e)) = scrubbed {
        eprintln!(
            "codex-sidecar: warning: /proc/<pid>/environ still shows the start-up environment: {e}"
        );
    }
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run(command)),
        Err(e) => {
            eprintln!("codex-sidecar: error: cannot start the async runtime: {e}");
            2
        }
    }
}

/// Runs a parsed subcommand; returns the process exit code.
pub async fn run(command: Cmd) -> i32 {
    match command {
        Cmd::Supervise(args) => crate::codex::supervise::run(args),
        Cmd::Serve(args) => match serve(*args).await {
            Ok(()) => 0,
            Err(message) => {
                eprintln!("codex-sidecar: error: {message}");
                2
            }
        },
        Cmd::Token(args) => {
            let secret = match std::fs::read(&args.jwt_secret_file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "codex-sidecar: error: --jwt-secret-file {}: {e}",
                        args.jwt_secret_file.display()
                    );
                    return 2;
                }
            };
            match crate::auth::mint_hs256(
                &secret,
                &args.sub,
                args.audience.as_deref(),
                Duration::from_secs(args.ttl),
            ) {
                Ok(token) => {
                    println!("{token}");
                    0
                }
                Err(e) => {
                    eprintln!("codex-sidecar: error: {e}");
                    2
                }
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Loads settings, checks them, and serves until SIGINT/SIGTERM.
///
/// # Errors
/// A message naming the bad setting, or the listen failure.
pub async fn serve(args: ServeArgs) -> Result<(), String> {
    init_tracing();
    raise_open_files_limit();
    let settings = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--config {}: {e}", path.display()))?;
            let file = ServeSettings::from_toml(&text)
                .map_err(|e| format!("--config {}: {e}", path.display()))?;
            file.merge(args.settings)
        }
        None => args.settings,
    };
    let (mut config, auth) = Config::resolve_with(settings, args.config.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    check_isolation(&mut config).await?;
    let sandbox = crate::codex::sandbox::check(
        &config.codex_bin,
        config.sandbox,
        &config.state_dir.join(".sandbox-check"),
        config.isolation.enforced(),
    )
    .await;
    if let (Some(error), Some(hint)) = (&sandbox.error, &sandbox.hint) {
        tracing::warn!(sandbox = sandbox.mode, %error, "codex's sandbox does not work here: {hint}");
    }
    let listen = config.listen;
    let insecure = config.insecure_no_auth;
    let key_reload_interval = config.jwt_key_reload_interval;
    let metrics = Arc::new(Metrics::new());
    let auth = Arc::new(auth);
    let key_watcher = key_reload_interval.and_then(|interval| {
        crate::auth::reload::spawn_watcher(auth.clone(), interval, metrics.clone())
    });
    let redactor = Arc::new(Redactor::new());
    auth.feed_redactor(redactor.clone());
    let engine = Engine::open(config, metrics.clone(), redactor)
        .map_err(|e| format!("--state-dir: cannot load sessions: {e}"))?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let state = AppState {
        engine: engine.clone(),
        auth,
        metrics,
        gpu: Arc::new(GpuProbe::init()),
        sandbox: Arc::new(sandbox),
        ready: Arc::new(ReadyCache::default()),
        started: Instant::now(),
        shutdown: shutdown_rx,
    };
    let (listener, listen) = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => (l, listen),
        Err(e) => match crate::settings::ipv4_fallback(listen, &e) {
            Some(v4) => {
                tracing::info!(%listen, error = %e, "IPv6 is not available here; listening on {v4}");
                let l = tokio::net::TcpListener::bind(v4)
                    .await
                    .map_err(|e| format!("--listen {v4}: {e}"))?;
                (l, v4)
            }
            None => return Err(format!("--listen {listen}: {e}")),
        },
    };
    let cfg = &engine.ctx().config;
    tracing::info!(
        listen = %listen,
        state_dir = %cfg.state_dir.display(),
        codex = %cfg.codex_version,
        provider = cfg.provider.as_str(),
        auth = if insecure { "none (--insecure-no-auth)" } else { "jwt" },
        "codex-sidecar serving on http://{listen}"
    );
    let limits = cfg.server;
    crate::http::server::serve(listener, router(state), limits, async move {
        shutdown_signal().await;
        // End long-polls and event streams so the connections drain.
        let _ = shutdown_tx.send(true);
    })
    .await;
    if let Some(w) = key_watcher {
        w.abort();
    }
    tracing::info!("stopping codex children");
    engine.shutdown().await;
    Ok(())
}

/// Probes the Landlock ruleset (codex must start under it) and says at start-up what isolation
/// holds; under `--isolation auto` a failed probe turns isolation off.
///
/// # Errors
/// The probe's failure under `--isolation landlock`.
async fn check_isolation(config: &mut Config) -> Result<(), String> {
    let scratch = config.state_dir.join(".isolation-check");
    if let Err(e) = config.isolation.probe(&config.codex_bin, &scratch).await {
        if config.isolation.status().requested == "landlock" {
            return Err(format!("--isolation landlock: {e}"));
        }
        config.isolation.disable(e);
    }
    let st = config.isolation.status();
    if st.enforced {
        tracing::info!(
            abi = st.abi,
            "isolation: landlock (each session's commands read only the system and that session's workspace, CODEX_HOME and tmp)"
        );
    } else {
        tracing::warn!(
            reason = st.reason.as_deref().unwrap_or(""),
            allow_shared_owners = st.allow_shared_owners,
            "isolation: off: every session's commands can read what this user can (other sessions, keys, auth.json); {}",
            if st.allow_shared_owners {
                "serving every owner anyway (--allow-shared-owners)"
            } else {
                "only one owner is served (--allow-shared-owners to serve more)"
            }
        );
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one (containers often start at 1024): each
/// live session holds pipes to its codex child and files of its log, and every HTTP connection a
/// socket. Logged; a failure is only a warning.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "reading the open-files limit");
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        tracing::info!(open_files = lim.rlim_cur, "open-files limit");
        return;
    }
    let soft = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::info!(
            from = soft,
            to = lim.rlim_max,
            "raised the open-files limit"
        );
    } else {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            open_files = soft,
            "could not raise the open-files limit"
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
