//! Message compression: the `grpc-encoding` algorithms and their negotiation.
//!
//! A [`CompressionRegistry`] holds the algorithms a peer supports (`gzip` and `deflate` by
//! default, more through the [`Compressor`] trait) and answers the questions a call asks:
//! what to advertise in `grpc-accept-encoding`, whether a received encoding can be decoded, and
//! whether the peer accepts the one we want to send. Decompression is always bounded by the
//! receive limit, so a small compressed message cannot expand into unbounded memory.

use std::{
    fmt,
    io::{self, Read, Write},
    sync::Arc,
};

use bytes::{BufMut, BytesMut};
use http::HeaderValue;

use crate::Status;

/// The name of the no-op encoding.
pub const IDENTITY: &str = "identity";

/// A compression algorithm usable as a `grpc-encoding`.
///
/// Implement it to add an algorithm (zstd, snappy, ...) and register it in a
/// [`CompressionRegistry`].
pub trait Compressor: Send + Sync + fmt::Debug + 'static {
    /// The `grpc-encoding` name, lower-case (e.g. `gzip`).
    fn name(&self) -> &'static str;

    /// Appends the compressed form of `src` to `dst`.
    fn compress(&self, src: &[u8], dst: &mut BytesMut) -> io::Result<()>;

    /// Appends the decompressed form of `src` to `dst`, writing at most `limit + 1` bytes so
    /// the caller can tell an over-limit message from one exactly at the limit.
    /// [`read_bounded`] does this for any decoder that implements [`Read`].
    fn decompress(&self, src: &[u8], dst: &mut BytesMut, limit: usize) -> io::Result<()>;
}

/// Reads a decoder into `dst`, stopping after `limit + 1` bytes.
pub fn read_bounded(reader: impl Read, dst: &mut BytesMut, limit: usize) -> io::Result<()> {
    let mut bounded = reader.take(limit as u64 + 1);
    io::copy(&mut bounded, &mut dst.writer())?;
    Ok(())
}

/// A compression level: 0 (stored, fastest) to 9 (smallest); flate2's default is 6.
///
/// The level changes only what this side sends: any level decompresses the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level(u32);

impl Level {
    /// The fastest level that still compresses (1).
    pub const FASTEST: Level = Level(1);
    /// The smallest output (9).
    pub const BEST: Level = Level(9);

    /// A level from 0 to 9; a higher number is taken as 9.
    pub fn new(level: u32) -> Level {
        Level(level.min(9))
    }

    fn flate2(self) -> flate2::Compression {
        flate2::Compression::new(self.0)
    }
}

impl Default for Level {
    /// 6, zlib's and flate2's default trade of speed for size.
    fn default() -> Level {
        Level(6)
    }
}

/// gzip (RFC 1952), via flate2, at a [`Level`]: `Gzip::default()` is level 6. To send at
/// another level, put `Gzip::with_level` in the registry; it replaces the default gzip.
///
/// ```
/// use std::sync::Arc;
/// use anygrpc_codec::compression::{CompressionRegistry, Gzip, Level};
///
/// let registry = CompressionRegistry::default().with(Arc::new(Gzip::with_level(Level::FASTEST)));
/// assert!(registry.get("gzip").is_some());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Gzip {
    level: Level,
}

impl Gzip {
    /// gzip that compresses at `level`.
    pub fn with_level(level: Level) -> Gzip {
        Gzip { level }
    }
}

impl Compressor for Gzip {
    fn name(&self) -> &'static str {
        "gzip"
    }

    fn compress(&self, src: &[u8], dst: &mut BytesMut) -> io::Result<()> {
        let mut encoder = flate2::write::GzEncoder::new(dst.writer(), self.level.flate2());
        encoder.write_all(src)?;
        encoder.finish()?;
        Ok(())
    }

    fn decompress(&self, src: &[u8], dst: &mut BytesMut, limit: usize) -> io::Result<()> {
        read_bounded(flate2::read::GzDecoder::new(src), dst, limit)
    }
}

