//! A request channel: the caller's side of a streaming call's request messages, with no task
//! between the caller and the connection.
//!
//! A streaming call takes any `Stream` of requests, and a task reads it and sends what it reads
//! (`sender.rs`). Each message then costs a queue node and a hop to that task. A
//! [`RequestStream`] passed to a call without a retry or hedging policy is instead *attached*:
//! from then on [`RequestSender::send`] encodes the message and hands it to the call's `h2`
//! stream itself, as grpc-go's `SendMsg` does, waiting for send capacity first so that at most
//! one message per call sits in `h2`'s buffer. Before the call takes it, and wherever it is used
//! as an ordinary stream (a call that may be retried reads it from its request task), the
//! channel is a bounded queue.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::poll_fn;

/// Creates a request channel holding up to `buffer` messages (at least one) that the call has
/// not taken yet: pass the [`RequestStream`] as a client-streaming or bidi call's requests and
/// send on the [`RequestSender`]. Dropping the sender ends the request stream.
pub fn request_channel<T>(buffer: usize) -> (RequestSender<T>, RequestStream<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            buffer: buffer.max(1),
            link: None,
            sender_gone: false,
            closed: false,
            reader: None,
            writer: None,
        }),
    });
    (
        RequestSender {
            shared: shared.clone(),
        },
        RequestStream { shared },
    )
}

/// Sends a streaming call's request messages. Dropping it ends the request stream.
pub struct RequestSender<T> {
    shared: Arc<Shared<T>>,
}

/// The call no longer takes request messages: it ended or failed (its response says how), or
/// the [`RequestStream`] was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestClosed;

impl fmt::Display for RequestClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the call's request stream is closed")
    }
}

impl std::error::Error for RequestClosed {}

impl<T> RequestSender<T> {
    /// Sends one message. Once a call has taken the channel this encodes the message and
    /// queues it on the call's stream, after waiting until the stream has send capacity (flow
    /// control holds a sender back from a slow reader); before that, it waits for room in the
    /// channel's buffer.
    ///
    /// Fails once the call has ended; the response says why. A `send` dropped before it
    /// completes may have sent its message or not.
    pub async fn send(&mut self, message: T) -> Result<(), RequestClosed> {
        let mut message = Some(message);
        let mut frame = None;
        poll_fn(|cx| self.shared.poll_send(cx, &mut message, &mut frame)).await
    }
}

impl<T> Drop for RequestSender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        if let Some(mut link) = state.link.take() {
            link.close();
        }
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }
}

impl<T> fmt::Debug for RequestSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSender").finish_non_exhaustive()
    }
}

/// The messages of a [`request_channel`], for a streaming call to take. Anywhere else it is an
/// ordinary `Stream` of what was sent, ending when the sender is dropped.
pub struct RequestStream<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Stream for RequestStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some(message) = state.queue.pop_front() {
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(message));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for RequestStream<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        // Once attached, the call's hold decides when the channel closes.
        if state.link.is_none() {
            state.close();
        }
    }
}

impl<T> fmt::Debug for RequestStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestStream").finish_non_exhaustive()
    }
}

