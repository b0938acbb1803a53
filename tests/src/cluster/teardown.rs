//! Removing what a cluster leaves on the machine outside its network namespaces, both when a
//! cluster is dropped and, for runs that were killed, from `cargo xtask lab-clean`: processes
//! started for it (every one names the cluster's directory on its command line, shims
//! included: `-address <dir>/.../containerd.sock`), containers (in the node's cgroup root,
//! named after the node), mounts under the cluster's directory (kubelet's bind mount of its
//! root directory onto itself, secret volumes, container root filesystems, the pods' network
//! namespaces), the cgroups, and the pod log directories kubelet keeps in `/var/log/pods`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where kubelet 1.20 keeps pod logs whatever its root directory (a constant in kubelet).
pub const POD_LOGS_DIR: &str = "/var/log/pods";
pub const CONTAINER_LOGS_DIR: &str = "/var/log/containers";
const CGROUP_FS: &str = "/sys/fs/cgroup";
/// Where libcni (inside containerd) caches each attachment's result, whatever containerd's
/// CNI directories are: `<network>-<sandbox id>-<ifname>`.
pub const CNI_RESULTS_DIR: &str = "/var/lib/cni/results";
/// Machine-wide directories the runtime makes when missing; removed when empty again (each
/// writer creates them again when it needs them).
pub const MACHINE_DIRS: [&str; 7] = [
    "/run/containerd/s",
    "/run/containerd/runc",
    "/run/containerd",
    CNI_RESULTS_DIR,
    "/var/lib/cni",
    POD_LOGS_DIR,
    CONTAINER_LOGS_DIR,
];
/// The containerd v2 runtime's bundles, under its state directory.
const TASKS_DIR: &str = "io.containerd.runtime.v2.task";
/// The CRI's sandboxes, under containerd's state and root directories.
const SANDBOXES_DIR: &str = "io.containerd.grpc.v1.cri/sandboxes";
/// How long killed containers may take to leave their cgroups.
const CGROUP_EMPTY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Unmount passes: a mount point may have mounts stacked on it (kubelet's self bind mount).
const UNMOUNT_PASSES: usize = 8;

/// SIGKILLs every process (other than this one) with an argument containing `fragment`;
/// returns a line per process.
pub fn kill_processes_mentioning(fragment: &str) -> Vec<String> {
    let me = std::process::id();
    let mut killed = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a.contains(fragment)) && kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            killed.push(format!("killed {pid} ({})", args.first().map_or("?", String::as_str)));
        }
    }
    killed
}

/// Every cgroup hierarchy's mount point (v1 controllers, the named systemd one, unified).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            (matches!(kind, "cgroup" | "cgroup2") && point.starts_with(CGROUP_FS)).then(|| PathBuf::from(point))
        })
        .collect()
}

/// The cgroup directories named `name` directly under a hierarchy.
pub fn cgroups_named(name: &str) -> Vec<PathBuf> {
    cgroup_hierarchies().into_iter().map(|h| h.join(name)).filter(|p| p.is_dir()).collect()
}

/// Creates `/<name>` in every v1 hierarchy, as kubelet's `cgroupRoot` must exist there. A new
/// cpuset cgroup starts with no CPUs and no memory nodes; it gets its parent's.
pub fn create_cgroup_root(name: &str) -> std::io::Result<()> {
    for h in cgroup_hierarchies() {
        let dir = h.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(h.join(file)) {
                fs::write(dir.join(file), v.trim())?;
            }
        }
    }
    Ok(())
}

fn cgroup_tree(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            cgroup_tree(&e.path(), out);
        }
    }
    out.push(dir.to_owned());
}

/// Kills every task in the cgroups named `name` (all hierarchies, all levels), waits until
/// they are empty, and removes them deepest first. Returns a line per cgroup root removed and
/// errors naming what would not go.
pub fn remove_cgroups(name: &str) -> Result<Vec<String>, String> {
    let roots = cgroups_named(name);
    let mut dirs = Vec::new();
    for r in &roots {
        cgroup_tree(r, &mut dirs);
    }
    let deadline = Instant::now() + CGROUP_EMPTY_TIMEOUT;
    loop {
        let mut busy = 0;
        for d in &dirs {
            let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                busy += 1;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if busy == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("cgroups {name}: {busy} tasks still running after {CGROUP_EMPTY_TIMEOUT:?}"));
        }
        thread::sleep(POLL_EVERY);
    }
    let mut failed = Vec::new();
    // Deepest first: cgroup_tree lists children before their parent.
    for d in &dirs {
        if let Err(e) = fs::remove_dir(d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            failed.push(format!("{}: {e}", d.display()));
        }
    }
    if failed.is_empty() {
        Ok(roots.iter().map(|r| format!("removed cgroup {}", r.display())).collect())
    } else {
        Err(format!("removing cgroups: {}", failed.join("; ")))
    }
}

