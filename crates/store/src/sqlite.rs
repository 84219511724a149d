//! The sync store in one SQLite file (WAL), one writer at a time.

use std::collections::HashMap;
use std::path::Path;

use directory::{Anchor, Dn, ObjectKind};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value as Json, json};
use sync::engine::{
    ConnectorSpace, CsRead, CycleReport, EncodedCs, EncodedMv, ExportLog, MemberChanges, Metaverse, MvAttrsRead,
    MvRecord, Projected, StoreError, Transactional,
};
use sync::mapping::{Flavor, Projection};
use sync::{SourceId, SourceObject, Watermark};

use crate::{Counts, ErrorRow, History, JoinedRow, RunRow, RunSummary, err, kind_from, kind_str, now, pack};

/// A tenant id as the exported table keeps it: a canonical UUID (what the
/// tenant gives) as its 16 bytes — 20 fewer than the text, on every
/// exported object — and any other id as text.
fn tenant_id_value(id: &str) -> rusqlite::types::Value {
    match uuid_bytes(id) {
        Some(bytes) => rusqlite::types::Value::Blob(bytes.to_vec()),
        None => rusqlite::types::Value::Text(id.to_string()),
    }
}

/// The 16 bytes of a lowercase, hyphenated UUID; `None` for anything else
/// (which is then kept as text, so it reads back the same).
fn uuid_bytes(id: &str) -> Option<[u8; 16]> {
    let bytes = id.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes.get(i) != Some(&b'-')) {
        return None;
    }
    let hex: Vec<u8> = bytes.iter().copied().filter(|b| *b != b'-').collect();
    let mut out = [0u8; 16];
    for (slot, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let &[high, low] = pair.first_chunk::<2>()?;
        *slot = (digit(high)? << 4) | digit(low)?;
    }
    Some(out)
}

/// A tenant id column written by [`tenant_id_value`].
fn tenant_id(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<String> {
    use std::fmt::Write as _;
    match row.get_ref(column)? {
        rusqlite::types::ValueRef::Blob(b) if b.len() == 16 => {
            let mut text = String::with_capacity(36);
            for (i, byte) in b.iter().enumerate() {
                if [4, 6, 8, 10].contains(&i) {
                    text.push('-');
                }
                let _ = write!(text, "{byte:02x}");
            }
            Ok(text)
        }
        other => other
            .as_str()
            .map(str::to_string)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, other.data_type(), Box::new(e))),
    }
}

/// A packed record column (see [`pack`]): a BLOB, or TEXT when written
/// before records were compressed.
fn packed(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Vec<u8>> {
    let value = row.get_ref(column)?;
    value
        .as_bytes()
        .map(<[u8]>::to_vec)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, value.data_type(), Box::new(e)))
}

const SCHEMA_V1: &str = "
CREATE TABLE sources (name TEXT PRIMARY KEY, watermark TEXT, config_hash TEXT);
CREATE TABLE cs (
    source TEXT NOT NULL,
    id BLOB NOT NULL,
    dn TEXT NOT NULL,
    dn_norm TEXT NOT NULL,
    kind TEXT NOT NULL,
    anchor BLOB NOT NULL,
    entry TEXT NOT NULL,
    pending INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, id)
);
CREATE INDEX cs_dn ON cs(source, dn_norm);
CREATE INDEX cs_pending ON cs(source) WHERE pending = 1;
-- DN-valued references (manager, member) of each object, to find who points where
-- (schema version 6 keeps a key of each DN instead: cs_ref_keys).
CREATE TABLE cs_refs (source TEXT NOT NULL, id BLOB NOT NULL, ref_dn_norm TEXT NOT NULL);
CREATE INDEX cs_refs_target ON cs_refs(ref_dn_norm, source);
CREATE INDEX cs_refs_owner ON cs_refs(source, id);
CREATE TABLE mv (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    anchor TEXT NOT NULL,
    attrs TEXT NOT NULL,
    manager TEXT,
    members TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    dirty INTEGER NOT NULL,
    source TEXT NOT NULL,
    cs_id BLOB NOT NULL,
    dn_norm TEXT NOT NULL
);
CREATE UNIQUE INDEX mv_link ON mv(source, cs_id);
CREATE INDEX mv_dn ON mv(source, dn_norm);
CREATE INDEX mv_dirty ON mv(dirty) WHERE dirty = 1;
CREATE TABLE exported (mv_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, resource TEXT NOT NULL);
CREATE TABLE errors (mv_id TEXT PRIMARY KEY, stage TEXT NOT NULL, message TEXT NOT NULL, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, attempts INTEGER NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, finished TEXT NOT NULL, status TEXT NOT NULL, report TEXT NOT NULL);
";

/// Joins: a source object linked to a metaverse object projected
/// by another source, with the attributes it contributes and which of them
/// win over the projecting source's.
const SCHEMA_V2: &str = "
CREATE TABLE joins (source TEXT NOT NULL, cs_id BLOB NOT NULL, mv_id TEXT NOT NULL, attrs TEXT NOT NULL, authoritative TEXT NOT NULL, PRIMARY KEY (source, cs_id));
CREATE INDEX joins_mv ON joins(mv_id);
";

/// Users whose password the tenant has not confirmed yet (password hash
/// sync). Ids only: the secret itself is never stored.
const SCHEMA_V3: &str = "
CREATE TABLE phs_pending (source TEXT NOT NULL, cs_id BLOB NOT NULL, PRIMARY KEY (source, cs_id)) WITHOUT ROWID;
";

/// The mapping flavour each source's last cycle ran with.
const SCHEMA_V4: &str = "
ALTER TABLE sources ADD COLUMN flavor TEXT;
";

/// The page cache, in SQLite's notation (negative: KiB).
const CACHE_KIB: i64 = -128 * 1024;

/// Statements kept prepared: more than the store has, so none is parsed twice.
const STATEMENT_CACHE: usize = 128;

/// Metaverse attributes and members are packed (see [`pack`]) like entries
/// and exported resources: the join indexes on `json_extract(attrs)` could
/// not read them and are dropped (see [`legacy_join_indexes`]); joins look
/// values up in `mv_join_keys` since version 7.
const SCHEMA_V5: &str = "SELECT 1;";

/// References keep a 64-bit key of the DN they point at instead of the DN
/// (see [`crate::ref_key`]); `ref_key()` is the same function in SQL.
const SCHEMA_V6: &str = "
CREATE TABLE cs_ref_keys (source TEXT NOT NULL, id BLOB NOT NULL, ref_key INTEGER NOT NULL, PRIMARY KEY (source, id, ref_key)) WITHOUT ROWID;
INSERT OR IGNORE INTO cs_ref_keys(source, id, ref_key) SELECT source, id, ref_key(ref_dn_norm) FROM cs_refs;
DROP TABLE cs_refs;
CREATE INDEX cs_ref_keys_target ON cs_ref_keys(ref_key, source);
";

