//! Moving a node from an older pin layout to this agent's without a gap in enforcement.
//!
//! The layout version is part of the pin path (`<bpffs>/ward/v{N}/<node>/`), so an agent
//! never opens maps it cannot read. When it finds a node pinned under an older version it:
//! 1. (at load, before anything attaches) copies the tracked flows into the new conntrack
//!    table, converting them, so established connections and their replies keep passing; and
//!    moves the pinned links into the new directory: they keep running the old programs
//!    against the old maps, which still enforce exactly the old state;
//! 2. (`Datapath::finish_migration`, once the new maps hold the compiled state and every
//!    endpoint's links run the new programs) replaces the program in every link that is left
//!    and removes the old pins, which frees the old maps.
//! No conntrack sweep, no moment without a program on an interface, and no state but the
//! flows is carried over (the rest is compiled afresh from the datastore).

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use ward_common::maps::{CT_SEEN_REPLY, CtKey, CtValue, MAP_CT};

use super::{DatapathError, Maps};

/// `WARD_CT` value in layout v1 (the LRU era): what the flow was checked under.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct CtValueV1 {
    rev: u32,
    rule_id: u32,
    created_ns: u64,
}

// SAFETY: repr(C) integers, no padding (4 + 4 + 8 bytes).
unsafe impl aya::Pod for CtValueV1 {}
const _: () = assert!(std::mem::size_of::<CtValueV1>() == 16);

/// What was carried over from an older layout, to be finished once the new programs run.
#[derive(Debug)]
pub struct Migration {
    pub from_version: u32,
    pub from: PathBuf,
    pub flows: usize,
    pub links: usize,
}

/// Looks for the node under an older layout version and carries its flows and links over
/// into `new_pin_dir` (step 1 of the module docs). `None` when there is nothing older.
pub(super) fn from_older(
    bpffs: &Path,
    node: &str,
    new_pin_dir: &Path,
    maps: &mut Maps,
) -> Result<Option<Migration>, DatapathError> {
    let old = |v: u32| bpffs.join("ward").join(format!("v{v}")).join(node);
    let dir = old(1);
    if !dir.is_dir() || dir == new_pin_dir {
        return Ok(None);
    }
    let flows = copy_v1_flows(&dir, maps)?;
    let links = move_links(&dir.join("links"), &new_pin_dir.join("links"))?;
    tracing::info!(from = %dir.display(), flows, links, "carrying a layout v1 node over");
    Ok(Some(Migration { from_version: 1, from: dir, flows, links }))
}

fn copy_v1_flows(dir: &Path, maps: &mut Maps) -> Result<usize, DatapathError> {
    let pin = dir.join(MAP_CT);
    if !pin.exists() {
        return Ok(0);
    }
    let err = |source| DatapathError::Map { map: MAP_CT, source: Box::new(source) };
    let data = MapData::from_pin(&pin).map_err(err)?;
    // An LRU hash then; aya reads both kinds through the same type.
    let old: HashMap<MapData, CtKey, CtValueV1> = HashMap::try_from(Map::LruHashMap(data)).map_err(err)?;
    let now = super::kernel_now_ns();
    let flows = old.iter().filter_map(Result::ok).map(|(k, v)| {
        // Revision 0 is never current: each flow is checked against the new maps' policy on
        // its next packet. It was live, so it counts as answered (the established timeout).
        (
            convert_key(k),
            CtValue {
                rev: 0,
                rule_id: v.rule_id,
                created_ns: v.created_ns,
                seen_ns: now,
                state: CT_SEEN_REPLY,
                _pad: [0; 7],
            },
        )
    });
    Ok(maps.adopt_flows(flows))
}

/// ICMP echo in v1 carried the identifier as both ports; v2 tells request from reply (see
/// `ebpf/src/parse.rs`, `ECHO_SIDE`): a tracked echo is a request, (id, 0).
fn convert_key(mut k: CtKey) -> CtKey {
    if matches!(k.proto, 1 | 58) && k.sport_be == k.dport_be {
        k.dport_be = [0, 0];
    }
    k
}

/// Moves every pinned link file from `from` to `to` (same names): the links themselves stay
/// attached throughout.
fn move_links(from: &Path, to: &Path) -> Result<usize, DatapathError> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(0);
    };
    let mut moved = 0;
    for entry in entries.filter_map(Result::ok) {
        let (old, new) = (entry.path(), to.join(entry.file_name()));
        let fail = |message: String| DatapathError::Attach { ifname: String::new(), ifindex: 0, message };
        let link =
            PinnedLink::from_pin(&old).map_err(|e| fail(format!("opening pinned link {}: {e}", old.display())))?;
        let fd: FdLink = link.unpin().map_err(|e| fail(format!("unpinning {}: {e}", old.display())))?;
        fd.pin(&new).map_err(|e| fail(format!("pinning {}: {e}", new.display())))?;
        moved += 1;
    }
    Ok(moved)
}

/// Step 2: the old pins go (the old maps are freed once no program uses them).
pub(super) fn remove_old(m: &Migration) {
    if let Err(e) = std::fs::remove_dir_all(&m.from) {
        tracing::warn!(dir = %m.from.display(), error = %e, "removing the old layout's pins");
    }
    // The version directory itself, if this was its last node.
    if let Some(parent) = m.from.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_echo_keys_become_requests_and_other_keys_stay() {
        let k = CtKey {
            ep_id: 1,
            saddr: [1; 16],
            daddr: [2; 16],
            sport_be: [0, 7],
            dport_be: [0, 7],
            proto: 1,
            dir: 2,
            _pad: [0; 2],
        };
        assert_eq!(convert_key(k).dport_be, [0, 0]);
        assert_eq!(convert_key(k).sport_be, [0, 7]);
        let tcp = CtKey { proto: 6, ..k };
        assert_eq!(convert_key(tcp), tcp, "TCP keys are the same in both layouts");
    }
}
