//! Reading request bodies: bounded in size and in time.
//!
//! Every handler that takes a body larger than actix's default limit (256 KiB) reads it here,
//! so the configured `max_body_bytes` is the limit that applies and a client that sends its
//! body too slowly gets 408 rather than holding the request open.
use std::time::Duration;

use actix_web::web;
use futures::StreamExt;

use super::error::ApiError;

/// The whole body, refused with 413 past `limit` bytes and with 408 if it has not arrived
/// within `within`.
pub async fn read_limited(
    body: web::Payload,
    limit: usize,
    within: Duration,
) -> Result<web::BytesMut, ApiError> {
    match tokio::time::timeout(within, read_all(body, limit)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            within.as_secs()
        ))),
    }
}

async fn read_all(mut body: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
