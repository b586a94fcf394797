//! Facts about the machine and its processes: CPU, codex version, VmRSS from `/proc`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use codex_e2e::harness::{Sidecar, alive, child_pids};

/// The first `model name` line of /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `codex --version` of the binary the benchmark drives.
pub fn codex_version(bin: &Path) -> String {
    match std::process::Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => format!("unknown (`--version` exited with {})", out.status),
        Err(e) => format!("unknown ({e})"),
    }
}

/// A `Key:   123 kB` field of `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Kills the sidecar and waits (at most 10 s) for its codex children to exit, so that dropping
/// it can remove its state dir (a child still writing its rollout would leave files behind).
pub async fn stop_sidecar(mut sc: Sidecar) {
    let children = sc.pid().map(child_pids).unwrap_or_default();
    sc.kill9().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && children.iter().any(|&c| alive(c)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sc);
}

/// VmRSS of `pid` once it has settled: waits `settle`, then takes the median of 5 samples 200 ms
/// apart.
pub async fn settled_rss_kib(pid: u32, settle: Duration) -> anyhow::Result<u64> {
    tokio::time::sleep(settle).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(
            proc_status_kib(pid, "VmRSS").with_context(|| format!("no VmRSS for pid {pid}"))?,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .copied()
        .context("no samples")
}

// ---------------------------------------------------------------------------------------------
// Direct path: `codex app-server` over stdio
