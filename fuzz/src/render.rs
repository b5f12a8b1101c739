//! The renderer targets' checks, and the export of what they rendered for the corpus replay
//! (`scripts/fuzz ci` feeds the exported files to `nft -c -f` and
//! `iptables-restore --test`: a process per input is too slow inside the fuzzing loop).

use std::collections::BTreeSet;
use std::path::PathBuf;

use dataplane_core::{validate, BackendSelection, DesiredState, Error, IpFamily};
use dataplane_iptables::iptables::ipset::{converge, write_ops, KernelSets};
use dataplane_iptables::iptables::policy::ipsets;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};

/// One renderer target's execution: a state from `data` (one in eight broken on purpose, so
/// that refusals are exercised too), [`bounded`], through `check` ([`nft`] or [`iptables`]).
pub fn fuzz_one(data: &[u8], check: fn(&DesiredState)) {
    let mut u = arbitrary::Unstructured::new(data);
    let state = match u.ratio(1, 8) {
        Ok(true) => crate::gen::wild_state(&mut u),
        _ => crate::gen::state(&mut u),
    };
    if let Ok(mut state) = state {
        bounded(&mut state);
        check(&state);
    }
}

/// Largest backend weight of the services after the first in [`bounded`].
pub const CHEAP_WEIGHT: u16 = 100;

/// The renderers' cost is in the backend slots: a Maglev service port gets a 4093-slot table
/// per slot group, and weights far apart (1 and 65535) are scaled up to the 4096-slot limit,
/// each slot a map element rendered, sorted and checked (measured: such states rendered at
/// 15-50 per second, most of the time in the slot elements). So only the first service (in
/// the state's order, which the bytes pick) keeps them as generated; the others select at
/// random with weights up to [`CHEAP_WEIGHT`] (a zero weight, invalid, stays). Every
/// service kind, policy and setting is still generated for every service; the expensive
/// slot lists are exercised once per state, with every combination of the other settings.
pub fn bounded(state: &mut DesiredState) {
    for s in state.services.iter_mut().skip(1) {
        s.backend_selection = BackendSelection::Random;
        for b in &mut s.backends {
            b.weight = b.weight.min(CHEAP_WEIGHT);
        }
    }
}

/// The directory the targets write their renderings to when set (by the corpus replay).
pub const EXPORT_ENV: &str = "DP_FUZZ_EXPORT";

fn export_dir() -> Option<PathBuf> {
    std::env::var_os(EXPORT_ENV).map(PathBuf::from)
}

/// FNV-1a of `text`: a stable file name per distinct rendering (the corpus holds many inputs
/// that render alike).
fn name_of(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn export(files: &[(&str, &str)]) {
    let Some(dir) = export_dir() else { return };
    let key: String = files.iter().map(|(_, t)| *t).collect();
    let stem = name_of(&key);
    std::fs::create_dir_all(&dir).expect("export directory");
    for (ext, text) in files {
        std::fs::write(dir.join(format!("{stem}.{ext}")), text).expect("export write");
    }
}

/// Whether `e` is an error a valid state may meet: a feature the backend refuses or a
/// capacity it lacks, named. Anything else for a valid state is a renderer bug.
fn acceptable(e: &Error) -> bool {
    matches!(
        e,
        Error::Unsupported { .. } | Error::CapacityExceeded { .. }
    )
}

/// The state with its lists reversed: the renderers compile in name order, so the text must
/// not depend on the order of the lists.
fn reversed(state: &DesiredState) -> DesiredState {
    let mut r = state.clone();
    r.services.reverse();
    r.endpoints.reverse();
    r.policies.reverse();
    r.namespaces.reverse();
    r.pods.reverse();
    r
}

/// Braces balance and never close more than they opened; every line ends.
fn check_nft_text(text: &str) {
    let mut depth: i64 = 0;
    for (n, line) in text.lines().enumerate() {
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "line {}: a brace closes nothing\n{line}", n + 1);
            assert!(
                !c.is_control() || c == '\t',
                "line {}: control character {c:?}",
                n + 1
            );
        }
    }
    assert_eq!(depth, 0, "unbalanced braces");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "last line unterminated"
    );
}

