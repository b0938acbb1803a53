//! The pure part of the propagation bench: what a pod watch event says (name, address,
//! Ready), which ipcache entries count as "enforcing the pod", and each pod's timeline turned
//! into latency samples (signed: a pod's own node learns it at CNI ADD, before Ready).

use std::net::Ipv4Addr;
use std::time::Instant;

use ward_common::addr::{Addr16, is_v4_mapped};
use ward_common::identity::{FIRST_LABEL_ID, is_cidr_identity};

/// What one object of a pod watch stream says about its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEvent {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub ready: bool,
    /// A `DELETED` watch event: the object is gone from the API.
    pub deleted: bool,
}

/// The pod an object of the watch stream describes; `None` for anything that is not a pod.
/// Accepts both the API's `{type, object}` watch events and a bare object (kubectl's
/// `get -w -o json`), which cannot say `DELETED`.
pub fn pod_event(v: &serde_json::Value) -> Option<PodEvent> {
    let event = v.get("type").is_some() && v.get("object").is_some();
    let pod = if event { &v["object"] } else { v };
    if pod["kind"] != "Pod" {
        return None;
    }
    let name = pod["metadata"]["name"].as_str()?.to_owned();
    let ip = pod["status"]["podIP"].as_str().and_then(|s| s.parse().ok());
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    Some(PodEvent { name, ip, ready, deleted: event && v["type"] == "DELETED" })
}

/// Whether an ipcache value's label identity is a pod's (not world, host, unknown pod or a
/// Service): what a node needs before pod-selector rules can match the address.
pub fn is_pod_identity(identity: u32) -> bool {
    identity >= FIRST_LABEL_ID && !is_cidr_identity(identity)
}

/// The IPv4 address of a host entry of the ipcache (`/32` stored as IPv4-mapped `/128`).
pub fn host_v4(prefixlen: u32, addr: &Addr16) -> Option<Ipv4Addr> {
    (prefixlen == 128 && is_v4_mapped(addr)).then(|| Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]))
}

/// `later - earlier` in seconds, negative when `later` came first.
pub fn signed_secs(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64(),
        None => -(earlier - later).as_secs_f64(),
    }
}

/// One pod's observed moments.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Just before the bench asked the API to create it.
    pub created: Instant,
    /// The bench's watch first saw the pod with an address.
    pub ip_seen: Option<Instant>,
    /// The bench's watch first saw it Ready.
    pub ready_seen: Option<Instant>,
    /// Per node (cluster order): the first poll that found the address with a pod identity.
    pub enforced: Vec<Option<Instant>>,
    /// Index of the pod's own node in `enforced`.
    pub local: usize,
}

impl Timeline {
    pub fn new(created: Instant, nodes: usize, local: usize) -> Timeline {
        Timeline { created, ip_seen: None, ready_seen: None, enforced: vec![None; nodes], local }
    }

    /// Everything observed: the sample is whole.
    pub fn complete(&self) -> bool {
        self.ip_seen.is_some() && self.ready_seen.is_some() && self.enforced.iter().all(Option::is_some)
    }

    /// The last node to enforce the pod.
    pub fn all_enforced(&self) -> Option<Instant> {
        self.enforced.iter().copied().collect::<Option<Vec<_>>>()?.into_iter().max()
    }
}

/// Latency samples in seconds, pooled over pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// Creation request to Ready seen (kubelet, containerd, CNI ADD: not Ward's propagation).
    pub create_to_ready: Vec<f64>,
    /// Ready seen to the last node enforcing.
    pub ready_to_all: Vec<f64>,
    pub ready_to_local: Vec<f64>,
    /// One sample per (pod, remote node).
    pub ready_to_remote: Vec<f64>,
    /// Address first seen in the API to the last node enforcing.
    pub ip_to_all: Vec<f64>,
    pub ip_to_local: Vec<f64>,
    pub ip_to_remote: Vec<f64>,
}

