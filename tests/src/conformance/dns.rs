//! The DNS extension of the case format (shared/conformance/README.md, "Extensions for
//! DNS-based egress and HTTP rules"): `cluster.external` hosts, `cluster.dns` records served
//! by a real DNS server in the lab ([`crate::dnslab`]), and probe targets `external/NAME`
//! (connect to the host) and `dns:NAME` (resolve from the from-pod with its own resolver,
//! glibc through /etc/resolv.conf, then connect to the first answered address; `deny` holds
//! when the connection does not succeed, whether or not the name resolved).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::dnslab::{self, DnsServer, ExternalHost, Outside, Record};
use crate::node::Node;
use crate::probe::{self, Outcome, Probe};
use crate::spec::{Family, PodRef, Serve};

use super::case::Check;

/// `cluster.external[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    pub name: String,
    #[serde(default)]
    pub serves: Vec<Serve>,
}

/// `cluster.dns[]`: addresses (`a`, `aaaa`: `external/NAME` or a literal address) or a
/// `cname`, with a TTL.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecordSpec {
    pub name: String,
    #[serde(default)]
    pub a: Vec<String>,
    #[serde(default)]
    pub aaaa: Vec<String>,
    #[serde(default)]
    pub cname: Option<String>,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

fn default_ttl() -> u32 {
    30
}

/// Where a probe goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pod(PodRef),
    /// A `cluster.external` host by name.
    External(String),
    /// Resolve this name from the from-pod, then connect to the first address.
    Dns(String),
}

impl Target {
    pub fn pod(&self) -> Option<&PodRef> {
        match self {
            Target::Pod(p) => Some(p),
            _ => None,
        }
    }

    /// Parses `ns/pod`, `external/NAME` or `dns:NAME`.
    pub fn parse(s: &str) -> Option<Target> {
        if let Some(name) = s.strip_prefix("external/") {
            return (!name.is_empty() && !name.contains('/')).then(|| Target::External(name.to_owned()));
        }
        if let Some(name) = s.strip_prefix("dns:") {
            return (!name.is_empty()).then(|| Target::Dns(name.to_owned()));
        }
        s.parse::<PodRef>().ok().map(Target::Pod)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pod(p) => write!(f, "{p}"),
            Target::External(n) => write!(f, "external/{n}"),
            Target::Dns(n) => write!(f, "dns:{n}"),
        }
    }
}

