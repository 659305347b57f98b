//! Sending a streaming call's request messages: the request task, and the way an attached
//! request channel (`requests.rs`) writes to the call's stream without one.
//!
//! The task reads the caller's message stream, encodes what is ready into one frame at a time, and
//! writes each frame to the call's attempts. Under a retry or hedging policy (gRFC A6) the
//! frames also stay in the retry buffer until the call commits, so that a new attempt can be
//! sent everything from the start: the retry driver [`attach`](Replay::attach)es each
//! attempt's stream and, once one attempt's response head arrives,
//! [`commit`](Replay::commit)s to it. A request that outgrows the buffer commits the call.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use anygrpc_codec::{frame::Encoder, Codec};
use anygrpc_rt::Runtime;
use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use futures_core::Stream;
use futures_util::{future::Either, StreamExt};

use super::{
    buffer::Buffered,
    prepared::Prepared,
    requests::{AttachedHold, Link, RequestClosed, RequestStream},
};
use crate::{
    metrics::Traffic,
    send::{append_ready, poll_capacity, reserve, Gathered},
    Status,
};

/// What a call's message encoding needs.
pub(super) struct Encoding<C> {
    pub(super) codec: C,
    pub(super) encoder: Encoder,
    pub(super) compress: bool,
}

/// A failure recorded by the task sending a client's request stream, reported to the caller
/// in place of the stream reset it causes.
pub(crate) type LocalError = Arc<Mutex<Option<Status>>>;

impl Prepared {
    /// Moves the call's message encoding out, for its request task.
    pub(super) fn take_encoding<C>(&mut self, codec: C) -> Encoding<C> {
        Encoding {
            codec,
            encoder: std::mem::replace(&mut self.encoder, Encoder::new(None, 0)),
            compress: self.compress,
        }
    }
}

/// What a call's response stream holds of its request side. Dropping it (the call ended)
/// stops the request task, or closes the attached request channel; either releases the
/// request stream.
pub(crate) enum RequestHold {
    /// Held for its `Drop`: stops the task.
    Task { _stop: oneshot::Sender<()> },
    /// Held for its `Drop`: closes the channel.
    Channel { _hold: AttachedHold },
}

/// Spawns the task sending `messages` on a call's only attempt, which runs until the returned
/// hold is dropped; `error` receives the status of a request stream that failed (the stream is
/// then reset).
pub(super) fn spawn<C, S>(
    runtime: &dyn Runtime,
    send: h2::SendStream<Bytes>,
    traffic: Option<Arc<Traffic>>,
    encoding: Encoding<C>,
    messages: S,
    error: LocalError,
) -> RequestHold
where
    C: Codec,
    S: Stream<Item = C::Encode> + Send + 'static,
{
    let mut task = Task::new(encoding, messages, None);
    task.targets.push(Target::new(0, send, traffic, error));
    let (stop, stopped) = oneshot::channel();
    runtime.spawn(Box::pin(task.run(None, stopped)));
    RequestHold::Task { _stop: stop }
}

/// Sends a call's requests from an attached [`request_channel`](super::request_channel): the
/// caller's `send` encodes each message and queues it on the call's only attempt itself.
/// `error` as for [`spawn`].
pub(super) fn attach<C: Codec>(
    channel: RequestStream<C::Encode>,
    send: h2::SendStream<Bytes>,
    traffic: Option<Arc<Traffic>>,
    encoding: Encoding<C>,
    error: LocalError,
) -> RequestHold {
    let target = Target::new(0, send, traffic, error);
    RequestHold::Channel {
        _hold: channel.attach(Box::new(Direct { encoding, target })),
    }
}

/// An attached request channel's way to its call's stream.
struct Direct<C> {
    encoding: Encoding<C>,
    target: Target,
}

impl<C: Codec> Link<C::Encode> for Direct<C> {
    fn encode(&mut self, message: C::Encode) -> Result<Bytes, RequestClosed> {
        let Encoding {
            codec,
            encoder,
            compress,
        } = &mut self.encoding;
        match encoder.encode(codec, message, *compress) {
            Ok(frame) => {
                self.target.send.reserve_capacity(frame.len());
                Ok(frame)
            }
            Err(status) => {
                self.target.close(Some(&status));
                Err(RequestClosed)
            }
        }
    }

