//! Placeholders in case files, resolved when their step runs (pods may be created by earlier
//! steps): `{{ip ns/pod}}` is the pod's IPv4 address, `{{net4 ns/pod}}` the network address
//! of the /4 around it. Anything else between `{{` and `}}` is an error naming it.

use std::net::Ipv4Addr;

use serde_yaml::Value;

use crate::spec::PodRef;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceholderError {
    #[error("unknown placeholder `{{{{{0}}}}}` (known: `{{{{ip ns/pod}}}}`, `{{{{net4 ns/pod}}}}`)")]
    Unknown(String),
    #[error("placeholder `{{{{{text}}}}}`: {message}")]
    BadPod { text: String, message: String },
    #[error("unclosed `{{{{` in {0:?}")]
    Unclosed(String),
}

/// Resolves every placeholder in every string of `value` (keys included), using `ipv4` to
/// find a pod's address.
pub fn resolve(value: &mut Value, ipv4: &dyn Fn(&PodRef) -> Result<Ipv4Addr, String>) -> Result<(), PlaceholderError> {
    match value {
        Value::String(s) => {
            *s = resolve_str(s, ipv4)?;
        }
        Value::Sequence(seq) => {
            for v in seq {
                resolve(v, ipv4)?;
            }
        }
        Value::Mapping(map) => {
            let entries: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
            for (mut k, mut v) in entries {
                resolve(&mut k, ipv4)?;
                resolve(&mut v, ipv4)?;
                map.insert(k, v);
            }
        }
        Value::Tagged(t) => resolve(&mut t.value, ipv4)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

pub fn resolve_str(s: &str, ipv4: &dyn Fn(&PodRef) -> Result<Ipv4Addr, String>) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| PlaceholderError::Unclosed(s.to_owned()))?;
        let text = &after[..end];
        out.push_str(&expand(text, ipv4)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(text: &str, ipv4: &dyn Fn(&PodRef) -> Result<Ipv4Addr, String>) -> Result<String, PlaceholderError> {
    let mut words = text.split_whitespace();
    let (Some(kind), Some(arg), None) = (words.next(), words.next(), words.next()) else {
        return Err(PlaceholderError::Unknown(text.to_owned()));
    };
    let bad = |message: String| PlaceholderError::BadPod { text: text.to_owned(), message };
    let pod: PodRef = match kind {
        "ip" | "net4" => arg.parse().map_err(|e: crate::spec::BadPodRef| bad(e.to_string()))?,
        _ => return Err(PlaceholderError::Unknown(text.to_owned())),
    };
    let ip = ipv4(&pod).map_err(bad)?;
    Ok(match kind {
        "ip" => ip.to_string(),
        _ => net4(ip).to_string(),
    })
}

/// The address with all but its first 4 bits zeroed: the network of its /4.
pub fn net4(ip: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & 0xf000_0000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(p: &PodRef) -> Result<Ipv4Addr, String> {
        match p.to_string().as_str() {
            "x/a" => Ok(Ipv4Addr::new(10, 1, 0, 2)),
            "x/b" => Ok(Ipv4Addr::new(172, 17, 3, 4)),
            other => Err(format!("no pod {other}")),
        }
    }

    #[test]
    fn ip_and_net4_expand_in_place() {
        assert_eq!(resolve_str("{{ip x/b}}/32", &lookup).unwrap(), "172.17.3.4/32");
        assert_eq!(resolve_str("{{net4 x/a}}/4", &lookup).unwrap(), "0.0.0.0/4");
        assert_eq!(resolve_str("{{net4 x/b}}/4", &lookup).unwrap(), "160.0.0.0/4");
        assert_eq!(resolve_str("{{ ip  x/a }}", &lookup).unwrap(), "10.1.0.2");
        assert_eq!(resolve_str("no placeholders", &lookup).unwrap(), "no placeholders");
    }

    #[test]
    fn unknown_placeholders_pods_and_unclosed_braces_are_errors() {
        let e = resolve_str("{{ip6 x/a}}", &lookup).unwrap_err();
        assert_eq!(e.to_string(), "unknown placeholder `{{ip6 x/a}}` (known: `{{ip ns/pod}}`, `{{net4 ns/pod}}`)");
        assert!(resolve_str("{{ip y/q}}", &lookup).unwrap_err().to_string().contains("no pod y/q"));
        assert!(matches!(resolve_str("{{ip x/a", &lookup), Err(PlaceholderError::Unclosed(_))));
        assert!(matches!(resolve_str("{{ip}}", &lookup), Err(PlaceholderError::Unknown(_))));
    }

    #[test]
    fn resolve_walks_nested_policy_objects() {
        let mut v: Value = serde_yaml::from_str(
            "spec: {egress: [{to: [{ipBlock: {cidr: '{{net4 x/a}}/4', except: ['{{ip x/b}}/32']}}]}]}",
        )
        .unwrap();
        resolve(&mut v, &lookup).unwrap();
        let block = &v["spec"]["egress"][0]["to"][0]["ipBlock"];
        assert_eq!(block["cidr"], "0.0.0.0/4");
        assert_eq!(block["except"][0], "172.17.3.4/32");
    }
}
