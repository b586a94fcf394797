//! The session API against the real codex and the scripted model: a text turn, messages queued
//! during a turn, interrupt, compaction at the threshold (once), thread resume by id, server-sent
//! events, settings changed after creation (`PATCH`), a delete ending waiting polls and streams,
//! idempotent sends, and bad input.

use std::time::Duration;

use codex_e2e::harness::{Api, Sidecar, assert_gapless, of_type};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

#[tokio::test]
async fn text_turn_streams_deltas_and_a_result() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");

    let (status, created) = api
        .create(json!({"id": "chat-1", "instructions": "Be brief."}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "chat-1");
    assert_eq!(created["resumed"], false);
    let thread_id = created["thread_id"].as_str().expect("thread id").to_owned();

    let (status, again) = api.create(json!({"id": "chat-1"})).await;
    assert_eq!(
        status, 200,
        "same id for the same owner returns the session"
    );
    assert_eq!(again["thread_id"], thread_id.as_str());

    let (status, sent) = api.send("chat-1", "hello there [[tokens=1234]]").await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(sent["message_id"], "msg_1");

    let events = api.until_results("chat-1", 0, 1, T).await?;
    assert_gapless(&events, 1);
    assert_eq!(events[0]["type"], "init");
    assert_eq!(events[0]["thread_id"], thread_id.as_str());
    assert!(
        events
            .iter()
            .all(|e| e["time"].as_str().is_some_and(|t| t.contains('T')))
    );
    let started = of_type(&events, "turn_started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["message_ids"], json!(["msg_1"]));
    let deltas: String = of_type(&events, "delta")
        .iter()
        .filter_map(|d| d["text"].as_str())
        .collect();
    assert_eq!(deltas, "echo: hello there [[tokens=1234]]");
    let result = events.last().expect("result");
    assert_eq!(result["status"], "completed");
    assert_eq!(result["text"], "echo: hello there [[tokens=1234]]");
    assert_eq!(result["turn_id"], started[0]["turn_id"]);
    assert_eq!(result["usage"]["input_tokens"], 1234);

    let (status, view) = api.call("GET", "/v1/sessions/chat-1", None).await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "idle");
    assert_eq!(view["queued"], 0);
    assert_eq!(view["context_tokens"], 1234);
    assert_eq!(view["usage"]["input_tokens"], 1234);
    assert_eq!(view["next_seq"].as_u64(), Some(events.len() as u64 + 1));

    // the instructions reached codex as developer instructions
    let req = model
        .requests()
        .into_iter()
        .next()
        .expect("a model request");
    assert!(req.body.to_string().contains("Be brief."));

    let (status, list) = api.call("GET", "/v1/sessions", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1));

    // a long-poll with nothing new returns after `wait` with no events and the same cursor
    let last = result["seq"].as_u64().expect("seq");
    let t0 = std::time::Instant::now();
    let (status, empty) = api.events("chat-1", last, 1).await;
    assert_eq!(status, 200);
    assert_eq!(empty["events"], json!([]));
    assert_eq!(empty["next"].as_u64(), Some(last));
    assert!(t0.elapsed() >= Duration::from_millis(900));

    let (status, _) = api.call("DELETE", "/v1/sessions/chat-1", None).await;
    assert_eq!(status, 204);
    let (status, gone) = api.call("GET", "/v1/sessions/chat-1", None).await;
    assert_eq!(status, 404);
    assert_eq!(gone["error"]["code"], "session_not_found");
    Ok(())
}

#[tokio::test]
async fn messages_sent_during_a_turn_are_queued_and_sent_as_the_next_turn() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "q"})).await.0, 201);

    assert_eq!(api.send("q", "first [[delay_ms=500]]").await.0, 202);
    // wait until the first turn is running, then queue two more
    api.collect_until("q", 0, T, |e| e["type"] == "turn_started")
        .await?;
    let (s2, b2) = api.send("q", "second").await;
    let (s3, b3) = api.send("q", "third").await;
    assert_eq!((s2, s3), (202, 202));
    assert_eq!(b2["queued"], 1);
    assert_eq!(b3["queued"], 2);

    let events = api.until_results("q", 0, 2, T).await?;
    assert_gapless(&events, 1);
    let started = of_type(&events, "turn_started");
    assert_eq!(started.len(), 2, "two turns: {events:?}");
    assert_eq!(started[0]["message_ids"], json!(["msg_1"]));
    assert_eq!(
        started[1]["message_ids"],
        json!(["msg_2", "msg_3"]),
        "queued messages form one turn"
    );
    let results = of_type(&events, "result");
    assert_eq!(results[0]["text"], "echo: first [[delay_ms=500]]");
    assert_eq!(
        results[0]["status"], "completed",
        "the queued messages did not steer the running turn"
    );
    assert_eq!(results[1]["text"], "echo: second\nthird");
    assert_eq!(results[1]["status"], "completed");
    Ok(())
}

