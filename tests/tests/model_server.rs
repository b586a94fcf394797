//! Drives the REAL `codex app-server` against `ScriptedModel` over stdio (newline-delimited
//! JSON, reference "Framing" / "Handshake") to prove the scripted server is good enough for
//! codex: echo replies, `[[tokens=N]]` usage, bearer key from the provider's `env_key`, and
//! compaction requests.
//!
//! The codex binary is `harness::codex_bin()`; the client is `codex_e2e::direct::DirectCodex`.

use std::time::Duration;

use anyhow::Context as _;
use codex_e2e::direct::{DirectCodex, Options, method_of};
use codex_e2e::model::{COMPACTION_PROMPT_PREFIX, COMPACTION_SUMMARY, ScriptedModel};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);
const API_KEY: &str = "scripted-test-key";

/// Codex against `model`, bearer key [`API_KEY`] from the provider's `env_key`, no retries,
/// initialized, with one thread (approvals off, read-only sandbox); returns the thread id too.
async fn codex_with_thread(model: &ScriptedModel) -> anyhow::Result<(DirectCodex, String)> {
    let options = Options {
        api_key: Some(("SCRIPTED_API_KEY".into(), API_KEY.into())),
        no_retries: true,
        timeout: TIMEOUT,
    };
    let mut codex = DirectCodex::spawn(&model.base_url(), &options).await?;
    codex.initialize("codex-e2e").await?;
    let thread_id = codex
        .start_thread(
            json!({"model": "scripted", "approvalPolicy": "never", "sandbox": "read-only"}),
        )
        .await?;
    Ok((codex, thread_id))
}

fn of_method<'a>(notes: &'a [Value], method: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    notes.iter().filter(move |n| method_of(n) == Some(method))
}

fn turn_status(notes: &[Value]) -> Option<&str> {
    of_method(notes, "turn/completed")
        .last()?
        .pointer("/params/turn/status")?
        .as_str()
}

fn agent_text(notes: &[Value]) -> Option<String> {
    of_method(notes, "item/completed")
        .filter_map(|n| n.pointer("/params/item"))
        .filter(|i| i.get("type").and_then(Value::as_str) == Some("agentMessage"))
        .filter_map(|i| i.get("text").and_then(Value::as_str))
        .last()
        .map(str::to_string)
}

