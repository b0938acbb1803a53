//! The `CNI_*` environment variables: which command to run and on which attachment.
//!
//! Pure parsing over a lookup function, so it is tested without touching the process
//! environment. Values are validated here, once, so that later stages (IPAM file contents,
//! interface names) can rely on them. Which variables each command needs is the spec's
//! table (1.1.0, section 2): STATUS and GC have no attachment; GC needs `CNI_PATH`.

use std::path::PathBuf;

/// The commands of CNI 1.1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "ADD" => Some(Self::Add),
            "DEL" => Some(Self::Del),
            "CHECK" => Some(Self::Check),
            "STATUS" => Some(Self::Status),
            "GC" => Some(Self::Gc),
            "VERSION" => Some(Self::Version),
            _ => None,
        }
    }
}

/// The pod that owns the sandbox, from `CNI_ARGS` (set by the kubelet's runtime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// One attachment: a container's interface in a network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS`; required for ADD and CHECK, optional for DEL (the sandbox may be gone).
    pub netns: Option<PathBuf>,
    /// Required for ADD only.
    pub pod: Option<PodRef>,
}

/// What the environment asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    Version,
    Add(Attachment, PodRef),
    Del(Attachment),
    Check(Attachment),
    Status,
    Gc,
}

/// One invocation: the verb and where delegated plugins are looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub verb: Verb,
    /// `CNI_PATH`, split on ':' (empty entries dropped). Needed to run a delegated IPAM
    /// plugin; required for GC.
    pub cni_path: Vec<PathBuf>,
    /// The raw `CNI_*` variables a delegated plugin must receive unchanged (section 4).
    pub passthrough: Vec<(&'static str, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("{var} is not set")]
    Missing { var: &'static str },
    #[error("unknown CNI_COMMAND {value:?} (expected ADD, DEL, CHECK, STATUS, GC or VERSION)")]
    UnknownCommand { value: String },
    #[error(
        "CNI_CONTAINERID {value:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
    )]
    ContainerId { value: String },
    #[error("CNI_IFNAME {value:?} is not a valid interface name: {reason}")]
    IfName { value: String, reason: &'static str },
    #[error("CNI_NETNS {value:?} must be an absolute path")]
    NetnsPath { value: String },
    #[error("CNI_ARGS: malformed entry {entry:?} (expected KEY=VALUE pairs separated by ';')")]
    ArgsEntry { entry: String },
    #[error("CNI_ARGS: {key} is required for ADD")]
    ArgsMissing { key: &'static str },
}

const POD_NAMESPACE_KEY: &str = "K8S_POD_NAMESPACE";
/// Runtimes outside Kubernetes (podman) pass only `K8S_POD_NAME`: their containers are pods
/// of this namespace.
const DEFAULT_POD_NAMESPACE: &str = "default";
const POD_NAME_KEY: &str = "K8S_POD_NAME";
/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;
/// What a delegated plugin gets from our environment (section 4: "all the same environment
/// variables that were passed in to the CNI plugin").
const PASSTHROUGH: [&str; 6] = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];

