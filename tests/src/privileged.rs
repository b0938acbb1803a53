//! Guards for tests that need root: such a test must fail, never skip, where it is expected
//! to run (CI sets `CI=true`), and may be skipped with a note on a developer's machine
//! without privileges.

/// True when running as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True under CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

/// Call first in every privileged test: `if !require_root("name") { return; }`.
/// Panics without root under CI; elsewhere prints why the test did nothing.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(!in_ci(), "{test}: needs root (network namespaces, bpffs); CI=true, so this is a failure, not a skip");
    eprintln!("{test}: skipped, needs root (set CI=true to make this a failure)");
    false
}
