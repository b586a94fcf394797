//! The turn lifecycle against the real codex and the scripted model: an interrupt at any moment
//! of a turn (and of the work waiting behind it), exactly-once turns across `kill -9` at every
//! step of a turn's start and end, a thread that cannot be resumed, what `turn_started` and the
//! session view say about the running turn, batches within codex's input limit, a stalled event
//! stream reader, and a codex child that stops reading its input.

use std::time::{Duration, Instant};

use codex_e2e::harness::{Api, Sidecar, codex_pids, files_under, mint, of_type};
use codex_e2e::model::ScriptedModel;
use codex_sidecar::fault::CrashPoint;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);
/// The issue's bound: an interrupt ends the turn within 2 s.
const INTERRUPT_BOUND: Duration = Duration::from_secs(2);

async fn metrics(sc: &Sidecar) -> String {
    reqwest::get(format!("{}/metrics", sc.base))
        .await
        .map(|r| r.text())
        .expect("metrics")
        .await
        .unwrap_or_default()
}

async fn next_seq(api: &Api, id: &str) -> u64 {
    let (_, v) = api.call("GET", &format!("/v1/sessions/{id}"), None).await;
    v["next_seq"].as_u64().unwrap_or(1)
}

/// Interrupts session `id` and waits for `n` results after `after`; returns them and how long
/// the interrupt took to show.
async fn interrupt_and_wait(api: &Api, id: &str, after: u64, n: usize) -> (Vec<Value>, Duration) {
    let t0 = Instant::now();
    let (status, _) = api
        .call("POST", &format!("/v1/sessions/{id}/interrupt"), None)
        .await;
    assert_eq!(status, 202);
    let events = api
        .until_results(id, after, n, Duration::from_secs(30))
        .await
        .expect("results after the interrupt");
    (events, t0.elapsed())
}

fn assert_interrupted(events: &[Value], took: Duration, what: &str) {
    let results = of_type(events, "result");
    assert!(!results.is_empty(), "{what}: {events:?}");
    for r in &results {
        assert_eq!(r["status"], "interrupted", "{what}: {events:?}");
    }
    assert!(
        of_type(events, "error").is_empty(),
        "{what}: no error (codex was not killed): {events:?}"
    );
    assert!(
        took <= INTERRUPT_BOUND,
        "{what}: the interrupt took {took:?}"
    );
}

