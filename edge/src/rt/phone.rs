//! The web phone (`GET /phone`): a page registering over SIP-over-WebSocket and calling
//! with WebRTC audio through SIP.js, which is served from the npm install in `web/`
//! (`GET /phone/lib/...`, ES modules; `web/package.json` and its lockfile pin it,
//! `scripts/setup.sh` runs `npm ci`). The library is not in the repository.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use std::path::PathBuf;
use std::sync::Arc;

/// The page (plain HTML and JavaScript).
pub const PHONE_HTML: &str = include_str!("../../web/phone.html");

/// Where SIP.js's `lib/` directory is: `$EDGE_SIPJS_DIR`, else `web/node_modules/sip.js/lib`
/// under the working directory or two levels above the executable (`target/<profile>/`).
pub fn sipjs_dir() -> Option<PathBuf> {
    let rel = PathBuf::from("web/node_modules/sip.js/lib");
    let mut candidates: Vec<PathBuf> = vec![];
    if let Some(d) = std::env::var_os("EDGE_SIPJS_DIR") {
        candidates.push(d.into());
    }
    candidates.push(rel.clone());
    if let Some(root) = std::env::current_exe().ok().and_then(|e| e.parent()?.parent()?.parent().map(|p| p.to_path_buf())) {
        candidates.push(root.join(&rel));
    }
    candidates.into_iter().find(|d| d.join("index.js").is_file())
}

async fn page() -> Html<&'static str> {
    Html(PHONE_HTML)
}

async fn lib(State(dir): State<Arc<Option<PathBuf>>>, Path(path): Path<String>) -> Response {
    let Some(dir) = dir.as_ref() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "SIP.js is not installed: run `npm ci` in web/ (scripts/setup.sh does), or set EDGE_SIPJS_DIR\n",
        )
            .into_response();
    };
    // Only .js files below the directory: no `..`, no absolute paths, no hidden files.
    let ok = path.ends_with(".js")
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('.') && seg.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    if !ok {
        return (StatusCode::BAD_REQUEST, "expected a path to a .js file of SIP.js\n").into_response();
    }
    let file = dir.join(&path);
    match tokio::task::spawn_blocking(move || std::fs::read(file)).await {
        Ok(Ok(b)) => {
            ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], b).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "no such SIP.js module\n").into_response(),
    }
}

/// `/phone` and `/phone/lib/{*path}`.
pub fn router() -> Router {
    use axum::routing::get;
    let dir = sipjs_dir();
    match &dir {
        Some(d) => tracing::debug!(dir = %d.display(), "web phone: SIP.js found"),
        None => tracing::info!("web phone: SIP.js not found (npm ci in web/): /phone will not load"),
    }
    Router::new().route("/phone", get(page)).route("/phone/lib/{*path}", get(lib)).with_state(Arc::new(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_imports_sipjs_from_the_served_directory() {
        assert!(PHONE_HTML.contains("from \"./phone/lib/index.js\""));
    }
}
