use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ChrootArgs {
    /// The image to enter (default: the current checkout)
    pub tag: Option<String>,
    /// Command to run instead of /bin/sh
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

pub fn run(g: &GlobalArgs, args: &ChrootArgs) -> anyhow::Result<()> {
    let _ = (g, args);
    todo!()
}
