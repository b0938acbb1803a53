//! `ward policy suggest`: NetworkPolicy YAML allowing exactly the observed flows of one
//! namespace (`crate::flows::suggest`), from the agent's history or an exported file. The
//! flows are read as `ward observe` reads them (`observe::fetch`), with its filters.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::observe;
use crate::flows::filter::{Cond, FilterError};
use crate::flows::history::Query;
use crate::flows::suggest::{Options, suggest, to_yaml};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuggestArgs {
    pub namespace: String,
    pub input_file: Option<PathBuf>,
    /// Only the `last` most recent matching flows; all of the history when `None`.
    pub last: Option<usize>,
    pub include_dropped: bool,
    /// Where to write the YAML; stdout when `None`.
    pub output: Option<PathBuf>,
}

impl SuggestArgs {
    /// The flows that can count: those with an end in the namespace, FORWARDED (and DROPPED
    /// with `--include-dropped`), filtered where they are read (the agent or the file).
    pub fn query(&self) -> Result<Query, FilterError> {
        let mut q = Query { last: self.last, ..Query::default() };
        q.filter.push(Cond::from_flag("namespace", &self.namespace)?, false);
        q.filter.push(Cond::from_flag("verdict", "FORWARDED")?, false);
        if self.include_dropped {
            q.filter.push(Cond::from_flag("verdict", "DROPPED")?, false);
        }
        Ok(q)
    }
}

/// Runs `ward policy suggest` against the agent at `socket` (or the input file).
pub fn run(socket: &Path, args: &SuggestArgs) -> ExitCode {
    let q = match args.query() {
        Ok(q) => q,
        Err(e) => {
            eprintln!("ward policy suggest: {e}");
            return ExitCode::from(2);
        }
    };
    let flows = match observe::fetch(socket, &q, args.input_file.as_deref(), "policy suggest") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let s = suggest(&flows, &args.namespace, Options { include_dropped: args.include_dropped });
    for n in &s.notes {
        eprintln!("ward policy suggest: note: {n}");
    }
    if s.policies.is_empty() {
        eprintln!("ward policy suggest: no flows of namespace {} were observed; nothing to suggest", args.namespace);
    }
    let yaml = match to_yaml(&s) {
        Ok(y) => y,
        Err(e) => {
            eprintln!("ward policy suggest: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &yaml) {
                eprintln!("ward policy suggest: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        None => print!("{yaml}"),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::filter::tests::flow;
    use crate::flows::record::{FlowVerdict, TrafficDirection};

    #[test]
    fn the_query_keeps_the_namespace_and_the_counted_verdicts() {
        let mut a = SuggestArgs {
            namespace: "shop".into(),
            input_file: None,
            last: Some(7),
            include_dropped: false,
            output: None,
        };
        let ok = flow("shop/a", "other/b", 80, FlowVerdict::Forwarded, TrafficDirection::Egress);
        let dropped = flow("other/b", "shop/a", 80, FlowVerdict::Dropped, TrafficDirection::Ingress);
        let elsewhere = flow("other/b", "other/c", 80, FlowVerdict::Forwarded, TrafficDirection::Ingress);
        let q = a.query().expect("query");
        assert_eq!(q.last, Some(7));
        assert!(q.wants(&ok) && !q.wants(&dropped) && !q.wants(&elsewhere));
        a.include_dropped = true;
        let q = a.query().expect("query");
        assert!(q.wants(&ok) && q.wants(&dropped) && !q.wants(&elsewhere));
        a.namespace = String::new();
        assert!(a.query().is_err(), "an empty namespace is refused");
    }
}
