//! Warm children (`--warm-children`): a codex child started before any session asks, handed to
//! the next new session (its directory becomes the session's, its old path the session's alias),
//! refilled in the background, and given back when a session needs its slot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use codex_e2e::harness::{
    Api, Sidecar, alive, codex_pids, files_named, files_under, of_type, wait_for,
};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

async fn counts(api: &Api) -> Value {
    let (_, s) = api.call("GET", "/v1/status", None).await;
    s["counts"].clone()
}

/// `(real directories, symlinks with their targets)` under `<state>/warm/`.
fn warm_entries(state: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, PathBuf)>) {
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    for e in std::fs::read_dir(state.join("warm"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if p.is_symlink() {
            let target = std::fs::read_link(&p).unwrap_or_default();
            links.push((p, target));
        } else if p.is_dir() {
            dirs.push(p);
        }
    }
    (dirs, links)
}

/// How many thread rollouts (`rollout-*.jsonl`) lie under `dir`.
fn rollouts(dir: &Path) -> usize {
    files_under(dir, |p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("rollout-") && n.ends_with(".jsonl"))
    })
    .len()
}

fn session_dir(state: &Path, id: &str) -> PathBuf {
    let found: Vec<PathBuf> = files_named(&state.join("sessions"), "session.json")
        .into_iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| d.file_name().and_then(|n| n.to_str()) == Some(id))
        .collect();
    assert_eq!(found.len(), 1, "one directory for session {id}: {found:?}");
    found[0].clone()
}

#[tokio::test]
async fn a_new_session_is_handed_the_warm_child_and_keeps_its_thread_across_a_restart()
-> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &["--max-live-sessions", "2"]).await?;
    let pid = sc.pid().expect("pid");
    let api = sc.api("alice");
    wait_for(
        "a warm child is ready (default --warm-children 1)",
        || async { counts(&api).await["warm_children"] == 1 },
        T,
    )
    .await?;
    let before = codex_pids(pid);
    assert_eq!(before.len(), 1, "one codex started before any session");
    let warm_pid = before[0];
    assert_eq!(
        counts(&api).await["live"],
        0,
        "a warm child is not a session"
    );

    let (status, created) = api.create(json!({"id": "w"})).await;
    assert_eq!(status, 201, "{created}");
    let dir = session_dir(&sc.state_dir, "w");
    assert!(
        !dir.is_symlink() && dir.join("codex-home/config.toml").is_file(),
        "the session's path is a real directory holding the warm child's CODEX_HOME"
    );
    let cwd = std::fs::read_link(format!("/proc/{warm_pid}/cwd"))?;
    assert_eq!(
        cwd,
        std::fs::canonicalize(dir.join("workspace"))?,
        "the warm child now works in the session's workspace"
    );
    wait_for(
        "the pool refills in the background",
        || async { counts(&api).await["warm_children"] == 1 },
        T,
    )
    .await?;
    let after = codex_pids(pid);
    assert_eq!(
        after.len(),
        2,
        "the session's child and a new warm one: {after:?}"
    );
    assert!(after.contains(&warm_pid), "the session kept the warm child");
    assert_eq!(counts(&api).await["live"], 1);
    let (dirs, links) = warm_entries(&sc.state_dir);
    assert_eq!(dirs.len(), 1, "the new warm child's directory: {dirs:?}");
    assert_eq!(links.len(), 1, "the session's alias: {links:?}");
    assert_eq!(
        links[0].1,
        std::fs::canonicalize(&dir)?,
        "the alias points at the session"
    );

    assert_eq!(api.send("w", "remember HERON").await.0, 202);
    let first = api.until_results("w", 0, 1, T).await?;
    assert_eq!(first.last().expect("result")["status"], "completed");
    // The warm child ran its warm-up turn against the sidecar's own warm-up model, before the
    // session took it: the thread is archived in the session's CODEX_HOME, the session's model
    // never saw it, and the session's usage is only its own turn's.
    let home = dir.join("codex-home");
    assert_eq!(
        rollouts(&home.join("archived_sessions")),
        1,
        "the warm-up thread's rollout is archived"
    );
    assert_eq!(
        rollouts(&home.join("sessions")),
        1,
        "sessions/ holds the session's thread only"
    );
    let requests = model.requests();
    assert_eq!(requests.len(), 1, "one model request: the session's turn");
    assert_eq!(
        requests[0].last_user_text.as_deref(),
        Some("remember HERON")
    );
    let (_, view) = api.call("GET", "/v1/sessions/w", None).await;
    assert_eq!(view["usage"], first.last().expect("result")["usage"]);

    // After a kill -9 the new child starts at the session's real path; codex finds the thread's
    // rollout through the path it recorded (under the alias).
    sc.restart().await?;
    let api = api.with_base(&sc.base);
    let pid = sc.pid().expect("pid");
    assert_eq!(api.send("w", "still there?").await.0, 202);
    let second = api.until_results("w", first.len() as u64, 1, T).await?;
    assert!(of_type(&second, "init").is_empty(), "resumed: {second:?}");
    assert_eq!(second.last().expect("result")["text"], "echo: still there?");
    let (_, view) = api.call("GET", "/v1/sessions/w", None).await;
    assert_eq!(view["thread_id"], created["thread_id"]);
    let last = model.requests().into_iter().last().expect("request");
    assert!(
        last.body.to_string().contains("HERON"),
        "the resumed thread kept its history"
    );
    wait_for(
        "a warm child is ready again",
        || async { counts(&api).await["warm_children"] == 1 },
        T,
    )
    .await?;
    let (dirs, links) = warm_entries(&sc.state_dir);
    assert_eq!(
        dirs.len(),
        1,
        "the dead run's warm directory is gone, a new one is there: {dirs:?}"
    );
    assert_eq!(links.len(), 1, "the alias survived the restart: {links:?}");
    assert_eq!(codex_pids(pid).len(), 2);

    assert_eq!(api.call("DELETE", "/v1/sessions/w", None).await.0, 204);
    let (_, links) = warm_entries(&sc.state_dir);
    assert!(links.is_empty(), "DELETE removes the alias: {links:?}");
    Ok(())
}