#[tokio::test]
async fn interrupt_stops_the_running_turn() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "i"})).await.0, 201);
    assert_eq!(api.send("i", "never ends [[hang]]").await.0, 202);
    api.collect_until("i", 0, T, |e| e["type"] == "turn_started")
        .await?;
    model.wait_for_requests(1, T).await?;
    let (status, view) = api.call("GET", "/v1/sessions/i", None).await;
    assert_eq!((status, view["state"].as_str()), (200, Some("running")));

    let (status, _) = api.call("POST", "/v1/sessions/i/interrupt", None).await;
    assert_eq!(status, 202);
    let events = api
        .until_results("i", 0, 1, Duration::from_secs(30))
        .await?;
    let result = events.last().expect("result");
    assert_eq!(result["status"], "interrupted", "{events:?}");

    // the session still works afterwards
    assert_eq!(api.send("i", "after").await.0, 202);
    let last = result["seq"].as_u64().expect("seq");
    let more = api.until_results("i", last, 1, T).await?;
    assert_eq!(more.last().expect("result")["text"], "echo: after");
    Ok(())
}

#[tokio::test]
async fn compaction_runs_once_when_context_passes_the_threshold() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--compact-at-tokens", "5000"]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "c"})).await.0, 201);

    // below the threshold: no compaction
    assert_eq!(api.send("c", "small [[tokens=4999]]").await.0, 202);
    let e1 = api.until_results("c", 0, 1, T).await?;
    // at the threshold: compaction after the turn
    assert_eq!(api.send("c", "big [[tokens=5000]]").await.0, 202);
    let e2 = api
        .collect_until("c", e1.len() as u64, T, |e| {
            e["type"] == "compaction" && e["phase"] == "completed"
        })
        .await?;
    let comp = of_type(&e2, "compaction");
    assert_eq!(comp.len(), 2, "{e2:?}");
    assert_eq!(comp[0]["phase"], "started");
    assert_eq!(comp[0]["context_tokens"], 5000);
    assert!(
        comp[1]["context_tokens"].as_u64().is_some_and(|t| t < 5000),
        "{}",
        comp[1]
    );
    // two more turns with a small context: no new compaction
    let after = e1.len() as u64 + e2.len() as u64;
    assert_eq!(api.send("c", "third").await.0, 202);
    let e3 = api.until_results("c", after, 1, T).await?;
    assert_eq!(api.send("c", "fourth").await.0, 202);
    let e4 = api
        .until_results("c", after + e3.len() as u64, 1, T)
        .await?;
    assert!(of_type(&e3, "compaction").is_empty() && of_type(&e4, "compaction").is_empty());
    assert_eq!(
        model.compaction_requests(),
        1,
        "exactly one compaction request reached the model"
    );
    let (_, view) = api.call("GET", "/v1/sessions/c", None).await;
    assert_eq!(view["compactions"], 1);
    assert!(of_type(&e1, "compaction").is_empty());

    // an explicit compaction request works too
    assert_eq!(
        api.call("POST", "/v1/sessions/c/compact", None).await.0,
        202
    );
    let last = after + e3.len() as u64 + e4.len() as u64;
    api.collect_until("c", last, T, |e| {
        e["type"] == "compaction" && e["phase"] == "completed"
    })
    .await?;
    assert_eq!(model.compaction_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn a_new_session_can_continue_an_existing_thread() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let alice = sc.api("alice");
    let (_, a) = alice.create(json!({"id": "a"})).await;
    let thread_id = a["thread_id"].as_str().expect("thread").to_owned();
    alice.send("a", "remember the word PELICAN").await;
    alice.until_results("a", 0, 1, T).await?;

    let (status, b) = alice
        .create(json!({"id": "b", "thread_id": thread_id}))
        .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["resumed"], true);
    assert_eq!(b["thread_id"], thread_id.as_str());
    alice.send("b", "what was the word?").await;
    let events = alice.until_results("b", 0, 1, T).await?;
    assert_eq!(events[0]["type"], "init");
    assert_eq!(events[0]["resumed"], true);
    // the model saw the earlier conversation in the resumed thread
    let last = model.requests().into_iter().last().expect("request");
    assert!(
        last.body.to_string().contains("PELICAN"),
        "history carried over"
    );

    // unknown thread, and another owner's thread, are both thread_not_found
    let (status, err) = alice
        .create(json!({"thread_id": "01a1fc6a-0000-7000-8000-000000000000"}))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("thread_not_found"))
    );
    let (status, err) = sc.api("bob").create(json!({"thread_id": thread_id})).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("thread_not_found"))
    );
    Ok(())
}

