//! The 9-pod model every case without `cluster:` runs on: namespaces x, y, z (labelled
//! `kubernetes.io/metadata.name` by the lab and `ns: <name>` here), pods a, b, c in each,
//! labelled `pod: <letter>`, each serving TCP and UDP on 80 and 81 with upstream's
//! containerPort names.

use crate::spec::{NamespaceSpec, PodRef, PodSpec, Protocol, Serve};

use super::case::ClusterSpec;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
/// The served (port, protocol) pairs.
pub const SERVED: [(u16, Protocol); 4] =
    [(80, Protocol::Tcp), (81, Protocol::Tcp), (80, Protocol::Udp), (81, Protocol::Udp)];

/// Row and column order of every matrix: x/a x/b x/c y/a ... z/c.
pub fn pods() -> Vec<PodRef> {
    NAMESPACES.iter().flat_map(|ns| POD_NAMES.iter().map(move |p| PodRef::new(ns, p))).collect()
}

pub fn cluster() -> ClusterSpec {
    ClusterSpec {
        namespaces: NAMESPACES
            .iter()
            .map(|ns| NamespaceSpec { name: (*ns).to_owned(), labels: [("ns".to_owned(), (*ns).to_owned())].into() })
            .collect(),
        pods: pods()
            .into_iter()
            .map(|r| PodSpec {
                labels: [("pod".to_owned(), r.name.clone())].into(),
                serves: SERVED
                    .iter()
                    .map(|&(port, proto)| Serve::new(port, proto, Some(&format!("serve-{port}-{}", proto.lower()))))
                    .collect(),
                namespace: r.namespace,
                name: r.name,
            })
            .collect(),
        ..ClusterSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_has_nine_pods_in_matrix_order_serving_four_named_ports() {
        let c = cluster();
        let names: Vec<String> = c.pods.iter().map(|p| p.pod_ref().to_string()).collect();
        assert_eq!(names, ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]);
        assert_eq!(c.pods[4].labels["pod"], "b");
        let ports: Vec<_> = c.pods[0].serves.iter().map(|s| s.name.clone().unwrap_or_default()).collect();
        assert_eq!(ports, ["serve-80-tcp", "serve-81-tcp", "serve-80-udp", "serve-81-udp"]);
        assert_eq!(c.namespaces[1].labels["ns"], "y");
    }
}
