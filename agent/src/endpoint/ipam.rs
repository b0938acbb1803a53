//! Pod address allocation for the node's pod CIDRs, persisted so that it survives restarts of
//! everything (the plugin is a new process on every call).
//!
//! Layout, per network (the netconf `name`) under the data directory:
//! - one file per allocated address, named by the address, holding `containerID\nifname`;
//! - `last-reserved-ipv4` / `last-reserved-ipv6`: the address handed out last in that family,
//!   so allocation goes round-robin and a released address is not reused at once (a peer that
//!   cached the old pod's address must not reach the new pod by accident);
//! - `quarantine/<address>`: an address released less than the quarantine ago (the file holds
//!   the release time in Unix seconds, then the old owner). Allocation skips it: other nodes may
//!   still map the address to the old pod's identity until their datastore reports the pod
//!   gone (see `cni::netconf::DEFAULT_QUARANTINE` for the duration and why);
//! - `lock`: held with `flock` for the whole of an allocation or release, so that concurrent
//!   plugin processes serialise.
//!
//! The choice of the next address ([`PodRange::next_free`]) is pure and shared by both
//! families; only the store touches the file system.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

/// The allocatable part of a pod CIDR: everything except the network address, the first
/// address (the node's, by convention `.1` / `::1`) and, for IPv4, the broadcast address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRange {
    cidr: IpNet,
    /// First and last allocatable addresses as integers (IPv4 in the low 32 bits).
    first: u128,
    last: u128,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("{cidr} has host bits set (the network is {network})")]
    HostBits { cidr: IpNet, network: IpNet },
    #[error("{cidr} leaves no address for pods (the network address and the first address are reserved)")]
    TooSmall { cidr: IpNet },
}

fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl PodRange {
    pub fn new(cidr: IpNet) -> Result<Self, RangeError> {
        if cidr.addr() != cidr.network() {
            return Err(RangeError::HostBits { cidr, network: cidr.trunc() });
        }
        let network = to_bits(cidr.network());
        let top = to_bits(cidr.broadcast());
        // Reserved: the network address, the node's address and (IPv4) the broadcast address.
        let reserved_top = u128::from(matches!(cidr, IpNet::V4(_)));
        if top - network < 2 + reserved_top {
            return Err(RangeError::TooSmall { cidr });
        }
        Ok(Self { cidr, first: network + 2, last: top - reserved_top })
    }

    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self.cidr, IpNet::V4(_))
    }

    fn addr_at(&self, bits: u128) -> Option<IpAddr> {
        match self.cidr {
            IpNet::V4(_) => u32::try_from(bits).ok().map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            IpNet::V6(_) => Some(IpAddr::V6(Ipv6Addr::from(bits))),
        }
    }

    /// Whether `ip` is one of this range's allocatable addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && (self.first..=self.last).contains(&to_bits(ip))
    }

    /// The first address not in `taken`, searching upwards from the one after `last` and
    /// wrapping around; `None` when every address is taken.
    ///
    /// Among any n+1 distinct candidates at most n are taken, so the search stops after
    /// `taken ∩ range` + 1 steps even in a /64.
    pub fn next_free(&self, last: Option<IpAddr>, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        // `size - 1` and the offsets below cannot overflow: first <= last.
        let span = self.last - self.first;
        let start = match last.filter(|ip| self.contains(*ip)).map(to_bits) {
            Some(b) if b < self.last => b + 1 - self.first,
            _ => 0,
        };
        let taken_here = taken.iter().filter(|ip| self.contains(**ip)).count();
        let tries = span.min(taken_here as u128);
        (0..=tries)
            .map(|i| if i <= span - start { start + i } else { i - (span - start) - 1 })
            .filter_map(|offset| self.addr_at(self.first + offset))
            .find(|candidate| !taken.contains(candidate))
    }
}

/// Who holds an address: the CNI attachment key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl Owner<'_> {
    fn record(&self) -> String {
        format!("{}\n{}", self.container_id, self.ifname)
    }

    fn owns(&self, record: &str) -> bool {
        record.trim_end() == self.record()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("IPAM state {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot lock IPAM state {path}: {source}")]
    Lock { path: PathBuf, source: nix::errno::Errno },
    #[error("no free address left in {cidr} ({allocated} allocated)")]
    Exhausted { cidr: IpNet, allocated: usize },
    #[error(
        "no free address in {cidr} right now: {quarantined} released addresses are in quarantine, the first until {wait:?} from now"
    )]
    Quarantined { cidr: IpNet, quarantined: usize, wait: Duration },
}

