//! `cargo xtask lint`'s layering check: no two modules of a crate import
//! each other. A module is a source file; an import is a `use` of, or a
//! path through, `crate::…`, `super::…` or `self::…` that lands in another
//! module. Test modules (`#[cfg(test)] mod tests`) are left out.
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
    "tests/src",
    "xtask/src",
];

pub fn check(root: &Path) -> Result<()> {
    let mut found = Vec::new();
    for krate in CRATES {
        for (a, b) in mutual_imports(&root.join(krate))? {
            found.push(format!("{krate}: {} <-> {}", a.join("::"), b.join("::")));
        }
    }
    if !found.is_empty() {
        bail!("modules that import each other:\n  {}", found.join("\n  "));
    }
    Ok(())
}

/// Pairs of modules that import each other.
pub fn mutual_imports(src: &Path) -> Result<Vec<(Module, Module)>> {
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
    Ok(edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .cloned()
        .collect())
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
        assert!(mutual_imports(&src).unwrap().is_empty());
        // b -> a::x and a::x -> b: a pair, found through an inline path.
        std::fs::write(src.join("b.rs"), "fn f() { crate::a::x::g(); }\n").unwrap();
        assert_eq!(
            mutual_imports(&src).unwrap(),
            vec![(vec!["a".into(), "x".into()], vec!["b".to_string()])]
        );
        // b -> a and a -> b, through a use tree.
        std::fs::write(src.join("a/x.rs"), "").unwrap();
        std::fs::write(src.join("b.rs"), "use crate::a::{Y};\n").unwrap();
        assert_eq!(
            mutual_imports(&src).unwrap(),
            vec![(vec!["a".to_string()], vec!["b".to_string()])]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_workspace_has_no_mutual_imports() {
        check(&crate::workspace_root()).unwrap();
    }
}
