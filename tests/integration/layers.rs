//! The one rule of the house (ARCHITECTURE.md "Layers"), checked on the source itself: no file of
//! `src/` imports another that imports it back (directly or through others), and every import
//! goes down the layers (core, domain, store, hub, backplane, llm, jobs, metric_history and deps, features,
//! edges, app).
//!
//! Imports are read from the code: `use` trees (braces expanded) and inline `crate::` / `super::` /
//! `self::` paths, resolved to the deepest module file they name. `mod` declarations are not
//! imports; `#[cfg(test)]` blocks are left out (tests may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file as a module path (`src/lobby/chat.rs` -> `["lobby", "chat"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs").to_owned();
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem);
    }
    parts
}

pub(super) fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string literals and its `#[cfg(test)]` blocks.
pub(super) fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to its matching closing brace.
            let mut depth = 0i32;
            let mut opened = false;
            for next in lines.by_ref() {
                depth += next.matches('{').count() as i32 - next.matches('}').count() as i32;
                opened |= next.contains('{');
                if opened && depth <= 0 {
                    break;
                }
            }
            continue;
        }
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_string = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_string = !in_string;
            } else if !in_string {
                out.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
        out.push('\n');
    }
    out
}

/// Expands a `use` tree (`crate::a::{b, c::{d, self}}`) into plain paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let close = tree.rfind('}');
    let Some(open) = tree.find('{').filter(|open| close.is_some_and(|c| c > *open)) else {
        let path = tree.split(" as ").next().unwrap_or(&tree);
        return vec![path.split("as").next().unwrap_or(path).to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..close.unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .map(|p| p.trim_end_matches("::self").to_owned())
        .collect()
}

/// Every path a file's code names: its `use` trees and its inline `crate::` / `super::` paths.
fn paths_of(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        let decl = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "].iter().find_map(|p| line.strip_prefix(p));
        let Some(first) = decl else { continue };
        // A use declaration (rustfmt puts it at the start of a line) may span several lines.
        let mut tree = first.to_owned();
        while !tree.contains(';') {
            let Some(next) = lines.next() else { break };
            tree.push_str(next);
        }
        paths.extend(expand(tree.split(';').next().unwrap_or_default()));
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b'$') {
                continue;
            }
            let len = code[at..].find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(0);
            paths.push(code[at..at + len].trim_end_matches(':').to_owned());
        }
    }
    paths
}

