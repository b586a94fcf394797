//! Failures a user would otherwise hit: the model server down (turn timeout), `kill -9` of the
//! sidecar, idle eviction and LRU eviction of codex children, and a codex child that dies.

use std::time::{Duration, Instant};

use codex_e2e::harness::{Sidecar, assert_gapless, child_pids, free_port, of_type, wait_for};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_turn_with_the_model_server_down_times_out_with_a_clear_error() -> anyhow::Result<()> {
    // Nothing listens on this port: codex retries forever ("Reconnecting...").
    let down = format!("http://127.0.0.1:{}/v1", free_port());
    let sc = Sidecar::start(&down, &["--turn-timeout", "8"]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "t"})).await.0, 201);
    let t0 = Instant::now();
    assert_eq!(api.send("t", "anyone there?").await.0, 202);
    let events = api
        .until_results("t", 0, 1, Duration::from_secs(60))
        .await?;
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_secs(7),
        "the deadline is enforced, not earlier: {elapsed:?}"
    );
    let retries: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "activity" && e["kind"] == "retry")
        .collect();
    assert!(
        !retries.is_empty(),
        "codex's retry notices are surfaced: {events:?}"
    );
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:?}");
    // The deadline holds, and the error names the cause the model server check found.
    assert_eq!(errors[0]["code"], "model_server_unreachable");
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--turn-timeout")),
        "{events:?}"
    );
    assert_eq!(errors[0]["retryable"], true);
    assert_eq!(events.last().expect("result")["status"], "failed");
    // readiness tells the truth about the provider
    let (status, ready) = codex_e2e::harness::Api::new(&sc.base, None)
        .call("GET", "/readyz", None)
        .await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["provider"]["ok"], false);
    assert_eq!(ready["checks"]["codex"]["ok"], true);
    Ok(())
}

#[tokio::test]
async fn heartbeats_keep_coming_during_a_long_turn() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    api.create(json!({"id": "h"})).await;
    api.send("h", "[[hang]]").await;
    let events = api
        .collect_until("h", 0, Duration::from_secs(40), |e| {
            e["type"] == "activity" && e["kind"] == "heartbeat"
        })
        .await?;
    let started = events
        .iter()
        .find(|e| e["type"] == "turn_started")
        .expect("turn started");
    let t0 = time_of(started);
    let hb = time_of(events.last().expect("heartbeat"));
    assert!(
        hb - t0 <= 20.0,
        "first heartbeat within 20 s of the turn start ({}s)",
        hb - t0
    );
    Ok(())
}

fn time_of(e: &Value) -> f64 {
    // seconds of the day from an RFC 3339 "....THH:MM:SS.fffZ"
    let t = e["time"].as_str().unwrap_or_default();
    let hms = t
        .split('T')
        .nth(1)
        .unwrap_or("0:0:0Z")
        .trim_end_matches('Z');
    let mut parts = hms.split(':');
    let h: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let m: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let s: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    h * 3600.0 + m * 60.0 + s
}

#[tokio::test]
async fn kill_9_loses_no_accepted_message_and_no_event() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    let (_, created) = api.create(json!({"id": "k"})).await;
    let thread_id = created["thread_id"].as_str().expect("thread").to_owned();
    api.send("k", "before the crash").await;
    let before = api.until_results("k", 0, 1, T).await?;

    // A turn is running, a second message is queued behind it (202), then kill -9.
    api.send("k", "slow turn [[delay_ms=1000]]").await;
    api.collect_until("k", before.len() as u64, T, |e| e["type"] == "turn_started")
        .await?;
    let (status, queued) = api.send("k", "accepted just before the crash").await;
    assert_eq!(status, 202);
    assert_eq!(queued["message_id"], "msg_3");
    sc.kill9().await;

    sc.restart().await?;
    let api = api.with_base(&sc.base);
    // Everything from seq 1 again, read across the restart: gapless, no duplicates, unchanged.
    let all = api.until_results("k", 0, 3, T).await?;
    assert_gapless(&all, 1);
    assert_eq!(
        &all[..before.len()],
        &before[..],
        "events from before the crash are unchanged"
    );
    let after: Vec<&Value> = all[before.len()..].iter().collect();
    let errors: Vec<&&Value> = after.iter().filter(|e| e["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "{after:?}");
    assert_eq!(errors[0]["code"], "turn_lost");
    let results: Vec<&&Value> = after.iter().filter(|e| e["type"] == "result").collect();
    assert_eq!(
        results[0]["status"], "failed",
        "the interrupted turn is closed"
    );
    assert_eq!(
        results[1]["text"], "echo: accepted just before the crash",
        "the queued message ran"
    );
    let started: Vec<&&Value> = after
        .iter()
        .filter(|e| e["type"] == "turn_started")
        .collect();
    assert_eq!(
        started.last().expect("turn")["message_ids"],
        json!(["msg_3"])
    );
    assert!(
        after.iter().all(|e| e["type"] != "init"),
        "same thread resumed, no new init"
    );
    let (_, view) = api.call("GET", "/v1/sessions/k", None).await;
    assert_eq!(view["thread_id"], thread_id.as_str());

    // a client that polled up to some cursor before the crash continues exactly there
    let cursor = before.len() as u64;
    let (_, page) = api.events("k", cursor, 0).await;
    assert_eq!(page["events"][0]["seq"].as_u64(), Some(cursor + 1));
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_streams_and_reports_the_cut_turn_as_retryable() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    api.create(json!({"id": "g"})).await;
    api.send("g", "[[hang]]").await;
    api.collect_until("g", 0, T, |e| e["type"] == "turn_started")
        .await?;
    // a client holding an event stream open must not keep the sidecar from stopping
    let stream = reqwest::Client::new()
        .get(format!("{}/v1/sessions/g/events/stream", sc.base))
        .bearer_auth(codex_e2e::harness::mint("alice", None, 600))
        .send()
        .await?;
    assert_eq!(stream.status(), 200);
    let took = sc.terminate(Duration::from_secs(40)).await?;
    assert!(took < Duration::from_secs(30), "stopped in {took:?}");
    drop(stream);

    sc.restart().await?;
    let api = api.with_base(&sc.base);
    let events = api.until_results("g", 0, 1, T).await?;
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0]["code"], "sidecar_stopping");
    assert_eq!(errors[0]["retryable"], true);
    assert_eq!(events.last().expect("result")["status"], "failed");
    Ok(())
}

