//! Verdicts, directions and reason codes. These numbers are stable: they appear in flow
//! records, metric labels and pinned maps, so a value is never renumbered or reused.

/// What happened to a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Allow = 1,
    Drop = 2,
}

impl TryFrom<u8> for Verdict {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Verdict::Allow),
            2 => Ok(Verdict::Drop),
            other => Err(other),
        }
    }
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allowed",
            Verdict::Drop => "dropped",
        }
    }
}

/// Which way a packet crosses the pod boundary, seen from the pod (the policy subject).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Entering the pod (`to_pod` program): NetworkPolicy ingress rules apply.
    Ingress = 1,
    /// Leaving the pod (`from_pod` program): NetworkPolicy egress rules apply.
    Egress = 2,
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Direction::Ingress),
            2 => Ok(Direction::Egress),
            other => Err(other),
        }
    }
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
    pub const fn opposite(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }
}

/// Why a verdict was reached. Values below [`Reason::FIRST_DROP`] accompany an allow, the
/// rest a drop. Never renumber: flow records, metrics and pinned counters use these values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A new flow allowed by a policy rule (the event carries the rule id).
    PolicyAllow = 1,
    /// A packet of a flow already allowed in this direction (conntrack hit).
    Established = 2,
    /// A reply of a flow allowed in the other direction (conntrack hit).
    Reply = 3,
    /// No policy selects the pod for this direction, so it is not isolated.
    NotIsolated = 4,
    /// Traffic the pod's own node sent, always allowed (NetworkPolicy spec).
    FromHost = 5,
    /// An ICMP error about a current tracked flow, going back to the sender of the packet it
    /// quotes.
    Related = 6,
    /// ARP, or IPv6 neighbour discovery / MLD within what those protocols need (link-local
    /// addresses, hop limit, the pod's own addresses): not policed.
    NotPoliced = 7,
    /// A later fragment of a datagram whose first fragment was allowed here.
    TrackedFragment = 8,
    /// A new flow to a Service address from an egress-isolated pod: passed on to kube-proxy's
    /// translation and decided on the backend where it leaves routing (`crate::service`).
    ServicePending = 9,
    /// A pod reaching itself through its own Service (kube-proxy's hairpin, which gives the
    /// packet a node source address): like the pod's own loopback, never policed.
    Loopback = 10,
    /// A new flow the enforced policies allow (they do not isolate the pod in this
    /// direction) but the audited policies would deny if they were enforced: it passes, and
    /// its record has the verdict AUDIT with the audited policies isolating the pod.
    Audit = 11,

    /// The pod is isolated in this direction and no rule allows the peer/port (default deny).
    PolicyDenied = 64,
    /// A tracked flow whose allowing rule was removed: cut on its next packet.
    PolicyRevoked = 65,
    /// The interface carries Ward's program but no endpoint is registered for it.
    UnknownEndpoint = 66,
    /// A packet left a pod with a source address that is not the pod's.
    SpoofedSource = 67,
    /// The packet could not be parsed far enough to decide.
    Malformed = 68,
    /// A non-first IP fragment whose first fragment was not allowed here (or not seen).
    Fragment = 69,
    /// A map operation needed for the decision failed.
    MapError = 70,
    /// The endpoint holds as many tracked flows as its quota allows: a new flow is refused.
    CtQuota = 71,
    /// A frame that is neither IP nor ARP.
    UnsupportedProtocol = 72,
    /// A new flow to an address learned from a DNS answer whose lifetime (TTL plus grace)
    /// has run out; the pod must resolve the name again. Tracked flows are not cut.
    FqdnExpired = 73,
    /// DNS of a pod served by the DNS proxy while no proxy socket listens: DNS fails closed.
    DnsProxyDown = 74,
    /// A packet entering a pod for an address that is not the pod's, from anyone but the
    /// node's own stack: nothing routes such packets to a pod.
    NotForPod = 75,
    /// A packet deferred to Service translation whose pending entry is gone, stale or not
    /// its own, or whose deferral found no free slot: dropped, never passed undecided.
    ServiceUnresolved = 76,
    /// The pod is isolated in this direction, no rule allows the peer, and the peer's address
    /// lies in a cluster pod range (`spec.podCIDRs` of a Node) without a known pod: most
    /// likely a new pod whose Pod object this node has not seen yet (the identity race).
    /// Decided exactly as `PolicyDenied`; only the name differs.
    IdentityUnknown = 77,
}

