//! Parts 1 and 2: the latency the sidecar adds to a warm turn, and event delivery latency.

use std::time::Instant;

use anyhow::{bail, ensure};
use codex_e2e::harness::Sidecar;
use codex_e2e::model::ScriptedModel;
use serde_json::json;

use crate::client::{EventsClient, sidecar_timed_turn};
use crate::direct::{direct_codex, direct_timed_turn};
use crate::settings::Settings;
use crate::stats::{fmt_stats, ms, parse_rfc3339_nanos, stats, unix_nanos};
use crate::{POLL_WAIT_SECS, SUBJECT, TURN_TIMEOUT};

/// Part 1: per-turn latency, direct vs through the sidecar, alternating turn by turn.
pub async fn bench_latency(
    cfg: &Settings,
    model: &ScriptedModel,
    sc: &Sidecar,
) -> anyhow::Result<()> {
    println!(
        "\n[1] Per-turn latency: codex app-server over stdio vs the same turn through the sidecar"
    );
    println!(
        "    direct : write turn/start -> read turn/completed (one thread, one codex process)"
    );
    println!(
        "    sidecar: send POST /messages -> read the `result` event from GET /events?after=CURSOR&wait={POLL_WAIT_SECS}"
    );
    println!(
        "    turns alternate direct/sidecar; {} warm-up turns per path are not counted",
        cfg.warmup
    );

    let (mut direct, thread_id) = direct_codex(&model.base_url()).await?;
    let api = sc.api(SUBJECT);
    let ev = EventsClient::new(&sc.base)?;
    let (status, created) = api.create(json!({"id": "latency"})).await;
    ensure!(status == 201, "create answered {status}: {created}");
    let mut cursor = 0u64;

    let (mut d_ms, mut s_ms, mut waited) = (Vec::new(), Vec::new(), 0usize);
    let (mut post_ms, mut result_ms, mut middle_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut to_started_ms, mut started_to_result_ms) = (Vec::new(), Vec::new());
    let (mut d_answer_ms, mut d_rest_ms) = (Vec::new(), Vec::new());
    let total = cfg.warmup + cfg.turns;
    for i in 0..total {
        if !cfg.time_left() {
            println!(
                "    (BENCH_MAX_SECS reached: stopped after {} timed turns)",
                d_ms.len()
            );
            break;
        }
        let text = format!("latency turn {i}");
        let d = direct_timed_turn(&mut direct, &thread_id, &text).await?;
        let s = sidecar_timed_turn(&api, &ev, "latency", cursor, &text).await?;
        cursor = s.cursor;
        if i >= cfg.warmup {
            d_ms.push(ms(d.total));
            d_answer_ms.push(ms(d.answered));
            d_rest_ms.push(ms(d.total) - ms(d.answered));
            if let Some((a, b)) = s.stamps {
                to_started_ms.push(a);
                started_to_result_ms.push(b);
            }
            s_ms.push(ms(s.total));
            post_ms.push(ms(s.post));
            if let Some(r) = s.result_delivery {
                result_ms.push(r);
                middle_ms.push(ms(s.total) - ms(s.post) - r);
            }
            waited += usize::from(s.waiting);
        }
    }
    direct.stop().await;

    let (Some(d), Some(s)) = (stats(&d_ms), stats(&s_ms)) else {
        bail!("no timed turns");
    };
    let paired: Vec<f64> = s_ms.iter().zip(&d_ms).map(|(s, d)| s - d).collect();
    println!("    direct  : {}", fmt_stats(&d));
    println!("    sidecar : {}", fmt_stats(&s));
    println!(
        "    ADDED LATENCY per turn (sidecar - direct): median {:+.3} ms, p99 {:+.3} ms",
        s.median - d.median,
        s.p99 - d.p99
    );
    if let Some(p) = stats(&paired) {
        println!(
            "    (paired per-turn difference: median {:+.3} ms, p99 {:+.3} ms, min {:+.3} ms)",
            p.median, p.p99, p.min
        );
    }
    if let (Some(p), Some(r), Some(m)) = (stats(&post_ms), stats(&result_ms), stats(&middle_ms)) {
        println!("    where the sidecar's time goes (medians; p99 in brackets):");
        println!(
            "      POST /messages -> 202 (HTTP + inbox write + fdatasync)   {:>8.3} ms [{:.3}]",
            p.median, p.p99
        );
        println!(
            "      202 -> `result` stamped (actor, codex turn, bookkeeping) {:>8.3} ms [{:.3}]   (direct turn: {:.3} ms)",
            m.median, m.p99, d.median
        );
        println!(
            "      `result` stamped -> read from the long-poll              {:>8.3} ms [{:.3}]",
            r.median, r.p99
        );
    }
    if let (Some(a), Some(b), Some(da), Some(db)) = (
        stats(&to_started_ms),
        stats(&started_to_result_ms),
        stats(&d_answer_ms),
        stats(&d_rest_ms),
    ) {
        println!(
            "    the middle part split at the `turn_started` stamp (medians; direct in brackets):"
        );
        println!(
            "      202 -> `turn_started` (wake, batch, turn/start answered)       {:>8.3} ms   (turn/start answered: {:.3} ms)",
            a.median, da.median
        );
        println!(
            "      `turn_started` -> `result` (codex's turn, each event appended)   {:>8.3} ms   (answer -> turn/completed: {:.3} ms)",
            b.median, db.median
        );
    }
    println!(
        "    results delivered to a long-poll that was already waiting: {waited}/{}",
        s_ms.len()
    );
    Ok(())
}

