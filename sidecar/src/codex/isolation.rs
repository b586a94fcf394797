//! Tenant isolation below the API: what each session's codex (and so every command it runs) may
//! read and write, decided once at start-up ([`Isolation::resolve`]) and applied to each child by
//! the supervisor ([`crate::codex::supervise`]) with a Landlock ruleset.
//!
//! The trust model: a session's commands read the system (the [`SYSTEM_READ_ROOTS`] and the
//! codex package) and read and write that session's workspace, CODEX_HOME and private tmp
//! directory, nothing else: not the state dir (other sessions' logs, homes and workspaces, the
//! master auth.json), not the sidecar's key or config files, not its home, and not
//! `/proc/<pid>/environ` of any process outside the session (Landlock denies ptrace-like access
//! across domains). A system root that holds a protected path (a key mounted under `/etc`) is
//! replaced by its entries minus the branch that leads to that path, recursively.
//!
//! Landlock needs Linux 5.13+ with the LSM enabled; [`landlock_abi`] asks the kernel. Where it is
//! missing, `--isolation auto` runs without isolation and says so (log and `/v1/status`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::settings::{IsolationMode, SandboxMode};

/// Directories every session may read (and execute from) when they exist: the system's
/// programs, libraries and configuration, `/proc` (other processes' secrets stay behind
/// Landlock's ptrace rule), `/sys` and `/dev`. Not `/run` or `/var` (service-account tokens and
/// Docker secrets live there), not `/home`, `/root` or `/tmp`.
pub const SYSTEM_READ_ROOTS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc",
    "/sys", "/dev",
];

/// Device files every session may read and write (terminals for commands run in a pty).
pub const DEVICE_WRITE_PATHS: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// The name of each session's private temporary directory (`TMPDIR` of its codex and
/// commands), beside its `workspace` and `codex-home`.
pub const SESSION_TMP_DIR: &str = "tmp";
/// The directory of a session's message images (readable, not writable, under the ruleset).
pub const SESSION_IMAGES_DIR: &str = "images";

/// The Landlock ABI the kernel offers (1 = Linux 5.13, ... 7 = Linux 6.15), or `None` when
/// Landlock is not built in, not enabled at boot, or refused by a seccomp filter.
pub fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and size 0 this call only returns the ABI version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(abi).ok().filter(|&v| v > 0)
}

/// Wipes the sidecar's original environment block, the memory `/proc/<pid>/environ` shows to
/// any process of the same user (Landlock does not cover that file), after moving every
/// variable to the heap, where the sidecar itself still reads them: the API keys and passwords
/// the sidecar was started with are then not in that file. Gives up (wiping nothing) when some
/// variable cannot be moved. Returns how many bytes were wiped.
///
/// # Safety
/// Changes the environment: call it while the process has a single thread.
pub unsafe fn scrub_environ_block() -> Result<usize, String> {
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
    let (_, rest) = stat.rsplit_once(')').ok_or("unreadable /proc/self/stat")?;
    // After the command name, field 3 (state) comes first: env_start is field 50, env_end 51.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(50), field(51)) else {
        return Err("no env_start/env_end in /proc/self/stat".to_owned());
    };
    if end <= start {
        return Ok(0);
    }
    for (k, v) in std::env::vars_os().collect::<Vec<_>>() {
        let key = k.as_encoded_bytes();
        if key.is_empty() || key.contains(&b'=') || key.contains(&0) {
            continue;
        }
        // SAFETY: single-threaded (the caller's promise); glibc copies `k=v` to the heap.
        unsafe { std::env::set_var(&k, &v) };
    }
    // SAFETY: `environ` is libc's NULL-terminated array of the process's variables; only read.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let at = *p as usize;
            if (start..end).contains(&at) {
                return Err("a variable still lives in the original block".to_owned());
            }
            p = p.add(1);
        }
        // No variable points into the block any more; it is this process's own stack memory.
        std::ptr::write_bytes(start as *mut u8, 0, end - start);
    }
    Ok(end - start)
}

