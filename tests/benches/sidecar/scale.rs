//! Part 6: one sidecar with many sessions and `--max-live-sessions 8`: how fast sessions are
//! created, what the sidecar process holds for them (VmRSS, codex children excluded), and many
//! of them sending at once (most of them evicted, so they queue for the 8 slots).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use codex_e2e::harness::{Api, Sidecar};
use codex_e2e::model::ScriptedModel;
use futures::StreamExt as _;
use serde_json::json;

use crate::SUBJECT;
use crate::client::{EventsClient, counts, sidecar_first_delta};
use crate::machine::{settled_rss_kib, stop_sidecar};
use crate::settings::Settings;
use crate::stats::{fmt_stats, ms, stats};

/// `--max-live-sessions` of this part (the setting).
const MAX_LIVE: &str = "8";
/// Creates in flight at once while the sessions are made.
const CREATE_CONCURRENCY: usize = 8;

/// Part 6 (see the module doc).
pub async fn bench_scale(cfg: &Settings, model: &ScriptedModel) -> anyhow::Result<()> {
    println!(
        "\n[6] Scale: {} sessions on one sidecar with --max-live-sessions {MAX_LIVE}; {} of them send at once",
        cfg.scale_sessions, cfg.scale_concurrent
    );
    let sc = Sidecar::start(&model.base_url(), &["--max-live-sessions", MAX_LIVE]).await?;
    let r = measure_scale(cfg, &sc).await;
    stop_sidecar(sc).await;
    r
}

async fn measure_scale(cfg: &Settings, sc: &Sidecar) -> anyhow::Result<()> {
    let pid = sc.pid().context("no sidecar pid")?;
    let api = sc.api(SUBJECT);
    let rss0 = settled_rss_kib(pid, Duration::from_secs(1)).await?;

    // Creation, CREATE_CONCURRENCY at a time (each needs a codex child for `thread/start`).
    let started = Instant::now();
    let ids: Vec<String> = (0..cfg.scale_sessions)
        .map(|i| format!("s-{i:05}"))
        .collect();
    let results: Vec<anyhow::Result<f64>> = futures::stream::iter(ids.clone())
        .map(|id| {
            let api = api.clone();
            let deadline = cfg.deadline;
            async move {
                ensure!(Instant::now() < deadline, "BENCH_MAX_SECS reached");
                let t0 = Instant::now();
                let (status, body) = api.create(json!({"id": id})).await;
                ensure!(status == 201, "create {id} answered {status}: {body}");
                Ok(ms(t0.elapsed()))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let took = started.elapsed();
    let mut create_ms = Vec::new();
    for r in results {
        create_ms.push(r?);
    }
    let n = create_ms.len();
    println!(
        "    created {n} sessions in {:.1} s: {:.1} sessions/s ({CREATE_CONCURRENCY} creates in flight)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    if let Some(s) = stats(&create_ms) {
        println!("    create: {}", fmt_stats(&s));
    }
    let rss_n = settled_rss_kib(pid, Duration::from_secs(2)).await?;
    let live_after_create = counts(&api).await?["live"].as_u64().unwrap_or(0);
    let per_session = (rss_n as f64 - rss0 as f64) / n as f64;
    println!(
        "    sidecar VmRSS: {rss0} KiB before, {rss_n} KiB with {n} sessions ({live_after_create} of them with a live child)"
    );

    // The burst: scale_concurrent sessions spread over all of them send one message each at once.
    let k = cfg.scale_concurrent.min(n);
    let step = (n / k).max(1);
    let chosen: Vec<String> = ids.iter().step_by(step).take(k).cloned().collect();
    let ev = Arc::new(EventsClient::new(&sc.base)?);
    let t0 = Instant::now();
    let tasks: Vec<_> = chosen
        .iter()
        .map(|id| {
            let (api, ev, id) = (api.clone(), ev.clone(), id.clone());
            tokio::spawn(async move { burst_turn(&api, &ev, &id).await })
        })
        .collect();
    let mut first_ms = Vec::new();
    for t in tasks {
        first_ms.push(t.await.context("burst task panicked")??);
    }
    let wall = t0.elapsed();
    let live_after_burst = counts(&api).await?["live"].as_u64().unwrap_or(0);
    let f = stats(&first_ms).context("no burst turn")?;
    println!(
        "    burst: {} sessions sent at once, all completed in {:.1} s; first delta {}",
        first_ms.len(),
        wall.as_secs_f64(),
        fmt_stats(&f)
    );
    println!(
        "    SCALE: {n} sessions, {live_after_burst} live, RSS {:.1} MiB, {per_session:.1} KiB per idle session; {} concurrent: {:.1} turns/s, first delta p50 {:.0} ms p99 {:.0} ms, longest wait {:.0} ms",
        rss_n as f64 / 1024.0,
        first_ms.len(),
        first_ms.len() as f64 / wall.as_secs_f64(),
        f.median,
        f.p99,
        f.max
    );
    Ok(())
}

/// One turn of the burst: its time to first delta (ms).
async fn burst_turn(api: &Api, ev: &EventsClient, id: &str) -> anyhow::Result<f64> {
    let turn = sidecar_first_delta(api, ev, id, 0, "all at once").await?;
    Ok(ms(turn.first_delta))
}
