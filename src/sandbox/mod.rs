//! Running a command inside a tree: new mount, PID, UTS and IPC namespaces
//! (and network: with only a loopback for `network: none`, connected to the
//! host's by [`slirp`] for `network: host` in a user namespace),
//! pivot_root into the tree, a fresh `/proc`, a minimal `/dev`. Nothing
//! the sandbox mounts or creates for itself is left in the tree afterwards:
//! the mounts live and die with the sandbox's mount namespace, and the
//! mount points it had to create are removed (see [`scratch`]).
//!
//! Unless a target is `privileged`, the command is confined as a default
//! docker container is: docker's default capabilities ([`caps`]), `/proc`
//! partly read-only and masked and the tree `nodev` ([`confine`]), and a
//! seccomp filter with the effect of docker's default profile ([`seccomp`]).
//! Run steps run as the image's `User` ([`user`]).
//!
//! The work happens in a re-executed helper process (see `helper.rs` for
//! why); genoci's side prepares the mount points, forwards the output and
//! cleans up.

pub mod caps;
pub mod confine;
mod helper;
pub mod mknod;
pub mod output;
pub mod scratch;
pub mod seccomp;
pub mod slirp;
pub mod user;
pub mod userns;

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::driver::{DriverError, Layers, Lent, TreeOf};
use helper::{EtcBind, Failure, Request, REPORT_FD};
use output::Prefixer;
use scratch::{Scratch, ScratchError};

/// The network a step sees: the host's (and its `/etc/resolv.conf`;
/// through a namespace of its own and slirp4netns in a user namespace, see
/// [`slirp`]), or a namespace of its own with only a loopback device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    Host,
    None,
}

/// How to run a command in a tree.
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    /// The tree: it becomes the command's `/`.
    pub root: &'a Path,
    /// `argv[0]` is looked up inside the tree (in `PATH` when it has no `/`).
    pub argv: Vec<String>,
    /// The complete environment; `PATH` gets a default if absent.
    pub env: Vec<(String, String)>,
    /// Inside the tree; `/` if it does not exist.
    pub workdir: String,
    pub network: Network,
    pub output: Output,
    /// Skip the confinement (capabilities, `/proc` and `/dev` limits, seccomp):
    /// the command runs as full host root in its namespaces.
    pub privileged: bool,
    /// The image `User` to run as (`name`, `uid`, `name:group`,
    /// `uid:gid`; empty: root), resolved in the tree's `/etc/passwd` and
    /// `/etc/group` with `HOME` from passwd, as docker does for `RUN`.
    /// `None`: root with the environment as given (genoci's own steps).
    pub user: Option<String>,
    /// The work tree `root` is, with its driver: for an overlay work tree,
    /// a step in a user namespace gets an overlay of its own over idmapped
    /// layers, with the driver's mount lent for the step (see
    /// [`SnapshotDriver::lend`](crate::driver::SnapshotDriver::lend)).
    /// `None`: `root` is used as it is.
    pub tree: Option<TreeOf<'a>>,
}

/// Where the command's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// stdin is `/dev/null`; each line of stdout/stderr is shown on genoci's
    /// stdout/stderr as `[label] line`.
    Prefixed(String),
    /// The terminal as it is (an interactive shell).
    Inherit,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot run `{command}` in {}: {reason}", .root.display())]
    BadRoot {
        command: String,
        root: PathBuf,
        reason: String,
    },
    #[error("cannot prepare the tree for `{command}`")]
    Prepare {
        command: String,
        #[source]
        source: ScratchError,
    },
    #[error("cannot start the sandbox for `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the sandbox for `{command}`: {message}")]
    Setup { command: String, message: String },
    #[error("cannot run `{command}`: {program} does not exist in the tree")]
    NotFound { command: String, program: String },
    #[error("cannot run `{command}`: {message}")]
    Exec { command: String, message: String },
    #[error("reading the output of `{command}`")]
    Output {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cleaning up after `{command}`")]
    Cleanup {
        command: String,
        #[source]
        source: ScratchError,
    },
    #[error("cannot take the tree's mount down for `{command}`")]
    Lend {
        command: String,
        #[source]
        source: DriverError,
    },
    #[error("cannot mount the tree again after `{command}`")]
    Restore {
        command: String,
        #[source]
        source: DriverError,
    },
    #[error("{}; mounting the tree again failed too: {}", crate::error_chain(error.as_ref()), crate::error_chain(restore))]
    AndRestore {
        error: Box<SandboxError>,
        restore: DriverError,
    },
    #[error("{}; cleaning up afterwards failed too: {}", crate::error_chain(error.as_ref()), crate::error_chain(cleanup))]
    AndCleanup {
        error: Box<SandboxError>,
        cleanup: ScratchError,
    },
}

