//! `cargo xtask demo --cluster`: the lab's real Kubernetes 1.20.2 cluster with Ward as its
//! CNI, the sample shop applied with kubectl (Deployments, Services, NetworkPolicies from
//! `demo/cluster-app.yaml` and `demo/policy.yaml`), and a reachability matrix measured from
//! inside real kubelet-run pods, to every pod's address and through every Service, each cell
//! marked against what the policy should allow. Torn down at the end unless `--keep`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ward_lab::cluster::{Cluster, ClusterConfig, Kubectl, WardCni};

/// The demo's pods: (namespace, app, the port it serves).
const APPS: [(&str, &str, u16); 4] =
    [("shop", "frontend", 80), ("shop", "payments", 8080), ("shop", "db", 5432), ("attacker", "compromised", 4444)];
/// What the policy allows (from app, to app), as in the standalone demo.
const ALLOWED: [(&str, &str); 3] = [("frontend", "payments"), ("payments", "db"), ("compromised", "frontend")];
const READY_TIMEOUT: Duration = Duration::from_secs(240);
const POLICY_SETTLE: Duration = Duration::from_secs(60);

pub fn demo(keep: bool) -> anyhow::Result<ExitCode> {
    if !ward_lab::privileged::is_root() {
        bail!("the cluster demo needs root (network namespaces, kubelet, containerd, eBPF)");
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("reading demo/{f}"));
    let (app, policy) = (read("cluster-app.yaml")?, read("policy.yaml")?);
    crate::clean_stale_labs();
    println!("demo: starting a lab Kubernetes cluster with Ward as its CNI (about a minute)");
    let cluster = Cluster::start(ClusterConfig { nodes: 1, cni: Arc::new(WardCni::locate()?), ..ClusterConfig::default() })
        .context("starting the lab cluster")?;
    let k = cluster.kubectl().clone();
    let version: serde_json::Value =
        serde_json::from_str(&k.run(&["get", "--raw", "/version"])?).context("the API server's /version")?;
    println!(
        "demo: cluster {} up in {:.0}s; API server {} ({})",
        cluster.name(),
        cluster.startup_time().as_secs_f64(),
        version["gitVersion"].as_str().unwrap_or("?"),
        cluster.api().server
    );
    k.apply(&app).context("kubectl apply demo/cluster-app.yaml")?;
    let pods = wait_pods(&k)?;
    let services = services(&k)?;
    for (app, (ns, pod, ip)) in &pods {
        println!("  {ns}/{app:<12} pod {pod:<36} {ip:<14} service {}", services.get(app).map_or("-", String::as_str));
    }

    println!("\nBefore any policy (every path should connect):");
    let ok_before = matrix(&k, &pods, &services, |_, _| true);
    k.apply(&policy).context("kubectl apply demo/policy.yaml")?;
    println!("\nAfter demo/policy.yaml (default deny in shop, then only what the app needs):");
    let allowed = |from: &str, to: &str| ALLOWED.contains(&(from, to));
    let settle = Instant::now();
    let mut ok_after = matrix(&k, &pods, &services, allowed);
    // The agent enforces within a pass; a cell measured before it did is measured again.
    while !ok_after && settle.elapsed() < POLICY_SETTLE {
        std::thread::sleep(Duration::from_secs(5));
        println!("  (measuring again: policy changes take a pass to reach the kernel)");
        ok_after = matrix(&k, &pods, &services, allowed);
    }
    let summary = format!(
        "demo: {} ({} paths through pod addresses and Services)",
        if ok_before && ok_after { "every path as the policy says" } else { "some paths differ from what the policy says" },
        2 * pods.len() * (pods.len() - 1)
    );
    println!("\n{summary}");
    if keep {
        let cp = cluster.control_plane_netns().map(|n| n.name().to_owned()).unwrap_or_default();
        println!(
            "demo: left running. kubectl against it:\n  ip netns exec {cp} {} --kubeconfig {} get pods -A\n\
             remove it with: cargo xtask lab-clean",
            cluster.cache().program(ward_lab::cluster::cache::KUBECTL).display(),
            cluster.admin_kubeconfig().display()
        );
        std::mem::forget(cluster);
    }
    Ok(if ok_before && ok_after { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// app → (namespace, pod name, pod IP), once every pod is Running with an address.
fn wait_pods(k: &Kubectl) -> anyhow::Result<BTreeMap<String, (String, String, String)>> {
    Ok(k.wait_for("the demo's pods Running", READY_TIMEOUT, |k| {
        let mut out = BTreeMap::new();
        for (ns, app, _) in APPS {
            let pods = k.get_json(&["-n", ns, "pods", "-l", &format!("app={app}")])?;
            let running = pods["items"].as_array().into_iter().flatten().find(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            });
            match running.and_then(|p| Some((p["metadata"]["name"].as_str()?, p["status"]["podIP"].as_str()?))) {
                Some((name, ip)) => {
                    out.insert(app.to_owned(), (ns.to_owned(), name.to_owned(), ip.to_owned()));
                }
                None => return Ok(Err(format!("{ns}/{app} not Running yet"))),
            }
        }
        Ok(Ok(out))
    })?)
}

/// app → `ClusterIP:port` of its Service.
fn services(k: &Kubectl) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (ns, app, _) in APPS {
        let s = k.get_json(&["-n", ns, "service", app])?;
        let ip = s["spec"]["clusterIP"].as_str().context("a ClusterIP")?;
        let port = s["spec"]["ports"][0]["port"].as_u64().context("a port")?;
        out.insert(app.to_owned(), format!("{ip}:{port}"));
    }
    Ok(out)
}

/// Probes every pair from inside the client pod (`agnhost connect`), to the pod's address
/// and through its Service; prints the matrix with each cell against `allowed`. True if
/// every cell matched.
fn matrix(
    k: &Kubectl,
    pods: &BTreeMap<String, (String, String, String)>,
    services: &BTreeMap<String, String>,
    allowed: impl Fn(&str, &str) -> bool,
) -> bool {
    let apps: Vec<&str> = APPS.iter().map(|(_, a, _)| *a).collect();
    let mut all_ok = true;
    print!("  {:<14}", "from \\ to");
    for to in &apps {
        print!(" {to:>12} {:>8}", "svc");
    }
    println!();
    for from in &apps {
        let Some((ns, pod, _)) = pods.get(*from) else { continue };
        print!("  {from:<14}");
        for to in &apps {
            if from == to {
                // A pod reaching its own address never leaves it: nothing to measure.
                print!(" {:>12} {:>8}", "·", "·");
                continue;
            }
            let port = APPS.iter().find(|(_, a, _)| a == to).map_or(0, |(_, _, p)| *p);
            let direct = pods.get(*to).map(|(_, _, ip)| format!("{ip}:{port}"));
            for target in [direct, services.get(*to).cloned()] {
                let Some(target) = target else { continue };
                let got = connects(k, ns, pod, &target);
                let want = allowed(from, to);
                all_ok &= got == want;
                let cell = format!("{}{}", if got { "ok" } else { "--" }, if got == want { "" } else { "!" });
                print!(" {cell:>12}");
            }
        }
        println!();
    }
    println!("  (ok connected, -- refused or timed out; ! differs from what the policy says)");
    all_ok
}

fn connects(k: &Kubectl, ns: &str, pod: &str, target: &str) -> bool {
    matches!(k.run_status(&["-n", ns, "exec", pod, "--", "/agnhost", "connect", target, "--timeout=3s"]), Ok((0, _)))
}
