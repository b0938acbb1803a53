//! Running child processes from xtask: echo the command, inherit the terminal, fail with
//! the command line on a non-zero exit.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `cmd` with inherited stdio; errors on a non-zero exit.
pub fn status(mut cmd: Command) -> anyhow::Result<()> {
    let line = describe(&cmd);
    println!("+ {line}");
    let status = cmd.status().with_context(|| format!("starting `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout, empty if it could not run.
pub fn stdout(cmd: &mut Command) -> String {
    cmd.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// `cargo <args>` in the workspace root, with the cargo that runs xtask.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(ward_lab::bins::workspace_root());
    status(cmd)
}

/// Test counts read from cargo test's `test result:` lines, and what the failed tests
/// printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    /// Each failed test's name with the end of its captured output (the panic), so the
    /// last lines of a long run say which test failed and why.
    pub failures: Vec<Failure>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub excerpt: Vec<String>,
}

impl TestCounts {
    /// Reads one line of cargo test's output.
    fn read(&mut self, line: &str, block: &mut Option<Failure>) {
        if let Some((p, f)) = parse_test_result(line) {
            self.passed += p;
            self.failed += f;
        }
        // libtest prints a failed test's captured output between `---- NAME stdout ----`
        // and the next such header or the `failures:` list.
        let header = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----"));
        if (header.is_some() || line == "failures:" || line.starts_with("test result: "))
            && let Some(done) = block.take()
        {
            self.failures.push(done.trimmed());
        }
        if let Some(name) = header {
            *block = Some(Failure { name: name.to_string(), excerpt: Vec::new() });
        } else if let Some(b) = block {
            b.excerpt.push(line.to_string());
        }
    }
}

impl Failure {
    /// Keeps the lines around the panic: what led to it and its message.
    fn trimmed(mut self) -> Failure {
        const BEFORE: usize = 12;
        const AFTER: usize = 6;
        let end = self
            .excerpt
            .iter()
            .position(|l| l.contains("panicked at"))
            .map_or(self.excerpt.len(), |i| (i + 1 + AFTER).min(self.excerpt.len()));
        let start = end.saturating_sub(BEFORE + AFTER + 1);
        self.excerpt = self.excerpt[start..end].to_vec();
        self
    }
}

/// `cargo test <args>` in the workspace root: echoes its output as it comes and adds up the
/// `test result: ... N passed; M failed` lines. Errors on a non-zero exit.
pub fn cargo_test(args: &[&str]) -> (TestCounts, anyhow::Result<()>) {
    use std::io::BufRead;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("test").args(args).current_dir(ward_lab::bins::workspace_root());
    let line = describe(&cmd);
    println!("+ {line}");
    let mut counts = TestCounts::default();
    let mut child = match cmd.stdout(std::process::Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return (counts, Err(anyhow::anyhow!("starting `{line}`: {e}"))),
    };
    if let Some(out) = child.stdout.take() {
        let mut block = None;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{l}");
            counts.read(&l, &mut block);
        }
    }
    let result = match child.wait() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(anyhow::anyhow!("`{line}` failed ({s})")),
        Err(e) => Err(anyhow::anyhow!("waiting for `{line}`: {e}")),
    };
    (counts, result)
}

/// `test result: ok. 7 passed; 1 failed; ...` → (7, 1).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let mut parts = counts.split("; ");
    let passed = parts.next()?.strip_suffix(" passed")?.parse().ok()?;
    let failed = parts.next()?.strip_suffix(" failed")?.parse().ok()?;
    Some((passed, failed))
}

/// Whether `program` is found in `$PATH` (or the sbin directories root has).
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].iter().map(Into::into))
        .any(|d| is_executable(&d.join(program)))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cargo_test_result_lines() {
        let l = "test result: FAILED. 7 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.61s";
        assert_eq!(super::parse_test_result(l), Some((7, 1)));
        assert_eq!(super::parse_test_result("running 7 tests"), None);
    }

    #[test]
    fn keeps_each_failed_test_and_its_panic() {
        let out = [
            "running 2 tests",
            "test a ... ok",
            "test b::c ... FAILED",
            "",
            "failures:",
            "",
            "---- b::c stdout ----",
            "some log",
            "thread 'b::c' panicked at tests/b.rs:3:5:",
            "assertion failed: x",
            "note: run with `RUST_BACKTRACE=1`",
            "",
            "",
            "failures:",
            "    b::c",
            "",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        ];
        let mut counts = super::TestCounts::default();
        let mut block = None;
        for l in out {
            counts.read(l, &mut block);
        }
        assert_eq!((counts.passed, counts.failed), (1, 1));
        assert_eq!(counts.failures.len(), 1);
        let f = &counts.failures[0];
        assert_eq!(f.name, "b::c");
        assert_eq!(f.excerpt[0], "some log");
        assert!(f.excerpt.iter().any(|l| l == "assertion failed: x"), "{:?}", f.excerpt);
    }
}
