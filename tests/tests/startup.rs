//! Start-up: bad settings fail with a message naming them; `--config FILE` is read (flags win);
//! a thread whose rollout is gone is replaced by a new thread with a new `init`.

use std::process::Command;
use std::time::Duration;

use codex_e2e::harness::{Sidecar, codex_bin, free_port, of_type, sidecar_bin};
use codex_e2e::model::ScriptedModel;
use serde_json::json;

/// Runs `codex-sidecar serve ARGS` expecting it to refuse to start; returns its stderr.
fn refuses(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(sidecar_bin())
        .arg("serve")
        .args(["--state-dir", &dir.path().join("s").display().to_string()])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CODEX_HOME")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run the sidecar");
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code 2 for a bad setting; stdout {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_settings_fail_at_start_up_naming_the_setting() {
    let codex = codex_bin().display().to_string();
    let custom = [
        "--provider",
        "custom",
        "--provider-base-url",
        "http://127.0.0.1:9/v1",
    ];
    let open = ["--codex-bin", codex.as_str(), "--insecure-no-auth"];
    // (flags after the custom provider, words the message must contain)
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--insecure-no-auth", "--codex-bin", "/nonexistent/codex"],
            vec!["--codex-bin /nonexistent/codex", "not found"],
        ),
        (
            vec![
                "--codex-bin",
                &codex,
                "--jwt-secret-file",
                "/nonexistent/secret",
            ],
            vec!["--jwt-secret-file", "/nonexistent/secret"],
        ),
        (
            vec!["--codex-bin", &codex],
            vec!["--jwt-secret-file", "--insecure-no-auth"],
        ),
        (
            [&open[..], &["--listen", "0.0.0.0:0"]].concat(),
            vec!["--insecure-no-auth", "loopback"],
        ),
        (
            [&open[..], &["--listen", "not-an-address"]].concat(),
            vec!["--listen not-an-address"],
        ),
        (
            [&open[..], &["--provider-env-key", "E2E_UNSET_KEY_VAR"]].concat(),
            vec!["E2E_UNSET_KEY_VAR", "not set"],
        ),
        (
            [&open[..], &["--auth-json", "/nonexistent/auth.json"]].concat(),
            vec!["--auth-json /nonexistent/auth.json"],
        ),
        (
            [&open[..], &["--max-live-sessions", "0"]].concat(),
            vec!["--max-live-sessions 0"],
        ),
    ];
    for (flags, words) in cases {
        let err = refuses(&[&custom[..], &flags[..]].concat(), &[]);
        for w in words {
            assert!(err.contains(w), "{flags:?}: {err}");
        }
    }
    let err = refuses(&[&open[..], &["--provider", "custom"]].concat(), &[]);
    assert!(
        err.contains("--provider custom") && err.contains("--provider-base-url"),
        "{err}"
    );
    // openai with no credentials anywhere says exactly what to provide
    let home = tempfile::tempdir().expect("tempdir");
    let err = refuses(&open, &[("HOME", &home.path().display().to_string())]);
    assert!(
        err.contains("--auth-json") && err.contains("--openai-api-key-file"),
        "{err}"
    );
}

#[tokio::test]
async fn config_file_is_read_and_flags_win() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(
        &cfg,
        "compactAtTokens = 777\nturn-timeout = 42\nmaxLiveSessions = 3\nsandbox = \"read-only\"\n",
    )?;
    let cfg_s = cfg.display().to_string();
    let sc = Sidecar::start(
        &model.base_url(),
        &["--config", &cfg_s, "--max-live-sessions", "5"],
    )
    .await?;
    let (status, st) = sc.api("alice").call("GET", "/v1/status", None).await;
    assert_eq!(status, 200);
    assert_eq!(st["limits"]["compact_at_tokens"], 777);
    assert_eq!(st["limits"]["turn_timeout_secs"], 42);
    assert_eq!(
        st["limits"]["max_live_sessions"], 5,
        "the flag wins over the file"
    );
    assert_eq!(st["sandbox"], "read-only");
    assert_eq!(
        st["gpu"]["available"], false,
        "no GPU here: reported, not a crash"
    );
    assert!(
        st["gpu"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("NVML"))
    );

    std::fs::write(&cfg, "compactAtTokenz = 1\n")?;
    let out = Command::new(sidecar_bin())
        .args(["serve", "--config", &cfg_s])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains(&cfg_s) && err.contains("compactAtTokenz"),
        "{err}"
    );
    let _ = free_port();
    Ok(())
}

#[tokio::test]
async fn a_thread_that_cannot_be_resumed_is_replaced_with_a_new_init() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    let (_, created) = api.create(json!({"id": "lost"})).await;
    api.send("lost", "first").await;
    let first = api
        .until_results("lost", 0, 1, Duration::from_secs(90))
        .await?;
    sc.kill9().await;
    // the rollout disappears (disk cleaned up, volume replaced...)
    let rollouts = codex_e2e::harness::files_under(&sc.state_dir, |p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("rollout-"))
    });
    for p in &rollouts {
        std::fs::remove_file(p)?;
    }
    let removed = rollouts.len();
    assert_eq!(removed, 1);
    sc.restart().await?;
    let api = api.with_base(&sc.base);
    api.send("lost", "second").await;
    let events = api
        .until_results("lost", first.len() as u64, 1, Duration::from_secs(90))
        .await?;
    let inits = of_type(&events, "init");
    assert_eq!(inits.len(), 1, "{events:?}");
    assert_eq!(inits[0]["resumed"], false);
    assert_ne!(inits[0]["thread_id"], created["thread_id"], "a new thread");
    assert!(of_type(&events, "progress").iter().any(|p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be resumed"))
    }));
    assert_eq!(events.last().expect("result")["text"], "echo: second");
    let (_, view) = api.call("GET", "/v1/sessions/lost", None).await;
    assert_eq!(view["thread_id"], inits[0]["thread_id"]);
    Ok(())
}

#[tokio::test]
async fn api_key_login_writes_a_private_auth_json_per_session() -> anyhow::Result<()> {
    const KEY: &str = "sk-e2e-api-key-never-logged-0123456789";
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n"))?;
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("log"))?;
    let mut child = tokio::process::Command::new(sidecar_bin())
        .args([
            "serve",
            "--insecure-no-auth",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ])
        .args(["--codex-bin", &codex_bin().display().to_string()])
        .args(["--openai-api-key-file", &key_file.display().to_string()])
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let api = codex_e2e::harness::Api::new(&format!("http://127.0.0.1:{port}"), None);
    let mut status = 0;
    for _ in 0..200 {
        status = api.call("GET", "/healthz", None).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    for id in ["one", "two"] {
        let (s, body) = api.create(json!({"id": id})).await;
        assert_eq!(s, 201, "{body}");
    }
    let (_, st) = api.call("GET", "/v1/status", None).await;
    assert_eq!(st["provider"], "openai");
    let auth_files =
        codex_e2e::harness::files_named(&dir.path().join("state/sessions"), "auth.json");
    for p in &auth_files {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(p)?.permissions().mode() & 0o777, 0o600);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p)?)?;
        assert_eq!(v["OPENAI_API_KEY"], KEY);
    }
    let found = auth_files.len();
    assert_eq!(
        found, 2,
        "each session's CODEX_HOME holds its own auth.json"
    );
    child.kill().await?;
    let log = std::fs::read_to_string(dir.path().join("log"))?;
    assert!(!log.contains(KEY), "the key never reaches the log");
    Ok(())
}
