//! A connection's tunnel through an HTTP CONNECT proxy (gRFC A1): the `CONNECT` exchange on a
//! fresh connection to the proxy, before TLS and HTTP/2 run inside it. The exchange's bytes
//! are `anygrpc_codec::http_connect`'s; which proxy applies is `anygrpc_resolver::proxy`'s.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use anygrpc_codec::http_connect::{self, ConnectResponse};
use anygrpc_rt::{BoxIo, Io, ReadBuf};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::{AsyncReadExt, AsyncWriteExt};

use crate::Status;

/// What a connection asks its proxy for.
#[derive(Debug, Clone)]
pub(crate) struct Tunnel {
    /// The proxy's `host:port`, for messages.
    pub(crate) proxy: String,
    /// The target's `host:port`, the tunnel's far end.
    pub(crate) authority: String,
    /// `user:password` for Basic proxy authorization.
    pub(crate) credentials: Option<String>,
}

impl Tunnel {
    /// Asks the proxy at the other end of `io` for the tunnel; the connection to the target
    /// once the proxy answers 2xx, `UNAVAILABLE` otherwise.
    pub(crate) async fn open(&self, mut io: BoxIo) -> Result<BoxIo, Status> {
        let failed = |e: io::Error| {
            Status::unavailable(format!("HTTP proxy {}: CONNECT failed: {e}", self.proxy))
        };
        let request = http_connect::request(&self.authority, self.credentials.as_deref());
        io.write_all(&request).await.map_err(failed)?;
        io.flush().await.map_err(failed)?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0; 1024];
        let head = loop {
            let n = io.read(&mut chunk).await.map_err(failed)?;
            if n == 0 {
                return Err(Status::unavailable(format!(
                    "HTTP proxy {} closed the connection before answering CONNECT",
                    self.proxy
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(head) = ConnectResponse::parse(&buf)? {
                break head;
            }
        };
        head.check(&self.proxy, &self.authority)?;
        buf.drain(..head.head_len);
        Ok(match buf.is_empty() {
            true => io,
            false => Box::new(Prefixed {
                prefix: buf,
                read: 0,
                io,
            }),
        })
    }
}

/// A connection whose first bytes were read with the proxy's answer: they are read again
/// before the rest.
struct Prefixed {
    prefix: Vec<u8>,
    read: usize,
    io: BoxIo,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            this.read += n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl Io for Prefixed {
    fn poll_read_buf(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.io).poll_read_buf(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    /// A peer that answers with `script` in one read and records what it is sent.
    struct Scripted {
        script: Vec<u8>,
        read: usize,
        written: Vec<u8>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = &mut *self;
            let n = (this.script.len() - this.read).min(buf.len());
            buf[..n].copy_from_slice(&this.script[this.read..this.read + n]);
            this.read += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn tunnel() -> Tunnel {
        Tunnel {
            proxy: "proxy:3128".into(),
            authority: "svc:443".into(),
            credentials: None,
        }
    }

    fn peer(script: &[u8]) -> BoxIo {
        anygrpc_rt::box_io(Scripted {
            script: script.to_vec(),
            read: 0,
            written: Vec::new(),
        })
    }

    #[test]
    fn bytes_read_with_the_answer_are_read_again_from_the_tunnel() {
        let answer = b"HTTP/1.1 200 Connection established\r\n\r\n\x00\x00\x06\x04";
        let mut io = tunnel().open(peer(answer)).now_or_never().unwrap().unwrap();
        let mut after = Vec::new();
        io.read_to_end(&mut after).now_or_never().unwrap().unwrap();
        assert_eq!(after, b"\x00\x00\x06\x04");
    }

    #[test]
    fn a_refusal_or_an_early_close_is_unavailable() {
        let tunnel = tunnel();
        let refused = tunnel.open(peer(b"HTTP/1.1 403 Forbidden\r\n\r\n"));
        let err = refused.now_or_never().unwrap().unwrap_err();
        assert_eq!(err.code(), anygrpc_codec::Code::Unavailable);
        assert!(err.message().contains("403 Forbidden"), "{}", err.message());
        let closed = tunnel.open(peer(b"HTTP/1.1 200"));
        let err = closed.now_or_never().unwrap().unwrap_err();
        assert!(
            err.message().contains("closed the connection"),
            "{}",
            err.message()
        );
    }
}
