//! Dynamic provisioning for the cluster e2e: a default StorageClass whose claims get a hostPath
//! PersistentVolume on the node (what rancher's local-path-provisioner does on small clusters),
//! so that an agent's `<agent>-state` claim binds and its volume outlives the pod.
//!
//! The provisioner honours the class's binding mode: `Immediate` claims are provisioned at once,
//! `WaitForFirstConsumer` ones once the scheduler has written `volume.kubernetes.io/selected-node`.
//! Volumes are directories under the node's directory, mode 0777 (the kubelet applies no fsGroup
//! to hostPath volumes, so any UID the platform assigns can write).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// The StorageClass whose claims are provisioned (made the default by [`Provisioner::start`]).
pub const STORAGE_CLASS: &str = "codex-e2e-hostpath";
const PROVISIONER: &str = "codex-e2e.dev/hostpath";

/// A running provisioner; dropping it stops it (the volumes stay, under the node's directory).
pub struct Provisioner {
    task: JoinHandle<()>,
}

impl Provisioner {
    /// Creates the default StorageClass [`STORAGE_CLASS`] (expandable, `Retain`) and provisions
    /// claims of it on `node` under `dir`, polling every second.
    pub async fn start(client: Client, node: &str, dir: &Path) -> anyhow::Result<Provisioner> {
        std::fs::create_dir_all(dir)?;
        // hostPath volumes must be absolute paths without `..`.
        let dir = std::fs::canonicalize(dir)?;
        let sc = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "volumeBindingMode": "Immediate", "reclaimPolicy": "Retain",
            "allowVolumeExpansion": true
        });
        let scs: Api<StorageClass> = Api::all(client.clone());
        scs.create(&PostParams::default(), &serde_json::from_value(sc)?)
            .await?;
        let task = tokio::spawn(provisioner_loop(client, node.to_owned(), dir));
        Ok(Provisioner { task })
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn provisioner_loop(client: Client, node: String, dir: PathBuf) {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let scs: Api<StorageClass> = Api::all(client);
    let mut reported = HashSet::new();
    loop {
        if let Ok(list) = pvcs.list(&ListParams::default()).await {
            for pvc in list {
                if let Err(e) = provision(&node, &dir, &pvs, &scs, &pvc).await
                    && reported.insert(e.to_string())
                {
                    eprintln!(
                        "provisioner: a volume for {}/{}: {e}",
                        pvc.namespace().unwrap_or_default(),
                        pvc.name_any()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn provision(
    node: &str,
    dir: &Path,
    pvs: &Api<PersistentVolume>,
    scs: &Api<StorageClass>,
    pvc: &PersistentVolumeClaim,
) -> anyhow::Result<()> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if phase != "Pending" || spec.volume_name.is_some() {
        return Ok(());
    }
    let class = spec.storage_class_name.clone().unwrap_or_default();
    let Some(sc) = scs.get_opt(&class).await? else {
        return Ok(());
    };
    if sc.provisioner != PROVISIONER {
        return Ok(());
    }
    if sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && pvc
            .annotations()
            .get("volume.kubernetes.io/selected-node")
            .map(String::as_str)
            != Some(node)
    {
        return Ok(());
    }
    let uid = pvc.uid().unwrap_or_default();
    let name = format!("pvc-{uid}");
    if pvs.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let path = dir.join(&uid);
    std::fs::create_dir_all(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
    }
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": class,
            "hostPath": {"path": path.display().to_string(), "type": "Directory"},
            "claimRef": {"namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
        }
    }))?;
    pvs.create(&PostParams::default(), &pv).await?;
    Ok(())
}
