//! Generated inputs: property tests over genoci's readers and writers,
//! called in-process (thousands of cases would take too long through the
//! binary), with the regressions they found pinned through the binary.
//!
//! - Random trees: a layer of the changes between two trees, applied on the
//!   first, gives the second; a layer of a whole tree, applied on an empty
//!   one, gives it again.
//! - Random tarballs, hostile entries included, through both tar readers
//!   (`expand`'s and the layer applier): Ok or a clean error, never a panic,
//!   never a write outside the tree.
//! - Random specs (structure-aware and raw bytes) through the spec checker:
//!   a plan, or problems that each say something.
//!
//! Deterministic: a fixed seed and a bounded number of cases each, so that
//! it fits CI. `GENOCI_PROPTEST_CASES` raises the counts for a longer hunt.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use genoci::change::Change;
use genoci::driver::diff;
use genoci::layout::layer::LayerOptions;
use genoci::layout::Layout;

use crate::fidelity::describe_tree;
use crate::util::walk;

/// Run `test` on `cases` (times the `GENOCI_PROPTEST_CASES` factor) inputs
/// from `strategy`, with a fixed seed; print how many ran and how long.
fn check<S: Strategy>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("GENOCI_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(cases, |n: u32| n.max(cases));
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 256,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let ran = std::cell::Cell::new(0u32);
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |value| {
        ran.set(ran.get() + 1);
        test(value);
        Ok(())
    });
    eprintln!(
        "{name}: {} cases run ({cases} passing asked), {:.1} s",
        ran.get(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

// ---------------------------------------------------------------------------
// Random trees through the layer writer and the unpacker.

/// One step of building a tree. Paths are made of a, b, c so that steps
/// keep meeting each other (a file replaced by a directory and back, ...).
#[derive(Debug, Clone)]
enum Step {
    File(String, Vec<u8>, u32),
    Dir(String, u32),
    Symlink(String, &'static str),
    HardLink(String, String),
    Fifo(String),
    Remove(String),
    Xattr(String, &'static str, Vec<u8>),
    Owner(String, u32),
    Device(String, u32),
    Touch(String, i64),
}

fn tree_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=3)
        .prop_map(|parts| parts.join("/"))
}

fn step() -> impl Strategy<Value = Step> {
    let p = tree_path;
    prop_oneof![
        4 => (p(), prop::collection::vec(any::<u8>(), 0..40), prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o4755, 0o444]))
            .prop_map(|(a, d, m)| Step::File(a, d, m)),
        3 => (p(), prop::sample::select(vec![0o755u32, 0o700, 0o1777, 0o2755])).prop_map(|(a, m)| Step::Dir(a, m)),
        2 => (p(), prop::sample::select(vec!["a", "../b", "/c/a", "a/b/c", "..", "nowhere", "/"]))
            .prop_map(|(a, t)| Step::Symlink(a, t)),
        2 => (p(), p()).prop_map(|(a, b)| Step::HardLink(a, b)),
        1 => p().prop_map(Step::Fifo),
        3 => p().prop_map(Step::Remove),
        1 => (p(), prop::sample::select(vec!["user.one", "user.two"]), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(a, n, v)| Step::Xattr(a, n, v)),
        1 => (p(), 0u32..3).prop_map(|(a, u)| Step::Owner(a, u * 1000)),
        1 => (p(), 1u32..4).prop_map(|(a, m)| Step::Device(a, m)),
        2 => (p(), prop::sample::select(vec![0i64, 1_000_000_000, 1_600_000_000])).prop_map(|(a, t)| Step::Touch(a, t)),
    ]
}

fn is_root() -> bool {
    crate::util::nix_is_root()
}

/// Build the tree `steps` describe under `root` (which must not exist).
/// Steps that cannot apply (a parent is a file, a link to a directory)
/// are left out, the same way each time, so equal steps give equal trees.
fn build_tree(root: &Path, steps: &[Step]) {
    fs::create_dir(root).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let mut times: BTreeMap<String, i64> = BTreeMap::new();
    for s in steps {
        let _ = apply_step(root, s, &mut times);
    }
    // Children first (reverse order): setting a child's times does not
    // change its parent's. Every entry gets one, so that steps on other
    // paths leave no trace in the ones they do not touch.
    let mut paths: Vec<PathBuf> = walk(root);
    paths.reverse();
    for rel in paths {
        let secs = times
            .get(rel.to_str().unwrap())
            .copied()
            .unwrap_or(1_500_000_000);
        let t = filetime::FileTime::from_unix_time(secs, 0);
        filetime::set_symlink_file_times(root.join(rel), t, t).unwrap();
    }
}