/// A command for messages: its first line, shortened.
pub fn describe(argv: &[String]) -> String {
    let joined = argv.join(" ");
    let first = joined.lines().next().unwrap_or("");
    let mut short: String = first.chars().take(72).collect();
    if short.len() < joined.len() {
        short.push_str(" ...");
    }
    short
}

/// A failed status for messages: `exit status 3`, `killed by signal 9 (SIGKILL)`.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(name) => format!("killed by signal {sig} ({name})"),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => status.to_string(),
    }
}

/// Run `opts.argv` inside `opts.root`. A command that runs and fails gives
/// its status, not an error: the caller decides what a failure means.
pub fn run(opts: &RunOptions) -> Result<ExitStatus, SandboxError> {
    let command = describe(&opts.argv);
    let root = fs::canonicalize(opts.root).map_err(|e| SandboxError::BadRoot {
        command: command.clone(),
        root: opts.root.to_path_buf(),
        reason: e.to_string(),
    })?;
    if root == Path::new("/") || !root.is_dir() {
        return Err(SandboxError::BadRoot {
            command,
            root,
            reason: "not a tree genoci may run in".into(),
        });
    }

    let Setup {
        prepared,
        userns,
        slirp,
        lent,
    } = set_up(opts, &root, &command)?;
    let request = Request {
        root: root.clone(),
        argv: opts.argv.clone(),
        env: opts.env.clone(),
        workdir: opts.workdir.clone(),
        isolate_network: opts.network == Network::None,
        confined: !opts.privileged,
        user: opts.user.clone(),
        etc_binds: prepared.binds.clone(),
        console: console_for(&opts.output),
        parent: std::process::id() as i32,
        userns,
        probe: false,
        layers: lent.as_ref().map(|(layers, _)| layers.clone()),
        slirp,
        probe_network: false,
    };
    tracing::debug!(
        root = %root.display(),
        command = %command,
        user_namespace = request.userns,
        network = if slirp { "slirp4netns" } else if request.isolate_network { "none" } else { "host" },
        own_overlay = request.layers.is_some(),
        "sandbox run"
    );
    let result = spawn_and_wait(&request, &opts.output, &command);
    let result = match (result, lent.map_or(Ok(()), |(_, lent)| lent.restore())) {
        (result, Ok(())) => result,
        (Ok(_), Err(source)) => Err(SandboxError::Restore {
            command: command.clone(),
            source,
        }),
        (Err(e), Err(restore)) => Err(SandboxError::AndRestore {
            error: Box::new(e),
            restore,
        }),
    };
    match (result, prepared.remove(&root)) {
        (Ok(status), Ok(())) => Ok(status),
        (Ok(_), Err(source)) => Err(SandboxError::Cleanup { command, source }),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => Err(SandboxError::AndCleanup {
            error: Box::new(e),
            cleanup,
        }),
    }
}

/// What the command sees as `/etc/resolv.conf`: the host's with the
/// host's network (as slirp4netns's side sees it with `slirp`), nothing of
/// the host's with none.
fn resolv_conf(network: Network, slirp: bool) -> Option<Vec<u8>> {
    if network == Network::None {
        return None;
    }
    let host = fs::read("/etc/resolv.conf").ok()?;
    Some(if slirp {
        slirp::resolv_conf(&String::from_utf8_lossy(&host)).into_bytes()
    } else {
        host
    })
}

