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
//! which cargo builds for this bench; `CODEX_SIDECAR_BIN` picks another build). Three parts:
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
//!
//! Settings (environment variables; all optional):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_TURNS` | 40 | timed turns per path in part 1 |
//! | `BENCH_WARMUP` | 2 | untimed turns per path before part 1 |
//! | `BENCH_DELIVERY_TURNS` | 30 | slow turns in part 2 (each streams 4 deltas) |
//! | `BENCH_DELAY_MS` | 50 | the model's pause before each delta in part 2 |
//! | `BENCH_SESSIONS` | 100 | idle sessions in part 3 |
//! | `BENCH_ONLY` | all | comma-separated subset of `latency,delivery,memory` |
//! | `BENCH_MAX_SECS` | 600 | overall deadline; a part that reaches it stops and reports what it has |
//!
//! Run without `--bench` (as `cargo test --benches` or `--all-targets` does) it only checks its
//! own helpers and exits, so test runs never start the benchmark.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use codex_e2e::direct::{DirectCodex, Options, method_of};
use codex_e2e::harness::{Api, Sidecar, alive, child_pids, codex_bin, mint, sidecar_bin};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

/// The JWT subject every request of the benchmark acts as.
const SUBJECT: &str = "bench";
/// How long one long-poll may wait (the `wait` query parameter, seconds).
const POLL_WAIT_SECS: u64 = 30;
/// Longest any single turn may take before the benchmark gives up on it.
const TURN_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// What to run and how much of it, from `BENCH_*` environment variables.
#[derive(Debug, Clone)]
struct Settings {
    turns: usize,
    warmup: usize,
    delivery_turns: usize,
    delay_ms: u64,
    sessions: usize,
    parts: Vec<Part>,
    deadline: Instant,
    max_secs: u64,
}

/// One of the three measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Latency,
    Delivery,
    Memory,
}

impl Part {
    const ALL: [Part; 3] = [Part::Latency, Part::Delivery, Part::Memory];

    fn name(self) -> &'static str {
        match self {
            Part::Latency => "latency",
            Part::Delivery => "delivery",
            Part::Memory => "memory",
        }
    }
}

/// A non-negative integer from the environment; `default` when unset, a warning and `default`
/// when it does not parse.
fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("warning: {name}={v:?} is not a non-negative integer; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// Parses `BENCH_ONLY` (`latency,delivery,memory`, or `all`): the parts asked for, in order, and
/// the words that name no part.
fn parse_parts(spec: Option<&str>) -> (Vec<Part>, Vec<String>) {
    let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty() && *s != "all") else {
        return (Part::ALL.to_vec(), Vec::new());
    };
    let (mut parts, mut unknown) = (Vec::new(), Vec::new());
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match Part::ALL.iter().find(|p| p.name() == word) {
            Some(p) if !parts.contains(p) => parts.push(*p),
            Some(_) => {}
            None => unknown.push(word.to_owned()),
        }
    }
    (parts, unknown)
}

impl Settings {
    fn from_env() -> Settings {
        let max_secs = env_u64("BENCH_MAX_SECS", 600).max(1);
        let (parts, unknown) = parse_parts(std::env::var("BENCH_ONLY").ok().as_deref());
        for word in unknown {
            eprintln!(
                "warning: BENCH_ONLY: unknown part {word:?} (known: latency, delivery, memory)"
            );
        }
        Settings {
            turns: usize::try_from(env_u64("BENCH_TURNS", 40))
                .unwrap_or(40)
                .max(1),
            warmup: usize::try_from(env_u64("BENCH_WARMUP", 2)).unwrap_or(2),
            delivery_turns: usize::try_from(env_u64("BENCH_DELIVERY_TURNS", 30))
                .unwrap_or(30)
                .max(1),
            delay_ms: env_u64("BENCH_DELAY_MS", 50).clamp(1, 10_000),
            sessions: usize::try_from(env_u64("BENCH_SESSIONS", 100))
                .unwrap_or(100)
                .max(1),
            parts,
            deadline: Instant::now() + Duration::from_secs(max_secs),
            max_secs,
        }
    }

