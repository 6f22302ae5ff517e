//! The `run` action: each item runs inside the tree, in the sandbox. A
//! script goes to `/bin/sh -e -c`; a host file is copied in, executed with
//! no arguments and removed, leaving no trace in the layer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::driver::TreeOf;
use crate::sandbox::scratch::{self, Scratch, ScratchError};
use crate::sandbox::Network;
use crate::sandbox::{self, Output, RunOptions, SandboxError};
use crate::spec::RunItem;

/// What every step of a target runs with.
#[derive(Debug, Clone)]
pub struct RunContext<'a> {
    pub target: &'a str,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub network: Network,
    /// Skip the sandbox's confinement (the target's `privileged` key).
    pub privileged: bool,
    /// The inherited image `User` steps run as (empty: root).
    pub user: String,
    /// The image's platform (`linux/arm64`) when this machine cannot run
    /// its programs: a failed exec is then explained by it.
    pub foreign: Option<String>,
    /// The work tree steps run in, with its driver (see
    /// [`RunOptions::tree`]); `None`: the tree is used as it is.
    pub tree: Option<TreeOf<'a>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run step {step} ({what}) failed: {status}")]
    Failed {
        step: usize,
        what: String,
        status: String,
    },
    #[error("run step {step} ({what}): the image has no /bin/sh to run it")]
    NoShell { step: usize, what: String },
    #[error("run step {step} ({what}): its interpreter {interpreter} does not exist in the image")]
    NoInterpreter {
        step: usize,
        what: String,
        interpreter: String,
    },
    #[error("run step {step} ({what}): the image is {platform} and this machine cannot run its programs ({message})")]
    Foreign {
        step: usize,
        what: String,
        platform: String,
        message: String,
    },
    #[error("run step {step} ({what})")]
    Sandbox {
        step: usize,
        what: String,
        #[source]
        source: Box<SandboxError>,
    },
    #[error("run step {step} ({what})")]
    Scratch {
        step: usize,
        what: String,
        #[source]
        source: ScratchError,
    },
    #[error("run step {step}: cannot copy {} into the tree", .path.display())]
    CopyIn {
        step: usize,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An item for messages: the script's first line, or the file's name.
fn describe(item: &RunItem) -> String {
    match item {
        RunItem::Script(script) => {
            let first = script.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let more = script.trim().lines().count() > 1;
            format!("`{}{}`", first.trim(), if more { " ..." } else { "" })
        }
        RunItem::File(path) => path.display().to_string(),
    }
}

/// How a host file is started, decided from its first bytes as the kernel
/// and a shell would.
#[derive(Debug, PartialEq, Eq)]
enum Launch {
    /// Executed itself: a `#!` script (naming its interpreter) or a binary.
    Exec { interpreter: Option<String> },
    /// Text with no `#!` line: the kernel refuses it (ENOEXEC) and a shell
    /// runs it with `/bin/sh` instead; so does genoci.
    Shell,
}

fn launch_of(head: &[u8]) -> Launch {
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let line = String::from_utf8_lossy(line);
        let interpreter = line.split_whitespace().next().map(str::to_string);
        return Launch::Exec { interpreter };
    }
    // A NUL among the first bytes: a binary (ELF or another format the
    // kernel knows), not a script.
    if head.contains(&0) {
        Launch::Exec { interpreter: None }
    } else {
        Launch::Shell
    }
}

/// Run `items` in order inside `tree`; stop at the first that fails.
pub fn run_steps(tree: &Path, items: &[RunItem], ctx: &RunContext) -> Result<(), RunError> {
    for (index, item) in items.iter().enumerate() {
        run_step(tree, index + 1, item, ctx)?;
    }
    Ok(())
}