fn apply_step(root: &Path, s: &Step, times: &mut BTreeMap<String, i64>) -> std::io::Result<()> {
    let full = |p: &str| root.join(p);
    let fresh = |p: &str| -> std::io::Result<PathBuf> {
        let f = full(p);
        // Parents must be real directories (never through a symlink).
        let mut cur = root.to_path_buf();
        for c in Path::new(p).parent().unwrap().iter() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(std::io::Error::other("parent is not a directory")),
                Err(_) => fs::create_dir(&cur)?,
            }
        }
        remove(&f);
        Ok(f)
    };
    match s {
        Step::File(p, data, mode) => {
            let f = fresh(p)?;
            fs::write(&f, data)?;
            fs::set_permissions(&f, fs::Permissions::from_mode(*mode))?;
        }
        Step::Dir(p, mode) => {
            let f = fresh(p)?;
            fs::create_dir(&f)?;
            fs::set_permissions(&f, fs::Permissions::from_mode(*mode))?;
        }
        Step::Symlink(p, target) => symlink(target, fresh(p)?)?,
        Step::HardLink(p, to) => {
            let m = fs::symlink_metadata(full(to))?;
            if m.is_dir() || p == to || Path::new(p).starts_with(to) {
                return Ok(());
            }
            fs::hard_link(full(to), fresh(p)?)?;
        }
        Step::Fifo(p) => {
            nix::unistd::mkfifo(&fresh(p)?, nix::sys::stat::Mode::from_bits_truncate(0o640))?
        }
        Step::Remove(p) => {
            if fs::symlink_metadata(full(p)).is_ok() {
                remove(&full(p));
            }
        }
        Step::Xattr(p, name, value) => {
            let f = full(p);
            if !fs::symlink_metadata(&f)?.file_type().is_symlink() {
                genoci::xattr::set(&f, name.as_bytes(), value)?;
            }
        }
        Step::Owner(p, id) if is_root() => {
            std::os::unix::fs::lchown(full(p), Some(*id), Some(*id))?
        }
        Step::Device(p, minor) if is_root() => nix::sys::stat::mknod(
            &fresh(p)?,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            libc::makedev(1, *minor),
        )?,
        Step::Owner(..) | Step::Device(..) => {}
        Step::Touch(p, secs) => {
            fs::symlink_metadata(full(p))?;
            times.insert(p.clone(), *secs);
        }
    }
    Ok(())
}

fn remove(f: &Path) {
    match fs::symlink_metadata(f) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(f).unwrap(),
        Ok(_) => fs::remove_file(f).unwrap(),
        Err(_) => {}
    }
}

fn tree_round_trip(base_steps: &[Step], more: &[Step]) {
    let t = tempfile::tempdir().unwrap();
    let (base, tree, applied, fresh) = (
        t.path().join("base"),
        t.path().join("tree"),
        t.path().join("applied"),
        t.path().join("fresh"),
    );
    let all: Vec<Step> = base_steps.iter().chain(more).cloned().collect();
    build_tree(&base, base_steps);
    build_tree(&applied, base_steps);
    build_tree(&tree, &all);
    fs::create_dir(&fresh).unwrap();
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755)).unwrap();
    let layout = Layout::open_or_create(&t.path().join("oci")).unwrap();

    // The changes between base and tree, as a driver reports them.
    let candidates = walk(&base).into_iter().chain(walk(&tree)).collect();
    let changes = diff::compare(&base, &tree, &candidates).unwrap();
    let layer = layout
        .write_layer(&tree, &changes, &LayerOptions::default())
        .unwrap();
    layout.apply_layer(&layer.descriptor, &applied).unwrap();
    let want = describe_tree(&tree, None);
    assert_eq!(
        describe_tree(&applied, None),
        want,
        "base + layer of {changes:?}"
    );

    // The whole tree as one layer, on an empty tree.
    let everything: Vec<Change> = walk(&tree).into_iter().map(Change::Write).collect();
    let layer = layout
        .write_layer(&tree, &everything, &LayerOptions::default())
        .unwrap();
    layout.apply_layer(&layer.descriptor, &fresh).unwrap();
    assert_eq!(
        describe_tree(&fresh, None),
        want,
        "a layer of the whole tree"
    );
}

#[test]
fn random_trees_round_trip_through_a_layer() {
    let strategy = (
        prop::collection::vec(step(), 0..24),
        prop::collection::vec(step(), 1..16),
    );
    check("tree round trip", 96, strategy, |(base, more)| {
        tree_round_trip(&base, &more)
    });
}

// ---------------------------------------------------------------------------
// Random tarballs, hostile entries included, through both tar readers.

/// Stands for the absolute path of the directory beside the tree (outside
/// it) in names and link targets; replaced when the tarball is written.
const OUT: &str = "@OUT";

#[derive(Debug, Clone)]
enum Kind {
    File,
    Dir,
    Symlink(String),
    Hard(String),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
    Other(u8),
}

/// What the header's size field says.
#[derive(Debug, Clone, Copy)]
enum Size {
    Exact,
    Huge,
    Negative,
    Garbage,
    Short,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: Kind,
    size: Size,
    data: Vec<u8>,
    mode: u32,
    uid: u64,
    bad_checksum: bool,
    /// PAX records, in an `x` header before the entry.
    pax: Vec<(String, Vec<u8>)>,
    /// A name over 100 bytes goes in a GNU `L` entry rather than PAX.
    gnu_long: bool,
}

