//! `grpc.testing.TestService`, as the interop suite specifies it.
//!
//! The service is routed by hand (not through the generated server trait) so each method can
//! use the [`Flagged`] codec: the server must check that requests arrived compressed when
//! `expect_compressed` says so, and compress exactly the responses it is asked to.

use std::{sync::OnceLock, time::Duration};

use anygrpc::{
    codegen::BoxFuture,
    server::{ServerCall, Service},
    MetadataMap, ProstCodec, Request, Response, ResponseStream, Status, Streaming,
};
use futures_util::{stream, StreamExt};

use crate::{
    pb::{
        Empty, ResponseParameters, SimpleRequest, SimpleResponse, StreamingInputCallRequest,
        StreamingInputCallResponse, StreamingOutputCallRequest, StreamingOutputCallResponse,
    },
    zeros, Flagged,
};

const ECHO_INITIAL: &str = "x-grpc-test-echo-initial";
const ECHO_TRAILING: &str = "x-grpc-test-echo-trailing-bin";
/// The encoding used when a request asks for a compressed response.
const COMPRESSION: &str = "gzip";

/// The interop `TestService`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestService;

/// This server's id, which `UnaryCall` returns when asked (`fill_server_id`, the
/// `pick_first_unary` case): one per process.
fn server_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("anygrpc-interop-server-{}", std::process::id()))
}

/// The machine's name, which every `SimpleResponse` carries (as grpc-go's server fills it).
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// Copies the echo headers of a request into a response: the initial one as header
/// metadata, the trailing one as trailers.
fn echo_metadata(request: &MetadataMap, metadata: &mut MetadataMap, trailers: &mut MetadataMap) {
    if let Some(value) = request.get(ECHO_INITIAL) {
        let _ = metadata.insert(ECHO_INITIAL, value);
    }
    if let Some(Ok(value)) = request.get_bin(ECHO_TRAILING) {
        let _ = trailers.insert_bin(ECHO_TRAILING, &value);
    }
}

/// An error status carrying the echoed trailing metadata.
fn status_with_echo(code: i32, message: &str, request: &MetadataMap) -> Status {
    let mut status = Status::new(anygrpc::Code::from_i32(code), message);
    let mut ignored = MetadataMap::new();
    echo_metadata(request, &mut ignored, status.metadata_mut());
    status
}

fn check_compressed(expect: Option<bool>, compressed: bool) -> Result<(), Status> {
    match expect {
        Some(true) if !compressed => Err(Status::invalid_argument(
            "expected a compressed message, got an uncompressed one",
        )),
        Some(false) if compressed => Err(Status::invalid_argument(
            "expected an uncompressed message, got a compressed one",
        )),
        _ => Ok(()),
    }
}

async fn unary_call(
    request: Request<(SimpleRequest, bool)>,
) -> Result<Response<(SimpleResponse, bool)>, Status> {
    let metadata = request.metadata().clone();
    let (message, compressed) = request.into_inner();
    check_compressed(message.expect_compressed.map(|b| b.value), compressed)?;
    if let Some(status) = message.response_status.as_ref().filter(|s| s.code != 0) {
        return Err(status_with_echo(status.code, &status.message, &metadata));
    }
    let compress = message.response_compressed.is_some_and(|b| b.value);
    let mut response = Response::new((
        SimpleResponse {
            payload: Some(zeros(message.response_size)),
            server_id: match message.fill_server_id {
                true => server_id().to_owned(),
                false => String::new(),
            },
            hostname: hostname().to_owned(),
            ..SimpleResponse::default()
        },
        compress,
    ));
    if compress {
        response.set_compression(Some(COMPRESSION));
    }
    let (mut md, mut trailers) = (MetadataMap::new(), MetadataMap::new());
    echo_metadata(&metadata, &mut md, &mut trailers);
    *response.metadata_mut() = md;
    *response.trailers_mut() = trailers;
    Ok(response)
}

/// The responses one `StreamingOutputCallRequest` asks for, each after its interval.
fn responses(
    parameters: Vec<ResponseParameters>,
) -> impl futures_util::Stream<Item = Result<(StreamingOutputCallResponse, bool), Status>> {
    stream::iter(parameters).then(|p| async move {
        if p.interval_us > 0 {
            async_io::Timer::after(Duration::from_micros(p.interval_us as u64)).await;
        }
        let response = StreamingOutputCallResponse {
            payload: Some(zeros(p.size)),
        };
        Ok((response, p.compressed.is_some_and(|b| b.value)))
    })
}

fn wants_compression(parameters: &[ResponseParameters]) -> bool {
    parameters
        .iter()
        .any(|p| p.compressed.is_some_and(|b| b.value))
}

