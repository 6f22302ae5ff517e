//! A `run` step is confined as a docker container is: it cannot reach the
//! host kernel or the host network, yet legitimate steps still work.
//!
//! Most probes run under both networks: both run in a user namespace on an
//! idmapped tree (`network: host` with a network namespace of its own
//! connected to the host's by slirp4netns, see `network.rs`), and both
//! must confine alike and build the same layers as an unconfined step.
//!
//! Every escape probe is harmless should it unexpectedly succeed: sysctls
//! get their current value written back, a route added is deleted at once,
//! the block device is a loop device on a temp file, the "module" is junk
//! the kernel would refuse to load anyway.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::stores::{Driver, Store, DRIVERS};
use crate::util::{require_root, run_ok, stderr, Env};

/// The networks a step can have.
const NETWORKS: [&str; 2] = ["host", "none"];

/// Shell functions the probes share. `refused WANT CMD...` runs CMD and
/// insists it fails with an error mentioning WANT (so a probe that fails
/// for an unrelated reason does not count as confinement).
const PRELUDE: &str = r#"
refused() {
  want="$1"; shift
  if "$@" 2>/tmp/err; then echo "NOT REFUSED: $*"; exit 1; fi
  grep -q "$want" /tmp/err || { echo "refused otherwise: $*: $(cat /tmp/err)"; exit 1; }
  echo "refused: $*"
}
"#;

/// A spec: the busybox base and a child `probe` running `script` (with
/// `extra` keys, e.g. `privileged: true`).
fn spec(env: &Env, script: &str, extra: &str) {
    env.busybox("bb.tar.gz");
    let script = format!("{PRELUDE}{script}");
    let indented: String = script.lines().map(|l| format!("    {l}\n")).collect();
    env.write(
        "spec.yaml",
        &format!(
            "base:\n  base: empty\n  expand: ./bb.tar.gz\nprobe:\n  base: base\n{extra}  run: |\n{indented}"
        ),
    );
}

fn build(env: &Env, script: &str, extra: &str) -> Output {
    spec(env, script, extra);
    env.genoci(&["build", "spec.yaml"])
}

fn build_ok(env: &Env, script: &str) {
    build_ok_on(env, script, "host");
}

fn build_ok_on(env: &Env, script: &str, network: &str) {
    let out = build(env, script, &format!("  network: {network}\n"));
    assert!(
        out.status.success(),
        "probe failed (network: {network}):\n{}",
        output(&out)
    );
}

/// Build the probe running `script` under each network, each in a test dir
/// of its own, and hand it to `check`: on a plain store, and on an overlay
/// one (the default driver; in the user namespace, a step there runs on an
/// overlay of its own).
fn each_network(script: &str, check: impl Fn(&Env, &str)) {
    for driver in [Driver::Plain, Driver::Overlay] {
        for network in NETWORKS {
            let Some(store) = Store::new(driver) else {
                return;
            };
            eprintln!("--- {driver:?}, network: {network}");
            build_ok_on(&store, script, network);
            check(&store, network);
            store.assert_nothing_leaked();
        }
    }
}

/// Run `body` on a test dir of each driver (btrfs where the machine can
/// make a loopback btrfs), named as the config names it.
fn each_driver(body: impl Fn(&Env, &str)) {
    on_drivers(&DRIVERS, body);
}

/// [`each_driver`] on `drivers` only.
fn on_drivers(drivers: &[Driver], body: impl Fn(&Env, &str)) {
    for &driver in drivers {
        if let Some(store) = Store::new(driver) {
            body(&store, &format!("{driver:?}").to_lowercase());
            store.assert_nothing_leaked();
            store.finish();
        }
    }
}

fn output(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}

/// `CapXxx` lines of /proc/self/status as (name, mask).
fn caps_of(status: &str) -> Vec<(String, u64)> {
    status
        .lines()
        .filter_map(|l| l.split_once(":\t"))
        .filter(|(k, _)| k.starts_with("Cap"))
        .map(|(k, v)| (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap()))
        .collect()
}

/// docker's default capability set (`docker run alpine grep Cap /proc/self/status`).
const DOCKER_CAPS: u64 = 0xa804_25fb;

