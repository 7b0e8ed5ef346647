//! The house's floors, checked: crates depend only on crates of lower floors (the simulator
//! on nothing of KVM's), and within every crate the modules' imports form no cycle, so that
//! each module stands on the ones below it and none imports its caller.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Each crate of the workspace (by directory) and its floor: a crate may depend only on
/// crates of lower floors.
const FLOORS: &[(&str, &str, u32)] = &[
    ("pv-abi", "pv-abi", 0),
    ("sched", "sched", 0),
    ("workloads", "workloads", 0),
    ("core", "tandem-core", 1),
    ("sim", "tandem-sim", 2),
    ("kvm", "tandem-kvm", 2),
    ("tandem", "tandem", 3),
    ("guest-kernel/rt", "tandem-rt", 1),
    ("guest-kernel", "guest-kernel", 2),
];

/// Crates that bring KVM in: the simulator must build without any of them.
const KVM_CRATES: &[&str] = &["kvm-ioctls", "kvm-bindings", "vm-memory"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_owned()
}

#[test]
fn crates_depend_only_on_crates_of_lower_floors() {
    for &(dir, name, floor) in FLOORS {
        let manifest = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        let manifest: toml::Table = toml::from_str(&manifest).unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some(name), "{dir}/Cargo.toml");
        let deps = manifest.get("dependencies").and_then(toml::Value::as_table).cloned().unwrap_or_default();
        for dep in deps.keys() {
            if let Some(&(_, _, below)) = FLOORS.iter().find(|(_, other, _)| other == dep) {
                assert!(below < floor, "{name} (floor {floor}) depends on {dep} (floor {below})");
            }
        }
    }
}

