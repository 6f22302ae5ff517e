//! The builder: for each target checkout -> actions -> changes -> layer ->
//! checkin -> tag. Targets that do not depend on each other build at the
//! same time, at most `jobs` at once; a failed target stops only what is
//! built on it.

pub mod cache;
pub mod commit;
pub mod image_config;
pub mod inputs;
pub mod materialize;
pub mod tags;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use oci_spec::image::Descriptor;

use crate::actions;
use crate::driver::{ChainId, DriverError, SnapshotDriver, WorkTree};
use crate::layout::image::Image;
use crate::layout::layer::LayerOptions;
use crate::layout::Compression;
use crate::layout::{Layout, LayoutError};
use crate::spec::{Base, BuildPlan, ConfigKeys, Target};

pub use materialize::{discard_after, ensure_snapshot};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("target {target}: {step}")]
    Step {
        target: String,
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An action whose errors name the step themselves.
    #[error("target {target}")]
    Action {
        target: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Image(String),
    #[error("{}; cleaning up {} failed too: {}", crate::error_chain(first.as_ref()), path.display(), crate::error_chain(cleanup))]
    Cleanup {
        first: Box<BuildError>,
        path: PathBuf,
        cleanup: DriverError,
    },
    #[error("target {target}: not built, because its base {base} failed")]
    BaseFailed { target: String, base: String },
    #[error("target {0}: not built, interrupted")]
    Interrupted(String),
    #[error("{} of {total} targets failed:\n  {}", .failures.len(), .failures.iter().map(|f| crate::error_chain(f)).collect::<Vec<_>>().join("\n  "))]
    Failed {
        total: usize,
        failures: Vec<BuildError>,
        /// The targets that were built (or found cached) all the same.
        built: Vec<(String, Outcome)>,
    },
}

impl BuildError {
    fn step(
        target: &str,
        step: impl Into<String>,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Self {
        let (target, step) = (target.to_string(), step.into());
        move |source| BuildError::Step {
            target,
            step,
            source,
        }
    }

    fn action<E: std::error::Error + Send + Sync + 'static>(
        target: &str,
    ) -> impl FnOnce(E) -> Self {
        let target = target.to_string();
        move |source| BuildError::Action {
            target,
            source: Box::new(source),
        }
    }
}

/// How targets are built, whatever the spec.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub compression: Compression,
    /// Clamp mtimes and fix `created` (reproducible builds).
    pub source_date_epoch: Option<i64>,
    pub no_cache: bool,
    /// Targets built at the same time.
    pub jobs: usize,
    /// Where the digests of input files are remembered between builds
    /// (see [`inputs`]); `None`: not kept.
    pub input_digests: Option<PathBuf>,
}

/// What became of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Built and tagged; `layer` is `None` when it changed nothing.
    Built {
        manifest: String,
        tags: Vec<String>,
        layer: Option<String>,
    },
    /// Inputs unchanged since its last build: its tag already points at it.
    Cached { manifest: String },
}

pub struct Builder<'a> {
    layout: &'a Layout,
    driver: &'a dyn SnapshotDriver,
    opts: BuildOptions,
    /// Targets on the same base missing from the store would rebuild it in
    /// the same work tree at once: one materialises, the others then find it.
    materializing: Mutex<()>,
    inputs: inputs::InputDigests,
}

impl<'a> Builder<'a> {
    pub fn new(layout: &'a Layout, driver: &'a dyn SnapshotDriver, opts: BuildOptions) -> Self {
        let inputs = match &opts.input_digests {
            Some(path) => inputs::InputDigests::load(path),
            None => inputs::InputDigests::in_memory(),
        };
        Builder {
            layout,
            driver,
            opts,
            materializing: Mutex::new(()),
            inputs,
        }
    }

