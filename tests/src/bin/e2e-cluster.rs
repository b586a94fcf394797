//! `e2e-cluster`: the cluster e2e's harness as a program: a real control plane and one real node
//! (kubelet, containerd, kube-proxy) on this machine, for trying the chart by hand or for running
//! the cluster e2e's external mode against it.
//!
//! `e2e-cluster [--image IMAGE]...` (as root, with the binaries of `tests/cluster/build-tools.sh`)
//! imports each IMAGE from the local Docker engine into the node, prints the admin kubeconfig's
//! path and the address pods reach this machine at, and runs until SIGINT or SIGTERM, then tears
//! everything down.

use clap::Parser;
use codex_e2e::cluster::node::Node;
use codex_e2e::cluster::{self, ControlPlane};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "e2e-cluster",
    about = "A one-node Kubernetes cluster for the project's e2e"
)]
struct Args {
    /// An image of the local Docker engine to import into the node (repeatable).
    #[arg(long)]
    image: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = cluster::bin_dir().map_err(anyhow::Error::msg)?;
    let gateway = cluster::docker_gateway().map_err(anyhow::Error::msg)?;
    let cp = ControlPlane::start(&bin, gateway).await?;
    let node = Node::start(&cp).await?;
    for image in &args.image {
        node.import_image(image)?;
    }
    println!("KUBECONFIG={}", cp.admin_kubeconfig.display());
    println!("pods reach this machine at {gateway}");
    println!(
        "up in {:.1}s; SIGINT or SIGTERM stops it",
        (cp.startup + node.startup).as_secs_f64()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(node);
    drop(cp);
    Ok(())
}
