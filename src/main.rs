//! `polyproto`: a polyproto home server. `polyproto up` runs everything in one process;
//! `polyproto gateway|identity|session|discovery|events` runs one component. See `--help`.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = polyproto_server::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(polyproto_server::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, the whole context chain, no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