#[tokio::test]
async fn idle_sessions_are_stopped_and_resumed_transparently() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--idle-timeout", "2"]).await?;
    let api = sc.api("alice");
    let (_, created) = api.create(json!({"id": "idle"})).await;
    api.send("idle", "remember KESTREL").await;
    let first = api.until_results("idle", 0, 1, T).await?;
    assert_eq!(live(&api).await, 1);
    wait_for(
        "no live codex child",
        || async { live(&api).await == 0 },
        Duration::from_secs(20),
    )
    .await?;

    api.send("idle", "still there?").await;
    let second = api.until_results("idle", first.len() as u64, 1, T).await?;
    assert!(
        of_type(&second, "init").is_empty(),
        "no new init: {second:?}"
    );
    assert_eq!(second.last().expect("result")["text"], "echo: still there?");
    let (_, view) = api.call("GET", "/v1/sessions/idle", None).await;
    assert_eq!(view["thread_id"], created["thread_id"]);
    let last = model.requests().into_iter().last().expect("request");
    assert!(
        last.body.to_string().contains("KESTREL"),
        "the resumed thread kept its history"
    );
    Ok(())
}

#[tokio::test]
async fn the_least_recently_used_idle_child_makes_room() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--max-live-sessions", "2"]).await?;
    let api = sc.api("alice");
    // Each session gets a first turn (codex writes a thread to disk at its first turn), then a
    // second round forces every one of them to be evicted and resumed.
    for round in 0..2 {
        for id in ["a", "b", "c"] {
            if round == 0 {
                assert_eq!(api.create(json!({"id": id})).await.0, 201);
            }
            let after = seq(&api, id).await - 1;
            assert_eq!(api.send(id, &format!("{id} round {round}")).await.0, 202);
            let ev = api.until_results(id, after, 1, T).await?;
            assert_eq!(ev.last().expect("result")["status"], "completed");
            assert!(
                live(&api).await <= 2,
                "never more than --max-live-sessions children"
            );
        }
    }
    for id in ["a", "b", "c"] {
        let (_, events) = api.events(id, 0, 0).await;
        let events = events["events"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            of_type(&events, "init").len(),
            1,
            "{id}: resumed, never re-initialised"
        );
        assert_eq!(of_type(&events, "result").len(), 2);
    }
    let text = reqwest::get(format!("{}/metrics", sc.base))
        .await?
        .text()
        .await?;
    assert!(
        !text.contains("codex_sidecar_evictions_total 0"),
        "evictions were counted: {text}"
    );
    Ok(())
}

#[tokio::test]
async fn creating_a_session_when_every_slot_is_busy_says_so() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--max-live-sessions", "1"]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "busy"})).await.0, 201);
    api.send("busy", "[[hang]]").await;
    api.collect_until("busy", 0, T, |e| e["type"] == "turn_started")
        .await?;
    let t0 = Instant::now();
    let (status, body) = api.create(json!({"id": "waiting"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("capacity_exhausted")),
        "{body}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "answered in {:?}",
        t0.elapsed()
    );
    let (status, _) = api.call("GET", "/v1/sessions/waiting", None).await;
    assert_eq!(status, 404, "nothing half-created is left behind");
    // once the slot frees up, creation works
    api.call("POST", "/v1/sessions/busy/interrupt", None).await;
    api.until_results("busy", 0, 1, T).await?;
    assert_eq!(api.create(json!({"id": "waiting"})).await.0, 201);
    Ok(())
}

