//! Installing Ward as the node's CNI: the `ward-cni` binary into the runtime's plugin
//! directory (`ward-agent install-cni`, the manifests' init step), and the configuration list
//! `<conf-dir>/10-ward.conflist`, which the agent writes once its datastore has synced.
//!
//! The conflist is what makes kubelet consider the node's network ready, so it appears only
//! when Ward can protect pods, and it is never removed: not on shutdown, not on restart, not
//! by an upgrade (a missing conflist makes kubelet mark the node NotReady and stop starting
//! pods). Both files are written atomically (a temporary file in the same directory, fsync,
//! rename), so a runtime never reads half of one, and a running plugin binary is never
//! overwritten in place ("text file busy").
//!
//! Versions: `cniVersion` is the highest version every plugin of the list speaks up to 1.0.0
//! (what runtimes built on libcni before 1.2 understand), and `cniVersions` (spec 1.1.0,
//! section 1) lists every version from 1.0.0 that all of them speak, so a newer runtime picks
//! 1.1.0, and with it STATUS and GC, exactly when every plugin (chained ones and a delegated
//! IPAM plugin too) supports it. Each plugin's versions come from its own VERSION answer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::netconf::{self, CniVersion};

/// The conflist's file name: sorts before most others, which is how runtimes pick one.
pub const CONFLIST_NAME: &str = "10-ward.conflist";
/// The plugin binary's name, and the `type` that names it.
pub const PLUGIN_TYPE: &str = "ward-cni";
/// How long a plugin may take to answer VERSION.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("--cni-chain {index}: {message}")]
    Chain { index: usize, message: String },
    #[error("plugin {plugin}: not found at {path} (install it or drop it from the chain)")]
    PluginMissing { plugin: String, path: PathBuf },
    #[error("plugin {plugin}: VERSION failed: {message}")]
    PluginVersion { plugin: String, message: String },
    #[error("the plugins share no CNI version from 1.0.0 on: {detail}")]
    NoCommonVersion { detail: String },
    #[error("the ward-cni configuration is invalid: {0}")]
    Netconf(#[source] netconf::NetConfError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// What the conflist says, before versions are settled.
#[derive(Clone, Debug, PartialEq)]
pub struct ConflistSpec {
    /// Where runtimes read configurations (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Where the plugins named by `type` live (`/opt/cni/bin`), for their VERSION answers.
    pub bin_dir: PathBuf,
    /// The network name (also the plugin's state directory name).
    pub network: String,
    /// `ward-cni`'s own object, without `type` (added here).
    pub ward: Map<String, Value>,
    /// Plugins chained after Ward (portmap, bandwidth, tuning, ...), as objects with `type`.
    pub chain: Vec<Map<String, Value>>,
}

/// Parses a `--cni-chain` argument: one plugin object with a `type`.
pub fn chain_entry(index: usize, text: &str) -> Result<Map<String, Value>, InstallError> {
    let chain = |message: String| InstallError::Chain { index, message };
    let value: Value = serde_json::from_str(text).map_err(|e| chain(format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(chain("must be a JSON object (one plugin's configuration)".into()));
    };
    match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => Ok(obj),
        Some(_) => Err(chain("type: must be a plugin name (a file name in the CNI bin directory)".into())),
        None => Err(chain("type: required field is missing".into())),
    }
}

impl ConflistSpec {
    /// The plugins whose versions bound the list's: Ward, a delegated IPAM plugin, the chain.
    fn plugin_types(&self) -> Vec<String> {
        let mut types = vec![PLUGIN_TYPE.to_owned()];
        if let Some(Value::String(t)) = self.ward.get("ipam").and_then(|i| i.get("type")) {
            types.push(t.clone());
        }
        types.extend(self.chain.iter().filter_map(|p| p.get("type")?.as_str().map(str::to_owned)));
        types
    }

    /// Ward's plugin object as the runtime will pass it, validated by the plugin's own parser.
    fn ward_object(&self, version: CniVersion) -> Result<Map<String, Value>, InstallError> {
        let mut obj = Map::new();
        obj.insert("type".into(), Value::from(PLUGIN_TYPE));
        obj.extend(self.ward.clone());
        let mut as_run = obj.clone();
        as_run.insert("cniVersion".into(), Value::from(version.as_str()));
        as_run.insert("name".into(), Value::from(self.network.as_str()));
        netconf::parse(Value::Object(as_run).to_string().as_bytes()).map_err(InstallError::Netconf)?;
        Ok(obj)
    }

    /// The conflist, with the versions every plugin answered (see the module docs).
    pub fn render(&self, plugin_versions: &[(String, Vec<String>)]) -> Result<Value, InstallError> {
        let common: Vec<CniVersion> = CniVersion::ALL
            .into_iter()
            .filter(|v| *v >= CniVersion::V1_0_0)
            .filter(|v| plugin_versions.iter().all(|(_, vs)| vs.iter().any(|s| s == v.as_str())))
            .collect();
        let Some(&highest) = common.last() else {
            let detail = plugin_versions.iter().map(|(p, vs)| format!("{p}: {}", vs.join(", "))).collect::<Vec<_>>();
            return Err(InstallError::NoCommonVersion { detail: detail.join("; ") });
        };
        let for_old_runtimes = if common.contains(&CniVersion::V1_0_0) { CniVersion::V1_0_0 } else { highest };
        let mut plugins = vec![Value::Object(self.ward_object(for_old_runtimes)?)];
        plugins.extend(self.chain.iter().cloned().map(Value::Object));
        Ok(json!({
            "cniVersion": for_old_runtimes.as_str(),
            "cniVersions": common.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
            "name": self.network,
            "plugins": plugins,
        }))
    }

    /// Asks every plugin of the list for its versions, renders the conflist and writes it if
    /// its content differs from what is there. Returns whether it wrote.
    pub fn publish(&self) -> Result<bool, InstallError> {
        let mut versions = Vec::new();
        for plugin in self.plugin_types() {
            let supported = plugin_versions(&self.bin_dir.join(&plugin), &plugin)?;
            versions.push((plugin, supported));
        }
        let mut text = serde_json::to_string_pretty(&self.render(&versions)?).unwrap_or_default();
        text.push('\n');
        let path = self.conf_dir.join(CONFLIST_NAME);
        if fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(false);
        }
        write_atomic(&path, text.as_bytes(), 0o644)?;
        Ok(true)
    }
}

