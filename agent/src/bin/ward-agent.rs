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
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// UDP and TCP port of the DNS proxy (FQDN policy) in the agent's network namespace;
    /// 0 disables it (DNS of pods that need it then fails closed).
    #[arg(long, default_value_t = 10053)]
    dns_proxy_port: u16,
    /// Learned addresses live at least this long (seconds), whatever the record's TTL.
    #[arg(long, default_value_t = 5)]
    dns_min_ttl: u64,
    /// Seconds added to every learned address's lifetime.
    #[arg(long, default_value_t = 5)]
    dns_grace: u64,
    /// Addresses kept per pod and name (longer answers are trimmed to this many).
    #[arg(long, default_value_t = 128)]
    dns_max_per_name: usize,
    /// Addresses kept per pod, all names together (the oldest go first).
    #[arg(long, default_value_t = 4096)]
    dns_max_per_pod: usize,
    /// Seconds the DNS keeper holds the proxy's sockets with no agent running.
    #[arg(long, default_value_t = 60)]
    dns_handover_grace: u64,
}

fn main() -> anyhow::Result<()> {
    // The DNS keeper (ward_agent::dns::sockets) is this binary started by the agent itself.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("dns-keeper") {
        ward_agent::dns::sockets::keeper_main(&argv[2..]);
    }
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
        dns: ward_agent::dns::DnsSettings {
            port: args.dns_proxy_port,
            limits: ward_agent::dns::learn::Limits {
                min_ttl: std::time::Duration::from_secs(args.dns_min_ttl),
                grace: std::time::Duration::from_secs(args.dns_grace),
                per_name: args.dns_max_per_name.max(1),
                per_pod: args.dns_max_per_pod.max(1),
            },
            handover_grace: std::time::Duration::from_secs(args.dns_handover_grace),
            ..ward_agent::dns::DnsSettings::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(daemon::run(cfg))
}