    fn poll_capacity(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RequestClosed>> {
        // A failed stream's response says why.
        poll_capacity(&mut self.target.send, cx).map_err(|_| RequestClosed)
    }

    fn send(&mut self, frame: Bytes) -> Result<(), RequestClosed> {
        self.target.send(frame).map_err(|_| RequestClosed)
    }

    fn close(&mut self) {
        self.target.close(None);
    }
}

/// The retry driver's handle on a call's request task.
pub(super) struct Replay {
    control: mpsc::UnboundedSender<Control>,
    overflowed: Arc<AtomicBool>,
    next_id: AtomicU64,
    /// Stops the task when dropped; handed to the attempt the call commits to.
    stop: oneshot::Sender<()>,
}

/// What the retry driver tells the task.
enum Control {
    /// A new attempt's stream, to be sent everything from the first message.
    Attempt(Target),
    /// The call committed to this attempt: the others' streams go, and frames are kept only
    /// until it has sent them.
    Commit(u64),
}

impl Replay {
    /// Spawns the task: it reads `messages` only while some attempt can take them, keeping
    /// what it read in `buffered` until the call commits.
    pub(super) fn start<C, S>(
        runtime: &dyn Runtime,
        encoding: Encoding<C>,
        messages: S,
        buffered: Buffered,
    ) -> Replay
    where
        C: Codec,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        let overflowed = Arc::new(AtomicBool::new(false));
        let buffer = RetryBuffer {
            held: buffered,
            overflowed: overflowed.clone(),
        };
        let task = Task::new(encoding, messages, Some(buffer));
        let (control, commands) = mpsc::unbounded();
        let (stop, stopped) = oneshot::channel();
        runtime.spawn(Box::pin(task.run(Some(commands), stopped)));
        Replay {
            control,
            overflowed,
            next_id: AtomicU64::new(0),
            stop,
        }
    }

    /// Whether a new attempt can still be sent the whole request: false once it outgrew the
    /// retry buffer (the call has then committed).
    pub(super) fn replayable(&self) -> bool {
        !self.overflowed.load(Ordering::Acquire)
    }

    /// Hands the task an attempt's stream. Returns the attempt's id, for
    /// [`commit`](Self::commit), and the slot where a failure of the request stream is
    /// recorded for that attempt.
    pub(super) fn attach(
        &self,
        send: h2::SendStream<Bytes>,
        traffic: Option<Arc<Traffic>>,
    ) -> (u64, LocalError) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let error = LocalError::default();
        // The task outlives the driver's handle, so the channel is open.
        let _ = self.control.unbounded_send(Control::Attempt(Target::new(
            id,
            send,
            traffic,
            error.clone(),
        )));
        (id, error)
    }

    /// Commits the call to attempt `id`. Returns what stops the task when dropped, for the
    /// committed attempt's response stream to hold.
    pub(super) fn commit(self, id: u64) -> RequestHold {
        let _ = self.control.unbounded_send(Control::Commit(id));
        RequestHold::Task { _stop: self.stop }
    }
}

/// An attempt's request stream.
struct Target {
    id: u64,
    send: h2::SendStream<Bytes>,
    /// The index of the next frame it is to send.
    next: u64,
    /// Where a failed request stream's status goes.
    error: LocalError,
    /// Its end of stream (or reset) is sent.
    closed: bool,
    /// Where the message bytes it sent are counted, if the attempt is measured.
    traffic: Option<Arc<Traffic>>,
}

impl Target {
    fn new(
        id: u64,
        send: h2::SendStream<Bytes>,
        traffic: Option<Arc<Traffic>>,
        error: LocalError,
    ) -> Target {
        Target {
            id,
            send,
            next: 0,
            error,
            closed: false,
            traffic,
        }
    }

    /// Queues a frame on the stream, counting its messages if the attempt is measured.
    fn send(&mut self, frame: Bytes) -> Result<(), h2::Error> {
        if let Some(traffic) = &self.traffic {
            traffic.sent_frames(&frame);
        }
        self.send.send_data(frame, false)
    }

    /// Ends the request stream: cleanly, or with a reset and `failure` recorded.
    fn close(&mut self, failure: Option<&Status>) {
        self.closed = true;
        match failure {
            None => {
                let _ = self.send.send_data(Bytes::new(), true);
            }
            Some(status) => {
                fail(&self.error, status.clone());
                self.send.send_reset(h2::Reason::CANCEL);
            }
        }
    }
}

fn fail(slot: &LocalError, status: Status) {
    if let Ok(mut slot) = slot.lock() {
        *slot = Some(status);
    }
}

/// The frames kept for replay until the call commits.
struct RetryBuffer {
    held: Buffered,
    overflowed: Arc<AtomicBool>,
}

struct Task<C, S> {
    encoding: Encoding<C>,
    messages: std::pin::Pin<Box<S>>,
    /// Frames not yet sent by every attempt (and, until the call commits, all of them).
    frames: VecDeque<Bytes>,
    /// The index of `frames[0]`.
    first: u64,
    /// How the message stream ended: `Some(None)` cleanly, `Some(Some(status))` failed.
    end: Option<Option<Status>>,
    targets: Vec<Target>,
    /// Present until the call commits.
    buffer: Option<RetryBuffer>,
}