/// The file a path leads to from `module` (the deepest module file it names), if any.
fn resolve(
    path: &str,
    module: &[String],
    is_dir_module: bool,
    files: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<PathBuf> {
    let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut at, rest): (Vec<String>, &[&str]) = match segments.first()? {
        &"crate" => (Vec::new(), &segments[1..]),
        &"self" => (module.to_vec(), &segments[1..]),
        &"super" => {
            let mut base = module.to_vec();
            let mut rest = &segments[..];
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        first => {
            // A child module of this one, named without `self::`.
            let mut child = module.to_vec();
            child.push((*first).to_owned());
            if !is_dir_module && module.is_empty() || !files.contains_key(&child) {
                return None;
            }
            (module.to_vec(), &segments[..])
        }
    };
    let mut found = files.get(&at).cloned();
    for segment in rest {
        at.push((*segment).to_owned());
        match files.get(&at) {
            Some(file) => found = Some(file.clone()),
            None => break,
        }
    }
    found
}

/// Layers, bottom first; a file may import only from a lower layer (or its own folder).
fn layer(module: &[String]) -> (usize, String) {
    let top = module.first().map(String::as_str).unwrap_or("");
    let rank = match top {
        "core" => 0,
        "domain" => 1,
        "store" => 2,
        "hub" => 3,
        "backplane" => 4,
        "llm" => 5,
        "jobs" | "metric_history" | "deps" | "moderation" | "limits" => 6,
        "content" | "lobby" | "runs" | "players" | "insights" => 7,
        "ws" | "http" | "state" | "api_error" | "connections" => 8,
        _ => 9,
    };
    (rank, top.to_owned())
}

struct House {
    edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    modules: BTreeMap<PathBuf, Vec<String>>,
}

fn house() -> House {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut list = Vec::new();
    rust_files(&src, &mut list);
    let modules: BTreeMap<PathBuf, Vec<String>> = list.iter().map(|f| (f.clone(), module_of(&src, f))).collect();
    let files: BTreeMap<Vec<String>, PathBuf> =
        modules.iter().filter(|(f, _)| !f.ends_with("main.rs")).map(|(f, m)| (m.clone(), f.clone())).collect();
    let mut edges = BTreeMap::new();
    for (file, module) in &modules {
        let code = code_of(&std::fs::read_to_string(file).expect("readable source"));
        let is_dir_module = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        let targets: BTreeSet<PathBuf> = paths_of(&code)
            .iter()
            .filter_map(|p| resolve(p, module, is_dir_module, &files))
            // The crate root holds only `mod` declarations and exported macros (`crate::on_backend!`).
            .filter(|target| target != file && !target.ends_with("src/lib.rs"))
            .collect();
        edges.insert(file.clone(), targets);
    }
    House { edges, modules }
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        next: usize,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a PathBuf) {
        w.index.insert(v, w.next);
        w.low.insert(v, w.next);
        w.next += 1;
        w.stack.push(v);
        w.on_stack.insert(v);
        for t in w.edges.get(v).into_iter().flatten() {
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(x) = w.stack.pop() {
                w.on_stack.remove(x);
                component.push(x.clone());
                if x == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut w = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !w.index.contains_key(v) {
            visit(&mut w, v);
        }
    }
    w.found
}

fn short(path: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(src).unwrap_or(path).display().to_string()
}

#[test]
fn no_file_imports_another_that_imports_it_back() {
    let house = house();
    let circles = circles(&house.edges);
    let described: Vec<String> =
        circles.iter().map(|c| c.iter().map(|f| short(f)).collect::<Vec<_>>().join(" <-> ")).collect();
    assert!(described.is_empty(), "import circles in src/:\n{}", described.join("\n"));
}

#[test]
fn every_import_goes_down_the_layers() {
    let house = house();
    let mut upward = Vec::new();
    for (file, targets) in &house.edges {
        let (rank, room) = layer(&house.modules[file]);
        for target in targets {
            let (target_rank, target_room) = layer(&house.modules[target]);
            let same_room = room == target_room;
            // Edges of one layer (ws, http, state) may use each other; features may not.
            let edge_neighbours = rank == 8 && target_rank == 8;
            if !(target_rank < rank || same_room || edge_neighbours) {
                upward.push(format!("{} -> {}", short(file), short(target)));
            }
        }
    }
    assert!(upward.is_empty(), "imports that do not go down the layers:\n{}", upward.join("\n"));
}

#[test]
fn the_checker_sees_a_circle_and_an_upward_import() {
    // The reader itself: a `use` tree with braces, an inline path and a child module.
    let paths = paths_of(&code_of(
        "use crate::a::{b, c::{d, self}};\npub use super::z;\nfn f() { crate::e::g(); rate::h(); }\n// crate::x\n",
    ));
    assert!(paths.contains(&"crate::a::b".to_owned()), "{paths:?}");
    assert!(paths.contains(&"crate::a::c::d".to_owned()), "{paths:?}");
    assert!(paths.contains(&"crate::a::c".to_owned()), "{paths:?}");
    assert!(paths.contains(&"crate::e::g".to_owned()), "{paths:?}");
    assert!(paths.contains(&"super::z".to_owned()), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("crate::x")), "comments are not code: {paths:?}");
    let mut edges = BTreeMap::new();
    let (a, b, c) = (PathBuf::from("a.rs"), PathBuf::from("b.rs"), PathBuf::from("c.rs"));
    edges.insert(a.clone(), BTreeSet::from([b.clone()]));
    edges.insert(b.clone(), BTreeSet::from([c.clone()]));
    edges.insert(c.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(circles(&edges), vec![vec![a, b, c]]);
    assert_eq!(layer(&["store".to_owned(), "runs".to_owned()]).0, 2);
    assert!(layer(&["runs".to_owned()]).0 > layer(&["store".to_owned()]).0);
}

/// ARCHITECTURE.md: a source file over ~500 lines of non-test code has more than one job.
#[test]
fn no_source_file_has_more_than_500_lines_of_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut big: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(file).expect("readable source");
            let code = text.lines().take_while(|line| !line.starts_with("#[cfg(test)]")).count();
            (code > 500).then(|| format!("{} ({code} lines)", short(file)))
        })
        .collect();
    big.sort();
    assert!(big.is_empty(), "files over 500 lines of non-test code:\n{}", big.join("\n"));
}