#[tokio::test]
async fn server_sent_events_resume_from_last_event_id() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    api.create(json!({"id": "s"})).await;
    api.send("s", "streamed").await;
    let all = api.until_results("s", 0, 1, T).await?;

    let token = codex_e2e::harness::mint("alice", None, 600);
    let http = reqwest::Client::new();
    let read = |last_id: Option<u64>| {
        let http = http.clone();
        let token = token.clone();
        let url = format!("{}/v1/sessions/s/events/stream", sc.base);
        async move {
            let mut req = http.get(url).bearer_auth(token);
            if let Some(id) = last_id {
                req = req.header("Last-Event-ID", id.to_string());
            }
            let mut resp = req.send().await.expect("stream");
            assert_eq!(resp.status(), 200);
            let mut text = String::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("event: result") {
                    break;
                }
            }
            text
        }
    };
    let text = read(None).await;
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(ids, (1..=all.len() as u64).collect::<Vec<_>>());
    assert!(text.contains("event: init") && text.contains("event: delta"));
    let text = read(Some(3)).await;
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(ids.first(), Some(&4), "resumes after Last-Event-ID");
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_stable_error_and_loses_nothing() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "ok"})).await.0, 201);
    let http = reqwest::Client::new();
    let token = codex_e2e::harness::mint("alice", None, 600);
    let raw = |method: reqwest::Method, path: &str, body: &'static str| {
        let req = http
            .request(method, format!("{}{}", sc.base, path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let r = req.send().await.expect("send");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    let (s, b) = raw(
        reqwest::Method::POST,
        "/v1/sessions/ok/messages",
        "{not json",
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_json"));
    let (s, b) = raw(
        reqwest::Method::POST,
        "/v1/sessions/ok/messages",
        r#"{"txt":"x"}"#,
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_request"));
    let (s, b) = raw(
        reqwest::Method::POST,
        "/v1/sessions",
        r#"{"id":"../../etc"}"#,
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_session_id"));
    let (s, b) = raw(reqwest::Method::POST, "/v1/sessions", r#"{"id":"a/b"}"#).await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_session_id"));
    let (s, b) = api
        .call("GET", "/v1/sessions/..%2F..%2Fetc/events", None)
        .await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_session_id"));
    let (s, b) = api
        .call("GET", "/v1/sessions/ok/events?after=-1", None)
        .await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_query"));
    let (s, b) = api.call("GET", "/v1/sessions/nope/events", None).await;
    assert_eq!((s, code(&b).as_str()), (404, "session_not_found"));
    let (s, b) = api.send("ok", &"x".repeat(300 * 1024)).await;
    assert_eq!((s, code(&b).as_str()), (413, "text_too_large"));
    // the server answers 413 without reading the rest and closes that connection: use its own
    // client. A send may be 16 MiB (room for images), any other body 1 MiB.
    let oversized = sc.api("alice");
    let (s, b) = oversized
        .call(
            "POST",
            "/v1/sessions/ok/messages",
            Some(json!({"text": "y".repeat(17 * 1024 * 1024)})),
        )
        .await;
    assert_eq!((s, code(&b).as_str()), (413, "body_too_large"));
    let (s, b) = sc
        .api("alice")
        .call(
            "PATCH",
            "/v1/sessions/ok",
            Some(json!({"instructions": "y".repeat(2 * 1024 * 1024)})),
        )
        .await;
    assert_eq!((s, code(&b).as_str()), (413, "body_too_large"));
    let (s, b) = api.call("PUT", "/v1/sessions/ok", None).await;
    assert_eq!((s, code(&b).as_str()), (405, "method_not_allowed"));
    let (s, b) = raw(
        reqwest::Method::PATCH,
        "/v1/sessions/ok",
        r#"{"prompt":"x"}"#,
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_request"));
    let (s, b) = raw(reqwest::Method::PATCH, "/v1/sessions/ok", r#"{"model":7}"#).await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_request"));
    let (s, b) = api
        .call("PATCH", "/v1/sessions/nope", Some(json!({"model": "m"})))
        .await;
    assert_eq!((s, code(&b).as_str()), (404, "session_not_found"));
    let (s, b) = api.send_keyed("ok", "x", "not a key!").await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_idempotency_key"));
    let (s, b) = api.call("GET", "/v2/nothing", None).await;
    assert_eq!((s, code(&b).as_str()), (404, "not_found"));
    let no_ct = http
        .post(format!("{}/v1/sessions/ok/messages", sc.base))
        .bearer_auth(&token)
        .body(r#"{"text":"x"}"#)
        .send()
        .await?;
    assert_eq!(no_ct.status().as_u16(), 415);

    // queue cap: keep a turn hanging, then fill the queue
    assert_eq!(api.send("ok", "[[hang]]").await.0, 202);
    api.collect_until("ok", 0, T, |e| e["type"] == "turn_started")
        .await?;
    for i in 0..100 {
        let (s, b) = api.send("ok", &format!("queued {i}")).await;
        assert_eq!(s, 202, "{b}");
    }
    let (s, b) = api.send("ok", "one too many").await;
    assert_eq!((s, code(&b).as_str()), (429, "queue_full"));
    let (_, view) = api.call("GET", "/v1/sessions/ok", None).await;
    assert_eq!(view["queued"], 100, "nothing already accepted was lost");
    // the process is still healthy
    assert_eq!(
        Api::new(&sc.base, None)
            .call("GET", "/healthz", None)
            .await
            .0,
        200
    );
    Ok(())
}

/// With `--approval-policy untrusted` codex asks before running a command; the sidecar answers
/// with `--approval-decision` and reports it, and the turn does not hang.
#[tokio::test]
async fn approval_requests_are_answered_with_the_configured_decision() -> anyhow::Result<()> {
    for (decision, expect_file) in [("accept", true), ("decline", false)] {
        let model = ScriptedModel::start().await?;
        let sc = Sidecar::start(
            &model.base_url(),
            &[
                "--approval-policy",
                "untrusted",
                "--approval-decision",
                decision,
                "--sandbox",
                "danger-full-access",
            ],
        )
        .await?;
        let api = sc.api("alice");
        api.create(json!({"id": "ap"})).await;
        api.send("ap", "make a file [[exec=touch approved-by-sidecar.txt]]")
            .await;
        let events = api.until_results("ap", 0, 1, T).await?;
        let approvals: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "activity" && e["kind"] == "approval")
            .collect();
        assert_eq!(approvals.len(), 1, "{decision}: {events:?}");
        assert_eq!(
            approvals[0]["method"],
            "item/commandExecution/requestApproval"
        );
        assert_eq!(approvals[0]["decision"], decision);
        let result = events.last().expect("result");
        assert_eq!(
            result["status"], "completed",
            "{decision}: the turn went on after the answer"
        );
        assert!(
            result["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("tool output:")),
            "{result}"
        );
        let found = !codex_e2e::harness::files_under(&sc.state_dir, |p| {
            p.ends_with("workspace/approved-by-sidecar.txt")
        })
        .is_empty();
        assert_eq!(
            found, expect_file,
            "{decision}: the command ran only when accepted: {events:?}"
        );
    }
    Ok(())
}

/// The body of the newest model request that is not a compaction, as text.
fn last_turn_request(model: &ScriptedModel) -> String {
    model
        .requests()
        .into_iter()
        .rev()
        .find(|r| !r.is_compaction)
        .map(|r| r.body.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn patch_changes_instructions_model_and_effort_from_the_next_turn() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(
        api.create(json!({"id": "p", "instructions": "Old rule: answer in English."}))
            .await
            .0,
        201
    );
    api.send("p", "one").await;
    api.until_results("p", 0, 1, T).await?;
    assert!(last_turn_request(&model).contains("Old rule: answer in English."));

    // a composed CLAUDE.md can pass 64 KiB: 300 KiB of instructions are accepted
    let big = format!(
        "New rule: sign with NANO. {}",
        "context line\n".repeat(300 * 1024 / 13)
    );
    let (s, view) = api
        .call(
            "PATCH",
            "/v1/sessions/p",
            Some(json!({"instructions": big, "model": "scripted-2", "effort": "low"})),
        )
        .await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(view["id"], "p");
    let (_, before) = api.call("GET", "/v1/sessions/p", None).await;
    api.send("p", "two").await;
    let events = api
        .until_results("p", before["next_seq"].as_u64().unwrap_or(1) - 1, 1, T)
        .await?;
    let result = events.last().expect("result");
    assert_eq!(result["status"], "completed", "{events:?}");
    assert_eq!(result["text"], "echo: two");
    let body = last_turn_request(&model);
    assert!(
        body.contains("New rule: sign with NANO."),
        "the new instructions reached the model"
    );
    assert!(
        body.contains("\"model\":\"scripted-2\""),
        "the new model is used"
    );
    assert!(
        body.contains("\"effort\":\"low\""),
        "the new effort is used"
    );
    assert_eq!(
        of_type(&events, "init").len(),
        0,
        "the same thread went on: {events:?}"
    );

    // a compaction puts the thread's original instructions back into its context: the next turn
    // is given the session's again
    assert_eq!(
        api.call("POST", "/v1/sessions/p/compact", None).await.0,
        202
    );
    api.collect_until("p", 0, T, |e| {
        e["type"] == "compaction" && e["phase"] == "completed"
    })
    .await?;
    let (_, before) = api.call("GET", "/v1/sessions/p", None).await;
    api.send("p", "after the compaction").await;
    api.until_results("p", before["next_seq"].as_u64().unwrap_or(1) - 1, 1, T)
        .await?;
    assert!(last_turn_request(&model).contains("New rule: sign with NANO."));
    // a turn/start names the model only when it changes: codex keeps the last one named
    assert!(last_turn_request(&model).contains("\"model\":\"scripted-2\""));

    // the settings survive a restart
    let mut sc = sc;
    sc.restart().await?;
    let api = api.with_base(&sc.base);
    let (_, before) = api.call("GET", "/v1/sessions/p", None).await;
    api.send("p", "three").await;
    api.until_results("p", before["next_seq"].as_u64().unwrap_or(1) - 1, 1, T)
        .await?;
    assert!(last_turn_request(&model).contains("New rule: sign with NANO."));
    assert!(last_turn_request(&model).contains("\"model\":\"scripted-2\""));

    // over 512 KiB is refused; null clears a setting
    let (s, b) = api
        .call(
            "PATCH",
            "/v1/sessions/p",
            Some(json!({"instructions": "x".repeat(512 * 1024 + 1)})),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("field_too_long"))
    );
    let (s, _) = api
        .call("PATCH", "/v1/sessions/p", Some(json!({"model": null})))
        .await;
    assert_eq!(s, 200);
    let (_, before) = api.call("GET", "/v1/sessions/p", None).await;
    api.send("p", "four").await;
    api.until_results("p", before["next_seq"].as_u64().unwrap_or(1) - 1, 1, T)
        .await?;
    assert!(last_turn_request(&model).contains("\"model\":\"scripted\""));
    Ok(())
}

#[tokio::test]
async fn delete_ends_waiting_polls_and_streams_at_once() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "d"})).await.0, 201);
    let (_, view) = api.call("GET", "/v1/sessions/d", None).await;
    let last = view["next_seq"].as_u64().unwrap_or(1) - 1;
    let poller = api.clone();
    let poll = tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        let r = poller.events("d", last, 60).await;
        (r, t0.elapsed())
    });
    let stream = reqwest::Client::new()
        .get(format!(
            "{}/v1/sessions/d/events/stream?after={last}",
            sc.base
        ))
        .bearer_auth(codex_e2e::harness::mint("alice", None, 600))
        .send()
        .await?;
    assert_eq!(stream.status().as_u16(), 200);
    let streamed = tokio::spawn(async move { stream.text().await.unwrap_or_default() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = std::time::Instant::now();
    assert_eq!(api.call("DELETE", "/v1/sessions/d", None).await.0, 204);
    let ((status, body), waited) = poll.await?;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "session_not_found");
    assert!(
        waited < Duration::from_secs(10),
        "the long-poll ended with the delete, not after `wait`: {waited:?}"
    );
    let text = tokio::time::timeout(Duration::from_secs(10), streamed).await??;
    assert!(
        text.contains("event: error") && text.contains("session_not_found"),
        "{text}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_not_run_twice() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "i"})).await.0, 201);
    let (s, first) = api.send_keyed("i", "only once", "nc:push-1").await;
    assert_eq!(s, 202, "{first}");
    let (s, again) = api.send_keyed("i", "only once", "nc:push-1").await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], true);
    let (s, other) = api.send_keyed("i", "another", "nc:push-2").await;
    assert_eq!(s, 202, "{other}");
    let events = api.until_results("i", 0, 1, T).await?;
    let texts: Vec<String> = model
        .requests()
        .iter()
        .flat_map(|r| r.turn_user_texts.clone())
        .collect();
    assert_eq!(
        texts.iter().filter(|t| t.as_str() == "only once").count(),
        1,
        "{texts:?} {events:?}"
    );
    // after a restart the key is still known
    let mut sc = sc;
    sc.restart().await?;
    let api = api.with_base(&sc.base);
    let (s, later) = api.send_keyed("i", "only once", "nc:push-1").await;
    assert_eq!(
        (s, later["duplicate"].as_bool()),
        (200, Some(true)),
        "{later}"
    );
    Ok(())
}

/// An interrupt that arrives before codex sent the turn's first model request is not lost: the
/// sidecar repeats `turn/interrupt` until the turn ends.
#[tokio::test]
async fn an_interrupt_right_after_the_turn_started_still_interrupts_it() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "e"})).await.0, 201);
    assert_eq!(api.send("e", "slow [[delay_ms=3000]]").await.0, 202);
    api.collect_until("e", 0, T, |e| e["type"] == "turn_started")
        .await?;
    let t0 = std::time::Instant::now();
    assert_eq!(
        api.call("POST", "/v1/sessions/e/interrupt", None).await.0,
        202
    );
    let events = api
        .until_results("e", 0, 1, Duration::from_secs(30))
        .await?;
    let result = events.last().expect("result");
    assert_eq!(result["status"], "interrupted", "{events:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "ended by the interrupt, not by the model finishing: {:?}",
        t0.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_cursor_past_the_log_is_refused_with_the_logs_next() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "c"})).await.0, 201);
    let (_, page) = api.events("c", 0, 0).await;
    let next = page["next"].as_u64().expect("next");
    // The last event itself is a valid cursor (nothing newer yet): an empty page at once.
    let (code, page) = api.events("c", next, 0).await;
    assert_eq!(code, 200, "{page}");
    let (code, body) = api.events("c", next + 1, 1).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_cursor");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("next is {next}"))),
        "{body}"
    );
    let r = reqwest::Client::new()
        .get(format!("{}/v1/sessions/c/events/stream", sc.base))
        .bearer_auth(codex_e2e::harness::mint("alice", None, 60))
        .header("last-event-id", (next + 5).to_string())
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    Ok(())
}

