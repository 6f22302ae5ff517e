//! The build spec, in two stages: [`raw`] serde structs that only check
//! shape (no I/O), then [`plan`], which resolves paths, bases and order into
//! a [`BuildPlan`] or reports every problem at once.

pub mod plan;
pub mod raw;
pub mod vars;

use std::path::PathBuf;

use indexmap::IndexMap;

pub use plan::load;

/// A checked spec: targets in an order where each comes after its base.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// The spec file.
    pub file: PathBuf,
    /// Its folder: relative host paths are resolved against it, hooks run in it.
    pub dir: PathBuf,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Empty,
    Tag(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Share the host's network and see its `/etc/resolv.conf`.
    #[default]
    Host,
    /// A network namespace with only a loopback device.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyItem {
    /// Absolute host path (file or directory).
    pub src: PathBuf,
    /// Absolute path inside the image.
    pub dest: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Package {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunItem {
    /// Run by `/bin/sh -e -c` inside the image.
    Script(String),
    /// A host file copied in, executed with no arguments, removed.
    File(PathBuf),
}

/// The image config keys a target sets; `None`/empty means inherit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigKeys {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// Values as written: `$NAME` references are expanded at build time,
    /// against the base image's `Env` and the keys before them.
    pub env: IndexMap<String, String>,
    /// As written; relative to the inherited one, expanded at build time.
    pub workdir: Option<String>,
    /// As written; expanded at build time.
    pub user: Option<String>,
    pub labels: IndexMap<String, String>,
    pub volumes: Vec<String>,
    /// `PORT/PROTO`, proto defaulting to `tcp`.
    pub ports: Vec<String>,
    pub annotations: IndexMap<String, String>,
    pub author: Option<String>,
}

impl ConfigKeys {
    /// The names of the keys set, in the order of the spec's key table.
    pub fn set_keys(&self) -> Vec<&'static str> {
        [
            ("entrypoint", self.entrypoint.is_some()),
            ("cmd", self.cmd.is_some()),
            ("env", !self.env.is_empty()),
            ("workdir", self.workdir.is_some()),
            ("user", self.user.is_some()),
            ("labels", !self.labels.is_empty()),
            ("volumes", !self.volumes.is_empty()),
            ("ports", !self.ports.is_empty()),
            ("annotations", !self.annotations.is_empty()),
            ("author", self.author.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Line of the target's key in the spec, for messages.
    pub line: usize,
    pub base: Base,
    pub pre: Vec<String>,
    /// Absolute host paths of tarballs.
    pub expand: Vec<PathBuf>,
    pub copy: Vec<CopyItem>,
    pub install: Vec<Package>,
    pub run: Vec<RunItem>,
    pub post: Vec<String>,
    pub network: Network,
    /// Run steps and installs run unconfined (full root in the sandbox's
    /// namespaces); the build warns.
    pub privileged: bool,
    pub config: ConfigKeys,
    /// What the target does, in short, for its history entry: the actions
    /// with their items as written (so the same spec in another folder
    /// gives the same image) and the config keys it sets.
    pub summary: String,
    /// The target's stanza in a canonical form (JSON with keys in spec order),
    /// for the build cache.
    pub stanza: String,
}

/// Every problem found in a spec; `Display` gives one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct SpecError {
    pub problems: Vec<Problem>,
}

/// One problem, located as precisely as the spec allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub target: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(t) = &self.target {
            write!(f, ": target {t}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ", key {k}")?;
        }
        write!(f, ": {}", self.message)
    }
}
