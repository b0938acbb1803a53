//! Kubernetes objects as the API serialises them (camelCase), and the manifest parser.
//!
//! First stop of the data flow: the datastore (watch events) and the CLI (YAML files) hand
//! objects to [`parse_documents`] or deserialize these types directly; `validate` then turns
//! them into the checked forms the compiler reads. The types are lenient: unknown fields are
//! ignored and `null` reads as empty, so a newer API server or a hand-written manifest does
//! not break parsing; everything semantic is checked in `validate`, where errors can name the
//! field.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};

use crate::budget::{Exceeded, FileBudget};
use crate::validate::ObjectError;

/// `null` (or a missing field, with `#[serde(default)]`) reads as the type's default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The namespace a namespaced object gets when its manifest names none, as `kubectl apply`
/// and the API server give it (the upstream docs' examples, the default-deny one among them,
/// leave it out).
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Empty when absent; `validate` rejects that.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Absent or empty: [`DEFAULT_NAMESPACE`] for namespaced kinds (see
    /// [`ObjectMeta::namespace_or_default`]); ignored for cluster-scoped ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The namespace of a namespaced object: `metadata.namespace`, or [`DEFAULT_NAMESPACE`]
    /// when it is absent or empty.
    pub fn namespace_or_default(&self) -> &str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => DEFAULT_NAMESPACE,
        }
    }

    /// Whether [`ObjectMeta::namespace_or_default`] filled the namespace in: the datastore
    /// reports it, so an object that lands in `default` by omission is visible as such.
    pub fn namespace_defaulted(&self) -> bool {
        self.namespace.as_deref().is_none_or(str::is_empty)
    }
}

/// `v1/Namespace`: only its labels matter to policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ObjectMeta,
}

/// `v1/Pod`: labels, named container ports and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_default")]
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, deserialize_with = "null_default")]
    pub containers: Vec<Container>,
    /// A host-network pod has the node's addresses; it is not a pod-network endpoint.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Wider than `u16` so an out-of-range number is a validation error naming the field.
    #[serde(default)]
    pub container_port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIp {
    #[serde(default, deserialize_with = "null_default")]
    pub ip: String,
}

/// `networking.k8s.io/v1/NetworkPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_default")]
    pub spec: NetworkPolicySpec,
}

/// The spec is shared with `WardNetworkPolicy` (policy.ward.dev), a strict superset: its
/// extensions (`fqdn` peers, `http` port rules) are optional fields of the peer and port types,
/// which `validate` accepts only in a `WardNetworkPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Absent reads as `{}` (every pod in the namespace), as the API server's zero value does.
    #[serde(default, deserialize_with = "null_default")]
    pub pod_selector: LabelSelector,
    /// `None` and `[]` both mean "default" (see `validate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("items" = {"type": "string", "enum": ["Ingress", "Egress"]})))]
    pub policy_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
    /// `WardNetworkPolicy` only: `enforce` (the default) or `audit` (what the policy would
    /// deny passes and is recorded with the verdict AUDIT). A NetworkPolicy says the same with
    /// the `policy.ward.dev/mode` annotation (`validate::MODE_ANNOTATION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["enforce", "audit"])))]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<NetworkPolicyPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
    /// `WardNetworkPolicy` only (egress `to`): a DNS name or name pattern; the addresses a
    /// selected pod resolves for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<FqdnPeer>,
}

/// `fqdn: {matchName: api.bank.example}` or `fqdn: {matchPattern: "*.s3.example"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schema", schemars(extend("oneOf" = [{"required": ["matchName"]}, {"required": ["matchPattern"]}])))]
pub struct FqdnPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 253)))]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 253)))]
    pub match_pattern: Option<String>,
}

/// One entry of a `WardNetworkPolicy` port's `http` list: an HTTP request that port admits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpRuleSpec {
    /// Absent: any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^[A-Z]+$")))]
    pub method: Option<String>,
    /// Exactly this (normalised) path; the query string is not part of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^/")))]
    pub path: Option<String>,
    /// Every (normalised) path that starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^/")))]
    pub path_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schema", schemars(extend("required" = ["cidr"])))]
pub struct IpBlock {
    #[serde(default, deserialize_with = "null_default")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub cidr: String,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["TCP", "UDP", "SCTP"])))]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 65535)))]
    pub end_port: Option<i64>,
    /// `WardNetworkPolicy` only (ingress): the HTTP requests this port admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRuleSpec>>,
    /// `WardNetworkPolicy` only (egress, port 53): the names a pod may query through this
    /// entry (`[{matchName: ...}, {matchPattern: ...}]`, as Cilium's `rules.dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<FqdnPeer>>,
}

