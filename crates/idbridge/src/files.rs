//! Files the commands write whole: through a temporary file beside the
//! target and a rename, so a crash never leaves half a file; secrets with
//! mode 0600 from the start.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `path` with `.partial` after its file name: where a new version is written first.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let tmp = partial(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))
}

/// Replaces `path` with `bytes`, atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, false)
}

/// Replaces `path` with `bytes`, atomically, readable by its owner only.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, true)
}
