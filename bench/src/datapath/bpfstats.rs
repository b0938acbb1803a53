//! CPU cost of Ward's programs: the kernel's BPF run-time statistics (`run_time_ns`,
//! `run_cnt` per program), switched on only around the runs that read them, and read for
//! exactly the programs attached to this lab node's pods (found through the node's pinned
//! TCX links, so another Ward node on the machine never mixes in).
//!
//! Statistics are switched on with `BPF_ENABLE_STATS`, the file-descriptor form of
//! `kernel.bpf_stats_enabled`: on while the descriptor is open, so nothing global is left
//! changed when the process dies, and a concurrent user of the sysctl is not overridden.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics are on while this lives.
pub struct StatsOn {
    _fd: OwnedFd,
}

impl StatsOn {
    pub fn enable() -> anyhow::Result<StatsOn> {
        // union bpf_attr for BPF_ENABLE_STATS: { __u32 type; }, zero-padded.
        let mut attr = [0u8; 16];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: attr is a valid, initialised bpf_attr of the size we pass.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_mut_ptr(), attr.len() as u32) };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(StatsOn { _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }
}

/// Cumulative counters of one program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The program ids behind a node's pinned links (`<pin_dir>/links/*`), by program name.
pub fn node_programs(pin_dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u32>>> {
    let links = pin_dir.join("links");
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir(&links).with_context(|| format!("reading {}", links.display()))? {
        let path = entry?.path();
        let link = bpftool(&["link", "show", "pinned", &path.to_string_lossy()])?;
        let id = link["prog_id"].as_u64().with_context(|| format!("no prog_id for {}", path.display()))? as u32;
        let prog = bpftool(&["prog", "show", "id", &id.to_string()])?;
        let name = prog["name"].as_str().unwrap_or("?").to_owned();
        let ids = out.entry(name).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if out.is_empty() {
        bail!("no pinned links under {}", links.display());
    }
    Ok(out)
}

/// Current counters per program name (summed over its ids).
pub fn read(programs: &BTreeMap<String, Vec<u32>>) -> anyhow::Result<BTreeMap<String, ProgStats>> {
    let mut out = BTreeMap::new();
    for (name, ids) in programs {
        let mut sum = ProgStats::default();
        for id in ids {
            let p = bpftool(&["prog", "show", "id", &id.to_string()])?;
            sum.run_time_ns += p["run_time_ns"].as_u64().unwrap_or(0);
            sum.run_cnt += p["run_cnt"].as_u64().unwrap_or(0);
        }
        out.insert(name.clone(), sum);
    }
    Ok(out)
}

/// Nanoseconds per invocation of each program between two readings (`None` if it never ran).
pub fn ns_per_run(
    before: &BTreeMap<String, ProgStats>,
    after: &BTreeMap<String, ProgStats>,
) -> BTreeMap<String, Option<f64>> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let (dt, dn) = (a.run_time_ns.saturating_sub(b.run_time_ns), a.run_cnt.saturating_sub(b.run_cnt));
            (name.clone(), (dn > 0).then(|| dt as f64 / dn as f64))
        })
        .collect()
}

fn bpftool(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("bpftool").args(args).arg("--json").output().context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {} printed no JSON", args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_per_invocation_from_two_readings() {
        let s = |t, n| ProgStats { run_time_ns: t, run_cnt: n };
        let before = BTreeMap::from([("from_pod".to_owned(), s(1000, 10)), ("to_pod".to_owned(), s(50, 5))]);
        let after = BTreeMap::from([("from_pod".to_owned(), s(3000, 30)), ("to_pod".to_owned(), s(50, 5))]);
        let r = ns_per_run(&before, &after);
        assert_eq!(r["from_pod"], Some(100.0));
        assert_eq!(r["to_pod"], None, "no invocations in between");
    }
}
