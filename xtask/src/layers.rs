//! `cargo xtask layers`: keeps mesh-agent's modules in layers whose imports only point down,
//! and its modules free of import circles (`LAYERS` below names the layers).
//!
//! The module tree is read as rustc reads it: from `lib.rs`, following `mod` declarations
//! (`#[path]` included) and inline modules. Every `use` of `crate::`/`super::`/`self::` and
//! every `crate::` path in the code (types, calls, macro arguments) is an import of the module
//! the path leads to. Test code (`#[cfg(test)]` items and the modules they declare) is left
//! out: it is not part of the agent, and tests may reach across layers to set things up.
//!
//! Two rules:
//! - **Layers only point down.** Each top-level module belongs to a layer (`LAYERS`; an entry
//!   for a submodule, `a::b`, would place it apart from its parent). A module may import its
//!   own layer and the ones below, never one above. `ALLOWED` lists the exceptions; it is
//!   empty, and a change that needs one should take a narrow handle instead.
//! - **No circles.** Among the modules of each parent (the top-level modules, the files of
//!   `l7`, ...), the imports between siblings form no circle: an import from `a::x` to `b::y`
//!   is an arrow from `a` to `b` at the top level and from nothing inside `a` or `b`, and an
//!   import between a module and its own descendants does not count (a parent is its
//!   children's facade).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use syn::visit::Visit;

/// Layers from the bottom up, and the modules in each (by path from the crate root).
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "kernel",
        &["ebpf", "cgroup", "netns", "planted", "handover"],
    ),
    (
        "model",
        &["config", "state", "routing", "policy", "identity"],
    ),
    ("data path", &["transport", "l7", "proxy"]),
    ("telemetry", &["metrics", "accesslog", "flows", "logging"]),
    ("control", &["k8s", "reload"]),
    (
        "surfaces",
        &[
            "admin",
            "admin_client",
            "status",
            "cli",
            "exporter",
            "agent",
            "runtime",
        ],
    ),
];

/// Upward imports tolerated, as (from module, to module). Empty: keep it so.
pub const ALLOWED: &[(&str, &str)] = &[];

/// One import of one module by another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Import {
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub file: PathBuf,
    pub line: usize,
}

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    pub modules: usize,
    pub imports: usize,
    /// Imports of a layer above the importer's: (import, from layer, to layer).
    pub upward: Vec<(Import, &'static str, &'static str)>,
    /// Circles among siblings: the parent, the modules in the circle, and one import per arrow.
    pub circles: Vec<(String, Vec<String>, Vec<Import>)>,
    /// Modules no layer names.
    pub unplaced: BTreeSet<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.upward.is_empty() && self.circles.is_empty() && self.unplaced.is_empty()
    }

    pub fn render(&self, root: &Path) -> String {
        let mut out = String::new();
        let at = |i: &Import| {
            let file = i.file.strip_prefix(root).unwrap_or(&i.file);
            format!("{}:{}", file.display(), i.line)
        };
        for (i, from, to) in &self.upward {
            let _ = writeln!(
                out,
                "upward import: {} ({from}) imports {} ({to}) at {}",
                i.from.join("::"),
                i.to.join("::"),
                at(i)
            );
        }
        for (parent, members, arrows) in &self.circles {
            let _ = writeln!(out, "import circle in {parent}: {}", members.join(" <-> "));
            for i in arrows {
                let _ = writeln!(
                    out,
                    "  {} -> {} at {}",
                    i.from.join("::"),
                    i.to.join("::"),
                    at(i)
                );
            }
        }
        for m in &self.unplaced {
            let _ = writeln!(out, "module {m} is in no layer (add it to xtask's LAYERS)");
        }
        let _ = writeln!(
            out,
            "layers: {} modules, {} imports between modules; {} upward, {} circles",
            self.modules,
            self.imports,
            self.upward.len(),
            self.circles.len()
        );
        out
    }
}

/// Checks the crate whose root file is `lib`.
pub fn check(lib: &Path) -> Result<Report> {
    let mut tree = Tree::default();
    tree.read_file(lib, Vec::new(), ModDir::of_root(lib))?;
    Ok(tree.report())
}