/// deflate, in the zlib format (RFC 1950) as HTTP and the gRPC C-core use it, via flate2,
/// at a [`Level`] (`Deflate::default()` is level 6).
#[derive(Debug, Clone, Copy, Default)]
pub struct Deflate {
    level: Level,
}

impl Deflate {
    /// deflate that compresses at `level`.
    pub fn with_level(level: Level) -> Deflate {
        Deflate { level }
    }
}

impl Compressor for Deflate {
    fn name(&self) -> &'static str {
        "deflate"
    }

    fn compress(&self, src: &[u8], dst: &mut BytesMut) -> io::Result<()> {
        let mut encoder = flate2::write::ZlibEncoder::new(dst.writer(), self.level.flate2());
        encoder.write_all(src)?;
        encoder.finish()?;
        Ok(())
    }

    fn decompress(&self, src: &[u8], dst: &mut BytesMut, limit: usize) -> io::Result<()> {
        read_bounded(flate2::read::ZlibDecoder::new(src), dst, limit)
    }
}

/// The set of compression algorithms a channel or server supports.
#[derive(Clone, Debug)]
pub struct CompressionRegistry {
    compressors: Vec<Arc<dyn Compressor>>,
    accept_encoding: HeaderValue,
}

impl Default for CompressionRegistry {
    /// gzip and deflate.
    fn default() -> CompressionRegistry {
        CompressionRegistry::empty()
            .with(Arc::new(Gzip::default()))
            .with(Arc::new(Deflate::default()))
    }
}

impl CompressionRegistry {
    /// A registry with no algorithms (identity only).
    pub fn empty() -> CompressionRegistry {
        CompressionRegistry {
            compressors: Vec::new(),
            accept_encoding: HeaderValue::from_static(IDENTITY),
        }
    }

    /// Adds (or replaces, by name) an algorithm.
    pub fn with(mut self, compressor: Arc<dyn Compressor>) -> CompressionRegistry {
        self.compressors.retain(|c| c.name() != compressor.name());
        self.compressors.push(compressor);
        let names: Vec<&str> = std::iter::once(IDENTITY)
            .chain(self.compressors.iter().map(|c| c.name()))
            .collect();
        self.accept_encoding =
            HeaderValue::from_str(&names.join(",")).unwrap_or(HeaderValue::from_static(IDENTITY));
        self
    }

    /// Looks an algorithm up by its `grpc-encoding` name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Compressor>> {
        self.compressors.iter().find(|c| c.name() == name)
    }

    /// The `grpc-accept-encoding` value to advertise.
    pub fn accept_encoding(&self) -> &HeaderValue {
        &self.accept_encoding
    }

    /// Resolves a received `grpc-encoding` header: `Ok(None)` for identity or absent,
    /// `Ok(Some(..))` for a supported algorithm, `Err(name)` for one this registry lacks.
    pub fn resolve<'a>(
        &self,
        encoding: Option<&'a HeaderValue>,
    ) -> Result<Option<Arc<dyn Compressor>>, &'a [u8]> {
        match encoding {
            None => Ok(None),
            Some(value) if value.as_bytes() == IDENTITY.as_bytes() => Ok(None),
            Some(value) => std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|name| self.get(name))
                .cloned()
                .map(Some)
                .ok_or(value.as_bytes()),
        }
    }
}

/// Whether a `grpc-accept-encoding` list names `encoding`.
pub fn accepts(accept_encoding: Option<&HeaderValue>, encoding: &str) -> bool {
    accept_encoding.is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|name| name.trim_ascii() == encoding.as_bytes())
    })
}