#[derive(Debug, Clone, Copy)]
enum Wrap {
    Plain,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
}

/// A path component: mostly names that meet each other and what the tree
/// already holds (a, b, victim-dir; `up` is a symlink out), some hostile.
fn component() -> impl Strategy<Value = String> {
    let mut names: Vec<String> = [
        "a",
        "a",
        "a",
        "a",
        "a",
        "b",
        "b",
        "b",
        "c",
        "c",
        "victim-dir",
        "victim-dir",
        "victim",
        "esc",
        "up",
        "..",
        ".",
        "",
        ".wh.a",
        ".wh.b",
        ".wh..wh..opq",
        ".wh..wh.plnk",
        ".wh.",
        ".wh..",
        OUT,
    ]
    .map(String::from)
    .to_vec();
    names.push("n".repeat(120));
    prop::sample::select(names)
}

/// Mostly paths from a small pool, so that entries meet each other and
/// the tree (a directory replaced by a symlink out, then written through);
/// the rest made of random components.
fn entry_name() -> impl Strategy<Value = String> {
    let pool = prop::sample::select(vec![
        "a",
        "a/",
        "a/victim-dir/",
        "a/victim-dir/f",
        "a/b",
        "a/b/c",
        "b",
        "b/",
        "esc",
        "esc/",
        "esc/victim",
        "esc/victim-dir/f",
        "up/victim",
        "up/victim-dir/f",
        "victim-dir",
        "victim-dir/f",
        ".wh.a",
        "a/.wh.b",
        "a/.wh..wh..opq",
        "../a/victim-dir/",
        "@OUT/a/b",
        "./a",
        "@OUT/victim",
        "@OUT/f",
    ])
    .prop_map(String::from);
    let random = (
        prop::sample::select(vec!["", "", "@OUT/", "./", "../"]),
        prop::collection::vec(component(), 1..6),
        any::<bool>(),
    )
        .prop_map(|(lead, parts, slash)| {
            let mut n = format!("{lead}{}", parts.join("/"));
            if slash {
                n.push('/');
            }
            n
        });
    prop_oneof![3 => pool, 2 => random]
}

/// Link targets, half of them out of the tree.
fn link_target() -> impl Strategy<Value = String> {
    let out = prop::sample::select(vec![
        "..",
        "../..",
        "../out",
        "../out",
        "../../out",
        "../canary",
        "@OUT",
        "@OUT",
        "@OUT/victim",
        "@OUT/..",
        "@OUT/../canary",
        "@OUT/victim-dir",
    ]);
    let inside = prop::sample::select(vec![
        "a",
        "a/b",
        "a/b/c",
        "esc",
        "esc/victim",
        "up/victim",
        ".",
        "",
        "nowhere",
        "@OUT/a",
    ]);
    prop_oneof![out, inside].prop_map(String::from)
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        5 => Just(Kind::File),
        3 => Just(Kind::Dir),
        4 => link_target().prop_map(Kind::Symlink),
        1 => prop_oneof![link_target(), entry_name()].prop_map(Kind::Hard),
        1 => Just(Kind::Fifo),
        1 => (0u32..300, 0u32..300).prop_map(|(a, b)| Kind::Char(a, b)),
        1 => (0u32..300, 0u32..300).prop_map(|(a, b)| Kind::Block(a, b)),
        1 => prop::sample::select(vec![b'7', b'S', b'D', b'K', b'V', b'g', b'Z', 0xff, 0]).prop_map(Kind::Other),
    ]
}

fn pax_records() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let record = prop_oneof![
        (
            Just("path".to_string()),
            entry_name().prop_map(String::into_bytes)
        ),
        (
            Just("linkpath".to_string()),
            link_target().prop_map(String::into_bytes)
        ),
        (
            Just("size".to_string()),
            prop::sample::select(vec![&b"0"[..], b"5", b"99999999999999", b"-1", b"x"])
                .prop_map(<[u8]>::to_vec)
        ),
        (
            Just("uid".to_string()),
            prop::sample::select(vec![&b"0"[..], b"4294967296", b"-5", b"1000"])
                .prop_map(<[u8]>::to_vec)
        ),
        (
            Just("mtime".to_string()),
            prop::sample::select(vec![&b"1.5"[..], b"-1.25", b"1e9", b"99999999999999999999"])
                .prop_map(<[u8]>::to_vec)
        ),
        (
            Just("SCHILY.xattr.user.x".to_string()),
            prop::collection::vec(any::<u8>(), 0..6)
        ),
        (
            Just("SCHILY.xattr.trusted.overlay.opaque".to_string()),
            Just(b"y".to_vec())
        ),
    ];
    prop::collection::vec(record, 0..3)
}

