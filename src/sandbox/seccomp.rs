//! The seccomp filter of a confined command: the effect of docker's default
//! profile (moby `profiles/seccomp/default.json`) for a container with
//! docker's default capabilities.
//!
//! docker writes that profile as an allow list. genoci writes its complement
//! as a deny list: every system call the profile refuses such a container,
//! with the profile's answer (EPERM; ENOSYS for `clone3`, so that libc falls
//! back to `clone`). A system call newer than the list is let through
//! (docker answers ENOSYS): the kernel still checks its capabilities, and
//! libc's fallbacks for new calls (`fchmodat2`, `clone3`) expect ENOSYS,
//! not the EPERM an unknown-call rule would give, so newer images keep
//! working.
//!
//! The filter is loaded without `no_new_privs`, as docker does, so setuid
//! programs (`su`) and file capabilities (`ping`) behave as in a container;
//! loading it that way needs CAP_SYS_ADMIN, so it comes before the
//! capabilities are narrowed.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

/// Refused outright, with the capability whose absence refuses it in
/// docker's profile (`-` where the profile never allows it).
pub const DENIED: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "-",
        &[
            "add_key",
            "keyctl",
            "request_key",
            "kexec_load",
            "kexec_file_load",
            "userfaultfd",
            "swapon",
            "swapoff",
            "pivot_root",
            "move_pages",
            "migrate_pages",
            "nfsservctl",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "vm86",
            "vm86old",
        ],
    ),
];

/// `clone` flags that make namespaces: refused without CAP_SYS_ADMIN
/// (the profile's mask 2114060288).
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// `personality` bits the profile allows: it allows exactly 0, PER_LINUX32
/// (0x8), UNAME26 (0x20000), both, and the query 0xffffffff.
const PERSONALITY_ALLOWED: u64 = 0x20008;
/// No personality has bit 31; the query 0xffffffff does.
const PERSONALITY_QUERY_BIT: u64 = 1 << 31;

/// `AF_VSOCK`: talking to the hypervisor.
const AF_VSOCK: u64 = 40;

#[derive(Debug, thiserror::Error)]
#[error("seccomp filter ({rule}): {source}")]
pub struct SeccompError {
    rule: String,
    source: libseccomp::error::SeccompError,
}

trait Rule<T> {
    fn rule(self, rule: &str) -> Result<T, SeccompError>;
}

impl<T> Rule<T> for Result<T, libseccomp::error::SeccompError> {
    fn rule(self, rule: &str) -> Result<T, SeccompError> {
        self.map_err(|source| SeccompError {
            rule: rule.to_string(),
            source,
        })
    }
}

/// The architectures a process on this machine can call the kernel with:
/// the native one and its compat ABIs (32-bit x86 and x32 beside x86_64),
/// each filtered alike, as docker's `archMap` does.
fn arches() -> Vec<ScmpArch> {
    match ScmpArch::native() {
        ScmpArch::X8664 => vec![ScmpArch::X86, ScmpArch::X32],
        ScmpArch::Aarch64 => vec![ScmpArch::Arm],
        _ => vec![],
    }
}

/// Build the filter (not loaded). With `notify_mknod`, `mknod` of a
/// character or block device goes to a supervisor instead of the kernel
/// (see [`super::mknod`]); other nodes (FIFOs, sockets, files) stay with
/// the kernel.
pub fn filter(notify_mknod: bool) -> Result<ScmpFilterContext, SeccompError> {
    let eperm = ScmpAction::Errno(libc::EPERM);
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).rule("create")?;
    ctx.set_ctl_nnp(false).rule("no_new_privs")?;
    for arch in arches() {
        ctx.add_arch(arch).rule(&format!("{arch:?}"))?;
    }
    for (_, names) in DENIED {
        for name in *names {
            // A call this architecture (or libseccomp) does not know cannot
            // be made here.
            if let Ok(call) = ScmpSyscall::from_name(name) {
                ctx.add_rule(eperm, call).rule(name)?;
            }
        }
    }
    let call = |name: &str| ScmpSyscall::from_name(name).rule(name);
    ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), call("clone3")?)
        .rule("clone3")?;
    for flag in NAMESPACE_FLAGS {
        let cmp = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(flag), flag);
        ctx.add_rule_conditional(eperm, call("clone")?, &[cmp])
            .rule("clone")?;
    }
    // libseccomp takes one comparison per argument and rule, so "none of
    // the allowed values" becomes one rule per other bit: refused when that
    // bit is set and bit 31 (set only in the query) is not.
    for bit in (0..31).map(|b| 1u64 << b) {
        if bit & PERSONALITY_ALLOWED != 0 {
            continue;
        }
        let mask = bit | PERSONALITY_QUERY_BIT;
        let cmp = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(mask), bit);
        ctx.add_rule_conditional(eperm, call("personality")?, &[cmp])
            .rule("personality")?;
    }
    ctx.add_rule_conditional(
        eperm,
        call("socket")?,
        &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, AF_VSOCK)],
    )
    .rule("socket")?;
    if notify_mknod {
        add_mknod_notify(&mut ctx)?;
    }
    Ok(ctx)
}

/// `mknod(path, mode, dev)` and `mknodat(dirfd, path, mode, dev)` of a
/// device, told apart by the file type bits of `mode`.
fn add_mknod_notify(ctx: &mut ScmpFilterContext) -> Result<(), SeccompError> {
    let ifmt = u64::from(libc::S_IFMT);
    for (name, mode_arg) in [("mknod", 1), ("mknodat", 2)] {
        let Ok(call) = ScmpSyscall::from_name(name) else {
            continue;
        };
        for kind in [libc::S_IFCHR, libc::S_IFBLK] {
            let cmp = ScmpArgCompare::new(mode_arg, ScmpCompareOp::MaskedEqual(ifmt), kind.into());
            ctx.add_rule_conditional(ScmpAction::Notify, call, &[cmp])
                .rule(name)?;
        }
    }
    Ok(())
}

/// Load the filter into this process; it holds for every child and exec.
/// With `notify_mknod`, returns the descriptor on which the supervisor
/// receives the device `mknod` calls.
pub fn apply(notify_mknod: bool) -> Result<Option<std::os::fd::OwnedFd>, SeccompError> {
    use std::os::fd::FromRawFd;
    let ctx = filter(notify_mknod)?;
    ctx.load().rule("load")?;
    if !notify_mknod {
        return Ok(None);
    }
    let fd = ctx.get_notify_fd().rule("notify fd")?;
    // SAFETY: the kernel made this descriptor for this process at load;
    // nothing else owns it.
    Ok(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denied_name_is_a_system_call_libseccomp_knows() {
        // A typo would be skipped silently by `filter`.
        let unknown: Vec<&str> = DENIED
            .iter()
            .flat_map(|(_, names)| names.iter().copied())
            .filter(|name| ScmpSyscall::from_name(name).is_err())
            .collect();
        assert!(unknown.is_empty(), "{unknown:?}");
    }

    #[test]
    fn the_filter_builds() {
        filter(false).unwrap();
        filter(true).unwrap();
    }
}
