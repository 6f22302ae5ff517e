//! BTRFS_IOC_SEND with no file data, and a parser for the stream it writes.
//!
//! The stream describes how to turn the parent snapshot into the sent one,
//! command by command, each naming the paths it touches. Only those paths can
//! differ between the two trees, which is what makes `changes` cost
//! O(changed files).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::driver::{DriverError, Result};

#[repr(C)]
struct SendArgs {
    send_fd: i64,
    clone_sources_count: u64,
    clone_sources: *mut u64,
    parent_root: u64,
    flags: u64,
    version: u32,
    reserved: [u8; 28],
}

const _: () = assert!(std::mem::size_of::<SendArgs>() == 72);

nix::ioctl_write_ptr!(btrfs_ioc_send, 0x94, 38, SendArgs);

const SEND_FLAG_NO_FILE_DATA: u64 = 0x1;

/// The send stream of read-only subvolume `tree` relative to the read-only
/// subvolume whose id is `parent_id`, without file data.
pub fn send(tree: &Path, parent_id: u64) -> Result<Vec<u8>> {
    let dir = File::open(tree).map_err(DriverError::io("open", tree))?;
    let (read_end, write_end) =
        nix::unistd::pipe().map_err(|e| DriverError::io("create a pipe for", tree)(e.into()))?;
    // The kernel blocks on a full pipe, so something must drain it meanwhile.
    let reader = std::thread::spawn(move || {
        let mut stream = Vec::new();
        File::from(read_end)
            .read_to_end(&mut stream)
            .map(|_| stream)
    });
    let args = SendArgs {
        send_fd: i64::from(write_end.as_raw_fd()),
        clone_sources_count: 0,
        clone_sources: std::ptr::null_mut(),
        parent_root: parent_id,
        flags: SEND_FLAG_NO_FILE_DATA,
        version: 0,
        reserved: [0; 28],
    };
    // SAFETY: `args` is a valid btrfs_ioctl_send_args for the whole call.
    let sent = unsafe { btrfs_ioc_send(dir.as_raw_fd(), &args) };
    // Closing our end is what ends the reader's read_to_end.
    drop(write_end);
    let stream = reader
        .join()
        .map_err(|_| DriverError::Btrfs("send stream reader panicked".into()))?
        .map_err(DriverError::io("read send stream of", tree))?;
    sent.map_err(|e| DriverError::io("send", tree)(e.into()))?;
    tracing::debug!(tree = %tree.display(), parent_id, bytes = stream.len(), "send stream read");
    Ok(stream)
}

/// The commands of a send stream that matter for finding changed paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Subvol,
    Snapshot,
    Mkfile,
    Mkdir,
    Mknod,
    Mkfifo,
    Mksock,
    Symlink,
    Rename,
    Link,
    Unlink,
    Rmdir,
    SetXattr,
    RemoveXattr,
    Write,
    Clone,
    Truncate,
    Chmod,
    Chown,
    Utimes,
    End,
    UpdateExtent,
    Fallocate,
    Fileattr,
    EncodedWrite,
    EnableVerity,
    Unknown(u16),
}

impl CommandKind {
    fn from_code(code: u16) -> Self {
        use CommandKind::*;
        const KNOWN: [CommandKind; 26] = [
            Subvol,
            Snapshot,
            Mkfile,
            Mkdir,
            Mknod,
            Mkfifo,
            Mksock,
            Symlink,
            Rename,
            Link,
            Unlink,
            Rmdir,
            SetXattr,
            RemoveXattr,
            Write,
            Clone,
            Truncate,
            Chmod,
            Chown,
            Utimes,
            End,
            UpdateExtent,
            Fallocate,
            Fileattr,
            EncodedWrite,
            EnableVerity,
        ];
        match code {
            1..=26 => KNOWN[usize::from(code) - 1],
            other => Unknown(other),
        }
    }
}

/// One command with the path attributes it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub kind: CommandKind,
    /// `BTRFS_SEND_A_PATH`: the entry the command acts on.
    pub path: Option<PathBuf>,
    /// `BTRFS_SEND_A_PATH_TO`: the new name of a rename.
    pub path_to: Option<PathBuf>,
    /// `BTRFS_SEND_A_PATH_LINK`: the existing name for `link`, the target for `symlink`.
    pub path_link: Option<PathBuf>,
}

const MAGIC: &[u8] = b"btrfs-stream\0";
const ATTR_DATA: u16 = 19;
const ATTR_PATH: u16 = 15;
const ATTR_PATH_TO: u16 = 16;
const ATTR_PATH_LINK: u16 = 17;