    /// Build `plan`'s targets (only `selected` and what they need, when not
    /// empty). Every target that can be built is; the error lists the rest.
    pub fn build(
        &self,
        plan: &BuildPlan,
        selected: &[String],
    ) -> Result<Vec<(String, Outcome)>, BuildError> {
        let targets = select(plan, selected);
        let in_plan: HashMap<&str, &Target> =
            targets.iter().map(|t| (t.name.as_str(), *t)).collect();
        let mut state: HashMap<&str, State> = targets
            .iter()
            .map(|t| (t.name.as_str(), State::Pending))
            .collect();
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        let jobs = self.opts.jobs.max(1);

        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(&str, Result<Outcome, BuildError>)>();
            let mut running = 0;
            loop {
                for t in &targets {
                    if state[t.name.as_str()] != State::Pending {
                        continue;
                    }
                    match ready(t, &state, &in_plan) {
                        Err(e) => {
                            state.insert(&t.name, State::Failed);
                            failures.push(e);
                        }
                        Ok(true) if running < jobs => {
                            state.insert(&t.name, State::Running);
                            running += 1;
                            let tx = tx.clone();
                            let target: &Target = t;
                            let dir = &plan.dir;
                            scope.spawn(move || {
                                let result = self.build_target(target, dir);
                                let _ = tx.send((target.name.as_str(), result));
                            });
                        }
                        _ => {}
                    }
                }
                if running == 0 {
                    break;
                }
                let (name, result) = rx.recv().expect("a build thread always reports");
                running -= 1;
                match result {
                    Ok(outcome) => {
                        state.insert(name, State::Done);
                        outcomes.push((name.to_string(), outcome));
                    }
                    Err(e) => {
                        tracing::error!(target = name, "{}", crate::error_chain(&e));
                        state.insert(name, State::Failed);
                        failures.push(e);
                    }
                }
            }
        });

        // Only a cache: a record that cannot be written costs a re-read.
        if let Err(e) = self.inputs.save() {
            let record = self.opts.input_digests.as_deref().unwrap_or(Path::new(""));
            tracing::warn!(file = %record.display(), "input digests not saved: {e}");
        }
        tracing::debug!(
            files = self.inputs.reads(),
            "input files read for cache keys"
        );
        if failures.is_empty() {
            Ok(outcomes)
        } else {
            Err(BuildError::Failed {
                total: targets.len(),
                failures,
                built: outcomes,
            })
        }
    }

    fn build_target(&self, t: &Target, spec_dir: &Path) -> Result<Outcome, BuildError> {
        let started = Instant::now();
        let name = t.name.as_str();
        let base = match &t.base {
            Base::Empty => None,
            Base::Tag(tag) => Some(self.layout.image_by_tag(tag)?),
        };
        let base_digest = base.as_ref().map_or("empty".to_string(), |b| {
            b.manifest_desc.digest().to_string()
        });
        let key = cache::key(
            &base_digest,
            t,
            &self.options_key(),
            self.opts.source_date_epoch,
            &self.inputs,
        )
        .map_err(|e| BuildError::step(name, "hashing inputs")(e.into()))?;
        if let Some(cached) = self.cached(name, &key)? {
            return Ok(cached);
        }

        // `$` references and a relative workdir mean something only against
        // the config the target inherits; resolved before any work is done.
        let inherited = base
            .as_ref()
            .map_or_else(image_config::empty_config, |b| b.config.clone());
        let keys =
            image_config::resolve(&inherited.config().clone().unwrap_or_default(), &t.config)
                .map_err(|e| BuildError::step(name, e.key.clone())(e.message.into()))?;
        let base_chain = match (&base, &t.base) {
            (Some(image), Base::Tag(tag)) => {
                let _guard = self.materializing.lock().unwrap_or_else(|p| p.into_inner());
                ensure_snapshot(self.layout, self.driver, image)
                    .map_err(|e| BuildError::step(name, format!("base {tag}"))(e.into()))?
            }
            _ => ChainId::empty(),
        };
        // Named by process too: builds of the same target for two layouts
        // may share a store.
        let tree = self
            .driver
            .checkout(&base_chain, &format!("build-{}-{name}", std::process::id()))
            .map_err(|e| BuildError::step(name, "checkout")(e.into()))?;
        if let Err(e) = self.fill(t, &keys, &tree, base.as_ref(), spec_dir) {
            return Err(discard_after(self.driver, tree, e));
        }
        let (manifest, layer) = commit::commit(
            self.layout,
            self.driver,
            tree,
            base.as_ref(),
            &commit::Commit {
                keys: &keys,
                created_by: format!("genoci build {name}: {}", t.summary),
                created: self.created(),
                layer: self.layer_options(),
            },
        )
        .map_err(|e| match e {
            e @ BuildError::Step { .. } => e,
            e => BuildError::step(name, "commit")(e.into()),
        })?;
        let tags = self
            .tag(name, &manifest, &key)
            .map_err(|e| BuildError::step(name, "tag")(e.into()))?;
        tracing::info!(
            target = name,
            manifest = %manifest.digest(),
            layer = layer.as_ref().map_or("none".to_string(), |l| format!("{} entries, {} bytes", l.entries, l.descriptor.size())),
            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
            "built, tagged {}", tags.join(" ")
        );
        Ok(Outcome::Built {
            manifest: manifest.digest().to_string(),
            tags,
            layer: layer.map(|l| l.descriptor.digest().to_string()),
        })
    }

    /// The image tagged `name`, if it was built from inputs with this `key`.
    fn cached(&self, name: &str, key: &str) -> Result<Option<Outcome>, BuildError> {
        if self.opts.no_cache {
            return Ok(None);
        }
        let Some(current) = self.layout.resolve(name)? else {
            return Ok(None);
        };
        if cache::recorded_key(&current) != Some(key) {
            return Ok(None);
        }
        tracing::info!(target = name, "unchanged, using the cached image");
        Ok(Some(Outcome::Cached {
            manifest: current.digest().to_string(),
        }))
    }

    /// Run the target's actions on `tree`, then take away whatever a hook
    /// left mounted in it, whether the actions succeeded or not.
    fn fill(
        &self,
        t: &Target,
        keys: &ConfigKeys,
        tree: &WorkTree,
        base: Option<&Image>,
        spec_dir: &Path,
    ) -> Result<(), BuildError> {
        let name = t.name.as_str();
        let filled = self.run_actions(t, keys, tree, base, spec_dir);
        // A hook may leave something mounted in the tree (a bind-mounted
        // resolv.conf): it must not reach the diff, and discarding a failed
        // tree must not delete through it into the host.
        let released =
            crate::mountinfo::release_mounts_under(&tree.path, self.driver.tree_is_mount());
        if let Ok(points) = &released {
            for mount in points {
                tracing::warn!(target = name, mount = %mount.display(), "unmounted what a hook left mounted in the tree");
            }
        }
        match (filled, released) {
            (Ok(()), Ok(_)) => {
                crate::signals::check().map_err(|_| BuildError::Interrupted(name.to_string()))
            }
            (Ok(()), Err(e)) => Err(BuildError::step(name, "unmount after hooks")(e.into())),
            // A step stopped by Ctrl-C fails as a killed command would: the
            // interruption is the cause worth naming.
            (Err(e), Ok(_)) if crate::signals::interrupted() => {
                tracing::debug!(
                    target = name,
                    "stopped by the interruption: {}",
                    crate::error_chain(&e)
                );
                Err(BuildError::Interrupted(name.to_string()))
            }
            (Err(e), Ok(_)) => Err(e),
            (Err(e), Err(cleanup)) => {
                tracing::error!(
                    target = name,
                    "unmounting after hooks failed too: {cleanup}"
                );
                Err(e)
            }
        }
    }

    fn run_actions(
        &self,
        t: &Target,
        keys: &ConfigKeys,
        tree: &WorkTree,
        base: Option<&Image>,
        spec_dir: &Path,
    ) -> Result<(), BuildError> {
        let name = t.name.as_str();
        let root = tree.path.as_path();
        let interrupted =
            || crate::signals::check().map_err(|_| BuildError::Interrupted(name.to_string()));
        let image = base.map_or_else(image_config::empty_config, |b| b.config.clone());
        let platform = crate::layout::Platform::of(&image);
        let run_config = image.config().clone().unwrap_or_default();
        let ctx = actions::run::RunContext {
            target: name,
            env: image_config::env_pairs(&run_config),
            workdir: run_config
                .working_dir()
                .clone()
                .unwrap_or_else(|| "/".to_string()),
            network: match t.network {
                crate::spec::Network::Host => crate::sandbox::Network::Host,
                crate::spec::Network::None => crate::sandbox::Network::None,
            },
            privileged: t.privileged,
            user: run_config.user().clone().unwrap_or_default(),
            foreign: (!platform.runs_here()).then(|| platform.to_string()),
            tree: Some(crate::driver::TreeOf {
                driver: self.driver,
                tree,
            }),
        };
        if t.privileged && !(t.install.is_empty() && t.run.is_empty()) {
            tracing::warn!(
                target = name,
                "target {name} is privileged: its install and run steps run as full host root, unconfined"
            );
        }

        actions::hooks::run_hooks("pre", &t.pre, root, name, spec_dir)
            .map_err(BuildError::action(name))?;
        for tarball in &t.expand {
            interrupted()?;
            actions::expand::expand(root, tarball).map_err(|e| {
                BuildError::step(name, format!("expand {}", tarball.display()))(e.into())
            })?;
        }
        for item in &t.copy {
            interrupted()?;
            actions::copy::copy(root, item).map_err(|e| {
                BuildError::step(name, format!("copy {} {}", item.src.display(), item.dest))(
                    e.into(),
                )
            })?;
        }
        if !t.install.is_empty() {
            interrupted()?;
            actions::install::install(root, &t.install, &ctx).map_err(BuildError::action(name))?;
        }
        if !t.run.is_empty() {
            interrupted()?;
            actions::run::run_steps(root, &t.run, &ctx).map_err(BuildError::action(name))?;
        }
        actions::hooks::run_hooks("post", &t.post, root, name, spec_dir)
            .map_err(BuildError::action(name))?;
        // As docker's WORKDIR: the directory exists in the image that names it.
        if let Some(workdir) = &keys.workdir {
            crate::fsutil::resolve_in(root, Path::new(workdir), true)
                .and_then(|dir| std::fs::create_dir_all(&dir))
                .map_err(|e| BuildError::step(name, format!("workdir {workdir}"))(e.into()))?;
        }
        Ok(())
    }

    /// Move `NAME` (recording the cache `key` it was built for) and add the
    /// next `NAME-YYYY-MM-DD_N`, picked from the tags of the moment: other
    /// threads and processes tag in the same layout.
    fn tag(&self, name: &str, manifest: &Descriptor, key: &str) -> Result<Vec<String>, BuildError> {
        let set = self.layout.update_tags(|existing| {
            let dated = tags::next_dated(name, &tags::today(), existing);
            vec![
                (name.to_string(), cache::with_key(manifest, key)),
                (dated, tags::mark_dated(manifest)),
            ]
        })?;
        Ok(set.into_iter().map(|(tag, _)| tag).collect())
    }

    fn created(&self) -> String {
        commit::created(self.opts.source_date_epoch)
    }

    fn layer_options(&self) -> LayerOptions {
        commit::layer_options(self.opts.compression, self.opts.source_date_epoch)
    }

    /// What else decides a target's bytes, for the cache key.
    fn options_key(&self) -> String {
        format!(
            "{:?} {:?}",
            self.opts.compression, self.opts.source_date_epoch
        )
    }
}

