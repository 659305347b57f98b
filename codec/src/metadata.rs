//! Custom metadata: the user-visible part of gRPC headers and trailers.
//!
//! Keys are lower-case `[0-9a-z_.-]`. Keys ending in `-bin` carry binary values, sent base64
//! encoded (unpadded on send; padded or unpadded accepted on receive; a received value may hold
//! several comma-separated values). Other values are visible ASCII (0x20–0x7E). Keys the
//! protocol reserves (`grpc-*`, `content-type`, `te`, `user-agent`, pseudo-headers) cannot be
//! set here and are stripped from what is received, so a handler never mistakes protocol
//! headers for metadata. One `grpc-` key is the application's to send: a server may set
//! [`RETRY_PUSHBACK`] in its trailers to tell clients when (or whether) to retry.

use std::fmt;

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine,
};
use bytes::Bytes;
use http::{header::HeaderName, HeaderMap, HeaderValue};

use crate::names::{self, Reserved};

/// The default limit on the size of a received header list (metadata included), in the
/// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` sense: the sum of name length + value length + 32
/// per entry.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: usize = 16 * 1024;

/// The HTTP/2 per-entry overhead counted by `SETTINGS_MAX_HEADER_LIST_SIZE` (RFC 9113 §6.5.2).
const ENTRY_OVERHEAD: usize = 32;

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A metadata key or value was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMetadata {
    what: String,
}

impl InvalidMetadata {
    fn new(what: impl Into<String>) -> InvalidMetadata {
        InvalidMetadata { what: what.into() }
    }
}

impl fmt::Display for InvalidMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid metadata: {}", self.what)
    }
}

impl std::error::Error for InvalidMetadata {}

impl From<InvalidMetadata> for crate::Status {
    fn from(err: InvalidMetadata) -> crate::Status {
        crate::Status::internal(err.to_string())
    }
}

/// `grpc-retry-pushback-ms`: a server's word on retrying a failed call (gRFC A6), in its
/// trailers: a delay in milliseconds before the next attempt, or a negative or unparsable
/// value for "do not retry". The one `grpc-` key a [`MetadataMap`] accepts, as grpc-go lets a
/// server set it.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Whether a key is reserved by the protocol and so never user metadata.
pub fn is_reserved(key: &str) -> bool {
    (key.starts_with("grpc-") && key != RETRY_PUSHBACK)
        || key.starts_with(':')
        || matches!(key, "content-type" | "te" | "user-agent")
}

/// Checks a key against gRPC's grammar (`[0-9a-z_.-]+`) and the reserved names.
pub fn validate_key(key: &str) -> Result<(), InvalidMetadata> {
    if key.is_empty() {
        return Err(InvalidMetadata::new("empty key"));
    }
    if let Some(c) = key
        .bytes()
        .find(|c| !matches!(c, b'0'..=b'9' | b'a'..=b'z' | b'_' | b'.' | b'-'))
    {
        return Err(InvalidMetadata::new(format!(
            "key {key:?} has character {:?}; keys are [0-9a-z_.-]",
            char::from(c)
        )));
    }
    if is_reserved(key) {
        return Err(InvalidMetadata::new(format!("key {key:?} is reserved")));
    }
    Ok(())
}

/// Encodes binary metadata as unpadded base64.
pub fn encode_binary(value: &[u8]) -> Bytes {
    Bytes::from(BASE64.encode(value))
}

/// Decodes one base64 value, padded or not.
pub fn decode_binary(value: &[u8]) -> Result<Vec<u8>, InvalidMetadata> {
    BASE64
        .decode(value.trim_ascii())
        .map_err(|e| InvalidMetadata::new(format!("bad base64 in binary value: {e}")))
}

fn is_binary_key(key: &str) -> bool {
    key.ends_with("-bin")
}

/// Checks that every custom binary value in received headers or trailers is base64: a peer
/// that sends anything else ends the call `INTERNAL`, as grpc-go and the C-core do, rather
/// than handing an application a value it cannot read. (`grpc-status-details-bin` is the
/// status's, read with it.)
pub fn check_binary_values(headers: &HeaderMap) -> Result<(), InvalidMetadata> {
    for (name, value) in headers {
        let key = name.as_str();
        if is_binary_key(key) && !key.starts_with("grpc-") {
            for part in value.as_bytes().split(|b| *b == b',') {
                decode_binary(part)
                    .map_err(|err| InvalidMetadata::new(format!("{key}: {}", err.what)))?;
            }
        }
    }
    Ok(())
}

