//! The command line: one file per command.

pub mod abort;
pub mod build;
pub mod checkin;
pub mod checkout;
pub mod chroot;
pub mod gc;
pub mod ls;
pub mod setup;
pub mod status;
pub mod unpack;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, DriverKind, Overrides};
use crate::layout::Compression;
use crate::lock::{Lock, Mode, Subject, Wait};

#[derive(Debug, Parser)]
#[command(
    name = "genoci",
    version,
    about = "Build OCI images from a YAML spec, one layer per target"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Config file (default: ./atom_config.yaml, then ~/.config/atom/config.yaml)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Snapshot driver, over the config's `driver`
    #[arg(long, global = true, value_enum)]
    pub driver: Option<DriverArg>,
    /// OCI layout directory, over the config's `layoutdir`
    #[arg(long, global = true, value_name = "DIR")]
    pub layout: Option<PathBuf>,
    /// Store directory (plain snapshots, build cache, lock), over the config's `storedir`
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Layer compression, over the config's `compression`
    #[arg(long, global = true, value_enum)]
    pub compression: Option<Compression>,
    /// More output (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Fail at once, instead of waiting, when another genoci holds the
    /// layout or the store (a gc waits for running builds, a build for a gc)
    #[arg(long, global = true)]
    pub no_wait: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DriverArg {
    Plain,
    Overlay,
    Btrfs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the targets of a spec
    Build(build::BuildArgs),
    /// List the tags of the layout
    Ls,
    /// Remove older dated tags, then blobs and snapshots that no tag reaches
    Gc(gc::GcArgs),
    /// Create, format and mount the btrfs loopback store
    Setup,
    /// Unmount, detach and remove the btrfs loopback store
    Unsetup(setup::UnsetupArgs),
    /// Materialise every tag in the store
    Unpack,
    /// Check out a writable tree of TAG and print its path
    Checkout(checkout::CheckoutArgs),
    /// Commit the checked-out tree as a new image and tag
    Checkin(checkin::CheckinArgs),
    /// Throw away the checked-out tree
    Abort,
    /// Show the store, the checkout in progress and the tags
    Status,
    /// Run a shell (or CMD) inside TAG, or inside the current checkout
    Chroot(chroot::ChrootArgs),
    /// Internal: the sandbox helper process
    #[command(name = "__sandbox", hide = true)]
    Sandbox {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

impl GlobalArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            driver: self.driver.map(|d| match d {
                DriverArg::Plain => DriverKind::Plain,
                DriverArg::Overlay => DriverKind::Overlay,
                DriverArg::Btrfs => DriverKind::Btrfs,
            }),
            layoutdir: self.layout.clone(),
            storedir: self.store.clone(),
            compression: self.compression,
        }
    }

    pub fn load_config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(self.config.as_deref(), &self.overrides())?)
    }

    /// What a command does when the layout or the store is held.
    pub fn wait(&self) -> Wait {
        if self.no_wait {
            Wait::No
        } else {
            Wait::Block
        }
    }
}

/// Exit codes (documented in the README).
pub mod exit {
    pub const OK: i32 = 0;
    /// A target, a command or a hook failed.
    pub const FAILED: i32 = 1;
    /// Bad usage, spec or config: nothing was done.
    pub const USAGE: i32 = 2;
    /// `chroot`: the command could not be executed.
    pub const CANNOT_EXECUTE: i32 = 126;
    /// `chroot`: the command does not exist in the image.
    pub const NOT_FOUND: i32 = 127;
    /// Interrupted by Ctrl-C or SIGTERM: nothing half-done is left.
    pub const INTERRUPTED: i32 = 130;
}

/// Parse the command line (accepting `genoci SPEC` for `genoci build SPEC`).
pub fn parse() -> Cli {
    Cli::parse_from(with_build_inserted(std::env::args_os().collect()))
}

