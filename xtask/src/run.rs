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

/// Test counts read from cargo test's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
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
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{l}");
            if let Some((p, f)) = parse_test_result(&l) {
                counts.passed += p;
                counts.failed += f;
            }
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
}
