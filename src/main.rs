//! The `keyraft` binary: parse the command line and hand over to [`keyraft::cli`].
use clap::Parser;

fn main() -> anyhow::Result<()> {
    keyraft::cli::run(keyraft::cli::Cli::parse())
}