/// Mount points at or below `dir`, from this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\NNN` octal.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(v) = s.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir`, deepest first, until none is left.
pub fn unmount_under(dir: &Path) -> Result<usize, String> {
    let mut count = 0;
    for _ in 0..UNMOUNT_PASSES {
        let mut points = mounts_under(dir);
        if points.is_empty() {
            return Ok(count);
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in points {
            if umount2(&p, MntFlags::MNT_DETACH).is_ok() {
                count += 1;
            }
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() { Ok(count) } else { Err(format!("mounts left under {}: {left:?}", dir.display())) }
}

/// Removes the pod log directories (`/var/log/pods/<ns>_<pod>_<uid>`) and container log links
/// of every pod a kubelet ran: those still in its root directory (`<root>/pods/<uid>`) and
/// those its log (`kubelet_log`, at `--v=2`) saw added, which includes pods deleted before the
/// teardown whose log directories kubelet's garbage collection had not reached yet.
pub fn remove_pod_logs(kubelet_root: &Path, kubelet_log: &Path) -> Vec<String> {
    let mut uids: BTreeSet<String> = fs::read_dir(kubelet_root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    uids.extend(pod_uids_in_kubelet_log(
        &fs::read(kubelet_log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default(),
    ));
    if uids.is_empty() {
        return Vec::new();
    }
    let ours = |name: &str| name.rsplit('_').next().is_some_and(|uid| uids.contains(uid));
    let mut removed = Vec::new();
    for e in fs::read_dir(CONTAINER_LOGS_DIR).into_iter().flatten().flatten() {
        let target = fs::read_link(e.path()).unwrap_or_default();
        let pod_dir = target.strip_prefix(POD_LOGS_DIR).ok().and_then(|r| r.components().next());
        if pod_dir.is_some_and(|d| ours(&d.as_os_str().to_string_lossy())) && fs::remove_file(e.path()).is_ok() {
            removed.push(format!("removed {}", e.path().display()));
        }
    }
    for e in fs::read_dir(POD_LOGS_DIR).into_iter().flatten().flatten() {
        if ours(&e.file_name().to_string_lossy()) && fs::remove_dir_all(e.path()).is_ok() {
            removed.push(format!("removed {}", e.path().display()));
        }
    }
    removed
}

/// The uids of the pods a kubelet log shows added: `SyncLoop (ADD, "api"): "name_ns(uid), ..."`
/// (kubelet 1.20 at `--v=2`, `format.Pods`).
pub fn pod_uids_in_kubelet_log(log: &str) -> BTreeSet<String> {
    const UID_LEN: usize = 36;
    let mut uids = BTreeSet::new();
    for line in log.lines().filter(|l| l.contains("SyncLoop (ADD")) {
        for (i, _) in line.match_indices('(') {
            let Some(candidate) = line.get(i + 1..i + 1 + UID_LEN) else { continue };
            let is_uid = line[i + 1 + UID_LEN..].starts_with(')')
                && candidate
                    .chars()
                    .enumerate()
                    .all(|(n, c)| if matches!(n, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() });
            if is_uid {
                uids.insert(candidate.to_owned());
            }
        }
    }
    uids
}

/// Removes what a node's containerd (state directory `state`, root `root`) left in
/// machine-wide places: the sockets of its shims (each bundle's `address` file names one) and
/// libcni's cached results for its sandboxes; then those places if they are empty. Call after
/// the node's processes are dead.
pub fn remove_runtime_leftovers(state: &Path, root: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let mut ids = BTreeSet::new();
    for ns in fs::read_dir(state.join(TASKS_DIR)).into_iter().flatten().flatten() {
        for bundle in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            ids.insert(bundle.file_name().to_string_lossy().into_owned());
            let address = fs::read_to_string(bundle.path().join("address")).unwrap_or_default();
            if let Some(socket) = address.trim().strip_prefix("unix://")
                && fs::remove_file(socket).is_ok()
            {
                removed.push(format!("removed shim socket {socket}"));
            }
        }
    }
    for dir in [state.join(SANDBOXES_DIR), root.join(SANDBOXES_DIR)] {
        ids.extend(
            fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    for e in fs::read_dir(CNI_RESULTS_DIR).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.contains(&format!("-{id}-"))) && fs::remove_file(e.path()).is_ok() {
            removed.push(format!("removed {}", e.path().display()));
        }
    }
    removed
}

/// Removes the machine-wide directories the runtime and kubelet create when they are empty.
pub fn remove_empty_machine_dirs() {
    for d in MACHINE_DIRS {
        let _ = fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_come_from_kubelet_add_lines_only() {
        let log = "I1201 10:15:35.1 589 kubelet.go:1888] SyncLoop (ADD, \"api\"): \"cli_lab(c351d91d-3bc7-4bd9-9623-6597c87ee3b5), srv_lab(5da818e1-042e-40fb-aaa3-75a88890193a)\"\n\
                   I1201 10:15:37.1 589 kubelet.go:1926] SyncLoop (PLEG): \"x_lab(0bbc6841-2d02-fec2-62be-74767d547de5)\"\n\
                   I1201 10:15:38.1 589 kubelet.go:1888] SyncLoop (ADD, \"api\"): \"bad(not-a-uid)\"\n";
        let uids = pod_uids_in_kubelet_log(log);
        assert_eq!(
            uids.into_iter().collect::<Vec<_>>(),
            ["5da818e1-042e-40fb-aaa3-75a88890193a", "c351d91d-3bc7-4bd9-9623-6597c87ee3b5"]
        );
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/plain/path"), "/plain/path");
        assert_eq!(unescape_mount_path("/x\\134y"), "/x\\y");
    }

    #[test]
    fn this_process_is_never_killed_for_its_own_arguments() {
        // The test binary's own command line does not name this fragment; nothing else does.
        let fragment = crate::netns::unique_name("nobody-mentions-this");
        assert!(kill_processes_mentioning(&fragment).is_empty());
    }

    #[test]
    fn the_machine_has_cgroup_hierarchies() {
        assert!(!cgroup_hierarchies().is_empty(), "no cgroup mounts under {CGROUP_FS}");
    }
}
