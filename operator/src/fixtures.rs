//! Test fixtures: a mock API server behind `kube::Client` (tower-test), in the style of
//! kube-rs/controller-rs `fixtures.rs`: the test scripts every request it expects (method, path,
//! body) and the reply; an unexpected request panics the scenario, a missing one times out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use crate::crd::CodexAgent;
use crate::metrics::Metrics;
use crate::probe::{GpuReport, ProbeError, ProbeTarget, SidecarProbe, SidecarReport};
use crate::reconcile::Context;
use crate::resources::OperatorConfig;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The scripted API server.
pub struct ApiServerVerifier {
    handle: Handle,
    /// Requests seen so far, as "METHOD path?query" (for failure messages).
    pub log: Vec<String>,
}

/// A request as the verifier saw it.
#[derive(Debug)]
pub struct Seen {
    /// Query string.
    pub query: String,
    /// JSON body (Null when empty).
    pub body: Value,
}

impl ApiServerVerifier {
    /// Awaits the next request and asserts its method and path; returns its query, its JSON body
    /// (`None` when empty) and the handle to answer it with.
    async fn receive(
        &mut self,
        method: &Method,
        path: &str,
    ) -> (
        String,
        Option<Value>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let next = tokio::time::timeout(Duration::from_secs(2), self.handle.next_request()).await;
        let (request, send) = match next {
            Ok(Some(r)) => r,
            Ok(None) => panic!(
                "expected {method} {path}, but the client went away; seen: {:#?}",
                self.log
            ),
            Err(_) => panic!(
                "timed out waiting for {method} {path}; seen: {:#?}",
                self.log
            ),
        };
        let seen_line = format!("{} {}", request.method(), request.uri());
        self.log.push(seen_line.clone());
        assert_eq!(
            request.method(),
            method,
            "unexpected request {seen_line}; seen: {:#?}",
            self.log
        );
        assert_eq!(
            request.uri().path(),
            path,
            "unexpected request {seen_line}; seen: {:#?}",
            self.log
        );
        let query = request.uri().query().unwrap_or_default().to_string();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("JSON body"));
        (query, body, send)
    }

    /// Awaits the next request, asserts its method and path, answers `status` + `reply`.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        status: StatusCode,
        reply: Value,
    ) -> Seen {
        let (query, body, send) = self.receive(&method, path).await;
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
            .expect("response");
        send.send_response(response);
        Seen {
            query,
            body: body.unwrap_or(Value::Null),
        }
    }

    /// `expect` answering 200 with the request body itself (what apply/create return, roughly).
    pub async fn echo(&mut self, method: Method, path: &str) -> Seen {
        let (query, body, send) = self.receive(&method, path).await;
        let body = body.unwrap_or_else(|| json!({}));
        let mut reply = body.clone();
        if path.ends_with("/status") {
            // The status subresource answers with the whole object.
            reply["metadata"] = json!({"name": "a1", "namespace": "ns"});
            reply["spec"] =
                json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://x/v1"}});
        }
        let response = Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
            .expect("response");
        send.send_response(response);
        Seen { query, body }
    }

    /// Answers the next request, which must be a `GET path`, with 404.
    pub async fn not_found(&mut self, path: &str) -> Seen {
        self.expect(Method::GET, path, StatusCode::NOT_FOUND, not_found_status())
            .await
    }

    /// Answers the next request, which must be a `GET path`, with `obj`.
    pub async fn found(&mut self, path: &str, obj: Value) -> Seen {
        self.expect(Method::GET, path, StatusCode::OK, obj).await
    }

    /// Asserts the client sends nothing more: the next request (if any) fails the test.
    pub async fn done(mut self) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.handle.next_request()).await
        {
            panic!(
                "unexpected extra request {} {}; seen: {:#?}",
                req.method(),
                req.uri(),
                self.log
            );
        }
    }
}

/// A Kubernetes `Status` body for 404.
pub fn not_found_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

/// A Kubernetes `Status` body for 409.
pub fn conflict_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "already exists", "reason": "AlreadyExists", "code": 409})
}

/// A fake GPU probe returning a fixed answer and recording its targets.
#[derive(Default)]
pub struct FakeProbe {
    /// The GPU part of what `status` returns (None: an error).
    pub report: Mutex<Option<GpuReport>>,
    /// The sandbox part of what `status` returns.
    pub sandbox: Mutex<Option<crate::probe::SandboxReport>>,
    /// The model server part of what `status` returns.
    pub model_server: Mutex<Option<crate::probe::ModelServerReport>>,
    /// Targets asked for.
    pub calls: Mutex<Vec<ProbeTarget>>,
    /// Turns the fake sidecar has running (what a drain answers).
    pub running: Mutex<u64>,
    /// Whether the fake sidecar drains (set by `drain`, reported by `status`).
    pub draining: Mutex<bool>,
    /// Each `drain` call's `on`.
    pub drains: Mutex<Vec<bool>>,
}

impl SidecarProbe for FakeProbe {
    fn status<'a>(
        &'a self,
        target: &'a ProbeTarget,
    ) -> BoxFuture<'a, Result<SidecarReport, ProbeError>> {
        Box::pin(async move {
            self.calls.lock().expect("lock").push(target.clone());
            let report = self.report.lock().expect("lock").clone();
            match report {
                Some(gpu) => Ok(SidecarReport {
                    gpu,
                    sandbox_check: self.sandbox.lock().expect("lock").clone(),
                    model_server: self.model_server.lock().expect("lock").clone(),
                    draining: *self.draining.lock().expect("lock"),
                    counts: Default::default(),
                }),
                None => {
                    // Produce a real reqwest error: connection refused on a closed port.
                    let err = reqwest::Client::new()
                        .get("http://127.0.0.1:9/")
                        .send()
                        .await
                        .expect_err("refused");
                    Err(ProbeError::Http(err))
                }
            }
        })
    }

    fn drain<'a>(
        &'a self,
        _target: &'a ProbeTarget,
        on: bool,
    ) -> BoxFuture<'a, Result<crate::probe::DrainReport, ProbeError>> {
        Box::pin(async move {
            self.drains.lock().expect("lock").push(on);
            *self.draining.lock().expect("lock") = on;
            Ok(crate::probe::DrainReport {
                draining: on,
                running: *self.running.lock().expect("lock"),
                queued: 0,
            })
        })
    }
}

/// A context over the mock client, plus the verifier and the fake probe.
pub fn testing() -> (Arc<Context>, ApiServerVerifier, Arc<FakeProbe>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let probe = Arc::new(FakeProbe::default());
    let ctx = Context::new(
        client,
        OperatorConfig {
            sidecar_image: "registry.test/codex-sidecar:1".into(),
            fs_group: Some(crate::resources::SIDECAR_UID),
            ..Default::default()
        },
        probe.clone(),
        Arc::new(Metrics::default()),
        Some("test".into()),
    );
    (
        Arc::new(ctx),
        ApiServerVerifier {
            handle,
            log: Vec::new(),
        },
        probe,
    )
}

/// A CodexAgent `a1` in namespace `ns` as the API server would return it.
pub fn agent(spec: Value) -> CodexAgent {
    serde_json::from_value(json!({
        "apiVersion": "agents.codex-operator.dev/v1alpha1",
        "kind": "CodexAgent",
        "metadata": {"name": "a1", "namespace": "ns", "uid": "uid-a1", "generation": 3},
        "spec": spec,
    }))
    .expect("agent parses")
}

/// Runs `fut` with a 5 s timeout.
pub async fn timeout<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("timed out")
}