/// Whether the command runs in a user namespace (see [`userns`]): when it
/// What a run sets up in and around the tree before its helper starts.
struct Setup<'t> {
    /// The mount points and files genoci added to the tree.
    prepared: Prepared,
    userns: bool,
    /// A network of the step's own, connected to the host's (see `slirp`).
    slirp: bool,
    /// An overlay tree's layers, the tree lent for the step's own overlay.
    lent: Option<(Layers, Lent<'t>)>,
}

/// Prepare the tree for the run, decide its user namespace and network,
/// and lend the tree if the step mounts its layers itself. What was done
/// is undone on failure.
fn set_up<'t>(
    opts: &RunOptions<'t>,
    root: &Path,
    command: &str,
) -> Result<Setup<'t>, SandboxError> {
    let prepare_error = |source| SandboxError::Prepare {
        command: command.to_string(),
        source,
    };
    // Whether the step gets a user namespace is known before the tree is
    // prepared, since its network (and so its resolv.conf) follows from it.
    let planned = plan_user_namespace(opts, root);
    let slirp = planned.is_some() && opts.network == Network::Host;
    let mut prepared =
        Prepared::new(root, resolv_conf(opts.network, slirp)).map_err(prepare_error)?;
    // The driver's mount of the tree is lent only now, once the mount
    // points and files above are in it, and mounted again before they go.
    let (userns, lent) = match lend_for_user_namespace(planned) {
        Ok(found) => found,
        Err(source) => {
            let error = SandboxError::Lend {
                command: command.to_string(),
                source,
            };
            return Err(cleaned_up(error, prepared, root));
        }
    };
    // A busy tree keeps host ids, and so the host's network.
    if slirp && !userns {
        if let Err(e) = prepared.give_resolv_conf(resolv_conf(opts.network, false)) {
            return Err(cleaned_up(prepare_error(e), prepared, root));
        }
    }
    Ok(Setup {
        prepared,
        userns,
        slirp: slirp && userns,
        lent,
    })
}

/// Whether the command runs in a user namespace (see [`userns`]), and
/// how: when it is confined and the kernel allows. With `network: host` it
/// also needs a network of its own connected to the host's (see [`slirp`]):
/// the host's network namespace belongs to the host's user namespace, where
/// NET_RAW (ping) and ports below 1024 would not work from another one.
/// Without it, such a step keeps host ids in the host's network namespace
/// rather than lose ping and low ports (docker likewise refuses
/// `--network=host` with a remapped user namespace).
fn plan_user_namespace<'t>(opts: &RunOptions<'t>, root: &Path) -> Option<Planned<'t>> {
    let wanted = !opts.privileged && (opts.network == Network::None || own_network_works(root));
    if !wanted {
        return None;
    }
    let layers = match opts.tree.map(|t| t.layers()).transpose() {
        Ok(layers) => layers.flatten(),
        Err(e) => {
            let tree = opts.tree;
            tracing::warn!(tree = ?tree, "no user namespace for this step: {}", crate::error_chain(&e));
            return None;
        }
    };
    match (opts.tree, layers) {
        (Some(tree), Some(layers)) => {
            user_namespaces_work(root, Some(&layers)).then_some(Planned::OwnOverlay(tree, layers))
        }
        _ => user_namespaces_work(root, None).then_some(Planned::InTree),
    }
}

/// How a step gets its user namespace: in its tree as it is (idmapped),
/// or, for an overlay work tree (an overlay mount takes no idmap), on an
/// overlay of its own over the tree's layers while the driver lends it.
enum Planned<'t> {
    InTree,
    OwnOverlay(TreeOf<'t>, Layers),
}

/// Whether a step runs in a user namespace, and the overlay layers it
/// mounts itself with the tree lent for it.
type WithUserns<'t> = (bool, Option<(Layers, Lent<'t>)>);

