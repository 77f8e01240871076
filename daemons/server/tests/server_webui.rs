//! The web page's files at `/` and `/ui/…` (types, ETags, security headers), and the CORS
//! allow-list: off by default (no headers, preflight 405), on for listed origins only — for
//! the REST API and the console streams alike.

mod server_support;

use reqwest::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderName,
    IF_NONE_MATCH, ORIGIN,
};
use reqwest::{Method, StatusCode};
use server_support::{TestResult, TestServer};
use tether_server::http::cors::OriginPolicy;

const DASH: &str = "http://dash.example:3000";

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A `method` request to `/api/v1/groups` from a page of `origin`, with `token` when given and
/// the `extra` headers.
async fn from_origin(
    srv: &TestServer,
    method: Method,
    origin: &str,
    token: Option<&str>,
    extra: &[(HeaderName, &str)],
) -> reqwest::Result<reqwest::Response> {
    let mut request = srv
        .client
        .request(method, format!("{}/api/v1/groups", srv.base))
        .header(ORIGIN, origin);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in extra {
        request = request.header(name, *value);
    }
    request.send().await
}

/// A CORS preflight (`OPTIONS /api/v1/groups`) from a page of [`DASH`] asking for the
/// `request` headers (`Access-Control-Request-*`).
async fn preflight(
    srv: &TestServer,
    request: &[(HeaderName, &str)],
) -> reqwest::Result<reqwest::Response> {
    from_origin(srv, Method::OPTIONS, DASH, None, request).await
}

#[tokio::test]
async fn the_page_and_its_files_are_served_from_the_binary() -> TestResult {
    let srv = TestServer::start().await?;
    let page = srv.fetch("/").await?;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        header(&page, CONTENT_TYPE).as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = header(&page, CONTENT_SECURITY_POLICY).unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let etag = header(&page, ETAG).ok_or("no ETag")?;
    assert!(page.text().await?.contains(r#"src="ui/app.js""#));

    // Revalidation: the same ETag answers 304 without a body.
    let again = srv
        .get_request("/")
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    let js = srv.fetch("/ui/app.js").await?;
    assert_eq!(js.status(), StatusCode::OK);
    assert_eq!(
        header(&js, CONTENT_TYPE).as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.text().await?.contains("import "));

    // Unknown files are JSON 404s like every other unknown route; no path escapes.
    for path in ["/ui/nope.js", "/ui/..%2FCargo.toml", "/ui/"] {
        let missing = srv.fetch(path).await?;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND, "{path}");
    }
    srv.stop().await
}

#[tokio::test]
async fn cors_is_off_by_default() -> TestResult {
    let srv = TestServer::start().await?;
    let token = srv.user_token("ann").await?;
    let refused = preflight(&srv, &[(ACCESS_CONTROL_REQUEST_METHOD, "GET")]).await?;
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    let get = from_origin(&srv, Method::GET, DASH, Some(&token), &[]).await?;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, ACCESS_CONTROL_ALLOW_ORIGIN), None);
    srv.stop().await
}

#[tokio::test]
async fn listed_origins_get_cors_on_the_api_and_the_consoles() -> TestResult {
    let srv = TestServer::start_with(|config| {
        config.cors = OriginPolicy::allowing([DASH]).unwrap_or_default();
    })
    .await?;
    let token = srv.user_token("bo").await?;

    // Preflight of a JSON POST with a token.
    let answer = preflight(
        &srv,
        &[
            (ACCESS_CONTROL_REQUEST_METHOD, "POST"),
            (ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type"),
        ],
    )
    .await?;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        header(&answer, ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
        Some(DASH)
    );
    let allowed = header(&answer, ACCESS_CONTROL_ALLOW_HEADERS).unwrap_or_default();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );

    // The answer itself, errors included.
    let get = from_origin(&srv, Method::GET, DASH, Some(&token), &[]).await?;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(
        header(&get, ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
        Some(DASH)
    );
    let refused = from_origin(&srv, Method::GET, DASH, None, &[]).await?;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&refused, ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
        Some(DASH)
    );

    // A console stream, as an EventSource on the dashboard opens it.
    let (token_c, _, dongle, _) = srv.user_with_pair("dee").await?;
    let console = srv
        .get_request(&format!(
            "/api/v1/streams/dongles/{dongle}/console?access_token={token_c}"
        ))
        .header(ORIGIN, DASH)
        .send()
        .await?;
    assert_eq!(console.status(), StatusCode::OK);
    assert_eq!(
        header(&console, ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
        Some(DASH)
    );
    drop(console);

    // Another origin gets nothing it could use.
    let other = from_origin(&srv, Method::GET, "http://evil.example", Some(&token), &[]).await?;
    assert_eq!(header(&other, ACCESS_CONTROL_ALLOW_ORIGIN), None);
    srv.stop().await
}
