//! What survives damage to the state dir, a full disk, and DELETE racing a create, against the
//! real codex: a bad line quarantines a session (nothing re-run, nothing cut), a directory that
//! is not a session is moved aside (its id is never replayed), a full disk answers 507 and loses
//! nothing, and a DELETE completes atomically even when its client goes away.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use codex_e2e::harness::{Sidecar, files_named, of_type};
use codex_e2e::model::ScriptedModel;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

fn session_file(state: &Path, name: &str, id: &str) -> PathBuf {
    files_named(state, name)
        .into_iter()
        .find(|p| {
            p.parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == id)
        })
        .unwrap_or_else(|| panic!("no {name} for session {id} under {}", state.display()))
}

async fn status_counts(sc: &Sidecar) -> Value {
    let (_, st) = sc.api("ops").call("GET", "/v1/status", None).await;
    st["counts"].clone()
}

#[tokio::test]
async fn a_bad_line_quarantines_the_session_and_nothing_is_cut_or_run_again() -> anyhow::Result<()>
{
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    for id in ["q", "ok"] {
        assert_eq!(api.create(json!({"id": id})).await.0, 201);
    }
    for i in 1..=3 {
        api.send("q", &format!("turn {i}")).await;
        api.until_results("q", 0, i, T).await?;
    }
    let before = api.until_results("q", 0, 3, T).await?;
    sc.terminate(Duration::from_secs(30)).await?;
    let requests_before = model.requests().len();

    // Damage line 3 of q's log (a complete line, not at the tail).
    let log = session_file(&sc.state_dir, "events.jsonl", "q");
    let text = std::fs::read_to_string(&log)?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines.len() > 6, "{text}");
    lines[2] = "{\"seq\":3,\"type\":\"delta\",\"te".into();
    let damaged = lines.join("\n") + "\n";
    std::fs::write(&log, &damaged)?;

    sc.restart().await?;
    let api = api.with_base(&sc.base);
    let (_, view) = api.call("GET", "/v1/sessions/q", None).await;
    assert_eq!(view["state"], "failed", "{view}");
    let reason = view["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("session_corrupt") && reason.contains("line 3"),
        "{view}"
    );
    // what precedes the bad line is still readable; nothing after it was cut
    let (_, page) = api.events("q", 0, 0).await;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 2, "{page}");
    assert_eq!(events[..], before[..2]);
    assert_eq!(
        std::fs::read_to_string(&log)?,
        damaged,
        "the file is untouched"
    );
    // it accepts nothing and runs nothing
    let (status, body) = api.send("q", "more").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "session_quarantined");
    api.send("ok", "the healthy session still works").await;
    api.until_results("ok", 0, 1, T).await?;
    assert_eq!(
        model.requests().len(),
        requests_before + 1,
        "only the healthy session's turn reached the model"
    );
    assert_eq!(status_counts(&sc).await["quarantined"], 1);

    // DELETE clears it; the id then starts over
    assert_eq!(api.call("DELETE", "/v1/sessions/q", None).await.0, 204);
    assert_eq!(api.create(json!({"id": "q"})).await.0, 201);
    let (_, page) = api.events("q", 0, 0).await;
    assert_eq!(page["events"][0]["seq"], 1);
    assert_eq!(page["events"][0]["type"], "init");
    Ok(())
}

#[tokio::test]
async fn a_directory_without_session_json_is_moved_aside_and_never_replayed() -> anyhow::Result<()>
{
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "x"})).await.0, 201);
    api.send("x", "an old message").await;
    api.until_results("x", 0, 1, T).await?;
    // A second message waits behind a slow turn when the sidecar dies: it is owed a turn.
    api.send("x", "slow [[delay_ms=3000]]").await;
    api.send("x", "owed").await;
    sc.kill9().await;
    std::fs::remove_file(session_file(&sc.state_dir, "session.json", "x"))?;
    let requests_before = model.requests().len();

    sc.restart().await?;
    let api = api.with_base(&sc.base);
    assert_eq!(api.call("GET", "/v1/sessions/x", None).await.0, 404);
    assert_eq!(status_counts(&sc).await["quarantined"], 1);
    let moved = files_named(&sc.state_dir.join("quarantine"), "messages.jsonl");
    assert_eq!(moved.len(), 1, "the directory is kept, aside");
    assert!(sc.log().contains("moved to the quarantine"));

    // The id starts over: nothing of the old session comes back or runs again.
    assert_eq!(api.create(json!({"id": "x"})).await.0, 201);
    api.send("x", "new").await;
    let events = api.until_results("x", 0, 1, T).await?;
    assert_eq!(events[0]["seq"], 1);
    let results = of_type(&events, "result");
    assert_eq!(results.len(), 1, "{events:?}");
    assert_eq!(results[0]["text"], "echo: new");
    assert_eq!(
        of_type(&events, "turn_started")[0]["message_ids"],
        json!(["msg_1"])
    );
    assert_eq!(model.requests().len(), requests_before + 1);
    Ok(())
}