fn assert_docker_caps(status: &str) {
    let caps = caps_of(status);
    let want: Vec<(String, u64)> = [
        ("CapInh", 0),
        ("CapPrm", DOCKER_CAPS),
        ("CapEff", DOCKER_CAPS),
        ("CapBnd", DOCKER_CAPS),
        ("CapAmb", 0),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    assert_eq!(caps, want, "{status}");
}

// ---- capabilities ----

#[test]
fn run_steps_have_docker_s_capabilities_in_every_set() {
    require_root!();
    each_network("grep ^Cap /proc/self/status > /caps", |env, _| {
        let root = env.unpack("probe");
        assert_docker_caps(&fs::read_to_string(root.join("caps")).unwrap());
    });
}

#[test]
fn chroot_has_docker_s_capabilities_in_every_set() {
    require_root!();
    let env = Env::new();
    build_ok(&env, "true");
    let out = env.ok(&["chroot", "probe", "/bin/grep", "^Cap", "/proc/self/status"]);
    assert_docker_caps(&out);
}

#[test]
fn a_step_cannot_mount() {
    require_root!();
    each_network(
        r#"mkdir -p /mnt
refused "denied" mount -t tmpfs none /mnt
refused "denied" mount -o remount,rw /
rm /tmp/err
"#,
        |_, _| {},
    );
}

#[test]
fn a_step_cannot_change_the_host_s_routes_or_interfaces() {
    require_root!();
    // 198.51.100.0/24 is TEST-NET-2: no host uses it; a route or an
    // interface is deleted at once if made.
    each_network(
        r#"if ip route add 198.51.100.0/24 dev lo 2>/tmp/err; then
  ip route del 198.51.100.0/24 dev lo
  echo "NOT REFUSED: route add"; exit 1
fi
grep -q "not permitted" /tmp/err
if ip link add genoci-probe0 type dummy 2>/tmp/err; then
  ip link del genoci-probe0
  echo "NOT REFUSED: link add"; exit 1
fi
grep -q "not permitted" /tmp/err
rm /tmp/err
"#,
        |_, _| {},
    );
}

// ---- /proc and /dev ----

#[test]
fn global_sysctls_and_core_pattern_are_read_only() {
    require_root!();
    // The current value written back: a no-op should the write go through.
    each_network(
        r#"for f in vm/swappiness kernel/core_pattern; do
  v=$(cat /proc/sys/$f)
  refused "Read-only file system" sh -c "echo '$v' > /proc/sys/$f"
done
for p in sys sysrq-trigger irq bus fs; do
  test -e /proc/$p || continue
  grep -q " /proc/$p ro," /proc/self/mountinfo || { echo "/proc/$p writable"; exit 1; }
done
rm /tmp/err
"#,
        |_, _| {},
    );
}

#[test]
fn docker_s_masked_proc_files_read_empty() {
    require_root!();
    each_network(
        r#"for f in kcore keys timer_list interrupts sched_debug latency_stats timer_stats; do
  test -e /proc/$f || continue
  n=$(head -c 64 /proc/$f | wc -c)
  test "$n" = 0 || { echo "/proc/$f readable"; exit 1; }
done
for d in acpi scsi asound; do
  test -d /proc/$d || continue
  test -z "$(ls -A /proc/$d)" || { echo "/proc/$d listed"; exit 1; }
done
"#,
        |_, _| {},
    );
}

/// A loop device attached to a temp file holding a marker; detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let dev = run_ok(Command::new("losetup").args(["--find", "--show"]).arg(file));
        Loop(PathBuf::from(dev.trim()))
    }

    /// (major, minor)
    fn numbers(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let rdev = fs::metadata(&self.0).unwrap().rdev();
        (libc::major(rdev) as u64, libc::minor(rdev) as u64)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// `(file type, mode bits, uid, gid, major, minor)` of `path`.
fn node(path: &Path) -> (&'static str, u32, u32, u32, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let kind = match meta.file_type() {
        t if t.is_block_device() => "b",
        t if t.is_char_device() => "c",
        t if t.is_fifo() => "p",
        _ => "other",
    };
    let rdev = meta.rdev();
    (
        kind,
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid(),
        libc::major(rdev) as u64,
        libc::minor(rdev) as u64,
    )
}

#[test]
fn device_nodes_land_in_the_layer_but_do_not_open() {
    require_root!();
    // Under network: none the kernel refuses these mknods in the user
    // namespace: genoci's supervisor makes them, as the step would have.
    each_driver(|env, driver| {
        for network in NETWORKS {
            device_nodes_on(env, &format!("{driver}, network: {network}"), network);
        }
    });
}

