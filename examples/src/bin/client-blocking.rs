//! The echo client from a plain `main`, with no executor at all: `block_on` per call.

use anygrpc_examples::echo::{echo_client::EchoClient, EchoRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, stop) = anygrpc_examples::start_echo_server()?;
    let channel = anygrpc::Channel::builder(&addr.to_string()).connect_lazy()?;
    let client = EchoClient::new(channel);
    for word in ["alpha", "beta"] {
        let request = EchoRequest {
            message: word.into(),
            repeat: 0,
        };
        let reply = anygrpc::rt::block_on(client.unary_echo(request))?;
        println!("blocking unary: {}", reply.into_inner().message);
    }
    let _ = stop.send(());
    println!("blocking client OK");
    Ok(())
}
