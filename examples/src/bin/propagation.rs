//! Deadline, cancellation and metadata passed down a chain of three services: a client calls
//! `frontend`, which calls `middle`, which calls `backend`. Each handler makes its call under
//! its own call's context (`Request::context`), so:
//!
//! 1. the client's 300 ms deadline reaches `backend` less the time the hops took;
//! 2. a trace id the frontend puts in the context's metadata reaches every hop below it;
//! 3. the client cancelling its call ends the handlers all the way down.
//!
//! ```text
//! cargo run -p anygrpc-examples --bin propagation
//! ```

use std::time::Duration;

use anygrpc::{client::cancellation, Request, Response, ResponseStream, Status, Streaming};
use anygrpc_examples::{
    echo::{
        echo_client::EchoClient,
        echo_server::{Echo, EchoServer},
        EchoRequest, EchoResponse,
    },
    localhost,
};
use futures_channel::mpsc;
use futures_util::StreamExt;

/// Told when a hop's handler starts waiting, and when it is dropped (its call ended).
#[derive(Debug)]
enum Event {
    Waiting(&'static str),
    Dropped(&'static str),
}

struct Dropped(&'static str, mpsc::UnboundedSender<Event>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.1.unbounded_send(Event::Dropped(self.0));
    }
}

/// One service of the chain: it calls `next` under its call's context, or answers.
struct Hop {
    name: &'static str,
    next: Option<EchoClient>,
    events: mpsc::UnboundedSender<Event>,
}

impl Echo for Hop {
    async fn unary_echo(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        let _guard = Dropped(self.name, self.events.clone());
        let left = request.remaining().unwrap_or(Duration::MAX);
        let trace = request.metadata().get("x-trace-id").unwrap_or("none");
        let line = format!("{}: {left:?} left, trace {trace}", self.name);
        let Some(next) = &self.next else {
            if request.get_ref().message == "hang" {
                let _ = self.events.unbounded_send(Event::Waiting(self.name));
                std::future::pending::<()>().await;
            }
            return Ok(Response::new(EchoResponse { message: line }));
        };
        // The deadline and cancellation come with the context; metadata is passed on by
        // choice: the trace id this call came with, or a new one at the top of the chain.
        let mut context = request.context();
        let trace = request.metadata().get("x-trace-id").unwrap_or("trace-42");
        context.metadata_mut().insert("x-trace-id", trace)?;
        let mut onward = Request::new(request.into_inner());
        onward.set_context(&context);
        let below = next.unary_echo(onward).await?.into_inner().message;
        Ok(Response::new(EchoResponse {
            message: format!("{line}\n{below}"),
        }))
    }

    async fn server_streaming_echo(
        &self,
        _: Request<EchoRequest>,
    ) -> Result<Response<ResponseStream<EchoResponse>>, Status> {
        Err(Status::unimplemented("unary only"))
    }

    async fn client_streaming_echo(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        Err(Status::unimplemented("unary only"))
    }

    async fn bidirectional_streaming_echo(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ResponseStream<EchoResponse>>, Status> {
        Err(Status::unimplemented("unary only"))
    }
}

/// Serves `hop` on a localhost port of its own thread; a client of it.
fn serve(hop: Hop) -> Result<EchoClient, Box<dyn std::error::Error>> {
    let server = anygrpc::Server::builder()
        .add_service(EchoServer::new(hop))
        .bind(localhost())?;
    let addr = server.local_addr()?;
    std::thread::spawn(move || anygrpc::rt::block_on(server.serve()));
    let channel = anygrpc::Channel::builder(&addr.to_string()).connect_lazy()?;
    Ok(EchoClient::new(channel))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (events, mut seen) = mpsc::unbounded();
    let hop = |name, next| Hop {
        name,
        next,
        events: events.clone(),
    };
    let backend = serve(hop("backend", None))?;
    let middle = serve(hop("middle", Some(backend)))?;
    let frontend = serve(hop("frontend", Some(middle)))?;

    anygrpc::rt::block_on(async {
        let mut request = Request::new(EchoRequest {
            message: "hello".into(),
            repeat: 0,
        });
        request.set_timeout(Duration::from_millis(300));
        let reply = frontend.unary_echo(request).await?;
        println!("{}", reply.get_ref().message);
        for _ in 0..3 {
            seen.next().await;
        }

        // Cancel a call while the backend waits: every hop's handler is dropped.
        let (canceller, token) = cancellation();
        let mut request = Request::new(EchoRequest {
            message: "hang".into(),
            repeat: 0,
        });
        request.set_cancel_token(token);
        let watch = async {
            match seen.next().await {
                Some(Event::Waiting(name)) => println!("{name} is waiting; the client cancels"),
                other => return Err(Status::internal(format!("unexpected {other:?}"))),
            }
            canceller.cancel();
            let mut dropped = Vec::new();
            while dropped.len() < 3 {
                if let Some(Event::Dropped(name)) = seen.next().await {
                    dropped.push(name);
                }
            }
            println!("handlers ended: {}", dropped.join(", "));
            Ok(())
        };
        let (outcome, watched) =
            futures_util::future::join(frontend.unary_echo(request), watch).await;
        watched?;
        match outcome {
            Err(status) => println!("the client's call: {}", status.code()),
            Ok(_) => return Err(Status::internal("the cancelled call succeeded")),
        }
        Ok::<_, Status>(())
    })?;
    Ok(())
}
