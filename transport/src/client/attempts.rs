//! A call's attempts: the gRFC A6 retry and hedging driver, and one attempt's stream.

use std::{sync::Arc, time::Instant};

use anygrpc_codec::{headers::GRPC_PREVIOUS_RPC_ATTEMPTS, Codec};
use anygrpc_lb::{AttemptPolicy, Attempts, Decision, Pushback};
use bytes::Bytes;
use futures_util::{
    future::{Either, FutureExt},
    stream::FuturesUnordered,
    StreamExt,
};
use http::HeaderValue;
use tracing::Instrument;

use super::{
    buffer::Buffered,
    prepared::Prepared,
    response::{AttemptEnd, CallTracking, ClientSide},
    sender::LocalError,
    CancelToken, Grpc,
};
use crate::{
    limits::{Bounded, Cut, Deadline},
    metrics::{Another, Traffic},
    Status, Streaming,
};

/// An attempt's open stream.
pub(super) struct Opened {
    pub(super) send: h2::SendStream<Bytes>,
    pub(super) response: h2::client::ResponseFuture,
    pub(super) tracking: CallTracking,
}

/// How an attempt failed: its status, and what the retry driver needs to know about it.
pub(super) type AttemptFailure = (Status, AttemptEnd);

impl Grpc {
    /// One attempt: opens a stream (telling the server how many attempts came before), hands
    /// its request side to `send`, and waits for the response head. `send` returns what the
    /// caller keeps of the attempt and, if a task sends the request, where it records a
    /// failure. With `stream_limits` the returned stream enforces the call's deadline and
    /// cancellation itself (it outlives the call's `bounded` scope: server streaming, bidi).
    pub(super) async fn attempt<C: Codec + Clone, K>(
        &self,
        call: &Prepared,
        codec: &C,
        previous: u32,
        stream_limits: bool,
        send: impl FnOnce(h2::SendStream<Bytes>, Option<Arc<Traffic>>) -> (K, Option<LocalError>),
    ) -> Result<(K, Streaming<C::Decode>), AttemptFailure> {
        let span = tracing::debug_span!("grpc.client.attempt", previous);
        async move {
            let opened = self
                .open(call, || attempt_request(&call.request, previous))
                .await
                .map_err(|status| (status, AttemptEnd::default()))?;
            let traffic = opened.tracking.traffic();
            let (kept, local_error) = send(opened.send, traffic);
            let mut streaming = self.attempt_response(
                call,
                opened.response,
                opened.tracking,
                codec,
                stream_limits,
                local_error,
            );
            match streaming.headers().await {
                Ok(_) => Ok((kept, streaming)),
                Err(status) => {
                    let end = streaming
                        .side_mut::<ClientSide>()
                        .map(ClientSide::attempt_end);
                    Err((status, end.unwrap_or_default()))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt of a call with a single request message, `frame`.
    pub(super) async fn single_attempt<C: Codec + Clone>(
        &self,
        call: &Prepared,
        frame: &Bytes,
        codec: &C,
        previous: u32,
        stream_limits: bool,
    ) -> Result<Streaming<C::Decode>, AttemptFailure> {
        // The whole request is one frame, already in memory, so it is queued at once rather
        // than after waiting for send capacity (h2 sends it as the peer's window allows; that
        // saves three of h2's stream locks per call). A send failure (stream reset,
        // connection lost) also fails the response, which carries the status that explains
        // it.
        let send = |mut stream: h2::SendStream<Bytes>, traffic: Option<Arc<Traffic>>| {
            if let Some(traffic) = traffic {
                traffic.sent_frames(frame);
            }
            let _ = stream.send_data(frame.clone(), true);
            ((), None)
        };
        let ((), streaming) = self
            .attempt(call, codec, previous, stream_limits, send)
            .await?;
        Ok(streaming)
    }

    /// Makes a call's attempts until one commits (its response head arrives) or the call
    /// fails, following the method's retry or hedging policy (gRFC A6; the decisions are
    /// [`Attempts`]'). `attempt(previous)` makes one attempt; `replayable()` says whether a
    /// new attempt can still be sent the whole request (a request that outgrew the retry
    /// buffer commits the call: no attempt starts after that).
    pub(super) async fn run_attempts<A, F, Fut>(
        &self,
        call: &Prepared,
        replayable: impl Fn() -> bool,
        mut attempt: F,
    ) -> Result<A, Status>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<A, AttemptFailure>>,
    {
        let Some(policy) = call.policy.clone().filter(|_| replayable()) else {
            // One attempt, and one more at once if its stream was refused.
            let mut refused_retry = true;
            loop {
                match attempt(0).await {
                    Err((_, end)) if end.refused && refused_retry && replayable() => {
                        refused_retry = false;
                        call.another_attempt(Another::Transparent);
                    }
                    outcome => return outcome.map_err(|(status, _)| status),
                }
            }
        };
        // Boxed: the policy's state would otherwise enlarge every call's future.
        Box::pin(self.follow_policy(call, policy, replayable, attempt)).await
    }

    /// [`run_attempts`](Self::run_attempts) under a retry or hedging policy.
    pub(super) async fn follow_policy<A, F, Fut>(
        &self,
        call: &Prepared,
        policy: AttemptPolicy,
        replayable: impl Fn() -> bool,
        mut attempt: F,
    ) -> Result<A, Status>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<A, AttemptFailure>>,
    {
        let runtime = self.runtime();
        let throttle = call.throttle.as_deref();
        let mut attempts =
            Attempts::new(Some(policy), self.channel.inner.max_attempts, runtime.now());
        let mut rng = fastrand::Rng::new();
        let mut running = FuturesUnordered::new();
        let mut last_failure = None;
        loop {
            if !replayable() {
                attempts.commit();
            }
            let now = runtime.now();
            while attempts.next_attempt_at().is_some_and(|at| at <= now) {
                if let Some(previous) = attempts.start_attempt(now, throttle) {
                    if previous > 0 {
                        call.another_attempt(match call.policy {
                            Some(AttemptPolicy::Hedging(_)) => Another::Hedge,
                            _ => Another::Retry,
                        });
                    }
                    running.push(attempt(previous));
                }
            }
            let due = attempts.next_attempt_at();
            if running.is_empty() {
                // Waiting out a backoff or pushback; nothing in flight.
                match due {
                    Some(at) => {
                        if let Some(measured) = call.measured() {
                            measured.waited(at.saturating_duration_since(now));
                        }
                        runtime.sleep_until(at).await
                    }
                    None => {
                        return Err(last_failure.unwrap_or_else(|| {
                            Status::unavailable("the retry throttle allowed no attempt")
                        }))
                    }
                }
                continue;
            }
            let timer = match due {
                Some(at) => Either::Left(runtime.sleep_until(at)),
                None => Either::Right(std::future::pending::<()>()),
            };
            let Either::Left((Some(outcome), _)) =
                futures_util::future::select(running.next(), timer).await
            else {
                continue;
            };
            let (status, end) = match outcome {
                // Committed: the other attempts are dropped, which cancels them.
                Ok(committed) => return Ok(committed),
                Err(failure) => failure,
            };
            if !replayable() {
                attempts.commit();
            }
            if end.refused && replayable() && attempts.refused() {
                call.another_attempt(Another::Transparent);
                running.push(attempt(attempts.started().saturating_sub(1)));
                continue;
            }
            let pushback = Pushback::parse(end.pushback.as_ref().map(HeaderValue::as_bytes));
            let now = runtime.now();
            if attempts.on_failure(now, status.code(), pushback, throttle, &mut rng)
                == Decision::Fail
            {
                return Err(status);
            }
            last_failure = Some(status);
        }
    }

    /// Runs part of a call until the deadline (`DEADLINE_EXCEEDED`) or cancellation
    /// (`CANCELLED`), whichever comes first.
    pub(super) fn bounded<F: std::future::Future>(
        &self,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
        work: F,
    ) -> impl std::future::Future<Output = Result<F::Output, Status>> {
        let deadline = Deadline::new(&**self.runtime(), deadline);
        Bounded::new(work, deadline, cancel.map(CancelToken::cancelled))
            .map(|done| done.map_err(Cut::client_status))
    }
}

/// Whether a single-message request can be sent again: always without a policy (the call
/// holds its one frame for the refused-stream retry), under one while it is in the retry
/// buffer.
pub(super) fn replayable(call: &Prepared, held: &Option<Buffered>) -> bool {
    call.policy.is_none() || held.is_some()
}

/// A copy of a call's request head for one attempt, saying how many attempts came before.
pub(super) fn attempt_request(head: &http::Request<()>, previous: u32) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.method_mut() = head.method().clone();
    *request.uri_mut() = head.uri().clone();
    *request.headers_mut() = head.headers().clone();
    if previous > 0 {
        request
            .headers_mut()
            .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(previous));
    }
    request
}
