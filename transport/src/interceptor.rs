//! Interceptors: middleware that sees only a call's head, to add or check metadata,
//! authenticate, or refuse the call, before it goes out (client) or before its handler runs
//! (server).
//!
//! Both sides take a synchronous [`Interceptor`] (any `Fn(&mut CallHead) -> Result<(), Status>`
//! closure) or an [`AsyncInterceptor`] for work that awaits (token refresh, a remote check).
//! Each is a [`Middleware`] that changes the head and calls
//! on, so it runs where it was added among the side's middleware; an error ends the call with
//! that status.

use futures_core::future::BoxFuture;

pub use crate::middleware::CallHead;
use crate::{
    middleware::{Call, Middleware, Next, Reply},
    Status,
};

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

/// An [`Interceptor`] as middleware (what the builders' `interceptor` adds).
#[derive(Debug, Clone, Copy)]
pub struct Head<I>(pub I);

impl<I: Interceptor> Middleware for Head<I> {
    fn call<'a>(&'a self, mut call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        match self.0.intercept(call.head_mut()) {
            Ok(()) => next.run(call),
            Err(status) => Box::pin(std::future::ready(Err(status))),
        }
    }
}

/// An [`AsyncInterceptor`] as middleware (what the builders' `async_interceptor` adds).
#[derive(Debug, Clone, Copy)]
pub struct AsyncHead<I>(pub I);

impl<I: AsyncInterceptor> Middleware for AsyncHead<I> {
    fn call<'a>(&'a self, mut call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            self.0.intercept(call.head_mut()).await?;
            next.run(call).await
        })
    }
}
