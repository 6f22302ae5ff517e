//! Digests of host input files (tarballs, packages, scripts, large copied
//! files), remembered between builds so that an unchanged input is not read
//! again to find that it is unchanged.
//!
//! A digest is reused while the file's device, inode, size, mtime and ctime
//! (both to the nanosecond) are the ones it was computed for. The ctime
//! catches what the others miss: a rewrite keeping the size and putting the
//! mtime back (`touch -d`, `cp -p`, `tar x`) still sets the ctime to now,
//! and nothing but the kernel can set it back.
//!
//! The record lives in the store directory (`inputs.json`), not in the
//! layout, so layouts sharing a store share what was hashed for them.
//! Several builds may run on one store at once: each writes its whole record
//! to a temp file of its own and renames it into place, so the last one wins
//! and none is ever half written. It is a cache: an entry lost that way, or
//! a missing or unreadable record, only costs a re-read.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record's file name in the store directory.
pub const FILE: &str = "inputs.json";

/// Smaller files are read every time: reading them costs about what a
/// lookup does, and they would only grow the record.
const MIN_SIZE: u64 = 64 << 10;

/// A file changed less than this before it was stat'ed for hashing may
/// change again within the same timestamp tick (the kernel stamps files
/// from a clock that advances in ticks of a few milliseconds), leaving
/// size, mtime and ctime as recorded: such a digest is not kept.
const RACY: Duration = Duration::from_millis(50);

/// Past this many entries, those no build of this run asked for are dropped.
const MAX_ENTRIES: usize = 4096;

/// What identifies one version of a file: dev, ino, size, mtime and ctime
/// (seconds and nanoseconds each).
type Stamp = [i64; 7];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    /// Hex sha256 of the bytes.
    sha256: String,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Keys looked up or added by this run.
    used: std::collections::HashSet<String>,
    changed: bool,
    /// Files read whole (for tests and `-vv`).
    reads: usize,
}

/// The digests of one store's inputs; shared by the threads of a build.
#[derive(Debug)]
pub struct InputDigests {
    /// Where the record is kept; `None`: in memory only.
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl InputDigests {
    /// The record at `path` (empty when missing or unreadable).
    pub fn load(path: &Path) -> InputDigests {
        let entries = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), "ignoring the input digest record: {e}");
                HashMap::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), "ignoring the input digest record: {e}");
                HashMap::new()
            }
        };
        InputDigests {
            path: Some(path.to_path_buf()),
            state: Mutex::new(State {
                entries,
                ..State::default()
            }),
        }
    }

    /// A record kept in memory only.
    pub fn in_memory() -> InputDigests {
        InputDigests {
            path: None,
            state: Mutex::default(),
        }
    }

    /// The sha256 of the bytes of `path` (through symlinks, as the actions
    /// read it) and its size.
    pub fn digest(&self, path: &Path) -> io::Result<([u8; 32], u64)> {
        let meta = fs::metadata(path)?;
        let (key, stamp) = (format!("{}:{}", meta.dev(), meta.ino()), stamp_of(&meta));
        if meta.len() >= MIN_SIZE {
            let mut state = self.lock();
            state.used.insert(key.clone());
            if let Some(entry) = state.entries.get(&key).filter(|e| e.stamp == stamp) {
                if let Some(digest) = from_hex(&entry.sha256) {
                    return Ok((digest, meta.len()));
                }
            }
        }
        let started = SystemTime::now();
        let (digest, before, after) = read_digest(path)?;
        let mut state = self.lock();
        state.reads += 1;
        let unchanged = stamp_of(&before) == stamp_of(&after);
        if after.len() >= MIN_SIZE && unchanged && settled(&after, started) {
            state.entries.insert(
                key,
                Entry {
                    stamp: stamp_of(&after),
                    sha256: hex::encode(digest),
                },
            );
            state.changed = true;
        }
        Ok((digest, after.len()))
    }

    /// How many files were read whole so far.
    pub fn reads(&self) -> usize {
        self.lock().reads
    }

    /// Write the record back if it changed: to a temp file, renamed into
    /// place, so that a reader never sees half of one.
    pub fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut state = self.lock();
        if !state.changed {
            return Ok(());
        }
        if state.entries.len() > MAX_ENTRIES {
            let used = std::mem::take(&mut state.used);
            state.entries.retain(|k, _| used.contains(k));
            state.used = used;
        }
        let bytes = serde_json::to_vec(&state.entries).expect("entries always serialize");
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".inputs-")
            .tempfile_in(dir)?;
        io::Write::write_all(&mut tmp, &bytes)?;
        tmp.persist(path).map_err(|e| e.error)?;
        state.changed = false;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The digest of the file at `path`, with its metadata before and after
