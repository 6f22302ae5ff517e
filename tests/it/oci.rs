//! Reading a built layout directly: index, manifests, configs and the
//! entries of layer blobs, so tests check the bytes genoci wrote rather than
//! what a tool makes of them.

// Shared by several test files, each using a part.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::Env;

/// One entry of a layer tarball, as the tar headers (and PAX records) say.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: tar::EntryType,
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub mtime: u64,
    pub size: u64,
    pub link: Option<String>,
    pub dev: (u32, u32),
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub data: Vec<u8>,
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

pub fn index(layout: &Path) -> Value {
    read_json(&layout.join("index.json"))
}

/// The manifest digest a tag points at.
pub fn manifest_digest(layout: &Path, tag: &str) -> String {
    index(layout)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn manifest(layout: &Path, tag: &str) -> Value {
    read_json(&blob_path(layout, &manifest_digest(layout, tag)))
}

pub fn config(layout: &Path, tag: &str) -> Value {
    let m = manifest(layout, tag);
    read_json(&blob_path(layout, m["config"]["digest"].as_str().unwrap()))
}

/// The layer digests of a tag, bottom first.
pub fn layers(layout: &Path, tag: &str) -> Vec<String> {
    manifest(layout, tag)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The uncompressed tar bytes of a layer blob (gzip, zstd or plain, by magic).
pub fn layer_tar(layout: &Path, digest: &str) -> Vec<u8> {
    let raw = fs::read(blob_path(layout, digest)).unwrap();
    let mut out = Vec::new();
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(&raw[..]).unwrap();
    } else {
        out = raw;
    }
    out
}

pub fn entries(layout: &Path, digest: &str) -> Vec<Entry> {
    let tar_bytes = layer_tar(layout, digest);
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut e = entry.unwrap();
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let h = e.header().clone();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Entry {
            path,
            kind: h.entry_type(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mode: h.mode().unwrap(),
            mtime: h.mtime().unwrap(),
            size: h.size().unwrap(),
            link,
            // Only device entries need the device fields filled in.
            dev: if matches!(h.entry_type(), tar::EntryType::Char | tar::EntryType::Block) {
                (
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                )
            } else {
                (0, 0)
            },
            xattrs,
            data,
        });
    }
    out
}

/// The entries of a tag's top layer.
pub fn top_entries(env: &Env, tag: &str) -> Vec<Entry> {
    let layers = layers(&env.layout(), tag);
    entries(&env.layout(), layers.last().expect("a layer"))
}

/// Entry paths without a trailing `/`, in layer order.
pub fn paths(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.path.trim_end_matches('/').to_string())
        .collect()
}

pub fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.path.trim_end_matches('/') == path)
        .unwrap_or_else(|| panic!("no {path} in {:?}", paths(entries)))
}

/// A copy of the layout whose index holds only `tag`, for tools that
/// cannot pick one tag out of several (oci-image-tool 1.0.0-rc1).
pub fn single_tag_layout(layout: &Path, tag: &str, dir: &Path) -> PathBuf {
    let copy = dir.join(format!("only-{tag}"));
    fs::create_dir_all(&copy).unwrap();
    fs::copy(layout.join("oci-layout"), copy.join("oci-layout")).unwrap();
    // oci-image-tool wants a real blobs directory: hard links cost nothing.
    let blobs = copy.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    for blob in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let blob = blob.unwrap();
        fs::hard_link(blob.path(), blobs.join(blob.file_name())).unwrap();
    }
    let mut idx = index(layout);
    let only: Vec<Value> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .cloned()
        .collect();
    idx["manifests"] = Value::Array(only);
    fs::write(copy.join("index.json"), idx.to_string()).unwrap();
    copy
}

/// Today's date as the dated tags spell it.
pub fn today() -> String {
    chrono::Local::now().format("%Y-%m-%d").to_string()
}
