//! No two source files of a crate import each other, directly or in a loop (issue 17): each
//! crate's modules form layers, so that a module can be read, tested and moved with what it
//! uses below it.
//!
//! A file's imports are the `crate::a::b` and `super::a` paths in its code (comments and the
//! `#[cfg(test)] mod tests` block at its end left out), each resolved to the deepest module
//! file it names. Paths through the crate root's re-exports (`crate::Thing`) do not count: the
//! root is where the layers are put together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module, as the path of names from the crate root (`["conformance", "runner"]`).
type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comment lines and without its trailing unit-test module.
fn code(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `prefix::a::b::c` paths in `code` (identifiers only), as name lists.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = &rest[..i];
        rest = &rest[i + prefix.len()..];
        // Inside an identifier, or a later link of a chain (`super::super::`) counted with
        // its first.
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') || before.ends_with("::") {
            continue;
        }
        out.extend(use_tree(rest.trim_start()).0);
    }
    out
}

/// The paths a use tree at the start of `text` names (`a::b`, `a::{b, c::d}`, `{a, b::*}`),
/// and the rest of `text` after it. A glob or a group ends a path at the module it is in.
fn use_tree(text: &str) -> (Vec<Vec<String>>, &str) {
    let mut names = Vec::new();
    let mut tail = text;
    loop {
        if let Some(group) = tail.strip_prefix('{') {
            let mut out = Vec::new();
            let mut rest = group;
            loop {
                rest = rest.trim_start();
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (paths, after) = use_tree(rest);
                out.extend(
                    paths
                        .into_iter()
                        .map(|p| names.iter().cloned().chain(p).collect()),
                );
                rest = after.trim_start();
                match rest.strip_prefix(',') {
                    Some(after) => rest = after,
                    None if rest.starts_with('}') => {}
                    // Not a use tree after all (`crate::{` in a string, say): stop here.
                    None => break,
                }
            }
            if out.is_empty() && !names.is_empty() {
                out.push(names);
            }
            return (out, rest);
        }
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if end == 0 {
            break;
        }
        names.push(tail[..end].to_owned());
        if let Some(t) = tail[end..].strip_prefix("::") {
            tail = t;
        } else {
            tail = &tail[end..];
            break;
        }
    }
    let paths = if names.is_empty() {
        Vec::new()
    } else {
        vec![names]
    };
    (paths, tail)
}

/// The module graph of the crate whose sources are under `src`.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Module, PathBuf> =
        files.into_iter().map(|f| (module_of(src, &f), f)).collect();
    let mut edges = BTreeMap::new();
    for (module, file) in &modules {
        let text = code(&std::fs::read_to_string(file).expect("readable source"));
        let mut targets = BTreeSet::new();
        // `super::` is the parent of the file's module (the same for a.rs and a/mod.rs);
        // every further `super` one more level up.
        let supers = paths_after(&text, "super::").into_iter().map(|p| {
            let ups = 1 + p.iter().take_while(|n| *n == "super").count();
            let base = &module[..module.len().saturating_sub(ups)];
            base.iter()
                .cloned()
                .chain(p[ups - 1..].iter().cloned())
                .collect::<Module>()
        });
        let referenced = paths_after(&text, "crate::").into_iter().chain(supers);
        for path in referenced {
            let target = (1..=path.len())
                .rev()
                .map(|k| path[..k].to_vec())
                .find(|m| modules.contains_key(m));
            if let Some(t) = target.filter(|t| t != module && !t.is_empty()) {
                targets.insert(t);
            }
        }
        edges.insert(module.clone(), targets);
    }
    edges
}

/// A loop in `edges`, if there is one (as the modules along it).
fn find_loop(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(m) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack
                    .iter()
                    .position(|s| s == m)
                    .expect("open is on the stack");
                return Some(stack[start..].to_vec());
            }
            None => {}
        }
        marks.insert(m.clone(), Mark::Open);
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(found) = visit(next, edges, marks, stack) {
                return Some(found);
            }
        }
        stack.pop();
        marks.insert(m.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut marks, &mut Vec::new()))
}

fn show(modules: &[Module]) -> String {
    modules
        .iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_crate_has_an_import_loop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut srcs = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        srcs.push(entry.expect("entry").path().join("src"));
    }
    let mut loops = Vec::new();
    for src in srcs.iter().filter(|s| s.is_dir()) {
        if let Some(l) = find_loop(&graph(src)) {
            loops.push(format!("{}: {}", src.display(), show(&l)));
        }
    }
    assert!(
        loops.is_empty(),
        "modules that import each other:\n{}",
        loops.join("\n")
    );
}

/// The check finds what it looks for: a loop through `super::` and `crate::` paths.
#[test]
fn a_loop_is_found() {
    let dir = std::env::temp_dir().join(format!("module-graph-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::c::Thing;\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "mod c;\n").unwrap();
    // A comment naming crate::a is not an import.
    std::fs::write(
        src.join("b/c.rs"),
        "// crate::a\npub struct Thing;\n#[cfg(test)]\nmod tests { use crate::a; }\n",
    )
    .unwrap();
    assert_eq!(find_loop(&graph(&src)), None);
    std::fs::write(
        src.join("b/c.rs"),
        "use super::super::a::f;\npub struct Thing;\n",
    )
    .unwrap();
    let found = find_loop(&graph(&src)).map(|l| show(&l));
    assert_eq!(found.as_deref(), Some("a -> b::c"));
    // The same loop through grouped imports.
    std::fs::write(src.join("a.rs"), "use crate::{b::{c::Thing, self}, x};\n").unwrap();
    std::fs::write(
        src.join("b/c.rs"),
        "use crate::{a::f};\npub struct Thing;\n",
    )
    .unwrap();
    let found = find_loop(&graph(&src)).map(|l| show(&l));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.as_deref(), Some("a -> b::c"));
}
