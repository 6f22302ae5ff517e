//! Running a command inside a tree: new mount, PID, UTS and IPC namespaces
//! (and network, when asked), pivot_root into the tree, a fresh `/proc`, a
//! minimal `/dev`. Nothing the sandbox mounts or creates for itself is left
//! in the tree afterwards: the mounts live and die with the sandbox's mount
//! namespace, and the mount points it had to create are removed (see
//! [`scratch`]).
//!
//! The work happens in a re-executed helper process (see `helper.rs` for
//! why); genoci's side prepares the mount points, forwards the output and
//! cleans up.

mod helper;
pub mod output;
pub mod scratch;

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::spec::Network;
use helper::{Failure, Request, REPORT_FD};
use output::Prefixer;
use scratch::{Scratch, ScratchError};

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

    let prepared = Prepared::new(&root, opts.network).map_err(|source| SandboxError::Prepare {
        command: command.clone(),
        source,
    })?;
    let request = Request {
        root: root.clone(),
        argv: opts.argv.clone(),
        env: opts.env.clone(),
        workdir: opts.workdir.clone(),
        isolate_network: opts.network == Network::None,
        bind_resolv_conf: prepared.bind_resolv_conf,
        parent: std::process::id() as i32,
    };
    tracing::debug!(root = %root.display(), command = %command, "sandbox run");
    let result = spawn_and_wait(&request, &opts.output, &command);
    match (result, prepared.remove()) {
        (Ok(status), Ok(())) => Ok(status),
        (Ok(_), Err(source)) => Err(SandboxError::Cleanup { command, source }),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => Err(SandboxError::AndCleanup {
            error: Box::new(e),
            cleanup,
        }),
    }
}

/// The mount points genoci had to add to the tree for this run.
struct Prepared {
    root: Scratch,
    etc: Option<Scratch>,
    bind_resolv_conf: bool,
}

impl Prepared {
    fn new(root: &Path, network: Network) -> Result<Self, ScratchError> {
        let mut prepared = Prepared {
            root: Scratch::new(root)?,
            etc: None,
            bind_resolv_conf: false,
        };
        match prepared.fill(root, network) {
            Ok(()) => Ok(prepared),
            Err(e) => {
                // What was created so far goes; the first error is the story.
                let _ = prepared.remove();
                Err(e)
            }
        }
    }

    fn fill(&mut self, root: &Path, network: Network) -> Result<(), ScratchError> {
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
        if network == Network::Host && fs::metadata("/etc/resolv.conf").is_ok() {
            self.prepare_resolv_conf(root)?;
        }
        Ok(())
    }

    /// Make `etc/resolv.conf` a regular file to bind the host's over. A
    /// symlink (often dangling in images: `../run/systemd/resolve/...`) is
    /// renamed aside for the run rather than followed, since it may point
    /// out of the tree.
    fn prepare_resolv_conf(&mut self, root: &Path) -> Result<(), ScratchError> {
        let etc = root.join("etc");
        if !fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        let conf = etc.join("resolv.conf");
        match fs::symlink_metadata(&conf) {
            Ok(meta) if meta.is_file() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                let scratch = self.etc.insert(Scratch::new(&etc)?);
                scratch.move_aside("resolv.conf")?;
                scratch.add_file("resolv.conf", 0o644)?;
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let scratch = self.etc.insert(Scratch::new(&etc)?);
                scratch.add_file("resolv.conf", 0o644)?;
            }
            Err(source) => {
                return Err(ScratchError {
                    action: "stat",
                    path: conf,
                    source,
                })
            }
        }
        self.bind_resolv_conf = true;
        Ok(())
    }

    fn remove(self) -> Result<(), ScratchError> {
        let etc = self.etc.map_or(Ok(()), Scratch::remove);
        let root = self.root.remove();
        etc.and(root)
    }
}

/// How genoci starts the helper: itself, with the hidden subcommand.
#[cfg(not(test))]
fn helper_command(request: &str) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command.arg("__sandbox").arg(request);
    command
}

/// Under `cargo test` the executable is the test harness, which has no
/// `__sandbox` subcommand: run the one test that plays the helper.
#[cfg(test)]
fn helper_command(request: &str) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command
        .args([
            "sandbox::tests::helper_entry",
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--quiet",
            "--test-threads=1",
        ])
        .env(tests::REQUEST_VAR, request);
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
    // SAFETY: only dup2/fcntl, which are async-signal-safe, run between fork
    // and exec.
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