/// Join keys: every value (lower case) of each metaverse attribute some
/// source joins on, so a join on a multi-valued attribute (proxyAddresses)
/// is a lookup too. An attribute's keys are built the first time a join
/// asks for it (`mv_join_attrs` lists those), then kept with the metaverse.
const SCHEMA_V7: &str = "
CREATE TABLE IF NOT EXISTS mv_join_attrs (attr TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mv_join_keys (attr TEXT NOT NULL, value TEXT NOT NULL, mv_id TEXT NOT NULL, PRIMARY KEY (attr, value, mv_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mv_join_keys_by_mv ON mv_join_keys(mv_id);
";

/// The precedence of the rule behind each attribute, of the projecting
/// object and of each joined one (precedence across sources). Every source's
/// next cycle is a full one, so every object gets its precedences.
const SCHEMA_V8: &str = "
ALTER TABLE mv ADD COLUMN precedence TEXT NOT NULL DEFAULT '{}';
ALTER TABLE joins ADD COLUMN precedence TEXT NOT NULL DEFAULT '{}';
UPDATE sources SET config_hash = NULL;
";

/// The manager and members a joined object gives (`sync::engine::JoinedRefs`
/// as JSON; `{}`: none).
const SCHEMA_V9: &str = "
ALTER TABLE joins ADD COLUMN refs TEXT NOT NULL DEFAULT '{}';
";

/// Groups synced by difference: `cs.delta_ok` — a group whose references
/// are all members (no manager); `cs.members_only` — its pending changes
/// are member changes only, listed in `cs_member_changes` (normalized DNs,
/// added or removed) until it is synced; `mv.members_only` — a dirty
/// metaverse object's changes are member changes only, listed in
/// `mv_member_changes` (metaverse ids) until the tenant confirms them;
/// `mv_member_log` and `exported_member_log` — member changes of the
/// metaverse object and those the tenant confirmed, not yet folded into
/// `mv.members` and the group's resource (see `FOLD_MEMBER_LOG`).
const SCHEMA_V10: &str = "
ALTER TABLE cs ADD COLUMN delta_ok INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cs ADD COLUMN members_only INTEGER NOT NULL DEFAULT 0;
CREATE TABLE cs_member_changes (source TEXT NOT NULL, id BLOB NOT NULL, dn_norm TEXT NOT NULL, added INTEGER NOT NULL, PRIMARY KEY (source, id, dn_norm)) WITHOUT ROWID;
ALTER TABLE mv ADD COLUMN members_only INTEGER NOT NULL DEFAULT 0;
CREATE TABLE mv_member_changes (mv_id TEXT NOT NULL, member TEXT NOT NULL, added INTEGER NOT NULL, PRIMARY KEY (mv_id, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mv_member_log (mv_id TEXT NOT NULL, member TEXT NOT NULL, added INTEGER NOT NULL, PRIMARY KEY (mv_id, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS exported_member_log (mv_id TEXT NOT NULL, tenant_id TEXT NOT NULL, added INTEGER NOT NULL, PRIMARY KEY (mv_id, tenant_id)) WITHOUT ROWID;
";

/// A large group's member values apart from its entry, in chunks cut by
/// content (see `member_chunks`): `cs.member_chunks` lists their digests in
/// order (empty: the entry holds its members). A rowid table: a chunk is
/// kilobytes.
const SCHEMA_V11: &str = "
ALTER TABLE cs ADD COLUMN member_chunks BLOB NOT NULL DEFAULT x'';
CREATE TABLE cs_member_chunks (source TEXT NOT NULL, id BLOB NOT NULL, digest BLOB NOT NULL, attr TEXT NOT NULL, members BLOB NOT NULL, PRIMARY KEY (source, id, digest));
";

/// A smaller store (about 230 bytes less per object):
/// - precedences interned: an object's precedences (which rule gave each
///   attribute) are the same for almost every object of a kind, and as JSON
///   they were ~180 bytes of every metaverse row. Rows now hold the id of a
///   `precedences` row (as text). Readers take
///   `COALESCE((SELECT text FROM precedences WHERE id = precedence), precedence)`,
///   so a row still holding the JSON reads the same;
/// - the connector space's normalized DN is no longer a column: its index
///   is on `ref_key(dn_norm(dn))` (deterministic functions registered on
///   every connection), and the metaverse's on `ref_key(dn_norm)` (see
///   `CS_BY_DN`);
/// - `exported` is keyed by metaverse id alone (WITHOUT ROWID), without a
///   second index beside it.
const SCHEMA_V12: &str = "
CREATE TABLE precedences (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
INSERT OR IGNORE INTO precedences(text) SELECT DISTINCT precedence FROM mv WHERE precedence LIKE '{%';
INSERT OR IGNORE INTO precedences(text) SELECT DISTINCT precedence FROM joins WHERE precedence LIKE '{%';
UPDATE mv SET precedence = (SELECT p.id FROM precedences p WHERE p.text = mv.precedence) WHERE precedence LIKE '{%';
UPDATE joins SET precedence = (SELECT p.id FROM precedences p WHERE p.text = joins.precedence) WHERE precedence LIKE '{%';
DROP INDEX cs_dn;
ALTER TABLE cs DROP COLUMN dn_norm;
CREATE INDEX cs_dn ON cs(source, ref_key(dn_norm(dn)));
DROP INDEX mv_dn;
CREATE INDEX mv_dn ON mv(source, ref_key(dn_norm));
CREATE TABLE exported_by_mv (mv_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, resource TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO exported_by_mv(mv_id, tenant_id, resource) SELECT mv_id, tenant_id, resource FROM exported;
DROP TABLE exported;
ALTER TABLE exported_by_mv RENAME TO exported;
";

/// Schema version 13: the reference keys live in one B-tree, keyed by the
/// target (`ref_key`, then the owner). An owner's own keys are not looked up
/// in the table any more — they are those of its stored entry (`ref_keys`),
/// read when the entry is replaced or its row removed — so the second index
/// (~125 bytes per object) is gone.
const SCHEMA_V13: &str = "
CREATE TABLE cs_refs_by_key (ref_key INTEGER NOT NULL, source TEXT NOT NULL, id BLOB NOT NULL, PRIMARY KEY (ref_key, source, id)) WITHOUT ROWID;
INSERT OR IGNORE INTO cs_refs_by_key(ref_key, source, id) SELECT ref_key, source, id FROM cs_ref_keys;
DROP TABLE cs_ref_keys;
ALTER TABLE cs_refs_by_key RENAME TO cs_ref_keys;
";

/// Digits of metaverse ids, in ASCII order: ids of one length sort as the
/// numbers they spell.
const MV_ID_DIGITS: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// Digits in a metaverse id: 128 bits, six per digit.
const MV_ID_LEN: u32 = 22;

/// A new metaverse id: the time first (48 bits of milliseconds), then 80
/// random bits, written as 22 digits of [`MV_ID_DIGITS`]. New ids sort
/// together, so the indexes keyed by metaverse id (mv, exported, joins) grow
/// at one end during a full cycle instead of dirtying a page anywhere for
/// every object. 22 characters rather than 32 hex digits: an id is stored
/// about four times per object (the row, its key index, `exported`, a
/// manager or member), so this is ~40 bytes per object. Ids made before
/// (32 hex digits) stay valid: an id is only ever compared whole.
///
/// The 80 bits need to be unique, not secret (the id stays in the sync
/// store; the tenant knows objects by their anchor): they come from a
/// sequence per thread that starts at a random point and adds an odd
/// constant, which repeats only after 2^80 ids, rather than from a system
/// call per id (2 % of the sync stage's thread).
fn new_mv_id() -> Result<String, StoreError> {
    const LOW_80: u128 = (1 << 80) - 1;
    /// Odd, so the sequence visits all 2^80 values before it repeats.
    const STEP: u128 = 0x9e37_79b9_7f4a_7c15_f39d;
    thread_local! {
        static SEQUENCE: std::cell::Cell<Option<u128>> = const { std::cell::Cell::new(None) };
    }
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() & 0xffff_ffff_ffff);
    let previous = match SEQUENCE.get() {
        Some(previous) => previous,
        None => {
            use rand_core::RngCore;
            let mut seed = [0u8; 16];
            rand_core::OsRng.try_fill_bytes(&mut seed).map_err(|e| StoreError(format!("random metaverse id: {e}")))?;
            u128::from_be_bytes(seed)
        }
    };
    let random = previous.wrapping_add(STEP) & LOW_80;
    SEQUENCE.set(Some(random));
    let number = (millis << 80) | random;
    Ok((0..MV_ID_LEN)
        .rev()
        .map(|digit| {
            let value = (number >> (6 * digit)) & 63;
            char::from(MV_ID_DIGITS.get(value as usize).copied().unwrap_or(b'-'))
        })
        .collect())
}

/// Lookups by DN. The DN indexes hold a 64-bit key of the normalized DN
/// (`ref_key`, as the reference table does) rather than the DN — 8 bytes
/// instead of ~50 per row; the DN is then compared, so a key shared by two
/// DNs only costs a row read. (`+` keeps SQLite from putting the DN it is
/// compared with into the key expression, which would hide the index.)
const CS_BY_DN: &str =
    "SELECT id FROM cs WHERE source = ?1 AND ref_key(dn_norm(dn)) = ref_key(?2) AND dn_norm(dn) = ?2 AND deleted = 0";
const MV_BY_DN: &str =
    "SELECT id FROM mv WHERE source = ?1 AND ref_key(dn_norm) = ref_key(?2) AND +dn_norm = ?2 AND deleted = 0";
/// Live metaverse objects for a JSON list of normalized DNs. CROSS JOIN
/// fixes the order: without it the planner scans `mv` per list item.
const MV_BY_DNS: &str = "SELECT m.id FROM json_each(?2) j CROSS JOIN mv m
    ON m.source = ?1 AND ref_key(m.dn_norm) = ref_key(j.value) AND +m.dn_norm = j.value AND m.deleted = 0";
/// DNs as the JSON array of normalised DNs the statements above take.
fn dn_list(dns: &[Dn]) -> String {
    Json::Array(dns.iter().map(|d| Json::String(d.normalized())).collect()).to_string()
}

/// The positions in the list of the DNs `MV_BY_DNS` does not find.
const MV_UNRESOLVED: &str = "SELECT j.key FROM json_each(?2) j WHERE NOT EXISTS(SELECT 1 FROM mv m
    WHERE m.source = ?1 AND ref_key(m.dn_norm) = ref_key(j.value) AND +m.dn_norm = j.value AND m.deleted = 0)";
/// The same, deleted ones included.
const MV_BY_DNS_ANY: &str = "SELECT m.id FROM json_each(?2) j CROSS JOIN mv m
    ON m.source = ?1 AND ref_key(m.dn_norm) = ref_key(j.value) AND +m.dn_norm = j.value";
/// A source's live objects, read in table order: through the primary-key
/// index each row was a seek to a random page — at a million objects most
/// of them past the cache, a seventh of the import's store thread when a
/// full import looks for what it did not see.
const CS_LIVE_IN_TABLE_ORDER: &str = "SELECT id, dn FROM cs NOT INDEXED WHERE source = ?1 AND deleted = 0";
const JOINED_BY_DN: &str = "SELECT j.mv_id FROM cs c JOIN joins j ON j.source = c.source AND j.cs_id = c.id
    WHERE c.source = ?1 AND ref_key(dn_norm(c.dn)) = ref_key(?2) AND dn_norm(c.dn) = ?2 AND c.deleted = 0";

const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8, SCHEMA_V9, SCHEMA_V10,
    SCHEMA_V11, SCHEMA_V12, SCHEMA_V13,
];

/// A connector-space row as read: kind, anchor, packed entry, member chunk
/// digests, deleted.
type CsRow = (String, Vec<u8>, Vec<u8>, Vec<u8>, bool);

/// A metaverse row as read: kind, anchor, packed attributes, manager,
/// packed members, deleted.
type MvRow = (String, String, Vec<u8>, Option<String>, Vec<u8>, bool);

/// `DROP INDEX` for each metaverse index of an older schema whose name is
/// like `pattern` (the join indexes of versions before 5 and before 7).
fn legacy_join_indexes(conn: &Connection, pattern: &str) -> Result<String, StoreError> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'mv' AND name LIKE ?1 ESCAPE '\\'")
        .map_err(err)?;
    let names = stmt.query_map([pattern], |r| r.get::<_, String>(0)).map_err(err)?;
    let mut sql = String::new();
    for name in names {
        let name = name.map_err(err)?;
        sql.push_str(&format!("DROP INDEX \"{}\";", name.replace('"', "\"\"")));
    }
    Ok(sql)
}

/// SQL functions of the store: `ref_key(dn_norm)` (for migrating to schema
/// version 6), and `unpack_json(x)`: the JSON text of a packed column (TEXT passes through),
/// so SQL can read into metaverse attributes. Deterministic: join indexes use it.
fn register_functions(conn: &Connection) -> Result<(), StoreError> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("ref_key", 1, flags, |ctx| Ok(crate::ref_key(&ctx.get::<String>(0)?))).map_err(err)?;
    // A stored DN always parses (it was written from a parsed one); anything
    // else is kept as it is.
    conn.create_scalar_function("dn_norm", 1, flags, |ctx| {
        let text = ctx.get::<String>(0)?;
        Ok(Dn::parse(&text).map(|d| d.normalized()).unwrap_or(text))
    })
    .map_err(err)?;
    conn.create_scalar_function("unpack_json", 1, flags, |ctx| match ctx.get_raw(0) {
        ValueRef::Null => Ok(None),
        ValueRef::Text(text) | ValueRef::Blob(text) => {
            pack::unpack(text).map(Some).map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
        }
        other => Err(rusqlite::Error::InvalidFunctionParameterType(0, other.data_type())),
    })
    .map_err(err)
}

/// The sync store in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// No joins exist: exports skip looking for joined contributions.
    no_joins: bool,
    /// The metaverse attributes whose join keys are kept (`mv_join_attrs`).
    join_attrs: Vec<String>,
    /// Interned precedences (JSON text → id as stored) this writer has
    /// looked up or written; emptied on rollback, which may undo an insert.
    precedence_ids: HashMap<String, String>,
    /// A writer's checkpoints, on a thread of their own.
    _checkpointer: Option<sqlite_wal::Checkpointer>,
    /// Held while this store may write (see [`SqliteStore::open`]).
    _lock: Option<StateLock>,
}

/// An exclusive lock on `<state>.lock` beside the state file, holding the
/// process id of its holder. The operating system releases it when the
/// file is closed or the process dies (even by `kill -9`): a stale lock
/// cannot block a restart.
#[derive(Debug)]
struct StateLock {
    _file: std::fs::File,
}

fn lock_state(path: &Path) -> Result<StateLock, StoreError> {
    use std::io::{Read, Seek, Write};
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file =
        options.open(&lock_path).map_err(|e| StoreError(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the message another process shows.
            let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id()));
            Ok(StateLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(StoreError(format!(
                "the sync state {} is in use by another idbridge process (pid {}): a sync daemon or a preview. Two writers would corrupt each other's cycles; stop the other first (`sync status`, `history`, `errors` and `explain` work alongside it)",
                path.display(),
                holder.trim()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError(format!("cannot lock {}: {e}", lock_path.display()))),
    }
}

impl SqliteStore {
    /// The id (as stored) of these precedences in `precedences`, interned
    /// on first use.
    fn precedence_id(&mut self, precedence: &sync::rules::Precedences) -> Result<String, StoreError> {
        let text = crate::precedence_text(precedence);
        if let Some(id) = self.precedence_ids.get(&text) {
            return Ok(id.clone());
        }
        self.exec("INSERT OR IGNORE INTO precedences(text) VALUES(?1)", params![text]).map_err(err)?;
        let id: i64 =
            self.query_one("SELECT id FROM precedences WHERE text = ?1", params![text], |r| r.get(0)).map_err(err)?;
        let id = id.to_string();
        self.precedence_ids.insert(text, id.clone());
        Ok(id)
    }

    /// A connector-space group's stored member chunks with these digests.
    fn member_chunks(
        &self,
        source: &str,
        id: &SourceId,
        digests: &[crate::member_chunks::Digest],
    ) -> Result<Vec<crate::StoredChunk>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT attr, members FROM cs_member_chunks WHERE source = ?1 AND id = ?2 AND digest = ?3")
            .map_err(err)?;
        let mut chunks = Vec::with_capacity(digests.len());
        for digest in digests {
            let row: Option<(String, Vec<u8>)> = stmt
                .query_row(params![source, id.0, digest.as_slice()], |r| Ok((r.get(0)?, packed(r, 1)?)))
                .optional()
                .map_err(err)?;
            if let Some((attr, members)) = row {
                chunks.push(crate::stored_chunk(digest, attr, &members)?);
            }
        }
        Ok(chunks)
    }

    /// A metaverse object's members: the stored list (JSON text) with the
    /// changes logged since put in.
    fn members_with_log(&self, mv: &str, members: &str) -> Result<Vec<String>, StoreError> {
        let members: Vec<String> = serde_json::from_str(members).map_err(err)?;
        let mut stmt =
            self.conn.prepare_cached("SELECT member, added FROM mv_member_log WHERE mv_id = ?1").map_err(err)?;
        let rows = stmt.query_map(params![mv], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))).map_err(err)?;
        Ok(crate::members_with_log(members, rows.collect::<Result<_, _>>().map_err(err)?))
    }

    /// A group's resource as last confirmed: the stored one (JSON text)
    /// with the member changes logged since put in.
    fn with_member_log(&self, mv: &str, resource: &str) -> Result<String, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT tenant_id, added FROM exported_member_log WHERE mv_id = ?1")
            .map_err(err)?;
        let rows = stmt.query_map(params![mv], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))).map_err(err)?;
        crate::apply_member_changes(resource, &rows.collect::<Result<_, _>>().map_err(err)?)
    }

    /// The process id holding the state's write lock, if one does.
    pub fn writer(path: &Path) -> Option<String> {
        use std::io::Read;
        let mut name = path.file_name()?.to_os_string();
        name.push(".lock");
        let mut file = std::fs::File::open(path.with_file_name(name)).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Some(pid.trim().to_string())
            }
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }

    /// Opens the store to run cycles: only one process at a time may (an
    /// exclusive lock beside the file; a second gets an error naming the first).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let lock = lock_state(path)?;
        let mut store = Self::open_unlocked(path)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// Opens the store to read it (status, history, errors, explain) while
    /// a daemon may be running: no lock, a read-only connection. A store
    /// that does not exist yet reads as empty (an empty store in memory:
    /// taking the write lock to create it could refuse a daemon starting at
    /// the same moment); one that needs a newer schema is upgraded as by
    /// [`SqliteStore::open`] first, and the writer's lock let go before
    /// reading (held, it would refuse a daemon starting meanwhile, and
    /// `writer` would name this very process).
    pub fn open_for_reading(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Self::open_in_memory();
        }
        let read_only = || {
            Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))
        };
        let conn = read_only()?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(err)?;
        if usize::try_from(version).map_err(err)? < MIGRATIONS.len() {
            drop(conn);
            drop(Self::open(path)?);
            return Self::with(read_only()?);
        }
        Self::with(conn)
    }

    fn open_unlocked(path: &Path) -> Result<SqliteStore, StoreError> {
        // Connector spaces hold the directory's data: a new store is the owner's only.
        #[cfg(unix)]
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", path.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        // A cycle touches every index of a large store: with SQLite's default
        // 2 MiB cache most page reads became system calls.
        conn.pragma_update(None, "cache_size", CACHE_KIB).map_err(err)?;
        let checkpointer = sqlite_wal::Checkpointer::start(&conn, path).map_err(err)?;
        let mut store = Self::with(conn)?;
        store._checkpointer = Some(checkpointer);
        Ok(store)
    }

    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        Self::with(Connection::open_in_memory().map_err(err)?)
    }

    fn with(conn: Connection) -> Result<SqliteStore, StoreError> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(err)?;
        let version = usize::try_from(version).map_err(err)?;
        if version > MIGRATIONS.len() {
            return Err(StoreError(format!(
                "the sync store has schema version {version}, newer than this idbridge; upgrade idbridge"
            )));
        }
        register_functions(&conn)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            // Join indexes of older versions: on JSON text (5), one expression index per attribute (7).
            let extra = match i + 1 {
                5 => legacy_join_indexes(&conn, "mv\\_join\\_%")?,
                7 => legacy_join_indexes(&conn, "mv\\_key\\_%")?,
                _ => String::new(),
            };
            conn.execute_batch(&format!("BEGIN; {sql} {extra} PRAGMA user_version = {}; COMMIT;", i + 1))
                .map_err(err)?;
        }
        let any_join: bool = conn.query_row("SELECT EXISTS(SELECT 1 FROM joins)", [], |r| r.get(0)).map_err(err)?;
        let join_attrs = {
            let mut stmt = conn.prepare("SELECT attr FROM mv_join_attrs ORDER BY attr").map_err(err)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)?
        };
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(SqliteStore {
            conn,
            no_joins: !any_join,
            join_attrs,
            precedence_ids: HashMap::new(),
            _checkpointer: None,
            _lock: None,
        })
    }

    /// Keeps the join keys of metaverse object `mv` in step with its
    /// attributes (nothing to do while no source joins).
    fn keep_join_keys(&self, mv: &str) -> Result<(), StoreError> {
        if self.join_attrs.is_empty() {
            return Ok(());
        }
        self.exec("DELETE FROM mv_join_keys WHERE mv_id = ?1", params![mv]).map_err(err)?;
        for attr in &self.join_attrs {
            self.exec(
                "INSERT OR IGNORE INTO mv_join_keys(attr, value, mv_id)
                 SELECT ?1, lower(j.value), mv.id FROM mv, json_each(unpack_json(mv.attrs), '$.' || ?1) j
                 WHERE mv.id = ?2 AND j.type IN ('text', 'integer', 'real')",
                params![attr, mv],
            )
            .map_err(err)?;
        }
        Ok(())
    }

    /// `cs_put`, with the entry and reference keys made ahead when `encoded`.
    fn put_cs(&mut self, source: &str, object: &SourceObject, encoded: Option<EncodedCs>) -> Result<(), StoreError> {
        let (packed_entry, ref_keys, dn) = match encoded {
            Some(EncodedCs { entry, ref_keys, dn }) => (entry, Some(ref_keys), dn),
            None => (None, None, object.entry.dn.to_string()),
        };
        let incoming = crate::incoming_encoded(object, packed_entry)?;
        let kind = kind_str(object.kind);
        let delta_ok = crate::members_by_difference(object);
        let old: Option<crate::StoredCs> = self
            .query_one(
                "SELECT entry, member_chunks, anchor, kind, pending, members_only, deleted FROM cs WHERE source = ?1 AND id = ?2",
                params![source, object.id.0],
                |r| {
                    Ok(crate::StoredCs {
                        entry: packed(r, 0)?,
                        member_chunks: r.get(1)?,
                        anchor: r.get(2)?,
                        kind: r.get(3)?,
                        pending: r.get(4)?,
                        members_only: r.get(5)?,
                        deleted: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(err)?;
        let load = |digests: &[crate::member_chunks::Digest]| self.member_chunks(source, &object.id, digests);
        let member_changes = match crate::classify_put(old.as_ref(), &incoming, object, &load)? {
            crate::Put::Unchanged => return Ok(()),
            crate::Put::Whole => None,
            crate::Put::Members(added, removed) => Some((added, removed)),
        };
        // The keys the table holds for this object: those of the stored
        // entry (read before its member chunks are rewritten below).
        let stored_keys = match (&old, &member_changes) {
            (Some(before), None) => crate::stored_entry(&before.entry, &before.member_chunks, &load)?
                .map(|entry| crate::ref_keys(&entry))
                .unwrap_or_default(),
            _ => std::collections::BTreeSet::new(),
        };
        self.exec(
            "INSERT INTO cs(source, id, dn, kind, anchor, entry, pending, deleted, delta_ok, members_only, member_chunks) VALUES(?1, ?2, ?3, ?4, ?5, ?6, 1, 0, ?7, ?8, ?9)
             ON CONFLICT(source, id) DO UPDATE SET dn = excluded.dn, kind = excluded.kind,
               anchor = excluded.anchor, entry = excluded.entry, pending = 1, deleted = 0,
               delta_ok = excluded.delta_ok, members_only = excluded.members_only, member_chunks = excluded.member_chunks",
            params![
                source,
                object.id.0,
                dn,
                kind,
                object.anchor.0,
                incoming.entry,
                delta_ok,
                member_changes.is_some(),
                incoming.digest_list,
            ],
        )
        .map_err(err)?;
        let (write, delete) =
            crate::chunk_writes(old.as_ref().map(|o| o.member_chunks.as_slice()).unwrap_or_default(), &incoming)?;
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO cs_member_chunks(source, id, digest, attr, members) VALUES(?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(err)?;
        for (digest, attr, members) in write {
            insert.execute(params![source, object.id.0, digest.as_slice(), attr, members]).map_err(err)?;
        }
        let mut remove = self
            .conn
            .prepare_cached("DELETE FROM cs_member_chunks WHERE source = ?1 AND id = ?2 AND digest = ?3")
            .map_err(err)?;
        for digest in delete {
            remove.execute(params![source, object.id.0, digest.as_slice()]).map_err(err)?;
        }
        if let Some((added, removed)) = member_changes {
            let mut change = self
                .conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO cs_member_changes(source, id, dn_norm, added) VALUES(?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for (dn, is_added) in added.iter().map(|d| (d, true)).chain(removed.iter().map(|d| (d, false))) {
                change.execute(params![source, object.id.0, dn, is_added]).map_err(err)?;
            }
            // Every reference of such a group is a member: its keys change by the same difference.
            let mut add = self
                .conn
                .prepare_cached("INSERT OR IGNORE INTO cs_ref_keys(source, id, ref_key) VALUES(?1, ?2, ?3)")
                .map_err(err)?;
            for dn in &added {
                add.execute(params![source, object.id.0, crate::ref_key(dn)]).map_err(err)?;
            }
            let mut remove = self
                .conn
                .prepare_cached("DELETE FROM cs_ref_keys WHERE source = ?1 AND id = ?2 AND ref_key = ?3")
                .map_err(err)?;
            for dn in &removed {
                remove.execute(params![source, object.id.0, crate::ref_key(dn)]).map_err(err)?;
            }
            return Ok(());
        }
        self.exec("DELETE FROM cs_member_changes WHERE source = ?1 AND id = ?2", params![source, object.id.0])
            .map_err(err)?;
        // Only what changed: one member added to a 50,000-member group is
        // one row written, not 50,000 deleted and written again.
        let mut wanted = match ref_keys {
            Some(keys) => keys,
            None => crate::ref_keys(&object.entry),
        };
        let stored = stored_keys;
        let mut remove = self
            .conn
            .prepare_cached("DELETE FROM cs_ref_keys WHERE source = ?1 AND id = ?2 AND ref_key = ?3")
            .map_err(err)?;
        for key in stored {
            if !wanted.remove(&key) {
                remove.execute(params![source, object.id.0, key]).map_err(err)?;
            }
        }
        let mut add =
            self.conn.prepare_cached("INSERT INTO cs_ref_keys(source, id, ref_key) VALUES(?1, ?2, ?3)").map_err(err)?;
        for key in wanted {
            add.execute(params![source, object.id.0, key]).map_err(err)?;
        }
        Ok(())
    }

    /// Runs a statement from the connection's statement cache: the engine
    /// runs the same few statements for every object.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.conn.prepare_cached(sql)?.execute(params)
    }

    /// [`Connection::query_row`] from the statement cache.
    fn query_one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.conn.prepare_cached(sql)?.query_row(params, f)
    }

    /// Adds what joined source objects contribute: attributes the projecting
    /// source lacks, and those a joined source is authoritative for.
    /// Merges the joined objects' contributions into `record`.
    fn merge_joined(&self, record: &mut MvRecord) -> Result<(), StoreError> {
        if self.no_joins {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT j.attrs, COALESCE((SELECT p.text FROM precedences p WHERE p.id = j.precedence), j.precedence),
                   j.authoritative, COALESCE((SELECT p.text FROM precedences p WHERE p.id = m.precedence), m.precedence), j.refs
                 FROM joins j JOIN mv m ON m.id = j.mv_id WHERE j.mv_id = ?1 ORDER BY j.source, j.cs_id",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![record.id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(err)?;
        let mut precedence = None;
        for row in rows {
            let (joined, joined_precedence, authoritative, projected, refs) = row.map_err(err)?;
            let precedence = match &mut precedence {
                Some(p) => p,
                None => precedence.insert(crate::precedence_from(&projected)?),
            };
            crate::merge_contribution(&mut record.attrs, precedence, &joined, &joined_precedence, &authoritative)?;
            crate::joined_refs(&refs)?.apply(record);
        }
        Ok(())
    }
}

impl History for SqliteStore {
    /// The source objects joined to `mv`: (source, id, attributes contributed, authoritative ones).
    fn joined(&self, mv: &str) -> Result<Vec<JoinedRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT source, cs_id, attrs, authoritative,
                   COALESCE((SELECT p.text FROM precedences p WHERE p.id = joins.precedence), joins.precedence)
                 FROM joins WHERE mv_id = ?1 ORDER BY source, cs_id",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![mv], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (source, id, attrs, authoritative, precedence) = row.map_err(err)?;
            let precedence = crate::precedence_from(&precedence)?;
            let attrs = match serde_json::from_str(&attrs).map_err(err)? {
                Json::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            out.push(JoinedRow {
                source,
                id: SourceId(id),
                attrs,
                precedence,
                authoritative: serde_json::from_str(&authoritative).map_err(err)?,
            });
        }
        Ok(out)
    }

    fn record_run(&mut self, source: &str, report: &CycleReport) -> Result<(), StoreError> {
        let body = serde_json::to_string(&RunSummary::of(report)).map_err(err)?;
        self.exec(
            "INSERT INTO runs(source, finished, status, report) VALUES(?1, ?2, ?3, ?4)",
            params![source, now(), report.status.as_str(), body],
        )
        .map_err(err)?;
        Ok(())
    }

    /// A cycle that ended with an error (the directory or the tenant could
    /// not be reached, …): recorded too, so `status` and `history` show it.
    fn record_failed_run(&mut self, source: &str, error: &str) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO runs(source, finished, status, report) VALUES(?1, ?2, 'failed', ?3)",
            params![
                source,
                now(),
                serde_json::to_string(&RunSummary { error: Some(error.to_string()), ..RunSummary::default() })
                    .map_err(err)?
            ],
        )
        .map_err(err)?;
        Ok(())
    }

    fn runs(&self, limit: usize) -> Result<Vec<RunRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, source, finished, status, report FROM runs ORDER BY id DESC LIMIT ?1")
            .map_err(err)?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                let report: String = r.get(4)?;
                Ok(RunRow {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    finished: r.get(2)?,
                    status: r.get(3)?,
                    // A row this version cannot read shows as empty, never fails the listing.
                    report: serde_json::from_str(&report).unwrap_or_default(),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn errors(&self) -> Result<Vec<ErrorRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT coalesce(json_extract(unpack_json(m.attrs), '$.onPremisesDistinguishedName'), e.mv_id), e.stage, e.message, e.attempts FROM errors e LEFT JOIN mv m ON m.id = e.mv_id ORDER BY e.last_seen")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ErrorRow { object: r.get(0)?, stage: r.get(1)?, message: r.get(2)?, attempts: r.get(3)? })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// The metaverse object with this userName (UPN), DN or immutableId:
    /// (metaverse id, source name, source id).
    fn find(&self, key: &str) -> Result<Option<(String, String, SourceId)>, StoreError> {
        let dn_norm = Dn::parse(key).map(|d| d.normalized()).unwrap_or_default();
        self.query_one(
            "SELECT id, source, cs_id FROM mv WHERE anchor = ?1 OR (?2 != '' AND dn_norm = ?2)
                   OR lower(json_extract(unpack_json(attrs), '$.userPrincipalName')) = lower(?1) LIMIT 1",
            params![key, dn_norm],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, SourceId(r.get::<_, Vec<u8>>(2)?))),
        )
        .optional()
        .map_err(err)
    }

    /// Counts for `sync status`: (connector space, metaverse, exported, pending export).
    fn counts(&self) -> Result<Counts, StoreError> {
        let q = |sql: &str| self.query_one(sql, [], |r| r.get::<_, i64>(0)).map_err(err);
        Ok(Counts {
            connector_space: q("SELECT count(*) FROM cs")?,
            metaverse: q("SELECT count(*) FROM mv WHERE deleted = 0")?,
            exported: q("SELECT count(*) FROM exported")?,
            pending_export: q("SELECT count(*) FROM mv WHERE dirty = 1")?,
        })
    }
}

impl Transactional for SqliteStore {
    // SQLite's own state, not a flag of ours: after an IO or disk-full error
    // SQLite may roll back by itself, and the next cycle must start clean.
    fn begin(&mut self) -> Result<(), StoreError> {
        if !self.conn.is_autocommit() {
            return Err(StoreError("a transaction is already open".into()));
        }
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.conn.is_autocommit() {
            return Err(StoreError("the transaction was rolled back by the database; nothing was committed".into()));
        }
        self.conn.execute_batch("COMMIT").map_err(err)
    }

    // In WAL mode every statement outside a transaction takes the shared
    // memory's read lock and gives it back: two `fcntl` calls, which were 8 %
    // of the export's thread when each of its reads did it.
    fn begin_reads(&self) -> Result<bool, StoreError> {
        if !self.conn.is_autocommit() {
            return Ok(false);
        }
        self.conn.execute_batch("BEGIN").map_err(err)?;
        Ok(true)
    }

    fn end_reads(&self) -> Result<(), StoreError> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        // COMMIT, not ROLLBACK: a write made meanwhile is kept, as it would
        // have been outside a transaction.
        self.conn.execute_batch("COMMIT").map_err(|e| {
            // A failed COMMIT may leave the transaction open: never keep it.
            let _ = self.conn.execute_batch("ROLLBACK");
            err(e)
        })
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.conn.execute_batch("ROLLBACK").map_err(err)?;
        self.precedence_ids.clear();
        // Join keys first built in the undone transaction are gone again.
        let mut stmt = self.conn.prepare_cached("SELECT attr FROM mv_join_attrs ORDER BY attr").map_err(err)?;
        let attrs = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
        let attrs = attrs.collect::<rusqlite::Result<Vec<_>>>().map_err(err)?;
        drop(stmt);
        self.join_attrs = attrs;
        Ok(())
    }
}

