//! Sending framed messages on an `h2` stream under flow control.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::poll_fn;
use h2::SendStream;

/// Waits until the stream has send capacity, so that at most one message per stream sits in
/// h2's buffer: a slow reader then holds the sender back instead of growing its memory.
///
/// Returns the error that ended the stream (a reset from the peer, or the connection's end).
pub(crate) async fn reserve(stream: &mut SendStream<Bytes>, len: usize) -> Result<(), h2::Error> {
    if len == 0 {
        return Ok(());
    }
    stream.reserve_capacity(len);
    poll_fn(|cx| poll_capacity(stream, cx)).await
}

/// Ready once the stream has send capacity (after a `reserve_capacity`), or with the error
/// that ended it.
pub(crate) fn poll_capacity(
    stream: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), h2::Error>> {
    loop {
        if stream.capacity() > 0 {
            return Poll::Ready(Ok(()));
        }
        match stream.poll_capacity(cx) {
            Poll::Ready(Some(Ok(0))) => continue,
            Poll::Ready(Some(Ok(_))) => return Poll::Ready(Ok(())),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => {
                // The stream can no longer send: find out why.
                return match stream.poll_reset(cx) {
                    Poll::Ready(Ok(reason)) => Poll::Ready(Err(h2::Error::from(reason))),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                };
            }
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Sends one framed message once the stream has capacity.
pub(crate) async fn send_message(
    stream: &mut SendStream<Bytes>,
    frame: Bytes,
    end_of_stream: bool,
) -> Result<(), h2::Error> {
    reserve(stream, frame.len()).await?;
    stream.send_data(frame, end_of_stream)
}

/// Most bytes of already-ready messages gathered into one write. Small messages streamed one
/// DATA frame each would cost a frame header, a write and a wake-up apiece, and peers limit
/// how many small frames they buffer (h2 closes the connection with ENHANCE_YOUR_CALM).
pub(crate) const COALESCE_BYTES: usize = 32 * 1024;

/// What the message stream did while ready messages were being gathered.
pub(crate) enum Gathered {
    /// It has nothing more ready yet.
    More,
    /// It ended.
    End,
    /// It failed, or a message could not be encoded; pending messages still go out first.
    Fail(crate::Status),
}

/// Appends the messages `messages` has ready right now to the encoder, up to
/// [`COALESCE_BYTES`]. The stream is polled without a waker; the caller polls it again with its
/// own before it waits.
pub(crate) fn append_ready<C, S>(
    encoder: &mut anygrpc_codec::frame::Encoder,
    codec: &C,
    compress: bool,
    messages: &mut S,
) -> Gathered
where
    C: anygrpc_codec::Codec,
    S: futures_core::Stream<Item = Result<C::Encode, crate::Status>> + Unpin,
{
    use futures_util::{FutureExt, StreamExt};
    while encoder.pending() < COALESCE_BYTES {
        match messages.next().now_or_never() {
            None => return Gathered::More,
            Some(None) => return Gathered::End,
            Some(Some(Ok(message))) => {
                if let Err(status) = encoder.append(codec, message, compress) {
                    return Gathered::Fail(status);
                }
            }
            Some(Some(Err(status))) => return Gathered::Fail(status),
        }
    }
    Gathered::More
}
