//! `ward-agent`: one per node. Watches the datastore, compiles policy into the BPF maps,
//! attaches the programs to pod interfaces, serves the local API and, once its datastore has
//! synced, writes the node's CNI conflist (`--cni-conf-dir`). `ward-agent install-cni`
//! copies the `ward-cni` binary into the runtime's plugin directory (the install manifests'
//! init step).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use ward_agent::api::proto::DEFAULT_SOCKET;
use ward_agent::cni::install::{self, ConflistSpec};
use ward_agent::cni::netconf::DEFAULT_DATA_DIR;
use ward_agent::daemon::{self, Config, Datastore, FlowEvents, LocalDelivery};
use ward_agent::datastore::kubernetes::KubeSettings;

#[derive(Parser, Debug)]
#[command(name = "ward-agent", version, about = "Ward node agent: eBPF NetworkPolicy enforcement")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Copy the ward-cni plugin into the runtime's plugin directory (atomically) and exit.
    InstallCni {
        /// The runtime's plugin directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The plugin binary to install (default: `ward-cni` beside this executable).
        #[arg(long)]
        source: Option<PathBuf>,
    },
    /// Print the WardNetworkPolicy CustomResourceDefinition (YAML), generated from the types
    /// the agent decodes (`manifests/crd-wardnetworkpolicy.yaml` is this output).
    PrintCrd,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// This node's name (also names its pin directory); in a DaemonSet from the downward
    /// API (`spec.nodeName`).
    #[arg(long, env = "WARD_NODE_NAME", required = true)]
    node_name: Option<String>,
    /// Standalone mode: a directory of Kubernetes YAML (Namespace, Pod, NetworkPolicy).
    #[arg(long, required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    manifests: Option<PathBuf>,
    /// Cluster mode: watch the Kubernetes API (in-cluster ServiceAccount, or --kubeconfig).
    #[arg(long, env = "WARD_KUBERNETES")]
    kubernetes: bool,
    /// The kubeconfig of cluster mode (default: in-cluster configuration).
    #[arg(long, env = "KUBECONFIG", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// The cluster's Service range (repeatable, one per family): traffic to it is decided
    /// after kube-proxy's translation.
    #[arg(long = "service-cidr", env = "WARD_SERVICE_CIDRS", value_delimiter = ',')]
    service_cidrs: Vec<ipnet::IpNet>,
    /// An interface Service traffic leaves the node by (repeatable). Default with
    /// --service-cidr: every interface but loopback and the pods' veths, at start.
    #[arg(long = "uplink", env = "WARD_UPLINKS", value_delimiter = ',')]
    uplinks: Vec<String>,
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
    #[arg(long, env = "WARD_FLOW_EVENTS", value_enum, default_value_t = FlowEvents::Drops)]
    flow_events: FlowEvents,
    /// How packets between two pods of this node are delivered once both decisions allowed
    /// them: `peer` by the datapath straight into the receiver's namespace (skipping the
    /// node's routing and netfilter), `route` by the node's routing.
    #[arg(long, env = "WARD_LOCAL_DELIVERY", value_enum, default_value_t = LocalDelivery::Peer)]
    local_delivery: LocalDelivery,
    /// Flow records kept in memory for `ward observe` (the oldest go first).
    #[arg(long, default_value_t = ward_agent::flows::history::DEFAULT_HISTORY)]
    flow_history: usize,
    /// Also write every flow record to this file, one JSON record per line (`ward observe
    /// --input-file` reads it), rotated by size.
    #[arg(long)]
    flow_export_file: Option<PathBuf>,
    /// Size at which the export file is rotated to `<file>.1`.
    #[arg(long, default_value_t = ward_agent::flows::export::DEFAULT_MAX_BYTES)]
    flow_export_max_bytes: u64,
    /// Rotated export files kept (`<file>.1` .. `<file>.N`).
    #[arg(long, default_value_t = ward_agent::flows::export::DEFAULT_KEEP)]
    flow_export_keep: usize,
    /// Most tracked flows one pod may hold; past it the pod's new flows are refused
    /// (`ct_quota`), so one pod's flood never crowds out another's connections.
    #[arg(long, default_value_t = ward_common::maps::CT_QUOTA_DEFAULT)]
    ct_quota: u32,
    /// Serve `/healthz`, `/readyz` (the readiness probe) and `/metrics` (Prometheus) here.
    #[arg(long, env = "WARD_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Write `<dir>/10-ward.conflist` once the datastore has synced (never removed).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Where the plugins named in the conflist live (their VERSION answers bound its versions).
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The CNI network name.
    #[arg(long, default_value = "ward")]
    cni_network: String,
    /// The node's pod CIDRs (at most one per family) for Ward's own IPAM; also cluster pod
    /// ranges for policy (an address in one without a known pod is `identity_unknown`).
    #[arg(long = "pod-cidr")]
    pod_cidrs: Vec<ipnet::IpNet>,
    /// Delegate IPAM instead: the plugin's `ipam` object as JSON, e.g. '{"type":"host-local",...}'.
    #[arg(long)]
    cni_ipam: Option<String>,
    /// The plugin's state directory (`dataDir`).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    cni_data_dir: PathBuf,
    /// The pod interface MTU.
    #[arg(long)]
    cni_mtu: Option<u32>,
    /// A plugin to chain after ward-cni, as its JSON object (repeatable, in order), e.g.
    /// '{"type":"portmap","capabilities":{"portMappings":true}}'.
    #[arg(long = "cni-chain")]
    cni_chain: Vec<String>,
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