fn last_input_tokens(notes: &[Value]) -> Option<u64> {
    of_method(notes, "thread/tokenUsage/updated")
        .last()?
        .pointer("/params/tokenUsage/last/inputTokens")?
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_runs_a_turn_against_the_scripted_model() -> anyhow::Result<()> {
    let model = ScriptedModel::start_with_key(API_KEY).await?;
    let (mut codex, thread_id) = codex_with_thread(&model).await?;

    let notes = codex.turn(&thread_id, "hello [[tokens=5000]]").await?;
    assert_eq!(
        turn_status(&notes),
        Some("completed"),
        "notifications: {notes:#?}"
    );
    assert_eq!(
        agent_text(&notes).as_deref(),
        Some("echo: hello [[tokens=5000]]")
    );
    let deltas: String = of_method(&notes, "item/agentMessage/delta")
        .filter_map(|n| n.pointer("/params/delta").and_then(Value::as_str))
        .collect();
    assert_eq!(deltas, "echo: hello [[tokens=5000]]");
    assert_eq!(
        last_input_tokens(&notes),
        Some(5000),
        "notifications: {notes:#?}"
    );

    let requests = model.requests();
    assert_eq!(requests.len(), 1, "requests: {requests:#?}");
    let req = &requests[0];
    assert!(!req.is_compaction);
    assert_eq!(
        req.authorization.as_deref(),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(req.last_user_text.as_deref(), Some("hello [[tokens=5000]]"));
    assert_eq!(req.body.get("stream"), Some(&json!(true)));
    assert_eq!(req.body.get("prompt_cache_key"), Some(&json!(thread_id)));

    // A second turn: codex resends the conversation, only the last user message counts.
    let notes = codex
        .turn(&thread_id, "again [[reply=custom answer]]")
        .await?;
    assert_eq!(turn_status(&notes), Some("completed"));
    assert_eq!(agent_text(&notes).as_deref(), Some("custom answer"));
    assert_ne!(last_input_tokens(&notes), Some(5000));
    let second = &model.requests()[1];
    let body = second.body.to_string();
    assert!(
        body.contains("echo: hello [[tokens=5000]]"),
        "history resent: {body}"
    );
    model.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_compaction_goes_through_the_scripted_model() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let (mut codex, thread_id) = codex_with_thread(&model).await?;

    let notes = codex
        .turn(&thread_id, "before compaction [[tokens=90000]]")
        .await?;
    assert_eq!(
        turn_status(&notes),
        Some("completed"),
        "notifications: {notes:#?}"
    );
    assert_eq!(model.compaction_requests(), 0);

    codex
        .request("thread/compact/start", json!({"threadId": thread_id}))
        .await?;
    let notes = codex.collect_until("turn/completed").await?;
    assert_eq!(
        turn_status(&notes),
        Some("completed"),
        "notifications: {notes:#?}"
    );
    assert!(
        of_method(&notes, "item/completed")
            .any(|n| n.pointer("/params/item/type") == Some(&json!("contextCompaction"))),
        "no contextCompaction item: {notes:#?}"
    );
    assert_eq!(
        model.compaction_requests(),
        1,
        "requests: {:#?}",
        model.requests()
    );
    let compaction = model
        .requests()
        .into_iter()
        .find(|r| r.is_compaction)
        .context("no compaction")?;
    assert!(
        compaction
            .last_user_text
            .as_deref()
            .unwrap_or_default()
            .starts_with(COMPACTION_PROMPT_PREFIX)
    );

    // The next turn carries the summary instead of the old conversation.
    let notes = codex.turn(&thread_id, "after compaction").await?;
    assert_eq!(
        agent_text(&notes).as_deref(),
        Some("echo: after compaction")
    );
    let last = model.requests().pop().context("no request")?;
    assert!(!last.is_compaction);
    assert!(
        last.body.to_string().contains(COMPACTION_SUMMARY),
        "summary missing: {}",
        last.body
    );
    assert_eq!(model.compaction_requests(), 1);
    model.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_hang_interrupt_and_failure_against_the_scripted_model() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let (mut codex, thread_id) = codex_with_thread(&model).await?;

    // Steering: a message sent while a turn runs joins it; codex drops the slow stream and
    // asks again with both messages as separate user items. The echo shows both.
    codex
        .start_turn(&thread_id, "slow [[delay_ms=3000]]")
        .await?;
    model.wait_for_requests(1, TIMEOUT).await?;
    codex.start_turn(&thread_id, "steer one").await?;
    let notes = codex.collect_until("turn/completed").await?;
    assert_eq!(
        turn_status(&notes),
        Some("completed"),
        "notifications: {notes:#?}"
    );
    assert_eq!(
        agent_text(&notes).as_deref(),
        Some("echo: slow [[delay_ms=3000]]\nsteer one")
    );
    let steered = model.requests().pop().context("no request")?;
    assert_eq!(
        steered.turn_user_texts,
        vec!["slow [[delay_ms=3000]]", "steer one"]
    );
    assert_eq!(steered.last_user_text.as_deref(), Some("steer one"));

    // [[hang]] keeps the stream open until codex lets go of it on turn/interrupt.
    let before = model.requests().len();
    let started = codex.start_turn(&thread_id, "hang [[hang]]").await?;
    let turn_id = started
        .pointer("/turn/id")
        .and_then(Value::as_str)
        .context("no turn id")?
        .to_string();
    model.wait_for_requests(before + 1, TIMEOUT).await?;
    assert_eq!(model.open_streams(), 1);
    codex
        .request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
        )
        .await?;
    let notes = codex.collect_until("turn/completed").await?;
    assert_eq!(
        turn_status(&notes),
        Some("interrupted"),
        "notifications: {notes:#?}"
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while model.open_streams() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hung stream still open after interrupt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // [[fail=500]] fails the turn (the provider has request_max_retries = 0).
    let notes = codex.turn(&thread_id, "boom [[fail=500]]").await?;
    assert_eq!(
        turn_status(&notes),
        Some("failed"),
        "notifications: {notes:#?}"
    );
    assert!(
        of_method(&notes, "error").next().is_some(),
        "no error notification: {notes:#?}"
    );
    assert_eq!(model.requests().pop().context("no request")?.status, 500);

    // Messages of the interrupted and failed turns are not echoed again.
    let notes = codex.turn(&thread_id, "after").await?;
    assert_eq!(agent_text(&notes).as_deref(), Some("echo: after"));
    assert!(
        model.unhandled_requests().is_empty(),
        "{:?}",
        model.unhandled_requests()
    );
    model.shutdown().await;
    Ok(())
}
