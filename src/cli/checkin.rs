use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct CheckinArgs {
    /// The new tag (default: YYYY-MM-DD_vN)
    pub tag: Option<String>,
}

pub fn run(g: &GlobalArgs, args: &CheckinArgs) -> anyhow::Result<()> {
    let _ = (g, args);
    todo!()
}
