//! What one manifest file may cost to parse: its size, its number of documents, how far YAML
//! aliases may multiply it and how deep it may nest.
//!
//! `model::parse_documents` runs [`FileBudget`] over a file before the real parse. Each
//! document is deserialized into a visitor that only counts what it is shown: serde_yaml
//! replays an alias's events wherever the alias is used, so the count is the size of the
//! document as the real parse would build it, yet nothing is built. A few KB of nested
//! aliases (a "billion laughs") that would make the real parse allocate tens of GB are
//! stopped after at most the budget's worth of counting, and the file is rejected naming the
//! bound it broke.
//!
//! The allowances are generous for real manifests: without aliases a document has fewer
//! nodes and fewer scalar bytes than it has bytes, so only expansion is ever limited.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, Visitor};

/// The largest manifest file the agent reads (a List of 10,000 pods is about 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;
/// The most documents one file may hold.
pub const MAX_DOCUMENTS: usize = 100_000;
/// How deep one document may nest (a NetworkPolicy nests about 10 levels).
pub const MAX_DEPTH: usize = 64;
/// The most nodes (scalars, sequences, mappings, each key and value; aliases expanded) one
/// document may have: what the real parse holds in memory at once for it.
pub const MAX_DOCUMENT_NODES: u64 = 2_000_000;
/// The most scalar bytes (aliases expanded) one document may have.
pub const MAX_DOCUMENT_SCALAR_BYTES: u64 = 32 << 20;
/// Nodes a whole file may have beyond twice its size in bytes: room for anchors reused in
/// small files.
const NODE_ALLOWANCE: u64 = 64 * 1024;
/// Scalar bytes a whole file may have beyond twice its size in bytes.
const SCALAR_ALLOWANCE: u64 = 1 << 20;

/// Which bound a file broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("the file is {len} bytes; a manifest file may have at most {MAX_MANIFEST_BYTES}")]
    FileSize { len: usize },
    #[error("the file has more than {MAX_DOCUMENTS} documents, the most one manifest file may have")]
    Documents,
    #[error(
        "document {document} expands to more than {limit} nodes (YAML aliases repeat what they refer to; \
         a file of {file_len} bytes may expand to at most {file_limit} nodes, one document to {MAX_DOCUMENT_NODES})"
    )]
    Nodes { document: usize, limit: u64, file_len: usize, file_limit: u64 },
    #[error(
        "document {document} expands to more than {limit} bytes of scalars (YAML aliases repeat what they refer \
         to; a file of {file_len} bytes may expand to at most {file_limit}, one document to {MAX_DOCUMENT_SCALAR_BYTES})"
    )]
    ScalarBytes { document: usize, limit: u64, file_len: usize, file_limit: u64 },
    #[error("document {document} nests deeper than {MAX_DEPTH} levels")]
    Depth { document: usize },
}

/// The budget of one file, spent document by document.
#[derive(Clone, Debug)]
pub struct FileBudget {
    file_len: usize,
    node_limit: u64,
    scalar_limit: u64,
    nodes_left: u64,
    scalar_bytes_left: u64,
    documents: usize,
}

impl FileBudget {
    /// The budget of a file of `file_len` bytes, or the size bound it breaks.
    pub fn new(file_len: usize) -> Result<FileBudget, Exceeded> {
        if file_len > MAX_MANIFEST_BYTES {
            return Err(Exceeded::FileSize { len: file_len });
        }
        let twice = 2 * file_len as u64;
        let (node_limit, scalar_limit) = (NODE_ALLOWANCE + twice, SCALAR_ALLOWANCE + twice);
        Ok(FileBudget {
            file_len,
            node_limit,
            scalar_limit,
            nodes_left: node_limit,
            scalar_bytes_left: scalar_limit,
            documents: 0,
        })
    }

