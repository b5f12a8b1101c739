//! Putting one family's rules back when a later family's restore fails (issue 21: a
//! rejected apply leaves the kernel exactly as it was).
//!
//! The backend writes IPv4 with `iptables-restore` and then IPv6 with `ip6tables-restore`:
//! two tools, two commits, no transaction across them. When the second fails after the first
//! committed, the first family is rolled back:
//!
//! - a sync over every service keeps a [`Snapshot`] of the first family, taken from the same
//!   `iptables-save` it reads to plan (no second read): our chains and their rules as the
//!   kernel lists them, and where our jumps stood in the hooked built-in chains. The rollback
//!   declares (flushes) every chain of the snapshot and the ones the sync created, puts the
//!   saved rules back, deletes the created chains and, when the sync moved or added hooks,
//!   puts the built-in jumps back at their old positions; one commit per table. The snapshot
//!   is spooled to an unnamed temporary file (it is as big as the family's rules, tens of
//!   MiB at 10k services, and is read only when a rollback is needed);
//! - the changed-services partial sync applies the reverse of its patch
//!   ([`super::digest::ServicesPatch`] of each changed service after → before), which needs
//!   no read: that path trusts the last sync's record of the kernel, as it does going
//!   forward.
//!
//! kube-proxy does not do this (its two proxiers, one per family, each sync on their own and a
//! failure is retried by the next sync); Calico's iptables dataplane applies each family with
//! its own `iptables-restore` too and retries a failed table. Here a failed apply is an error
//! to the caller, who is told the kernel is as it was.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

use super::digest::{name_hash, NameHash};
use super::render::{hooks, reset_jumps, Existing, Table};

/// Somewhere to spool text and read it back: an unnamed temporary file, or memory when no
/// temporary file can be created.
trait Spool: Read + Write + Seek + Send {}
impl<T: Read + Write + Seek + Send> Spool for T {}