fn tar_entry() -> impl Strategy<Value = Entry> {
    (
        entry_name(),
        kind(),
        prop_oneof![100 => Just(Size::Exact), 1 => Just(Size::Huge), 1 => Just(Size::Negative), 1 => Just(Size::Garbage), 1 => Just(Size::Short)],
        prop::collection::vec(any::<u8>(), 0..700),
        prop::sample::select(vec![0o644u32, 0o755, 0o4777, 0o000, 0o7777, 0o170777]),
        prop::sample::select(vec![0u64, 0, 0, 1000, 1000, 0o7777777, 0o7777777 + 1, u64::from(u32::MAX) + 1]),
        prop::bool::weighted(0.01),
        prop_oneof![3 => Just(Vec::new()), 1 => pax_records()],
        any::<bool>(),
    )
        .prop_map(
            |(name, kind, size, data, mode, uid, bad_checksum, pax, gnu_long)| Entry {
                name,
                kind,
                size,
                data,
                mode,
                uid,
                bad_checksum,
                pax,
                gnu_long,
            },
        )
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}", width = field.len() - 1);
    let text = &text.as_bytes()[text.len().saturating_sub(field.len() - 1)..];
    field[..text.len()].copy_from_slice(text);
    field[text.len()] = 0;
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// A ustar header block (checksum right unless asked otherwise).
fn header(
    name: &[u8],
    flag: u8,
    size: Size,
    len: u64,
    e: &Entry,
    link: &[u8],
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    put(&mut h[0..100], name);
    octal(&mut h[100..108], u64::from(e.mode));
    if e.uid > 0o7777777 {
        // Base-256, as GNU tar writes large numbers.
        h[108] = 0x80;
        h[112..116].copy_from_slice(&(e.uid as u32).to_be_bytes());
    } else {
        octal(&mut h[108..116], e.uid);
    }
    octal(&mut h[116..124], 0);
    match size {
        Size::Exact => octal(&mut h[124..136], len),
        Size::Huge => octal(&mut h[124..136], 0o77777777777),
        Size::Short => octal(&mut h[124..136], len / 2 + 1),
        Size::Negative => h[124..136].copy_from_slice(&[0xff; 12]),
        Size::Garbage => put(&mut h[124..136], b"zz9 -1\0"),
    }
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = flag;
    put(&mut h[157..257], link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], u64::from(dev.0));
    octal(&mut h[337..345], u64::from(dev.1));
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(
        &mut h[148..155],
        u64::from(if e.bad_checksum { sum + 1 } else { sum }),
    );
    h[155] = b' ';
    h
}

fn pad_to_block(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// The tar stream of `entries`, `@OUT` replaced by `out`.
fn tarball(entries: &[Entry], out: &Path) -> Vec<u8> {
    let sub = |s: &str| s.replace(OUT, &out.display().to_string()).into_bytes();
    let mut tar = Vec::new();
    for e in entries {
        let name = sub(&e.name);
        let (flag, link, dev) = match &e.kind {
            Kind::File => (b'0', Vec::new(), (0, 0)),
            Kind::Dir => (b'5', Vec::new(), (0, 0)),
            Kind::Symlink(t) => (b'2', sub(t), (0, 0)),
            Kind::Hard(t) => (b'1', sub(t), (0, 0)),
            Kind::Fifo => (b'6', Vec::new(), (0, 0)),
            Kind::Char(a, b) => (b'3', Vec::new(), (*a, *b)),
            Kind::Block(a, b) => (b'4', Vec::new(), (*a, *b)),
            Kind::Other(f) => (*f, Vec::new(), (0, 0)),
        };
        let mut pax: Vec<(String, Vec<u8>)> = e
            .pax
            .iter()
            .map(|(k, v)| (k.clone(), sub(&String::from_utf8_lossy(v))))
            .collect();
        if name.len() > 100 {
            if e.gnu_long {
                let mut long = name.clone();
                long.push(0);
                let plain = Entry {
                    bad_checksum: false,
                    ..e.clone()
                };
                tar.extend_from_slice(&header(
                    b"././@LongLink",
                    b'L',
                    Size::Exact,
                    long.len() as u64,
                    &plain,
                    b"",
                    (0, 0),
                ));
                tar.extend_from_slice(&long);
                pad_to_block(&mut tar);
            } else {
                pax.push(("path".to_string(), name.clone()));
            }
        }
        if !pax.is_empty() {
            let body: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let plain = Entry {
                bad_checksum: false,
                ..e.clone()
            };
            tar.extend_from_slice(&header(
                b"PaxHeaders/x",
                b'x',
                Size::Exact,
                body.len() as u64,
                &plain,
                b"",
                (0, 0),
            ));
            tar.extend_from_slice(&body);
            pad_to_block(&mut tar);
        }
        let data: &[u8] = if flag == b'0' { &e.data } else { &[] };
        tar.extend_from_slice(&header(
            &name,
            flag,
            e.size,
            data.len() as u64,
            e,
            &link,
            dev,
        ));
        tar.extend_from_slice(data);
        pad_to_block(&mut tar);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

fn wrap(tar: Vec<u8>, how: Wrap) -> Vec<u8> {
    match how {
        Wrap::Plain => tar,
        Wrap::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        }
        Wrap::Zstd => zstd::encode_all(&tar[..], 1).unwrap(),
        Wrap::Xz => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        }
        Wrap::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        }
    }
}

