//! The one error answer of the HTTP surface: a status and a JSON body
//! `{"error": "..."}`, with `Retry-After` when the client should come back
//! and `WWW-Authenticate` when it must bring credentials.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After`; sent as at least 1, since 0 tells a
    /// client to retry at once.
    pub retry_after: Option<u64>,
    /// Answer with `WWW-Authenticate: Bearer` (a 401).
    pub bearer_challenge: bool,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
            retry_after: None,
            bearer_challenge: false,
        }
    }

    /// 401, asking for a bearer token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        HttpError {
            bearer_challenge: true,
            ..HttpError::new(StatusCode::UNAUTHORIZED, message)
        }
    }

    /// 429: come back in `secs` seconds.
    pub fn too_many(secs: u64, message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::TOO_MANY_REQUESTS, message).retry_after(secs)
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.bearer_challenge {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_json_with_the_headers_asked_for() {
        let r = HttpError::too_many(0, "slow down").into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(!r.headers().contains_key(header::WWW_AUTHENTICATE));
        let body = axum::body::to_bytes(r.into_body(), 1 << 10).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"slow down"}"#);

        let r = HttpError::unauthorized("who are you").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(!r.headers().contains_key(header::RETRY_AFTER));
    }
}
