//! The migration report: for every connector, rule and flow, what became of
//! it — imported as it is, translated (with what to know), mapped to one of
//! idbridge's built-ins, or not carried over (with the reason). Nothing is
//! dropped without a line here.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried over as it is.
    Imported,
    /// Carried over, with notes on what differs or what to check.
    Translated(Vec<String>),
    /// idbridge does this itself (what does it).
    BuiltIn(String),
    /// Not carried over, and why.
    NotSupported(String),
}

impl Outcome {
    pub fn carried(&self) -> bool {
        !matches!(self, Outcome::NotSupported(_))
    }

    fn word(&self) -> &'static str {
        match self {
            Outcome::Imported => "imported",
            Outcome::Translated(_) => "translated",
            Outcome::BuiltIn(_) => "built-in",
            Outcome::NotSupported(_) => "NOT SUPPORTED",
        }
    }

    fn detail(&self) -> Vec<String> {
        match self {
            Outcome::Imported => Vec::new(),
            Outcome::Translated(notes) => notes.clone(),
            Outcome::BuiltIn(what) | Outcome::NotSupported(what) => vec![what.clone()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    /// The Connect attribute the flow sets.
    pub dest: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleReport {
    pub name: String,
    pub file: String,
    /// The idbridge rule it became, if one was written.
    pub written_as: Option<String>,
    pub outcome: Outcome,
    pub flows: Vec<FlowReport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorReport {
    pub name: String,
    pub file: String,
    /// `[[source]] "corp"` or `[tenant]`.
    pub written_as: Option<String>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub export: String,
    pub connectors: Vec<ConnectorReport>,
    pub rules: Vec<RuleReport>,
}

/// How many rules ended how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub imported: usize,
    pub translated: usize,
    pub built_in: usize,
    pub not_supported: usize,
    /// Flows of imported or translated rules that were not carried over.
    pub flows_not_supported: usize,
}

impl Report {
    /// Whether everything was carried over: every connector, rule and flow.
    pub fn complete(&self) -> bool {
        self.connectors.iter().all(|c| c.outcome.carried())
            && self.rules.iter().all(|r| r.outcome.carried() && r.flows.iter().all(|f| f.outcome.carried()))
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for r in &self.rules {
            match r.outcome {
                Outcome::Imported => c.imported += 1,
                Outcome::Translated(_) => c.translated += 1,
                Outcome::BuiltIn(_) => c.built_in += 1,
                Outcome::NotSupported(_) => c.not_supported += 1,
            }
            c.flows_not_supported += r.flows.iter().filter(|f| !f.outcome.carried()).count();
        }
        c
    }

    /// The report as text for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Entra Connect export: {} ({} connectors, {} synchronisation rules)",
            self.export,
            self.connectors.len(),
            self.rules.len()
        );
        let _ = writeln!(out, "\nConnectors");
        for c in &self.connectors {
            let target = c.written_as.as_deref().map(|w| format!(" → {w}")).unwrap_or_default();
            let _ = writeln!(out, "  {:<13} {} ({}){target}", c.outcome.word(), c.name, c.file);
            for d in c.outcome.detail() {
                let _ = writeln!(out, "                {d}");
            }
        }
        let _ = writeln!(out, "\nSynchronisation rules");
        for r in &self.rules {
            let target = r.written_as.as_deref().map(|w| format!(" → rule {w:?}")).unwrap_or_default();
            let _ = writeln!(out, "  {:<13} {} ({}){target}", r.outcome.word(), r.name, r.file);
            for d in r.outcome.detail() {
                let _ = writeln!(out, "                {d}");
            }
            for f in &r.flows {
                if matches!(f.outcome, Outcome::Imported) {
                    continue;
                }
                let _ = writeln!(out, "                flow {}: {}", f.dest, f.outcome.word());
                for d in f.outcome.detail() {
                    let _ = writeln!(out, "                  {d}");
                }
            }
        }
        let c = self.counts();
        let _ = writeln!(
            out,
            "\n{} rules: {} imported, {} translated, {} built in, {} not supported; {} flows of carried rules not supported.",
            self.rules.len(),
            c.imported,
            c.translated,
            c.built_in,
            c.not_supported,
            c.flows_not_supported
        );
        let _ = writeln!(
            out,
            "{}",
            if self.complete() {
                "Everything was carried over."
            } else {
                "Not everything was carried over: the lines marked NOT SUPPORTED say what and why."
            }
        );
        out
    }
}
