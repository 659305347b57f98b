//! The interop cases, each asserting what `doc/interop-test-descriptions.md` requires.

use std::time::Duration;

use anygrpc::{
    client::{cancellation, Grpc},
    Channel, Code, ProstCodec, Request, Status,
};
use futures_util::stream;
use http::uri::PathAndQuery;

use crate::{
    pb::{
        BoolValue, EchoStatus, Empty, ResponseParameters, SimpleRequest, SimpleResponse,
        StreamingInputCallRequest, StreamingInputCallResponse, StreamingOutputCallRequest,
        StreamingOutputCallResponse,
    },
    zeros, Flagged,
};

/// Every case this client runs, in the order `all` runs them.
pub const CASES: &[&str] = &[
    "empty_unary",
    "large_unary",
    "client_compressed_unary",
    "server_compressed_unary",
    "client_streaming",
    "client_compressed_streaming",
    "server_streaming",
    "server_compressed_streaming",
    "ping_pong",
    "empty_stream",
    "custom_metadata",
    "status_code_and_message",
    "special_status_message",
    "unimplemented_method",
    "unimplemented_service",
    "cancel_after_begin",
    "cancel_after_first_response",
    "timeout_on_sleeping_server",
    "very_large_request",
    "pick_first_unary",
];

macro_rules! path {
    ($service:literal, $method:literal) => {
        PathAndQuery::from_static(concat!("/grpc.testing.", $service, "/", $method))
    };
}