/// A port by number or by container-port name. As in the API, the string `"80"` is a name
/// (and an invalid one), not a number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

/// The API's int-or-string, as structural schemas spell it.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for IntOrString {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}]
        })
    }
}

/// By hand rather than `untagged`, so that a wrong type is reported at the field itself.
impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrString, E> {
                // Larger than i64: certainly out of range, which `validate` reports.
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schema", schemars(extend("required" = ["key", "operator"])))]
pub struct LabelSelectorRequirement {
    #[serde(default, deserialize_with = "null_default")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub key: String,
    #[serde(default, deserialize_with = "null_default")]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"])))]
    pub operator: String,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// `policy.ward.dev/v1alpha1/WardNetworkPolicy`: the NetworkPolicy shape plus `fqdn` egress
/// peers and per-port `http` rules (see ../shared/DESIGN.md and the README).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WardNetworkPolicy {
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_default")]
    pub spec: NetworkPolicySpec,
}

/// The API group and version of `WardNetworkPolicy`.
pub const WARD_API_VERSION: &str = "policy.ward.dev/v1alpha1";

/// One object from a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
    WardNetworkPolicy(WardNetworkPolicy),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::NetworkPolicy(_) => "NetworkPolicy",
            Object::WardNetworkPolicy(_) => "WardNetworkPolicy",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::WardNetworkPolicy(o) => &o.metadata,
        }
    }

    /// How errors name the object: `NetworkPolicy x/deny-all`, `Namespace x`.
    pub fn describe(&self) -> String {
        describe(self.kind(), self.metadata())
    }
}

pub(crate) fn describe(kind: &str, meta: &ObjectMeta) -> String {
    let name = if meta.name.is_empty() { "<unnamed>" } else { meta.name.as_str() };
    if NAMESPACED_KINDS.contains(&kind) {
        return format!("{kind} {}/{name}", meta.namespace_or_default());
    }
    match &meta.namespace {
        Some(ns) if kind != "Namespace" => format!("{kind} {ns}/{name}"),
        _ => format!("{kind} {name}"),
    }
}

/// The kinds this crate reads that live in a namespace (the others, `Namespace`, are
/// cluster-scoped and never get one).
pub const NAMESPACED_KINDS: [&str; 2] = ["Pod", "NetworkPolicy"];

/// The kinds this crate reads, with the apiVersion each must carry.
const KINDS: [(&str, &str); 4] = [
    ("Namespace", "v1"),
    ("Pod", "v1"),
    ("NetworkPolicy", "networking.k8s.io/v1"),
    ("WardNetworkPolicy", WARD_API_VERSION),
];

/// Parses a multi-document YAML (or JSON) manifest. Each document is one object or a
/// `kind: List` of objects; a document that is malformed or of an unknown kind yields an
/// error for itself (for each item, in a List) and the others still parse. Empty documents
/// are skipped. Objects come back in file order.
///
/// A file that breaks a bound of [`budget`](crate::budget) (size, documents, alias
/// expansion, nesting) yields one error for the whole file (object `file`) naming the bound,
/// and none of its documents is parsed.
pub fn parse_documents(text: &str, file: &str) -> Vec<Result<Object, ObjectError>> {
    let docs = match within_budget(text) {
        Ok(docs) => docs,
        Err(e) => return vec![Err(ObjectError::new(file, "file", "", &e.to_string()))],
    };
    let mut out = Vec::new();
    for (n, doc) in docs.into_iter().enumerate() {
        let label = format!("document {}", n + 1);
        parse_document(&doc, file, &label, &mut out);
    }
    out
}

/// The file's documents, once every one of them is known to fit the file's budget.
fn within_budget(text: &str) -> Result<Vec<Document>, Exceeded> {
    let mut budget = FileBudget::new(text.len())?;
    let docs = split_documents(text);
    for (n, doc) in docs.iter().enumerate() {
        budget.spend(n + 1, &doc.text)?;
    }
    Ok(docs)
}

/// One YAML document: its text and the 1-based line where it starts in the file.
struct Document {
    text: String,
    first_line: usize,
}

