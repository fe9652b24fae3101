//! Accept loop shared by all servers: bind, count accepts, one thread per
//! connection.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::cli::ServerCommon;
use super::output::emit;

/// Accepted-connection count mirrored into a file. Written with
/// write-then-rename so readers never see a partial number; only the accept
/// loop writes it, so updates are ordered.
pub struct AcceptCounter {
    path: Option<PathBuf>,
    count: u64,
}

impl AcceptCounter {
    /// Writes "0" right away so tests can read the file once the server is up.
    pub fn new(path: Option<PathBuf>) -> Result<AcceptCounter> {
        let counter = AcceptCounter { path, count: 0 };
        counter.store()?;
        Ok(counter)
    }

    pub fn record(&mut self) -> Result<u64> {
        self.count += 1;
        self.store()?;
        Ok(self.count)
    }

    fn store(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_atomically(path, self.count.to_string().as_bytes())
    }
}

/// Write-then-rename: readers see the old or the new content, never a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Binds, prints `{"listening":"ADDR"}` and serves forever. The counter is
/// updated before the connection is handed to `handler`, so by the time a
/// client has its reply the count already includes it.
pub fn serve<H>(common: &ServerCommon, handler: H) -> Result<()>
where
    H: Fn(TcpStream) -> io::Result<()> + Clone + Send + 'static,
{
    let listener =
        TcpListener::bind(common.listen).with_context(|| format!("binding {}", common.listen))?;
    let local = listener.local_addr().context("getsockname")?;
    let mut counter = AcceptCounter::new(common.accept_count_file.clone())?;
    emit(&json!({ "listening": local.to_string() }));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                // E.g. EMFILE or ECONNABORTED: keep serving, but do not spin.
                eprintln!("accept on {local}: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        counter.record()?;
        let handler = handler.clone();
        std::thread::spawn(move || {
            if let Err(e) = handler(stream) {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_file_is_rewritten() {
        let dir = std::env::temp_dir().join(format!("mesh-probe-counter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("count");
        let mut c = AcceptCounter::new(Some(path.clone())).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0");
        c.record().unwrap();
        c.record().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2");
        assert!(!tmp_path(&path).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
