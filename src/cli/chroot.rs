use anyhow::anyhow;
use clap::Args;

use super::checkout::open_checkout;
use super::{Access, CommandStatus, GlobalArgs, Session};
use crate::builder::ensure_snapshot;
use crate::sandbox::{self, Output, RunOptions};

#[derive(Debug, Args)]
pub struct ChrootArgs {
    /// The image to enter (default: the current checkout). A word starting
    /// with `/` is no tag: it starts CMD, run in the current checkout.
    pub tag: Option<String>,
    /// Command to run instead of /bin/sh
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

impl ChrootArgs {
    /// The tag, if any, and the command. A ref name starts with a letter or
    /// digit, so `chroot /bin/ls /etc` can only mean a command in the
    /// checkout; without this rule no command could be given there.
    fn tag_and_argv(&self) -> (Option<&str>, Vec<String>) {
        let (tag, cmd) = match self.tag.as_deref() {
            Some(word) if word.starts_with('/') => (
                None,
                std::iter::once(word.to_string())
                    .chain(self.cmd.iter().cloned())
                    .collect(),
            ),
            tag => (tag, self.cmd.clone()),
        };
        if cmd.is_empty() {
            (tag, vec!["/bin/sh".to_string()])
        } else {
            (tag, cmd)
        }
    }
}

pub fn run(g: &GlobalArgs, args: &ChrootArgs) -> anyhow::Result<()> {
    let session = Session::open(g, Access::Use)?;
    let driver = session.driver.as_ref();
    let (tag, argv) = args.tag_and_argv();
    let (tree, image, throwaway) = match tag {
        Some(tag) => {
            let image = session.layout.image_by_tag(tag)?;
            let chain = ensure_snapshot(&session.layout, driver, &image)?;
            let tree = driver.checkout(&chain, &format!("chroot-{}", std::process::id()))?;
            (tree, Some(image), true)
        }
        None => {
            let checkout = open_checkout(&session.layout, driver)?
                .ok_or_else(|| anyhow!("no tag given and no checkout in progress"))?;
            // The checked-out image's env and workdir.
            let image = checkout.record.image(&session.layout).ok();
            (checkout.tree, image, false)
        }
    };
    let config = image
        .and_then(|i| i.config.config().clone())
        .unwrap_or_default();
    let opts = RunOptions {
        root: &tree.path,
        argv,
        env: crate::builder::image_config::env_pairs(&config)
            .into_iter()
            .chain([(
                "TERM".to_string(),
                std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
            )])
            .collect(),
        workdir: config
            .working_dir()
            .clone()
            .unwrap_or_else(|| "/".to_string()),
        network: crate::sandbox::Network::Host,
        output: Output::Inherit,
        privileged: false,
        user: None,
        // A kept checkout stays mounted where its user sees and edits it
        // (and may stand in it), so it is not lent to the command's own
        // overlay: on the overlay driver its chroot keeps host ids.
        tree: throwaway.then_some(crate::driver::TreeOf {
            driver,
            tree: &tree,
        }),
    };
    // The command has the terminal: Ctrl-C is for it, not for genoci.
    let status = crate::signals::while_foreground(|| sandbox::run(&opts));
    let command = sandbox::describe(&opts.argv);
    drop(opts);
    if throwaway {
        driver.discard(tree)?;
    }
    let status = status?;
    if !status.success() {
        return Err(CommandStatus { command, status }.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> (Option<String>, Vec<String>) {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let args = ChrootArgs {
            tag: words.first().cloned(),
            cmd: words.iter().skip(1).cloned().collect(),
        };
        let (tag, argv) = args.tag_and_argv();
        (tag.map(str::to_string), argv)
    }

    #[test]
    fn a_command_by_absolute_path_runs_in_the_checkout() {
        let sh = vec!["/bin/sh".to_string()];
        assert_eq!(args(&[]), (None, sh.clone()));
        assert_eq!(args(&["web"]), (Some("web".into()), sh));
        assert_eq!(
            args(&["web", "ls", "-l"]),
            (Some("web".into()), vec!["ls".into(), "-l".into()])
        );
        assert_eq!(
            args(&["/bin/ls", "-l"]),
            (None, vec!["/bin/ls".into(), "-l".into()])
        );
    }
}
