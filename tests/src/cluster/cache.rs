//! Where the lab cluster's Kubernetes binaries and images are: a cache outside the work tree
//! that `cargo xtask setup` fills once per machine (Debian's `kubernetes` 1.20.2 source built
//! into `bin/`, the local images as archives in `images/`) and every cluster run reads.
//!
//! Layout of the cache (`$WARD_K8S_CACHE`, default [`DEFAULT_CACHE_DIR`]):
//! `src/` the unpacked source package, `gohome/` the Go build's HOME (and its build cache),
//! `bin/<name>` the built programs, `images/<name>.tar` one image per docker archive, and
//! `stamps/<artefact>`, written only after its artefact is complete, so an interrupted build
//! resumes with what is missing.

use std::path::{Path, PathBuf};

/// The Kubernetes release the lab runs (Debian bookworm's `kubernetes` source package).
pub const KUBERNETES_VERSION: &str = "1.20.2";
/// Overrides where the cache is.
pub const CACHE_ENV: &str = "WARD_K8S_CACHE";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/ward/kubernetes-1.20.2";

/// A program built from the source tree: its name in `bin/` and the `make WHAT=` target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub make_target: &'static str,
}

pub const KUBE_APISERVER: Program = Program { name: "kube-apiserver", make_target: "cmd/kube-apiserver" };
pub const KUBE_CONTROLLER_MANAGER: Program =
    Program { name: "kube-controller-manager", make_target: "cmd/kube-controller-manager" };
pub const KUBE_SCHEDULER: Program = Program { name: "kube-scheduler", make_target: "cmd/kube-scheduler" };
pub const KUBELET: Program = Program { name: "kubelet", make_target: "cmd/kubelet" };
pub const KUBE_PROXY: Program = Program { name: "kube-proxy", make_target: "cmd/kube-proxy" };
/// The client of the same release, so the lab does not depend on whatever kubectl the machine has.
pub const KUBECTL: Program = Program { name: "kubectl", make_target: "cmd/kubectl" };
pub const AGNHOST: Program = Program { name: "agnhost", make_target: "test/images/agnhost" };
pub const E2E_TEST: Program = Program { name: "e2e.test", make_target: "test/e2e/e2e.test" };

/// Every program, in build order: the first one pays for the cold Go build cache.
pub const PROGRAMS: [Program; 8] =
    [KUBE_APISERVER, KUBE_CONTROLLER_MANAGER, KUBE_SCHEDULER, KUBELET, KUBE_PROXY, KUBECTL, AGNHOST, E2E_TEST];

/// The revision of how the programs are built, part of their stamps. `reflect2-1.0.2`: the
/// source's vendored `github.com/modern-go/reflect2` 1.0.1 predates Go 1.18's map iterator,
/// and under the Go 1.19 here its map iteration faults (kube-apiserver died with SIGSEGV in
/// `reflect2.UnsafeMapType.UnsafeIterate`, from json-iterator, on the first custom resource
/// it decoded); setup builds with Debian's reflect2 1.0.2 in its place.
pub const PROGRAM_RECIPE: &str = "reflect2-1.0.2";

/// An image built from local files: its archive name in `images/` and the reference kubelet
/// and e2e.test ask for (test/utils/image/manifest.go, kubelet's default pause image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    pub name: &'static str,
    pub reference: &'static str,
}

pub const PAUSE_IMAGE: Image = Image { name: "pause", reference: "k8s.gcr.io/pause:3.2" };
/// The source tree's agnhost is 2.25, tagged as the 2.21 that e2e 1.20.2 asks for.
pub const AGNHOST_IMAGE: Image = Image { name: "agnhost", reference: "k8s.gcr.io/e2e-test-images/agnhost:2.21" };
pub const BUSYBOX_IMAGE: Image = Image { name: "busybox", reference: "docker.io/library/busybox:1.29" };
pub const IMAGES: [Image; 3] = [PAUSE_IMAGE, AGNHOST_IMAGE, BUSYBOX_IMAGE];