#[tokio::test]
async fn delete_racing_create_never_brings_old_history_back() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    for round in 0..4 {
        assert!(matches!(api.create(json!({"id": "r"})).await.0, 200 | 201));
        api.send("r", &format!("history of round {round}")).await;
        api.until_results("r", 0, 1, T).await?;

        let (a, b) = (api.clone(), api.clone());
        let delete = tokio::spawn(async move { a.call("DELETE", "/v1/sessions/r", None).await });
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        let create = tokio::spawn(async move { b.create(json!({"id": "r"})).await });
        let (deleted, created) = (delete.await?, create.await?);
        assert_eq!(deleted.0, 204, "{deleted:?}");
        match created.0 {
            // The create ran first and found the old session; the DELETE then removed it.
            200 => assert_eq!(api.call("GET", "/v1/sessions/r", None).await.0, 404),
            // The create ran after the DELETE: a new session, with none of the old history, whose
            // files the old DELETE did not remove.
            201 => {
                let (_, page) = api.events("r", 0, 0).await;
                let events = page["events"].as_array().cloned().unwrap_or_default();
                assert_eq!(events.len(), 1, "only the new init: {page}");
                assert_eq!(events[0]["type"], "init");
                assert!(session_file(&sc.state_dir, "session.json", "r").exists());
                api.send("r", "after the race").await;
                let got = api.until_results("r", 0, 1, T).await?;
                assert_eq!(of_type(&got, "result")[0]["text"], "echo: after the race");
                assert_eq!(
                    of_type(&got, "turn_started")[0]["message_ids"],
                    json!(["msg_1"])
                );
                assert_eq!(api.call("DELETE", "/v1/sessions/r", None).await.0, 204);
            }
            other => panic!("create answered {other}: {created:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_delete_whose_client_goes_away_still_completes() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "gone"})).await.0, 201);
    api.send("gone", "hello").await;
    api.until_results("gone", 0, 1, T).await?;
    // The client hangs up while the DELETE stops the codex child.
    let token = codex_e2e::harness::mint("alice", None, 600);
    let cut = reqwest::Client::new()
        .delete(format!("{}/v1/sessions/gone", sc.base))
        .bearer_auth(token)
        .timeout(Duration::from_millis(20))
        .send()
        .await;
    assert!(
        cut.is_err(),
        "the client gave up before the answer: {cut:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.call("GET", "/v1/sessions/gone", None).await.0 != 404 {
        assert!(Instant::now() < deadline, "the DELETE never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    sc.restart().await?;
    let api = api.with_base(&sc.base);
    assert_eq!(api.call("GET", "/v1/sessions/gone", None).await.0, 404);
    assert!(
        files_named(&sc.state_dir.join("sessions"), "messages.jsonl").is_empty(),
        "no half-deleted session is left"
    );
    Ok(())
}

/// A small tmpfs mounted over the sidecar's state dir (root only), unmounted on drop.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> anyhow::Result<Option<SmallDisk>> {
        if unsafe { libc::geteuid() } != 0 {
            println!("NOTICE: skipping the full-disk test: mounting a small tmpfs needs root");
            return Ok(None);
        }
        let copy = at.with_extension("copy");
        run(
            "cp",
            &["-a", &at.display().to_string(), &copy.display().to_string()],
        )?;
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                &at.display().to_string(),
            ],
        )?;
        let disk = SmallDisk { at: at.to_owned() };
        run(
            "cp",
            &[
                "-a",
                &format!("{}/.", copy.display()),
                &at.display().to_string(),
            ],
        )?;
        std::fs::remove_dir_all(&copy)?;
        Ok(Some(disk))
    }

    /// Writes a filler file until the disk refuses; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.at.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![7u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let small = [7u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let st = std::process::Command::new(cmd).args(args).status()?;
    anyhow::ensure!(st.success(), "{cmd} {args:?}: {st}");
    Ok(())
}

