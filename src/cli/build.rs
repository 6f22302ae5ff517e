use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;

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
}

pub fn run(g: &GlobalArgs, args: &BuildArgs) -> anyhow::Result<()> {
    let _ = (g, args);
    todo!()
}
