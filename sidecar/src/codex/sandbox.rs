//! Whether codex's own command sandbox works where the sidecar runs.
//!
//! On Linux codex runs each command the model asks for under bubblewrap (`bwrap`), which needs
//! unprivileged user namespaces. Containers usually forbid them: Docker's and containerd's
//! default seccomp profiles (Kubernetes `RuntimeDefault`) refuse `unshare(CLONE_NEWUSER)` without
//! `CAP_SYS_ADMIN`, so every command of a `read-only` or `workspace-write` session then fails
//! with "bwrap: No permissions to create a new namespace". The sidecar finds out once at
//! start-up by running `codex sandbox -- true` (the same sandbox, no model involved) and reports
//! the result in its log and in `GET /v1/status` (`sandbox_check`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::process::Command;

use crate::settings::SandboxMode;

/// How long the start-up check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// The outcome of [`check`], as `/v1/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SandboxCheck {
    /// The configured mode (`--sandbox`).
    pub mode: &'static str,
    /// `true` when commands can run under that mode here.
    pub ok: bool,
    /// Why not (codex's own message), when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about it, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// What enforces the mode: `codex` (its own sandbox, bubblewrap), `landlock` (the sidecar's
    /// ruleset, under `--isolation`: codex is then told `danger-full-access`), or `none` for
    /// `danger-full-access` without isolation.
    pub enforced_by: &'static str,
}

/// Runs `codex sandbox -- true` with `CODEX_HOME` set to `scratch` (an empty directory the
/// caller owns) unless `mode` is `danger-full-access`, which uses no sandbox, or `landlock` is
/// true (isolation enforces the mode; codex's own sandbox is not used).
pub async fn check(
    codex_bin: &Path,
    mode: SandboxMode,
    scratch: &Path,
    landlock: bool,
) -> SandboxCheck {
    let mut result = SandboxCheck {
        mode: mode.as_str(),
        ok: true,
        error: None,
        hint: None,
        enforced_by: "codex",
    };
    if landlock {
        result.enforced_by = "landlock";
        return result;
    }
    if mode == SandboxMode::DangerFullAccess {
        result.enforced_by = "none";
        return result;
    }
    let _ = std::fs::create_dir_all(scratch);
    let run = crate::codex::rpc::clear_env(&mut Command::new(codex_bin))
        .args(["sandbox", "--", "true"])
        .env("CODEX_HOME", scratch)
        .current_dir(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let error = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => None,
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = stderr
                .lines()
                .find(|l| l.contains("bwrap") || l.contains("sandbox"))
                .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
                .unwrap_or("no output")
                .trim()
                .chars()
                .take(400)
                .collect::<String>();
            Some(format!(
                "`codex sandbox -- true` exited with {}: {line}",
                out.status
            ))
        }
        Ok(Err(e)) => Some(format!("`codex sandbox` could not start: {e}")),
        Err(_) => Some(format!(
            "`codex sandbox -- true` did not finish within {} s",
            CHECK_TIMEOUT.as_secs()
        )),
    };
    if let Some(e) = error {
        result.ok = false;
        result.error = Some(e);
        result.hint = Some(
            "commands the model runs will fail: codex's sandbox (bubblewrap) needs unprivileged \
             user namespaces, which this container's seccomp profile or kernel forbids; use \
             --sandbox danger-full-access (a CodexAgent's spec.sidecar.sandbox) when the \
             container itself is the sandbox, as a pod is, or allow user namespaces for this \
             container"
                .into(),
        );
    }
    let _ = std::fs::remove_dir_all(scratch);
    result
}
