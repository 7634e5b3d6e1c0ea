//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the
//! HTTP status that says what went wrong.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// 400: a value the API does not accept.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.into()), code: Some("invalid_value"), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// 400: the body is not JSON.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self { code: Some("invalid_json"), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// 400: a parameter OpenAI's API does not have.
    pub fn unknown_field(param: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.into()), code: Some("unknown_parameter"), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// 422: JSON of the wrong shape (a wrong type, a missing field).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self { code: Some("invalid_type"), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", message) }
    }

    /// 400: the prompt and the answer budget do not fit the context.
    pub fn context_length(message: impl Into<String>) -> Self {
        Self { param: Some("messages".into()), code: Some("context_length_exceeded"), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn unauthorized() -> Self {
        Self { code: Some("invalid_api_key"), ..Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "missing or wrong API key: send `Authorization: Bearer KEY`") }
    }

    pub fn model_not_found(name: &str, served: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("the model `{name}` does not exist; this server serves `{served}`"))
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self { code: Some("not_found"), ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no such endpoint: {path}")) }
    }

    pub fn too_large(limit: usize) -> Self {
        Self { code: Some("request_too_large"), ..Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("the request body is larger than the limit of {limit} bytes")) }
    }

    pub fn busy(retry_after: u64) -> Self {
        Self {
            code: Some("queue_full"),
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "the server is busy (its queue is full); retry later")
        }
    }

    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.into()), code: Some("unsupported_parameter"), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }

    /// A JSON body's parse error, split the way clients need it: not JSON at all (400), a
    /// parameter OpenAI does not have (400), the wrong shape (422).
    pub fn from_json(e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => Self::malformed(format!("the body is not valid JSON: {e}")),
            Category::Data => {
                let msg = e.to_string();
                match msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
                    Some(field) => Self::unknown_field(field, format!("unrecognized request argument: {msg}")),
                    None => Self::unprocessable(format!("invalid request body: {msg}")),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}
