//! Content-addressed blobs under `blobs/sha256/`, hashed while written.
//! A blob is written to a temp file, fsynced and renamed (an identical blob
//! already there is kept); read back, its size and digest are checked.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{Descriptor, Digest, MediaType};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{canonical_json, sync_dir, Layout, LayoutError, Result};

/// A blob being written: hashed and counted on the way to a temp file, and
/// moved to its content address by [`BlobWriter::finish`]. Dropped unfinished,
/// it removes its temp file.
pub struct BlobWriter {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest_dir: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("blob writer used after finish");
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("blob writer used after finish")
            .flush()
    }
}

impl BlobWriter {
    /// Make the blob durable under its digest and describe it.
    pub fn finish(mut self, media_type: MediaType) -> Result<Descriptor> {
        let file = self.file.take().expect("blob writer finished twice");
        match self.put_in_place(file) {
            Ok(hex) => Ok(Descriptor::new(media_type, self.size, sha256_digest(&hex))),
            Err(e) => {
                // The last write or the fsync fails on a full disk: the temp
                // file must not stay (Drop no longer sees it).
                let _ = fs::remove_file(&self.tmp);
                Err(e)
            }
        }
    }

    /// Flush, fsync and rename the temp file to its digest; returns the hex.
    fn put_in_place(&mut self, file: BufWriter<File>) -> Result<String> {
        let file = file
            .into_inner()
            .map_err(|e| LayoutError::io("write", &self.tmp)(e.into_error()))?;
        file.sync_all()
            .map_err(LayoutError::io("fsync", &self.tmp))?;
        drop(file);
        let hex = hex::encode(self.hasher.finalize_reset());
        let dest = self.dest_dir.join(&hex);
        if dest.exists() {
            // Same digest, same bytes: keep the one already there.
            fs::remove_file(&self.tmp).map_err(LayoutError::io("remove", &self.tmp))?;
        } else {
            fs::rename(&self.tmp, &dest).map_err(LayoutError::io("rename into place", &dest))?;
            sync_dir(&self.dest_dir)?;
        }
        Ok(hex)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A blob's bytes, checked against its descriptor: reading past the declared
/// size, or reaching the end with another digest, is an `InvalidData` error.
pub struct BlobReader {
    file: File,
    path: PathBuf,
    expected_digest: String,
    expected_size: u64,
    hasher: Sha256,
    size: u64,
    verified: bool,
}

impl BlobReader {
    /// Read what is left and check the whole blob; for consumers (a tar
    /// reader) that stop before the end.
    pub fn finish(mut self) -> Result<()> {
        match io::copy(&mut self, &mut io::sink()) {
            Ok(_) => Ok(()),
            Err(e) => Err(read_error(&self.path, e)),
        }
    }

    fn corrupt(&self, expected: String, found: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            LayoutError::Corrupt {
                digest: self.expected_digest.clone(),
                expected,
                found,
            },
        )
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verified {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if self.size > self.expected_size {
            return Err(self.corrupt(
                format!("{} bytes", self.expected_size),
                format!("more than {} bytes", self.expected_size),
            ));
        }
        if n == 0 && !buf.is_empty() {
            if self.size != self.expected_size {
                return Err(self.corrupt(
                    format!("{} bytes", self.expected_size),
                    format!("{} bytes", self.size),
                ));
            }
            let found = format!("sha256:{}", hex::encode(self.hasher.finalize_reset()));
            if found != self.expected_digest {
                return Err(self.corrupt(self.expected_digest.clone(), found));
            }
            self.verified = true;
        }
        Ok(n)
    }
}

/// The [`LayoutError::Corrupt`] a [`BlobReader`] reported, or the I/O error as it is.
pub(crate) fn read_error(path: &Path, e: io::Error) -> LayoutError {
    if e.get_ref().is_some_and(|inner| inner.is::<LayoutError>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<LayoutError>().expect("checked above");
    }
    LayoutError::io("read", path)(e)
}

pub(crate) fn sha256_digest(hex: &str) -> Digest {
    Digest::from_str(&format!("sha256:{hex}")).expect("a sha256 hex digest is a valid digest")
}

impl Layout {
    /// A writer for a new blob.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let (file, tmp) = self.temp_file()?;
        Ok(BlobWriter {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            dest_dir: self.blobs_dir(),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Store `value` as JSON in canonical bytes.
    pub fn put_json<T: Serialize>(&self, media_type: MediaType, value: &T) -> Result<Descriptor> {
        let bytes = canonical_json(value)?;
        let mut writer = self.blob_writer()?;
        writer
            .write_all(&bytes)
            .map_err(LayoutError::io("write", &writer.tmp))?;
        writer.finish(media_type)
    }

    /// The whole blob, checked against the descriptor's size and digest.
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let mut reader = self.open_blob(desc)?;
        let mut bytes = Vec::with_capacity(desc.size().min(1 << 24) as usize);
        match reader.read_to_end(&mut bytes) {
            Ok(_) => Ok(bytes),
            Err(e) => Err(read_error(&reader.path, e)),
        }
    }

    /// A reader over the blob that fails if its bytes do not match `desc`.
    pub fn open_blob(&self, desc: &Descriptor) -> Result<BlobReader> {
        let path = self.descriptor_path(desc)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LayoutError::MissingBlob(desc.digest().to_string()))
            }
            Err(e) => return Err(LayoutError::io("open", path)(e)),
        };
        Ok(BlobReader {
            file,
            path,
            expected_digest: desc.digest().to_string(),
            expected_size: desc.size(),
            hasher: Sha256::new(),
            size: 0,
            verified: false,
        })
    }

