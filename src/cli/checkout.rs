use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// The tag to check out
    pub tag: String,
}

pub fn run(g: &GlobalArgs, args: &CheckoutArgs) -> anyhow::Result<()> {
    let _ = (g, args);
    todo!()
}
