//! The channel's connection: resolve, connect (TCP or UDS, then TLS), HTTP/2 handshake, and
//! reconnect with backoff — driven by the sans-IO [`Subchannel`] state machine.

use std::{
    sync::{Arc, Mutex, Weak},
    time::Instant,
};

use anygrpc_lb::{BackoffConfig, ConnectivityState, Subchannel};
use anygrpc_resolver::Resolver;
use anygrpc_rt::{Address, BoxIo, H2Io, Runtime, TcpOptions};
use bytes::Bytes;
use futures_util::future::{poll_fn, FutureExt, Shared};
use h2::client::SendRequest;

use crate::{with_deadline, Status};

type Connected = Result<SendRequest<Bytes>, Status>;
/// The future that runs an HTTP/2 connection until it closes.
type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
type Pending = Shared<futures_channel::oneshot::Receiver<Connected>>;

/// HTTP/2 and socket settings of a channel's connections.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    pub(crate) initial_stream_window_size: u32,
    pub(crate) initial_connection_window_size: u32,
    pub(crate) max_header_list_size: u32,
    pub(crate) max_frame_size: u32,
    pub(crate) tcp_nodelay: bool,
    pub(crate) backoff: BackoffConfig,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsConnector>,
}

enum Conn {
    Idle,
    Connecting(Pending),
    Ready(SendRequest<Bytes>),
}

struct Slot {
    subchannel: Subchannel,
    conn: Conn,
    generation: u64,
    last_error: Option<Status>,
}

/// One channel's connection and its lifecycle.
pub(crate) struct Connection {
    runtime: Arc<dyn Runtime>,
    settings: ConnSettings,
    resolver: Mutex<Box<dyn Resolver>>,
    slot: Mutex<Slot>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state())
            .finish()
    }
}

impl Connection {
    pub(crate) fn new(
        runtime: Arc<dyn Runtime>,
        settings: ConnSettings,
        resolver: Box<dyn Resolver>,
    ) -> Connection {
        Connection {
            runtime,
            slot: Mutex::new(Slot {
                subchannel: Subchannel::new(settings.backoff, fastrand::u64(..)),
                conn: Conn::Idle,
                generation: 0,
                last_error: None,
            }),
            settings,
            resolver: Mutex::new(resolver),
        }
    }

    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The connectivity state.
    pub(crate) fn state(&self) -> ConnectivityState {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.subchannel.handle_timeout(self.runtime.now());
        slot.subchannel.state()
    }