/// Whether `t` can start (its base is built, or not in this build), or
/// why it never will.
fn ready(
    t: &Target,
    state: &HashMap<&str, State>,
    in_plan: &HashMap<&str, &Target>,
) -> Result<bool, BuildError> {
    let base_state = match &t.base {
        Base::Tag(b) if in_plan.contains_key(b.as_str()) => state[b.as_str()],
        _ => State::Done,
    };
    match (base_state, &t.base) {
        (State::Failed, Base::Tag(base)) => Err(BuildError::BaseFailed {
            target: t.name.clone(),
            base: base.clone(),
        }),
        (State::Done, _) if crate::signals::interrupted() => {
            Err(BuildError::Interrupted(t.name.clone()))
        }
        (State::Done, _) => Ok(true),
        _ => Ok(false),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Running,
    Done,
    Failed,
}

/// The targets to build: all, or the selected ones and the bases they need, in plan order.
fn select<'p>(plan: &'p BuildPlan, selected: &[String]) -> Vec<&'p Target> {
    if selected.is_empty() {
        return plan.targets.iter().collect();
    }
    let by_name: HashMap<&str, &Target> =
        plan.targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut wanted = std::collections::HashSet::new();
    for name in selected {
        let mut next = Some(name.as_str());
        while let Some(n) = next {
            let Some(t) = by_name.get(n) else { break };
            if !wanted.insert(n) {
                break;
            }
            next = match &t.base {
                Base::Tag(b) => Some(b.as_str()),
                Base::Empty => None,
            };
        }
    }
    plan.targets
        .iter()
        .filter(|t| wanted.contains(t.name.as_str()))
        .collect()
}