/// the read (equal when nothing changed it meanwhile).
fn read_digest(path: &Path) -> io::Result<([u8; 32], fs::Metadata, fs::Metadata)> {
    let mut f = fs::File::open(path)?;
    let before = f.metadata()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let after = f.metadata()?;
    Ok((h.finalize().into(), before, after))
}

fn stamp_of(m: &fs::Metadata) -> Stamp {
    [
        m.dev() as i64,
        m.ino() as i64,
        m.len() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ]
}

/// Whether the file's last change (its ctime) is older than `started` by
/// more than a timestamp tick: see [`RACY`].
fn settled(m: &fs::Metadata, started: SystemTime) -> bool {
    let ctime = Duration::new(m.ctime().max(0) as u64, m.ctime_nsec() as u32);
    let started = started.duration_since(UNIX_EPOCH).unwrap_or_default();
    ctime + RACY < started
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes of `byte`, changed long enough ago to be recorded.
    fn settled_file(path: &Path, byte: u8, len: usize) {
        fs::write(path, vec![byte; len]).unwrap();
        std::thread::sleep(RACY * 2);
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn an_unchanged_file_is_read_once_across_runs() {
        let t = tempfile::tempdir().unwrap();
        let (file, record) = (t.path().join("big"), t.path().join(FILE));
        settled_file(&file, 1, 100_000);
        let first = InputDigests::load(&record);
        assert_eq!(first.digest(&file).unwrap(), (sha(&[1; 100_000]), 100_000));
        assert_eq!(first.digest(&file).unwrap().0, sha(&[1; 100_000]));
        assert_eq!(first.reads(), 1);
        first.save().unwrap();

        let second = InputDigests::load(&record);
        assert_eq!(second.digest(&file).unwrap().0, sha(&[1; 100_000]));
        assert_eq!(second.reads(), 0, "the recorded digest was not used");
        let left: Vec<_> = fs::read_dir(record.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".inputs-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_rewrite_keeping_size_and_mtime_is_seen_by_its_ctime() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("big");
        settled_file(&file, 1, 100_000);
        let digests = InputDigests::in_memory();
        digests.digest(&file).unwrap();
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&file).unwrap());
        fs::write(&file, vec![2u8; 100_000]).unwrap();
        filetime::set_file_mtime(&file, mtime).unwrap();
        assert_eq!(digests.digest(&file).unwrap().0, sha(&[2; 100_000]));
        assert_eq!(digests.reads(), 2);
    }

    #[test]
    fn a_file_changed_just_now_or_small_is_not_recorded() {
        let t = tempfile::tempdir().unwrap();
        let digests = InputDigests::in_memory();
        let fresh = t.path().join("fresh");
        fs::write(&fresh, vec![3u8; 100_000]).unwrap();
        digests.digest(&fresh).unwrap();
        digests.digest(&fresh).unwrap();
        let small = t.path().join("small");
        settled_file(&small, 4, 10);
        digests.digest(&small).unwrap();
        digests.digest(&small).unwrap();
        assert_eq!(digests.reads(), 4);
        assert!(digests.lock().entries.is_empty());
    }

    #[test]
    fn a_damaged_record_is_ignored_and_replaced() {
        let t = tempfile::tempdir().unwrap();
        let (file, record) = (t.path().join("big"), t.path().join(FILE));
        fs::write(&record, "{not json").unwrap();
        settled_file(&file, 5, 70_000);
        let digests = InputDigests::load(&record);
        assert_eq!(digests.digest(&file).unwrap().0, sha(&[5; 70_000]));
        digests.save().unwrap();
        assert_eq!(InputDigests::load(&record).lock().entries.len(), 1);
    }
}
