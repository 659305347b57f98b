//! The HTTP/1.1 `CONNECT` exchange that opens a tunnel through a proxy (gRFC A1, RFC 9110
//! §9.3.6): the request a client writes, and the reading of the proxy's response head.
//!
//! Sans-IO: the transport writes [`request`]'s bytes, feeds what it reads to
//! [`ConnectResponse::parse`], and hands whatever follows the head to the tunnel's first
//! reader. A head larger than [`MAX_RESPONSE_HEAD`] is refused, so a proxy cannot make the
//! client buffer without bound.

use base64::{engine::general_purpose::STANDARD, Engine};

use crate::Status;

/// The largest response head read from a proxy.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The request that asks a proxy for a tunnel to `authority` (`host:port`), with Basic
/// proxy authorization (RFC 7617) when `credentials` (`user:password`) are given.
pub fn request(authority: &str, credentials: Option<&str>) -> Vec<u8> {
    let mut out = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(credentials) = credentials {
        out.push_str("Proxy-Authorization: Basic ");
        out.push_str(&STANDARD.encode(credentials));
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A proxy's answer to `CONNECT`, once its head is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    /// The HTTP status code; 2xx opens the tunnel.
    pub status: u16,
    /// The reason phrase, for error messages.
    pub reason: String,
    /// The length of the head in the bytes parsed: what follows is the tunnel's.
    pub head_len: usize,
}

impl ConnectResponse {
    /// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete,
    /// `UNAVAILABLE` for a head that is not HTTP/1.x or is larger than
    /// [`MAX_RESPONSE_HEAD`].
    pub fn parse(buf: &[u8]) -> Result<Option<ConnectResponse>, Status> {
        let window = &buf[..buf.len().min(MAX_RESPONSE_HEAD)];
        let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() >= MAX_RESPONSE_HEAD {
                return Err(Status::unavailable(format!(
                    "proxy response head is larger than {MAX_RESPONSE_HEAD} bytes"
                )));
            }
            return Ok(None);
        };
        let line_end = window.windows(2).position(|w| w == b"\r\n").unwrap_or(end);
        let line = std::str::from_utf8(&window[..line_end])
            .map_err(|_| Status::unavailable("proxy response is not HTTP: not UTF-8"))?;
        let bad = || Status::unavailable(format!("proxy response is not HTTP/1.x: {line:?}"));
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().ok_or_else(bad)?;
        if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
            return Err(bad());
        }
        let status = parts
            .next()
            .filter(|code| code.len() == 3)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(bad)?;
        Ok(Some(ConnectResponse {
            status,
            reason: parts.next().unwrap_or_default().to_owned(),
            head_len: end + 4,
        }))
    }

    /// `Ok` when the proxy opened the tunnel; otherwise the `UNAVAILABLE` the connection
    /// attempt fails with, naming the proxy's status.
    pub fn check(&self, proxy: &str, authority: &str) -> Result<(), Status> {
        if (200..300).contains(&self.status) {
            return Ok(());
        }
        Err(Status::unavailable(format!(
            "HTTP proxy {proxy} refused CONNECT to {authority}: {} {}",
            self.status, self.reason
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[test]
    fn the_request_names_the_authority_and_carries_basic_auth() {
        assert_eq!(
            request("svc.example:443", None),
            b"CONNECT svc.example:443 HTTP/1.1\r\nHost: svc.example:443\r\n\r\n"
        );
        let with_auth = String::from_utf8(request("[::1]:50051", Some("aladdin:opensesame")));
        assert_eq!(
            with_auth.unwrap(),
            "CONNECT [::1]:50051 HTTP/1.1\r\nHost: [::1]:50051\r\n\
             Proxy-Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l\r\n\r\n"
        );
    }

    #[test]
    fn a_response_head_is_read_in_pieces_and_what_follows_is_left() {
        let answer = b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n\x00\x00\x12";
        for cut in 0..answer.len() - 3 {
            let partial = ConnectResponse::parse(&answer[..cut]).unwrap();
            assert!(partial.is_none(), "incomplete at {cut}");
        }
        let head = ConnectResponse::parse(answer).unwrap().unwrap();
        assert_eq!(
            (head.status, head.reason.as_str()),
            (200, "Connection established")
        );
        assert_eq!(&answer[head.head_len..], b"\x00\x00\x12");
        assert!(head.check("p:1", "a:2").is_ok());
    }

    #[test]
    fn refusals_and_garbage_are_unavailable() {
        let refused = ConnectResponse::parse(b"HTTP/1.0 403 Forbidden\r\n\r\n")
            .unwrap()
            .unwrap();
        let err = refused.check("proxy:3128", "svc:443").unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("403 Forbidden"), "{}", err.message());
        for garbage in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            let err = ConnectResponse::parse(garbage).unwrap_err();
            assert_eq!(err.code(), Code::Unavailable, "{garbage:?}");
        }
        let endless = vec![b'a'; MAX_RESPONSE_HEAD];
        let err = ConnectResponse::parse(&endless).unwrap_err();
        assert!(err.message().contains("larger than"), "{}", err.message());
    }
}
