//! The image is the tree that built it: every image's layers, applied in a
//! fresh store, give exactly the snapshot the build left in its own store.
//! `Env::genoci` runs [`assert_layers_rebuild_the_store`] after every build
//! of the suite; the tests here pin the cases that once broke it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::util::Env;

/// Global flags of a command line, to run `unpack` on the same layout and store.
fn global_flags<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if ["--driver", "--layout", "--store", "--config"].contains(a) {
            out.push(*a);
            out.extend(it.next());
        } else if a.starts_with("--driver=") || a.starts_with("--layout=") {
            out.push(*a);
        }
    }
    out
}

/// `genoci unpack`'s `TAG: PATH` lines, or `None` when it fails.
pub fn unpack_tags(env: &Env, flags: &[&str]) -> Option<BTreeMap<String, PathBuf>> {
    let mut args = flags.to_vec();
    args.push("unpack");
    let out = env.cmd(&args).output().expect("run genoci unpack");
    if !out.status.success() {
        eprintln!(
            "genoci {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(tag, path)| (tag.to_string(), PathBuf::from(path)))
            .collect(),
    )
}

/// Materialise every tag from its layers in `env`'s verification store and
/// compare it with the snapshot in the store the command used. `epoch` is
/// the `SOURCE_DATE_EPOCH` the build ran with (layers clamp mtimes to it).
pub fn assert_layers_rebuild_the_store(env: &Env, args: &[&str], epoch: Option<i64>) {
    let flags = global_flags(args);
    let layout = flags
        .windows(2)
        .find(|w| w[0] == "--layout")
        .map_or_else(|| env.layout(), |w| env.path().join(w[1]));
    if !layout.join("index.json").exists() {
        return;
    }
    let started = std::time::Instant::now();
    // `unpack` on an overlay store mounts a view per snapshot; the check
    // takes away what it mounted, so the test sees the store as it left it.
    let mounted_before = crate::util::mounts_under(env.path());
    let Some(warm) = unpack_tags(env, &flags) else {
        eprintln!("notice: the store cannot be unpacked; its trees are not compared");
        return;
    };
    let verify = env.verify.path().display().to_string();
    // The same layout and config, but a plain store of its own.
    let mut fresh_flags = Vec::new();
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        match *f {
            "--driver" | "--store" => {
                it.next();
            }
            f if f.starts_with("--driver=") => {}
            f => fresh_flags.push(f),
        }
    }
    fresh_flags.extend(["--driver", "plain", "--store", &verify]);
    let fresh = unpack_tags(env, &fresh_flags)
        .expect("genoci cannot materialise from their layers the images it built");
    assert_eq!(
        warm.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>()
    );
    let mut compared = 0;
    for (tag, path) in &warm {
        if env.verified.borrow().contains(path) {
            continue;
        }
        assert_same_tree(path, &fresh[tag], epoch, &format!("tag {tag}"));
        env.verified.borrow_mut().insert(path.clone());
        compared += 1;
    }
    let views: Vec<String> = crate::util::mounts_under(env.path())
        .into_iter()
        .filter(|m| !mounted_before.contains(m))
        .collect();
    crate::util::unmount_all(&views);
    eprintln!(
        "layers rebuild the store: {compared} trees compared in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// Panic with the differing entries unless the two trees are the same in
/// every way a layer carries.
pub fn assert_same_tree(store: &Path, layers: &Path, epoch: Option<i64>, what: &str) {
    let a = describe_tree(store, epoch);
    let b = describe_tree(layers, epoch);
    if a == b {
        return;
    }
    let mut diffs = Vec::new();
    for path in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (x, y) = (a.get(path), b.get(path));
        if x != y {
            diffs.push(format!(
                "  {path}\n    store:  {}\n    layers: {}",
                x.map_or("(absent)", String::as_str),
                y.map_or("(absent)", String::as_str)
            ));
        }
    }
    let shown = diffs.len().min(20);
    panic!(
        "{what}: the tree rebuilt from the layers ({}) differs from the store's snapshot ({}) at {} paths:\n{}",
        layers.display(),
        store.display(),
        diffs.len(),
        diffs[..shown].join("\n")
    );
}

/// Every entry of a tree (sockets excepted: layers leave them out),
/// described by what a layer carries of it. The root has no mtime in a layer.
pub fn describe_tree(root: &Path, epoch: Option<i64>) -> BTreeMap<String, String> {
    let paths = crate::util::walk(root);
    let mut groups: HashMap<u64, Vec<String>> = HashMap::new();
    for rel in &paths {
        let m = fs::symlink_metadata(root.join(rel)).unwrap();
        if !m.is_dir() && m.nlink() > 1 {
            groups
                .entry(m.ino())
                .or_default()
                .push(rel.display().to_string());
        }
    }
    let mut out = BTreeMap::new();
    let root_meta = fs::symlink_metadata(root).unwrap();
    out.insert(
        "/".to_string(),
        format!(
            "dir {:o} {}:{} xattrs={}",
            root_meta.mode() & 0o7777,
            root_meta.uid(),
            root_meta.gid(),
            xattrs(root)
        ),
    );
    for rel in paths {
        let full = root.join(&rel);
        let m = fs::symlink_metadata(&full).unwrap();
        let ft = m.file_type();
        if ft.is_socket() {
            continue;
        }
        let mut mtime = m.mtime();
        if let Some(e) = epoch {
            mtime = mtime.min(e);
        }
        let kind = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_file() {
            format!("file size={} sha256={}", m.len(), hash(&full))
        } else if ft.is_symlink() {
            format!("symlink -> {}", fs::read_link(&full).unwrap().display())
        } else if ft.is_char_device() || ft.is_block_device() {
            let t = if ft.is_char_device() { "char" } else { "block" };
            format!("{t} {},{}", libc::major(m.rdev()), libc::minor(m.rdev()))
        } else {
            "fifo".to_string()
        };
        let mut group = groups.get(&m.ino()).cloned().unwrap_or_default();
        // A name alone is no link, whatever its link count: an overlay view
        // counts the names a lower file had before one was copied up, and
        // gives the copy the lower file's inode number.
        if ft.is_dir() || m.nlink() < 2 || group.len() < 2 {
            group.clear();
        }
        group.sort();
        // A symlink's mode is not a thing layers carry (it is always 0777).
        let mode = if ft.is_symlink() {
            0o777
        } else {
            m.mode() & 0o7777
        };
        out.insert(
            rel.display().to_string(),
            format!(
                "{kind} {mode:o} {}:{} mtime={mtime} xattrs={} links=[{}]",
                m.uid(),
                m.gid(),
                xattrs(&full),
                group.join(" ")
            ),
        );
    }
    out
}

fn hash(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `name=hexvalue` pairs of an entry's xattrs (not following symlinks), sorted.
pub fn xattrs(path: &Path) -> String {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 1 << 16];
    // SAFETY: the buffer is valid for its length; the path is NUL-terminated.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return String::new();
    }
    names.truncate(n as usize);
    let mut pairs = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 1 << 16];
        // SAFETY: as above.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n >= 0 {
            value.truncate(n as usize);
            pairs.push(format!("{}={}", String::from_utf8_lossy(name), hex(&value)));
        }
    }
    pairs.sort();
    pairs.join(",")
}

