//! JSON bodies for the answers hyper writes by itself.
//!
//! When a request head cannot be parsed (a bad request line, a duplicate `Content-Length`, a
//! URI or header section over hyper's limits) hyper answers `400`, `414` or `431` with an empty
//! body before any of our handlers or layers run. The accepted stream passes what it writes
//! through [`rewrite`], which gives exactly those answers the JSON error body `docs/api.md`
//! promises. Our own answers never have an empty error body (the routes' last layer fills it),
//! so only hyper's are matched.

use axum::http::StatusCode;

use super::ApiError;

/// Hyper's automatic answer in `head` (a whole response head with `content-length: 0`) as the
/// same answer with a JSON error body; `None` for anything else.
pub(crate) fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let status = rest.get(..3)?;
    let (status, message) = match status {
        b"400" => (
            StatusCode::BAD_REQUEST,
            "the request could not be parsed (request line, header syntax or a duplicate \
             Content-Length)",
        ),
        b"414" => (
            StatusCode::URI_TOO_LONG,
            "the request target is longer than the server accepts",
        ),
        b"431" => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request headers are larger than the server accepts",
        ),
        _ => return None,
    };
    if !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    let at = head.windows(EMPTY.len()).position(|w| w == EMPTY)?;
    let body = ApiError::new(status, ApiError::code_for(status), message)
        .body()
        .to_string();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&head[at + EMPTY.len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_answers_get_a_json_body_and_others_stay() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 14:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (head_part, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head_part.starts_with("HTTP/1.1 431 "));
        assert!(head_part.contains("content-type: application/json"));
        assert!(head_part.contains(&format!("content-length: {}", body.len())));
        assert!(head_part.contains("date: Sun"));
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["error"]["code"], "headers_too_large");
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 10\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{partial",
        ] {
            assert!(rewrite(other).is_none());
        }
    }
}
