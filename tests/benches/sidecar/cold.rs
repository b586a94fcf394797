//! Part 5: the next turn of an evicted session (its codex child stopped by `--idle-timeout`),
//! against a spawn-per-query client over a CODEX_HOME of its own (start `codex app-server`,
//! `initialize`, `thread/resume`, `turn/start`, as NanoClaw does), alternating turn by turn.

use std::time::Duration;

use anyhow::{bail, ensure};
use codex_e2e::harness::Sidecar;
use codex_e2e::model::ScriptedModel;
use serde_json::json;

use crate::SUBJECT;
use crate::client::{EventsClient, sidecar_first_delta, wait_count};
use crate::direct::SpawnPerQuery;
use crate::machine::stop_sidecar;
use crate::settings::Settings;
use crate::stats::{fmt_stats, ms, stats};

/// Part 5 (see the module doc).
pub async fn bench_cold(cfg: &Settings, model: &ScriptedModel) -> anyhow::Result<()> {
    println!(
        "\n[5] Cold resume: an evicted session's next turn vs a spawn-per-query client (NanoClaw's way)"
    );
    println!(
        "    sidecar: --idle-timeout 1; after counts.live == 0, POST /messages sent -> the poll holding the first `delta` read"
    );
    println!(
        "    spawn-per-query: spawn codex app-server -> initialize -> thread/resume -> turn/start -> first item/agentMessage/delta read"
    );
    let sc = Sidecar::start(&model.base_url(), &["--idle-timeout", "1"]).await?;
    let r = measure_cold(cfg, model, &sc).await;
    stop_sidecar(sc).await;
    r
}

async fn measure_cold(cfg: &Settings, model: &ScriptedModel, sc: &Sidecar) -> anyhow::Result<()> {
    let api = sc.api(SUBJECT);
    let ev = EventsClient::new(&sc.base)?;
    let (status, body) = api.create(json!({"id": "cold"})).await;
    ensure!(status == 201, "create answered {status}: {body}");
    let mut cursor = sidecar_first_delta(&api, &ev, "cold", 0, "remember this")
        .await?
        .cursor;
    let mut query = SpawnPerQuery::new(&model.base_url())?;
    query.query("remember this").await?;

    let (mut s_ms, mut d_ms) = (Vec::new(), Vec::new());
    let (mut init_ms, mut resume_ms) = (Vec::new(), Vec::new());
    for i in 0..cfg.cold_turns {
        if !cfg.time_left() {
            println!("    (BENCH_MAX_SECS reached: stopped after {i} cold resumes)");
            break;
        }
        wait_count(&api, "live", 0, Duration::from_secs(30)).await?;
        let text = format!("cold turn {i}");
        let s = sidecar_first_delta(&api, &ev, "cold", cursor, &text).await?;
        cursor = s.cursor;
        let d = query.query(&text).await?;
        s_ms.push(ms(s.first_delta));
        d_ms.push(ms(d.first_delta));
        init_ms.push(ms(d.initialized));
        resume_ms.push(ms(d.resumed));
    }
    let (Some(s), Some(d)) = (stats(&s_ms), stats(&d_ms)) else {
        bail!("no cold resume was timed");
    };
    println!("    sidecar, evicted session : {}", fmt_stats(&s));
    println!("    spawn-per-query          : {}", fmt_stats(&d));
    if let (Some(i), Some(r)) = (stats(&init_ms), stats(&resume_ms)) {
        println!(
            "    spawn-per-query breakdown (medians from spawn): initialize answered {:.1} ms, thread/resume answered {:.1} ms",
            i.median, r.median
        );
    }
    println!(
        "    COLD RESUME: first delta median {:.1} ms vs spawn-per-query {:.1} ms (ratio {:.2})",
        s.median,
        d.median,
        s.median / d.median
    );
    Ok(())
}