// ---- the cases, each on every driver ----

/// Run `test` on a store of each driver in turn.
fn on_every_driver(test: impl Fn(&crate::stores::Store)) {
    for driver in crate::stores::DRIVERS {
        eprintln!("--- driver: {driver:?}");
        if let Some(store) = crate::stores::Store::new(driver) {
            test(&store);
            store.finish();
        }
    }
}

/// A spec: busybox as `bb`, then `targets` (YAML text) on it.
fn spec(env: &Env, targets: &str) {
    env.busybox("busybox.tar.gz");
    env.write(
        "spec.yaml",
        &format!("bb:\n  base: empty\n  expand: ./busybox.tar.gz\n{targets}"),
    );
}

/// What the image holds at `path`, as umoci unpacks it.
fn umoci_read(env: &Env, tag: &str, path: &str) -> String {
    let root = env.unpack(tag);
    let text = fs::read_to_string(root.join(path)).unwrap_or_else(|e| format!("({e})"));
    fs::remove_dir_all(root.parent().unwrap()).unwrap();
    text
}

#[test]
fn a_directory_renamed_onto_another_keeps_its_new_content() {
    on_every_driver(|env| {
        spec(
            env,
            r#"apps:
  base: bb
  run: |
    mkdir -p /opt/app/lib /opt/app.new/lib/deep /a/in /b/in
    echo old > /opt/app/version
    echo old > /opt/app/lib/x
    echo new > /opt/app.new/version
    echo new > /opt/app.new/lib/x
    echo deep > /opt/app.new/lib/deep/y
    echo a > /a/in/f
    echo b > /b/in/f
moved:
  base: apps
  run: |
    rm -rf /opt/app && mv /opt/app.new /opt/app
    mv /a /tmp/swap && mv /b /a && mv /tmp/swap /b
"#,
        );
        env.ok(&["build", "spec.yaml"]);
        assert_eq!(umoci_read(env, "moved", "opt/app/version"), "new\n");
        assert_eq!(umoci_read(env, "moved", "opt/app/lib/deep/y"), "deep\n");
        assert_eq!(umoci_read(env, "moved", "a/in/f"), "b\n");
        assert_eq!(umoci_read(env, "moved", "b/in/f"), "a\n");
    });
}

