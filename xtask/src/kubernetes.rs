//! `cargo xtask setup`, Kubernetes part: once per machine, builds the lab cluster's
//! Kubernetes 1.20.2 (Debian's `kubernetes` source package, built as Debian's rules build it)
//! and its local images into the cache `ward_lab::cluster::cache` describes, outside the work
//! tree. Each artefact gets a stamp when it is complete, so an interrupted build resumes and a
//! complete cache costs nothing. Recipe and workarounds: shared/KUBERNETES.md.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ward_lab::cluster::cache::{self, Image, KubeCache, Program};

use crate::run;
use crate::setup::apt;

/// What a cluster run needs on the machine (the cache holds the rest).
const RUNTIME_PACKAGES: [(&str, Option<&str>); 4] = [
    ("etcd-server", Some("etcd")),
    ("containerd", Some("containerd")),
    // The reference plugins (bridge, host-local) of the baseline CNI.
    ("containernetworking-plugins", None),
    ("util-linux", Some("nsenter")),
];

/// The source package's Build-Depends that matter here, and what the images need.
const BUILD_PACKAGES: [(&str, Option<&str>); 7] = [
    ("golang-go", Some("go")),
    // Replaces the source's vendored reflect2 1.0.1 (see `cache::PROGRAM_RECIPE`).
    ("golang-github-modern-go-reflect2-dev", None),
    ("rsync", Some("rsync")),
    ("jq", Some("jq")),
    ("dpkg-dev", Some("dpkg-source")),
    ("gcc", Some("gcc")),
    ("libc6-dev", None),
];

const SOURCE_PACKAGE: &str = "kubernetes";
const SOURCE_STAMP: &str = "source";
/// Written by setup; a machine whose sources already have deb-src entries gets none.
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/ward-deb-src.sources";
const APT_SOURCES: [&str; 2] = ["/etc/apt/sources.list", "/etc/apt/sources.list.d"];
/// Where golang-github-modern-go-reflect2-dev puts its source.
const REFLECT2_SOURCE: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
const BUSYBOX: &str = "/usr/bin/busybox";
/// The images' PATH (busybox applets are in /bin).
const PATH_ENV_CHANGE: &str = "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Installs the runtime packages and builds what the cache lacks; true if it did anything.
pub fn ensure() -> anyhow::Result<bool> {
    let cache = KubeCache::from_env();
    let mut did = false;
    if ward_lab::privileged::is_root() {
        did |= apt(&RUNTIME_PACKAGES)?;
    }
    if cache.missing().is_empty() {
        if ward_lab::privileged::is_root() && cache.src_dir().exists() {
            prune_build_tree(&cache)?;
            did = true;
        }
        return Ok(did);
    }
    if !ward_lab::privileged::is_root() {
        println!(
            "setup: warning: the Kubernetes cache at {} is incomplete; `cargo xtask setup` as root builds it \
             (the cluster tests skip without it, or fail under CI=true)",
            cache.root().display()
        );
        return Ok(did);
    }
    let started = Instant::now();
    println!(
        "setup: building Kubernetes {} and its lab images into {} (missing: {}); the first build takes about \
         20 minutes on 2 cores",
        cache::KUBERNETES_VERSION,
        cache.root().display(),
        cache.missing().join(", ")
    );
    apt(&BUILD_PACKAGES)?;
    for dir in [cache.src_dir(), cache.go_home(), cache.bin_dir(), cache.images_dir(), cache.stamps_dir()] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tree = source_tree(&cache)?;
    vendor_reflect2(&tree)?;
    for program in cache::PROGRAMS {
        if !cache.program_done(program) {
            build_program(&cache, &tree, program)?;
        }
    }
    images(&cache, &tree)?;
    println!("setup: Kubernetes cache complete in {}", minutes(started.elapsed()));
    prune_build_tree(&cache)?;
    Ok(true)
}

