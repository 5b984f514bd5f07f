//! `cargo xtask lint`'s layering check, on three levels:
//!
//! - crates: each workspace crate depends only on crates below it
//!   (`CRATE_LAYERS`): the production crate never on the lab;
//! - folders: a crate's top-level modules (a folder or a file) form no
//!   import cycle, and in a layered crate (`FOLDER_LAYERS`, which must
//!   name every top-level module) import only their own layer or lower;
//! - modules: no two source files import each other.
//!
//! An import is a `use` of, or a path through, `crate::…`, `super::…` or
//! `self::…` that lands in another module (a source file). Test modules
//! (`#[cfg(test)] mod tests`) are left out.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

type Module = Vec<String>;

/// The crates' source folders the check covers.
pub const CRATES: &[&str] = &[
    "netplane-common/src",
    "netplane-ebpf/src",
    "netplane-user/src",
    "netplane-user/cli/src",
    "netplane-lab/src",
    "tests/src",
    "tests/bench-model/src",
    "xtask/src",
];

/// The workspace's crates, lowest first: a crate may depend on those
/// before it only.
pub const CRATE_LAYERS: &[(&str, &str)] = &[
    ("netplane-common", "netplane-common"),
    ("netplane-ebpf", "netplane-ebpf"),
    ("netplane-user", "netplane-user"),
    ("netplane-lab", "netplane-lab"),
    ("netplane-cli", "netplane-user/cli"),
    ("netplane-bench-model", "tests/bench-model"),
    ("netplane-tests", "tests"),
    ("xtask", "xtask"),
];

/// The layered crates' top-level modules, lowest layer first; a module
/// imports from its own layer or below.
pub const FOLDER_LAYERS: &[(&str, &[&[&str]])] = &[(
    "netplane-user/src",
    &[
        &["paths", "sys"],
        &["datapath"],
        &["config"],
        &["source"],
        &["cni"],
        &["agent"],
        &["inspect"],
    ],
)];

pub fn check(root: &Path) -> Result<()> {
    let mut found = Vec::new();
    found.extend(crate_violations(root)?);
    for krate in CRATES {
        let src = root.join(krate);
        let edges = module_edges(&src)?;
        for cycle in folder_cycles(&edges) {
            found.push(format!(
                "{krate}: folders in a cycle: {}",
                cycle.join(" -> ")
            ));
        }
        if let Some((_, layers)) = FOLDER_LAYERS.iter().find(|(k, _)| k == krate) {
            found.extend(
                layer_violations(&src, &edges, layers)?
                    .into_iter()
                    .map(|v| format!("{krate}: {v}")),
            );
        }
        for (a, b) in mutual(&edges) {
            found.push(format!("{krate}: {} <-> {}", a.join("::"), b.join("::")));
        }
    }
    if !found.is_empty() {
        bail!("layering:\n  {}", found.join("\n  "));
    }
    Ok(())
}

fn mutual(edges: &BTreeSet<(Module, Module)>) -> Vec<(Module, Module)> {
    edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .cloned()
        .collect()
}

/// Every import between two modules of the crate at `src`.
fn module_edges(src: &Path) -> Result<BTreeSet<(Module, Module)>> {
    let modules = modules(src)?;
    let mut edges = BTreeSet::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file)?;
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text,
        };
        for path in referenced_paths(text) {
            if let Some(target) = resolve(&modules, module, &path)
                && target != *module
            {
                edges.insert((module.clone(), target));
            }
        }
    }
    Ok(edges)
}

/// The imports between top-level modules (the crate root left out: it
/// declares them all).
fn folder_edges(edges: &BTreeSet<(Module, Module)>) -> BTreeSet<(String, String)> {
    edges
        .iter()
        .filter_map(|(a, b)| Some((a.first()?.clone(), b.first()?.clone())))
        .filter(|(a, b)| a != b)
        .collect()
}

