//! The `tollgate-ratelimit` command line: `serve` and `check-config`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_common::cli::{CheckArgs, ConfigArgs, check_config, load_for_serve, warn_ignored};

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
    /// Validate the config and every limits file as `serve` would (each error with file, line
    /// and field) and exit.
    CheckConfig(CheckArgs),
}

/// Parses the process's arguments and runs the command; the exit code says how it went (2: bad
/// config).
pub async fn main() -> ExitCode {
    let args = match Cli::parse().command {
        Command::Serve(a) => a,
        Command::CheckConfig(a) => {
            // The limits are files too: without file checks they are not read.
            return check_config::<Config, _>(&a, |config, files| match files {
                true => crate::check(config),
                false => Ok(()),
            });
        }
    };
    let (config, ignored) = match load_for_serve::<Config>(&args.sources()) {
        Ok(l) => (l.config, l.ignored),
        Err(code) => return code,
    };
    tollgate_server::telemetry::init_logging(&config.log);
    warn_ignored(&ignored);
    tollgate_server::conns::raise_fd_limit();
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
