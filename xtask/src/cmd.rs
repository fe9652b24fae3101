//! Running external commands: every command that changes something is printed before it runs,
//! and failures name the command and its exit status.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A command with a printable form (for logs and error messages).
pub struct Cmd {
    inner: Command,
    shown: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        let program = program.as_ref();
        Cmd {
            inner: Command::new(program),
            shown: program.to_string_lossy().into_owned(),
        }
    }

    /// `cargo`: the cargo that runs xtask (`CARGO`), else the one on PATH.
    pub fn cargo() -> Cmd {
        Cmd::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
    }

    /// A command that needs root: run directly when we are root, else through
    /// `sudo env VAR=value ... program` (sudo resets the environment otherwise).
    pub fn privileged(program: &str, env: &[(&str, &str)]) -> Cmd {
        if is_root() {
            let mut cmd = Cmd::new(program);
            for (k, v) in env {
                cmd.inner.env(k, v);
            }
            if !env.is_empty() {
                let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                cmd.shown = format!("{} {program}", vars.join(" "));
            }
            cmd
        } else {
            let mut cmd = Cmd::new("sudo");
            if !env.is_empty() {
                cmd = cmd.arg("env");
                for (k, v) in env {
                    cmd = cmd.arg(format!("{k}={v}"));
                }
            }
            cmd.arg(program)
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        let arg = arg.as_ref();
        self.shown.push(' ');
        self.shown.push_str(&arg.to_string_lossy());
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    /// Sets a variable for the child; shown in the log line.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Cmd {
        let value = value.as_ref();
        self.shown = format!("{key}={} {}", value.to_string_lossy(), self.shown);
        self.inner.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Cmd {
        self.inner.current_dir(dir);
        self
    }

    /// Runs with inherited stdio after printing the command; fails on a non-zero exit.
    pub fn run(mut self) -> Result<()> {
        eprintln!("xtask: $ {}", self.shown);
        let status = self
            .inner
            .status()
            .with_context(|| format!("cannot start `{}`", self.shown))?;
        if !status.success() {
            bail!("`{}` failed ({status})", self.shown);
        }
        Ok(())
    }

    /// Runs quietly and returns stdout; fails (with stderr in the message) on a non-zero exit.
    pub fn read(mut self) -> Result<String> {
        let out = self
            .inner
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot start `{}`", self.shown))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // RUST_BACKTRACE=1 makes rustup append a backtrace: keep only the message.
            let message = stderr.split("Stack backtrace:").next().unwrap_or_default();
            bail!(
                "`{}` failed ({}): {}",
                self.shown,
                out.status,
                message.trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like `read`, but a command that is missing or fails just gives `None` (for probes).
    pub fn probe(self) -> Option<String> {
        self.read().ok()
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Sets a variable in xtask's own environment so that every child process inherits it.
pub fn export(key: &str, value: impl AsRef<OsStr>) {
    // SAFETY: xtask is single-threaded: it spawns child processes but never threads, so nothing
    // reads the environment concurrently.
    unsafe { std::env::set_var(key, value) };
}

/// Puts cargo's bin directory (`$CARGO_HOME/bin`, else `~/.cargo/bin`), where `cargo install`
/// puts bpf-linker, first on PATH for xtask and its children.
pub fn cargo_bin_on_path() {
    let bin = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home).join("bin"),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cargo").join("bin"),
            None => return,
        },
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if dirs.first() == Some(&bin) {
        return;
    }
    dirs.insert(0, bin);
    if let Ok(joined) = std::env::join_paths(dirs) {
        export("PATH", joined);
    }
}
