//! Starting one `codex app-server` child for a directory laid out like a session's
//! (`codex-home/`, `workspace/`, `tmp/`, `images/`): a session's own, or a warm child's
//! (see [`super::warm`]) that later becomes a session's.

use std::path::Path;

use serde_json::json;

use crate::codex::rpc::{AppServer, DEFAULT_REQUEST_TIMEOUT};
use crate::engine::EngineCtx;

/// Prepares `dir`'s CODEX_HOME (config.toml, the auth copy) and workspace, spawns codex under
/// its supervisor (with the directory's Landlock ruleset under isolation), runs `initialize`,
/// and logs in with the API key when one is configured and the home has no auth.json yet
/// (`account/login/start`).
///
/// # Errors
/// What failed, as a sentence (no secret: the key never appears in it).
pub async fn start_codex(ctx: &EngineCtx, dir: &Path) -> Result<AppServer, String> {
    let home = dir.join("codex-home");
    let workspace = dir.join("workspace");
    ctx.setup
        .prepare_home(&home)
        .and_then(|()| std::fs::create_dir_all(&workspace))
        .map_err(|e| format!("cannot prepare CODEX_HOME: {e}"))?;
    let spec = ctx.setup.spawn_spec(&home, &workspace);
    let server = AppServer::spawn(&spec, ctx.redactor.clone())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(key) = ctx.setup.api_key_login(&home) {
        server
            .request(
                "account/login/start",
                json!({"type": "apiKey", "apiKey": key}),
                DEFAULT_REQUEST_TIMEOUT,
            )
            .await
            .map_err(|e| format!("API-key login failed: {e}"))?;
    }
    Ok(server)
}
