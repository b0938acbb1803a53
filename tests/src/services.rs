//! Service addresses for a lab node's pods (`NodeConfig::services`): each pod gets a
//! ClusterIP-like address per family, translated to the pod by netfilter in the node's
//! namespace with the two rules kube-proxy (iptables mode) writes for a one-endpoint Service:
//! a DNAT of the Service address to the endpoint, and a masquerade of the endpoint reaching
//! itself through it (hairpin). Probes then go through the translation, as upstream's e2e
//! probes go through Services, and the agent decides them with its Service handling
//! (`--service-cidr`). Ports are kept (the Service's port is its target port).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::spec::{Family, PodRef};

/// The Service ranges of node `index`: `172.31.<index>.0/24` and `fd77:5e:0:<index>::/112`,
/// outside every pod CIDR and node address of the lab (and outside 10.0.0.0/8, which the
/// conformance cases' ipBlocks use).
pub fn cidrs(index: u8) -> Vec<IpNet> {
    vec![
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(172, 31, index, 0), 24).unwrap_or_default()),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0xfd77, 0x5e, 0, index.into(), 0, 0, 0, 0), 112).unwrap_or_default()),
    ]
}

/// The Service addresses of one node's pods and the rules behind them.
#[derive(Debug)]
pub struct ServiceFront {
    netns: String,
    index: u8,
    next: u16,
    /// Pod to (Service address, pod address) per family.
    by_pod: BTreeMap<PodRef, Vec<(IpAddr, IpAddr)>>,
}

impl ServiceFront {
    pub fn new(netns: &str, index: u8) -> Self {
        ServiceFront { netns: netns.to_owned(), index, next: 1, by_pod: BTreeMap::new() }
    }

    /// Gives `pod` (with addresses `ips`) a Service address per family.
    pub fn expose(&mut self, pod: &PodRef, ips: &[IpAddr]) -> Result<(), String> {
        if self.next > 254 {
            return Err(format!("no Service address left for {pod} (254 per node)"));
        }
        let n = self.next;
        self.next += 1;
        let mut pairs = Vec::new();
        for ip in ips {
            let svc = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(172, 31, self.index, n as u8)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfd77, 0x5e, 0, self.index.into(), 0, 0, 0, n)),
            };
            self.rules("-A", svc, *ip)?;
            pairs.push((svc, *ip));
        }
        self.by_pod.insert(pod.clone(), pairs);
        Ok(())
    }

    /// Removes `pod`'s Service addresses (its pod is gone).
    pub fn withdraw(&mut self, pod: &PodRef) -> Result<(), String> {
        for (svc, ip) in self.by_pod.remove(pod).unwrap_or_default() {
            self.rules("-D", svc, ip)?;
        }
        Ok(())
    }

    /// `pod`'s Service address of `family`.
    pub fn address(&self, pod: &PodRef, family: Family) -> Option<IpAddr> {
        self.by_pod.get(pod)?.iter().map(|(svc, _)| *svc).find(|svc| match family {
            Family::IPv4 => svc.is_ipv4(),
            Family::IPv6 => svc.is_ipv6(),
        })
    }

    fn rules(&self, op: &str, svc: IpAddr, pod: IpAddr) -> Result<(), String> {
        let tool = if svc.is_ipv4() { "iptables" } else { "ip6tables" };
        let (svc, pod) = (svc.to_string(), pod.to_string());
        let dnat_to = if pod.contains(':') { format!("[{pod}]") } else { pod.clone() };
        let rules: [Vec<&str>; 2] = [
            vec!["-t", "nat", op, "PREROUTING", "-d", &svc, "-j", "DNAT", "--to-destination", &dnat_to],
            vec!["-t", "nat", op, "POSTROUTING", "-s", &pod, "-d", &pod, "-j", "MASQUERADE"],
        ];
        for rule in rules {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.netns, tool, "-w"])
                .args(&rule)
                .output()
                .map_err(|e| format!("{tool}: {e}"))?;
            if !out.status.success() {
                return Err(format!("{tool} {}: {}", rule.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_ranges_stay_clear_of_the_lab_and_the_cases_blocks() {
        for index in [1u8, 2, 200] {
            let [v4, v6] = <[IpNet; 2]>::try_from(cidrs(index)).expect("two ranges");
            assert!(!"10.0.0.0/8".parse::<IpNet>().unwrap().contains(&v4));
            assert!(!"fd77::/64".parse::<IpNet>().unwrap().contains(&v6));
            assert!(v4.contains(&IpAddr::V4(Ipv4Addr::new(172, 31, index, 254))));
            assert!(v6.contains(&IpAddr::V6(Ipv6Addr::new(0xfd77, 0x5e, 0, index.into(), 0, 0, 0, 254))));
        }
    }
}
