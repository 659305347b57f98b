//! The messages of one side of a call as middleware sees them: encoded bytes, in order, then
//! how that side ended.

use std::{
    fmt,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::poll_fn;

use crate::{streaming::Relay, MetadataMap, Status, Streaming};

/// A call's messages one way, each its encoded bytes (decompressed, without the 5-byte
/// frame prefix).
///
/// As a [`Stream`] it yields each message, then ends with `None` (that side ended well) or
/// with one `Err(status)` (the call failed). On a client the response's messages also carry
/// its metadata: [`headers`](Self::headers) and, after a good end, [`trailers`](Self::trailers).
pub struct Messages {
    source: Source,
}

enum Source {
    One(Option<Bytes>),
    /// The messages of an HTTP/2 stream: a server's requests, a client's responses.
    Wire(Box<Streaming<Bytes>>),
    Stream(Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>),
    Adapted(Box<Adapted>),
}

type Each = Box<dyn FnMut(Bytes) -> Result<Bytes, Status> + Send>;
type End = Box<dyn FnOnce(Result<(), &Status>) + Send>;

/// Messages with a function on each, or one told how they end.
struct Adapted {
    inner: Messages,
    each: Option<Each>,
    end: Option<End>,
    done: bool,
}

impl Adapted {
    fn finish(&mut self, outcome: Result<(), &Status>) {
        self.done = true;
        if let Some(end) = self.end.take() {
            end(outcome);
        }
    }
}

impl Drop for Adapted {
    fn drop(&mut self) {
        if self.end.is_some() {
            self.finish(Err(&Status::cancelled(
                "the messages were dropped before they ended",
            )));
        }
    }
}

impl fmt::Debug for Messages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.source {
            Source::One(Some(_)) => "Messages(one)",
            Source::One(None) => "Messages(none left)",
            Source::Wire(_) => "Messages(from the peer)",
            Source::Stream(_) => "Messages(a stream)",
            Source::Adapted(_) => "Messages(adapted)",
        })
    }
}

impl Messages {
    /// No messages: a side that ends at once.
    pub fn empty() -> Messages {
        Messages {
            source: Source::One(None),
        }
    }

    /// One message, then the end.
    pub fn one(message: Bytes) -> Messages {
        Messages {
            source: Source::One(Some(message)),
        }
    }

    /// The messages of `stream`, which may end with an error.
    pub fn from_stream(
        stream: impl Stream<Item = Result<Bytes, Status>> + Send + 'static,
    ) -> Messages {
        Messages {
            source: Source::Stream(Box::pin(stream)),
        }
    }

    pub(crate) fn wire(streaming: Streaming<Bytes>) -> Messages {
        Messages {
            source: Source::Wire(Box::new(streaming)),
        }
    }

    /// The next message; `Ok(None)` once the side ended well.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        poll_fn(|cx| self.poll_message(cx)).await.transpose()
    }

    /// Reads the only message of a unary side: a missing or second message is `INTERNAL`,
    /// as on the wire.
    pub(crate) async fn single(&mut self, side: &str) -> Result<Bytes, Status> {
        if let Source::One(one) = &mut self.source {
            return one.take().ok_or_else(|| missing(side));
        }
        let message = self.message().await?.ok_or_else(|| missing(side))?;
        if self.message().await?.is_some() {
            return Err(Status::internal(format!(
                "more than one {side} message for a unary {side}"
            )));
        }
        Ok(message)
    }

    /// Messages with `f` applied to each; an error from `f` ends them with that status.
    pub fn map(self, f: impl FnMut(Bytes) -> Result<Bytes, Status> + Send + 'static) -> Messages {
        self.adapted(Some(Box::new(f)), None)
    }

    /// Messages that show each to `f` as it passes (to count or log them).
    pub fn inspect(self, mut f: impl FnMut(&Bytes) + Send + 'static) -> Messages {
        self.map(move |message| {
            f(&message);
            Ok(message)
        })
    }

    /// Messages that tell `f` how they ended: `Ok` after the last one of a good end, the
    /// status of a failure, or `CANCELLED` if they are dropped before they end (the call was
    /// cancelled, or its reader stopped reading).
    pub fn on_end(self, f: impl FnOnce(Result<(), &Status>) + Send + 'static) -> Messages {
        self.adapted(None, Some(Box::new(f)))
    }

    fn adapted(self, each: Option<Each>, end: Option<End>) -> Messages {
        Messages {
            source: Source::Adapted(Box::new(Adapted {
                inner: self,
                each,
                end,
                done: false,
            })),
        }
    }

    /// Client: the header metadata of the response these messages come in, waiting for it if
    /// it has not arrived (a bidi call's middleware gets its response before the server
    /// answers). Empty for messages that are not a response from the wire.
    pub async fn headers(&mut self) -> Result<MetadataMap, Status> {
        poll_fn(|cx| self.poll_headers(cx))
            .await
            .map(Option::unwrap_or_default)
    }

    /// Client: after the messages ended well, the trailing metadata of the response they
    /// came in (taken: a second call returns `None`).
    pub fn trailers(&mut self) -> Option<MetadataMap> {
        self.take_trailers()
    }
}