#[tokio::test]
async fn an_interrupt_at_any_moment_ends_the_turn_interrupted_within_2_s() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(
        &model.base_url(),
        &["--max-live-sessions", "2", "--compact-at-tokens", "5000"],
    )
    .await?;
    let api = sc.api("alice");

    // 1. At once after the 202: before a turn_started, before codex has the turn.
    assert_eq!(api.create(json!({"id": "now"})).await.0, 201);
    assert_eq!(api.send("now", "slow [[delay_ms=2000]]").await.0, 202);
    let (events, took) = interrupt_and_wait(&api, "now", 0, 1).await;
    assert_interrupted(&events, took, "right after the 202");

    // 2. Right after turn_started: codex has answered turn/start but not registered the turn.
    assert_eq!(api.create(json!({"id": "started"})).await.0, 201);
    assert_eq!(api.send("started", "slow [[delay_ms=2000]]").await.0, 202);
    let seen = api
        .collect_until("started", 0, T, |e| e["type"] == "turn_started")
        .await?;
    let (events, took) = interrupt_and_wait(&api, "started", seen.len() as u64, 1).await;
    assert_interrupted(&events, took, "right after turn_started");
    // the session works afterwards, on the same codex
    let after = next_seq(&api, "started").await - 1;
    api.send("started", "after").await;
    let more = api.until_results("started", after, 1, T).await?;
    assert_eq!(more.last().expect("result")["text"], "echo: after");

    // 3. During the first model request (it never answers).
    assert_eq!(api.create(json!({"id": "request"})).await.0, 201);
    let before = model.requests().len();
    assert_eq!(api.send("request", "never ends [[hang]]").await.0, 202);
    model.wait_for_requests(before + 1, T).await?;
    let (events, took) = interrupt_and_wait(&api, "request", 0, 1).await;
    assert_interrupted(&events, took, "during the first model request");

    // 4. Messages queued behind the running turn are interrupted with it (one result each turn:
    //    the running one, and the waiting ones together); a message sent afterwards runs.
    assert_eq!(api.create(json!({"id": "queued"})).await.0, 201);
    assert_eq!(api.send("queued", "running [[hang]]").await.0, 202);
    api.collect_until("queued", 0, T, |e| e["type"] == "turn_started")
        .await?;
    assert_eq!(api.send("queued", "waiting one").await.0, 202);
    assert_eq!(api.send("queued", "waiting two").await.0, 202);
    let (events, took) = interrupt_and_wait(&api, "queued", 0, 2).await;
    assert_interrupted(&events, took, "with messages queued");
    let started = of_type(&events, "turn_started");
    assert_eq!(started.len(), 2, "{events:?}");
    assert_eq!(started[0]["message_ids"], json!(["msg_1"]));
    assert_eq!(started[1]["message_ids"], json!(["msg_2", "msg_3"]));
    let after = next_seq(&api, "queued").await - 1;
    api.send("queued", "sent after the interrupt").await;
    let more = api.until_results("queued", after, 1, T).await?;
    let last = more.last().expect("result");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["text"], "echo: sent after the interrupt");

    // 5. During a compaction: the message waiting behind it is interrupted at once.
    model.set_hang_compactions(true);
    assert_eq!(api.create(json!({"id": "compacting"})).await.0, 201);
    api.send("compacting", "big context [[tokens=6000]]").await;
    api.collect_until("compacting", 0, T, |e| {
        e["type"] == "compaction" && e["phase"] == "started"
    })
    .await?;
    let after = next_seq(&api, "compacting").await - 1;
    assert_eq!(api.send("compacting", "behind the compaction").await.0, 202);
    let (events, took) = interrupt_and_wait(&api, "compacting", after, 1).await;
    assert_interrupted(&events, took, "during a compaction");

    // 6. While the message waits for a free codex slot (both slots busy: the compaction above
    //    and a hanging turn).
    assert_eq!(api.create(json!({"id": "busy"})).await.0, 201);
    api.send("busy", "[[hang]]").await;
    api.collect_until("busy", 0, T, |e| e["type"] == "turn_started")
        .await?;
    assert_eq!(api.create(json!({"id": "slot"})).await.0, 503);
    // "slot" cannot be created now; use an existing idle session instead
    let after = next_seq(&api, "now").await - 1;
    assert_eq!(api.send("now", "waits for a slot").await.0, 202);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, view) = api.call("GET", "/v1/sessions/now", None).await;
    assert_eq!(view["queued"], 1, "still waiting for a slot: {view}");
    let (events, took) = interrupt_and_wait(&api, "now", after, 1).await;
    assert_interrupted(&events, took, "waiting for a codex slot");
    let (_, view) = api.call("GET", "/v1/sessions/busy", None).await;
    assert_eq!(
        view["state"], "running",
        "other sessions are not interrupted"
    );

    let m = metrics(&sc).await;
    assert!(
        m.contains("codex_sidecar_codex_restarts_total 0"),
        "no codex was killed: {m}"
    );
    Ok(())
}