fn device_nodes_on(env: &Env, case: &str, network: &str) {
    let backing = env.path().join("disk.img");
    let mut data = b"MARKER-0123".to_vec();
    data.resize(1 << 20, 0);
    fs::write(&backing, data).unwrap();
    let lo = Loop::attach(&backing);
    let (major, minor) = lo.numbers();
    build_ok_on(
        env,
        &format!(
            r#"mknod /blk b {major} {minor}
mknod /dev/blk b {major} {minor}
mknod -m 640 /chr c 1 3
umask 077
mknod /private c 1 5
chown 1000:1000 /private
mkdir -p /srv/d && cd /srv/d && mknod rel c 1 7 && mkfifo fifo
refused "denied" head -c 6 /blk
refused "denied" head -c 6 /dev/blk
refused "denied" sh -c 'echo x > /chr'
echo x > /dev/null
rm /tmp/err
"#
        ),
        network,
    );
    drop(lo);
    let root = env.unpack("probe");
    assert_eq!(
        node(&root.join("blk")),
        ("b", 0o644, 0, 0, major, minor),
        "{case}"
    );
    assert_eq!(node(&root.join("chr")), ("c", 0o640, 0, 0, 1, 3), "{case}");
    assert_eq!(
        node(&root.join("private")),
        ("c", 0o600, 1000, 1000, 1, 5),
        "{case}"
    );
    assert_eq!(
        node(&root.join("srv/d/rel")),
        ("c", 0o600, 0, 0, 1, 7),
        "{case}"
    );
    assert_eq!(node(&root.join("srv/d/fifo")).0, "p", "{case}");
    assert!(!root.join("dev/blk").exists(), "/dev is the sandbox's own");
    fs::remove_dir_all(root.parent().unwrap()).unwrap();
}

// ---- the user namespace of network: none ----

/// The first line of a `uid_map`: (inside, outside, count).
fn first_map(map: &str) -> (u64, u64, u64) {
    let f: Vec<u64> = map
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    (f[0], f[1], f[2])
}

const IDS: &str = r#"cat /proc/self/uid_map > /uid_map
cat /proc/self/gid_map > /gid_map
echo a > /as-root
echo b > /as-1000 && chown 1000:1000 /as-1000
mkdir -p /srv/app && chown 1000:1001 /srv/app
"#;

#[test]
fn run_steps_run_in_a_user_namespace_whose_root_is_not_host_root() {
    require_root!();
    each_driver(|env, driver| {
        for network in NETWORKS {
            let case = format!("{driver}, network: {network}");
            spec(env, IDS, &format!("  network: {network}\n"));
            let out = env.genoci(&["-v", "build", "spec.yaml"]);
            assert!(out.status.success(), "{case}: {}", output(&out));
            // Every driver and network; an overlay work tree gets an overlay
            // of its own over idmapped layers.
            let err = stderr(&out);
            assert!(err.contains("user_namespace=true"), "{case}: {err}");
            assert_eq!(
                err.contains("own_overlay=true"),
                driver == "overlay",
                "{case}: {err}"
            );
            let root = env.unpack("probe");
            for map in ["uid_map", "gid_map"] {
                let seen = first_map(&fs::read_to_string(root.join(map)).unwrap());
                // Root inside is a high, unprivileged host id.
                assert_eq!(seen, (0, 1_900_000_000, 65536), "{case}: {map}");
            }
            use std::os::unix::fs::MetadataExt;
            let ids = |p: &str| {
                let m = fs::symlink_metadata(root.join(p)).unwrap();
                (m.uid(), m.gid())
            };
            // Through the idmapped tree, the ids the step used.
            assert_eq!(ids("as-root"), (0, 0), "{case}");
            assert_eq!(ids("as-1000"), (1000, 1000), "{case}");
            assert_eq!(ids("srv/app"), (1000, 1001), "{case}");
            fs::remove_dir_all(root.parent().unwrap()).unwrap();
        }
    });
}

