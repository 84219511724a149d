//! The sync store in PostgreSQL: the same tables as the SQLite store
//! (prefixed `sync_`, so the tenant's tables can share the database), shared
//! by an active and a standby daemon. Only the holder of the [`crate::lease`]
//! writes: every commit first checks, under a row lock, that the lease is
//! still this store's — a daemon that was paused past its lease (and
//! replaced) cannot commit anything afterwards.
//!
//! The driver is `tokio-postgres`; the engine's store traits are
//! synchronous, so each call blocks on the client's future. The connection
//! itself is driven by a thread of its own (a one-thread runtime), which
//! lets a store be called from inside the daemon's runtime without nesting
//! runtimes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use directory::{Anchor, Dn, ObjectKind};
use serde_json::{Value as Json, json};
use sync::engine::{
    ConnectorSpace, CycleReport, ExportLog, MemberChanges, Metaverse, MvRecord, Projected, StoreError, Transactional,
};
use sync::mapping::{Flavor, Projection};
use sync::{SourceId, SourceObject, Watermark};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

pub use pgconn::{DatabaseSettings, PgTls, block, describe};

use crate::lease::{Fence, LeaseInfo};
use crate::{
    Counts, ErrorRow, History, JoinedRow, RunRow, RunSummary, dn_key, err, failed_summary, kind_from, kind_str, now,
    pack,
};

