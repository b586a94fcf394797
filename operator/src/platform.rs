//! What depends on the platform the agents run on: the agent pods' `fsGroup` (`--fs-group`) and
//! the OpenShift detection its default (`auto`) relies on.
//!
//! On vanilla Kubernetes a freshly provisioned volume is usually owned by root, so the pod sets
//! `fsGroup: 10001` (the sidecar image's group) to make it writable. OpenShift's `restricted-v2`
//! SCC refuses an `fsGroup` outside the namespace's range
//! (`openshift.io/sa.scc.supplemental-groups`) and assigns one from that range itself when the
//! pod sets none, so there the operator sets none.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup;
use kube::Client;
use tracing::{info, warn};

use crate::resources::SIDECAR_UID;

/// The API group whose presence marks a cluster as OpenShift.
pub const OPENSHIFT_SECURITY_GROUP: &str = "security.openshift.io";

/// How long start-up waits for the discovery answer before taking the vanilla default.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest group ID the API server accepts for `fsGroup` (Kubernetes' `IsValidGroupID`).
pub const MAX_GID: i64 = i32::MAX as i64;

/// `--fs-group`: how the operator sets `securityContext.fsGroup` on the agent pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsGroupSetting {
    /// `auto`: [`SIDECAR_UID`] (10001), unless the cluster is OpenShift: then none.
    #[default]
    Auto,
    /// `none`: no `fsGroup`; the platform assigns one (or the volumes keep their ownership).
    None,
    /// A group ID (0 to [`MAX_GID`]).
    Gid(i64),
}

/// A `--fs-group` value that is not `auto`, `none` or a group ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected `auto`, `none` or a group ID from 0 to {MAX_GID}, got `{0}`")]
pub struct FsGroupParseError(pub String);

impl FromStr for FsGroupSetting {
    type Err = FsGroupParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            n => match n.parse::<i64>() {
                Ok(gid) if (0..=MAX_GID).contains(&gid) => Ok(Self::Gid(gid)),
                _ => Err(FsGroupParseError(s.to_string())),
            },
        }
    }
}

impl fmt::Display for FsGroupSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::None => f.write_str("none"),
            Self::Gid(gid) => write!(f, "{gid}"),
        }
    }
}

impl FsGroupSetting {
    /// Whether resolving this setting needs to know if the cluster is OpenShift (`auto` only).
    pub fn needs_detection(self) -> bool {
        self == Self::Auto
    }

    /// The pods' `fsGroup` for this setting, given whether the cluster is OpenShift (only
    /// `auto` looks at it): `None` means the pod sets no `fsGroup`.
    pub fn resolve(self, openshift: bool) -> Option<i64> {
        match self {
            Self::Auto if openshift => None,
            Self::Auto => Some(SIDECAR_UID),
            Self::None => None,
            Self::Gid(gid) => Some(gid),
        }
    }
}

/// Why the OpenShift detection gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The discovery request failed (other than with a 404).
    #[error("GET /apis/{OPENSHIFT_SECURITY_GROUP}: {0}")]
    Api(#[from] kube::Error),
    /// No answer within [`DISCOVERY_TIMEOUT`].
    #[error("GET /apis/{OPENSHIFT_SECURITY_GROUP}: no answer within {DISCOVERY_TIMEOUT:?}")]
    Timeout,
}