/// Reads the invocation from `var` (the process environment in the binary).
pub fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Invocation, EnvError> {
    let value = |name: &'static str| var(name).filter(|v| !v.is_empty());
    let command = value("CNI_COMMAND").ok_or(EnvError::Missing { var: "CNI_COMMAND" })?;
    let command = Command::parse(&command).ok_or(EnvError::UnknownCommand { value: command })?;
    let raw_path = value("CNI_PATH");
    let cni_path: Vec<PathBuf> =
        raw_path.as_deref().unwrap_or("").split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
    let passthrough: Vec<(&'static str, String)> = PASSTHROUGH.iter().filter_map(|&k| var(k).map(|v| (k, v))).collect();
    let invocation = |verb| Invocation { verb, cni_path: cni_path.clone(), passthrough: Vec::clone(&passthrough) };
    match command {
        Command::Version => return Ok(invocation(Verb::Version)),
        Command::Status => return Ok(invocation(Verb::Status)),
        Command::Gc if cni_path.is_empty() => return Err(EnvError::Missing { var: "CNI_PATH" }),
        Command::Gc => return Ok(invocation(Verb::Gc)),
        Command::Add | Command::Del | Command::Check => {}
    }

    let container_id = value("CNI_CONTAINERID").ok_or(EnvError::Missing { var: "CNI_CONTAINERID" })?;
    validate_container_id(&container_id)?;
    let ifname = value("CNI_IFNAME").ok_or(EnvError::Missing { var: "CNI_IFNAME" })?;
    validate_ifname(&ifname)?;
    let netns = match value("CNI_NETNS") {
        Some(p) if p.starts_with('/') => Some(PathBuf::from(p)),
        Some(p) => return Err(EnvError::NetnsPath { value: p }),
        None => None,
    };
    let (pod_namespace, pod_name) = parse_pod_args(value("CNI_ARGS").as_deref().unwrap_or(""))?;
    let pod_namespace = match (pod_namespace, &pod_name) {
        (None, Some(_)) => Some(DEFAULT_POD_NAMESPACE.to_owned()),
        (ns, _) => ns,
    };
    let pod = match (&pod_namespace, &pod_name) {
        (Some(namespace), Some(name)) => Some(PodRef { namespace: namespace.clone(), name: name.clone() }),
        _ => None,
    };
    let attachment = Attachment { container_id, ifname, netns, pod };

    let verb = match command {
        Command::Add => {
            if attachment.netns.is_none() {
                return Err(EnvError::Missing { var: "CNI_NETNS" });
            }
            let name = pod_name.ok_or(EnvError::ArgsMissing { key: POD_NAME_KEY })?;
            let pod =
                PodRef { namespace: pod_namespace.ok_or(EnvError::ArgsMissing { key: POD_NAMESPACE_KEY })?, name };
            Verb::Add(attachment, pod)
        }
        Command::Check => {
            if attachment.netns.is_none() {
                return Err(EnvError::Missing { var: "CNI_NETNS" });
            }
            Verb::Check(attachment)
        }
        _ => Verb::Del(attachment),
    };
    Ok(invocation(verb))
}

/// The spec's rule for container IDs; it also keeps newlines out of IPAM files.
pub fn validate_container_id(id: &str) -> Result<(), EnvError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok { Ok(()) } else { Err(EnvError::ContainerId { value: id.to_owned() }) }
}

/// The kernel's rule for interface names (`dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<(), EnvError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        Some("contains '/', ':', whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EnvError::IfName { value: name.to_owned(), reason }),
        None => Ok(()),
    }
}