impl ConnectorSpace for SqliteStore {
    fn flavor(&self, source: &str) -> Result<Option<Flavor>, StoreError> {
        let f: Option<Option<String>> = self
            .query_one("SELECT flavor FROM sources WHERE name = ?1", params![source], |r| r.get(0))
            .optional()
            .map_err(err)?;
        Ok(match f.flatten().as_deref() {
            Some("active-directory") => Some(Flavor::ActiveDirectory),
            Some("ldap") => Some(Flavor::Ldap),
            _ => None,
        })
    }

    fn set_flavor(&mut self, source: &str, flavor: Flavor) -> Result<(), StoreError> {
        let text = match flavor {
            Flavor::ActiveDirectory => "active-directory",
            Flavor::Ldap => "ldap",
        };
        self.exec(
            "INSERT INTO sources(name, flavor) VALUES(?1, ?2) ON CONFLICT(name) DO UPDATE SET flavor = excluded.flavor",
            params![source, text],
        )
        .map_err(err)?;
        Ok(())
    }

    fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError> {
        let w: Option<Option<String>> = self
            .query_one("SELECT watermark FROM sources WHERE name = ?1", params![source], |r| r.get(0))
            .optional()
            .map_err(err)?;
        Ok(w.flatten().map(Watermark))
    }

