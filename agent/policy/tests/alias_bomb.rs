//! Issue 13 item 8: a few KB of nested YAML aliases made the manifest parser allocate tens of
//! GB, and the agent was OOM-killed on every start. The parser must reject such a file fast,
//! naming the bound, with bounded memory.
//!
//! Memory is measured, not assumed: this test binary's global allocator counts live bytes
//! and refuses any allocation past [`CAP`], which aborts the process (Rust's allocation
//! failure handler). So if the bound were removed the test binary would die instead of
//! passing, without eating the machine first. The last test shows the bomb is real: the
//! same input given straight to serde_yaml, in a child process of this binary, hits the cap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ward_policy::model::{Object, parse_documents};

/// Far above what a legitimate parse of these inputs needs, far below what the bomb wants.
const CAP: usize = 256 << 20;

struct Capped;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only the bookkeeping is added, and a refused
// allocation returns null as the GlobalAlloc contract allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if live > CAP {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(live, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// The shape that gets past serde_yaml's own limit on alias replays (100 per event of the
/// document): an anchor of `n` scalars, a list of `m` aliases of it, and `p` aliases of that
/// list used by the object: `n*m*p` strings from about `2n + 5(m+p)` bytes.
fn bomb(n: usize, m: usize, p: usize) -> String {
    let leaves = vec!["lol"; n].join(",");
    let lists = vec!["*a"; m].join(",");
    let top = vec!["*b"; p].join(",");
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: boom, namespace: x}}\n\
         a: &a [{leaves}]\nb: &b [{lists}]\nspec: {{podSelector: {{}}, extra: [{top}]}}\n"
    )
}

/// 18 million strings (about 2 GB as serde_yaml values) from under 9 KB, as the issue found.
fn the_bomb() -> String {
    bomb(1800, 100, 100)
}

/// Allocation figures of running `f`: (peak live bytes above the start, allocations).
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let (live, allocations) = (LIVE.load(Ordering::Relaxed), ALLOCATIONS.load(Ordering::Relaxed));
    PEAK.store(live, Ordering::Relaxed);
    let out = f();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(live);
    (out, peak, ALLOCATIONS.load(Ordering::Relaxed) - allocations)
}

/// One test at a time: the figures are process-wide.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn an_alias_bomb_is_rejected_naming_the_bound_with_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let text = the_bomb();
    assert!(text.len() < 9000, "a small file: {} bytes", text.len());
    let (got, peak, allocations) = measure(|| parse_documents(&text, "bomb.yaml"));
    assert_eq!(got.len(), 1, "one error for the whole file: {got:?}");
    let e = got[0].as_ref().expect_err("rejected");
    assert_eq!((e.file.as_str(), e.object.as_str(), e.field.as_str()), ("bomb.yaml", "file", ""));
    assert!(e.message.contains("document 1 expands to more than"), "{e}");
    assert!(e.message.contains("aliases"), "{e}");
    assert!(peak < 4 << 20, "peak {peak} bytes while rejecting a {} byte file", text.len());
    // The count is bounded by the budget: about 80k nodes for this file, visited without
    // building them (the real parse of that many would allocate once per node at least).
    assert!(allocations < 50_000, "{allocations} allocations");
}

#[test]
fn a_manifest_with_a_few_anchors_still_parses() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let text = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: &labels {app: web, tier: front}}
  spec: &spec {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: x, labels: *labels}
  spec: *spec
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: web, namespace: x}
  spec:
    podSelector: {matchLabels: *labels}
    ingress: [{ports: [{port: http}]}]
";
    let (got, peak, _) = measure(|| parse_documents(text, "anchors.yaml"));
    let objects: Vec<&Object> = got.iter().map(|o| o.as_ref().unwrap_or_else(|e| panic!("{e}"))).collect();
    assert_eq!(objects.len(), 3);
    match objects[1] {
        Object::Pod(p) => {
            assert_eq!(p.metadata.labels["tier"], "front");
            assert_eq!(p.spec.containers[0].ports[0].container_port, 80);
        }
        other => panic!("expected pod b, got {other:?}"),
    }
    assert!(peak < 4 << 20, "peak {peak}");
}

/// The control: the bomb really is one. Given straight to serde_yaml (no budget), in a
/// child process of this test binary, it runs into the allocator's cap and the child aborts.
#[test]
fn without_the_budget_the_same_bomb_exhausts_the_cap() {
    if std::env::var_os("WARD_ALIAS_BOMB_CHILD").is_some() {
        let text = the_bomb();
        let value: Result<serde_yaml::Value, _> = serde_yaml::from_str(&text);
        // Not reached when the bomb works: the allocation past the cap aborts first.
        panic!("serde_yaml parsed the bomb within {CAP} bytes: {}", value.is_ok());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args(["--exact", "without_the_budget_the_same_bomb_exhausts_the_cap", "--nocapture", "--test-threads=1"])
        .env("WARD_ALIAS_BOMB_CHILD", "1")
        .output()
        .expect("running the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child must die: {stderr}");
    assert!(stderr.contains("memory allocation of"), "it must die of the cap, not otherwise: {stderr}");
}
