//! `cargo xtask architecture`: ARCHITECTURE.md is true to the code. Every name it puts in
//! backquotes that looks like code (a module path, a type, a function, `Type::method`, a file
//! path) must exist in the workspace's sources; a rename that forgets the map fails here.
//!
//! How a name is found:
//! - a file path (it has a `/`): the file exists, relative to the workspace;
//! - `a::b` of mesh-agent (or `mesh_common::x`): a module of that path, or an item (fn, type,
//!   trait, const, `use`d name) of module `a`, or a method `b` of a type or trait `a`;
//! - a single name: a crate of the workspace, a module of mesh-agent, an item or method
//!   defined anywhere in the
//!   workspace, a trait implemented there (`Pod`), or a string the sources spell out (a config
//!   value such as `http2`, an environment variable).
//!
//! Backquoted text that is not shaped like a name (commands, YAML, attributes, crate names
//! with dashes) is not checked.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use syn::visit::Visit;

/// The crates whose sources the names may come from, and the module path each one's files
/// are named under (mesh-agent's modules by their path; the others only by item name, except
/// mesh-common's root as `mesh_common`).
const CRATES: &[(&str, Option<&str>)] = &[
    ("mesh-agent/src", Some("")),
    ("mesh-common/src", Some("mesh_common")),
    ("mesh-ebpf/src", None),
    ("tests/src", None),
    ("tests/tests", None),
    ("xtask/src", None),
];

/// What the sources define.
#[derive(Debug, Default)]
pub struct Index {
    /// Module paths (`proxy::outbound`, `mesh_common`).
    modules: BTreeSet<String>,
    /// Item names per module path (fns, types, traits, consts, statics, `use`d names).
    items: BTreeMap<String, BTreeSet<String>>,
    /// Method names per type or trait name (impl blocks, trait definitions).
    methods: BTreeMap<String, BTreeSet<String>>,
    /// Every item, method and implemented trait name, from anywhere.
    names: BTreeSet<String>,
    /// Every string literal.
    strings: BTreeSet<String>,
}

impl Index {
    pub fn of_workspace(workspace: &Path) -> Result<Index> {
        let mut index = Index::default();
        for (dir, prefix) in CRATES {
            let root = workspace.join(dir);
            for file in rust_files(&root)? {
                let module = prefix.map(|p| module_path(p, &root, &file));
                index.read(&file, module)?;
            }
        }
        Ok(index)
    }

    fn read(&mut self, file: &Path, module: Option<String>) -> Result<()> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let ast =
            syn::parse_file(&text).with_context(|| format!("cannot parse {}", file.display()))?;
        let mut found = Found::default();
        found.visit_file(&ast);
        if let Some(module) = module {
            if !module.is_empty() {
                self.modules.insert(module.clone());
            }
            self.items
                .entry(module)
                .or_default()
                .extend(found.items.iter().cloned());
        }
        self.names.extend(found.items);
        for (owner, methods) in found.methods {
            self.names.extend(methods.iter().cloned());
            self.methods.entry(owner).or_default().extend(methods);
        }
        self.names.extend(found.traits);
        self.strings.extend(found.strings);
        Ok(())
    }

    /// Whether `name` (backquoted in the map) names something that exists.
    pub fn knows(&self, workspace: &Path, name: &str) -> bool {
        if name.contains('/') {
            return workspace.join(name).exists();
        }
        let name = name.strip_suffix("()").unwrap_or(name);
        if self.modules.contains(name) || self.strings.contains(name) {
            return true;
        }
        // A crate of the workspace (`xtask`, `tests`).
        if !name.contains("::") && workspace.join(name).join("Cargo.toml").exists() {
            return true;
        }
        match name.rsplit_once("::") {
            None => self.names.contains(name),
            Some((owner, last)) => {
                let module = owner.strip_prefix("crate::").unwrap_or(owner);
                self.items.get(module).is_some_and(|i| i.contains(last))
                    || self.methods.get(owner).is_some_and(|m| m.contains(last))
            }
        }
    }
}

/// What one file defines.
#[derive(Default)]
struct Found {
    items: BTreeSet<String>,
    methods: BTreeMap<String, BTreeSet<String>>,
    traits: BTreeSet<String>,
    strings: BTreeSet<String>,
}

