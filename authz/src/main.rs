//! The `tollgate-authz` binary: `serve`, `check-config`, and `keys` (the admin API's client).

// The binary shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

/// mimalloc, not the C library's allocator: serving a gRPC call makes many small, short-lived
/// allocations (h2 frames, tonic's buffers, the request and the answer), and with mimalloc
/// they cost about an eighth fewer instructions per call (bench/README.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_authz::Config;
use tollgate_common::cli::{CheckArgs, ConfigArgs, check_config, load_for_serve, warn_ignored};

#[derive(Parser)]
#[command(
    name = "tollgate-authz",
    version,
    about = "Envoy external authorization: JWT, OAuth 2.0 introspection, API keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(ConfigArgs),
    /// Validate a config as `serve` would (every error with file, line and field) and exit.
    CheckConfig(CheckArgs),
    /// Manage API keys through the admin API.
    #[command(subcommand)]
    Keys(tollgate_authz::cli::KeysCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // In single-call mode the limits are files too: without file checks they are not read.
        Command::CheckConfig(args) => {
            check_config::<Config, _>(&args, |config, files| match (&config.rate_limit, files) {
                (Some(r), true) => tollgate_limiter::check(&r.limiter),
                _ => Ok(()),
            })
        }
        Command::Serve(args) => {
            // Kept for reloads: the same environment and --set overrides apply again.
            let sources = args.sources();
            let (config, ignored) = match load_for_serve::<Config>(&sources) {
                Ok(l) => (l.config, l.ignored),
                Err(code) => return code,
            };
            tollgate_server::telemetry::init_logging(&config.log);
            warn_ignored(&ignored);
            tollgate_server::conns::raise_fd_limit();
            let shutdown = tollgate_common::shutdown_on_signals();
            match tollgate_authz::run(config, sources, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "tollgate-authz failed");
                    eprintln!("tollgate-authz: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keys(cmd) => match tollgate_authz::cli::run_keys(cmd).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