/// Everything about the entries below `dir` (but `skip`) that a write
/// would change: kind, mode, owner, size, links, times, content, xattrs.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let m = fs::symlink_metadata(dir).unwrap();
    out.insert(
        PathBuf::new(),
        format!("{:o} {} {}", m.mode(), m.nlink(), m.mtime_nsec()),
    );
    for rel in walk(dir) {
        let full = dir.join(&rel);
        if full.starts_with(skip) {
            continue;
        }
        let m = fs::symlink_metadata(&full).unwrap();
        let content = if m.is_file() {
            format!("{:?}", fs::read(&full).unwrap())
        } else if m.file_type().is_symlink() {
            fs::read_link(&full).unwrap().display().to_string()
        } else {
            String::new()
        };
        out.insert(
            rel,
            format!(
                "{:o} {}:{} size={} nlink={} ino={} mtime={}.{} ctime={}.{} {content} xattrs={}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.nlink(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                crate::fidelity::xattrs(&full)
            ),
        );
    }
    out
}

/// A parent holding a canary, a directory `out` with a victim file and
/// dir, and the tree, which holds what a lower layer left.
fn hostile_setup(parent: &Path) -> (PathBuf, PathBuf) {
    fs::write(parent.join("canary"), "canary").unwrap();
    let out = parent.join("out");
    fs::create_dir_all(out.join("victim-dir")).unwrap();
    fs::write(out.join("victim"), "victim").unwrap();
    let tree = parent.join("tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::create_dir_all(tree.join("a/victim-dir")).unwrap();
    fs::write(tree.join("a/b/c"), "lower").unwrap();
    symlink("../out", tree.join("up")).unwrap();
    (tree, out)
}

/// The inodes below `dir` (not following symlinks).
fn inodes(dir: &Path) -> std::collections::BTreeSet<(u64, u64)> {
    walk(dir)
        .into_iter()
        .map(|rel| {
            let m = fs::symlink_metadata(dir.join(rel)).unwrap();
            (m.dev(), m.ino())
        })
        .collect()
}

/// Feed one tarball to a reader: as a layer of `layout` if given, else to
/// `expand`; check what it may and may not do. Whether it unpacked.
fn hostile_case(entries: &[Entry], how: Wrap, cut: Option<u8>, layout: Option<&Layout>) -> bool {
    let t = tempfile::tempdir().unwrap();
    let parent = t.path().join("parent");
    fs::create_dir(&parent).unwrap();
    let (tree, out) = hostile_setup(&parent);
    let mut bytes = wrap(tarball(entries, &out), how);
    if let Some(cut) = cut {
        bytes.truncate(bytes.len() * usize::from(cut) / 256);
    }
    let outside_inodes = inodes(&out);
    let before = snapshot(&parent, &tree);
    let result = if let Some(layout) = layout {
        let mut blob = layout.blob_writer().unwrap();
        blob.write_all(&bytes).unwrap();
        let desc = blob
            .finish(oci_spec::image::MediaType::ImageLayerGzip)
            .unwrap();
        layout.apply_layer(&desc, &tree)
    } else {
        let file = t.path().join("in.tar");
        fs::write(&file, &bytes).unwrap();
        genoci::actions::expand::expand(&tree, &file)
    };
    if let Err(e) = &result {
        let text = genoci::error_chain(e);
        assert!(text.len() > 10, "an error that says nothing: {text:?}");
    }
    let after = snapshot(&parent, &tree);
    if before != after {
        let paths: std::collections::BTreeSet<&PathBuf> =
            before.keys().chain(after.keys()).collect();
        let diffs: Vec<String> = paths
            .into_iter()
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| {
                format!(
                    "  {}: {:?} -> {:?}",
                    k.display(),
                    before.get(k),
                    after.get(k)
                )
            })
            .collect();
        panic!(
            "written outside the tree ({result:?}):\n{}",
            diffs.join("\n")
        );
    }
    let shared: Vec<_> = inodes(&tree)
        .intersection(&outside_inodes)
        .cloned()
        .collect();
    assert!(
        shared.is_empty(),
        "the tree links to outside inodes {shared:?}"
    );
    result.is_ok()
}