/// The schema, one entry per version. Applied in order at connect, under a
/// transaction-scoped advisory lock (two daemons starting together migrate once).
const MIGRATIONS: &[&str] = &["
CREATE TABLE sync_sources (name TEXT PRIMARY KEY, watermark TEXT, config_hash TEXT, flavor TEXT);
CREATE TABLE sync_cs (
    -- Import order: sync visits pending objects in it (as SQLite's rowid does).
    seq BIGSERIAL NOT NULL,
    source TEXT NOT NULL,
    id BYTEA NOT NULL,
    dn TEXT NOT NULL,
    dn_norm TEXT NOT NULL,
    kind TEXT NOT NULL,
    anchor BYTEA NOT NULL,
    entry TEXT NOT NULL,
    pending BOOLEAN NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (source, id)
);
CREATE INDEX sync_cs_dn ON sync_cs(source, dn_norm);
CREATE INDEX sync_cs_pending ON sync_cs(source) WHERE pending;
CREATE TABLE sync_cs_refs (source TEXT NOT NULL, id BYTEA NOT NULL, ref_dn_norm TEXT NOT NULL);
CREATE INDEX sync_cs_refs_target ON sync_cs_refs(ref_dn_norm, source);
CREATE INDEX sync_cs_refs_owner ON sync_cs_refs(source, id);
CREATE TABLE sync_mv (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    anchor TEXT NOT NULL,
    attrs TEXT NOT NULL,
    manager TEXT,
    members TEXT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT false,
    dirty BOOLEAN NOT NULL,
    source TEXT NOT NULL,
    cs_id BYTEA NOT NULL,
    dn_norm TEXT NOT NULL
);
CREATE UNIQUE INDEX sync_mv_link ON sync_mv(source, cs_id);
CREATE INDEX sync_mv_dn ON sync_mv(source, dn_norm);
CREATE INDEX sync_mv_dirty ON sync_mv(dirty) WHERE dirty;
CREATE INDEX sync_mv_anchor ON sync_mv(anchor);
CREATE TABLE sync_exported (mv_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, resource TEXT NOT NULL);
CREATE TABLE sync_errors (mv_id TEXT PRIMARY KEY, stage TEXT NOT NULL, message TEXT NOT NULL, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, attempts BIGINT NOT NULL);
CREATE TABLE sync_runs (id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, finished TEXT NOT NULL, status TEXT NOT NULL, report TEXT NOT NULL);
CREATE TABLE sync_joins (source TEXT NOT NULL, cs_id BYTEA NOT NULL, mv_id TEXT NOT NULL, attrs TEXT NOT NULL, authoritative TEXT NOT NULL, PRIMARY KEY (source, cs_id));
CREATE INDEX sync_joins_mv ON sync_joins(mv_id);
CREATE TABLE sync_phs_pending (source TEXT NOT NULL, cs_id BYTEA NOT NULL, PRIMARY KEY (source, cs_id));
-- Who may write: one row, renewed by the active daemon, taken over by a
-- standby once it has expired (by the database's clock, never a node's).
CREATE TABLE sync_lease (
    id INT PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    -- Names this state for fencing tokens (kept across takeovers).
    lineage TEXT NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', ''),
    acquired_at TIMESTAMPTZ NOT NULL,
    renewed_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    -- The holder's writing session: a successor ends it, so a paused
    -- holder's open transaction cannot keep its row locks.
    writer_pid INT
);
", "
-- Records compressed (see pack.rs); plain JSON written before stays readable.
ALTER TABLE sync_cs ALTER COLUMN entry TYPE BYTEA USING convert_to(entry, 'UTF8');
ALTER TABLE sync_exported ALTER COLUMN resource TYPE BYTEA USING convert_to(resource, 'UTF8');
", "
-- References keep a 64-bit key of the DN they point at (crate::ref_key: the
-- first 8 bytes of the MD5 of the normalized DN, big-endian).
CREATE TABLE sync_cs_ref_keys (source TEXT NOT NULL, id BYTEA NOT NULL, ref_key BIGINT NOT NULL, PRIMARY KEY (source, id, ref_key));
INSERT INTO sync_cs_ref_keys(source, id, ref_key)
    SELECT source, id, ('x' || left(md5(ref_dn_norm), 16))::bit(64)::bigint FROM sync_cs_refs
    ON CONFLICT DO NOTHING;
DROP TABLE sync_cs_refs;
CREATE INDEX sync_cs_ref_keys_target ON sync_cs_ref_keys(ref_key, source);
", "
-- Join keys: every value (lower case) of each metaverse attribute some
-- source joins on, so a join on a multi-valued attribute is a lookup; an
-- attribute's keys are built the first time a join asks for it.
CREATE TABLE IF NOT EXISTS sync_mv_join_attrs (attr TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS sync_mv_join_keys (attr TEXT NOT NULL, value TEXT NOT NULL, mv_id TEXT NOT NULL, PRIMARY KEY (attr, value, mv_id));
CREATE INDEX IF NOT EXISTS sync_mv_join_keys_by_mv ON sync_mv_join_keys(mv_id);
", "
-- The precedence of the rule behind each attribute, of the projecting object
-- and of each joined one; every source's next cycle is a full one.
ALTER TABLE sync_mv ADD COLUMN IF NOT EXISTS precedence TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sync_joins ADD COLUMN IF NOT EXISTS precedence TEXT NOT NULL DEFAULT '{}';
UPDATE sync_sources SET config_hash = NULL;
", "
-- The manager and members a joined object gives (sync::engine::JoinedRefs as JSON).
ALTER TABLE sync_joins ADD COLUMN IF NOT EXISTS refs TEXT NOT NULL DEFAULT '{}';
", "
-- Groups synced by difference (as SQLite's schema version 10): a group whose
-- references are all members (delta_ok), its pending changes member changes
-- only (members_only, listed in sync_cs_member_changes), a dirty metaverse
-- object's changes member changes only (listed in sync_mv_member_changes).
ALTER TABLE sync_cs ADD COLUMN IF NOT EXISTS delta_ok BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE sync_cs ADD COLUMN IF NOT EXISTS members_only BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS sync_cs_member_changes (source TEXT NOT NULL, id BYTEA NOT NULL, dn_norm TEXT NOT NULL, added BOOLEAN NOT NULL, PRIMARY KEY (source, id, dn_norm));
ALTER TABLE sync_mv ADD COLUMN IF NOT EXISTS members_only BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS sync_mv_member_changes (mv_id TEXT NOT NULL, member TEXT NOT NULL, added BOOLEAN NOT NULL, PRIMARY KEY (mv_id, member));
-- Member changes of a metaverse object and those the tenant confirmed, folded
-- into sync_mv.members and the resource now and then (crate::FOLD_MEMBER_LOG).
CREATE TABLE IF NOT EXISTS sync_mv_member_log (mv_id TEXT NOT NULL, member TEXT NOT NULL, added BOOLEAN NOT NULL, PRIMARY KEY (mv_id, member));
CREATE TABLE IF NOT EXISTS sync_exported_member_log (mv_id TEXT NOT NULL, tenant_id TEXT NOT NULL, added BOOLEAN NOT NULL, PRIMARY KEY (mv_id, tenant_id));
", "
-- A large group's member values apart from its entry, in chunks cut by
-- content (crate::member_chunks): member_chunks lists their digests in order
-- (empty: the entry holds its members).
ALTER TABLE sync_cs ADD COLUMN IF NOT EXISTS member_chunks BYTEA NOT NULL DEFAULT ''::bytea;
CREATE TABLE IF NOT EXISTS sync_cs_member_chunks (source TEXT NOT NULL, id BYTEA NOT NULL, digest BYTEA NOT NULL, attr TEXT NOT NULL, members BYTEA NOT NULL, PRIMARY KEY (source, id, digest));
"];

/// The values of `attrs` (JSON text) at key $1, each as text: every element
/// of an array, or the one string or number.
const JOIN_VALUES: &str = "jsonb_array_elements_text(CASE jsonb_typeof(m.attrs::jsonb -> $1)
    WHEN 'array' THEN m.attrs::jsonb -> $1
    WHEN 'string' THEN jsonb_build_array(m.attrs::jsonb -> $1)
    WHEN 'number' THEN jsonb_build_array(m.attrs::jsonb -> $1)
    ELSE '[]'::jsonb END)";

/// The component name under which the schema version is kept.
const COMPONENT: &str = "sync";

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError(describe(&e))
}

/// Opens a connection (see [`pgconn::connect`]).
pub(crate) fn connect(settings: &DatabaseSettings) -> Result<Client, StoreError> {
    pgconn::connect(settings).map_err(|e| StoreError(e.0))
}

/// Applies the schema versions this build has and the database lacks.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let migrations: Vec<String> = MIGRATIONS.iter().map(|m| (*m).to_string()).collect();
    pgconn::migrate(client, COMPONENT, &migrations).map_err(|e| StoreError(e.0))
}

/// Names `client`'s session in the lease row while `fence`'s lease is held.
fn note_session(client: &Client, fence: &Fence) -> Result<(), StoreError> {
    block(client.execute(
        "UPDATE sync_lease SET writer_pid = pg_backend_pid() WHERE id = 1 AND holder = $1 AND epoch = $2",
        &[&fence.holder, &fence.epoch],
    ))
    .map_err(pg)?;
    Ok(())
}

/// An open connection and its prepared statements.
struct Connection {
    client: Client,
    statements: HashMap<String, Statement>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The sync store in PostgreSQL.
pub struct PgStore {
    settings: DatabaseSettings,
    /// `None` after the connection broke outside a transaction: the next
    /// call reconnects (a restarted database costs one failed cycle).
    conn: RefCell<Option<Connection>>,
    in_transaction: bool,
    /// The lease this store writes under; without one it only reads.
    fence: Option<Fence>,
    no_joins: Cell<bool>,
    /// The metaverse attributes whose join keys are kept; read again after
    /// a rollback (`None`).
    join_attrs: RefCell<Option<Vec<String>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("settings", &self.settings).field("fence", &self.fence).finish()
    }
}

impl PgStore {
    /// A connector-space group's stored member chunks with these digests.
    fn member_chunks(
        &self,
        source: &str,
        id: &SourceId,
        digests: &[crate::member_chunks::Digest],
    ) -> Result<Vec<crate::StoredChunk>, StoreError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
        let rows = self.query(
            "SELECT digest, attr, members FROM sync_cs_member_chunks WHERE source = $1 AND id = $2 AND digest = ANY($3)",
            &[&source, &id.0, &wanted],
        )?;
        rows.iter()
            .map(|r| {
                crate::stored_chunk(r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?, r.try_get(2).map_err(pg)?)
            })
            .collect()
    }

    /// A metaverse object's members: the stored list (JSON text) with the
    /// changes logged since put in.
    fn members_with_log(&self, mv: &str, members: &str) -> Result<Vec<String>, StoreError> {
        let members: Vec<String> = serde_json::from_str(members).map_err(err)?;
        let rows = self.query("SELECT member, added FROM sync_mv_member_log WHERE mv_id = $1", &[&mv])?;
        Ok(crate::members_with_log(members, rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
    }

    /// A group's resource as last confirmed: the stored one (JSON text)
    /// with the member changes logged since put in.
    fn with_member_log(&self, mv: &str, resource: &str) -> Result<String, StoreError> {
        let rows = self.query("SELECT tenant_id, added FROM sync_exported_member_log WHERE mv_id = $1", &[&mv])?;
        crate::apply_member_changes(resource, &rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Connects, applies missing schema versions, and returns a store that
    /// reads; [`PgStore::write_under`] lets it write.
    pub fn connect(settings: &DatabaseSettings) -> Result<PgStore, StoreError> {
        settings.check().map_err(|e| StoreError(e.0))?;
        let mut client = connect(settings)?;
        migrate(&mut client)?;
        let store = PgStore {
            settings: settings.clone(),
            conn: RefCell::new(Some(Connection { client, statements: HashMap::new() })),
            in_transaction: false,
            fence: None,
            no_joins: Cell::new(true),
            join_attrs: RefCell::new(None),
        };
        let any_join = store.query_one("SELECT EXISTS(SELECT 1 FROM sync_joins)", &[])?;
        store.no_joins.set(!any_join.get::<_, bool>(0));
        Ok(store)
    }

    /// The settings this store connects with (the lease's renewer uses them too).
    pub fn settings(&self) -> &DatabaseSettings {
        &self.settings
    }

    /// From now on every commit checks that `fence`'s lease is still held.
    pub fn write_under(&mut self, fence: Fence) -> Result<(), StoreError> {
        self.fence = Some(fence);
        self.with_client(|_| Ok(()))?;
        self.record_session()
    }

    /// Notes this store's database session in the lease row (a successor
    /// ends it on takeover).
    fn record_session(&self) -> Result<(), StoreError> {
        let Some(fence) = &self.fence else { return Ok(()) };
        self.with_client(|conn| note_session(&conn.client, fence))
    }

    /// The lease's holder, if any (expired or not).
    pub fn lease_holder(&self) -> Result<Option<LeaseInfo>, StoreError> {
        let row = self.query_opt(
            "SELECT holder, epoch,
                    to_char(acquired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    to_char(renewed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint
             FROM sync_lease WHERE id = 1",
            &[],
        )?;
        Ok(row.map(|r| LeaseInfo {
            holder: r.get(0),
            epoch: r.get(1),
            acquired_at: r.get(2),
            renewed_at: r.get(3),
            expires_in_ms: r.get(4),
        }))
    }

    /// Runs `f` with the connection, reconnecting first if it broke while
    /// no transaction was open.
    fn with_client<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let mut slot = self.conn.borrow_mut();
        if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
            *slot = None;
        }
        if slot.is_none() {
            if self.in_transaction {
                return Err(StoreError(
                    "the database session ended during the transaction (another daemon may have taken over the sync lease); nothing of this transaction was committed".into(),
                ));
            }
            let client = connect(&self.settings)?;
            if let Some(fence) = &self.fence {
                note_session(&client, fence)?;
            }
            *slot = Some(Connection { client, statements: HashMap::new() });
        }
        let Some(conn) = slot.as_mut() else { return Err(StoreError("no database connection".into())) };
        f(conn)
    }

    fn statement(conn: &mut Connection, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = conn.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = block(conn.client.prepare(sql)).map_err(pg)?;
        conn.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        self.with_client(|conn| {
            let statement = Self::statement(conn, sql)?;
            block(conn.client.query(&statement, params)).map_err(pg)
        })
    }

    fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or_else(|| StoreError(format!("no row from {sql}")))
    }

    /// The metaverse attributes whose join keys are kept.
    fn join_attributes(&self) -> Result<Vec<String>, StoreError> {
        if let Some(known) = self.join_attrs.borrow().as_ref() {
            return Ok(known.clone());
        }
        let rows = self.query("SELECT attr FROM sync_mv_join_attrs ORDER BY attr", &[])?;
        let known: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        *self.join_attrs.borrow_mut() = Some(known.clone());
        Ok(known)
    }

    /// Keeps the join keys of metaverse object `mv` in step with its
    /// attributes (nothing to do while no source joins).
    fn keep_join_keys(&mut self, mv: &str) -> Result<(), StoreError> {
        let attrs = self.join_attributes()?;
        if attrs.is_empty() {
            return Ok(());
        }
        self.write("DELETE FROM sync_mv_join_keys WHERE mv_id = $1", &[&mv])?;
        for attr in &attrs {
            self.write(
                &format!(
                    "INSERT INTO sync_mv_join_keys(attr, value, mv_id) SELECT $1, lower(v), m.id FROM sync_mv m, {JOIN_VALUES} AS v
                     WHERE m.id = $2 ON CONFLICT DO NOTHING"
                ),
                &[attr, &mv],
            )?;
        }
        Ok(())
    }

    fn simple(&self, sql: &str) -> Result<(), StoreError> {
        self.with_client(|conn| block(conn.client.batch_execute(sql)).map_err(pg))
    }

    /// A write. Inside a transaction it joins it; outside, it is a
    /// transaction of its own, fenced like any other.
    fn write(&mut self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        if self.in_transaction {
            return self.with_client(|conn| {
                let statement = Self::statement(conn, sql)?;
                block(conn.client.execute(&statement, params)).map_err(pg)
            });
        }
        self.begin()?;
        let written = self.with_client(|conn| {
            let statement = Self::statement(conn, sql)?;
            block(conn.client.execute(&statement, params)).map_err(pg)
        });
        match written {
            Ok(n) => {
                self.commit()?;
                Ok(n)
            }
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    /// Merges the joined objects' contributions into `record`.
    fn merge_joined(&self, record: &mut MvRecord) -> Result<(), StoreError> {
        if self.no_joins.get() {
            return Ok(());
        }
        let rows = self.query(
            "SELECT j.attrs, j.precedence, j.authoritative, m.precedence, j.refs FROM sync_joins j JOIN sync_mv m ON m.id = j.mv_id
             WHERE j.mv_id = $1 ORDER BY j.source, j.cs_id",
            &[&record.id],
        )?;
        let mut precedence = None;
        for row in rows {
            let precedence = match &mut precedence {
                Some(p) => p,
                None => precedence.insert(crate::precedence_from(row.get(3))?),
            };
            crate::merge_contribution(&mut record.attrs, precedence, row.get(0), row.get(1), row.get(2))?;
            crate::joined_refs(row.get(4))?.apply(record);
        }
        Ok(())
    }
}

impl Transactional for PgStore {
    fn begin(&mut self) -> Result<(), StoreError> {
        if self.in_transaction {
            return Err(StoreError("a transaction is already open".into()));
        }
        if self.fence.is_none() {
            return Err(StoreError("this sync store was opened to read; writing needs the lease".into()));
        }
        self.simple("BEGIN")?;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if !self.in_transaction {
            return Err(StoreError("no transaction is open".into()));
        }
        let Some(fence) = self.fence.clone() else {
            return Err(StoreError("this sync store was opened to read; writing needs the lease".into()));
        };
        // The fence: under a row lock (a takeover's UPDATE waits for this
        // transaction, or this check sees the takeover), the lease must
        // still be ours and unexpired by the database's clock.
        let held = self.query_opt(
            "SELECT 1 FROM sync_lease WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp() FOR SHARE",
            &[&fence.holder, &fence.epoch],
        );
        match held {
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = self.rollback();
                return Err(StoreError(
                    "this daemon no longer holds the sync lease (it expired or another daemon took over); nothing of this transaction was committed".into(),
                ));
            }
            Err(e) => {
                let _ = self.rollback();
                let closed = self.conn.borrow().as_ref().is_none_or(|c| c.client.is_closed());
                return Err(if closed {
                    StoreError(format!(
                        "the database session ended before the commit ({}; another daemon may have taken over the sync lease); nothing of this transaction was committed",
                        e.0
                    ))
                } else {
                    e
                });
            }
        }
        self.in_transaction = false;
        let committed = self.simple("COMMIT");
        if committed.is_err() {
            // The connection may be gone mid-commit: start afresh next time.
            *self.conn.borrow_mut() = None;
        }
        committed
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        if !self.in_transaction {
            return Ok(());
        }
        self.in_transaction = false;
        *self.join_attrs.borrow_mut() = None;
        let rolled_back = self.simple("ROLLBACK");
        if rolled_back.is_err() {
            // A broken connection rolled back by itself; never reuse it.
            *self.conn.borrow_mut() = None;
        }
        rolled_back
    }
}

fn flavor_str(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::ActiveDirectory => "active-directory",
        Flavor::Ldap => "ldap",
    }
}

fn id_of(row: &Row, i: usize) -> SourceId {
    SourceId(row.get::<_, Vec<u8>>(i))
}

impl ConnectorSpace for PgStore {
    fn flavor(&self, source: &str) -> Result<Option<Flavor>, StoreError> {
        let row = self.query_opt("SELECT flavor FROM sync_sources WHERE name = $1", &[&source])?;
        Ok(match row.and_then(|r| r.get::<_, Option<String>>(0)).as_deref() {
            Some("active-directory") => Some(Flavor::ActiveDirectory),
            Some("ldap") => Some(Flavor::Ldap),
            _ => None,
        })
    }

    fn set_flavor(&mut self, source: &str, flavor: Flavor) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO sync_sources(name, flavor) VALUES($1, $2) ON CONFLICT (name) DO UPDATE SET flavor = excluded.flavor",
            &[&source, &flavor_str(flavor)],
        )?;
        Ok(())
    }

    fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError> {
        let row = self.query_opt("SELECT watermark FROM sync_sources WHERE name = $1", &[&source])?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)).map(Watermark))
    }

    fn set_watermark(&mut self, source: &str, watermark: &Watermark) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO sync_sources(name, watermark) VALUES($1, $2) ON CONFLICT (name) DO UPDATE SET watermark = excluded.watermark",
            &[&source, &watermark.0],
        )?;
        Ok(())
    }

    fn config_hash(&self, source: &str) -> Result<Option<String>, StoreError> {
        let row = self.query_opt("SELECT config_hash FROM sync_sources WHERE name = $1", &[&source])?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    fn set_config_hash(&mut self, source: &str, hash: &str) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO sync_sources(name, config_hash) VALUES($1, $2) ON CONFLICT (name) DO UPDATE SET config_hash = excluded.config_hash",
            &[&source, &hash],
        )?;
        Ok(())
    }

    fn cs_put(&mut self, source: &str, object: &SourceObject) -> Result<(), StoreError> {
        let incoming = crate::incoming(object)?;
        let dn_norm = object.entry.dn.normalized();
        let dn = object.entry.dn.to_string();
        let old = self
            .query_opt(
                "SELECT entry, member_chunks, anchor, kind, pending, members_only, deleted FROM sync_cs WHERE source = $1 AND id = $2",
                &[&source, &object.id.0],
            )?
            .map(|r| -> Result<crate::StoredCs, StoreError> {
                Ok(crate::StoredCs {
                    entry: r.try_get::<_, Vec<u8>>(0).map_err(pg)?,
                    member_chunks: r.try_get::<_, Vec<u8>>(1).map_err(pg)?,
                    anchor: r.get(2),
                    kind: r.get(3),
                    pending: r.get(4),
                    members_only: r.get(5),
                    deleted: r.get(6),
                })
            })
            .transpose()?;
        let load = |digests: &[crate::member_chunks::Digest]| self.member_chunks(source, &object.id, digests);
        let member_changes = match crate::classify_put(old.as_ref(), &incoming, object, &load)? {
            crate::Put::Unchanged => return Ok(()),
            crate::Put::Whole => None,
            crate::Put::Members(added, removed) => Some((added, removed)),
        };
        let delta_ok = crate::members_by_difference(object);
        self.write(
            "INSERT INTO sync_cs(source, id, dn, dn_norm, kind, anchor, entry, pending, deleted, delta_ok, members_only, member_chunks)
             VALUES($1, $2, $3, $4, $5, $6, $7, true, false, $8, $9, $10)
             ON CONFLICT (source, id) DO UPDATE SET dn = excluded.dn, dn_norm = excluded.dn_norm, kind = excluded.kind,
               anchor = excluded.anchor, entry = excluded.entry, pending = true, deleted = false,
               delta_ok = excluded.delta_ok, members_only = excluded.members_only, member_chunks = excluded.member_chunks",
            &[
                &source,
                &object.id.0,
                &dn,
                &dn_norm,
                &kind_str(object.kind),
                &object.anchor.0,
                &incoming.entry,
                &delta_ok,
                &member_changes.is_some(),
                &incoming.digest_list,
            ],
        )?;
        let (write, delete) =
            crate::chunk_writes(old.as_ref().map(|o| o.member_chunks.as_slice()).unwrap_or_default(), &incoming)?;
        if !write.is_empty() || !delete.is_empty() {
            let mut digests: Vec<&[u8]> = Vec::with_capacity(write.len());
            let mut attrs: Vec<&str> = Vec::with_capacity(write.len());
            let mut members: Vec<&[u8]> = Vec::with_capacity(write.len());
            for (digest, attr, packed) in &write {
                digests.push(digest.as_slice());
                attrs.push(attr);
                members.push(packed.as_slice());
            }
            let gone: Vec<&[u8]> = delete.iter().map(|d| d.as_slice()).collect();
            self.write(
                "WITH gone AS (DELETE FROM sync_cs_member_chunks WHERE source = $1 AND id = $2 AND digest = ANY($6))
                 INSERT INTO sync_cs_member_chunks(source, id, digest, attr, members)
                 SELECT $1, $2, d, a, m FROM unnest($3::bytea[], $4::text[], $5::bytea[]) AS t(d, a, m)
                 ON CONFLICT (source, id, digest) DO UPDATE SET attr = excluded.attr, members = excluded.members",
                &[&source, &object.id.0, &digests, &attrs, &members, &gone],
            )?;
        }
        if let Some((added, removed)) = member_changes {
            let keys = |dns: &[String]| -> Vec<i64> { dns.iter().map(|d| crate::ref_key(d)).collect() };
            // The changes, and the reference keys by the same difference
            // (every reference of such a group is a member).
            self.write(
                "WITH changes AS (
                   INSERT INTO sync_cs_member_changes(source, id, dn_norm, added)
                   SELECT $1::text, $2::bytea, d, true FROM unnest($3::text[]) AS d
                   UNION ALL SELECT $1::text, $2::bytea, d, false FROM unnest($4::text[]) AS d
                   ON CONFLICT (source, id, dn_norm) DO UPDATE SET added = excluded.added),
                 keyed AS (
                   INSERT INTO sync_cs_ref_keys(source, id, ref_key) SELECT $1, $2, k FROM unnest($5::bigint[]) AS k
                   ON CONFLICT DO NOTHING)
                 DELETE FROM sync_cs_ref_keys WHERE source = $1 AND id = $2 AND ref_key = ANY($6)",
                &[&source, &object.id.0, &added, &removed, &keys(&added), &keys(&removed)],
            )?;
            return Ok(());
        }
        self.write("DELETE FROM sync_cs_member_changes WHERE source = $1 AND id = $2", &[&source, &object.id.0])?;
        // Only what changed, as in SQLite: a member added to a large
        // group is one row, not the whole list again.
        let wanted: Vec<i64> = crate::ref_keys(&object.entry).into_iter().collect();
        self.write(
            "DELETE FROM sync_cs_ref_keys WHERE source = $1 AND id = $2 AND NOT (ref_key = ANY($3))",
            &[&source, &object.id.0, &wanted],
        )?;
        self.write(
            "INSERT INTO sync_cs_ref_keys(source, id, ref_key)
             SELECT $1, $2, w FROM unnest($3::bigint[]) AS w
             ON CONFLICT DO NOTHING",
            &[&source, &object.id.0, &wanted],
        )?;
        Ok(())
    }

    fn cs_delete(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        self.write(
            "UPDATE sync_cs SET deleted = true, pending = true, members_only = false WHERE source = $1 AND id = $2",
            &[&source, &id.0],
        )?;
        Ok(())
    }

    fn cs_count(&self, source: &str) -> Result<usize, StoreError> {
        let row = self.query_one("SELECT count(*) FROM sync_cs WHERE source = $1 AND NOT deleted", &[&source])?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn cs_unseen(
        &self,
        source: &str,
        seen: &std::collections::HashSet<SourceId>,
    ) -> Result<Vec<(SourceId, Dn)>, StoreError> {
        let rows = self.query("SELECT id, dn FROM sync_cs WHERE source = $1 AND NOT deleted", &[&source])?;
        Ok(rows
            .iter()
            .map(|r| (id_of(r, 0), r))
            .filter(|(id, _)| !seen.contains(id))
            .filter_map(|(id, r)| Dn::parse(r.get::<_, &str>(1)).ok().map(|dn| (id, dn)))
            .collect())
    }

    fn cs_mark_all_pending(&mut self, source: &str) -> Result<(), StoreError> {
        self.write("UPDATE sync_cs SET pending = true, members_only = false WHERE source = $1", &[&source])?;
        Ok(())
    }

    fn cs_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError> {
        let rows = self.query("SELECT id FROM sync_cs WHERE source = $1 AND pending ORDER BY seq", &[&source])?;
        Ok(rows.iter().map(|r| id_of(r, 0)).collect())
    }

    fn cs_get(&self, source: &str, id: &SourceId) -> Result<Option<(SourceObject, bool)>, StoreError> {
        let Some(row) = self.query_opt(
            "SELECT kind, anchor, entry, member_chunks, deleted FROM sync_cs WHERE source = $1 AND id = $2",
            &[&source, &id.0],
        )?
        else {
            return Ok(None);
        };
        let load = |digests: &[crate::member_chunks::Digest]| self.member_chunks(source, id, digests);
        let entry = crate::stored_entry(row.try_get(2).map_err(pg)?, row.try_get(3).map_err(pg)?, &load)?
            .ok_or_else(|| StoreError(format!("connector-space object {id} is corrupt")))?;
        let object = SourceObject { id: id.clone(), anchor: Anchor(row.get(1)), kind: kind_from(row.get(0)), entry };
        Ok(Some((object, row.get(4))))
    }

    fn cs_find(&self, source: &str, dn: &Dn) -> Result<Option<SourceId>, StoreError> {
        let row = self.query_opt(
            "SELECT id FROM sync_cs WHERE source = $1 AND dn_norm = $2 AND NOT deleted",
            &[&source, &dn.normalized()],
        )?;
        Ok(row.map(|r| id_of(&r, 0)))
    }

    fn cs_referencing(&self, source: &str, dn: &Dn) -> Result<Vec<SourceId>, StoreError> {
        let rows = self.query(
            "SELECT DISTINCT id FROM sync_cs_ref_keys WHERE ref_key = $2 AND source = $1 ORDER BY id",
            &[&source, &crate::ref_key(&dn.normalized())],
        )?;
        Ok(rows.iter().map(|r| id_of(r, 0)).collect())
    }

    fn cs_mark_pending(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        self.write(
            "UPDATE sync_cs SET pending = true, members_only = false WHERE source = $1 AND id = $2",
            &[&source, &id.0],
        )?;
        Ok(())
    }

    fn cs_mark_referencing_pending(&mut self, source: &str, dn: &Dn, except: &SourceId) -> Result<(), StoreError> {
        let dn_norm = dn.normalized();
        let key = crate::ref_key(&dn_norm);
        // A group synced by difference gets the one member to resolve.
        self.write(
            "INSERT INTO sync_cs_member_changes(source, id, dn_norm, added)
             SELECT c.source, c.id, $4, true FROM sync_cs c
             WHERE c.source = $1 AND c.id <> $3 AND NOT c.deleted
               AND c.id IN (SELECT r.id FROM sync_cs_ref_keys r WHERE r.ref_key = $2 AND r.source = $1)
               AND ((NOT c.pending AND c.delta_ok) OR (c.pending AND c.members_only))
             ON CONFLICT (source, id, dn_norm) DO UPDATE SET added = true",
            &[&source, &key, &except.0, &dn_norm],
        )?;
        self.write(
            "UPDATE sync_cs SET pending = true, members_only = delta_ok WHERE source = $1 AND NOT pending AND id <> $3
               AND id IN (SELECT r.id FROM sync_cs_ref_keys r WHERE r.ref_key = $2 AND r.source = $1)",
            &[&source, &key, &except.0],
        )?;
        Ok(())
    }

    fn cs_done(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        // One statement: the deleted row and its references go, a live one is unmarked.
        self.write(
            "WITH gone AS (DELETE FROM sync_cs WHERE source = $1 AND id = $2 AND deleted RETURNING source, id),
                  refs AS (DELETE FROM sync_cs_ref_keys r USING gone g WHERE r.source = g.source AND r.id = g.id),
                  chunks AS (DELETE FROM sync_cs_member_chunks c USING gone g WHERE c.source = g.source AND c.id = g.id),
                  changes AS (DELETE FROM sync_cs_member_changes WHERE source = $1 AND id = $2)
             UPDATE sync_cs SET pending = false, members_only = false WHERE source = $1 AND id = $2 AND pending AND NOT deleted",
            &[&source, &id.0],
        )?;
        Ok(())
    }

    fn cs_member_changes(&self, source: &str, id: &SourceId) -> Result<Option<MemberChanges>, StoreError> {
        let members_only = self
            .query_opt(
                "SELECT pending AND members_only AND NOT deleted FROM sync_cs WHERE source = $1 AND id = $2",
                &[&source, &id.0],
            )?
            .is_some_and(|r| r.get::<_, bool>(0));
        if !members_only {
            return Ok(None);
        }
        let rows = self.query(
            "SELECT dn_norm, added FROM sync_cs_member_changes WHERE source = $1 AND id = $2",
            &[&source, &id.0],
        )?;
        Ok(Some(rows.iter().filter_map(|r| Dn::parse(r.get::<_, &str>(0)).ok().map(|dn| (dn, r.get(1)))).collect()))
    }

    fn passwords_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError> {
        let rows = self.query("SELECT cs_id FROM sync_phs_pending WHERE source = $1", &[&source])?;
        Ok(rows.iter().map(|r| id_of(r, 0)).collect())
    }

    fn set_password_pending(&mut self, source: &str, id: &SourceId, pending: bool) -> Result<(), StoreError> {
        let sql = if pending {
            "INSERT INTO sync_phs_pending(source, cs_id) VALUES($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM sync_phs_pending WHERE source = $1 AND cs_id = $2"
        };
        self.write(sql, &[&source, &id.0])?;
        Ok(())
    }
}

