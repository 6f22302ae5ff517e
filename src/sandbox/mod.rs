//! Running a command inside a tree: new mount, PID, UTS and IPC namespaces
//! (and network, when asked), pivot_root into the tree, a fresh `/proc`, a
//! minimal `/dev`. Nothing the sandbox mounts or creates for itself is left
//! in the tree afterwards.
//!
//! API (implemented here):
//! ```ignore
//! pub struct RunOptions<'a> {
//!     pub root: &'a Path,             // the tree
//!     pub argv: Vec<String>,          // argv[0] resolved inside the tree
//!     pub env: Vec<(String, String)>, // complete environment (PATH defaulted if absent)
//!     pub workdir: String,            // inside the tree, "/" if it does not exist
//!     pub network: crate::spec::Network,
//!     pub output: Output,             // Prefixed(label): each line of stdout/stderr as "[label] line"; Inherit: a terminal
//! }
//! pub fn run(opts: &RunOptions) -> Result<std::process::ExitStatus, SandboxError>;
//! /// Entry point of the re-executed helper process (hidden `__sandbox` subcommand).
//! pub fn helper_main(args: &[String]) -> !;
//! ```

pub fn helper_main(args: &[String]) -> anyhow::Result<()> {
    let _ = args;
    todo!()
}
