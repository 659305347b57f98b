//! Call credentials: metadata (a token, a signature) that a client asks for on every attempt
//! of every call, as grpc-go's `PerRPCCredentials` and the C-core's `CallCredentials` do.
//!
//! A channel carries call credentials from [`ChannelBuilder::call_credentials`] (or a
//! [`ChannelCredentials`] that bundles them with TLS), and a call adds its own with
//! [`Request::set_call_credentials`](crate::Request::set_call_credentials): the channel's are
//! asked first, then the call's, and all their metadata is sent. Credentials that
//! [require transport security](CallCredentials::requires_transport_security) are refused on
//! a plaintext channel: building the channel fails, or the call ends `UNAUTHENTICATED`, unless
//! the channel [allows it](crate::client::ChannelBuilder::allow_insecure_call_credentials).
//!
//! An error from credentials ends the attempt as grpc-go ends it: a [`Status`] keeps its code
//! (one of the codes gRFC A54 keeps from the control plane becomes `INTERNAL`), and any other
//! error is `UNAVAILABLE`.
//!
//! [`ChannelBuilder::call_credentials`]: crate::client::ChannelBuilder::call_credentials

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_core::future::BoxFuture;
use futures_util::{future::Shared, FutureExt};

use crate::{metadata::InvalidMetadata, sync::lock, Code, MetadataMap, Status};

/// What credentials return when they cannot give metadata: a [`Status`], or any error (which
/// ends the attempt `UNAVAILABLE`).
pub type CredentialsError = Box<dyn std::error::Error + Send + Sync>;

/// What call credentials are told about the attempt they authorize.
#[derive(Debug, Clone)]
pub struct CallInfo {
    pub(crate) service_url: String,
    pub(crate) method: String,
    pub(crate) now: Instant,
}

impl CallInfo {
    /// What an attempt of `method` to `service_url` tells credentials at `now` (for code
    /// that asks credentials itself: a middleware, a test).
    pub fn new(service_url: impl Into<String>, method: impl Into<String>, now: Instant) -> Self {
        CallInfo {
            service_url: service_url.into(),
            method: method.into(),
            now,
        }
    }

    /// The service's URL, `https://{authority}/{package.Service}` (a `:443` port left out), the
    /// audience a JWT is usually made for (as grpc-go and the C-core name it).
    pub fn service_url(&self) -> &str {
        &self.service_url
    }

    /// The method path, `/package.Service/Method`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The current time on the channel's runtime (virtual under a simulation).
    pub fn now(&self) -> Instant {
        self.now
    }
}

/// Credentials asked for metadata on every attempt of a call.
pub trait CallCredentials: Send + Sync + 'static {
    /// The metadata to send with the attempt described by `info`.
    fn metadata<'a>(
        &'a self,
        info: &'a CallInfo,
    ) -> BoxFuture<'a, Result<MetadataMap, CredentialsError>>;

    /// Whether the metadata may only travel over TLS (a bearer token may not be sent in the
    /// clear). Default: it may only.
    fn requires_transport_security(&self) -> bool {
        true
    }
}

impl fmt::Debug for dyn CallCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallCredentials")
    }
}

/// The status an attempt ends with when its credentials fail with `err`.
pub(crate) fn failed(err: CredentialsError) -> Status {
    match err.downcast::<Status>() {
        Ok(status) if is_control_plane_only(status.code()) => Status::internal(format!(
            "call credentials failed with an illegal status: {}: {}",
            status.code(),
            status.message()
        )),
        Ok(status) => *status,
        Err(err) => Status::unavailable(format!("call credentials failed: {err}")),
    }
}

/// The codes gRFC A54 does not let a control plane (here, credentials) hand to a call.
fn is_control_plane_only(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::OutOfRange
            | Code::DataLoss
    )
}

/// The status of a call refused for credentials that need TLS on a plaintext channel.
pub(crate) fn insecure() -> Status {
    Status::unauthenticated(
        "call credentials that require transport security cannot be sent on a plaintext channel",
    )
}

/// Several credentials asked in order, their metadata sent together.
#[derive(Clone)]
pub struct CompositeCallCredentials {
    parts: Arc<[Arc<dyn CallCredentials>]>,
}

