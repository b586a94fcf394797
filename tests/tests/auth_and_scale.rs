//! JWT rejections as a client sees them, ownership of sessions, secrets kept out of logs and events,
//! and 20 concurrent sessions with no lost events.

use std::time::Duration;

use codex_e2e::harness::{Api, Sidecar, TEST_SECRET, assert_gapless, mint, mint_with, of_type};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(180);

#[tokio::test]
async fn jwt_rejections_and_ownership() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--jwt-audience", "codex-sidecar"]).await?;
    let ok = Api::new(&sc.base, Some(mint("alice", Some("codex-sidecar"), 600)));
    assert_eq!(ok.create(json!({"id": "mine"})).await.0, 201);

    let b64 = |v: &Value| {
        use std::fmt::Write;
        let bytes = v.to_string().into_bytes();
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "alice", "aud": "codex-sidecar", "exp": exp}))
    );
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing_token"),
        (
            "expired",
            Some(mint("alice", Some("codex-sidecar"), -3600)),
            "token_expired",
        ),
        (
            "wrong audience",
            Some(mint("alice", Some("someone-else"), 600)),
            "invalid_audience",
        ),
        (
            "no audience",
            Some(mint("alice", None, 600)),
            "missing_claim",
        ),
        (
            "wrong key",
            Some(mint_with(
                "alice",
                Some("codex-sidecar"),
                600,
                b"another-secret-0123456789abcdef-0123456789",
            )),
            "invalid_signature",
        ),
        ("alg none", Some(alg_none), "algorithm_not_allowed"),
        ("garbage", Some("not.a.jwt".into()), "invalid_token"),
    ];
    let http = reqwest::Client::new();
    for (name, token, code) in cases {
        let mut req = http.get(format!("{}/v1/sessions/mine", sc.base));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        assert_eq!(resp.status().as_u16(), 401, "{name}");
        let www = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(
            www.starts_with("Bearer"),
            "{name}: WWW-Authenticate {www:?}"
        );
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        if let Some(t) = &token {
            assert!(
                !body.to_string().contains(t.as_str()),
                "{name}: the token is not echoed"
            );
        }
    }
    // another subject cannot see, use or even detect alice's session
    let bob = Api::new(&sc.base, Some(mint("bob", Some("codex-sidecar"), 600)));
    for (method, path) in [
        ("GET", "/v1/sessions/mine"),
        ("GET", "/v1/sessions/mine/events"),
        ("POST", "/v1/sessions/mine/interrupt"),
        ("DELETE", "/v1/sessions/mine"),
    ] {
        let (status, body) = bob.call(method, path, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("session_not_found")),
            "{method} {path}"
        );
    }
    assert_eq!(bob.send("mine", "hi").await.0, 404);
    let (_, list) = bob.call("GET", "/v1/sessions", None).await;
    assert_eq!(list["sessions"], json!([]));
    // bob may use the same id for his own, separate session
    let (status, bobs) = bob.create(json!({"id": "mine"})).await;
    assert_eq!(status, 201);
    let (_, alices) = ok.call("GET", "/v1/sessions/mine", None).await;
    assert_ne!(bobs["thread_id"], alices["thread_id"]);
    // unauthenticated health endpoints stay open
    assert_eq!(
        Api::new(&sc.base, None)
            .call("GET", "/healthz", None)
            .await
            .0,
        200
    );
    assert_eq!(
        Api::new(&sc.base, None)
            .call("GET", "/readyz", None)
            .await
            .0,
        200
    );
    Ok(())
}

