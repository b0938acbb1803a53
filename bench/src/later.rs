//! Places in the suite for parts whose features have not landed yet (the flow pipeline, the
//! DNS proxy and HTTP rules have their own parts: `events`, `dns`, `http`). Each is listed in the report with what it will measure, and its
//! target is stated as not measured, so the report never implies a figure that does not exist.

use crate::report::{Section, Table, Target};
use crate::{Ctx, PartResult};

/// A part still to come: its name, what it will measure, and its target (if the issue set one).
struct Planned {
    name: &'static str,
    waits_for: &'static str,
    measures: &'static str,
    target: Option<(&'static str, &'static str)>,
}

/// Nothing is waiting at the moment: the flow pipeline, the DNS proxy and HTTP rules have
/// their own parts (`events`, `dns`, `http`).
const PLANNED: [Planned; 0] = [];

pub fn run(_ctx: &Ctx) -> anyhow::Result<PartResult> {
    let mut table = Table::new("Parts still to come", &["part", "measures", "waits for"]);
    let mut targets = Vec::new();
    for p in &PLANNED {
        table.row(vec![p.name.into(), p.measures.into(), p.waits_for.into()]);
        if let Some((name, goal)) = p.target {
            targets.push(Target {
                name: name.into(),
                goal: goal.into(),
                measured: "–".into(),
                met: None,
                comment: format!("not built yet: waits for {}", p.waits_for),
            });
        }
    }
    let section = Section {
        title: "Later parts".into(),
        intro: "The harness has a place for these; each is measured once the feature it measures lands.".into(),
        tables: vec![table],
        ..Section::default()
    };
    Ok(PartResult { section, targets })
}

#[cfg(test)]
mod tests {
    #[test]
    fn later_parts_are_listed_and_their_targets_unmeasured() {
        let ctx = crate::Ctx {
            quick: true,
            bins: ward_lab::bins::Binaries {
                dir: "/x".into(),
                agent: "/x/a".into(),
                cni: "/x/c".into(),
                cli: "/x/w".into(),
            },
            self_exe: "/x/ward-bench".into(),
            command_line: "test".into(),
        };
        let r = super::run(&ctx).unwrap();
        assert_eq!(r.section.tables[0].rows.len(), super::PLANNED.len());
        assert_eq!(r.targets.len(), super::PLANNED.iter().filter(|p| p.target.is_some()).count());
        assert!(r.targets.iter().all(|t| t.met.is_none()), "a feature not built is never 'met'");
    }
}