impl fmt::Debug for CompositeCallCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositeCallCredentials")
            .field("parts", &self.parts.len())
            .finish()
    }
}

impl CompositeCallCredentials {
    /// Credentials that ask each of `parts` in order.
    pub fn new(parts: impl IntoIterator<Item = Arc<dyn CallCredentials>>) -> Self {
        CompositeCallCredentials {
            parts: parts.into_iter().collect(),
        }
    }
}

impl CallCredentials for CompositeCallCredentials {
    fn metadata<'a>(
        &'a self,
        info: &'a CallInfo,
    ) -> BoxFuture<'a, Result<MetadataMap, CredentialsError>> {
        Box::pin(async move {
            let mut all = MetadataMap::new();
            for part in self.parts.iter() {
                all.extend(part.metadata(info).await?);
            }
            Ok(all)
        })
    }

    fn requires_transport_security(&self) -> bool {
        self.parts.iter().any(|p| p.requires_transport_security())
    }
}

/// `first`, then `second`, or either alone.
pub(crate) fn compose(
    first: Option<Arc<dyn CallCredentials>>,
    second: Option<Arc<dyn CallCredentials>>,
) -> Option<Arc<dyn CallCredentials>> {
    match (first, second) {
        (Some(first), Some(second)) => {
            Some(Arc::new(CompositeCallCredentials::new([first, second])))
        }
        (first, second) => first.or(second),
    }
}

/// A fixed token, sent as `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerToken {
    metadata: MetadataMap,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// Credentials that send `token`; a token that cannot be a header value is refused.
    pub fn new(token: &str) -> Result<BearerToken, InvalidMetadata> {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", &format!("Bearer {token}"))?;
        Ok(BearerToken { metadata })
    }
}

impl CallCredentials for BearerToken {
    fn metadata<'a>(
        &'a self,
        _: &'a CallInfo,
    ) -> BoxFuture<'a, Result<MetadataMap, CredentialsError>> {
        Box::pin(std::future::ready(Ok(self.metadata.clone())))
    }
}

/// A token from a token source, and how long it stays good.
#[derive(Debug, Clone)]
pub struct Token {
    /// Sent as `authorization: Bearer <value>`.
    pub value: String,
    /// How long after it was asked for the token expires; `None`: it does not.
    pub expires_in: Option<Duration>,
}

type Fetch = Arc<dyn Fn() -> BoxFuture<'static, Result<Token, Status>> + Send + Sync>;
type Fetching = Shared<BoxFuture<'static, Result<Cached, Status>>>;

#[derive(Clone)]
struct Cached {
    metadata: MetadataMap,
    /// When to fetch the next token: its expiry less the refresh margin.
    stale_at: Option<Instant>,
}

enum State {
    Empty,
    Fresh(Cached),
    /// One fetch under way, which every call that needs the token awaits.
    Fetching(Fetching),
}

/// A bearer token from a source that is asked again as it nears expiry (an OAuth token
/// endpoint, a metadata server, a file rotated by a sidecar).
///
/// It caches the token until `expires_in` less the [refresh margin](Self::refresh_before)
/// (10 s by default, as Go's `oauth2` package) and asks the source once however many calls
/// need a token at the same time: they all wait for that one fetch. A fetch that fails fails
/// the calls that waited for it, and the next call asks again.
#[derive(Clone)]
pub struct RefreshingToken {
    fetch: Fetch,
    state: Arc<Mutex<State>>,
    margin: Duration,
}

impl fmt::Debug for RefreshingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshingToken")
            .field("margin", &self.margin)
            .finish_non_exhaustive()
    }
}

impl RefreshingToken {
    /// A token asked of `fetch` when needed.
    pub fn new<F>(fetch: F) -> RefreshingToken
    where
        F: Fn() -> BoxFuture<'static, Result<Token, Status>> + Send + Sync + 'static,
    {
        RefreshingToken {
            fetch: Arc::new(fetch),
            state: Arc::new(Mutex::new(State::Empty)),
            margin: Duration::from_secs(10),
        }
    }

