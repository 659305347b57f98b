//! The generic call API of [`Grpc`] that generated stubs use: a call's preparation (service
//! config, the request head), its four shapes, and its count in channelz and the
//! metrics.

use std::{future::Future, sync::Arc, time::Duration};

use anygrpc_codec::{
    frame::Encoder,
    headers::{self, RequestHead},
    Code, Codec,
};
use anygrpc_rt::Runtime;
use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::Either;
use http::uri::PathAndQuery;
use tracing::Instrument;

use super::{
    attempts::{attempt_request, replayable, Opened},
    buffer::Buffered,
    prepared::Prepared,
    response::{single_response, CallTracking, ClientSide},
    sender::{Encoding, LocalError, Replay},
    Channel, Grpc,
};
use crate::{
    channelz::CallTally,
    credentials::{self, CallCredentials, CallInfo},
    metrics::Measure,
    MetadataMap, Request, Response, Status, Streaming,
};

impl Grpc {
    /// Call options over `channel`, initially the channel's.
    pub fn new(channel: Channel) -> Grpc {
        Grpc {
            channel,
            stub: false,
            send_compression: None,
            max_recv_message_size: None,
            max_send_message_size: None,
        }
    }

    /// Marks the calls made through these options as a generated stub's: the metrics record
    /// their method names (`grpc.method`). Calls by any other path are recorded as `other`
    /// (gRFC A66), so arbitrary paths cannot grow the attribute's cardinality.
    pub fn generated_stub(mut self) -> Self {
        self.stub = true;
        self
    }

    /// Compresses request messages with `encoding` (overrides the channel's setting).
    pub fn send_compression(mut self, encoding: &'static str) -> Self {
        self.send_compression = Some(encoding);
        self
    }

    /// Limits response messages to `bytes` (overrides the channel's setting).
    pub fn max_recv_message_size(mut self, bytes: usize) -> Self {
        self.max_recv_message_size = Some(bytes);
        self
    }

    /// Limits request messages to `bytes` (overrides the channel's setting).
    pub fn max_send_message_size(mut self, bytes: usize) -> Self {
        self.max_send_message_size = Some(bytes);
        self
    }

    pub(super) fn runtime(&self) -> &Arc<dyn Runtime> {
        self.channel.inner.core.runtime()
    }