#[test]
fn mknod_through_symlinks_never_leaves_the_tree() {
    require_root!();
    each_driver(|env, driver| {
        let outside = env.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let o = outside.display();
        // The host's path also exists in the tree: a node meant for it
        // lands in the tree's copy. A relative path may not climb out of
        // the working directory (EXDEV). The last part: swap a symlink to
        // the host path and a directory while nodes are made through it.
        let script = format!(
            r#"mkdir -p {o} /tmp/t/swap.d && cd /tmp/t
ln -s {o} abs
mknod /tmp/t/abs/n1 c 1 3
ln -s ../../../../../../../../../..{o} up
refused "cross-device" mknod up/n2 c 1 3
refused "cross-device" mknod ../../../../../../../../../..{o}/n3 c 1 3
ln -s {o}/final final
refused "exists" mknod /tmp/t/final c 1 3
(i=0; while [ $i -lt 300 ]; do ln -sfn {o} swap; ln -sfn swap.d swap; i=$((i+1)); done) &
i=0; while [ $i -lt 300 ]; do mknod /tmp/t/swap/r$i c 1 3 2>/dev/null || true; i=$((i+1)); done
wait
rm /tmp/err
"#
        );
        build_ok_on(env, &script, "none");
        let left: Vec<_> = fs::read_dir(&outside).unwrap().collect();
        assert!(left.is_empty(), "{driver}: made on the host: {left:?}");
        let root = env.unpack("probe");
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(node(&inside.join("n1")).0, "c", "{driver}");
        let made = fs::read_dir(&inside).unwrap().count() - 1
            + fs::read_dir(root.join("tmp/t/swap.d")).unwrap().count();
        assert!(made > 0, "{driver}: no node made in the race");
        eprintln!("{driver}: {made} of 300 racing mknods made, all in the tree");
    });
}

#[test]
fn without_idmapped_mounts_steps_fall_back_to_host_ids_and_say_why() {
    require_root!();
    // ramfs takes no idmapped mount: a store there cannot have steps in a
    // user namespace.
    let env = Env::new();
    let ram = env.path().join("ram");
    fs::create_dir(&ram).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(&ram),
    );
    env.write(
        "atom_config.yaml",
        "driver: plain\nlayoutdir: ./oci\nstoredir: ./ram/store\n",
    );
    spec(&env, IDS, "  network: none\n");
    let out = env.genoci(&["-v", "build", "spec.yaml"]);
    assert!(out.status.success(), "{}", output(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no user namespace for run steps") && err.contains("idmap"),
        "{err}"
    );
    assert!(err.contains("user_namespace=false"), "{err}");
    let root = env.unpack("probe");
    let map = fs::read_to_string(root.join("uid_map")).unwrap();
    assert_eq!(first_map(&map), (0, 0, 4_294_967_295));
}

// ---- seccomp ----

#[test]
fn a_step_cannot_load_a_module_or_make_namespaces() {
    require_root!();
    // Junk the kernel would refuse to load in any case; the filter answers
    // EPERM before the kernel looks (a kernel without modules says ENOSYS).
    each_network(
        r#"head -c 4096 /dev/urandom > /tmp/junk.ko
refused "not permitted" insmod /tmp/junk.ko
refused "not permitted" unshare -U true
refused "not permitted" unshare -n true
rm /tmp/junk.ko /tmp/err
"#,
        |_, _| {},
    );
}

// ---- legitimate steps ----

#[test]
fn chown_mknod_and_ping_still_work() {
    require_root!();
    // Under network: none, ping's NET_RAW counts in the step's own network
    // namespace, which belongs to its user namespace.
    each_network(
        r#"echo x > /owned
chown 1000:1000 /owned
mknod /null c 1 3
ping -c 1 -W 5 127.0.0.1
"#,
        |env, network| {
            let root = env.unpack("probe");
            use std::os::unix::fs::MetadataExt;
            let owned = fs::metadata(root.join("owned")).unwrap();
            assert_eq!((owned.uid(), owned.gid()), (1000, 1000), "{network}");
        },
    );
}

/// `setcap cap_net_raw+ep`, as perl can say it with no libcap: a
/// `security.capability` v2 value.
const SETCAP: &str = r#"perl -e '$v = pack("V5", 0x02000001, 1 << 13, 0, 0, 0); ($p, $n) = ("/usr/bin/capped", "security.capability"); syscall(188, $p, $n, $v, length $v, 0) == 0 or die "setxattr: $!\n"'"#;