#[test]
fn hard_links_mean_the_same_in_the_store_and_the_image() {
    let digests = std::cell::RefCell::new(Vec::new());
    on_every_driver(|env| {
        spec(
            env,
            r#"files:
  base: bb
  run: |
    echo same > /a && cp -p /a /b && touch -r /a /b
    echo one > /f1
    echo pair > /p1 && ln /p1 /p2
    mkdir -p /d/sub && echo in > /d/sub/f && ln /d/sub/f /g
linked:
  base: files
  run: |
    ln -f /a /b
    ln /f1 /f2
    mv /p2 /p3
    mv /d /e
appended:
  base: linked
  run: |
    echo more >> /f1
    echo first > /a && echo second > /b
    chmod 600 /p3
    # The step itself sees one file under both names.
    grep -q more /f2 && grep -q second /a
    [ "$(stat -c %i:%h:%a /p1)" = "$(stat -c %i:%h:%a /p3)" ]
"#,
        );
        crate::stores::build_reproducibly(env, &["build", "spec.yaml"]);
        // Every driver writes through every name of a linked base file and
        // keeps a moved name linked (overlay through its index).
        assert_eq!(umoci_read(env, "appended", "f2"), "one\nmore\n");
        assert_eq!(umoci_read(env, "appended", "a"), "second\n");
        let root = env.unpack("appended");
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("p1"), 0o600, "chmod of one name is the file's");
        let root = env.unpack("linked");
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"), "ln -f a b is in the image");
        assert_eq!(ino("f1"), ino("f2"), "ln f1 f2 is in the image");
        assert_eq!(ino("p1"), ino("p3"), "a moved name keeps its link");
        assert_eq!(
            ino("g"),
            ino("e/sub/f"),
            "a link into a moved directory holds"
        );
        let mut tags = crate::stores::tag_digests(&env.layout());
        tags.retain(|tag, _| !tag.contains("-20"));
        digests.borrow_mut().push((env.driver(), tags));
    });
    let digests = digests.into_inner();
    for (driver, tags) in &digests[1..] {
        assert_eq!(tags, &digests[0].1, "{driver:?} and {:?}", digests[0].0);
    }
}

