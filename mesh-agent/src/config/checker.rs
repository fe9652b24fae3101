//! How the checks of every section report: the errors ([`ConfigError`] with the file, line,
//! column and reason; [`ConfigErrors`], all of them), the `Checker` each section's checks are
//! methods of, and how values from the file are shown in messages. Reading and parsing are in
//! `load`; the checks themselves are in the module of each section.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use serde_saphyr::{Location, MessageFormatter, UserMessageFormatter};

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

    pub(super) fn read(path: &Path, error: std::io::Error) -> Self {
        Self::Read {
            file: path.display().to_string(),
            reason: format!("cannot read: {error}"),
            error,
        }
    }

    pub(super) fn at(file: &str, loc: Location, reason: String) -> Self {
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
    pub(super) fn checked(mut errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty());
        errors.sort_by_key(|e| (e.line().is_none(), e.line(), e.column()));
        errors.dedup_by(|a, b| a.to_string() == b.to_string());
        Self {
            errors,
            stopped_early: false,
        }
    }

    /// A structural error after which nothing else was checked.
    pub(super) fn stopped(error: ConfigError) -> Self {
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

/// Whether paths that must exist are checked against the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathChecks {
    Enabled,
    Skipped,
}

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

/// Escapes control characters so that a value from the file cannot break
/// the one-line `FILE:LINE:COLUMN: REASON` format or inject terminal codes.
pub(super) fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            // Writing to a String cannot fail.
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A value from the file, as shown in messages.
pub(super) fn quote(text: &str) -> String {
    format!("`{}`", clean(text))
}
