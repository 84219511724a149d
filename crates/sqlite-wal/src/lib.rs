//! Moves SQLite's checkpoints off the writer. By default the connection
//! that commits when the write-ahead log passes 1,000 pages copies the log
//! into the database and syncs it, inside whatever transaction happened to
//! commit: a fifth of the tenant's time, and a twentieth of the sync
//! process's, during a large cycle. [`Checkpointer`] runs a passive
//! checkpoint (it never blocks a writer or a reader) on a thread with its
//! own connection every [`Checkpointer::EVERY`]; the writer is set to
//! checkpoint by itself only past [`WRITER_PAGES`], for when the thread
//! cannot keep up.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The writer's own checkpoint threshold, in pages: 64 MiB of 4 KiB pages.
pub const WRITER_PAGES: i64 = 16_384;

/// A running checkpoint thread; dropping it stops the thread (and waits for it).
#[derive(Debug)]
pub struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// How often the thread checkpoints.
    pub const EVERY: Duration = Duration::from_millis(200);

    /// Raises `writer`'s own threshold to [`WRITER_PAGES`] and starts the
    /// thread on the database at `path` (in WAL mode already).
    pub fn start(writer: &rusqlite::Connection, path: &Path) -> Result<Checkpointer, rusqlite::Error> {
        writer.pragma_update(None, "wal_autocheckpoint", WRITER_PAGES)?;
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Until the checkpointer is dropped (a message, or the sender gone).
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Self::EVERY) {
                    if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(%error, "checkpoint failed; the writer checkpoints when the log grows");
                    }
                }
            })
            .map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(format!("cannot start the checkpoint thread: {e}")),
                )
            })?;
        Ok(Checkpointer { stop, thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread copies the log into the database while the writer's own
    /// threshold is far away, and stops when dropped.
    #[test]
    fn the_log_is_copied_back_by_the_thread() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("sqlite-wal-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("db.sqlite");
        let writer = rusqlite::Connection::open(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        let checkpointer = Checkpointer::start(&writer, &path)?;
        let threshold: i64 = writer.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?;
        assert_eq!(threshold, WRITER_PAGES);
        writer.execute_batch("CREATE TABLE t (v BLOB); INSERT INTO t VALUES (zeroblob(100000));")?;
        // In WAL mode the database file receives pages only at a checkpoint,
        // and the writer's own threshold is far away: only the thread can
        // grow it. Waited for generously (a loaded machine runs it late).
        let mut copied = false;
        for _ in 0..300 {
            std::thread::sleep(Duration::from_millis(100));
            if std::fs::metadata(&path)?.len() > 100_000 {
                copied = true;
                break;
            }
        }
        drop(checkpointer);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(copied, "the database file never received the log's pages");
        Ok(())
    }
}