#[test]
fn the_simulator_builds_without_kvm() {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "-p", "tandem-sim", "--prefix", "none"])
        .current_dir(root())
        .output()
        .expect("cannot run cargo tree");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(tree.lines().any(|line| line.starts_with("sched ")), "unexpected cargo tree output:\n{tree}");
    for line in tree.lines() {
        let krate = line.split_whitespace().next().unwrap_or_default();
        assert!(!KVM_CRATES.contains(&krate), "tandem-sim depends on {krate}:\n{tree}");
    }
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut cycles = Vec::new();
    for &(dir, name, _) in FLOORS {
        let graph = module_graph(&root().join(dir).join("src"));
        assert!(graph.len() > 1, "{name}: found no modules");
        if let Some(cycle) = find_cycle(&graph) {
            cycles.push(format!("{name}: {}", cycle.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "modules that import each other in a cycle:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_cycle_and_passes_a_layered_graph() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph.entry(from.to_string()).or_default().insert(to.to_string());
            graph.entry(to.to_string()).or_default();
        }
        graph
    };
    assert_eq!(find_cycle(&graph(&[("cli", "vm"), ("vm", "vcpu"), ("cli", "vcpu")])), None);
    let cycle = find_cycle(&graph(&[("hypercall", "vcpu"), ("vcpu", "vm"), ("vm", "hypercall")])).unwrap();
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(
        imports("use crate::{a::B, c::{self, D}};\nfn f() { crate::e::g(); super::h::I; }"),
        ["crate::a::B", "crate::c", "crate::c::D", "crate::e::g", "super::h::I"]
    );
    let modules: BTreeMap<String, PathBuf> = ["crate", "crate::a", "crate::a::b", "crate::a::b::c"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    assert_eq!(absolute("crate::a::b", "super::x", &modules), "crate::a::x");
    assert_eq!(absolute("crate::a::b", "c::x", &modules), "crate::a::b::c::x");
    assert_eq!(absolute("crate::a::b", "self::c", &modules), "crate::a::b::c");
    assert_eq!(absolute("crate::a::b", "serde::Serialize", &modules), "serde::Serialize");
}

/// Each module of the crate whose sources are in `src` (as `crate`, `crate::a`,
/// `crate::a::b`), and the modules it imports from (test modules aside: they import what
/// they test).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files.iter().map(|file| (module_of(src, file), file.clone())).collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        // Inline test modules import their parent; they are not part of the layering.
        let text = match text.find("\nmod tests {") {
            Some(at) => &text[..text[..at].rfind("#[cfg(").unwrap_or(at)],
            None => &text[..],
        };
        // The crate root's re-exports are its door, not a dependency of it.
        let text: String = if module == "crate" {
            text.lines().filter(|line| !line.starts_with("pub use ")).collect::<Vec<_>>().join("\n")
        } else {
            text.to_owned()
        };
        let mut targets = BTreeSet::new();
        for path in imports(&text) {
            let absolute = absolute(module, &path, &modules);
            // The longest module that is a prefix of the path: the module imported from.
            let Some(target) = modules
                .keys()
                .filter(|m| absolute == **m || absolute.starts_with(&format!("{m}::")))
                .max_by_key(|m| m.len())
            else {
                continue;
            };
            if target != module && !target.ends_with("::tests") && !module.ends_with("::tests") {
                targets.insert(target.clone());
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// `crate::a::b` for `src/a/b.rs` or `src/a/b/mod.rs`; `crate` for `lib.rs` and `main.rs`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    std::iter::once("crate".to_owned()).chain(parts).collect::<Vec<_>>().join("::")
}

/// Every path starting with `crate::`, `super::` or `self::` in `text`, `use` groups
/// expanded, and paths written out in code (`crate::layout::PAGE_SIZE`).
fn imports(text: &str) -> Vec<String> {
    let code: String = text.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut paths = Vec::new();
    let mut rest_of_code = String::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let starts_statement = rest[..at].chars().last().is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let Some(end) = rest[at..].find(';').map(|end| at + end) else { break };
        if starts_statement {
            rest_of_code += &rest[..at];
            let tree: String = rest[at + 4..end].chars().filter(|c| !c.is_whitespace()).collect();
            expand(&tree, &mut paths);
        } else {
            rest_of_code += &rest[..end];
        }
        rest = &rest[end..];
    }
    rest_of_code += rest;
    for root in ["crate::", "super::"] {
        for (at, _) in rest_of_code.match_indices(root) {
            let preceded =
                rest_of_code[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            let path: String =
                rest_of_code[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            if !preceded {
                paths.push(path.trim_end_matches(':').to_owned());
            }
        }
    }
    paths.retain(|path| path.contains("::"));
    paths.sort();
    paths.dedup();
    paths
}

/// Expands a `use` tree (whitespace removed) into full paths: `a::{b,c::{self,d}}` gives
/// `a::b`, `a::c`, `a::c::d`.
fn expand(tree: &str, paths: &mut Vec<String>) {
    let Some(open) = tree.find('{') else {
        let path = tree.split("as").next().unwrap_or(tree).trim_end_matches("::self").trim_end_matches("::*");
        paths.push(path.to_owned());
        return;
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices().chain([(inner.len(), ',')]) {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                let item = &inner[start..i];
                if !item.is_empty() {
                    expand(&format!("{prefix}{item}"), paths);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
}

/// `path` as seen from `module`, made absolute (`super::x` in `crate::a::b` is `crate::a::x`,
/// `c::x` is `crate::a::b::c::x` if `c` is a submodule). Paths into other crates stay as
/// they are (and match no module).
fn absolute(module: &str, path: &str, modules: &BTreeMap<String, PathBuf>) -> String {
    let mut base: Vec<&str> = module.split("::").collect();
    let mut parts = path.split("::").peekable();
    match parts.peek() {
        Some(&"crate") => return path.to_owned(),
        Some(&"self") => {
            parts.next();
        }
        Some(first) if *first != "super" => {
            if !modules.contains_key(&format!("{module}::{first}")) {
                return path.to_owned();
            }
        }
        _ => {
            while parts.peek() == Some(&"super") {
                parts.next();
                base.pop();
            }
        }
    }
    base.into_iter().chain(parts).collect::<Vec<_>>().join("::")
}

/// A cycle of the graph, as the modules along it (the first repeated at the end), if any.
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
                let from = path.iter().position(|n| n == node).expect("an open node is on the path");
                return Some(path[from..].iter().cloned().chain([node.to_owned()]).collect());
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}
