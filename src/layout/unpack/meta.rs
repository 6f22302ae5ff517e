//! An entry's metadata: read from its tar header and PAX records, and set
//! on what the entry became in the tree.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use filetime::FileTime;

use crate::layout::{LayoutError, Result};

/// An entry's metadata as the archive gives it (PAX records win).
#[derive(Debug, Clone)]
pub(super) struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: FileTime,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Owner, then the xattrs the entry does not carry go (a directory a
/// lower layer made keeps its own; a new file inherits a default ACL),
/// then mode (a chown clears setuid bits), then xattrs (a chown clears
/// `security.capability`), then times.
pub(super) fn set_meta(full: &Path, meta: &Meta, symlink: bool) -> Result<()> {
    std::os::unix::fs::lchown(full, Some(meta.uid), Some(meta.gid))
        .map_err(LayoutError::io("chown", full))?;
    let present = crate::xattr::list(full).map_err(LayoutError::io("read xattrs", full))?;
    for (name, _) in present {
        if meta.xattrs.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if let Err(e) = crate::xattr::remove(full, &name) {
            if !matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) {
                return Err(LayoutError::io("remove xattr", full)(e));
            }
            tracing::warn!(path = %full.display(), xattr = %String::from_utf8_lossy(&name), error = %e, "xattr not removed");
        }
    }
    if !symlink {
        fs::set_permissions(full, fs::Permissions::from_mode(meta.mode & 0o7777))
            .map_err(LayoutError::io("chmod", full))?;
    }
    for (name, value) in &meta.xattrs {
        if let Err(e) = crate::xattr::set(full, name, value) {
            let unsupported = matches!(e.raw_os_error(), Some(libc::ENOTSUP))
                || (symlink && e.raw_os_error() == Some(libc::EPERM));
            if !unsupported {
                return Err(LayoutError::io("set xattr", full)(e));
            }
            tracing::warn!(path = %full.display(), xattr = %String::from_utf8_lossy(name), error = %e, "xattr not kept");
        }
    }
    filetime::set_symlink_file_times(full, meta.mtime, meta.mtime)
        .map_err(LayoutError::io("set times", full))
}

pub(super) fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let header = entry.header();
    let old = header.as_old();
    let mut uid = blank_is_zero(&old.uid, header.uid())?;
    let mut gid = blank_is_zero(&old.gid, header.gid())?;
    let mut mtime = FileTime::from_unix_time(blank_is_zero(&old.mtime, header.mtime())? as i64, 0);
    let mode = header.mode()?;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((name.to_vec(), value.to_vec()));
                continue;
            }
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                b"uid" => uid = text.parse().unwrap_or(uid),
                b"gid" => gid = text.parse().unwrap_or(gid),
                b"mtime" => mtime = parse_pax_time(text).unwrap_or(mtime),
                _ => {}
            }
        }
    }
    let id = |v: u64| {
        u32::try_from(v)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "owner id out of range"))
    };
    Ok(Meta {
        mode,
        uid: id(uid)?,
        gid: id(gid)?,
        mtime,
        xattrs,
    })
}

/// Some writers leave numeric fields they do not care about empty; GNU tar
/// and Go read those as 0.
fn blank_is_zero(field: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if field.iter().all(|&b| b == 0 || b == b' ') {
        Ok(0)
    } else {
        parsed
    }
}

/// A PAX time: seconds, optionally with a fraction; negative before 1970
/// (`-1.25` is a quarter second after `-2`).
fn parse_pax_time(text: &str) -> Option<FileTime> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let mut nanos: u32 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    if text.starts_with('-') && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some(FileTime::from_unix_time(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse() {
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some(FileTime::from_unix_time(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("12"), Some(FileTime::from_unix_time(12, 0)));
        assert_eq!(
            parse_pax_time("-86400"),
            Some(FileTime::from_unix_time(-86400, 0))
        );
        assert_eq!(
            parse_pax_time("-1.25"),
            Some(FileTime::from_unix_time(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time("x"), None);
    }
}
