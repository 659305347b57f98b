//! Interceptors: code that runs on every call before it goes out (client) or before its
//! handler runs (server), to add or check metadata, authenticate, or reject the call.
//!
//! Both sides take a synchronous [`Interceptor`] (any `Fn(&mut CallHead) -> Result<(), Status>`
//! closure) or an [`AsyncInterceptor`] for work that awaits (token refresh, a remote check).
//! Interceptors run in the order they were added; the first error ends the call with that
//! status.

use std::{fmt, sync::Arc, time::Instant};

use futures_core::future::BoxFuture;

use crate::{rt::Address, MetadataMap, Status};

/// What an interceptor sees of a call.
#[derive(Debug)]
pub struct CallHead {
    pub(crate) path: http::uri::PathAndQuery,
    pub(crate) metadata: MetadataMap,
    pub(crate) extensions: http::Extensions,
    pub(crate) deadline: Option<Instant>,
    pub(crate) remote_addr: Option<Address>,
}

impl CallHead {
    /// The method path, `/package.Service/Method`.
    pub fn path(&self) -> &str {
        self.path.path()
    }

    /// The call's metadata: client, what will be sent; server, what was received.
    pub fn metadata(&self) -> &MetadataMap {
        &self.metadata
    }

    /// Mutable metadata.
    pub fn metadata_mut(&mut self) -> &mut MetadataMap {
        &mut self.metadata
    }

    /// Server: values for the handler to find in [`Request::extensions`](crate::Request).
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }

    /// The call's deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Server: the peer's address.
    pub fn remote_addr(&self) -> Option<&Address> {
        self.remote_addr.as_ref()
    }
}

/// A synchronous interceptor.
pub trait Interceptor: Send + Sync + 'static {
    /// Inspects or changes the call; an error ends the call with that status.
    fn intercept(&self, call: &mut CallHead) -> Result<(), Status>;
}

impl<F> Interceptor for F
where
    F: Fn(&mut CallHead) -> Result<(), Status> + Send + Sync + 'static,
{
    fn intercept(&self, call: &mut CallHead) -> Result<(), Status> {
        self(call)
    }
}

/// An interceptor that may await.
pub trait AsyncInterceptor: Send + Sync + 'static {
    /// Inspects or changes the call; an error ends the call with that status.
    fn intercept<'a>(&'a self, call: &'a mut CallHead) -> BoxFuture<'a, Result<(), Status>>;
}

#[derive(Clone)]
pub(crate) enum AnyInterceptor {
    Sync(Arc<dyn Interceptor>),
    Async(Arc<dyn AsyncInterceptor>),
}

impl fmt::Debug for AnyInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnyInterceptor::Sync(_) => "Interceptor",
            AnyInterceptor::Async(_) => "AsyncInterceptor",
        })
    }
}

/// Runs interceptors in order; stops at the first error.
pub(crate) async fn run(
    interceptors: &[AnyInterceptor],
    call: &mut CallHead,
) -> Result<(), Status> {
    for interceptor in interceptors {
        match interceptor {
            AnyInterceptor::Sync(i) => i.intercept(call)?,
            AnyInterceptor::Async(i) => i.intercept(call).await?,
        }
    }
    Ok(())
}