#[tokio::test]
async fn a_full_disk_refuses_new_work_with_507_and_loses_nothing() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "d"})).await.0, 201);
    api.send("d", "warm up").await;
    api.until_results("d", 0, 1, T).await?;
    sc.terminate(Duration::from_secs(30)).await?;
    let state = sc.state_dir.clone();
    let Some(disk) = SmallDisk::mount(&state, "64m")? else {
        return Ok(());
    };
    sc.restart().await?;
    let api = api.with_base(&sc.base);

    // A turn is running when the disk fills up.
    let (_, page) = api.events("d", 0, 0).await;
    let cursor = page["next"].as_u64().unwrap_or(0);
    // Its answer (an echo) is larger than a page, so writing it needs a new block.
    let big = format!("slow [[delay_ms=1500]] {}", "x".repeat(16 * 1024));
    assert_eq!(api.send("d", &big).await.0, 202);
    api.collect_until("d", cursor, T, |e| e["type"] == "turn_started")
        .await?;
    let filler = disk.fill();
    let (status, body) = api
        .send(
            "d",
            &format!("refused while full {}", "y".repeat(16 * 1024)),
        )
        .await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    // The sidecar keeps the turn's end in memory; once there is room it is written, in order.
    let deadline = Instant::now() + T;
    while status_counts(&sc).await["storage_faults"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the refused event appends are not reported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = api
        .send("d", &format!("still refused {}", "y".repeat(16 * 1024)))
        .await;
    assert_eq!(status, 507, "{body}");
    std::fs::remove_file(&filler)?;
    let events = api.until_results("d", cursor, 1, T).await?;
    let result = of_type(&events, "result")[0];
    // Codex itself may fail the turn while it cannot write its rollout; either way the accepted
    // message's turn ends with a result the client sees.
    if result["status"] != "completed" {
        assert!(!of_type(&events, "error").is_empty(), "{events:?}");
    } else {
        assert_eq!(result["text"], format!("echo: {big}"));
    }
    let mut seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    seqs.dedup();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless: {seqs:?}"
    );
    let deadline = Instant::now() + T;
    loop {
        let (status, _) = api.send("d", "accepted again").await;
        if status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "never accepted again ({status})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.until_results("d", cursor, 2, T).await?;

    // A restart with the disk still full keeps a session whose turn was cut.
    let (_, page) = api.events("d", 0, 0).await;
    let cursor = page["next"].as_u64().unwrap_or(0);
    api.send("d", "cut [[delay_ms=3000]]").await;
    api.collect_until("d", cursor, T, |e| e["type"] == "turn_started")
        .await?;
    sc.kill9().await;
    let filler = disk.fill();
    sc.restart().await?;
    let api = api.with_base(&sc.base);
    let (status, view) = api.call("GET", "/v1/sessions/d", None).await;
    assert_eq!(status, 200, "the session is still there: {view}");
    std::fs::remove_file(&filler)?;
    let events = api
        .collect_until("d", cursor, T, |e| e["type"] == "result")
        .await?;
    let lost = of_type(&events, "error");
    assert_eq!(lost[0]["code"], "turn_lost", "{events:?}");
    drop(sc);
    drop(disk);
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dst = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dst)?;
        } else {
            std::fs::copy(entry.path(), dst)?;
        }
    }
    Ok(())
}