/// The nftables renderer on `state`: no panic, deterministic, independent of list order,
/// an `Ok` for every valid state unless a named refusal, balanced text that (re)creates our
/// table first.
pub fn nft(state: &DesiredState) {
    let dp = NftablesDataplane::new(NetfilterConfig::nftables(None));
    let valid = validate(state).is_ok();
    let text = match dp.render(state) {
        Ok(text) => text,
        Err(e) => {
            assert!(
                !valid || acceptable(&e),
                "a valid state does not render: {e}"
            );
            return;
        }
    };
    assert!(valid, "an invalid state rendered");
    // Rendered again from the lists reversed: deterministic and independent of their order
    // (one extra rendering checks both).
    assert_eq!(
        dp.render(&reversed(state)).ok().as_ref(),
        Some(&text),
        "not deterministic, or depends on the order of the lists"
    );
    check_nft_text(&text);
    assert!(
        text.starts_with("add table inet "),
        "does not start with our table:\n{text}"
    );
    export(&[("nft", &text)]);
}

/// One `iptables-restore` input's structure: sections `*table` … `COMMIT`, chains declared
/// before rules append to them (or built in), nothing outside a section.
fn check_restore_text(text: &str) {
    const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    let mut table: Option<&str> = None;
    let mut declared: BTreeSet<&str> = BTreeSet::new();
    let mut seen_tables = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = n + 1;
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "line {at}: control character"
        );
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            assert!(table.is_none(), "line {at}: *{t} inside *{table:?}");
            assert!(
                ["nat", "filter", "mangle", "raw"].contains(&t),
                "line {at}: table {t}"
            );
            assert!(seen_tables.insert(t), "line {at}: table {t} twice");
            table = Some(t);
            declared.clear();
            continue;
        }
        assert!(table.is_some(), "line {at} outside a table: {line}");
        if line == "COMMIT" {
            table = None;
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split(' ').next().unwrap_or("");
            assert!(
                !name.is_empty() && name.len() <= 28,
                "line {at}: chain name {name:?}"
            );
            declared.insert(name);
            continue;
        }
        let mut words = line.split(' ');
        let op = words.next().unwrap_or("");
        let chain = words.next().unwrap_or("");
        assert!(
            ["-A", "-I", "-X", "-D", "-F", "-N"].contains(&op),
            "line {at}: {line}"
        );
        assert!(
            declared.contains(chain) || BUILTIN.contains(&chain),
            "line {at}: chain {chain} not declared"
        );
        if op == "-A" || op == "-I" {
            // A rule's quotes pair up (comments are quoted).
            assert_eq!(
                line.matches('"').count() % 2,
                0,
                "line {at}: unpaired quote"
            );
        }
    }
    assert!(table.is_none(), "a section without COMMIT");
}

/// The `ipset restore` input that creates the sets `state`'s policy chains name, with their
/// members, and the two hairpin sets `DP-POSTROUTING` names (`<prefix>-hairpin-v4`/`-v6`,
/// `hash:ip,port,ip`; empty here: `--test` checks that a set exists, not its members): what
/// the backend runs before the rules.
fn ipset_input(state: &DesiredState, prefix: &str) -> String {
    let mut out = String::new();
    for family in ["inet", "inet6"] {
        let suffix = if family == "inet" { "v4" } else { "v6" };
        out.push_str(&format!(
            "create {prefix}-hairpin-{suffix} hash:ip,port,ip family {family} -exist\n"
        ));
    }
    let compiled = dataplane_core::compile(state);
    let Ok(want) = ipsets(&compiled, prefix) else {
        return out;
    };
    let ops = converge(&KernelSets::default(), &want, &compiled);
    let _ = write_ops(&ops, 65_536, &mut out);
    out
}

/// The iptables renderer on `state`, both families: as [`nft`], with the restore input's
/// structure checked.
pub fn iptables(state: &DesiredState) {
    let config = NetfilterConfig::iptables(None);
    let prefix = config.name.clone();
    let dp = IptablesDataplane::new(config);
    let valid = validate(state).is_ok();
    let mut texts = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let text = match dp.render(state, family) {
            Ok(text) => text,
            Err(e) => {
                assert!(
                    !valid || acceptable(&e),
                    "a valid state does not render ({family:?}): {e}"
                );
                return;
            }
        };
        assert!(valid, "an invalid state rendered");
        assert_eq!(
            dp.render(&reversed(state), family).ok().as_ref(),
            Some(&text),
            "not deterministic, or depends on the order of the lists"
        );
        check_restore_text(&text);
        texts.push(text);
    }
    let sets = ipset_input(state, &prefix);
    export(&[("v4", &texts[0]), ("v6", &texts[1]), ("ipset", &sets)]);
}
