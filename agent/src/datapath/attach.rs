//! Program loading and TCX attachment with pinned links.
//!
//! Each pod veth gets two links, pinned as `links/<ifindex>-from` (TCX ingress: `from_pod`)
//! and `links/<ifindex>-to` (TCX egress: `to_pod`). A pinned link keeps its program attached
//! while no agent runs. A new agent replaces the program inside the existing link atomically
//! (no instant without a program), then pins it again.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};

use super::DatapathError;

const PROGRAMS: [(&str, TcAttachType, &str); 2] =
    [("from_pod", TcAttachType::Ingress, "from"), ("to_pod", TcAttachType::Egress, "to")];

pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    for (name, _, _) in PROGRAMS {
        classifier(ebpf, name)?
            .load()
            .map_err(|source| DatapathError::Program { program: name, source: Box::new(source) })?;
    }
    Ok(())
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
        program: name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    prog.try_into().map_err(|source| DatapathError::Program { program: name, source: Box::new(source) })
}

pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
    let fail = |message: String| DatapathError::Attach { ifname: ifname.to_owned(), ifindex, message };
    for (name, attach_type, suffix) in PROGRAMS {
        let pin = pin_dir.join("links").join(format!("{ifindex}-{suffix}"));
        let prog = classifier(ebpf, name)?;
        let adopted = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let fd = old.unpin().map_err(|e| fail(format!("unpinning {}: {e}", pin.display())))?;
                match SchedClassifierLink::try_from(fd) {
                    Ok(link) => prog.attach_to_link(link).ok(),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        let id = match adopted {
            Some(id) => id,
            None => prog
                .attach_with_options(ifname, attach_type, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(|e| fail(format!("{name}: {e}")))?,
        };
        let link = prog.take_link(id).map_err(|e| fail(format!("{name}: {e}")))?;
        let fd: FdLink = link.try_into().map_err(|e| fail(format!("{name} is not an fd link: {e}")))?;
        fd.pin(&pin).map_err(|e| fail(format!("pinning {}: {e}", pin.display())))?;
    }
    Ok(())
}

/// Replaces the program inside every pinned link of `pin_dir` with this object's (the link
/// stays attached; the swap is atomic). Links of endpoints that `attach` already adopted get
/// the same program again.
pub fn replace_all(ebpf: &mut Ebpf, pin_dir: &Path) -> usize {
    let mut replaced = 0;
    let Ok(entries) = std::fs::read_dir(pin_dir.join("links")) else {
        return 0;
    };
    for entry in entries.filter_map(Result::ok) {
        let pin = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((program, _, _)) = PROGRAMS.iter().find(|(_, _, suffix)| name.ends_with(&format!("-{suffix}"))) else {
            continue;
        };
        let Ok(prog) = classifier(ebpf, program) else { continue };
        let adopted = PinnedLink::from_pin(&pin)
            .ok()
            .and_then(|old| old.unpin().ok())
            .and_then(|fd| SchedClassifierLink::try_from(fd).ok())
            .and_then(|link| prog.attach_to_link(link).ok());
        match adopted.and_then(|id| prog.take_link(id).ok()).and_then(|l| FdLink::try_from(l).ok()) {
            Some(fd) => match fd.pin(&pin) {
                Ok(_) => replaced += 1,
                Err(e) => tracing::error!(pin = %pin.display(), error = %e, "re-pinning a link"),
            },
            None => tracing::error!(pin = %pin.display(), "could not replace the program of a pinned link"),
        }
    }
    replaced
}

pub fn detach(pin_dir: &Path, ifindex: u32) {
    for (_, _, suffix) in PROGRAMS {
        let pin = pin_dir.join("links").join(format!("{ifindex}-{suffix}"));
        if let Ok(link) = PinnedLink::from_pin(&pin) {
            // Dropping the last reference detaches the program.
            match link.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => tracing::warn!(ifindex, pin = %pin.display(), error = %e, "unpinning link"),
            }
        } else {
            let _ = std::fs::remove_file(&pin);
        }
    }
}

pub fn pinned_ifindexes(pin_dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.split('-').next()).and_then(|i| i.parse().ok()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
