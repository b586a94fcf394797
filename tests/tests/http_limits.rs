//! What an unauthenticated client can do to the server: half-sent requests and idle sockets are
//! closed by the header read timeout, connections beyond the cap wait instead of exhausting file
//! descriptors, SIGTERM stops within the drain whatever connections are open, and with
//! `--insecure-no-auth` only loopback `Host`s and same-origin browsers are served.

use std::time::{Duration, Instant};

use codex_e2e::harness::{Api, Sidecar, codex_bin, free_port, sidecar_bin};
use codex_e2e::model::ScriptedModel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A sidecar with `--insecure-no-auth` on loopback (the harness's always has a key).
struct OpenSidecar {
    base: String,
    port: u16,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl OpenSidecar {
    async fn start(model: &str, codex: &std::path::Path) -> anyhow::Result<OpenSidecar> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let child = tokio::process::Command::new(sidecar_bin())
            .args(["serve", "--insecure-no-auth", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--codex-bin")
            .arg(codex)
            .args(["--provider", "custom", "--model", "scripted"])
            .arg("--provider-base-url")
            .arg(model)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if client.get(format!("{base}/healthz")).send().await.is_ok() {
                return Ok(OpenSidecar {
                    base,
                    port,
                    _dir: dir,
                    _child: child,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the sidecar did not answer /healthz")
    }
}

fn addr(sc: &Sidecar) -> String {
    sc.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes the connection (or `limit` passes); returns how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), stream.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            // A 408 before closing is fine too: keep reading until EOF.
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn half_sent_requests_and_idle_sockets_are_closed_by_the_header_timeout() -> anyhow::Result<()>
{
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &["--http-header-read-timeout", "2"]).await?;
    let mut half = TcpStream::connect(addr(&sc)).await?;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await?;
    let mut idle = TcpStream::connect(addr(&sc)).await?;
    let took = closed_within(&mut half, Duration::from_secs(8)).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(1500)),
        "a half-sent request is closed after the timeout, not before: {took:?}"
    );
    let took = closed_within(&mut idle, Duration::from_secs(8)).await;
    assert!(took.is_some(), "an idle socket is closed too");
    // Requests sent in time are served as before.
    let (code, _) = Api::new(&sc.base, None).call("GET", "/healthz", None).await;
    assert_eq!(code, 200);
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(
        &model.base_url(),
        &[
            "--http-max-connections",
            "4",
            "--http-header-read-timeout",
            "3",
        ],
    )
    .await?;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr(&sc)).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()?;
    let url = format!("{}/healthz", sc.base);
    assert!(
        client.get(&url).send().await.is_err(),
        "a fifth connection is not served while four are open"
    );
    // The held sockets send nothing: the header timeout closes them, and the next one is served.
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let r = patient.get(&url).send().await?;
    assert_eq!(r.status(), 200);
    drop(held);
    Ok(())
}

#[tokio::test]
async fn sigterm_with_a_stalled_client_stops_within_the_drain() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let mut sc = Sidecar::start(
        &model.base_url(),
        &["--http-header-read-timeout", "120", "--shutdown-drain", "2"],
    )
    .await?;
    let mut half = TcpStream::connect(addr(&sc)).await?;
    half.write_all(
        b"POST /v1/sessions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = sc.terminate(Duration::from_secs(30)).await?;
    assert!(
        took < Duration::from_secs(10),
        "stopped within the drain, not held open by the client: {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn without_auth_only_loopback_hosts_and_same_origin_requests_are_served() -> anyhow::Result<()>
{
    let model = ScriptedModel::start().await?;
    let open = OpenSidecar::start(&model.base_url(), &codex_bin()).await?;
    let (base, port) = (open.base.clone(), open.port);
    let client = reqwest::Client::new();
    let get = |host: String, origin: Option<String>| {
        let mut r = client
            .get(format!("{base}/v1/sessions"))
            .header("host", host);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
    ] {
        let r = get(host.clone(), None).await?;
        assert_eq!(r.status(), 200, "Host {host}");
    }
    // DNS rebinding: a page on evil.example resolves its name to 127.0.0.1.
    let r = get(format!("evil.example:{port}"), None).await?;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"]["code"], "forbidden_host", "{body}");
    // A browser page from another origin, even with a loopback Host.
    let r = get(
        format!("localhost:{port}"),
        Some("https://evil.example".into()),
    )
    .await?;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"]["code"], "cross_origin", "{body}");
    // The same origin is fine.
    let r = get(
        format!("localhost:{port}"),
        Some(format!("http://localhost:{port}")),
    )
    .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn with_auth_any_host_is_served() -> anyhow::Result<()> {
    // Behind a Service or an ingress the Host is the cluster name: only no-auth mode checks it.
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(&model.base_url(), &[]).await?;
    let r = reqwest::Client::new()
        .get(format!("{}/v1/sessions", sc.base))
        .header("host", "agent.agents.svc:8080")
        .bearer_auth(codex_e2e::harness::mint("alice", None, 60))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn concurrent_readiness_checks_run_one_check() -> anyhow::Result<()> {
    // A codex that counts its own starts.
    let model = ScriptedModel::start().await?;
    let dir = tempfile::tempdir()?;
    let count = dir.path().join("starts");
    let wrapper = dir.path().join("codex");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho x >> '{}'\nexec '{}' \"$@\"\n",
            count.display(),
            codex_bin().display()
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    }
    let open = OpenSidecar::start(&model.base_url(), &wrapper).await?;
    let starts = || {
        std::fs::read_to_string(&count)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let before = starts();
    let client = reqwest::Client::new();
    let url = format!("{}/readyz", open.base);
    let calls = (0..40).map(|_| client.get(&url).send());
    let answers = futures::future::join_all(calls).await;
    for a in answers {
        assert_eq!(a?.status(), 200);
    }
    assert_eq!(
        starts() - before,
        1,
        "40 concurrent /readyz calls ran codex once"
    );
    Ok(())
}

#[tokio::test]
async fn the_open_files_limit_is_raised_to_the_hard_limit_at_start() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    // Started with a soft limit of 256, as a container runtime might.
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" \"$@\"")
        .arg(sidecar_bin())
        .args(["serve", "--insecure-no-auth", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--codex-bin")
        .arg(codex_bin())
        .args(["--provider", "custom", "--model", "scripted"])
        .arg("--provider-base-url")
        .arg(model.base_url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().expect("pid");
    let limits = || -> Option<(String, String)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut f = line.split_whitespace().skip(3);
        Some((f.next()?.to_owned(), f.next()?.to_owned()))
    };
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..400 {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the sidecar answers");
    let (soft, hard) = limits().expect("/proc limits");
    assert_eq!(soft, hard, "soft open-files limit raised to the hard one");
    assert_ne!(soft, "256");
    let _ = child.kill().await;
    Ok(())
}

#[tokio::test]
async fn status_and_readiness_never_show_url_credentials() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let port = model
        .base_url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let base = format!("http://gw-user:pw-never-shown-1@127.0.0.1:{port}?key=sk-never-shown-2");
    let sc = Sidecar::start(&base, &[]).await?;
    let (_, status) = sc.api("alice").call("GET", "/v1/status", None).await;
    let (_, ready) = Api::new(&sc.base, None).call("GET", "/readyz", None).await;
    for (what, body) in [("/v1/status", &status), ("/readyz", &ready)] {
        let text = body.to_string();
        assert!(
            !text.contains("pw-never-shown-1")
                && !text.contains("sk-never-shown-2")
                && !text.contains("gw-user"),
            "{what} shows a URL credential: {text}"
        );
    }
    assert!(
        status["provider_base_url"]
            .as_str()
            .is_some_and(|u| u.contains("***@127.0.0.1")),
        "{status}"
    );
    Ok(())
}

/// Issue 8.18: one owner cannot hold more than `--max-sessions-per-owner` sessions or keep more
/// than `--max-polls-per-owner` long-polls and event streams open; other owners are unaffected,
/// and a slot given back (DELETE, a poll whose client left) can be used again.
#[tokio::test]
async fn sessions_and_long_polls_are_capped_per_owner() -> anyhow::Result<()> {
    let model = ScriptedModel::start().await?;
    let sc = Sidecar::start(
        &model.base_url(),
        &[
            "--max-sessions-per-owner",
            "2",
            "--max-polls-per-owner",
            "2",
        ],
    )
    .await?;
    let (alice, bob) = (sc.api("alice"), sc.api("bob"));
    for id in ["a1", "a2"] {
        assert_eq!(alice.create(serde_json::json!({"id": id})).await.0, 201);
    }
    let (code, body) = alice.create(serde_json::json!({"id": "a3"})).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_sessions", "{body}");
    assert_eq!(
        alice.create(serde_json::json!({"id": "a1"})).await.0,
        200,
        "an existing session is still answered"
    );
    assert_eq!(bob.create(serde_json::json!({"id": "b1"})).await.0, 201);
    assert_eq!(alice.call("DELETE", "/v1/sessions/a2", None).await.0, 204);
    assert_eq!(alice.create(serde_json::json!({"id": "a3"})).await.0, 201);

    // Two long-polls of alice's wait; a third is refused; bob's and a poll that does not wait
    // are served.
    let poll = |api: Api, id: &'static str| {
        tokio::spawn(async move {
            api.call(
                "GET",
                &format!("/v1/sessions/{id}/events?after=1&wait=60"),
                None,
            )
            .await
        })
    };
    let waiting = [poll(sc.api("alice"), "a1"), poll(sc.api("alice"), "a1")];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = alice.call("GET", "/v1/status", None).await;
        if status["counts"]["polls"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "two polls wait: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = alice
        .call("GET", "/v1/sessions/a1/events?after=1&wait=1", None)
        .await;
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert_eq!(
        refused.1["error"]["code"], "too_many_polls",
        "{}",
        refused.1
    );
    assert_eq!(
        alice
            .call("GET", "/v1/sessions/a1/events?after=0", None)
            .await
            .0,
        200,
        "a poll that does not wait needs no slot"
    );
    let (code, _) = bob
        .call("GET", "/v1/sessions/b1/events?after=1&wait=1", None)
        .await;
    assert_eq!(code, 200, "bob has slots of his own");
    // A client that gives up frees its slot.
    for w in &waiting {
        w.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = alice
            .call("GET", "/v1/sessions/a1/events?after=1&wait=1", None)
            .await;
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots come back when clients leave"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, status) = alice.call("GET", "/v1/status", None).await;
    assert_eq!(status["limits"]["sessions_per_owner"], 2, "{status}");
    assert_eq!(status["limits"]["polls_per_owner"], 2, "{status}");
    Ok(())
}