/// Each set of top-level modules that reach one another, as one cycle
/// through them (`a -> b -> a`).
pub fn folder_cycles(edges: &BTreeSet<(Module, Module)>) -> Vec<Vec<String>> {
    let folders = folder_edges(edges);
    let next = |f: &str| -> Vec<String> {
        folders
            .iter()
            .filter(|(a, _)| a == f)
            .map(|(_, b)| b.clone())
            .collect()
    };
    // The shortest path from `from` to `to`, by breadth first.
    let path = |from: &str, to: &str| -> Option<Vec<String>> {
        let mut came: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from.to_string()]);
        while let Some(f) = queue.pop_front() {
            for n in next(&f) {
                if n == to {
                    let mut p = vec![n, f.clone()];
                    let mut at = f;
                    while let Some(prev) = came.get(&at) {
                        p.push(prev.clone());
                        at = prev.clone();
                    }
                    p.reverse();
                    return Some(p);
                }
                if n != from && !came.contains_key(&n) {
                    came.insert(n.clone(), f.clone());
                    queue.push_back(n);
                }
            }
        }
        None
    };
    let mut seen = BTreeSet::new();
    let mut cycles = Vec::new();
    let all: BTreeSet<String> = folders.iter().map(|(a, _)| a.clone()).collect();
    for f in &all {
        if seen.contains(f) {
            continue;
        }
        if let Some(cycle) = path(f, f) {
            seen.extend(cycle.iter().cloned());
            cycles.push(cycle);
        }
    }
    cycles
}

/// Imports that go up the layers, and top-level modules the layer list
/// does not name.
fn layer_violations(
    src: &Path,
    edges: &BTreeSet<(Module, Module)>,
    layers: &[&[&str]],
) -> Result<Vec<String>> {
    let layer_of = |f: &str| layers.iter().position(|l| l.contains(&f));
    let mut out = Vec::new();
    let tops: BTreeSet<String> = modules(src)?
        .into_keys()
        .filter_map(|m| m.first().cloned())
        .collect();
    for t in &tops {
        if layer_of(t).is_none() {
            out.push(format!(
                "{t} is in no layer (xtask/src/layering.rs FOLDER_LAYERS)"
            ));
        }
    }
    for (a, b) in folder_edges(edges) {
        if let (Some(la), Some(lb)) = (layer_of(&a), layer_of(&b))
            && lb > la
        {
            out.push(format!("{a} imports {b}, a higher layer"));
        }
    }
    Ok(out)
}

/// Workspace crates that depend on a crate at or above their own layer.
fn crate_violations(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, (name, dir)) in CRATE_LAYERS.iter().enumerate() {
        let manifest = root.join(dir).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("{}", manifest.display()))?;
        let toml: toml::Table = text.parse()?;
        for section in ["dependencies", "build-dependencies", "dev-dependencies"] {
            let Some(deps) = toml.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for dep in deps.keys() {
                if let Some(j) = CRATE_LAYERS.iter().position(|(n, _)| n == dep)
                    && j >= i
                {
                    out.push(format!("crate {name} depends on {dep}, a higher layer"));
                }
            }
        }
    }
    Ok(out)
}

/// Every source file as a module path (binaries under src/bin are crates
/// of their own and left out).
fn modules(src: &Path) -> Result<BTreeMap<Module, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                if path != src.join("bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src)?.with_extension("");
            let mut parts: Module = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    Ok(out)
}

/// The paths a file names from `crate`, `super` or `self`: each `use` tree
/// expanded to its leaves, and every inline `crate::a::b` / `super::a`.
fn referenced_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut outside_uses = String::new();
    let mut rest = text;
    while let Some(i) = find_word(rest, "use ") {
        outside_uses.push_str(&rest[..i]);
        let after = &rest[i + 4..];
        let Some(end) = after.find(';') else { break };
        let tree: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        expand(&tree, "", &mut out);
        rest = &after[end..];
    }
    outside_uses.push_str(rest);
    for word in outside_uses.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with("crate::") || word.starts_with("super::") {
            out.push(word.trim_end_matches(':').to_string());
        }
    }
    out.retain(|p| p.starts_with("crate") || p.starts_with("super") || p.starts_with("self"));
    out
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    text.match_indices(word)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric())
}

/// `a::{b::{C, d}, e}` → `a::b::C`, `a::b::d`, `a::e`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let join = |p: &str| {
        if prefix.is_empty() {
            p.to_string()
        } else {
            format!("{prefix}::{p}")
        }
    };
    let (mut depth, mut start) = (0, 0);
    let mut parts = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        match part.find('{') {
            Some(i) => expand(
                &part[i + 1..part.len() - 1],
                &join(part[..i].trim_end_matches(':')),
                out,
            ),
            None => out.push(join(part.split(" as ").next().unwrap_or(part))),
        }
    }
}