/// `cargo xtask layers`: checks mesh-agent and fails on any finding.
pub fn run(workspace: &Path) -> Result<()> {
    let lib = workspace.join("mesh-agent/src/lib.rs");
    let report = check(&lib)?;
    print!("{}", report.render(workspace));
    if !report.ok() {
        bail!(
            "mesh-agent's imports break its layering (the layers: LAYERS in xtask/src/layers.rs)"
        );
    }
    Ok(())
}

/// Imports planted into a copy of the agent's sources by [`planted_breaks_are_flagged`]: an
/// upward import (the data path reaching for the agent's wiring) and an arrow that closes a
/// circle between two modules of one layer. (file, line appended, from, to).
const PLANTED: &[(&str, &str, &str, &str)] = &[
    (
        "transport/relay.rs",
        "#[allow(unused_imports)]\nuse crate::agent::Shared;\n",
        "transport::relay",
        "agent",
    ),
    (
        "l7/meter.rs",
        "#[allow(unused_imports)]\nuse crate::proxy::ProxyPlane;\n",
        "l7::meter",
        "proxy",
    ),
];

/// The check's self-test on the real tree, for `cargo xtask test`: a copy of mesh-agent's
/// sources with [`PLANTED`] imports added must fail, naming the upward import and the circle.
/// A check that passes this tree and also passes the planted copy checks nothing.
pub fn planted_breaks_are_flagged(workspace: &Path) -> Result<()> {
    let src = workspace.join("mesh-agent/src");
    let copy = tempfile::tempdir().context("cannot make a directory for the planted copy")?;
    copy_tree(&src, copy.path())?;
    for (file, text, _, _) in PLANTED {
        let path = copy.path().join(file);
        let mut body = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        body.push_str(text);
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let report = check(&copy.path().join("lib.rs"))?;
    println!("layers self-test: a copy of mesh-agent/src with planted imports must fail:");
    for line in report.render(copy.path()).lines() {
        println!("  | {line}");
    }
    let (_, _, upward_from, upward_to) = PLANTED[0];
    if !report
        .upward
        .iter()
        .any(|(i, _, _)| is_import(i, upward_from, upward_to))
    {
        bail!("the planted upward import {upward_from} -> {upward_to} was not reported");
    }
    let (_, _, circle_from, circle_to) = PLANTED[1];
    if !report
        .circles
        .iter()
        .any(|(_, _, arrows)| arrows.iter().any(|i| is_import(i, circle_from, circle_to)))
    {
        bail!("the circle closed by {circle_from} -> {circle_to} was not reported");
    }
    if report.ok() {
        bail!("the planted copy passed the layering check");
    }
    println!("layers: the planted upward import and circle are reported");
    Ok(())
}

fn is_import(i: &Import, from: &str, to: &str) -> bool {
    i.from.join("::") == from && i.to.join("::") == to
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))?
    {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Where a module's child files are.
#[derive(Clone)]
struct ModDir(PathBuf);

impl ModDir {
    /// `lib.rs` and `mod.rs` keep their children beside them; `a.rs` keeps them in `a/`.
    fn of_root(file: &Path) -> ModDir {
        ModDir(file.parent().unwrap_or(Path::new(".")).to_path_buf())
    }

    fn of_file(file: &Path) -> ModDir {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let dir = file.parent().unwrap_or(Path::new("."));
        if stem == "mod" || stem == "lib" || stem == "main" {
            ModDir(dir.to_path_buf())
        } else {
            ModDir(dir.join(stem))
        }
    }
}

#[derive(Default)]
struct Tree {
    modules: BTreeSet<Vec<String>>,
    /// Raw paths as written, resolved against `modules` once every module is known.
    paths: Vec<(Vec<String>, Vec<String>, PathBuf, usize)>,
}

impl Tree {
    fn read_file(&mut self, file: &Path, module: Vec<String>, dir: ModDir) -> Result<()> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let ast = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        self.modules.insert(module.clone());
        self.read_items(&ast.items, file, &module, &dir)
    }

    fn read_items(
        &mut self,
        items: &[syn::Item],
        file: &Path,
        module: &[String],
        dir: &ModDir,
    ) -> Result<()> {
        for item in items {
            if is_test_only(item_attrs(item)) {
                continue;
            }
            if let syn::Item::Mod(m) = item {
                let mut child = module.to_vec();
                child.push(m.ident.to_string());
                match &m.content {
                    Some((_, inner)) => {
                        self.modules.insert(child.clone());
                        let inner_dir = ModDir(dir.0.join(m.ident.to_string()));
                        self.read_items(inner, file, &child, &inner_dir)?;
                    }
                    None => {
                        let path = child_file(dir, m, file)?;
                        let child_dir = ModDir::of_file(&path);
                        self.read_file(&path, child, child_dir)?;
                    }
                }
                continue;
            }
            let mut finder = PathFinder::default();
            finder.visit_item(item);
            for (path, line) in finder.found {
                if let Some(abs) = absolute(module, &path) {
                    self.paths
                        .push((module.to_vec(), abs, file.to_path_buf(), line));
                }
            }
        }
        Ok(())
    }

    /// The module a path leads to: its longest prefix that is a module.
    fn module_of(&self, path: &[String]) -> Vec<String> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| self.modules.contains(p))
            .unwrap_or_default()
    }

    fn report(self) -> Report {
        let mut imports: BTreeSet<Import> = BTreeSet::new();
        for (from, path, file, line) in &self.paths {
            let to = self.module_of(path);
            if &to == from {
                continue;
            }
            imports.insert(Import {
                from: from.clone(),
                to,
                file: file.clone(),
                line: *line,
            });
        }
        let mut report = Report {
            modules: self.modules.len(),
            ..Report::default()
        };
        for m in &self.modules {
            if !m.is_empty() && layer_of(m).is_none() {
                report.unplaced.insert(m[0].clone());
            }
        }
        // One finding per pair of modules: the first import of it.
        let mut seen_pairs = BTreeSet::new();
        for i in &imports {
            if !seen_pairs.insert((i.from.clone(), i.to.clone())) {
                continue;
            }
            report.imports += 1;
            let (Some(from), Some(to)) = (layer_of(&i.from), layer_of(&i.to)) else {
                continue;
            };
            let allowed = ALLOWED
                .iter()
                .any(|(a, b)| i.from.join("::") == *a && i.to.join("::") == *b);
            if to.0 > from.0 && !allowed {
                report.upward.push((i.clone(), from.1, to.1));
            }
        }
        report.circles = circles(&imports);
        report
    }
}

