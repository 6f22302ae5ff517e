//! The `pre` and `post` hooks: host shell commands around a target's
//! actions, with `GENOCI_ROOTFS` and `GENOCI_TARGET` set and the spec's
//! folder as working directory.
//!
//! Hooks run on the host, so a hook may mount something into the tree and
//! forget it; [`release_mounts_under`](crate::mountinfo::release_mounts_under) takes such mounts away before the
//! layer is computed, so host files never land in it.
//!
//! A hook is done when its shell exits. It runs in a process group of its
//! own, and whatever it started there and left running (`daemon &`) is sent
//! SIGTERM, then SIGKILL: otherwise a background process holding the hook's
//! output would hold the build until it ended. Ctrl-C or SIGTERM to genoci
//! ends the whole group the same way.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::sandbox::{self, output::Prefixer};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{stage} hook `{command}` failed: {status}")]
    Failed {
        stage: String,
        command: String,
        status: String,
    },
    #[error("{stage} hook `{command}`: interrupted")]
    Interrupted { stage: String, command: String },
    #[error("{stage} hook `{command}`: cannot run /bin/sh")]
    Spawn {
        stage: String,
        command: String,
        #[source]
        source: io::Error,
    },
}

/// Run each of `commands` through the host's `/bin/sh -e -c`, in order,
/// stopping at the first failure.
pub fn run_hooks(
    stage: &str,
    commands: &[String],
    tree: &Path,
    target: &str,
    spec_dir: &Path,
) -> Result<(), HookError> {
    for command in commands {
        tracing::info!(target = %target, stage, command = %command, "hook");
        let spawn_error = |source| HookError::Spawn {
            stage: stage.to_string(),
            command: sandbox::describe(std::slice::from_ref(command)),
            source,
        };
        let mut child = Command::new("/bin/sh")
            .args(["-e", "-c", command])
            .env("GENOCI_ROOTFS", tree)
            .env("GENOCI_TARGET", target)
            .current_dir(spec_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(spawn_error)?;
        let group = Pid::from_raw(child.id() as i32);
        let prefixer = Prefixer::attach(&mut child, target).map_err(spawn_error)?;
        let status = wait_interruptible(&mut child);
        end_group(group);
        finish_output(prefixer, target, stage).map_err(spawn_error)?;
        let describe = || sandbox::describe(std::slice::from_ref(command));
        let status = match status.map_err(spawn_error)? {
            Some(status) => status,
            None => {
                return Err(HookError::Interrupted {
                    stage: stage.to_string(),
                    command: describe(),
                })
            }
        };
        if !status.success() {
            return Err(HookError::Failed {
                stage: stage.to_string(),
                command: describe(),
                status: sandbox::describe_status(status),
            });
        }
    }
    Ok(())
}

/// The hook's shell status; `None` once Ctrl-C or SIGTERM reached genoci
/// (then the shell's group is ended by the caller).
fn wait_interruptible(child: &mut Child) -> io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if crate::signals::interrupted() {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

const POLL: Duration = Duration::from_millis(20);
/// How long what a hook left running has to end after SIGTERM.
const GRACE: Duration = Duration::from_secs(2);

/// SIGTERM to what is left of the hook's process group, SIGKILL to what is
/// still there after [`GRACE`].
fn end_group(group: Pid) {
    if killpg(group, Signal::SIGTERM).is_err() {
        return; // Nothing left.
    }
    let start = Instant::now();
    while start.elapsed() < GRACE {
        if !has_live_member(group) {
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// Whether a process of `group` is still running. Not `kill(-group, 0)`:
/// the group's orphans are reaped by whatever init the host has, and until
/// then their zombies count as members.
fn has_live_member(group: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let group = group.as_raw().to_string();
    entries.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // After the command name in parentheses: state, ppid, pgrp.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| {
            rest.split_whitespace().take(3).collect()
        });
        matches!(fields[..], [state, _, pgrp] if state != "Z" && pgrp == group)
    })
}

/// Wait for the hook's output to be forwarded. A process that left the
/// hook's group (setsid) may still hold the pipes: after [`GRACE`] genoci
/// goes on without the rest of its output rather than wait for it.
fn finish_output(prefixer: Prefixer, target: &str, stage: &str) -> io::Result<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("hook-output".into())
        .spawn(move || {
            let _ = tx.send(prefixer.finish());
        })?;
    match rx.recv_timeout(GRACE) {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(target = %target, stage, "a process the hook started still holds its output; not waiting for it");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::tests::mounts_under;
    use std::fs;
    use std::path::PathBuf;

    fn commands(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hooks_see_the_tree_the_target_and_the_spec_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        let spec_dir = tmp.path().join("spec");
        fs::create_dir_all(&tree).unwrap();
        fs::create_dir_all(&spec_dir).unwrap();
        run_hooks(
            "pre",
            &commands(&[
                "echo \"$GENOCI_TARGET\" > \"$GENOCI_ROOTFS/target\"",
                "pwd > \"$GENOCI_ROOTFS/cwd\"",
            ]),
            &tree,
            "web",
            &spec_dir,
        )
        .unwrap();
        assert_eq!(fs::read_to_string(tree.join("target")).unwrap(), "web\n");
        assert_eq!(
            fs::read_to_string(tree.join("cwd")).unwrap().trim(),
            spec_dir.to_str().unwrap()
        );
    }

    #[test]
    fn a_failing_hook_names_stage_command_and_status() {
        let tmp = tempfile::tempdir().unwrap();
        let err = run_hooks(
            "post",
            &commands(&["true", "echo going; exit 4", "touch never"]),
            tmp.path(),
            "web",
            tmp.path(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "post hook `echo going; exit 4` failed: exit status 4"
        );
        assert!(!tmp.path().join("never").exists());
    }

    #[test]
    fn a_hook_is_done_when_its_shell_exits_and_what_it_left_is_ended() {
        let tmp = tempfile::tempdir().unwrap();
        let start = Instant::now();
        run_hooks(
            "pre",
            &commands(&["sleep 300 & echo $! > \"$GENOCI_ROOTFS/pid\""]),
            tmp.path(),
            "web",
            tmp.path(),
        )
        .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        let pid: i32 = fs::read_to_string(tmp.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Gone, or a zombie waiting for its reaper.
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "{stat}");
    }

    #[test]
    fn what_a_hook_left_ignoring_sigterm_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let start = Instant::now();
        run_hooks(
            "post",
            &commands(&["trap '' TERM; sleep 300 & echo $! > \"$GENOCI_ROOTFS/pid\""]),
            tmp.path(),
            "web",
            tmp.path(),
        )
        .unwrap();
        let took = start.elapsed();
        assert!(took >= GRACE && took < GRACE * 3, "{took:?}");
        let pid = fs::read_to_string(tmp.path().join("pid")).unwrap();
        // SIGKILL was sent; its delivery may take a moment on a busy machine.
        let start = Instant::now();
        let ended = loop {
            let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") || start.elapsed() > Duration::from_secs(2)
            {
                break stat;
            }
            std::thread::sleep(POLL);
        };
        assert!(ended.is_empty() || ended.contains(") Z "), "{ended}");
    }

    /// Unmounts whatever a failed test left under its temp dir.
    struct MountGuard(PathBuf);

    impl Drop for MountGuard {
        fn drop(&mut self) {
            let _ = crate::mountinfo::release_mounts_under(&self.0, false);
        }
    }

    #[test]
    fn a_forgotten_bind_mount_is_released() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_support::skip("mounting needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let guard = MountGuard(tmp.path().to_path_buf());
        let tree = tmp.path().join("my tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/resolv.conf"), "tree's own\n").unwrap();
        fs::write(tmp.path().join("host.conf"), "host\n").unwrap();
        run_hooks(
            "pre",
            &commands(&["mount --bind ../host.conf \"$GENOCI_ROOTFS/etc/resolv.conf\""]),
            &tree,
            "web",
            &tree,
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(tree.join("etc/resolv.conf")).unwrap(),
            "host\n"
        );
        let released = crate::mountinfo::release_mounts_under(&tree, false).unwrap();
        assert_eq!(released, [tree.join("etc/resolv.conf")]);
        assert_eq!(
            fs::read_to_string(tree.join("etc/resolv.conf")).unwrap(),
            "tree's own\n"
        );
        assert!(mounts_under(tmp.path()).is_empty());
        assert!(crate::mountinfo::release_mounts_under(&tree, false)
            .unwrap()
            .is_empty());
        drop(guard);
    }
}
