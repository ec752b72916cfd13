//! Reading a request body, for every ingest endpoint (the audit webhook,
//! the Firehose and Pub/Sub pushes): within `server.max_body_bytes`, within
//! `server.body_read_timeout_secs`, and decompressed when it says
//! `Content-Encoding: gzip`, with the decompressed size held to the same
//! limit, so a gzip bomb costs at most that much memory and gets 413.
//!
//! A declared `Content-Length` over the limit never gets here: the server
//! answers 413 before any handler runs (`crate::server`).

use std::io::Read;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};

/// Why a body could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body is over the {0}-byte limit")]
    TooLarge(usize),
    #[error("gzip request body expands past the {0}-byte limit")]
    ExpandsTooLarge(usize),
    #[error("request body not received within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("cannot read request body: {0}")]
    Read(String),
    #[error(
        "Content-Encoding `{0}` is not supported: send the body uncompressed or with Content-Encoding: gzip"
    )]
    UnsupportedEncoding(String),
    #[error("request body: gzip data is corrupt: {0}")]
    Corrupt(String),
}

impl BodyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) | BodyError::ExpandsTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) | BodyError::Corrupt(_) => StatusCode::BAD_REQUEST,
            BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The reason label of `peregrine_requests_rejected_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) | BodyError::ExpandsTooLarge(_) => "too_large",
            BodyError::Timeout(_) => "body_timeout",
            BodyError::Read(_) => "read_error",
            BodyError::UnsupportedEncoding(_) => "content_encoding",
            BodyError::Corrupt(_) => "bad_encoding",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
}

/// The body's encoding, from `Content-Encoding`; an error for one that is
/// not supported (or a list of several), answered before the body is read.
fn encoding(headers: &HeaderMap) -> Result<Encoding, BodyError> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return if headers.contains_key(header::CONTENT_ENCODING) {
            Err(BodyError::UnsupportedEncoding("(several)".into()))
        } else {
            Ok(Encoding::Identity)
        };
    };
    let shown = || {
        let s = String::from_utf8_lossy(v.as_bytes());
        crate::ingest::envelope::shown(&s)
    };
    let Ok(text) = v.to_str() else {
        return Err(BodyError::UnsupportedEncoding(shown()));
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        _ => Err(BodyError::UnsupportedEncoding(shown())),
    }
}

/// The body, as sent or decompressed, within the server's limits. A
/// failure is counted in `peregrine_requests_rejected_total`; the caller
/// answers it with [`BodyError::status`], in its own format.
pub(crate) async fn read_body(
    server: &crate::config::ServerConfig,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, BodyError> {
    let result = read(server, headers, body).await;
    if let Err(e) = &result {
        metrics::counter!("peregrine_requests_rejected_total", "reason" => e.reason()).increment(1);
    }
    result
}

async fn read(
    server: &crate::config::ServerConfig,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, BodyError> {
    let limit = server.max_body_bytes;
    let encoding = encoding(headers)?;
    let deadline = server.body_read_timeout();
    let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Err(_) => return Err(BodyError::Timeout(deadline)),
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return Err(if too_large {
                BodyError::TooLarge(limit)
            } else {
                BodyError::Read(e.to_string())
            });
        }
    };
    match encoding {
        Encoding::Identity => Ok(bytes),
        // Inflating megabytes takes milliseconds: off the async threads.
        Encoding::Gzip => tokio::task::spawn_blocking(move || gunzip(&bytes, limit))
            .await
            .map_err(|e| BodyError::Read(format!("decompression failed: {e}")))?,
    }
}

/// Inflates gzip data (one member or several, as `gzip` concatenates),
/// holding at most `limit + 1` bytes of output.
fn gunzip(data: &[u8], limit: usize) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::ExpandsTooLarge(limit));
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_is_inflated_within_the_limit_and_a_bomb_is_too_large() {
        assert_eq!(&gunzip(&gz(b"{\"a\":1}"), 100).unwrap()[..], b"{\"a\":1}");
        let bomb = gz(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 10 << 10);
        assert_eq!(
            gunzip(&bomb, 1000).unwrap_err(),
            BodyError::ExpandsTooLarge(1000)
        );
        assert!(matches!(
            gunzip(b"not gzip", 1000),
            Err(BodyError::Corrupt(_))
        ));
    }

    #[test]
    fn only_identity_and_gzip_are_taken() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_ENCODING, v.parse().unwrap());
            encoding(&h)
        };
        assert_eq!(encoding(&HeaderMap::new()), Ok(Encoding::Identity));
        assert_eq!(with("identity"), Ok(Encoding::Identity));
        assert_eq!(with(" GZIP "), Ok(Encoding::Gzip));
        for bad in ["br", "deflate", "gzip, br", "zstd"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad}");
            assert!(e.to_string().contains("not supported"), "{e}");
        }
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        h.append(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(encoding(&h).is_err());
    }
}
