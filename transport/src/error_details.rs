//! The rich error model: a [`Status`] whose `grpc-status-details-bin` trailer carries a
//! `google.rpc.Status` with typed details (`google/rpc/error_details.proto`).
//!
//! Any gRPC implementation reads these details: grpc-go's `status.Details()`, the C-core's
//! `grpc_status.rpc_status.from_call` in Python, tonic's `tonic-types`. The trailer's
//! `google.rpc.Status` repeats the call's code and message (readers such as Python's check that
//! they match), so [`StatusExt::with_error_details`] builds both from the same values.
//!
//! ```
//! use anygrpc::{error_details::{BadRequest, StatusExt}, Code, Status};
//!
//! let status = Status::with_error_details(
//!     Code::InvalidArgument,
//!     "bad name",
//!     [BadRequest::field("name", "must not be empty").into()],
//! );
//! let bad_request: BadRequest = status.get_detail().unwrap();
//! assert_eq!(bad_request.field_violations[0].field, "name");
//! ```

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use prost::{Message, Name};
use prost_types::Any;

use crate::{Code, Status};

/// `google.rpc.Status`: the body of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The status code; the same as the call's `grpc-status`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The developer-facing message; the same as the call's `grpc-message`.
    #[prost(string, tag = "2")]
    pub message: String,
    /// The details, each a packed message.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// Implements [`Name`] for `google.rpc` messages, so that they pack into and unpack from [`Any`]
/// with the type URL every implementation uses.
macro_rules! google_rpc_name {
    ($($ty:ident),*) => {$(
        impl Name for $ty {
            const NAME: &'static str = stringify!($ty);
            const PACKAGE: &'static str = "google.rpc";
            fn type_url() -> String {
                concat!("type.googleapis.com/google.rpc.", stringify!($ty)).to_owned()
            }
        }
    )*};
}

google_rpc_name!(RpcStatus);

/// Why an error happened, as a machine-readable reason in a domain, with context.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorInfo {
    /// The reason, `UPPER_SNAKE_CASE`, unique within the domain.
    #[prost(string, tag = "1")]
    pub reason: String,
    /// The logical grouping the reason belongs to, usually the service's name.
    #[prost(string, tag = "2")]
    pub domain: String,
    /// Further structured context.
    #[prost(map = "string, string", tag = "3")]
    pub metadata: HashMap<String, String>,
}

/// When the client may retry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    /// How long to wait before retrying.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<prost_types::Duration>,
}

impl RetryInfo {
    /// Retry after `delay` (saturating at the protobuf `Duration`'s range).
    pub fn after(delay: Duration) -> Self {
        let retry_delay = prost_types::Duration::try_from(delay).unwrap_or(prost_types::Duration {
            seconds: 315_576_000_000,
            nanos: 999_999_999,
        });
        RetryInfo {
            retry_delay: Some(retry_delay),
        }
    }

    /// The delay, if present and not negative.
    pub fn delay(&self) -> Option<Duration> {
        self.retry_delay.and_then(|d| Duration::try_from(d).ok())
    }
}

/// Debugging information for the server's developers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DebugInfo {
    /// The stack trace.
    #[prost(string, repeated, tag = "1")]
    pub stack_entries: Vec<String>,
    /// Any other detail.
    #[prost(string, tag = "2")]
    pub detail: String,
}

/// Which quota checks failed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuotaFailure {
    /// The violations.
    #[prost(message, repeated, tag = "1")]
    pub violations: Vec<QuotaViolation>,
}

/// One failed quota check.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuotaViolation {
    /// The subject on which the check failed, e.g. `clientip:<ip>`.
    #[prost(string, tag = "1")]
    pub subject: String,
    /// What failed, for a human.
    #[prost(string, tag = "2")]
    pub description: String,
}

/// Which preconditions failed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PreconditionFailure {
    /// The violations.
    #[prost(message, repeated, tag = "1")]
    pub violations: Vec<PreconditionViolation>,
}

/// One failed precondition.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PreconditionViolation {
    /// The kind of precondition, service-specific, e.g. `TOS`.
    #[prost(string, tag = "1")]
    pub r#type: String,
    /// The subject, relative to the type, that failed.
    #[prost(string, tag = "2")]
    pub subject: String,
    /// How it failed, for a human.
    #[prost(string, tag = "3")]
    pub description: String,
}

/// Which fields of the request were invalid.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BadRequest {
    /// The violations.
    #[prost(message, repeated, tag = "1")]
    pub field_violations: Vec<FieldViolation>,
}

impl BadRequest {
    /// A bad request with one invalid field.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        BadRequest {
            field_violations: vec![FieldViolation {
                field: field.into(),
                description: description.into(),
                ..FieldViolation::default()
            }],
        }
    }
}

