//! The kernel side, seen from user space: loads the eBPF object with its maps pinned under
//! `<bpffs>/ward/v{LAYOUT_VERSION}/<node>/`, attaches the programs to pod veths with pinned
//! TCX links, and writes map contents. Nothing here decides policy: it applies what the
//! compiler produced. Pins outlive the agent, so enforcement continues while it is down, and
//! a restarted agent adopts them (maps by name, links by atomically replacing their program).

mod attach;
mod http;
mod maps;
mod migrate;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};

pub use http::HttpMaps;
pub use maps::{EventSource, LostCounters, Maps, MirrorContents, MirrorDelta, SweepStats};

/// The programs' clock (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE), for comparing with
/// the timestamps they write.
pub fn kernel_now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec() as u64),
        Err(_) => 0,
    }
}

/// The eBPF object built by `build.rs`.
#[cfg(ward_ebpf_object)]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ward"));
#[cfg(not(ward_ebpf_object))]
static OBJECT: &[u8] = &[];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("this agent was built without its eBPF object (AYA_BUILD_SKIP); rebuild without it")]
    NoObject,
    #[error("preparing bpffs at {path}: {source}")]
    Bpffs { path: PathBuf, source: std::io::Error },
    #[error("loading the eBPF object (pins in {pin_dir}): {source}")]
    Load { pin_dir: PathBuf, source: Box<aya::EbpfError> },
    #[error("program {program}: {source}")]
    Program { program: &'static str, source: Box<aya::programs::ProgramError> },
    #[error("map {map} missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: Box<aya::maps::MapError> },
    #[error("pinned maps in {pin_dir} have layout version {found}, this agent uses {expected}")]
    Layout { pin_dir: PathBuf, found: u32, expected: u32 },
    #[error(
        "ipcache prefix {}/{prefixlen} withheld: a more specific prefix inside it could not be loaded (map full?), \
         and without it the broader prefix would allow what policy excepts",
        std::net::Ipv6Addr::from(*addr)
    )]
    Withheld { prefixlen: u32, addr: ward_common::Addr16 },
    #[error("attaching to interface {ifname} (ifindex {ifindex}): {message}")]
    Attach { ifname: String, ifindex: u32, message: String },
}

pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
    pub http: HttpMaps,
    pin_dir: PathBuf,
    /// A node found under an older layout, carried over at load, finished by
    /// [`finish_migration`](Self::finish_migration).
    migration: Option<migrate::Migration>,
}

impl Datapath {
    /// Loads (or adopts) the datapath of `node` under `bpffs`.
    pub fn open(bpffs: &Path, node: &str) -> Result<Self, DatapathError> {
        Self::open_sized(bpffs, node, &[])
    }

    /// [`open`](Self::open) with some maps created at other capacities than `ward_common`'s
    /// (map name, entries): how tests fill a map to the brim. Applies only to maps created now,
    /// not to pinned ones adopted.
    pub fn open_sized(bpffs: &Path, node: &str, sizes: &[(&str, u32)]) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        ensure_bpffs(bpffs)?;
        let pin_dir = pin_dir(bpffs, node);
        for dir in [pin_dir.clone(), pin_dir.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Bpffs { path: dir.clone(), source })?;
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_dir);
        for (name, size) in sizes {
            loader.map_max_entries(name, *size);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|source| DatapathError::Load { pin_dir: pin_dir.clone(), source: Box::new(source) })?;
        attach::load_programs(&mut ebpf)?;
        // Before any map is taken out of the object: `to_peer` refers to most of them, and
        // a map taken and dropped (the HTTP slot array) no longer has an fd to load against.
        attach::fill_tail_call_slot(
            &mut ebpf,
            ward_common::maps::DELIVER_PROGRAM,
            ward_common::maps::MAP_DELIVER_PROG,
        )?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.check_layout(&pin_dir)?;
        remove_retired_pins(&pin_dir);
        let migration = migrate::from_older(bpffs, node, &pin_dir, &mut maps)?;
        let http = HttpMaps::take(&mut ebpf)?;
        Ok(Datapath { ebpf, maps, http, pin_dir, migration })
    }

    /// Once the maps hold the compiled state and the endpoints are attached: every link still
    /// running an older layout's program gets this one, and the older pins go (see
    /// `migrate`). Returns what was carried over, if anything.
    pub fn finish_migration(&mut self) -> Option<(u32, usize, usize)> {
        let m = self.migration.take()?;
        let replaced = attach::replace_all(&mut self.ebpf, &self.pin_dir);
        migrate::remove_old(&m);
        tracing::info!(
            from_version = m.from_version,
            flows = m.flows,
            links = m.links,
            replaced,
            "layout migration finished"
        );
        Some((m.from_version, m.flows, m.links))
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Takes one of the object's maps out (once): how a task of its own comes to own a map
    /// that `Maps` does not hold (the trace maps, `daemon::trace`).
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// Attaches both programs to a pod veth's host side (adopting pinned links if present).
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        attach::attach(&mut self.ebpf, &self.pin_dir, ifname, ifindex)
    }

    /// Attaches `to_netdev` to one of the node's uplinks (adopting a pinned link if present).
    pub fn attach_uplink(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        attach::attach_uplink(&mut self.ebpf, &self.pin_dir, ifname, ifindex)
    }

    /// Detaches from an interface (idempotent; a vanished interface is fine).
    pub fn detach(&mut self, ifindex: u32) {
        attach::detach(&self.pin_dir, ifindex)
    }

    /// Ifindexes that have pinned links (to garbage-collect links of vanished endpoints).
    pub fn pinned_link_ifindexes(&self) -> Vec<u32> {
        attach::pinned_ifindexes(&self.pin_dir)
    }
}