/// The user messages in a model request's input whose text is `text`.
fn user_items_with(body: &Value, text: &str) -> usize {
    body["input"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|i| i["role"] == "user")
                .filter(|i| {
                    i["content"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|p| p["text"] == text))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn every_accepted_message_is_carried_by_exactly_one_turn_across_kill_9_at_every_step()
-> anyhow::Result<()> {
    // A thread's first turn, on the child that started the thread: a restart resumes the
    // thread although session.json says it had no turn yet.
    crash_at_every_step(false).await
}

#[tokio::test]
async fn a_later_turn_on_a_resumed_thread_is_carried_exactly_once_across_kill_9_at_every_step()
-> anyhow::Result<()> {
    // A later turn, on a child that resumed the thread: a restart finds the turn in the
    // thread's history from the oldest waiting message, whose id its clientUserMessageId names.
    crash_at_every_step(true).await
}

/// Crashes the sidecar (`kill -9` by itself) at each [`CrashPoint`] of a turn, restarts it, and
/// checks that the message is carried by exactly one turn, that codex's thread holds it at most
/// once (once when its turn completed), and that the session's usage counts every result once.
/// With `later`, the crashed turn is the thread's second, after a restart that stopped the
/// first turn's child (so the thread is resumed, as after any restart).
///
/// Each point is reached at once after the step before it, and twice more with the crash held
/// back 1 s once `turn/start` is written or answered: codex then runs the turn (and records it
/// in the thread's rollout) before the sidecar dies, so the restart must find that turn in the
/// thread's history instead of sending the message again.
async fn crash_at_every_step(later: bool) -> anyhow::Result<()> {
    let delayed = [CrashPoint::StartSent, CrashPoint::StartAnswered].map(|p| (p, Some("1000")));
    for (point, delay) in CrashPoint::ALL
        .map(|p| (p, None))
        .into_iter()
        .chain(delayed)
    {
        let name = point.name();
        let model = ScriptedModel::start().await?;
        let mut crash = vec![("CODEX_SIDECAR_TEST_CRASH_AT", name)];
        crash.extend(delay.map(|ms| ("CODEX_SIDECAR_TEST_CRASH_DELAY_MS", ms)));
        let name = format!("{name} (delay {delay:?})");
        let mut sc = Sidecar::start_with_env(
            &model.base_url(),
            &["--compact-at-tokens", "0"],
            if later { &[] } else { &crash },
        )
        .await?;
        let mut api = sc.api("alice");
        assert_eq!(api.create(json!({"id": "x"})).await.0, 201, "{name}");
        let before = if later {
            assert_eq!(api.send("x", "before the crash").await.0, 202);
            api.until_results("x", 0, 1, T).await?;
            for (k, v) in &crash {
                sc.set_env(k, Some(v));
            }
            sc.restart().await?;
            api = api.with_base(&sc.base);
            1
        } else {
            0
        };
        let probe_id = format!("msg_{}", before + 1);
        let probe = format!("probe at {name} [[delay_ms=100]] [[tokens=100]]");
        // The turn starts as soon as the message is on disk, alongside the 202: a crash point
        // can beat the answer. The client then retries with its idempotency key after the
        // restart, and is told the message was accepted.
        let (status, sent) = api.send_keyed("x", &probe, "probe-key").await;
        let answered = status == 202;
        if answered {
            assert_eq!(sent["message_id"], probe_id.as_str(), "{name}");
        } else {
            assert_eq!(status, 0, "{name}: no answer at all, or the 202: {sent}");
        }
        assert!(
            sc.wait_exited(Duration::from_secs(60)).await,
            "{name}: the crash point was reached"
        );
        for (k, _) in &crash {
            sc.set_env(k, None);
        }
        sc.restart().await?;
        let api = api.with_base(&sc.base);
        if !answered {
            let (status, again) = api.send_keyed("x", &probe, "probe-key").await;
            assert_eq!(
                (
                    status,
                    again["message_id"].as_str(),
                    again["duplicate"].as_bool()
                ),
                (200, Some(probe_id.as_str()), Some(true)),
                "{name}: the retry finds the message accepted before the crash"
            );
        }
        api.until_results("x", 0, before + 1, T).await?;
        api.send("x", "after the restart").await;
        let events = api
            .until_results("x", 0, before + 2, T)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}\n{}", sc.log()))?;

        let carrying: Vec<&Value> = of_type(&events, "turn_started")
            .into_iter()
            .filter(|e| {
                e["message_ids"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|i| i == probe_id.as_str()))
            })
            .collect();
        assert_eq!(
            carrying.len(),
            1,
            "{name}: one turn carries {probe_id}: {events:?}"
        );
        let turn_id = carrying[0]["turn_id"].clone();
        let results: Vec<&Value> = of_type(&events, "result")
            .into_iter()
            .filter(|r| r["turn_id"] == turn_id)
            .collect();
        assert_eq!(results.len(), 1, "{name}: one result for it: {events:?}");
        let last = events.last().expect("result");
        assert_eq!(last["text"], "echo: after the restart", "{name}");
        // The session's usage counts every result once, whichever step the crash cut
        // (session.json is rewritten after the result: a load adds what it missed).
        let reported: u64 = of_type(&events, "result")
            .iter()
            .filter_map(|r| r["usage"]["input_tokens"].as_u64())
            .sum();
        let (_, view) = api.call("GET", "/v1/sessions/x", None).await;
        assert_eq!(
            view["usage"]["input_tokens"].as_u64(),
            Some(reported),
            "{name}: {view}"
        );
        // codex's thread holds the probe at most once (once when its turn completed), and
        // the earlier turn's message exactly once
        let final_request = model
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.last_user_text.as_deref() == Some("after the restart"))
            .expect("the last turn's request");
        if later {
            assert_eq!(
                user_items_with(&final_request.body, "before the crash"),
                1,
                "{name}: the thread was resumed, not replaced: {events:?}"
            );
        }
        let in_thread = user_items_with(&final_request.body, &probe);
        if results[0]["status"] == "completed" {
            assert_eq!(in_thread, 1, "{name}: {events:?}");
        } else {
            assert!(in_thread <= 1, "{name}: {in_thread} copies");
            assert!(
                of_type(&events, "error")
                    .iter()
                    .any(|e| e["code"] == "turn_lost" && e["retryable"] == true),
                "{name}: a lost turn says so: {events:?}"
            );
        }
        if delay.is_some() {
            // codex had the turn: it is reported under codex's turn id, not sent again
            assert_ne!(turn_id, "", "{name}: {events:?}");
            assert!(
                sc.log().contains("had reached codex"),
                "{name}: the restart found the turn in the thread's history\n{}",
                sc.log()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_thread_that_keeps_failing_to_resume_is_replaced_after_the_set_attempts()
-> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(
        &model.base_url(),
        &["--idle-timeout", "1", "--resume-attempts", "2"],
    )
    .await?;
    let api = sc.api("alice");
    let (_, created) = api.create(json!({"id": "r"})).await;
    let old_thread = created["thread_id"].as_str().expect("thread").to_owned();
    api.send("r", "first").await;
    let first = api.until_results("r", 0, 1, T).await?;
    // the idle child is stopped; then the rollout gets damaged: codex answers thread/resume
    // with an internal error ("failed to read thread ..."), not "no rollout found"
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, st) = api.call("GET", "/v1/status", None).await;
        if st["counts"]["live"] == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the idle child was not stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rollouts = files_under(&sc.state_dir, |p| {
        p.to_string_lossy().contains(&old_thread) && p.extension().is_some_and(|e| e == "jsonl")
    });
    assert!(!rollouts.is_empty(), "found the rollout");
    for r in &rollouts {
        std::fs::write(r, "garbage{\n")?;
    }
    api.send("r", "second").await;
    let events = api
        .until_results("r", first.len() as u64, 1, Duration::from_secs(60))
        .await?;
    let errors = of_type(&events, "error");
    assert!(
        errors.iter().any(|e| e["code"] == "codex_unavailable"),
        "the first failure is retried: {events:?}"
    );
    let replaced: Vec<_> = errors
        .iter()
        .filter(|e| e["code"] == "thread_replaced")
        .collect();
    assert_eq!(replaced.len(), 1, "{events:?}");
    assert!(
        replaced[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&old_thread) && m.contains("2 attempts")),
        "{replaced:?}"
    );
    let inits = of_type(&events, "init");
    assert_eq!(inits.len(), 1, "{events:?}");
    assert_ne!(inits[0]["thread_id"], old_thread.as_str());
    let result = events.last().expect("result");
    assert_eq!(result["status"], "completed");
    assert_eq!(result["text"], "echo: second");
    let (_, view) = api.call("GET", "/v1/sessions/r", None).await;
    assert_eq!(view["thread_id"], inits[0]["thread_id"]);
    Ok(())
}

