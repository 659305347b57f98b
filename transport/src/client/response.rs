//! The response side of a client call: the receive stream of an attempt, with the call's
//! limits and tracking, and a unary response read from it.

use anygrpc_codec::Codec;

use super::{call::Prepared, CancelToken, Grpc};
use crate::{
    limits::Deadline,
    streaming::{CallTracking, ClientSide, LocalError, PendingHead},
    Response, Status, Streaming,
};

impl Grpc {
    /// The response stream of an opened attempt; its head is received on first use. With
    /// `stream_limits` it enforces the call's deadline and cancellation; `local_error` is
    /// where the attempt's request task records why it reset the stream.
    pub(super) fn attempt_response<C: Codec + Clone>(
        &self,
        call: &Prepared,
        response: h2::client::ResponseFuture,
        tracking: CallTracking,
        codec: &C,
        stream_limits: bool,
        local_error: Option<LocalError>,
    ) -> Streaming<C::Decode> {
        let (deadline, cancel) = match stream_limits {
            true => (call.deadline, call.cancel.as_ref()),
            false => (None, None),
        };
        let client = ClientSide {
            deadline: Deadline::new(&**self.runtime(), deadline),
            cancel: cancel.map(CancelToken::cancelled),
            tracking,
            local_error,
            ..ClientSide::default()
        };
        let head = PendingHead {
            response,
            compression: self.channel.inner.call.compression.clone(),
        };
        let traffic = client.tracking.traffic();
        let mut streaming =
            Streaming::client(head, codec.clone(), call.max_recv_message_size, client);
        streaming.count_traffic(traffic);
        streaming
    }
}

/// Reads exactly one message and the trailers: the response of a call that committed to
/// `streaming`'s attempt.
pub(super) async fn single_response<T>(
    streaming: &mut Streaming<T>,
) -> Result<Response<T>, Status> {
    let metadata = streaming.take_headers();
    let message = streaming.single("response").await?;
    let trailers = streaming.trailers().await?.unwrap_or_default();
    Ok(Response::from_parts(metadata, message, trailers))
}