/// Where an attached channel's messages go: a call's only attempt.
pub(crate) trait Link<T>: Send {
    /// Encodes one message as a frame and asks the stream for capacity for it. A message that
    /// cannot be encoded fails the call (its response says why).
    fn encode(&mut self, message: T) -> Result<Bytes, RequestClosed>;
    /// Ready once the stream has send capacity, or failed if the stream has ended.
    fn poll_capacity(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RequestClosed>>;
    /// Queues a frame on the stream.
    fn send(&mut self, frame: Bytes) -> Result<(), RequestClosed>;
    /// Ends the request stream cleanly.
    fn close(&mut self);
}

/// Takes `messages` as a request channel if it is one, so the call can attach it; otherwise
/// hands it back, for the request task to read.
pub(crate) fn take<T: 'static, S: 'static>(messages: S) -> Result<RequestStream<T>, S> {
    let mut messages = Some(messages);
    let any: &mut dyn std::any::Any = &mut messages;
    match any.downcast_mut::<Option<RequestStream<T>>>() {
        Some(channel) => Ok(channel.take().expect("just filled")),
        None => Err(messages.expect("not taken")),
    }
}

impl<T: Send + 'static> RequestStream<T> {
    /// Attaches the channel to a call's stream: what was queued goes out now (at most the
    /// channel's buffer, so without waiting for capacity), and later sends go straight to
    /// `link`. The call holds the returned guard until it ends; dropping it closes the
    /// channel.
    pub(crate) fn attach(self, mut link: Box<dyn Link<T>>) -> AttachedHold {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        let sent = state.queue.drain(..).try_for_each(|message| {
            let frame = link.encode(message)?;
            link.send(frame)
        });
        if sent.is_err() {
            state.close();
        } else if state.sender_gone {
            link.close();
        } else {
            state.link = Some(link);
        }
        if let Some(writer) = state.writer.take() {
            writer.wake();
        }
        drop(state);
        drop(self);
        AttachedHold(shared)
    }
}

/// Held by a call that attached a request channel: dropping it (the call ended) closes the
/// channel and releases the call's stream.
pub(crate) struct AttachedHold(Arc<dyn Detach>);

impl Drop for AttachedHold {
    fn drop(&mut self) {
        self.0.detach();
    }
}

/// [`AttachedHold`]'s view of a channel, whatever its message type.
trait Detach: Send + Sync {
    fn detach(&self);
}

