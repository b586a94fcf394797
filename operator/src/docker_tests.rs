//! Docker runtime tests: the plan (pure) and, when a daemon is reachable, a real
//! apply / re-apply / change / suspend / delete cycle against dockerd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt;
use serde_json::json;

use super::*;

fn agent(name: &str, spec: serde_json::Value) -> CodexAgent {
    serde_json::from_value(json!({
        "apiVersion": "agents.codex-operator.dev/v1alpha1", "kind": "CodexAgent",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("agent")
}

fn opts(dir: &Path) -> DockerOptions {
    DockerOptions {
        sidecar_image: "sidecar:test".into(),
        data_dir: dir.join("data"),
        secrets_dir: dir.join("secrets"),
    }
}

#[test]
fn plan_gives_gpus_to_the_right_container_and_shares_the_network_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(dir.path());
    let gpu_sidecar = agent(
        "a1",
        json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://gw/v1"},
        "gpu": {"count": 2}}),
    );
    let (sidecar, model) = plan(&gpu_sidecar, &o, &hs256_key()).expect("plan");
    assert!(model.is_none());
    let dr = sidecar
        .body
        .host_config
        .as_ref()
        .and_then(|h| h.device_requests.clone())
        .expect("device request");
    assert_eq!(dr[0].driver.as_deref(), Some("nvidia"));
    assert_eq!(dr[0].count, Some(2));
    assert_eq!(dr[0].capabilities, Some(vec![vec!["gpu".to_string()]]));
    assert_eq!(sidecar.body.user.as_deref(), Some("10001:10001"));
    let config = sidecar
        .files
        .iter()
        .find(|f| f.path == CONFIG_PATH)
        .expect("config uploaded");
    let parsed = codex_sidecar::settings::ServeSettings::from_toml(
        std::str::from_utf8(&config.contents).expect("utf8"),
    )
    .expect("the sidecar parses it");
    assert_eq!(
        parsed.agent.provider_base_url.as_deref(),
        Some("http://gw/v1")
    );
    assert!(
        sidecar
            .files
            .iter()
            .any(|f| f.path == "/etc/codex-sidecar/jwt/jwt.key" && f.contents == b"k")
    );

    let local = agent(
        "a2",
        json!({"model": "gpt-oss:20b", "provider": {"type": "local", "local": {"engine": "ollama"}},
        "gpu": {"count": 1}}),
    );
    let (sidecar, model) = plan(&local, &o, &hs256_key()).expect("plan");
    let model = model.expect("model server");
    assert!(
        sidecar
            .body
            .host_config
            .as_ref()
            .and_then(|h| h.device_requests.clone())
            .is_none()
    );
    let hc = model.body.host_config.as_ref().expect("host config");
    assert_eq!(
        hc.network_mode.as_deref(),
        Some("container:codex-a2-sidecar")
    );
    assert_eq!(
        hc.device_requests.as_ref().map(|d| d[0].count),
        Some(Some(1))
    );
    assert_eq!(
        model.body.image.as_deref(),
        Some("docker.io/ollama/ollama:latest")
    );
    assert!(
        model
            .body
            .env
            .as_ref()
            .is_some_and(|e| e.contains(&"OLLAMA_HOST=127.0.0.1:11434".to_string()))
    );
}

#[test]
fn plan_refuses_invalid_specs_and_missing_secret_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(dir.path());
    let bad = agent(
        "a1",
        json!({"model": "m", "provider": {"type": "local", "local": {"engine": "other", "port": 9000}}}),
    );
    assert!(matches!(
        plan(&bad, &o, &hs256_key()),
        Err(DockerError::Build(_))
    ));
    let missing = agent(
        "a1",
        json!({"model": "m", "provider": {"type": "openai", "apiKeySecretRef": {"name": "openai", "key": "key"}}}),
    );
    let err = plan(&missing, &o, &hs256_key()).expect_err("missing secret");
    assert!(err.to_string().contains("secrets/openai/key"), "{err}");
    std::fs::create_dir_all(o.secrets_dir.join("openai")).expect("mkdir");
    std::fs::write(o.secrets_dir.join("openai/key"), "sk-test\n").expect("write");
    let (sidecar, _) = plan(&missing, &o, &hs256_key()).expect("plan");
    assert!(
        sidecar
            .files
            .iter()
            .any(|f| f.path == API_KEY_PATH && f.contents == b"sk-test\n")
    );
}