    /// Fetches a new token this long before the current one expires. Default: 10 s.
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Drops the cached token, so the next call fetches another (a server refused it with
    /// `UNAUTHENTICATED`). A fetch under way is kept.
    pub fn invalidate(&self) {
        let mut state = lock(&self.state);
        if let State::Fresh(_) = *state {
            *state = State::Empty;
        }
    }

    /// The cached token if it is still good at `now`, or the fetch to wait for (started here
    /// if none is under way).
    fn current(&self, now: Instant) -> Result<MetadataMap, Fetching> {
        let mut state = lock(&self.state);
        match &*state {
            State::Fresh(cached) if cached.stale_at.is_none_or(|at| now < at) => {
                return Ok(cached.metadata.clone());
            }
            State::Fetching(fetching) => return Err(fetching.clone()),
            State::Fresh(_) | State::Empty => {}
        }
        let fetch = (self.fetch)();
        let margin = self.margin;
        let fetching = async move {
            let token = fetch.await?;
            let mut metadata = MetadataMap::new();
            metadata
                .insert("authorization", &format!("Bearer {}", token.value))
                .map_err(|e| Status::unauthenticated(format!("the token source's token: {e}")))?;
            let stale_at = token
                .expires_in
                .map(|life| now + life.saturating_sub(margin));
            Ok(Cached { metadata, stale_at })
        }
        .boxed()
        .shared();
        *state = State::Fetching(fetching.clone());
        Err(fetching)
    }
}

impl CallCredentials for RefreshingToken {
    fn metadata<'a>(
        &'a self,
        info: &'a CallInfo,
    ) -> BoxFuture<'a, Result<MetadataMap, CredentialsError>> {
        Box::pin(async move {
            let fetching = match self.current(info.now) {
                Ok(metadata) => return Ok(metadata),
                Err(fetching) => fetching,
            };
            let fetched = fetching.clone().await;
            let mut state = lock(&self.state);
            // The first waiter to finish records the outcome; a later fetch is left alone.
            if matches!(&*state, State::Fetching(current) if current.ptr_eq(&fetching)) {
                *state = match &fetched {
                    Ok(cached) => State::Fresh(cached.clone()),
                    Err(_) => State::Empty,
                };
            }
            Ok(fetched?.metadata)
        })
    }
}

/// Channel credentials: how a channel secures its connections (plaintext or TLS), and the
/// call credentials every call on it sends, as one value (grpc's composite channel
/// credentials). Given to [`ChannelBuilder::credentials`](crate::client::ChannelBuilder::credentials).
#[derive(Clone)]
pub struct ChannelCredentials {
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::ClientTlsConfig>,
    pub(crate) call: Option<Arc<dyn CallCredentials>>,
}

impl fmt::Debug for ChannelCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ChannelCredentials");
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls.is_some());
        debug.field("call", &self.call.is_some()).finish()
    }
}

impl ChannelCredentials {
    /// Plaintext connections (only call credentials that do not require transport security
    /// may join them).
    pub fn insecure() -> ChannelCredentials {
        ChannelCredentials {
            #[cfg(feature = "tls")]
            tls: None,
            call: None,
        }
    }

    /// TLS connections made with `config`.
    #[cfg(feature = "tls")]
    pub fn tls(config: crate::tls::ClientTlsConfig) -> ChannelCredentials {
        ChannelCredentials {
            tls: Some(config),
            call: None,
        }
    }