    fn set_watermark(&mut self, source: &str, watermark: &Watermark) -> Result<(), StoreError> {
        self.exec("INSERT INTO sources(name, watermark) VALUES(?1, ?2) ON CONFLICT(name) DO UPDATE SET watermark = excluded.watermark", params![source, watermark.0])
            .map_err(err)?;
        Ok(())
    }

    fn config_hash(&self, source: &str) -> Result<Option<String>, StoreError> {
        let h: Option<Option<String>> = self
            .query_one("SELECT config_hash FROM sources WHERE name = ?1", params![source], |r| r.get(0))
            .optional()
            .map_err(err)?;
        Ok(h.flatten())
    }

    fn set_config_hash(&mut self, source: &str, hash: &str) -> Result<(), StoreError> {
        self.exec("INSERT INTO sources(name, config_hash) VALUES(?1, ?2) ON CONFLICT(name) DO UPDATE SET config_hash = excluded.config_hash", params![source, hash])
            .map_err(err)?;
        Ok(())
    }

    fn cs_put(&mut self, source: &str, object: &SourceObject) -> Result<(), StoreError> {
        self.put_cs(source, object, None)
    }

    fn cs_encoder(&self) -> Option<sync::engine::CsEncoder> {
        Some(crate::encode_cs)
    }