/// `args` with `build` before the first word that is neither a global flag,
/// a flag's value nor a command: `genoci -q --driver btrfs SPEC` builds too.
fn with_build_inserted(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let takes_value = |flag: &str| {
        cli.get_arguments().any(|a| {
            a.get_action().takes_values()
                && (a.get_long().is_some_and(|l| flag == format!("--{l}"))
                    || a.get_short().is_some_and(|s| flag == format!("-{s}")))
        })
    };
    let mut i = 1;
    while let Some(arg) = args.get(i).map(|a| a.to_string_lossy().into_owned()) {
        if !arg.starts_with('-') || arg == "-" {
            if !Cli::command_names().contains(&arg) {
                args.insert(i, "build".into());
            }
            break;
        }
        i += if takes_value(&arg) { 2 } else { 1 };
    }
    args
}

impl Cli {
    fn command_names() -> Vec<String> {
        use clap::CommandFactory;
        let mut names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        names.push("help".into());
        names
    }
}

/// Run one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Build(args) => build::run(g, &args),
        Command::Ls => ls::run(g),
        Command::Gc(args) => gc::run(g, &args),
        Command::Setup => setup::setup(g),
        Command::Unsetup(args) => setup::unsetup(g, &args),
        Command::Unpack => unpack::run(g),
        Command::Checkout(args) => checkout::run(g, &args),
        Command::Checkin(args) => checkin::run(g, &args),
        Command::Abort => abort::run(g),
        Command::Status => status::run(g),
        Command::Chroot(args) => chroot::run(g, &args),
        Command::Sandbox { args } => crate::sandbox::helper_main(&args),
    }
}

/// A command asked for something that cannot be: nothing was done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A command genoci ran for the user (`chroot TAG CMD`) did not succeed:
/// genoci exits as it did, with its code or 128+N for signal N, as a shell
/// reports it.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` {}", crate::sandbox::describe_status(*.status))]
pub struct CommandStatus {
    pub command: String,
    pub status: std::process::ExitStatus,
}

impl CommandStatus {
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => exit::FAILED,
        }
    }
}

/// The message genoci prints for `err`, if any: a command that exited with
/// a code has said what went wrong itself (as `docker run` or `chroot` are
/// silent then); a signal is worth saying, except those a shell does not
/// report either (Ctrl-C, a closed pipe).
pub fn error_message(err: &anyhow::Error) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let silent = |status: std::process::ExitStatus| {
        status.code().is_some() || matches!(status.signal(), Some(libc::SIGINT | libc::SIGPIPE))
    };
    match err.downcast_ref::<CommandStatus>() {
        Some(done) if silent(done.status) => None,
        _ => Some(format!("{err:#}")),
    }
}

/// The exit code for an error: a command's own status, usage errors and
/// interruptions have their own.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if let Some(done) = err.downcast_ref::<CommandStatus>() {
        return done.code();
    }
    // A command genoci was to run for the user that could not start: the
    // codes a shell (and `docker run`) give.
    match err.downcast_ref::<crate::sandbox::SandboxError>() {
        Some(crate::sandbox::SandboxError::NotFound { .. }) => return exit::NOT_FOUND,
        Some(crate::sandbox::SandboxError::Exec { .. }) => return exit::CANNOT_EXECUTE,
        _ => {}
    }
    if crate::signals::interrupted() {
        return exit::INTERRUPTED;
    }
    for cause in err.chain() {
        if cause.is::<crate::spec::SpecError>()
            || cause.is::<crate::config::ConfigError>()
            || cause.is::<crate::builder::commit::BadSourceDateEpoch>()
            || cause.is::<UsageError>()
            || cause
                .downcast_ref::<crate::layout::LayoutError>()
                .is_some_and(|e| matches!(e, crate::layout::LayoutError::NoTag(_)))
        {
            return exit::USAGE;
        }
    }
    exit::FAILED
}

/// How a command uses the layout and the store, which several genoci
/// processes may share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads or adds (build, checkout, unpack, status …): runs beside any
    /// number of such commands, and waits only for one that must be alone.
    Use,
    /// Removes what others may be using (gc, named here): waits until no
    /// other command holds the layout or the store; once it holds them,
    /// new commands wait until it is done.
    Alone(&'static str),
}

