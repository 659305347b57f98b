//! Request and response header construction and validation (`doc/PROTOCOL-HTTP2.md`).
//!
//! A client builds its request head with [`RequestHead::into_request`]; a server checks what it
//! received with [`validate_request`], which tells it whether to answer with a plain HTTP error
//! (415 for a non-gRPC content type, 405 for a method other than POST) or a gRPC status. A
//! client checks a response head with [`check_response`].

use std::time::Duration;

use http::{
    header::{CONTENT_TYPE, TE, USER_AGENT},
    uri::{Authority, PathAndQuery, Scheme},
    HeaderMap, HeaderValue, Method, StatusCode, Uri,
};

use crate::{metadata::MetadataMap, timeout, Status};

pub use crate::names::{
    GRPC_ACCEPT_ENCODING, GRPC_ENCODING, GRPC_MESSAGE, GRPC_MESSAGE_TYPE,
    GRPC_PREVIOUS_RPC_ATTEMPTS, GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS, GRPC_STATUS_DETAILS,
    GRPC_TIMEOUT,
};

/// The content type anygrpc sends.
pub const CONTENT_TYPE_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// The default `user-agent`, in the spec's `grpc-<language>-<variant>/<version>` form.
pub fn default_user_agent() -> HeaderValue {
    HeaderValue::from_static(concat!("grpc-rust-anygrpc/", env!("CARGO_PKG_VERSION")))
}

/// Whether a content type is gRPC's: `application/grpc`, optionally followed by `+format` or
/// `;params`.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    const PREFIX: &[u8] = b"application/grpc";
    value.len() >= PREFIX.len()
        && value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(value.get(PREFIX.len()), None | Some(b'+') | Some(b';'))
}

/// What a client puts in a request's HEADERS frame.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `:authority`.
    pub authority: Authority,
    /// `/package.Service/Method`.
    pub path: PathAndQuery,
    /// The `grpc-encoding` of the messages the client sends. (`grpc-timeout` is set apart,
    /// with [`set_timeout`], when the stream opens.)
    pub encoding: Option<&'static str>,
    /// The encodings the client accepts.
    pub accept_encoding: HeaderValue,
    /// `user-agent`.
    pub user_agent: HeaderValue,
    /// Custom metadata.
    pub metadata: MetadataMap,
}