/// One invalid field of a request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldViolation {
    /// The path to the field, e.g. `address.street`.
    #[prost(string, tag = "1")]
    pub field: String,
    /// Why it is invalid, for a human.
    #[prost(string, tag = "2")]
    pub description: String,
    /// The reason, `UPPER_SNAKE_CASE`.
    #[prost(string, tag = "3")]
    pub reason: String,
    /// A localized message for the end user.
    #[prost(message, optional, tag = "4")]
    pub localized_message: Option<LocalizedMessage>,
}

/// Identifies the request, for a bug report or for finding it in logs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestInfo {
    /// An opaque id of the request in the server's logs.
    #[prost(string, tag = "1")]
    pub request_id: String,
    /// Data the server used to serve it, for debugging.
    #[prost(string, tag = "2")]
    pub serving_data: String,
}

/// The resource an error is about.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceInfo {
    /// The resource's type, e.g. a type URL.
    #[prost(string, tag = "1")]
    pub resource_type: String,
    /// The resource's name.
    #[prost(string, tag = "2")]
    pub resource_name: String,
    /// Its owner.
    #[prost(string, tag = "3")]
    pub owner: String,
    /// What went wrong with it, for a human.
    #[prost(string, tag = "4")]
    pub description: String,
}

/// Links to documentation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Help {
    /// The links.
    #[prost(message, repeated, tag = "1")]
    pub links: Vec<HelpLink>,
}

/// One documentation link.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelpLink {
    /// What the link points to.
    #[prost(string, tag = "1")]
    pub description: String,
    /// The URL.
    #[prost(string, tag = "2")]
    pub url: String,
}

/// An error message for the end user, in a given locale.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LocalizedMessage {
    /// A BCP-47 locale, e.g. `en-US`.
    #[prost(string, tag = "1")]
    pub locale: String,
    /// The message.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// One detail of a rich status: a standard `google.rpc` type, or any other message as [`Any`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ErrorDetail {
    /// `google.rpc.ErrorInfo`.
    ErrorInfo(ErrorInfo),
    /// `google.rpc.RetryInfo`.
    RetryInfo(RetryInfo),
    /// `google.rpc.DebugInfo`.
    DebugInfo(DebugInfo),
    /// `google.rpc.QuotaFailure`.
    QuotaFailure(QuotaFailure),
    /// `google.rpc.PreconditionFailure`.
    PreconditionFailure(PreconditionFailure),
    /// `google.rpc.BadRequest`.
    BadRequest(BadRequest),
    /// `google.rpc.RequestInfo`.
    RequestInfo(RequestInfo),
    /// `google.rpc.ResourceInfo`.
    ResourceInfo(ResourceInfo),
    /// `google.rpc.Help`.
    Help(Help),
    /// `google.rpc.LocalizedMessage`.
    LocalizedMessage(LocalizedMessage),
    /// Any other message, or a standard one that did not decode.
    Other(Any),
}

/// Defines the detail kinds once: their [`Name`]s, `From` each type, packing into [`Any`] and
/// unpacking by type URL.
macro_rules! error_detail_kinds {
    ($($ty:ident),* $(,)?) => {
        google_rpc_name!($($ty),*);

        $(impl From<$ty> for ErrorDetail {
            fn from(detail: $ty) -> Self {
                ErrorDetail::$ty(detail)
            }
        })*

        impl ErrorDetail {
            /// Packs this detail into an [`Any`].
            pub fn to_any(&self) -> Any {
                match self {
                    $(ErrorDetail::$ty(detail) => pack(detail),)*
                    ErrorDetail::Other(any) => any.clone(),
                }
            }

            /// Unpacks an [`Any`]: a standard type it names and that decodes becomes its
            /// variant, anything else is kept as [`ErrorDetail::Other`].
            pub fn from_any(any: Any) -> Self {
                let name = any.type_url.rsplit('/').next().unwrap_or_default();
                $(if name == concat!("google.rpc.", stringify!($ty)) {
                    if let Ok(detail) = $ty::decode(any.value.as_slice()) {
                        return ErrorDetail::$ty(detail);
                    }
                })*
                ErrorDetail::Other(any)
            }
        }
    };
}

error_detail_kinds!(
    ErrorInfo,
    RetryInfo,
    DebugInfo,
    QuotaFailure,
    PreconditionFailure,
    BadRequest,
    RequestInfo,
    ResourceInfo,
    Help,
    LocalizedMessage,
);

impl From<Any> for ErrorDetail {
    fn from(any: Any) -> Self {
        ErrorDetail::Other(any)
    }
}

fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Rich-error methods on [`Status`].
pub trait StatusExt: Sized {
    /// A status whose details trailer is a `google.rpc.Status` with the same code and message
    /// and these details.
    fn with_error_details(
        code: Code,
        message: impl Into<String>,
        details: impl IntoIterator<Item = ErrorDetail>,
    ) -> Self;

    /// The `google.rpc.Status` in the details trailer: `None` when there is none, an error when
    /// the trailer is not one.
    fn rpc_status(&self) -> Result<Option<RpcStatus>, prost::DecodeError>;