fn malformed(at: usize, what: &str) -> DriverError {
    DriverError::Btrfs(format!("malformed send stream at byte {at}: {what}"))
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse a whole send stream (v1, or v2 with its unsized data attribute).
pub fn parse(stream: &[u8]) -> Result<Vec<Command>> {
    if stream.len() < MAGIC.len() + 4 || &stream[..MAGIC.len()] != MAGIC {
        return Err(malformed(0, "no btrfs-stream header"));
    }
    let version = le_u32(stream, MAGIC.len());
    let mut at = MAGIC.len() + 4;
    let mut commands = Vec::new();
    // The stream comes straight from the kernel through a pipe, so the
    // per-command crc32c adds nothing and is not checked.
    while at < stream.len() {
        if stream.len() - at < 10 {
            return Err(malformed(at, "truncated command header"));
        }
        let len = le_u32(stream, at) as usize;
        let kind = CommandKind::from_code(le_u16(stream, at + 4));
        let body_start = at + 10;
        let body = stream
            .get(body_start..body_start + len)
            .ok_or_else(|| malformed(at, "command longer than the stream"))?;
        commands.push(parse_attrs(kind, body, body_start, version)?);
        at = body_start + len;
    }
    Ok(commands)
}

fn parse_attrs(kind: CommandKind, body: &[u8], offset: usize, version: u32) -> Result<Command> {
    let mut cmd = Command {
        kind,
        path: None,
        path_to: None,
        path_link: None,
    };
    let mut at = 0;
    while at < body.len() {
        if body.len() - at < 2 {
            return Err(malformed(offset + at, "truncated attribute"));
        }
        let ty = le_u16(body, at);
        // From v2 on, file data runs to the end of its command with no length.
        if version >= 2 && ty == ATTR_DATA {
            break;
        }
        if body.len() - at < 4 {
            return Err(malformed(offset + at, "truncated attribute"));
        }
        let len = usize::from(le_u16(body, at + 2));
        let value = body
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| malformed(offset + at, "attribute longer than its command"))?;
        let path = || PathBuf::from(OsStr::from_bytes(value));
        match ty {
            ATTR_PATH => cmd.path = Some(path()),
            ATTR_PATH_TO => cmd.path_to = Some(path()),
            ATTR_PATH_LINK => cmd.path_link = Some(path()),
            _ => {}
        }
        at += 4 + len;
    }
    Ok(cmd)
}

/// Every path of the sent tree that a command touches: created, removed,
/// renamed (both names), linked, or with changed data or metadata.
pub fn touched_paths(commands: &[Command]) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    for cmd in commands {
        match cmd.kind {
            // These name the subvolume itself, not an entry in it.
            CommandKind::Subvol | CommandKind::Snapshot | CommandKind::End => continue,
            // A symlink's `path_link` is its target text, not an entry.
            CommandKind::Symlink => {}
            _ => paths.extend(cmd.path_link.iter().cloned()),
        }
        paths.extend(cmd.path.iter().cloned());
        paths.extend(cmd.path_to.iter().cloned());
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ty.to_le_bytes().to_vec();
        v.extend((value.len() as u16).to_le_bytes());
        v.extend(value);
        v
    }

    fn command(code: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend(code.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v.extend(body);
        v
    }

    fn stream(version: u32, commands: &[Vec<u8>]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend(version.to_le_bytes());
        for c in commands {
            v.extend(c);
        }
        v
    }

    #[test]
    fn paths_come_from_path_attributes_only() {
        let s = stream(
            1,
            &[
                command(2, &[tlv(ATTR_PATH, b"work-tree")]),
                command(9, &[tlv(ATTR_PATH, b"a/old"), tlv(ATTR_PATH_TO, b"a/new")]),
                command(8, &[tlv(ATTR_PATH, b"ln"), tlv(ATTR_PATH_LINK, b"/etc/x")]),
                command(10, &[tlv(ATTR_PATH, b"hard"), tlv(ATTR_PATH_LINK, b"orig")]),
                command(16, &[tlv(ATTR_PATH, b"dst"), tlv(22, b"src")]),
                command(21, &[]),
            ],
        );
        let commands = parse(&s).unwrap();
        assert_eq!(commands[1].kind, CommandKind::Rename);
        let got: Vec<_> = touched_paths(&commands).into_iter().collect();
        let want: Vec<PathBuf> = ["a/new", "a/old", "dst", "hard", "ln", "orig"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn v2_data_runs_to_the_end_of_its_command() {
        let mut write = tlv(ATTR_PATH, b"f");
        write.extend(ATTR_DATA.to_le_bytes());
        write.extend(b"raw bytes with no length");
        let s = stream(2, &[command(15, &[write]), command(21, &[])]);
        let commands = parse(&s).unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0].path, Some(PathBuf::from("f")));
    }

    #[test]
    fn truncated_streams_are_errors() {
        let s = stream(1, &[command(3, &[tlv(ATTR_PATH, b"file")])]);
        assert!(parse(&s[..s.len() - 2]).is_err());
        assert!(parse(b"not a stream at all").is_err());
    }
}