impl RunArgs {
    fn conflist(&self) -> anyhow::Result<Option<ConflistSpec>> {
        let Some(conf_dir) = &self.cni_conf_dir else { return Ok(None) };
        let mut ward = Map::new();
        ward.insert("agentSocket".into(), Value::from(self.socket.to_string_lossy().into_owned()));
        ward.insert("dataDir".into(), Value::from(self.cni_data_dir.to_string_lossy().into_owned()));
        match (&self.cni_ipam, self.pod_cidrs.is_empty()) {
            (Some(_), false) => anyhow::bail!("--pod-cidr and --cni-ipam: give one, not both"),
            // Cluster mode reads them from this node's Node object.
            (None, true) if self.kubernetes => {}
            (None, true) => {
                anyhow::bail!("--cni-conf-dir needs the pod CIDRs (--pod-cidr) or an IPAM plugin (--cni-ipam)")
            }
            (None, false) => {
                ward.insert(
                    "podCIDRs".into(),
                    Value::from(self.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>()),
                );
            }
            (Some(ipam), true) => {
                let ipam: Value = serde_json::from_str(ipam).context("--cni-ipam: not JSON")?;
                ward.insert("ipam".into(), ipam);
            }
        }
        if let Some(mtu) = self.cni_mtu {
            ward.insert("mtu".into(), Value::from(mtu));
        }
        let chain =
            self.cni_chain.iter().enumerate().map(|(i, c)| install::chain_entry(i, c)).collect::<Result<_, _>>()?;
        Ok(Some(ConflistSpec {
            conf_dir: conf_dir.clone(),
            bin_dir: self.cni_bin_dir.clone(),
            network: self.cni_network.clone(),
            ward,
            chain,
        }))
    }
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
    if args.run.log_json {
        fmt.json().init()
    } else {
        fmt.init()
    }

    if let Some(Cmd::PrintCrd) = args.command {
        let crd = ward_policy::crd::ward_network_policy_crd();
        print!("{}", ward_policy::crd::to_yaml(&crd)?);
        return Ok(());
    }
    if let Some(Cmd::InstallCni { bin_dir, source }) = args.command {
        let source = match source {
            Some(s) => s,
            None => std::env::current_exe().context("locating ward-agent")?.with_file_name(install::PLUGIN_TYPE),
        };
        let installed = install::install_binary(&source, &bin_dir)?;
        tracing::info!(path = %installed.display(), "ward-cni installed");
        return Ok(());
    }
    let run = args.run;
    let conflist = run.conflist()?;

    // Network namespaces are per thread: switch while this is the only thread, so every
    // runtime thread starts inside it.
    if let Some(name) = &run.netns {
        let path = PathBuf::from("/run/netns").join(name);
        let f = std::fs::File::open(&path).with_context(|| format!("opening network namespace {}", path.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {}", path.display()))?;
    }
    let datastore = match (run.kubernetes, run.manifests) {
        (true, _) => Datastore::Kubernetes(KubeSettings { kubeconfig: run.kubeconfig }),
        (false, Some(dir)) => Datastore::Directory(dir),
        (false, None) => anyhow::bail!("give --manifests DIR (standalone) or --kubernetes (cluster mode)"),
    };
    let cfg = Config {
        node_name: run.node_name.context("--node-name is required")?,
        datastore,
        service_cidrs: run.service_cidrs,
        pod_cidrs: run.pod_cidrs,
        uplinks: run.uplinks,
        metrics_addr: run.metrics_addr,
        socket: run.socket,
        state_dir: run.state_dir,
        bpffs: run.bpffs,
        host_addrs: run.host_addrs,
        flow_events: run.flow_events,
        local_delivery: run.local_delivery,
        flow_history: run.flow_history,
        flow_export: run.flow_export_file.map(|path| ward_agent::flows::export::ExportSettings {
            path,
            max_bytes: run.flow_export_max_bytes.max(1),
            keep: run.flow_export_keep,
        }),
        ct_quota: run.ct_quota,
        conflist,
        dns: ward_agent::dns::DnsSettings {
            port: run.dns_proxy_port,
            limits: ward_agent::dns::learn::Limits {
                min_ttl: std::time::Duration::from_secs(run.dns_min_ttl),
                grace: std::time::Duration::from_secs(run.dns_grace),
                per_name: run.dns_max_per_name.max(1),
                per_pod: run.dns_max_per_pod.max(1),
            },
            handover_grace: std::time::Duration::from_secs(run.dns_handover_grace),
            ..ward_agent::dns::DnsSettings::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(daemon::run(cfg))
}
