//! `codex-operator`: run the Kubernetes controller, print the CRD, or drive a Docker host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use codex_operator::platform::{self, FsGroupSetting};
use codex_operator::{controller, crd, docker, lease, metrics, probe, reconcile, resources};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tracing::{error, info};

/// Runs OpenAI Codex agents (CodexAgent resources) as GPU-scheduled pods.
#[derive(Parser, Debug)]
#[command(name = "codex-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller against the cluster of the current kubeconfig / service account.
    Run(RunArgs),
    /// Print the CodexAgent CRD as YAML (`codex-operator crd | kubectl apply -f -`).
    Crd,
    /// Run a CodexAgent spec on a Docker host (DOCKER_HOST or /var/run/docker.sock).
    Docker {
        #[command(subcommand)]
        command: DockerCommand,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of the /metrics and /healthz server (`[::]` also serves IPv4; where IPv6 is
    /// disabled it falls back to `0.0.0.0`).
    #[arg(long, default_value = "[::]:8080", value_name = "ADDR")]
    metrics_addr: SocketAddr,
    /// Reconciles running at once, across all agents (1..=1024).
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_concurrent_reconciles: u16,
    /// Default sidecar image for agents without spec.image.
    #[arg(long, env = "SIDECAR_IMAGE", value_name = "IMG", default_value = resources::DEFAULT_SIDECAR_IMAGE)]
    sidecar_image: String,
    /// fsGroup of the agent pods: `auto` (10001, or none on OpenShift, detected at start-up by
    /// its security.openshift.io API group), `none` (the platform assigns one) or a group ID.
    #[arg(long, value_name = "auto|none|GID", default_value_t = FsGroupSetting::Auto)]
    fs_group: FsGroupSetting,
    /// Agents whose serving pod may be replaced at once, across the cluster, when their spec or
    /// the default sidecar image changes; each is drained first (no running turn is cut).
    #[arg(long, default_value_t = codex_operator::rollout::DEFAULT_MAX_CONCURRENT_ROLLOUTS, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_concurrent_rollouts: u16,
    /// The namespace the operator runs in (an agent's NetworkPolicy admits the operator's probes
    /// from it).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NS",
        default_value = "default"
    )]
    operator_namespace: String,
    /// Namespace of the leader-election Lease (default: the operator's own, from POD_NAMESPACE).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NS",
        default_value = "default"
    )]
    leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "codex-operator")]
    lease_name: String,
    /// This replica's identity in the Lease and in Events (default: POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME", value_name = "ID")]
    identity: Option<String>,
}

#[derive(Subcommand, Debug)]
enum DockerCommand {
    /// Create or update the agent's network, volume and containers from a CodexAgent YAML file.
    Apply {
        /// CodexAgent manifest (YAML or JSON).
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove the agent's containers and network (the state volume is kept).
    Delete {
        /// metadata.name of the agent.
        name: String,
        /// Also remove the state/workspace volume.
        #[arg(long)]
        volumes: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // kube's TLS stack (ring) and reqwest's (aws-lc-rs) both compile a rustls provider in, so
    // rustls cannot pick one by itself: without this every API client panics.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => match crd::crd_yaml() {
            Ok(y) => {
                print!("{y}");
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("rendering the CRD: {e}")),
        },
        Command::Run(args) => run(args).await,
        Command::Docker { command } => match command {
            DockerCommand::Apply { file } => docker::apply_file(&file).await.map_err(Into::into),
            DockerCommand::Delete { name, volumes } => {
                docker::delete(&name, volumes).await.map_err(Into::into)
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codex-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    reconcile::check_crd(&client).await?;
    let fs_group = platform::resolve_fs_group(&client, args.fs_group).await;
    let metrics = Arc::new(metrics::Metrics::default());
    let addr = args.metrics_addr;
    let m = metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(addr, m).await {
            error!(error = %e, %addr, "metrics server failed");
        }
    });

    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("codex-operator-{}", std::process::id()));
    let lock = Arc::new(lease::LeaseLock::new(
        Api::<Lease>::namespaced(client.clone(), &args.leader_election_namespace),
        args.lease_name.clone(),
        identity.clone(),
    ));
    info!(%identity, lease = %args.lease_name, namespace = %args.leader_election_namespace, "waiting for leadership");
    tokio::select! {
        _ = lock.acquire() => {}
        _ = shutdown_signal() => return Ok(()),
    }
    metrics.leader.set(1);
    info!(%identity, "leading; starting the controller");

    let ctx = Arc::new(reconcile::Context::new(
        client,
        resources::OperatorConfig {
            sidecar_image: args.sidecar_image,
            fs_group,
            max_concurrent_rollouts: usize::from(args.max_concurrent_rollouts),
            namespace: args.operator_namespace,
        },
        Arc::new(probe::HttpProbe::new()?),
        metrics.clone(),
        Some(identity),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let options = controller::Options {
        concurrency: args.max_concurrent_reconciles,
        ..controller::Options::default()
    };
    let mut controller = tokio::spawn(controller::run(ctx, options, async move {
        let _ = stop_rx.await;
    }));
    let outcome = tokio::select! {
        _ = lock.keep_renewing() => Err(anyhow::anyhow!("lost the leader lease; exiting so that only one replica reconciles")),
        _ = shutdown_signal() => Ok(()),
        r = &mut controller => {
            // The controller must never end while we lead: fail the liveness probe, and exit.
            metrics.controller_dead.store(true, std::sync::atomic::Ordering::Relaxed);
            Err(anyhow::anyhow!("the controller stopped unexpectedly ({r:?}); exiting"))
        }
    };
    let _ = stop_tx.send(());
    // Reconciles still in flight get what is left of the Lease after the renew deadline; after
    // a lost Lease another replica may lead as soon as it expires.
    let grace = lease::LEASE_DURATION.saturating_sub(lease::RENEW_DEADLINE) / 2;
    if !controller.is_finished() && tokio::time::timeout(grace, &mut controller).await.is_err() {
        error!(
            ?grace,
            "the controller did not stop in time; exiting anyway"
        );
        controller.abort();
    }
    metrics.leader.set(0);
    if outcome.is_ok()
        && let Err(e) = lock.release().await
    {
        error!(error = %e, "releasing the lease failed");
    }
    outcome
}

/// Resolves on SIGINT or SIGTERM (what the kubelet sends before killing the pod).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["codex-operator", "run"].iter().chain(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn fs_group_defaults_to_auto_and_takes_none_or_a_gid() {
        assert_eq!(
            run_args(&[]).expect("parses").fs_group,
            FsGroupSetting::Auto
        );
        let none = run_args(&["--fs-group", "none"]).expect("parses");
        assert_eq!(none.fs_group, FsGroupSetting::None);
        let gid = run_args(&["--fs-group=1000680000"]).expect("parses");
        assert_eq!(gid.fs_group, FsGroupSetting::Gid(1_000_680_000));
    }

    #[test]
    fn fs_group_refuses_a_bad_value_clearly() {
        for (argv, bad) in [
            (&["--fs-group=-5"][..], "-5"),
            (&["--fs-group", "root"][..], "root"),
            (&["--fs-group", "4294967296"][..], "4294967296"),
        ] {
            let e = run_args(argv).expect_err("refused");
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
            let text = e.to_string();
            assert!(text.contains("--fs-group"), "{text}");
            let why =
                format!("expected `auto`, `none` or a group ID from 0 to 2147483647, got `{bad}`");
            assert!(text.contains(&why), "{text}");
        }
    }
}
