use std::{error::Error, fmt};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::{
    message,
    metadata::MetadataMap,
    names::{GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS},
    Code,
};

/// The outcome of a gRPC call: a [`Code`], a message, optional binary details and metadata.
///
/// On the server, a handler returns a `Status` to end a call with an error; its metadata is
/// sent as trailers. On the client, every failure — from the peer, from the transport, or a
/// local rule such as a deadline or a size limit — surfaces as a `Status`.
///
/// The [`Display`](fmt::Display) text is for humans and may change; match on [`Status::code`].
#[derive(Clone, Default)]
pub struct Status {
    // Boxed so that `Result<T, Status>` stays small on the success path.
    inner: Box<Inner>,
}

#[derive(Clone, Default)]
struct Inner {
    code: Code,
    message: String,
    details: Bytes,
    metadata: MetadataMap,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            inner: Box::new(Inner {
                code,
                message: message.into(),
                details: Bytes::new(),
                metadata: MetadataMap::new(),
            }),
        }
    }

    /// A status with binary details (usually a serialized `google.rpc.Status`).
    pub fn with_details(code: Code, message: impl Into<String>, details: Bytes) -> Status {
        let mut status = Status::new(code, message);
        status.inner.details = details;
        status
    }

    /// A status carrying metadata that is sent as trailers.
    pub fn with_metadata(code: Code, message: impl Into<String>, metadata: MetadataMap) -> Status {
        let mut status = Status::new(code, message);
        status.inner.metadata = metadata;
        status
    }

    constructors! {
        /// `OK`: the call succeeded.
        ok => Ok,
        /// `CANCELLED`: the call was cancelled.
        cancelled => Cancelled,
        /// `UNKNOWN`: an error with no better code.
        unknown => Unknown,
        /// `INVALID_ARGUMENT`: the client sent an invalid argument.
        invalid_argument => InvalidArgument,
        /// `DEADLINE_EXCEEDED`: the deadline passed first.
        deadline_exceeded => DeadlineExceeded,
        /// `NOT_FOUND`: an entity was not found.
        not_found => NotFound,
        /// `ALREADY_EXISTS`: the entity already exists.
        already_exists => AlreadyExists,
        /// `PERMISSION_DENIED`: the caller may not do this.
        permission_denied => PermissionDenied,
        /// `RESOURCE_EXHAUSTED`: a quota or limit was hit.
        resource_exhausted => ResourceExhausted,
        /// `FAILED_PRECONDITION`: the system is not in the required state.
        failed_precondition => FailedPrecondition,
        /// `ABORTED`: the operation was aborted.
        aborted => Aborted,
        /// `OUT_OF_RANGE`: past the valid range.
        out_of_range => OutOfRange,
        /// `UNIMPLEMENTED`: not implemented or not supported.
        unimplemented => Unimplemented,
        /// `INTERNAL`: an invariant was broken.
        internal => Internal,
        /// `UNAVAILABLE`: transient; the call may be retried.
        unavailable => Unavailable,
        /// `DATA_LOSS`: unrecoverable data loss.
        data_loss => DataLoss,
        /// `UNAUTHENTICATED`: no valid credentials.
        unauthenticated => Unauthenticated,
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.inner.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The binary details (`grpc-status-details-bin`), empty if none.
    pub fn details(&self) -> &Bytes {
        &self.inner.details
    }

    /// The metadata sent or received with this status (trailers).
    pub fn metadata(&self) -> &MetadataMap {
        &self.inner.metadata
    }

    /// Mutable access to the metadata, e.g. to add trailers to an error.
    pub fn metadata_mut(&mut self) -> &mut MetadataMap {
        &mut self.inner.metadata
    }

    /// Whether the code is [`Code::Ok`].
    pub fn is_ok(&self) -> bool {
        self.inner.code == Code::Ok
    }

    /// Maps an HTTP status received without a `grpc-status` (per
    /// `doc/http-grpc-status-mapping.md`). Returns `None` for 1xx informational codes, which the
    /// caller skips.
    pub fn from_http_status(status: http::StatusCode) -> Option<Status> {
        let code = match status.as_u16() {
            100..=199 => return None,
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            431 => Code::Internal,
            _ => Code::Unknown,
        };
        Some(Status::new(
            code,
            format!("unexpected HTTP status code received from server: {status}"),
        ))
    }

    /// Maps an HTTP/2 RST_STREAM (or GOAWAY) error code to a status, as the spec's table does:
    /// REFUSED_STREAM → UNAVAILABLE, CANCEL → CANCELLED (or DEADLINE_EXCEEDED when the call's
    /// deadline has passed), ENHANCE_YOUR_CALM → RESOURCE_EXHAUSTED, INADEQUATE_SECURITY →
    /// PERMISSION_DENIED, anything else → INTERNAL.
    pub fn from_h2_reason(reason: u32, deadline_passed: bool) -> Status {
        let (code, name) = match reason {
            0x0 => (Code::Internal, "NO_ERROR"),
            0x1 => (Code::Internal, "PROTOCOL_ERROR"),
            0x2 => (Code::Internal, "INTERNAL_ERROR"),
            0x3 => (Code::Internal, "FLOW_CONTROL_ERROR"),
            0x4 => (Code::Internal, "SETTINGS_TIMEOUT"),
            0x5 => (Code::Internal, "STREAM_CLOSED"),
            0x6 => (Code::Internal, "FRAME_SIZE_ERROR"),
            0x7 => (Code::Unavailable, "REFUSED_STREAM"),
            0x8 if deadline_passed => (Code::DeadlineExceeded, "CANCEL"),
            0x8 => (Code::Cancelled, "CANCEL"),
            0x9 => (Code::Internal, "COMPRESSION_ERROR"),
            0xa => (Code::Internal, "CONNECT_ERROR"),
            0xb => (Code::ResourceExhausted, "ENHANCE_YOUR_CALM"),
            0xc => (Code::PermissionDenied, "INADEQUATE_SECURITY"),
            0xd => (Code::Internal, "HTTP_1_1_REQUIRED"),
            _ => (Code::Internal, "unknown error code"),
        };
        Status::new(code, format!("stream reset by peer: {name} ({reason:#x})"))
    }

    /// Reads the status from trailers (or a trailers-only response's headers).
    ///
    /// Returns `None` when `grpc-status` is absent. Never fails: a malformed code is
    /// [`Code::Unknown`], a malformed message is kept as is, undecodable details are dropped.
    /// All non-reserved entries become the status's metadata.
    pub fn from_trailers(trailers: &HeaderMap) -> Option<Status> {
        let code = Code::from_bytes(trailers.get(GRPC_STATUS)?.as_bytes());
        let message = trailers
            .get(GRPC_MESSAGE)
            .map(|v| message::decode(v.as_bytes()))
            .unwrap_or_default();
        let details = trailers
            .get(GRPC_STATUS_DETAILS)
            .and_then(|v| crate::metadata::decode_binary(v.as_bytes()).ok())
            .map(Bytes::from)
            .unwrap_or_default();
        Some(Status {
            inner: Box::new(Inner {
                code,
                message,
                details,
                metadata: MetadataMap::from_headers(trailers),
            }),
        })
    }

    /// Whether trailers say `grpc-status: 0`: the common case, checked without building a
    /// `Status`.
    pub fn trailers_are_ok(trailers: &HeaderMap) -> bool {
        trailers
            .get(GRPC_STATUS)
            .is_some_and(|v| v.as_bytes() == b"0")
    }

    /// The trailers of a successful call: `metadata` plus `grpc-status: 0`, built without
    /// allocating a `Status`.
    pub fn ok_trailers(metadata: MetadataMap) -> HeaderMap {
        let mut trailers = metadata.into_headers();
        trailers.insert(GRPC_STATUS, Code::Ok.header_value());
        trailers
    }

    /// Appends this status (code, message, details, metadata) to a header map as trailers.
    pub fn write_trailers(&self, trailers: &mut HeaderMap) {
        trailers.reserve(3 + self.inner.metadata.len());
        trailers.insert(GRPC_STATUS, self.inner.code.header_value());
        if !self.inner.message.is_empty() {
            let encoded = message::encode(&self.inner.message);
            // `encode` emits only visible ASCII, which is always a valid header value.
            if let Ok(value) = HeaderValue::from_maybe_shared(encoded) {
                trailers.insert(GRPC_MESSAGE, value);
            }
        }
        if !self.inner.details.is_empty() {
            let encoded = crate::metadata::encode_binary(&self.inner.details);
            if let Ok(value) = HeaderValue::from_maybe_shared(encoded) {
                trailers.insert(GRPC_STATUS_DETAILS, value);
            }
        }
        self.inner.metadata.write_to(trailers);
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Status");
        d.field("code", &self.inner.code);
        if !self.inner.message.is_empty() {
            d.field("message", &self.inner.message);
        }
        if !self.inner.details.is_empty() {
            d.field("details", &self.inner.details);
        }
        if !self.inner.metadata.is_empty() {
            d.field("metadata", &self.inner.metadata);
        }
        d.finish()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.code)?;
        if !self.inner.message.is_empty() {
            write!(f, ": {}", self.inner.message)?;
        }
        Ok(())
    }
}

