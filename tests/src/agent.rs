//! A client of the agent's local API (newline-delimited JSON on a Unix socket), reading just
//! what the lab needs from `{"op":"status"}`: how far the datastore is enforced (which
//! manifest files, or which resourceVersions of the API) and which
//! objects were rejected. The agent's `api::proto::StatusReport` is the source of truth; the
//! rest of the report is kept as raw JSON.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("agent socket {path}: closed without answering")]
    NoAnswer { path: PathBuf },
    #[error("agent socket {path}: unreadable answer {answer:?}: {source}")]
    Decode { path: PathBuf, answer: String, source: serde_json::Error },
    #[error("agent socket {path}: answered {answer}")]
    Unexpected { path: PathBuf, answer: String },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Rejection {
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} field {}: {}", self.file, self.object, self.field, self.message)
    }
}

/// The agent's source revision as applied (`StatusReport::applied`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Applied {
    /// A directory: file name (relative to the manifests directory) to FNV-1a 64 of its
    /// bytes, 16 lowercase hex digits: the contents enforced in the kernel.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The API: kind to the highest resourceVersion applied.
    #[serde(default)]
    pub resource_versions: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub applied: Applied,
    #[serde(default)]
    pub rejected: Vec<Rejection>,
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// The `applied.files` form of a file's content hash.
pub fn file_hash(bytes: &[u8]) -> String {
    format!("{:016x}", ward_common::hash::fnv1a64(bytes))
}

/// Sends one request line and reads one answer line.
pub fn call(socket: &Path, request: &serde_json::Value, timeout: Duration) -> Result<serde_json::Value, AgentError> {
    let io = |source| AgentError::Io { path: socket.to_owned(), source };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    if BufReader::new(stream).read_line(&mut answer).map_err(io)? == 0 {
        return Err(AgentError::NoAnswer { path: socket.to_owned() });
    }
    serde_json::from_str(&answer).map_err(|source| AgentError::Decode { path: socket.to_owned(), answer, source })
}

pub fn status(socket: &Path, timeout: Duration) -> Result<Status, AgentError> {
    let raw = call(socket, &serde_json::json!({"op": "status"}), timeout)?;
    parse_status(socket, raw)
}

fn parse_status(socket: &Path, raw: serde_json::Value) -> Result<Status, AgentError> {
    if raw.get("result").and_then(|r| r.as_str()) != Some("status") {
        return Err(AgentError::Unexpected { path: socket.to_owned(), answer: raw.to_string() });
    }
    let mut status: Status = serde_json::from_value(raw.clone()).map_err(|source| AgentError::Decode {
        path: socket.to_owned(),
        answer: raw.to_string(),
        source,
    })?;
    status.raw = raw;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_the_applied_files_from_the_tagged_response() {
        let raw = serde_json::json!({
            "result": "status", "node": "n", "policy_revision": 3,
            "applied": {"source": "files", "files": {"ns_x.yaml": "af63dc4c8601ec8c"}},
            "rejected": [{"file": "p.yaml", "object": "NetworkPolicy x/p", "field": "spec", "message": "bad"}],
        });
        let s = parse_status(Path::new("/s"), raw).unwrap();
        assert_eq!(s.applied.files["ns_x.yaml"], file_hash(b"a"));
        assert_eq!(s.rejected[0].to_string(), "p.yaml: NetworkPolicy x/p field spec: bad");
    }

    #[test]
    fn an_error_response_is_not_a_status() {
        let raw = serde_json::json!({"result": "error", "message": "nope"});
        assert!(matches!(parse_status(Path::new("/s"), raw), Err(AgentError::Unexpected { .. })));
    }
}
