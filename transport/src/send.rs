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

fn poll_capacity(
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