/// Decompresses one message, enforcing the receive limit.
///
/// Over the limit is `RESOURCE_EXHAUSTED`; corrupt data is `INTERNAL`.
pub fn decompress(
    compressor: &dyn Compressor,
    src: &[u8],
    dst: &mut BytesMut,
    limit: usize,
) -> Result<(), Status> {
    let start = dst.len();
    compressor.decompress(src, dst, limit).map_err(|e| {
        Status::internal(format!(
            "failed to decompress message with {}: {e}",
            compressor.name()
        ))
    })?;
    let len = dst.len() - start;
    if len > limit {
        dst.truncate(start);
        return Err(Status::resource_exhausted(format!(
            "decompressed message larger than the receive limit ({limit} bytes)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(c: &dyn Compressor) {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut compressed = BytesMut::new();
        c.compress(&data, &mut compressed).unwrap();
        let mut out = BytesMut::new();
        decompress(c, &compressed, &mut out, data.len()).unwrap();
        assert_eq!(&out[..], &data[..]);
        let mut out = BytesMut::new();
        let err = decompress(c, &compressed, &mut out, data.len() - 1).unwrap_err();
        assert_eq!(err.code(), crate::Code::ResourceExhausted);
        let err = decompress(c, b"not compressed at all", &mut out, 100).unwrap_err();
        assert_eq!(err.code(), crate::Code::Internal);
    }

    #[test]
    fn gzip_and_deflate_round_trip_and_enforce_limit() {
        round_trip(&Gzip::default());
        round_trip(&Deflate::default());
        round_trip(&Gzip::with_level(Level::new(0)));
        round_trip(&Deflate::with_level(Level::BEST));
    }

    #[test]
    fn the_level_sets_the_size_sent() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("row {} of {}; ", i % 97, i % 13).into_bytes())
            .collect();
        let size = |c: &dyn Compressor| {
            let mut out = BytesMut::new();
            c.compress(&text, &mut out).unwrap();
            out.len()
        };
        for (stored, fastest, best) in [
            (
                size(&Gzip::with_level(Level::new(0))),
                size(&Gzip::with_level(Level::FASTEST)),
                size(&Gzip::with_level(Level::BEST)),
            ),
            (
                size(&Deflate::with_level(Level::new(0))),
                size(&Deflate::with_level(Level::FASTEST)),
                size(&Deflate::with_level(Level::BEST)),
            ),
        ] {
            assert!(stored > text.len(), "level 0 stores: {stored}");
            assert!(best < fastest, "{best} < {fastest}");
        }
        assert_eq!(Level::new(42), Level::BEST);
    }

    #[test]
    fn zip_bomb_is_bounded() {
        // 64 MiB of zeros compresses to ~64 KiB; decompressing stops just past the limit.
        let mut bomb = BytesMut::new();
        let mut encoder =
            flate2::write::GzEncoder::new((&mut bomb).writer(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            encoder.write_all(&zeros).unwrap();
        }
        encoder.finish().unwrap();
        let mut out = BytesMut::new();
        let err = decompress(&Gzip::default(), &bomb, &mut out, 4 << 20).unwrap_err();
        assert_eq!(err.code(), crate::Code::ResourceExhausted);
        assert!(out.capacity() < 16 << 20, "memory stayed bounded");
    }

    #[test]
    fn negotiation() {
        let registry = CompressionRegistry::default();
        assert_eq!(registry.accept_encoding(), "identity,gzip,deflate");
        assert!(registry.resolve(None).unwrap().is_none());
        let identity = HeaderValue::from_static("identity");
        assert!(registry.resolve(Some(&identity)).unwrap().is_none());
        let gzip = HeaderValue::from_static("gzip");
        assert_eq!(
            registry.resolve(Some(&gzip)).unwrap().unwrap().name(),
            "gzip"
        );
        let snappy = HeaderValue::from_static("snappy");
        assert_eq!(registry.resolve(Some(&snappy)).unwrap_err(), b"snappy");
        let accept = HeaderValue::from_static("identity, deflate");
        assert!(accepts(Some(&accept), "deflate"));
        assert!(!accepts(Some(&accept), "gzip"));
        assert!(!accepts(None, "gzip"));
        assert_eq!(CompressionRegistry::empty().accept_encoding(), "identity");
    }
}
