//! The server: [`Server`] accepts connections and routes each call to a [`Service`].

mod call;

use std::{collections::HashMap, fmt, future::Future, io, sync::Arc, task::Poll, time::Duration};

use anygrpc_codec::{
    compression::CompressionRegistry,
    frame::{DEFAULT_MAX_RECV_MESSAGE_SIZE, DEFAULT_MAX_SEND_MESSAGE_SIZE},
    metadata::DEFAULT_MAX_HEADER_LIST_SIZE,
};
use anygrpc_rt::{Address, BoxFuture, BoxIo, H2Io, Listener, Runtime, TcpOptions};
use futures_util::{
    future::{poll_fn, Either, FutureExt},
    StreamExt,
};

pub use call::{PreviousAttempts, ServerCall};

use crate::interceptor::{AnyInterceptor, AsyncInterceptor, Interceptor};

/// The default `SETTINGS_MAX_CONCURRENT_STREAMS` a server advertises.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1000;

/// A gRPC service: routes a method name to its handler. Generated code implements this.
pub trait Service: Send + Sync + 'static {
    /// The fully qualified service name, e.g. `helloworld.Greeter`.
    fn name(&self) -> &'static str;

    /// Handles one call of `method` (the part of the path after the service name). Unknown
    /// methods should end with [`ServerCall::unimplemented`].
    fn call(&self, method: &str, call: ServerCall) -> BoxFuture<'static, ()>;
}

/// Settings shared by every connection and call of a server.
pub(crate) struct ServerShared {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) services: HashMap<&'static str, Arc<dyn Service>>,
    pub(crate) interceptors: Vec<AnyInterceptor>,
    pub(crate) compression: CompressionRegistry,
    pub(crate) send_compression: Option<&'static str>,
    pub(crate) max_recv_message_size: usize,
    pub(crate) max_send_message_size: usize,
    handshake_timeout: Duration,
    h2: h2::server::Builder,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
}

/// Configures and runs a gRPC server.
///
/// ```no_run
/// # async fn run(service: impl anygrpc::server::Service) -> std::io::Result<()> {
/// anygrpc::Server::builder()
///     .add_service(service)
///     .serve("127.0.0.1:50051".parse::<std::net::SocketAddr>().unwrap())
///     .await
/// # }
/// ```
pub struct Server {
    runtime: Option<Arc<dyn Runtime>>,
    services: HashMap<&'static str, Arc<dyn Service>>,
    interceptors: Vec<AnyInterceptor>,
    compression: CompressionRegistry,
    send_compression: Option<&'static str>,
    max_recv_message_size: usize,
    max_send_message_size: usize,
    max_concurrent_streams: u32,
    max_header_list_size: u32,
    initial_stream_window_size: u32,
    initial_connection_window_size: u32,
    max_frame_size: u32,
    max_send_buffer_size: usize,
    max_pending_accept_reset_streams: usize,
    max_local_error_reset_streams: usize,
    max_concurrent_reset_streams: usize,
    tcp_nodelay: bool,
    handshake_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ServerTlsConfig>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with default settings and no services.
    pub fn builder() -> Server {
        Server {
            runtime: None,
            services: HashMap::new(),
            interceptors: Vec::new(),
            compression: CompressionRegistry::default(),
            send_compression: None,
            max_recv_message_size: DEFAULT_MAX_RECV_MESSAGE_SIZE,
            max_send_message_size: DEFAULT_MAX_SEND_MESSAGE_SIZE,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE as u32,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 2 << 20,
            max_frame_size: 16 * 1024,
            max_send_buffer_size: 400 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_concurrent_reset_streams: 50,
            tcp_nodelay: true,
            handshake_timeout: Duration::from_secs(20),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Adds a service; a later service with the same name replaces the earlier one.
    pub fn add_service(mut self, service: impl Service) -> Self {
        self.services.insert(service.name(), Arc::new(service));
        self
    }

    /// The runtime for sockets, timers and tasks. Default:
    /// [`rt::default_runtime`](crate::rt::default_runtime).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Adds an interceptor run before every handler, in the order added.
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors
            .push(AnyInterceptor::Sync(Arc::new(interceptor)));
        self
    }

    /// Adds an async interceptor run before every handler, in the order added.
    pub fn async_interceptor(mut self, interceptor: impl AsyncInterceptor) -> Self {
        self.interceptors
            .push(AnyInterceptor::Async(Arc::new(interceptor)));
        self
    }

    /// The compression algorithms the server can decode and use. Default: gzip, deflate.
    pub fn compression_registry(mut self, registry: CompressionRegistry) -> Self {
        self.compression = registry;
        self
    }

    /// Compresses responses with `encoding` when the client accepts it. Default: none.
    pub fn send_compression(mut self, encoding: &'static str) -> Self {
        self.send_compression = Some(encoding);
        self
    }

    /// The largest request message accepted, after decompression. Default 4 MiB; larger ones
    /// fail the call with `RESOURCE_EXHAUSTED`.
    pub fn max_recv_message_size(mut self, bytes: usize) -> Self {
        self.max_recv_message_size = bytes;
        self
    }

    /// The largest response message sent. Default: unlimited (4 GiB − 1).
    pub fn max_send_message_size(mut self, bytes: usize) -> Self {
        self.max_send_message_size = bytes;
        self
    }

    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: calls in flight per connection. Default 1000.
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// `SETTINGS_MAX_HEADER_LIST_SIZE`: the largest request header list (metadata included).
    /// Default 16 KiB.
    pub fn max_header_list_size(mut self, bytes: u32) -> Self {
        self.max_header_list_size = bytes;
        self
    }

    /// HTTP/2 initial stream flow-control window. Default 1 MiB.
    pub fn initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.initial_stream_window_size = bytes;
        self
    }