fn run_step(tree: &Path, step: usize, item: &RunItem, ctx: &RunContext) -> Result<(), RunError> {
    let what = describe(item);
    tracing::info!(target = %ctx.target, step, what = %what, "run");
    let scratch_error = |source| RunError::Scratch {
        step,
        what: what.clone(),
        source,
    };

    let (argv, copied, launch) = match item {
        RunItem::Script(script) => (
            vec!["/bin/sh".into(), "-e".into(), "-c".into(), script.clone()],
            None,
            Launch::Shell,
        ),
        RunItem::File(host) => {
            let mut scratch = Scratch::new(&scratch::scratch_dir(tree)).map_err(scratch_error)?;
            match file_argv(tree, &mut scratch, host) {
                Ok((argv, launch)) => (argv, Some(scratch), launch),
                Err(source) => {
                    let _ = scratch.remove();
                    let path = host.clone();
                    return Err(RunError::CopyIn { step, path, source });
                }
            }
        }
    };

    let result = sandbox::run(&RunOptions {
        root: tree,
        argv,
        env: ctx.env.clone(),
        workdir: ctx.workdir.clone(),
        network: ctx.network,
        output: Output::Prefixed(ctx.target.to_string()),
        privileged: ctx.privileged,
        user: Some(ctx.user.clone()),
        tree: ctx.tree,
    });
    let copied_exists = copied.is_some();
    let cleanup = copied.map_or(Ok(()), Scratch::remove);

    let status = match result {
        Ok(status) => status,
        Err(e) => return Err(explain(e, step, what, copied_exists.then_some(launch), ctx)),
    };
    cleanup.map_err(scratch_error)?;
    if !status.success() {
        return Err(RunError::Failed {
            step,
            what,
            status: sandbox::describe_status(status),
        });
    }
    Ok(())
}

/// Copy the host file `host` into the scratch directory; the command line
/// that starts it there, and how.
fn file_argv(tree: &Path, scratch: &mut Scratch, host: &Path) -> io::Result<(Vec<String>, Launch)> {
    let (path, launch) = copy_in(scratch, host)?;
    let path = scratch::path_in_tree(tree, &path);
    let argv = match launch {
        Launch::Shell => vec!["/bin/sh".to_string(), path],
        Launch::Exec { .. } => vec![path],
    };
    Ok((argv, launch))
}

/// What a step that could not start lacked; `copied` is how a host file
/// copied in was launched.
fn explain(
    e: SandboxError,
    step: usize,
    what: String,
    copied: Option<Launch>,
    ctx: &RunContext,
) -> RunError {
    match e {
        SandboxError::NotFound { program, .. } if program == "/bin/sh" => {
            RunError::NoShell { step, what }
        }
        // The file itself was just copied in: what is missing is what it
        // names to run it.
        SandboxError::NotFound { .. } if copied.is_some() => {
            let interpreter = match copied {
                Some(Launch::Exec {
                    interpreter: Some(interpreter),
                }) => interpreter,
                _ => "(the dynamic loader the binary names)".to_string(),
            };
            RunError::NoInterpreter {
                step,
                what,
                interpreter,
            }
        }
        SandboxError::Exec { message, .. } if ctx.foreign.is_some() => RunError::Foreign {
            step,
            what,
            platform: ctx.foreign.clone().unwrap_or_default(),
            message,
        },
        source => RunError::Sandbox {
            step,
            what,
            source: Box::new(source),
        },
    }
}

/// Copy the host file `host` into the scratch directory as an executable;
/// its path and how to start it.
fn copy_in(scratch: &mut Scratch, host: &Path) -> io::Result<(PathBuf, Launch)> {
    let mut source = File::open(host)?;
    let mut head = Vec::with_capacity(HEAD);
    (&mut source).take(HEAD as u64).read_to_end(&mut head)?;
    let (path, mut file) = scratch
        .add_file(&scratch::unique_name("run"), 0o755)
        .map_err(|e| e.source)?;
    file.write_all(&head)?;
    io::copy(&mut source, &mut file)?;
    // Closed before the exec, or it fails with ETXTBSY.
    drop(file);
    Ok((path, launch_of(&head)))
}

