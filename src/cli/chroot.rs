use anyhow::{anyhow, bail};
use clap::Args;

use super::{GlobalArgs, Session, CHECKOUT};
use crate::build::ensure_snapshot;
use crate::sandbox::{self, Output, RunOptions};

#[derive(Debug, Args)]
pub struct ChrootArgs {
    /// The image to enter (default: the current checkout)
    pub tag: Option<String>,
    /// Command to run instead of /bin/sh
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

pub fn run(g: &GlobalArgs, args: &ChrootArgs) -> anyhow::Result<()> {
    let session = Session::open(g)?;
    let driver = session.driver.as_ref();
    let argv = if args.cmd.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        args.cmd.clone()
    };
    let (tree, image, throwaway) = match &args.tag {
        Some(tag) => {
            let image = session.image(tag)?;
            let chain = ensure_snapshot(&session.layout, driver, &image)?;
            let tree = driver.checkout(&chain, &format!("chroot-{}", std::process::id()))?;
            (tree, Some(image), true)
        }
        None => {
            let tree = driver
                .work_tree(CHECKOUT)?
                .ok_or_else(|| anyhow!("no tag given and no checkout in progress"))?;
            (tree, None, false)
        }
    };
    let config = image
        .and_then(|i| i.config.config().clone())
        .unwrap_or_default();
    let opts = RunOptions {
        root: &tree.path,
        argv,
        env: config
            .env()
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .chain([(
                "TERM".to_string(),
                std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
            )])
            .collect(),
        workdir: config
            .working_dir()
            .clone()
            .unwrap_or_else(|| "/".to_string()),
        network: crate::spec::Network::Host,
        output: Output::Inherit,
    };
    let status = sandbox::run(&opts);
    let program = opts.argv[0].clone();
    drop(opts);
    if throwaway {
        driver.discard(tree)?;
    }
    let status = status?;
    if !status.success() {
        bail!("{program} exited with {}", sandbox::describe_status(status));
    }
    Ok(())
}
