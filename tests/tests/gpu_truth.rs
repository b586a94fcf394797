//! "Is it really on the GPU?": what the sidecar's `/v1/status` `model_server` says for each state
//! of a local model server, read from the engine's own API (the scripted model answers as Ollama,
//! LM Studio and vLLM would), `/readyz` failing while the model is not served, and no silent
//! fallback: the generated config.toml names one provider only, and a turn with the model
//! server down or the model missing fails by its deadline with an error that names the cause.
//!
//! No GPU is needed: NVML's absence is reported in `gpu` (`available: false`, the reason in
//! `error`), and the model's place (GPU or CPU) comes from the model server, as `ollama ps`
//! reads it.

use std::time::{Duration, Instant};

use codex_e2e::harness::{Api, Sidecar, TEST_SECRET, files_named, of_type};
use codex_e2e::model::{CatalogModel, ScriptedModel};
use codex_operator::probe::{HttpProbe, ProbeTarget, SidecarProbe};
use codex_operator::status::{self, Observed};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);
const GIB: u64 = 1 << 30;
const MODEL: &str = "gpt-oss:20b";

async fn model_server(api: &Api) -> Value {
    let (status, body) = api.call("GET", "/v1/status", None).await;
    assert_eq!(status, 200, "{body}");
    body["model_server"].clone()
}