/// Issue 8.14: known sessions hold no file descriptor, so a small open-files limit skips none of
/// them at start-up (each used to hold its log and inbox open: at 1024, 495 of 1,000 were lost).
#[tokio::test]
async fn every_session_loads_under_a_small_open_files_limit() -> anyhow::Result<()> {
    const SESSIONS: usize = 300;
    const LIMIT: u64 = 128;
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &["--max-live-sessions", "2"]).await?;
    let api = sc.api("alice");
    assert_eq!(api.create(json!({"id": "s0"})).await.0, 201);
    assert_eq!(api.send("s0", "hello").await.0, 202);
    api.until_results("s0", 0, 1, T).await?;
    sc.terminate(Duration::from_secs(30)).await?;
    // 299 more sessions of alice's: copies of s0 under other ids.
    let src = session_file(&sc.state_dir, "session.json", "s0");
    let src = src.parent().expect("session dir");
    for i in 1..SESSIONS {
        let id = format!("s{i}");
        let dst = src.with_file_name(&id);
        copy_dir(src, &dst)?;
        let path = dst.join("session.json");
        let mut record: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        record["id"] = json!(id);
        std::fs::write(&path, serde_json::to_vec(&record)?)?;
    }
    sc.set_open_files_limit(Some(LIMIT));
    sc.restart().await?;
    let api = sc.api("alice");
    let (code, listed) = api.call("GET", "/v1/sessions", None).await;
    assert_eq!(code, 200, "{listed}");
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(SESSIONS),
        "every session is served: {} sessions listed; status {}",
        listed["sessions"].as_array().map_or(0, Vec::len),
        status_counts(&sc).await
    );
    let counts = status_counts(&sc).await;
    assert_eq!(counts["sessions"], SESSIONS, "{counts}");
    assert_eq!(counts["quarantined"], 0, "nothing moved aside: {counts}");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", sc.pid().expect("pid")))?.count();
    assert!(
        fds < 64,
        "idle sessions hold no file descriptors: {fds} open"
    );
    // And the last one still works (codex can be spawned: descriptors are left for it).
    let last = format!("s{}", SESSIONS - 1);
    assert_eq!(api.send(&last, "still here").await.0, 202);
    let events = api.until_results(&last, 0, 2, T).await?;
    assert_eq!(
        events.last().map(|e| e["status"].clone()),
        Some(json!("completed")),
        "{events:?}"
    );
    sc.kill9().await;
    Ok(())
}

/// Issue 8.15: the API listens and serves while a long history is still being read: start-up
/// reads each `session.json` only; event logs are read in the background, and a request for a
/// session not read yet reads that one first.
#[tokio::test]
async fn a_long_history_does_not_hold_up_start_up_or_other_sessions() -> anyhow::Result<()> {
    use std::io::Write;
    const EXTRA: u64 = 1_000_000;
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(&model.base_url(), &[]).await?;
    let api = sc.api("alice");
    for id in ["big", "small"] {
        assert_eq!(api.create(json!({"id": id})).await.0, 201);
        assert_eq!(api.send(id, "hello").await.0, 202);
        api.until_results(id, 0, 1, T).await?;
    }
    let (_, before) = api.call("GET", "/v1/sessions/big", None).await;
    let first_new = before["next_seq"].as_u64().expect("next_seq");
    sc.terminate(Duration::from_secs(30)).await?;
    // A million more events in big's log (about 100 MB).
    let log = session_file(&sc.state_dir, "events.jsonl", "big");
    let mut w = std::io::BufWriter::new(std::fs::OpenOptions::new().append(true).open(&log)?);
    for seq in first_new..first_new + EXTRA {
        writeln!(
            w,
            r#"{{"seq":{seq},"time":"2026-12-01T00:00:00.000000000Z","type":"delta","text":"a line of history that makes the log long"}}"#
        )?;
    }
    w.flush()?;
    drop(w);
    sc.restart().await?;
    let api = sc.api("alice");
    let counts = status_counts(&sc).await;
    assert_eq!(counts["sessions"], 2, "{counts}");
    assert!(
        counts["loading"].as_u64().is_some_and(|n| n >= 1),
        "the API answers while the long log is still being read: {counts}"
    );
    // The small session works meanwhile.
    assert_eq!(api.send("small", "meanwhile").await.0, 202);
    let events = api.until_results("small", 0, 2, T).await?;
    assert_eq!(
        events.last().map(|e| e["status"].clone()),
        Some(json!("completed"))
    );
    // A request for the big one waits for its own log and sees all of it.
    let (code, big) = api.call("GET", "/v1/sessions/big", None).await;
    assert_eq!(code, 200, "{big}");
    assert_eq!(big["next_seq"], first_new + EXTRA, "{big}");
    let (_, page) = api
        .call(
            "GET",
            &format!(
                "/v1/sessions/big/events?after={}&wait=0",
                first_new + EXTRA - 2
            ),
            None,
        )
        .await;
    assert_eq!(page["events"][0]["seq"], first_new + EXTRA - 1, "{page}");
    let deadline = Instant::now() + T;
    while status_counts(&sc).await["loading"] != 0 {
        assert!(Instant::now() < deadline, "every log is read in the end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sc.kill9().await;
    Ok(())
}