/// Whether the cluster serves the [`OPENSHIFT_SECURITY_GROUP`] API group
/// (`GET /apis/security.openshift.io`): `Ok(false)` on a 404; any other failure, or no answer
/// within [`DISCOVERY_TIMEOUT`], is an error.
pub async fn is_openshift(client: &Client) -> Result<bool, DetectError> {
    let request = http::Request::get(format!("/apis/{OPENSHIFT_SECURITY_GROUP}"))
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let answer = tokio::time::timeout(DISCOVERY_TIMEOUT, client.request::<APIGroup>(request))
        .await
        .map_err(|_| DetectError::Timeout)?;
    match answer {
        Ok(group) => Ok(group.name == OPENSHIFT_SECURITY_GROUP),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `--fs-group` resolved against the cluster, once at start-up: only `auto` asks the API server
/// ([`is_openshift`]); when that fails it logs a warning and takes the vanilla default (10001).
pub async fn resolve_fs_group(client: &Client, setting: FsGroupSetting) -> Option<i64> {
    let openshift = if setting.needs_detection() {
        match is_openshift(client).await {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, group = OPENSHIFT_SECURITY_GROUP,
                      "could not tell whether this is OpenShift; agent pods get fsGroup {SIDECAR_UID} (set --fs-group to choose)");
                false
            }
        }
    } else {
        false
    };
    let fs_group = setting.resolve(openshift);
    info!(%setting, openshift, fs_group = ?fs_group, "agent pods' fsGroup");
    fs_group
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;

    #[test]
    fn parses_auto_none_and_gids() {
        assert_eq!("auto".parse(), Ok(FsGroupSetting::Auto));
        assert_eq!("none".parse(), Ok(FsGroupSetting::None));
        assert_eq!("0".parse(), Ok(FsGroupSetting::Gid(0)));
        assert_eq!("1000680000".parse(), Ok(FsGroupSetting::Gid(1_000_680_000)));
        assert_eq!("2147483647".parse(), Ok(FsGroupSetting::Gid(2_147_483_647)));
        assert_eq!(FsGroupSetting::default(), FsGroupSetting::Auto);
        for s in ["auto", "none", "4242"] {
            let v: FsGroupSetting = s.parse().expect("parses");
            assert_eq!(v.to_string(), s);
        }
    }

    #[test]
    fn refuses_anything_else() {
        for bad in ["", "Auto", "-1", "2147483648", "10001x", "root", "1.5"] {
            let e = bad.parse::<FsGroupSetting>().expect_err(bad);
            assert_eq!(e, FsGroupParseError(bad.into()));
            assert!(
                e.to_string().contains("`auto`, `none` or a group ID"),
                "{e}"
            );
        }
    }

    #[test]
    fn resolves_per_platform() {
        assert_eq!(FsGroupSetting::Auto.resolve(false), Some(10001));
        assert_eq!(FsGroupSetting::Auto.resolve(true), None);
        for openshift in [false, true] {
            assert_eq!(FsGroupSetting::None.resolve(openshift), None);
            assert_eq!(FsGroupSetting::Gid(4242).resolve(openshift), Some(4242));
        }
        assert!(FsGroupSetting::Auto.needs_detection());
        assert!(!FsGroupSetting::None.needs_detection());
        assert!(!FsGroupSetting::Gid(1).needs_detection());
    }

    /// Runs `f` against a mock API server that answers `GET /apis/security.openshift.io` (and
    /// nothing else) with `status` and `body`; returns what `f` returned.
    async fn against<T, F, Fut>(status: StatusCode, body: &'static str, f: F) -> T
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), Method::GET);
            assert_eq!(request.uri().path(), "/apis/security.openshift.io");
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(body.as_bytes().to_vec()))
                    .expect("response"),
            );
        });
        let out = f(Client::new(service, "default")).await;
        server.await.expect("mock server");
        out
    }

    const OPENSHIFT_GROUP: &str = r#"{"kind":"APIGroup","apiVersion":"v1","name":"security.openshift.io",
        "versions":[{"groupVersion":"security.openshift.io/v1","version":"v1"}],
        "preferredVersion":{"groupVersion":"security.openshift.io/v1","version":"v1"}}"#;

    #[tokio::test]
    async fn detects_openshift_by_its_security_api_group() {
        let found = against(StatusCode::OK, OPENSHIFT_GROUP, |c| async move {
            is_openshift(&c).await
        })
        .await;
        assert!(found.expect("detection"));
        // What a vanilla API server answers for an unknown group: a plain-text 404.
        let found = against(
            StatusCode::NOT_FOUND,
            "404 page not found\n",
            |c| async move { is_openshift(&c).await },
        )
        .await;
        assert!(!found.expect("a 404 is an answer"));
        let failed = against(
            StatusCode::FORBIDDEN,
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}"#,
            |c| async move { is_openshift(&c).await },
        )
        .await;
        assert!(matches!(failed, Err(DetectError::Api(_))), "{failed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_api_server_times_out_to_10001() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        // Take the request and never answer it.
        let server = tokio::spawn(async move {
            let held = handle.next_request().await;
            std::future::pending::<()>().await;
            drop(held);
        });
        assert!(matches!(
            is_openshift(&client).await,
            Err(DetectError::Timeout)
        ));
        assert_eq!(
            resolve_fs_group(&client, FsGroupSetting::Auto).await,
            Some(10001)
        );
        server.abort();
    }

    #[tokio::test]
    async fn auto_resolves_against_the_cluster_and_falls_back_to_10001() {
        let fs = |status, body| {
            against(status, body, |c| async move {
                resolve_fs_group(&c, FsGroupSetting::Auto).await
            })
        };
        assert_eq!(fs(StatusCode::OK, OPENSHIFT_GROUP).await, None);
        assert_eq!(
            fs(StatusCode::NOT_FOUND, "404 page not found").await,
            Some(10001)
        );
        assert_eq!(
            fs(StatusCode::INTERNAL_SERVER_ERROR, "etcd is down").await,
            Some(10001)
        );
    }

    #[tokio::test]
    async fn explicit_settings_ask_the_cluster_nothing() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        assert_eq!(resolve_fs_group(&client, FsGroupSetting::None).await, None);
        assert_eq!(
            resolve_fs_group(&client, FsGroupSetting::Gid(1_000_680_000)).await,
            Some(1_000_680_000)
        );
        drop(client);
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), handle.next_request());
        assert!(
            next.await.expect("the client went away").is_none(),
            "no request was sent"
        );
    }
}