/// What the operator makes of this sidecar for a `local` agent with `engine` and one GPU: it
/// probes `/v1/status` as it does in a cluster (its own JWT, its own HTTP client) and maps the
/// report with `status::compute`, the pod's containers running and ready. Returns
/// `type -> (status, reason, message)` for ModelReady, GPUVerified and Ready.
async fn operator_sees(
    sc: &Sidecar,
    engine: &str,
    model: &str,
) -> Vec<(String, String, String, String)> {
    let probe = HttpProbe::new().expect("client");
    let report = probe
        .status(&ProbeTarget {
            base_url: sc.base.clone(),
            key: codex_operator::api_key::SigningKey::Hs256(TEST_SECRET.as_bytes().to_vec()),
            audience: None,
        })
        .await
        .expect("the operator's probe reads /v1/status");
    let agent: codex_operator::CodexAgent = serde_json::from_value(json!({
        "apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
        "metadata": {"name": "a1", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"model": model, "provider": {"type": "local", "local": {"engine": engine, "image": "img"}},
                 "gpu": {"count": 1}}}))
    .expect("agent");
    let running = json!({"running": {}});
    let pod = serde_json::from_value(json!({"metadata": {"name": "a1"}, "spec": {"containers": []},
        "status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [
            {"name": "sidecar", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": running},
            {"name": "model-server", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": running}]}}))
    .expect("pod");
    let obs = Observed {
        pod: Some(pod),
        gpu: Some(Ok(report.gpu.clone())),
        model_server: report.model_server.clone(),
        ..Observed::default()
    };
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().expect("time"),
    );
    status::compute(&agent, &obs, None, &now)
        .conditions
        .into_iter()
        .filter(|c| ["ModelReady", "GPUVerified", "Ready"].contains(&c.type_.as_str()))
        .map(|c| (c.type_, c.status, c.reason, c.message))
        .collect()
}

fn cond<'a>(
    conds: &'a [(String, String, String, String)],
    type_: &str,
) -> (&'a str, &'a str, &'a str) {
    conds
        .iter()
        .find(|c| c.0 == type_)
        .map(|c| (c.1.as_str(), c.2.as_str(), c.3.as_str()))
        .unwrap_or_else(|| panic!("no {type_} in {conds:?}"))
}

async fn readyz(sc: &Sidecar) -> (u16, Value) {
    Api::new(&sc.base, None).call("GET", "/readyz", None).await
}

#[tokio::test]
async fn ollama_says_whether_the_model_is_served_and_how_much_of_it_is_on_the_gpu()
-> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    // A typo in the model name: the server has gpt-oss:20b, the agent asks for gpt-os:20b.
    model.set_catalog(vec![CatalogModel::on_gpu(MODEL, 13 * GIB)]);
    let typo = Sidecar::start_provider("ollama", &model.base_url(), "gpt-os:20b", &[], &[]).await?;
    let ms = model_server(&typo.api("alice")).await;
    assert_eq!(ms["engine"], "ollama");
    assert_eq!(ms["reachable"], true);
    assert_eq!(ms["served"], false, "{ms}");
    assert_eq!(ms["models"], json!([MODEL]));
    let (status, ready) = readyz(&typo).await;
    assert_eq!(
        status, 503,
        "not ready while the model is not served: {ready}"
    );
    assert_eq!(ready["checks"]["model"]["ok"], false);
    assert!(
        ready["checks"]["model"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("gpt-os:20b") && e.contains(MODEL)),
        "{ready}"
    );
    drop(typo);

    let sc = Sidecar::start_provider(
        "ollama",
        &model.base_url(),
        MODEL,
        &["--turn-timeout", "8"],
        &[],
    )
    .await?;
    let api = sc.api("alice");
    let (status, st) = api.call("GET", "/v1/status", None).await;
    assert_eq!(status, 200);
    // No GPU here: NVML's absence is a fact in the report, not an error of the sidecar.
    if st["gpu"]["available"] == false {
        assert!(st["gpu"]["error"].as_str().is_some(), "{}", st["gpu"]);
    }
    let ms = &st["model_server"];
    assert_eq!(ms["base_url"], model.base_url().as_str());
    assert_eq!(ms["model"], MODEL);
    assert_eq!(
        (&ms["served"], &ms["loaded"], &ms["gpu_fraction"]),
        (&json!(true), &json!(true), &json!(1.0)),
        "{ms}"
    );
    assert_eq!(ms["processor"], "100% GPU");
    assert_eq!(ms["size_vram_bytes"], 13 * GIB);
    assert_eq!(ms["version"], "0.12.0-scripted");
    assert!(ms["checked_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(readyz(&sc).await.0, 200);
    let seen = operator_sees(&sc, "ollama", MODEL).await;
    assert_eq!(cond(&seen, "ModelReady").0, "True", "{seen:?}");
    let gpu = cond(&seen, "GPUVerified");
    assert_eq!((gpu.0, gpu.1), ("True", "ModelOnGPU"), "{seen:?}");
    // "on the GPU" here (no NVML); "on GPU 0 <name>" where the sidecar's NVML sees one.
    assert!(
        gpu.2.starts_with("gpt-oss:20b loaded, 100% on ")
            && gpu.2.contains(", 13.0 GiB (ollama at "),
        "{gpu:?}"
    );
    assert_eq!(cond(&seen, "Ready").0, "True", "{seen:?}");

    // Partly on the GPU, all on the CPU, not loaded (Ollama unloads idle models).
    model.set_catalog(vec![CatalogModel::split(MODEL, 100 * GIB, 52 * GIB)]);
    let ms = model_server(&api).await;
    assert_eq!(ms["gpu_fraction"], 0.52);
    assert_eq!(ms["processor"], "48%/52% CPU/GPU");
    let seen = operator_sees(&sc, "ollama", MODEL).await;
    let gpu = cond(&seen, "GPUVerified");
    assert_eq!((gpu.0, gpu.1), ("False", "ModelNotOnGPU"), "{seen:?}");
    assert!(gpu.2.contains("48%/52% CPU/GPU"), "{gpu:?}");
    assert_eq!(cond(&seen, "Ready").1, "ModelNotOnGPU", "{seen:?}");
    model.set_catalog(vec![CatalogModel::on_cpu(MODEL, 13 * GIB)]);
    let ms = model_server(&api).await;
    assert_eq!(
        (&ms["loaded"], &ms["gpu_fraction"], &ms["processor"]),
        (&json!(true), &json!(0.0), &json!("100% CPU"))
    );
    let seen = operator_sees(&sc, "ollama", MODEL).await;
    assert_eq!(cond(&seen, "GPUVerified").1, "ModelNotOnGPU", "{seen:?}");
    model.set_catalog(vec![CatalogModel::not_loaded(MODEL, 13 * GIB)]);
    let ms = model_server(&api).await;
    assert_eq!(
        (&ms["served"], &ms["loaded"], &ms["gpu_fraction"]),
        (&json!(true), &json!(false), &Value::Null),
        "unknown stays null: {ms}"
    );
    let seen = operator_sees(&sc, "ollama", MODEL).await;
    assert_eq!(cond(&seen, "GPUVerified").0, "Unknown", "{seen:?}");
    assert_eq!(cond(&seen, "GPUVerified").1, "ModelNotLoaded", "{seen:?}");
    assert_eq!(
        cond(&seen, "Ready").0,
        "True",
        "an idle model is no failure: {seen:?}"
    );

    // A turn goes to the model server, through the one provider the config names; the request
    // loads the model.
    assert_eq!(api.create(json!({"id": "s"})).await.0, 201);
    assert_eq!(api.send("s", "hello local").await.0, 202);
    let events = api.until_results("s", 0, 1, T).await?;
    let result = events.last().expect("result");
    assert_eq!(result["status"], "completed", "{events:?}");
    assert_eq!(result["text"], "echo: hello local");
    assert_eq!(
        model.requests().last().map(|r| r.body["model"].clone()),
        Some(json!(MODEL))
    );
    assert_eq!(model_server(&api).await["gpu_fraction"], 1.0);
    let configs = files_named(&sc.state_dir, "config.toml");
    assert!(!configs.is_empty(), "a CODEX_HOME config.toml");
    for path in configs {
        let text = std::fs::read_to_string(&path)?;
        let t: toml::Table = text.parse()?;
        assert_eq!(
            t["model_provider"].as_str(),
            Some("sidecar-ollama"),
            "{text}"
        );
        let providers = t["model_providers"].as_table().expect("providers");
        assert_eq!(providers.len(), 1, "one provider only: {text}");
        let p = &providers["sidecar-ollama"];
        assert_eq!(p["base_url"].as_str(), Some(model.base_url().as_str()));
        assert_eq!(p["stream_idle_timeout_ms"].as_integer(), Some(600_000));
        assert!(
            !t.contains_key("profile") && !t.contains_key("oss_provider"),
            "{text}"
        );
    }

    // The model goes missing (deleted on the server): the turn fails, naming the cause.
    model.set_catalog(vec![CatalogModel::on_gpu("qwen3:8b", 5 * GIB)]);
    let after = events.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
    let t0 = Instant::now();
    assert_eq!(api.send("s", "still there?").await.0, 202);
    let events = api.until_results("s", after, 1, T).await?;
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0]["code"], "model_not_served", "{events:?}");
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(MODEL) && m.contains("qwen3:8b")),
        "{events:?}"
    );
    assert_eq!(events.last().expect("result")["status"], "failed");

    // The server goes away: reported unreachable, and a turn fails by its deadline, with no
    // request to anywhere else.
    model.set_catalog(vec![CatalogModel::on_gpu(MODEL, 13 * GIB)]);
    let after = events.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
    model.shutdown().await;
    let ms = model_server(&api).await;
    assert_eq!(ms["reachable"], false, "{ms}");
    assert_eq!((&ms["served"], &ms["loaded"]), (&Value::Null, &Value::Null));
    let seen = operator_sees(&sc, "ollama", MODEL).await;
    assert_eq!(
        cond(&seen, "ModelReady").1,
        "ModelServerUnreachable",
        "{seen:?}"
    );
    let t0 = Instant::now();
    assert_eq!(api.send("s", "anyone?").await.0, 202);
    let events = api.until_results("s", after, 1, T).await?;
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_secs(7) && elapsed < Duration::from_secs(40),
        "fails by its deadline: {elapsed:?}"
    );
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0]["code"], "model_server_unreachable", "{events:?}");
    assert_eq!(errors[0]["retryable"], true);
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--turn-timeout") && m.contains("ollama")),
        "{events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn lm_studio_and_vllm_say_what_they_know_and_nothing_more() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    model.set_catalog(vec![
        CatalogModel::not_loaded("qwen3-8b", 5 * GIB),
        CatalogModel::on_gpu("gpt-oss-20b", 13 * GIB),
    ]);
    let sc = Sidecar::start_provider("lmstudio", &model.base_url(), "qwen3-8b", &[], &[]).await?;
    let api = sc.api("alice");
    let ms = model_server(&api).await;
    assert_eq!(ms["engine"], "lmstudio");
    assert_eq!(
        (&ms["served"], &ms["loaded"], &ms["gpu_fraction"]),
        (&json!(true), &json!(false), &Value::Null),
        "LM Studio does not say where a model runs: {ms}"
    );
    model.set_catalog(vec![CatalogModel::on_gpu("qwen3-8b", 5 * GIB)]);
    let ms = model_server(&api).await;
    assert_eq!(
        (&ms["loaded"], &ms["gpu_fraction"]),
        (&json!(true), &Value::Null)
    );
    // A turn through LM Studio's provider, the only one its config.toml names.
    assert_eq!(api.create(json!({"id": "l"})).await.0, 201);
    assert_eq!(api.send("l", "hi studio").await.0, 202);
    let events = api.until_results("l", 0, 1, T).await?;
    assert_eq!(
        events.last().expect("result")["text"],
        "echo: hi studio",
        "{events:?}"
    );
    let configs = files_named(&sc.state_dir, "config.toml");
    assert!(!configs.is_empty(), "a CODEX_HOME config.toml");
    for path in configs {
        let text = std::fs::read_to_string(&path)?;
        let t: toml::Table = text.parse()?;
        assert_eq!(
            t["model_provider"].as_str(),
            Some("sidecar-lmstudio"),
            "{text}"
        );
        let providers = t["model_providers"].as_table().expect("providers");
        assert_eq!(providers.len(), 1, "one provider only: {text}");
        assert_eq!(
            providers["sidecar-lmstudio"]["base_url"].as_str(),
            Some(model.base_url().as_str())
        );
    }
    drop(sc);

    // vLLM (a custom provider whose /v1/models says owned_by "vllm") serves from the GPU.
    model.set_owned_by("vllm");
    let sc = Sidecar::start_provider("custom", &model.base_url(), "qwen3-8b", &[], &[]).await?;
    let ms = model_server(&sc.api("alice")).await;
    assert_eq!(ms["engine"], "vllm");
    assert_eq!(
        (&ms["served"], &ms["loaded"], &ms["gpu_fraction"]),
        (&json!(true), &json!(true), &json!(1.0))
    );
    let seen = operator_sees(&sc, "vllm", "qwen3-8b").await;
    assert_eq!(cond(&seen, "GPUVerified").1, "ModelOnGPU", "{seen:?}");
    drop(sc);

    // A custom server that is not vLLM: served is known, the rest is not.
    model.set_owned_by("gateway");
    let sc = Sidecar::start_provider("custom", &model.base_url(), "nope", &[], &[]).await?;
    let ms = model_server(&sc.api("alice")).await;
    assert_eq!(ms["engine"], "custom");
    assert_eq!(
        (&ms["served"], &ms["loaded"], &ms["gpu_fraction"]),
        (&json!(false), &Value::Null, &Value::Null)
    );
    assert_eq!(readyz(&sc).await.0, 503);
    Ok(())
}
