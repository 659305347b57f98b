//! A load generator on raw `h2` and anygrpc's default runtime, with no gRPC logic: no channel,
//! no codec, no request task. It writes each request as prebuilt gRPC frames straight to its
//! h2 stream and counts the frames that come back; it is the ceiling for any gRPC client built
//! on h2 and this runtime, as `h2-echo-server` is for servers.

use std::sync::Arc;

use anygrpc_rt::{H2Io, Runtime, TcpOptions};
use bytes::{BufMut, Bytes, BytesMut};
use h2::{client::SendRequest, RecvStream, SendStream};
use prost::Message;

use crate::{
    common::{BenchCalls, BidiRoundTrip},
    pb::{Payload, StreamRequest},
};

/// One connection's h2 handle, cloned by every worker.
#[derive(Clone)]
pub struct RawClient {
    send: SendRequest<Bytes>,
    authority: Arc<str>,
}

impl RawClient {
    /// Connects to `addr` with the windows the gRPC load generators use, and runs the
    /// connection as a task on `runtime`.
    pub async fn connect(runtime: &dyn Runtime, addr: &str) -> Result<RawClient, String> {
        let socket: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let io = runtime
            .connect_tcp(socket, TcpOptions::default().with_nodelay(true))
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(2 << 20)
            .handshake::<_, Bytes>(H2Io::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        runtime.spawn_connection(Box::pin(async move {
            let _ = connection.await;
        }));
        Ok(RawClient {
            send,
            authority: addr.into(),
        })
    }

    /// Opens a call to `method` of `bench.v1.Bench`.
    async fn open(
        &self,
        method: &str,
    ) -> Result<(h2::client::ResponseFuture, SendStream<Bytes>), String> {
        let request =
            http::Request::post(format!("http://{}/bench.v1.Bench/{method}", self.authority))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .map_err(|e| e.to_string())?;
        let mut send = self.send.clone().ready().await.map_err(|e| e.to_string())?;
        send.send_request(request, false).map_err(|e| e.to_string())
    }

    /// A call that sends `frames` and ends its request: (messages, payload bytes) received.
    async fn call(&self, method: &str, frames: Bytes) -> Result<(u64, usize), String> {
        let (response, mut send) = self.open(method).await?;
        send.send_data(frames, true).map_err(|e| e.to_string())?;
        let mut body = response.await.map_err(|e| e.to_string())?.into_body();
        let mut counter = FrameCounter::default();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            counter.push(&chunk);
        }
        let trailers = body.trailers().await.map_err(|e| e.to_string())?;
        match trailers.as_ref().and_then(|t| t.get("grpc-status")) {
            Some(status) if status == "0" => Ok((counter.messages, counter.payload)),
            other => Err(format!("call ended with grpc-status {other:?}")),
        }
    }
}

/// `Payload { body }` as `count` gRPC frames.
fn payload_frames(body: Vec<u8>, count: u32) -> Bytes {
    repeat_frame(&Payload { body }.encode_to_vec(), count)
}

/// `count` gRPC frames of `message`, uncompressed.
fn repeat_frame(message: &[u8], count: u32) -> Bytes {
    let mut frames = BytesMut::with_capacity(count as usize * (5 + message.len()));
    for _ in 0..count {
        frames.put_u8(0);
        frames.put_u32(message.len() as u32);
        frames.put_slice(message);
    }
    frames.freeze()
}

/// Counts the gRPC frames in a response body as its DATA arrives, in chunks of any size. Not
/// anygrpc's `Deframer`: the ceiling only counts, it never slices out or reassembles messages.
#[derive(Debug, Default)]
struct FrameCounter {
    /// A frame header, of which `header_len` bytes are seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current frame still to come.
    remaining: usize,
    messages: u64,
    /// Frame body bytes received (each `Payload`'s encoding: its body plus 2–3 bytes).
    payload: usize,
}