impl Reason {
    /// Reason codes from this value up are drops.
    pub const FIRST_DROP: u8 = 64;
    /// Upper bound (exclusive) of reason codes; sizes the per-reason counter array.
    pub const COUNT: u32 = 128;

    pub const ALL: [Reason; 25] = [
        Reason::PolicyAllow,
        Reason::Established,
        Reason::Reply,
        Reason::NotIsolated,
        Reason::FromHost,
        Reason::Related,
        Reason::NotPoliced,
        Reason::TrackedFragment,
        Reason::ServicePending,
        Reason::Loopback,
        Reason::Audit,
        Reason::PolicyDenied,
        Reason::PolicyRevoked,
        Reason::UnknownEndpoint,
        Reason::SpoofedSource,
        Reason::Malformed,
        Reason::Fragment,
        Reason::MapError,
        Reason::CtQuota,
        Reason::UnsupportedProtocol,
        Reason::FqdnExpired,
        Reason::DnsProxyDown,
        Reason::NotForPod,
        Reason::ServiceUnresolved,
        Reason::IdentityUnknown,
    ];

    pub const fn verdict(self) -> Verdict {
        if (self as u8) < Self::FIRST_DROP { Verdict::Allow } else { Verdict::Drop }
    }

    /// Stable snake_case name, used as a metric label and in JSON flow records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::PolicyAllow => "policy_allow",
            Reason::Established => "established",
            Reason::Reply => "reply",
            Reason::NotIsolated => "not_isolated",
            Reason::FromHost => "from_host",
            Reason::Related => "related",
            Reason::NotPoliced => "not_policed",
            Reason::TrackedFragment => "tracked_fragment",
            Reason::Audit => "audit",
            Reason::PolicyDenied => "policy_denied",
            Reason::PolicyRevoked => "policy_revoked",
            Reason::UnknownEndpoint => "unknown_endpoint",
            Reason::SpoofedSource => "spoofed_source",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
            Reason::MapError => "map_error",
            Reason::CtQuota => "ct_quota",
            Reason::UnsupportedProtocol => "unsupported_protocol",
            Reason::FqdnExpired => "fqdn_expired",
            Reason::DnsProxyDown => "dns_proxy_down",
            Reason::NotForPod => "not_for_pod",
            Reason::ServicePending => "service_pending",
            Reason::Loopback => "loopback",
            Reason::ServiceUnresolved => "service_unresolved",
            Reason::IdentityUnknown => "identity_unknown",
        }
    }
}

impl TryFrom<u8> for Reason {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        for r in Reason::ALL {
            if r as u8 == v {
                return Ok(r);
            }
        }
        Err(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_drops_are_above_the_line() {
        for r in Reason::ALL {
            assert_eq!(Reason::try_from(r as u8), Ok(r));
            assert!((r as u32) < Reason::COUNT);
            assert_eq!(r.verdict() == Verdict::Drop, r as u8 >= Reason::FIRST_DROP, "{r:?}");
        }
        assert_eq!(Reason::try_from(0), Err(0));
    }

    /// `ALL` is hand-written: this match has no wildcard arm, so a new variant fails to
    /// compile here until it is added to the list below, which must equal `ALL`.
    #[test]
    fn all_lists_every_reason_once() {
        fn index(r: Reason) -> usize {
            match r {
                Reason::PolicyAllow => 0,
                Reason::Established => 1,
                Reason::Reply => 2,
                Reason::NotIsolated => 3,
                Reason::FromHost => 4,
                Reason::Related => 5,
                Reason::NotPoliced => 6,
                Reason::TrackedFragment => 7,
                Reason::ServicePending => 8,
                Reason::Loopback => 9,
                Reason::Audit => 10,
                Reason::PolicyDenied => 11,
                Reason::PolicyRevoked => 12,
                Reason::UnknownEndpoint => 13,
                Reason::SpoofedSource => 14,
                Reason::Malformed => 15,
                Reason::Fragment => 16,
                Reason::MapError => 17,
                Reason::CtQuota => 18,
                Reason::UnsupportedProtocol => 19,
                Reason::FqdnExpired => 20,
                Reason::DnsProxyDown => 21,
                Reason::NotForPod => 22,
                Reason::ServiceUnresolved => 23,
                Reason::IdentityUnknown => 24,
            }
        }
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(index(*r), i, "{r:?}");
        }
    }
}
