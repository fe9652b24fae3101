//! The fixture of the config module's tests: a directory holding the paths that the path
//! checks look for, and a parser that expects exactly one error, where the test says.

use super::{Config, ConfigErrors, parse_str};

/// Directories and files the path checks need: `$D` in a test config is
/// replaced by the fixture's root.
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["node", "pods/web", "pods/api"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        std::fs::write(dir.path().join("netns-web"), b"").expect("netns file");
        // Content is not checked by the config: empty files will do.
        for pem in ["ca.pem", "ca-key.pem", "old-root.pem"] {
            std::fs::write(dir.path().join(pem), b"").expect("pem file");
        }
        Self { dir }
    }

    pub(super) fn root(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub(super) fn text(&self, yaml: &str) -> String {
        yaml.replace("$D", &self.root())
    }

    pub(super) fn parse(&self, yaml: &str) -> Result<Config, ConfigErrors> {
        parse_str(&self.text(yaml), "test.yaml")
    }

    /// Parses `yaml`, expecting an error at `line` whose reason contains
    /// `needle`; returns the error for further checks.
    /// Exactly one error: a single mistake must not cascade.
    #[track_caller]
    pub(super) fn fails(&self, yaml: &str, line: u64, needle: &str) -> ConfigErrors {
        let err = match self.parse(yaml) {
            Ok(cfg) => panic!("expected an error, got {cfg:?}"),
            Err(e) => e,
        };
        assert_eq!(err.len(), 1, "one mistake, one error; got:\n{err}");
        assert_eq!(err.line(), Some(line), "wrong line for: {err}");
        assert!(err.reason().contains(needle), "{needle:?} not in: {err}");
        let prefix = format!("test.yaml:{line}:");
        assert!(err.to_string().starts_with(&prefix), "bad format: {err}");
        err
    }
}

pub(super) const NODE: &str = "node:\n  name: node1\n  cgroup: $D/node\n";

pub(super) fn with_node(rest: &str) -> String {
    format!("{NODE}{rest}")
}
