//! `ward`: the operator CLI. Talks to the local agent over its API socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ward_agent::api::client;
use ward_agent::api::proto::{DEFAULT_SOCKET, Request, Response};
use ward_agent::cli;

#[derive(Parser, Debug)]
#[command(name = "ward", version, about = "Inspect and explain Ward's enforcement on this node")]
struct Args {
    /// The agent's API socket.
    #[arg(long, global = true, env = "WARD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Agent health: datastore, counts, rejected, duplicated and defaulted objects, map
    /// usage, counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Local endpoints with their identity and isolation.
    Endpoints {
        #[arg(long)]
        json: bool,
    },
    /// Policy questions.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Flow records of this node: recent, live (--follow) or from a file (--input-file),
    /// filtered as hubble's are (`ward observe --help`).
    #[command(disable_help_flag = true)]
    Observe {
        /// Options and filters, read in order (`--not` negates the filter after it).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Sends one real probe from a pod of this node and shows what each program did to it.
    Trace {
        /// `namespace/pod`: a pod of this node (the probe leaves from inside it).
        #[arg(long)]
        from: String,
        /// `namespace/pod`, or an IP address.
        #[arg(long)]
        to: String,
        /// `PORT/PROTOCOL` (TCP or UDP; a bare port is TCP).
        #[arg(long)]
        port: String,
        /// `json` prints the whole report as one JSON object.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// The observed workload graph as SVG, Graphviz DOT or an HTML page (`ward map --help`).
    #[command(disable_help_flag = true)]
    Map {
        /// Options and filters as `ward observe`'s, plus -o svg|dot|html and --output FILE.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Why is traffic from one pod (or address) to another allowed or denied?
    Explain {
        /// `namespace/pod`, or an IP address.
        #[arg(long)]
        from: String,
        /// `namespace/pod`, or an IP address.
        #[arg(long)]
        to: String,
        /// TCP, UDP or SCTP.
        #[arg(long, default_value = "TCP")]
        protocol: String,
        #[arg(long)]
        port: u16,
        /// Judge this HTTP request method against the destination's HTTP rules (with --http-path).
        #[arg(long, requires = "http_path")]
        http_method: Option<String>,
        /// The request target of that request, as a client sends it (query and encoding included).
        #[arg(long, requires = "http_method")]
        http_path: Option<String>,
    },
    /// NetworkPolicy YAML allowing exactly the observed flows of a namespace (by workload
    /// labels), from the agent's flow history or an exported file.
    Suggest {
        #[arg(long)]
        namespace: String,
        /// Read flows from a JSON-lines file (`ward observe -o json`, the exporter) instead of the agent.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// Only the N most recent matching flows (default: all of the history).
        #[arg(long)]
        last: Option<usize>,
        /// DROPPED flows count as observed too, not only FORWARDED ones.
        #[arg(long)]
        include_dropped: bool,
        /// Write the YAML to this file instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// What the audited policies (policy.ward.dev/mode: audit) would deny if enforced: per
    /// policy, the distinct flows recorded with the verdict AUDIT, with counts and newest time.
    AuditReport {
        /// From this time: RFC 3339 or an age (90s, 5m, 2h, 7d).
        #[arg(long, default_value = "7d")]
        since: String,
        /// Up to this time (RFC 3339 or an age).
        #[arg(long)]
        until: Option<String>,
        /// Only this policy (`namespace/name` or `name`); repeat for more.
        #[arg(long)]
        policy: Vec<String>,
        /// Read flows from a JSON-lines file (`ward observe -o json`, the exporter) instead of the agent.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let req = match &args.cmd {
        Cmd::Observe { args: observe } => return cli::observe::run(&args.socket, observe),
        Cmd::Map { args: map } => return cli::map::run(&args.socket, map),
        Cmd::Trace { from, to, port, output } => {
            let a = cli::trace::TraceArgs {
                from: from.clone(),
                to: to.clone(),
                port: port.clone(),
                json: output == "json",
            };
            return cli::trace::run(&args.socket, &a);
        }
        Cmd::Policy { cmd: PolicyCmd::Suggest { namespace, input_file, last, include_dropped, output } } => {
            let a = cli::suggest::SuggestArgs {
                namespace: namespace.clone(),
                input_file: input_file.clone(),
                last: *last,
                include_dropped: *include_dropped,
                output: output.clone(),
            };
            return cli::suggest::run(&args.socket, &a);
        }
        Cmd::Policy { cmd: PolicyCmd::AuditReport { since, until, policy, input_file, json } } => {
            let now = ward_agent::flows::record::FlowTime::now();
            let time = |flag: &str, v: &str| {
                cli::observe::parse_time(v, now).map_err(|e| eprintln!("ward policy audit-report: --{flag} {v:?}: {e}"))
            };
            let (Ok(since), Ok(until)) = (time("since", since), until.as_deref().map(|u| time("until", u)).transpose())
            else {
                return ExitCode::from(2);
            };
            let a = cli::audit::AuditArgs {
                since,
                until,
                policies: policy.clone(),
                input_file: input_file.clone(),
                json: *json,
            };
            return cli::audit::run(&args.socket, &a);
        }
        Cmd::Status { .. } => Request::Status,
        Cmd::Endpoints { .. } => Request::Endpoints,
        Cmd::Policy { cmd: PolicyCmd::Explain { from, to, protocol, port, http_method, http_path } } => {
            Request::Explain {
                from: from.clone(),
                to: to.clone(),
                protocol: protocol.clone(),
                port: *port,
                http_method: http_method.clone(),
                http_path: http_path.clone(),
            }
        }
    };
    let resp = match client::call(&args.socket, &req, Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ward: {e}");
            return ExitCode::from(2);
        }
    };
    let json = matches!(args.cmd, Cmd::Status { json: true } | Cmd::Endpoints { json: true });
    match resp {
        Response::Error { message } => {
            eprintln!("ward: {message}");
            ExitCode::FAILURE
        }
        other if json => match serde_json::to_string_pretty(&other) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ward: {e}");
                ExitCode::FAILURE
            }
        },
        other => {
            print!("{}", cli::render(&other));
            ExitCode::SUCCESS
        }
    }
}