impl Metaverse for PgStore {
    fn mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT id FROM sync_mv WHERE source = $1 AND dn_norm = $2 AND NOT deleted",
            &[&source, &dn.normalized()],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn mv_for_dns(&self, source: &str, dns: &[Dn]) -> Result<Vec<String>, StoreError> {
        if dns.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = dns.iter().map(Dn::normalized).collect();
        let rows = self.query(
            "SELECT m.id FROM unnest($2::text[]) AS d JOIN sync_mv m ON m.source = $1 AND m.dn_norm = d AND NOT m.deleted",
            &[&source, &list],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn mv_unresolved(&self, source: &str, dns: &[Dn]) -> Result<Vec<usize>, StoreError> {
        if dns.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = dns.iter().map(Dn::normalized).collect();
        let rows = self.query(
            "SELECT d.ord - 1 FROM unnest($2::text[]) WITH ORDINALITY AS d(dn, ord)
             WHERE NOT EXISTS(SELECT 1 FROM sync_mv m WHERE m.source = $1 AND m.dn_norm = d.dn AND NOT m.deleted)",
            &[&source, &list],
        )?;
        rows.iter().map(|r| usize::try_from(r.get::<_, i64>(0)).map_err(crate::err)).collect()
    }

    fn mv_project(
        &mut self,
        source: &str,
        id: &SourceId,
        p: &Projection,
        manager: Option<String>,
        mut members: Vec<String>,
    ) -> Result<Projected, StoreError> {
        let (attrs, members, dn_norm) = crate::projection_row(p, &mut members);
        let precedence = crate::precedence_text(&p.precedence);
        let existing = self.query_opt(
            "SELECT id, dn_norm, deleted FROM sync_mv WHERE source = $1 AND cs_id = $2",
            &[&source, &id.0],
        )?;
        let kind = kind_str(p.kind);
        match existing {
            Some(row) => {
                let mv: String = row.get(0);
                let newly_resolvable =
                    row.try_get::<_, bool>(2).map_err(pg)? || row.try_get::<_, String>(1).map_err(pg)? != dn_norm;
                // The whole list replaces the stored one and its log (a log left means the stored list is not the list).
                let had_log = self.write("DELETE FROM sync_mv_member_log WHERE mv_id = $1", &[&mv])? > 0;
                let changed = self.write(
                    "UPDATE sync_mv SET kind = $2, anchor = $3, attrs = $4, manager = $5, members = $6, dn_norm = $7, precedence = $8,
                       deleted = false, dirty = true, members_only = false
                     WHERE id = $1 AND (kind != $2 OR anchor != $3 OR attrs != $4 OR manager IS DISTINCT FROM $5 OR members != $6
                       OR dn_norm != $7 OR precedence != $8 OR deleted OR $9)",
                    &[&mv, &kind, &p.anchor, &attrs, &manager, &members, &dn_norm, &precedence, &had_log],
                )?;
                if changed > 0 {
                    self.keep_join_keys(&mv)?;
                }
                Ok(Projected { id: mv, newly_resolvable })
            }
            None => {
                if !self.in_transaction {
                    return Err(StoreError("a projection is written inside a transaction".into()));
                }
                let row = self.query_one(
                    "INSERT INTO sync_mv(id, kind, anchor, attrs, manager, members, deleted, dirty, source, cs_id, dn_norm, precedence)
                     VALUES(replace(gen_random_uuid()::text, '-', ''), $1, $2, $3, $4, $5, false, true, $6, $7, $8, $9)
                     RETURNING id",
                    &[&kind, &p.anchor, &attrs, &manager, &members, &source, &id.0, &dn_norm, &precedence],
                )?;
                let mv: String = row.get(0);
                self.keep_join_keys(&mv)?;
                Ok(Projected { id: mv, newly_resolvable: true })
            }
        }
    }

    fn mv_change_members(&mut self, source: &str, id: &SourceId, changes: &MemberChanges) -> Result<bool, StoreError> {
        let Some(row) = self.query_opt(
            "SELECT m.id, m.dirty, m.members_only FROM sync_mv m WHERE m.source = $1 AND m.cs_id = $2 AND NOT m.deleted
               AND NOT EXISTS(SELECT 1 FROM sync_joins j WHERE j.mv_id = m.id)",
            &[&source, &id.0],
        )?
        else {
            return Ok(false);
        };
        let (mv, dirty, members_only): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
        let added = self.mv_for_dns(source, &changes.added)?;
        // A member removed may be gone already (deleted on-premises): its metaverse object whatever its state.
        let gone: Vec<String> = changes.removed.iter().map(Dn::normalized).collect();
        let removed: Vec<String> = if gone.is_empty() {
            Vec::new()
        } else {
            self.query(
                "SELECT m.id FROM unnest($2::text[]) AS d JOIN sync_mv m ON m.source = $1 AND m.dn_norm = d",
                &[&source, &gone],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        if added.is_empty() && removed.is_empty() {
            return Ok(true);
        }
        // Logged next to the members, not written into them: a large
        // group's list is rewritten once per FOLD_MEMBER_LOG changes. Clean,
        // or dirty with member changes only: the export sends just these.
        let by_difference = !dirty || members_only;
        let (to_export_added, to_export_removed): (&[String], &[String]) =
            if by_difference { (&added, &removed) } else { (&[], &[]) };
        self.write(
            "WITH logged AS (
               INSERT INTO sync_mv_member_log(mv_id, member, added)
               SELECT $1::text, m, true FROM unnest($2::text[]) AS m
               UNION ALL SELECT $1::text, m, false FROM unnest($3::text[]) AS m
               ON CONFLICT (mv_id, member) DO UPDATE SET added = excluded.added),
                  changes AS (
               INSERT INTO sync_mv_member_changes(mv_id, member, added)
               SELECT $1::text, m, true FROM unnest($4::text[]) AS m
               UNION ALL SELECT $1::text, m, false FROM unnest($5::text[]) AS m
               ON CONFLICT (mv_id, member) DO UPDATE SET added = excluded.added)
             UPDATE sync_mv SET dirty = true, members_only = $6 WHERE id = $1",
            &[&mv, &added, &removed, &to_export_added, &to_export_removed, &by_difference],
        )?;
        let logged: i64 = self.query_one("SELECT count(*) FROM sync_mv_member_log WHERE mv_id = $1", &[&mv])?.get(0);
        if logged >= crate::FOLD_MEMBER_LOG {
            let stored: String = self.query_one("SELECT members FROM sync_mv WHERE id = $1", &[&mv])?.get(0);
            let members = self.members_with_log(&mv, &stored)?;
            self.write(
                "WITH folded AS (DELETE FROM sync_mv_member_log WHERE mv_id = $1)
                 UPDATE sync_mv SET members = $2 WHERE id = $1",
                &[&mv, &serde_json::to_string(&members).map_err(err)?],
            )?;
        }
        Ok(true)
    }

    fn mv_for_object(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError> {
        let row = self
            .query_opt("SELECT id FROM sync_mv WHERE source = $1 AND cs_id = $2 AND NOT deleted", &[&source, &id.0])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn mv_attrs(&self, source: &str, id: &SourceId) -> Result<Option<serde_json::Map<String, Json>>, StoreError> {
        let row = self.query_opt(
            "SELECT attrs FROM sync_mv WHERE source = $1 AND cs_id = $2 AND NOT deleted",
            &[&source, &id.0],
        )?;
        match row {
            None => Ok(None),
            Some(r) => match serde_json::from_str(r.get(0)).map_err(err)? {
                Json::Object(m) => Ok(Some(m)),
                _ => Err(StoreError("a metaverse object: attributes are not a JSON object".into())),
            },
        }
    }

    fn mv_disconnect(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        let Some(row) = self.query_opt("SELECT id FROM sync_mv WHERE source = $1 AND cs_id = $2", &[&source, &id.0])?
        else {
            return Ok(());
        };
        let mv: String = row.get(0);
        // Objects joined to it lose their metaverse object: they look for a new one next sync.
        self.write(
            "UPDATE sync_cs c SET pending = true FROM sync_joins j WHERE j.mv_id = $1 AND j.source = c.source AND j.cs_id = c.id",
            &[&mv],
        )?;
        self.write("DELETE FROM sync_joins WHERE mv_id = $1", &[&mv])?;
        let exported = self.query_one("SELECT EXISTS(SELECT 1 FROM sync_exported WHERE mv_id = $1)", &[&mv])?;
        if exported.get::<_, bool>(0) {
            self.write("UPDATE sync_mv SET deleted = true, dirty = true, members_only = false WHERE id = $1", &[&mv])?;
        } else {
            self.write("DELETE FROM sync_mv WHERE id = $1", &[&mv])?;
            self.write("DELETE FROM sync_mv_member_log WHERE mv_id = $1", &[&mv])?;
            self.write("DELETE FROM sync_mv_join_keys WHERE mv_id = $1", &[&mv])?;
            self.write("DELETE FROM sync_errors WHERE mv_id = $1", &[&mv])?;
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
        if !self.join_attributes()?.iter().any(|a| a == mv_attr) {
            // First join on this attribute: its keys from every live object, then kept.
            self.write("INSERT INTO sync_mv_join_attrs(attr) VALUES($1) ON CONFLICT DO NOTHING", &[&mv_attr])?;
            self.write(
                &format!(
                    "INSERT INTO sync_mv_join_keys(attr, value, mv_id) SELECT $1, lower(v), m.id FROM sync_mv m, {JOIN_VALUES} AS v
                     WHERE NOT m.deleted ON CONFLICT DO NOTHING"
                ),
                &[&mv_attr],
            )?;
            if let Some(known) = self.join_attrs.borrow_mut().as_mut() {
                known.push(mv_attr.to_string());
            }
        }
        let rows = self.query(
            "SELECT m.id FROM sync_mv_join_keys k JOIN sync_mv m ON m.id = k.mv_id
             WHERE k.attr = $1 AND k.value = lower($2) AND m.kind = $3 AND NOT m.deleted AND m.source != $4",
            &[&mv_attr, &value, &kind_str(kind), &source],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn join_link(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError> {
        let row = self.query_opt("SELECT mv_id FROM sync_joins WHERE source = $1 AND cs_id = $2", &[&source, &id.0])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn join_put(
        &mut self,
        source: &str,
        id: &SourceId,
        mv: &str,
        contribution: &sync::engine::JoinContribution<'_>,
    ) -> Result<(), StoreError> {
        self.no_joins.set(false);
        let attrs = Json::Object(contribution.attrs.clone()).to_string();
        let authoritative = json!(contribution.authoritative).to_string();
        let precedence = crate::precedence_text(contribution.precedence);
        let refs = serde_json::to_string(contribution.references).map_err(err)?;
        let changed = self.write(
            "INSERT INTO sync_joins(source, cs_id, mv_id, attrs, authoritative, precedence, refs) VALUES($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (source, cs_id) DO UPDATE SET mv_id = excluded.mv_id, attrs = excluded.attrs,
               authoritative = excluded.authoritative, precedence = excluded.precedence, refs = excluded.refs
             WHERE sync_joins.mv_id != excluded.mv_id OR sync_joins.attrs != excluded.attrs
               OR sync_joins.authoritative != excluded.authoritative OR sync_joins.precedence != excluded.precedence
               OR sync_joins.refs != excluded.refs",
            &[&source, &id.0, &mv, &attrs, &authoritative, &precedence, &refs],
        )?;
        if changed > 0 {
            self.write("UPDATE sync_mv SET dirty = true, members_only = false WHERE id = $1", &[&mv])?;
        }
        Ok(())
    }

    fn joined_mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT j.mv_id FROM sync_cs c JOIN sync_joins j ON j.source = c.source AND j.cs_id = c.id
             WHERE c.source = $1 AND c.dn_norm = $2 AND NOT c.deleted",
            &[&source, &dn.normalized()],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn join_remove(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        self.write(
            "UPDATE sync_mv SET dirty = true, members_only = false WHERE id = (SELECT mv_id FROM sync_joins WHERE source = $1 AND cs_id = $2)",
            &[&source, &id.0],
        )?;
        self.write("DELETE FROM sync_joins WHERE source = $1 AND cs_id = $2", &[&source, &id.0])?;
        Ok(())
    }

    fn mv_mark_dirty(&mut self, source: &str) -> Result<(), StoreError> {
        self.write("UPDATE sync_mv SET dirty = true, members_only = false WHERE source = $1", &[&source])?;
        Ok(())
    }

    fn join_retry_unlinked(&mut self, source: &str) -> Result<(), StoreError> {
        self.write(
            "UPDATE sync_cs c SET pending = true WHERE source = $1 AND NOT deleted AND NOT pending
             AND NOT EXISTS(SELECT 1 FROM sync_joins j WHERE j.source = c.source AND j.cs_id = c.id)",
            &[&source],
        )?;
        Ok(())
    }

    fn mv_get(&self, id: &str) -> Result<Option<MvRecord>, StoreError> {
        let Some(row) =
            self.query_opt("SELECT kind, anchor, attrs, manager, members, deleted FROM sync_mv WHERE id = $1", &[&id])?
        else {
            return Ok(None);
        };
        let attrs = match serde_json::from_str::<Json>(row.get(2)).map_err(err)? {
            Json::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let kind = kind_from(row.get(0));
        // Member changes are logged for groups alone (synced by difference):
        // a user's empty list needs no search of the log.
        let members = if kind == ObjectKind::Group {
            self.members_with_log(id, row.get(4))?
        } else {
            serde_json::from_str(row.get(4)).map_err(err)?
        };
        let mut record = MvRecord {
            id: id.to_string(),
            kind,
            anchor: row.get(1),
            attrs,
            manager: row.get(3),
            members,
            deleted: row.get(5),
        };
        self.merge_joined(&mut record)?;
        Ok(Some(record))
    }
}

impl ExportLog for PgStore {
    fn dirty_objects(&self) -> Result<Vec<sync::engine::DirtyObject>, StoreError> {
        let rows = self.query(
            "SELECT m.id, m.deleted, m.manager, CASE WHEN m.members_only THEN NULL ELSE m.members END,
               EXISTS(SELECT 1 FROM sync_exported e WHERE e.mv_id = m.id),
               CASE WHEN m.members_only THEN
                 ARRAY(SELECT c.member FROM sync_mv_member_changes c WHERE c.mv_id = m.id AND c.added) END
             FROM sync_mv m WHERE m.dirty
             ORDER BY m.deleted, CASE m.kind WHEN 'user' THEN 0 WHEN 'contact' THEN 1 ELSE 2 END, m.id",
            &[],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let manager: Option<String> = r.get(2);
            // Members alone changed: only those added may need to go first.
            let members_only = r.get::<_, Option<&str>>(3).is_none();
            let members: Vec<String> = match r.get::<_, Option<&str>>(3) {
                Some(members) => self.members_with_log(r.get(0), members)?,
                None => r.get::<_, Option<Vec<String>>>(5).unwrap_or_default(),
            };
            out.push(sync::engine::DirtyObject {
                id: r.get(0),
                deleted: r.get(1),
                refs: manager.into_iter().chain(members).collect(),
                exported: r.get(4),
                members_only,
            });
        }
        Ok(out)
    }

    fn exported(&self, mv: &str) -> Result<Option<(String, Json)>, StoreError> {
        match self.query_opt("SELECT tenant_id, resource FROM sync_exported WHERE mv_id = $1", &[&mv])? {
            Some(r) => {
                let resource = self.with_member_log(mv, &pack::unpack(r.try_get(1).map_err(pg)?)?)?;
                Ok(Some((r.get(0), serde_json::from_str(&resource).map_err(err)?)))
            }
            None => Ok(None),
        }
    }

    fn exported_ids(&self, mvs: &[String]) -> Result<Vec<String>, StoreError> {
        if mvs.is_empty() {
            return Ok(Vec::new());
        }
        let rows =
            self.query("SELECT e.tenant_id FROM unnest($1::text[]) AS m JOIN sync_exported e ON e.mv_id = m", &[&mvs])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn exported_id(&self, mv: &str) -> Result<Option<String>, StoreError> {
        Ok(self.query_opt("SELECT tenant_id FROM sync_exported WHERE mv_id = $1", &[&mv])?.map(|r| r.get(0)))
    }

    fn exported_anchor(&self, mv: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT m.anchor FROM sync_exported e JOIN sync_mv m ON m.id = e.mv_id WHERE e.mv_id = $1",
                &[&mv],
            )?
            .map(|r| r.get(0)))
    }

    fn member_changes_to_export(&self, mv: &str) -> Result<Option<(MvRecord, MemberChanges<String>)>, StoreError> {
        let Some(row) = self.query_opt(
            "SELECT kind, anchor, attrs FROM sync_mv WHERE id = $1 AND dirty AND members_only AND NOT deleted",
            &[&mv],
        )?
        else {
            return Ok(None);
        };
        let record = crate::group_head(mv, row.get(0), row.get(1), row.get::<_, &str>(2))?;
        let rows = self.query("SELECT member, added FROM sync_mv_member_changes WHERE mv_id = $1", &[&mv])?;
        Ok(Some((record, rows.iter().map(|r| (r.get(0), r.get(1))).collect())))
    }

    fn set_member_changes_exported(
        &mut self,
        mv: &str,
        added: &[(String, String)],
        removed: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        if self.query_opt("SELECT 1 FROM sync_exported WHERE mv_id = $1", &[&mv])?.is_none() {
            return Err(StoreError(format!("member changes of {mv} confirmed, but it was never exported")));
        }
        // Logged, not written into the resource: a large group's resource
        // is rewritten once per FOLD_MEMBER_LOG changes, not once per change.
        let added_ids: Vec<&str> = added.iter().map(|(_, id)| id.as_str()).collect();
        let removed_ids: Vec<&str> = removed.iter().filter_map(|(_, id)| id.as_deref()).collect();
        let done: Vec<&str> =
            added.iter().map(|(m, _)| m.as_str()).chain(removed.iter().map(|(m, _)| m.as_str())).collect();
        self.write(
            "WITH logged AS (
               INSERT INTO sync_exported_member_log(mv_id, tenant_id, added)
               SELECT $1::text, t, true FROM unnest($2::text[]) AS t
               UNION ALL SELECT $1::text, t, false FROM unnest($3::text[]) AS t
               ON CONFLICT (mv_id, tenant_id) DO UPDATE SET added = excluded.added),
                  confirmed AS (DELETE FROM sync_mv_member_changes WHERE mv_id = $1 AND member = ANY($4))
             SELECT 1",
            &[&mv, &added_ids, &removed_ids, &done],
        )?;
        // (A WITH's statements see one snapshot: what is logged and left is read after.)
        let row = self.query_one(
            "SELECT (SELECT count(*) FROM sync_exported_member_log WHERE mv_id = $1),
                    EXISTS(SELECT 1 FROM sync_mv_member_changes WHERE mv_id = $1)",
            &[&mv],
        )?;
        let (logged, left): (i64, bool) = (row.get(0), row.get(1));
        if logged >= crate::FOLD_MEMBER_LOG {
            let row = self.query_one("SELECT resource FROM sync_exported WHERE mv_id = $1", &[&mv])?;
            let resource = self.with_member_log(mv, &pack::unpack(row.try_get(0).map_err(pg)?)?)?;
            self.write(
                "WITH folded AS (DELETE FROM sync_exported_member_log WHERE mv_id = $1)
                 UPDATE sync_exported SET resource = $2 WHERE mv_id = $1",
                &[&mv, &pack::pack(&resource)?],
            )?;
        }
        if !left {
            self.write(
                "WITH cleared AS (DELETE FROM sync_errors WHERE mv_id = $1)
                 UPDATE sync_mv SET dirty = false, members_only = false WHERE id = $1",
                &[&mv],
            )?;
        }
        Ok(())
    }

    fn set_exported(&mut self, mv: &str, tenant_id: &str, resource: &Json) -> Result<(), StoreError> {
        let resource = pack::pack(&resource.to_string())?;
        // One statement, one round trip (a WITH's statements see one snapshot; each touches another table).
        self.write(
            "WITH stored AS (INSERT INTO sync_exported(mv_id, tenant_id, resource) VALUES($1, $2, $3)
                 ON CONFLICT (mv_id) DO UPDATE SET tenant_id = excluded.tenant_id, resource = excluded.resource),
             cleared AS (DELETE FROM sync_errors WHERE mv_id = $1),
             sent AS (DELETE FROM sync_mv_member_changes WHERE mv_id = $1),
             unlogged AS (DELETE FROM sync_exported_member_log WHERE mv_id = $1)
             UPDATE sync_mv SET dirty = false, members_only = false WHERE id = $1",
            &[&mv, &tenant_id, &resource],
        )?;
        Ok(())
    }

    fn forget_exported(&mut self, mv: &str) -> Result<(), StoreError> {
        // The deleted row goes; a live one is marked (never the same row twice in one statement).
        self.write(
            "WITH forgotten AS (DELETE FROM sync_exported WHERE mv_id = $1),
                  cleared AS (DELETE FROM sync_errors WHERE mv_id = $1),
                  gone AS (DELETE FROM sync_mv WHERE id = $1 AND deleted RETURNING id),
                  unkeyed AS (DELETE FROM sync_mv_join_keys WHERE mv_id IN (SELECT id FROM gone)),
                  unlisted AS (DELETE FROM sync_mv_member_log WHERE mv_id IN (SELECT id FROM gone)),
                  unsent AS (DELETE FROM sync_mv_member_changes WHERE mv_id = $1),
                  unlogged AS (DELETE FROM sync_exported_member_log WHERE mv_id = $1)
             UPDATE sync_mv SET dirty = true, members_only = false WHERE id = $1 AND NOT deleted",
            &[&mv],
        )?;
        Ok(())
    }

    fn clear_error(&mut self, key: &str) -> Result<(), StoreError> {
        self.write("DELETE FROM sync_errors WHERE mv_id = $1", &[&key])?;
        Ok(())
    }

    fn record_error(&mut self, mv: &str, stage: &str, message: &str) -> Result<(), StoreError> {
        let t = now();
        self.write(
            "WITH recorded AS (INSERT INTO sync_errors(mv_id, stage, message, first_seen, last_seen, attempts) VALUES($1, $2, $3, $4, $4, 1)
                 ON CONFLICT (mv_id) DO UPDATE SET stage = excluded.stage, message = excluded.message,
                   last_seen = excluded.last_seen, attempts = sync_errors.attempts + 1)
             UPDATE sync_mv SET dirty = true WHERE id = $1",
            &[&mv, &stage, &message, &t],
        )?;
        Ok(())
    }
}

impl History for PgStore {
    fn record_run(&mut self, source: &str, report: &CycleReport) -> Result<(), StoreError> {
        let body = serde_json::to_string(&RunSummary::of(report)).map_err(err)?;
        self.write(
            "INSERT INTO sync_runs(source, finished, status, report) VALUES($1, $2, $3, $4)",
            &[&source, &now(), &report.status.as_str(), &body],
        )?;
        Ok(())
    }

    fn record_failed_run(&mut self, source: &str, error: &str) -> Result<(), StoreError> {
        let body = failed_summary(error)?;
        self.write(
            "INSERT INTO sync_runs(source, finished, status, report) VALUES($1, $2, 'failed', $3)",
            &[&source, &now(), &body],
        )?;
        Ok(())
    }

    fn runs(&self, limit: usize) -> Result<Vec<RunRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query("SELECT id, source, finished, status, report FROM sync_runs ORDER BY id DESC LIMIT $1", &[&limit])?;
        Ok(rows
            .iter()
            .map(|r| RunRow {
                id: r.get(0),
                source: r.get(1),
                finished: r.get(2),
                status: r.get(3),
                report: serde_json::from_str(r.get(4)).unwrap_or_default(),
            })
            .collect())
    }

    fn errors(&self) -> Result<Vec<ErrorRow>, StoreError> {
        let rows = self.query(
            "SELECT coalesce(m.attrs::jsonb ->> 'onPremisesDistinguishedName', e.mv_id), e.stage, e.message, e.attempts
             FROM sync_errors e LEFT JOIN sync_mv m ON m.id = e.mv_id ORDER BY e.last_seen",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| ErrorRow { object: r.get(0), stage: r.get(1), message: r.get(2), attempts: r.get(3) })
            .collect())
    }

    fn find(&self, key: &str) -> Result<Option<(String, String, SourceId)>, StoreError> {
        let dn_norm = dn_key(key);
        let row = self.query_opt(
            "SELECT id, source, cs_id FROM sync_mv WHERE anchor = $1 OR ($2 != '' AND dn_norm = $2)
               OR lower(attrs::jsonb ->> 'userPrincipalName') = lower($1) LIMIT 1",
            &[&key, &dn_norm],
        )?;
        Ok(row.map(|r| (r.get(0), r.get(1), id_of(&r, 2))))
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        let row = self.query_one(
            "SELECT (SELECT count(*) FROM sync_cs), (SELECT count(*) FROM sync_mv WHERE NOT deleted),
                    (SELECT count(*) FROM sync_exported), (SELECT count(*) FROM sync_mv WHERE dirty)",
            &[],
        )?;
        Ok(Counts {
            connector_space: row.get(0),
            metaverse: row.get(1),
            exported: row.get(2),
            pending_export: row.get(3),
        })
    }

    fn joined(&self, mv: &str) -> Result<Vec<JoinedRow>, StoreError> {
        let rows = self.query(
            "SELECT source, cs_id, attrs, authoritative, precedence FROM sync_joins WHERE mv_id = $1 ORDER BY source, cs_id",
            &[&mv],
        )?;
        let mut out = Vec::new();
        for r in rows {
            let attrs = match serde_json::from_str(r.get(2)).map_err(err)? {
                Json::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            out.push(JoinedRow {
                source: r.get(0),
                id: id_of(&r, 1),
                attrs,
                precedence: crate::precedence_from(r.get(4))?,
                authoritative: serde_json::from_str(r.get(3)).map_err(err)?,
            });
        }
        Ok(out)
    }
}