impl Samples {
    /// Adds a complete timeline's samples; an incomplete one adds nothing (and is counted as
    /// a failure by the caller, never as a fast sample).
    pub fn add(&mut self, t: &Timeline) -> bool {
        let (Some(ip), Some(ready), Some(all)) = (t.ip_seen, t.ready_seen, t.all_enforced()) else {
            return false;
        };
        self.create_to_ready.push(signed_secs(ready, t.created));
        self.ready_to_all.push(signed_secs(all, ready));
        self.ip_to_all.push(signed_secs(all, ip));
        for (i, at) in t.enforced.iter().enumerate() {
            let at = at.expect("complete");
            if i == t.local {
                self.ready_to_local.push(signed_secs(at, ready));
                self.ip_to_local.push(signed_secs(at, ip));
            } else {
                self.ready_to_remote.push(signed_secs(at, ready));
                self.ip_to_remote.push(signed_secs(at, ip));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use ward_common::addr::v4_mapped;
    use ward_common::identity::{ID_HOST, ID_SERVICE, ID_UNKNOWN_POD, ID_WORLD};

    use super::*;

    #[test]
    fn reads_name_address_and_ready_from_both_stream_shapes() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p3"}, "status": {
            "podIP": "10.244.1.7",
            "conditions": [{"type": "ContainersReady", "status": "True"}, {"type": "Ready", "status": "True"}]}});
        let want = PodEvent { name: "p3".into(), ip: Some(Ipv4Addr::new(10, 244, 1, 7)), ready: true, deleted: false };
        assert_eq!(pod_event(&pod), Some(want.clone()));
        assert_eq!(pod_event(&json!({"type": "MODIFIED", "object": pod})), Some(want.clone()));
        assert_eq!(
            pod_event(&json!({"type": "DELETED", "object": pod})),
            Some(PodEvent { deleted: true, ..want.clone() })
        );
        let pending = json!({"kind": "Pod", "metadata": {"name": "p4"}, "status": {
            "conditions": [{"type": "Ready", "status": "False"}]}});
        assert_eq!(pod_event(&pending), Some(PodEvent { name: "p4".into(), ip: None, ready: false, deleted: false }));
        assert_eq!(pod_event(&json!({"kind": "Status", "metadata": {"name": "x"}})), None);
    }

    #[test]
    fn only_pod_label_identities_count_as_enforcing() {
        for id in [ID_WORLD, ID_HOST, ID_UNKNOWN_POD, ID_SERVICE, FIRST_LABEL_ID - 1, FIRST_LABEL_ID | (1 << 24)] {
            assert!(!is_pod_identity(id), "{id}");
        }
        assert!(is_pod_identity(FIRST_LABEL_ID));
        assert!(is_pod_identity(FIRST_LABEL_ID + 1000));
    }

    #[test]
    fn host_entries_give_their_ipv4_address_and_prefixes_do_not() {
        let a = v4_mapped([10, 244, 2, 9]);
        assert_eq!(host_v4(128, &a), Some(Ipv4Addr::new(10, 244, 2, 9)));
        assert_eq!(host_v4(120, &a), None, "a /24 is not a pod address");
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert_eq!(host_v4(128, &v6), None);
    }

    #[test]
    fn timelines_become_signed_samples_per_node_kind() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Local node learns at CNI ADD (before the API has the address), remote nodes after.
        let t = Timeline {
            created: t0,
            ip_seen: Some(ms(1000)),
            ready_seen: Some(ms(1010)),
            enforced: vec![Some(ms(1030)), Some(ms(990)), Some(ms(1050))],
            local: 1,
        };
        assert!(t.complete());
        let mut s = Samples::default();
        assert!(s.add(&t));
        let close = |got: &[f64], want: &[f64]| {
            assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
            }
        };
        close(&s.create_to_ready, &[1.010]);
        close(&s.ready_to_all, &[0.040]);
        close(&s.ip_to_all, &[0.050]);
        close(&s.ready_to_local, &[-0.020]);
        close(&s.ip_to_local, &[-0.010]);
        close(&s.ready_to_remote, &[0.020, 0.040]);
        close(&s.ip_to_remote, &[0.030, 0.050]);

        let mut missing = t.clone();
        missing.enforced[2] = None;
        assert!(!missing.complete());
        assert!(!s.add(&missing), "an incomplete timeline is no sample");
        assert_eq!(s.ready_to_all.len(), 1);
    }
}
