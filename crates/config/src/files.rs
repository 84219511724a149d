//! Files the commands write whole: through a temporary file beside the
//! target and a rename, so a crash never leaves half a file; secrets with
//! mode 0600 from the start.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {error}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    pub error: std::io::Error,
}

type Result<T> = std::result::Result<T, FileError>;

/// Adds the action and path to an I/O result.
trait Context<T> {
    fn on(self, action: &'static str, path: &Path) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn on(self, action: &'static str, path: &Path) -> Result<T> {
        self.map_err(|error| FileError { action, path: path.to_path_buf(), error })
    }
}

/// `path` with `.partial` after its file name: where a new version is written first.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let tmp = partial(path);
    // A leftover from an interrupted run (or something planted there, such as
    // a symbolic link to another file) is removed, never written through: the
    // new file is created fresh, so it gets this run's mode.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).on("remove the leftover", &tmp),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 }).custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).on("write", &tmp)?;
    file.write_all(bytes).on("write", &tmp)?;
    file.sync_all().on("write", &tmp)?;
    drop(file);
    std::fs::rename(&tmp, path).on("move into place", &tmp)?;
    // The rename is durable only once the directory is.
    #[cfg(unix)]
    {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).on("sync the directory", dir)?;
    }
    Ok(())
}

/// 24 random hex digits, for names nobody can guess.
pub fn random_suffix() -> Result<String> {
    let mut random = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).map_err(|_| FileError {
        action: "make a random name in",
        path: std::env::temp_dir(),
        error: std::io::Error::other("the system random number generator failed"),
    })?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new directory only this user can enter, under the system's temporary
/// directory, with an unpredictable name; never one that already existed
/// (a planted directory or link is not reused).
pub fn private_temp_dir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", random_suffix()?));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&dir).on("create", &dir)?;
    Ok(dir)
}

/// Creates `path` (which must not exist) readable by its owner only, for a
/// file that will hold secrets (password hashes, a database with keys).
pub fn create_private(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path).on("create", path)
}

/// Replaces `path` with `bytes`, atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, false)
}

/// Replaces `path` with `bytes`, atomically, readable by its owner only.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_leftover_partial_file_does_not_keep_its_mode_or_its_link() {
        let dir = std::env::temp_dir().join(format!("idbridge-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("tökén");
        // A world-readable leftover from an earlier run.
        std::fs::write(partial(&secret), b"old").unwrap();
        std::fs::set_permissions(partial(&secret), std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&secret, b"new").unwrap();
        assert_eq!(mode(&secret), 0o600);
        assert_eq!(std::fs::read(&secret).unwrap(), b"new");
        // A planted link is replaced, not followed.
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, partial(&secret)).unwrap();
        write_secret(&secret, b"newer").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&secret).unwrap(), b"newer");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