impl RequestHead {
    /// Builds the HTTP request head.
    pub fn into_request(self) -> Result<http::Request<()>, Status> {
        let uri = Uri::builder()
            .scheme(self.scheme)
            .authority(self.authority)
            .path_and_query(self.path)
            .build()
            .map_err(|e| Status::internal(format!("invalid request URI: {e}")))?;
        let mut headers = self.metadata.into_headers();
        headers.reserve(6);
        headers.insert(CONTENT_TYPE, CONTENT_TYPE_GRPC);
        headers.insert(TE, TRAILERS);
        headers.insert(USER_AGENT, self.user_agent);
        if let Some(encoding) = self.encoding {
            headers.insert(GRPC_ENCODING, HeaderValue::from_static(encoding));
        }
        headers.insert(GRPC_ACCEPT_ENCODING, self.accept_encoding);
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

/// Why a server rejected a request head.
#[derive(Debug, Clone)]
pub enum Rejection {
    /// Answer with this HTTP status and no gRPC semantics: the peer is not speaking gRPC.
    Http(StatusCode, &'static str),
    /// Answer with this gRPC status (trailers-only).
    Grpc(Status),
}

/// What a server learns from a valid request head.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The client's `grpc-timeout`, if any.
    pub timeout: Option<Duration>,
    /// `grpc-encoding`: how the client compressed its messages.
    pub encoding: Option<HeaderValue>,
    /// `grpc-accept-encoding`: the encodings the client can read.
    pub accept_encoding: Option<HeaderValue>,
    /// `grpc-previous-rpc-attempts`, when the client retried or hedged (gRFC A6); `None` also
    /// when it does not parse, as the spec leaves it advisory.
    pub previous_attempts: Option<u32>,
    /// The custom metadata: every header that is not reserved.
    pub metadata: MetadataMap,
}

/// Checks a received request head: method POST (else 405), a gRPC content type (else 415),
/// base64 in every custom `-bin` value and a well-formed `grpc-timeout` (else `INTERNAL`). The
/// headers are split in one pass into what the protocol reads and the custom metadata.
pub fn validate_request(method: &Method, headers: HeaderMap) -> Result<RequestInfo, Rejection> {
    if method != Method::POST {
        return Err(Rejection::Http(
            StatusCode::METHOD_NOT_ALLOWED,
            "gRPC requires POST",
        ));
    }
    let (metadata, reserved) = MetadataMap::split_reserved(headers);
    match &reserved.content_type {
        Some(ct) if is_grpc_content_type(ct.as_bytes()) => {}
        _ => {
            return Err(Rejection::Http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type must be application/grpc",
            ))
        }
    }
    metadata
        .check_binary()
        .map_err(|err| Rejection::Grpc(Status::internal(err.to_string())))?;
    let timeout = match &reserved.timeout {
        None => None,
        Some(v) => Some(
            timeout::decode(v.as_bytes())
                .map_err(|e| Rejection::Grpc(Status::internal(e.to_string())))?,
        ),
    };
    let previous_attempts = reserved
        .previous_attempts
        .as_ref()
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Ok(RequestInfo {
        timeout,
        encoding: reserved.encoding,
        accept_encoding: reserved.accept_encoding,
        previous_attempts,
        metadata,
    })
}

/// Checks a response head on the client.
///
/// Returns `Ok(None)` for a normal response (messages and trailers follow), `Ok(Some(status))`
/// for a trailers-only response, and `Err` when the head is not a gRPC response (mapped from
/// the HTTP status, or `UNKNOWN` for a 200 with a foreign content type).
pub fn check_response(status: StatusCode, headers: &HeaderMap) -> Result<Option<Status>, Status> {
    if status != StatusCode::OK {
        if let Some(s) = Status::from_trailers(headers) {
            return Ok(Some(s));
        }
        return Err(Status::from_http_status(status).unwrap_or_else(|| {
            Status::internal(format!("unexpected informational HTTP status {status}"))
        }));
    }
    if let Some(s) = Status::from_trailers(headers) {
        return Ok(Some(s));
    }
    match headers.get(CONTENT_TYPE) {
        Some(ct) if is_grpc_content_type(ct.as_bytes()) => Ok(None),
        other => Err(Status::unknown(format!(
            "invalid content-type in response: {:?}",
            other.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        ))),
    }
}

/// Sets `grpc-timeout` to `left`, the time until the call's deadline. A client sets it as
/// each attempt's stream opens, so that a wait for a connection counts against it.
pub fn set_timeout(headers: &mut HeaderMap, left: Duration) {
    if let Ok(v) = HeaderValue::from_str(&timeout::encode(left)) {
        headers.insert(GRPC_TIMEOUT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    fn grpc_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, CONTENT_TYPE_GRPC);
        h
    }

    #[test]
    fn content_types() {
        for ok in [
            &b"application/grpc"[..],
            b"application/grpc+proto",
            b"application/grpc;x=y",
            b"Application/GRPC",
        ] {
            assert!(is_grpc_content_type(ok));
        }
        for bad in [
            &b""[..],
            b"application/json",
            b"application/grpcx",
            b"application/gr",
        ] {
            assert!(!is_grpc_content_type(bad));
        }
    }

    #[test]
    fn request_round_trip() {
        let mut metadata = MetadataMap::new();
        metadata.insert("x-a", "b").unwrap();
        let mut req = RequestHead {
            scheme: Scheme::HTTP,
            authority: Authority::from_static("example.com:50051"),
            path: PathAndQuery::from_static("/pkg.Svc/Method"),
            encoding: Some("gzip"),
            accept_encoding: HeaderValue::from_static("identity,gzip"),
            user_agent: default_user_agent(),
            metadata,
        }
        .into_request()
        .unwrap();
        set_timeout(req.headers_mut(), Duration::from_millis(1500));
        assert_eq!(req.uri(), "http://example.com:50051/pkg.Svc/Method");
        assert_eq!(req.headers()[TE], "trailers");
        assert_eq!(req.headers()[GRPC_ENCODING], "gzip");
        assert_eq!(req.headers()["x-a"], "b");
        let (parts, ()) = req.into_parts();
        let info = validate_request(&parts.method, parts.headers).unwrap();
        assert_eq!(info.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(info.encoding.unwrap(), "gzip");
        assert_eq!(info.accept_encoding.unwrap(), "identity,gzip");
        assert_eq!(info.previous_attempts, None);
        assert_eq!(
            info.metadata.len(),
            2,
            "x-a and user-agent, nothing reserved"
        );
        assert_eq!(info.metadata.get("x-a").unwrap(), "b");
    }

    #[test]
    fn request_head_is_split_from_metadata() {
        let mut h = grpc_headers();
        h.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from_static("2"));
        h.insert("grpc-future-thing", HeaderValue::from_static("x"));
        h.append("x-b", HeaderValue::from_static("1"));
        h.append("x-b", HeaderValue::from_static("2"));
        let info = validate_request(&Method::POST, h).unwrap();
        assert_eq!(info.previous_attempts, Some(2));
        assert_eq!(info.timeout, None);
        assert_eq!(info.metadata.get_all("x-b").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(
            info.metadata.len(),
            2,
            "only x-b's two values: {:?}",
            info.metadata
        );
        let mut h = grpc_headers();
        h.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from_static("many"));
        assert_eq!(
            validate_request(&Method::POST, h)
                .unwrap()
                .previous_attempts,
            None
        );
    }

    #[test]
    fn rejects_bad_requests() {
        let mut h = grpc_headers();
        match validate_request(&Method::GET, h.clone()) {
            Err(Rejection::Http(s, _)) => assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED),
            other => panic!("{other:?}"),
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match validate_request(&Method::POST, h.clone()) {
            Err(Rejection::Http(s, _)) => assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            other => panic!("{other:?}"),
        }
        let mut h = grpc_headers();
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("12x"));
        match validate_request(&Method::POST, h.clone()) {
            Err(Rejection::Grpc(s)) => assert_eq!(s.code(), Code::Internal),
            other => panic!("{other:?}"),
        }
        let mut h = grpc_headers();
        h.insert("x-trace-bin", HeaderValue::from_static("not base64!"));
        match validate_request(&Method::POST, h) {
            Err(Rejection::Grpc(s)) => {
                assert_eq!(s.code(), Code::Internal);
                assert!(s.message().contains("x-trace-bin"), "{}", s.message());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_checks() {
        assert!(check_response(StatusCode::OK, &grpc_headers())
            .unwrap()
            .is_none());
        let mut h = grpc_headers();
        h.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        assert_eq!(
            check_response(StatusCode::OK, &h).unwrap().unwrap().code(),
            Code::NotFound
        );
        let err = check_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()).unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert_eq!(
            check_response(StatusCode::OK, &h).unwrap_err().code(),
            Code::Unknown
        );
    }
}