async fn streaming_output_call(
    request: Request<(StreamingOutputCallRequest, bool)>,
) -> Result<Response<ResponseStream<(StreamingOutputCallResponse, bool)>>, Status> {
    let metadata = request.metadata().clone();
    let (message, _) = request.into_inner();
    if let Some(status) = message.response_status.as_ref().filter(|s| s.code != 0) {
        return Err(status_with_echo(status.code, &status.message, &metadata));
    }
    let compress = wants_compression(&message.response_parameters);
    let mut response =
        Response::new(Box::pin(responses(message.response_parameters)) as ResponseStream<_>);
    if compress {
        response.set_compression(Some(COMPRESSION));
    }
    Ok(response)
}

async fn streaming_input_call(
    request: Request<Streaming<(StreamingInputCallRequest, bool)>>,
) -> Result<Response<(StreamingInputCallResponse, bool)>, Status> {
    let mut messages = request.into_inner();
    let mut total = 0usize;
    while let Some((message, compressed)) = messages.message().await? {
        check_compressed(message.expect_compressed.map(|b| b.value), compressed)?;
        total += message.payload.map_or(0, |p| p.body.len());
    }
    let response = StreamingInputCallResponse {
        aggregated_payload_size: i32::try_from(total).unwrap_or(i32::MAX),
    };
    Ok(Response::new((response, false)))
}

/// FullDuplexCall: answers each request as it arrives. A request with a `response_status`
/// ends the call with that status (and the echoed trailing metadata).
async fn full_duplex_call(
    request: Request<Streaming<(StreamingOutputCallRequest, bool)>>,
) -> Result<Response<ResponseStream<(StreamingOutputCallResponse, bool)>>, Status> {
    let metadata = request.metadata().clone();
    let status_metadata = metadata.clone();
    let replies = request.into_inner().flat_map(move |item| {
        let replies: ResponseStream<_> = match item {
            Err(status) => Box::pin(stream::once(async move { Err(status) })),
            Ok((message, _)) => match message.response_status.as_ref().filter(|s| s.code != 0) {
                Some(status) => {
                    let status = status_with_echo(status.code, &status.message, &status_metadata);
                    Box::pin(stream::once(async move { Err(status) }))
                }
                None => Box::pin(responses(message.response_parameters)),
            },
        };
        replies
    });
    let mut response = Response::new(Box::pin(replies) as ResponseStream<_>);
    // Compression is decided per message; the call may use it whenever the client accepts it.
    response.set_compression(Some(COMPRESSION));
    let (mut md, mut trailers) = (MetadataMap::new(), MetadataMap::new());
    echo_metadata(&metadata, &mut md, &mut trailers);
    *response.metadata_mut() = md;
    *response.trailers_mut() = trailers;
    Ok(response)
}

/// HalfDuplexCall: reads every request, then answers them all.
async fn half_duplex_call(
    request: Request<Streaming<(StreamingOutputCallRequest, bool)>>,
) -> Result<Response<ResponseStream<(StreamingOutputCallResponse, bool)>>, Status> {
    let mut messages = request.into_inner();
    let mut parameters = Vec::new();
    while let Some((message, _)) = messages.message().await? {
        parameters.extend(message.response_parameters);
    }
    let mut response = Response::new(Box::pin(responses(parameters)) as ResponseStream<_>);
    response.set_compression(Some(COMPRESSION));
    Ok(response)
}

impl Service for TestService {
    fn name(&self) -> &'static str {
        "grpc.testing.TestService"
    }

    fn call(&self, method: &str, call: ServerCall) -> BoxFuture<'static, ()> {
        match method {
            "EmptyCall" => Box::pin(call.unary(
                ProstCodec::<Empty, Empty>::new(),
                |request| async move {
                    let mut response = Response::new(Empty {});
                    let mut trailers = MetadataMap::new();
                    echo_metadata(request.metadata(), response.metadata_mut(), &mut trailers);
                    *response.trailers_mut() = trailers;
                    Ok(response)
                },
            )),
            "UnaryCall" | "CacheableUnaryCall" => Box::pin(call.unary(Flagged::new(), unary_call)),
            "StreamingOutputCall" => {
                Box::pin(call.server_streaming(Flagged::new(), streaming_output_call))
            }
            "StreamingInputCall" => {
                Box::pin(call.client_streaming(Flagged::new(), streaming_input_call))
            }
            "FullDuplexCall" => Box::pin(call.streaming(Flagged::new(), full_duplex_call)),
            "HalfDuplexCall" => Box::pin(call.streaming(Flagged::new(), half_duplex_call)),
            _ => Box::pin(call.unimplemented()),
        }
    }
}
