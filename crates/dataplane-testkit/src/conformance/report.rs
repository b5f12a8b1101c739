//! What a conformance run found, row by row.

use std::collections::BTreeMap;
use std::fmt;

/// The result of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Table and traffic agree.
    Passed {
        /// Probes sent.
        probes: usize,
        /// Backends that answered, by name, with their answer count.
        answered: BTreeMap<String, usize>,
    },
    /// Something disagreed.
    Failed {
        /// Disagreements between the row and the reference model (or an unusable row).
        table: Vec<String>,
        /// Disagreements between the row and real traffic through the backend.
        traffic: Vec<String>,
    },
    /// Not run against the backend (the table check still ran and agreed).
    Skipped {
        /// Why.
        reason: String,
    },
}

/// One row's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowReport {
    /// Row name.
    pub name: String,
    /// Its result.
    pub outcome: RowOutcome,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Backend name from its capabilities.
    pub backend: String,
    /// One entry per row, in table order (plus a `reset node-i` row if a reset failed).
    pub rows: Vec<RowReport>,
}

impl Report {
    /// Rows that passed.
    pub fn passed(&self) -> impl Iterator<Item = &RowReport> {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, RowOutcome::Passed { .. }))
    }

    /// Rows that failed.
    pub fn failed(&self) -> impl Iterator<Item = &RowReport> {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, RowOutcome::Failed { .. }))
    }

    /// Rows that were skipped.
    pub fn skipped(&self) -> impl Iterator<Item = &RowReport> {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, RowOutcome::Skipped { .. }))
    }

    /// The row called `name`.
    pub fn row(&self, name: &str) -> Option<&RowReport> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// `conformance [BACKEND]: N passed, N failed, N skipped`.
    pub(super) fn summary(&self) -> String {
        format!(
            "conformance [{}]: {} passed, {} failed, {} skipped",
            self.backend,
            self.passed().count(),
            self.failed().count(),
            self.skipped().count()
        )
    }

    /// Adds the row `name` with `outcome`, printed to stderr as it comes when `verbose`.
    pub(super) fn push_row(&mut self, name: &str, outcome: RowOutcome, verbose: bool) {
        let row = RowReport {
            name: name.to_owned(),
            outcome,
        };
        if verbose {
            eprint!("{}", OneRow(&self.backend, &row));
        }
        self.rows.push(row);
    }

    /// Panics with a table of the failures if any row failed.
    pub fn assert_ok(&self) {
        let failed = self.failed().count();
        assert!(
            failed == 0,
            "conformance: {failed} row(s) failed for backend {}\n{self}",
            self.backend
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for row in &self.rows {
            write_row(f, row, width)?;
        }
        Ok(())
    }
}

fn write_row(f: &mut fmt::Formatter<'_>, row: &RowReport, width: usize) -> fmt::Result {
    let name = &row.name;
    match &row.outcome {
        RowOutcome::Passed { probes, answered } => {
            let who: Vec<String> = answered.iter().map(|(b, n)| format!("{b}x{n}")).collect();
            writeln!(
                f,
                "  PASS  {name:width$}  {probes} probe(s) {}",
                who.join(" ")
            )
        }
        RowOutcome::Skipped { reason } => writeln!(f, "  SKIP  {name:width$}  {reason}"),
        RowOutcome::Failed { table, traffic } => {
            writeln!(f, "  FAIL  {name:width$}")?;
            for t in table {
                writeln!(f, "          table:   {t}")?;
            }
            for t in traffic {
                writeln!(f, "          traffic: {t}")?;
            }
            Ok(())
        }
    }
}

pub(super) struct OneRow<'a>(pub(super) &'a str, pub(super) &'a RowReport);

impl fmt::Display for OneRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conformance [{}]", self.0)?;
        write_row(f, self.1, 0)
    }
}