    /// HTTP/2 initial connection flow-control window. Default 2 MiB.
    pub fn initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.initial_connection_window_size = bytes;
        self
    }

    /// `SETTINGS_MAX_FRAME_SIZE`. Default 16 KiB.
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Most bytes buffered for sending per stream. Default 400 KiB.
    pub fn max_send_buffer_size(mut self, bytes: usize) -> Self {
        self.max_send_buffer_size = bytes;
        self
    }

    /// Streams a client may open and reset before the server accepts them, before the
    /// connection is closed with ENHANCE_YOUR_CALM (rapid-reset protection). Default 20.
    pub fn max_pending_accept_reset_streams(mut self, streams: usize) -> Self {
        self.max_pending_accept_reset_streams = streams;
        self
    }

    /// Streams the server may reset for a client's protocol errors before it closes the
    /// connection. Default 1024.
    pub fn max_local_error_reset_streams(mut self, streams: usize) -> Self {
        self.max_local_error_reset_streams = streams;
        self
    }

    /// Reset streams remembered at once (to tolerate frames in flight). Default 50.
    pub fn max_concurrent_reset_streams(mut self, streams: usize) -> Self {
        self.max_concurrent_reset_streams = streams;
        self
    }

    /// Sets `TCP_NODELAY` on accepted connections. Default: on.
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// How long a new connection may take to complete its TLS and HTTP/2 handshakes before it
    /// is closed, so idle or slow connections cannot pin server tasks. Default 20 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Serves TLS (ALPN `h2`), with mutual TLS if the config has a client CA.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: crate::tls::ServerTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Binds the listening socket (TCP address, or [`Address::Unix`] path).
    pub fn bind(self, addr: impl Into<Address>) -> io::Result<BoundServer> {
        let runtime = match &self.runtime {
            Some(rt) => rt.clone(),
            None => anygrpc_rt::default_runtime().ok_or_else(|| {
                io::Error::other("no runtime: enable the `async-io` or `tokio` feature, or pass one with Server::runtime")
            })?,
        };
        let listener = match addr.into() {
            Address::Tcp(addr) => {
                runtime.listen_tcp(addr, TcpOptions::default().with_nodelay(self.tcp_nodelay))?
            }
            Address::Unix(path) => runtime.listen_unix(path)?,
            Address::UnixAbstract(name) => runtime.listen_unix_abstract(name)?,
        };
        self.with_listener(listener, runtime)
    }

    /// Uses an already bound listener (from a custom runtime, for instance).
    pub fn with_listener(
        self,
        listener: Box<dyn Listener>,
        runtime: Arc<dyn Runtime>,
    ) -> io::Result<BoundServer> {
        let mut h2 = h2::server::Builder::new();
        h2.max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .initial_window_size(self.initial_stream_window_size)
            .initial_connection_window_size(self.initial_connection_window_size)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .max_concurrent_reset_streams(self.max_concurrent_reset_streams)
            // See the client's builder: small-message streams are legitimate gRPC traffic.
            .data_frame_budget(self.initial_connection_window_size as usize);
        #[cfg(feature = "tls")]
        let tls = match &self.tls {
            Some(config) => Some(
                config
                    .acceptor()
                    .map_err(|s| io::Error::new(io::ErrorKind::InvalidInput, s))?,
            ),
            None => None,
        };
        Ok(BoundServer {
            listener,
            shared: Arc::new(ServerShared {
                runtime,
                services: self.services,
                interceptors: self.interceptors,
                compression: self.compression,
                send_compression: self.send_compression,
                max_recv_message_size: self.max_recv_message_size,
                max_send_message_size: self.max_send_message_size,
                handshake_timeout: self.handshake_timeout,
                h2,
                #[cfg(feature = "tls")]
                tls,
            }),
        })
    }

    /// Binds and serves until an IO error on the listener's creation; runs forever otherwise.
    pub async fn serve(self, addr: impl Into<Address>) -> io::Result<()> {
        self.bind(addr)?.serve().await
    }

    /// Binds and serves until `signal` completes, then shuts down gracefully: stops accepting,
    /// sends GOAWAY on every connection, and returns once in-flight calls have finished.
    pub async fn serve_with_shutdown(
        self,
        addr: impl Into<Address>,
        signal: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.bind(addr)?.serve_with_shutdown(signal).await
    }
}