    /// A handle to send requests on a ready connection, connecting first if needed.
    ///
    /// While the connection is in TRANSIENT_FAILURE (backing off after a failed attempt) this
    /// fails at once with the last error, as a call that is not wait-for-ready must.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<(SendRequest<Bytes>, u64), Status> {
        let (pending, generation) = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            let now = self.runtime.now();
            slot.subchannel.handle_timeout(now);
            match &slot.conn {
                Conn::Ready(send) => return Ok((send.clone(), slot.generation)),
                Conn::Connecting(pending) => (pending.clone(), slot.generation),
                Conn::Idle => match slot.subchannel.request_connection(now) {
                    Some(attempt) => {
                        slot.generation += 1;
                        let (tx, rx) = futures_channel::oneshot::channel();
                        let pending = rx.shared();
                        slot.conn = Conn::Connecting(pending.clone());
                        let this = Arc::downgrade(self);
                        let generation = slot.generation;
                        let deadline = attempt.deadline;
                        self.runtime.spawn(Box::pin(async move {
                            connect_task(this, generation, deadline, tx).await;
                        }));
                        (pending, generation)
                    }
                    None => {
                        return Err(slot
                            .last_error
                            .clone()
                            .unwrap_or_else(|| Status::unavailable("channel is shut down")))
                    }
                },
            }
        };
        pending
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("connection attempt abandoned")))
            .map(|send| (send, generation))
    }

    fn finish_attempt(&self, generation: u64, result: &Connected) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.generation != generation {
            return;
        }
        match result {
            Ok(send) => {
                slot.subchannel.connected();
                slot.conn = Conn::Ready(send.clone());
                slot.last_error = None;
            }
            Err(status) => {
                slot.subchannel.connect_failed(self.runtime.now());
                slot.conn = Conn::Idle;
                slot.last_error = Some(status.clone());
            }
        }
    }

    /// The connection of `generation` ended, or a call found it refusing new streams (GOAWAY):
    /// stop handing it out, so the next call connects again (re-resolving first). In-flight
    /// streams on it carry on until they finish.
    pub(crate) fn closed(&self, generation: u64) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.generation == generation {
            slot.subchannel.disconnected();
            slot.conn = Conn::Idle;
        }
    }

    /// Asks the resolver for fresh addresses and waits for them: every connection attempt
    /// re-resolves, so an attempt after a failure sees the latest addresses.
    async fn resolve(&self) -> Result<Vec<Address>, Status> {
        self.resolver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resolve_now();
        let update = poll_fn(|cx| {
            self.resolver
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .poll_update(cx)
        })
        .await;
        update.addresses
    }

    async fn establish(&self, deadline: Instant) -> Result<(SendRequest<Bytes>, Driver), Status> {
        let addresses = self.resolve().await?;
        let mut last_error = Status::unavailable("resolver returned no addresses");
        for address in addresses {
            match with_deadline(&*self.runtime, Some(deadline), self.connect_one(&address)).await {
                Ok(Ok(connected)) => return Ok(connected),
                Ok(Err(status)) => last_error = status,
                Err(_) => {
                    last_error = Status::unavailable(format!("timed out connecting to {address}"))
                }
            }
        }
        Err(last_error)
    }

    async fn connect_one(&self, address: &Address) -> Result<(SendRequest<Bytes>, Driver), Status> {
        let io: BoxIo = match address {
            Address::Tcp(addr) => {
                let options = TcpOptions::default().with_nodelay(self.settings.tcp_nodelay);
                self.runtime.connect_tcp(*addr, options).await
            }
            Address::Unix(path) => self.runtime.connect_unix(path.clone()).await,
        }
        .map_err(|e| Status::unavailable(format!("failed to connect to {address}: {e}")))?;
        #[cfg(feature = "tls")]
        let io = match &self.settings.tls {
            Some(tls) => tls.connect(io).await?,
            None => io,
        };
        let s = &self.settings;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(s.initial_stream_window_size)
            .initial_connection_window_size(s.initial_connection_window_size)
            .max_header_list_size(s.max_header_list_size)
            .max_frame_size(s.max_frame_size)
            // h2 limits the framing overhead of small DATA frames it buffers; peers that stream
            // small messages (grpc-go, the C-core) legitimately send many, so allow as much
            // overhead as the connection window allows data.
            .data_frame_budget(s.initial_connection_window_size as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(H2Io::new(io))
            .await
            .map_err(|e| {
                Status::unavailable(format!("HTTP/2 handshake with {address} failed: {e}"))
            })?;
        let driver = connection.map(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
        Ok((send, Box::pin(driver)))
    }
}

async fn connect_task(
    this: Weak<Connection>,
    generation: u64,
    deadline: Instant,
    tx: futures_channel::oneshot::Sender<Connected>,
) {
    let Some(conn) = this.upgrade() else { return };
    let result = match conn.establish(deadline).await {
        Ok((send, driver)) => {
            let this = this.clone();
            conn.runtime.spawn(Box::pin(async move {
                driver.await;
                if let Some(conn) = this.upgrade() {
                    conn.closed(generation);
                }
            }));
            Ok(send)
        }
        Err(status) => {
            tracing::debug!(%status, "connection attempt failed");
            Err(status)
        }
    };
    conn.finish_attempt(generation, &result);
    drop(conn);
    let _ = tx.send(result);
}
