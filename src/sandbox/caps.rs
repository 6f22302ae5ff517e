//! The capabilities a confined command keeps: the set docker and podman
//! give a container by default. Everything else goes from every set,
//! bounding set included, so no later exec (of a setuid or file-capability
//! program) can bring it back.

use std::io;

/// Capability numbers from `<linux/capability.h>`.
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const KILL: u32 = 5;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_RAW: u32 = 13;
    pub const SYS_CHROOT: u32 = 18;
    pub const MKNOD: u32 = 27;
    pub const AUDIT_WRITE: u32 = 29;
    pub const SETFCAP: u32 = 31;
}

/// docker's and podman's default set (moby `oci/caps/defaults.go`).
pub const DEFAULT: [u32; 14] = [
    cap::CHOWN,
    cap::DAC_OVERRIDE,
    cap::FOWNER,
    cap::FSETID,
    cap::KILL,
    cap::SETGID,
    cap::SETUID,
    cap::SETPCAP,
    cap::NET_BIND_SERVICE,
    cap::NET_RAW,
    cap::SYS_CHROOT,
    cap::MKNOD,
    cap::AUDIT_WRITE,
    cap::SETFCAP,
];

/// [`DEFAULT`] as a bit mask, as `/proc/PID/status` shows it (`a80425fb`).
pub fn default_mask() -> u64 {
    DEFAULT.iter().fold(0, |mask, &c| mask | 1 << c)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drop every capability outside [`DEFAULT`] from the bounding set and
/// clear the ambient set. Needs CAP_SETPCAP; the effective set is left for
/// [`limit_root`] (or the switch to a non-root user) to narrow.
pub fn drop_bounding() -> io::Result<()> {
    let keep = default_mask();
    // The kernel knows capabilities up to cap_last_cap; reading past it
    // fails with EINVAL, which ends the walk without reading /proc.
    for c in 0..64u32 {
        // SAFETY: plain prctl calls with integer arguments.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, c as libc::c_ulong, 0, 0, 0) };
        if present < 0 {
            break;
        }
        if present == 1 && keep & (1 << c) == 0 {
            // SAFETY: as above.
            check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) })?;
        }
    }
    // SAFETY: as above.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// For a command that stays uid 0: effective and permitted become
/// [`DEFAULT`]; inheritable stays empty, as in runc and docker since
/// CVE-2022-24769 (inheritable capabilities let a non-root program gain
/// file capabilities it should not).
pub fn limit_root() -> io::Result<()> {
    let mask = default_mask();
    capset(mask, mask)
}

/// Make the effective set `mask` (which must lie within the permitted
/// set), keeping the permitted set.
pub fn set_effective(mask: u64) -> io::Result<()> {
    capset(mask, capget()?.1)
}

/// The effective set.
pub fn effective() -> io::Result<u64> {
    Ok(capget()?.0)
}

/// The effective and permitted sets.
fn capget() -> io::Result<(u64, u64)> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) writes two data words into `data`.
    check(unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) as libc::c_int })?;
    let word = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | u64::from(f(&data[1])) << 32;
    Ok((word(|d| d.effective), word(|d| d.permitted)))
}

/// Set the effective and permitted sets; inheritable becomes empty.
fn capset(effective: u64, permitted: u64) -> io::Result<()> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        d.effective = (effective >> (32 * i)) as u32;
        d.permitted = (permitted >> (32 * i)) as u32;
    }
    // SAFETY: capset(2) reads a v3 header and two data words, both valid.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_is_docker_s_mask() {
        // `docker run --rm alpine grep CapBnd /proc/self/status`
        assert_eq!(default_mask(), 0xa804_25fb);
    }
}