/// A server with its socket bound, ready to serve.
pub struct BoundServer {
    listener: Box<dyn Listener>,
    shared: Arc<ServerShared>,
}

impl fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundServer")
            .field("listener", &self.listener)
            .finish()
    }
}

/// Accept errors caused by a shortage of resources; the loop pauses briefly after them so it
/// does not spin while the shortage lasts.
fn is_resource_shortage(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
}

impl BoundServer {
    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<Address> {
        self.listener.local_addr()
    }

    /// Serves forever.
    pub async fn serve(self) -> io::Result<()> {
        self.serve_with_shutdown(std::future::pending()).await
    }

    /// Serves until `signal` completes, then shuts down gracefully (see
    /// [`Server::serve_with_shutdown`]).
    pub async fn serve_with_shutdown(mut self, signal: impl Future<Output = ()>) -> io::Result<()> {
        let (shutdown_tx, shutdown_rx) = futures_channel::oneshot::channel::<()>();
        let shutdown = shutdown_rx.map(|_| ()).shared();
        // Each connection task holds a sender; when all are gone, all connections are done.
        let (alive_tx, mut alive_rx) = futures_channel::mpsc::channel::<()>(0);
        let mut signal = std::pin::pin!(signal);
        loop {
            let accept = poll_fn(|cx| self.listener.poll_accept(cx));
            match futures_util::future::select(std::pin::pin!(accept), signal.as_mut()).await {
                Either::Left((Ok((io, peer)), _)) => {
                    let shared = self.shared.clone();
                    let shutdown = shutdown.clone();
                    let alive = alive_tx.clone();
                    self.shared.runtime.spawn(Box::pin(async move {
                        serve_connection(shared, io, peer, shutdown).await;
                        drop(alive);
                    }));
                }
                Either::Left((Err(err), _)) => {
                    tracing::warn!(error = %err, "accept failed; still accepting");
                    if is_resource_shortage(&err) {
                        let until = self.shared.runtime.now() + Duration::from_millis(50);
                        self.shared.runtime.sleep_until(until).await;
                    }
                }
                Either::Right(_) => break,
            }
        }
        drop(self.listener);
        let _ = shutdown_tx.send(());
        drop(alive_tx);
        while alive_rx.next().await.is_some() {}
        Ok(())
    }
}

/// Runs one connection: TLS, the HTTP/2 handshake, then a task per stream, until the peer
/// closes it or shutdown drains it.
async fn serve_connection(
    shared: Arc<ServerShared>,
    io: BoxIo,
    peer: Address,
    shutdown: impl Future<Output = ()> + Unpin,
) {
    let deadline = shared.runtime.now().checked_add(shared.handshake_timeout);
    let handshake = crate::with_deadline(&*shared.runtime, deadline, handshake(&shared, io));
    let (mut conn, extensions) = match handshake.await {
        Ok(Ok(connected)) => connected,
        Ok(Err(why)) => {
            tracing::debug!(%peer, %why, "connection setup failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "connection setup timed out");
            return;
        }
    };
    let mut shutdown = shutdown;
    let mut draining = false;
    loop {
        let next = poll_fn(|cx| {
            if !draining && shutdown.poll_unpin(cx).is_ready() {
                draining = true;
                conn.graceful_shutdown();
            }
            conn.poll_accept(cx)
        })
        .await;
        match next {
            Some(Ok((request, respond))) => {
                if let Some(mut call) = call::accept(&shared, request, respond, &peer, &extensions)
                {
                    // A call whose request is already here and whose handler answers at once
                    // completes in this first poll, on this task: no hand-off to another
                    // thread, no contention on the connection's lock. Anything that has to
                    // wait gets a task of its own (and re-registers its wakers there).
                    if poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx)))
                        .await
                        .is_pending()
                    {
                        shared.runtime.spawn(call);
                    }
                }
            }
            Some(Err(err)) => {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
                break;
            }
            None => break,
        }
    }
}

type Connected = (h2::server::Connection<H2Io, bytes::Bytes>, http::Extensions);

/// TLS (if configured) and the HTTP/2 handshake of a new connection.
async fn handshake(shared: &ServerShared, io: BoxIo) -> Result<Connected, String> {
    #[allow(unused_mut)]
    let mut extensions = http::Extensions::new();
    #[cfg(feature = "tls")]
    let io = match &shared.tls {
        Some(tls) => {
            let (io, certs) = tls.accept(io).await.map_err(|status| status.to_string())?;
            if let Some(certs) = certs {
                extensions.insert(certs);
            }
            io
        }
        None => io,
    };
    let conn = shared
        .h2
        .handshake::<_, bytes::Bytes>(H2Io::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    Ok((conn, extensions))
}

impl fmt::Debug for ServerShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerShared").finish_non_exhaustive()
    }
}

/// Parses `/package.Service/Method`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn paths() {
        assert_eq!(split_path("/a.B/C"), Some(("a.B", "C")));
        for bad in ["", "/", "a.B/C", "/a.B", "/a.B/", "//C", "/a/b/c"] {
            assert_eq!(split_path(bad), None, "{bad}");
        }
    }
}