    /// Applies the method's service config and builds the request head.
    pub(super) async fn prepare<T>(
        &self,
        path: PathAndQuery,
        request: &mut Request<T>,
        tally: &CallTally,
    ) -> Result<Prepared, Status> {
        let inner = &self.channel.inner;
        let runtime = self.runtime();
        // The call's deadline counts from here, a wait for the resolver included.
        let started = runtime.now();
        // The deadline of a timeout from now, or the context's if it comes first.
        let context_deadline = request.deadline();
        let deadline_after = |timeout: Option<Duration>| {
            let own = timeout.map(|t| anygrpc_codec::timeout::deadline(started, t));
            match (own, context_deadline) {
                (Some(own), Some(context)) => Some(own.min(context)),
                (own, context) => own.or(context),
            }
        };
        let cancel = request.take_cancel_token();
        if !inner.core.resolved_once() {
            let deadline = deadline_after(request.timeout());
            let resolved = inner.core.first_resolution();
            self.bounded(deadline, cancel.as_ref(), resolved).await?;
        }
        let config = inner.core.call_config();
        let method = config.service_config.method(path.path());
        let metadata = std::mem::take(request.metadata_mut());
        let timeout = match (request.timeout(), method.and_then(|m| m.timeout)) {
            (Some(call), Some(method)) => Some(call.min(method)),
            (call, method) => call.or(method),
        };
        let wait_for_ready = request
            .wait_for_ready()
            .or(method.and_then(|m| m.wait_for_ready))
            .unwrap_or(false);
        let deadline = deadline_after(timeout);
        let credentials = match request.take_call_credentials() {
            Some(own) if own.requires_transport_security() && !inner.secure => {
                return Err(credentials::insecure());
            }
            own => credentials::compose(inner.call_credentials.clone(), own),
        };
        if metadata.encoded_len() > inner.call.max_header_list_size as usize {
            return Err(Status::resource_exhausted(format!(
                "request metadata of {} bytes exceeds the header list limit of {} bytes",
                metadata.encoded_len(),
                inner.call.max_header_list_size
            )));
        }
        let encoding = self.send_compression.or(inner.call.send_compression);
        let compressor = match encoding {
            None => None,
            Some(name) => Some(inner.call.compression.get(name).cloned().ok_or_else(|| {
                Status::internal(format!("send compression {name:?} is not registered"))
            })?),
        };
        let request = RequestHead {
            scheme: inner.scheme.clone(),
            authority: inner.authority.clone(),
            path,
            encoding,
            accept_encoding: inner.call.compression.accept_encoding().clone(),
            user_agent: inner.user_agent.clone(),
            metadata,
        }
        .into_request()?;
        let limit = |call: Option<usize>, channel: usize, method: Option<usize>| {
            let limit = call.unwrap_or(channel);
            method.map_or(limit, |m| m.min(limit))
        };
        Ok(Prepared {
            request,
            deadline,
            cancel,
            wait_for_ready,
            encoder: Encoder::new(
                compressor,
                limit(
                    self.max_send_message_size,
                    inner.call.max_send_message_size,
                    method.and_then(|m| m.max_request_message_bytes),
                ),
            )
            .with_pool(inner.call.frame_pool.clone()),
            compress: encoding.is_some(),
            max_recv_message_size: limit(
                self.max_recv_message_size,
                inner.call.max_recv_message_size,
                method.and_then(|m| m.max_response_message_bytes),
            ),
            policy: method.and_then(|m| m.attempts.clone()),
            throttle: config.throttle.clone(),
            measure: tally.measure().cloned(),
            credentials,
        })
    }

    /// Picks a connection and opens an attempt's stream, sending `request()` as its headers
    /// (made again if the stream has to be opened on another connection).
    pub(super) async fn open(
        &self,
        call: &Prepared,
        request: impl Fn() -> http::Request<()>,
    ) -> Result<Opened, Status> {
        let mut request_head = Some(request());
        let inner = &self.channel.inner;
        let credentials = match &call.credentials {
            Some(credentials) => Some(self.ask(&**credentials, call).await?.into_headers()),
            None => None,
        };
        // A connection found closing (GOAWAY) or gone before the stream opens never saw the
        // call, so the call picks again, as often as it takes (a transparent retry, gRFC A6;
        // the caller bounds the call by its deadline). The closed connection is taken out of
        // the picker first, so each new try waits for another connection.
        let (picked, response, send) = loop {
            let picked = inner.core.pick(&call.request, call.wait_for_ready).await?;
            // GOAWAY may arrive between `ready` and `send_request`: both mean "pick again".
            let opened = match picked.send.clone().ready().await {
                Ok(mut ready) => {
                    let mut head = request_head.take().unwrap_or_else(&request);
                    if let Some(credentials) = &credentials {
                        let headers = head.headers_mut();
                        for (key, value) in credentials {
                            headers.append(key, value.clone());
                        }
                    }
                    if let Some(deadline) = call.deadline {
                        let left = deadline.saturating_duration_since(self.runtime().now());
                        headers::set_timeout(head.headers_mut(), left);
                    }
                    ready.send_request(head, false)
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok((response, send)) => break (picked, response, send),
                Err(e) => {
                    picked.subchannel.closed(picked.generation);
                    if !(e.is_go_away() || e.is_io()) {
                        return Err(crate::streaming::status_from_h2(&e, false));
                    }
                }
            }
        };
        let tracking = CallTracking {
            observation: picked.observation,
            throttle: call.throttle.clone(),
            _active: Some(inner.core.call_started()),
            channelz: Some(
                picked
                    .subchannel
                    .channelz
                    .calls
                    .start(picked.streams.as_ref())
                    .measured(call.measure.as_ref().and_then(Measure::attempt)),
            ),
        };
        Ok(Opened {
            send,
            response,
            tracking,
        })
    }

    /// Asks `credentials` for an attempt's metadata, with the service URL and the method.
    async fn ask(
        &self,
        credentials: &dyn CallCredentials,
        call: &Prepared,
    ) -> Result<MetadataMap, Status> {
        let inner = &self.channel.inner;
        let path = call.request.uri().path();
        let service = path.rfind('/').map_or(path, |at| &path[..at]);
        let authority = inner.authority.as_str();
        let host = authority.strip_suffix(":443").unwrap_or(authority);
        let info = CallInfo::new(
            format!("https://{host}{service}"),
            path,
            self.runtime().now(),
        );
        credentials
            .metadata(&info)
            .await
            .map_err(credentials::failed)
    }

    /// A unary call: one request message, one response message. Retried or hedged as the
    /// method's service config says.
    pub fn unary<C: Codec + Clone>(
        &self,
        path: PathAndQuery,
        codec: C,
        request: Request<C::Encode>,
    ) -> impl Future<Output = Result<Response<C::Decode>, Status>> + Send + '_ {
        match self.has_middleware() {
            true => Either::Left(self.unary_chained(path, codec, request)),
            false => Either::Right(self.unary_direct(path, codec, request)),
        }
    }

