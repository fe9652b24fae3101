//! Process logging: text or JSON lines on stderr, with a filter that the admin endpoint
//! (`/logging`) can change while the agent runs.
//!
//! The subscriber is a registry with two layers: a reloadable `EnvFilter` (the filter in force)
//! and a `fmt` layer that writes text or JSON. JSON lines are flat objects: `timestamp`,
//! `level`, `target`, `message` and the event's fields at the top level (no span keys).

use std::{
    cell::RefCell,
    io::{IsTerminal, Write},
    sync::{Arc, Mutex},
};

use anyhow::{Result, bail};
use tracing::Dispatch;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt::MakeWriter, layer::SubscriberExt, reload,
    util::SubscriberInitExt,
};

/// The filter used when none is given or the given one does not parse.
pub const DEFAULT_FILTER: &str = "info";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: `<time> <LEVEL> <target>: <message> key=value ...`.
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// Handle on the running filter. Cheap to clone; every clone controls the same filter.
#[derive(Clone)]
pub struct LogControl {
    inner: Arc<Inner>,
}

struct Inner {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter text as it was given (EnvFilter's own rendering reorders directives).
    current: Mutex<String>,
}

impl LogControl {
    /// The filter in force, in EnvFilter syntax.
    pub fn current(&self) -> String {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the filter; an invalid filter is an error and changes nothing.
    pub fn set(&self, filter: &str) -> Result<()> {
        let filter = filter.trim();
        let parsed = parse(filter)?;
        // Hold the lock across the reload so that `current` always names the filter in force.
        let mut current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        self.inner
            .handle
            .reload(parsed)
            .map_err(|e| anyhow::anyhow!("cannot replace the log filter: {e}"))?;
        *current = filter.to_string();
        Ok(())
    }
}

/// Parses a filter in EnvFilter syntax; an empty filter is refused (it would log nothing
/// without saying so).
fn parse(filter: &str) -> Result<EnvFilter> {
    if filter.trim().is_empty() {
        bail!("empty log filter (use e.g. \"info\" or \"off\")");
    }
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))
}

/// Builds the subscriber without installing it: `writer` receives the formatted lines. An
/// invalid `filter` falls back to [`DEFAULT_FILTER`]; the parse error is returned so that the
/// caller can log it once the subscriber is in place.
pub fn build<W>(
    filter: &str,
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> (Dispatch, LogControl, Option<String>)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (env_filter, text, warning) = match parse(filter) {
        Ok(f) => (f, filter.trim().to_string(), None),
        Err(e) => (
            EnvFilter::new(DEFAULT_FILTER),
            DEFAULT_FILTER.to_string(),
            Some(format!("{e:#}; using {DEFAULT_FILTER:?}")),
        ),
    };
    let (filter_layer, handle) = reload::Layer::new(env_filter);
    type Filtered =
        tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
    let fmt_layer: Box<dyn Layer<Filtered> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter_layer)
        .with(fmt_layer);
    let control = LogControl {
        inner: Arc::new(Inner {
            handle,
            current: Mutex::new(text),
        }),
    };
    (Dispatch::new(subscriber), control, warning)
}