/// Splits at `---` marker lines (and ends documents at `...` lines). Done by hand rather than
/// with serde_yaml's document iterator, because that iterator never gets past a malformed
/// document, and one bad document must not hide the rest. A document holding only blank
/// lines and comments is not a document.
fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut first_line = 1;
    let mut ended = false;
    let flush = |cur: &mut String, first_line: usize, docs: &mut Vec<Document>| {
        let meaningful = cur.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        });
        if meaningful {
            docs.push(Document { text: std::mem::take(cur), first_line });
        }
        cur.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let is_start = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let is_end = line == "..." || line.starts_with("... ");
        if is_start {
            flush(&mut cur, first_line, &mut docs);
            ended = false;
            first_line = lineno;
            // Content may follow the marker on the same line (`--- {a: 1}`); keep the line
            // count aligned by replacing the marker with spaces.
            cur.push_str(&" ".repeat(3));
            cur.push_str(&line[3..]);
            cur.push('\n');
        } else if is_end {
            flush(&mut cur, first_line, &mut docs);
            ended = true;
        } else {
            if ended {
                // Text after `...` without a new `---` starts a new document.
                ended = false;
                first_line = lineno;
            }
            if cur.is_empty() {
                first_line = lineno;
            }
            cur.push_str(line);
            cur.push('\n');
        }
    }
    flush(&mut cur, first_line, &mut docs);
    docs
}

fn parse_document(doc: &Document, file: &str, label: &str, out: &mut Vec<Result<Object, ObjectError>>) {
    let value: serde_yaml::Value = match serde_yaml::from_str(&doc.text) {
        Ok(v) => v,
        Err(e) => {
            out.push(Err(yaml_error(&e, file, label, doc.first_line)));
            return;
        }
    };
    if value.is_null() {
        return;
    }
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    if kind == "List" {
        let items = match value.get("items") {
            Some(serde_yaml::Value::Sequence(items)) => items.as_slice(),
            Some(serde_yaml::Value::Null) | None => &[],
            Some(_) => {
                out.push(Err(ObjectError::new(file, label, "items", "must be a list of objects")));
                return;
            }
        };
        for (i, item) in items.iter().enumerate() {
            let item_label = format!("{label} items[{i}]");
            // Re-serialised so that typed deserialisation runs on text, where serde_yaml
            // reports the path of a bad field; line numbers would be those of the copy, so
            // they are dropped (first_line 0).
            match serde_yaml::to_string(item) {
                Ok(text) => out.push(typed_object(item, &text, file, &item_label, 0)),
                Err(e) => out.push(Err(ObjectError::new(file, &item_label, "", &e.to_string()))),
            }
        }
        return;
    }
    out.push(typed_object(&value, &doc.text, file, label, doc.first_line));
}

fn typed_object(
    value: &serde_yaml::Value,
    text: &str,
    file: &str,
    label: &str,
    first_line: usize,
) -> Result<Object, ObjectError> {
    let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default();
    let kind = match value.get("kind") {
        Some(serde_yaml::Value::String(k)) => k.as_str(),
        Some(_) => return Err(ObjectError::new(file, label, "kind", "must be a string")),
        None => return Err(ObjectError::new(file, label, "kind", "missing")),
    };
    // Errors after this point name the object by kind and name when it has them.
    let meta: Option<ObjectMeta> = value.get("metadata").and_then(|m| serde_yaml::from_value(m.clone()).ok());
    let object = match &meta {
        Some(m) if !m.name.is_empty() => describe(kind, m),
        _ => label.to_string(),
    };
    let Some((_, want_version)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err(ObjectError::new(
            file,
            &object,
            "kind",
            &format!("unsupported kind {kind:?} (expected one of {}, or List)", known.join(", ")),
        ));
    };
    if api_version != *want_version {
        return Err(ObjectError::new(
            file,
            &object,
            "apiVersion",
            &format!("{kind} must have apiVersion {want_version:?}, not {api_version:?}"),
        ));
    }
    Ok(match kind {
        "Namespace" => Object::Namespace(from_text(text, file, &object, first_line)?),
        "Pod" => Object::Pod(from_text(text, file, &object, first_line)?),
        "WardNetworkPolicy" => Object::WardNetworkPolicy(from_text(text, file, &object, first_line)?),
        _ => Object::NetworkPolicy(from_text(text, file, &object, first_line)?),
    })
}

fn from_text<T: DeserializeOwned>(text: &str, file: &str, object: &str, first_line: usize) -> Result<T, ObjectError> {
    serde_yaml::from_str(text).map_err(|e| yaml_error(&e, file, object, first_line))
}