/// Lend the tree as `planned`. A tree whose mount is busy (a process inside
/// it, a hook's mount in it) keeps host ids, said with the reason; any
/// other failure to lend it is an error, as the tree may be unmounted then.
fn lend_for_user_namespace(planned: Option<Planned<'_>>) -> Result<WithUserns<'_>, DriverError> {
    match planned {
        None => Ok((false, None)),
        Some(Planned::InTree) => Ok((true, None)),
        Some(Planned::OwnOverlay(tree, layers)) => match tree.lend() {
            Ok(lent) => Ok((true, Some((layers, lent)))),
            Err(e) if e.is_busy() => {
                tracing::warn!(tree = ?tree, "no user namespace for this step: {}", crate::error_chain(&e));
                Ok((false, None))
            }
            Err(e) => Err(e),
        },
    }
}

/// `error`, after taking away what genoci added to the tree for the run.
fn cleaned_up(error: SandboxError, prepared: Prepared, root: &Path) -> SandboxError {
    match prepared.remove(root) {
        Ok(()) => error,
        Err(cleanup) => SandboxError::AndCleanup {
            error: Box::new(error),
            cleanup,
        },
    }
}

/// Whether a step can have a network namespace connected to the host's by
/// slirp4netns; found out once per process (a probe in the helper), with
/// the reason logged where it cannot.
fn own_network_works(root: &Path) -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let mut request = probe_request(root);
        request.probe_network = true;
        match run_probe(&request, "network probe") {
            Ok(()) => {
                tracing::debug!("run steps with network: host get a network of their own (slirp4netns)");
                true
            }
            Err(reason) => {
                tracing::debug!(
                    %reason,
                    "no network of their own for run steps with network: host: they keep host ids in the host's network"
                );
                false
            }
        }
    })
}

/// Whether user namespaces and idmapped mounts work for trees on `root`'s
/// filesystem, or for an overlay of `layers` (idmapped layers on theirs);
/// found out once per filesystem type and process (a probe in the helper),
/// with the reason logged where they do not.
fn user_namespaces_work(root: &Path, layers: Option<&Layers>) -> bool {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static KNOWN: Mutex<Option<HashMap<(bool, i64), bool>>> = Mutex::new(None);
    let on = layers.map_or(root, |l| l.upper.as_path());
    let fs_type = match nix::sys::statfs::statfs(on) {
        Ok(st) => st.filesystem_type().0,
        Err(_) => return false,
    };
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    let known = known.get_or_insert_with(HashMap::new);
    *known.entry((layers.is_some(), fs_type)).or_insert_with(|| {
        let works = match layers {
            None => probe_user_namespace(root, None),
            Some(layers) => probe_overlay(layers),
        };
        let what = if layers.is_some() {
            "overlay layers"
        } else {
            "trees"
        };
        match &works {
            Ok(()) => tracing::debug!(
                fs_type = format_args!("{fs_type:#x}"),
                "confined run steps get a user namespace on {what} there"
            ),
            Err(reason) => tracing::debug!(
                fs_type = format_args!("{fs_type:#x}"),
                %reason,
                "no user namespace for run steps on {what} there (confinement without it)"
            ),
        }
        works.is_ok()
    })
}

/// [`probe_user_namespace`] for overlay trees: an overlay of idmapped
/// scratch layers beside `layers`' upper dir, on the same filesystem, in a
/// directory of the work tree's own (discarding the tree takes it along
/// should genoci be killed meanwhile).
fn probe_overlay(layers: &Layers) -> Result<(), String> {
    let Some(parent) = layers.upper.parent() else {
        return Err("the upper dir has no parent".into());
    };
    let dir = parent.join(scratch::unique_name("userns-probe"));
    let made = ["lower", "upper", "work", "root"]
        .iter()
        .try_for_each(|d| fs::create_dir_all(dir.join(d)))
        .map_err(|e| format!("create {}: {e}", dir.display()));
    let result = made.and_then(|()| {
        let scratch = Layers {
            lowers: vec![dir.join("lower")],
            upper: dir.join("upper"),
            work: dir.join("work"),
            volatile: true,
        };
        probe_user_namespace(&dir.join("root"), Some(scratch))
    });
    let _ = fs::remove_dir_all(&dir);
    result
}