/// Part 2: delta event delivery latency to a waiting long-poll.
pub async fn bench_delivery(cfg: &Settings, sc: &Sidecar) -> anyhow::Result<()> {
    println!(
        "\n[2] Event delivery latency: sidecar appends a `delta` event -> a waiting long-poll client has it"
    );
    println!(
        "    {} turns with [[delay_ms={}]] (4 deltas each, {} ms apart); sample = client receive time - event `time`",
        cfg.delivery_turns, cfg.delay_ms, cfg.delay_ms
    );
    println!(
        "    covers: event log append (write(2), no fsync) + watch wake-up + long-poll handler + HTTP on loopback"
    );
    println!(
        "            + client read; not codex itself, nor the sidecar's parsing of codex's line before the append"
    );
    let api = sc.api(SUBJECT);
    let ev = EventsClient::new(&sc.base)?;
    let (status, created) = api.create(json!({"id": "delivery"})).await;
    ensure!(status == 201, "create answered {status}: {created}");

    let mut cursor = 0u64;
    let (mut waiting, mut not_waiting, mut unparsed) = (Vec::new(), Vec::new(), 0usize);
    for k in 0..cfg.delivery_turns {
        if !cfg.time_left() {
            println!("    (BENCH_MAX_SECS reached: stopped after {k} turns)");
            break;
        }
        let (status, body) = api
            .send(
                "delivery",
                &format!("delivery turn {k} [[delay_ms={}]]", cfg.delay_ms),
            )
            .await;
        ensure!(status == 202, "POST messages answered {status}: {body}");
        let turn_deadline = Instant::now() + TURN_TIMEOUT;
        'turn: loop {
            ensure!(
                Instant::now() < turn_deadline,
                "turn {k}: no result within {TURN_TIMEOUT:?}"
            );
            let p = ev.poll("delivery", cursor, POLL_WAIT_SECS).await?;
            cursor = p.next;
            let (sent, recv) = (unix_nanos(p.sent_wall), unix_nanos(p.received_wall));
            for e in &p.events {
                match e["type"].as_str() {
                    Some("delta") => match e["time"].as_str().and_then(parse_rfc3339_nanos) {
                        Some(t) => {
                            let lat_ms = (recv - t) as f64 / 1e6;
                            if sent <= t {
                                waiting.push(lat_ms)
                            } else {
                                not_waiting.push(lat_ms)
                            }
                        }
                        None => unparsed += 1,
                    },
                    Some("result") => {
                        ensure!(
                            e["status"] == "completed",
                            "turn {k} ended {}: {e}",
                            e["status"]
                        );
                        break 'turn;
                    }
                    _ => {}
                }
            }
        }
    }
    match stats(&waiting) {
        Some(s) => println!(
            "    DELIVERY LATENCY (poll waiting when the event was stamped): {}",
            fmt_stats(&s)
        ),
        None => println!("    no delta reached a waiting long-poll"),
    }
    if let Some(s) = stats(&not_waiting) {
        println!(
            "    deltas that arrived between polls (picked up by the next poll): {}",
            fmt_stats(&s)
        );
    }
    if unparsed > 0 {
        println!("    warning: {unparsed} delta events had no parsable `time`");
    }
    if waiting.len() < 100 {
        println!("    note: fewer than 100 samples; raise BENCH_DELIVERY_TURNS for a steadier p99");
    }
    Ok(())
}
