//! A small parser of the Prometheus text exposition format and of `OpenMetrics` text (what
//! prometheus-client writes): `# TYPE`/`# HELP`/`# UNIT` lines, samples
//! `name{label="value",...} value [timestamp]` with optional exemplars, `# EOF`.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as written (with `_total`, `_bucket`, `_count`... suffixes).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// The samples, in order.
    pub samples: Vec<Sample>,
    /// `# TYPE` of each metric family.
    pub types: BTreeMap<String, String>,
    /// Whether the text ended with `# EOF` (`OpenMetrics`).
    pub eof: bool,
}

impl Metrics {
    /// The samples called `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample `name` whose labels include all of `labels`; `None` when there
    /// is none. Panics if several match (the caller must say which it means).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.all(name).filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        let first = found.next()?;
        assert!(
            found.next().is_none(),
            "several samples {name} with labels {labels:?}"
        );
        Some(first.value)
    }

    /// The sum of every sample called `name` (0 if none).
    pub fn sum(&self, name: &str) -> f64 {
        self.all(name).map(|s| s.value).sum()
    }
}

/// Parses `text`; `Err` names the line that is not valid.
pub fn parse(text: &str) -> Result<Metrics, String> {
    let mut metrics = Metrics::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if metrics.eof {
            return Err(format!("line {}: text after # EOF: {line:?}", n + 1));
        }
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            if comment == "EOF" {
                metrics.eof = true;
            } else if let Some(rest) = comment.strip_prefix("TYPE ") {
                let (family, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| format!("line {}: bad TYPE {line:?}", n + 1))?;
                metrics
                    .types
                    .insert(family.to_owned(), kind.trim().to_owned());
            }
            continue;
        }
        let sample = sample(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?;
        metrics.samples.push(sample);
    }
    Ok(metrics)
}

fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(after)?;
        labels = parsed;
        rest = after;
    }
    // value [timestamp] [# exemplar]
    let rest = rest.split(" # ").next().unwrap_or_default();
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = value
        .parse::<f64>()
        .map_err(|_| format!("bad value {value:?}"))?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `name="value",...}` and returns the labels and the text after the `}`.
fn label_set(mut rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = rest.split_once("=\"").ok_or("bad label")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".to_owned()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".to_owned()),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        rest = &after[end + 1..];
    }
}