    /// The details of [`rpc_status`](StatusExt::rpc_status), in order (empty when there are
    /// none).
    fn error_details(&self) -> Result<Vec<ErrorDetail>, prost::DecodeError>;

    /// The first detail of type `M`, if the details carry one that decodes.
    fn get_detail<M: Message + Name + Default>(&self) -> Option<M>;
}

impl StatusExt for Status {
    fn with_error_details(
        code: Code,
        message: impl Into<String>,
        details: impl IntoIterator<Item = ErrorDetail>,
    ) -> Self {
        let message = message.into();
        let rpc = RpcStatus {
            code: code as i32,
            message: message.clone(),
            details: details.into_iter().map(|d| d.to_any()).collect(),
        };
        Status::with_details(code, message, Bytes::from(rpc.encode_to_vec()))
    }

    fn rpc_status(&self) -> Result<Option<RpcStatus>, prost::DecodeError> {
        if self.details().is_empty() {
            return Ok(None);
        }
        RpcStatus::decode(self.details().as_ref()).map(Some)
    }

    fn error_details(&self) -> Result<Vec<ErrorDetail>, prost::DecodeError> {
        Ok(self
            .rpc_status()?
            .map(|rpc| rpc.details.into_iter().map(ErrorDetail::from_any).collect())
            .unwrap_or_default())
    }

    fn get_detail<M: Message + Name + Default>(&self) -> Option<M> {
        let type_url = M::type_url();
        self.rpc_status()
            .ok()
            .flatten()?
            .details
            .iter()
            .filter(|any| any.type_url == type_url)
            .find_map(|any| M::decode(any.value.as_slice()).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_detail_round_trips_through_the_trailers() {
        let details: Vec<ErrorDetail> = vec![
            ErrorInfo {
                reason: "QUOTA".into(),
                domain: "example.com".into(),
                metadata: [("k".to_owned(), "v".to_owned())].into(),
            }
            .into(),
            RetryInfo::after(Duration::from_millis(1500)).into(),
            DebugInfo {
                stack_entries: vec!["main".into()],
                detail: "d".into(),
            }
            .into(),
            QuotaFailure {
                violations: vec![QuotaViolation {
                    subject: "clientip:1.2.3.4".into(),
                    description: "too many".into(),
                }],
            }
            .into(),
            PreconditionFailure {
                violations: vec![PreconditionViolation {
                    r#type: "TOS".into(),
                    subject: "tos".into(),
                    description: "not accepted".into(),
                }],
            }
            .into(),
            BadRequest::field("name", "empty").into(),
            RequestInfo {
                request_id: "r1".into(),
                serving_data: "s".into(),
            }
            .into(),
            ResourceInfo {
                resource_type: "book".into(),
                resource_name: "b1".into(),
                owner: "o".into(),
                description: "gone".into(),
            }
            .into(),
            Help {
                links: vec![HelpLink {
                    description: "docs".into(),
                    url: "https://example.com".into(),
                }],
            }
            .into(),
            LocalizedMessage {
                locale: "en-US".into(),
                message: "bad".into(),
            }
            .into(),
            Any {
                type_url: "type.googleapis.com/example.Custom".into(),
                value: vec![8, 1],
            }
            .into(),
        ];
        let status = Status::with_error_details(Code::InvalidArgument, "bad", details.clone());

        let mut trailers = http::HeaderMap::new();
        status.write_trailers(&mut trailers);
        let back = Status::from_trailers(&trailers).unwrap();

        assert_eq!(back.code(), Code::InvalidArgument);
        let rpc = back.rpc_status().unwrap().unwrap();
        assert_eq!((rpc.code, rpc.message.as_str()), (3, "bad"));
        assert_eq!(back.error_details().unwrap(), details);
        assert_eq!(
            back.get_detail::<RetryInfo>().unwrap().delay(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            rpc.details[5].type_url,
            "type.googleapis.com/google.rpc.BadRequest"
        );
    }

    #[test]
    fn statuses_without_or_with_broken_details() {
        let plain = Status::not_found("x");
        assert_eq!(plain.rpc_status(), Ok(None));
        assert!(plain.error_details().unwrap().is_empty());
        assert!(plain.get_detail::<BadRequest>().is_none());

        let broken = Status::with_details(Code::Internal, "x", Bytes::from_static(&[0xff]));
        assert!(broken.rpc_status().is_err());
        assert!(broken.error_details().is_err());
        assert!(broken.get_detail::<BadRequest>().is_none());

        let mislabeled = RpcStatus {
            code: 3,
            message: "m".into(),
            details: vec![Any {
                type_url: BadRequest::type_url(),
                value: vec![0xff],
            }],
        };
        let status = Status::with_details(
            Code::InvalidArgument,
            "m",
            Bytes::from(mislabeled.encode_to_vec()),
        );
        assert!(matches!(
            status.error_details().unwrap()[..],
            [ErrorDetail::Other(_)]
        ));
        assert!(status.get_detail::<BadRequest>().is_none());
    }
}