/// What `/v1/status` shows as `isolation`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IsolationStatus {
    /// What runs: `landlock` or `off`.
    pub mode: &'static str,
    /// What `--isolation` asked for: `auto`, `landlock` or `off`.
    pub requested: &'static str,
    /// Whether sessions' commands are confined to their own files.
    pub enforced: bool,
    /// The kernel's Landlock ABI version, when it has Landlock.
    pub abi: Option<u32>,
    /// Why isolation is off, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether a second owner is served while not enforced (`--allow-shared-owners`).
    pub allow_shared_owners: bool,
}

/// The resolved isolation: whether Landlock is applied, and the read roots every session gets.
#[derive(Debug, Clone)]
pub struct Isolation {
    status: IsolationStatus,
    read_roots: Vec<PathBuf>,
}

/// `--isolation landlock` cannot be had here.
#[derive(Debug, thiserror::Error)]
#[error("--isolation landlock: {0}")]
pub struct IsolationError(pub String);

impl Isolation {
    /// Decides the isolation for `mode` on this kernel. `codex_bin` is the codex executable
    /// (its package directory becomes readable); `protected` are the paths no session may read
    /// (the state dir, key, auth and config files).
    ///
    /// # Errors
    /// [`IsolationError`] when `mode` is `landlock` and the kernel has no Landlock.
    pub fn resolve(
        mode: IsolationMode,
        allow_shared_owners: bool,
        codex_bin: &Path,
        protected: &[PathBuf],
    ) -> Result<Isolation, IsolationError> {
        let abi = landlock_abi();
        let off = |reason: String| Isolation {
            status: IsolationStatus {
                mode: "off",
                requested: mode.as_str(),
                enforced: false,
                abi,
                reason: Some(reason),
                allow_shared_owners,
            },
            read_roots: Vec::new(),
        };
        match (mode, abi) {
            (IsolationMode::Off, _) => {
                return Ok(off("--isolation off".to_owned()));
            }
            (IsolationMode::Auto, None) => {
                return Ok(off(
                    "the kernel has no Landlock (Linux 5.13+ with the landlock LSM enabled), or a seccomp filter refuses it"
                        .to_owned(),
                ));
            }
            (IsolationMode::Landlock, None) => {
                return Err(IsolationError(
                    "the kernel has no Landlock (Linux 5.13+ with the landlock LSM enabled), or a seccomp filter refuses it; use --isolation auto or off"
                        .to_owned(),
                ));
            }
            (IsolationMode::Auto | IsolationMode::Landlock, Some(_)) => {}
        }
        let protected: Vec<PathBuf> = protected
            .iter()
            .flat_map(|p| [p.clone(), p.canonicalize().unwrap_or_else(|_| p.clone())])
            .collect();
        let mut roots: Vec<PathBuf> = SYSTEM_READ_ROOTS.iter().map(PathBuf::from).collect();
        roots.extend(codex_package_dirs(codex_bin));
        let mut read_roots = Vec::new();
        for root in roots {
            let root = root.canonicalize().unwrap_or(root);
            if root.exists() {
                read_roots.extend(allowed_beneath(&root, &protected));
            }
        }
        read_roots.sort();
        read_roots.dedup();
        Ok(Isolation {
            status: IsolationStatus {
                mode: "landlock",
                requested: mode.as_str(),
                enforced: true,
                abi,
                reason: None,
                allow_shared_owners,
            },
            read_roots,
        })
    }

    /// No isolation (unit tests, and what `resolve` gives for `off`).
    pub fn off() -> Isolation {
        Isolation {
            status: IsolationStatus {
                mode: "off",
                requested: "off",
                enforced: false,
                abi: None,
                reason: Some("--isolation off".to_owned()),
                allow_shared_owners: false,
            },
            read_roots: Vec::new(),
        }
    }