/// How much of a host file tells how to start it (the kernel reads 256
/// bytes of a `#!` line).
const HEAD: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::tests::{busybox_tree, mounts_under};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn ctx() -> RunContext<'static> {
        RunContext {
            target: "web",
            env: vec![("GREETING".into(), "hi".into())],
            workdir: "/".into(),
            network: Network::None,
            privileged: false,
            user: String::new(),
            foreign: None,
            tree: None,
        }
    }

    #[test]
    fn scripts_run_in_order_with_the_env() {
        let Some((tmp, tree)) = busybox_tree() else {
            return;
        };
        let items = [
            RunItem::Script("echo $GREETING > /out".into()),
            RunItem::Script("echo again >> /out".into()),
        ];
        run_steps(&tree, &items, &ctx()).unwrap();
        assert_eq!(fs::read_to_string(tree.join("out")).unwrap(), "hi\nagain\n");
        assert!(mounts_under(tmp.path()).is_empty());
    }

    #[test]
    fn a_failing_step_names_step_and_status() {
        let Some((_tmp, tree)) = busybox_tree() else {
            return;
        };
        let items = [
            RunItem::Script("true".into()),
            RunItem::Script("echo start\nexit 3\n".into()),
            RunItem::Script("touch /never".into()),
        ];
        let err = run_steps(&tree, &items, &ctx()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "run step 2 (`echo start ...`) failed: exit status 3"
        );
        assert!(!tree.join("never").exists());
    }

    #[test]
    fn a_host_file_runs_and_is_removed() {
        let Some((tmp, tree)) = busybox_tree() else {
            return;
        };
        let script = tmp.path().join("setup.sh");
        fs::write(&script, "#!/bin/sh\necho \"$0\" > /ran\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(tree.join("tmp"), old, old).unwrap();
        run_steps(&tree, &[RunItem::File(script)], &ctx()).unwrap();
        let ran = fs::read_to_string(tree.join("ran")).unwrap();
        assert!(ran.starts_with("/tmp/.genoci-run-"), "{ran}");
        assert_eq!(fs::read_dir(tree.join("tmp")).unwrap().count(), 0);
        assert_eq!(
            scratch::mtime_ns(&tree.join("tmp")).unwrap(),
            1_000_000_000_000_000
        );
    }

    #[test]
    fn without_tmp_a_host_file_goes_to_the_root() {
        let Some((tmp, tree)) = busybox_tree() else {
            return;
        };
        fs::remove_dir(tree.join("tmp")).unwrap();
        let script = tmp.path().join("setup.sh");
        fs::write(&script, "#!/bin/sh\necho \"$0\" > /ran\n").unwrap();
        run_steps(&tree, &[RunItem::File(script)], &ctx()).unwrap();
        let ran = fs::read_to_string(tree.join("ran")).unwrap();
        assert!(ran.starts_with("/.genoci-run-"), "{ran}");
        let mut names: Vec<_> = fs::read_dir(&tree)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["bin", "etc", "ran", "root"]);
    }

    #[test]
    fn how_host_files_start() {
        let exec = |i: &str| Launch::Exec {
            interpreter: Some(i.to_string()),
        };
        assert_eq!(
            launch_of(b"#!/usr/bin/python3 -u\nprint()"),
            exec("/usr/bin/python3")
        );
        assert_eq!(launch_of(b"#! /bin/bash"), exec("/bin/bash"));
        assert_eq!(
            launch_of(b"\x7fELF\x02\x01\x01\0\0"),
            Launch::Exec { interpreter: None }
        );
        assert_eq!(launch_of(b"echo hi\n"), Launch::Shell);
        assert_eq!(launch_of(b""), Launch::Shell);
    }

    #[test]
    fn a_missing_interpreter_is_named_and_a_script_without_one_runs_with_sh() {
        let Some((tmp, tree)) = busybox_tree() else {
            return;
        };
        let python = tmp.path().join("setup.py");
        fs::write(&python, "#!/usr/bin/python3\nprint('hi')\n").unwrap();
        let err = run_steps(&tree, &[RunItem::File(python)], &ctx()).unwrap_err();
        assert!(
            matches!(&err, RunError::NoInterpreter { interpreter, .. } if interpreter == "/usr/bin/python3"),
            "{err}"
        );
        let plain = tmp.path().join("plain.sh");
        fs::write(&plain, "echo \"$0\" > /ran\n").unwrap();
        run_steps(&tree, &[RunItem::File(plain)], &ctx()).unwrap();
        let ran = fs::read_to_string(tree.join("ran")).unwrap();
        assert!(ran.starts_with("/tmp/.genoci-run-"), "{ran}");
    }

    #[test]
    fn a_tree_without_sh_is_a_clear_error() {
        let Some((_tmp, tree)) = busybox_tree() else {
            return;
        };
        fs::remove_file(tree.join("bin/sh")).unwrap();
        let err = run_steps(&tree, &[RunItem::Script("true".into())], &ctx()).unwrap_err();
        assert!(matches!(err, RunError::NoShell { step: 1, .. }), "{err}");
        assert!(err.to_string().contains("no /bin/sh"), "{err}");
    }
}
