//! Process logging: text or JSON lines on stderr, with a filter that the admin endpoint can
//! change while the agent runs. (Placeholder API; helper B implements it.)

use anyhow::Result;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Handle on the running filter.
#[derive(Clone)]
pub struct LogControl {
    _private: (),
}

impl LogControl {
    /// Until `init` is wired in main.rs (helper B replaces this).
    pub fn placeholder() -> LogControl {
        LogControl { _private: () }
    }

    /// The filter in force, in EnvFilter syntax.
    pub fn current(&self) -> String {
        String::new()
    }

    /// Replaces the filter; an invalid filter is an error and changes nothing.
    pub fn set(&self, filter: &str) -> Result<()> {
        let _ = filter;
        Ok(())
    }
}

/// Installs the global subscriber. An invalid `filter` falls back to "info" with a warning.
pub fn init(filter: &str, format: LogFormat) -> LogControl {
    let _ = (filter, format);
    LogControl { _private: () }
}
