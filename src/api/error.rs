//! The one mapping from errors to HTTP status codes and one-line reasons.
//!
//! Every error a client can cause ends here. Bodies are `text/plain`, one line, so `gpg` and
//! `curl` users see the reason. 503 is used only for real unavailability (gpg retries it),
//! never 502 (gpg marks the host dead for 1.5 h).
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::raft::{RaftError, SubmitError};

/// An HTTP-facing error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed (bad query, bad form, bad search).
    #[error("{0}")]
    BadRequest(String),
    /// Nothing matches the search, or the path does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A mutating cluster call without a valid admin token.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but the request is refused (wrong cluster secret, ...).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the current state (e.g. a membership change in progress).
    #[error("{0}")]
    Conflict(String),
    /// The method is not supported on this path.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The `op` is not one keyraft implements.
    #[error("operation {0:?} is not implemented")]
    NotImplemented(String),
    /// The client did not send its request body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The body is over the configured limit.
    #[error("request body over the {0}-byte limit")]
    TooLarge(usize),
    /// The submission is too big in another way: too many certificates, or every one over the
    /// size cap.
    #[error("{0}")]
    SubmissionTooLarge(String),
    /// The submission was understood but refused (secret keys, no valid certificate...).
    #[error("{0}")]
    Unprocessable(String),
    /// The cluster cannot serve this now (no leader, no quorum, timed out); retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a storage failure on this node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) | ApiError::SubmissionTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable(_) => {
                b.insert_header(("Retry-After", "2"));
            }
            ApiError::Unauthorized(_) => {
                b.insert_header(("WWW-Authenticate", "Bearer realm=\"keyraft\""));
            }
            _ => {}
        }
        let line = self.to_string().replace(['\r', '\n'], " ");
        b.content_type("text/plain; charset=utf-8")
            .body(format!("{line}\n"))
    }
}

impl From<RaftError> for ApiError {
    fn from(e: RaftError) -> Self {
        match e {
            e if e.is_unavailable() => ApiError::Unavailable(e.to_string()),
            RaftError::Refused(_) => ApiError::Forbidden(e.to_string()),
            RaftError::UnknownMember(_) => ApiError::NotFound(e.to_string()),
            RaftError::Membership(_) => ApiError::Conflict(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Raft(r) => r.into(),
            SubmitError::SignatureUsed => ApiError::Conflict(e.to_string()),
            SubmitError::SignatureTime(_) => ApiError::Forbidden(e.to_string()),
            ref e if e.too_large() => ApiError::SubmissionTooLarge(e.to_string()),
            other => ApiError::Unprocessable(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgp::PgpError;
    use crate::raft::{ItemReport, Status};

    fn item(reason: &str, too_large: bool) -> ItemReport {
        ItemReport {
            fingerprint: "AB".into(),
            status: Status::Rejected,
            reason: Some(reason.into()),
            too_large,
        }
    }

    #[test]
    fn a_submission_refused_for_its_size_is_413_and_otherwise_422() {
        let status = |e: SubmitError| ApiError::from(e).status_code().as_u16();
        let many = PgpError::TooManyItems {
            count: 10_001,
            limit: 10_000,
        };
        assert_eq!(status(SubmitError::Refused(many)), 413);
        assert_eq!(
            status(SubmitError::NothingValid(vec![item("big", true)])),
            413
        );
        assert_eq!(
            status(SubmitError::NothingValid(vec![
                item("big", true),
                item("no self-signature", false)
            ])),
            422,
            "refused for several reasons, not only size"
        );
        assert_eq!(
            status(SubmitError::Refused(PgpError::SecretKeyMaterial)),
            422,
            "secret key material"
        );
    }
}