fn probe_user_namespace(root: &Path, layers: Option<Layers>) -> Result<(), String> {
    let mut request = probe_request(root);
    request.probe = true;
    request.layers = layers;
    run_probe(&request, "user namespace probe")
}

/// A request that only probes (the caller says for what).
fn probe_request(root: &Path) -> Request {
    Request {
        root: root.to_path_buf(),
        argv: vec![],
        env: vec![],
        workdir: "/".into(),
        isolate_network: true,
        confined: true,
        user: None,
        etc_binds: vec![],
        console: None,
        parent: std::process::id() as i32,
        userns: true,
        probe: false,
        layers: None,
        slirp: false,
        probe_network: false,
    }
}

fn run_probe(request: &Request, what: &str) -> Result<(), String> {
    let output = Output::Prefixed("probe".into());
    match spawn_and_wait(request, &output, what) {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(describe_status(status)),
        Err(e) => Err(crate::error_chain(&e)),
    }
}

/// The terminal to give the command as its `/dev/console`, as runc does
/// with a terminal: the sandbox's own devpts cannot show the host's
/// `/dev/pts/N`, so without it `tty` and `ttyname(3)` find no name for
/// stdin and programs that want a terminal refuse to work.
fn console_for(output: &Output) -> Option<PathBuf> {
    use std::io::IsTerminal;
    use std::os::unix::fs::FileTypeExt;
    if *output != Output::Inherit || !io::stdin().is_terminal() {
        return None;
    }
    let path = fs::read_link("/proc/self/fd/0").ok()?;
    let is_device = fs::metadata(&path).is_ok_and(|m| m.file_type().is_char_device());
    (path.starts_with("/dev") && is_device).then_some(path)
}

/// The mount points genoci had to add to the tree for this run, and the
/// host files it binds on some of them.
struct Prepared {
    root: Scratch,
    etc: Option<Scratch>,
    /// What genoci added to the tree's `/tmp` (see `host_copy`).
    tmp: Option<Scratch>,
    /// Where the files bound over the tree's `/etc` files are kept.
    files: Option<PathBuf>,
    binds: Vec<EtcBind>,
    /// The host's `/etc/resolv.conf` as given to the command, to tell
    /// whether the command wrote its own.
    resolv_conf: Option<Vec<u8>>,
}

/// What a `run` step sees as `/etc/hosts`: the names docker gives a
/// container, with the sandbox's hostname on a loopback address.
fn hosts_file() -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         127.0.1.1\t{}\n",
        helper::HOSTNAME
    )
}

impl Prepared {
    /// `resolv_conf`: what the command sees as `/etc/resolv.conf`, if
    /// anything is bound there.
    fn new(root: &Path, resolv_conf: Option<Vec<u8>>) -> Result<Self, ScratchError> {
        let mut prepared = Prepared {
            root: Scratch::new(root)?,
            etc: None,
            tmp: None,
            files: None,
            binds: Vec::new(),
            resolv_conf: None,
        };
        match prepared.fill(root, resolv_conf) {
            Ok(()) => Ok(prepared),
            Err(e) => {
                // What was created so far goes; the first error is the story.
                let _ = prepared.remove(root);
                Err(e)
            }
        }
    }