impl FrameCounter {
    fn push(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len());
                self.remaining -= n;
                self.payload += n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (5 - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[..n]);
            self.header_len += n;
            chunk = &chunk[n..];
            if self.header_len == 5 {
                let [_, len @ ..] = self.header;
                self.header_len = 0;
                self.remaining = u32::from_be_bytes(len) as usize;
                self.messages += 1;
            }
        }
    }

    /// A whole number of frames has arrived.
    fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.header_len == 0
    }
}

/// A bidi call as ping-pong: the request frame is built once and sent again each round trip.
pub struct RawBidi {
    send: SendStream<Bytes>,
    reply: Reply,
    frame: Option<Bytes>,
    counter: FrameCounter,
}

/// A bidi call's response: awaited only after the first request is sent, since a server may
/// wait for it before answering with headers.
enum Reply {
    Head(h2::client::ResponseFuture),
    Body(RecvStream),
}

impl BidiRoundTrip for RawBidi {
    async fn round_trip(&mut self, body: Vec<u8>) -> Option<usize> {
        let frame = self
            .frame
            .get_or_insert_with(|| payload_frames(body, 1))
            .clone();
        self.send.send_data(frame, false).ok()?;
        if let Reply::Head(response) = &mut self.reply {
            self.reply = Reply::Body(response.await.ok()?.into_body());
        }
        let Reply::Body(stream) = &mut self.reply else {
            return None;
        };
        let (messages, payload) = (self.counter.messages, self.counter.payload);
        while self.counter.messages == messages || !self.counter.at_boundary() {
            let chunk = stream.data().await?.ok()?;
            let _ = stream.flow_control().release_capacity(chunk.len());
            self.counter.push(&chunk);
        }
        Some(self.counter.payload - payload)
    }
}

impl BenchCalls for RawClient {
    type Bidi = RawBidi;

    async fn unary(&mut self, body: Vec<u8>) -> Result<usize, String> {
        let (_, payload) = self.call("Unary", payload_frames(body, 1)).await?;
        Ok(payload)
    }

    async fn server_stream(&mut self, count: u32, size: u32) -> Result<(u64, usize), String> {
        let request = StreamRequest { count, size }.encode_to_vec();
        self.call("ServerStream", repeat_frame(&request, 1)).await
    }

    async fn client_stream(&mut self, body: Vec<u8>, count: u32) -> Result<usize, String> {
        let (_, payload) = self
            .call("ClientStream", payload_frames(body, count))
            .await?;
        Ok(payload)
    }

    async fn bidi(&mut self) -> Result<RawBidi, String> {
        let (response, send) = self.open("BidiStream").await?;
        Ok(RawBidi {
            send,
            reply: Reply::Head(response),
            frame: None,
            counter: FrameCounter::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_frames_split_anywhere() {
        let frames = payload_frames(vec![0; 300], 3);
        for split in 0..frames.len() {
            let mut counter = FrameCounter::default();
            counter.push(&frames[..split]);
            counter.push(&frames[split..]);
            assert_eq!(counter.messages, 3, "split at {split}");
            // Each Payload: tag, a two-byte varint (300), 300 bytes.
            assert_eq!(counter.payload, 3 * 303, "split at {split}");
            assert!(counter.at_boundary());
        }
    }

    #[test]
    fn a_partial_frame_is_not_a_boundary() {
        let frames = payload_frames(vec![0; 16], 1);
        let mut counter = FrameCounter::default();
        counter.push(&frames[..6]);
        assert_eq!(counter.messages, 1);
        assert!(!counter.at_boundary());
        counter.push(&frames[6..]);
        assert!(counter.at_boundary());
    }

    #[test]
    fn payload_frames_decode_as_the_bench_message() {
        let frames = payload_frames(vec![0; 200], 1);
        assert_eq!(
            u32::from_be_bytes(frames[1..5].try_into().unwrap()) as usize,
            frames.len() - 5
        );
        let message = Payload::decode(&frames[5..]).unwrap();
        assert_eq!(message.body, vec![0; 200]);
    }
}