impl<'ast> Visit<'ast> for Found {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let ident = match item {
            syn::Item::Fn(i) => Some(&i.sig.ident),
            syn::Item::Struct(i) => Some(&i.ident),
            syn::Item::Enum(i) => Some(&i.ident),
            syn::Item::Trait(i) => Some(&i.ident),
            syn::Item::Type(i) => Some(&i.ident),
            syn::Item::Const(i) => Some(&i.ident),
            syn::Item::Static(i) => Some(&i.ident),
            syn::Item::Mod(i) => Some(&i.ident),
            syn::Item::Macro(i) => i.ident.as_ref(),
            _ => None,
        };
        if let Some(ident) = ident {
            self.items.insert(ident.to_string());
        }
        match item {
            // A private import does not make a name part of the module.
            syn::Item::Use(u) if !matches!(u.vis, syn::Visibility::Inherited) => {
                use_names(&u.tree, &mut self.items)
            }
            syn::Item::Impl(i) => {
                let owner = type_name(&i.self_ty);
                if let Some((_, path, _)) = &i.trait_
                    && let Some(last) = path.segments.last()
                {
                    self.traits.insert(last.ident.to_string());
                }
                if let Some(owner) = owner {
                    let methods = self.methods.entry(owner).or_default();
                    for inner in &i.items {
                        if let syn::ImplItem::Fn(f) = inner {
                            methods.insert(f.sig.ident.to_string());
                        }
                    }
                }
            }
            syn::Item::Trait(t) => {
                let methods = self.methods.entry(t.ident.to_string()).or_default();
                for inner in &t.items {
                    if let syn::TraitItem::Fn(f) = inner {
                        methods.insert(f.sig.ident.to_string());
                    }
                }
            }
            _ => {}
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_lit_str(&mut self, lit: &'ast syn::LitStr) {
        self.strings.insert(lit.value());
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Literals inside macro calls (format strings, env var names in `env!`) count too.
        for token in mac.tokens.clone() {
            if let proc_macro2::TokenTree::Literal(l) = token
                && let Ok(s) = syn::parse_str::<syn::LitStr>(&l.to_string())
            {
                self.strings.insert(s.value());
            }
        }
        syn::visit::visit_macro(self, mac);
    }
}

fn use_names(tree: &syn::UseTree, out: &mut BTreeSet<String>) {
    match tree {
        syn::UseTree::Path(p) => use_names(&p.tree, out),
        syn::UseTree::Name(n) => {
            out.insert(n.ident.to_string());
        }
        syn::UseTree::Rename(r) => {
            out.insert(r.rename.to_string());
        }
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| use_names(t, out)),
        syn::UseTree::Glob(_) => {}
    }
}

fn type_name(ty: &syn::Type) -> Option<String> {
    match ty {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `a/b.rs` and `a/b/mod.rs` are module `a::b` (under `prefix`); `lib.rs` and `main.rs` are the
/// root.
fn module_path(prefix: &str, root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    if !prefix.is_empty() {
        parts.insert(0, prefix.to_string());
    }
    parts.join("::")
}

/// The backquoted spans of a Markdown text that are shaped like code names.
pub fn names_in(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, span) in markdown.split('`').enumerate() {
        if i % 2 == 1 && looks_like_a_name(span) && !out.iter().any(|n| n == span) {
            out.push(span.to_string());
        }
    }
    out
}

fn looks_like_a_name(span: &str) -> bool {
    if span.contains('/') {
        // `config/<section>.rs` is a pattern, not a file.
        return !span.contains([' ', '<']) && span.ends_with(".rs");
    }
    let span = span.strip_suffix("()").unwrap_or(span);
    !span.is_empty()
        && span.split("::").all(|segment| {
            let mut chars = segment.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The names of ARCHITECTURE.md that exist nowhere.
pub fn missing(workspace: &Path, markdown: &str) -> Result<Vec<String>> {
    let index = Index::of_workspace(workspace)?;
    Ok(names_in(markdown)
        .into_iter()
        .filter(|name| !index.knows(workspace, name))
        .collect())
}

pub fn run(workspace: &Path) -> Result<()> {
    let path = workspace.join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let names = names_in(&text).len();
    let missing = missing(workspace, &text)?;
    for name in &missing {
        println!("ARCHITECTURE.md names `{name}`, which the sources do not define");
    }
    println!(
        "architecture: {names} names in ARCHITECTURE.md, {} not found",
        missing.len()
    );
    if !missing.is_empty() {
        bail!("ARCHITECTURE.md names what does not exist: fix the map or the code");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
    }

    #[test]
    fn only_name_shaped_spans_are_checked() {
        let names = names_in(
            "`proxy::outbound` runs `cargo xtask layers`, `reporter=\"destination\"`, \
             `#![no_std]`, `mesh-common`, `State::kernel_maps`, `mesh-ebpf/src/maps.rs`, `run()`",
        );
        assert_eq!(
            names,
            [
                "proxy::outbound",
                "State::kernel_maps",
                "mesh-ebpf/src/maps.rs",
                "run()"
            ]
        );
    }

    #[test]
    fn the_map_names_only_what_exists() {
        let text = std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).unwrap();
        assert!(names_in(&text).len() > 100);
        assert_eq!(missing(workspace(), &text).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_renamed_or_moved_name_is_reported() {
        let text = "`transport::dial::dial` and `proxy::tunnel` and `TunnelPool::open` and \
                    `TunnelPool::dial_home` and `no_such_function` and `mesh-ebpf/src/nope.rs` \
                    and `mesh_common::capacity` and `l7::meter::RequestSink` and `runtime::Shared`";
        assert_eq!(
            missing(workspace(), text).unwrap(),
            [
                "proxy::tunnel",
                "TunnelPool::dial_home",
                "no_such_function",
                "mesh-ebpf/src/nope.rs",
                "runtime::Shared"
            ]
        );
    }
}