fn missing(side: &str) -> Status {
    Status::internal(format!("the {side} stream ended without a message"))
}

impl Relay for Messages {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        match &mut self.source {
            Source::One(one) => Poll::Ready(one.take().map(Ok)),
            Source::Wire(streaming) => Pin::new(&mut **streaming).poll_next(cx),
            Source::Stream(stream) => stream.as_mut().poll_next(cx),
            Source::Adapted(adapted) => {
                if adapted.done {
                    return Poll::Ready(None);
                }
                let next = match ready!(adapted.inner.poll_message(cx)) {
                    Some(Ok(message)) => match adapted.each.as_mut() {
                        Some(each) => each(message),
                        None => Ok(message),
                    },
                    Some(Err(status)) => Err(status),
                    None => {
                        adapted.finish(Ok(()));
                        return Poll::Ready(None);
                    }
                };
                if let Err(status) = &next {
                    adapted.finish(Err(status));
                }
                Poll::Ready(Some(next))
            }
        }
    }

    fn take_trailers(&mut self) -> Option<MetadataMap> {
        match &mut self.source {
            Source::Wire(streaming) => streaming.take_trailers(),
            Source::Adapted(adapted) => adapted.inner.take_trailers(),
            Source::One(_) | Source::Stream(_) => None,
        }
    }

    fn poll_headers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<MetadataMap>, Status>> {
        match &mut self.source {
            Source::Wire(streaming) => streaming.poll_headers(cx).map_ok(|h| Some(h.clone())),
            Source::Adapted(adapted) => adapted.inner.poll_headers(cx),
            Source::One(_) | Source::Stream(_) => Poll::Ready(Ok(None)),
        }
    }
}

impl Stream for Messages {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_message(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::FutureExt;

    use super::*;
    use crate::Code;

    /// Messages that record how they ended in `log`.
    fn told(messages: Messages, log: &Arc<Mutex<Vec<Code>>>) -> Messages {
        let log = log.clone();
        messages.on_end(move |end| {
            let code = end.map_or_else(Status::code, |()| Code::Ok);
            log.lock().unwrap().push(code);
        })
    }

    fn next(messages: &mut Messages) -> Result<Option<Bytes>, Status> {
        messages.message().now_or_never().expect("ready")
    }

    #[test]
    fn on_end_hears_a_good_end_a_failure_and_a_drop() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut good = told(Messages::one(Bytes::from_static(b"a")), &log);
        assert_eq!(next(&mut good).unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(next(&mut good).unwrap(), None);
        assert_eq!(next(&mut good).unwrap(), None, "ended stays ended");
        drop(good);

        let failing = futures_util::stream::iter([
            Ok(Bytes::from_static(b"b")),
            Err(Status::data_loss("cut")),
        ]);
        let mut failing = told(Messages::from_stream(failing), &log);
        assert!(next(&mut failing).unwrap().is_some());
        assert_eq!(next(&mut failing).unwrap_err().code(), Code::DataLoss);
        assert_eq!(next(&mut failing).unwrap(), None);
        drop(failing);

        drop(told(Messages::one(Bytes::from_static(b"c")), &log));

        let refused =
            Messages::one(Bytes::from_static(b"d")).map(|_| Err(Status::invalid_argument("no")));
        let mut refused = told(refused, &log);
        assert_eq!(
            next(&mut refused).unwrap_err().code(),
            Code::InvalidArgument
        );
        drop(refused);

        assert_eq!(
            *log.lock().unwrap(),
            [
                Code::Ok,
                Code::DataLoss,
                Code::Cancelled,
                Code::InvalidArgument
            ]
        );
    }

    #[test]
    fn a_unary_side_is_exactly_one_message() {
        let mut one = Messages::one(Bytes::from_static(b"x"));
        assert_eq!(one.single("request").now_or_never().unwrap().unwrap(), "x");
        let mut none = Messages::empty();
        let err = none.single("request").now_or_never().unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        let two = futures_util::stream::iter([Ok(Bytes::new()), Ok(Bytes::new())]);
        let mut two = Messages::from_stream(two);
        let err = two.single("request").now_or_never().unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }
}