#[tokio::test]
async fn secrets_never_reach_logs_events_or_files_other_than_0600() -> anyhow::Result<()> {
    const PROVIDER_KEY: &str = "sk-e2e-provider-key-DO-NOT-LEAK-42";
    let model = ScriptedModel::start_with_key(PROVIDER_KEY).await?;
    let sc = Sidecar::start_with_env(
        &model.base_url(),
        &["--provider-env-key", "E2E_PROVIDER_KEY"],
        &[("E2E_PROVIDER_KEY", PROVIDER_KEY)],
    )
    .await?;
    let api = sc.api("alice");
    api.create(json!({"id": "s"})).await;
    api.send(
        "s",
        &format!("please repeat [[reply=the key is {PROVIDER_KEY}]]"),
    )
    .await;
    let events = api.until_results("s", 0, 1, T).await?;
    // codex sent the key to the provider...
    let req = model.requests().into_iter().next().expect("request");
    assert_eq!(
        req.authorization.as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    // ...but the sidecar never repeats it: events are redacted, logs never had it
    // the reply streams in pieces that split the key: the concatenated deltas must not show it
    let streamed: String = of_type(&events, "delta")
        .iter()
        .filter_map(|d| d["text"].as_str())
        .collect();
    assert!(
        !streamed.contains(PROVIDER_KEY) && streamed.contains("[REDACTED]"),
        "{streamed}"
    );
    assert!(
        !streamed.contains("sk-e2e"),
        "no fragment of the key: {streamed}"
    );
    let all = Value::Array(events).to_string();
    assert!(!all.contains(PROVIDER_KEY), "{all}");
    assert!(all.contains("[REDACTED]"));
    assert!(!sc.log().contains(PROVIDER_KEY));
    let on_disk = std::fs::read_to_string(
        codex_e2e::harness::files_named(&sc.state_dir, "events.jsonl")
            .pop()
            .expect("log"),
    )?;
    assert!(!on_disk.contains(PROVIDER_KEY));
    // the session's files are private
    use std::os::unix::fs::PermissionsExt;
    for name in ["config.toml", "session.json"] {
        let p = codex_e2e::harness::files_named(&sc.state_dir, name)
            .pop()
            .expect(name);
        assert_eq!(
            std::fs::metadata(&p)?.permissions().mode() & 0o777,
            0o600,
            "{name}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_sessions_lose_no_events() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("load");
    let ids: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
    let creates = ids.iter().map(|id| {
        let api = api.clone();
        async move { api.create(json!({"id": id})).await.0 }
    });
    assert!(
        futures::future::join_all(creates)
            .await
            .iter()
            .all(|s| *s == 201)
    );
    let runs = ids.iter().map(|id| {
        let api = api.clone();
        async move {
            let (a, _) = api.send(id, &format!("{id} first")).await;
            let (b, _) = api.send(id, &format!("{id} second")).await;
            assert_eq!((a, b), (202, 202));
            let count = std::sync::atomic::AtomicUsize::new(0);
            // both messages are answered, in one or two turns
            let events = api
                .collect_until(id, 0, T, |e| {
                    if e["type"] == "result" {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let text: String = e["text"].as_str().unwrap_or("").to_owned();
                    e["type"] == "result" && text.contains("second")
                })
                .await?;
            anyhow::Ok((id.clone(), events))
        }
    });
    let results = futures::future::join_all(runs).await;
    for r in results {
        let (id, events) = r?;
        assert_gapless(&events, 1);
        let delivered: Vec<String> = of_type(&events, "turn_started")
            .iter()
            .flat_map(|e| e["message_ids"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            delivered,
            vec!["msg_1", "msg_2"],
            "{id}: every message delivered once, in order"
        );
        let texts: String = of_type(&events, "result")
            .iter()
            .filter_map(|e| e["text"].as_str())
            .collect();
        assert!(
            texts.contains(&format!("{id} first")) && texts.contains(&format!("{id} second")),
            "{id}: {texts}"
        );
        assert!(
            of_type(&events, "result")
                .iter()
                .all(|e| e["status"] == "completed")
        );
        // re-reading the whole log gives exactly what was streamed
        let (_, page) = api.events(&id, 0, 0).await;
        assert_eq!(page["events"].as_array().map(Vec::len), Some(events.len()));
    }
    let (_, status) = api.call("GET", "/v1/status", None).await;
    assert!(
        status["counts"]["live"].as_u64().is_some_and(|l| l <= 8),
        "{status}"
    );
    assert_eq!(status["counts"]["sessions"], 20);
    let _ = TEST_SECRET;
    Ok(())
}

#[tokio::test]
async fn codex_and_its_commands_get_none_of_the_sidecars_other_secrets() -> anyhow::Result<()> {
    const PROVIDER_KEY: &str = "sk-e2e-provider-key-for-codex-only-77";
    const DB_PASSWORD: &str = "db-password-of-the-host-never-seen-7";
    let model = ScriptedModel::start_with_key(PROVIDER_KEY).await?;
    let mut sc = Sidecar::start_with_env(
        &model.base_url(),
        &[
            "--provider-env-key",
            "E2E_PROVIDER_KEY",
            "--sandbox",
            "danger-full-access",
        ],
        &[
            ("E2E_PROVIDER_KEY", PROVIDER_KEY),
            ("SIDECAR_DB_PASSWORD", DB_PASSWORD),
        ],
    )
    .await?;
    let api = sc.api("alice");
    api.create(json!({"id": "env"})).await;
    api.send("env", "[[exec=env | sort]]").await;
    let events = api.until_results("env", 0, 1, T).await?;
    let result = events.last().expect("result");
    let text = result["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("PATH="),
        "the command ran and printed its environment: {text}"
    );
    assert!(
        !text.contains("SIDECAR_DB_PASSWORD") && !text.contains("E2E_PROVIDER_KEY"),
        "a command sees neither the host's secrets nor the provider key: {text}"
    );
    // codex itself has the provider key (it calls the model with it) and nothing else of ours.
    let pid = sc.pid().expect("pid");
    let environs: Vec<String> = codex_e2e::harness::child_pids(pid)
        .into_iter()
        .filter_map(|p| std::fs::read(format!("/proc/{p}/environ")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', "\n"))
        .collect();
    assert!(!environs.is_empty(), "codex children found");
    for env in &environs {
        assert!(
            !env.contains(DB_PASSWORD),
            "codex has no host secret: {env}"
        );
        assert!(env.contains("CODEX_HOME="), "{env}");
    }
    assert!(
        environs.iter().any(|e| e.contains(PROVIDER_KEY)),
        "codex has the provider key"
    );
    let req = model.requests().into_iter().next().expect("request");
    assert_eq!(
        req.authorization.as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    sc.kill9().await;
    Ok(())
}
