//! A timed client of the sidecar's HTTP API: long-polls that note when they were sent and
//! answered, and one turn followed from its POST to its `result`.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use codex_e2e::harness::{Api, mint};
use serde_json::Value;

use crate::stats::{parse_rfc3339_nanos, unix_nanos};
use crate::{POLL_WAIT_SECS, SUBJECT, TURN_TIMEOUT};

/// A long-poll `GET .../events` that notes when it was sent and when its answer was read.
pub struct Polled {
    /// Wall-clock time just before the request was sent.
    pub sent_wall: SystemTime,
    /// Monotonic and wall-clock time just after the whole body was read.
    pub received: Instant,
    pub received_wall: SystemTime,
    pub events: Vec<Value>,
    pub next: u64,
}

/// The sidecar's events API, with its own connection and timestamps.
pub struct EventsClient {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl EventsClient {
    pub fn new(base: &str) -> anyhow::Result<EventsClient> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(POLL_WAIT_SECS + 30))
            .build()
            .context("building the HTTP client")?;
        Ok(EventsClient {
            http,
            base: base.to_owned(),
            token: mint(SUBJECT, None, 3600),
        })
    }

    /// `GET /v1/sessions/{id}/events?after=&wait=`.
    pub async fn poll(&self, id: &str, after: u64, wait: u64) -> anyhow::Result<Polled> {
        let url = format!(
            "{}/v1/sessions/{id}/events?after={after}&wait={wait}",
            self.base
        );
        let sent_wall = SystemTime::now();
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .context("events poll")?;
        let status = resp.status();
        let body = resp.bytes().await.context("events poll body")?;
        let (received, received_wall) = (Instant::now(), SystemTime::now());
        ensure!(
            status.is_success(),
            "events poll answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body).context("events poll: body is not JSON")?;
        let events = v
            .get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let next = v
            .get("next")
            .and_then(Value::as_u64)
            .context("events poll: no `next`")?;
        Ok(Polled {
            sent_wall,
            received,
            received_wall,
            events,
            next,
        })
    }
}

/// How one turn through the sidecar went, from the client's side.
pub struct SidecarTurn {
    /// POST sent -> `result` event read.
    pub total: Duration,
    /// POST sent -> its 202 read (includes the inbox's `fdatasync`).
    pub post: Duration,
    /// The result's `time` stamp -> the client read it (wall clock), when the stamp parsed.
    pub result_delivery: Option<f64>,
    /// Whether the poll that delivered the result was sent before the result was stamped.
    pub waiting: bool,
    /// The 202 read -> the `turn_started` stamp, and that stamp -> the `result` stamp (ms, wall
    /// clock), when both stamps parsed.
    pub stamps: Option<(f64, f64)>,
    /// The cursor after the result.
    pub cursor: u64,
}

/// Sends one message through the sidecar and follows the events with long-polls from `cursor`
/// until its `result`.
pub async fn sidecar_timed_turn(
    api: &Api,
    ev: &EventsClient,
    id: &str,
    cursor: u64,
    text: &str,
) -> anyhow::Result<SidecarTurn> {
    let deadline = Instant::now() + TURN_TIMEOUT;
    let t0 = Instant::now();
    let (status, body) = api.send(id, text).await;
    let post = t0.elapsed();
    let accepted_wall = unix_nanos(std::time::SystemTime::now());
    ensure!(status == 202, "POST messages answered {status}: {body}");
    let (mut cursor, mut started) = (cursor, None);
    loop {
        ensure!(
            Instant::now() < deadline,
            "no result within {TURN_TIMEOUT:?}"
        );
        let p = ev.poll(id, cursor, POLL_WAIT_SECS).await?;
        cursor = p.next;
        if let Some(e) = p.events.iter().find(|e| e["type"] == "turn_started") {
            started = e["time"].as_str().and_then(parse_rfc3339_nanos);
        }
        if let Some(result) = p.events.iter().find(|e| e["type"] == "result") {
            ensure!(
                result["status"] == "completed",
                "sidecar turn ended {}: {result}",
                result["status"]
            );
            let stamped = result["time"].as_str().and_then(parse_rfc3339_nanos);
            let ms = |from: i128, to: i128| (to - from) as f64 / 1e6;
            return Ok(SidecarTurn {
                stamps: started
                    .zip(stamped)
                    .map(|(s, r)| (ms(accepted_wall, s), ms(s, r))),
                total: p.received.duration_since(t0),
                post,
                result_delivery: stamped.map(|t| (unix_nanos(p.received_wall) - t) as f64 / 1e6),
                waiting: stamped.is_some_and(|t| unix_nanos(p.sent_wall) <= t),
                cursor,
            });
        }
    }
}

/// One turn through the sidecar timed to its first `delta` event.
pub struct FirstDelta {
    /// POST sent -> the poll holding the turn's first `delta` read.
    pub first_delta: Duration,
    /// The cursor after the result.
    pub cursor: u64,
}

/// Sends `text` to session `id` and follows its events from `cursor` with long-polls until the
/// turn's `result`, noting when the first `delta` arrived.
///
/// # Errors
/// The POST was not accepted, a poll failed, the turn did not complete, or no result came within
/// [`TURN_TIMEOUT`].
pub async fn sidecar_first_delta(
    api: &Api,
    ev: &EventsClient,
    id: &str,
    cursor: u64,
    text: &str,
) -> anyhow::Result<FirstDelta> {
    let deadline = Instant::now() + TURN_TIMEOUT;
    let t0 = Instant::now();
    let (status, body) = api.send(id, text).await;
    ensure!(
        status == 202,
        "POST messages to {id} answered {status}: {body}"
    );
    let (mut cursor, mut first) = (cursor, None);
    loop {
        ensure!(
            Instant::now() < deadline,
            "{id}: no result within {TURN_TIMEOUT:?}"
        );
        let p = ev.poll(id, cursor, POLL_WAIT_SECS).await?;
        cursor = p.next;
        if first.is_none() && p.events.iter().any(|e| e["type"] == "delta") {
            first = Some(p.received.duration_since(t0));
        }
        if let Some(result) = p.events.iter().find(|e| e["type"] == "result") {
            ensure!(
                result["status"] == "completed",
                "{id}: turn ended {}: {result}",
                result["status"]
            );
            return Ok(FirstDelta {
                first_delta: first.context("a result without any delta before it")?,
                cursor,
            });
        }
    }
}

/// The sidecar's `/v1/status` `counts` object.
///
/// # Errors
/// `/v1/status` did not answer 200.
pub async fn counts(api: &Api) -> anyhow::Result<Value> {
    let (status, body) = api.call("GET", "/v1/status", None).await;
    ensure!(status == 200, "GET /v1/status answered {status}: {body}");
    Ok(body["counts"].clone())
}

/// Polls `/v1/status` every 10 ms until `counts[key] == want`, at most `limit`.
///
/// # Errors
/// The count did not reach `want` in time, or `/v1/status` failed.
pub async fn wait_count(api: &Api, key: &str, want: u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let c = counts(api).await?;
        if c[key].as_u64() == Some(want) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "counts.{key} is {} after {limit:?}, not {want}",
            c[key]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
