//! The header names gRPC reserves (`doc/PROTOCOL-HTTP2.md`): the ones the protocol itself reads
//! and writes, which are therefore never custom metadata.
//!
//! They are `HeaderName` constants, so a lookup with one hashes the name but never parses it
//! (a `&str` key is first matched against http's table of standard names).

use http::{header, HeaderName, HeaderValue};

/// `grpc-timeout`.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `grpc-encoding`.
pub const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
/// `grpc-accept-encoding`.
pub const GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
/// `grpc-status`: the status code, in trailers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the percent-encoded status message.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-status-details-bin`: a serialized `google.rpc.Status`, base64-encoded.
pub const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
/// `grpc-message-type`: the message's type name (sent by some peers, ignored by gRPC).
pub const GRPC_MESSAGE_TYPE: HeaderName = HeaderName::from_static("grpc-message-type");
/// `grpc-previous-rpc-attempts`: how many attempts a client made before this one (gRFC A6).
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");
/// `grpc-retry-pushback-ms`: a server's word on when, or whether, to retry (gRFC A6).
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// Every reserved name a peer sends. Any other `grpc-` name is reserved too (the spec keeps the
/// prefix), and [`crate::MetadataMap::from_header_map`] drops those as well.
pub(crate) static RESERVED: [HeaderName; 11] = [
    // The two without the `grpc-` prefix come first (see `reserved_index`).
    header::CONTENT_TYPE,
    header::TE,
    GRPC_TIMEOUT,
    GRPC_ENCODING,
    GRPC_ACCEPT_ENCODING,
    GRPC_STATUS,
    GRPC_MESSAGE,
    GRPC_STATUS_DETAILS,
    GRPC_MESSAGE_TYPE,
    GRPC_PREVIOUS_RPC_ATTEMPTS,
    GRPC_RETRY_PUSHBACK_MS,
];

/// Where a name stands in [`RESERVED`]. Every received header's name is looked up here, so
/// the names compare as strings (length first), behind one test of the `grpc-` prefix.
pub(crate) fn reserved_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    if !name.starts_with("grpc-") {
        return RESERVED[..2].iter().position(|r| r.as_str() == name);
    }
    let at = RESERVED[2..].iter().position(|r| r.as_str() == name)?;
    Some(at + 2)
}

/// The first values of the reserved headers a server reads from a request, taken out of its
/// header map.
#[derive(Debug, Default)]
pub(crate) struct Reserved {
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) timeout: Option<HeaderValue>,
    pub(crate) encoding: Option<HeaderValue>,
    pub(crate) accept_encoding: Option<HeaderValue>,
    pub(crate) previous_attempts: Option<HeaderValue>,
}

impl Reserved {
    /// Keeps the value of reserved header `name`, if it is one of these.
    pub(crate) fn keep(&mut self, name: &HeaderName, value: Option<HeaderValue>) {
        let slot = match name.as_str() {
            "content-type" => &mut self.content_type,
            "grpc-timeout" => &mut self.timeout,
            "grpc-encoding" => &mut self.encoding,
            "grpc-accept-encoding" => &mut self.accept_encoding,
            "grpc-previous-rpc-attempts" => &mut self.previous_attempts,
            _ => return,
        };
        *slot = value;
    }
}
