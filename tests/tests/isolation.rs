//! Tenant isolation below the API and the end of every process a session started, against the
//! real codex: a command in alice's session cannot read bob's session files, the master
//! auth.json, the JWT key or the sidecar's environment (Landlock, skipped with a NOTICE where the
//! kernel lacks it); without isolation a second owner is refused unless the operator opted in
//! (and then, as a control, the same command does read bob's files); and a `setsid` command is
//! gone after DELETE, after eviction and after `kill -9` of the sidecar (any kernel).

use std::path::Path;
use std::time::{Duration, Instant};

use codex_e2e::harness::{Api, Sidecar, TEST_SECRET};
use codex_e2e::model::{ScriptedModel, last_function_call_output};
use codex_sidecar::codex::isolation::landlock_abi;
use codex_sidecar::engine::owner_key;
use serde_json::json;

const T: Duration = Duration::from_secs(180);
const AUTH_CANARY: &str = "sk-auth-json-canary-never-read-by-a-command-31";
const ENV_CANARY: &str = "sidecar-environment-canary-never-read-41";
const BOB_TEXT: &str = "bob-private-message-canary-59";

/// The output codex sent back to the model for the command whose message held `marker`.
fn command_output(model: &ScriptedModel, marker: &str) -> String {
    let requests = model.requests();
    let asked = requests.iter().position(|r| {
        r.last_user_text
            .as_deref()
            .is_some_and(|t| t.contains(marker))
    });
    requests
        .iter()
        .skip(asked.unwrap_or(usize::MAX))
        .find_map(|r| last_function_call_output(&r.body))
        .unwrap_or_default()
}

/// Starts a sidecar with a master auth.json holding [`AUTH_CANARY`] and [`ENV_CANARY`] in its
/// environment; bob's session `b` holds [`BOB_TEXT`] in its messages.
async fn sidecar_with_bob(model: &ScriptedModel, extra: &[&str]) -> anyhow::Result<Sidecar> {
    let auth = codex_e2e::harness::tmp_root().join(format!("auth-{}.json", std::process::id()));
    std::fs::write(&auth, json!({"OPENAI_API_KEY": AUTH_CANARY}).to_string())?;
    let auth_arg = auth.display().to_string();
    let mut args = vec!["--auth-json", auth_arg.as_str()];
    args.extend_from_slice(extra);
    let sc = Sidecar::start_with_env(
        &model.base_url(),
        &args,
        &[("E2E_SIDECAR_ENV_CANARY", ENV_CANARY)],
    )
    .await;
    let _ = std::fs::remove_file(&auth);
    let sc = sc?;
    let bob = sc.api("bob");
    assert_eq!(bob.create(json!({"id": "b"})).await.0, 201);
    bob.send("b", BOB_TEXT).await;
    bob.until_results("b", 0, 1, T).await?;
    Ok(sc)
}

/// The command that tries every forbidden read, then writes and reads its own workspace.
fn snoop_command(sc: &Sidecar) -> String {
    let bob = sc
        .state_dir
        .join("sessions")
        .join(owner_key("bob"))
        .join("b/messages.jsonl");
    let pid = sc.pid().unwrap_or(0);
    format!(
        "cat {bob}; cat {auth}; cat {key}; tr '\\0' '\\n' < /proc/{pid}/environ; ls {sessions}; echo own-file-ok > mine.txt && cat mine.txt",
        bob = bob.display(),
        auth = sc.state_dir.join("auth/auth.json").display(),
        key = sc.secret_file.display(),
        sessions = sc.state_dir.join("sessions").display(),
    )
}

#[tokio::test]
async fn a_command_reads_only_its_own_session_under_landlock() -> anyhow::Result<()> {
    let Some(abi) = landlock_abi() else {
        println!("NOTICE: skipping: this kernel has no Landlock (isolation cannot be enforced)");
        return Ok(());
    };
    let model = ScriptedModel::start().await?;
    let sc = sidecar_with_bob(&model, &["--isolation", "landlock"]).await?;
    let alice = sc.api("alice");
    assert_eq!(
        alice.create(json!({"id": "a"})).await.0,
        201,
        "a second owner is served: sessions are isolated"
    );
    let (_, status) = alice.call("GET", "/v1/status", None).await;
    assert_eq!(status["isolation"]["mode"], "landlock", "{status}");
    assert_eq!(status["isolation"]["enforced"], true);
    assert_eq!(status["isolation"]["abi"], abi);
    assert_eq!(status["sandbox_check"]["enforced_by"], "landlock");
    assert_eq!(status["sandbox_check"]["ok"], true);

    alice
        .send("a", &format!("snoop-1 [[exec={}]]", snoop_command(&sc)))
        .await;
    alice.until_results("a", 0, 1, T).await?;
    let out = command_output(&model, "snoop-1");
    assert!(
        out.contains("own-file-ok"),
        "the command ran and wrote its workspace: {out}"
    );
    let own = sc
        .state_dir
        .join("sessions")
        .join(owner_key("alice"))
        .join("a/workspace/mine.txt");
    assert_eq!(std::fs::read_to_string(&own)?.trim(), "own-file-ok");
    for (what, secret) in [
        ("bob's messages", BOB_TEXT),
        ("the master auth.json", AUTH_CANARY),
        ("the JWT key file", TEST_SECRET),
        ("the sidecar's environment", ENV_CANARY),
        // `ls` of the sessions dir would name alice's own directory too.
        ("the list of owners", owner_key("alice").as_str()),
    ] {
        assert!(!out.contains(secret), "{what} was read: {out}");
    }
    assert!(out.contains("Permission denied"), "{out}");
    Ok(())
}