/// `<bpffs>/ward/v{N}/<node>`: the layout version is part of the path, so an agent never
/// opens maps of a layout it does not know.
/// Unlinks pins of maps this layout no longer has (see `MAP_REASON_CNT_RETIRED`). Programs
/// of an older agent that still run hold their own reference, so their map lives on until
/// they are replaced.
fn remove_retired_pins(pin_dir: &Path) {
    let pin = pin_dir.join(ward_common::maps::MAP_REASON_CNT_RETIRED);
    match std::fs::remove_file(&pin) {
        Ok(()) => tracing::info!(pin = %pin.display(), "removed the pin of a retired map"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "removing the pin of a retired map"),
    }
}

pub fn pin_dir(bpffs: &Path, node: &str) -> PathBuf {
    bpffs.join("ward").join(format!("v{}", ward_common::maps::LAYOUT_VERSION)).join(node)
}

/// Mounts bpffs at `path` unless one is mounted there already.
fn ensure_bpffs(path: &Path) -> Result<(), DatapathError> {
    let err = |source| DatapathError::Bpffs { path: path.to_owned(), source };
    std::fs::create_dir_all(path).map_err(err)?;
    let stat = nix::sys::statfs::statfs(path).map_err(|e| err(e.into()))?;
    if stat.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| err(e.into()))
}

impl Datapath {
    /// Runs one program on a crafted packet with `BPF_PROG_TEST_RUN`, as if it arrived on
    /// `ifindex` (which must exist in this network namespace; 1, loopback, always does).
    /// Returns the TC verdict (-1 pass on to what follows Ward, 2 drop). Used by the
    /// kernel-logic tests.
    pub fn run_program(&self, program: &'static str, packet: &[u8], ifindex: u32) -> Result<i32, DatapathError> {
        self.run_program_from(program, packet, ifindex, 0)
    }

    /// [`run_program`](Self::run_program) for a packet that arrived on `ingress_ifindex`
    /// (forwarded by the node; 0 means sent by the node's own stack).
    pub fn run_program_from(
        &self,
        program: &'static str,
        packet: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
    ) -> Result<i32, DatapathError> {
        self.run_program_marked(program, packet, ifindex, ingress_ifindex, 0).map(|(verdict, _)| verdict)
    }

    /// [`run_program_from`](Self::run_program_from) with `skb->mark` set to `mark` on the way
    /// in; also returns the mark the program left (Service deferral, DNS steering).
    pub fn run_program_marked(
        &self,
        program: &'static str,
        packet: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
        mark: u32,
    ) -> Result<(i32, u32), DatapathError> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .ok_or(DatapathError::Program {
                program,
                source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { program, source: Box::new(source) })?;
        // struct __sk_buff: `mark` is the u32 at byte 8 (after len and pkt_type),
        // `ingress_ifindex` the one at byte 36 and `ifindex` the one at byte 40 (after
        // queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto, priority). The kernel
        // accepts only a few fields of the context as input.
        let mut ctx = vec![0u8; SK_BUFF_SIZE];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; SK_BUFF_SIZE];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.ctx_in = Some(&ctx);
        opts.ctx_out = Some(&mut out);
        let r = prog.test_run(opts).map_err(|source| DatapathError::Program { program, source: Box::new(source) })?;
        let mark_out = u32::from_ne_bytes([out[8], out[9], out[10], out[11]]);
        Ok((r.return_value as i32, mark_out))
    }
}

/// Size of the kernel's `struct __sk_buff` (uapi, fixed).
const SK_BUFF_SIZE: usize = 192;

use aya::programs::SchedClassifier;
