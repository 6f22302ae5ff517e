//! The mount table of this mount namespace (`/proc/self/mountinfo`).

use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

pub const PATH: &str = "/proc/self/mountinfo";

/// Every mount point, in table order: parents before children, and lower
/// mounts before the ones stacked on them.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    Ok(parse(&std::fs::read_to_string(PATH)?))
}

/// The mount points of a mountinfo table.
pub fn parse(table: &str) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// Decode the octal escapes (`\040` for a space) of a mountinfo field.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b\011c\\d"), PathBuf::from("/a b\tc\\\\d"));
        assert_eq!(unescape(r"/x\134y"), PathBuf::from("/x\\y"));
        assert_eq!(unescape(r"/plain\"), PathBuf::from(r"/plain\"));
    }

    #[test]
    fn mount_points_are_the_fifth_field() {
        let table =
            "22 1 0:21 / /proc rw,nosuid - proc proc rw\n30 22 0:5 / /my\\040dir rw - tmpfs t rw\n";
        assert_eq!(
            parse(table),
            vec![PathBuf::from("/proc"), PathBuf::from("/my dir")]
        );
    }
}
