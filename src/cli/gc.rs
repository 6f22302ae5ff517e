use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also remove dated tags (NAME-YYYY-MM-DD_N) older than the newest of each name
    #[arg(long)]
    pub dated: bool,
}

pub fn run(g: &GlobalArgs, args: &GcArgs) -> anyhow::Result<()> {
    let _ = (g, args);
    todo!()
}