/// Steps of a legitimate Debian build: a user, a file capability, and a
/// package made and installed with dpkg (dpkg's logs go: their times
/// differ from one build to the next).
const DEBIAN_STEPS: &str = r#"    - useradd -m -u 1234 app && chown -R app:app /home/app
    - |
      cp /bin/true /usr/bin/capped
      SETCAP
    - |
      mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/share/tiny
      printf 'Package: tiny\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@example.org>\nDescription: t\n' > /tmp/pkg/DEBIAN/control
      echo hi > /tmp/pkg/usr/share/tiny/hi.txt
      chown -R 1234:1234 /tmp/pkg/usr/share/tiny
      dpkg-deb --build /tmp/pkg /tmp/tiny.deb >/dev/null
      dpkg -i /tmp/tiny.deb
      rm -rf /tmp/pkg /tmp/tiny.deb /var/log/dpkg.log /var/log/alternatives.log
"#;

#[test]
fn useradd_and_file_capabilities_work_on_debian() {
    require_root!();
    // The test btrfs store (256 MiB) cannot hold a Debian tree.
    on_drivers(&[Driver::Plain, Driver::Overlay], debian_steps_on);
}

fn debian_steps_on(env: &Env, driver: &str) {
    fs::copy(
        crate::util::fixture("debian"),
        env.path().join("debian.tar.gz"),
    )
    .unwrap();
    let steps = DEBIAN_STEPS.replace("SETCAP", SETCAP);
    let mut spec = "debian:\n  base: empty\n  expand: ./debian.tar.gz\n".to_string();
    for network in NETWORKS {
        // `touched` changes base files, the capped one too (a chmod keeps
        // its capability): on overlay, copied up with their xattrs through
        // the idmapped upper layer.
        spec.push_str(&format!(
            "users-{network}:\n  base: debian\n  network: {network}\n  run:\n{steps}\
             touched-{network}:\n  base: users-{network}\n  network: {network}\n  run: |\n    \
             chmod 750 /usr/bin/capped\n    \
             echo more >> /etc/passwd && touch /usr/share/tiny/hi.txt\n"
        ));
    }
    // The same steps with host ids in the host's network, unconfined.
    spec.push_str(&format!(
        "users-privileged:\n  base: debian\n  privileged: true\n  run:\n{steps}"
    ));
    env.write("spec.yaml", &spec);
    build_in_user_namespace(env, driver);
    for network in NETWORKS {
        let case = format!("{driver}, network: {network}");
        let root = env.unpack(&format!("users-{network}"));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(root.join("home/app")).unwrap().uid(),
            1234,
            "{case}"
        );
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("app:x:1234:"), "{case}: {passwd}");
        let cap = xattr(&root.join("usr/bin/capped"), "security.capability");
        assert_eq!(
            cap.get(..8),
            Some(&[1, 0, 0, 2, 0, 0x20, 0, 0][..]),
            "{case}"
        );
        let hi = fs::metadata(root.join("usr/share/tiny/hi.txt")).unwrap();
        assert_eq!((hi.uid(), hi.gid()), (1234, 1234), "{case}");
        let status = fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
        assert!(
            status.contains("Package: tiny\nStatus: install ok installed"),
            "{case}"
        );
        fs::remove_dir_all(root.parent().unwrap()).unwrap();
        let root = env.unpack(&format!("touched-{network}"));
        let capped = root.join("usr/bin/capped");
        let cap = xattr(&capped, "security.capability");
        assert_eq!(
            cap.get(..8),
            Some(&[1, 0, 0, 2, 0, 0x20, 0, 0][..]),
            "{case}"
        );
        let meta = fs::metadata(&capped).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o750, "{case}");
        fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }
    // In the user namespace or not, the same bytes.
    let layers = |tag: &str| crate::oci::config(&env.layout(), tag)["rootfs"]["diff_ids"].clone();
    assert_eq!(layers("users-host"), layers("users-privileged"), "{driver}");
    assert_eq!(layers("users-none"), layers("users-privileged"), "{driver}");
    assert_eq!(layers("touched-host"), layers("touched-none"), "{driver}");
}

