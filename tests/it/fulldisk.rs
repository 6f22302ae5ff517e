//! A build that runs out of space: on a small filesystem the test mounts,
//! the target fails naming itself and the cause, and the layout and store
//! are left as they were, with no partial blob or work tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::stores::{assert_layout_valid, work_entries};
use crate::util::{mounts_under, require_root, run_ok, stderr, Env};

const SIZE_MIB: u64 = 24;

/// A tmpfs of `SIZE_MIB` MiB mounted in the test dir, unmounted on drop
/// even when the test fails.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path) -> SmallFs {
        fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={SIZE_MIB}m,mode=0755"),
                    "tmpfs",
                ])
                .arg(dir),
        );
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Random bytes, so that compression cannot make the layer small.
fn random_file(env: &Env, name: &str, mib: u64) {
    run_ok(
        Command::new("head")
            .args(["-c", &format!("{mib}M"), "/dev/urandom"])
            .stdout(fs::File::create(env.path().join(name)).unwrap()),
    );
}

/// Every entry of the layout: its files, and those of `blobs/sha256`.
fn layout_files(layout: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(layout)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.extend(
        fs::read_dir(layout.join("blobs/sha256"))
            .unwrap()
            .map(|e| format!("blobs/sha256/{}", e.unwrap().file_name().to_string_lossy())),
    );
    names.sort();
    names
}

