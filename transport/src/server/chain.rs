//! A server call through the server's middleware: its head and request messages handed to
//! the chain, and at the chain's end the handler, whose typed messages are decoded from and
//! encoded to what the chain passes.

use std::{
    future::Future,
    marker::PhantomData,
    sync::{Arc, Mutex},
};

use anygrpc_codec::Codec;
use anygrpc_rt::{BoxFuture, Runtime};
use futures_util::{FutureExt, StreamExt};

use super::respond::Body;
use crate::{
    cancel::CancelToken,
    middleware::{encode, Call, Endpoint, Messages, Reply},
    sync::lock,
    Request, Response, Status, Streaming,
};

/// The handler at the end of a server's chain. It runs at most once.
pub(super) struct Handler<C: Codec, F, Fut, R> {
    pub(super) codec: C,
    pub(super) handler: Mutex<Option<F>>,
    pub(super) body: fn(R) -> Body<C::Encode>,
    /// Cancelled when the call ends, for the handler's context.
    pub(super) ended: CancelToken,
    pub(super) clock: Arc<dyn Runtime>,
    pub(super) _future: PhantomData<fn() -> Fut>,
}

impl<C, F, Fut, R> Endpoint for Handler<C, F, Fut, R>
where
    C: Codec + Clone,
    F: FnOnce(Request<Streaming<C::Decode>>) -> Fut + Send,
    Fut: Future<Output = Result<Response<R>, Status>> + Send,
{
    fn call(&self, call: Call) -> BoxFuture<'_, Reply> {
        let Some(handler) = lock(&self.handler).take() else {
            let status = Status::internal("a middleware ran the handler a second time");
            return Box::pin(std::future::ready(Err(status)));
        };
        let (head, messages) = call.into_parts();
        let request = Request::from_server_parts(
            Streaming::relay(Box::new(messages), self.codec.clone()),
            head.metadata,
            head.extensions,
            head.deadline.map(|d| (d, self.clock.clone())),
            head.remote_addr,
            head.authority,
            self.ended.clone(),
        );
        let codec = self.codec.clone();
        let body = self.body;
        Box::pin(handler(request).map(move |outcome| {
            outcome?.try_map(|message| match body(message) {
                Body::One(message) => Ok(Messages::one(encode(&codec, message)?)),
                Body::Stream(stream) => {
                    Ok(Messages::from_stream(stream.map(move |message| {
                        message.and_then(|m| encode(&codec, m))
                    })))
                }
                Body::Encoded(messages) => Ok(messages),
            })
        }))
    }
}