/// Build `spec.yaml` under `SOURCE_DATE_EPOCH` (so layers compare), and
/// check that its steps ran in a user namespace.
fn build_in_user_namespace(env: &Env, driver: &str) {
    let out = env
        .cmd(&["-v", "build", "spec.yaml"])
        .env("SOURCE_DATE_EPOCH", crate::stores::EPOCH)
        .output()
        .unwrap();
    assert!(out.status.success(), "{driver}: {}", output(&out));
    // On overlay, over an overlay of its own.
    let log = stderr(&out);
    assert!(log.contains("user_namespace=true"), "{driver}: {log}");
    let own = log.contains("own_overlay=true");
    assert_eq!(own, driver == "overlay", "{driver}: {log}");
}

/// Steps whose changes each driver records in its own way: a new link to
/// a base file, a renamed base directory (overlay: a redirect) holding a
/// file linked from outside it, a deletion (a whiteout), a directory
/// removed and made again (opaque), owners, modes and a device node.
const RECORDED: &str = r#"    - |
      ln /f1 /f2
      mv /d /e
      rm /gone
      rm -rf /op && mkdir /op && echo new > /op/new
      chown 1000:1001 /owned && chmod 640 /owned
      mknod /dev-node c 1 3
"#;

#[test]
fn links_renames_whiteouts_and_opaque_dirs_read_back_alike_in_the_user_namespace() {
    require_root!();
    let digests = std::cell::RefCell::new(Vec::new());
    each_driver(|env, driver| {
        env.busybox("bb.tar.gz");
        let mut spec = "base:
  base: empty
  expand: ./bb.tar.gz
  run: |
                 echo one > /f1 && mkdir -p /d/sub /op && echo in > /d/sub/f && ln /d/sub/f /g
                 echo x > /gone && echo old > /op/old && echo o > /owned
"
        .to_string();
        for network in NETWORKS {
            spec.push_str(&format!(
                "changed-{network}:
  base: base
  network: {network}
  run:
{RECORDED}"
            ));
        }
        env.write("spec.yaml", &spec);
        build_in_user_namespace(env, driver);
        let layers =
            |tag: &str| crate::oci::config(&env.layout(), tag)["rootfs"]["diff_ids"].clone();
        assert_eq!(layers("changed-host"), layers("changed-none"), "{driver}");
        let root = env.unpack("changed-none");
        use std::os::unix::fs::MetadataExt;
        let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(meta("f1").ino(), meta("f2").ino(), "{driver}");
        assert_eq!(meta("g").ino(), meta("e/sub/f").ino(), "{driver}");
        assert!(!root.join("d").exists() && !root.join("gone").exists());
        assert!(!root.join("op/old").exists() && root.join("op/new").exists());
        let owned = meta("owned");
        assert_eq!(
            (owned.uid(), owned.gid(), owned.mode() & 0o777),
            (1000, 1001, 0o640)
        );
        assert_eq!(node(&root.join("dev-node")), ("c", 0o644, 0, 0, 1, 3));
        fs::remove_dir_all(root.parent().unwrap()).unwrap();
        digests
            .borrow_mut()
            .push((driver.to_string(), layers("changed-none")));
    });
    // Every driver, the same layers.
    let digests = digests.into_inner();
    for (driver, layers) in &digests {
        assert_eq!(layers, &digests[0].1, "{driver} against {}", digests[0].0);
    }
}

fn xattr(path: &Path, name: &str) -> Vec<u8> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n >= 0, "{}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    buf
}

// ---- privileged ----

#[test]
fn privileged_restores_full_root_and_warns() {
    require_root!();
    let env = Env::new();
    // What confinement refuses goes through again: full capabilities and a
    // writable /proc/sys (the current value written back).
    let out = build(
        &env,
        r#"grep ^CapBnd /proc/self/status > /caps
v=$(cat /proc/sys/vm/swappiness)
echo "$v" > /proc/sys/vm/swappiness
"#,
        "  privileged: true\n",
    );
    assert!(out.status.success(), "{}", output(&out));
    assert!(
        stderr(&out).contains("target probe is privileged"),
        "{}",
        stderr(&out)
    );
    let root = env.unpack("probe");
    let caps = caps_of(&fs::read_to_string(root.join("caps")).unwrap());
    assert_ne!(caps[0].1, DOCKER_CAPS);
}

#[test]
fn confinement_does_not_change_the_layer() {
    require_root!();
    each_driver(confinement_on);
}

