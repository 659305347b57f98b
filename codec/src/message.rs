//! The `grpc-message` header encoding.
//!
//! The status message is UTF-8 text, sent percent-encoded: every byte outside the visible ASCII
//! range 0x20–0x7E, and `%` itself, becomes `%XX`. Decoding never fails — an invalid escape is
//! passed through as is, and invalid UTF-8 is replaced — because a bad message from a peer must
//! not hide the status code it came with.

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

/// Bytes to escape: controls and non-ASCII are escaped by the set's nature; add `%` and DEL.
const ESCAPE: &AsciiSet = &CONTROLS.add(b'%');

/// Percent-encodes a status message for the `grpc-message` header.
pub fn encode(message: &str) -> bytes::Bytes {
    let encoded: std::borrow::Cow<'_, str> = utf8_percent_encode(message, ESCAPE).into();
    match encoded {
        std::borrow::Cow::Borrowed(s) => bytes::Bytes::copy_from_slice(s.as_bytes()),
        std::borrow::Cow::Owned(s) => bytes::Bytes::from(s),
    }
}

/// Decodes a `grpc-message` header value; never fails.
pub fn decode(value: &[u8]) -> String {
    percent_decode(value).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_exactly_the_required_bytes() {
        let all: Vec<u8> = (0x20..=0x7e).collect();
        let visible = String::from_utf8(all).unwrap();
        let expected = visible.replace('%', "%25");
        assert_eq!(encode(&visible), expected.as_bytes());
        assert_eq!(encode("\t\n\x7f"), &b"%09%0A%7F"[..]);
        assert_eq!(encode("ü"), &b"%C3%BC"[..]);
    }

    #[test]
    fn round_trips_unicode() {
        let message = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n";
        assert_eq!(decode(&encode(message)), message);
    }

    #[test]
    fn bad_escapes_pass_through() {
        assert_eq!(decode(b"%"), "%");
        assert_eq!(decode(b"%4"), "%4");
        assert_eq!(decode(b"%zz%41"), "%zzA");
        assert_eq!(decode(b"%FF"), "\u{FFFD}");
    }
}
