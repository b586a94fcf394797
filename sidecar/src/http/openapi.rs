//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the whole API (`sidecar/openapi.json`,
//! embedded at build time). It is public, like `/healthz`: it describes the API, holds nothing of
//! any session, and SDK generators fetch it without credentials.
//!
//! The tests below keep it from drifting: every route of [`super::router`] and every method on
//! it is documented (and nothing else), every error code the sources can answer is in its
//! `ErrorCode` enum (and no other), and every event type has its schema with the fields the
//! sidecar writes. CI also runs schemathesis against a running sidecar with it (tests/run.sh).

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document's text.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// `GET /v1/openapi.json` -> 200 the document (`application/json`).
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde_json::Value;

    use super::DOCUMENT;
    use crate::store::events::{CompactionPhase, EventKind, TurnStatus, Usage};

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// `(path, METHOD)` of every route in `http/mod.rs`'s router, read from its source.
    fn routes_in_router() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let body = src
            .split("pub fn router(")
            .nth(1)
            .expect("router() in mod.rs");
        let body = body.split(".fallback(").next().unwrap_or(body);
        let path_re = regex::Regex::new(r#"^\s*"([^"]+)""#).expect("regex");
        let method_re = regex::Regex::new(r"\b(get|post|patch|delete|put)\(").expect("regex");
        let mut out = BTreeSet::new();
        for seg in body.split(".route(").skip(1) {
            let path = path_re
                .captures(seg)
                .map(|c| c[1].to_owned())
                .expect("a route path");
            for m in method_re.captures_iter(seg) {
                out.insert((path.clone(), m[1].to_ascii_uppercase()));
            }
        }
        out
    }

    #[test]
    fn every_route_of_the_router_is_documented_and_nothing_else() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("path item") {
                if method != "parameters" {
                    documented.insert((path.clone(), method.to_ascii_uppercase()));
                }
            }
        }
        let routes = routes_in_router();
        assert!(routes.len() > 10, "{routes:?}");
        assert_eq!(routes, documented);
    }

    fn rust_files(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(std::fs::read_to_string(&p).expect("read a source file"));
            }
        }
    }

    /// Every stable code an `ApiError` can carry, read from the sources: the literal after a
    /// `StatusCode::X,` or as the first argument of `bad_request`/`unauthorized`/`too_large`, and
    /// the codes of `AuthError::code`.
    fn codes_in_sources() -> BTreeSet<String> {
        let mut files = Vec::new();
        rust_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let call = regex::Regex::new(
            r#"(?:StatusCode::[A-Z_]+,|\b(?:bad_request|unauthorized|too_large)\()\s*"([a-z][a-z0-9_]*)""#,
        )
        .expect("regex");
        let auth = regex::Regex::new(r#"Self::\w+(?:\(_\)| \{ \.\. \})? => "([a-z][a-z0-9_]*)""#)
            .expect("regex");
        let mut out = BTreeSet::new();
        for f in &files {
            // Test modules build errors of their own; only what the server answers counts.
            let code = f.split("#[cfg(test)]").next().unwrap_or(f);
            out.extend(call.captures_iter(code).map(|c| c[1].to_owned()));
        }
        let auth_src = include_str!("../auth.rs");
        let code_fn = auth_src
            .split("pub fn code(&self)")
            .nth(1)
            .and_then(|s| s.split("\n    }\n").next())
            .expect("AuthError::code");
        out.extend(auth.captures_iter(code_fn).map(|c| c[1].to_owned()));
        out
    }

    #[test]
    fn every_error_code_is_documented_and_nothing_else() {
        let doc = doc();
        let documented: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode enum")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let found = codes_in_sources();
        for c in [
            "session_not_found",
            "missing_token",
            "image_too_large",
            "not_found",
        ] {
            assert!(found.contains(c), "the source scan misses {c}: {found:?}");
        }
        assert_eq!(found, documented);
    }

    /// One event of every kind: the match makes a new kind a compile error here until it is
    /// added (and then documented).
    fn one_of_each() -> Vec<EventKind> {
        let all = vec![
            EventKind::Init {
                thread_id: "t".into(),
                resumed: false,
            },
            EventKind::TurnStarted {
                turn_id: "u".into(),
                message_ids: vec!["msg_1".into()],
                message_count: 1,
                queued: 0,
            },
            EventKind::Delta { text: "d".into() },
            EventKind::Activity {
                kind: "heartbeat".into(),
                detail: serde_json::Map::new(),
            },
            EventKind::Progress {
                message: "p".into(),
            },
            EventKind::Compaction {
                phase: CompactionPhase::Started,
                context_tokens: 1,
            },
            EventKind::Result {
                turn_id: "u".into(),
                status: TurnStatus::Completed,
                text: "r".into(),
                usage: Usage::default(),
            },
            EventKind::Error {
                code: "turn_failed".into(),
                message: "m".into(),
                retryable: false,
            },
        ];
        for k in &all {
            match k {
                EventKind::Init { .. }
                | EventKind::TurnStarted { .. }
                | EventKind::Delta { .. }
                | EventKind::Activity { .. }
                | EventKind::Progress { .. }
                | EventKind::Compaction { .. }
                | EventKind::Result { .. }
                | EventKind::Error { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_event_type_has_a_schema_with_its_fields() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let mapping = schemas["Event"]["discriminator"]["mapping"]
            .as_object()
            .expect("Event mapping");
        let kinds = one_of_each();
        assert_eq!(mapping.len(), kinds.len());
        for k in kinds {
            let v = serde_json::to_value(&k).expect("serialize");
            let ty = v["type"].as_str().expect("type");
            let name = mapping[ty]
                .as_str()
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or_else(|| panic!("no schema for event type {ty}"));
            let schema = &schemas[name];
            let props = schema["properties"].as_object().expect("properties");
            for field in v.as_object().expect("object").keys() {
                assert!(props.contains_key(field), "{ty}: `{field}` undocumented");
            }
            for req in schema["required"].as_array().expect("required") {
                let req = req.as_str().expect("name");
                // seq and time are added when the event is written
                assert!(
                    v.get(req).is_some() || ["seq", "time"].contains(&req),
                    "{ty}: documented `{req}` is not written"
                );
            }
        }
    }
}