fn confinement_on(env: &Env, driver: &str) {
    env.busybox("bb.tar.gz");
    let steps = "    - mkdir -p /srv/a && echo hi > /srv/a/f && chown 1000:1000 /srv/a/f\n    - mknod /srv/null c 1 3 && mknod -m 600 /srv/sda b 8 0 && ln -s f /srv/a/l\n";
    // `confined` and `isolated` run in a user namespace, their nodes made by
    // the supervisor; `free` with host ids.
    env.write(
        "spec.yaml",
        &format!(
            "base:\n  base: empty\n  expand: ./bb.tar.gz\nconfined:\n  base: base\n  run:\n{steps}free:\n  base: base\n  privileged: true\n  run:\n{steps}isolated:\n  base: base\n  network: none\n  run:\n{steps}"
        ),
    );
    let out = env
        .cmd(&["build", "spec.yaml"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{driver}: {}", output(&out));
    let layers = |tag: &str| crate::oci::config(&env.layout(), tag)["rootfs"]["diff_ids"].clone();
    assert_eq!(layers("confined"), layers("free"), "{driver}");
    assert_eq!(layers("isolated"), layers("free"), "{driver}");
}

// ---- the image's user ----

/// A base with an `app` user (uid 1000, also in `wheel`) as its `User`,
/// the given `user` value, an `Env`, and room for busybox's dpkg.
fn user_spec(env: &Env, user: &str, child: &str) {
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        &format!(
            r#"base:
  base: empty
  expand: ./bb.tar.gz
  run: |
    chmod 755 /
    echo 'app:x:1000:1000:App:/home/app:/bin/sh' >> /etc/passwd
    printf 'app:x:1000:\nwheel:x:10:app\n' >> /etc/group
    mkdir -p /home/app /var/lib/dpkg/info && chown app:app /home/app
    touch /var/lib/dpkg/status
  user: "{user}"
  env: {{GREETING: hello}}
child:
  base: base
{child}"#
        ),
    );
}

const WHO: &str = r#"  run: |
    id -u > /tmp/uid
    id -G > /tmp/groups
    echo "$HOME $GREETING" > /tmp/home
    grep ^Cap /proc/self/status > /tmp/caps
"#;

fn read(root: &Path, file: &str) -> String {
    fs::read_to_string(root.join(file)).unwrap()
}

#[test]
fn run_steps_run_as_the_image_user_by_name() {
    require_root!();
    for network in NETWORKS {
        let env = Env::new();
        user_spec(&env, "app", &format!("  network: {network}\n{WHO}"));
        env.ok(&["build", "spec.yaml"]);
        let root = env.unpack("child");
        assert_eq!(read(&root, "tmp/uid"), "1000\n", "{network}");
        assert_eq!(read(&root, "tmp/groups"), "1000 10\n", "{network}");
        assert_eq!(read(&root, "tmp/home"), "/home/app hello\n", "{network}");
        let caps = caps_of(&read(&root, "tmp/caps"));
        // As docker: a non-root user keeps the bounding set only.
        assert_eq!(caps[1], ("CapPrm".to_string(), 0), "{network}");
        assert_eq!(caps[3], ("CapBnd".to_string(), DOCKER_CAPS), "{network}");
    }
}

#[test]
fn a_uid_listed_in_passwd_runs_as_that_user() {
    require_root!();
    let env = Env::new();
    // docker: `USER 1000`, then `RUN id -u` prints 1000, with the passwd
    // entry's groups and home.
    user_spec(&env, "1000", WHO);
    env.ok(&["build", "spec.yaml"]);
    let root = env.unpack("child");
    assert_eq!(read(&root, "tmp/uid"), "1000\n");
    assert_eq!(read(&root, "tmp/groups"), "1000 10\n");
    assert_eq!(read(&root, "tmp/home"), "/home/app hello\n");
}

#[test]
fn a_numeric_user_needs_no_passwd_entry() {
    require_root!();
    let env = Env::new();
    // docker: `USER 4321:99` runs as 4321, group 99, HOME=/.
    user_spec(&env, "4321:99", WHO);
    env.ok(&["build", "spec.yaml"]);
    let root = env.unpack("child");
    assert_eq!(read(&root, "tmp/uid"), "4321\n");
    assert_eq!(read(&root, "tmp/groups"), "99\n");
    assert_eq!(read(&root, "tmp/home"), "/ hello\n");
}

#[test]
fn an_unknown_user_name_fails_the_step_naming_it() {
    require_root!();
    let env = Env::new();
    user_spec(&env, "nobody-here", WHO);
    let out = env.genoci(&["build", "spec.yaml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("target child: run step 1")
            && err.contains("\"nobody-here\" is not in the image's /etc/passwd"),
        "{err}"
    );
}

#[test]
fn run_steps_see_the_user_podman_runs_the_image_as() {
    require_root!();
    crate::util::require_tool!("podman");
    crate::util::require_tool!("runc");
    let env = Env::new();
    let report = "id -u; id -G; echo $HOME";
    let mut children = String::new();
    let cases = ["app", "1000", "4321:99", "app:wheel", "root"];
    for (i, user) in cases.iter().enumerate() {
        children.push_str(&format!(
            "u{i}:\n  base: base\n  user: \"{user}\"\n  cmd: [\"/bin/sh\", \"-c\", \"{report}\"]\nc{i}:\n  base: u{i}\n  run: ({report}) > /tmp/who\n"
        ));
    }
    user_spec(&env, "", "  run: \"true\"\n");
    let spec = fs::read_to_string(env.path().join("spec.yaml")).unwrap();
    env.write("spec.yaml", &format!("{spec}{children}"));
    env.ok(&["build", "spec.yaml"]);
    let podman = crate::interop::Podman::new();
    for (i, user) in cases.iter().enumerate() {
        let tag = format!("c{i}");
        let seen = read(&env.unpack(&tag), "tmp/who");
        assert_eq!(seen, podman.run(&env.layout(), &tag), "user {user}");
    }
}

#[test]
fn install_stays_root_under_an_image_user() {
    require_root!();
    crate::util::require_tool!("dpkg-deb");
    let env = Env::new();
    let pkg = env.path().join("pkg");
    fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    fs::create_dir_all(pkg.join("usr/share/hello")).unwrap();
    fs::write(
        pkg.join("DEBIAN/control"),
        "Package: hello-genoci\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: Test <test@example.org>\nDescription: test package\n",
    )
    .unwrap();
    fs::write(pkg.join("usr/share/hello/hi.txt"), "hi\n").unwrap();
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&pkg)
            .arg(env.path().join("hello.deb")),
    );
    user_spec(&env, "app", &format!("  install: ./hello.deb\n{WHO}"));
    env.ok(&["build", "spec.yaml"]);
    let root = env.unpack("child");
    assert_eq!(read(&root, "usr/share/hello/hi.txt"), "hi\n");
    assert_eq!(read(&root, "tmp/uid"), "1000\n");
}