#[tokio::test]
async fn turn_started_counts_the_batch_and_the_session_shows_the_running_turn() -> anyhow::Result<()>
{
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "v"})).await.0, 201);
    let (_, idle) = api.call("GET", "/v1/sessions/v", None).await;
    assert_eq!(idle["current_turn_id"], Value::Null);
    assert_eq!(idle["turn_started_at"], Value::Null);
    api.send("v", "slow [[delay_ms=500]]").await;
    let first = api
        .collect_until("v", 0, T, |e| e["type"] == "turn_started")
        .await?;
    let started = first.last().expect("turn_started");
    assert_eq!(
        (
            started["message_count"].as_u64(),
            started["queued"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let (_, view) = api.call("GET", "/v1/sessions/v", None).await;
    assert_eq!(view["state"], "running");
    assert_eq!(view["current_turn_id"], started["turn_id"]);
    let at = view["turn_started_at"].as_str().expect("turn_started_at");
    let time = started["time"].as_str().expect("time");
    // RFC 3339 like the events' `time`, and the same second
    assert!(at.ends_with('Z') && at.contains('T'), "{at}");
    assert_eq!(at.get(..19), time.get(..19), "{at} vs {time}");
    for i in 0..34 {
        assert_eq!(api.send("v", &format!("queued {i}")).await.0, 202);
    }
    let events = api.until_results("v", 0, 3, T).await?;
    let counts: Vec<_> = of_type(&events, "turn_started")
        .iter()
        .map(|e| (e["message_count"].as_u64(), e["queued"].as_u64()))
        .collect();
    assert_eq!(
        counts,
        [(Some(1), Some(0)), (Some(32), Some(2)), (Some(2), Some(0))],
        "{events:?}"
    );
    let (_, done) = api.call("GET", "/v1/sessions/v", None).await;
    assert_eq!(done["current_turn_id"], Value::Null);
    assert_eq!(done["turn_started_at"], Value::Null);
    Ok(())
}

/// Queues `n` messages of 200 KiB behind a slow turn and returns the texts.
async fn queue_big_messages(api: &Api, id: &str, n: usize) -> anyhow::Result<Vec<String>> {
    assert_eq!(api.send(id, "slow first [[delay_ms=500]]").await.0, 202);
    api.collect_until(id, 0, T, |e| e["type"] == "turn_started")
        .await?;
    let mut texts = Vec::new();
    for i in 0..n {
        let text = format!("big-{i:02} {}", "x".repeat(200 * 1024 - 7));
        let (status, body) = api.send(id, &text).await;
        assert_eq!(status, 202, "{body}");
        texts.push(text);
    }
    Ok(texts)
}

/// Every event of session `id` so far (a poll answer holds at most about 1 MiB: page on).
async fn all_events(api: &Api, id: &str) -> anyhow::Result<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let (status, page) = api
            .call(
                "GET",
                &format!("/v1/sessions/{id}/events?after={}&limit=1000", out.len()),
                None,
            )
            .await;
        anyhow::ensure!(status == 200, "events answered {status}");
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            return Ok(out);
        }
        out.extend(events);
    }
}