#[tokio::test]
async fn without_isolation_a_second_owner_needs_the_operators_opt_in() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--isolation", "off"]).await?;
    let (alice, bob) = (sc.api("alice"), sc.api("bob"));
    assert_eq!(alice.create(json!({"id": "a1"})).await.0, 201);
    assert_eq!(
        alice.create(json!({"id": "a2"})).await.0,
        201,
        "one owner is always fine"
    );
    let (code, body) = bob.create(json!({"id": "b"})).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "isolation_unavailable");
    let (_, status) = alice.call("GET", "/v1/status", None).await;
    let iso = &status["isolation"];
    assert_eq!(iso["mode"], "off", "{status}");
    assert_eq!(iso["requested"], "off");
    assert_eq!(iso["enforced"], false);
    assert_eq!(iso["allow_shared_owners"], false);
    assert!(iso["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(sc.log().contains("isolation: off"), "said at start-up");
    drop(sc);

    // Opted in: bob is served, and (the control for the Landlock test) alice's command then
    // does read bob's messages and the master auth.json.
    let model = ScriptedModel::start().await?;
    let sc = sidecar_with_bob(&model, &["--isolation", "off", "--allow-shared-owners"]).await?;
    let alice = sc.api("alice");
    assert_eq!(alice.create(json!({"id": "a"})).await.0, 201);
    let (_, status) = alice.call("GET", "/v1/status", None).await;
    assert_eq!(status["isolation"]["allow_shared_owners"], true);
    alice
        .send("a", &format!("snoop-2 [[exec={}]]", snoop_command(&sc)))
        .await;
    alice.until_results("a", 0, 1, T).await?;
    let out = command_output(&model, "snoop-2");
    assert!(out.contains("own-file-ok"), "{out}");
    assert!(
        out.contains(BOB_TEXT) && out.contains(AUTH_CANARY),
        "without isolation nothing stops the read: {out}"
    );
    Ok(())
}

/// Pids of live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            }) && codex_e2e::harness::alive(*pid)
        })
        .collect()
}

async fn gone_within(needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if processes_with(needle).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Runs `setsid sleep <secs>` (its own session, so no process group kill reaches it) in session
/// `id` and waits until it runs; returns the command line to look for.
async fn start_orphan(api: &Api, id: &str, secs: &str) -> anyhow::Result<String> {
    let needle = format!("sleep {secs}");
    api.send(
        id,
        &format!("[[exec=setsid {needle} < /dev/null > /dev/null 2>&1 & echo started]]"),
    )
    .await;
    api.until_results(id, 0, 1, T).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&needle).is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "`{needle}` never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(needle)
}

/// Skips (true) where `setsid` is missing.
fn no_setsid() -> bool {
    let missing = !["/usr/bin/setsid", "/bin/setsid"]
        .iter()
        .any(|p| Path::new(p).exists());
    if missing {
        println!("NOTICE: skipping: no setsid on this machine");
    }
    missing
}

#[tokio::test]
async fn a_setsid_command_ends_with_its_session_its_eviction_and_the_sidecar() -> anyhow::Result<()>
{
    if no_setsid() {
        return Ok(());
    }
    let model = ScriptedModel::start().await?;
    let tag = std::process::id();
    let mut sc = Sidecar::start(
        &model.base_url(),
        &[
            "--isolation",
            "off",
            "--sandbox",
            "danger-full-access",
            "--max-live-sessions",
            "1",
        ],
    )
    .await?;
    let api = sc.api("alice");

    // DELETE of the session.
    assert_eq!(api.create(json!({"id": "del"})).await.0, 201);
    let orphan = start_orphan(&api, "del", &format!("1000.{tag}1")).await?;
    let (code, _) = api.call("DELETE", "/v1/sessions/del", None).await;
    assert_eq!(code, 204);
    assert!(
        gone_within(&orphan, Duration::from_secs(10)).await,
        "`{orphan}` outlived the deleted session"
    );

    // Eviction: one live child at most, so a second session stops the first one's codex.
    assert_eq!(api.create(json!({"id": "ev1"})).await.0, 201);
    let orphan = start_orphan(&api, "ev1", &format!("1000.{tag}2")).await?;
    assert_eq!(api.create(json!({"id": "ev2"})).await.0, 201);
    assert!(
        gone_within(&orphan, Duration::from_secs(10)).await,
        "`{orphan}` outlived the evicted child"
    );

    // kill -9 of the sidecar itself.
    let orphan = start_orphan(&api, "ev2", &format!("1000.{tag}3")).await?;
    sc.kill9().await;
    assert!(
        gone_within(&orphan, Duration::from_secs(10)).await,
        "`{orphan}` outlived the sidecar"
    );
    Ok(())
}
