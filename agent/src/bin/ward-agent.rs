//! `ward-agent`: one per node. Watches the datastore, compiles policy into the BPF maps,
//! attaches the programs to pod interfaces and serves the local API.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use ward_agent::api::proto::DEFAULT_SOCKET;
use ward_agent::daemon::{self, Config, FlowEvents};

#[derive(Parser, Debug)]
#[command(name = "ward-agent", version, about = "Ward node agent: eBPF NetworkPolicy enforcement")]
struct Args {
    /// This node's name (also names its pin directory).
    #[arg(long, env = "WARD_NODE_NAME")]
    node_name: String,
    /// Standalone mode: a directory of Kubernetes YAML (Namespace, Pod, NetworkPolicy).
    #[arg(long)]
    manifests: PathBuf,
    /// Local API socket (root only).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where endpoint registrations and identity numbers persist across restarts.
    #[arg(long, default_value = "/var/lib/ward")]
    state_dir: PathBuf,
    /// bpffs mount point; pins live under <bpffs>/ward/v<layout>/<node-name>/.
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// Enter this named network namespace (/run/netns/NAME) before anything else.
    #[arg(long)]
    netns: Option<String>,
    /// This node's own addresses (traffic from them to local pods is always allowed).
    #[arg(long = "host-addr")]
    host_addrs: Vec<IpAddr>,
    /// Which verdicts emit flow events into the ring buffer.
    #[arg(long, value_enum, default_value_t = FlowEvents::Drops)]
    flow_events: FlowEvents,
    /// Most tracked flows one pod may hold; past it the pod's new flows are refused
    /// (`ct_quota`), so one pod's flood never crowds out another's connections.
    #[arg(long, default_value_t = ward_common::maps::CT_QUOTA_DEFAULT)]
    ct_quota: u32,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARD_LOG").unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init()
    } else {
        fmt.init()
    }

    // Network namespaces are per thread: switch while this is the only thread, so every
    // runtime thread starts inside it.
    if let Some(name) = &args.netns {
        let path = PathBuf::from("/run/netns").join(name);
        let f = std::fs::File::open(&path).with_context(|| format!("opening network namespace {}", path.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {}", path.display()))?;
    }
    let cfg = Config {
        node_name: args.node_name,
        manifests: args.manifests,
        socket: args.socket,
        state_dir: args.state_dir,
        bpffs: args.bpffs,
        host_addrs: args.host_addrs,
        flow_events: args.flow_events,
        ct_quota: args.ct_quota,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(daemon::run(cfg))
}
