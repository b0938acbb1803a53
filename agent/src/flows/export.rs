//! Flow records to a file, one JSON record per line (the format `ward observe -o json` prints
//! and `--input-file` reads), for log shippers and SIEMs. The file rotates by size: at
//! `max_bytes` it becomes `<file>.1` (older ones shift to `.2`, ...; past `keep` they are
//! deleted) and a new file starts. The exporter follows the hub like any follower: if the disk
//! falls behind, the flow task never waits; the file gets a `lost_events` line with the count.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use super::history::Hub;
use super::record::Flow;

/// Where and how much (`--flow-export-file`, `--flow-export-max-bytes`, `--flow-export-keep`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSettings {
    pub path: PathBuf,
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: usize,
}

pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Bytes gathered before a write under load (the file is flushed whenever the exporter
/// catches up, so a quiet stream is on disk at once; a busy one pays one write per this).
const WRITE_BUFFER: usize = 256 << 10;
pub const DEFAULT_KEEP: usize = 5;

/// The line written in place of flows the exporter missed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostLine {
    pub lost_events: LostEvents,
}

/// Hubble's `LostEvent` fields: where the loss happened and how many.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    pub source: String,
    pub num_events_lost: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("flow export file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A size-rotated JSON-lines file.
pub struct Rotating {
    settings: ExportSettings,
    file: BufWriter<File>,
    size: u64,
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Rotating {
    /// Opens (appending to) the export file.
    pub fn open(settings: ExportSettings) -> Result<Rotating, ExportError> {
        let io = |source| ExportError::Io { path: settings.path.clone(), source };
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&settings.path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok(Rotating { file: BufWriter::with_capacity(WRITE_BUFFER, file), size, settings })
    }

    fn err(&self, source: std::io::Error) -> ExportError {
        ExportError::Io { path: self.settings.path.clone(), source }
    }

    /// Writes one line (a newline is added), rotating first if it would pass the size.
    pub fn write_line(&mut self, line: &[u8]) -> Result<(), ExportError> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.settings.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line).and_then(|()| self.file.write_all(b"\n")).map_err(|e| self.err(e))?;
        self.size += len;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), ExportError> {
        self.file.flush().map_err(|e| self.err(e))
    }

    fn rotate(&mut self) -> Result<(), ExportError> {
        self.flush()?;
        let path = self.settings.path.clone();
        let keep = self.settings.keep;
        // Oldest first: `.keep` is dropped, each `.n` becomes `.n+1`, the file becomes `.1`.
        let gone = rotated(&path, keep.max(1));
        match std::fs::remove_file(if keep == 0 { &path } else { &gone }) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(e)),
        }
        for n in (1..keep).rev() {
            match std::fs::rename(rotated(&path, n), rotated(&path, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        if keep > 0 {
            std::fs::rename(&path, rotated(&path, 1)).map_err(|e| self.err(e))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| self.err(e))?;
        self.file = BufWriter::with_capacity(WRITE_BUFFER, file);
        self.size = 0;
        Ok(())
    }
}

/// Encodes `f` into `buf` (reused from line to line: no allocation per record once it has
/// grown to the longest line) and writes it.
fn write_flow(out: &mut Rotating, buf: &mut Vec<u8>, f: &Flow) -> Result<(), ExportError> {
    buf.clear();
    match serde_json::to_writer(&mut *buf, f) {
        Ok(()) => out.write_line(buf),
        // A record that cannot be encoded is a bug, not a reason to stop exporting.
        Err(e) => {
            tracing::error!(error = %e, uuid = %f.uuid, "encoding a flow for export");
            Ok(())
        }
    }
}

fn write_lost(out: &mut Rotating, source: &str, missed: u64) -> Result<(), ExportError> {
    let line = LostLine { lost_events: LostEvents { source: source.into(), num_events_lost: missed } };
    match serde_json::to_vec(&line) {
        Ok(l) => out.write_line(&l),
        Err(_) => Ok(()),
    }
}

/// Writes what `live` delivers until the hub goes away, flushing whenever it catches up;
/// the kernel's losses go in as `lost_events` lines (source `kernel`) as they are noticed.
fn pump(
    mut out: Rotating,
    mut live: broadcast::Receiver<Arc<Flow>>,
    mut lost: watch::Receiver<u64>,
    skipped: Arc<AtomicU64>,
) {
    let mut lost_seen = *lost.borrow_and_update();
    let mut buf = Vec::with_capacity(4096);
    loop {
        let first = live.blocking_recv();
        let mut next = Some(first);
        while let Some(got) = next.take() {
            let written = match got {
                Ok(f) => write_flow(&mut out, &mut buf, &f),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "flow export fell behind");
                    skipped.fetch_add(missed, Ordering::Relaxed);
                    write_lost(&mut out, "export", missed)
                }
                Err(RecvError::Closed) => {
                    let _ = out.flush();
                    return;
                }
            };
            if let Err(e) = written {
                tracing::error!(error = %e, "flow export");
            }
            next = match live.try_recv() {
                Ok(f) => Some(Ok(f)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                Err(broadcast::error::TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                Err(broadcast::error::TryRecvError::Empty) => None,
            };
        }
        if lost.has_changed().unwrap_or(false) {
            let now = *lost.borrow_and_update();
            if now > lost_seen
                && let Err(e) = write_lost(&mut out, "kernel", now - lost_seen)
            {
                tracing::error!(error = %e, "flow export");
            }
            lost_seen = now;
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "flow export");
        }
    }
}