/// `CNI_ARGS` is `K=V;K=V`. Keys other than the pod's namespace and name are ignored (the
/// runtime also sends `IgnoreUnknown`, `K8S_POD_UID`, `K8S_POD_INFRA_CONTAINER_ID`, ...).
/// Returns the pod's namespace and name, each if present and non-empty.
fn parse_pod_args(args: &str) -> Result<(Option<String>, Option<String>), EnvError> {
    let mut namespace = None;
    let mut name = None;
    for entry in args.split(';').filter(|e| !e.is_empty()) {
        let (k, v) = entry.split_once('=').ok_or_else(|| EnvError::ArgsEntry { entry: entry.to_owned() })?;
        if k.is_empty() {
            return Err(EnvError::ArgsEntry { entry: entry.to_owned() });
        }
        match k {
            POD_NAMESPACE_KEY if !v.is_empty() => namespace = Some(v.to_owned()),
            POD_NAME_KEY if !v.is_empty() => name = Some(v.to_owned()),
            _ => {}
        }
    }
    Ok((namespace, name))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=u"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        key: &'static str,
        value: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = base.iter().filter(|(k, _)| *k != key).copied().collect();
        v.push((key, value));
        v
    }

    #[test]
    fn add_reads_the_attachment_and_the_pod() {
        let inv = parse(env(ADD)).unwrap();
        let pod = PodRef { namespace: "shop".into(), name: "cart-0".into() };
        assert_eq!(inv.cni_path, vec![PathBuf::from("/opt/cni/bin")]);
        assert_eq!(inv.passthrough.len(), 6, "every CNI_* variable goes to a delegated plugin");
        assert_eq!(
            inv.verb,
            Verb::Add(
                Attachment {
                    container_id: "abc123".into(),
                    ifname: "eth0".into(),
                    netns: Some("/var/run/netns/p1".into()),
                    pod: Some(pod.clone()),
                },
                pod
            )
        );
    }

    #[test]
    fn version_needs_nothing_else() {
        assert_eq!(parse(env(&[("CNI_COMMAND", "VERSION")])).map(|i| i.verb), Ok(Verb::Version));
    }

    #[test]
    fn status_needs_no_attachment_and_gc_needs_cni_path() {
        assert_eq!(parse(env(&[("CNI_COMMAND", "STATUS")])).map(|i| i.verb), Ok(Verb::Status));
        assert_eq!(parse(env(&[("CNI_COMMAND", "GC")])), Err(EnvError::Missing { var: "CNI_PATH" }));
        let gc = parse(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni")])).unwrap();
        assert_eq!(
            (gc.verb, gc.cni_path),
            (Verb::Gc, vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")])
        );
    }

    #[test]
    fn unknown_and_missing_commands_are_errors() {
        assert_eq!(parse(env(&[])), Err(EnvError::Missing { var: "CNI_COMMAND" }));
        assert_eq!(parse(env(&[("CNI_COMMAND", "STATS")])), Err(EnvError::UnknownCommand { value: "STATS".into() }));
    }

    #[test]
    fn add_requires_netns_and_pod_args() {
        let no_netns: Vec<_> = ADD.iter().filter(|(k, _)| *k != "CNI_NETNS").copied().collect();
        assert_eq!(parse(env(&no_netns)), Err(EnvError::Missing { var: "CNI_NETNS" }));
        // Podman passes only the name: the pod lives in the default namespace.
        match parse(env(&with(ADD, "CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=a"))) {
            Ok(Invocation { verb: Verb::Add(_, pod), .. }) => {
                assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("default", "a"))
            }
            other => panic!("expected ADD of default/a, got {other:?}"),
        }
        assert_eq!(
            parse(env(&with(ADD, "CNI_ARGS", "K8S_POD_NAMESPACE=a"))),
            Err(EnvError::ArgsMissing { key: "K8S_POD_NAME" })
        );
        assert_eq!(
            parse(env(&with(ADD, "CNI_ARGS", "K8S_POD_NAMESPACE=a;K8S_POD_NAME="))),
            Err(EnvError::ArgsMissing { key: "K8S_POD_NAME" })
        );
        assert_eq!(
            parse(env(&with(ADD, "CNI_ARGS", "K8S_POD_NAMESPACE=a;oops"))),
            Err(EnvError::ArgsEntry { entry: "oops".into() })
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_environments_never_panic(
            command in "(ADD|DEL|CHECK|STATUS|GC|VERSION|[A-Z]{0,6})",
            id in "\\PC{0,20}",
            ifname in "\\PC{0,20}",
            netns in "\\PC{0,20}",
            args in "[A-Za-z0-9_=;]{0,40}",
        ) {
            let vars = [("CNI_COMMAND", command), ("CNI_CONTAINERID", id), ("CNI_IFNAME", ifname), ("CNI_NETNS", netns), ("CNI_ARGS", args.clone()), ("CNI_PATH", args)];
            let _ = parse(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()));
        }
    }

    #[test]
    fn del_tolerates_a_missing_netns_and_pod() {
        let inv = parse(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")])).unwrap();
        assert_eq!(
            inv.verb,
            Verb::Del(Attachment { container_id: "c1".into(), ifname: "eth0".into(), netns: None, pod: None })
        );
    }

    #[test]
    fn container_ids_and_ifnames_are_validated() {
        assert!(matches!(parse(env(&with(ADD, "CNI_CONTAINERID", "a\nb"))), Err(EnvError::ContainerId { .. })));
        assert!(matches!(parse(env(&with(ADD, "CNI_CONTAINERID", "-a"))), Err(EnvError::ContainerId { .. })));
        assert!(matches!(parse(env(&with(ADD, "CNI_IFNAME", "a/b"))), Err(EnvError::IfName { .. })));
        assert!(matches!(parse(env(&with(ADD, "CNI_IFNAME", "sixteen-chars-xx"))), Err(EnvError::IfName { .. })));
        assert!(matches!(parse(env(&with(ADD, "CNI_NETNS", "relative"))), Err(EnvError::NetnsPath { .. })));
        let missing_if: Vec<_> = ADD.iter().filter(|(k, _)| *k != "CNI_IFNAME").copied().collect();
        assert_eq!(parse(env(&missing_if)), Err(EnvError::Missing { var: "CNI_IFNAME" }));
    }
}
