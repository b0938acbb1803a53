//! `cargo xtask demo`: one lab node running the real agent, the sample app of `demo/app.yaml`
//! wired through ward-cni, and `demo/policy.yaml` applied. Prints the reachability matrix
//! measured by real connection attempts, before and after the policy, each cell marked
//! against what the policy should allow; then why (`ward policy explain` of a denied and an
//! allowed path), what happened (`ward observe`, a default-deny drop with its isolating
//! policy and closest miss), and the observed service map, written as an SVG file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use ward_lab::probe::{self, Probe};
use ward_lab::{Family, Node, NodeConfig, PodRef, PodSpec};

/// What the policy should allow: (from, to, why). Every other pair of distinct pods should
/// be denied.
const ALLOWED: [(&str, &str, &str); 3] = [
    ("shop/frontend", "shop/payments", "frontend egress + payments ingress"),
    ("shop/payments", "shop/db", "payments egress + db ingress"),
    ("attacker/compromised", "shop/frontend", "the storefront is public"),
];

pub fn demo(keep: bool) -> anyhow::Result<ExitCode> {
    if !ward_lab::privileged::is_root() {
        bail!("the demo needs root (network namespaces, eBPF)");
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo");
    let app_path = dir.join("app.yaml");
    let policy_path = dir.join("policy.yaml");
    let app = std::fs::read_to_string(&app_path).with_context(|| format!("reading {}", app_path.display()))?;
    let policy = std::fs::read_to_string(&policy_path).with_context(|| format!("reading {}", policy_path.display()))?;
    let (namespaces, pods) = ward_lab::manifest::parse_app(&app).context("parsing demo/app.yaml")?;

    crate::clean_stale_labs();
    println!("demo: starting a lab node with ward-agent");
    // Flow records for allowed flows too, so `ward observe` shows both kinds of path.
    let config = NodeConfig { agent_args: vec!["--flow-events".into(), "all".into()], ..NodeConfig::default() };
    let mut node = Node::start(config).context("starting the lab node")?;
    for ns in &namespaces {
        node.set_namespace(&ns.name, &ns.labels)?;
    }
    node.create_pods(&pods).context("creating the demo pods through ward-cni")?;
    for p in node.pods() {
        let ips: Vec<String> = p.ips().iter().map(ToString::to_string).collect();
        println!("  pod {:<22} {:<28} netns {}", p.pod_ref().to_string(), ips.join(", "), p.netns().name());
    }

    println!("\nBefore any policy (every path should connect):");
    let before = measure(&node, &pods)?;
    let before_ok = print_matrix(&pods, &before, |_, _| true);

    node.write_manifest("shop-policy.yaml", &policy)?;
    node.sync().context("waiting for the agent to enforce demo/policy.yaml")?;
    println!("\nAfter demo/policy.yaml (default deny in shop, then only what the app needs):");
    for (from, to, why) in ALLOWED {
        println!("  should connect: {from} -> {to} ({why})");
    }
    println!("  every other path should be denied");
    let after = measure(&node, &pods)?;
    let after_ok = print_matrix(&pods, &after, expected);

    // Explainable: ask the agent why, for the compromised pod's attempt on the database and
    // for the payments service's allowed path, and show what the datapath counted.
    let cli = node.binaries().cli.clone();
    let ward = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(&cli)
            .arg("--socket")
            .arg(node.socket())
            .args(args)
            .output()
            .with_context(|| format!("running ward {args:?}"))?;
        if !out.status.success() {
            bail!("ward {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    println!(
        "
Why? (ward policy explain)"
    );
    for (from, to, port) in [("attacker/compromised", "shop/db", "5432"), ("shop/payments", "shop/db", "5432")] {
        let text = ward(&["policy", "explain", "--from", from, "--to", to, "--port", port])?;
        for line in text.lines() {
            println!("  {line}");
        }
    }
    // What happened, from the kernel's own flow records: the compromised pod's denied
    // attempt names the policy that isolates the database, the allowed path its rule.
    println!(
        "
What happened (ward observe --to-pod shop/db, newest last):"
    );
    let observed = ward(&["observe", "--to-pod", "shop/db", "--traffic-direction", "INGRESS", "--last", "400"])?;
    for from in ["attacker/compromised", "shop/payments"] {
        // One line per source: the newest of its flows into the database.
        if let Some(line) = observed.lines().rfind(|l| l.contains(&format!(" {from}:"))) {
            println!("  {line}");
        } else {
            println!("  (no flow from {from} in the history)");
        }
    }
    // The observed workload graph, kept after the lab is gone.
    let map_dir = std::env::temp_dir().join("ward-demo");
    std::fs::create_dir_all(&map_dir).with_context(|| format!("creating {}", map_dir.display()))?;
    let map = map_dir.join("service-map.svg");
    let map_arg = map.to_string_lossy().into_owned();
    ward(&["map", "-o", "svg", "--output", &map_arg])?;
    println!("\nThe service map (ward map -o svg): {}", map.display());
    println!(
        "
What the datapath counted (ward status):"
    );
    let status = ward(&["status"])?;
    let mut in_counters = false;
    for line in status.lines() {
        if line.starts_with("Packets by reason") || line.starts_with("Endpoints") {
            in_counters = line.starts_with("Packets");
            println!("  {line}");
        } else if in_counters {
            println!("  {line}");
        }
    }

    let ok = before_ok && after_ok;
    println!(
        "\n{}",
        if ok {
            "demo: every path behaved as the policy says"
        } else {
            "demo: some paths did NOT behave as expected (✗)"
        }
    );

    if keep {
        let name = node.name().to_owned();
        let socket = node.socket();
        let netns = node.netns().name().to_owned();
        let log = node.log_path();
        let pin_dir = node.pin_dir();
        let manifests = node.manifests_dir();
        let cli = node.binaries().cli.clone();
        // An allowed path to try by hand: the first of ALLOWED.
        let (from, to) = (ALLOWED[0].0.parse::<PodRef>()?, ALLOWED[0].1.parse::<PodRef>()?);
        let try_from = node.pod(&from)?.netns().name().to_owned();
        let try_to = node.pod_ip(&to, Family::IPv4)?;
        let try_port = pods.iter().find(|p| p.pod_ref() == to).and_then(|p| p.serves.first()).map_or(0, |s| s.port);
        let script = node.keep()?;
        println!("\nThe lab is still running (node {name}). Inspect it:");
        println!("  {} --socket {} status", cli.display(), socket.display());
        println!("  ip netns exec {netns} ip route            # the node: pod routes, host-side veths");
        println!("  bpftool link show                                   # Ward's TCX links on the pod veths");
        println!("  ls {}    # pinned maps and links", pin_dir.display());
        println!("  ip netns exec {try_from} socat - TCP:{try_to}:{try_port}    # {from} -> {to}");
        println!("  edit files in {} (hot-reloaded); agent log: {}", manifests.display(), log.display());
        println!("Remove it: sh {}", script.display());
    } else {
        drop(node);
        println!("demo: lab removed (use --keep to leave it running)");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn expected(from: &PodRef, to: &PodRef) -> bool {
    let (from, to) = (from.to_string(), to.to_string());
    ALLOWED.iter().any(|(f, t, _)| *f == from && *t == to)
}

/// Connects from every pod to the first served port of every other pod, in parallel.
fn measure(node: &Node, pods: &[PodSpec]) -> anyhow::Result<Vec<Vec<Option<bool>>>> {
    let mut probes: Vec<Probe> = Vec::new();
    let mut cells = Vec::new();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            let Some(serve) = to.serves.first() else {
                continue;
            };
            if i != j {
                probes.push(node.probe_spec(
                    &from.pod_ref(),
                    &to.pod_ref(),
                    serve.port,
                    serve.protocol,
                    Family::IPv4,
                )?);
                cells.push((i, j));
            }
        }
    }
    let outcomes = probe::probe_all(&probes, probe::DEFAULT_PARALLELISM);
    let mut m = vec![vec![None; pods.len()]; pods.len()];
    for ((i, j), o) in cells.into_iter().zip(outcomes) {
        m[i][j] = Some(o.connected());
    }
    Ok(m)
}

/// Prints the matrix with each cell marked against `expect`; true if all cells match.
fn print_matrix(pods: &[PodSpec], m: &[Vec<Option<bool>>], expect: impl Fn(&PodRef, &PodRef) -> bool) -> bool {
    let width = 24;
    let header: Vec<String> = pods
        .iter()
        .map(|p| match p.serves.first() {
            Some(s) => format!("{}:{}", p.pod_ref(), s.port),
            None => p.pod_ref().to_string(),
        })
        .collect();
    let mut line = format!("  {:<width$}", "from \\ to");
    for h in &header {
        line.push_str(&format!("{h:<width$}"));
    }
    println!("{}", line.trim_end());
    let mut all_ok = true;
    let mut notes = Vec::new();
    for (i, from) in pods.iter().enumerate() {
        let mut line = format!("  {:<width$}", from.pod_ref().to_string());
        for (j, to) in pods.iter().enumerate() {
            let cell = match m[i][j] {
                None => "-".to_owned(),
                Some(got) => {
                    let want = expect(&from.pod_ref(), &to.pod_ref());
                    let word = if got { "allowed" } else { "denied" };
                    if got == want {
                        format!("{word} ✓")
                    } else {
                        all_ok = false;
                        notes.push(format!(
                            "{} -> {}: {word}, expected {}",
                            from.pod_ref(),
                            header[j],
                            if want { "allowed" } else { "denied" }
                        ));
                        format!("{word} ✗")
                    }
                }
            };
            line.push_str(&format!("{cell:<width$}"));
        }
        println!("{}", line.trim_end());
    }
    for n in notes {
        println!("  ✗ {n}");
    }
    all_ok
}
