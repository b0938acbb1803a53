//! Polls every node's pinned `WARD_IPCACHE` (what each node's datapath reads) and records the
//! first moment each pod address resolved to a pod label identity there, and the first moment
//! it no longer did (after the pod was deleted).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
use aya::maps::{LpmTrie, Map, MapData};
use ward_common::addr::Addr16;
use ward_common::maps::{IpcacheValue, MAP_IPCACHE};

use super::timeline::{host_v4, is_pod_identity};

/// Pause between two passes over every node's map.
pub const POLL_EVERY: Duration = Duration::from_millis(1);

/// Where node `name`'s agent pins its maps.
pub fn pin_dir(node: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(ward_lab::node::layout_dir()).join(node)
}

type Trie = LpmTrie<MapData, Addr16, IpcacheValue>;

fn open(node: &str) -> anyhow::Result<Trie> {
    let pin = pin_dir(node).join(MAP_IPCACHE);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    LpmTrie::try_from(Map::LpmTrie(data)).with_context(|| format!("{} as an LPM trie", pin.display()))
}

/// Pod addresses with a pod identity in one map now.
fn pod_addresses(trie: &Trie) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for kv in trie.iter() {
        let (k, v) = kv.context("reading WARD_IPCACHE")?;
        if let Some(ip) = host_v4(k.prefix_len(), &k.data()).filter(|_| is_pod_identity(v.identity)) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// First sightings: (node index, address) → when.
pub type Sightings = Arc<Mutex<HashMap<(usize, Ipv4Addr), Instant>>>;

/// The polling thread; stopped on drop.
pub struct Poller {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<anyhow::Result<PollStats>>>,
    pub seen: Sightings,
    /// First pass that no longer found an address it had found before.
    pub gone: Sightings,
    /// Addresses already enforced before the bench's pods (none expected in a fresh cluster).
    pub baseline: Vec<(usize, Ipv4Addr)>,
}

/// How fast the polling went: the resolution of every enforcement moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollStats {
    pub passes: u64,
    pub secs: f64,
    /// Longest single pass over every node's map.
    pub max_pass: Duration,
}

impl PollStats {
    /// Mean time from one pass's start to the next (pause included).
    pub fn period(&self) -> f64 {
        if self.passes == 0 { f64::NAN } else { self.secs / self.passes as f64 }
    }
}

impl Poller {
    /// Opens every node's map and starts polling; `limit` bounds the thread's life.
    pub fn start(nodes: &[String], limit: Duration) -> anyhow::Result<Poller> {
        let tries: Vec<Trie> = nodes.iter().map(|n| open(n)).collect::<anyhow::Result<_>>()?;
        let mut baseline = Vec::new();
        for (i, t) in tries.iter().enumerate() {
            baseline.extend(pod_addresses(t)?.into_iter().map(|ip| (i, ip)));
        }
        let seen: Sightings = Arc::default();
        let gone: Sightings = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (seen, gone, stop) = (seen.clone(), gone.clone(), stop.clone());
            let baseline = baseline.clone();
            thread::Builder::new()
                .name("ipcache-poll".into())
                .spawn(move || poll(&tries, (&seen, &gone), &stop, &baseline, limit))
                .context("starting the ipcache poller")?
        };
        Ok(Poller { stop, handle: Some(handle), seen, gone, baseline })
    }

    /// When node `node` first had `ip` with a pod identity.
    pub fn first_seen(&self, node: usize, ip: Ipv4Addr) -> Option<Instant> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(&(node, ip)).copied()
    }

    /// When node `node` first no longer had `ip` with a pod identity (after having had it).
    pub fn first_gone(&self, node: usize, ip: Ipv4Addr) -> Option<Instant> {
        self.gone.lock().unwrap_or_else(|p| p.into_inner()).get(&(node, ip)).copied()
    }

    /// Whether the thread is still polling (it ends on an error or at its time limit).
    pub fn running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops the thread; its statistics, or the error that ended it.
    pub fn finish(mut self) -> anyhow::Result<PollStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| anyhow::anyhow!("the ipcache poller panicked"))?,
            None => Ok(PollStats::default()),
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn poll(
    tries: &[Trie],
    (seen, gone): (&Sightings, &Sightings),
    stop: &AtomicBool,
    baseline: &[(usize, Ipv4Addr)],
    limit: Duration,
) -> anyhow::Result<PollStats> {
    let started = Instant::now();
    let mut stats = PollStats::default();
    let mut present: Vec<HashSet<Ipv4Addr>> = vec![HashSet::new(); tries.len()];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        let pass = Instant::now();
        for (i, t) in tries.iter().enumerate() {
            let found: HashSet<Ipv4Addr> =
                pod_addresses(t)?.into_iter().filter(|ip| !baseline.contains(&(i, *ip))).collect();
            // Each address stamped as soon as its own node's map is read, not at the pass's end.
            let at = Instant::now();
            {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                for ip in &found {
                    seen.entry((i, *ip)).or_insert(at);
                }
            }
            let mut gone = gone.lock().unwrap_or_else(|p| p.into_inner());
            for ip in present[i].difference(&found) {
                gone.entry((i, *ip)).or_insert(at);
            }
            present[i] = found;
        }
        stats.passes += 1;
        stats.max_pass = stats.max_pass.max(pass.elapsed());
        thread::sleep(POLL_EVERY);
    }
    stats.secs = started.elapsed().as_secs_f64();
    Ok(stats)
}