    /// Whether the blob `digest` (`algorithm:hex`) is in the layout.
    #[cfg(test)]
    pub fn has_blob(&self, digest: &str) -> bool {
        let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        Digest::from_str(digest).is_ok()
            && self.root.join("blobs").join(algorithm).join(hex).is_file()
    }

    /// The path of a sha256 blob; other algorithms are refused, and a digest
    /// from an untrusted document never names a path outside `blobs/`
    /// because oci-spec checks its characters and length.
    pub(crate) fn descriptor_path(&self, desc: &Descriptor) -> Result<PathBuf> {
        match desc.as_digest_sha256() {
            Some(hex) => Ok(self.blobs_dir().join(hex)),
            None => Err(LayoutError::Invalid {
                what: format!("blob {}", desc.digest()),
                message: "only sha256 digests are supported".to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(&t.path().join("oci")).unwrap();
        (t, l)
    }

    #[test]
    fn blobs_are_content_addressed() {
        let (_t, l) = layout();
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"hello").unwrap();
        let d = w.finish(MediaType::ImageLayer).unwrap();
        assert_eq!(
            d.digest().to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.size(), 5);
        assert!(l.has_blob(d.digest().as_ref()));
        assert_eq!(l.read_blob(&d).unwrap(), b"hello");
        // Writing the same bytes again keeps one blob.
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"hello").unwrap();
        assert_eq!(w.finish(MediaType::ImageLayer).unwrap(), d);
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let (_t, l) = layout();
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        let names: Vec<_> = fs::read_dir(l.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names
            .iter()
            .all(|n| !n.starts_with(super::super::TEMP_PREFIX)));
        assert_eq!(fs::read_dir(l.blobs_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_corrupted_blob_is_caught() {
        let (_t, l) = layout();
        let d = l
            .put_json(MediaType::ImageConfig, &serde_json::json!({"a": 1}))
            .unwrap();
        let path = l.descriptor_path(&d).unwrap();
        fs::write(&path, br#"{"a":2}"#).unwrap();
        assert!(matches!(l.read_blob(&d), Err(LayoutError::Corrupt { .. })));
        fs::write(&path, br#"{"a":22}"#).unwrap();
        assert!(matches!(l.read_blob(&d), Err(LayoutError::Corrupt { .. })));
        let mut r = l.open_blob(&d).unwrap();
        let mut first = [0u8; 2];
        r.read_exact(&mut first).unwrap();
        assert!(matches!(r.finish(), Err(LayoutError::Corrupt { .. })));
        fs::remove_file(&path).unwrap();
        assert!(matches!(l.read_blob(&d), Err(LayoutError::MissingBlob(_))));
    }
}