#[tokio::test]
async fn a_message_waiting_for_a_slot_keeps_the_client_informed() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--max-live-sessions", "1"]).await?;
    let api = sc.api("alice");
    for id in ["a", "b"] {
        assert_eq!(api.create(json!({"id": id})).await.0, 201);
    }
    api.send("a", "[[hang]]").await;
    api.collect_until("a", 0, T, |e| e["type"] == "turn_started")
        .await?;
    let after = seq(&api, "b").await - 1;
    api.send("b", "my turn next").await;
    let waiting = api
        .collect_until("b", after, Duration::from_secs(40), |e| {
            e["type"] == "activity" && e["kind"] == "waiting"
        })
        .await?;
    assert!(of_type(&waiting, "turn_started").is_empty());
    api.call("POST", "/v1/sessions/a/interrupt", None).await;
    let done = api.until_results("b", after, 1, T).await?;
    assert_eq!(done.last().expect("result")["text"], "echo: my turn next");
    Ok(())
}

#[tokio::test]
async fn a_dead_codex_child_is_restarted_and_its_thread_resumed() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    let (_, created) = api.create(json!({"id": "d"})).await;
    api.send("d", "remember OSPREY").await;
    let first = api.until_results("d", 0, 1, T).await?;
    // kill every codex app-server child of this sidecar
    let pid = sc.pid().expect("pid");
    let killed = kill_children(pid);
    assert!(killed > 0, "found the codex child");
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.send("d", "after the crash").await;
    let second = api.until_results("d", first.len() as u64, 1, T).await?;
    assert_eq!(
        second.last().expect("result")["text"],
        "echo: after the crash"
    );
    assert!(of_type(&second, "init").is_empty());
    let (_, view) = api.call("GET", "/v1/sessions/d", None).await;
    assert_eq!(view["thread_id"], created["thread_id"]);
    assert!(
        model
            .requests()
            .last()
            .expect("req")
            .body
            .to_string()
            .contains("OSPREY")
    );
    let text = reqwest::get(format!("{}/metrics", sc.base))
        .await?
        .text()
        .await?;
    assert!(
        text.contains("codex_sidecar_codex_restarts_total 1"),
        "{text}"
    );
    Ok(())
}

/// SIGKILLs every child process of `parent`; returns how many there were.
fn kill_children(parent: u32) -> usize {
    let children = child_pids(parent);
    for &pid in &children {
        // SAFETY: signals a child process of the sidecar under test.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    children.len()
}

async fn live(api: &codex_e2e::harness::Api) -> u64 {
    let (_, s) = api.call("GET", "/v1/status", None).await;
    s["counts"]["live"].as_u64().unwrap_or(u64::MAX)
}

async fn seq(api: &codex_e2e::harness::Api, id: &str) -> u64 {
    let (_, v) = api.call("GET", &format!("/v1/sessions/{id}"), None).await;
    v["next_seq"].as_u64().unwrap_or(1)
}

#[tokio::test]
async fn a_drain_lets_the_running_turn_finish_and_holds_new_ones_without_losing_them()
-> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    let operator = sc.api("codex-operator");
    api.create(json!({"id": "d"})).await;
    api.send("d", "slow [[delay_ms=800]]").await;
    api.collect_until("d", 0, T, |e| e["type"] == "turn_started")
        .await?;

    // Only the operator may drain (any tenant could otherwise stop everyone's turns).
    let (status, body) = api.call("POST", "/v1/drain", None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let (status, body) = operator.call("POST", "/v1/drain", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["draining"], true);
    assert_eq!(body["running"], 1, "the running turn is counted: {body}");
    // A message sent while draining is accepted and waits.
    assert_eq!(api.send("d", "second").await.0, 202);
    // The running turn is not cut: it ends completed, and then nothing runs.
    let events = api.until_results("d", 0, 1, T).await?;
    assert_eq!(events.last().expect("result")["status"], "completed");
    let idle = async {
        loop {
            let (_, b) = operator.call("POST", "/v1/drain", None).await;
            if b["running"] == 0 {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let body = tokio::time::timeout(Duration::from_secs(10), idle).await?;
    assert_eq!(body["queued"], 1, "the second message waits: {body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, page) = api.events("d", 0, 0).await;
    let all = page["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        of_type(&all, "turn_started").len(),
        1,
        "no turn starts while draining: {all:?}"
    );
    let (_, st) = operator.call("GET", "/v1/status", None).await;
    assert_eq!(st["draining"], true, "{st}");

    // Ending the drain runs what waited.
    let (status, body) = operator.call("DELETE", "/v1/drain", None).await;
    assert_eq!((status, &body["draining"]), (200, &json!(false)), "{body}");
    let events = api.until_results("d", 0, 2, T).await?;
    let results = of_type(&events, "result");
    assert_eq!(results.len(), 2, "{events:?}");
    assert!(
        results[1]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("second"),
        "{events:?}"
    );
    Ok(())
}
