//! Part 4: what a new session waits for. `POST /v1/sessions` with a warm child ready (the
//! default `--warm-children 1`), and the new session's first delta against a warm session's,
//! turn by turn; for context, the same create on a sidecar with `--warm-children 0`.

use std::time::{Duration, Instant};

use anyhow::ensure;
use codex_e2e::harness::{Api, Sidecar};
use codex_e2e::model::ScriptedModel;
use serde_json::json;

use crate::SUBJECT;
use crate::client::{EventsClient, sidecar_first_delta, wait_count};
use crate::direct::{direct_codex, direct_first_delta};
use crate::machine::stop_sidecar;
use crate::settings::Settings;
use crate::stats::{fmt_stats, ms, stats};

/// How long the pool may take to refill before the part gives up.
const REFILL_LIMIT: Duration = Duration::from_secs(60);

/// Part 4 (see the module doc).
pub async fn bench_new(cfg: &Settings, model: &ScriptedModel) -> anyhow::Result<()> {
    println!("\n[4] New sessions: POST /v1/sessions with a warm child ready, and the first turn");
    println!(
        "    create: POST /v1/sessions sent -> 201 read, after /v1/status counts.warm_children == 1"
    );
    println!(
        "    first delta: POST /messages sent -> the poll holding the first `delta` read; the new session's first"
    );
    println!(
        "    turn alternates with a turn of a session that has already run one (its child warm)"
    );
    codex_floor(cfg, model).await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let r = measure_new(cfg, &sc).await;
    stop_sidecar(sc).await;
    let warm = r?;

    // For context: the same create when no warm child is there.
    let sc = Sidecar::start(&model.base_url(), &["--warm-children", "0"]).await?;
    let r = measure_cold_creates(cfg, &sc.api(SUBJECT)).await;
    stop_sidecar(sc).await;
    let cold = r?;
    if let (Some(w), Some(c)) = (stats(&warm), stats(&cold)) {
        println!(
            "    create without a warm child (--warm-children 0, same sidecar build): {} (warm child saves {:.1} ms at the median)",
            fmt_stats(&c),
            c.median - w.median
        );
    }
    Ok(())
}

/// The warm-child measurements; returns the create times (ms).
async fn measure_new(cfg: &Settings, sc: &Sidecar) -> anyhow::Result<Vec<f64>> {
    let api = sc.api(SUBJECT);
    let ev = EventsClient::new(&sc.base)?;
    wait_count(&api, "warm_children", 1, REFILL_LIMIT).await?;
    let (status, body) = api.create(json!({"id": "reference"})).await;
    ensure!(status == 201, "create answered {status}: {body}");
    let mut cursor = sidecar_first_delta(&api, &ev, "reference", 0, "warm-up")
        .await?
        .cursor;

    let (mut create_ms, mut new_ms, mut warm_ms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..cfg.new_sessions {
        if !cfg.time_left() {
            println!("    (BENCH_MAX_SECS reached: stopped after {i} new sessions)");
            break;
        }
        wait_count(&api, "warm_children", 1, REFILL_LIMIT).await?;
        let id = format!("new-{i:04}");
        let t0 = Instant::now();
        let (status, body) = api.create(json!({"id": id})).await;
        let created = t0.elapsed();
        ensure!(status == 201, "create {id} answered {status}: {body}");
        let new = sidecar_first_delta(&api, &ev, &id, 0, "first message").await?;
        let warm = sidecar_first_delta(&api, &ev, "reference", cursor, "another message").await?;
        cursor = warm.cursor;
        create_ms.push(ms(created));
        new_ms.push(ms(new.first_delta));
        warm_ms.push(ms(warm.first_delta));
        let (status, body) = api
            .call("DELETE", &format!("/v1/sessions/{id}"), None)
            .await;
        ensure!(status == 204, "DELETE {id} answered {status}: {body}");
    }
    let (Some(c), Some(n), Some(w)) = (stats(&create_ms), stats(&new_ms), stats(&warm_ms)) else {
        anyhow::bail!("no new session was timed");
    };
    println!("    create (warm child)        : {}", fmt_stats(&c));
    println!("    first delta, new session   : {}", fmt_stats(&n));
    println!("    first delta, warm session  : {}", fmt_stats(&w));
    println!(
        "    NEW SESSION: create median {:.1} ms (warm child), first delta median {:.1} ms vs warm session {:.1} ms (ratio {:.2})",
        c.median,
        n.median,
        w.median,
        n.median / w.median
    );
    Ok(create_ms)
}

/// Creates on a sidecar without warm children; returns their times (ms).
async fn measure_cold_creates(cfg: &Settings, api: &Api) -> anyhow::Result<Vec<f64>> {
    let mut create_ms = Vec::new();
    for i in 0..cfg.new_sessions.div_ceil(2) {
        if !cfg.time_left() {
            break;
        }
        let id = format!("cold-create-{i:04}");
        let t0 = Instant::now();
        let (status, body) = api.create(json!({"id": id})).await;
        create_ms.push(ms(t0.elapsed()));
        ensure!(status == 201, "create {id} answered {status}: {body}");
        let (status, body) = api
            .call("DELETE", &format!("/v1/sessions/{id}"), None)
            .await;
        ensure!(status == 204, "DELETE {id} answered {status}: {body}");
    }
    Ok(create_ms)
}

/// The same comparison in codex alone, over stdio in one warmed-up process: a new thread's
/// first turn against a turn of a thread that has run one. A fresh thread's first turn costs
/// codex more (it captures the login shell's environment, writes the rollout), which no pool of
/// processes can pay ahead: this is the floor of the ratio above.
async fn codex_floor(cfg: &Settings, model: &ScriptedModel) -> anyhow::Result<()> {
    let (mut direct, warm_thread) = direct_codex(&model.base_url()).await?;
    direct_first_delta(&mut direct, &warm_thread, "warm-up").await?;
    let cwd = direct.workdir().display().to_string();
    let (mut new_ms, mut warm_ms) = (Vec::new(), Vec::new());
    for _ in 0..cfg.new_sessions {
        if !cfg.time_left() {
            break;
        }
        let thread = direct
            .start_thread(
                json!({"cwd": cwd, "approvalPolicy": "never", "sandbox": "workspace-write"}),
            )
            .await?;
        new_ms.push(ms(direct_first_delta(
            &mut direct,
            &thread,
            "first message",
        )
        .await?));
        warm_ms.push(ms(direct_first_delta(
            &mut direct,
            &warm_thread,
            "another message",
        )
        .await?));
    }
    direct.stop().await;
    if let (Some(n), Some(w)) = (stats(&new_ms), stats(&warm_ms)) {
        println!(
            "    codex alone (stdio, one process): first delta of a new thread's first turn median {:.1} ms vs a later turn {:.1} ms (ratio {:.2})",
            n.median,
            w.median,
            n.median / w.median
        );
    }
    Ok(())
}
