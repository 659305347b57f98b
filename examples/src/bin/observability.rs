//! Observability: an echo server with OpenTelemetry metrics, reflection (v1 and v1alpha),
//! channelz and health, and a client with metrics that reads a rich error, lists the services
//! through reflection, fetches their descriptors, calls a method by name with no generated
//! code (descriptors from reflection, messages from JSON), and reads its own channel's
//! counters through channelz. The metrics of both sides are printed at the end.
//!
//! `cargo run -p anygrpc-examples --bin observability` runs both in one process;
//! `-- --serve 127.0.0.1:50051` runs only the server, for `grpcurl` or Python's
//! `grpcio-reflection` (it prints `listening on ADDR` once bound).

use std::time::Duration;

use anygrpc::{
    channelz::{
        proto::{channelz_client::ChannelzClient, GetChannelRequest},
        ChannelzService,
    },
    client::Grpc,
    codegen::PathAndQuery,
    dynamic::DynamicClient,
    error_details::{BadRequest, StatusExt},
    health::health_service,
    metrics::Metrics,
    reflection::{self, MessageRequest, ServerReflectionRequest, ServerReflectionResponse},
    Channel, ProstCodec, Request, Status,
};
use anygrpc_examples::echo::{echo_client::EchoClient, EchoRequest, FILE_DESCRIPTOR_SET};
use futures_util::StreamExt;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
        exporter::PushMetricExporter,
        PeriodicReader, SdkMeterProvider, Temporality,
    },
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let serve_only = args.get(1).map(String::as_str) == Some("--serve");
    let addr = match args.get(2) {
        Some(addr) if serve_only => addr.parse()?,
        _ => anygrpc_examples::localhost(),
    };
    let (reporter, health) = health_service();
    reporter.set_serving("anygrpc.examples.echo.Echo");
    let reflection = reflection::Builder::new()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)?
        .register_encoded_file_descriptor_set(anygrpc::channelz::proto::FILE_DESCRIPTOR_SET)?
        .build();
    // A real program would export to Prometheus or an OTLP collector; this one prints.
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(Print).build())
        .build();
    let metrics = Metrics::new(&provider);
    let (addr, stop) = anygrpc_examples::start_server(addr, |server| {
        server
            .metrics(metrics.clone())
            .add_service(health)
            .add_service(ChannelzService::server())
            .add_service(reflection.v1alpha())
            .add_service(reflection)
    })?;
    println!("listening on {addr}");
    if serve_only {
        // Serve until killed.
        loop {
            std::thread::park();
        }
    }
    let channel = Channel::builder(&addr.to_string())
        .metrics(metrics)
        .connect_lazy()?;
    anygrpc::rt::block_on(client(channel))?;
    let _ = stop.send(());
    provider.shutdown()?;
    println!("observability OK");
    Ok(())
}

async fn client(channel: Channel) -> Result<(), Status> {
    let echo = EchoClient::new(channel.clone());
    let hello = EchoRequest {
        message: "hello".into(),
        repeat: 0,
    };
    echo.unary_echo(hello).await?;
    let status = echo.unary_echo(EchoRequest::default()).await.unwrap_err();
    let bad_request: BadRequest = status
        .get_detail()
        .ok_or_else(|| Status::internal("no BadRequest detail"))?;
    let violation = &bad_request.field_violations[0];
    println!(
        "error: {:?} {:?}, BadRequest: field {:?}: {}",
        status.code(),
        status.message(),
        violation.field,
        violation.description
    );

    let questions = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("anygrpc.examples.echo.Echo".into()),
    ]
    .map(|question| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(question),
    });
    let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let mut answers = Grpc::new(channel.clone())
        .streaming(
            PathAndQuery::from_static(path),
            ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::new(),
            Request::new(futures_util::stream::iter(questions)),
        )
        .await?
        .into_inner();
    while let Some(answer) = answers.next().await {
        match answer?.message_response {
            Some(reflection::MessageResponse::ListServicesResponse(list)) => {
                for service in list.service {
                    println!("reflection: service {}", service.name);
                }
            }
            Some(reflection::MessageResponse::FileDescriptorResponse(files)) => println!(
                "reflection: {} file descriptor(s) for anygrpc.examples.echo.Echo",
                files.file_descriptor_proto.len()
            ),
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    // No generated code: the method and its messages come from the server's descriptors.
    let dynamic = DynamicClient::from_reflection(channel.clone()).await?;
    let method = dynamic.method("anygrpc.examples.echo.Echo/UnaryEcho")?;
    let request = DynamicClient::from_json(method.input(), r#"{"message": "by name"}"#)?;
    let reply = dynamic.unary(&method, request).await?;
    println!(
        "dynamic: {} answered {}",
        method.full_name(),
        DynamicClient::to_json(reply.get_ref())?
    );

    let channelz = ChannelzClient::new(channel.clone());
    let request = GetChannelRequest {
        channel_id: channel.channelz_id(),
    };
    let found = channelz.get_channel(request).await?.into_inner();
    let data = found
        .channel
        .and_then(|c| c.data)
        .ok_or_else(|| Status::internal("channel without data"))?;
    println!(
        "channelz: channel {} to {}: {} calls started, {} succeeded, {} failed",
        channel.channelz_id(),
        data.target,
        data.calls_started,
        data.calls_succeeded,
        data.calls_failed
    );
    Ok(())
}

/// Prints some instruments' data points when the meter provider exports (counters' values and
/// histograms' counts, by attributes): each client call's outcome, the calls each server method
/// started, and the load-balancing policy's connections.
#[derive(Debug)]
struct Print;

impl PushMetricExporter for Print {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        for scope in metrics.scope_metrics() {
            let shown = [
                "grpc.client.call.duration",
                "grpc.server.call.started",
                "grpc.lb.",
            ];
            for metric in scope.metrics() {
                if !shown.iter().any(|name| metric.name().starts_with(name)) {
                    continue;
                }
                let points: Vec<(String, u64)> = match metric.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => h
                        .data_points()
                        .map(|p| (attributes(p.attributes()), p.count()))
                        .collect(),
                    AggregatedMetrics::U64(MetricData::Histogram(h)) => h
                        .data_points()
                        .map(|p| (attributes(p.attributes()), p.count()))
                        .collect(),
                    AggregatedMetrics::U64(MetricData::Sum(s)) => s
                        .data_points()
                        .map(|p| (attributes(p.attributes()), p.value()))
                        .collect(),
                    _ => Vec::new(),
                };
                for (attributes, n) in points {
                    println!("metrics: {} {{{attributes}}} {n}", metric.name());
                }
            }
        }
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

fn attributes<'a>(attributes: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> String {
    let mut pairs: Vec<String> = attributes
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    pairs.sort();
    pairs.join(", ")
}