/// Every text reached the model in some turn, and every turn completed.
fn assert_all_delivered(model: &ScriptedModel, events: &[Value], texts: &[String]) {
    let seen: Vec<String> = model
        .requests()
        .into_iter()
        .flat_map(|r| r.turn_user_texts)
        .collect();
    for t in texts {
        assert!(
            seen.iter().any(|s| s.contains(t.as_str())),
            "{} never reached the model",
            &t[..6]
        );
    }
    for r in of_type(events, "result") {
        assert_eq!(r["status"], "completed", "{}", r["seq"]);
    }
    assert!(of_type(events, "error").is_empty(), "no error");
}

#[tokio::test]
async fn big_queued_messages_go_in_turns_within_codex_input_limit() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    model.set_default_input_tokens(Some(1000));
    let sc = Sidecar::start(&model.base_url(), &["--compact-at-tokens", "0"]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "b"})).await.0, 201);
    let texts = queue_big_messages(&api, "b", 30).await?;
    // 5 x 200 KiB fit in codex's 1,048,576 characters, 6 do not: 6 turns after the first
    let events = api
        .until_results("b", 0, 7, Duration::from_secs(180))
        .await?;
    let counts: Vec<_> = of_type(&events, "turn_started")
        .iter()
        .map(|e| e["message_count"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(counts, [1, 5, 5, 5, 5, 5, 5]);
    assert_all_delivered(&model, &events, &texts);
    Ok(())
}

#[tokio::test]
async fn a_batch_codex_refuses_for_its_size_is_split_not_dropped() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    model.set_default_input_tokens(Some(1000));
    // The sidecar is told (test-only) that codex takes 4,000,000 characters: its batches are too
    // big for codex, which refuses them; they must be split until codex takes them.
    let sc = Sidecar::start_with_env(
        &model.base_url(),
        &["--compact-at-tokens", "0"],
        &[("CODEX_SIDECAR_TEST_INPUT_CHARS", "4000000")],
    )
    .await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "s"})).await.0, 201);
    let texts = queue_big_messages(&api, "s", 12).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let events = loop {
        let events = all_events(&api, "s").await?;
        let carried: usize = of_type(&events, "turn_started")
            .iter()
            .map(|e| e["message_count"].as_u64().unwrap_or(0) as usize)
            .sum();
        let results = of_type(&events, "result").len();
        if carried == 13 && results == of_type(&events, "turn_started").len() {
            break events;
        }
        anyhow::ensure!(Instant::now() < deadline, "not all delivered: {events:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_all_delivered(&model, &events, &texts);
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_its_event_stream_is_dropped() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let model = ScriptedModel::start().await?;
    model.set_default_input_tokens(Some(1000));
    let sc = Sidecar::start(
        &model.base_url(),
        &["--compact-at-tokens", "0", "--http-write-timeout", "2"],
    )
    .await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "st"})).await.0, 201);
    // about 6 MB of events: more than the socket buffers hold
    for i in 0..12 {
        let text = format!("chunk-{i:02} {}", "y".repeat(250 * 1024));
        assert_eq!(api.send("st", &text).await.0, 202);
    }
    api.until_results("st", 0, 3, Duration::from_secs(180))
        .await?;

    let addr = sc.base.trim_start_matches("http://").parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut conn = socket.connect(addr).await?;
    let token = mint("alice", None, 600);
    conn.write_all(
        format!(
            "GET /v1/sessions/st/events/stream?after=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    // the client reads nothing; the sidecar serves everyone else meanwhile
    for _ in 0..5 {
        let t0 = Instant::now();
        let (status, _) = api.call("GET", "/v1/sessions/st", None).await;
        assert_eq!(status, 200);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // By now the stalled stream was dropped: what the buffers held, then the end.
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut sink)).await;
    assert!(
        ended.is_ok(),
        "the stream is still open after {} bytes",
        sink.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_codex_that_stops_reading_its_input_is_replaced_and_the_message_runs()
-> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "w"})).await.0, 201);
    api.send("w", "first").await;
    let first = api.until_results("w", 0, 1, T).await?;
    // codex stops reading (SIGSTOP): a turn/start bigger than the pipe cannot be written
    let children = codex_pids(sc.pid().expect("pid"));
    assert!(!children.is_empty());
    for &pid in &children {
        // SAFETY: signals a codex child of the sidecar under test.
        unsafe {
            libc::kill(pid as i32, libc::SIGSTOP);
        }
    }
    let big = format!("big {}", "z".repeat(200 * 1024));
    assert_eq!(api.send("w", &big).await.0, 202);
    let events = api
        .until_results("w", first.len() as u64, 1, Duration::from_secs(60))
        .await?;
    let started = of_type(&events, "turn_started");
    assert_eq!(started.len(), 1, "{events:?}");
    assert_eq!(started[0]["message_ids"], json!(["msg_2"]));
    let result = events.last().expect("result");
    assert_eq!(result["status"], "completed");
    assert_eq!(result["text"], format!("echo: {big}"));
    let m = metrics(&sc).await;
    assert!(
        m.contains("codex_sidecar_codex_restarts_total 1"),
        "the stuck child was replaced: {m}"
    );
    Ok(())
}
