//! The tar reader behind `expand` and layer application: any bytes
//! (compressed or not; the first byte picks expand or layer) unpack into
//! the tree or fail cleanly, and nothing outside the tree changes: the tree
//! sits beside a canary and a directory `out` that must stay as they are.
//! (scripts/fuzz.sh also runs the target with a read-only root, so that a
//! reader following an absolute path out could not harm the machine.)
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        std::fs::write(d.path().join("canary"), "canary").expect("write canary");
        std::fs::create_dir_all(d.path().join("out/dir")).expect("create out");
        std::fs::write(d.path().join("out/file"), "file").expect("write out/file");
        d
    })
}

type Entry = (PathBuf, u32, u32, u64, u64, i64, i64, i64);

/// Everything below `dir` but `dir/tree` that a write would change.
fn outside(dir: &Path) -> Vec<Entry> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<Entry>) {
        let full = root.join(rel);
        let m = std::fs::symlink_metadata(&full).expect("stat");
        out.push((
            rel.to_path_buf(),
            m.mode(),
            m.uid(),
            m.len(),
            m.nlink(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime_nsec(),
        ));
        if m.is_dir() {
            for e in std::fs::read_dir(&full).expect("read dir") {
                let name = e.expect("entry").file_name();
                if !(rel.as_os_str().is_empty() && name == "tree") {
                    walk(root, &rel.join(name), out);
                }
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, Path::new(""), &mut v);
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let parent = dir().path();
    let tree = parent.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir(&tree).expect("create tree");
    std::fs::create_dir_all(tree.join("a/b")).expect("lower a/b");
    std::os::unix::fs::symlink("../out", tree.join("up")).expect("lower up");
    let before = outside(parent);
    let whiteouts = mode & 1 == 1;
    let result = genoci::layout::unpack::unpack_stream(data, Path::new("fuzz"), &tree, whiteouts);
    if let Err(e) = result {
        assert!(!e.to_string().is_empty(), "an empty error");
    }
    assert_eq!(
        before,
        outside(parent),
        "something outside the tree changed"
    );
});