/// A family's rules of ours as the kernel listed them before a sync (see the module docs).
pub(crate) struct Snapshot {
    ours: String,
    /// Lines of our chains: `n`, `f`, `r` or `m` (the table), then the declaration or `-A` rule.
    spool: Mutex<std::io::BufWriter<Box<dyn Spool>>>,
    /// The first write error (the snapshot is then unusable).
    error: Option<std::io::Error>,
    /// The table being read (`None`: not one of ours).
    table: Option<Table>,
    /// Rules seen so far in each hooked built-in chain of the table being read.
    positions: BTreeMap<String, usize>,
    /// Our jumps in the hooked built-in chains: (table, chain, position from 1, rule without
    /// the chain), in the order listed.
    jumps: Vec<(Table, String, usize, String)>,
    /// Name hashes of our chains per table ([`Table::EVERY`]), sorted once finished.
    chains: [Vec<NameHash>; 4],
    /// The hooked built-in chains per table.
    hooked: Vec<(Table, &'static str)>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("ours", &self.ours)
            .field("jumps", &self.jumps)
            .field("chains", &self.chains.each_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// An empty snapshot of the chains of `prefix`.
    pub(crate) fn new(prefix: &str) -> Snapshot {
        let spool: Box<dyn Spool> = match tempfile::tempfile() {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::warn!(error = %e, "no temporary file for the rollback snapshot; kept in memory");
                Box::new(std::io::Cursor::new(Vec::new()))
            }
        };
        let mut hooked: Vec<(Table, &'static str)> =
            hooks(prefix).into_iter().map(|(t, c, _)| (t, c)).collect();
        hooked.dedup();
        Snapshot {
            ours: format!("{prefix}-"),
            spool: Mutex::new(std::io::BufWriter::with_capacity(64 * 1024, spool)),
            error: None,
            table: None,
            positions: BTreeMap::new(),
            jumps: Vec::new(),
            chains: Default::default(),
            hooked,
        }
    }

    /// Reads one line of `iptables-save` (without counters, without its newline).
    pub(crate) fn line(&mut self, line: &str) {
        if let Some(t) = line.strip_prefix('*') {
            self.table = Table::from_name(t.trim());
            self.positions.clear();
            return;
        }
        let Some(table) = self.table else {
            return;
        };
        let tag = match table {
            Table::Nat => 'n',
            Table::Filter => 'f',
            Table::Raw => 'r',
            Table::Mangle => 'm',
        };
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if name.starts_with(&self.ours) {
                self.chains[table.index()].push(name_hash(name));
                self.spool_line(format_args!("{tag}:{name} - [0:0]"));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let rule = rule.trim_end();
            let chain = rule.split_whitespace().next().unwrap_or("");
            if chain.starts_with(&self.ours) {
                self.spool_line(format_args!("{tag}-A {rule}"));
            } else if self.hooked.iter().any(|(t, c)| *t == table && *c == chain) {
                let position = self.positions.entry(chain.to_owned()).or_insert(0);
                *position += 1;
                let body = rule[chain.len()..].trim();
                if super::render::jumps_to(body, &self.ours) {
                    self.jumps
                        .push((table, chain.to_owned(), *position, body.to_owned()));
                }
            }
        }
    }

    fn spool_line(&mut self, line: std::fmt::Arguments<'_>) {
        if self.error.is_some() {
            return;
        }
        let spool = self.spool.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(spool, "{line}") {
            self.error = Some(e);
        }
    }

    /// Ends the reading: flushes the spool. An error: the snapshot cannot be written back.
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        for c in &mut self.chains {
            c.sort_unstable();
            c.dedup();
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.spool
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
    }

    /// The snapshot holds our chain `name` of `table`.
    pub(crate) fn has(&self, table: Table, name: &str) -> bool {
        self.chains[table.index()]
            .binary_search(&name_hash(name))
            .is_ok()
    }

    /// Writes the `iptables-restore --noflush` input that puts the snapshot back over `now`
    /// (the kernel after the sync: its hook jumps, and the chains of ours the snapshot does
    /// not hold, to delete). `moved`: per table ([`Table::EVERY`]), the sync changed the hooked
    /// built-in chains (inserted, moved or deleted our jumps): they are put back as they
    /// were, else left alone.
    pub(crate) fn write_rollback<W: std::fmt::Write + ?Sized>(
        &self,
        prefix: &str,
        now: &Existing,
        moved: [bool; 4],
        out: &mut W,
    ) -> std::fmt::Result {
        let mut spool = self
            .spool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for table in Table::EVERY {
            let tag = match table {
                Table::Nat => b'n',
                Table::Filter => b'f',
                Table::Raw => b'r',
                Table::Mangle => b'm',
            };
            let created = now.chains(table);
            let moved = moved[table.index()];
            if self.chains[table.index()].is_empty() && created.is_empty() && !moved {
                continue;
            }
            writeln!(out, "*{table}")?;
            // The saved chains declared (created or flushed), then the created ones flushed.
            spooled(&mut spool, tag, b':', out)?;
            for c in created {
                writeln!(out, ":{c} - [0:0]")?;
            }
            if moved {
                for rule in reset_jumps(prefix, now, table) {
                    writeln!(out, "-D {rule}")?;
                }
            }
            spooled(&mut spool, tag, b'-', out)?;
            if moved {
                // In the order of their old positions: each lands where it was, the rules of
                // others in between being as they were.
                let mut jumps: Vec<&(Table, String, usize, String)> =
                    self.jumps.iter().filter(|j| j.0 == table).collect();
                jumps.sort_by_key(|(_, chain, position, _)| (chain.clone(), *position));
                for (_, chain, position, body) in jumps {
                    writeln!(out, "-I {chain} {position} {body}")?;
                }
            }
            for c in created {
                writeln!(out, "-X {c}")?;
            }
            writeln!(out, "COMMIT")?;
        }
        Ok(())
    }
}

/// Writes the spooled lines of table `tag` that start with `first` (`:` declarations, `-`
/// rules), without the tag.
fn spooled<W: std::fmt::Write + ?Sized>(
    spool: &mut std::io::BufWriter<Box<dyn Spool>>,
    tag: u8,
    first: u8,
    out: &mut W,
) -> std::fmt::Result {
    spool.flush().map_err(|_| std::fmt::Error)?;
    let file = spool.get_mut();
    file.seek(SeekFrom::Start(0)).map_err(|_| std::fmt::Error)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(|_| std::fmt::Error)? == 0 {
            break;
        }
        let bytes = line.as_bytes();
        if bytes.len() > 1 && bytes[0] == tag && bytes[1] == first {
            out.write_str(&line[1..])?;
        }
    }
    drop(reader);
    // Writing resumes at the end (nothing is written after a rollback, but keep it sound).
    spool
        .get_mut()
        .seek(SeekFrom::End(0))
        .map_err(|_| std::fmt::Error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::render::ExistingParser;

    const BEFORE: &str = "\
# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DP-SERVICES - [0:0]
:DP-POSTROUTING - [0:0]
:DP-SVC-A - [0:0]
:OTHER - [0:0]
-A PREROUTING -j OTHER
-A PREROUTING -j DP-SERVICES
-A OUTPUT -j DP-SERVICES
-A POSTROUTING -j DP-POSTROUTING
-A DP-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DP-SVC-A
-A DP-SVC-A -j DNAT --to-destination 10.244.0.2:8080
COMMIT
*filter
:INPUT ACCEPT [0:0]
:DP-FILTER - [0:0]
-A INPUT -j DP-FILTER
-A DP-FILTER -m mark --mark 0x8000/0x8000 -j DROP
COMMIT
";

    /// The rollback of a sync that added a chain and put a displaced hook first: the saved
    /// chains declared and refilled, the new one flushed and deleted, the hooks deleted and
    /// inserted where they were (the nat PREROUTING hook second, after another's jump).
    #[test]
    fn a_rollback_puts_back_chains_and_hook_positions() {
        let mut snap = Snapshot::new("DP");
        for l in BEFORE.lines() {
            snap.line(l);
        }
        snap.finish().unwrap();
        assert!(snap.has(Table::Nat, "DP-SVC-A"));
        assert!(!snap.has(Table::Nat, "DP-SVC-B"));
        let after = "\
*nat
:DP-SERVICES - [0:0]
:DP-POSTROUTING - [0:0]
:DP-SVC-A - [0:0]
:DP-SVC-B - [0:0]
-A PREROUTING -j DP-SERVICES
-A PREROUTING -j OTHER
-A OUTPUT -j DP-SERVICES
-A POSTROUTING -j DP-POSTROUTING
COMMIT
*filter
:DP-FILTER - [0:0]
-A INPUT -j DP-FILTER
COMMIT
";
        let mut parser = ExistingParser::filtered("DP", |t, n| !snap.has(t, n));
        for l in after.lines() {
            parser.line(l);
        }
        let now = parser.finish();
        let mut out = String::new();
        snap.write_rollback("DP", &now, [true, false, false, false], &mut out)
            .unwrap();
        assert_eq!(
            out,
            "\
*nat
:DP-SERVICES - [0:0]
:DP-POSTROUTING - [0:0]
:DP-SVC-A - [0:0]
:DP-SVC-B - [0:0]
-D PREROUTING -j DP-SERVICES
-D OUTPUT -j DP-SERVICES
-D POSTROUTING -j DP-POSTROUTING
-A DP-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DP-SVC-A
-A DP-SVC-A -j DNAT --to-destination 10.244.0.2:8080
-I OUTPUT 1 -j DP-SERVICES
-I POSTROUTING 1 -j DP-POSTROUTING
-I PREROUTING 2 -j DP-SERVICES
-X DP-SVC-B
COMMIT
*filter
:DP-FILTER - [0:0]
-A DP-FILTER -m mark --mark 0x8000/0x8000 -j DROP
COMMIT
"
        );
        // Written twice, the same (the spool is read from its start each time).
        let mut again = String::new();
        snap.write_rollback("DP", &now, [true, false, false, false], &mut again)
            .unwrap();
        assert_eq!(again, out);
    }

    /// From a kernel without anything of ours, the rollback removes what the sync added.
    #[test]
    fn a_rollback_to_nothing_removes_everything() {
        let mut snap = Snapshot::new("DP");
        for l in "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n".lines() {
            snap.line(l);
        }
        snap.finish().unwrap();
        let mut parser = ExistingParser::filtered("DP", |t, n| !snap.has(t, n));
        for l in "*nat\n:DP-SERVICES - [0:0]\n-A PREROUTING -j DP-SERVICES\nCOMMIT\n".lines() {
            parser.line(l);
        }
        let now = parser.finish();
        let mut out = String::new();
        snap.write_rollback("DP", &now, [true, true, false, false], &mut out)
            .unwrap();
        assert_eq!(
            out,
            "*nat\n:DP-SERVICES - [0:0]\n-D PREROUTING -j DP-SERVICES\n-X DP-SERVICES\nCOMMIT\n\
             *filter\nCOMMIT\n"
        );
    }
}
