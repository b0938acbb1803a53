//! Program loading and TCX attachment with pinned links.
//!
//! Each pod veth gets two links, pinned as `links/<ifindex>-from` (TCX ingress: `from_pod`)
//! and `links/<ifindex>-to` (TCX egress: `to_pod`). A pinned link keeps its program attached
//! while no agent runs. A new agent replaces the program inside the existing link atomically
//! (no instant without a program), then pins it again.
//!
//! The node's uplinks get `to_netdev` (TCX egress), pinned as `links/<ifindex>-netdev`: it
//! decides Service traffic whose backend is not on this node (`ward_common::service`).

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

type Program = (&'static str, TcAttachType, &'static str);

/// A pod veth's programs: (program, TCX side, pin suffix).
const PROGRAMS: [Program; 2] = [("from_pod", TcAttachType::Ingress, "from"), ("to_pod", TcAttachType::Egress, "to")];
/// An uplink's program.
const UPLINK: Program = ("to_netdev", TcAttachType::Egress, "netdev");

fn every_program() -> impl Iterator<Item = Program> {
    PROGRAMS.into_iter().chain([UPLINK])
}

pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    for (name, _, _) in every_program() {
        classifier(ebpf, name)?
            .load()
            .map_err(|source| DatapathError::Program { program: name, source: Box::new(source) })?;
    }
    Ok(())
}

/// Loads `program` (a tail-call target, attached to nothing) and puts it into slot 0 of the
/// program array `map`, replacing atomically what a previous agent left there: links still
/// running that agent's programs jump into this one from then on.
pub fn fill_tail_call_slot(ebpf: &mut Ebpf, program: &'static str, map: &'static str) -> Result<(), DatapathError> {
    let prog = classifier(ebpf, program)?;
    prog.load().map_err(|source| DatapathError::Program { program, source: Box::new(source) })?;
    let fd =
        prog.fd().map_err(|source| DatapathError::Program { program, source: Box::new(source) })?.try_clone().map_err(
            |e| DatapathError::Program { program, source: Box::new(aya::programs::ProgramError::IOError(e)) },
        )?;
    let mut slots: aya::maps::ProgramArray<aya::maps::MapData> = super::maps::take(ebpf, map)?;
    slots.set(0, &fd, 0).map_err(super::maps::map_err(map))
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
        program: name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    prog.try_into().map_err(|source| DatapathError::Program { program: name, source: Box::new(source) })
}

/// Attaches both pod programs to a pod veth's host side.
pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
    for program in PROGRAMS {
        attach_one(ebpf, pin_dir, ifname, ifindex, program)?;
    }
    Ok(())
}

/// Attaches `to_netdev` to an uplink.
pub fn attach_uplink(ebpf: &mut Ebpf, pin_dir: &Path, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
    attach_one(ebpf, pin_dir, ifname, ifindex, UPLINK)
}

fn attach_one(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    ifname: &str,
    ifindex: u32,
    (name, attach_type, suffix): Program,
) -> Result<(), DatapathError> {
    let fail = |message: String| DatapathError::Attach { ifname: ifname.to_owned(), ifindex, message };
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
        let Some((program, _, _)) = every_program().find(|(_, _, suffix)| name.ends_with(&format!("-{suffix}"))) else {
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

/// Ifindexes of pod veths with pinned links.
pub fn pinned_ifindexes(pin_dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let (ifindex, suffix) = name.split_once('-')?;
            // Pod links only: an uplink's is not an endpoint's.
            PROGRAMS.iter().any(|(_, _, s)| *s == suffix).then(|| ifindex.parse().ok()).flatten()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