#[test]
fn a_user_jwt_key_is_read_like_the_sidecar_reads_it_and_a_short_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(dir.path());
    let a = agent(
        "a1",
        json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://gw/v1"},
               "auth": {"jwtSecretRef": {"name": "jwt", "key": "jwt.key"}}}),
    );
    let file = o.secrets_dir.join("jwt").join("jwt.key");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, "k".repeat(31) + "\r\n\n").expect("write");
    let err = jwt_key(&a, &o).expect_err("31 bytes are refused");
    let text = err.to_string();
    assert!(
        text.contains("has 31 bytes") && text.contains("at least 32"),
        "{text}"
    );
    assert!(
        !text.contains(&"k".repeat(31)),
        "the key is not in the message: {text}"
    );
    std::fs::write(&file, "k".repeat(32) + "\n").expect("write");
    let key = jwt_key(&a, &o).expect("32 bytes are enough");
    assert_eq!(key.public_file, None);
    assert_eq!(
        key.signing,
        crate::api_key::SigningKey::Hs256("k".repeat(32).into_bytes())
    );
    assert_eq!(
        key.mounted,
        "k".repeat(32).into_bytes(),
        "the trailing newline is not part of the key"
    );
}

/// An HS256 key as a `jwtSecretRef` (or a generated key from before ES256) gives.
fn hs256_key() -> JwtKey {
    JwtKey {
        signing: crate::api_key::SigningKey::Hs256(b"k".to_vec()),
        mounted: b"k".to_vec(),
        file: PathBuf::from("k"),
        public_file: None,
    }
}

#[test]
fn generated_jwt_key_is_an_es256_pair_created_once_and_only_its_public_half_is_uploaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(dir.path());
    let a = agent(
        "a1",
        json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://gw/v1"}}),
    );
    let k1 = jwt_key(&a, &o).expect("key");
    let k2 = jwt_key(&a, &o).expect("key");
    assert_eq!(k1.signing, k2.signing, "never overwritten");
    assert_eq!(k1.file, o.data_dir.join("a1").join("jwt.key"));
    let private = std::fs::read_to_string(&k1.file).expect("private key");
    assert!(
        private.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{}",
        &private[..30]
    );
    let public_file = k1.public_file.clone().expect("jwt.pub");
    let public = std::fs::read(&public_file).expect("public key");
    assert_eq!(public, k1.mounted, "the container gets jwt.pub");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k1.file)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Tokens signed with jwt.key verify with what the container gets.
    let token = crate::probe::mint_token(&k1.signing, Some("codex-sidecar")).expect("mint");
    let verifier = codex_sidecar::auth::Authenticator::public_key_pem(
        &k1.mounted,
        Some("codex-sidecar".into()),
    )
    .expect("public key");
    assert!(verifier.verify(Some(&format!("Bearer {token}"))).is_ok());

    let (sidecar, _) = plan(&a, &o, &k1).expect("plan");
    let uploaded: Vec<&str> = sidecar.files.iter().map(|f| f.path.as_str()).collect();
    assert!(
        uploaded.contains(&"/etc/codex-sidecar/jwt/jwt.pub"),
        "{uploaded:?}"
    );
    assert!(
        !uploaded.contains(&"/etc/codex-sidecar/jwt/jwt.key"),
        "{uploaded:?}"
    );
    let marker = private.lines().nth(1).expect("a base64 line");
    for f in &sidecar.files {
        assert!(
            !String::from_utf8_lossy(&f.contents).contains(marker),
            "{} holds the private key",
            f.path
        );
    }
    let config = sidecar
        .files
        .iter()
        .find(|f| f.path == CONFIG_PATH)
        .expect("config");
    let parsed = codex_sidecar::settings::ServeSettings::from_toml(
        std::str::from_utf8(&config.contents).expect("utf8"),
    )
    .expect("parses");
    assert_eq!(
        parsed.paths.jwt_public_key_file.as_deref(),
        Some(Path::new("/etc/codex-sidecar/jwt/jwt.pub"))
    );
    assert_eq!(parsed.paths.jwt_secret_file, None);
    assert_eq!(parsed.agent.jwt_audience.as_deref(), Some("codex-sidecar"));

    // A deleted jwt.pub is written again from jwt.key (same pair).
    std::fs::remove_file(&public_file).expect("rm");
    assert_eq!(jwt_key(&a, &o).expect("key").mounted, public);
}

