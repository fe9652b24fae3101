//! Reading a configuration: the entry points ([`load_file`], [`check_file`], [`parse_str`],
//! [`embedded_default`]), the two parsing passes (the shape of the document, then the typed
//! `Raw*` tree), the errors ([`ConfigError`], [`ConfigErrors`]), and how the checks of every
//! section collect them (the machinery of `Checker`; the checks themselves are in the module
//! of each section).

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{Location, MessageFormatter, Spanned, UserMessageFormatter};

use super::scalars::clean;
use super::{
    Config, DEFAULT_ADMIN, DEFAULT_BPFFS, DEFAULT_OUTBOUND_PORT, DEFAULT_TUNNEL_PORT, HttpSettings,
    IdentityConfig, NodeConfig, RawConfig, TelemetrySettings,
};

/// The configuration compiled into the binary, used when no file is given.
const EMBEDDED_DEFAULT: &str = include_str!("../default-config.yaml");

/// Why a configuration could not be loaded.
///
/// Display is `FILE: cannot read: ERROR` for I/O failures,
/// `FILE:LINE:COLUMN: REASON` for problems in the content and `FILE: REASON`
/// in the rare case where the parser knows no position.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {reason}")]
    Read {
        file: String,
        /// `cannot read: <error>`, kept precomputed so that `reason()` can
        /// borrow it like for the other variants.
        reason: String,
        /// Not a `#[source]`: its text is already part of the message, and
        /// error reporters that print the chain would repeat it.
        error: std::io::Error,
    },
    /// The content is invalid at a known position.
    #[error("{file}:{line}:{column}: {reason}")]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        reason: String,
    },
    /// The content is invalid but the parser could not say where.
    #[error("{file}: {reason}")]
    Unlocated { file: String, reason: String },
}

// Accessors beyond `line` and `reason` are there for callers that present
// errors differently (editors, JSON output); the binary may not use them all.
#[allow(dead_code)]
impl ConfigError {
    /// The file (or origin name) the error is about.
    pub fn file(&self) -> &str {
        match self {
            Self::Read { file, .. } | Self::Invalid { file, .. } | Self::Unlocated { file, .. } => {
                file
            }
        }
    }

    /// 1-based line of the offending value, when the error comes from the
    /// content.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Invalid { line, .. } => Some(*line),
            Self::Read { .. } | Self::Unlocated { .. } => None,
        }
    }

    /// 1-based column of the offending value, when the error comes from the
    /// content.
    pub fn column(&self) -> Option<u64> {
        match self {
            Self::Invalid { column, .. } => Some(*column),
            Self::Read { .. } | Self::Unlocated { .. } => None,
        }
    }

    /// The message without the `FILE:LINE:COLUMN: ` prefix.
    pub fn reason(&self) -> &str {
        match self {
            Self::Read { reason, .. }
            | Self::Invalid { reason, .. }
            | Self::Unlocated { reason, .. } => reason,
        }
    }

    fn read(path: &Path, error: std::io::Error) -> Self {
        Self::Read {
            file: path.display().to_string(),
            reason: format!("cannot read: {error}"),
            error,
        }
    }

    fn at(file: &str, loc: Location, reason: String) -> Self {
        // Line 0 is the parser's "unknown location"; printing `FILE:0:0:`
        // would send the user looking for a line that does not exist.
        if loc.line() == 0 {
            Self::Unlocated {
                file: file.to_owned(),
                reason,
            }
        } else {
            Self::Invalid {
                file: file.to_owned(),
                line: loc.line(),
                column: loc.column(),
                reason,
            }
        }
    }

    pub(super) fn from_yaml(file: &str, err: &serde_saphyr::Error) -> Self {
        // The user-facing formatter omits the developer hints of the default
        // one (e.g. "set DuplicateKeyPolicy in Options"), which mean nothing
        // to someone editing a config file. It is called on the innermost
        // error because rendering entry points would append "at line X" and
        // snippets themselves, while we print the position as FILE:LINE:COL.
        let reason = clean(&UserMessageFormatter.format_message(innermost(err)));
        match err.location() {
            Some(loc) => Self::at(file, loc, reason),
            None => Self::Unlocated {
                file: file.to_owned(),
                reason,
            },
        }
    }
}