    /// [`unary`](Self::unary) with no middleware.
    pub(super) async fn unary_direct<C: Codec + Clone>(
        &self,
        path: PathAndQuery,
        codec: C,
        request: Request<C::Encode>,
    ) -> Result<Response<C::Decode>, Status> {
        let (span, tally) = self.start_call(&path);
        let outcome = async {
            let (call, frame, held) = self.prepare_single(path, &codec, request, &tally).await?;
            let call = &call;
            let exchange = async {
                let mut streaming = self
                    .run_attempts(
                        call,
                        || replayable(call, &held),
                        |previous| self.single_attempt(call, &frame, &codec, previous, false),
                    )
                    .await?;
                single_response(&mut streaming).await
            };
            self.bounded(call.deadline, call.cancel.as_ref(), exchange)
                .await?
        }
        .instrument(span)
        .await;
        counted(tally, outcome)
    }

    /// A server-streaming call: one request message, a stream of responses. Retried or hedged
    /// until the response head arrives, as the method's service config says.
    pub fn server_streaming<C: Codec + Clone>(
        &self,
        path: PathAndQuery,
        codec: C,
        request: Request<C::Encode>,
    ) -> impl Future<Output = Result<Response<Streaming<C::Decode>>, Status>> + Send + '_ {
        match self.has_middleware() {
            true => Either::Left(self.server_streaming_chained(path, codec, request)),
            false => Either::Right(self.server_streaming_direct(path, codec, request)),
        }
    }

    /// [`server_streaming`](Self::server_streaming) with no middleware.
    pub(super) async fn server_streaming_direct<C: Codec + Clone>(
        &self,
        path: PathAndQuery,
        codec: C,
        request: Request<C::Encode>,
    ) -> Result<Response<Streaming<C::Decode>>, Status> {
        let (span, tally) = self.start_call(&path);
        let outcome = async {
            let (call, frame, held) = self.prepare_single(path, &codec, request, &tally).await?;
            let call = &call;
            let attempts = self.run_attempts(
                call,
                || replayable(call, &held),
                |previous| self.single_attempt(call, &frame, &codec, previous, true),
            );
            self.bounded(call.deadline, call.cancel.as_ref(), attempts)
                .await?
        }
        .instrument(span)
        .await;
        let streaming = counted_by_stream(tally, outcome)?;
        // The header metadata both in the response and in the stream, whose `headers` the
        // docs promise.
        Ok(Response::from_parts(
            streaming.header_map().clone(),
            streaming,
            MetadataMap::new(),
        ))
    }

    /// Prepares a single-message request's call and encodes its message once, for every
    /// attempt. The frame is held in the retry buffer if the call has a retry or hedging policy
    /// and it fits; without that hold the call makes one attempt.
    pub(super) async fn prepare_single<C: Codec>(
        &self,
        path: PathAndQuery,
        codec: &C,
        mut request: Request<C::Encode>,
        tally: &CallTally,
    ) -> Result<(Prepared, Bytes, Option<Buffered>), Status> {
        let mut call = self.prepare(path, &mut request, tally).await?;
        let frame = call
            .encoder
            .encode(codec, request.into_inner(), call.compress)?;
        let held = match call.policy {
            Some(_) => {
                let mut held = Buffered::new(&self.channel);
                held.grow(frame.len()).then_some(held)
            }
            None => None,
        };
        Ok((call, frame, held))
    }

    /// Starts a streaming-request call: its request task, and its attempt. Without a retry
    /// or hedging policy the call has one attempt (with the transparent retries of
    /// [`open`](Self::open)) and returns once its stream is open; with one, the request task
    /// keeps what it sent for replay and the call returns once it commits to an attempt.
    /// `stream_limits` as for [`attempt`](Self::attempt).
    pub(super) async fn stream_call<C, S>(
        &self,
        call: &Prepared,
        encoding: Encoding<C>,
        messages: S,
        stream_limits: bool,
    ) -> Result<Streaming<C::Decode>, Status>
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        let runtime = &**self.runtime();
        let codec = encoding.codec.clone();
        if call.policy.is_none() {
            let opened = self
                .open(call, || attempt_request(&call.request, 0))
                .await?;
            let traffic = opened.tracking.traffic();
            let error = LocalError::default();
            let mut streaming = self.attempt_response(
                call,
                opened.response,
                opened.tracking,
                &codec,
                stream_limits,
                Some(error.clone()),
            );
            let send = opened.send;
            let hold = match super::requests::take(messages) {
                Ok(channel) => super::sender::attach(channel, send, traffic, encoding, error),
                Err(messages) => {
                    super::sender::spawn(runtime, send, traffic, encoding, messages, error)
                }
            };
            hold_request(&mut streaming, hold);
            return Ok(streaming);
        }
        let replay = Replay::start(runtime, encoding, messages, Buffered::new(&self.channel));
        let (id, mut streaming) = self
            .run_attempts(
                call,
                || replay.replayable(),
                |previous| {
                    self.attempt(call, &codec, previous, stream_limits, |stream, traffic| {
                        let (id, error) = replay.attach(stream, traffic);
                        (id, Some(error))
                    })
                },
            )
            .await?;
        hold_request(&mut streaming, replay.commit(id));
        Ok(streaming)
    }

    /// A client-streaming call: a stream of requests, one response. Retried or hedged until
    /// the response head arrives, as the method's service config says.
    pub fn client_streaming<C, S>(
        &self,
        path: PathAndQuery,
        codec: C,
        request: Request<S>,
    ) -> impl Future<Output = Result<Response<C::Decode>, Status>> + Send + '_
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        match self.has_middleware() {
            true => Either::Left(self.client_streaming_chained(path, codec, request)),
            false => Either::Right(self.client_streaming_direct(path, codec, request)),
        }
    }

    /// [`client_streaming`](Self::client_streaming) with no middleware.
    pub(super) async fn client_streaming_direct<C, S>(
        &self,
        path: PathAndQuery,
        codec: C,
        mut request: Request<S>,
    ) -> Result<Response<C::Decode>, Status>
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        let (span, tally) = self.start_call(&path);
        let outcome = async {
            let mut call = self.prepare(path, &mut request, &tally).await?;
            let encoding = call.take_encoding(codec);
            let call = &call;
            let exchange = async {
                let mut streaming = self
                    .stream_call(call, encoding, request.into_inner(), false)
                    .await?;
                streaming.headers().await?;
                single_response(&mut streaming).await
            };
            self.bounded(call.deadline, call.cancel.as_ref(), exchange)
                .await?
        }
        .instrument(span)
        .await;
        counted(tally, outcome)
    }

    /// A bidirectional-streaming call: requests and responses flow independently. Retried or
    /// hedged until the response head arrives, as the method's service config says.
    ///
    /// The server may wait for requests before it answers, so the call returns once its
    /// stream is open (under a retry policy, at once: its attempts run in a task of their
    /// own); the response head is read with the first message, or with
    /// [`Streaming::headers`].
    pub fn streaming<C, S>(
        &self,
        path: PathAndQuery,
        codec: C,
        request: Request<S>,
    ) -> impl Future<Output = Result<Response<Streaming<C::Decode>>, Status>> + Send + '_
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        match self.has_middleware() {
            true => Either::Left(self.streaming_chained(path, codec, request)),
            false => Either::Right(self.streaming_direct(path, codec, request)),
        }
    }

    /// [`streaming`](Self::streaming) with no middleware.
    pub(super) async fn streaming_direct<C, S>(
        &self,
        path: PathAndQuery,
        codec: C,
        mut request: Request<S>,
    ) -> Result<Response<Streaming<C::Decode>>, Status>
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        let (span, tally) = self.start_call(&path);
        let outcome = async {
            let mut call = self.prepare(path, &mut request, &tally).await?;
            let encoding = call.take_encoding(codec.clone());
            let messages = request.into_inner();
            if call.policy.is_none() {
                let start = self.stream_call(&call, encoding, messages, true);
                return self
                    .bounded(call.deadline, call.cancel.as_ref(), start)
                    .await?;
            }
            let (mut committed, receiver) = futures_channel::oneshot::channel();
            let grpc = self.clone();
            self.runtime().spawn(Box::pin(async move {
                let start = grpc.stream_call(&call, encoding, messages, true);
                let start = grpc.bounded(call.deadline, call.cancel.as_ref(), start);
                let start = std::pin::pin!(start);
                // The caller dropping the response stream cancels the attempts.
                let outcome = {
                    let dropped = std::pin::pin!(committed.cancellation());
                    match futures_util::future::select(start, dropped).await {
                        Either::Left((outcome, _)) => Some(outcome.and_then(|started| started)),
                        Either::Right(_) => None,
                    }
                };
                if let Some(outcome) = outcome {
                    let _ = committed.send(outcome);
                }
            }));
            Ok(Streaming::committing(receiver, codec))
        }
        .instrument(span)
        .await;
        counted_by_stream(tally, outcome).map(Response::new)
    }

    /// Starts a call to `path`: its span (debug level: with no subscriber that wants it, a
    /// check of a cached interest and nothing else), and its count in the channel's channelz
    /// entry and metrics, which [`counted`] or [`counted_by_stream`] ends.
    pub(super) fn start_call(&self, path: &PathAndQuery) -> (tracing::Span, CallTally) {
        let inner = &self.channel.inner;
        let measure = inner
            .metrics
            .as_ref()
            .map(|metrics| metrics.client_call(path.path(), self.stub, &inner.canonical_target));
        let tally = inner.core.channelz.calls.start(None).measured(measure);
        (
            tracing::debug_span!("grpc.client.call", method = path.path()),
            tally,
        )
    }
}

/// Ends a call's count (channelz and metrics) with its outcome, whatever step it failed at.
pub(super) fn counted<T>(mut tally: CallTally, outcome: Result<T, Status>) -> Result<T, Status> {
    tally.end(match &outcome {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    });
    outcome
}

/// [`counted`] for a call whose response is a stream: once it is open, the stream holds the
/// count and ends it with the call.
pub(super) fn counted_by_stream<T>(
    tally: CallTally,
    outcome: Result<Streaming<T>, Status>,
) -> Result<Streaming<T>, Status> {
    match outcome {
        Ok(mut streaming) => {
            streaming.count_call(tally);
            Ok(streaming)
        }
        Err(status) => counted(tally, Err(status)),
    }
}

/// Keeps the call sending its requests for as long as `streaming`, its response stream, is
/// open.
fn hold_request<T>(streaming: &mut Streaming<T>, hold: super::sender::RequestHold) {
    if let Some(side) = streaming.side_mut::<ClientSide>() {
        side.hold_request(hold);
    }
}