impl Access {
    fn mode(self) -> Mode {
        match self {
            Access::Use => Mode::Shared,
            Access::Alone(_) => Mode::Exclusive,
        }
    }

    /// Why this command would wait for the layout or the store.
    fn why(self) -> String {
        match self {
            Access::Use => "a gc, setup or unsetup has it to itself".to_string(),
            Access::Alone(command) => {
                format!(
                    "{command} waits for the other genoci commands (builds, checkouts) using it"
                )
            }
        }
    }
}

/// Hold the store directory (created if missing) for a whole command.
pub fn hold_store(config: &Config, access: Access, wait: Wait) -> anyhow::Result<Lock> {
    use anyhow::Context;
    let dir = &config.storedir;
    let gate = dir.join("gate");
    std::fs::create_dir_all(&gate)
        .with_context(|| format!("creating the store {}", dir.display()))?;
    let what = format!("the store {}", dir.display());
    hold(dir, &gate, &what, access, wait)
}

/// Hold `dir` behind `gate` (see [`crate::lock::acquire_fair`]).
fn hold(
    dir: &std::path::Path,
    gate: &std::path::Path,
    what: &str,
    access: Access,
    wait: Wait,
) -> anyhow::Result<Lock> {
    let subject = Subject {
        what: what.to_string(),
        why: access.why(),
    };
    Ok(crate::lock::acquire_fair(
        dir,
        gate,
        access.mode(),
        wait,
        &subject,
    )?)
}

/// What every command that touches images needs: the config, the layout and
/// the store, both held for the whole command as its [`Access`] says.
pub struct Session {
    /// With the driver decided: never [`DriverKind::Auto`].
    pub config: Config,
    /// Why the session uses its driver (for `status` and `-v`).
    pub driver_reason: String,
    pub layout: crate::layout::Layout,
    pub driver: Box<dyn crate::driver::SnapshotDriver>,
    _holds: Vec<Lock>,
}

impl Session {
    /// Open and hold the layout (created if missing) and the store, and
    /// discard work trees that a killed genoci left behind (never one whose
    /// owner is alive, nor a checkout kept for any layout).
    pub fn open(g: &GlobalArgs, access: Access) -> anyhow::Result<Session> {
        Session::with_config(g.load_config()?, access, g.wait())
    }

    /// Every command holds the store, then the layout, then a btrfs
    /// store, in that order, so that two commands never each hold one and
    /// wait for the other.
    pub fn with_config(config: Config, access: Access, wait: Wait) -> anyhow::Result<Session> {
        for (key, dir) in [
            ("layoutdir", &config.layoutdir),
            ("storedir", &config.storedir),
        ] {
            if dir.canonicalize().unwrap_or_else(|_| dir.clone()) == std::path::Path::new("/") {
                anyhow::bail!("{key} is /: refusing to use the root directory");
            }
        }
        let store_hold = hold_store(&config, access, wait)?;
        let layout = crate::layout::Layout::open_or_create(&config.layoutdir)?;
        let layout_hold = layout.hold(access.mode(), wait, &access.why())?;
        let mut config = config;
        let driver_reason = choose_driver(&mut config);
        tracing::debug!(driver = ?config.driver, "snapshot driver: {driver_reason}");
        let driver = open_driver(&config)?;
        let mut holds = vec![store_hold, layout_hold];
        // Project dirs with storedirs of their own may name one btrfs
        // filesystem: it is held too, once mounted (the driver is open).
        if config.driver == DriverKind::Btrfs {
            let store = config.btrfs_store();
            let what = format!("the btrfs store {}", store.display());
            let gate = store.join("snapshots");
            holds.push(hold(&store, &gate, &what, access, wait)?);
        }
        for stale in driver.work_trees()? {
            if stale.is_abandoned() {
                tracing::info!(tree = %stale.name, "removing a work tree left by an interrupted run");
                // Other genoci opening the store at the same moment may be
                // removing it too; a tree that stays is tried again by the
                // next command, and never stands in this one's way.
                let name = stale.name.clone();
                if let Err(e) = driver.discard(stale) {
                    tracing::warn!(tree = %name, "could not remove the work tree yet: {}", crate::error_chain(&e));
                }
            }
        }
        Ok(Session {
            config,
            driver_reason,
            layout,
            driver,
            _holds: holds,
        })
    }
}

