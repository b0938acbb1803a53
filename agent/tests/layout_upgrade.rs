//! A node pinned under layout v1 (the LRU conntrack era) is carried over by this agent's
//! datapath without a gap: its tracked flows are copied (converted) into the new table and
//! counted, its pinned links move to the new directory still attached, and once finished the
//! links run the new programs and the old pins are gone. The v1 state is made the way a v1
//! agent left it: bpftool creates the v1 conntrack map, and a real TCX link is pinned at the
//! v1 path. Root required (see `support`).

mod support;

use std::process::Command;

use ward_agent::datapath::Datapath;
use ward_common::maps::{CtKey, MAP_CT};

use support::*;

fn bpftool(args: &[&str]) {
    let out = Command::new("bpftool").args(args).output().expect("run bpftool");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Removes both pin directories, also when the test panics.
struct Cleanup(std::path::PathBuf, std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_v1_node_is_carried_over_with_its_flows_and_links() {
    if !privileged() {
        return;
    }
    let node = format!("ward-test-{}-upgrade", std::process::id());
    let bpffs = std::path::Path::new("/sys/fs/bpf");
    let v1 = bpffs.join("ward/v1").join(&node);
    let _ = std::fs::remove_dir_all(&v1);
    std::fs::create_dir_all(v1.join("links")).expect("v1 dir");
    let v2 = ward_agent::datapath::pin_dir(bpffs, &node);
    let _cleanup = Cleanup(v1.clone(), v2.clone());

    // The v1 conntrack table with one tracked TCP flow and one ICMP echo (v1: id as both ports).
    let ct_pin = v1.join(MAP_CT);
    let ct_pin_s = ct_pin.to_string_lossy().into_owned();
    bpftool(&[
        "map", "create", &ct_pin_s, "type", "lru_hash", "key", "44", "value", "16", "entries", "1024", "name",
        "WARD_CT",
    ]);
    let key = |proto: u8, sport: u16, dport: u16| CtKey {
        ep_id: EP_ID,
        saddr: ward_common::addr::v4_mapped(POD.octets()),
        daddr: ward_common::addr::v4_mapped(PEER.octets()),
        sport_be: sport.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
        proto,
        dir: ward_common::Direction::Egress as u8,
        _pad: [0; 2],
    };
    let key_bytes = |k: &CtKey| {
        // SAFETY: CtKey is repr(C) with explicit padding, 44 bytes.
        unsafe { std::slice::from_raw_parts((k as *const CtKey).cast::<u8>(), std::mem::size_of::<CtKey>()) }.to_vec()
    };
    let value_v1 = |rule: u32| {
        let mut v = 5u32.to_ne_bytes().to_vec();
        v.extend_from_slice(&rule.to_ne_bytes());
        v.extend_from_slice(&123u64.to_ne_bytes());
        v
    };
    for (k, rule) in [(key(TCP, 40000, 443), 9u32), (key(ICMP, 77, 77), 10)] {
        let mut args: Vec<String> =
            vec!["map".into(), "update".into(), "pinned".into(), ct_pin_s.clone(), "key".into(), "hex".into()];
        args.extend(hex(&key_bytes(&k)));
        args.extend(["value".into(), "hex".into()]);
        args.extend(hex(&value_v1(rule)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bpftool(&args);
    }

    // A real link on an interface of a namespace of the test's own, pinned at the v1 path.
    let ns = IfaceNs::new("upgrade", 1);
    let ifindex = ns.ifindexes[0];
    ns.run(|| {
        let scratch_node = format!("{node}-scratch");
        let mut scratch = Datapath::open(bpffs, &scratch_node).expect("scratch datapath");
        scratch.attach("ta0", ifindex).expect("attach");
        for suffix in ["from", "to"] {
            let name = format!("{ifindex}-{suffix}");
            std::fs::rename(scratch.pin_dir().join("links").join(&name), v1.join("links").join(&name))
                .expect("move pin");
        }
        let _ = std::fs::remove_dir_all(scratch.pin_dir());
    });

    // The new agent's datapath finds the v1 node.
    let mut dp = Datapath::open(bpffs, &node).expect("open over a v1 node");
    let links_v2: Vec<String> = std::fs::read_dir(v2.join("links"))
        .expect("v2 links")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(links_v2.len(), 2, "both links moved: {links_v2:?}");
    assert!(std::fs::read_dir(v1.join("links")).expect("v1 links").next().is_none(), "none left at the v1 path");
    let data = aya::maps::MapData::from_pin(v2.join(MAP_CT)).expect("v2 ct");
    let ct: aya::maps::HashMap<_, CtKey, ward_common::maps::CtValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("hash");
    let tcp = ct.get(&key(TCP, 40000, 443), 0).expect("the TCP flow carried over");
    assert_eq!((tcp.rule_id, tcp.rev, tcp.created_ns), (9, 0, 123), "revision 0: re-checked on its next packet");
    assert!(ct.get(&key(ICMP, 77, 0), 0).is_ok(), "the echo carried over as a request (id, 0)");
    assert!(ct.get(&key(ICMP, 77, 77), 0).is_err());
    assert_eq!(dp.maps.ct_in_use().get(&EP_ID), Some(&2), "counted towards the endpoint's quota");
    // Finished: the links stay pinned (now with the new programs) and the v1 pins are gone.
    assert_eq!(dp.finish_migration(), Some((1, 2, 2)));
    assert!(!v1.exists(), "the v1 node's pins are removed");
    for name in &links_v2 {
        assert!(v2.join("links").join(name).exists(), "{name} still pinned");
    }
    ns.run(|| dp.detach(ifindex));
}

/// A v2 node left by an agent that counted per reason only (`WARD_REASON_CNT`, 128 slots):
/// this agent's datapath pins the per-direction counter beside it at its full size and
/// unlinks the retired pin, while the rest of the v2 pins are adopted as they are.
#[test]
fn a_v2_node_with_the_retired_reason_counter_gets_the_per_direction_one() {
    use aya::maps::MapInfo;
    use ward_common::maps::{MAP_REASON_CNT_RETIRED, MAP_REASON_DIR, REASON_DIR_MAX};
    if !privileged() {
        return;
    }
    let node = format!("ward-test-{}-retired", std::process::id());
    let bpffs = std::path::Path::new("/sys/fs/bpf");
    let v2 = ward_agent::datapath::pin_dir(bpffs, &node);
    let _ = std::fs::remove_dir_all(&v2);
    std::fs::create_dir_all(&v2).expect("v2 dir");
    let _cleanup = Cleanup(v2.clone(), v2.clone());
    let old = v2.join(MAP_REASON_CNT_RETIRED);
    let old_s = old.to_string_lossy().into_owned();
    bpftool(&[
        "map",
        "create",
        &old_s,
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "16",
        "entries",
        "128",
        "name",
        "WARD_REASON_CNT",
    ]);
    let dp = Datapath::open(bpffs, &node).expect("load over the v2 pins");
    assert!(!old.exists(), "the retired counter's pin is removed");
    let info = MapInfo::from_pin(v2.join(MAP_REASON_DIR)).expect("the per-direction counter is pinned");
    assert_eq!(info.max_entries(), REASON_DIR_MAX);
    let counts = dp.maps.reason_counters().expect("the new counter reads");
    assert_eq!(counts.len(), 2 * ward_common::Reason::ALL.len(), "every (reason, direction)");
    assert!(counts.values().all(|c| c.packets == 0), "a fresh counter starts at zero");
}