#[test]
fn a_generated_hs256_key_from_before_es256_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(dir.path());
    let a = agent(
        "a1",
        json!({"model": "m", "provider": {"type": "custom", "baseUrl": "http://gw/v1"}}),
    );
    let file = o.data_dir.join("a1").join("jwt.key");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, "ab".repeat(32)).expect("write");
    let key = jwt_key(&a, &o).expect("key");
    assert_eq!(
        key.signing,
        crate::api_key::SigningKey::Hs256("ab".repeat(32).into_bytes())
    );
    assert_eq!(key.public_file, None);
    assert_eq!(
        std::fs::read_to_string(&file).expect("kept"),
        "ab".repeat(32)
    );
    let (sidecar, _) = plan(&a, &o, &key).expect("plan");
    assert!(
        sidecar
            .files
            .iter()
            .any(|f| f.path == "/etc/codex-sidecar/jwt/jwt.key")
    );
    // A PEM that is not a P-256 private key is refused, not used as an HMAC secret.
    std::fs::write(&file, "-----BEGIN PRIVATE KEY-----\ngarbage\n").expect("write");
    assert!(matches!(
        jwt_key(&a, &o),
        Err(DockerError::BadJwtKey { .. })
    ));
}

/// Builds a tiny image from this host's `/bin/sh` and `sleep` (plus the libraries `ldd` lists)
/// with a fake `codex-sidecar` that refuses to run unless its config, key and writable state
/// directory are in place.
async fn fake_sidecar_image(docker: &Docker, reference: &str) -> Result<(), String> {
    let script = "#!/bin/sh\n\
        if [ \"$1\" = serve ]; then\n\
          [ -r \"$3\" ] || { echo \"config $3 missing\" >&2; exit 3; }\n\
          [ -r /etc/codex-sidecar/jwt/jwt.pub ] || { echo 'jwt public key missing' >&2; exit 4; }\n\
          [ ! -e /etc/codex-sidecar/jwt/jwt.key ] || { echo 'private key in the container' >&2; exit 6; }\n\
          : > /var/lib/codex-sidecar/probe || { echo 'state dir not writable' >&2; exit 5; }\n\
        fi\n\
        exec sleep 3600\n";
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no sleep binary")?;
    let mut files = vec!["/bin/sh".to_string(), sleep.to_string()];
    for bin in ["/bin/sh", sleep] {
        let out = std::process::Command::new("ldd")
            .arg(bin)
            .output()
            .map_err(|e| format!("ldd: {e}"))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
                files.push(p.to_string());
            }
        }
    }
    files.sort();
    files.dedup();
    let mut tar = tar::Builder::new(Vec::new());
    for f in &files {
        tar.append_path_with_name(f, f.trim_start_matches('/'))
            .map_err(|e| format!("{f}: {e}"))?;
    }
    if !files.iter().any(|f| f == "/bin/sleep") {
        tar.append_path_with_name(sleep, "bin/sleep")
            .map_err(|e| e.to_string())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(script.len() as u64);
    tar.append_data(&mut h, "usr/local/bin/codex-sidecar", script.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut tmp = tar::Header::new_gnu();
    tmp.set_entry_type(tar::EntryType::Directory);
    tmp.set_mode(0o1777);
    tmp.set_size(0);
    tar.append_data(&mut tmp, "tmp", std::io::empty())
        .map_err(|e| e.to_string())?;
    let bytes = tar.into_inner().map_err(|e| e.to_string())?;
    let (repo, tag) = reference.split_once(':').ok_or("reference needs a tag")?;
    let mut stream = docker.create_image(
        Some(
            CreateImageOptionsBuilder::default()
                .from_src("-")
                .repo(repo)
                .tag(tag)
                .build(),
        ),
        Some(bollard::body_full(bytes.into())),
        None,
    );
    while let Some(item) = stream.next().await {
        item.map_err(|e| format!("import: {e}"))?;
    }
    Ok(())
}

async fn running(docker: &Docker, name: &str) -> bool {
    docker
        .inspect_container(name, None)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.running)
        .unwrap_or(false)
}