/// The file `mod m;` in a file whose children live in `dir` reads.
fn child_file(dir: &ModDir, m: &syn::ItemMod, file: &Path) -> Result<PathBuf> {
    let explicit = m.attrs.iter().find_map(|a| {
        let syn::Meta::NameValue(nv) = &a.meta else {
            return None;
        };
        if !nv.path.is_ident("path") {
            return None;
        }
        match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        }
    });
    if let Some(p) = explicit {
        // `#[path]` is relative to the directory of the file that declares the module.
        return Ok(file.parent().unwrap_or(Path::new(".")).join(p));
    }
    let name = m.ident.to_string();
    let flat = dir.0.join(format!("{name}.rs"));
    let nested = dir.0.join(&name).join("mod.rs");
    [flat, nested]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("no file for `mod {name};` in {}", file.display()))
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        _ => &[],
    }
}

/// `#[cfg(test)]` (not `cfg(not(test))`, nor `cfg(any(test, ...))`, which also build the agent).
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

/// Paths as written in one item: `use` trees expanded, `crate::`/`super::`/`self::` paths in
/// the code, and `crate::` paths in macro arguments (which syn leaves as tokens).
#[derive(Default)]
struct PathFinder {
    found: Vec<(Vec<String>, usize)>,
}

impl PathFinder {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            // `use a::b as c` imports `a::b` like `use a::b`.
            syn::UseTree::Name(syn::UseName { ident })
            | syn::UseTree::Rename(syn::UseRename { ident, .. }) => {
                let mut path = prefix.clone();
                if ident != "self" {
                    path.push(ident.to_string());
                }
                self.found.push((path, ident.span().start().line));
            }
            syn::UseTree::Glob(g) => {
                self.found
                    .push((prefix.clone(), g.star_token.span.start().line));
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for PathFinder {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if let Some(first) = p.segments.first() {
            let head = first.ident.to_string();
            if matches!(head.as_str(), "crate" | "super" | "self") && p.segments.len() > 1 {
                let path = p.segments.iter().map(|s| s.ident.to_string()).collect();
                self.found.push((path, first.ident.span().start().line));
            }
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        let tokens: Vec<proc_macro2::TokenTree> = flatten(m.tokens.clone());
        for (i, t) in tokens.iter().enumerate() {
            let proc_macro2::TokenTree::Ident(id) = t else {
                continue;
            };
            if id != "crate" {
                continue;
            }
            // crate :: a :: b ...: `::` is two `:` puncts.
            let mut path = vec!["crate".to_owned()];
            let mut j = i + 1;
            while let (
                Some(proc_macro2::TokenTree::Punct(a)),
                Some(proc_macro2::TokenTree::Punct(b)),
                Some(proc_macro2::TokenTree::Ident(seg)),
            ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
            {
                if a.as_char() != ':' || b.as_char() != ':' {
                    break;
                }
                path.push(seg.to_string());
                j += 3;
            }
            if path.len() > 1 {
                self.found.push((path, id.span().start().line));
            }
        }
        syn::visit::visit_macro(self, m);
    }
}

fn flatten(stream: proc_macro2::TokenStream) -> Vec<proc_macro2::TokenTree> {
    let mut out = Vec::new();
    for t in stream {
        match t {
            proc_macro2::TokenTree::Group(g) => out.extend(flatten(g.stream())),
            other => out.push(other),
        }
    }
    out
}

/// A path as written in `module`, from the crate root; `None` for paths outside the crate.
fn absolute(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base = module.to_vec();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        // `use std::...`, `use tokio::...`, or a name imported into this module.
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// A module's layer: (its rank from the bottom, its name), by the most specific entry.
fn layer_of(module: &[String]) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, usize, &'static str)> = None;
    for (rank, (name, members)) in LAYERS.iter().enumerate() {
        for m in *members {
            let parts: Vec<&str> = m.split("::").collect();
            let matches = parts.len() <= module.len()
                && parts.iter().zip(module).all(|(a, b)| *a == b.as_str());
            if matches && best.is_none_or(|(len, _, _)| parts.len() > len) {
                best = Some((parts.len(), rank, name));
            }
        }
    }
    best.map(|(_, rank, name)| (rank, name))
}

/// Circles among the children of each module: strongly connected components of more than one
/// sibling.
fn circles(imports: &BTreeSet<Import>) -> Vec<(String, Vec<String>, Vec<Import>)> {
    // parent -> (child -> children it imports, with one import as the example)
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, Import>>> =
        BTreeMap::new();
    for i in imports {
        let common = i.from.iter().zip(&i.to).take_while(|(a, b)| a == b).count();
        // One is inside the other: a parent and its descendant.
        if common == i.from.len() || common == i.to.len() {
            continue;
        }
        let parent = i.from[..common].to_vec();
        graphs
            .entry(parent)
            .or_default()
            .entry(i.from[common].clone())
            .or_default()
            .entry(i.to[common].clone())
            .or_insert_with(|| i.clone());
    }
    let mut out = Vec::new();
    for (parent, graph) in graphs {
        for component in strongly_connected(&graph) {
            if component.len() < 2 {
                continue;
            }
            let members: BTreeSet<&String> = component.iter().collect();
            let arrows = component
                .iter()
                .flat_map(|a| graph.get(a).into_iter().flatten())
                .filter(|(b, _)| members.contains(b))
                .map(|(_, i)| i.clone())
                .collect();
            let name = if parent.is_empty() {
                "the crate root".to_owned()
            } else {
                parent.join("::")
            };
            out.push((name, component, arrows));
        }
    }
    out
}

/// Tarjan's algorithm over a small graph of names.
fn strongly_connected<V>(graph: &BTreeMap<String, BTreeMap<String, V>>) -> Vec<Vec<String>> {
    struct Walk<'g, V> {
        graph: &'g BTreeMap<String, BTreeMap<String, V>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    impl<'g, V> Walk<'g, V> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|m| m.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                component.sort();
                self.out.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate in a temporary directory: (relative path, contents) per file.
    fn crate_of(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let lib = dir.path().join("lib.rs");
        (dir, lib)
    }

    #[test]
    fn the_agent_passes_and_its_planted_copy_fails() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let report = check(&workspace.join("mesh-agent/src/lib.rs")).unwrap();
        assert!(report.ok(), "{}", report.render(workspace));
        planted_breaks_are_flagged(workspace).unwrap();
    }

    #[test]
    fn a_planted_upward_import_is_reported_with_its_line() {
        let (_dir, lib) = crate_of(&[
            ("lib.rs", "pub mod state;\npub mod metrics;\n"),
            (
                "state.rs",
                "pub struct State;\n\nuse crate::metrics::Registry;\n",
            ),
            (
                "metrics.rs",
                "pub struct Registry;\nuse crate::state::State;\n",
            ),
        ]);
        let report = check(&lib).unwrap();
        assert!(!report.ok());
        assert_eq!(report.upward.len(), 1, "{report:?}");
        let (i, from, to) = &report.upward[0];
        assert_eq!(
            (i.from.join("::"), i.to.join("::")),
            ("state".into(), "metrics".into())
        );
        assert_eq!((*from, *to), ("model", "telemetry"));
        assert_eq!(i.line, 3);
        // state -> metrics -> state is also a circle.
        assert_eq!(report.circles.len(), 1);
        let text = report.render(lib.parent().unwrap());
        assert!(
            text.contains("upward import: state (model) imports metrics (telemetry) at state.rs:3"),
            "{text}"
        );
    }

    #[test]
    fn downward_imports_pass_and_tests_are_left_out() {
        let (_dir, lib) = crate_of(&[
            ("lib.rs", "pub mod state;\npub mod metrics;\n"),
            (
                "state.rs",
                "pub struct State;\n#[cfg(test)]\nmod tests { use crate::metrics::Registry; }\n#[cfg(test)]\nmod more;\n",
            ),
            ("state/more.rs", "use crate::metrics::Registry;\n"),
            (
                "metrics.rs",
                "pub struct Registry(crate::state::State);\nfn f() { tracing::info!(x = ?crate::state::State); }\n",
            ),
        ]);
        let report = check(&lib).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.imports, 1);
    }

    #[test]
    fn macro_arguments_super_paths_and_path_attributes_count() {
        let (_dir, lib) = crate_of(&[
            ("lib.rs", "pub mod l7;\npub mod metrics;\n"),
            ("l7/mod.rs", "pub mod matcher;\npub mod filters;\n"),
            (
                "l7/matcher.rs",
                "use super::filters::Filter;\n#[path = \"hostname.rs\"]\nmod hostname;\n",
            ),
            (
                "l7/hostname.rs",
                "fn f() { let _ = format!(\"{}\", crate::metrics::NAME); }\n",
            ),
            ("l7/filters.rs", "use crate::l7::matcher::Rule;\n"),
            ("metrics.rs", "pub const NAME: &str = \"x\";\n"),
        ]);
        let report = check(&lib).unwrap();
        // hostname (data path) reaches metrics (telemetry) inside a macro.
        assert_eq!(report.upward.len(), 1, "{report:?}");
        assert_eq!(report.upward[0].0.from.join("::"), "l7::matcher::hostname");
        // matcher <-> filters, among l7's children.
        assert_eq!(report.circles.len(), 1, "{report:?}");
        assert_eq!(report.circles[0].0, "l7");
        assert_eq!(report.circles[0].1, ["filters", "matcher"]);
    }

    #[test]
    fn a_module_in_no_layer_is_reported() {
        let (_dir, lib) = crate_of(&[("lib.rs", "pub mod gadgets;\n"), ("gadgets.rs", "")]);
        let report = check(&lib).unwrap();
        assert!(report.unplaced.contains("gadgets"));
        assert!(!report.ok());
    }

    #[test]
    fn submodules_are_in_their_top_module_s_layer() {
        let module = |p: &str| p.split("::").map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(layer_of(&module("config")).unwrap().1, "model");
        assert_eq!(layer_of(&module("config::services")).unwrap().1, "model");
        assert_eq!(layer_of(&module("l7::inbound_h1")).unwrap().1, "data path");
        assert_eq!(layer_of(&module("runtime::apply")).unwrap().1, "surfaces");
        assert!(layer_of(&module("nowhere")).is_none());
    }
}
