use std::io::IsTerminal;

use genoci::cli::{self, exit};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = cli::parse();
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("GENOCI_LOG").unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    genoci::signals::install();
    genoci::fsutil::use_image_umask();

    let code = match cli::run(cli) {
        Ok(()) => exit::OK,
        Err(err) => {
            if let Some(message) = cli::error_message(&err) {
                eprintln!("genoci: error: {message}");
            }
            cli::exit_code(&err)
        }
    };
    std::process::exit(code);
}
