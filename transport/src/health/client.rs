//! The client side: [`HealthClient`] for an application's own checks, and the reading of a
//! `Watch` stream that a subchannel's health checking (gRFC A17) does.

use futures_util::StreamExt;
use http::uri::PathAndQuery;

use super::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse, ServingStatus,
    CHECK_PATH, LIST_PATH, WATCH_PATH,
};
use crate::{client::Grpc, Channel, IntoRequest, ProstCodec, Response, Status, Streaming};

type ClientCodec = ProstCodec<HealthCheckRequest, HealthCheckResponse>;

/// A typed client of `grpc.health.v1.Health`, for asking a server about itself (probes,
/// deploy checks, a load balancer of your own). A channel's own health checking needs none:
/// see [`health_check_service_name`](crate::client::ChannelBuilder::health_check_service_name).
///
/// ```no_run
/// # async fn probe() -> Result<(), anygrpc::Status> {
/// use anygrpc::health::{HealthCheckRequest, HealthClient, ServingStatus};
///
/// let channel = anygrpc::Channel::builder("localhost:50051").connect_lazy()?;
/// let health = HealthClient::new(channel);
/// let reply = health.check(HealthCheckRequest::new("echo.Echo")).await?;
/// assert_eq!(reply.get_ref().status(), ServingStatus::Serving);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthClient {
    inner: Grpc,
}

impl HealthClient {
    /// A client that sends its calls over `channel`.
    pub fn new(channel: Channel) -> HealthClient {
        HealthClient {
            inner: Grpc::new(channel).generated_stub(),
        }
    }

    /// `Check`: the service's status now. A server that does not know the service answers
    /// `NOT_FOUND`; one without the health service, `UNIMPLEMENTED`.
    pub async fn check(
        &self,
        request: impl IntoRequest<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let path = PathAndQuery::from_static(CHECK_PATH);
        let request = request.into_request();
        self.inner.unary(path, ClientCodec::new(), request).await
    }

    /// `List` (gRFC A90): every service the server registered and its status, when it has no
    /// more than 100 (`RESOURCE_EXHAUSTED` otherwise). A server whose health service predates
    /// A90 answers `UNIMPLEMENTED`.
    pub async fn list(
        &self,
        request: impl IntoRequest<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let path = PathAndQuery::from_static(LIST_PATH);
        let codec = ProstCodec::<HealthListRequest, HealthListResponse>::new();
        self.inner.unary(path, codec, request.into_request()).await
    }

    /// `Watch`: the service's status now, then each change, for as long as the stream is
    /// read. A service the server does not know is `SERVICE_UNKNOWN` until it is registered.
    pub async fn watch(
        &self,
        request: impl IntoRequest<HealthCheckRequest>,
    ) -> Result<Response<Streaming<HealthCheckResponse>>, Status> {
        let path = PathAndQuery::from_static(WATCH_PATH);
        let request = request.into_request();
        self.inner
            .server_streaming(path, ClientCodec::new(), request)
            .await
    }
}

impl HealthCheckRequest {
    /// A request about `service`; `""` asks about the server as a whole.
    pub fn new(service: impl Into<String>) -> HealthCheckRequest {
        HealthCheckRequest {
            service: service.into(),
        }
    }
}

/// What a client's health watch learned, for its subchannel.
#[derive(Debug, PartialEq)]
pub(crate) enum Health {
    /// The backend is SERVING.
    Serving,
    /// The backend answered something else.
    Unhealthy(ServingStatus),
}

/// The client side of one `Watch` stream: turns its messages into [`Health`] values.
pub(crate) async fn next_health(
    stream: &mut Streaming<HealthCheckResponse>,
) -> Option<Result<Health, Status>> {
    let message = stream.next().await?;
    Some(message.map(|response| match response.status() {
        ServingStatus::Serving => Health::Serving,
        other => Health::Unhealthy(other),
    }))
}
