//! Images in messages, against the real codex and the scripted model: an image sent as a
//! `data:` URL reaches the model as an `input_image` item (also with no text), is stored 0600 in
//! the session's directory and removed with the session; every bad image is refused with its
//! stable code, and nothing already accepted is lost.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine as _;
use codex_e2e::harness::{Sidecar, files_under, of_type};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

/// A valid 1x1 PNG.
const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

fn png_url() -> String {
    format!("data:image/png;base64,{PNG_B64}")
}

/// A data URL of `bytes` bytes that start like a PNG (a PNG signature, then zeros).
fn png_like(bytes: usize) -> String {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.resize(bytes, 0);
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(b)
    )
}

fn images_of(sc: &Sidecar) -> Vec<std::path::PathBuf> {
    files_under(&sc.state_dir, |p| {
        p.parent()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "images")
    })
}

#[tokio::test]
async fn an_image_reaches_the_model_as_input_image_and_goes_with_its_session() -> anyhow::Result<()>
{
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    let (status, created) = api.create(json!({"id": "pics"})).await;
    assert_eq!(status, 201, "{created}");

    let path = "/v1/sessions/pics/messages";
    let (status, sent) = api
        .call(
            "POST",
            path,
            Some(json!({"text": "what is this?", "images": [{"url": png_url()}]})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let events = api.until_results("pics", 0, 1, T).await?;
    assert_eq!(
        events.last().map(|e| e["status"].clone()),
        Some(json!("completed"))
    );

    // the stored image is private and whole, in the session's directory
    let files = images_of(&sc);
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = std::fs::metadata(&files[0])?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let decoded = base64::engine::general_purpose::STANDARD.decode(PNG_B64)?;
    assert_eq!(std::fs::read(&files[0])?, decoded);

    let req = model
        .request_with_user_text("what is this?")
        .expect("the model got the message");
    assert_eq!(req.last_user_images.len(), 1, "{:?}", req.body);
    assert!(
        req.last_user_images[0].starts_with("data:image/png;base64,"),
        "{}",
        req.last_user_images[0]
    );

    // an image alone (empty text) is a message too
    let (status, sent) = api
        .call(
            "POST",
            path,
            Some(json!({"text": "", "images": [{"url": png_url()}, {"url": png_url()}]})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let events = api.until_results("pics", 0, 2, T).await?;
    assert_eq!(
        events.last().map(|e| e["status"].clone()),
        Some(json!("completed"))
    );
    let last = model.requests().pop().expect("a request");
    assert_eq!(last.last_user_images.len(), 2, "{:?}", last.body);
    assert_eq!(images_of(&sc).len(), 3);

    let (status, _) = api.call("DELETE", "/v1/sessions/pics", None).await;
    assert_eq!(status, 204);
    assert!(images_of(&sc).is_empty(), "{:?}", images_of(&sc));
    Ok(())
}

#[tokio::test]
async fn every_bad_image_is_refused_with_its_code_and_nothing_accepted_is_lost()
-> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("bob");
    let (status, created) = api.create(json!({"id": "bad"})).await;
    assert_eq!(status, 201, "{created}");
    let path = "/v1/sessions/bad/messages";
    let (status, sent) = api
        .call(
            "POST",
            path,
            Some(json!({"text": "first [[delay_ms=1500]]", "images": [{"url": png_url()}]})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");

    let img = |url: String| json!({"text": "x", "images": [{"url": url}]});
    let five_mib = 5 * 1024 * 1024;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "bad base64",
            img("data:image/png;base64,@@@not base64@@@".into()),
            400,
            "invalid_image_base64",
        ),
        (
            "not a data URL",
            img("ftp://example.com/a.png".into()),
            400,
            "invalid_image_url",
        ),
        (
            "remote URL",
            img("https://example.com/a.png".into()),
            400,
            "remote_image_unsupported",
        ),
        (
            "wrong media type",
            img(format!(
                "data:image/svg+xml;base64,{}",
                base64::engine::general_purpose::STANDARD.encode("<svg/>")
            )),
            400,
            "unsupported_image_type",
        ),
        (
            "not an image at all",
            img(format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode("plain text")
            )),
            400,
            "unsupported_image_type",
        ),
        (
            "magic mismatch",
            img(format!("data:image/jpeg;base64,{PNG_B64}")),
            400,
            "image_type_mismatch",
        ),
        (
            "one image too big",
            img(png_like(five_mib + 1)),
            413,
            "image_too_large",
        ),
        (
            "all images too big",
            json!({"text": "x", "images": [
                {"url": png_like(3_800_000)}, {"url": png_like(3_800_000)}, {"url": png_like(3_800_000)}
            ]}),
            413,
            "images_too_large",
        ),
        (
            "too many images",
            json!({"text": "x", "images": vec![json!({"url": png_url()}); 9]}),
            400,
            "too_many_images",
        ),
        (
            "empty text and no image",
            json!({"text": " ", "images": []}),
            400,
            "empty_text",
        ),
        ("no text field and no image", json!({}), 400, "empty_text"),
        (
            "an image without a url",
            json!({"text": "x", "images": [{"uri": png_url()}]}),
            400,
            "invalid_request",
        ),
    ];
    for (what, body, want_status, want_code) in cases {
        let (status, answer) = api.call("POST", path, Some(body)).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{what}: {answer}"
        );
    }
    // a body past the messages' limit (16 MiB) is refused before it is read whole: the 413
    // comes while the client still sends, and the connection is closed after it, so the client
    // sees the 413 or, when the close reset the socket first, a transport error; never a 202
    // (its own client: the connection it used is not reused for the sends after it)
    let (status, answer) = sc
        .api("bob")
        .call("POST", path, Some(img(png_like(13 * 1024 * 1024))))
        .await;
    assert!(
        (status == 413 && answer["error"]["code"] == "body_too_large")
            || (status == 0 && answer.get("transport_error").is_some()),
        "{status} {answer}"
    );

    // the message accepted first still runs, with its image; the refused ones took no number
    // and left no file
    let (status, sent) = api.send("bad", "second").await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(sent["message_id"], "msg_2");
    let events = api.until_results("bad", 0, 2, T).await?;
    let results = of_type(&events, "result");
    assert!(
        results.iter().all(|r| r["status"] == "completed"),
        "{results:?}"
    );
    let first = model
        .request_with_user_text("first")
        .expect("the first message reached the model");
    assert_eq!(first.last_user_images.len(), 1);
    assert_eq!(images_of(&sc).len(), 1, "{:?}", images_of(&sc));
    Ok(())
}

#[tokio::test]
async fn an_accepted_image_survives_kill_9_and_reaches_the_model_after_the_restart()
-> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("carol");
    let (status, created) = api.create(json!({"id": "k"})).await;
    assert_eq!(status, 201, "{created}");
    // A turn that never ends holds the image message in the queue when the sidecar dies.
    assert_eq!(api.send("k", "[[hang]]").await.0, 202);
    api.collect_until("k", 0, T, |e| e["type"] == "turn_started")
        .await?;
    let (status, sent) = api
        .call(
            "POST",
            "/v1/sessions/k/messages",
            Some(json!({"text": "after the crash", "images": [{"url": png_url()}]})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    sc.kill9().await;
    sc.restart().await?;
    let api = api.with_base(&sc.base);
    // the hung turn is lost (failed), then the image message runs
    let events = api.until_results("k", 0, 2, T).await?;
    let results = of_type(&events, "result");
    assert_eq!(
        results.last().map(|r| r["status"].clone()),
        Some(json!("completed"))
    );
    let req = model
        .request_with_user_text("after the crash")
        .expect("the image message reached the model after the restart");
    assert_eq!(req.last_user_images.len(), 1, "{:?}", req.body);
    Ok(())
}

#[tokio::test]
async fn queued_images_go_in_turns_of_at_most_32() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("dave");
    let (status, created) = api.create(json!({"id": "many"})).await;
    assert_eq!(status, 201, "{created}");
    // Five messages of eight images each wait behind a slow turn: 40 images do not fit in one
    // turn (32 at most), so they go as four messages, then one.
    assert_eq!(api.send("many", "slow [[delay_ms=3000]]").await.0, 202);
    api.collect_until("many", 0, T, |e| e["type"] == "turn_started")
        .await?;
    for i in 0..5 {
        let (status, sent) = api
            .call(
                "POST",
                "/v1/sessions/many/messages",
                Some(json!({"text": format!("album {i}"), "images": vec![json!({"url": png_url()}); 8]})),
            )
            .await;
        assert_eq!(status, 202, "{sent}");
    }
    let events = api.until_results("many", 0, 3, T).await?;
    let counts: Vec<u64> = of_type(&events, "turn_started")
        .iter()
        .filter_map(|e| e["message_count"].as_u64())
        .collect();
    assert_eq!(counts, vec![1, 4, 1], "{events:?}");
    let images: Vec<usize> = model
        .requests()
        .iter()
        .filter(|r| {
            r.last_user_text
                .as_deref()
                .is_some_and(|t| t.contains("album"))
        })
        .map(|r| r.last_user_images.len())
        .collect();
    assert_eq!(images.iter().max(), Some(&32), "{images:?}");
    assert!(
        of_type(&events, "result")
            .iter()
            .all(|r| r["status"] == "completed")
    );
    Ok(())
}
