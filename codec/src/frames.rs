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
    /// Reads a frame header from its 9 bytes.
    pub fn parse(bytes: &[u8; 9]) -> FrameHeader {
        FrameHeader {
            length: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]),
            kind: bytes[3],
            flags: bytes[4],
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    /// A PING that asks for an answer (not an ACK).
    pub fn is_ping(&self) -> bool {
        self.kind == kind::PING && self.flags & FLAG_ACK == 0
    }

    /// HEADERS or DATA: what forgives a client's ping strikes when a server sends it.
    pub fn is_headers_or_data(&self) -> bool {
        self.kind == kind::HEADERS || self.kind == kind::DATA
    }
}

/// The most GOAWAY debug data a scanner keeps; the rest is skipped.
pub const MAX_GOAWAY_DEBUG_DATA: usize = 256;

/// What a [`FrameScanner`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A frame's header, as soon as its 9 bytes have gone by.
    Frame(FrameHeader),
    /// A GOAWAY frame's payload, once all of it has gone by.
    GoAway {
        /// The highest stream the sender processed or may process.
        last_stream_id: u32,
        /// The HTTP/2 error code.
        error_code: u32,
        /// Its debug data (at most [`MAX_GOAWAY_DEBUG_DATA`] bytes).
        debug_data: &'a [u8],
    },
}

/// Follows one direction of a connection, frame by frame, in the chunks it is read or written
/// in. Payloads are skipped, except a GOAWAY's (kept up to a bound), whose error code and debug
/// data h2 does not report.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    /// Preface bytes still to skip.
    preface: usize,
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to go by.
    payload: usize,
    /// The current frame is a GOAWAY: its payload is kept here.
    goaway: Option<Vec<u8>>,
}

impl FrameScanner {
    /// The bytes a server reads, or a client writes: the client's preface, then frames.
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
            goaway: None,
        }
    }

    /// Whether the bytes so far end exactly at a frame's end (the next byte starts a frame).
    pub fn at_frame_boundary(&self) -> bool {
        self.preface == 0 && self.header_len == 0 && self.payload == 0
    }

    /// Takes the next chunk of the stream, reporting what completes in it.
    pub fn scan(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Seen<'_>)) {
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
                if let Some(kept) = &mut self.goaway {
                    let room = (8 + MAX_GOAWAY_DEBUG_DATA).saturating_sub(kept.len());
                    kept.extend_from_slice(&bytes[..n.min(room)]);
                }
                bytes = &bytes[n..];
                if self.payload == 0 {
                    self.goaway_done(&mut seen);
                }
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                self.header_len = 0;
                let header = FrameHeader::parse(&self.header);
                self.payload = header.length as usize;
                if header.kind == kind::GOAWAY {
                    self.goaway = Some(Vec::with_capacity(
                        self.payload.min(8 + MAX_GOAWAY_DEBUG_DATA),
                    ));
                }
                seen(Seen::Frame(header));
                if self.payload == 0 {
                    self.goaway_done(&mut seen);
                }
            }
        }
    }

    fn goaway_done(&mut self, seen: &mut impl FnMut(Seen<'_>)) {
        let Some(payload) = self.goaway.take() else {
            return;
        };
        // A GOAWAY shorter than its fixed 8 bytes is a peer's protocol error, which h2 reports.
        if let (Some(id), Some(code)) = (payload.get(0..4), payload.get(4..8)) {
            seen(Seen::GoAway {
                last_stream_id: u32::from_be_bytes(id.try_into().unwrap_or_default()) & 0x7fff_ffff,
                error_code: u32::from_be_bytes(code.try_into().unwrap_or_default()),
                debug_data: &payload[8..],
            });
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

/// Gives the first GOAWAY without debug data among the whole frames at the start of `bytes`
/// (which must begin at a frame boundary) `debug_data`: returns how many bytes of `bytes` that
/// covers and what to write instead (the frames before it unchanged, then the amended GOAWAY).
/// For the GOAWAYs h2 writes, which have no debug data.
pub fn with_goaway_debug_data(bytes: &[u8], debug_data: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 9) {
        let header = FrameHeader::parse(header.try_into().ok()?);
        let end = at + 9 + header.length as usize;
        if header.kind == kind::GOAWAY && header.length == 8 {
            let payload = bytes.get(at + 9..end)?;
            let last_stream_id = u32::from_be_bytes(payload[..4].try_into().ok()?);
            let error_code = u32::from_be_bytes(payload[4..].try_into().ok()?);
            let mut out = bytes[..at].to_vec();
            out.extend(goaway(last_stream_id, error_code, debug_data));
            return Some((end, out));
        }
        at = end;
    }
    None
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
            scanner.scan(piece, |s| {
                if let Seen::Frame(h) = s {
                    seen.push(h)
                }
            });
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
    fn a_goaway_with_debug_data_scans_back_in_any_chunking() {
        let mut bytes = frame(kind::PING, 0, 0, &[1; 8]);
        bytes.extend(goaway(7, 0xb, b"too_many_pings"));
        for chunk in [1, 3, 9, 17, 100] {
            let mut scanner = FrameScanner::server_to_client();
            let mut goaways = Vec::new();
            for piece in bytes.chunks(chunk) {
                scanner.scan(piece, |s| {
                    if let Seen::GoAway {
                        last_stream_id,
                        error_code,
                        debug_data,
                    } = s
                    {
                        goaways.push((last_stream_id, error_code, debug_data.to_vec()));
                    }
                });
            }
            assert_eq!(
                goaways,
                [(7, 0xb, b"too_many_pings".to_vec())],
                "chunks of {chunk}"
            );
            assert!(scanner.at_frame_boundary());
        }
    }

    #[test]
    fn a_goaway_after_other_frames_gets_debug_data_and_the_rest_is_left() {
        let mut bytes = frame(kind::PING, FLAG_ACK, 0, &[1; 8]);
        let ping_len = bytes.len();
        bytes.extend(goaway(5, 0, b""));
        bytes.extend(frame(kind::DATA, 0, 1, &[0; 4]));
        let (taken, out) = with_goaway_debug_data(&bytes, b"max_age").unwrap();
        assert_eq!(taken, ping_len + 17, "up to the end of the GOAWAY");
        assert_eq!(&out[..ping_len], &bytes[..ping_len]);
        assert_eq!(&out[ping_len..], &goaway(5, 0, b"max_age")[..]);
        // No GOAWAY, or one cut short: nothing to do.
        assert_eq!(with_goaway_debug_data(&bytes[..ping_len], b"x"), None);
        assert_eq!(with_goaway_debug_data(&bytes[..ping_len + 12], b"x"), None);
        assert_eq!(with_goaway_debug_data(&goaway(1, 0, b"has"), b"x"), None);
    }

    #[test]
    fn long_debug_data_is_cut_and_short_goaways_are_not_reported() {
        let mut bytes = goaway(1, 0, &[b'x'; 1000]);
        bytes.extend(frame(kind::GOAWAY, 0, 0, &[0; 3]));
        let mut scanner = FrameScanner::server_to_client();
        let mut lengths = Vec::new();
        scanner.scan(&bytes, |s| {
            if let Seen::GoAway { debug_data, .. } = s {
                lengths.push(debug_data.len());
            }
        });
        assert_eq!(lengths, [MAX_GOAWAY_DEBUG_DATA]);
    }
}
