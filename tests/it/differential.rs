//! A differential property test: random change sequences (renames of any
//! depth, swaps, type changes, hard and symbolic links, modes, owners,
//! times, xattrs and ACLs) applied by `run` steps and host hooks, on every
//! driver; each image, read back by genoci's own reader in a fresh store
//! (the after-build check of `Env::genoci`) and by `umoci unpack`, must be
//! the tree that built it; and every driver must give the same images,
//! writes to files with several names in a lower layer included.
//!
//! Every other target runs its steps with `network: none`, in a user
//! namespace.
//!
//! Deterministic: a fixed seed and a bounded number of cases, so that it
//! fits CI. `GENOCI_PROPTEST_CASES` raises the count for a longer hunt.

use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use std::collections::BTreeMap;

use crate::fidelity::{assert_same_tree, describe_tree, unpack_tags};
use crate::stores::build_reproducibly;
use crate::util::Env;

const CASES: u32 = 12;
const TARGETS: usize = 3;

/// One change to the tree under `/t`. Paths are relative to `/t`, made of
/// the names a, b, c so that changes keep meeting each other.
#[derive(Debug, Clone)]
enum Op {
    Write(String, u8),
    Append(String),
    Mkdir(String),
    Remove(String),
    Move(String, String),
    Swap(String, String),
    Link(String, String),
    Symlink(String, String),
    Fifo(String),
    Chmod(String, u32),
    Chown(String, u32, u32),
    /// Host side: times, xattrs and ACLs, which busybox cannot set.
    Touch(String, i64),
    Xattr(String, &'static str, Vec<u8>),
    NoXattr(String, &'static str),
    Acl(String),
    DefaultAcl(String),
}

fn rel_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=3)
        .prop_map(|parts| parts.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    let p = rel_path;
    prop_oneof![
        (p(), any::<u8>()).prop_map(|(a, c)| Op::Write(a, c)),
        p().prop_map(Op::Append),
        p().prop_map(Op::Mkdir),
        p().prop_map(Op::Remove),
        (p(), p()).prop_map(|(a, b)| Op::Move(a, b)),
        (p(), p()).prop_map(|(a, b)| Op::Swap(a, b)),
        (p(), p()).prop_map(|(a, b)| Op::Link(a, b)),
        (p(), p()).prop_map(|(a, b)| Op::Symlink(a, b)),
        p().prop_map(Op::Fifo),
        (
            p(),
            prop::sample::select(vec![0o600u32, 0o644, 0o700, 0o755, 0o4755, 0o1777])
        )
            .prop_map(|(a, m)| Op::Chmod(a, m)),
        (p(), 0u32..3, 0u32..3).prop_map(|(a, u, g)| Op::Chown(a, u * 1000, g * 1000)),
        (
            p(),
            prop::sample::select(vec![-86_400i64, 0, 1_000_000_000, 1_600_000_000])
        )
            .prop_map(|(a, t)| Op::Touch(a, t)),
        (
            p(),
            prop::sample::select(vec!["user.one", "user.two"]),
            // Not empty: umoci (0.4.7) drops an xattr whose value is empty,
            // where genoci and GNU tar keep it (a unit test covers that).
            prop::collection::vec(
                prop::sample::select(vec![0u8, 0x0a, b'=', b'x', 0xff]),
                1..6
            )
        )
            .prop_map(|(a, n, v)| Op::Xattr(a, n, v)),
        (p(), prop::sample::select(vec!["user.one", "user.two"]))
            .prop_map(|(a, n)| Op::NoXattr(a, n)),
        p().prop_map(Op::Acl),
        p().prop_map(Op::DefaultAcl),
    ]
}

/// The `run` script (inside the image) and the `post` script (on the host,
/// below `$GENOCI_ROOTFS`) of one target. Symlink targets are relative and
/// never climb (`..`), so a host command that crosses one stays in the tree.
fn scripts(ops: &[Op]) -> (String, String) {
    let (mut run, mut post) = (String::from("cd /t\n"), String::new());
    let root = "\"$GENOCI_ROOTFS/t";
    for op in ops {
        let (r, h) = match op {
            // Opening a FIFO for writing would wait for a reader for ever.
            Op::Write(a, c) => (
                format!("[ ! -p {a} ] && mkdir -p $(dirname {a}) && echo {c} > {a}"),
                None,
            ),
            Op::Append(a) => (format!("[ ! -p {a} ] && echo more >> {a}"), None),
            Op::Mkdir(a) => (format!("mkdir -p {a}"), None),
            Op::Remove(a) => (format!("rm -rf {a}"), None),
            Op::Move(a, b) => (
                format!("rm -rf {b} && mkdir -p $(dirname {b}) && mv {a} {b}"),
                None,
            ),
            Op::Swap(a, b) => (format!("mv {a} .swap && mv {b} {a} && mv .swap {b}"), None),
            Op::Link(a, b) => (format!("ln -f {a} {b}"), None),
            Op::Symlink(a, b) => (format!("rm -rf {b} && ln -s {a} {b}"), None),
            Op::Fifo(a) => (format!("rm -rf {a} && mkfifo {a}"), None),
            Op::Chmod(a, m) => (format!("chmod {m:o} {a}"), None),
            Op::Chown(a, u, g) => (format!("chown -h {u}:{g} {a}"), None),
            Op::Touch(a, t) => (
                String::new(),
                Some(format!("touch -h -d @{t} {root}/{a}\"")),
            ),
            Op::Xattr(a, n, v) => {
                let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
                let value = if hex.is_empty() {
                    "\"\"".to_string()
                } else {
                    format!("0x{hex}")
                };
                (
                    String::new(),
                    Some(format!("setfattr -h -n {n} -v {value} {root}/{a}\"")),
                )
            }
            Op::NoXattr(a, n) => (
                String::new(),
                Some(format!("setfattr -h -x {n} {root}/{a}\"")),
            ),
            Op::Acl(a) => (
                String::new(),
                Some(format!("setfacl -m u:10:rwx {root}/{a}\"")),
            ),
            Op::DefaultAcl(a) => (
                String::new(),
                Some(format!("setfacl -d -m u:10:rwx,g:20:rx {root}/{a}\"")),
            ),
        };
        if !r.is_empty() {
            writeln!(run, "({r}) 2>/dev/null || true").unwrap();
        }
        if let Some(h) = h {
            // Never through a symlink at the entry itself (setfacl follows).
            writeln!(
                post,
                "[ -L {root}/{a}\" ] || ({h}) 2>/dev/null || true",
                a = op_path(op)
            )
            .unwrap();
        }
    }
    (run, post)
}

fn op_path(op: &Op) -> &str {
    match op {
        Op::Touch(a, _)
        | Op::Xattr(a, _, _)
        | Op::NoXattr(a, _)
        | Op::Acl(a)
        | Op::DefaultAcl(a) => a,
        _ => "",
    }
}

/// A YAML block scalar holding `text`.
fn block(text: &str) -> String {
    let mut out = String::from("|\n");
    for line in text.lines() {
        writeln!(out, "    {line}").unwrap();
    }
    out
}

/// The spec of one case: a seed tree under /t, then one target per op list.
fn spec(case: u32, targets: &[Vec<Op>]) -> String {
    let mut s = format!(
        "c{case}-seed:\n  base: bb\n  run: {}",
        block(
            "mkdir -p /t && cd /t\n\
             for x in a b c; do for y in a b c; do mkdir -p $x/$y\n\
             for z in a b; do echo $x$y$z > $x/$y/$z; done; done; done\n\
             echo same > a/c/c && cp -p a/c/c b/c/c && touch -r a/c/c b/c/c\n\
             ln a/a/a c/c/c && ln -s a/b b/b/c"
        )
    );
    let mut base = format!("c{case}-seed");
    for (n, ops) in targets.iter().enumerate() {
        let (run, post) = scripts(ops);
        let name = format!("c{case}-t{n}");
        // Every other target in a user namespace: on overlay, its steps
        // run on an overlay of their own over idmapped layers.
        let network = if n % 2 == 1 { "none" } else { "host" };
        write!(
            s,
            "{name}:\n  base: {base}\n  network: {network}\n  run: {}",
            block(&run)
        )
        .unwrap();
        if !post.is_empty() {
            write!(s, "  post: {}", block(&post)).unwrap();
        }
        base = name;
    }
    s
}

/// Each tag of a case (not the dated ones) with its image's tree, as
/// [`describe_tree`] gives it. Not the digests: whether a directory whose
/// raw mtime is the one it replaced (a swap within one clock tick) counts
/// as changed varies from run to run, though every image is the same.
type Trees = BTreeMap<String, BTreeMap<String, String>>;

/// Build one case on `env`'s store in a layout of its own, then compare
/// each tag's snapshot with what umoci unpacks from its layers. (The
/// comparison with genoci's own reader runs after the build, in `genoci`.)
/// Returns the tags' trees.
fn check_case(env: &Env, case: u32, targets: &[Vec<Op>]) -> Trees {
    let spec_name = format!("spec-{case}.yaml");
    env.write(&spec_name, &spec(case, targets));
    let layout = format!("./oci-{case}");
    build_reproducibly(env, &["--layout", &layout, "build", &spec_name]);
    let epoch = crate::stores::EPOCH.parse().ok();
    let mut trees = Trees::new();
    let snapshots = unpack_tags(env, &["--layout", &layout]).expect("unpack");
    for (tag, snapshot) in &snapshots {
        if tag.contains("-20") {
            continue; // A dated tag names the same image.
        }
        let bundle = env.path().join(format!("umoci-{case}-{tag}"));
        crate::util::run_ok(
            std::process::Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:{tag}", env.path().join(&layout).display()))
                .arg(&bundle),
        );
        assert_same_tree(
            snapshot,
            &bundle.join("rootfs"),
            epoch,
            &format!("{tag} through umoci"),
        );
        trees.insert(tag.clone(), describe_tree(&bundle.join("rootfs"), epoch));
        std::fs::remove_dir_all(&bundle).unwrap();
    }
    std::fs::remove_dir_all(env.path().join(&layout)).unwrap();
    trees
}

fn cases() -> u32 {
    std::env::var("GENOCI_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES)
}

/// Run the cases on `env`'s store; the trees of each case's tags.
fn run_on(env: &Env, driver: &str) -> Vec<Trees> {
    env.busybox("busybox.tar.gz");
    env.write(
        "bb.yaml",
        "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n",
    );
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: cases(),
            failure_persistence: None,
            max_shrink_iters: 32,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = prop::collection::vec(prop::collection::vec(op(), 1..12), TARGETS);
    let case = std::cell::Cell::new(0u32);
    let trees = std::cell::RefCell::new(Vec::new());
    let ops = std::cell::Cell::new(0usize);
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |targets| {
        case.set(case.get() + 1);
        ops.set(ops.get() + targets.iter().map(Vec::len).sum::<usize>());
        let case = case.get();
        // Each case builds on `bb` in a layout of its own.
        let layout = format!("./oci-{case}");
        build_reproducibly(env, &["--layout", &layout, "build", "bb.yaml"]);
        trees.borrow_mut().push(check_case(env, case, &targets));
        Ok(())
    });
    eprintln!(
        "differential ({driver}): {} cases run ({} passing cases asked), {} changes, {:.1} s",
        case.get(),
        cases(),
        ops.get(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{driver}: {e}");
    }
    trees.into_inner()
}

#[test]
fn random_changes_give_images_equal_to_the_trees_that_built_them() {
    crate::util::require_root!();
    crate::util::require_tool!("umoci");
    let mut first: Option<(crate::stores::Driver, Vec<Trees>)> = None;
    for driver in crate::stores::DRIVERS {
        if let Some(store) = crate::stores::Store::new(driver) {
            let trees = run_on(&store, &format!("{driver:?}"));
            store.finish();
            match &first {
                None => first = Some((driver, trees)),
                Some((other, expected)) => assert_same_images(&trees, expected, driver, *other),
            }
        }
    }
}

/// The images of each case are the same trees on `driver` as on `other`.
fn assert_same_images(
    trees: &[Trees],
    expected: &[Trees],
    driver: crate::stores::Driver,
    other: crate::stores::Driver,
) {
    assert_eq!(
        trees.len(),
        expected.len(),
        "{driver:?} and {other:?}: cases run"
    );
    for (case, (got, want)) in trees.iter().zip(expected).enumerate() {
        for (tag, tree) in got {
            let diffs: Vec<String> = tree
                .iter()
                .filter(|(path, d)| want[tag].get(*path) != Some(*d))
                .map(|(path, d)| format!("  {path}: {d} / {:?}", want[tag].get(path)))
                .chain(
                    want[tag]
                        .keys()
                        .filter(|p| !tree.contains_key(*p))
                        .map(|p| format!("  {p}: absent on {driver:?}")),
                )
                .collect();
            assert!(
                diffs.is_empty(),
                "case {}, {tag}: {driver:?} / {other:?} differ:\n{}",
                case + 1,
                diffs.join("\n")
            );
        }
    }
}