/// The unpacked source tree (`apt-get source kubernetes`), fetched if its stamp is missing,
/// with the GOPATH link Debian's rules make so that `make` builds in GOPATH mode.
fn source_tree(cache: &KubeCache) -> anyhow::Result<PathBuf> {
    if !cache.stamp(SOURCE_STAMP).is_file() {
        deb_src_entry()?;
        let started = Instant::now();
        println!("setup: fetching the {SOURCE_PACKAGE} source package (about 35 MB)");
        // A half-unpacked tree from an interrupted run would make dpkg-source refuse.
        for (_, path) in entries(&cache.src_dir()) {
            remove(&path)?;
        }
        let mut cmd = Command::new("apt-get");
        cmd.args(["source", "-q", SOURCE_PACKAGE]).current_dir(cache.src_dir());
        run::status(cmd)?;
        let tree = find_tree(cache)?;
        fs::write(cache.stamp(SOURCE_STAMP), format!("{}\n", tree.display())).context("writing the source stamp")?;
        println!("setup: source unpacked in {}", minutes(started.elapsed()));
    }
    let tree = find_tree(cache)?;
    let link_dir = tree.join(".go/src/k8s.io");
    let link = link_dir.join("kubernetes");
    if fs::symlink_metadata(&link).is_err() {
        fs::create_dir_all(&link_dir).with_context(|| format!("creating {}", link_dir.display()))?;
        symlink("../../..", &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(tree)
}

/// Debian's reflect2 source (1.0.2, which knows Go 1.18's map iterator) in place of the
/// tree's vendored 1.0.1, whose map iteration faults under the Go 1.19 here
/// (`cache::PROGRAM_RECIPE`). The build is in GOPATH mode, so `vendor/` is read as it is and
/// `vendor/modules.txt` is not consulted.
fn vendor_reflect2(tree: &Path) -> anyhow::Result<()> {
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    remove(&vendored)?;
    fs::create_dir_all(&vendored).with_context(|| format!("creating {}", vendored.display()))?;
    for (name, path) in entries(Path::new(REFLECT2_SOURCE)) {
        if name.ends_with(".go") || name.ends_with(".s") {
            fs::copy(&path, vendored.join(&name))
                .with_context(|| format!("copying {} into {}", path.display(), vendored.display()))?;
        }
    }
    if !vendored.join("go_above_118.go").is_file() {
        bail!("{REFLECT2_SOURCE} is not reflect2 1.0.2 or later (no go_above_118.go)");
    }
    Ok(())
}

/// Once every artefact is in the cache, the source tree and its Go build cache (about 3.5 GB)
/// are only needed to build again: remove them, with the source stamp, so the cache keeps just
/// the programs and images (about 0.6 GB). A later missing artefact fetches the source again.
fn prune_build_tree(cache: &KubeCache) -> anyhow::Result<()> {
    if !cache.missing().is_empty() {
        return Ok(());
    }
    remove(&cache.stamp(SOURCE_STAMP))?;
    remove(&cache.src_dir())?;
    remove(&cache.go_home())?;
    println!("setup: removed the Kubernetes build tree; the cache keeps the programs and images");
    Ok(())
}

/// `kubernetes-<debian version>/` under `src/` (1.20.5+really1.20.2 on bookworm).
fn find_tree(cache: &KubeCache) -> anyhow::Result<PathBuf> {
    entries(&cache.src_dir())
        .into_iter()
        .find(|(name, path)| name.starts_with("kubernetes-") && path.join("Makefile").is_file())
        .map(|(_, path)| path)
        .with_context(|| format!("no unpacked kubernetes source tree in {}", cache.src_dir().display()))
}

/// A deb-src entry for the Debian archive this machine already uses, unless one exists.
fn deb_src_entry() -> anyhow::Result<()> {
    if Path::new(DEB_SRC_FILE).exists() {
        return Ok(());
    }
    let mut texts = Vec::new();
    for source in APT_SOURCES {
        let path = Path::new(source);
        if path.is_dir() {
            texts.extend(entries(path).into_iter().filter_map(|(_, p)| fs::read_to_string(p).ok()));
        } else if let Ok(t) = fs::read_to_string(path) {
            texts.push(t);
        }
    }
    let all = texts.join("\n");
    if all.lines().any(|l| l.trim_start().starts_with("deb-src") || l.contains("Types: deb-src")) {
        return Ok(());
    }
    let Some(archive) = texts.iter().find_map(|t| debian_archive(t)) else {
        bail!("no Debian archive in {APT_SOURCES:?} to fetch the {SOURCE_PACKAGE} source package from");
    };
    println!("setup: adding a deb-src entry for {} {} ({DEB_SRC_FILE})", archive.uri, archive.suite);
    let mut entry = format!(
        "# Written by `cargo xtask setup`: source packages from the archive this machine uses\n\
         Types: deb-src\nURIs: {}\nSuites: {}\nComponents: main\n",
        archive.uri, archive.suite
    );
    if let Some(key) = &archive.signed_by {
        entry.push_str(&format!("Signed-By: {key}\n"));
    }
    fs::write(DEB_SRC_FILE, entry).with_context(|| format!("writing {DEB_SRC_FILE}"))?;
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive");
    run::status(update)
}

#[derive(Debug, PartialEq, Eq)]
struct Archive {
    uri: String,
    suite: String,
    signed_by: Option<String>,
}

/// The main Debian archive (not -security, not -updates) of one sources file, in either the
/// deb822 form or the one-line form.
fn debian_archive(text: &str) -> Option<Archive> {
    let is_base = |suite: &str| !suite.contains('-') && !suite.contains('/');
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
        };
        let (Some(types), Some(uris), Some(suites)) = (field("Types"), field("URIs"), field("Suites")) else {
            continue;
        };
        let uri = uris.split_whitespace().next()?;
        if !types.split_whitespace().any(|t| t == "deb") || !uri.contains("debian") {
            continue;
        }
        if let Some(suite) = suites.split_whitespace().find(|s| is_base(s)) {
            return Some(Archive {
                uri: uri.to_owned(),
                suite: suite.to_owned(),
                signed_by: field("Signed-By").map(str::to_owned),
            });
        }
    }
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace().filter(|w| !w.starts_with('['));
        if words.next()? != "deb" {
            return None;
        }
        let (uri, suite) = (words.next()?, words.next()?);
        (uri.contains("debian") && is_base(suite)).then(|| Archive {
            uri: uri.to_owned(),
            suite: suite.to_owned(),
            signed_by: None,
        })
    })
}