/// Checks the extension's parts of a cluster: record values name listed hosts, a record has
/// exactly one kind of data. `Err((path, message))`.
pub fn validate(external: &[ExternalSpec], dns: &[DnsRecordSpec]) -> Result<(), (String, String)> {
    for (i, h) in external.iter().enumerate() {
        if external[..i].iter().any(|o| o.name == h.name) {
            return Err((format!("cluster.external[{i}]"), format!("host {} is listed twice", h.name)));
        }
    }
    for (i, r) in dns.iter().enumerate() {
        let path = format!("cluster.dns[{i}]");
        let kinds = usize::from(!r.a.is_empty() || !r.aaaa.is_empty()) + usize::from(r.cname.is_some());
        if kinds != 1 {
            return Err((path, format!("record {} needs addresses (a/aaaa) or a cname, not both or neither", r.name)));
        }
        for (field, values) in [("a", &r.a), ("aaaa", &r.aaaa)] {
            for (j, v) in values.iter().enumerate() {
                let ok = match v.strip_prefix("external/") {
                    Some(host) => external.iter().any(|h| h.name == host),
                    None => v.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4() == (field == "a")),
                };
                if !ok {
                    return Err((
                        format!("{path}.{field}[{j}]"),
                        format!(
                            "{v:?} is neither a listed external host (external/NAME) nor an address of that family"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A lab's outside world, built for a scenario.
#[derive(Debug, Default)]
pub struct Extension {
    outside: Outside,
}

impl Extension {
    /// The external hosts (numbered from 1 in file order) and, if there are records, the DNS
    /// server with them.
    pub fn build(node: &Node, external: &[ExternalSpec], dns: &[DnsRecordSpec]) -> Result<Extension, String> {
        let mut outside = Outside::default();
        for (i, h) in external.iter().enumerate() {
            let n = u8::try_from(i + 1).ok().filter(|n| *n < dnslab::DNS_HOST).ok_or("too many external hosts")?;
            let host = ExternalHost::create(node, &h.name, n, &h.serves).map_err(|e| e.to_string())?;
            outside.hosts.insert(h.name.clone(), host);
        }
        if !dns.is_empty() {
            let mut records = Vec::new();
            for r in dns {
                let resolve = |v: &String, v6: bool| -> Result<IpAddr, String> {
                    match v.strip_prefix("external/") {
                        Some(h) => outside.hosts.get(h).map(|h| h.ip(v6)).ok_or(format!("no external host {h}")),
                        None => v.parse().map_err(|_| format!("{v:?} is not an address")),
                    }
                };
                if let Some(target) = &r.cname {
                    records.push(Record::Cname { name: r.name.clone(), target: target.clone(), ttl: r.ttl });
                } else {
                    let mut addrs = Vec::new();
                    for v in &r.a {
                        addrs.push(resolve(v, false)?);
                    }
                    for v in &r.aaaa {
                        addrs.push(resolve(v, true)?);
                    }
                    records.push(Record::Addrs { name: r.name.clone(), addrs, ttl: r.ttl });
                }
            }
            outside.dns = Some(DnsServer::start(node, &records).map_err(|e| e.to_string())?);
        }
        Ok(Extension { outside })
    }

    /// The probe for `check` (not yet run).
    pub fn plan(&mut self, node: &Node, check: &Check) -> Result<Planned, String> {
        let timeout = probe::DEFAULT_TIMEOUT;
        let v6 = check.family == Family::IPv6;
        match &check.to {
            Target::Pod(to) => node
                .probe_spec(&check.from, to, check.port, check.protocol, check.family)
                .map(|p| Planned::Direct(Probe { http: check.http.clone(), ..p }))
                .map_err(|e| e.to_string()),
            Target::External(name) => {
                let host = self.outside.hosts.get(name).ok_or(format!("no external host {name}"))?;
                let from = node.pod(&check.from).map_err(|e| e.to_string())?;
                Ok(Planned::Direct(Probe {
                    from_netns: from.netns().name().to_owned(),
                    from_path: from.netns().path().to_owned(),
                    to: SocketAddr::new(host.ip(v6), check.port),
                    protocol: check.protocol,
                    timeout,
                    http: check.http.clone(),
                }))
            }
            Target::Dns(name) => {
                let from = node.pod(&check.from).map_err(|e| e.to_string())?;
                let netns = from.netns().name().to_owned();
                self.outside.resolv_conf(&netns).map_err(|e| e.to_string())?;
                Ok(Planned::ByName(NameProbe {
                    probe: Probe {
                        from_netns: netns,
                        from_path: from.netns().path().to_owned(),
                        to: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), check.port),
                        protocol: check.protocol,
                        timeout,
                        http: check.http.clone(),
                    },
                    name: name.clone(),
                    v6,
                }))
            }
        }
    }

    /// A check per served port of each external host, from `from`: they answer.
    pub fn readiness(&self, from: &PodRef, external: &[ExternalSpec]) -> Vec<Check> {
        let mut out = Vec::new();
        for h in external {
            for s in &h.serves {
                out.push(Check {
                    from: from.clone(),
                    to: Target::External(h.name.clone()),
                    port: s.port,
                    protocol: s.protocol,
                    family: Family::IPv4,
                    allow: true,
                    notation: super::case::Notation::Words,
                    http: s.http.then(|| crate::http::HttpRequest::new("GET", "/")),
                });
            }
        }
        out
    }
}

/// A `dns:NAME` probe: resolve inside the from-pod, then connect.
#[derive(Clone, Debug)]
pub struct NameProbe {
    /// `to` is filled in with the first answered address.
    probe: Probe,
    name: String,
    v6: bool,
}

/// A probe ready to run.
#[derive(Clone, Debug)]
pub enum Planned {
    Direct(Probe),
    ByName(NameProbe),
}

/// How long the from-pod's resolver may take (resolv.conf: 1 s, 3 tries).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(4);

/// Runs every probe, at most `parallelism` at once; results in input order.
pub fn run_all(planned: &[Planned], parallelism: usize) -> Vec<Outcome> {
    // Names first (each a short process), then every connection in one parallel wave.
    let mut direct: Vec<Option<Probe>> = Vec::with_capacity(planned.len());
    let mut failed: Vec<Option<Outcome>> = vec![None; planned.len()];
    let resolved: Vec<Result<IpAddr, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = planned
            .iter()
            .map(|p| {
                s.spawn(move || match p {
                    Planned::Direct(_) => Ok(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                    Planned::ByName(n) => dnslab::getent(&n.probe.from_netns, &n.name, n.v6, RESOLVE_TIMEOUT)
                        .and_then(|ips| ips.first().copied().ok_or(format!("{} has no address", n.name))),
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("resolver thread panicked".into()))).collect()
    });
    for (i, (p, r)) in planned.iter().zip(resolved).enumerate() {
        match (p, r) {
            (Planned::Direct(d), _) => direct.push(Some(d.clone())),
            (Planned::ByName(n), Ok(ip)) => {
                let mut d = n.probe.clone();
                d.to = SocketAddr::new(ip, d.to.port());
                direct.push(Some(d));
            }
            (Planned::ByName(_), Err(e)) => {
                direct.push(None);
                failed[i] = Some(Outcome::Failed(e));
            }
        }
    }
    let to_run: Vec<Probe> = direct.iter().flatten().cloned().collect();
    let mut outcomes = probe::probe_all(&to_run, parallelism).into_iter();
    direct
        .iter()
        .zip(failed)
        .map(|(d, f)| match (d, f) {
            (Some(_), _) => outcomes.next().unwrap_or(Outcome::Failed("probe lost".into())),
            (None, f) => f.unwrap_or(Outcome::Failed("not resolved".into())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_pods_hosts_and_names() {
        assert_eq!(Target::parse("a/b"), Some(Target::Pod(PodRef::new("a", "b"))));
        assert_eq!(Target::parse("external/bank"), Some(Target::External("bank".into())));
        assert_eq!(Target::parse("dns:api.bank.example"), Some(Target::Dns("api.bank.example".into())));
        assert_eq!(Target::parse("dns:"), None);
        assert_eq!(Target::parse("external/"), None);
        assert_eq!(Target::parse("nonsense"), None);
        assert_eq!(Target::Dns("x.example".into()).to_string(), "dns:x.example");
    }

    #[test]
    fn records_must_name_listed_hosts_and_one_kind_of_data() {
        let hosts = vec![ExternalSpec { name: "bank".into(), serves: vec![] }];
        let rec = |a: &[&str], cname: Option<&str>| DnsRecordSpec {
            name: "api.bank.example".into(),
            a: a.iter().map(|s| s.to_string()).collect(),
            aaaa: vec![],
            cname: cname.map(str::to_owned),
            ttl: 30,
        };
        assert!(validate(&hosts, &[rec(&["external/bank"], None)]).is_ok());
        assert!(validate(&hosts, &[rec(&["192.0.2.1"], None)]).is_ok());
        let (path, msg) = validate(&hosts, &[rec(&["external/atm"], None)]).unwrap_err();
        assert_eq!(path, "cluster.dns[0].a[0]");
        assert!(msg.contains("external/atm"), "{msg}");
        assert!(validate(&hosts, &[rec(&["external/bank"], Some("x.example"))]).is_err());
        assert!(validate(&hosts, &[rec(&[], None)]).is_err());
        let twice = vec![hosts[0].clone(), hosts[0].clone()];
        assert_eq!(validate(&twice, &[]).unwrap_err().0, "cluster.external[1]");
    }
}
