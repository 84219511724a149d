//! IdFix's uniqueness index on disk: a temporary SQLite file, so a scan's
//! memory stays flat whatever the directory's size (the in-memory index costs
//! about 0.4 KiB per object). One transaction for the whole scan; the file
//! is removed when the scan ends.

use std::path::PathBuf;

use idfix::duplicates::{Holder, IndexError, IndexStore, Slot};
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug)]
pub struct DiskIndex {
    conn: Connection,
    path: PathBuf,
    holders: u32,
}

fn err(e: rusqlite::Error) -> IndexError {
    IndexError(e.to_string())
}

impl DiskIndex {
    /// A new index in a temporary file.
    pub fn create() -> Result<DiskIndex, IndexError> {
        // The index holds directory values: a new file, the owner's only.
        let suffix = config::files::random_suffix().map_err(|e| IndexError(e.to_string()))?;
        let path = std::env::temp_dir().join(format!("idbridge-idfix-{suffix}.db"));
        config::files::create_private(&path).map_err(|e| IndexError(e.to_string()))?;
        let conn = Connection::open(&path).map_err(err)?;
        // A scratch file: no journal, no fsync, a bounded page cache (8 MiB).
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -8192; PRAGMA temp_store = FILE;
             CREATE TABLE slots (space INTEGER NOT NULL, key TEXT NOT NULL, object INTEGER NOT NULL, attribute INTEGER NOT NULL,
                                 value TEXT NOT NULL, score INTEGER NOT NULL, reported INTEGER NOT NULL,
                                 PRIMARY KEY (space, key)) WITHOUT ROWID;
             CREATE TABLE proposed (space INTEGER NOT NULL, key TEXT NOT NULL, PRIMARY KEY (space, key)) WITHOUT ROWID;
             CREATE TABLE holders (id INTEGER PRIMARY KEY, dn TEXT NOT NULL, cn TEXT NOT NULL, class TEXT NOT NULL);
             BEGIN;",
        )
        .map_err(err)?;
        Ok(DiskIndex { conn, path, holders: 0 })
    }
}

impl Drop for DiskIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl IndexStore for DiskIndex {
    fn slot(&mut self, space: u8, key: &str) -> Result<Option<Slot>, IndexError> {
        self.conn
            .prepare_cached("SELECT object, attribute, value, score, reported FROM slots WHERE space = ?1 AND key = ?2")
            .map_err(err)?
            .query_row(params![space, key], |r| {
                Ok(Slot {
                    object: r.get(0)?,
                    attribute: r.get(1)?,
                    value: r.get(2)?,
                    score: r.get(3)?,
                    reported: r.get(4)?,
                })
            })
            .optional()
            .map_err(err)
    }

    fn set_slot(&mut self, space: u8, key: &str, slot: &Slot) -> Result<(), IndexError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO slots VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
            .map_err(err)?
            .execute(params![space, key, slot.object, slot.attribute, slot.value, slot.score, slot.reported])
            .map_err(err)?;
        Ok(())
    }

    fn proposed(&mut self, space: u8, key: &str) -> Result<bool, IndexError> {
        self.conn
            .prepare_cached("SELECT 1 FROM proposed WHERE space = ?1 AND key = ?2")
            .map_err(err)?
            .query_row(params![space, key], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
            .map_err(err)
    }

    fn propose(&mut self, space: u8, key: &str) -> Result<(), IndexError> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO proposed VALUES (?1, ?2)")
            .map_err(err)?
            .execute(params![space, key])
            .map_err(err)?;
        Ok(())
    }

    fn add_holder(&mut self, holder: Holder) -> Result<u32, IndexError> {
        let id = self.holders;
        self.conn
            .prepare_cached("INSERT INTO holders VALUES (?1, ?2, ?3, ?4)")
            .map_err(err)?
            .execute(params![id, holder.dn, holder.cn, holder.class])
            .map_err(err)?;
        self.holders += 1;
        Ok(id)
    }

    fn holder(&mut self, id: u32) -> Result<Option<Holder>, IndexError> {
        self.conn
            .prepare_cached("SELECT dn, cn, class FROM holders WHERE id = ?1")
            .map_err(err)?
            .query_row(params![id], |r| Ok(Holder { dn: r.get(0)?, cn: r.get(1)?, class: r.get(2)? }))
            .optional()
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::ldif::{LdifRecord, parse_str};

    /// The disk index finds exactly what the memory index finds.
    #[test]
    fn same_findings_as_in_memory() {
        let ldif = "dn: CN=a,DC=x\nobjectClass: user\nmail: ann@x.org\nproxyAddresses: SMTP:ann@x.org\n\n\
                    dn: CN=b,DC=x\nobjectClass: user\nmail: ANN@x.org\nproxyAddresses: smtp:ann@X.org\nproxyAddresses: SMTP:bob@x.org\n\n\
                    dn: CN=c,DC=x\nobjectClass: user\nsAMAccountName: ann\nmail: ann@x.org\n\n";
        let entries: Vec<_> = parse_str(ldif)
            .unwrap()
            .into_iter()
            .filter_map(|r| if let LdifRecord::Content(e) = r { Some(e) } else { None })
            .collect();
        let mut memory = idfix::Scanner::new(idfix::Options::default());
        let mut disk = idfix::Scanner::with_index(idfix::Options::default(), Box::new(DiskIndex::create().unwrap()));
        for e in &entries {
            let (m, d) = (memory.check(e).unwrap(), disk.check(e).unwrap());
            let rows = |f: &[idfix::Finding]| f.iter().map(idfix::Finding::csv_row).collect::<Vec<_>>();
            assert_eq!(rows(&m), rows(&d));
        }
    }
}