impl IpamError {
    /// Whether trying again later can succeed (the runtime's code 11).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Quarantined { .. })
    }
}

/// Why `range` has no address to hand out: all taken, or the free ones still in quarantine.
fn no_room(range: &PodRange, taken: &BTreeMap<IpAddr, String>, quarantined: &BTreeMap<IpAddr, Duration>) -> IpamError {
    let waiting: Vec<Duration> = quarantined.iter().filter(|(ip, _)| range.contains(**ip)).map(|(_, d)| *d).collect();
    match waiting.iter().min() {
        Some(&wait) => IpamError::Quarantined { cidr: range.cidr(), quarantined: waiting.len(), wait },
        None => IpamError::Exhausted {
            cidr: range.cidr(),
            allocated: taken.keys().filter(|ip| range.contains(**ip)).count(),
        },
    }
}

const LOCK_FILE: &str = "lock";
const QUARANTINE_DIR: &str = "quarantine";

/// One owner's allocations, as [`Store::owners`] lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    /// When the newest of its address files was written.
    pub since: SystemTime,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One network's allocations on disk.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// `network` must be a valid CNI network name (checked when the netconf is parsed), so it
    /// is a single path component.
    pub fn new(data_dir: &Path, network: &str) -> Self {
        Self { dir: data_dir.join(network) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> IpamError {
        let path = path.to_owned();
        move |source| IpamError::Io { path, source }
    }

    /// Takes the network's lock, creating the directory if asked; `None` if it does not exist
    /// and `create` is false (nothing was ever allocated).
    fn lock(&self, create: bool) -> Result<Option<Flock<File>>, IpamError> {
        if create {
            fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        } else if !self.dir.is_dir() {
            return Ok(None);
        }
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(self.io(&path))?;
        Flock::lock(file, FlockArg::LockExclusive).map(Some).map_err(|(_, source)| IpamError::Lock { path, source })
    }

    /// Every allocation: address to owner record.
    fn scan(&self) -> Result<BTreeMap<IpAddr, String>, IpamError> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).map_err(self.io(&self.dir))? {
            let entry = entry.map_err(self.io(&self.dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let path = entry.path();
            out.insert(ip, fs::read_to_string(&path).map_err(self.io(&path))?);
        }
        Ok(out)
    }

    fn last_path(&self, range: &PodRange) -> PathBuf {
        self.dir.join(if range.is_ipv4() { "last-reserved-ipv4" } else { "last-reserved-ipv6" })
    }

    /// Addresses released less than `quarantine` before `now`, with when each leaves
    /// quarantine; removes the tombstones of those that left it.
    fn quarantined(&self, quarantine: Duration, now: SystemTime) -> Result<BTreeMap<IpAddr, Duration>, IpamError> {
        let dir = self.dir.join(QUARANTINE_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(IpamError::Io { path: dir, source: e }),
        };
        let now_secs = unix_secs(now);
        let mut out = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(self.io(&dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let text = fs::read_to_string(&path).unwrap_or_default();
            let stamp = text.lines().next().and_then(|l| l.trim().parse::<u64>().ok());
            let released = match stamp {
                Some(t) if t <= now_secs => t,
                // Unreadable, or later than now (the clock was set back): restart the quarantine
                // now, so it ends one quarantine from now rather than an unknown time away.
                _ => {
                    let rest: String = text.lines().skip(1).collect::<Vec<_>>().join("\n");
                    let _ = fs::write(&path, format!("{now_secs}\n{rest}"));
                    now_secs
                }
            };
            let left = quarantine.saturating_sub(Duration::from_secs(now_secs - released));
            if left.is_zero() {
                let _ = fs::remove_file(&path);
            } else {
                out.insert(ip, left);
            }
        }
        Ok(out)
    }

    /// Whether every range has an address to hand out now (STATUS); the error ADD would get.
    pub fn room(&self, ranges: &[PodRange], quarantine: Duration) -> Result<(), IpamError> {
        let Some(_lock) = self.lock(false)? else {
            return Ok(());
        };
        let taken = self.scan()?;
        let quarantined = self.quarantined(quarantine, SystemTime::now())?;
        for range in ranges {
            let unavailable: BTreeSet<IpAddr> = taken.keys().chain(quarantined.keys()).copied().collect();
            if range.next_free(None, &unavailable).is_none() {
                return Err(no_room(range, &taken, &quarantined));
            }
        }
        Ok(())
    }

    /// One address per range for `owner`; the same ones again if it already holds them.
    /// Addresses released less than `quarantine` ago are not handed out.
    pub fn allocate(
        &self,
        owner: Owner<'_>,
        ranges: &[PodRange],
        quarantine: Duration,
    ) -> Result<Vec<IpAddr>, IpamError> {
        self.allocate_at(owner, ranges, quarantine, SystemTime::now())
    }

    fn allocate_at(
        &self,
        owner: Owner<'_>,
        ranges: &[PodRange],
        quarantine: Duration,
        now: SystemTime,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock(true)?;
        let mut taken = self.scan()?;
        let quarantined = self.quarantined(quarantine, now)?;
        let mut created = Vec::new();
        let result = ranges
            .iter()
            .map(|range| {
                if let Some(ip) =
                    taken.iter().find(|(ip, rec)| range.contains(**ip) && owner.owns(rec)).map(|(ip, _)| *ip)
                {
                    return Ok(ip);
                }
                let last_path = self.last_path(range);
                let last = fs::read_to_string(&last_path).ok().and_then(|s| s.trim().parse().ok());
                let unavailable: BTreeSet<IpAddr> = taken.keys().chain(quarantined.keys()).copied().collect();
                let ip = range.next_free(last, &unavailable).ok_or_else(|| no_room(range, &taken, &quarantined))?;
                let path = self.dir.join(ip.to_string());
                let mut file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(self.io(&path))?;
                created.push(path.clone());
                file.write_all(owner.record().as_bytes()).map_err(self.io(&path))?;
                fs::write(&last_path, ip.to_string()).map_err(self.io(&last_path))?;
                taken.insert(ip, owner.record());
                Ok(ip)
            })
            .collect::<Result<Vec<_>, _>>();
        if result.is_err() {
            // All or nothing: a pod with half its addresses is no use.
            for path in &created {
                let _ = fs::remove_file(path);
            }
        }
        result
    }

    /// Frees every address `owner` holds into quarantine; returns them (none is fine: DEL is
    /// idempotent). The tombstone is written before the allocation goes, so a crash in
    /// between leaves the address unavailable, never free too early.
    pub fn release(&self, owner: Owner<'_>) -> Result<Vec<IpAddr>, IpamError> {
        self.release_at(owner, SystemTime::now())
    }

    fn release_at(&self, owner: Owner<'_>, now: SystemTime) -> Result<Vec<IpAddr>, IpamError> {
        let Some(_lock) = self.lock(false)? else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        let qdir = self.dir.join(QUARANTINE_DIR);
        for (ip, record) in self.scan()? {
            if owner.owns(&record) {
                fs::create_dir_all(&qdir).map_err(self.io(&qdir))?;
                let tomb = qdir.join(ip.to_string());
                fs::write(&tomb, format!("{}\n{}", unix_secs(now), owner.record())).map_err(self.io(&tomb))?;
                let path = self.dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => released.push(ip),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(IpamError::Io { path, source: e }),
                }
            }
        }
        Ok(released)
    }

    /// Every owner's allocations (for GC and the sweep of pods removed without a DEL).
    pub fn owners(&self) -> Result<Vec<Allocation>, IpamError> {
        let Some(_lock) = self.lock(false)? else {
            return Ok(Vec::new());
        };
        let mut by_owner: BTreeMap<(String, String), Allocation> = BTreeMap::new();
        for (ip, record) in self.scan()? {
            let mut lines = record.lines();
            let (Some(container_id), Some(ifname)) = (lines.next(), lines.next()) else {
                tracing::warn!(address = %ip, "IPAM record without an owner; left alone");
                continue;
            };
            let path = self.dir.join(ip.to_string());
            let since = fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
            let a = by_owner.entry((container_id.to_owned(), ifname.to_owned())).or_insert_with(|| Allocation {
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
                ips: Vec::new(),
                since,
            });
            a.ips.push(ip);
            a.since = a.since.max(since);
        }
        Ok(by_owner.into_values().collect())
    }

    /// The addresses `owner` holds, in address order.
    pub fn find(&self, owner: Owner<'_>) -> Result<Vec<IpAddr>, IpamError> {
        let Some(_lock) = self.lock(false)? else {
            return Ok(Vec::new());
        };
        Ok(self.scan()?.into_iter().filter(|(_, rec)| owner.owns(rec)).map(|(ip, _)| ip).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn range(s: &str) -> PodRange {
        PodRange::new(s.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_allocation_skips_network_and_node_address() {
        assert_eq!(range("10.244.1.0/24").next_free(None, &BTreeSet::new()), Some(ip("10.244.1.2")));
        assert_eq!(range("fd77:1::/64").next_free(None, &BTreeSet::new()), Some(ip("fd77:1::2")));
    }

    #[test]
    fn allocation_continues_after_the_last_reserved_address() {
        let r = range("10.244.1.0/24");
        let taken: BTreeSet<IpAddr> = [ip("10.244.1.2")].into();
        // .3 was handed out and released since: it is not reused while newer ones are free.
        assert_eq!(r.next_free(Some(ip("10.244.1.3")), &taken), Some(ip("10.244.1.4")));
        assert_eq!(r.next_free(Some(ip("10.244.1.2")), &taken), Some(ip("10.244.1.3")));
    }

    #[test]
    fn allocation_wraps_and_never_hands_out_the_broadcast_address() {
        let r = range("10.0.0.0/29"); // .2 to .6 allocatable
        let taken: BTreeSet<IpAddr> = [ip("10.0.0.2"), ip("10.0.0.3")].into();
        assert_eq!(r.next_free(Some(ip("10.0.0.6")), &taken), Some(ip("10.0.0.4")));
        assert_eq!(r.next_free(Some(ip("10.0.0.5")), &BTreeSet::new()), Some(ip("10.0.0.6")));
        let full: BTreeSet<IpAddr> = (2..=6).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(r.next_free(Some(ip("10.0.0.3")), &full), None);
    }

    #[test]
    fn a_last_address_outside_the_range_restarts_at_the_beginning() {
        let r = range("10.0.0.0/29");
        assert_eq!(r.next_free(Some(ip("192.168.0.9")), &BTreeSet::new()), Some(ip("10.0.0.2")));
        assert_eq!(r.next_free(Some(ip("fd00::9")), &BTreeSet::new()), Some(ip("10.0.0.2")));
    }

    #[test]
    fn ipv6_has_no_broadcast_and_large_ranges_search_briefly() {
        let r = range("fd00::/126"); // ::2 and ::3
        assert_eq!(r.next_free(Some(ip("fd00::2")), &BTreeSet::new()), Some(ip("fd00::3")));
        let r = range("fd77:1::/64");
        let taken: BTreeSet<IpAddr> = (2..1000u16).map(|i| ip(&format!("fd77:1::{i:x}"))).collect();
        assert_eq!(r.next_free(None, &taken), Some(ip("fd77:1::3e8")));
    }

    #[test]
    fn ranges_without_room_or_with_host_bits_are_rejected() {
        for s in ["10.0.0.0/31", "10.0.0.0/32", "255.255.255.255/32", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"] {
            assert!(matches!(PodRange::new(s.parse().unwrap()), Err(RangeError::TooSmall { .. })), "{s}");
        }
        let everything = PodRange::new("::/0".parse().unwrap()).unwrap();
        let last = ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(everything.next_free(Some(last), &BTreeSet::new()), Some(ip("::2")));
        assert!(PodRange::new("10.0.0.0/30".parse().unwrap()).is_ok());
        assert!(matches!(PodRange::new("fd00::/127".parse().unwrap()), Err(RangeError::TooSmall { .. })));
        assert!(matches!(PodRange::new("10.0.0.5/24".parse().unwrap()), Err(RangeError::HostBits { .. })));
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("ward-ipam-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            Self(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn store_allocates_idempotently_releases_and_remembers_the_last_address() {
        let tmp = TempDir::new("store");
        let store = Store::new(&tmp.0, "ward");
        let ranges = [range("10.0.0.0/29"), range("fd00::/120")];
        let a = Owner { container_id: "a", ifname: "eth0" };
        let b = Owner { container_id: "b", ifname: "eth0" };
        let got_a = store.allocate(a, &ranges, Duration::ZERO).unwrap();
        assert_eq!(got_a, vec![ip("10.0.0.2"), ip("fd00::2")]);
        assert_eq!(store.allocate(a, &ranges, Duration::ZERO).unwrap(), got_a, "same owner, same addresses");
        assert_eq!(store.allocate(b, &ranges, Duration::ZERO).unwrap(), vec![ip("10.0.0.3"), ip("fd00::3")]);
        assert_eq!(fs::read_to_string(tmp.0.join("ward/10.0.0.2")).unwrap(), "a\neth0");
        assert_eq!(store.find(a).unwrap(), got_a);
        assert_eq!(store.release(a).unwrap(), got_a);
        assert_eq!(store.release(a).unwrap(), Vec::<IpAddr>::new());
        // A new store (a new process) continues after the last address, not in the hole.
        let store = Store::new(&tmp.0, "ward");
        let c = Owner { container_id: "c", ifname: "eth0" };
        assert_eq!(store.allocate(c, &ranges, Duration::ZERO).unwrap(), vec![ip("10.0.0.4"), ip("fd00::4")]);
    }

    #[test]
    fn exhaustion_in_one_family_allocates_nothing() {
        let tmp = TempDir::new("exhaust");
        let store = Store::new(&tmp.0, "ward");
        let small = [range("fd00::/126")];
        for id in ["a", "b"] {
            store.allocate(Owner { container_id: id, ifname: "eth0" }, &small, Duration::ZERO).unwrap();
        }
        let both = [range("10.0.0.0/24"), range("fd00::/126")];
        let err = store.allocate(Owner { container_id: "c", ifname: "eth0" }, &both, Duration::ZERO).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { allocated: 2, .. }), "{err}");
        assert_eq!(store.find(Owner { container_id: "c", ifname: "eth0" }).unwrap(), Vec::<IpAddr>::new());
    }

    #[test]
    fn concurrent_allocations_never_hand_out_an_address_twice() {
        let tmp = TempDir::new("concurrent");
        let ranges = [range("10.0.0.0/24")];
        let ids: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
        // Each thread opens the lock file itself, as separate plugin processes do; flock
        // locks belong to the open file, so the threads exclude each other.
        let got: Vec<IpAddr> = std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (dir, ranges) = (&tmp.0, &ranges);
                    s.spawn(move || {
                        Store::new(dir, "ward").allocate(
                            Owner { container_id: id, ifname: "eth0" },
                            ranges,
                            Duration::ZERO,
                        )
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap().unwrap()).collect()
        });
        let distinct: BTreeSet<IpAddr> = got.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "duplicates in {got:?}");
    }

    #[test]
    fn a_released_address_stays_out_of_use_for_the_quarantine() {
        let tmp = TempDir::new("quarantine");
        let store = Store::new(&tmp.0, "ward");
        let small = [range("10.0.0.0/30")]; // only 10.0.0.2
        let q = Duration::from_secs(60);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = Owner { container_id: "a", ifname: "eth0" };
        let b = Owner { container_id: "b", ifname: "eth0" };
        assert_eq!(store.allocate_at(a, &small, q, t0).unwrap(), vec![ip("10.0.0.2")]);
        assert_eq!(store.release_at(a, t0).unwrap(), vec![ip("10.0.0.2")]);
        let err = store.allocate_at(b, &small, q, t0 + Duration::from_secs(59)).unwrap_err();
        assert!(
            matches!(err, IpamError::Quarantined { quarantined: 1, wait, .. } if wait == Duration::from_secs(1)),
            "{err}"
        );
        assert!(err.is_transient());
        assert_eq!(store.allocate_at(b, &small, q, t0 + Duration::from_secs(60)).unwrap(), vec![ip("10.0.0.2")]);
        assert!(!tmp.0.join("ward/quarantine/10.0.0.2").exists(), "the expired tombstone is gone");
        // Released, then the clock is set back by an hour: the quarantine restarts at the new
        // now and lasts its length, not an hour more.
        store.release_at(b, t0 + Duration::from_secs(3600)).unwrap();
        assert!(store.allocate_at(a, &small, q, t0 + Duration::from_secs(100)).is_err());
        assert!(store.allocate_at(a, &small, q, t0 + Duration::from_secs(159)).is_err());
        assert!(store.allocate_at(a, &small, q, t0 + Duration::from_secs(161)).is_ok());
    }

    #[test]
    fn owners_lists_each_attachment_with_its_addresses() {
        let tmp = TempDir::new("owners");
        let store = Store::new(&tmp.0, "ward");
        let ranges = [range("10.0.0.0/24"), range("fd00::/120")];
        for id in ["a", "b"] {
            store.allocate(Owner { container_id: id, ifname: "eth0" }, &ranges, Duration::ZERO).unwrap();
        }
        let owners = store.owners().unwrap();
        let listed: Vec<(&str, usize)> = owners.iter().map(|o| (o.container_id.as_str(), o.ips.len())).collect();
        assert_eq!(listed, [("a", 2), ("b", 2)]);
        store.release(Owner { container_id: "a", ifname: "eth0" }).unwrap();
        assert_eq!(store.owners().unwrap().len(), 1);
    }

    #[test]
    fn release_without_any_state_is_a_no_op() {
        let tmp = TempDir::new("empty");
        let store = Store::new(&tmp.0, "ward");
        assert!(store.release(Owner { container_id: "x", ifname: "eth0" }).unwrap().is_empty());
        assert!(!tmp.0.exists(), "release must not create state");
    }
}
