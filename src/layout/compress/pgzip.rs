//! Gzip on every core, pigz style: the input is cut into fixed 1 MiB chunks,
//! each deflated on its own thread (with the previous chunk's last 32 KiB as
//! dictionary) and ended with a sync flush, so that the pieces join into one
//! deflate stream under one gzip header and one CRC32/ISIZE trailer.
//!
//! A single gzip member, not concatenated members, because some layer
//! consumers read only the first member. The bytes depend only on the input:
//! chunk boundaries are fixed and each chunk's deflate is deterministic, so
//! thread timing never shows in the output.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::{self, JoinHandle};

use flate2::{Compress, Crc, FlushCompress, Status};

const CHUNK: usize = 1 << 20;
/// Deflate's window: what the next chunk may refer back to.
const WINDOW: usize = 32 * 1024;
/// What `flate2::GzBuilder` writes for the default level and an unknown OS:
/// no name, no time.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

type Job = JoinHandle<io::Result<(Vec<u8>, Crc)>>;

pub struct ParallelGz<W: Write> {
    out: W,
    level: flate2::Compression,
    chunk: Vec<u8>,
    /// The tail of the last chunk sent off.
    window: Vec<u8>,
    in_flight: VecDeque<Job>,
    max_in_flight: usize,
    crc: Crc,
}

impl<W: Write> ParallelGz<W> {
    pub fn new(mut out: W, level: flate2::Compression) -> io::Result<Self> {
        out.write_all(&HEADER)?;
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Ok(ParallelGz {
            out,
            level,
            chunk: Vec::with_capacity(CHUNK),
            window: Vec::new(),
            in_flight: VecDeque::new(),
            // One waiting to be written while the cores work on the next ones.
            max_in_flight: cores + 1,
            crc: Crc::new(),
        })
    }

    /// Write the final chunk, wait for every thread, write the trailer.
    pub fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while !self.in_flight.is_empty() {
            self.collect_one()?;
        }
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.out)
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        let dict = std::mem::replace(
            &mut self.window,
            data[data.len().saturating_sub(WINDOW)..].to_vec(),
        );
        let level = self.level;
        self.in_flight
            .push_back(thread::spawn(move || deflate(level, &dict, &data, last)));
        while self.in_flight.len() >= self.max_in_flight {
            self.collect_one()?;
        }
        Ok(())
    }

    fn collect_one(&mut self) -> io::Result<()> {
        let job = self.in_flight.pop_front().expect("a job in flight");
        let (bytes, crc) = job
            .join()
            .map_err(|_| io::Error::other("gzip thread panicked"))??;
        self.out.write_all(&bytes)?;
        self.crc.combine(&crc);
        Ok(())
    }
}

impl<W: Write> Write for ParallelGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK {
            self.dispatch(false)?;
        }
        Ok(n)
    }

    /// Chunks are only cut at fixed sizes; flushing early would change the bytes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raw deflate of one chunk: a sync flush leaves it byte-aligned and not
/// final, so the next chunk's blocks follow on; the last one finishes the stream.
fn deflate(
    level: flate2::Compression,
    dict: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<(Vec<u8>, Crc)> {
    let mut c = Compress::new(level, false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(4096));
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => break,
            // zlib's rule: a flush is complete when it left output space unused.
            _ if !last && all_in && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    let mut crc = Crc::new();
    crc.update(data);
    Ok((out, crc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Compressible but not trivial: text-like bytes from a small LCG.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcdefgh ijklmnop\n"[(x >> 16) as usize % 18]
            })
            .collect()
    }

    fn compress(data: &[u8], step: usize) -> Vec<u8> {
        let mut gz = ParallelGz::new(Vec::new(), flate2::Compression::default()).unwrap();
        for piece in data.chunks(step) {
            gz.write_all(piece).unwrap();
        }
        gz.finish().unwrap()
    }

    #[test]
    fn one_gzip_member_that_any_reader_decodes() {
        for len in [0, 10, CHUNK, 3 * CHUNK + 12_345] {
            let data = sample(len);
            let gz = compress(&data, 100_003);
            // GzDecoder reads a single member and checks CRC32 and ISIZE.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "length {len}");
            assert_eq!(&gz[..10], &HEADER);
        }
        let gz = compress(&sample(3 * CHUNK), 65536);
        let mut child = match std::process::Command::new("gzip")
            .arg("-t")
            .stdin(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(_) => return crate::test_support::skip("gzip is not installed"),
        };
        child.stdin.take().unwrap().write_all(&gz).unwrap();
        assert!(child.wait().unwrap().success(), "gzip -t accepts it");
    }

    #[test]
    fn the_bytes_do_not_depend_on_how_they_were_written() {
        let data = sample(2 * CHUNK + 777);
        assert_eq!(compress(&data, 4096), compress(&data, 1_000_000));
    }
}