/// Every error found in one configuration, sorted by position; never empty.
///
/// The semantic checks (values, references, duplicates, paths) go on after an
/// error, so one run of `config check` lists them all. A structural error (YAML
/// syntax, an unknown key, a value of the wrong type, invalid UTF-8, an
/// unreadable file) stops parsing: it is then the only error, and
/// [`ConfigErrors::stopped_early`] says that the rest of the file was not
/// checked.
///
/// Display is one error per line, each as [`ConfigError`] shows it, so a
/// single error reads exactly like a [`ConfigError`]. `file`, `line`,
/// `column` and `reason` are those of the first error.
#[derive(Debug)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
    stopped_early: bool,
}

// Like ConfigError's accessors: for callers that present errors their own way.
#[allow(dead_code)]
impl ConfigErrors {
    /// Errors from the semantic checks, sorted by position (errors without a
    /// position last), with exact repeats removed. `errors` must not be empty.
    fn checked(mut errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty());
        errors.sort_by_key(|e| (e.line().is_none(), e.line(), e.column()));
        errors.dedup_by(|a, b| a.to_string() == b.to_string());
        Self {
            errors,
            stopped_early: false,
        }
    }

    /// A structural error after which nothing else was checked.
    fn stopped(error: ConfigError) -> Self {
        Self {
            errors: vec![error],
            stopped_early: true,
        }
    }

    /// The first error (by position).
    pub fn first(&self) -> &ConfigError {
        &self.errors[0]
    }

    /// The first error, for callers that report one reason per object
    /// (e.g. an object read from an API, rejected alone).
    pub fn into_first(self) -> ConfigError {
        self.errors
            .into_iter()
            .next()
            .expect("ConfigErrors is never empty")
    }

    /// All errors, sorted by position.
    pub fn all(&self) -> &[ConfigError] {
        &self.errors
    }

    /// How many errors there are (at least one).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false; there for the `len` lint.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether checking stopped at a structural error (YAML syntax, unknown
    /// key, wrong type, unreadable file), so that fixing it may reveal more.
    pub fn stopped_early(&self) -> bool {
        self.stopped_early
    }

    /// The file of the first error.
    pub fn file(&self) -> &str {
        self.first().file()
    }

    /// The line of the first error.
    pub fn line(&self) -> Option<u64> {
        self.first().line()
    }

    /// The column of the first error.
    pub fn column(&self) -> Option<u64> {
        self.first().column()
    }

    /// The reason of the first error.
    pub fn reason(&self) -> &str {
        self.first().reason()
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Strips the alias and snippet wrappers that only add rendering context.
fn innermost(mut err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = err
    {
        err = error;
    }
    err
}

/// Reads, parses and validates the configuration file at `path`, including
/// that the cgroup and netns paths it names exist.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes =
        std::fs::read(path).map_err(|e| ConfigErrors::stopped(ConfigError::read(path, e)))?;
    let origin = path.display().to_string();
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            return Err(ConfigErrors::stopped(not_utf8(
                &origin,
                &bytes,
                e.valid_up_to(),
            )));
        }
    };
    parse(text, &origin, PathChecks::Enabled)
}

/// Same as [`load_file`]; the entry point of the `config check` command.
pub fn check_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file(path)
}

/// Parses and validates `text`; `origin` names the source in messages.
/// Paths named by the configuration must exist, as for [`load_file`].
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    parse(text, origin, PathChecks::Enabled)
}

/// The configuration compiled into the binary: a bare-host node with no
/// peers, no workloads, no services and no authorization policies, whose CA
/// is generated in [`DEFAULT_CA_DIR`].
///
/// Paths are not checked for existence, because the binary may run on a
/// host where the default cgroup mount differs; the agent reports that when
/// it attaches. Should the embedded file ever fail to parse (a unit test
/// proves it does not), the same values are built in code instead of
/// panicking.
pub fn embedded_default() -> Config {
    parse(
        EMBEDDED_DEFAULT,
        "<embedded default-config.yaml>",
        PathChecks::Skipped,
    )
    .unwrap_or_else(|_| builtin_default())
}

/// The values of `default-config.yaml`, kept in sync by a unit test.
fn builtin_default() -> Config {
    Config {
        node: NodeConfig {
            name: "local".to_owned(),
            cgroup: PathBuf::from("/sys/fs/cgroup/unified"),
            bpffs: PathBuf::from(DEFAULT_BPFFS),
            outbound_port: DEFAULT_OUTBOUND_PORT,
            admin: DEFAULT_ADMIN,
            fast_path: false,
            address: None,
            tunnel_port: DEFAULT_TUNNEL_PORT,
        },
        nodes: Vec::new(),
        identity: IdentityConfig::default(),
        workloads: Vec::new(),
        services: Vec::new(),
        authorization: Vec::new(),
        http: HttpSettings::default(),
        http_routes: Vec::new(),
        grpc_routes: Vec::new(),
        telemetry: TelemetrySettings::default(),
        kubernetes: None,
    }
}

