//! The OpenAPI document as the running sidecar serves it (`GET /v1/openapi.json`, public), every
//! operation it documents answered by a real route, and regressions for what schemathesis
//! (tests/schemathesis/run.sh) found against the real codex.

use std::time::Duration;

use codex_e2e::harness::{Api, Sidecar};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

#[tokio::test]
async fn the_document_is_served_without_a_token_and_every_operation_has_a_route()
-> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let anonymous = Api::new(&sc.base, None);
    let (status, doc) = anonymous.call("GET", "/v1/openapi.json", None).await;
    assert_eq!(status, 200, "{doc}");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sidecar/openapi.json"),
    )?)?;
    assert_eq!(doc, file, "the served document is sidecar/openapi.json");

    // Every documented operation reaches a handler: never the router's `not_found` or
    // `method_not_allowed` (a missing session is `session_not_found`).
    let api = sc.api("alice");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            if method == "parameters" || path.ends_with("/events/stream") {
                continue;
            }
            let concrete = path.replace("{id}", "no-such-session");
            let body = matches!(method.as_str(), "post" | "patch").then(|| json!({}));
            let (status, answer) = api
                .call(&method.to_ascii_uppercase(), &concrete, body)
                .await;
            let code = answer["error"]["code"].as_str().unwrap_or("");
            assert!(
                !["not_found", "method_not_allowed"].contains(&code) && status != 0,
                "{method} {path}: {status} {answer}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_empty_model_or_effort_is_refused_not_a_codex_failure() -> anyhow::Result<()> {
    // Found by schemathesis: `{"model": ""}` made codex fail to start the thread (502
    // codex_start_failed); in PATCH it was stored and broke every later turn.
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    for body in [
        json!({"id": "m", "model": ""}),
        json!({"id": "m", "effort": " "}),
    ] {
        let (status, answer) = api.create(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "empty_field", "{body}: {answer}");
    }
    let (status, created) = api.create(json!({"id": "m"})).await;
    assert_eq!(status, 201, "{created}");
    let (status, answer) = api
        .call("PATCH", "/v1/sessions/m", Some(json!({"model": ""})))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "empty_field");
    // the session still runs turns with its model
    let (status, sent) = api.send("m", "still fine").await;
    assert_eq!(status, 202, "{sent}");
    let events = api
        .until_results("m", 0, 1, Duration::from_secs(90))
        .await?;
    assert_eq!(
        events.last().map(|e| e["status"].clone()),
        Some(json!("completed"))
    );
    Ok(())
}