/// A value read from a [`MetadataMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataValue<'a> {
    /// A visible-ASCII value.
    Ascii(&'a str),
    /// A binary value, still base64-encoded as on the wire (possibly comma-joined); decode
    /// with [`decode_binary`] or read with [`MetadataMap::get_bin`].
    Binary(&'a [u8]),
}

/// Custom metadata (headers or trailers) of a call.
#[derive(Clone, Default, PartialEq)]
pub struct MetadataMap {
    headers: HeaderMap,
}

impl MetadataMap {
    /// An empty map.
    pub fn new() -> MetadataMap {
        MetadataMap::default()
    }

    /// Keeps the non-reserved entries of received headers or trailers.
    ///
    /// Values are shared, not copied. An ASCII-keyed value with bytes outside visible ASCII
    /// is kept but [`get`](Self::get) will not return it as text.
    pub fn from_headers(headers: &HeaderMap) -> MetadataMap {
        let mut out = HeaderMap::new();
        for (name, value) in headers {
            let key = name.as_str();
            if key.starts_with("grpc-") || matches!(key, "content-type" | "te") {
                continue;
            }
            out.append(name.clone(), value.clone());
        }
        MetadataMap { headers: out }
    }

    /// Consumes received headers, keeping the non-reserved entries without copying.
    ///
    /// This is on every call's path, so it allocates nothing when the reserved headers present
    /// are the protocol's usual ones.
    pub fn from_header_map(headers: HeaderMap) -> MetadataMap {
        Self::split_reserved(headers).0
    }

    /// [`MetadataMap::from_header_map`], also giving back the reserved headers a server reads:
    /// one pass over the names instead of a lookup for each.
    pub(crate) fn split_reserved(mut headers: HeaderMap) -> (MetadataMap, Reserved) {
        let mut present = [false; names::RESERVED.len()];
        let mut unknown = false;
        for key in headers.keys() {
            match names::reserved_index(key) {
                Some(i) => present[i] = true,
                None => unknown |= key.as_str().starts_with("grpc-"),
            }
        }
        let mut reserved = Reserved::default();
        for (i, name) in names::RESERVED.iter().enumerate() {
            if present[i] {
                reserved.keep(name, headers.remove(name));
            }
        }
        if unknown {
            let other: Vec<HeaderName> = headers
                .keys()
                .filter(|k| k.as_str().starts_with("grpc-"))
                .cloned()
                .collect();
            for key in other {
                headers.remove(key);
            }
        }
        (MetadataMap { headers }, reserved)
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    fn ascii_entry(key: &str, value: &str) -> Result<(HeaderName, HeaderValue), InvalidMetadata> {
        validate_key(key)?;
        if is_binary_key(key) {
            return Err(InvalidMetadata::new(format!(
                "key {key:?} ends in -bin: use insert_bin"
            )));
        }
        if let Some(c) = value.bytes().find(|c| !(0x20..=0x7e).contains(c)) {
            return Err(InvalidMetadata::new(format!(
                "value for {key:?} has byte {c:#04x}; ASCII values are 0x20-0x7E (use a -bin key)"
            )));
        }
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| InvalidMetadata::new(format!("key {key:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| InvalidMetadata::new(format!("value for {key:?}")))?;
        Ok((name, value))
    }

    fn binary_entry(key: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), InvalidMetadata> {
        validate_key(key)?;
        if !is_binary_key(key) {
            return Err(InvalidMetadata::new(format!(
                "binary key {key:?} must end in -bin"
            )));
        }
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| InvalidMetadata::new(format!("key {key:?}")))?;
        let value = HeaderValue::from_maybe_shared(encode_binary(value))
            .map_err(|_| InvalidMetadata::new(format!("value for {key:?}")))?;
        Ok((name, value))
    }

    /// Sets an ASCII value, replacing any values for the key.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), InvalidMetadata> {
        let (name, value) = MetadataMap::ascii_entry(key, value)?;
        self.headers.insert(name, value);
        Ok(())
    }

    /// Adds an ASCII value, keeping existing values for the key.
    pub fn append(&mut self, key: &str, value: &str) -> Result<(), InvalidMetadata> {
        let (name, value) = MetadataMap::ascii_entry(key, value)?;
        self.headers.append(name, value);
        Ok(())
    }

    /// Sets a binary value (key must end in `-bin`), replacing any values for the key.
    pub fn insert_bin(&mut self, key: &str, value: &[u8]) -> Result<(), InvalidMetadata> {
        let (name, value) = MetadataMap::binary_entry(key, value)?;
        self.headers.insert(name, value);
        Ok(())
    }

    /// Adds a binary value (key must end in `-bin`), keeping existing values for the key.
    pub fn append_bin(&mut self, key: &str, value: &[u8]) -> Result<(), InvalidMetadata> {
        let (name, value) = MetadataMap::binary_entry(key, value)?;
        self.headers.append(name, value);
        Ok(())
    }

    /// The first ASCII value for a key, if it is visible ASCII text.
    pub fn get(&self, key: &str) -> Option<&str> {
        if is_binary_key(key) {
            return None;
        }
        self.headers.get(key).and_then(|v| v.to_str().ok())
    }

    /// Every ASCII value for a key, in order.
    pub fn get_all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + 'a {
        let binary = is_binary_key(key);
        self.headers
            .get_all(key)
            .iter()
            .filter(move |_| !binary)
            .filter_map(|v| v.to_str().ok())
    }

    /// The first binary value for a key, decoded.
    pub fn get_bin(&self, key: &str) -> Option<Result<Vec<u8>, InvalidMetadata>> {
        self.get_all_bin(key).next()
    }

    /// Every binary value for a key, decoded; comma-joined values are split first.
    pub fn get_all_bin<'a>(
        &'a self,
        key: &str,
    ) -> impl Iterator<Item = Result<Vec<u8>, InvalidMetadata>> + 'a {
        let binary = is_binary_key(key);
        self.headers
            .get_all(key)
            .iter()
            .filter(move |_| binary)
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(decode_binary)
    }

    /// Removes every value for a key; returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        self.headers.remove(key).is_some()
    }

    /// Whether the key has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.headers.contains_key(key)
    }

    /// Iterates over every entry as `(key, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, MetadataValue<'_>)> {
        self.headers.iter().map(|(name, value)| {
            let key = name.as_str();
            let value = if is_binary_key(key) {
                MetadataValue::Binary(value.as_bytes())
            } else {
                match value.to_str() {
                    Ok(text) => MetadataValue::Ascii(text),
                    Err(_) => MetadataValue::Binary(value.as_bytes()),
                }
            };
            (key, value)
        })
    }

    /// Adds every entry of `other`, keeping existing values.
    pub fn extend(&mut self, other: MetadataMap) {
        for (name, value) in other.headers {
            if let Some(name) = name {
                self.headers.append(name, value);
            }
        }
    }

    /// Adds the entries of `other` whose keys this map does not have (all their values).
    pub fn extend_missing(&mut self, other: &MetadataMap) {
        for name in other.headers.keys() {
            if !self.headers.contains_key(name) {
                for value in other.headers.get_all(name) {
                    self.headers.append(name.clone(), value.clone());
                }
            }
        }
    }

    /// The size these entries add to an HTTP/2 header list (name + value + 32 each).
    pub fn encoded_len(&self) -> usize {
        header_list_size(&self.headers)
    }

    /// Appends every entry to an outgoing header map.
    pub fn write_to(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
    }

    /// [`check_binary_values`] on these entries.
    pub(crate) fn check_binary(&self) -> Result<(), InvalidMetadata> {
        check_binary_values(&self.headers)
    }

    /// Moves every entry into an outgoing header map.
    pub fn into_headers(self) -> HeaderMap {
        self.headers
    }
}