    /// Adds call credentials, asked after any added before.
    pub fn with_call_credentials(mut self, credentials: impl CallCredentials) -> Self {
        self.call = compose(self.call.take(), Some(Arc::new(credentials)));
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_channel::oneshot;

    use super::*;

    type Answer = oneshot::Sender<Result<Token, Status>>;

    /// A token source whose fetches the test answers one by one, and the number it was asked.
    struct Source {
        asked: Arc<AtomicUsize>,
        answers: Arc<Mutex<Vec<Answer>>>,
    }

    fn source() -> (RefreshingToken, Source) {
        let asked = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (count, pending) = (asked.clone(), answers.clone());
        let token = RefreshingToken::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = oneshot::channel();
            lock(&pending).push(tx);
            Box::pin(async move { rx.await.unwrap_or_else(|_| Err(Status::cancelled("gone"))) })
        });
        (token, Source { asked, answers })
    }

    impl Source {
        fn answer(&self, answer: Result<Token, Status>) {
            let tx = lock(&self.answers).remove(0);
            tx.send(answer).unwrap();
        }
    }

    fn info(now: Instant) -> CallInfo {
        CallInfo {
            service_url: "https://example.com/pkg.Service".into(),
            method: "/pkg.Service/Method".into(),
            now,
        }
    }

    fn token(value: &str, life: u64) -> Token {
        Token {
            value: value.into(),
            expires_in: Some(Duration::from_secs(life)),
        }
    }

    fn header(metadata: &MetadataMap) -> &str {
        metadata.get("authorization").unwrap()
    }

    #[test]
    fn many_concurrent_calls_share_one_fetch_and_the_token_is_cached_until_near_expiry() {
        let (credentials, source) = source();
        let start = Instant::now();
        let at = info(start);
        let mut waiting: Vec<_> = (0..10).map(|_| credentials.metadata(&at)).collect();
        for call in &mut waiting {
            assert!(call.as_mut().now_or_never().is_none());
        }
        assert_eq!(source.asked.load(Ordering::SeqCst), 1);
        source.answer(Ok(token("first", 60)));
        for call in waiting {
            let metadata = call.now_or_never().unwrap().unwrap();
            assert_eq!(header(&metadata), "Bearer first");
        }
        // Cached until 10 s before it expires, then asked for once more.
        let later = info(start + Duration::from_secs(49));
        let cached = credentials
            .metadata(&later)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(header(&cached), "Bearer first");
        assert_eq!(source.asked.load(Ordering::SeqCst), 1);
        let stale = info(start + Duration::from_secs(50));
        let mut refresh = credentials.metadata(&stale);
        assert!(refresh.as_mut().now_or_never().is_none());
        source.answer(Ok(token("second", 60)));
        assert_eq!(
            header(&refresh.now_or_never().unwrap().unwrap()),
            "Bearer second"
        );
        assert_eq!(source.asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_fetch_fails_its_waiters_and_the_next_call_asks_again() {
        let (credentials, source) = source();
        let at = info(Instant::now());
        let mut first = credentials.metadata(&at);
        let mut second = credentials.metadata(&at);
        assert!(first.as_mut().now_or_never().is_none());
        assert!(second.as_mut().now_or_never().is_none());
        source.answer(Err(Status::unauthenticated("revoked")));
        for call in [first, second] {
            let err = failed(call.now_or_never().unwrap().unwrap_err());
            assert_eq!(
                (err.code(), err.message()),
                (Code::Unauthenticated, "revoked")
            );
        }
        let mut again = credentials.metadata(&at);
        assert!(again.as_mut().now_or_never().is_none());
        assert_eq!(source.asked.load(Ordering::SeqCst), 2);
        source.answer(Ok(token("ok", 60)));
        assert_eq!(header(&again.now_or_never().unwrap().unwrap()), "Bearer ok");
    }

    #[test]
    fn invalidate_makes_the_next_call_fetch_and_a_dropped_fetch_is_picked_up() {
        let (credentials, source) = source();
        let at = info(Instant::now());
        let mut first = credentials.metadata(&at);
        assert!(first.as_mut().now_or_never().is_none());
        // The only waiter goes away; the fetch it started is still the one to wait for.
        drop(first);
        let mut next = credentials.metadata(&at);
        assert!(next.as_mut().now_or_never().is_none());
        assert_eq!(source.asked.load(Ordering::SeqCst), 1);
        source.answer(Ok(token("kept", 3600)));
        assert_eq!(
            header(&next.now_or_never().unwrap().unwrap()),
            "Bearer kept"
        );
        credentials.invalidate();
        let mut after = credentials.metadata(&at);
        assert!(after.as_mut().now_or_never().is_none());
        assert_eq!(source.asked.load(Ordering::SeqCst), 2);
        source.answer(Ok(token("new", 3600)));
        assert_eq!(
            header(&after.now_or_never().unwrap().unwrap()),
            "Bearer new"
        );
    }
}
