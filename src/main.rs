//! The `keyraft` binary: parse the command line and hand over to [`keyraft::cli`].
use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Sequoia reports many routine conditions (a signature that does not verify, a packet
    // it skips) as `anyhow` errors; with RUST_BACKTRACE=1 inherited from a shell each of them
    // would capture a backtrace, which costs more than the verification. Panics still get
    // backtraces: RUST_LIB_BACKTRACE only governs library-captured ones.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    keyraft::cli::run(keyraft::cli::Cli::parse())
}