/// Whether paths that must exist are checked against the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathChecks {
    Enabled,
    Skipped,
}

pub(super) fn parse(text: &str, origin: &str, checks: PathChecks) -> Result<Config, ConfigErrors> {
    let mut options = serde_saphyr::Options::default();
    // Snippets are rendered by the library's own Display, which we do not
    // use; skip the work of capturing them.
    options.with_snippet = false;

    // A first pass only looks at the shape of the document. It reads the
    // whole stream, so YAML syntax errors are reported before any schema
    // error (the typed pass stops at the first unknown key, which may come
    // before a syntax error), and an empty or non-mapping document gets a
    // message that says what was expected instead of "expected mapping
    // start" or "unexpected end of file".
    let shape: Spanned<Shape> = serde_saphyr::from_str_with_options(text, options.clone())
        .map_err(|e| ConfigErrors::stopped(ConfigError::from_yaml(origin, &e)))?;
    let found = match shape.value {
        Shape::Mapping => None,
        Shape::Empty => Some("the file is empty"),
        Shape::Sequence => Some("found a list"),
        Shape::Scalar => Some("found a single value"),
    };
    if let Some(found) = found {
        // Not "stopped early": with no mapping there is nothing else to check.
        return Err(ConfigErrors::checked(vec![ConfigError::at(
            origin,
            shape.referenced,
            format!("{found}; expected a mapping with a `node` section at the top level"),
        )]));
    }

    // Serde stops at the first structural error (unknown key, wrong type):
    // the typed tree cannot be built around it. The checks on the typed tree
    // collect every error instead.
    let raw: RawConfig = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| ConfigErrors::stopped(ConfigError::from_yaml(origin, &e)))?;
    let checker = Checker::new(origin, checks);
    let config = checker.config(raw);
    checker.finish(config)
}

/// Reports invalid UTF-8 at the line and column where it starts.
fn not_utf8(origin: &str, bytes: &[u8], valid_up_to: usize) -> ConfigError {
    let valid = bytes
        .get(..valid_up_to)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
    let line = valid.matches('\n').count() as u64 + 1;
    let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
    let column = valid.get(line_start..).map_or(0, |s| s.chars().count()) as u64 + 1;
    ConfigError::Invalid {
        file: origin.to_owned(),
        line,
        column,
        reason: "the file is not valid UTF-8".to_owned(),
    }
}

/// Top-level kind of a YAML document, for the first parsing pass.
enum Shape {
    Mapping,
    Sequence,
    Scalar,
    Empty,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;

        impl<'de> de::Visitor<'de> for ShapeVisitor {
            type Value = Shape;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML document")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                // Drained so that the parser sees (and checks) the whole document.
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shape::Mapping)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shape::Sequence)
            }

            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Empty)
            }

            fn visit_none<E>(self) -> Result<Shape, E> {
                Ok(Shape::Empty)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
                d.deserialize_any(self)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_i128<E>(self, _: i128) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_u128<E>(self, _: u128) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_bytes<E>(self, _: &[u8]) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
        }

        deserializer.deserialize_any(ShapeVisitor)
    }
}

// ---------------------------------------------------------------------------
// How the checks of the sections collect errors.

/// Checks the raw tree and converts it, collecting every error.
///
/// How errors are collected: check methods return `Result<T, ConfigError>`
/// for one value. Where the parts of the file are independent (list
/// elements, sections, the fields of an object) the caller records an error
/// with [`Checker::keep`] and goes on with the next part; a list checked
/// with [`Checker::each`] records the error of every element. Anything that
/// depends on a part that failed is not checked against it (a route on a
/// broken service, a peer node compared with a broken `node:`), so that one
/// mistake gives one message. [`Checker::finish`] returns them all.
pub(super) struct Checker<'a> {
    pub(super) origin: &'a str,
    pub(super) checks: PathChecks,
    /// Errors recorded so far.
    found: RefCell<Vec<ConfigError>>,
    /// `namespace/name` of services whose definition has an error: references
    /// to them are not reported as undefined.
    pub(super) broken_services: RefCell<HashSet<String>>,
}

