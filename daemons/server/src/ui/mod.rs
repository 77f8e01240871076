//! The web page of `tether server`: groups, live consoles, vehicles and commands, telemetry.
//!
//! The page is plain HTML, CSS and ES modules from `daemons/server/ui/`, compiled into the
//! binary with `include_bytes!` — no build step, nothing fetched from elsewhere at run time. It
//! is served at `/` and its files under `/ui/`; every answer carries an `ETag` (a hash of the
//! file) and `Cache-Control: no-cache`, so a browser revalidates and a new binary's page is
//! seen at once. The page talks to the REST API, the SSE consoles and the commands' response
//! WebSockets of the same server with the user's token (see `docs/webui.md`).
//!
//! It does not hold any state or logic of its own on the server side, and needs no
//! authentication to load (the page asks for a token; every API call checks it).

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::http::ApiError;

/// The page's content security policy: its own files and its own API only.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal) => {
        Asset {
            name: $name,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $name)),
        }
    };
}

/// Every file of the page. `index.html` is served at `/`, all of them under `/ui/`.
const ASSETS: &[Asset] = &[
    asset!("index.html"),
    asset!("style.css"),
    asset!("app.js"),
    asset!("api.js"),
    asset!("dom.js"),
    asset!("console.js"),
    asset!("frametable.js"),
    asset!("views.js"),
    asset!("commands.js"),
    asset!("telemetry.js"),
    asset!("chart.js"),
    asset!("favicon.svg"),
];

/// The `Content-Type` of an embedded file, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Quoted strong ETags of [`ASSETS`], same order, computed once.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.body);
                let tag = format!("\"{}\"", hex::encode(&digest[..12]));
                HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\""))
            })
            .collect()
    })
}

/// The page's routes: `/` and `/ui/{file}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::not_found("file").into_response();
    };
    let asset = &ASSETS[index];
    let etag = etags()[index].clone();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == etag.to_str().unwrap_or(""))
        });
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(asset.name)),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_named_once_and_referenced_modules_exist() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for (i, name) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(name), "{name} twice");
        }
        // Every `./x.js` import of a module and every `ui/…` link of the page is embedded.
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap_or("");
            for piece in text.split(['"', '\'']) {
                let target = piece
                    .strip_prefix("./")
                    .or_else(|| piece.strip_prefix("ui/"))
                    .filter(|t| t.ends_with(".js") || t.ends_with(".css") || t.ends_with(".svg"));
                if let Some(target) = target {
                    assert!(names.contains(&target), "{} refers to {target}", asset.name);
                }
            }
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        for asset in ASSETS {
            assert_ne!(
                content_type(asset.name),
                "application/octet-stream",
                "{}",
                asset.name
            );
        }
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("js"), "application/octet-stream");
    }

    #[test]
    fn etags_differ_per_file() {
        let tags = etags();
        assert_eq!(tags.len(), ASSETS.len());
        assert_ne!(tags[0], tags[1]);
    }
}