/// A few entries that meet on purpose: a directory replaced by a symlink
/// out and then written through, a directory replaced by a file and back,
/// a hard link to a later entry or through a symlink out.
fn gadget() -> impl Strategy<Value = Vec<Entry>> {
    let p = prop::sample::select(vec!["a", "a", "b", "esc", "victim-dir", "a/b", "up"]);
    let q = prop::sample::select(vec!["victim-dir", "victim-dir/", "victim", "f"]);
    let out = prop::sample::select(vec!["../out", OUT, "../..", "@OUT/.."]);
    (p, q, out, prop::collection::vec(tar_entry(), 3), 0..5u8).prop_map(
        |(p, q, out, mut base, which)| {
            let mut set = |i: usize, name: String, kind: Kind| {
                base[i].name = name;
                base[i].kind = kind;
                base[i].size = Size::Exact;
            };
            let out = out.to_string();
            match which {
                0 => {
                    set(0, format!("{p}/"), Kind::Dir);
                    set(1, p.to_string(), Kind::Symlink(out));
                    set(2, format!("{p}/{q}"), Kind::File);
                }
                1 => {
                    set(0, format!("{p}/{q}"), Kind::Dir);
                    set(1, p.to_string(), Kind::Symlink(out));
                    set(2, format!("{p}/{q}x"), Kind::File);
                }
                2 => {
                    set(0, p.to_string(), Kind::File);
                    set(1, format!("{p}/{q}"), Kind::Dir);
                    set(2, p.to_string(), Kind::File);
                }
                3 => {
                    set(0, format!("{p}/l"), Kind::Hard(format!("{p}/{q}")));
                    set(1, format!("{p}/{q}"), Kind::File);
                    set(2, format!("{p}/m"), Kind::Hard(format!("{p}/{q}")));
                }
                _ => {
                    set(0, p.to_string(), Kind::Symlink(out));
                    set(1, format!("{p}/{q}"), Kind::Hard(format!("{p}/victim")));
                    set(2, format!("{p}/{q}"), Kind::File);
                }
            }
            base
        },
    )
}

fn hostile_strategy() -> impl Strategy<Value = (Vec<Entry>, Wrap, Option<u8>)> {
    let piece = prop_oneof![
        3 => tar_entry().prop_map(|e| vec![e]),
        1 => gadget(),
    ];
    (
        prop::collection::vec(piece, 1..7).prop_map(|v| v.concat()),
        prop::sample::select(vec![
            Wrap::Plain,
            Wrap::Plain,
            Wrap::Gzip,
            Wrap::Zstd,
            Wrap::Xz,
            Wrap::Bzip2,
        ]),
        prop::option::weighted(0.1, 1u8..=255),
    )
}

#[test]
fn random_hostile_tarballs_expand_inside_the_tree_or_fail_cleanly() {
    let ok = std::cell::Cell::new(0);
    check(
        "hostile tarballs (expand)",
        320,
        hostile_strategy(),
        |(entries, how, cut)| ok.set(ok.get() + u32::from(hostile_case(&entries, how, cut, None))),
    );
    eprintln!(
        "hostile tarballs (expand): {} unpacked, the others refused",
        ok.get()
    );
    assert!(
        ok.get() > 0,
        "no tarball unpacked: the generator makes only junk"
    );
}

#[test]
fn random_hostile_layers_apply_inside_the_tree_or_fail_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(&t.path().join("oci")).unwrap();
    let ok = std::cell::Cell::new(0);
    check(
        "hostile tarballs (layer)",
        320,
        hostile_strategy(),
        |(entries, how, cut)| {
            ok.set(ok.get() + u32::from(hostile_case(&entries, how, cut, Some(&layout))))
        },
    );
    eprintln!(
        "hostile tarballs (layer): {} applied, the others refused",
        ok.get()
    );
    assert!(
        ok.get() > 0,
        "no layer applied: the generator makes only junk"
    );
}

fn entry(name: &str, kind: Kind) -> Entry {
    Entry {
        name: name.to_string(),
        kind,
        size: Size::Exact,
        data: b"data".to_vec(),
        mode: 0o700,
        uid: 1000,
        bad_checksum: false,
        pax: Vec::new(),
        gnu_long: false,
    }
}

#[test]
fn a_directory_whose_parent_a_later_entry_makes_a_symlink_out_keeps_its_metadata_inside() {
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(&t.path().join("oci")).unwrap();
    for target in ["../out", OUT] {
        // The directory's own metadata, and the times of a lower directory
        // the archive writes into, are set at the end: through the symlink.
        for first in [
            entry("a/victim-dir/", Kind::Dir),
            entry("a/victim-dir/f", Kind::File),
        ] {
            let entries = [first, entry("a", Kind::Symlink(target.to_string()))];
            hostile_case(&entries, Wrap::Plain, None, None);
            hostile_case(&entries, Wrap::Plain, None, Some(&layout));
        }
    }
}

// ---------------------------------------------------------------------------
// Random specs through the spec checker.

use yaml_serde::{Mapping, Value};

const KEYS: &[&str] = &[
    "base",
    "expand",
    "copy",
    "install",
    "run",
    "pre",
    "post",
    "entrypoint",
    "cmd",
    "env",
    "workdir",
    "user",
    "labels",
    "annotations",
    "volumes",
    "ports",
    "network",
    "author",
    "privileged",
    "bogus",
    "Base",
    "",
];