/// The reason of [`Checker::reported`]: never shown, as `keep` drops it.
const ALREADY_REPORTED: &str = "(see the errors reported before)";

impl<'a> Checker<'a> {
    pub(super) fn new(origin: &'a str, checks: PathChecks) -> Self {
        Self {
            origin,
            checks,
            found: RefCell::default(),
            broken_services: RefCell::default(),
        }
    }

    /// Every recorded error, plus `result`'s own, or the checked value.
    pub(super) fn finish<T>(&self, result: Result<T, ConfigError>) -> Result<T, ConfigErrors> {
        let last = self.keep(result);
        let found = self.found.take();
        match last {
            Some(value) if found.is_empty() => Ok(value),
            _ if found.is_empty() => Err(ConfigErrors::checked(vec![ConfigError::Unlocated {
                file: self.origin.to_owned(),
                reason: "invalid configuration".to_owned(),
            }])),
            _ => Err(ConfigErrors::checked(found)),
        }
    }
}

impl Checker<'_> {
    pub(super) fn err(&self, loc: Location, reason: String) -> ConfigError {
        ConfigError::at(self.origin, loc, reason)
    }

    /// Records the error of `result`, if any, and goes on.
    pub(super) fn keep<T>(&self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                if e.reason() != ALREADY_REPORTED {
                    self.found.borrow_mut().push(e);
                }
                None
            }
        }
    }

    /// The error of a part whose own errors are already recorded: it stops
    /// that part without a second message.
    pub(super) fn reported(&self) -> ConfigError {
        ConfigError::Unlocated {
            file: self.origin.to_owned(),
            reason: ALREADY_REPORTED.to_owned(),
        }
    }

    /// Checks every element, recording each error; fails (with nothing more
    /// to report) if any did.
    pub(super) fn each<I, T>(&self, items: I) -> Result<Vec<T>, ConfigError>
    where
        I: IntoIterator<Item = Result<T, ConfigError>>,
    {
        let mut out = Vec::new();
        let mut failed = false;
        for item in items {
            match self.keep(item) {
                Some(value) => out.push(value),
                None => failed = true,
            }
        }
        if failed {
            Err(self.reported())
        } else {
            Ok(out)
        }
    }

    /// How many errors are recorded: comparing counts tells whether a part
    /// checked with `keep` had errors.
    pub(super) fn errors_so_far(&self) -> usize {
        self.found.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::config::fixture::{Fixture, NODE, with_node};
    use crate::config::{AuthzAction, PeerAuthMode};

    #[test]
    fn embedded_default_parses_and_matches_builtin() {
        let parsed = parse(EMBEDDED_DEFAULT, "default-config.yaml", PathChecks::Skipped)
            .expect("embedded default-config.yaml must parse");
        assert_eq!(parsed, builtin_default());
        assert_eq!(embedded_default(), builtin_default());
    }

    /// The commented-out examples of the embedded file, un-commented, are a
    /// valid configuration that sets every documented key.
    #[test]
    fn embedded_default_examples_are_valid() {
        let mut text = String::new();
        for line in EMBEDDED_DEFAULT.lines() {
            // Example lines are `#` plus an indentation of two or more
            // spaces; prose comments have one space after the `#`.
            let line = match line.strip_prefix('#') {
                Some(rest) if rest.starts_with("  ") => rest,
                _ => line,
            };
            let mut line = line.replace("  # address:", "  address:");
            // `workloads: []` and the like become `workloads:`, followed by
            // the example items.
            if !line.starts_with(' ') && line.ends_with(": []") {
                line.truncate(line.len() - " []".len());
            }
            text.push_str(&line);
            text.push('\n');
        }
        let cfg =
            parse(&text, "examples", PathChecks::Skipped).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(cfg.node.address.is_some());
        assert_eq!(cfg.nodes.len(), 1);
        let web = &cfg.workloads[0];
        assert_eq!(web.service_account, "web");
        assert!(!web.labels.is_empty());
        assert!(web.egress.is_some() && web.ingress.is_some());
        assert_eq!(cfg.services[0].endpoints[0].node.as_deref(), Some("node2"));
        let policy = &cfg.authorization[0];
        assert!(policy.selector.is_some());
        let source = &policy.rules[0].from[0];
        assert!(!source.principals.is_empty() && !source.not_principals.is_empty());
        assert!(!source.namespaces.is_empty() && !source.not_namespaces.is_empty());
        let operation = &policy.rules[0].to[0];
        assert!(!operation.ports.is_empty() && !operation.not_ports.is_empty());
    }

    /// The example shipped in deploy/ is valid (its paths exist only on a
    /// real host, so they are not checked).
    #[test]
    fn deploy_example_is_valid() {
        let text = include_str!("../../../deploy/config/example.yaml");
        let cfg =
            parse(text, "example.yaml", PathChecks::Skipped).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.nodes.len(), 2);
        assert!(cfg.workloads.iter().any(|w| w.mode == PeerAuthMode::Strict));
        assert_eq!(cfg.authorization[0].action, AuthzAction::Allow);
    }

    #[test]
    fn skipped_path_checks_still_validate_the_rest() {
        let text = "node:\n  name: n\n  cgroup: /does/not/exist\n";
        assert!(parse(text, "t", PathChecks::Skipped).is_ok());
        assert!(parse_str(text, "t").is_err());
        let bad = "node:\n  name: N\n  cgroup: /does/not/exist\n";
        assert!(parse(bad, "t", PathChecks::Skipped).is_err());
    }

    #[test]
    fn empty_and_non_mapping_documents() {
        let fx = Fixture::new();
        fx.fails("", 1, "the file is empty");
        fx.fails("# nothing here\n", 2, "the file is empty");
        fx.fails("~\n", 1, "the file is empty");
        fx.fails(
            "- node\n",
            1,
            "found a list; expected a mapping with a `node` section",
        );
        fx.fails("hello\n", 1, "found a single value");
        fx.fails("node:\n", 1, "expected mapping");
    }

    #[test]
    fn yaml_syntax_errors() {
        let fx = Fixture::new();
        fx.fails("node:\n  name: \"n\n  cgroup: x\n", 2, "quote");
        fx.fails("node: {name: n\n", 1, "unclosed bracket");
        // The syntax error on line 2 wins over the unknown key on line 1.
        fx.fails("bogus: 1\nnode: [a\n", 2, "unclosed bracket");
        fx.fails(
            "node:\n  name: a\n  name: b\n  cgroup: $D/node\n",
            3,
            "duplicate",
        );
        fx.fails("node:\n\tname: x\n", 2, "tab");
        fx.fails("a: 1\n---\nb: 2\n", 3, "multiple");
    }

    #[test]
    fn load_file_reports_path_and_position() {
        let fx = Fixture::new();
        let path = fx.dir.path().join("config.yaml");
        std::fs::write(&path, fx.text(&with_node("fast_path: true\n"))).expect("write");
        let err = load_file(&path).expect_err("fast_path is a node key");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:4:1: unknown field `fast_path`, expected one of node, nodes, identity, workloads, services, authorization, http, http_routes, grpc_routes, telemetry, kubernetes",
                path.display()
            )
        );
        assert_eq!(err.file(), path.display().to_string());

        std::fs::write(&path, fx.text(NODE)).expect("write");
        let cfg = check_file(&path).expect("valid");
        assert_eq!(cfg.node.name, "node1");
    }

    #[test]
    fn load_file_read_errors() {
        let fx = Fixture::new();
        let path = fx.dir.path().join("missing.yaml");
        let err = load_file(&path).expect_err("missing file");
        assert_eq!(err.line(), None);
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read: ", path.display())),
            "{shown}"
        );
        assert!(err.reason().starts_with("cannot read: "));
        assert!(matches!(err.first(), ConfigError::Read { .. }));
        assert!(err.stopped_early());

        let err = load_file(fx.dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn load_file_rejects_invalid_utf8() {
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        file.write_all(b"node:\n  name: a\xffb\n").expect("write");
        let err = load_file(file.path()).expect_err("invalid UTF-8");
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.column(), Some(10));
        assert!(err.reason().contains("not valid UTF-8"));
    }

    #[test]
    fn garbage_input_never_panics() {
        let inputs = [
            "\u{0}",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            "&a [*a]",
            "node: *unknown",
            "? [a]\n: b",
            "node: !!binary AAAA",
            "node:\n  name: n\n  cgroup: /\n  fast_path: maybe\n",
            "\u{feff}node: {}",
        ];
        for input in inputs {
            assert!(parse_str(input, "t").is_err(), "{input:?} should fail");
        }
        let deep = "[".repeat(100_000);
        assert!(parse_str(&deep, "t").is_err());
    }
}
