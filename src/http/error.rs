//! Every failure of a request, and the one mapping from it to a response,
//! for the Permit API and AuthZEN alike: a status, a stable `error` code, a
//! `detail` naming the problem, and, for AuthZEN, the `field` at fault.
//! Nothing a client sends maps to a 5xx: `not_ready` and, from the facts
//! proxy, `control_plane_unreachable` (502) are the PDP's own state.

use std::marker::PhantomData;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::warn;

use super::routes::Verb;
use crate::authzen::AuthzenError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; use {}", allow.allow_header())]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: Verb,
    },
    #[error("Missing Authorization header")]
    MissingAuth,
    #[error("You are not authorized to access this resource, please check your API key.")]
    BadKey,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("Content-Encoding {0} is not supported; send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("{count} items in one request; the limit is {limit}")]
    TooManyItems { count: usize, limit: usize },
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    /// `field`: where in the body, as `resource.tenant` or `[3].user.key`.
    #[error("request body has the wrong shape: {}{detail}", field.as_deref().map(|f| format!("`{f}`: ")).unwrap_or_default())]
    WrongShape {
        detail: String,
        field: Option<String>,
    },
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("too many connections; only /livez, /ready and /health are answered on this one")]
    TooManyConnections,
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Authzen(#[from] AuthzenError),
    /// A query parameter out of range or malformed.
    #[error("`{param}` {detail}")]
    BadParam { param: &'static str, detail: String },
    #[error("the cursor has expired: the list it was read from has been replaced by a newer snapshot; start again without a cursor")]
    ExpiredCursor,
    /// A request header out of range or malformed.
    #[error("`{header}` {detail}")]
    BadHeader {
        header: &'static str,
        detail: String,
    },
    /// The facts proxy could not get an answer from the control plane.
    #[error("{0}")]
    Upstream(String),
    /// `X-Timeout-Policy: fail` and the write was not served in time;
    /// Permit's PDP words it so.
    #[error("Timeout waiting for update to be received")]
    UpdateTimeout,
    /// An answer that could not be encoded: a bug, not the request's fault.
    #[error("internal error: {0}")]
    Encode(String),
    #[error("this PDP serves a local file, the embedded example or a bundle file: there is no control plane or hub to forward to, log or switch off")]
    NoControlPlane,
    #[error("{0}")]
    NotAHub(&'static str),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::MissingAuth => StatusCode::UNAUTHORIZED,
            ApiError::BadKey => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::BodyTooLarge(_)
            | ApiError::TooManyItems { .. }
            | ApiError::Authzen(AuthzenError::TooManyItems { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadJson(_)
            | ApiError::BodyRead(_)
            | ApiError::Authzen(_)
            | ApiError::ExpiredCursor
            | ApiError::BadHeader { .. } => StatusCode::BAD_REQUEST,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpdateTimeout => StatusCode::FAILED_DEPENDENCY,
            ApiError::NoControlPlane | ApiError::NotAHub(_) => StatusCode::NOT_FOUND,
            ApiError::WrongShape { .. } | ApiError::BadParam { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotReady(_) | ApiError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::MissingAuth => "missing_authorization",
            ApiError::BadKey => "invalid_api_key",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::TooManyItems { .. }
            | ApiError::Authzen(AuthzenError::TooManyItems { .. }) => "too_many_items",
            ApiError::BadJson(_) => "invalid_json",
            ApiError::WrongShape { .. } | ApiError::BadParam { .. } | ApiError::Authzen(_) => {
                "invalid_request"
            }
            ApiError::ExpiredCursor => "expired_cursor",
            ApiError::BadHeader { .. } => "invalid_header",
            ApiError::Upstream(_) => "control_plane_unreachable",
            ApiError::UpdateTimeout => "update_timeout",
            ApiError::NoControlPlane => "no_control_plane",
            ApiError::NotAHub(_) => "not_a_hub",
            ApiError::NotReady(_) => "not_ready",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::BodyRead(_) => "body_read_error",
            ApiError::Encode(_) => "internal",
        }
    }

    /// The JSON body: `{"error": <code>, "detail": <message>}`, plus
    /// `"field"` when an AuthZEN request names the field at fault.
    pub fn body(&self) -> Value {
        let mut body = json!({"error": self.code(), "detail": self.to_string()});
        let field = match self {
            ApiError::Authzen(e) => e.field(),
            ApiError::WrongShape { field, .. } => field.as_deref(),
            ApiError::BadParam { param, .. } => Some(*param),
            ApiError::BadHeader { header, .. } => Some(*header),
            _ => None,
        };
        if let Some(field) = field {
            body["field"] = Value::String(field.to_owned());
        }
        body
    }

    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut resp = json_response(self.status(), &self.body());
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static(allow.allow_header()),
            );
        }
        resp
    }
}

/// Decodes a JSON body: syntax errors (and bytes that are not UTF-8) are
/// 400, shape errors 422 naming the field.
///
/// The body is checked as UTF-8 once, then parsed as `str`: serde_json then
/// borrows every string as it is instead of validating each one
/// (docs/performance.md). Only a body that fails is decoded again, with
/// the path tracked, so the field costs nothing on the way to a decision.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    decode_seed::<_, T>(body, PhantomData::<T>)
}

/// [`decode`] through a seed; `T` decodes the same JSON as `seed` does,
/// and names the field when it does not.
pub fn decode_seed<'a, S, T>(body: &'a [u8], seed: S) -> Result<S::Value, ApiError>
where
    S: DeserializeSeed<'a>,
    T: Deserialize<'a>,
{
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadJson(format!("the body is not UTF-8: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    seed.deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => wrong_shape::<T>(text, e),
            _ => ApiError::BadJson(e.to_string()),
        })
}

fn wrong_shape<'a, T: Deserialize<'a>>(text: &'a str, first: serde_json::Error) -> ApiError {
    let mut de = serde_json::Deserializer::from_str(text);
    let field = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => Some(e.path().to_string()).filter(|p| p != "."),
        Ok(_) => None,
    };
    ApiError::WrongShape {
        detail: first.to_string(),
        field,
    }
}

pub(super) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = json_bytes(Bytes::from(body));
            *resp.status_mut() = status;
            resp
        }
        Err(e) => {
            warn!(error = %e, "failed to encode a response");
            let mut resp = Response::new(Full::new(Bytes::from_static(
                b"{\"error\":\"internal\",\"detail\":\"internal error\"}",
            )));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

/// A 200 with a body that is already JSON.
pub(super) fn json_bytes(body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authzen_errors_map_like_the_rest_and_name_their_field() {
        let e = ApiError::from(AuthzenError::Missing {
            field: "subject.id".into(),
        });
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"error": "invalid_request", "detail": "`subject.id` is required", "field": "subject.id"})
        );
        let e = ApiError::from(AuthzenError::TooManyItems { count: 3, limit: 2 });
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.body()["error"], "too_many_items");
        let e = ApiError::from(AuthzenError::NotJson("x".into()));
        assert_eq!(
            e.body(),
            json!({"error": "invalid_request", "detail": "request body is not a JSON object: x"})
        );
    }
}
