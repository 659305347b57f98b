//! Finding HTTP/2 frame headers in a connection's byte stream, with no IO and no copy of the
//! payloads.
//!
//! h2 answers PINGs itself and reports none of them, so keepalive and ping policing look at
//! the bytes the connection reads and writes: a [`FrameScanner`] per direction reports each
//! frame's header as it goes by (RFC 9113 §4.1), skipping the client's connection preface.

/// The client connection preface (RFC 9113 §3.4) that starts a client's byte stream.
pub const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types this crate acts on (RFC 9113 §6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
}

/// The ACK flag of SETTINGS and PING frames.
pub const FLAG_ACK: u8 = 0x1;

/// A frame's 9-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub length: u32,
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier (the reserved bit cleared).
    pub stream_id: u32,
}

impl FrameHeader {
    /// A PING that asks for an answer (not an ACK).
    pub fn is_ping(&self) -> bool {
        self.kind == kind::PING && self.flags & FLAG_ACK == 0
    }

    /// HEADERS or DATA: what forgives a client's ping strikes when a server sends it.
    pub fn is_headers_or_data(&self) -> bool {
        self.kind == kind::HEADERS || self.kind == kind::DATA
    }
}

/// Follows one direction of a connection, frame by frame, in the chunks it is read or written
/// in.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    /// Preface bytes still to skip.
    preface: usize,
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload: usize,
}

impl FrameScanner {
    /// The bytes a server reads: the client's preface, then frames.
    pub fn client_to_server() -> FrameScanner {
        FrameScanner::skipping(CLIENT_PREFACE.len())
    }

    /// The bytes a client reads, or a server writes: frames from the start.
    pub fn server_to_client() -> FrameScanner {
        FrameScanner::skipping(0)
    }

    fn skipping(preface: usize) -> FrameScanner {
        FrameScanner {
            preface,
            header: [0; 9],
            header_len: 0,
            payload: 0,
        }
    }

    /// Takes the next chunk of the stream, calling `frame` with each header completed in it.
    pub fn scan(&mut self, mut bytes: &[u8], mut frame: impl FnMut(FrameHeader)) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                self.header_len = 0;
                let h = &self.header;
                let header = FrameHeader {
                    length: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                    kind: h[3],
                    flags: h[4],
                    stream_id: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.payload = header.length as usize;
                frame(header);
            }
        }
    }
}

/// A GOAWAY frame (RFC 9113 §6.8) with debug data, which h2's API cannot send: written by the
/// transport between two of h2's frames.
pub fn goaway(last_stream_id: u32, error_code: u32, debug_data: &[u8]) -> Vec<u8> {
    let length = 8 + debug_data.len();
    let mut frame = Vec::with_capacity(9 + length);
    frame.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(&[kind::GOAWAY, 0]);
    frame.extend_from_slice(&0u32.to_be_bytes());
    frame.extend_from_slice(&(last_stream_id & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(&error_code.to_be_bytes());
    frame.extend_from_slice(debug_data);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn stream() -> Vec<u8> {
        let mut bytes = CLIENT_PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0; 12]));
        bytes.extend(frame(kind::PING, 0, 0, &[1; 8]));
        bytes.extend(frame(kind::HEADERS, 0x4, 1, &[0x82; 30]));
        bytes.extend(frame(kind::DATA, 0x1, 1, &[7; 1000]));
        bytes.extend(frame(kind::PING, FLAG_ACK, 0, &[1; 8]));
        bytes
    }

    fn scan_in_chunks(chunk: usize) -> Vec<FrameHeader> {
        let mut scanner = FrameScanner::client_to_server();
        let mut seen = Vec::new();
        for piece in stream().chunks(chunk) {
            scanner.scan(piece, |h| seen.push(h));
        }
        seen
    }

    #[test]
    fn frames_are_found_however_the_stream_is_cut() {
        let whole = scan_in_chunks(usize::MAX);
        let kinds: Vec<(u8, bool)> = whole.iter().map(|h| (h.kind, h.is_ping())).collect();
        assert_eq!(
            kinds,
            [
                (0x4, false),
                (kind::PING, true),
                (kind::HEADERS, false),
                (kind::DATA, false),
                (kind::PING, false)
            ]
        );
        assert_eq!(whole[3].length, 1000);
        assert_eq!(whole[3].stream_id, 1);
        for chunk in [1, 2, 5, 9, 10, 17, 100] {
            assert_eq!(scan_in_chunks(chunk), whole, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_goaway_with_debug_data_scans_back() {
        let bytes = goaway(7, 0xb, b"too_many_pings");
        let mut seen = Vec::new();
        FrameScanner::server_to_client().scan(&bytes, |h| seen.push(h));
        assert_eq!(
            seen,
            [FrameHeader {
                length: 8 + 14,
                kind: kind::GOAWAY,
                flags: 0,
                stream_id: 0
            }]
        );
        assert_eq!(&bytes[9..13], &7u32.to_be_bytes());
        assert_eq!(&bytes[13..17], &0xbu32.to_be_bytes());
        assert_eq!(&bytes[17..], b"too_many_pings");
    }
}
