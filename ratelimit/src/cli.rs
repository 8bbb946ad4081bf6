//! The `tollgate-ratelimit` command line: `serve` and `check-config`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_common::cli::ConfigArgs;
use tollgate_common::config::load;

use crate::Config;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-ratelimit",
    version,
    about = "Envoy global rate limiting: exact shared counters, four algorithms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Serve(ConfigArgs),
    /// Validate the config and every limits file (each error with file, line and field) and exit.
    CheckConfig(ConfigArgs),
}

/// Parses the process's arguments and runs the command; the exit code says how it went (2: bad
/// config).
pub async fn main() -> ExitCode {
    let (check_only, args) = match Cli::parse().command {
        Command::Serve(a) => (false, a),
        Command::CheckConfig(a) => (true, a),
    };
    let config = match load::<Config>(&args.sources()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        return match crate::check(&config) {
            Ok(()) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    tollgate_server::telemetry::init_logging(&config.log);
    let shutdown = tollgate_common::shutdown_on_signals();
    match crate::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tollgate-ratelimit failed");
            eprintln!("tollgate-ratelimit: {e}");
            ExitCode::FAILURE
        }
    }
}
