//! Facts about the machine a report was measured on: without them a figure means nothing.

use std::process::Command;

/// (what, value) pairs for the report's machine table.
pub fn facts() -> Vec<(String, String)> {
    let mut f = Vec::new();
    let mut add = |k: &str, v: String| f.push((k.to_owned(), if v.is_empty() { "unknown".to_owned() } else { v }));
    add("CPU", cpu_model());
    add("cores (online)", std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_default());
    add("memory", mem_total());
    add("kernel", first_line(&output("uname", &["-srvm"])));
    add("OS", os_release());
    add("Ward commit", first_line(&output("git", &["rev-parse", "--short=12", "HEAD"])));
    add("rustc", first_line(&output("rustc", &["--version"])));
    add("iptables", first_line(&output("iptables", &["--version"])));
    add("nftables", first_line(&output("nft", &["--version"])));
    add("sockperf", first_line(&output("sockperf", &["--version"])));
    add("iperf3", first_line(&output("iperf3", &["--version"])));
    // Node-wide: the CNI figures set it per pod, everything else runs with what is here.
    add(
        "RCU grace periods",
        match std::fs::read_to_string("/sys/kernel/rcu_expedited").map(|v| v.trim().to_owned()).as_deref() {
            Ok("0") => "normal (/sys/kernel/rcu_expedited = 0)".into(),
            Ok(v) => format!("expedited (/sys/kernel/rcu_expedited = {v})"),
            Err(_) => String::new(),
        },
    );
    add(
        "hardware counters",
        if perf_counters() {
            "available".into()
        } else {
            "not available (VM): CPU cost from bpf run-time stats".into()
        },
    );
    f
}

/// Now, UTC, as `2026-11-26T10:05:00Z`.
pub fn now_utc() -> String {
    first_line(&output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_default()
}

fn mem_total() -> String {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<f64>().ok())
        .map(|kb| crate::stats::bytes(kb * 1024.0))
        .unwrap_or_default()
}

fn os_release() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

/// Whether `perf stat` can count instructions here (many VMs cannot).
fn perf_counters() -> bool {
    let out = Command::new("perf").args(["stat", "-x,", "-e", "instructions", "true"]).output();
    out.is_ok_and(|o| {
        let err = String::from_utf8_lossy(&o.stderr);
        o.status.success() && !err.contains("not supported") && !err.contains("not counted")
    })
}

/// A command's stdout (stderr when stdout is empty: some tools print versions there).
pub fn output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            if out.trim().is_empty() { String::from_utf8_lossy(&o.stderr).into_owned() } else { out }
        }
        Err(_) => String::new(),
    }
}

fn first_line(s: &str) -> String {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn facts_name_the_cpu_cores_and_kernel() {
        let f = super::facts();
        let get = |k: &str| f.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
        assert!(get("kernel").starts_with("Linux"), "{f:?}");
        assert!(get("cores (online)").parse::<usize>().is_ok_and(|n| n >= 1), "{f:?}");
        assert!(get("memory").ends_with("iB"), "{f:?}");
        assert!(super::now_utc().ends_with('Z'));
    }
}
