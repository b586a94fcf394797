//! What the sidecar costs on top of `codex app-server`: a plain `main` (`harness = false`) that
//! prints numbers. It is a benchmark, not a test: nothing here fails on a slow result.
//!
//! ```sh
//! cargo bench -p codex-e2e --bench sidecar
//! BENCH_TURNS=10 BENCH_SESSIONS=20 BENCH_DELIVERY_TURNS=25 cargo bench -p codex-e2e --bench sidecar
//! BENCH_ONLY=memory cargo bench -p codex-e2e --bench sidecar
//! ```
//!
//! Everything runs on loopback against the real codex (`harness::codex_bin()`) and the in-process
//! [`ScriptedModel`]; the sidecar is the real process (`target/release/codex-sidecar-under-test`,
//! which cargo builds for this bench; `CODEX_SIDECAR_BIN` picks another build). Six parts, each
//! in its module:
//!
//! 1. **Per-turn latency, direct vs sidecar.** The same short echo turn, timed from the client's
//!    point of view: directly over stdio (`turn/start` written -> `turn/completed` read), and
//!    through the sidecar (`POST .../messages` sent -> the `result` event read from a long-poll
//!    `GET .../events?after=CURSOR&wait=30`). Turns of the two paths alternate, one at a time, so
//!    that load from other processes on the machine hits both alike. The difference is the latency
//!    the sidecar adds; each sidecar turn is also split into POST -> 202, 202 -> `result` stamped,
//!    and stamped -> read.
//! 2. **Event delivery latency.** Turns that stream slow deltas (`[[delay_ms=N]]`) while a
//!    long-poll waits; for every `delta` event, the client's receive time minus the event's `time`
//!    field (stamped by the sidecar when it appends the event, same machine clock).
//! 3. **Memory per idle session.** VmRSS of the sidecar process alone (not its codex children):
//!    started on an empty state dir, and restarted on a state dir that holds N idle sessions (each
//!    created through the API with one completed turn).
//! 4. **New sessions** ([`new_session`]). `POST /v1/sessions` with a warm child ready, and the new
//!    session's first delta against a warm session's, alternating; for context, the create time
//!    of a sidecar with `--warm-children 0`.
//! 5. **Cold resume** ([`cold`]). An evicted session's next turn (`--idle-timeout 1`), to its
//!    first delta, against a spawn-per-query client (spawn, `initialize`, `thread/resume`,
//!    `turn/start`), alternating.
//! 6. **Scale** ([`scale`]). 1,000 sessions on one sidecar with `--max-live-sessions 8`: creation
//!    rate, VmRSS per idle session, then 50 of them (mostly evicted) sending at once: turns/s,
//!    time to first delta, the longest wait.
//!
//! Each of parts 1, 4, 5 and 6 ends with one line in a fixed form (`ADDED LATENCY`,
//! `NEW SESSION`, `COLD RESUME`, `SCALE`), so runs can be compared (docs/benchmarks.md).
//!
//! Settings (environment variables; all optional):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_TURNS` | 200 | timed turns per path in part 1 (a median steady to a fraction of a ms needs this many here) |
//! | `BENCH_WARMUP` | 2 | untimed turns per path before part 1 |
//! | `BENCH_DELIVERY_TURNS` | 30 | slow turns in part 2 (each streams 4 deltas) |
//! | `BENCH_DELAY_MS` | 50 | the model's pause before each delta in part 2 |
//! | `BENCH_SESSIONS` | 100 | idle sessions in part 3 |
//! | `BENCH_NEW` | 20 | new sessions timed in part 4 (half as many creates without a warm child) |
//! | `BENCH_COLD` | 15 | cold resumes per path in part 5 |
//! | `BENCH_SCALE_SESSIONS` | 1000 | sessions created in part 6 |
//! | `BENCH_SCALE_CONCURRENT` | 50 | sessions sending at once in part 6 |
//! | `BENCH_ONLY` | all | comma-separated subset of `latency,delivery,memory,new,cold,scale` |
//! | `BENCH_MAX_SECS` | 1800 | overall deadline; a part that reaches it stops and reports what it has |
//!
//! Run without `--bench` (as `cargo test --benches` or `--all-targets` does) it only checks its
//! own helpers and exits, so test runs never start the benchmark.

mod client;
mod cold;
mod direct;
mod latency;
mod machine;
mod memory;
mod new_session;
mod scale;
mod settings;
mod stats;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use codex_e2e::harness::{Sidecar, codex_bin, sidecar_bin};
use codex_e2e::model::ScriptedModel;

use crate::machine::{codex_version, cpu_model, stop_sidecar};
use crate::settings::{Part, Settings, parse_parts};
use crate::stats::{
    civil_from_days, days_from_civil, fmt_utc, parse_rfc3339_nanos, stats, unix_nanos,
};

