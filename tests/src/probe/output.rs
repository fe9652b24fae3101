//! JSON-lines output and error descriptions shared by all subcommands.

use std::io::{self, Write};

use serde_json::{Value, json};

/// Prints one JSON object on its own line and flushes, so a test polling the
/// log file sees complete lines as soon as they are meaningful.
pub fn emit(value: &Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// `{"ok":false,"stage":..,"errno":..,"error":"EPERM: ...","kind":..}` for a
/// failed socket operation. Tests assert on errno, e.g. EPERM from a
/// cgroup/connect4 program versus ECONNREFUSED from a missing listener.
pub fn failure(stage: &str, err: &io::Error) -> Value {
    let errno = err.raw_os_error().or(match err.kind() {
        // std's connect_timeout reports its own timeout without an errno.
        io::ErrorKind::TimedOut => Some(libc::ETIMEDOUT),
        _ => None,
    });
    let error = match errno {
        Some(n) => nix::errno::Errno::from_raw(n).to_string(),
        None => err.to_string(),
    };
    json!({
        "ok": false,
        "stage": stage,
        "errno": errno,
        "error": error,
        "kind": format!("{:?}", err.kind()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_errno() {
        let v = failure("connect", &io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(v["errno"], libc::EPERM);
        assert!(v["error"].as_str().unwrap().starts_with("EPERM"));
        assert_eq!(v["ok"], false);
        let v = failure("connect", &io::Error::new(io::ErrorKind::TimedOut, "t"));
        assert_eq!(v["errno"], libc::ETIMEDOUT);
        assert_eq!(v["kind"], "TimedOut");
    }
}
