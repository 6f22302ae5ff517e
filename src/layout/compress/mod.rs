//! Layer compression, both ways: the writers a layer's tar goes through
//! (hashed for its diff_id, then gzip on every core or zstd), and the
//! reading side (the format found by magic bytes, decompressed on a thread
//! of its own).

mod pgzip;

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc;

use oci_spec::image::MediaType;
use sha2::{Digest as _, Sha256};

use super::Result;
use pgzip::ParallelGz;

/// Decompressed bytes are handed from the decompressing thread to the
/// unpacking one in chunks of this size, at most `PIPE_DEPTH` waiting.
const PIPE_CHUNK: usize = 1 << 20;
const PIPE_DEPTH: usize = 4;
const ZSTD_LEVEL: i32 = 3;

/// How a layer's tar stream is compressed: the config's `compression`, the
/// `--compression` flag and the layer writer all take this one type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> MediaType {
        match self {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }

    /// The compressing writer in front of `out`. gzip gets no name and no
    /// time, zstd a checksum: the same tar gives the same blob.
    pub(super) fn writer<W: Write>(self, out: W) -> io::Result<Compressor<W>> {
        Ok(match self {
            Compression::Gzip => {
                Compressor::Gzip(ParallelGz::new(out, flate2::Compression::default())?)
            }
            Compression::Zstd => {
                let mut enc = zstd::Encoder::new(out, ZSTD_LEVEL)?;
                enc.include_checksum(true)?;
                Compressor::Zstd(enc)
            }
        })
    }
}

/// Counts and hashes what passes through: the uncompressed tar gives the diff_id.
pub(super) struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    pub(super) fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The writer behind, the `sha256:` digest and the count of what passed.
    pub(super) fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(super) enum Compressor<W: Write> {
    Gzip(ParallelGz<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// Write the compressed stream's end; the writer behind it is returned.
    pub(super) fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Gzip,
    Zstd,
    Xz,
    Bzip2,
    Tar,
}

/// The compression of a stream, from its first bytes (media types lie:
/// `docker save` output has been seen labelled gzip while plain).
pub(super) fn sniff(r: &mut impl BufRead) -> io::Result<Format> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if head.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
        Format::Xz
    } else if head.starts_with(b"BZh") {
        Format::Bzip2
    } else {
        Format::Tar
    })
}

fn decompress<'a, R: BufRead + 'a>(format: Format, r: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match format {
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Format::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(r)),
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
        Format::Tar => Box::new(r),
    })
}

/// Run `consume` on the decompressed stream of `raw`, decompressing on a
/// thread of its own: inflating and creating files then use two cores, and
/// at most `PIPE_DEPTH` chunks are held whatever the stream's size. Once
/// the compressed stream ends, the rest of `raw` is read too (a blob's
/// digest covers bytes after it), provided `consume` reads to the end.
pub(super) fn decompressed<R, T>(
    format: Format,
    mut raw: R,
    consume: impl FnOnce(&mut PipeReader) -> Result<T>,
) -> Result<T>
where
    R: BufRead + Send,
{
    let (tx, rx) = mpsc::sync_channel(PIPE_DEPTH);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let end = match decompress(format, &mut raw).and_then(|mut d| pump(&mut d, &tx)) {
                // Nobody listens any more (the consumer failed): stop here.
                Ok(false) => return,
                Ok(true) => io::copy(&mut raw, &mut io::sink()).map(drop),
                Err(e) => Err(e),
            };
            let _ = tx.send(end.map(|()| Vec::new()));
        });
        let mut reader = PipeReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            ended: false,
        };
        // Dropping the reader (and its receiver) stops the thread if it is
        // still sending.
        consume(&mut reader)
    })
}

/// Send `src` in chunks until its end (`true`), or until nobody listens (`false`).
fn pump(src: &mut dyn Read, tx: &mpsc::SyncSender<io::Result<Vec<u8>>>) -> io::Result<bool> {
    loop {
        let mut chunk = vec![0u8; PIPE_CHUNK];
        let mut filled = 0;
        while filled < chunk.len() {
            match src.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(true);
        }
        chunk.truncate(filled);
        if tx.send(Ok(chunk)).is_err() {
            return Ok(false);
        }
    }
}

/// The reading end of [`decompressed`]'s thread: chunks, then an empty one
/// for the end (or the error that ended it).
pub(super) struct PipeReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            let next = self.rx.recv().unwrap_or_else(|_| {
                Err(io::Error::other("the decompressing thread stopped early"))
            });
            match next {
                Ok(chunk) if chunk.is_empty() => self.ended = true,
                Ok(chunk) => (self.chunk, self.pos) = (chunk, 0),
                Err(e) => {
                    self.ended = true;
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutError;
    use std::path::Path;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// Several pipe chunks of bytes that do not repeat within a chunk.
    fn sample(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn the_pipe_passes_every_byte_and_reads_the_stream_to_its_end() {
        let data = sample(3 * PIPE_CHUNK + 12_345);
        let mut cursor = io::Cursor::new(gzip(&data));
        let back = decompressed(Format::Gzip, &mut cursor, |r| {
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            Ok(back)
        })
        .unwrap();
        assert!(back == data);
        assert_eq!(cursor.position(), cursor.get_ref().len() as u64);
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_an_early_end() {
        let raw = gzip(&sample(2 * PIPE_CHUNK));
        let cut = &raw[..raw.len() / 2];
        let result = decompressed(Format::Gzip, cut, |r| {
            io::copy(r, &mut io::sink()).map_err(LayoutError::io("read", Path::new("x")))
        });
        assert!(result.is_err());
    }

    #[test]
    fn a_consumer_that_gives_up_stops_the_decompressing_thread() {
        // More than the pipe holds: the thread would block forever if
        // nothing told it to stop.
        let data = vec![0u8; (PIPE_DEPTH + 4) * PIPE_CHUNK];
        let mut cursor = io::Cursor::new(data);
        let result: Result<()> = decompressed(Format::Tar, &mut cursor, |r| {
            r.read_exact(&mut [0u8; 10]).unwrap();
            Err(LayoutError::Interrupted)
        });
        assert!(matches!(result, Err(LayoutError::Interrupted)));
        assert!(
            cursor.position() < cursor.get_ref().len() as u64,
            "the rest is not read"
        );
    }
}
