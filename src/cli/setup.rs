use anyhow::Context;
use clap::Args;

use super::{hold_store, Access, GlobalArgs};
use crate::config::DriverKind;
use crate::driver::btrfs::{self, SetupOutcome, UnsetupOutcome};
use crate::driver::DriverError;

#[derive(Debug, Args)]
pub struct UnsetupArgs {
    /// Unsetup even with a checkout in progress (it is lost)
    #[arg(long)]
    pub force: bool,
}

pub fn setup(g: &GlobalArgs) -> anyhow::Result<()> {
    let config = g.load_config()?;
    if config.driver != DriverKind::Btrfs {
        println!("only the btrfs driver needs setup: nothing to do");
        return Ok(());
    }
    let _hold = hold_store(&config, Access::Alone("setup"), g.wait())?;
    let (Some(lofile), mnt) = (&config.lofile, &config.btrfsmount) else {
        return setup_subvolume(&config);
    };
    let outcome = btrfs::setup_store(lofile, config.losize, mnt).with_context(|| {
        format!(
            "setting up the btrfs store {} at {}",
            lofile.display(),
            mnt.display()
        )
    })?;
    match outcome {
        SetupOutcome::Created => println!(
            "created {} ({} bytes, sparse) and mounted it at {}",
            lofile.display(),
            config.losize,
            mnt.display()
        ),
        SetupOutcome::Mounted => {
            println!(
                "mounted the existing {} at {}",
                lofile.display(),
                mnt.display()
            )
        }
        SetupOutcome::AlreadySetUp => println!("already set up at {}", mnt.display()),
    }
    Ok(())
}

pub fn unsetup(g: &GlobalArgs, args: &UnsetupArgs) -> anyhow::Result<()> {
    let config = g.load_config()?;
    if config.driver != DriverKind::Btrfs {
        let views = config.storedir.join("overlay/views");
        if !views.is_dir() {
            println!("only the btrfs driver has a setup to undo: nothing to do");
            return Ok(());
        }
        let _hold = hold_store(&config, Access::Alone("unsetup"), g.wait())?;
        let released = crate::driver::overlay::OverlayDriver::release_views(&config.storedir)
            .with_context(|| format!("releasing the overlay views in {}", views.display()))?;
        println!("unmounted {released} overlay views that `unpack` made");
        return Ok(());
    }
    let _hold = hold_store(&config, Access::Alone("unsetup"), g.wait())?;
    let (Some(lofile), mnt) = (&config.lofile, &config.btrfsmount) else {
        return unsetup_subvolume(&config, args.force);
    };
    let outcome = match btrfs::unsetup_store(lofile, mnt, args.force) {
        Err(DriverError::Busy(name)) => return Err(busy(&name, mnt)),
        other => other.with_context(|| {
            format!(
                "removing the btrfs store {} at {}",
                lofile.display(),
                mnt.display()
            )
        })?,
    };
    match outcome {
        UnsetupOutcome::Removed => println!(
            "unmounted {} and removed {}",
            mnt.display(),
            lofile.display()
        ),
        UnsetupOutcome::NothingThere => println!(
            "no btrfs store at {} or {}: nothing to do",
            mnt.display(),
            lofile.display()
        ),
    }
    Ok(())
}

/// `lofile: none`: the store is a subvolume genoci makes in `btrfsmount`,
/// on a btrfs filesystem that someone else mounted.
fn setup_subvolume(config: &crate::config::Config) -> anyhow::Result<()> {
    let store = config.btrfs_store();
    let outcome = btrfs::setup_subvolume(&store)
        .with_context(|| format!("creating the btrfs store subvolume {}", store.display()))?;
    match outcome {
        SetupOutcome::AlreadySetUp => println!("already set up at {}", store.display()),
        _ => println!(
            "created the subvolume {} on the btrfs filesystem of {}",
            store.display(),
            config.btrfsmount.display()
        ),
    }
    Ok(())
}

/// Delete genoci's store subvolume; the filesystem and everything else on
/// it stay as they are.
fn unsetup_subvolume(config: &crate::config::Config, force: bool) -> anyhow::Result<()> {
    let store = config.btrfs_store();
    let outcome = match btrfs::unsetup_subvolume(&store, force) {
        Err(DriverError::Busy(name)) => return Err(busy(&name, &store)),
        other => other
            .with_context(|| format!("removing the btrfs store subvolume {}", store.display()))?,
    };
    match outcome {
        UnsetupOutcome::Removed => println!(
            "deleted the subvolume {} (the filesystem stays mounted)",
            store.display()
        ),
        UnsetupOutcome::NothingThere => {
            println!("no btrfs store at {}: nothing to do", store.display())
        }
    }
    Ok(())
}

fn busy(name: &str, store: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "a {name} is in progress in {}: check it in or abort it, or run `genoci unsetup --force` to lose it",
        store.display()
    )
}
