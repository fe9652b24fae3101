//! `hold`: opens many connections to an echo server, checks each with one echoed byte, holds
//! them idle for a while, then closes them. Prints `{"established":N,"errors":E}` once all are
//! open (tests wait for that line), then `{"held":N,"closed":N}` at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::cli::HoldArgs;
use super::output::emit;

/// The soft limit on open files raised to the hard one: one descriptor per connection.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn open_one(args: &HoldArgs) -> std::io::Result<TcpStream> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut s = TcpStream::connect_timeout(&args.connect, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"h")?;
    let mut echo = [0u8; 1];
    s.read_exact(&mut echo)?;
    Ok(s)
}

/// Returns whether every connection was established and echoed.
pub fn run(args: &HoldArgs) -> Result<bool> {
    raise_open_file_limit();
    let mut held = Vec::with_capacity(args.count);
    let mut errors = 0u64;
    let mut first_error = None;
    for _ in 0..args.count {
        match open_one(args) {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    emit(&json!({
        "established": held.len(),
        "errors": errors,
        "first_error": first_error,
    }));
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let count = held.len();
    drop(held);
    emit(&json!({"held": count, "closed": count}));
    Ok(errors == 0)
}