/// Turns a serde_yaml error into an `ObjectError`: the path serde_yaml puts in front of its
/// message becomes the field, and the position becomes a line of the whole file.
fn yaml_error(e: &serde_yaml::Error, file: &str, object: &str, first_line: usize) -> ObjectError {
    let mut msg = e.to_string();
    let mut at = String::new();
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = msg.strip_suffix(&suffix) {
            msg = stripped.to_string();
        }
        if first_line > 0 {
            at = format!(" (line {} column {})", first_line + loc.line() - 1, loc.column());
        }
    }
    // serde_yaml writes `spec.ingress[0].ports: invalid type ...`; a path has no spaces.
    let (field, message) = match msg.split_once(": ") {
        Some((path, rest)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            (path.to_string(), rest.to_string())
        }
        _ => (String::new(), msg.clone()),
    };
    ObjectError::new(file, object, &field, &format!("{message}{at}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_manifest_with_list_and_keeps_going_after_bad_documents() {
        let text = r#"
# leading comment
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: a, namespace: x, labels: {pod: a}}
    spec:
      containers:
        - name: c
          ports: [{name: serve-80-tcp, containerPort: 80}]
    status: {podIP: 10.0.0.1}
  - apiVersion: v1
    kind: Secret
    metadata: {name: s, namespace: x}
---
this: [is not yaml
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x, somethingNew: 1}
spec:
  podSelector: {}
  futureField: true
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  ingress:
    - ports: [{port: 80}, {port: [1]}]
...
"#;
        let got = parse_documents(text, "m.yaml");
        assert_eq!(got.len(), 6, "{got:#?}");
        assert!(matches!(&got[0], Ok(Object::Namespace(n)) if n.metadata.labels["ns"] == "x"));
        match &got[1] {
            Ok(Object::Pod(p)) => {
                assert_eq!(p.spec.containers[0].ports[0].container_port, 80);
                assert_eq!(p.status.as_ref().and_then(|s| s.pod_ip.as_deref()), Some("10.0.0.1"));
            }
            other => panic!("expected a pod, got {other:?}"),
        }
        let secret = got[2].as_ref().expect_err("Secret is not a kind we read");
        assert_eq!(secret.object, "Secret x/s");
        assert_eq!(secret.field, "kind");
        let broken = got[3].as_ref().expect_err("malformed YAML");
        assert_eq!(broken.object, "document 3");
        assert!(broken.message.contains("line 23"), "{broken}");
        assert!(matches!(&got[4], Ok(Object::NetworkPolicy(p)) if p.metadata.name == "deny-all"));
        let bad = got[5].as_ref().expect_err("port: [1] is not a port");
        assert_eq!(bad.object, "NetworkPolicy x/bad");
        assert_eq!(bad.field, "spec.ingress[0].ports[1].port");
    }

    #[test]
    fn list_item_errors_name_the_item_field() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: c, ports: [{containerPort: x}]}]}\n";
        let got = parse_documents(text, "l.yaml");
        let e = got[0].as_ref().expect_err("containerPort x");
        assert_eq!(e.object, "Pod default/p", "named in the namespace it defaults to");
        assert_eq!(e.field, "spec.containers[0].ports[0].containerPort");
    }

    #[test]
    fn wrong_api_version_and_missing_kind_are_errors() {
        let got = parse_documents("apiVersion: v2\nkind: Pod\nmetadata: {name: p, namespace: x}\n---\nfoo: 1\n", "f");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().err().map(|e| e.field.as_str()), Some("apiVersion"));
        assert_eq!(got[1].as_ref().err().map(|e| e.field.as_str()), Some("kind"));
        assert_eq!(got[1].as_ref().err().map(|e| e.object.as_str()), Some("document 2"));
    }

    #[test]
    fn empty_and_comment_only_documents_are_skipped_and_json_parses() {
        assert!(parse_documents("---\n# nothing\n---\n", "f").is_empty());
        let json = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x","labels":null}}"#;
        let got = parse_documents(json, "f.json");
        assert!(matches!(&got[..], [Ok(Object::Namespace(n))] if n.metadata.name == "x"));
    }

    #[test]
    fn port_as_string_stays_a_name() {
        let p: NetworkPolicyPort = serde_yaml::from_str("{port: \"80\"}").expect("valid");
        assert_eq!(p.port, Some(IntOrString::String("80".into())));
        let p: NetworkPolicyPort = serde_yaml::from_str("{port: 80, endPort: 90}").expect("valid");
        assert_eq!(p.port, Some(IntOrString::Int(80)));
        assert_eq!(p.end_port, Some(90));
    }
}