impl<C, S> Task<C, S>
where
    C: Codec,
    S: Stream<Item = C::Encode> + Send + 'static,
{
    fn new(encoding: Encoding<C>, messages: S, buffer: Option<RetryBuffer>) -> Task<C, S> {
        Task {
            encoding,
            messages: Box::pin(messages),
            frames: VecDeque::new(),
            first: 0,
            end: None,
            targets: Vec::new(),
            buffer,
        }
    }

    /// Works until stopped, taking the driver's commands as they come.
    async fn run(
        mut self,
        mut commands: Option<mpsc::UnboundedReceiver<Control>>,
        stopped: oneshot::Receiver<()>,
    ) {
        let work = async {
            loop {
                let Some(control) = commands.as_mut() else {
                    self.advance().await;
                    continue;
                };
                let command = {
                    let advance = std::pin::pin!(self.advance());
                    match futures_util::future::select(advance, control.next()).await {
                        Either::Left(_) => continue,
                        Either::Right((command, _)) => command,
                    }
                };
                match command {
                    Some(command) => self.apply(command),
                    // The driver is done: the call committed or failed.
                    None => commands = None,
                }
            }
        };
        let work = std::pin::pin!(work);
        if let Either::Right(_) = futures_util::future::select(work, stopped).await {
            tracing::trace!("request stream stopped: call ended");
        }
    }

    fn apply(&mut self, command: Control) {
        match command {
            Control::Attempt(mut target) => {
                if self.first > 0 {
                    // Frames it would need are gone: the request outgrew the retry buffer
                    // while this attempt was starting.
                    let status = Status::unavailable(
                        "the request outgrew the retry buffer before this attempt could be sent it",
                    );
                    target.close(Some(&status));
                    return;
                }
                self.targets.push(target);
            }
            Control::Commit(id) => {
                self.buffer = None;
                self.targets.retain(|t| t.id == id);
                self.trim();
            }
        }
    }

    /// One step: a frame to an attempt behind the others, else the next frame read from the
    /// message stream, else each attempt's end of stream. Pending while nothing can be done
    /// (no attempt to send to, or everything sent). Cancel-safe.
    async fn advance(&mut self) {
        let end = self.first + self.frames.len() as u64;
        if let Some(i) = self.targets.iter().position(|t| t.next < end) {
            let index = (self.targets[i].next - self.first) as usize;
            let reserved = reserve(&mut self.targets[i].send, self.frames[index].len()).await;
            // Nothing below awaits, so the frame leaves the queue only once it is sent. The only
            // attempt of a call that keeps nothing for replay takes it: cloning `Bytes` made
            // from a `Vec` would allocate.
            let sent = reserved.and_then(|()| {
                let frame = if self.targets.len() == 1 && self.buffer.is_none() {
                    std::mem::take(&mut self.frames[index])
                } else {
                    self.frames[index].clone()
                };
                self.targets[i].send(frame)
            });
            match sent {
                Ok(()) => self.targets[i].next += 1,
                // The attempt failed; its response says why.
                Err(_) => drop(self.targets.swap_remove(i)),
            }
            self.trim();
            return;
        }
        match &self.end {
            Some(failure) => {
                for target in self.targets.iter_mut().filter(|t| !t.closed) {
                    target.close(failure.as_ref());
                }
                std::future::pending().await
            }
            None if self.targets.is_empty() => std::future::pending().await,
            None => self.read().await,
        }
    }

    /// Reads the next message and any others ready, as one frame.
    async fn read(&mut self) {
        let Encoding {
            codec,
            encoder,
            compress,
        } = &mut self.encoding;
        let failure = match self.messages.next().await {
            None => {
                self.end = Some(None);
                return;
            }
            Some(message) => match encoder.append(codec, message, *compress) {
                Err(status) => Some(status),
                Ok(()) => {
                    let mut ready = (&mut self.messages).map(Ok::<_, Status>);
                    match append_ready(encoder, codec, *compress, &mut ready) {
                        Gathered::More => None,
                        Gathered::End => {
                            self.end = Some(None);
                            None
                        }
                        Gathered::Fail(status) => Some(status),
                    }
                }
            },
        };
        if failure.is_some() {
            self.end = Some(failure);
        }
        if encoder.pending() > 0 {
            let frame = encoder.take();
            self.push(frame);
        }
    }

    /// Queues a frame for every attempt, keeping it for replay if the buffer has room; if not,
    /// the call commits.
    fn push(&mut self, frame: Bytes) {
        if let Some(buffer) = &mut self.buffer {
            if !buffer.held.grow(frame.len()) {
                buffer.overflowed.store(true, Ordering::Release);
                self.buffer = None;
                self.trim();
            }
        }
        self.frames.push_back(frame);
    }

    /// Once the call no longer keeps frames for replay, drops those every attempt has sent.
    fn trim(&mut self) {
        if self.buffer.is_some() {
            return;
        }
        let sent = self
            .targets
            .iter()
            .map(|t| t.next)
            .min()
            .unwrap_or(self.first + self.frames.len() as u64);
        while self.first < sent && self.frames.pop_front().is_some() {
            self.first += 1;
        }
    }
}