// ---- steps started from genoci's threads ----

#[test]
fn a_parallel_build_runs_every_step_and_none_hangs() {
    require_root!();
    // genoci's builder threads (and their compression) are busy while
    // others start sandboxes: each step must still start, run and end.
    const TARGETS: usize = 12;
    const STEPS: usize = 5;
    let env = Env::new();
    env.busybox("bb.tar.gz");
    let mut spec = "base:\n  base: empty\n  expand: ./bb.tar.gz\n".to_string();
    for t in 0..TARGETS {
        let network = NETWORKS[t % 2];
        spec.push_str(&format!(
            "t{t}:\n  base: base\n  network: {network}\n  run:\n"
        ));
        for s in 0..STEPS {
            spec.push_str(&format!(
                "    - head -c 200000 /dev/urandom > /blob{s} && echo {s} >> /steps\n"
            ));
        }
    }
    env.write("spec.yaml", &spec);
    let started = std::time::Instant::now();
    let mut child = env
        .cmd(&["-q", "build", "-j", "4", "spec.yaml"])
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the build hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    eprintln!(
        "{} steps in {TARGETS} targets with -j 4: {:.1} s",
        TARGETS * STEPS,
        started.elapsed().as_secs_f64()
    );
    let tags = env.tags();
    for t in 0..TARGETS {
        assert!(tags.contains(&format!("t{t}")), "t{t}: {tags:?}");
        let root = env.unpack(&format!("t{t}"));
        let want: String = (0..STEPS).map(|s| format!("{s}\n")).collect();
        assert_eq!(
            fs::read_to_string(root.join("steps")).unwrap(),
            want,
            "t{t}"
        );
    }
}
