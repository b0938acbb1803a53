//! `ward-cni`: the CNI plugin binary. Reads `CNI_*` from the environment and the network
//! configuration from stdin, prints the result (or the CNI error object) on stdout and logs
//! to stderr (filter from `WARD_CNI_LOG`, default [`DEFAULT_LOG_FILTER`]).

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

/// Warnings and errors; netlink-packet-route warns about every attribute a newer kernel
/// extended, which says nothing about the pod.
const DEFAULT_LOG_FILTER: &str = "warn,netlink_packet_route=error";

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARD_CNI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // stderr ends up in the runtime's log files: no colours.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .init();

    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        // Carry on: commands that need the configuration report it as undecodable.
        tracing::error!("reading stdin: {e}");
        stdin.clear();
    }
    let outcome = ward_agent::cni::run(|name| std::env::var(name).ok(), &stdin);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(outcome.stdout.as_bytes()).and_then(|()| stdout.flush()) {
        tracing::error!("writing the result: {e}");
        return ExitCode::FAILURE;
    }
    if outcome.exit_code == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