/// `make WHAT=<target>` as Debian's rules run it (GOPATH mode, no cgo), then the program into
/// `bin/` and its stamp.
fn build_program(cache: &KubeCache, tree: &Path, program: Program) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("setup: building {} ({})", program.name, program.make_target);
    let mut cmd = Command::new("make");
    cmd.arg(format!("WHAT={}", program.make_target))
        .current_dir(tree)
        .env("GOPATH", tree.join(".go"))
        .env("CGO_ENABLED", "0")
        .env("HOME", cache.go_home());
    run::status(cmd)?;
    let built = tree.join("_output/bin").join(program.name);
    install(&built, &cache.program(program))?;
    stamp(cache, &KubeCache::program_stamp(program))?;
    println!("setup: built {} in {}", program.name, minutes(started.elapsed()));
    Ok(())
}

/// Copies `from` next to `to` and renames it into place, so `to` is never half written.
fn install(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tmp = to.with_extension("partial");
    fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
}

fn stamp(cache: &KubeCache, artefact: &str) -> anyhow::Result<()> {
    let path = cache.stamp(artefact);
    fs::write(&path, format!("kubernetes {} {artefact}\n", cache::KUBERNETES_VERSION))
        .with_context(|| format!("writing {}", path.display()))
}

/// The images kubelet and e2e.test ask for, each from a root filesystem of local files,
/// made into a docker archive by a podman confined to a scratch directory (no registry, and
/// the machine's own podman storage is not touched).
fn images(cache: &KubeCache, tree: &Path) -> anyhow::Result<()> {
    let todo: Vec<Image> = cache::IMAGES.into_iter().filter(|i| !cache.image_done(*i)).collect();
    if todo.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let scratch = cache.root().join("image-build");
    remove(&scratch)?;
    let podman = Podman::new(scratch.join("podman-storage"))?;
    for image in todo {
        let rootfs = scratch.join(image.name).join("rootfs");
        fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
        let changes: &[&str] = if image == cache::PAUSE_IMAGE {
            pause_rootfs(tree, &rootfs)?;
            &["ENTRYPOINT=[\"/pause\"]"]
        } else if image == cache::AGNHOST_IMAGE {
            agnhost_rootfs(cache, tree, &rootfs)?;
            &["ENTRYPOINT=[\"/agnhost\"]", "CMD=[\"pause\"]", PATH_ENV_CHANGE]
        } else {
            busybox_rootfs(&rootfs)?;
            &["CMD=[\"sh\"]", PATH_ENV_CHANGE]
        };
        podman.archive(&rootfs, image, changes, &cache.image_archive(image))?;
        stamp(cache, &KubeCache::image_stamp(image))?;
        println!("setup: image {} ({}) built", image.reference, cache.image_archive(image).display());
    }
    drop(podman);
    remove(&scratch)?;
    println!("setup: images built in {}", minutes(started.elapsed()));
    Ok(())
}

/// `pause` from build/pause/linux/pause.c, static.
fn pause_rootfs(tree: &Path, rootfs: &Path) -> anyhow::Result<()> {
    let mut cc = Command::new("gcc");
    cc.args(["-Os", "-Wall", "-Werror", "-static", "-DVERSION=v3.2-ward", "-o"])
        .arg(rootfs.join("pause"))
        .arg(tree.join("build/pause/linux/pause.c"));
    run::status(cc)
}