    fn cs_put_encoded(&mut self, source: &str, object: &SourceObject, encoded: EncodedCs) -> Result<(), StoreError> {
        self.put_cs(source, object, Some(encoded))
    }
    fn cs_delete(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        self.exec(
            "UPDATE cs SET deleted = 1, pending = 1, members_only = 0 WHERE source = ?1 AND id = ?2",
            params![source, id.0],
        )
        .map_err(err)?;
        Ok(())
    }

    fn cs_count(&self, source: &str) -> Result<usize, StoreError> {
        self.query_one("SELECT COUNT(*) FROM cs WHERE source = ?1 AND deleted = 0", params![source], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| usize::try_from(n).unwrap_or(0))
        .map_err(err)
    }

    fn cs_unseen(
        &self,
        source: &str,
        seen: &std::collections::HashSet<SourceId>,
    ) -> Result<Vec<(SourceId, Dn)>, StoreError> {
        let mut stmt = self.conn.prepare(CS_LIVE_IN_TABLE_ORDER).map_err(err)?;
        let mut rows = stmt.query(params![source]).map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let id = SourceId(row.get::<_, Vec<u8>>(0).map_err(err)?);
            if seen.contains(&id) {
                continue;
            }
            if let Ok(dn) = Dn::parse(row.get_ref(1).map_err(err)?.as_str().map_err(err)?) {
                out.push((id, dn));
            }
        }
        Ok(out)
    }

    fn cs_mark_all_pending(&mut self, source: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE cs SET pending = 1, members_only = 0 WHERE source = ?1 AND (pending = 0 OR members_only = 1)",
            params![source],
        )
        .map_err(err)?;
        Ok(())
    }

    fn cs_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError> {
        // Import order (as PostgreSQL's seq), stated: without ORDER BY the
        // planner may walk the DN index and sync in DN order instead.
        let mut stmt =
            self.conn.prepare("SELECT id FROM cs WHERE source = ?1 AND pending = 1 ORDER BY rowid").map_err(err)?;
        let rows = stmt.query_map(params![source], |r| r.get::<_, Vec<u8>>(0)).map_err(err)?;
        rows.map(|r| r.map(SourceId).map_err(err)).collect()
    }

    fn cs_get(&self, source: &str, id: &SourceId) -> Result<Option<(SourceObject, bool)>, StoreError> {
        self.cs_read(source, id)?.map(CsRead::decode).transpose()
    }

    fn cs_read(&self, source: &str, id: &SourceId) -> Result<Option<CsRead>, StoreError> {
        let row: Option<CsRow> = self
            .query_one(
                "SELECT kind, anchor, entry, member_chunks, deleted FROM cs WHERE source = ?1 AND id = ?2",
                params![source, id.0],
                |r| Ok((r.get(0)?, r.get(1)?, packed(r, 2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(err)?;
        let Some((kind, anchor, entry, chunk_list, deleted)) = row else { return Ok(None) };
        // A large group's member chunks are read here (they need the
        // connection); everything else is decoded by the caller.
        let chunks = if chunk_list.is_empty() {
            Vec::new()
        } else {
            self.member_chunks(source, id, &crate::member_chunks::digests(&chunk_list))?
        };
        let corrupt = format!("connector-space object {id} is corrupt");
        Ok(Some(CsRead::deferred(id.clone(), Anchor(anchor), kind_from(&kind), deleted, move || {
            let chunks = std::cell::Cell::new(Some(chunks));
            let load = |_: &[crate::member_chunks::Digest]| Ok(chunks.take().unwrap_or_default());
            crate::stored_entry(&entry, &chunk_list, &load)?.ok_or(StoreError(corrupt))
        })))
    }

    fn cs_find(&self, source: &str, dn: &Dn) -> Result<Option<SourceId>, StoreError> {
        self.query_one(CS_BY_DN, params![source, dn.normalized()], |r| r.get::<_, Vec<u8>>(0))
            .optional()
            .map(|id| id.map(SourceId))
            .map_err(err)
    }

    fn cs_referencing(&self, source: &str, dn: &Dn) -> Result<Vec<SourceId>, StoreError> {
        // Led by the DN; without DISTINCT the planner keeps to that index.
        let mut stmt =
            self.conn.prepare_cached("SELECT id FROM cs_ref_keys WHERE ref_key = ?2 AND source = ?1").map_err(err)?;
        let rows = stmt
            .query_map(params![source, crate::ref_key(&dn.normalized())], |r| r.get::<_, Vec<u8>>(0))
            .map_err(err)?;
        let mut ids: Vec<SourceId> = rows.map(|r| r.map(SourceId).map_err(err)).collect::<Result<_, _>>()?;
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    fn cs_mark_pending(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        // A row already pending (as a whole) is not rewritten.
        self.exec(
            "UPDATE cs SET pending = 1, members_only = 0 WHERE source = ?1 AND id = ?2 AND (pending = 0 OR members_only = 1)",
            params![source, id.0],
        )
        .map_err(err)?;
        Ok(())
    }

    fn cs_mark_referencing_pending(&mut self, source: &str, dn: &Dn, except: &SourceId) -> Result<(), StoreError> {
        // One statement (an index search on the references, then on the
        // primary key for each); during a full cycle most referencing
        // objects are still pending and nothing is written.
        let (dn_norm, except) = (dn.normalized(), &except.0);
        let key = crate::ref_key(&dn_norm);
        // A group synced by difference gets the one member to resolve.
        self.exec(
            "INSERT OR REPLACE INTO cs_member_changes(source, id, dn_norm, added)
             SELECT c.source, c.id, ?4, 1 FROM cs c
             WHERE c.source = ?1 AND c.id <> ?3 AND c.deleted = 0
               AND c.id IN (SELECT r.id FROM cs_ref_keys r WHERE r.ref_key = ?2 AND r.source = ?1)
               AND ((c.pending = 0 AND c.delta_ok = 1) OR (c.pending = 1 AND c.members_only = 1))",
            params![source, key, except, dn_norm],
        )
        .map_err(err)?;
        self.exec(
            "UPDATE cs SET pending = 1, members_only = delta_ok WHERE source = ?1 AND pending = 0 AND id <> ?3
               AND id IN (SELECT r.id FROM cs_ref_keys r WHERE r.ref_key = ?2 AND r.source = ?1)",
            params![source, key, except],
        )
        .map_err(err)?;
        Ok(())
    }

    fn cs_done(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        // The common case in one statement; a deleted object's rows go.
        let live = self
            .exec(
                "UPDATE cs SET pending = 0, members_only = 0 WHERE source = ?1 AND id = ?2 AND deleted = 0",
                params![source, id.0],
            )
            .map_err(err)?;
        self.exec("DELETE FROM cs_member_changes WHERE source = ?1 AND id = ?2", params![source, id.0]).map_err(err)?;
        if live == 0 {
            // A deleted object's reference keys: those of its stored entry.
            let gone: Option<(Vec<u8>, Vec<u8>)> = self
                .query_one(
                    "SELECT entry, member_chunks FROM cs WHERE source = ?1 AND id = ?2 AND deleted = 1",
                    params![source, id.0],
                    |r| Ok((packed(r, 0)?, r.get(1)?)),
                )
                .optional()
                .map_err(err)?;
            if let Some((entry, chunk_list)) = gone {
                let load = |digests: &[crate::member_chunks::Digest]| self.member_chunks(source, id, digests);
                let keys =
                    crate::stored_entry(&entry, &chunk_list, &load)?.map(|e| crate::ref_keys(&e)).unwrap_or_default();
                let mut remove = self
                    .conn
                    .prepare_cached("DELETE FROM cs_ref_keys WHERE ref_key = ?3 AND source = ?1 AND id = ?2")
                    .map_err(err)?;
                for key in keys {
                    remove.execute(params![source, id.0, key]).map_err(err)?;
                }
            }
            self.exec("DELETE FROM cs_member_chunks WHERE source = ?1 AND id = ?2 AND EXISTS (SELECT 1 FROM cs WHERE source = ?1 AND id = ?2 AND deleted = 1)", params![source, id.0]).map_err(err)?;
            self.exec("DELETE FROM cs WHERE source = ?1 AND id = ?2 AND deleted = 1", params![source, id.0])
                .map_err(err)?;
        }
        Ok(())
    }

    fn cs_member_changes(&self, source: &str, id: &SourceId) -> Result<Option<MemberChanges>, StoreError> {
        let members_only: bool = self
            .query_one(
                "SELECT pending = 1 AND members_only = 1 AND deleted = 0 FROM cs WHERE source = ?1 AND id = ?2",
                params![source, id.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?
            .unwrap_or(false);
        if !members_only {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT dn_norm, added FROM cs_member_changes WHERE source = ?1 AND id = ?2")
            .map_err(err)?;
        let rows = stmt
            .query_map(params![source, id.0], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))
            .map_err(err)?;
        let rows: Vec<(String, bool)> = rows.collect::<Result<_, _>>().map_err(err)?;
        Ok(Some(rows.into_iter().filter_map(|(dn, added)| Dn::parse(&dn).ok().map(|dn| (dn, added))).collect()))
    }

    fn passwords_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT cs_id FROM phs_pending WHERE source = ?1").map_err(err)?;
        let rows = stmt.query_map(params![source], |r| r.get::<_, Vec<u8>>(0)).map_err(err)?;
        let mut ids = Vec::new();
        for row in rows {
            ids.push(SourceId(row.map_err(err)?));
        }
        Ok(ids)
    }

    fn set_password_pending(&mut self, source: &str, id: &SourceId, pending: bool) -> Result<(), StoreError> {
        let sql = if pending {
            "INSERT OR IGNORE INTO phs_pending(source, cs_id) VALUES(?1, ?2)"
        } else {
            "DELETE FROM phs_pending WHERE source = ?1 AND cs_id = ?2"
        };
        self.conn.prepare_cached(sql).map_err(err)?.execute(params![source, id.0]).map_err(err)?;
        Ok(())
    }
}

impl Metaverse for SqliteStore {
    fn mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError> {
        self.query_one(MV_BY_DN, params![source, dn.normalized()], |r| r.get(0)).optional().map_err(err)
    }

    fn mv_for_dns(&self, source: &str, dns: &[Dn]) -> Result<Vec<String>, StoreError> {
        if dns.is_empty() {
            return Ok(Vec::new());
        }
        // One statement per group: the lookups run inside SQLite.
        let list = dn_list(dns);
        let mut stmt = self.conn.prepare_cached(MV_BY_DNS).map_err(err)?;
        let rows = stmt.query_map(params![source, list], |r| r.get::<_, String>(0)).map_err(err)?;
        rows.map(|r| r.map_err(err)).collect()
    }

    fn mv_unresolved(&self, source: &str, dns: &[Dn]) -> Result<Vec<usize>, StoreError> {
        if dns.is_empty() {
            return Ok(Vec::new());
        }
        let list = dn_list(dns);
        let mut stmt = self.conn.prepare_cached(MV_UNRESOLVED).map_err(err)?;
        let rows = stmt.query_map(params![source, list], |r| r.get::<_, i64>(0)).map_err(err)?;
        rows.map(|r| r.map_err(err).and_then(|i| usize::try_from(i).map_err(err))).collect()
    }

    fn mv_project(
        &mut self,
        source: &str,
        id: &SourceId,
        p: &Projection,
        manager: Option<String>,
        members: Vec<String>,
    ) -> Result<Projected, StoreError> {
        let encoded = crate::encode_mv(p)?;
        self.mv_project_encoded(source, id, p, manager, members, encoded)
    }

    fn mv_encoder(&self) -> Option<sync::engine::MvEncoder> {
        Some(crate::encode_mv)
    }

    fn mv_project_encoded(
        &mut self,
        source: &str,
        id: &SourceId,
        p: &Projection,
        manager: Option<String>,
        mut members: Vec<String>,
        encoded: EncodedMv,
    ) -> Result<Projected, StoreError> {
        let EncodedMv { attrs, dn_norm } = encoded;
        let members = pack::pack(&crate::members_text(&mut members))?;
        let precedence = self.precedence_id(&p.precedence)?;
        let existing: Option<(String, String, bool)> = self
            .query_one(
                "SELECT id, dn_norm, deleted FROM mv WHERE source = ?1 AND cs_id = ?2",
                params![source, id.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(err)?;
        match existing {
            Some((mv, old_dn_norm, was_deleted)) => {
                // The whole list replaces the stored one and its log (a log left means the stored list is not the list).
                let had_log = self.exec("DELETE FROM mv_member_log WHERE mv_id = ?1", params![mv]).map_err(err)? > 0;
                let changed = self
                    .exec(
                        "UPDATE mv SET kind = ?2, anchor = ?3, attrs = ?4, manager = ?5, members = ?6, dn_norm = ?7, precedence = ?8, deleted = 0, dirty = 1, members_only = 0
                         WHERE id = ?1 AND (kind != ?2 OR anchor != ?3 OR attrs != ?4 OR manager IS NOT ?5 OR members != ?6 OR dn_norm != ?7 OR precedence != ?8 OR deleted = 1 OR ?9)",
                        params![mv, kind_str(p.kind), p.anchor, attrs, manager, members, dn_norm, precedence, had_log],
                    )
                    .map_err(err)?;
                if changed > 0 {
                    self.keep_join_keys(&mv)?;
                }
                Ok(Projected { newly_resolvable: was_deleted || old_dn_norm != dn_norm, id: mv })
            }
            None => {
                let mv = new_mv_id()?;
                self.exec(
                        "INSERT INTO mv(id, kind, anchor, attrs, manager, members, deleted, dirty, source, cs_id, dn_norm, precedence) VALUES(?1, ?2, ?3, ?4, ?5, ?6, 0, 1, ?7, ?8, ?9, ?10)",
                        params![mv, kind_str(p.kind), p.anchor, attrs, manager, members, source, id.0, dn_norm, precedence],
                    )
                    .map_err(err)?;
                self.keep_join_keys(&mv)?;
                Ok(Projected { id: mv, newly_resolvable: true })
            }
        }
    }

    fn mv_change_members(&mut self, source: &str, id: &SourceId, changes: &MemberChanges) -> Result<bool, StoreError> {
        let row: Option<(String, bool, bool)> = self
            .query_one(
                "SELECT m.id, m.dirty, m.members_only FROM mv m WHERE m.source = ?1 AND m.cs_id = ?2 AND m.deleted = 0
                   AND NOT EXISTS(SELECT 1 FROM joins j WHERE j.mv_id = m.id)",
                params![source, id.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(err)?;
        let Some((mv, dirty, members_only)) = row else { return Ok(false) };
        let added = self.mv_for_dns(source, &changes.added)?;
        // A member removed may be gone already (deleted on-premises): its metaverse object whatever its state.
        let removed: Vec<String> = if changes.removed.is_empty() {
            Vec::new()
        } else {
            let list = dn_list(&changes.removed);
            let mut stmt = self.conn.prepare_cached(MV_BY_DNS_ANY).map_err(err)?;
            let rows = stmt.query_map(params![source, list], |r| r.get::<_, String>(0)).map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)?
        };
        if added.is_empty() && removed.is_empty() {
            return Ok(true);
        }
        // Logged next to the members, not written into them: a large
        // group's list is rewritten once per FOLD_MEMBER_LOG changes. Clean,
        // or dirty with member changes only: the export sends just these.
        let by_difference = !dirty || members_only;
        let changes = added.iter().map(|m| (m, true)).chain(removed.iter().map(|m| (m, false)));
        for (member, is_added) in changes {
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO mv_member_log(mv_id, member, added) VALUES(?1, ?2, ?3)")
                .map_err(err)?
                .execute(params![mv, member, is_added])
                .map_err(err)?;
            if by_difference {
                self.conn
                    .prepare_cached("INSERT OR REPLACE INTO mv_member_changes(mv_id, member, added) VALUES(?1, ?2, ?3)")
                    .map_err(err)?
                    .execute(params![mv, member, is_added])
                    .map_err(err)?;
            }
        }
        self.exec("UPDATE mv SET dirty = 1, members_only = ?2 WHERE id = ?1", params![mv, by_difference])
            .map_err(err)?;
        let logged: i64 = self
            .query_one("SELECT count(*) FROM mv_member_log WHERE mv_id = ?1", params![mv], |r| r.get(0))
            .map_err(err)?;
        if logged >= crate::FOLD_MEMBER_LOG {
            let stored: Vec<u8> =
                self.query_one("SELECT members FROM mv WHERE id = ?1", params![mv], |r| packed(r, 0)).map_err(err)?;
            let members = self.members_with_log(&mv, &pack::unpack(&stored)?)?;
            self.exec(
                "UPDATE mv SET members = ?2 WHERE id = ?1",
                params![mv, pack::pack(&serde_json::to_string(&members).map_err(err)?)?],
            )
            .map_err(err)?;
            self.exec("DELETE FROM mv_member_log WHERE mv_id = ?1", params![mv]).map_err(err)?;
        }
        Ok(true)
    }

    fn mv_for_object(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError> {
        self.query_one(
            "SELECT id FROM mv WHERE source = ?1 AND cs_id = ?2 AND deleted = 0",
            params![source, id.0],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)
    }

    fn mv_attrs(&self, source: &str, id: &SourceId) -> Result<Option<serde_json::Map<String, Json>>, StoreError> {
        let stored: Option<Vec<u8>> = self
            .query_one(
                "SELECT attrs FROM mv WHERE source = ?1 AND cs_id = ?2 AND deleted = 0",
                params![source, id.0],
                |r| packed(r, 0),
            )
            .optional()
            .map_err(err)?;
        match stored {
            None => Ok(None),
            Some(t) => match serde_json::from_str(&pack::unpack(&t)?).map_err(err)? {
                Json::Object(m) => Ok(Some(m)),
                _ => Err(StoreError("a metaverse object: attributes are not a JSON object".into())),
            },
        }
    }

    fn mv_disconnect(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        let mv: Option<String> = self
            .query_one("SELECT id FROM mv WHERE source = ?1 AND cs_id = ?2", params![source, id.0], |r| r.get(0))
            .optional()
            .map_err(err)?;
        let Some(mv) = mv else { return Ok(()) };
        // Objects joined to it lose their metaverse object: they look for a new one next sync.
        self.exec(
                "UPDATE cs SET pending = 1 WHERE EXISTS(SELECT 1 FROM joins j WHERE j.mv_id = ?1 AND j.source = cs.source AND j.cs_id = cs.id)",
                params![mv],
            )
            .map_err(err)?;
        self.exec("DELETE FROM joins WHERE mv_id = ?1", params![mv]).map_err(err)?;
        let exported: bool = self
            .query_one("SELECT EXISTS(SELECT 1 FROM exported WHERE mv_id = ?1)", params![mv], |r| r.get(0))
            .map_err(err)?;
        if exported {
            self.exec("UPDATE mv SET deleted = 1, dirty = 1, members_only = 0 WHERE id = ?1", params![mv])
                .map_err(err)?;
        } else {
            self.exec("DELETE FROM mv WHERE id = ?1", params![mv]).map_err(err)?;
            self.exec("DELETE FROM mv_member_log WHERE mv_id = ?1", params![mv]).map_err(err)?;
            self.exec("DELETE FROM mv_join_keys WHERE mv_id = ?1", params![mv]).map_err(err)?;
            self.exec("DELETE FROM errors WHERE mv_id = ?1", params![mv]).map_err(err)?;
        }
        Ok(())
    }

    fn join_candidates(
        &mut self,
        source: &str,
        kind: ObjectKind,
        mv_attr: &str,
        value: &str,
    ) -> Result<Vec<String>, StoreError> {
        crate::check_join_attribute(mv_attr)?;
        if !self.join_attrs.iter().any(|a| a == mv_attr) {
            // First join on this attribute: its keys from every live object, then kept.
            self.exec("INSERT OR IGNORE INTO mv_join_attrs(attr) VALUES(?1)", params![mv_attr]).map_err(err)?;
            self.exec(
                "INSERT OR IGNORE INTO mv_join_keys(attr, value, mv_id)
                 SELECT ?1, lower(j.value), mv.id FROM mv, json_each(unpack_json(mv.attrs), '$.' || ?1) j
                 WHERE mv.deleted = 0 AND j.type IN ('text', 'integer', 'real')",
                params![mv_attr],
            )
            .map_err(err)?;
            self.join_attrs.push(mv_attr.to_string());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT mv.id FROM mv_join_keys k CROSS JOIN mv ON mv.id = k.mv_id
                 WHERE k.attr = ?1 AND k.value = lower(?2) AND mv.kind = ?3 AND mv.deleted = 0 AND mv.source != ?4",
            )
            .map_err(err)?;
        let rows =
            stmt.query_map(params![mv_attr, value, kind_str(kind), source], |r| r.get::<_, String>(0)).map_err(err)?;
        rows.map(|r| r.map_err(err)).collect()
    }

    fn join_link(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError> {
        self.query_one("SELECT mv_id FROM joins WHERE source = ?1 AND cs_id = ?2", params![source, id.0], |r| r.get(0))
            .optional()
            .map_err(err)
    }

    fn join_put(
        &mut self,
        source: &str,
        id: &SourceId,
        mv: &str,
        contribution: &sync::engine::JoinContribution<'_>,
    ) -> Result<(), StoreError> {
        self.no_joins = false;
        let attrs = Json::Object(contribution.attrs.clone()).to_string();
        let authoritative = json!(contribution.authoritative).to_string();
        let precedence = self.precedence_id(contribution.precedence)?;
        let refs = serde_json::to_string(contribution.references).map_err(err)?;
        let changed = self.exec(
                "INSERT INTO joins(source, cs_id, mv_id, attrs, authoritative, precedence, refs) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(source, cs_id) DO UPDATE SET mv_id = excluded.mv_id, attrs = excluded.attrs,
                   authoritative = excluded.authoritative, precedence = excluded.precedence, refs = excluded.refs
                 WHERE joins.mv_id != excluded.mv_id OR joins.attrs != excluded.attrs OR joins.authoritative != excluded.authoritative
                   OR joins.precedence != excluded.precedence OR joins.refs != excluded.refs",
                params![source, id.0, mv, attrs, authoritative, precedence, refs],
            )
            .map_err(err)?;
        if changed > 0 {
            self.exec("UPDATE mv SET dirty = 1, members_only = 0 WHERE id = ?1", params![mv]).map_err(err)?;
        }
        Ok(())
    }

    fn joined_mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError> {
        self.query_one(JOINED_BY_DN, params![source, dn.normalized()], |r| r.get(0)).optional().map_err(err)
    }

    fn join_remove(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        self.exec(
            "UPDATE mv SET dirty = 1, members_only = 0 WHERE id = (SELECT mv_id FROM joins WHERE source = ?1 AND cs_id = ?2)",
            params![source, id.0],
        )
        .map_err(err)?;
        self.exec("DELETE FROM joins WHERE source = ?1 AND cs_id = ?2", params![source, id.0]).map_err(err)?;
        Ok(())
    }

    fn mv_mark_dirty(&mut self, source: &str) -> Result<(), StoreError> {
        self.exec("UPDATE mv SET dirty = 1, members_only = 0 WHERE source = ?1", params![source]).map_err(err)?;
        Ok(())
    }

    fn join_retry_unlinked(&mut self, source: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE cs SET pending = 1 WHERE source = ?1 AND deleted = 0 AND pending = 0
                 AND NOT EXISTS(SELECT 1 FROM joins j WHERE j.source = cs.source AND j.cs_id = cs.id)",
            params![source],
        )
        .map_err(err)?;
        Ok(())
    }

    fn mv_get(&self, id: &str) -> Result<Option<MvRecord>, StoreError> {
        let row: Option<MvRow> = self
            .query_one(
                "SELECT kind, anchor, attrs, manager, members, deleted FROM mv WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, packed(r, 2)?, r.get(3)?, packed(r, 4)?, r.get(5)?)),
            )
            .optional()
            .map_err(err)?;
        let Some((kind, anchor, attrs, manager, members, deleted)) = row else { return Ok(None) };
        let attrs = match serde_json::from_str::<Json>(&pack::unpack(&attrs)?).map_err(err)? {
            Json::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let kind = kind_from(&kind);
        // Member changes are logged for groups alone (synced by difference):
        // a user's empty list needs no search of the log.
        let members = if kind == ObjectKind::Group {
            self.members_with_log(id, &pack::unpack(&members)?)?
        } else {
            serde_json::from_str(&pack::unpack(&members)?).map_err(err)?
        };
        let mut record = MvRecord { id: id.to_string(), kind, anchor, attrs, manager, members, deleted };
        self.merge_joined(&mut record)?;
        Ok(Some(record))
    }

    fn mv_attrs_read(&self, id: &str) -> Result<Option<MvAttrsRead>, StoreError> {
        let row: Option<(String, String, Vec<u8>, bool)> = self
            .query_one("SELECT kind, anchor, attrs, deleted FROM mv WHERE id = ?1", params![id], |r| {
                Ok((r.get(0)?, r.get(1)?, packed(r, 2)?, r.get(3)?))
            })
            .optional()
            .map_err(err)?;
        let Some((kind, anchor, attrs, deleted)) = row else { return Ok(None) };
        let kind = kind_from(&kind);
        let decode = move || -> Result<serde_json::Map<String, Json>, StoreError> {
            match serde_json::from_str::<Json>(&pack::unpack(&attrs)?).map_err(err)? {
                Json::Object(m) => Ok(m),
                _ => Ok(serde_json::Map::new()),
            }
        };
        if self.no_joins {
            return Ok(Some(MvAttrsRead::deferred(kind, anchor, deleted, decode)));
        }
        // Joined contributions are merged with the store's connection: here.
        let mut record = MvRecord {
            id: id.to_string(),
            kind,
            anchor,
            attrs: decode()?,
            manager: None,
            members: Vec::new(),
            deleted,
        };
        self.merge_joined(&mut record)?;
        Ok(Some(MvAttrsRead::decoded(record)))
    }
}

impl ExportLog for SqliteStore {
    fn dirty_objects(&self) -> Result<Vec<sync::engine::DirtyObject>, StoreError> {
        let mut out = Vec::new();
        self.for_each_dirty_object(&mut |d| {
            out.push(d);
            Ok(())
        })?;
        Ok(out)
    }

    fn for_each_dirty_object(
        &self,
        each: &mut dyn FnMut(sync::engine::DirtyObject) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT m.id, m.deleted, m.manager, CASE WHEN m.members_only = 1 THEN NULL ELSE m.members END,
                   EXISTS(SELECT 1 FROM exported e WHERE e.mv_id = m.id)
                 FROM mv m WHERE m.dirty = 1
                 ORDER BY m.deleted, CASE m.kind WHEN 'user' THEN 0 WHEN 'contact' THEN 1 ELSE 2 END, m.id",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get_ref(3)?.as_bytes_or_null().map(|b| b.map(<[u8]>::to_vec)).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Blob, Box::new(e))
                    })?,
                    r.get::<_, bool>(4)?,
                ))
            })
            .map_err(err)?;
        let mut added = self
            .conn
            .prepare_cached("SELECT member FROM mv_member_changes WHERE mv_id = ?1 AND added = 1")
            .map_err(err)?;
        for row in rows {
            let (id, deleted, manager, members, exported) = row.map_err(err)?;
            let members_only = members.is_none();
            let members: Vec<String> = match members {
                Some(members) => self.members_with_log(&id, &pack::unpack(&members)?)?,
                // Members alone changed: only those added may need to go first.
                None => {
                    added.query_map(params![id], |r| r.get(0)).map_err(err)?.collect::<Result<_, _>>().map_err(err)?
                }
            };
            each(sync::engine::DirtyObject {
                id,
                deleted,
                refs: manager.into_iter().chain(members).collect(),
                exported,
                members_only,
            })?;
        }
        Ok(())
    }

    fn exported(&self, mv: &str) -> Result<Option<(String, Json)>, StoreError> {
        let row: Option<(String, Vec<u8>)> = self
            .query_one("SELECT tenant_id, resource FROM exported WHERE mv_id = ?1", params![mv], |r| {
                Ok((tenant_id(r, 0)?, packed(r, 1)?))
            })
            .optional()
            .map_err(err)?;
        match row {
            Some((id, resource)) => {
                let resource = self.with_member_log(mv, &pack::unpack(&resource)?)?;
                Ok(Some((id, serde_json::from_str(&resource).map_err(err)?)))
            }
            None => Ok(None),
        }
    }

    fn exported_ids(&self, mvs: &[String]) -> Result<Vec<String>, StoreError> {
        if mvs.is_empty() {
            return Ok(Vec::new());
        }
        let list = json!(mvs).to_string();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT e.tenant_id FROM json_each(?1) j CROSS JOIN exported e ON e.mv_id = j.value")
            .map_err(err)?;
        let rows = stmt.query_map(params![list], |r| tenant_id(r, 0)).map_err(err)?;
        rows.map(|r| r.map_err(err)).collect()
    }

    fn exported_id(&self, mv: &str) -> Result<Option<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT tenant_id FROM exported WHERE mv_id = ?1").map_err(err)?;
        stmt.query_row(params![mv], |r| tenant_id(r, 0)).optional().map_err(err)
    }

    fn exported_anchor(&self, mv: &str) -> Result<Option<String>, StoreError> {
        self.query_one(
            "SELECT m.anchor FROM exported e JOIN mv m ON m.id = e.mv_id WHERE e.mv_id = ?1",
            params![mv],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)
    }

    fn member_changes_to_export(&self, mv: &str) -> Result<Option<(MvRecord, MemberChanges<String>)>, StoreError> {
        let row: Option<(String, String, Vec<u8>)> = self
            .query_one(
                "SELECT kind, anchor, attrs FROM mv WHERE id = ?1 AND dirty = 1 AND members_only = 1 AND deleted = 0",
                params![mv],
                |r| Ok((r.get(0)?, r.get(1)?, packed(r, 2)?)),
            )
            .optional()
            .map_err(err)?;
        let Some((kind, anchor, attrs)) = row else { return Ok(None) };
        let record = crate::group_head(mv, &kind, anchor, &pack::unpack(&attrs)?)?;
        let mut stmt =
            self.conn.prepare_cached("SELECT member, added FROM mv_member_changes WHERE mv_id = ?1").map_err(err)?;
        let rows = stmt.query_map(params![mv], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))).map_err(err)?;
        Ok(Some((record, rows.collect::<Result<_, _>>().map_err(err)?)))
    }

    fn set_member_changes_exported(
        &mut self,
        mv: &str,
        added: &[(String, String)],
        removed: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        let exported: bool = self
            .query_one("SELECT EXISTS(SELECT 1 FROM exported WHERE mv_id = ?1)", params![mv], |r| r.get(0))
            .map_err(err)?;
        if !exported {
            return Err(StoreError(format!("member changes of {mv} confirmed, but it was never exported")));
        }
        // Logged, not written into the resource: a large group's resource
        // is rewritten once per FOLD_MEMBER_LOG changes, not once per change.
        let mut log = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO exported_member_log(mv_id, tenant_id, added) VALUES(?1, ?2, ?3)")
            .map_err(err)?;
        let confirmed = added
            .iter()
            .map(|(_, id)| (id, true))
            .chain(removed.iter().filter_map(|(_, id)| id.as_ref().map(|id| (id, false))));
        for (tenant_id, is_added) in confirmed {
            log.execute(params![mv, tenant_id, is_added]).map_err(err)?;
        }
        let logged: i64 = self
            .query_one("SELECT count(*) FROM exported_member_log WHERE mv_id = ?1", params![mv], |r| r.get(0))
            .map_err(err)?;
        if logged >= crate::FOLD_MEMBER_LOG {
            let resource: Vec<u8> = self
                .query_one("SELECT resource FROM exported WHERE mv_id = ?1", params![mv], |r| packed(r, 0))
                .map_err(err)?;
            let resource = self.with_member_log(mv, &pack::unpack(&resource)?)?;
            self.exec("UPDATE exported SET resource = ?2 WHERE mv_id = ?1", params![mv, pack::pack(&resource)?])
                .map_err(err)?;
            self.exec("DELETE FROM exported_member_log WHERE mv_id = ?1", params![mv]).map_err(err)?;
        }
        let mut done =
            self.conn.prepare_cached("DELETE FROM mv_member_changes WHERE mv_id = ?1 AND member = ?2").map_err(err)?;
        for member in added.iter().map(|(m, _)| m).chain(removed.iter().map(|(m, _)| m)) {
            done.execute(params![mv, member]).map_err(err)?;
        }
        let left: bool = self
            .query_one("SELECT EXISTS(SELECT 1 FROM mv_member_changes WHERE mv_id = ?1)", params![mv], |r| r.get(0))
            .map_err(err)?;
        if !left {
            self.exec("UPDATE mv SET dirty = 0, members_only = 0 WHERE id = ?1", params![mv]).map_err(err)?;
            self.exec("DELETE FROM errors WHERE mv_id = ?1", params![mv]).map_err(err)?;
        }
        Ok(())
    }

    fn set_exported(&mut self, mv: &str, tenant_id: &str, resource: &Json) -> Result<(), StoreError> {
        let encoded = crate::encode_exported(resource)?;
        self.set_exported_encoded(mv, tenant_id, resource, encoded)
    }

    fn exported_encoder(&self) -> Option<sync::engine::ExportedEncoder> {
        Some(crate::encode_exported_text)
    }

    fn set_exported_encoded(
        &mut self,
        mv: &str,
        tenant_id: &str,
        _resource: &Json,
        encoded: sync::engine::EncodedExported,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT OR REPLACE INTO exported(mv_id, tenant_id, resource) VALUES(?1, ?2, ?3)",
            params![mv, tenant_id_value(tenant_id), encoded.resource],
        )
        .map_err(err)?;
        self.exec("UPDATE mv SET dirty = 0, members_only = 0 WHERE id = ?1", params![mv]).map_err(err)?;
        self.exec("DELETE FROM mv_member_changes WHERE mv_id = ?1", params![mv]).map_err(err)?;
        self.exec("DELETE FROM exported_member_log WHERE mv_id = ?1", params![mv]).map_err(err)?;
        self.exec("DELETE FROM errors WHERE mv_id = ?1", params![mv]).map_err(err)?;
        Ok(())
    }

    fn forget_exported(&mut self, mv: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM exported WHERE mv_id = ?1", params![mv]).map_err(err)?;
        self.exec("DELETE FROM errors WHERE mv_id = ?1", params![mv]).map_err(err)?;
        self.exec("DELETE FROM mv WHERE id = ?1 AND deleted = 1", params![mv]).map_err(err)?;
        self.exec(
            "DELETE FROM mv_member_log WHERE mv_id = ?1 AND NOT EXISTS(SELECT 1 FROM mv WHERE id = ?1)",
            params![mv],
        )
        .map_err(err)?;
        self.exec(
            "DELETE FROM mv_join_keys WHERE mv_id = ?1 AND NOT EXISTS(SELECT 1 FROM mv WHERE id = ?1)",
            params![mv],
        )
        .map_err(err)?;
        self.exec("UPDATE mv SET dirty = 1, members_only = 0 WHERE id = ?1", params![mv]).map_err(err)?;
        self.exec("DELETE FROM mv_member_changes WHERE mv_id = ?1", params![mv]).map_err(err)?;
        self.exec("DELETE FROM exported_member_log WHERE mv_id = ?1", params![mv]).map_err(err)?;
        Ok(())
    }

    fn clear_error(&mut self, key: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM errors WHERE mv_id = ?1", params![key]).map_err(err)?;
        Ok(())
    }

    fn record_error(&mut self, mv: &str, stage: &str, message: &str) -> Result<(), StoreError> {
        let t = now();
        self.exec(
                "INSERT INTO errors(mv_id, stage, message, first_seen, last_seen, attempts) VALUES(?1, ?2, ?3, ?4, ?4, 1)
                 ON CONFLICT(mv_id) DO UPDATE SET stage = excluded.stage, message = excluded.message, last_seen = excluded.last_seen, attempts = attempts + 1",
                params![mv, stage, message, t],
            )
            .map_err(err)?;
        self.exec("UPDATE mv SET dirty = 1 WHERE id = ?1", params![mv]).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Metaverse ids: 22 digits of the id alphabet, unique, and an id made a
    /// millisecond later sorts after (the indexes keyed by id grow at one end).
    #[test]
    fn metaverse_ids_are_short_unique_and_sort_by_time() {
        let first: Vec<String> = (0..1000).filter_map(|_| super::new_mv_id().ok()).collect();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = super::new_mv_id().unwrap_or_default();
        assert_eq!(first.len(), 1000);
        for id in first.iter().chain([&later]) {
            assert_eq!(id.len(), 22, "{id}");
            assert!(id.bytes().all(|b| super::MV_ID_DIGITS.contains(&b)), "{id}");
        }
        let unique: std::collections::BTreeSet<&String> = first.iter().collect();
        assert_eq!(unique.len(), first.len());
        // Each thread has a sequence of its own, from its own random start.
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).filter_map(|_| super::new_mv_id().ok()).collect::<Vec<_>>()))
            .collect();
        let mut all: std::collections::BTreeSet<String> = first.iter().cloned().collect();
        for thread in threads {
            let ids = thread.join().unwrap_or_default();
            assert_eq!(ids.len(), 1000);
            all.extend(ids);
        }
        assert_eq!(all.len(), 5000, "ids made on several threads at once are unique");
        assert!(first.iter().all(|id| id < &later), "{later} sorts before an earlier id");
        let mut digits = super::MV_ID_DIGITS.to_vec();
        digits.sort_unstable();
        assert_eq!(&digits, super::MV_ID_DIGITS, "the alphabet is in ASCII order");
    }

    #[test]
    fn tenant_ids_are_kept_as_uuid_bytes_or_as_text() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id TEXT NOT NULL)").unwrap();
        for id in [
            "0193a6f2-7c4e-7d1a-9b2e-1f2a3b4c5d6e",
            "t1",
            "0193A6F2-7C4E-7D1A-9B2E-1F2A3B4C5D6E",
            "0193a6f2x7c4e-7d1a-9b2e-1f2a3b4c5d6e",
            "0193a6f2-7c4e-7d1a-9b2e-1f2a3b4c5d6ü",
            "",
        ] {
            conn.execute("DELETE FROM t", []).unwrap();
            conn.execute("INSERT INTO t(id) VALUES(?1)", [super::tenant_id_value(id)]).unwrap();
            let back: String = conn.query_row("SELECT id FROM t", [], |r| super::tenant_id(r, 0)).unwrap();
            assert_eq!(back, id);
        }
        let kind: String = {
            conn.execute("DELETE FROM t", []).unwrap();
            conn.execute(
                "INSERT INTO t(id) VALUES(?1)",
                [super::tenant_id_value("0193a6f2-7c4e-7d1a-9b2e-1f2a3b4c5d6e")],
            )
            .unwrap();
            conn.query_row("SELECT typeof(id) FROM t", [], |r| r.get(0)).unwrap()
        };
        assert_eq!(kind, "blob", "16 bytes, not 36 characters");
    }

    use super::*;

    /// Every lookup by DN searches its index by source and key: a plan that
    /// scanned a source's objects instead would pass every other test and
    /// make a million-object cycle crawl.
    #[test]
    fn lookups_by_dn_use_the_key_indexes() {
        let store = SqliteStore::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        for (sql, index) in [
            (CS_BY_DN, "cs_dn"),
            (MV_BY_DN, "mv_dn"),
            (MV_BY_DNS, "mv_dn"),
            (MV_BY_DNS_ANY, "mv_dn"),
            (JOINED_BY_DN, "cs_dn"),
        ] {
            let plan = query_plan(&store, sql, params!["corp", r#"["uid=a,dc=x"]"#]);
            let wanted = format!("USING INDEX {index} (source=? AND <expr>=?)");
            assert!(plan.iter().any(|step| step.contains(&wanted)), "{sql}: {plan:?}");
        }
    }

    /// What a full import did not see is found by reading the connector
    /// space in table order, not row by row through the primary key.
    #[test]
    fn objects_not_seen_are_read_in_table_order() {
        let store = SqliteStore::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(query_plan(&store, CS_LIVE_IN_TABLE_ORDER, params!["corp"]), vec!["SCAN cs".to_string()]);
    }

    /// The steps of `sql`'s query plan, as SQLite describes them.
    fn query_plan(store: &SqliteStore, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
        let mut stmt = store.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap_or_else(|e| panic!("{e}"));
        stmt.query_map(params, |r| r.get::<_, String>(3))
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|r| r.unwrap_or_default())
            .collect()
    }
}
