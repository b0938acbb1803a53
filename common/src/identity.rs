//! Security identity numbering.
//!
//! Every address resolves (through the ipcache) to two identities: a *label identity* (which
//! pod-selector peers see: derived from namespace, labels and named ports) and a *CIDR identity*
//! (which ipBlock peers see: the longest policy prefix containing the address). Keeping the two
//! apart makes ipBlock match pod addresses exactly while pod selectors stay per identity.

/// Wildcard peer in a policy key: the rule allows every peer.
pub const ID_ANY: u32 = 0;
/// Label identity of an address that is not a known pod or node, and CIDR identity of an
/// address no policy prefix contains.
pub const ID_WORLD: u32 = 1;
/// Label identity of the node's own addresses (host traffic to a pod is always allowed).
pub const ID_HOST: u32 = 2;
/// Label identity for a pod whose labels are not known yet; no selector matches it.
pub const ID_UNKNOWN_POD: u32 = 3;
/// Label identity of a Service address (`--service-cidr`): egress to it is decided after
/// kube-proxy's translation, on the backend (`crate::service`).
pub const ID_SERVICE: u32 = 4;
/// First dynamically allocated label identity.
pub const FIRST_LABEL_ID: u32 = 256;
/// CIDR identities have this bit set, so the two spaces never meet.
pub const CIDR_ID_BIT: u32 = 1 << 24;
/// Largest identity value (identities fit in 25 bits: label and CIDR spaces).
pub const MAX_ID: u32 = CIDR_ID_BIT | (CIDR_ID_BIT - 1);

pub const fn is_cidr_identity(id: u32) -> bool {
    id & CIDR_ID_BIT != 0
}