#[tokio::test]
async fn a_session_that_needs_a_slot_takes_the_warm_childs() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(
        &model.base_url(),
        &["--max-live-sessions", "1", "--idle-timeout", "2"],
    )
    .await?;
    let pid = sc.pid().expect("pid");
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "a"})).await.0, 201);
    assert_eq!(api.send("a", "remember OSPREY").await.0, 202);
    let first = api.until_results("a", 0, 1, T).await?;
    let c = counts(&api).await;
    assert_eq!(
        (c["live"].as_u64(), c["warm_children"].as_u64()),
        (Some(1), Some(0))
    );
    // The idle child stops; its free slot goes to a new warm child.
    wait_for(
        "the free slot is refilled",
        || async {
            let c = counts(&api).await;
            c["live"] == 0 && c["warm_children"] == 1
        },
        T,
    )
    .await?;
    let warm = codex_pids(pid);
    assert_eq!(warm.len(), 1, "{warm:?}");

    // The session's next turn needs the only slot: the warm child gives it back.
    let t0 = Instant::now();
    assert_eq!(api.send("a", "still there?").await.0, 202);
    let second = api.until_results("a", first.len() as u64, 1, T).await?;
    assert_eq!(
        second.last().expect("result")["status"],
        "completed",
        "{second:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(of_type(&second, "init").is_empty(), "resumed: {second:?}");
    let last = model.requests().into_iter().last().expect("request");
    assert!(last.body.to_string().contains("OSPREY"));
    wait_for("the warm child is gone", || async { !alive(warm[0]) }, T).await?;
    let c = counts(&api).await;
    assert_eq!(
        (c["live"].as_u64(), c["warm_children"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        codex_pids(pid).len(),
        1,
        "never more than --max-live-sessions children"
    );
    Ok(())
}

#[tokio::test]
async fn with_no_warm_children_nothing_starts_before_a_session() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--warm-children", "0"]).await?;
    let pid = sc.pid().expect("pid");
    let api = sc.api("alice");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(codex_pids(pid).is_empty(), "no codex before a session");
    let (_, st) = api.call("GET", "/v1/status", None).await;
    assert_eq!(st["limits"]["warm_children"], 0);
    assert_eq!(st["counts"]["warm_children"], 0);
    assert_eq!(api.create(json!({"id": "cold"})).await.0, 201);
    assert_eq!(codex_pids(pid).len(), 1);
    let (dirs, links) = warm_entries(&sc.state_dir);
    assert!(dirs.is_empty() && links.is_empty(), "{dirs:?} {links:?}");
    Ok(())
}

#[tokio::test]
async fn more_warm_children_than_live_sessions_is_refused_at_start() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let err = Sidecar::start(
        &model.base_url(),
        &["--max-live-sessions", "2", "--warm-children", "3"],
    )
    .await
    .err()
    .expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("--max-live-sessions"), "{msg}");
    Ok(())
}