    /// Whether sessions are confined to their own files.
    pub fn enforced(&self) -> bool {
        self.status.enforced
    }

    /// Whether a second owner may be served: isolation holds, or the operator opted in.
    pub fn serves_many_owners(&self) -> bool {
        self.status.enforced || self.status.allow_shared_owners
    }

    /// `/v1/status` `isolation`.
    pub fn status(&self) -> &IsolationStatus {
        &self.status
    }

    /// The sandbox mode codex itself is told. Under Landlock codex's own sandbox (bubblewrap)
    /// cannot work (a Landlock domain may not mount), so codex runs commands unsandboxed and the
    /// ruleset enforces `read-only` or `workspace-write` instead.
    pub fn codex_sandbox(&self, configured: SandboxMode) -> SandboxMode {
        if self.enforced() {
            SandboxMode::DangerFullAccess
        } else {
            configured
        }
    }

    /// The ruleset of one session: `(read, write)` paths, or `None` without isolation.
    /// `session_dir` holds the session's `workspace`, `codex-home`, `tmp` and `images`
    /// (readable only); with `read-only` the workspace is readable only.
    pub fn session_rules(
        &self,
        session_dir: &Path,
        sandbox: SandboxMode,
    ) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
        if !self.enforced() {
            return None;
        }
        let mut read = self.read_roots.clone();
        let mut write: Vec<PathBuf> = DEVICE_WRITE_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        write.push(session_dir.join("codex-home"));
        write.push(session_dir.join(SESSION_TMP_DIR));
        // The images of the session's messages, which codex reads (`localImage` input items).
        read.push(session_dir.join(SESSION_IMAGES_DIR));
        let workspace = session_dir.join("workspace");
        if sandbox == SandboxMode::ReadOnly {
            read.push(workspace);
        } else {
            write.push(workspace);
        }
        Some((read, write))
    }
}

impl Isolation {
    /// Runs `codex --version` under the supervisor with a session's ruleset (for an empty
    /// session directory `scratch`), to see that this kernel enforces the ruleset and that codex
    /// starts under it. Does nothing without isolation.
    ///
    /// # Errors
    /// What failed (the supervisor's or codex's last stderr line).
    pub async fn probe(&self, codex_bin: &Path, scratch: &Path) -> Result<(), String> {
        let Some((read, write)) = self.session_rules(scratch, SandboxMode::WorkspaceWrite) else {
            return Ok(());
        };
        for d in ["codex-home", SESSION_TMP_DIR, "workspace"] {
            std::fs::create_dir_all(scratch.join(d))
                .map_err(|e| format!("{}: {e}", scratch.display()))?;
        }
        let mut cmd = tokio::process::Command::new(crate::codex::rpc::SUPERVISOR_EXE);
        cmd.args(["supervise", "--landlock"]);
        for p in &read {
            cmd.arg("--read").arg(p);
        }
        for p in &write {
            cmd.arg("--write").arg(p);
        }
        cmd.arg("--").arg(codex_bin).arg("--version");
        let run = crate::codex::rpc::clear_env(&mut cmd)
            .env("CODEX_HOME", scratch.join("codex-home"))
            .current_dir(scratch.join("workspace"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), run).await;
        let _ = std::fs::remove_dir_all(scratch);
        match out {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let line = stderr.lines().rev().find(|l| !l.trim().is_empty());
                Err(format!(
                    "codex did not start under the Landlock ruleset ({}): {}",
                    out.status,
                    line.unwrap_or("no output")
                        .chars()
                        .take(400)
                        .collect::<String>()
                ))
            }
            Ok(Err(e)) => Err(format!("the supervisor could not start: {e}")),
            Err(_) => Err("codex did not start under the Landlock ruleset within 30 s".to_owned()),
        }
    }

    /// Turns isolation off because `reason` (a failed [`Isolation::probe`] under `auto`).
    pub fn disable(&mut self, reason: String) {
        self.status.mode = "off";
        self.status.enforced = false;
        self.status.reason = Some(reason);
        self.read_roots.clear();
    }
}