#[test]
fn xattr_values_with_any_byte_are_read_back() {
    on_every_driver(|env| {
        spec(
            env,
            r#"acl:
  base: bb
  run: echo x > /f
  post: |
    setfacl -m u:10:rwx "$GENOCI_ROOTFS/f"
    setfattr -n user.nl -v 0x610a0a62 "$GENOCI_ROOTFS/f"
on-acl:
  base: acl
  run: cat /f
"#,
        );
        env.ok(&["build", "spec.yaml"]);
        // And a GNU tar archive holding them is expanded with them.
        let src = env.path().join("acl-src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("g"), "g").unwrap();
        crate::util::run_ok(
            std::process::Command::new("setfacl")
                .args(["-m", "u:10:rwx"])
                .arg(src.join("g")),
        );
        crate::util::run_ok(
            std::process::Command::new("tar")
                .args(["--xattrs", "--xattrs-include=*", "--acls", "-cf"])
                .arg(env.path().join("acl.tar"))
                .arg("-C")
                .arg(&src)
                .arg("g"),
        );
        env.write("tar.yaml", "tarred:\n  base: empty\n  expand: ./acl.tar\n");
        env.ok(&["build", "tar.yaml"]);
    });
}

#[test]
fn layers_rebuild_removed_xattrs_acls_dir_times_and_old_times() {
    on_every_driver(|env| {
        spec(
            env,
            r#"one:
  base: bb
  run: |
    mkdir -p /x /acl /kept
    echo 1 > /kept/f
    echo 1 > /acl/f
  post: |
    setfattr -n user.gone -v 1 "$GENOCI_ROOTFS/x"
    setfacl -d -m u:10:rwx "$GENOCI_ROOTFS/acl"
    touch -h -d @-86400 "$GENOCI_ROOTFS/kept/f"
    touch -d @1000000000 "$GENOCI_ROOTFS/kept"
two:
  base: one
  run: |
    echo 2 > /acl/f
    echo new > /kept/new
  post: |
    setfattr -x user.gone "$GENOCI_ROOTFS/x"
    touch -d @1000000000 "$GENOCI_ROOTFS/kept"
"#,
        );
        env.ok(&["build", "spec.yaml"]);
        let root = env.unpack("two");
        assert_eq!(fs::metadata(root.join("kept/f")).unwrap().mtime(), -86400);
    });
}

#[test]
fn the_callers_umask_never_reaches_the_image() {
    on_every_driver(|env| {
        spec(
            env,
            r#"masked:
  base: bb
  copy: ./file /deep/er/file
  workdir: /work/dir
  run: |
    mkdir -p /made/by/run
    echo x > /made/by/run/f
"#,
        );
        env.write("file", "f");
        let mut cmd = env.cmd(&["build", "spec.yaml"]);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::umask(0o077);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        env.after_command(&["build"], None);
        let root = env.unpack("masked");
        for dir in ["deep", "deep/er", "work", "work/dir", "made", "made/by/run"] {
            let mode = fs::metadata(root.join(dir)).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o755, "/{dir}");
        }
        let mode = fs::metadata(root.join("made/by/run/f")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o644);
    });
}

#[test]
fn the_snapshot_root_is_0755_whatever_the_tarball_root_says() {
    on_every_driver(|env| {
        let src = tempfile::tempdir().unwrap();
        fs::set_permissions(src.path(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(src.path().join("f"), "f").unwrap();
        crate::util::run_ok(
            std::process::Command::new("tar")
                .arg("-cf")
                .arg(env.path().join("root.tar"))
                .arg("-C")
                .arg(src.path())
                .arg("."),
        );
        env.write(
            "spec.yaml",
            "rooted:\n  base: empty\n  expand: ./root.tar\n",
        );
        env.ok(&["build", "spec.yaml"]);
        for (tag, path) in unpack_tags(env, &[]).unwrap() {
            let mode = fs::metadata(&path).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{tag}");
        }
    });
}

#[test]
fn names_that_look_like_whiteouts_fail_the_target_and_write_no_layer() {
    on_every_driver(|env| {
        spec(env, "");
        env.ok(&["build", "spec.yaml"]);
        let blobs = || {
            fs::read_dir(env.layout().join("blobs/sha256"))
                .unwrap()
                .count()
        };
        let before = blobs();
        for (target, script, name) in [
            ("keep", "echo x > /etc/.wh.keep", ".wh.keep"),
            ("opq", "mkdir /d && touch /d/.wh..wh..opq", ".wh..wh..opq"),
        ] {
            env.write(
                "wh.yaml",
                &format!("{target}:\n  base: bb\n  run: {script}\n"),
            );
            let out = env.genoci(&["build", "wh.yaml"]);
            assert!(!out.status.success());
            let err = crate::util::stderr(&out);
            assert!(err.contains(target) && err.contains(name), "{err}");
            assert_eq!(blobs(), before, "no blob written");
        }
    });
}