thread_local! {
    /// Lines this thread's events produced while it collects them (see [`collect`]).
    static COLLECTED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `emit` with the log lines its events produce collected instead of written, and
/// returns them: a thread that logs many lines at once (the access-log writer) writes them to
/// stderr with one call instead of one per line.
pub fn collect(emit: impl FnOnce()) -> Vec<u8> {
    COLLECTED.with(|c| *c.borrow_mut() = Some(Vec::with_capacity(64 * 1024)));
    emit();
    COLLECTED.with(|c| c.borrow_mut().take().unwrap_or_default())
}

/// The process log's writer: stderr, or the calling thread's collection while it collects.
#[derive(Clone, Copy, Default)]
pub struct ProcessLog;

/// Appends `buf` to the calling thread's collection, if it is collecting.
fn collected(buf: &[u8]) -> bool {
    COLLECTED.with(|c| match c.borrow_mut().as_mut() {
        Some(lines) => {
            lines.extend_from_slice(buf);
            true
        }
        None => false,
    })
}

impl Write for ProcessLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if collected(buf) {
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if collected(buf) {
            Ok(())
        } else {
            std::io::stderr().lock().write_all(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for ProcessLog {
    type Writer = ProcessLog;
    fn make_writer(&'a self) -> ProcessLog {
        ProcessLog
    }
}

/// Installs the global subscriber writing to stderr. An invalid `filter` falls back to
/// "info" with a warning.
pub fn init(filter: &str, format: LogFormat) -> LogControl {
    let ansi = format == LogFormat::Text && std::io::stderr().is_terminal();
    let (dispatch, control, warning) = build(filter, format, ProcessLog, ansi);
    // try_init also routes the `log` crate's records (rustls, ...) through tracing.
    if let Err(e) = dispatch.try_init() {
        eprintln!("mesh-agent: cannot install the log subscriber: {e}");
    }
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    control
}

/// A writer for tests: everything written is kept in a shared buffer.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Capture(pub Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_follow_the_filter_and_the_filter_changes_at_run_time() {
        let out = Capture::default();
        let (dispatch, control, warning) = build("info", LogFormat::Text, out.clone(), false);
        assert!(warning.is_none());
        assert_eq!(control.current(), "info");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::debug!("hidden at info");
            tracing::info!(answer = 42, "shown at info");
            control.set("debug").unwrap();
            tracing::debug!("shown at debug");
        });
        let text = out.text();
        assert!(!text.contains("hidden at info"), "{text}");
        assert!(text.contains("shown at info answer=42"), "{text}");
        assert!(text.contains("DEBUG"), "{text}");
        assert!(text.contains("shown at debug"), "{text}");
        assert_eq!(control.current(), "debug");
    }

    #[test]
    fn an_invalid_filter_is_an_error_and_changes_nothing() {
        let out = Capture::default();
        let (dispatch, control, _) = build("warn", LogFormat::Text, out.clone(), false);
        for bad in ["info,foo=notalevel", "", "   ", "[{"] {
            assert!(control.set(bad).is_err(), "{bad:?} accepted");
            assert_eq!(control.current(), "warn");
        }
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("still filtered");
            tracing::warn!("still shown");
        });
        let text = out.text();
        assert!(!text.contains("still filtered") && text.contains("still shown"));
    }

    #[test]
    fn targets_can_be_switched_off() {
        let out = Capture::default();
        let (dispatch, control, _) = build("info", LogFormat::Text, out.clone(), false);
        control.set("info,access=off").unwrap();
        assert_eq!(control.current(), "info,access=off");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(target: "access", "an access line");
            tracing::info!("an ordinary line");
        });
        let text = out.text();
        assert!(!text.contains("an access line") && text.contains("an ordinary line"));
    }

    #[test]
    fn an_invalid_initial_filter_falls_back_to_info_with_a_warning() {
        let (_, control, warning) = build("x=nope", LogFormat::Text, Capture::default(), false);
        assert_eq!(control.current(), DEFAULT_FILTER);
        let warning = warning.expect("warning");
        assert!(warning.contains("x=nope"), "{warning}");
    }

    #[test]
    fn collected_lines_are_returned_instead_of_written() {
        let lines = collect(|| {
            let mut w = ProcessLog;
            w.write_all(b"one\n").unwrap();
            w.write_all(b"two\n").unwrap();
        });
        assert_eq!(lines, b"one\ntwo\n");
        // Collection ends with `collect`.
        assert!(!collected(b"x"));
    }

    #[test]
    fn json_lines_are_flat_objects() {
        let out = Capture::default();
        let (dispatch, _, _) = build("info", LogFormat::Json, out.clone(), false);
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("outer", conn = 7);
            let _enter = span.enter();
            tracing::info!(node = "node1", count = 3, "mesh-agent ready");
        });
        let text = out.text();
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect(&text);
        let obj = line.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["count", "level", "message", "node", "target", "timestamp"],
            "{text}"
        );
        assert_eq!(line["message"], "mesh-agent ready");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["count"], 3);
    }
}