#[tokio::test]
async fn apply_reapply_change_suspend_delete_against_dockerd() {
    let reachable =
        std::env::var_os("DOCKER_HOST").is_some() || Path::new("/var/run/docker.sock").exists();
    let docker = match (reachable, connect().await) {
        (true, Ok(d)) if d.ping().await.is_ok() => d,
        (_, r) => {
            eprintln!(
                "NOTICE: skipping apply_reapply_change_suspend_delete_against_dockerd: no Docker daemon ({})",
                r.err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "DOCKER_HOST unset and no /var/run/docker.sock".into())
            );
            return;
        }
    };
    let image = format!("codex-operator-test/fake-sidecar:{}", std::process::id());
    fake_sidecar_image(&docker, &image)
        .await
        .expect("test image");
    let name = format!("cxo-t{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let o = DockerOptions {
        sidecar_image: image.clone(),
        ..opts(dir.path())
    };
    let _ = delete_with(&docker, &name, true).await;
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(cycle(
        &docker, &name, &image, &o,
    )))
    .await;
    let _ = delete_with(&docker, &name, true).await;
    let _ = docker
        .remove_image(
            &image,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn cycle(docker: &Docker, name: &str, image: &str, o: &DockerOptions) {
    let names = Names::new(name);
    let mut a = agent(
        name,
        json!({
            "model": "m",
            "provider": {"type": "local", "local": {"engine": "other", "image": image, "port": 9000,
                         "args": ["/bin/sleep", "3600"]}},
        }),
    );
    let first = apply(docker, &a, o).await.expect("apply");
    assert_eq!(
        first.created,
        vec![names.sidecar.clone(), names.model.clone()]
    );
    assert!(
        first
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://127.0.0.1:")),
        "{first:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        running(docker, &names.sidecar).await,
        "fake sidecar found its config, key and writable state dir"
    );
    assert!(running(docker, &names.model).await);
    let sidecar_id = docker
        .inspect_container(&names.sidecar, None)
        .await
        .expect("inspect")
        .id
        .expect("id");
    let model = docker
        .inspect_container(&names.model, None)
        .await
        .expect("inspect");
    assert_eq!(
        model.host_config.and_then(|h| h.network_mode),
        Some(format!("container:{sidecar_id}")),
        "the model server shares the sidecar's localhost"
    );

    let again = apply(docker, &a, o).await.expect("re-apply");
    assert!(
        again.created.is_empty() && again.removed.is_empty(),
        "no-op re-apply: {again:?}"
    );
    assert_eq!(again.unchanged.len(), 2);

    a.spec.sidecar.turn_timeout = Some(5);
    let changed = apply(docker, &a, o).await.expect("apply change");
    assert_eq!(
        changed.created,
        vec![names.sidecar.clone(), names.model.clone()],
        "{changed:?}"
    );

    a.spec.suspend = true;
    let suspended = apply(docker, &a, o).await.expect("suspend");
    assert_eq!(
        suspended.removed,
        vec![names.model.clone(), names.sidecar.clone()]
    );
    assert!(
        docker.inspect_volume(&names.volume).await.is_ok(),
        "the state volume is kept while suspended"
    );

    let removed = delete_with(docker, name, true).await.expect("delete");
    assert_eq!(
        removed,
        vec![
            names.network.clone(),
            names.volume.clone(),
            names.models_volume.clone()
        ]
    );
    assert!(docker.inspect_volume(&names.volume).await.is_err());
}
