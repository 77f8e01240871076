//! JSON errors: `{"error": {"code", "message"}}` for every refusal, including axum's own
//! extractor rejections.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use tether_runtime::config::plain_message;

use crate::error::ServerError;

/// A refused request: status, a stable machine-readable `code`, and a human `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code clients match on (`not_found`, `invalid_body`, …).
    pub code: &'static str,
    /// Explanation for humans.
    pub message: String,
    /// Seconds for a `Retry-After` header (limits' `429` and `503`), if any.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404 with a message naming only the kind of resource, never whether it exists elsewhere.
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 401 for a missing, malformed, unknown or revoked token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 422 for a well-formed body whose values are not acceptable.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
    }

    /// The canonical code for a status, used when mapping foreign error responses.
    pub fn code_for(status: StatusCode) -> &'static str {
        match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::URI_TOO_LONG => "uri_too_long",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_server_error() => "internal",
            _ => "error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            super::limits::set_retry_after(&mut response, secs);
        }
        response
    }
}

impl From<ServerError> for ApiError {
    fn from(err: ServerError) -> ApiError {
        // The detail goes to the log, not to the client: it may name files or SQL.
        if err.is_retryable() {
            tracing::warn!(error = %err, "request failed on a busy resource");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is busy; retry shortly",
            )
        } else {
            tracing::error!(error = %err, "request failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error",
            )
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let (status, code) = match &rejection {
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            other => (other.status(), ApiError::code_for(other.status())),
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

/// A JSON request body whose rejections are [`ApiError`]s. Stricter than `axum::Json`: the
/// body must be a JSON object (serde would also take an array for a struct), and the messages
/// name the field at fault in the client's terms, never a Rust type.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        // `axum::Json` checks the content type and reads the body within the body limit.
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        parse_object(value).map(ApiJson)
    }
}

/// A request body value as `T`, refusing anything but an object.
fn parse_object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    let kind = match &value {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Null => Some("null"),
    };
    if let Some(kind) = kind {
        return Err(ApiError::invalid(format!(
            "the body must be a JSON object, not {kind}"
        )));
    }
    serde_json::from_value(value).map_err(|err| ApiError::invalid(plain_message(&err.to_string())))
}

/// The `{id}` path segment as a UUID. Anything that is not a UUID cannot name a resource, so
/// it answers 404 like an unknown id.
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_: PathRejection| ApiError::not_found("resource"))?;
        Uuid::parse_str(&text)
            .map(IdPath)
            .map_err(|_| ApiError::not_found("resource"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct CreateThing {
        name: String,
        count: usize,
    }

    #[test]
    fn only_objects_are_bodies() {
        for (value, kind) in [
            (serde_json::json!(["x"]), "an array"),
            (serde_json::json!("x"), "a string"),
            (serde_json::json!(3), "a number"),
            (serde_json::Value::Null, "null"),
        ] {
            let err = parse_object::<CreateThing>(value).unwrap_err();
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(
                err.message,
                format!("the body must be a JSON object, not {kind}")
            );
        }
        let ok: CreateThing = parse_object(serde_json::json!({"name": "n", "count": 2})).unwrap();
        assert_eq!(ok.count, 2);
    }

    #[test]
    fn messages_name_no_rust_types() {
        let err = parse_object::<CreateThing>(serde_json::json!({"name": "n", "count": "lots"}))
            .unwrap_err();
        assert_eq!(
            err.message,
            r#"invalid type: string "lots", expected a non-negative integer"#
        );
        let nested = serde_json::from_str::<Vec<CreateThing>>("[1]").unwrap_err();
        let text = plain_message(&nested.to_string());
        assert!(!text.contains("CreateThing"), "{text}");
        assert!(text.contains("expected an object"), "{text}");
    }
}
