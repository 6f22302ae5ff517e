use std::path::PathBuf;

use clap::Args;

use super::{Access, GlobalArgs, Session, UsageError};
use crate::builder::{commit, BuildError, BuildOptions, Builder, Outcome};
use crate::layout::Layout;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The spec file
    pub spec: PathBuf,
    /// Build only this target and what it needs (repeatable)
    #[arg(long = "target", short = 't', value_name = "NAME")]
    pub targets: Vec<String>,
    /// Rebuild even targets whose inputs are unchanged
    #[arg(long)]
    pub no_cache: bool,
    /// Targets built at the same time (default: the number of cores)
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
}

pub fn run(g: &GlobalArgs, args: &BuildArgs) -> anyhow::Result<()> {
    let source_date_epoch = commit::source_date_epoch()?;
    let config = g.load_config()?;
    // The spec is checked before anything is created: a bad spec leaves no
    // empty layout or store behind.
    let existing = Layout::open(&config.layoutdir).ok();
    let plan = crate::spec::load(&args.spec, &|tag| {
        existing
            .as_ref()
            .is_some_and(|l| matches!(l.resolve(tag), Ok(Some(_))))
    })?;
    for name in &args.targets {
        if !plan.targets.iter().any(|t| &t.name == name) {
            return Err(UsageError(format!(
                "--target {name}: no such target in {}",
                plan.file.display()
            ))
            .into());
        }
    }
    let session = Session::with_config(config, Access::Use, g.wait())?;
    let layout = &session.layout;
    let opts = BuildOptions {
        compression: session.config.compression,
        source_date_epoch,
        no_cache: args.no_cache,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        // In the store dir: the session holds its lock for the whole build.
        input_digests: Some(session.config.storedir.join(crate::builder::inputs::FILE)),
    };
    match Builder::new(layout, session.driver.as_ref(), opts).build(&plan, &args.targets) {
        Ok(outcomes) => {
            summary(&outcomes);
            Ok(())
        }
        // What did get built is tagged: say so before saying what failed.
        Err(BuildError::Failed {
            total,
            failures,
            built,
        }) => {
            summary(&built);
            Err(BuildError::Failed {
                total,
                failures,
                built,
            }
            .into())
        }
        Err(e) => Err(e.into()),
    }
}

fn summary(outcomes: &[(String, Outcome)]) {
    for (name, outcome) in outcomes {
        match outcome {
            Outcome::Built { tags, .. } => println!("{name}: built, tagged {}", tags.join(" ")),
            Outcome::Cached { .. } => println!("{name}: unchanged (cached)"),
        }
    }
}
