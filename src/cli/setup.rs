use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct UnsetupArgs {
    /// Unsetup even with a checkout in progress (it is lost)
    #[arg(long)]
    pub force: bool,
}

pub fn setup(g: &GlobalArgs) -> anyhow::Result<()> {
    let _ = g;
    todo!()
}

pub fn unsetup(g: &GlobalArgs, args: &UnsetupArgs) -> anyhow::Result<()> {
    let _ = (g, args);
    todo!()
}