impl<T: Send> Detach for Shared<T> {
    fn detach(&self) {
        self.lock().close();
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

/// [`Shared::poll_send`] on an attached channel: encodes `message` into `frame` on the first
/// poll, then sends the frame once the stream has capacity.
fn poll_send_on<T>(
    link: &mut dyn Link<T>,
    cx: &mut Context<'_>,
    message: &mut Option<T>,
    frame: &mut Option<Bytes>,
) -> Poll<Result<(), RequestClosed>> {
    if let Some(message) = message.take() {
        *frame = Some(link.encode(message)?);
    }
    std::task::ready!(link.poll_capacity(cx))?;
    Poll::Ready(frame.take().map_or(Ok(()), |frame| link.send(frame)))
}

struct State<T> {
    /// Messages sent and not yet taken.
    queue: VecDeque<T>,
    /// How many messages `queue` may hold.
    buffer: usize,
    /// The call's stream, once the call has attached the channel.
    link: Option<Box<dyn Link<T>>>,
    sender_gone: bool,
    /// Nothing takes messages any more: the stream was dropped, or the call ended or failed.
    closed: bool,
    /// The stream's reader, waiting for a message.
    reader: Option<Waker>,
    /// The sender, waiting for room or capacity.
    writer: Option<Waker>,
}

impl<T> State<T> {
    /// Stops taking messages, dropping what is queued and the call's stream.
    fn close(&mut self) {
        self.closed = true;
        self.queue.clear();
        self.link = None;
        if let Some(writer) = self.writer.take() {
            writer.wake();
        }
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        crate::sync::lock(&self.state)
    }

    /// One step of [`RequestSender::send`]: `message` until it is encoded (or queued), then
    /// `frame` until it is sent.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        message: &mut Option<T>,
        frame: &mut Option<Bytes>,
    ) -> Poll<Result<(), RequestClosed>> {
        let mut state = self.lock();
        if state.closed {
            return Poll::Ready(Err(RequestClosed));
        }
        let Some(link) = state.link.as_mut() else {
            if state.queue.len() >= state.buffer {
                state.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(message) = message.take() {
                state.queue.push_back(message);
            }
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
            return Poll::Ready(Ok(()));
        };
        // Attached while this send waited for room in the queue, or attached from the start.
        let sent = poll_send_on(&mut **link, cx, message, frame);
        match sent {
            // Woken by h2 when capacity comes, or by the call's end (which drops the stream
            // h2 would wake it from).
            Poll::Pending => state.writer = Some(cx.waker().clone()),
            Poll::Ready(Err(_)) => state.close(),
            Poll::Ready(Ok(())) => {}
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        sync::atomic::{AtomicBool, Ordering},
    };

    use futures_util::{FutureExt, StreamExt};

    use super::*;

    /// What a fake call's stream saw.
    #[derive(Default)]
    struct Wire {
        frames: Mutex<Vec<u32>>,
        ended: AtomicBool,
        /// Whether the stream has send capacity.
        open: AtomicBool,
        waiting: Mutex<Option<Waker>>,
    }

    impl Wire {
        fn frames(&self) -> Vec<u32> {
            self.frames.lock().unwrap().clone()
        }

        fn grant(&self) {
            self.open.store(true, Ordering::SeqCst);
            if let Some(waker) = self.waiting.lock().unwrap().take() {
                waker.wake();
            }
        }
    }

    /// Encodes a number as its four bytes; refuses `u32::MAX` (a message that cannot be
    /// encoded).
    struct FakeLink(Arc<Wire>);

    impl Link<u32> for FakeLink {
        fn encode(&mut self, message: u32) -> Result<Bytes, RequestClosed> {
            match message {
                u32::MAX => Err(RequestClosed),
                n => Ok(Bytes::copy_from_slice(&n.to_be_bytes())),
            }
        }

        fn poll_capacity(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RequestClosed>> {
            if self.0.open.load(Ordering::SeqCst) {
                return Poll::Ready(Ok(()));
            }
            *self.0.waiting.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }

        fn send(&mut self, frame: Bytes) -> Result<(), RequestClosed> {
            let n = u32::from_be_bytes(frame[..].try_into().unwrap());
            self.0.frames.lock().unwrap().push(n);
            Ok(())
        }

        fn close(&mut self) {
            self.0.ended.store(true, Ordering::SeqCst);
        }
    }

    fn attached(buffer: usize) -> (RequestSender<u32>, AttachedHold, Arc<Wire>) {
        let (tx, rx) = request_channel(buffer);
        let wire = Arc::new(Wire::default());
        wire.open.store(true, Ordering::SeqCst);
        let hold = rx.attach(Box::new(FakeLink(wire.clone())));
        (tx, hold, wire)
    }

    #[test]
    fn unattached_it_is_a_bounded_stream_that_ends_with_its_sender() {
        let (mut tx, mut rx) = request_channel(2);
        assert_eq!(tx.send(1).now_or_never(), Some(Ok(())));
        assert_eq!(tx.send(2).now_or_never(), Some(Ok(())));
        assert!(tx.send(3).now_or_never().is_none(), "the buffer is full");
        assert_eq!(rx.next().now_or_never(), Some(Some(1)));
        assert_eq!(tx.send(3).now_or_never(), Some(Ok(())));
        drop(tx);
        let rest = rx.collect::<Vec<u32>>().now_or_never();
        assert_eq!(rest, Some(vec![2, 3]));
    }

    #[test]
    fn a_dropped_stream_closes_the_sender() {
        let (mut tx, rx) = request_channel::<u32>(1);
        drop(rx);
        assert_eq!(tx.send(1).now_or_never(), Some(Err(RequestClosed)));
    }

    #[test]
    fn attaching_sends_what_was_queued_then_sends_go_straight_to_the_stream() {
        let (mut tx, rx) = request_channel(4);
        for n in 1..=3 {
            assert_eq!(tx.send(n).now_or_never(), Some(Ok(())));
        }
        let wire = Arc::new(Wire::default());
        let hold = rx.attach(Box::new(FakeLink(wire.clone())));
        assert_eq!(wire.frames(), [1, 2, 3], "queued messages need no capacity");

        // Without capacity a send waits, its message encoded but not sent.
        let mut send = Box::pin(tx.send(4));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(send.as_mut().poll(&mut cx).is_pending());
        assert_eq!(wire.frames(), [1, 2, 3]);
        wire.grant();
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        drop(send);
        assert_eq!(tx.send(5).now_or_never(), Some(Ok(())));
        assert_eq!(wire.frames(), [1, 2, 3, 4, 5]);

        assert!(!wire.ended.load(Ordering::SeqCst));
        drop(tx);
        assert!(
            wire.ended.load(Ordering::SeqCst),
            "dropping the sender ends the request stream"
        );
        drop(hold);
    }

    #[test]
    fn a_send_waiting_for_room_goes_straight_out_once_attached() {
        let (mut tx, rx) = request_channel(1);
        assert_eq!(tx.send(1).now_or_never(), Some(Ok(())));
        let mut send = Box::pin(tx.send(2));
        let woken = Arc::new(Flag::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(send.as_mut().poll(&mut cx).is_pending());
        let wire = Arc::new(Wire::default());
        wire.open.store(true, Ordering::SeqCst);
        let _hold = rx.attach(Box::new(FakeLink(wire.clone())));
        assert!(woken.0.load(Ordering::SeqCst), "attaching wakes the sender");
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(wire.frames(), [1, 2]);
    }

    #[test]
    fn the_call_ending_closes_the_channel() {
        let (mut tx, hold, wire) = attached(1);
        assert_eq!(tx.send(1).now_or_never(), Some(Ok(())));
        drop(hold);
        assert_eq!(tx.send(2).now_or_never(), Some(Err(RequestClosed)));
        assert_eq!(wire.frames(), [1]);
        assert_eq!(
            Arc::strong_count(&wire),
            1,
            "the call's stream is released with the call"
        );
    }

    #[test]
    fn a_send_waiting_for_capacity_fails_when_the_call_ends() {
        let (mut tx, hold, wire) = attached(1);
        wire.open.store(false, Ordering::SeqCst);
        let mut send = Box::pin(tx.send(1));
        let woken = Arc::new(Flag::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(send.as_mut().poll(&mut cx).is_pending());
        drop(hold);
        assert!(
            woken.0.load(Ordering::SeqCst),
            "the call's end wakes the sender"
        );
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Err(RequestClosed)));
        assert!(wire.frames().is_empty());
    }

    #[test]
    fn a_message_that_cannot_be_encoded_closes_the_channel() {
        let (mut tx, _hold, wire) = attached(1);
        assert_eq!(tx.send(u32::MAX).now_or_never(), Some(Err(RequestClosed)));
        assert_eq!(tx.send(1).now_or_never(), Some(Err(RequestClosed)));
        assert!(wire.frames().is_empty());

        // Likewise while attaching: what was queued after it is dropped.
        let (mut tx, rx) = request_channel(4);
        for n in [1, u32::MAX, 2] {
            assert_eq!(tx.send(n).now_or_never(), Some(Ok(())));
        }
        let wire = Arc::new(Wire::default());
        let _hold = rx.attach(Box::new(FakeLink(wire.clone())));
        assert_eq!(wire.frames(), [1]);
        assert_eq!(tx.send(3).now_or_never(), Some(Err(RequestClosed)));
    }

    #[test]
    fn a_sender_gone_before_the_call_attaches_ends_the_stream_after_its_messages() {
        let (mut tx, rx) = request_channel(2);
        assert_eq!(tx.send(7).now_or_never(), Some(Ok(())));
        drop(tx);
        let wire = Arc::new(Wire::default());
        let _hold = rx.attach(Box::new(FakeLink(wire.clone())));
        assert_eq!(wire.frames(), [7]);
        assert!(wire.ended.load(Ordering::SeqCst));
    }

    #[test]
    fn only_a_request_channel_is_taken() {
        let (_tx, rx) = request_channel::<u32>(1);
        assert!(take::<u32, _>(rx).is_ok());
        let other = futures_util::stream::iter([1u32]);
        assert!(take::<u32, _>(other).is_err());
        let (_tx, rx) = request_channel::<u64>(1);
        assert!(take::<u32, _>(rx).is_err(), "a channel of another type");
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
