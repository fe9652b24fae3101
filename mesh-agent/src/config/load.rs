//! Reading a configuration: the entry points ([`load_file`], [`check_file`], [`parse_str`],
//! [`embedded_default`]) and the two parsing passes (the shape of the document, then the
//! typed `Raw*` tree, checked section by section). The errors and the `Checker` the checks
//! report through are in `checker`.

use std::path::{Path, PathBuf};

use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

pub(super) use super::checker::PathChecks;
use super::checker::{Checker, ConfigError, ConfigErrors};
use super::{
    Config, DEFAULT_ADMIN, DEFAULT_BPFFS, DEFAULT_DRAIN_TIMEOUT, DEFAULT_OUTBOUND_PORT,
    DEFAULT_STATE_DIR, DEFAULT_TUNNEL_PORT, FailMode, HttpSettings, IdentityConfig, NodeConfig,
    RawConfig, TelemetrySettings,
};

/// The configuration compiled into the binary, used when no file is given.
const EMBEDDED_DEFAULT: &str = include_str!("../default-config.yaml");

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
            fail_mode: FailMode::Closed,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
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