/// Target names: valid tags, the names `base` values use, and invalid ones.
const NAMES: &[&str] = &[
    "t1", "t2", "t3", "base-old", "UPPER", "a b", "-dash", ".dot", "x:y", "", "é", "t1",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "empty",
            "t1",
            "t2",
            "t3",
            "base-old",
            "base-missing",
            "nope",
            "docker://h/r:t",
            "docker://",
            "./file",
            "/abs/file",
            "../up",
            "a b c",
            "$HOME",
            "${HOME}",
            "${NOPE:-x}",
            "${NOPE:?gone}",
            "${",
            "$",
            "$$",
            "${A${B}}",
            "${A:+x}",
            "\"q",
            "'",
            "8080",
            "8080/tcp",
            "-1/udp",
            "99999",
            "root:root",
            "0:0",
            "x=y",
            "none",
            "host",
            "\u{0}",
            "\n",
            "http://example.invalid/x.deb",
            "x.rpm",
        ])
        .prop_map(String::from),
        "[a-z$/{}:=. -]{0,12}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((text(), inner), 0..4).prop_map(|kv| {
                let mut m = Mapping::new();
                for (k, v) in kv {
                    m.insert(Value::String(k), v);
                }
                Value::Mapping(m)
            }),
        ]
    })
}

/// A target: some of the real keys (and a few wrong ones), each with a
/// value of the right shape or of any other.
fn target() -> impl Strategy<Value = Value> {
    let entry = (
        prop::sample::select(KEYS.to_vec()),
        prop_oneof![
            2 => text().prop_map(Value::String),
            1 => prop::collection::vec(text().prop_map(Value::String), 0..3).prop_map(Value::Sequence),
            1 => value(),
        ],
    );
    prop::collection::vec(entry, 0..6).prop_map(|kv| {
        let mut m = Mapping::new();
        for (k, v) in kv {
            m.insert(Value::String(k.to_string()), v);
        }
        Value::Mapping(m)
    })
}

/// A spec that should check, but for the odd wrong value: targets t0..tN
/// on `empty`, on a tag in the layout, or on each other (forwards and
/// backwards, so cycles too), with config keys of the right shapes.
fn good_spec() -> impl Strategy<Value = Vec<u8>> {
    let good = prop::sample::select(vec![
        "run: echo hi",
        "run: [\"echo a\", \"echo $X\"]",
        "entrypoint: /bin/sh -c 'echo hi'",
        "cmd: [\"a\", \"b\"]",
        "env: {A: \"1\", B: \"${A}-x\"}",
        "env: [\"A=1\"]",
        "workdir: /srv",
        "user: \"1000:1000\"",
        "labels: {a: b, n: 1}",
        "annotations: {x: y}",
        "volumes: /data",
        "ports: [80, \"53/udp\"]",
        "network: none",
        "privileged: true",
        "author: me",
    ]);
    let target = (
        prop_oneof![
            3 => prop::sample::select(vec!["empty", "base-old", "t0", "t1", "t2", "t3"]).prop_map(String::from),
            1 => text(),
        ],
        prop::collection::vec(good, 1..4),
        prop::option::weighted(0.2, (prop::sample::select(KEYS.to_vec()), value())),
    );
    prop::collection::vec(target, 1..5).prop_map(|targets| {
        let mut out = String::new();
        for (n, (base, keys, odd)) in targets.into_iter().enumerate() {
            out.push_str(&format!(
                "t{n}:\n  base: {}\n",
                yaml_serde::to_string(&base).unwrap().trim_end()
            ));
            for k in keys {
                out.push_str(&format!("  {k}\n"));
            }
            if let Some((k, v)) = odd {
                let mut m = Mapping::new();
                m.insert(Value::String(k.to_string()), v);
                let text = yaml_serde::to_string(&Value::Mapping(m)).unwrap();
                for line in text.lines() {
                    out.push_str(&format!("  {line}\n"));
                }
            }
        }
        out.into_bytes()
    })
}