/// A plugin's `supportedVersions`, from running it with `CNI_COMMAND=VERSION`.
fn plugin_versions(binary: &Path, plugin: &str) -> Result<Vec<String>, InstallError> {
    if !binary.is_file() {
        return Err(InstallError::PluginMissing { plugin: plugin.to_owned(), path: binary.to_owned() });
    }
    let failed = |message: String| InstallError::PluginVersion { plugin: plugin.to_owned(), message };
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // The version of the question; every version lists the same supported set.
        let _ = stdin.write_all(br#"{"cniVersion":"1.0.0"}"#);
    }
    let deadline = std::time::Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("no answer within {VERSION_TIMEOUT:?}")));
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    let answer: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| failed(format!("unreadable answer {:?}: {e}", String::from_utf8_lossy(&out.stdout))))?;
    let versions = answer
        .get("supportedVersions")
        .and_then(Value::as_array)
        .ok_or_else(|| failed(format!("no supportedVersions in {answer}")))?;
    Ok(versions.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced before the
/// rename, so readers see the old content or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A leading dot: runtimes skip hidden files, so the temporary is never taken for a config.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(InstallError::Io { what: "writing", path: tmp, source: e });
    }
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
    // The rename is durable once the directory is.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Copies the `ward-cni` binary at `source` into `bin_dir` (atomically, mode 0755); returns
/// the installed path.
pub fn install_binary(source: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let bytes = fs::read(source).map_err(io_err("reading", source))?;
    let target = bin_dir.join(PLUGIN_TYPE);
    if fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(target);
    }
    write_atomic(&target, &bytes, 0o755)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(chain: Vec<Map<String, Value>>) -> ConflistSpec {
        let ward = json!({"agentSocket": "/run/ward/agent.sock", "podCIDRs": ["10.244.1.0/24"], "dataDir": "/var/lib/cni/ward"});
        ConflistSpec {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dir: "/opt/cni/bin".into(),
            network: "ward".into(),
            ward: ward.as_object().cloned().unwrap_or_default(),
            chain,
        }
    }

    fn versions(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ward_alone_offers_1_1_0_to_new_runtimes_and_1_0_0_to_old_ones() {
        let v = spec(vec![]).render(&[("ward-cni".into(), versions(&["0.4.0", "1.0.0", "1.1.0"]))]).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["cniVersions"], json!(["1.0.0", "1.1.0"]));
        assert_eq!(v["name"], "ward");
        assert_eq!(v["plugins"][0]["type"], "ward-cni");
        assert_eq!(v["plugins"][0]["podCIDRs"], json!(["10.244.1.0/24"]));
    }

    #[test]
    fn a_chained_plugin_without_1_1_0_keeps_the_list_at_1_0_0() {
        let portmap = chain_entry(0, r#"{"type":"portmap","capabilities":{"portMappings":true}}"#).unwrap();
        let v = spec(vec![portmap])
            .render(&[
                ("ward-cni".into(), versions(&["0.4.0", "1.0.0", "1.1.0"])),
                ("portmap".into(), versions(&["0.1.0", "0.4.0", "1.0.0"])),
            ])
            .unwrap();
        assert_eq!(v["cniVersions"], json!(["1.0.0"]));
        assert_eq!(v["plugins"][1], json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        let err = spec(vec![])
            .render(&[("ward-cni".into(), versions(&["1.1.0"])), ("old".into(), versions(&["0.3.1"]))])
            .unwrap_err();
        assert!(err.to_string().contains("old: 0.3.1"), "{err}");
    }

    #[test]
    fn chain_entries_and_the_ward_object_are_validated() {
        assert!(chain_entry(2, "[1]").unwrap_err().to_string().starts_with("--cni-chain 2: must be a JSON object"));
        assert_eq!(chain_entry(0, "{}").unwrap_err().to_string(), "--cni-chain 0: type: required field is missing");
        assert!(chain_entry(0, r#"{"type":"../x"}"#).is_err());
        let mut bad = spec(vec![]);
        bad.ward.insert("podCIDRs".into(), json!(["nope"]));
        let err = bad.render(&[("ward-cni".into(), versions(&["1.0.0"]))]).unwrap_err();
        assert!(err.to_string().contains(r#"podCIDRs[0]: invalid CIDR "nope""#), "{err}");
    }

    #[test]
    fn writes_are_atomic_and_idempotent() {
        let dir = std::env::temp_dir().join(format!("ward-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join(CONFLIST_NAME);
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(names, [CONFLIST_NAME], "no temporary left behind");
        let src = dir.join("src-binary");
        fs::write(&src, b"\x7fELF").unwrap();
        let installed = install_binary(&src, &dir.join("bin")).unwrap();
        assert_eq!(fs::read(&installed).unwrap(), b"\x7fELF");
        assert_eq!(fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
        let _ = fs::remove_dir_all(&dir);
    }
}