/// The module a path lands in: the longest prefix that is a module.
fn resolve(modules: &BTreeMap<Module, PathBuf>, from: &Module, path: &str) -> Option<Module> {
    let mut segs = path.split("::").peekable();
    let mut base: Module = match *segs.peek()? {
        "crate" => Vec::new(),
        "self" => from.clone(),
        "super" => from.clone(),
        _ => return None,
    };
    if segs.peek() != Some(&"super") {
        segs.next();
    }
    while segs.peek() == Some(&"super") {
        segs.next();
        base.pop();
    }
    let mut best = modules.contains_key(&base).then(|| base.clone());
    for s in segs {
        base.push(s.to_string());
        if modules.contains_key(&base) {
            best = Some(base.clone());
        } else {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand_to_their_leaves() {
        let mut out = Vec::new();
        expand("super::{a::{B,c},d}", "", &mut out);
        assert_eq!(out, ["super::a::B", "super::a::c", "super::d"]);
    }

    #[test]
    fn a_pair_that_imports_each_other_is_found_and_a_tree_is_not() {
        let dir = std::env::temp_dir().join(format!("layering-{}", std::process::id()));
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
        std::fs::write(src.join("a/mod.rs"), "mod x;\nuse crate::b::thing;\n").unwrap();
        std::fs::write(src.join("a/x.rs"), "use super::super::b::Other;\n").unwrap();
        std::fs::write(src.join("b.rs"), "pub fn thing() {}\n").unwrap();
        assert!(mutual(&module_edges(&src).unwrap()).is_empty());
        // b -> a::x and a::x -> b: a pair, found through an inline path.
        std::fs::write(src.join("b.rs"), "fn f() { crate::a::x::g(); }\n").unwrap();
        assert_eq!(
            mutual(&module_edges(&src).unwrap()),
            vec![(vec!["a".into(), "x".into()], vec!["b".to_string()])]
        );
        // b -> a and a -> b, through a use tree.
        std::fs::write(src.join("a/x.rs"), "").unwrap();
        std::fs::write(src.join("b.rs"), "use crate::a::{Y};\n").unwrap();
        assert_eq!(
            mutual(&module_edges(&src).unwrap()),
            vec![(vec!["a".to_string()], vec!["b".to_string()])]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_cycle_is_found_where_no_two_files_import_each_other() {
        // inspect -> lab -> ui -> inspect, each through another file: no
        // pair imports each other, the folders go round.
        let dir = std::env::temp_dir().join(format!("layering-cycle-{}", std::process::id()));
        let src = dir.join("src");
        for f in ["inspect", "lab", "ui"] {
            std::fs::create_dir_all(src.join(f)).unwrap();
        }
        std::fs::write(src.join("lib.rs"), "mod inspect;\nmod lab;\nmod ui;\n").unwrap();
        std::fs::write(src.join("inspect/mod.rs"), "mod ports;\n").unwrap();
        std::fs::write(src.join("inspect/ports.rs"), "use crate::lab::state;\n").unwrap();
        std::fs::write(src.join("lab/mod.rs"), "mod page;\nmod state;\n").unwrap();
        std::fs::write(src.join("lab/state.rs"), "").unwrap();
        std::fs::write(src.join("lab/page.rs"), "use crate::ui::LISTENING;\n").unwrap();
        std::fs::write(
            src.join("ui/mod.rs"),
            "use crate::inspect::ports::port_use;\n",
        )
        .unwrap();
        let edges = module_edges(&src).unwrap();
        assert!(mutual(&edges).is_empty());
        assert_eq!(
            folder_cycles(&edges),
            vec![vec!["inspect", "lab", "ui", "inspect"]]
        );
        // A layer list catches the upward import too, and a folder it
        // does not name.
        let layers: &[&[&str]] = &[&["inspect"], &["lab"]];
        assert_eq!(
            layer_violations(&src, &edges, layers).unwrap(),
            [
                "ui is in no layer (xtask/src/layering.rs FOLDER_LAYERS)",
                "inspect imports lab, a higher layer",
            ]
        );
        // Break the circle: no cycle is left.
        std::fs::write(src.join("ui/mod.rs"), "").unwrap();
        assert!(folder_cycles(&module_edges(&src).unwrap()).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_production_crate_that_takes_the_lab_is_refused() {
        let root = std::env::temp_dir().join(format!("layering-crates-{}", std::process::id()));
        for (name, dir) in CRATE_LAYERS {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            let deps = if *name == "netplane-user" {
                "[dependencies]\nnetplane-common = { workspace = true }\nnetplane-lab = { workspace = true }\n"
            } else {
                ""
            };
            std::fs::write(
                root.join(dir).join("Cargo.toml"),
                format!("[package]\nname = \"{name}\"\n{deps}"),
            )
            .unwrap();
        }
        assert_eq!(
            crate_violations(&root).unwrap(),
            ["crate netplane-user depends on netplane-lab, a higher layer"]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_workspace_keeps_its_layers() {
        check(&crate::workspace_root()).unwrap();
    }
}
