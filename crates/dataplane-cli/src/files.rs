//! `validate` and `diff`: reading desired-state files.

use std::path::Path;

use dataplane::implement::diff as diff_states;
use dataplane::{from_json, from_yaml, validate as check, ChangeSet, DesiredState};

/// Why a command failed: bad input (exit 2) or anything else (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// The file is unreadable, unparsable or invalid; one line that names the file and field.
    BadInput(String),
    /// Any other failure.
    Other(anyhow::Error),
}

/// Reads and validates a desired-state file (JSON if it ends in `.json` or starts with `{`).
pub fn load(path: &Path) -> Result<DesiredState, Failure> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::BadInput(format!("{shown}: cannot read: {e}")))?;
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    let parsed = if is_json {
        from_json(&text)
    } else {
        from_yaml(&text)
    };
    let state =
        parsed.map_err(|e| Failure::BadInput(format!("{shown}: {}", one_line(&e.to_string()))))?;
    check(&state).map_err(|e| Failure::BadInput(format!("{shown}: {e}")))?;
    Ok(state)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `dpctl validate -f FILE`.
pub fn validate(path: &Path) -> Result<(), Failure> {
    let state = load(path)?;
    let backends: usize = state.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: valid ({} services, {} backends, {} endpoints, {} policies)",
        path.display(),
        state.services.len(),
        backends,
        state.endpoints.len(),
        state.policies.len()
    );
    // Accepted, but worth a look (e.g. a ClusterIP outside serviceCIDRs): one line each.
    for warning in dataplane::warnings(&state) {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// `dpctl diff -f OLD -f NEW`.
pub fn diff(paths: &[std::path::PathBuf], json: bool) -> Result<(), Failure> {
    let [old, new] = paths else {
        return Err(Failure::BadInput(format!(
            "diff needs exactly two files (-f OLD -f NEW), got {}",
            paths.len()
        )));
    };
    let changes = diff_states(&load(old)?, &load(new)?);
    if json {
        let text = serde_json::to_string_pretty(&changes).map_err(|e| Failure::Other(e.into()))?;
        println!("{text}");
    } else {
        print!("{}", render(&changes));
    }
    Ok(())
}

/// Human-readable change list, one object a line.
pub fn render(changes: &ChangeSet) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if changes.is_empty() {
        out.push_str("no changes\n");
        return out;
    }
    if changes.node.is_some() {
        out.push_str("~ node\n");
    }
    let mut line = |kind: &str, name: &dyn std::fmt::Display, prev: bool, cur: bool| {
        let mark = match (prev, cur) {
            (false, true) => '+',
            (true, false) => '-',
            _ => '~',
        };
        let _ = writeln!(out, "{mark} {kind} {name}");
    };
    for (name, c) in &changes.services {
        line("service", name, c.previous.is_some(), c.current.is_some());
    }
    for (name, c) in &changes.endpoints {
        line("endpoint", name, c.previous.is_some(), c.current.is_some());
    }
    for (name, c) in &changes.policies {
        line("policy", name, c.previous.is_some(), c.current.is_some());
    }
    for (name, c) in &changes.namespaces {
        line("namespace", name, c.previous.is_some(), c.current.is_some());
    }
    for (name, c) in &changes.pods {
        line("pod", name, c.previous.is_some(), c.current.is_some());
    }
    out
}