    fn time_left(&self) -> bool {
        Instant::now() < self.deadline
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and time helpers
// ---------------------------------------------------------------------------------------------

/// Summary of a set of durations (percentiles by the nearest-rank method).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    n: usize,
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// The nearest-rank `p`-th percentile of sorted `xs` (`None` when empty).
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Min, median, p99, max and mean of `xs` (milliseconds), `None` when empty or not finite.
fn stats(xs: &[f64]) -> Option<Stats> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(Stats {
        n: v.len(),
        min: *v.first()?,
        median: percentile(&v, 50.0)?,
        p99: percentile(&v, 99.0)?,
        max: *v.last()?,
        mean: v.iter().sum::<f64>() / v.len() as f64,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_stats(s: &Stats) -> String {
    format!(
        "n={:<4} median {:>8.3} ms   p99 {:>8.3} ms   (min {:.3}, mean {:.3}, max {:.3})",
        s.n, s.median, s.p99, s.min, s.mean, s.max
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses an RFC 3339 timestamp (`2026-11-21T05:02:24.123456789Z`, any fraction length up to
/// nanoseconds, `Z` or `+HH:MM`/`-HH:MM`) to nanoseconds since the Unix epoch. `None` when the
/// text is not of that form.
fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        let digits = s.get(start..end)?;
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        nanos = i128::from(digits.parse::<i64>().ok()?) * 10i128.pow(9 - digits.len() as u32);
        i = end;
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let off = oh * 3600 + om * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Nanoseconds since the Unix epoch of a wall-clock time.
fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// `YYYY-MM-DD HH:MM UTC` for `t`.
fn fmt_utc(t: SystemTime) -> String {
    let secs = (unix_nanos(t) / 1_000_000_000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

// ---------------------------------------------------------------------------------------------
// Machine and process facts
// ---------------------------------------------------------------------------------------------

/// The first `model name` line of /proc/cpuinfo.
fn cpu_model() -> String {
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
fn codex_version(bin: &Path) -> String {
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
fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Kills the sidecar and waits (at most 10 s) for its codex children to exit, so that dropping
/// it can remove its state dir (a child still writing its rollout would leave files behind).
async fn stop_sidecar(mut sc: Sidecar) {
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
async fn settled_rss_kib(pid: u32, settle: Duration) -> anyhow::Result<u64> {
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
// ---------------------------------------------------------------------------------------------

/// A [`DirectCodex`] configured like the sidecar configures its children (same provider table;
/// the thread gets the sidecar's approval policy and sandbox), so that the only difference
/// between the two paths is the sidecar; returns it with its thread's id.
async fn direct_codex(model_base_url: &str) -> anyhow::Result<(DirectCodex, String)> {
    let options = Options {
        timeout: TURN_TIMEOUT,
        ..Options::default()
    };
    let mut direct = DirectCodex::spawn(model_base_url, &options).await?;
    direct.initialize("codex-bench").await?;
    let cwd = direct.workdir().display().to_string();
    let thread_id = direct
        .start_thread(json!({"cwd": cwd, "approvalPolicy": "never", "sandbox": "workspace-write"}))
        .await?;
    Ok((direct, thread_id))
}

/// One direct turn: the time from writing `turn/start` to reading its `turn/completed`.
async fn direct_timed_turn(
    direct: &mut DirectCodex,
    thread_id: &str,
    text: &str,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let started = direct.start_turn(thread_id, text).await?;
    let turn_id = started
        .pointer("/turn/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let (t1, done) = direct
        .read_until(|m| {
            method_of(m) == Some("turn/completed")
                && (turn_id.is_empty()
                    || m.pointer("/params/turn/id").and_then(Value::as_str)
                        == Some(turn_id.as_str()))
        })
        .await?
        .pop()
        .context("no turn/completed")?;
    let status = done
        .pointer("/params/turn/status")
        .and_then(Value::as_str)
        .unwrap_or("?");
    ensure!(status == "completed", "direct turn ended {status}: {done}");
    Ok(t1.duration_since(t0))
}

// ---------------------------------------------------------------------------------------------
// Timed long-poll client for the sidecar
// ---------------------------------------------------------------------------------------------

/// A long-poll `GET .../events` that notes when it was sent and when its answer was read.
struct Polled {
    /// Wall-clock time just before the request was sent.
    sent_wall: SystemTime,
    /// Monotonic and wall-clock time just after the whole body was read.
    received: Instant,
    received_wall: SystemTime,
    events: Vec<Value>,
    next: u64,
}

/// The sidecar's events API, with its own connection and timestamps.
struct EventsClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl EventsClient {
    fn new(base: &str) -> anyhow::Result<EventsClient> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(POLL_WAIT_SECS + 30))
            .build()
            .context("building the HTTP client")?;
        Ok(EventsClient {
            http,
            base: base.to_owned(),
            token: mint(SUBJECT, None, 3600),
        })
    }

    /// `GET /v1/sessions/{id}/events?after=&wait=`.
    async fn poll(&self, id: &str, after: u64, wait: u64) -> anyhow::Result<Polled> {
        let url = format!(
            "{}/v1/sessions/{id}/events?after={after}&wait={wait}",
            self.base
        );
        let sent_wall = SystemTime::now();
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .context("events poll")?;
        let status = resp.status();
        let body = resp.bytes().await.context("events poll body")?;
        let (received, received_wall) = (Instant::now(), SystemTime::now());
        ensure!(
            status.is_success(),
            "events poll answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body).context("events poll: body is not JSON")?;
        let events = v
            .get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let next = v
            .get("next")
            .and_then(Value::as_u64)
            .context("events poll: no `next`")?;
        Ok(Polled {
            sent_wall,
            received,
            received_wall,
            events,
            next,
        })
    }
}

/// How one turn through the sidecar went, from the client's side.
struct SidecarTurn {
    /// POST sent -> `result` event read.
    total: Duration,
    /// POST sent -> its 202 read (includes the inbox's `fdatasync`).
    post: Duration,
    /// The result's `time` stamp -> the client read it (wall clock), when the stamp parsed.
    result_delivery: Option<f64>,
    /// Whether the poll that delivered the result was sent before the result was stamped.
    waiting: bool,
    /// The cursor after the result.
    cursor: u64,
}

/// Sends one message through the sidecar and follows the events with long-polls from `cursor`
/// until its `result`.
async fn sidecar_timed_turn(
    api: &Api,
    ev: &EventsClient,
    id: &str,
    cursor: u64,
    text: &str,
) -> anyhow::Result<SidecarTurn> {
    let deadline = Instant::now() + TURN_TIMEOUT;
    let t0 = Instant::now();
    let (status, body) = api.send(id, text).await;
    let post = t0.elapsed();
    ensure!(status == 202, "POST messages answered {status}: {body}");
    let mut cursor = cursor;
    loop {
        ensure!(
            Instant::now() < deadline,
            "no result within {TURN_TIMEOUT:?}"
        );
        let p = ev.poll(id, cursor, POLL_WAIT_SECS).await?;
        cursor = p.next;
        if let Some(result) = p.events.iter().find(|e| e["type"] == "result") {
            ensure!(
                result["status"] == "completed",
                "sidecar turn ended {}: {result}",
                result["status"]
            );
            let stamped = result["time"].as_str().and_then(parse_rfc3339_nanos);
            return Ok(SidecarTurn {
                total: p.received.duration_since(t0),
                post,
                result_delivery: stamped.map(|t| (unix_nanos(p.received_wall) - t) as f64 / 1e6),
                waiting: stamped.is_some_and(|t| unix_nanos(p.sent_wall) <= t),
                cursor,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The three parts
// ---------------------------------------------------------------------------------------------

/// Part 1: per-turn latency, direct vs through the sidecar, alternating turn by turn.
async fn bench_latency(cfg: &Settings, model: &ScriptedModel, sc: &Sidecar) -> anyhow::Result<()> {
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
            d_ms.push(ms(d));
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
    println!(
        "    results delivered to a long-poll that was already waiting: {waited}/{}",
        s_ms.len()
    );
    Ok(())
}

/// Part 2: delta event delivery latency to a waiting long-poll.
async fn bench_delivery(cfg: &Settings, sc: &Sidecar) -> anyhow::Result<()> {
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

/// Part 3: sidecar RSS per idle session.
async fn bench_memory(cfg: &Settings, model: &ScriptedModel) -> anyhow::Result<()> {
    println!(
        "\n[3] Memory per idle session: VmRSS of the sidecar process only (codex children excluded)"
    );
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let r = measure_memory(cfg, &mut sc).await;
    stop_sidecar(sc).await;
    r
}

/// The body of part 3, on a sidecar freshly started on an empty state dir.
async fn measure_memory(cfg: &Settings, sc: &mut Sidecar) -> anyhow::Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Self-checks (run instead of the benchmark when cargo runs this target as a test)
// ---------------------------------------------------------------------------------------------

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
    Ok(())
}

// ---------------------------------------------------------------------------------------------

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
        "settings : BENCH_TURNS={} BENCH_WARMUP={} BENCH_DELIVERY_TURNS={} BENCH_DELAY_MS={} BENCH_SESSIONS={} BENCH_ONLY={} BENCH_MAX_SECS={}",
        cfg.turns,
        cfg.warmup,
        cfg.delivery_turns,
        cfg.delay_ms,
        cfg.sessions,
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
                    && let Err(e) = bench_latency(&cfg, &model, &sc).await
                {
                    eprintln!("    part 1 failed: {e:#}");
                    failed = true;
                }
                if wants(Part::Delivery)
                    && let Err(e) = bench_delivery(&cfg, &sc).await
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
        && let Err(e) = bench_memory(&cfg, &model).await
    {
        eprintln!("    part 3 failed: {e:#}");
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