/// Builds `spec` (target `big`), which must fail for want of space with
/// `cause` in its message, and leave the layout and the store as they were.
fn fails_for_space_and_leaves_nothing(env: &Env, spec: &str, cause: &str) {
    let layout = env.layout();
    let store = env.path().join("small/.genoci");
    let before = layout_files(&layout);
    env.write("spec.yaml", spec);
    let out = env.genoci(&["build", "spec.yaml"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("target big: "), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(cause), "want {cause:?} in: {err}");
    assert_eq!(
        layout_files(&layout),
        before,
        "a partial blob or temp file is left"
    );
    assert!(
        work_entries(&store).is_empty(),
        "{:?}",
        work_entries(&store)
    );
    assert_layout_valid(env);
    assert_eq!(
        env.tags().iter().filter(|t| t.starts_with("big")).count(),
        0
    );
}

#[test]
fn a_build_that_runs_out_of_space_fails_cleanly() {
    require_root!();
    let env = Env::new();
    let small = SmallFs::mount(&env.path().join("small"));
    env.write(
        "atom_config.yaml",
        "driver: plain\nlayoutdir: ./small/oci\nstoredir: ./small/.genoci\n",
    );
    // The helpers read the layout at ./oci.
    std::os::unix::fs::symlink("small/oci", env.layout()).unwrap();
    env.write("hello.txt", "hello\n");
    env.write(
        "ok.yaml",
        "ok:\n  base: empty\n  copy: hello.txt /hello.txt\n",
    );
    env.ok(&["build", "ok.yaml"]);

    // The work tree fits, its layer does not: writing the layer fails, and
    // the message says so (it used to blame reading the file).
    random_file(&env, "big.bin", SIZE_MIB * 6 / 10);
    let layer_spec = "big:\n  base: ok\n  copy: big.bin /big.bin\n";
    fails_for_space_and_leaves_nothing(&env, layer_spec, "target big: commit: write layer into");

    // Not even the work tree fits.
    random_file(&env, "huge.bin", SIZE_MIB + 4);
    let copy_spec = "big:\n  base: ok\n  copy: huge.bin /huge.bin\n";
    let step = format!(
        "target big: copy {}/huge.bin /huge.bin",
        env.path().display()
    );
    fails_for_space_and_leaves_nothing(&env, copy_spec, &step);

    // The space is all given back: the same store builds again.
    random_file(&env, "big.bin", 1);
    env.write("spec.yaml", layer_spec);
    env.ok(&["build", "spec.yaml"]);
    assert_layout_valid(&env);
    drop(small);
    assert!(mounts_under(env.path()).is_empty());
}

/// Free bytes on the filesystem holding `dir`, and its block size.
fn free_space(dir: &Path) -> (u64, u64) {
    let out = run_ok(Command::new("stat").args(["-f", "-c", "%a %S"]).arg(dir));
    let mut words = out.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    let (blocks, size) = (words.next().unwrap(), words.next().unwrap());
    (blocks * size, size)
}

/// The disk fills up at every point of a build in turn: with 0, 1, 2 ...
/// blocks left, each write of the build (work tree, layer, config,
/// manifest, index, cache) is the first to fail in one of the runs. Each
/// run succeeds, or fails naming the target and the cause; either way no
/// temp file, no blob whose bytes are not its digest, no work tree.
#[test]
fn running_out_of_space_at_any_write_leaves_a_valid_layout() {
    require_root!();
    let env = Env::new();
    let small = SmallFs::mount(&env.path().join("small"));
    env.write(
        "atom_config.yaml",
        "driver: plain\nlayoutdir: ./small/oci\nstoredir: ./small/.genoci\n",
    );
    std::os::unix::fs::symlink("small/oci", env.layout()).unwrap();
    env.write("hello.txt", "hello\n");
    env.write(
        "ok.yaml",
        "ok:\n  base: empty\n  copy: hello.txt /hello.txt\n",
    );
    env.ok(&["build", "ok.yaml"]);
    let store = env.path().join("small/.genoci");
    let filler = env.path().join("small/filler");
    let mut failed = Vec::new();
    for blocks in 0..12u64 {
        let target = format!("step{blocks}");
        env.write("input.txt", &format!("{blocks}\n"));
        env.write(
            "spec.yaml",
            &format!(
                "{target}:\n  base: ok\n  copy: input.txt /input.txt\n  env:\n    N: '{blocks}'\n"
            ),
        );
        let (free, block) = free_space(&small.0);
        run_ok(
            Command::new("head")
                .args(["-c", &(free - blocks * block).to_string(), "/dev/zero"])
                .stdout(fs::File::create(&filler).unwrap()),
        );
        let out = env.genoci(&["build", "spec.yaml"]);
        fs::remove_file(&filler).unwrap();
        let err = stderr(&out);
        if !out.status.success() {
            assert!(err.contains(&format!("target {target}: ")), "{err}");
            assert!(err.contains("No space left on device"), "{err}");
            assert!(!err.contains("panicked"), "{err}");
            assert!(!env.tags().contains(&target), "a failed target is tagged");
            failed.push(blocks);
        } else {
            assert!(env.tags().contains(&target));
        }
        let mut top = layout_files(&env.layout());
        top.retain(|f| !f.starts_with("blobs/"));
        assert_eq!(
            top,
            ["blobs", "index.json", "oci-layout"],
            "{blocks} blocks free"
        );
        for blob in layout_files(&env.layout())
            .iter()
            .filter(|f| f.starts_with("blobs/sha256/"))
        {
            let hex = run_ok(Command::new("sha256sum").arg(env.layout().join(blob)));
            assert!(
                blob.ends_with(hex.split(' ').next().unwrap()),
                "partial blob {blob}"
            );
        }
        assert!(
            work_entries(&store).is_empty(),
            "{:?}",
            work_entries(&store)
        );
        assert_layout_valid(&env);
    }
    eprintln!("builds that ran out of space, by blocks left: {failed:?}");
    // With no block left the build cannot succeed; with many it must.
    assert!(failed.contains(&0) && !failed.contains(&11), "{failed:?}");
    drop(small);
    assert!(mounts_under(env.path()).is_empty());
}

/// The same on a btrfs store that is full: the work tree cannot grow, the
/// target fails naming the cause, and nothing of it stays in the store.
#[test]
fn a_full_btrfs_store_fails_cleanly() {
    crate::stores::require_btrfs!();
    let store = crate::stores::Btrfs::new();
    store.write("hello.txt", "hello\n");
    store.write(
        "ok.yaml",
        "ok:\n  base: empty\n  copy: hello.txt /hello.txt\n",
    );
    store.ok(&["build", "ok.yaml"]);
    let filler = store.mountpoint().join("filler");
    let (free, _) = free_space(&store.mountpoint());
    run_ok(
        Command::new("head")
            .args(["-c", &(free - (64 << 10)).to_string(), "/dev/zero"])
            .stdout(fs::File::create(&filler).unwrap()),
    );
    random_file(&store, "big.bin", 4);
    store.write("spec.yaml", "big:\n  base: ok\n  copy: big.bin /big.bin\n");
    let out = store.genoci(&["build", "spec.yaml"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("target big: "), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let work = work_entries(&store.mountpoint());
    assert!(work.is_empty(), "{work:?}");
    assert_layout_valid(&store);
    fs::remove_file(&filler).unwrap();
    store.ok(&["build", "spec.yaml"]);
    store.finish();
}
