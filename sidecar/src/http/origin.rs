//! With `--insecure-no-auth` nothing but the network protects the API, and a web page can reach
//! a loopback listener through DNS rebinding (its own name re-resolved to 127.0.0.1) or by
//! sending requests cross-origin. So in that mode only requests whose `Host` names a loopback
//! address are served (403 `forbidden_host` otherwise), and a request with an `Origin` header
//! (what browsers send cross-origin and on every non-GET) is served only when that origin is a
//! loopback one too (403 `cross_origin`). With authentication on, neither is checked: behind a
//! Service or an ingress the `Host` is a cluster name, and a browser cannot hold the bearer token
//! without the user handing it over.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::ApiError;

/// The middleware (see the module docs).
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !st.auth.is_disabled() {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    if !host.as_deref().is_some_and(is_loopback_host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "without authentication only a loopback Host (localhost, 127.0.0.1, [::1]) is served",
        )
        .into_response();
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && is_loopback_host(rest.trim_end_matches('/'))
            });
        if !same {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "without authentication requests from another origin (a web page) are refused",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// `host[:port]` names a loopback address: `localhost`, `127.0.0.0/8` or `[::1]`.
pub fn is_loopback_host(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) if tail.is_empty() || valid_port(tail) => h,
            _ => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if valid_port(&format!(":{port}")) => h,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn valid_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_authorities_pass() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:80",
            "[::1]x",
            "localhost:99999",
            "localhost:",
            "",
            "::1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