/// The directories of the codex package: the binary's own, and the one above a `bin/` (the npm
/// package's `vendor/<triple>/`, whose `codex-path/` and `codex-resources/` hold its helpers).
fn codex_package_dirs(codex_bin: &Path) -> Vec<PathBuf> {
    let bin = codex_bin
        .canonicalize()
        .unwrap_or_else(|_| codex_bin.to_path_buf());
    let mut dirs = Vec::new();
    if let Some(dir) = bin.parent().filter(|d| d.parent().is_some()) {
        dirs.push(dir.to_path_buf());
        if dir.file_name().is_some_and(|n| n == "bin")
            && let Some(pkg) = dir.parent().filter(|d| d.parent().is_some())
        {
            dirs.push(pkg.to_path_buf());
        }
    }
    dirs
}

/// `root`, or when a protected path lies beneath it, every entry of `root` except the one on
/// that path's branch (recursively): the largest set of rules under `root` that grants none of
/// `protected`. Entries created later in a split directory are not covered (denied).
pub fn allowed_beneath(root: &Path, protected: &[PathBuf]) -> Vec<PathBuf> {
    if protected.iter().any(|p| root.starts_with(p)) {
        return Vec::new();
    }
    if !protected.iter().any(|p| p.starts_with(root)) {
        return vec![root.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(allowed_beneath(&path, protected)),
            Ok(_) if !protected.iter().any(|p| p == &path) => out.push(path),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protected_file_under_a_root_is_cut_out_of_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        for d in ["a/keys", "b"] {
            std::fs::create_dir_all(root.join(d)).expect("dir");
        }
        for f in ["a/keys/jwt", "a/keys/other", "a/x", "b/y"] {
            std::fs::write(root.join(f), "x").expect("file");
        }
        let protected = vec![root.join("a/keys/jwt")];
        let mut got = allowed_beneath(root, &protected);
        got.sort();
        assert_eq!(
            got,
            vec![root.join("a/keys/other"), root.join("a/x"), root.join("b")]
        );
        assert!(allowed_beneath(&root.join("b"), &protected) == vec![root.join("b")]);
        assert!(allowed_beneath(&root.join("a/keys/jwt"), &protected).is_empty());
        // A protected directory (the state dir) removes everything beneath it.
        let got = allowed_beneath(root, &[root.join("a")]);
        assert_eq!(got, vec![root.join("b")]);
    }

    #[test]
    fn under_landlock_codex_is_told_no_sandbox_and_the_ruleset_decides() {
        let iso = Isolation {
            status: IsolationStatus {
                mode: "landlock",
                requested: "auto",
                enforced: true,
                abi: Some(6),
                reason: None,
                allow_shared_owners: false,
            },
            read_roots: vec![PathBuf::from("/usr")],
        };
        assert_eq!(
            iso.codex_sandbox(SandboxMode::ReadOnly),
            SandboxMode::DangerFullAccess
        );
        let dir = Path::new("/state/sessions/o/s");
        let (read, write) = iso
            .session_rules(dir, SandboxMode::ReadOnly)
            .expect("rules");
        assert!(read.contains(&dir.join("workspace")));
        assert!(!write.contains(&dir.join("workspace")));
        assert!(write.contains(&dir.join("codex-home")) && write.contains(&dir.join("tmp")));
        let (_, write) = iso
            .session_rules(dir, SandboxMode::WorkspaceWrite)
            .expect("rules");
        assert!(write.contains(&dir.join("workspace")));
        assert!(!write.iter().any(|p| p == dir || p == Path::new("/state")));
        let off = Isolation::off();
        assert_eq!(
            off.codex_sandbox(SandboxMode::ReadOnly),
            SandboxMode::ReadOnly
        );
        assert!(off.session_rules(dir, SandboxMode::ReadOnly).is_none());
        assert!(!off.serves_many_owners());
    }
}