/// The JWT subject every request of the benchmark acts as.
const SUBJECT: &str = "bench";
/// How long one long-poll may wait (the `wait` query parameter, seconds).
const POLL_WAIT_SECS: u64 = 30;
/// Longest any single turn may take before the benchmark gives up on it.
const TURN_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks the helpers; returns a description of the first failure.
fn self_check() -> Result<(), String> {
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_owned()) };
    check(
        parse_rfc3339_nanos("1970-01-01T00:00:00Z") == Some(0),
        "epoch",
    )?;
    check(
        parse_rfc3339_nanos("1970-01-01T00:00:01.5Z") == Some(1_500_000_000),
        "fraction",
    )?;
    check(
        parse_rfc3339_nanos("2000-03-01T00:00:00.000000001Z") == Some(951_868_800_000_000_001),
        "nanos",
    )?;
    check(
        parse_rfc3339_nanos("1970-01-01T01:00:00+01:00") == Some(0),
        "offset",
    )?;
    for bad in [
        "",
        "nope",
        "2026-13-01T00:00:00Z",
        "2026-01-01T00:00:00",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00.1234567890Z",
    ] {
        check(
            parse_rfc3339_nanos(bad).is_none(),
            &format!("rejects {bad:?}"),
        )?;
    }
    let now = unix_nanos(SystemTime::now());
    let stamped = parse_rfc3339_nanos(&codex_sidecar::store::events::now_rfc3339())
        .ok_or("parses the sidecar's timestamps")?;
    check(
        (stamped - now).abs() < 5_000_000_000,
        "sidecar timestamps agree with the clock",
    )?;
    for z in [-1000, 0, 59, 10_957, 20_000, 40_000] {
        let (y, m, d) = civil_from_days(z);
        check(days_from_civil(y, m, d) == z, "civil round trip")?;
    }
    let s = stats(&[5.0, 1.0, 3.0, 2.0, 4.0]).ok_or("stats of 5")?;
    check(
        s.median == 3.0 && s.p99 == 5.0 && s.min == 1.0 && s.max == 5.0 && s.mean == 3.0,
        "stats",
    )?;
    check(stats(&[]).is_none(), "stats of nothing")?;
    check(
        parse_parts(Some("memory, latency,bogus"))
            == (vec![Part::Memory, Part::Latency], vec!["bogus".to_owned()]),
        "BENCH_ONLY",
    )?;
    check(
        parse_parts(Some("scale,new,cold")) == (vec![Part::Scale, Part::New, Part::Cold], vec![]),
        "BENCH_ONLY of the new parts",
    )?;
    check(
        parse_parts(None).0 == Part::ALL.to_vec(),
        "BENCH_ONLY unset",
    )?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    if let Err(e) = self_check() {
        eprintln!("benchmark self-check failed: {e}");
        return ExitCode::FAILURE;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "sidecar benchmark: helpers OK; run it with `cargo bench -p codex-e2e --bench sidecar`"
        );
        return ExitCode::SUCCESS;
    }
    let cfg = Settings::from_env();
    let codex = codex_bin();
    let sidecar = sidecar_bin();
    println!("== codex-sidecar benchmark ==");
    println!("date     : {}", fmt_utc(SystemTime::now()));
    println!(
        "machine  : nproc {} | CPU {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!("codex    : {} ({})", codex_version(&codex), codex.display());
    println!("sidecar  : {}", sidecar.display());
    println!(
        "settings : BENCH_TURNS={} BENCH_WARMUP={} BENCH_DELIVERY_TURNS={} BENCH_DELAY_MS={} BENCH_SESSIONS={} BENCH_NEW={} BENCH_COLD={} BENCH_SCALE_SESSIONS={} BENCH_SCALE_CONCURRENT={} BENCH_ONLY={} BENCH_MAX_SECS={}",
        cfg.turns,
        cfg.warmup,
        cfg.delivery_turns,
        cfg.delay_ms,
        cfg.sessions,
        cfg.new_sessions,
        cfg.cold_turns,
        cfg.scale_sessions,
        cfg.scale_concurrent,
        cfg.parts
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(","),
        cfg.max_secs
    );
    if !sidecar.is_file() {
        eprintln!(
            "error: no sidecar binary at {} (build it with `cargo build --release -p codex-e2e --bins`, or set CODEX_SIDECAR_BIN)",
            sidecar.display()
        );
        return ExitCode::FAILURE;
    }
    let begun = Instant::now();
    let model = match ScriptedModel::start().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot start the scripted model: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let wants = |p: Part| cfg.parts.contains(&p);
    if wants(Part::Latency) || wants(Part::Delivery) {
        match Sidecar::start(&model.base_url(), &[]).await {
            Ok(sc) => {
                if wants(Part::Latency)
                    && let Err(e) = latency::bench_latency(&cfg, &model, &sc).await
                {
                    eprintln!("    part 1 failed: {e:#}");
                    failed = true;
                }
                if wants(Part::Delivery)
                    && let Err(e) = latency::bench_delivery(&cfg, &sc).await
                {
                    eprintln!("    part 2 failed: {e:#}");
                    failed = true;
                }
                stop_sidecar(sc).await;
            }
            Err(e) => {
                eprintln!("error: cannot start the sidecar: {e:#}");
                failed = true;
            }
        }
    }
    if wants(Part::Memory)
        && let Err(e) = memory::bench_memory(&cfg, &model).await
    {
        eprintln!("    part 3 failed: {e:#}");
        failed = true;
    }
    if wants(Part::New)
        && let Err(e) = new_session::bench_new(&cfg, &model).await
    {
        eprintln!("    part 4 failed: {e:#}");
        failed = true;
    }
    if wants(Part::Cold)
        && let Err(e) = cold::bench_cold(&cfg, &model).await
    {
        eprintln!("    part 5 failed: {e:#}");
        failed = true;
    }
    if wants(Part::Scale)
        && let Err(e) = scale::bench_scale(&cfg, &model).await
    {
        eprintln!("    part 6 failed: {e:#}");
        failed = true;
    }
    model.shutdown().await;
    println!("\ntotal time: {:.1} s", begun.elapsed().as_secs_f64());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
