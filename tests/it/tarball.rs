//! Tarballs made byte by byte: names are written straight into the header,
//! so `..` and absolute paths survive (the `tar` crate's path setters refuse
//! them), and every owner, mode and device number is the test's choice.

// Shared by several test files, each using a part.
#![allow(dead_code)]

use std::io::Write;

pub enum Kind<'a> {
    File(&'a [u8]),
    Dir,
    Symlink(&'a str),
    Hardlink(&'a str),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

pub struct Tarball {
    builder: tar::Builder<Vec<u8>>,
    pub mtime: u64,
}

impl Tarball {
    pub fn new() -> Tarball {
        Tarball {
            builder: tar::Builder::new(Vec::new()),
            mtime: 1_600_000_000,
        }
    }

    /// An entry owned by root, mode 0755 for directories and 0644 otherwise.
    pub fn add(&mut self, name: &str, kind: Kind) -> &mut Tarball {
        let mode = if matches!(kind, Kind::Dir) {
            0o755
        } else {
            0o644
        };
        self.add_as(name, kind, mode, 0, 0)
    }

    pub fn add_as(
        &mut self,
        name: &str,
        kind: Kind,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Tarball {
        let mut h = tar::Header::new_ustar();
        let raw = name.as_bytes();
        assert!(raw.len() < 100, "name too long for a plain header: {name}");
        h.as_old_mut().name = [0; 100];
        h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(self.mtime);
        h.set_size(0);
        let mut data: &[u8] = &[];
        match kind {
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                data = d;
            }
            Kind::Dir => h.set_entry_type(tar::EntryType::Directory),
            Kind::Symlink(t) | Kind::Hardlink(t) => {
                h.set_entry_type(if matches!(kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_link_name_literal(t).unwrap();
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                h.set_entry_type(if matches!(kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
            }
            Kind::Fifo => h.set_entry_type(tar::EntryType::Fifo),
        }
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    /// Give the next entry an extended attribute (a PAX `SCHILY.xattr.` record).
    pub fn xattr(&mut self, name: &str, value: &[u8]) -> &mut Tarball {
        let key = format!("SCHILY.xattr.{name}");
        self.builder
            .append_pax_extensions([(key.as_str(), value)])
            .unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}
