//! `codex-sidecar supervise`: the small process between the sidecar and each `codex app-server`
//! that makes sure nothing a session started outlives it, and confines codex with Landlock.
//!
//! The sidecar starts `codex-sidecar supervise [--landlock --read P.. --write P..] -- codex
//! app-server ...` (hidden subcommand, run before any async runtime exists, so the process is
//! single-threaded). The supervisor
//! 1. asks for SIGTERM when the sidecar dies (`PR_SET_PDEATHSIG`), even by `kill -9`;
//! 2. becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`), so every orphaned descendant (a
//!    `setsid` command whose parent exited) is reparented to it instead of to init;
//! 3. starts codex with its own stdin/stdout/stderr (the sidecar's pipes), after applying the
//!    Landlock ruleset in the child between fork and exec (codex and every command it runs stay
//!    in that domain; the supervisor itself stays outside it, so with Landlock ABI 6+ a command
//!    can neither signal nor trace it), and with `PR_SET_PDEATHSIG` SIGKILL so codex never
//!    outlives the supervisor;
//! 4. waits until codex exits or it is told to stop (SIGTERM, SIGINT, SIGHUP), then SIGKILLs
//!    every remaining descendant (found through `/proc/*/stat` parent links), reaps them, and
//!    exits with codex's status (128 + signal for a signal; 143 when it was told to stop).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;

/// `codex-sidecar supervise` (hidden; started by the sidecar for each codex child).
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Apply a Landlock ruleset to the program (fail if the kernel cannot enforce it).
    #[arg(long)]
    pub landlock: bool,
    /// A path the program may read and execute beneath (repeatable).
    #[arg(long, value_name = "PATH")]
    pub read: Vec<PathBuf>,
    /// A path the program may read, write, create and remove beneath (repeatable).
    #[arg(long, value_name = "PATH")]
    pub write: Vec<PathBuf>,
    /// The program and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub program: Vec<String>,
}

/// How long the supervisor keeps killing descendants that keep appearing (fork loops) before it
/// gives up and exits anyway.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// What can stop the supervisor before codex runs.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The Landlock ruleset could not be built or is not enforced by this kernel.
    #[error("landlock: {0}")]
    Landlock(String),
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Runs the supervisor; returns its exit code (codex's, or 2 when codex could not start).
pub fn run(args: SuperviseArgs) -> i32 {
    match supervise(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("codex-sidecar supervise: {e}");
            2
        }
    }
}

fn ruleset(args: &SuperviseArgs) -> Result<landlock::RulesetCreated, SuperviseError> {
    use landlock::{
        ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
        Scope, path_beneath_rules,
    };
    let err = |e: landlock::RulesetError| SuperviseError::Landlock(e.to_string());
    let abi = ABI::V6;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?;
    // Signals and abstract unix sockets stay inside the domain (ABI 6+; ignored before).
    ruleset = ruleset
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(err)?;
    let existing = |paths: &[PathBuf]| -> Vec<PathBuf> {
        paths.iter().filter(|p| p.exists()).cloned().collect()
    };
    ruleset
        .create()
        .map_err(err)?
        .set_compatibility(CompatLevel::BestEffort)
        .add_rules(path_beneath_rules(
            existing(&args.read),
            AccessFs::from_read(abi),
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            existing(&args.write),
            AccessFs::from_all(abi),
        ))
        .map_err(err)
}

fn supervise(args: SuperviseArgs) -> Result<i32, SuperviseError> {
    // SAFETY: getppid and prctl with integer arguments touch no memory of ours.
    unsafe {
        let parent = libc::getppid();
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != parent {
            // The sidecar died before the death signal was armed.
            return Ok(143);
        }
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
    let signals = blocked_signals();
    let mut rules = if args.landlock {
        Some(ruleset(&args)?)
    } else {
        None
    };
    let Some((program, rest)) = args.program.split_first() else {
        return Ok(2);
    };
    let mut cmd = Command::new(program);
    cmd.args(rest);
    // SAFETY: the closure runs in the forked child of this single-threaded process; it makes
    // only system calls (prctl, sigprocmask, landlock_restrict_self) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let empty = std::mem::zeroed::<libc::sigset_t>();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if let Some(r) = rules.take() {
                let status = r.restrict_self().map_err(std::io::Error::other)?;
                if status.ruleset == landlock::RulesetStatus::NotEnforced {
                    return Err(std::io::Error::other(
                        "the kernel does not enforce Landlock rulesets",
                    ));
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
        program: program.clone(),
        source,
    })?;
    let codex = child.id() as libc::pid_t;
    // The supervisor's own copies of the pipes must not keep them open after codex exits.
    release_stdio();
    let code = wait_for(codex, &signals);
    kill_descendants();
    Ok(code)
}

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD (they are taken with `sigtimedwait`).
fn blocked_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set; sigprocmask changes only this thread's mask.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn release_stdio() {
    // SAFETY: opens /dev/null and dup2s it over fds 0 and 1 of this process.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// Exit code for a `waitpid` status.
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// Reaps every exited child; returns codex's exit code when it was among them.
fn reap(codex: libc::pid_t) -> Option<i32> {
    let mut code = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return code;
        }
        if pid == codex {
            code = Some(exit_code(status));
        }
    }
}

/// Waits until codex exits (its exit code) or a stop signal arrives (143).
fn wait_for(codex: libc::pid_t, signals: &libc::sigset_t) -> i32 {
    loop {
        if let Some(code) = reap(codex) {
            return code;
        }
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: sigtimedwait reads the set and the timeout; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &timeout) };
        if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
            return 143;
        }
    }
}

/// The live descendants of this process (from `/proc/*/stat` parent links).
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let procs: Vec<(u32, u32, bool)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let zombie = fields.next()? == "Z";
            let ppid = fields.next()?.parse().ok()?;
            Some((pid, ppid, zombie))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            procs
                .iter()
                .filter(|(pid, ppid, _)| *ppid == parent && !found.contains(pid))
                .map(|(pid, _, _)| *pid)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    found.remove(0);
    found.retain(|pid| procs.iter().any(|(p, _, z)| p == pid && !z));
    found
}

/// SIGKILLs every descendant until none is left (new ones forked meanwhile are reparented to
/// this subreaper and found in the next round), reaping them; gives up after [`KILL_DEADLINE`].
fn kill_descendants() {
    let me = std::process::id();
    let deadline = Instant::now() + KILL_DEADLINE;
    loop {
        reap(0);
        let pids = descendants(me);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill only sends a signal to a descendant of this process.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