/// Settle `config.driver` when the config left it to genoci, and say why
/// the driver is the one it is. The store dir must exist and be held: the
/// overlay probe mounts a scratch overlay in it (one per process, as
/// several may probe at once).
pub fn choose_driver(config: &mut Config) -> String {
    use crate::driver::overlay::OverlayDriver;
    if config.driver != DriverKind::Auto {
        return match &config.source {
            Some(file) => format!("set by --driver or in {}", file.display()),
            None => "set by --driver".to_string(),
        };
    }
    match OverlayDriver::probe(&config.storedir) {
        Ok(()) => {
            config.driver = DriverKind::Overlay;
            format!(
                "the default: the kernel and the filesystem of {} allow overlay mounts",
                config.storedir.display()
            )
        }
        Err(why) => {
            config.driver = DriverKind::Plain;
            format!("the default, as overlay cannot be used: {why}")
        }
    }
}

/// The store of `config.driver`, which must be decided ([`choose_driver`]).
pub fn open_driver(config: &Config) -> anyhow::Result<Box<dyn crate::driver::SnapshotDriver>> {
    Ok(match config.driver {
        DriverKind::Auto => anyhow::bail!("no snapshot driver chosen"),
        DriverKind::Plain => Box::new(crate::driver::plain::PlainDriver::open(&config.storedir)?),
        DriverKind::Overlay => Box::new(crate::driver::overlay::OverlayDriver::open(
            &config.storedir,
        )?),
        DriverKind::Btrfs => Box::new(match config.lofile {
            Some(_) => crate::driver::btrfs::BtrfsDriver::open(&config.btrfsmount)?,
            None => crate::driver::btrfs::BtrfsDriver::open_subvolume(&config.btrfs_store())?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commands_status_is_genocis_exit_code() {
        use std::os::unix::process::ExitStatusExt;
        let done = |raw| {
            anyhow::Error::from(CommandStatus {
                command: "sh".into(),
                status: std::process::ExitStatus::from_raw(raw),
            })
            .context("chroot")
        };
        // Wait statuses: exit code 7, killed by SIGKILL.
        assert_eq!(exit_code(&done(7 << 8)), 7);
        assert_eq!(error_message(&done(7 << 8)), None);
        assert_eq!(exit_code(&done(9)), 137);
        assert_eq!(exit_code(&done(2)), 130);
        assert_eq!(error_message(&done(2)), None);
        assert_eq!(
            error_message(&done(9)).unwrap(),
            "chroot: `sh` killed by signal 9 (SIGKILL)"
        );
        let missing = anyhow::Error::from(crate::layout::LayoutError::NoTag("web".into()));
        assert_eq!(exit_code(&missing), exit::USAGE);
    }

    fn inserted(line: &str) -> String {
        let args = line.split(' ').map(Into::into).collect();
        with_build_inserted(args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_spec_after_global_flags_is_built() {
        // Regression: `genoci -q SPEC` was refused as an unknown command.
        assert_eq!(inserted("genoci -q s.yaml"), "genoci -q build s.yaml");
        assert_eq!(
            inserted("genoci --driver btrfs --config c.yaml s.yaml"),
            "genoci --driver btrfs --config c.yaml build s.yaml"
        );
        assert_eq!(
            inserted("genoci --layout=oci -v s.yaml"),
            "genoci --layout=oci -v build s.yaml"
        );
        assert_eq!(inserted("genoci s.yaml"), "genoci build s.yaml");
    }

    #[test]
    fn commands_and_flags_alone_are_left_as_they_are() {
        for line in [
            "genoci --driver btrfs ls",
            "genoci -q build s.yaml",
            "genoci checkout build",
            "genoci --help",
            "genoci",
        ] {
            assert_eq!(inserted(line), line);
        }
    }
}