/// Starts the exporter on a thread of its own (file writes block).
pub fn spawn(settings: ExportSettings, hub: &Hub) -> Result<(), ExportError> {
    let out = Rotating::open(settings)?;
    let (live, lost, skipped) = (hub.subscribe(), hub.watch_lost(), hub.export_lost_counter());
    std::thread::Builder::new()
        .name("ward-flow-export".into())
        .spawn(move || pump(out, live, lost, skipped))
        .map_err(|source| ExportError::Io { path: PathBuf::from("<thread>"), source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::filter::tests::flow;
    use crate::flows::record::{FlowVerdict, TrafficDirection};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ward-export-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_only_the_newest_files() {
        let d = dir("rotate");
        let path = d.join("flows.jsonl");
        let mut out = Rotating::open(ExportSettings { path: path.clone(), max_bytes: 20, keep: 2 }).expect("open");
        // Lines of 10 bytes with the newline: two per file.
        for i in 0..7 {
            out.write_line(format!("line-{i:04}").as_bytes()).expect("write");
        }
        out.flush().expect("flush");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(read(&path), "line-0006\n");
        assert_eq!(read(&rotated(&path, 1)), "line-0004\nline-0005\n");
        assert_eq!(read(&rotated(&path, 2)), "line-0002\nline-0003\n");
        assert!(!rotated(&path, 3).exists(), "only `keep` rotated files remain");
        // Reopened: appends, and counts what is there already.
        drop(out);
        let mut out = Rotating::open(ExportSettings { path: path.clone(), max_bytes: 20, keep: 2 }).expect("reopen");
        out.write_line(b"line-0007").expect("write");
        out.write_line(b"line-0008").expect("write");
        out.flush().expect("flush");
        assert_eq!(read(&path), "line-0008\n");
        assert_eq!(read(&rotated(&path, 1)), "line-0006\nline-0007\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn exported_flows_are_the_records_followers_get_one_per_line() {
        let d = dir("pump");
        let path = d.join("out").join("flows.jsonl");
        let hub = Hub::new(16);
        spawn(ExportSettings { path: path.clone(), max_bytes: DEFAULT_MAX_BYTES, keep: 1 }, &hub).expect("spawn");
        let flows: Vec<Flow> =
            (0..3).map(|i| flow("a/x", "a/y", 80 + i, FlowVerdict::Forwarded, TrafficDirection::Egress)).collect();
        hub.push(flows.clone());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 {
                let got: Vec<Flow> = text.lines().map(|l| serde_json::from_str(l).expect("a flow line")).collect();
                assert_eq!(got, flows);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "three lines within 10 s, got {text:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Kernel losses are noticed with the next flow and written as their own line.
        hub.note_lost(4);
        hub.push([flows[0].clone()]);
        let lost = r#"{"lost_events":{"source":"kernel","num_events_lost":4}}"#;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 5 {
                assert_eq!(text.lines().nth(4), Some(lost), "{text}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "three lines within 10 s, got {text:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