type Result<T = ()> = std::result::Result<T, String>;

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Result {
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

fn call_failed(status: Status) -> String {
    format!("call failed: {status}")
}

fn expect_code<T>(result: std::result::Result<T, Status>, code: Code) -> Result<Status> {
    match result {
        Ok(_) => Err(format!("expected {code}, the call succeeded")),
        Err(status) if status.code() == code => Ok(status),
        Err(status) => Err(format!("expected {code}, got {status}")),
    }
}

fn bool_value(value: bool) -> Option<BoolValue> {
    Some(BoolValue { value })
}

fn check_payload(payload: Option<&crate::pb::Payload>, size: i32) -> Result {
    let body = payload.map_or(&[][..], |p| &p.body[..]);
    ensure(body.len() == size as usize, || {
        format!("payload of {} bytes, expected {size}", body.len())
    })?;
    ensure(body.iter().all(|b| *b == 0), || {
        "payload is not all zeros".to_owned()
    })
}

/// The interop client.
#[derive(Debug, Clone)]
pub struct Client {
    plain: Grpc,
    gzip: Grpc,
}

const TRAILING_VALUE: [u8; 3] = [0xab, 0xab, 0xab];
const INITIAL_VALUE: &str = "test_initial_metadata_value";
const SPECIAL_MESSAGE: &str = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n";

impl Client {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> Client {
        Client {
            plain: Grpc::new(channel.clone()),
            gzip: Grpc::new(channel).send_compression("gzip"),
        }
    }

    /// Runs one case by name.
    pub async fn run(&self, case: &str) -> Result {
        match case {
            "empty_unary" => self.empty_unary().await,
            "large_unary" => self.large_unary().await,
            "client_compressed_unary" => self.client_compressed_unary().await,
            "server_compressed_unary" => self.server_compressed_unary().await,
            "client_streaming" => self.client_streaming().await,
            "client_compressed_streaming" => self.client_compressed_streaming().await,
            "server_streaming" => self.server_streaming().await,
            "server_compressed_streaming" => self.server_compressed_streaming().await,
            "ping_pong" => self.ping_pong().await,
            "empty_stream" => self.empty_stream().await,
            "custom_metadata" => self.custom_metadata().await,
            "status_code_and_message" => self.status_code_and_message().await,
            "special_status_message" => self.special_status_message().await,
            "unimplemented_method" => {
                self.unimplemented(path!("TestService", "UnimplementedCall"))
                    .await
            }
            "unimplemented_service" => {
                self.unimplemented(path!("UnimplementedService", "UnimplementedCall"))
                    .await
            }
            "cancel_after_begin" => self.cancel_after_begin().await,
            "cancel_after_first_response" => self.cancel_after_first_response().await,
            "timeout_on_sleeping_server" => self.timeout_on_sleeping_server().await,
            "very_large_request" => self.very_large_request().await,
            "pick_first_unary" => self.pick_first_unary().await,
            other => Err(format!(
                "unknown test case {other:?}; valid cases: {}",
                CASES.join(", ")
            )),
        }
    }

    async fn unary(
        &self,
        grpc: &Grpc,
        request: Request<(SimpleRequest, bool)>,
    ) -> std::result::Result<anygrpc::Response<(SimpleResponse, bool)>, Status> {
        grpc.unary(path!("TestService", "UnaryCall"), Flagged::new(), request)
            .await
    }

    fn large_request() -> SimpleRequest {
        SimpleRequest {
            response_size: 314_159,
            payload: Some(zeros(271_828)),
            ..SimpleRequest::default()
        }
    }

    async fn empty_unary(&self) -> Result {
        let codec = ProstCodec::<Empty, Empty>::new();
        self.plain
            .unary(
                path!("TestService", "EmptyCall"),
                codec,
                Request::new(Empty {}),
            )
            .await
            .map_err(call_failed)?;
        Ok(())
    }

    /// 100 calls asking for the server's id: every one names the same, non-empty, server
    /// (the channel's default policy is pick_first).
    async fn pick_first_unary(&self) -> Result {
        let request = SimpleRequest {
            response_size: 1,
            fill_server_id: true,
            ..SimpleRequest::default()
        };
        let mut first: Option<String> = None;
        for i in 0..100 {
            let response = self
                .unary(&self.plain, Request::new((request.clone(), false)))
                .await
                .map_err(|s| format!("call {i}: {s}"))?;
            let id = response.into_inner().0.server_id;
            ensure(!id.is_empty(), || format!("call {i}: an empty server id"))?;
            match &first {
                None => first = Some(id),
                Some(first) => ensure(*first == id, || {
                    format!("call {i}: server id {id:?}, the first was {first:?}")
                })?,
            }
        }
        Ok(())
    }

    async fn large_unary(&self) -> Result {
        let response = self
            .unary(&self.plain, Request::new((Self::large_request(), false)))
            .await
            .map_err(call_failed)?;
        check_payload(response.get_ref().0.payload.as_ref(), 314_159)
    }

    async fn client_compressed_unary(&self) -> Result {
        let expect = |value| SimpleRequest {
            expect_compressed: bool_value(value),
            ..Self::large_request()
        };
        // The probe: an uncompressed message the server was told to expect compressed.
        let probe = self
            .unary(&self.plain, Request::new((expect(true), false)))
            .await;
        expect_code(probe, Code::InvalidArgument).map_err(|e| format!("probe: {e}"))?;
        let compressed = self
            .unary(&self.gzip, Request::new((expect(true), true)))
            .await
            .map_err(|s| format!("compressed request: {s}"))?;
        check_payload(compressed.get_ref().0.payload.as_ref(), 314_159)?;
        let plain = self
            .unary(&self.plain, Request::new((expect(false), false)))
            .await
            .map_err(|s| format!("uncompressed request: {s}"))?;
        check_payload(plain.get_ref().0.payload.as_ref(), 314_159)
    }

    async fn server_compressed_unary(&self) -> Result {
        for compress in [true, false] {
            let request = SimpleRequest {
                response_compressed: bool_value(compress),
                ..Self::large_request()
            };
            let response = self
                .unary(&self.plain, Request::new((request, false)))
                .await
                .map_err(call_failed)?;
            let (message, arrived_compressed) = response.into_inner();
            ensure(arrived_compressed == compress, || {
                format!("asked for response_compressed={compress}, the response arrived compressed={arrived_compressed}")
            })?;
            check_payload(message.payload.as_ref(), 314_159)?;
        }
        Ok(())
    }

    async fn streaming_input(
        &self,
        grpc: &Grpc,
        messages: Vec<(StreamingInputCallRequest, bool)>,
    ) -> std::result::Result<StreamingInputCallResponse, Status> {
        let codec = Flagged::<StreamingInputCallRequest, StreamingInputCallResponse>::new();
        let response = grpc
            .client_streaming(
                path!("TestService", "StreamingInputCall"),
                codec,
                Request::new(stream::iter(messages)),
            )
            .await?;
        Ok(response.into_inner().0)
    }

    async fn client_streaming(&self) -> Result {
        let messages = [27_182, 8, 1_828, 45_904].map(|size| {
            (
                StreamingInputCallRequest {
                    payload: Some(zeros(size)),
                    ..Default::default()
                },
                false,
            )
        });
        let response = self
            .streaming_input(&self.plain, messages.to_vec())
            .await
            .map_err(call_failed)?;
        ensure(response.aggregated_payload_size == 74_922, || {
            format!(
                "aggregated_payload_size {}, expected 74922",
                response.aggregated_payload_size
            )
        })
    }

    async fn client_compressed_streaming(&self) -> Result {
        let message = |size, expect| StreamingInputCallRequest {
            payload: Some(zeros(size)),
            expect_compressed: bool_value(expect),
        };
        let probe = self
            .streaming_input(&self.plain, vec![(message(27_182, true), false)])
            .await;
        expect_code(probe, Code::InvalidArgument).map_err(|e| format!("probe: {e}"))?;
        let messages = vec![
            (message(27_182, true), true),
            (message(45_904, false), false),
        ];
        let response = self
            .streaming_input(&self.gzip, messages)
            .await
            .map_err(call_failed)?;
        ensure(response.aggregated_payload_size == 73_086, || {
            format!(
                "aggregated_payload_size {}, expected 73086",
                response.aggregated_payload_size
            )
        })
    }

    async fn streaming_output(
        &self,
        parameters: Vec<ResponseParameters>,
    ) -> std::result::Result<Vec<(StreamingOutputCallResponse, bool)>, Status> {
        let codec = Flagged::<StreamingOutputCallRequest, StreamingOutputCallResponse>::new();
        let request = StreamingOutputCallRequest {
            response_parameters: parameters,
            ..Default::default()
        };
        let mut responses = self
            .plain
            .server_streaming(
                path!("TestService", "StreamingOutputCall"),
                codec,
                Request::new((request, false)),
            )
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(response) = responses.message().await? {
            out.push(response);
        }
        Ok(out)
    }

    async fn server_streaming(&self) -> Result {
        let sizes = [31_415, 9, 2_653, 58_979];
        let parameters = sizes.map(|size| ResponseParameters {
            size,
            ..Default::default()
        });
        let responses = self
            .streaming_output(parameters.to_vec())
            .await
            .map_err(call_failed)?;
        ensure(responses.len() == sizes.len(), || {
            format!("{} responses, expected {}", responses.len(), sizes.len())
        })?;
        for ((response, _), size) in responses.iter().zip(sizes) {
            check_payload(response.payload.as_ref(), size)?;
        }
        Ok(())
    }

    async fn server_compressed_streaming(&self) -> Result {
        let expected = [(31_415, true), (92_653, false)];
        let parameters = expected.map(|(size, compressed)| ResponseParameters {
            size,
            compressed: bool_value(compressed),
            ..Default::default()
        });
        let responses = self
            .streaming_output(parameters.to_vec())
            .await
            .map_err(call_failed)?;
        ensure(responses.len() == 2, || {
            format!("{} responses, expected 2", responses.len())
        })?;
        for ((response, arrived_compressed), (size, compressed)) in responses.iter().zip(expected) {
            check_payload(response.payload.as_ref(), size)?;
            ensure(*arrived_compressed == compressed, || {
                format!("response of {size} bytes arrived compressed={arrived_compressed}, expected {compressed}")
            })?;
        }
        Ok(())
    }

    fn ping(response_size: i32, payload_size: i32) -> (StreamingOutputCallRequest, bool) {
        let request = StreamingOutputCallRequest {
            response_parameters: vec![ResponseParameters {
                size: response_size,
                ..Default::default()
            }],
            payload: Some(zeros(payload_size)),
            ..Default::default()
        };
        (request, false)
    }

    async fn full_duplex(
        &self,
        request: Request<
            futures_channel::mpsc::UnboundedReceiver<(StreamingOutputCallRequest, bool)>,
        >,
    ) -> std::result::Result<
        anygrpc::Response<anygrpc::Streaming<(StreamingOutputCallResponse, bool)>>,
        Status,
    > {
        let codec = Flagged::<StreamingOutputCallRequest, StreamingOutputCallResponse>::new();
        self.plain
            .streaming(path!("TestService", "FullDuplexCall"), codec, request)
            .await
    }

    async fn ping_pong(&self) -> Result {
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let mut responses = self
            .full_duplex(Request::new(rx))
            .await
            .map_err(call_failed)?
            .into_inner();
        for (response_size, payload_size) in
            [(31_415, 27_182), (9, 8), (2_653, 1_828), (58_979, 45_904)]
        {
            tx.unbounded_send(Self::ping(response_size, payload_size))
                .map_err(|e| e.to_string())?;
            let (response, _) = responses
                .message()
                .await
                .map_err(call_failed)?
                .ok_or("the response stream ended early")?;
            check_payload(response.payload.as_ref(), response_size)?;
        }
        drop(tx);
        let extra = responses.message().await.map_err(call_failed)?;
        ensure(extra.is_none(), || {
            "a response after the last ping".to_owned()
        })
    }

    async fn empty_stream(&self) -> Result {
        let (tx, rx) = futures_channel::mpsc::unbounded();
        drop(tx);
        let mut responses = self
            .full_duplex(Request::new(rx))
            .await
            .map_err(call_failed)?
            .into_inner();
        let first = responses.message().await.map_err(call_failed)?;
        ensure(first.is_none(), || {
            "a response to an empty stream".to_owned()
        })
    }

    fn with_echo_metadata<T>(message: T) -> Result<Request<T>> {
        let mut request = Request::new(message);
        let md = request.metadata_mut();
        md.insert("x-grpc-test-echo-initial", INITIAL_VALUE)
            .map_err(|e| e.to_string())?;
        md.insert_bin("x-grpc-test-echo-trailing-bin", &TRAILING_VALUE)
            .map_err(|e| e.to_string())?;
        Ok(request)
    }

    fn check_echo(metadata: &anygrpc::MetadataMap, trailers: &anygrpc::MetadataMap) -> Result {
        let initial = metadata.get("x-grpc-test-echo-initial");
        ensure(initial == Some(INITIAL_VALUE), || {
            format!("initial metadata echo: {initial:?}")
        })?;
        let trailing = trailers
            .get_bin("x-grpc-test-echo-trailing-bin")
            .and_then(|v| v.ok());
        ensure(trailing.as_deref() == Some(&TRAILING_VALUE[..]), || {
            format!("trailing metadata echo: {trailing:?}")
        })
    }

    async fn custom_metadata(&self) -> Result {
        let request = Self::with_echo_metadata((Self::large_request(), false))?;
        let response = self
            .unary(&self.plain, request)
            .await
            .map_err(call_failed)?;
        check_payload(response.get_ref().0.payload.as_ref(), 314_159)?;
        Self::check_echo(response.metadata(), response.trailers())
            .map_err(|e| format!("UnaryCall: {e}"))?;

        let (tx, rx) = futures_channel::mpsc::unbounded();
        let response = self
            .full_duplex(Self::with_echo_metadata(rx)?)
            .await
            .map_err(call_failed)?;
        let mut responses = response.into_inner();
        tx.unbounded_send(Self::ping(314_159, 271_828))
            .map_err(|e| e.to_string())?;
        let metadata = responses.headers().await.map_err(call_failed)?.clone();
        let (reply, _) = responses
            .message()
            .await
            .map_err(call_failed)?
            .ok_or("no response")?;
        check_payload(reply.payload.as_ref(), 314_159)?;
        drop(tx);
        let trailers = responses
            .trailers()
            .await
            .map_err(call_failed)?
            .unwrap_or_default();
        Self::check_echo(&metadata, &trailers).map_err(|e| format!("FullDuplexCall: {e}"))
    }

    async fn check_status_echo(&self, message: &str) -> Result {
        let status = EchoStatus {
            code: 2,
            message: message.to_owned(),
        };
        let request = SimpleRequest {
            response_status: Some(status.clone()),
            ..SimpleRequest::default()
        };
        let got = expect_code(
            self.unary(&self.plain, Request::new((request, false)))
                .await,
            Code::Unknown,
        )?;
        ensure(got.message() == message, || {
            format!(
                "UnaryCall status message {:?}, expected {message:?}",
                got.message()
            )
        })?;

        let (tx, rx) = futures_channel::mpsc::unbounded();
        let request = StreamingOutputCallRequest {
            response_status: Some(status),
            ..Default::default()
        };
        tx.unbounded_send((request, false))
            .map_err(|e| e.to_string())?;
        drop(tx);
        let result = async {
            let mut responses = self.full_duplex(Request::new(rx)).await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok(())
        }
        .await;
        let got = expect_code(result, Code::Unknown)?;
        ensure(got.message() == message, || {
            format!(
                "FullDuplexCall status message {:?}, expected {message:?}",
                got.message()
            )
        })
    }

    async fn status_code_and_message(&self) -> Result {
        self.check_status_echo("test status message").await
    }

    async fn special_status_message(&self) -> Result {
        self.check_status_echo(SPECIAL_MESSAGE).await
    }

    async fn unimplemented(&self, path: PathAndQuery) -> Result {
        let result = self
            .plain
            .unary(
                path,
                ProstCodec::<Empty, Empty>::new(),
                Request::new(Empty {}),
            )
            .await;
        expect_code(result, Code::Unimplemented).map(|_| ())
    }

    async fn cancel_after_begin(&self) -> Result {
        let (canceller, token) = cancellation();
        let (_tx, rx) = futures_channel::mpsc::unbounded::<(StreamingInputCallRequest, bool)>();
        let mut request = Request::new(rx);
        request.set_cancel_token(token);
        let codec = Flagged::<StreamingInputCallRequest, StreamingInputCallResponse>::new();
        let call =
            self.plain
                .client_streaming(path!("TestService", "StreamingInputCall"), codec, request);
        canceller.cancel();
        expect_code(call.await, Code::Cancelled).map(|_| ())
    }

    async fn cancel_after_first_response(&self) -> Result {
        let (canceller, token) = cancellation();
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let mut request = Request::new(rx);
        request.set_cancel_token(token);
        let mut responses = self
            .full_duplex(request)
            .await
            .map_err(call_failed)?
            .into_inner();
        tx.unbounded_send(Self::ping(31_415, 27_182))
            .map_err(|e| e.to_string())?;
        let (response, _) = responses
            .message()
            .await
            .map_err(call_failed)?
            .ok_or("no response")?;
        check_payload(response.payload.as_ref(), 31_415)?;
        canceller.cancel();
        expect_code(responses.message().await, Code::Cancelled).map(|_| ())
    }

    async fn timeout_on_sleeping_server(&self) -> Result {
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let mut request = Request::new(rx);
        request.set_timeout(Duration::from_millis(1));
        let (ping, compress) = Self::ping(0, 27_182);
        let ping = StreamingOutputCallRequest {
            response_parameters: Vec::new(),
            ..ping
        };
        tx.unbounded_send((ping, compress))
            .map_err(|e| e.to_string())?;
        let result = async {
            let mut responses = self.full_duplex(request).await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok(())
        }
        .await;
        drop(tx);
        expect_code(result, Code::DeadlineExceeded).map(|_| ())
    }

    async fn very_large_request(&self) -> Result {
        let request = SimpleRequest {
            response_size: 10,
            payload: Some(zeros(10 << 20)),
            ..SimpleRequest::default()
        };
        let response = self
            .unary(&self.plain, Request::new((request, false)))
            .await
            .map_err(call_failed)?;
        check_payload(response.get_ref().0.payload.as_ref(), 10)
    }
}
