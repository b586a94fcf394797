//! Part 3: the sidecar's RSS per idle session.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use codex_e2e::harness::{Sidecar, child_pids};
use codex_e2e::model::ScriptedModel;
use serde_json::json;

use crate::SUBJECT;
use crate::machine::{proc_status_kib, settled_rss_kib, stop_sidecar};
use crate::settings::Settings;
use crate::stats::{ms, stats};

/// Part 3: sidecar RSS per idle session.
pub async fn bench_memory(cfg: &Settings, model: &ScriptedModel) -> anyhow::Result<()> {
    println!(
        "\n[3] Memory per idle session: VmRSS of the sidecar process only (codex children excluded)"
    );
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let r = measure_memory(cfg, &mut sc).await;
    stop_sidecar(sc).await;
    r
}

/// The body of part 3, on a sidecar freshly started on an empty state dir.
pub async fn measure_memory(cfg: &Settings, sc: &mut Sidecar) -> anyhow::Result<()> {
    let pid = sc.pid().context("no sidecar pid")?;
    let rss0 = settled_rss_kib(pid, Duration::from_secs(1)).await?;
    println!(
        "    RSS_0, fresh sidecar on an empty state dir: {rss0} KiB ({:.1} MiB)",
        rss0 as f64 / 1024.0
    );

    let api = sc.api(SUBJECT);
    let started = Instant::now();
    let mut created: Vec<String> = Vec::new();
    for i in 0..cfg.sessions {
        if !cfg.time_left() {
            println!(
                "    (BENCH_MAX_SECS reached: created {i} of {} sessions)",
                cfg.sessions
            );
            break;
        }
        let id = format!("idle-{i:05}");
        let (status, body) = api.create(json!({"id": id})).await;
        ensure!(status == 201, "create {id} answered {status}: {body}");
        let (status, body) = api.send(&id, &format!("hello from idle session {i}")).await;
        ensure!(
            status == 202,
            "POST messages to {id} answered {status}: {body}"
        );
        created.push(id);
    }
    let mut events_per_session = Vec::new();
    for id in &created {
        let left = cfg
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(30));
        let events = api
            .until_results(id, 0, 1, left.min(Duration::from_secs(180)))
            .await?;
        events_per_session.push(events.len() as f64);
    }
    let n = created.len();
    ensure!(n > 0, "no session was created");
    let live_rss = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let hwm = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    println!(
        "    created {n} sessions with one completed turn each in {:.1} s ({:.0} ms per session; --max-live-sessions 8 evicts children)",
        started.elapsed().as_secs_f64(),
        ms(started.elapsed()) / n as f64
    );
    if let Some(s) = stats(&events_per_session) {
        println!("    events per session log: median {:.0}", s.median);
    }
    println!("    (same process afterwards: VmRSS {live_rss} KiB, peak VmHWM {hwm} KiB)");

    sc.restart().await?;
    let pid = sc.pid().context("no sidecar pid after restart")?;
    let rss_n = settled_rss_kib(pid, Duration::from_secs(1)).await?;
    let kids = child_pids(pid).len();
    let (status, list) = sc.api(SUBJECT).call("GET", "/v1/sessions", None).await;
    let listed = list["sessions"].as_array().map_or(0, Vec::len);
    ensure!(
        status == 200 && listed == n,
        "after restart the sidecar lists {listed} sessions (status {status}), expected {n}"
    );
    let rss_after_list = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    println!(
        "    RSS_N, the sidecar restarted on the state dir with N={n} idle sessions: {rss_n} KiB ({kids} codex children)"
    );
    println!(
        "    PER IDLE SESSION: (RSS_N - RSS_0) / N = {:.1} KiB   [RSS_0 = {rss0} KiB]",
        (rss_n as f64 - rss0 as f64) / n as f64
    );
    if n < 50 {
        println!(
            "    note: RSS varies by a few hundred KiB between fresh processes; use BENCH_SESSIONS >= 50"
        );
    }
    println!("    (VmRSS after one GET /v1/sessions listing all {n}: {rss_after_list} KiB)");
    Ok(())
}