/// A spec's text: a structured one (targets that name each other, cycles
/// included), YAML-ish fragments in random order, or random bytes.
fn spec_text() -> impl Strategy<Value = Vec<u8>> {
    let structured = prop::collection::vec((prop::sample::select(NAMES.to_vec()), target()), 0..5)
        .prop_map(|targets| {
            let mut m = Mapping::new();
            for (name, t) in targets {
                m.insert(Value::String(name.to_string()), t);
            }
            yaml_serde::to_string(&Value::Mapping(m))
                .unwrap()
                .into_bytes()
        });
    let fragments = prop::collection::vec(
        prop::sample::select(vec![
            "t1:",
            "t2:",
            "\n",
            "\n  ",
            "base: ",
            "empty",
            "t1",
            "run: ",
            "|",
            ">-",
            "- ",
            "&a ",
            "*a",
            "<<: ",
            "{",
            "}",
            "[",
            "]",
            ",",
            "? ",
            ": ",
            "!!binary ",
            "!tag ",
            "'",
            "\"",
            "#",
            "---",
            "...",
            "%YAML 1.2\n",
            "\t",
            "$X",
            "copy: ",
            "env: ",
            "ports: ",
        ]),
        0..40,
    )
    .prop_map(|parts| parts.concat().into_bytes());
    prop_oneof![
        3 => good_spec(),
        3 => structured,
        2 => fragments,
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn spec_case(dir: &Path, text: &[u8]) -> bool {
    let file = dir.join("spec.yaml");
    fs::write(&file, text).unwrap();
    // Tags whose name starts with "base" are in the layout already.
    let existing = |tag: &str| tag.starts_with("base");
    match genoci::spec::plan::load(&file, &existing) {
        Ok(plan) => {
            assert!(!plan.targets.is_empty(), "a plan with no target");
            true
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error with no problem");
            for p in &e.problems {
                assert!(
                    !p.message.trim().is_empty(),
                    "a problem that says nothing: {p:?}"
                );
            }
            assert!(
                e.to_string().contains("spec.yaml"),
                "{e} does not name the spec"
            );
            false
        }
    }
}

#[test]
fn random_specs_give_a_plan_or_problems_that_say_something() {
    let t = tempfile::tempdir().unwrap();
    let ok = std::cell::Cell::new(0u32);
    check("random specs", 3000, spec_text(), |text| {
        ok.set(ok.get() + u32::from(spec_case(t.path(), &text)))
    });
    eprintln!("random specs: {} planned, the others refused", ok.get());
    assert!(
        ok.get() > 0,
        "no spec planned: the generator makes only junk"
    );
}

#[test]
fn random_variable_references_expand_or_fail_with_a_message() {
    let lookup = |name: &str| name.len().is_multiple_of(2).then(|| format!("<{name}>"));
    check("random $VARs", 2000, "[A-Z_${}:?+=x -]{0,24}", |text| {
        match genoci::spec::vars::expand(&text, &lookup) {
            Ok(_) => {}
            Err(e) => assert!(!e.to_string().trim().is_empty(), "{text:?}: an empty error"),
        }
        let _ = genoci::spec::vars::parse(&text);
    });
}

/// Found by `random_hostile_tarballs_expand_inside_the_tree_or_fail_cleanly`:
/// a tarball holding `a/victim-dir/` and then `a` as a symlink to a host
/// directory made `expand` set the directory's owner, mode and times on
/// the host's `victim-dir` once the archive ended.
#[test]
fn expand_of_a_directory_then_its_parent_as_a_symlink_out_leaves_the_host_alone() {
    crate::util::require_root!();
    let env = crate::util::Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(out.join("victim-dir")).unwrap();
    fs::set_permissions(out.join("victim-dir"), fs::Permissions::from_mode(0o755)).unwrap();
    let t = filetime::FileTime::from_unix_time(1_000_000, 0);
    filetime::set_file_times(out.join("victim-dir"), t, t).unwrap();
    let entries = [
        entry("a/victim-dir/", Kind::Dir),
        entry("a", Kind::Symlink(OUT.to_string())),
    ];
    fs::write(env.path().join("evil.tar"), tarball(&entries, &out)).unwrap();
    env.write("spec.yaml", "evil:\n  base: empty\n  expand: ./evil.tar\n");
    env.ok(&["build", "spec.yaml"]);
    let m = fs::metadata(out.join("victim-dir")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.mtime()),
        (0o755, 0, 1_000_000),
        "the host directory was changed through the symlink"
    );
}

/// The fuzz targets' seeds and any crash input kept in `fuzz/seeds/`,
/// through the same calls the targets make: a smoke run that needs no
/// libFuzzer build.
#[test]
fn fuzz_seeds_go_through_the_parsers_without_a_panic() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let files = |target: &str| -> Vec<Vec<u8>> {
        let mut v: Vec<_> = fs::read_dir(seeds.join(target))
            .unwrap()
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect();
        v.sort();
        assert!(!v.is_empty(), "no seed for {target}");
        v
    };
    let t = tempfile::tempdir().unwrap();
    for data in files("spec") {
        spec_case(t.path(), &data);
    }
    for data in files("send") {
        if let Ok(commands) = genoci::driver::btrfs::send::parse(&data) {
            genoci::driver::btrfs::send::touched_paths(&commands);
        }
    }
    for data in files("tar") {
        let (mode, data) = data.split_first().unwrap();
        let tree = t.path().join("tree");
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir(&tree).unwrap();
        let r =
            genoci::layout::unpack::unpack_stream(data, Path::new("seed"), &tree, mode & 1 == 1);
        assert!(r.is_ok(), "a seed tarball does not unpack: {r:?}");
    }
    let layout = Layout::open_or_create(&t.path().join("oci")).unwrap();
    for data in files("json") {
        fs::write(layout.root().join("index.json"), &data).unwrap();
        if let Ok(tags) = layout.tags() {
            for (tag, _) in tags {
                let _ = layout.image_by_tag(&tag);
            }
        }
        let mut blob = layout.blob_writer().unwrap();
        blob.write_all(&data).unwrap();
        let desc = blob
            .finish(oci_spec::image::MediaType::ImageManifest)
            .unwrap();
        let _ = layout.image(&desc);
    }
}
