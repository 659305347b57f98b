//! What a handler passes on to the calls it makes: its deadline, its cancellation and the
//! metadata it chooses, as grpc-go carries them in `ctx` and the C-core in its propagation
//! bits (deadline and cancellation on by default).

use std::time::Instant;

use crate::{client::CancelToken, MetadataMap};

/// A call's context, for the calls made on its behalf.
///
/// A handler gets its call's context from [`Request::context`](crate::Request::context) and
/// gives it to each outgoing request with
/// [`Request::set_context`](crate::Request::set_context). An outgoing call made under it
///
/// - ends by the context's deadline (the time the caller has left; an earlier timeout of its
///   own still holds), sent on as its `grpc-timeout`;
/// - ends `CANCELLED` as soon as the context's call ends, however it ends: its client
///   cancels, its deadline passes, or the handler returns (so a call spawned and forgotten
///   does not outlive the call it was made for);
/// - carries the context's metadata, for keys it does not set itself.
///
/// [`without_deadline`](Self::without_deadline) and
/// [`without_cancellation`](Self::without_cancellation) turn either off.
///
/// ```
/// # async fn handler(request: anygrpc::Request<()>) {
/// let mut context = request.context();
/// if let Some(trace) = request.metadata().get("x-trace-id") {
///     context.metadata_mut().insert("x-trace-id", trace).unwrap();
/// }
/// let mut outgoing = anygrpc::Request::new(());
/// outgoing.set_context(&context);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    deadline: Option<Instant>,
    cancel: Option<CancelToken>,
    metadata: MetadataMap,
}

impl CallContext {
    /// A context of no call: no deadline, no cancellation, no metadata. Set them to start a
    /// tree of calls from outside a handler.
    pub fn new() -> CallContext {
        CallContext::default()
    }

    pub(crate) fn of_call(deadline: Option<Instant>, cancel: Option<CancelToken>) -> Self {
        CallContext {
            deadline,
            cancel,
            metadata: MetadataMap::new(),
        }
    }

    /// The instant calls made under the context end by, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Calls made under the context end by `deadline` (the earlier one, if it has one).
    pub fn with_deadline(mut self, deadline: Instant) -> CallContext {
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
        self
    }

    /// Calls made under the context keep only their own deadlines.
    pub fn without_deadline(mut self) -> CallContext {
        self.deadline = None;
        self
    }

    /// What cancels the calls made under the context, if anything.
    pub fn cancel_token(&self) -> Option<&CancelToken> {
        self.cancel.as_ref()
    }

    /// Whether the context's call has ended (or its token was cancelled).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
    }

    /// Calls made under the context are also cancelled by `token`.
    pub fn with_cancel_token(mut self, token: CancelToken) -> CallContext {
        self.cancel = CancelToken::either(self.cancel.take(), Some(token));
        self
    }

    /// Calls made under the context are not cancelled with it.
    pub fn without_cancellation(mut self) -> CallContext {
        self.cancel = None;
        self
    }

    /// The metadata calls made under the context carry. Empty unless set: which of a call's
    /// metadata goes on is the handler's choice (a trace id, not an authorization header).
    pub fn metadata(&self) -> &MetadataMap {
        &self.metadata
    }

    /// Mutable metadata.
    pub fn metadata_mut(&mut self) -> &mut MetadataMap {
        &mut self.metadata
    }
}