impl Error for Status {}

impl From<std::io::Error> for Status {
    fn from(err: std::io::Error) -> Status {
        use std::io::ErrorKind::*;
        let code = match err.kind() {
            TimedOut => Code::DeadlineExceeded,
            PermissionDenied => Code::PermissionDenied,
            _ => Code::Unavailable,
        };
        Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_table() {
        let cases = [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (431, Code::Internal),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (200, Code::Unknown),
            (500, Code::Unknown),
            (415, Code::Unknown),
        ];
        for (http, code) in cases {
            let status = Status::from_http_status(http::StatusCode::from_u16(http).unwrap());
            assert_eq!(status.unwrap().code(), code, "HTTP {http}");
        }
        assert!(Status::from_http_status(http::StatusCode::CONTINUE).is_none());
    }

    #[test]
    fn rst_stream_table() {
        assert_eq!(Status::from_h2_reason(0x7, false).code(), Code::Unavailable);
        assert_eq!(Status::from_h2_reason(0x8, false).code(), Code::Cancelled);
        assert_eq!(
            Status::from_h2_reason(0x8, true).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            Status::from_h2_reason(0xb, false).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            Status::from_h2_reason(0xc, false).code(),
            Code::PermissionDenied
        );
        for r in [0x0, 0x1, 0x2, 0x3, 0x5, 0x6, 0x9, 0xa, 0xd, 0xff] {
            assert_eq!(Status::from_h2_reason(r, false).code(), Code::Internal);
        }
    }

    #[test]
    fn trailers_round_trip() {
        let mut md = MetadataMap::new();
        md.insert("x-trailer", "v").unwrap();
        md.insert_bin("x-blob-bin", b"\x00\xff").unwrap();
        let mut status = Status::with_details(
            Code::NotFound,
            "no such thing: 100% \u{1F600}\r\n",
            Bytes::from_static(b"\x08\x05"),
        );
        *status.metadata_mut() = md;
        let mut trailers = HeaderMap::new();
        status.write_trailers(&mut trailers);
        let back = Status::from_trailers(&trailers).unwrap();
        assert_eq!(back.code(), Code::NotFound);
        assert_eq!(back.message(), status.message());
        assert_eq!(back.details(), status.details());
        assert_eq!(back.metadata().get("x-trailer"), Some("v"));
        assert_eq!(
            back.metadata().get_bin("x-blob-bin").unwrap().unwrap(),
            b"\x00\xff"
        );
        assert!(back.metadata().get("grpc-status").is_none());
    }

    #[test]
    fn malformed_trailers_never_fail() {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("abc"));
        trailers.insert(GRPC_MESSAGE, HeaderValue::from_static("bad %zz escape %"));
        trailers.insert(GRPC_STATUS_DETAILS, HeaderValue::from_static("!!!"));
        let status = Status::from_trailers(&trailers).unwrap();
        assert_eq!(status.code(), Code::Unknown);
        assert_eq!(status.message(), "bad %zz escape %");
        assert!(status.details().is_empty());
        assert!(Status::from_trailers(&HeaderMap::new()).is_none());
    }
}
