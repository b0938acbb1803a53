//! Fuzz target: the manifest parser, validation and the directory store, fed any bytes as a
//! manifest file.
//!
//! Checked for every input (besides "no panic" and libFuzzer's memory limit, which the
//! parser's budget keeps it under):
//! * nothing changes silently: every object that validates, serialised back to YAML and
//!   parsed again, is the same object and validates to the same result;
//! * the store follows its rules: given a valid file and then these bytes as its new content,
//!   each object is the input's last valid version if the input declares it validly, keeps
//!   its earlier version if the input declares it invalidly (or has a document that cannot
//!   be named), and is gone otherwise. An invalid version never replaces a valid one.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ward_agent::datastore::directory::DirectoryStore;
use ward_agent::datastore::{ObjKey, Snapshot, Valid, validate};
use ward_policy::model::{Object, parse_documents};

const FILE: &str = "fuzz.yaml";

/// What the file held before the fuzzed content replaces it (the seeds are variations of it).
const BASE: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}, {name: d, ports: [{name: pg, containerPort: 5433}]}]}
status: {podIP: 10.0.0.5}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: pg}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
";

fuzz_target!(|data: &[u8]| {
    let text = std::str::from_utf8(data).ok();
    if let Some(text) = text {
        round_trips(text);
    }
    store_keeps_last_valid_versions(data, text);
});

/// Each valid object, written back out and read again, is the same object.
fn round_trips(text: &str) {
    for object in parse_documents(text, FILE).into_iter().flatten() {
        let Ok((key, valid, _)) = validate(&object, FILE) else { continue };
        let yaml = to_yaml(&object);
        let again = parse_documents(&yaml, FILE);
        let [Ok(reparsed)] = again.as_slice() else {
            panic!("{key}: its own YAML does not parse back to one object: {again:?}\n{yaml}");
        };
        assert_eq!(reparsed, &object, "{key}: changed by a round trip through\n{yaml}");
        let (key2, valid2, _) =
            validate(reparsed, FILE).unwrap_or_else(|e| panic!("{key}: valid, but not after a round trip: {e:?}"));
        assert_eq!((&key2, &valid2), (&key, &valid), "{key}: validates differently after a round trip");
    }
}

fn to_yaml(object: &Object) -> String {
    let (api_version, value) = match object {
        Object::Namespace(o) => ("v1", serde_yaml::to_value(o)),
        Object::Pod(o) => ("v1", serde_yaml::to_value(o)),
        Object::NetworkPolicy(o) => ("networking.k8s.io/v1", serde_yaml::to_value(o)),
        other => panic!("parse_documents returned a kind it does not read: {other:?}"),
    };
    let mut value = value.unwrap_or_else(|e| panic!("serialising {object:?}: {e}"));
    let serde_yaml::Value::Mapping(map) = &mut value else { panic!("{object:?} is not a mapping") };
    map.insert("apiVersion".into(), api_version.into());
    map.insert("kind".into(), object.kind().into());
    serde_yaml::to_string(&value).unwrap_or_else(|e| panic!("writing {object:?}: {e}"))
}

/// The store with BASE loaded, and BASE's objects: the same for every input, made once.
fn base() -> &'static (DirectoryStore, BTreeMap<ObjKey, Valid>) {
    static BASE_STATE: OnceLock<(DirectoryStore, BTreeMap<ObjKey, Valid>)> = OnceLock::new();
    BASE_STATE.get_or_init(|| {
        let mut store = DirectoryStore::new("/nonexistent/ward-fuzz".into());
        store.update_file(FILE, BASE.as_bytes());
        let objects = declared(BASE).0;
        assert_eq!(store.snapshot(), &snapshot_of(&objects), "the base file loads as declared");
        (store, objects)
    })
}

/// The store, given BASE and then `data` as one file's content, holds what its rules say.
fn store_keeps_last_valid_versions(data: &[u8], text: Option<&str>) {
    let (store, before) = base();
    let mut store = store.clone();
    store.update_file(FILE, data);

    // The input's last valid version of each object, the objects it names invalidly, and
    // whether every document could be named (a non-UTF-8 file names none).
    let (valid, invalid, all_named) = match text {
        Some(t) => declared(t),
        None => (BTreeMap::new(), BTreeSet::new(), false),
    };
    let mut expected = BTreeMap::new();
    for (key, v) in before {
        if !valid.contains_key(key) && (invalid.contains(key) || !all_named) {
            expected.insert(key.clone(), v.clone());
        }
    }
    expected.extend(valid);
    assert_eq!(store.snapshot(), &snapshot_of(&expected), "the store after the fuzzed content");
}

/// Of a file's text: the last valid version of each object, the objects named only by
/// invalid documents, and whether every document named its object.
fn declared(text: &str) -> (BTreeMap<ObjKey, Valid>, BTreeSet<ObjKey>, bool) {
    let (mut valid, mut invalid, mut all_named) = (BTreeMap::new(), BTreeSet::new(), true);
    for doc in parse_documents(text, FILE) {
        let Ok(object) = doc else {
            all_named = false;
            continue;
        };
        match validate(&object, FILE) {
            Ok((key, v, _)) => {
                invalid.remove(&key);
                valid.insert(key, v);
            }
            Err(e) => match e.key {
                Some(key) if !valid.contains_key(&key) => {
                    invalid.insert(key);
                }
                Some(_) => {}
                None => all_named = false,
            },
        }
    }
    (valid, invalid, all_named)
}

fn snapshot_of(objects: &BTreeMap<ObjKey, Valid>) -> Snapshot {
    let mut s = Snapshot::default();
    for (key, valid) in objects {
        s.insert(key, valid);
    }
    s
}