/// The HTTP/2 header list size of a header map (RFC 9113 §6.5.2), pseudo-headers excluded.
pub fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + ENTRY_OVERHEAD)
        .sum()
}

impl fmt::Debug for MetadataMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_missing_adds_only_keys_not_set() {
        let mut own = MetadataMap::new();
        own.insert("x-trace-id", "mine").unwrap();
        let mut passed = MetadataMap::new();
        passed.insert("x-trace-id", "theirs").unwrap();
        passed.append("x-tenant", "a").unwrap();
        passed.append("x-tenant", "b").unwrap();
        own.extend_missing(&passed);
        assert_eq!(own.get_all("x-trace-id").collect::<Vec<_>>(), ["mine"]);
        assert_eq!(own.get_all("x-tenant").collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn validates_keys() {
        let mut md = MetadataMap::new();
        md.insert("x-ok_1.2", "v").unwrap();
        for bad in [
            "",
            "X-Upper",
            "sp ace",
            "colon:",
            "ü",
            "grpc-status",
            "te",
            "content-type",
        ] {
            assert!(md.insert(bad, "v").is_err(), "{bad:?}");
        }
        assert!(
            md.insert("x-bin", "v").is_err(),
            "-bin keys need binary values"
        );
        assert!(
            md.insert_bin("x-text", b"v").is_err(),
            "binary values need -bin keys"
        );
        assert!(md.insert("x", "line\nbreak").is_err());
        assert!(md.insert("x", "é").is_err());
    }

    #[test]
    fn binary_values_round_trip_unpadded() {
        let mut md = MetadataMap::new();
        md.insert_bin("x-bin", &[0xab, 0xab, 0xab]).unwrap();
        md.append_bin("x-bin", &[0x01]).unwrap();
        let raw: Vec<_> = md.headers.get_all("x-bin").iter().collect();
        assert_eq!(raw[0], "q6ur");
        assert_eq!(raw[1], "AQ", "emitted unpadded");
        let values: Vec<_> = md.get_all_bin("x-bin").map(Result::unwrap).collect();
        assert_eq!(values, vec![vec![0xab, 0xab, 0xab], vec![0x01]]);
    }

    #[test]
    fn binary_values_accept_padding_and_commas() {
        let mut headers = HeaderMap::new();
        headers.insert("x-bin", HeaderValue::from_static("AQ==, AQI,AQID"));
        let md = MetadataMap::from_headers(&headers);
        let values: Vec<_> = md.get_all_bin("x-bin").map(Result::unwrap).collect();
        assert_eq!(values, vec![vec![1], vec![1, 2], vec![1, 2, 3]]);
        headers.insert("y-bin", HeaderValue::from_static("***"));
        let md = MetadataMap::from_headers(&headers);
        assert!(md.get_bin("y-bin").unwrap().is_err());
    }

    #[test]
    fn servers_may_set_retry_pushback_and_other_grpc_keys_stay_reserved() {
        let mut md = MetadataMap::new();
        md.insert(RETRY_PUSHBACK, "250").unwrap();
        assert_eq!(md.get("grpc-retry-pushback-ms"), Some("250"));
        for reserved in [
            "grpc-retry-pushback",
            "grpc-status",
            "grpc-message",
            "grpc-timeout",
        ] {
            assert!(md.insert(reserved, "1").is_err(), "{reserved}");
        }
    }

    #[test]
    fn a_binary_value_that_is_not_base64_is_found() {
        let mut headers = HeaderMap::new();
        headers.insert("x-bin", HeaderValue::from_static("AQ==, AQI"));
        headers.insert("x-text", HeaderValue::from_static("***"));
        headers.insert("grpc-status-details-bin", HeaderValue::from_static("***"));
        assert_eq!(check_binary_values(&headers), Ok(()));
        headers.append("x-bin", HeaderValue::from_static("AQ,**"));
        let err = check_binary_values(&headers).unwrap_err();
        assert!(err.to_string().contains("x-bin"), "{err}");
    }

    #[test]
    fn reserved_headers_are_stripped_on_receive() {
        let mut headers = HeaderMap::new();
        for k in ["grpc-status", "grpc-anything", "content-type", "te"] {
            headers.insert(k, HeaderValue::from_static("1"));
        }
        headers.insert("user-agent", HeaderValue::from_static("ua"));
        headers.insert("x-user", HeaderValue::from_static("u"));
        let md = MetadataMap::from_headers(&headers);
        assert_eq!(md.len(), 2);
        assert_eq!(md.get("x-user"), Some("u"));
        assert_eq!(MetadataMap::from_header_map(headers).len(), 2);
    }

    #[test]
    fn counts_header_list_size() {
        let mut md = MetadataMap::new();
        md.insert("abc", "12345").unwrap();
        assert_eq!(md.encoded_len(), 3 + 5 + 32);
    }
}