#[derive(Debug, thiserror::Error)]
#[error(
    "the Kubernetes cache at {root} is incomplete (missing: {}); run `cargo xtask setup` as root to build it (or point {CACHE_ENV} at a complete one)",
    missing.join(", ")
)]
pub struct IncompleteCache {
    pub root: PathBuf,
    pub missing: Vec<String>,
}

/// The cache's paths. [`KubeCache::locate`] checks that everything is there.
#[derive(Clone, Debug)]
pub struct KubeCache {
    root: PathBuf,
}

impl KubeCache {
    /// The cache at `$WARD_K8S_CACHE` or [`DEFAULT_CACHE_DIR`], complete or not.
    pub fn from_env() -> Self {
        KubeCache { root: std::env::var_os(CACHE_ENV).map_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR), PathBuf::from) }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        KubeCache { root: root.into() }
    }

    /// The cache from the environment, provided every program and image is there.
    pub fn locate() -> Result<Self, IncompleteCache> {
        let cache = Self::from_env();
        let missing = cache.missing();
        if missing.is_empty() { Ok(cache) } else { Err(IncompleteCache { root: cache.root, missing }) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `apt-get source` unpacks.
    pub fn src_dir(&self) -> PathBuf {
        self.root.join("src")
    }

    /// HOME for the Go build (its build cache lives below it).
    pub fn go_home(&self) -> PathBuf {
        self.root.join("gohome")
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn stamps_dir(&self) -> PathBuf {
        self.root.join("stamps")
    }

    pub fn program(&self, program: Program) -> PathBuf {
        self.bin_dir().join(program.name)
    }

    pub fn image_archive(&self, image: Image) -> PathBuf {
        self.images_dir().join(format!("{}.tar", image.name))
    }

    /// The stamp of an artefact (`program-kubelet-reflect2-1.0.2`, `image-pause`, `source`).
    pub fn stamp(&self, artefact: &str) -> PathBuf {
        self.stamps_dir().join(artefact)
    }

    /// Named with [`PROGRAM_RECIPE`], so a program built by an older recipe counts as missing.
    pub fn program_stamp(program: Program) -> String {
        format!("program-{}-{PROGRAM_RECIPE}", program.name)
    }

    pub fn image_stamp(image: Image) -> String {
        format!("image-{}", image.name)
    }

    /// True when the artefact's stamp and its file both exist.
    pub fn program_done(&self, program: Program) -> bool {
        self.stamp(&Self::program_stamp(program)).is_file() && self.program(program).is_file()
    }

    pub fn image_done(&self, image: Image) -> bool {
        self.stamp(&Self::image_stamp(image)).is_file() && self.image_archive(image).is_file()
    }

    /// What is not there yet, by name.
    pub fn missing(&self) -> Vec<String> {
        let programs = PROGRAMS.iter().filter(|p| !self.program_done(**p)).map(|p| p.name.to_owned());
        let images = IMAGES.iter().filter(|i| !self.image_done(**i)).map(|i| format!("image {}", i.name));
        programs.chain(images).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_cache_lists_every_program_and_image_as_missing() {
        let dir = std::env::temp_dir().join(crate::netns::unique_name("cache"));
        let cache = KubeCache::at(&dir);
        assert_eq!(cache.missing().len(), PROGRAMS.len() + IMAGES.len());
        let err = IncompleteCache { root: dir.clone(), missing: cache.missing() };
        assert!(err.to_string().contains("kube-apiserver, "), "{err}");
    }

    #[test]
    fn a_program_counts_only_with_its_stamp() {
        let dir = std::env::temp_dir().join(crate::netns::unique_name("cache"));
        let cache = KubeCache::at(&dir);
        std::fs::create_dir_all(cache.bin_dir()).unwrap();
        std::fs::create_dir_all(cache.stamps_dir()).unwrap();
        std::fs::write(cache.program(KUBELET), b"x").unwrap();
        assert!(!cache.program_done(KUBELET), "a binary without its stamp may be a half-copied one");
        std::fs::write(cache.stamp(&KubeCache::program_stamp(KUBELET)), b"").unwrap();
        assert!(cache.program_done(KUBELET));
        assert!(!cache.missing().contains(&"kubelet".to_owned()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