    /// Counts one document (`document` is its 1-based position, for the message) against
    /// the budget. A document that is not valid YAML passes: the real parse reports it.
    pub fn spend(&mut self, document: usize, text: &str) -> Result<(), Exceeded> {
        self.documents += 1;
        if self.documents > MAX_DOCUMENTS {
            return Err(Exceeded::Documents);
        }
        let mut count = Count {
            nodes_left: self.nodes_left.min(MAX_DOCUMENT_NODES),
            scalar_bytes_left: self.scalar_bytes_left.min(MAX_DOCUMENT_SCALAR_BYTES),
            exceeded: None,
        };
        let start = (count.nodes_left, count.scalar_bytes_left);
        // The outcome of the deserialization itself does not matter: either the counter
        // stopped it (and says why), or it is the real parse's to report.
        let _ = serde_yaml::Deserializer::from_str(text).deserialize_any(Counter { count: &mut count, depth: 0 });
        self.nodes_left -= start.0 - count.nodes_left;
        self.scalar_bytes_left -= start.1 - count.scalar_bytes_left;
        match count.exceeded {
            None => Ok(()),
            Some(Bound::Depth) => Err(Exceeded::Depth { document }),
            Some(Bound::Nodes) => {
                Err(Exceeded::Nodes { document, limit: start.0, file_len: self.file_len, file_limit: self.node_limit })
            }
            Some(Bound::ScalarBytes) => Err(Exceeded::ScalarBytes {
                document,
                limit: start.1,
                file_len: self.file_len,
                file_limit: self.scalar_limit,
            }),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Bound {
    Nodes,
    ScalarBytes,
    Depth,
}

/// What is left of one document's budget while it is counted.
struct Count {
    nodes_left: u64,
    scalar_bytes_left: u64,
    exceeded: Option<Bound>,
}

/// Counts a value and everything in it; fails (stopping serde_yaml) past the budget.
struct Counter<'c> {
    count: &'c mut Count,
    depth: usize,
}

/// The error a counter stops the deserializer with; the reason is in `Count::exceeded`.
fn stop<E: de::Error>(count: &mut Count, bound: Bound) -> E {
    count.exceeded = Some(bound);
    E::custom("manifest budget exceeded")
}

impl Counter<'_> {
    fn node<E: de::Error>(&mut self, scalar_bytes: usize) -> Result<(), E> {
        if self.count.nodes_left == 0 {
            return Err(stop(self.count, Bound::Nodes));
        }
        self.count.nodes_left -= 1;
        let bytes = scalar_bytes as u64;
        if bytes > self.count.scalar_bytes_left {
            return Err(stop(self.count, Bound::ScalarBytes));
        }
        self.count.scalar_bytes_left -= bytes;
        Ok(())
    }

    /// A counter for a value inside this one.
    fn inner<E: de::Error>(&mut self) -> Result<Counter<'_>, E> {
        if self.depth >= MAX_DEPTH {
            return Err(stop(self.count, Bound::Depth));
        }
        Ok(Counter { count: &mut *self.count, depth: self.depth + 1 })
    }
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.node(0)
    }
    fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
        self.node(0)
    }
    fn visit_i128<E: de::Error>(mut self, _: i128) -> Result<(), E> {
        self.node(0)
    }
    fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
        self.node(0)
    }
    fn visit_u128<E: de::Error>(mut self, _: u128) -> Result<(), E> {
        self.node(0)
    }
    fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
        self.node(0)
    }
    fn visit_char<E: de::Error>(mut self, _: char) -> Result<(), E> {
        self.node(4)
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.node(v.len())
    }
    fn visit_bytes<E: de::Error>(mut self, v: &[u8]) -> Result<(), E> {
        self.node(v.len())
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.node(0)
    }
    fn visit_none<E: de::Error>(mut self) -> Result<(), E> {
        self.node(0)
    }
    fn visit_some<D: de::Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        self.node(0)?;
        d.deserialize_any(self.inner()?)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        self.node(0)?;
        d.deserialize_any(self.inner()?)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.node(0)?;
        while seq.next_element_seed(self.inner()?)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.node(0)?;
        while map.next_key_seed(self.inner()?)?.is_some() {
            map.next_value_seed(self.inner()?)?;
        }
        Ok(())
    }
    /// serde_yaml shows a tagged value (`!tag value`) as an enum: the tag, then the value.
    fn visit_enum<A: de::EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess as _;
        self.node(0)?;
        let ((), variant) = data.variant_seed(self.inner()?)?;
        variant.newtype_variant_seed(self.inner()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape that gets past serde_yaml's own limit on alias replays (100 per event):
    /// an anchor of `n` scalars, a list of `m` aliases of it, and `p` aliases of that list,
    /// so `n*m*p` nodes come from about `2n + 5(m+p)` bytes with `p*(m+1)` replays.
    pub(crate) fn alias_bomb(leaf: &str, n: usize, m: usize, p: usize) -> String {
        let leaves = vec![leaf; n].join(",");
        let lists = vec!["*a"; m].join(",");
        let top = vec!["*b"; p].join(",");
        format!("a: &a [{leaves}]\nb: &b [{lists}]\nc: [{top}]\n")
    }

    #[test]
    fn an_alias_bomb_is_stopped_at_the_node_budget() {
        let bomb = alias_bomb("x", 1800, 100, 100); // 18M nodes from 4.6 KB
        let mut b = FileBudget::new(bomb.len()).expect("small file");
        match b.spend(1, &bomb) {
            Err(Exceeded::Nodes { document: 1, limit, .. }) => {
                assert_eq!(limit, NODE_ALLOWANCE + 2 * bomb.len() as u64)
            }
            other => panic!("expected the node bound, got {other:?}"),
        }
    }

    #[test]
    fn a_long_string_repeated_by_aliases_is_stopped_at_the_scalar_budget() {
        let bomb = alias_bomb(&"x".repeat(2000), 1, 100, 100); // 10k copies of 2 KB
        let mut b = FileBudget::new(bomb.len()).expect("small file");
        assert!(matches!(b.spend(1, &bomb), Err(Exceeded::ScalarBytes { .. })), "{:?}", b.spend(1, &bomb));
    }

    #[test]
    fn deep_nesting_file_size_and_document_count_are_bounded() {
        let deep = format!("{}1{}", "[".repeat(MAX_DEPTH + 5), "]".repeat(MAX_DEPTH + 5));
        let mut b = FileBudget::new(deep.len()).expect("small file");
        assert_eq!(b.spend(2, &deep), Err(Exceeded::Depth { document: 2 }));
        let shallow = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(FileBudget::new(shallow.len()).and_then(|mut b| b.spend(1, &shallow)), Ok(()));
        assert_eq!(
            FileBudget::new(MAX_MANIFEST_BYTES + 1).err(),
            Some(Exceeded::FileSize { len: MAX_MANIFEST_BYTES + 1 })
        );
        let mut b = FileBudget::new(MAX_DOCUMENTS * "---\na: 1\n".len()).expect("small");
        for n in 1..=MAX_DOCUMENTS {
            assert_eq!(b.spend(n, "a: 1"), Ok(()), "document {n}");
        }
        assert_eq!(b.spend(MAX_DOCUMENTS + 1, "a: 1"), Err(Exceeded::Documents));
    }

    #[test]
    fn a_few_anchors_and_tags_and_bad_yaml_pass() {
        let ok = "labels: &l {app: web, tier: front}\nitems:\n- metadata: {labels: *l}\n- metadata: {labels: *l}\nx: !custom {a: 1}\n";
        assert_eq!(FileBudget::new(ok.len()).and_then(|mut b| b.spend(1, ok)), Ok(()));
        let bad = "spec: [unclosed\n";
        assert_eq!(FileBudget::new(bad.len()).and_then(|mut b| b.spend(1, bad)), Ok(()), "the real parse reports it");
    }

    /// The budget is the file's: many small documents that each expand a little add up.
    #[test]
    fn the_budget_is_shared_by_the_documents_of_a_file() {
        let doc = alias_bomb("x", 10, 10, 10); // about 1,100 nodes from 110 bytes
        let mut b = FileBudget::new(200 * (doc.len() + 4)).expect("small");
        let result: Result<(), Exceeded> = (1..=200).try_for_each(|n| b.spend(n, &doc));
        assert!(matches!(result, Err(Exceeded::Nodes { .. })), "{result:?}");
    }
}