#[tokio::test]
async fn a_poll_answer_is_bounded_in_bytes_and_the_cursor_continues_it() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "big"})).await.0, 201);
    // Four turns echoing 200 KB each: deltas and results hold about 1.6 MB of text.
    let text = "x".repeat(200 * 1024);
    for n in 1..=4 {
        assert_eq!(api.send("big", &text).await.0, 202);
        api.until_results("big", 0, n, T).await?;
    }
    let (code, page) = api
        .call("GET", "/v1/sessions/big/events?after=0&limit=1000", None)
        .await;
    assert_eq!(code, 200);
    let size = page.to_string().len();
    let first = page["events"].as_array().cloned().unwrap_or_default();
    assert!(
        size < 1024 * 1024 + 256 * 1024,
        "one answer holds at most about 1 MiB: {size} bytes"
    );
    let mut all = first.clone();
    let mut next = page["next"].as_u64().expect("next");
    loop {
        let (_, page) = api.events("big", next, 0).await;
        let got = page["events"].as_array().cloned().unwrap_or_default();
        if got.is_empty() {
            break;
        }
        next = page["next"].as_u64().expect("next");
        all.extend(got);
    }
    assert!(
        first.len() < all.len(),
        "the first answer was cut: {} of {}",
        first.len(),
        all.len()
    );
    assert_gapless(&all, 1);
    assert_eq!(of_type(&all, "result").len(), 4);
    Ok(())
}