/// A static busybox with every applet linked, and a root user: the e2e client pods run
/// `/bin/sh -c 'for i in $(seq 1 5); do /agnhost connect ...'`, so sh and seq are required.
fn busybox_rootfs(rootfs: &Path) -> anyhow::Result<()> {
    let bin = rootfs.join("bin");
    for d in [bin.clone(), rootfs.join("etc"), rootfs.join("tmp")] {
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    install(Path::new(BUSYBOX), &bin.join("busybox"))?;
    let list = run::stdout(Command::new(BUSYBOX).arg("--list"));
    if list.trim().is_empty() {
        bail!("{BUSYBOX} --list printed no applets");
    }
    for applet in list.split_whitespace().filter(|a| *a != "busybox") {
        symlink("busybox", bin.join(applet)).with_context(|| format!("linking applet {applet}"))?;
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").context("writing etc/passwd")?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").context("writing etc/group")
}

/// busybox plus agnhost (as `/agnhost` and `/agnhost-2`) and the porter's TLS files.
fn agnhost_rootfs(cache: &KubeCache, tree: &Path, rootfs: &Path) -> anyhow::Result<()> {
    busybox_rootfs(rootfs)?;
    fs::create_dir_all(rootfs.join("uploads")).context("creating uploads/")?;
    install(&cache.program(cache::AGNHOST), &rootfs.join("agnhost"))?;
    symlink("agnhost", rootfs.join("agnhost-2")).context("linking agnhost-2")?;
    for f in ["localhost.crt", "localhost.key"] {
        install(&tree.join("test/images/agnhost/porter").join(f), &rootfs.join(f))?;
    }
    Ok(())
}

/// A podman with its own storage and run directory (removed on drop).
struct Podman {
    storage: PathBuf,
    run: PathBuf,
}

impl Podman {
    /// podman refuses a run directory path of 50 characters or more, so it goes under
    /// `$TMPDIR` with a lab name (`lab-clean` removes it if this process is killed).
    fn new(storage: PathBuf) -> anyhow::Result<Self> {
        let run = std::env::temp_dir().join(ward_lab::netns::unique_name("podman"));
        fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
        Ok(Podman { storage, run })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(&self.storage)
            .arg("--runroot")
            .arg(&self.run)
            .args(["--storage-driver", "vfs"])
            .args(args);
        cmd
    }

    /// `podman import` of the root filesystem as `image.reference`, then `podman save` of that
    /// one image (several names at once would save only the first).
    fn archive(&self, rootfs: &Path, image: Image, changes: &[&str], out: &Path) -> anyhow::Result<()> {
        let tar = rootfs.with_extension("tar");
        let mut pack = Command::new("tar");
        pack.arg("-C").arg(rootfs).arg("-cf").arg(&tar).arg(".");
        run::status(pack)?;
        let mut import = self.command(&["import"]);
        for c in changes {
            import.args(["--change", c]);
        }
        import.arg(&tar).arg(image.reference);
        run::status(import)?;
        let partial = out.with_extension("partial");
        let _ = fs::remove_file(&partial);
        let mut save = self.command(&["save", "--format", "docker-archive", "-o"]);
        save.arg(&partial).arg(image.reference);
        run::status(save)?;
        fs::rename(&partial, out).with_context(|| format!("renaming {} to {}", partial.display(), out.display()))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.run);
    }
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display())),
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
    }
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 { format!("{}m{:02}s", s / 60, s % 60) } else { format!("{:.1}s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_suite_of_a_deb822_file_is_the_archive() {
        let text = "Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            debian_archive(text),
            Some(Archive {
                uri: "http://deb.debian.org/debian".into(),
                suite: "bookworm".into(),
                signed_by: Some("/usr/share/keyrings/debian-archive-keyring.gpg".into()),
            })
        );
    }

    #[test]
    fn a_one_line_sources_list_works_and_security_suites_do_not_count() {
        let text = "deb http://security.debian.org/debian-security bookworm-security main\n\
                    deb [arch=amd64] http://ftp.de.debian.org/debian bookworm main contrib\n";
        let a = debian_archive(text).expect("archive");
        assert_eq!((a.uri.as_str(), a.suite.as_str()), ("http://ftp.de.debian.org/debian", "bookworm"));
        assert_eq!(debian_archive("deb https://packages.cloud.google.com/apt cloud-sdk main\n"), None);
    }

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(minutes(Duration::from_secs(754)), "12m34s");
        assert_eq!(minutes(Duration::from_millis(8_500)), "8.5s");
    }
}