    fn fill(&mut self, root: &Path, resolv_conf: Option<Vec<u8>>) -> Result<(), ScratchError> {
        for name in ["proc", "dev"] {
            let path = root.join(name);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                // A symlink would send the mount out of the tree.
                Ok(_) => {
                    return Err(ScratchError {
                        action: "mount on",
                        path,
                        source: io::Error::other("not a directory"),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.root.add_dir(name)?;
                }
                Err(source) => {
                    return Err(ScratchError {
                        action: "stat",
                        path,
                        source,
                    })
                }
            }
        }
        self.bind_etc_file(root, "hosts", hosts_file().as_bytes())?;
        if let Some(content) = resolv_conf {
            if self.bind_etc_file(root, "resolv.conf", &content)? {
                self.resolv_conf = Some(content);
            }
        }
        Ok(())
    }

    /// Bind a writable host copy of `content` over the tree's `etc/NAME`
    /// for the run (what the command writes there goes to the copy). The
    /// tree's own file is kept as a mount point; a symlink (often dangling
    /// in images: `../run/systemd/resolve/...`) is renamed aside for the run
    /// rather than followed, since it may point out of the tree. Says
    /// whether it is bound: not when the tree has no `etc` directory, nor
    /// over a directory or device.
    fn bind_etc_file(
        &mut self,
        root: &Path,
        name: &str,
        content: &[u8],
    ) -> Result<bool, ScratchError> {
        let etc = root.join("etc");
        if !fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
            return Ok(false);
        }
        let path = etc.join(name);
        // A file there is the mount point (the bind covers it); a symlink
        // is renamed aside for a new one; with nothing there one is made.
        let (move_aside, add) = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => (false, false),
            Ok(meta) if meta.is_symlink() => (true, true),
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (false, true),
            Err(source) => {
                return Err(ScratchError {
                    action: "stat",
                    path,
                    source,
                })
            }
        };
        let host = self.host_copy(root, name, content)?;
        if self.etc.is_none() {
            self.etc = Some(Scratch::new(&etc)?);
        }
        let scratch = self.etc.as_mut().expect("set above");
        if move_aside {
            scratch.move_aside(name)?;
        }
        if add {
            scratch.add_file(name, 0o644)?;
        }
        self.binds.push(EtcBind {
            host,
            name: name.to_string(),
        });
        Ok(true)
    }

    /// `content` in a file of genoci's own for this run, bound from outside
    /// the sandbox. It lives in the tree's scratch place rather than the
    /// host's `/tmp`: taken away after the run like every scratch entry, and
    /// if genoci is killed, it goes with the stale work tree.
    fn host_copy(
        &mut self,
        root: &Path,
        name: &str,
        content: &[u8],
    ) -> Result<PathBuf, ScratchError> {
        let dir = match &self.files {
            Some(dir) => dir.clone(),
            None => {
                let place = scratch::scratch_dir(root);
                let scratch = if place == root {
                    &mut self.root
                } else {
                    self.tmp.insert(Scratch::new(&place)?)
                };
                let dir = scratch.add_tree(&scratch::unique_name("etc"))?;
                self.files.insert(dir).clone()
            }
        };
        let path = dir.join(name);
        fs::write(&path, content).map_err(|source| ScratchError {
            action: "write",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Give the command `content` as its `/etc/resolv.conf` instead of what
    /// [`new`](Self::new) bound there: its network turned out otherwise.
    fn give_resolv_conf(&mut self, content: Option<Vec<u8>>) -> Result<(), ScratchError> {
        let bound = self.binds.iter().find(|b| b.name == "resolv.conf");
        let (Some(content), Some(bind)) = (content, bound) else {
            return Ok(());
        };
        fs::write(&bind.host, &content).map_err(|source| ScratchError {
            action: "write",
            path: bind.host.clone(),
            source,
        })?;
        self.resolv_conf = Some(content);
        Ok(())
    }

    /// What the command wrote as `/etc/resolv.conf`, if it changed it.
    fn written_resolv_conf(&self) -> Option<Vec<u8>> {
        let given = self.resolv_conf.as_ref()?;
        let bind = self.binds.iter().find(|b| b.name == "resolv.conf")?;
        let now = fs::read(&bind.host).ok()?;
        (now != *given).then_some(now)
    }

    /// Take away what genoci added. A `/etc/resolv.conf` the command wrote
    /// is the image's own (docker lets RUN replace it): it replaces the
    /// tree's, while the host's never lands there.
    fn remove(self, root: &Path) -> Result<(), ScratchError> {
        let written = self.written_resolv_conf();
        let etc = self.etc.map_or(Ok(()), Scratch::remove);
        let tmp = self.tmp.map_or(Ok(()), Scratch::remove);
        let root_result = self.root.remove();
        etc.and(tmp).and(root_result)?;
        match written {
            Some(content) => replace_file(&root.join("etc/resolv.conf"), &content),
            None => Ok(()),
        }
    }
}

/// Make `path` a regular file holding `content`; a symlink there is
/// replaced, not followed.
fn replace_file(path: &Path, content: &[u8]) -> Result<(), ScratchError> {
    let failed = |action| {
        move |source| ScratchError {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) {
        fs::remove_file(path).map_err(failed("remove"))?;
    }
    fs::write(path, content).map_err(failed("write"))
}

/// How genoci starts the helper: itself, with the hidden subcommand.
#[cfg(not(test))]
fn helper_command(request: &str) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command.arg("__sandbox").arg(request);
    command
}

/// Under `cargo test` the executable is the test harness, which has no
/// `__sandbox` subcommand: it plays the helper before its `main` when the
/// request is in the environment (see `tests::helper_before_main`).
#[cfg(test)]
fn helper_command(request: &str) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command.env(tests::REQUEST_VAR, request);
    command
}

fn spawn_and_wait(
    request: &Request,
    output: &Output,
    command: &str,
) -> Result<ExitStatus, SandboxError> {
    let spawn_error = |source| SandboxError::Spawn {
        command: command.to_string(),
        source,
    };
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_error(e.into()))?;
    let mut cmd = helper_command(&request.encode());
    if let Output::Prefixed(_) = output {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let report_raw = report_w.as_raw_fd();
    // SAFETY: genoci has threads when it forks here, so the child may only
    // do async-signal-safe work before exec: this closure makes dup2 or
    // fcntl calls and reads errno (an `io::Error` of an OS code allocates
    // nothing); everything else happens in the exec'd helper.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if report_raw == REPORT_FD {
                libc::fcntl(REPORT_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(report_raw, REPORT_FD)
            };
            if ok < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(spawn_error)?;
    drop(report_w);

    let status = match output {
        Output::Prefixed(label) => {
            let prefixer = Prefixer::attach(&mut child, label).map_err(spawn_error)?;
            let status = wait_interruptible(&mut child).map_err(spawn_error)?;
            prefixer.finish().map_err(|source| SandboxError::Output {
                command: command.to_string(),
                source,
            })?;
            status
        }
        Output::Inherit => child.wait().map_err(spawn_error)?,
    };

    // Every writer (helper, PID 1, the command before exec) is gone now.
    let mut report = Vec::new();
    std::fs::File::from(report_r)
        .read_to_end(&mut report)
        .map_err(spawn_error)?;
    let first_line = report.split(|&b| b == b'\n').next().unwrap_or(&[]);
    if first_line.is_empty() {
        return Ok(status);
    }
    let command = command.to_string();
    Err(match serde_json::from_slice::<Failure>(first_line) {
        Ok(Failure::Setup(message)) => SandboxError::Setup { command, message },
        Ok(Failure::NotFound(program)) => SandboxError::NotFound { command, program },
        Ok(Failure::Exec(message)) => SandboxError::Exec { command, message },
        Err(_) => SandboxError::Setup {
            command,
            message: String::from_utf8_lossy(first_line).into_owned(),
        },
    })
}

/// Wait for the helper; after Ctrl-C or SIGTERM reached genoci, kill it (and
/// so the whole sandbox, through the death signals) instead of waiting for a
/// build step that the build will throw away anyway.
fn wait_interruptible(child: &mut std::process::Child) -> io::Result<ExitStatus> {
    let mut killed = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if !killed && crate::signals::interrupted() {
            child.kill()?;
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Entry point of the re-executed helper process (hidden `__sandbox`
/// subcommand): sets up the sandbox, runs the command and exits the way the
/// command did; it returns only on a bad request.
pub fn helper_main(args: &[String]) -> anyhow::Result<()> {
    let [encoded] = args else {
        anyhow::bail!("usage: genoci __sandbox REQUEST");
    };
    let request = Request::decode(encoded).map_err(anyhow::Error::msg)?;
    helper::main(&request)
}

#[cfg(test)]
pub(crate) mod tests;
