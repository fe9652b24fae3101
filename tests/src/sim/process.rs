//! Starting processes inside a placement, and owning them while they run.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::handles::Placement;

/// The process joins the cgroup *before* entering the netns and exec'ing, so
/// cgroup-attached programs see it from its first syscall. nsenter is used
/// instead of `ip netns exec` because the latter remounts /sys, which hides
/// the cgroup2 mount from the workload. nsenter with only --net execs in
/// place, so the child's pid is the program's pid.
const PLACE_SCRIPT: &str =
    r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec nsenter --net="$ns" -- "$@""#;

pub fn placed_command<S: AsRef<OsStr>>(
    placement: &Placement,
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(PLACE_SCRIPT)
        .arg("sh")
        .arg(&placement.cgroup)
        .arg(&placement.netns_path)
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// A running process with its stdout/stderr in files. Dropping it kills it.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    label: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Starts `cmd` with output redirected to `<log_dir>/<label>.{stdout,stderr}`.
    pub(crate) fn start(mut cmd: Command, log_dir: &Path, label: &str) -> Result<Proc> {
        let stdout_path = log_dir.join(format!("{label}.stdout"));
        let stderr_path = log_dir.join(format!("{label}.stderr"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let child = cmd
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {label}: {cmd:?}"))?;
        Ok(Proc {
            child,
            label: label.to_string(),
            stdout_path,
            stderr_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking {}", self.label))
    }

    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .with_context(|| format!("waiting for {}", self.label))
    }

    /// SIGTERM, up to 5 s grace, then SIGKILL. Idempotent.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        // Check first: signalling a reaped pid could hit an unrelated process.
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(pid, Signal::SIGKILL);
        self.wait()
    }

    /// SIGKILL (a crash: no clean-up runs), then waits.
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        self.wait()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Both logs, labelled, for printing in failing tests.
    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout ({}) ---\n{}--- {} stderr ({}) ---\n{}",
            self.label,
            self.stdout_path.display(),
            self.stdout(),
            self.label,
            self.stderr_path.display(),
            self.stderr()
        )
    }

    /// Waits until a stdout line contains `needle` (e.g. `"listening"`) and
    /// returns that line. Fails early, with the logs, if the process exits.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Only complete lines count: the writer may be mid-line.
            let out = self.stdout();
            if let Some(line) = out
                .split_inclusive('\n')
                .find(|l| l.ends_with('\n') && l.contains(needle))
            {
                return Ok(line.trim_end().to_string());
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "{} exited ({status}) before printing {needle:?}\n{}",
                    self.label,
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}\n{}",
                    self.label,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
