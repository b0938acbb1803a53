//! Removing what labs of dead processes left behind (a run killed by a timeout or Ctrl-C
//! never reaches its `Drop`s): network namespaces, scratch directories and pins named
//! `ward-<pid>-<n>...` whose `<pid>` no longer runs, and agents started for such nodes. A
//! lab kept on purpose (`demo --keep`, which writes `cleanup.sh`) is left alone.
//!
//! Lab clusters ([`crate::cluster`]) leave more: their programs and containers, mounts under
//! their directory, cgroups named after their nodes, pod logs, and kubelet's machine-wide
//! settings. Those go first, before the namespaces and directories they live in.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::NETNS_DIR;

/// The pid in a lab name `ward-<pid>-<n>...`.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("ward-")?;
    let (pid, rest) = rest.split_once('-')?;
    let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if n.is_empty() {
        return None;
    }
    pid.parse().ok()
}

pub(crate) fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM would still mean it exists.
    !matches!(kill(Pid::from_raw(pid), None), Err(nix::Error::ESRCH))
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect())
        .unwrap_or_default()
}

/// Removes leftovers of dead lab owners; returns a line per thing removed.
pub fn stale_labs(bpffs: &Path) -> Vec<String> {
    let tmp = std::env::temp_dir();
    // Owners whose lab was kept on purpose.
    let kept: BTreeSet<i32> = entries(&tmp)
        .into_iter()
        .filter(|(_, p)| p.join("cleanup.sh").exists())
        .filter_map(|(n, _)| owner_pid(&n))
        .collect();
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| !kept.contains(&pid) && !alive(pid));
    let mut removed = Vec::new();

    // Agents first, so nothing re-pins while we clean.
    for (pid_name, proc_dir) in entries(Path::new("/proc")) {
        let Ok(pid) = pid_name.parse::<i32>() else { continue };
        let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_agent = args.first().is_some_and(|a| a.ends_with("/ward-agent") || a == "ward-agent");
        let node = args.iter().skip_while(|a| *a != "--node-name").nth(1);
        if is_agent && node.is_some_and(|n| stale(n)) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            removed.push(format!("killed ward-agent {pid} of node {}", node.map_or("?", |n| n)));
        }
    }
    removed.extend(stale_clusters(&tmp, &stale));
    for (name, _) in entries(Path::new(NETNS_DIR)) {
        if stale(&name) && crate::cmd::ip(&["netns", "del", &name]).is_ok() {
            removed.push(format!("deleted network namespace {name}"));
        }
    }
    // Every layout's directory: a killed run of an older build leaves its own.
    let layouts: Vec<std::path::PathBuf> = entries(&bpffs.join("ward")).into_iter().map(|(_, p)| p).collect();
    for (name, path) in layouts.iter().flat_map(|dir| entries(dir)) {
        if stale(&name) && fs::remove_dir_all(&path).is_ok() {
            removed.push(format!("removed pins {}", path.display()));
        }
    }
    for (name, path) in entries(Path::new(crate::dnslab::NETNS_ETC)) {
        if stale(&name) && fs::remove_dir_all(&path).is_ok() {
            removed.push(format!("removed {}", path.display()));
        }
    }
    for (name, path) in entries(&tmp) {
        if stale(&name) && path.is_dir() && fs::remove_dir_all(&path).is_ok() {
            removed.push(format!("removed {}", path.display()));
        }
    }
    removed
}

/// The cluster part of [`stale_labs`]: for each `$TMPDIR/ward-<pid>-<n>-cluster` of a dead
/// owner, its processes (by the directory on their command lines), its nodes' pod logs, its
/// cgroups and its mounts; then the kubelet settings if no live cluster holds them.
fn stale_clusters(tmp: &Path, stale: &dyn Fn(&str) -> bool) -> Vec<String> {
    use crate::cluster::{ClusterNode, sysctl_guard, teardown};
    let mut removed = Vec::new();
    for (name, path) in entries(tmp) {
        if !(name.ends_with("-cluster") && stale(&name) && path.is_dir()) {
            continue;
        }
        removed.extend(teardown::kill_processes_mentioning(&format!("{}/", path.display())));
        for (_, node_dir) in entries(&path) {
            let (root, log) = (ClusterNode::kubelet_root_in(&node_dir), ClusterNode::log_in(&node_dir, "kubelet"));
            removed.extend(teardown::remove_pod_logs(&root, &log));
            let containerd = crate::cluster::containerd::ContainerdPaths { dir: node_dir.join("containerd") };
            removed.extend(teardown::remove_runtime_leftovers(&containerd.state(), &containerd.root()));
        }
    }
    let mut cgroups: BTreeSet<String> = BTreeSet::new();
    for h in teardown::cgroup_hierarchies() {
        cgroups.extend(entries(&h).into_iter().map(|(n, _)| n).filter(|n| stale(n)));
    }
    for name in cgroups {
        match teardown::remove_cgroups(&name) {
            Ok(lines) => removed.extend(lines),
            Err(e) => removed.push(format!("could not remove: {e}")),
        }
    }
    for (name, path) in entries(tmp) {
        if name.ends_with("-cluster") && stale(&name) {
            match teardown::unmount_under(&path) {
                Ok(0) => {}
                Ok(n) => removed.push(format!("unmounted {n} mounts under {}", path.display())),
                Err(e) => removed.push(format!("could not unmount: {e}")),
            }
        }
    }
    teardown::remove_empty_machine_dirs();
    match sysctl_guard::SysctlPlaces::default().clean_stale() {
        Ok(lines) => removed.extend(lines),
        Err(e) => removed.push(format!("could not restore kubelet's settings: {e}")),
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_come_from_lab_names_only() {
        assert_eq!(owner_pid("ward-123-4-x-a"), Some(123));
        assert_eq!(owner_pid("ward-123-4"), Some(123));
        assert_eq!(owner_pid("ward-123-lab"), None);
        assert_eq!(owner_pid("ward-abc-1"), None);
        assert_eq!(owner_pid("smoke-node"), None);
        assert_eq!(owner_pid("ward-head"), None);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(alive(std::process::id() as i32));
    }
}
