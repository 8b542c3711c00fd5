//! The library's modules import each other along the data flow only: the graph of `crate::`
//! paths between the top-level modules of `src/` (read from the source files, comments left
//! out) has no cycle. `error` is left out of the graph: every module returns its `Error`, and
//! `Error` names the domain error types it wraps, so it sits beside every module, not between
//! two. The command line (`src/bin/`) uses the library from outside, through `arraydrain::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::` paths, comments left out.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            // `arraydrain_crate::` or `$crate::` are other paths.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if rest.starts_with('{') {
                panic!("write `use crate::a; use crate::b;`, which this check reads: {line}");
            }
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// The import graph of the library: module → the modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let module_of = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        match first {
            "lib.rs" | "bin" => None,
            f => Some(f.trim_end_matches(".rs").to_string()),
        }
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let entry = graph.entry(module.clone()).or_default();
        for to in imports(&text) {
            if to != module {
                entry.insert(to);
            }
        }
    }
    graph.remove("error");
    for targets in graph.values_mut() {
        targets.remove("error");
    }
    graph
}

/// A cycle of `graph` as a path `a -> b -> … -> a`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[at..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_library_imports_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    // The graph is the library's: the modules every drain passes through are in it.
    for module in [
        "table", "sampler", "gather", "output", "npy", "shards", "convert",
    ] {
        assert!(
            graph.contains_key(module),
            "module {module} not found in {src:?}"
        );
    }
    assert!(
        graph["convert"].contains("npy"),
        "convert writes through npy"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the modules of src/ import each other in a cycle: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let text = "use crate::npy::MAGIC;\n// crate::shards in a comment\nlet x = crate::sampler::f(); // crate::gather\n";
    assert_eq!(
        imports(text),
        ["npy", "sampler"].into_iter().map(String::from).collect()
    );
}
