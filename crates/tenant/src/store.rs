//! The tenant's database (SQLite or PostgreSQL, see [`crate::db`]):
//! opening, the connections, schema migrations, settings.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use pgconn::DatabaseSettings;

use crate::db::{Connection, OptionalExtension, params};

use crate::error::{Result, TenantError};

const SCHEMA_V1: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE domains (
    name TEXT PRIMARY KEY,           -- lower-case
    auth TEXT NOT NULL,              -- managed-phs | managed-pta | federated
    initial INTEGER NOT NULL DEFAULT 0,
    federation TEXT,                 -- JSON, for federated domains
    added TEXT NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,       -- SHA-256 of the token; the token itself is never stored
    scope TEXT NOT NULL,
    created TEXT NOT NULL,
    expires INTEGER,                 -- epoch seconds
    revoked TEXT,
    note TEXT
);
CREATE TABLE resources (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,              -- User | Group | Contact
    data TEXT NOT NULL,              -- canonical JSON without id, meta, members
    version INTEGER NOT NULL,
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    user_name_lc TEXT,
    external_id TEXT,
    immutable_id TEXT,
    display_name_lc TEXT
);
CREATE INDEX resources_type ON resources(type, id);
CREATE INDEX resources_user_name ON resources(user_name_lc);
CREATE INDEX resources_external_id ON resources(external_id);
CREATE UNIQUE INDEX resources_immutable_id ON resources(immutable_id);
CREATE INDEX resources_display_name ON resources(display_name_lc);
CREATE TABLE members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
CREATE INDEX members_by_member ON members(member_id, group_id);
-- userName and SMTP addresses are unique across users, groups and contacts.
CREATE TABLE claims (
    value TEXT PRIMARY KEY,          -- lower-case address
    resource_id TEXT NOT NULL,
    attr TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX claims_by_resource ON claims(resource_id);
-- Values a synchronised object wants but another object holds (duplicate attribute resiliency).
CREATE TABLE quarantine (
    resource_id TEXT NOT NULL,
    attr TEXT NOT NULL,              -- userName | proxyAddresses
    value TEXT NOT NULL,             -- lower-case address in conflict
    wanted TEXT NOT NULL,            -- the value as the object wants it
    holder TEXT NOT NULL,            -- the object holding it
    since TEXT NOT NULL,
    PRIMARY KEY (resource_id, attr, value)
) WITHOUT ROWID;
CREATE INDEX quarantine_by_value ON quarantine(value);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT,
    resource_id TEXT,
    detail TEXT
);
";

/// Sign-in: password records, smart lockout, OpenID Connect clients, keys,
/// codes, refresh tokens and browser sessions.
const SCHEMA_V2: &str = "
CREATE TABLE credentials (
    resource_id TEXT PRIMARY KEY,    -- the user
    record TEXT NOT NULL,            -- a PPH1 record or a userPassword value; never a raw NT hash
    must_change INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL
);
CREATE TABLE lockouts (
    key TEXT PRIMARY KEY,            -- user:<lower-case name> | addr:<ip>
    failures INTEGER NOT NULL,
    locked_until INTEGER NOT NULL DEFAULT 0,   -- epoch seconds
    lockouts INTEGER NOT NULL DEFAULT 0,       -- how often this key was locked (the lock grows)
    last INTEGER NOT NULL
);
CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash BLOB,                -- SHA-256; NULL for public clients
    redirect_uris TEXT NOT NULL,     -- JSON array, compared exactly
    id_token_alg TEXT NOT NULL DEFAULT 'RS256',
    created TEXT NOT NULL
);
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,               -- ES256 | RS256
    pkcs8 BLOB NOT NULL,
    public_jwk TEXT NOT NULL,
    created INTEGER NOT NULL,
    retired INTEGER                  -- no longer signs; still published until tokens expire
);
CREATE TABLE auth_codes (
    hash BLOB PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT,
    challenge TEXT,
    expires INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE refresh_tokens (
    hash BLOB PRIMARY KEY,
    family TEXT NOT NULL,            -- a reused token revokes its whole family
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE sessions (
    hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
";

/// Pass-through authentication: one-time registration tokens and agents.
const SCHEMA_V3: &str = "
CREATE TABLE pta_tokens (
    hash BLOB PRIMARY KEY,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE pta_agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,        -- X25519, base64url; the private key never leaves the agent
    credential_hash BLOB NOT NULL,
    credential_expires INTEGER NOT NULL,
    previous_hash BLOB,              -- the credential before the last rotation, for a short grace
    previous_expires INTEGER,
    created TEXT NOT NULL,
    last_seen INTEGER,
    version TEXT,
    revoked TEXT
);
";

/// Federated sign-in: requests waiting for the identity provider's answer.
const SCHEMA_V4: &str = "
CREATE TABLE federation_requests (
    state_hash BLOB PRIMARY KEY,     -- SHA-256 of the state sent to the IdP
    domain TEXT NOT NULL,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,          -- PKCE
    params TEXT NOT NULL,            -- the relying party's authorization request (JSON)
    username TEXT NOT NULL,
    expires INTEGER NOT NULL
);
";

/// SAML: assertion ids seen, until they expire (replay cache).
const SCHEMA_V5: &str = "
CREATE TABLE federation_seen (
    id TEXT PRIMARY KEY,
    expires INTEGER NOT NULL
);
";

/// Lockout rows are pruned by age.
const SCHEMA_V6: &str = "CREATE INDEX lockouts_last ON lockouts(last);";

/// When the user authenticated, carried from the sign-in to the code and
/// the refresh tokens (OpenID Connect `auth_time`, `max_age`).
const SCHEMA_V7: &str = "
ALTER TABLE auth_codes ADD COLUMN auth_time INTEGER;
ALTER TABLE refresh_tokens ADD COLUMN auth_time INTEGER;
";

/// Smart lockout's familiar locations: where a user signed in before.
const SCHEMA_V8: &str = "
CREATE TABLE familiar_locations (
    name TEXT NOT NULL,              -- lower-case user name
    location TEXT NOT NULL,          -- IPv4 address or IPv6 /64
    last INTEGER NOT NULL,
    PRIMARY KEY (name, location)
);
";

/// Where a client may send the browser after logout, compared exactly.
const SCHEMA_V9: &str = "ALTER TABLE clients ADD COLUMN post_logout_uris TEXT NOT NULL DEFAULT '[]';";

/// A sync token may be limited to the domains it synchronises.
const SCHEMA_V10: &str = "ALTER TABLE tokens ADD COLUMN domains TEXT;";

/// What sync daemons report after each cycle (`/hybrid/v1/sync-reports`).
const SCHEMA_V11: &str = "
CREATE TABLE sync_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connector TEXT NOT NULL,
    received TEXT NOT NULL,
    status TEXT NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX sync_reports_connector ON sync_reports(connector, id);
";

/// The admin console: roles, its sessions, the sign-in log, deletions an
/// administrator allowed, users blocked from cloud sign-in.
const SCHEMA_V12: &str = "
CREATE TABLE roles (
    principal_type TEXT NOT NULL,    -- User | Group
    principal_id TEXT NOT NULL,
    role TEXT NOT NULL,              -- global-admin | helpdesk | reader
    assigned TEXT NOT NULL,
    PRIMARY KEY (principal_type, principal_id, role)
) WITHOUT ROWID;
CREATE TABLE console_sessions (
    hash BLOB PRIMARY KEY,           -- SHA-256 of the cookie's value
    user_id TEXT NOT NULL,
    csrf TEXT NOT NULL,              -- every form of this session carries it
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    last_seen INTEGER NOT NULL       -- idle sessions end (console::IDLE_SECS)
);
CREATE INDEX console_sessions_user ON console_sessions(user_id);
CREATE TABLE signins (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,             -- epoch seconds
    user_name TEXT NOT NULL,         -- lower-case, as given
    method TEXT NOT NULL,            -- password | pass-through | federated
    success INTEGER NOT NULL,
    reason TEXT NOT NULL,
    application TEXT,                -- the client id
    address TEXT
);
CREATE INDEX signins_at ON signins(at);
CREATE INDEX signins_user ON signins(user_name, seq);
CREATE TABLE deletion_allowances (
    connector TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    allowed_by TEXT NOT NULL,
    allowed_at TEXT NOT NULL
);
CREATE INDEX audit_resource ON audit(resource_id, seq);
CREATE TABLE blocked_users (
    user_id TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    since TEXT NOT NULL
);
";

/// The console: groups listed in name order from an index; lineage of
/// synchronised objects, asked of the sync daemon.
const SCHEMA_V13: &str = "
CREATE INDEX resources_type_display_name ON resources(type, display_name_lc, id);
CREATE TABLE lineage (
    resource_id TEXT PRIMARY KEY,
    immutable_id TEXT NOT NULL,
    requested TEXT,                  -- when the console last asked
    answered TEXT,                   -- when a sync daemon last answered
    found INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    source_object TEXT,
    joined TEXT,                     -- JSON array
    attributes TEXT                  -- JSON array of {attribute, outbound, inbound}
);
CREATE INDEX lineage_pending ON lineage(requested);
";

/// Pass-through sign-ins shared by several tenant nodes (PostgreSQL): the
/// requests waiting for an agent, and which agents have a poll open. One
/// node (SQLite) keeps both in memory and leaves these empty.
const SCHEMA_V14: &str = "
CREATE TABLE pta_requests (
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,        -- epoch ms, the database's clock
    deadline INTEGER NOT NULL,       -- epoch ms
    sealed TEXT NOT NULL,            -- JSON object: agent id -> the request sealed for that agent
    answer_keys TEXT NOT NULL,       -- JSON object: agent id -> its answer key, sealed (the secrets key)
    leased_by TEXT,                  -- the agent that took it
    leased_until INTEGER,            -- epoch ms; after it the request goes back to the queue
    answered_by TEXT,
    outcome TEXT,
    mac TEXT                         -- checked by the node that made the request (it holds the answer keys)
);
CREATE INDEX pta_requests_created ON pta_requests(created);
ALTER TABLE pta_agents ADD COLUMN polling_until INTEGER;   -- epoch ms: a poll is open until then, or ended then
";

/// Second factors (`mfa`): authenticator apps and recovery codes.
const SCHEMA_V15: &str = "
CREATE TABLE mfa_methods (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,              -- totp
    label TEXT NOT NULL,             -- the person's name for it
    secret TEXT NOT NULL,            -- the TOTP key, sealed (secrets key)
    last_step INTEGER NOT NULL,      -- the last time step accepted: a code is accepted once
    created INTEGER NOT NULL,        -- epoch seconds
    last_used INTEGER
);
CREATE INDEX mfa_methods_user ON mfa_methods(user_id);
CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL,
    code_hash TEXT NOT NULL,         -- hex SHA-256 of the code (random, 50 bits)
    used INTEGER,                    -- epoch seconds, once used
    PRIMARY KEY (user_id, code_hash)
);
-- How each sign-in was made (RFC 8176 values, space-separated: pwd, otp, mfa,
-- fed), carried from the session to codes and refresh tokens into `amr`/`acr`.
ALTER TABLE sessions ADD COLUMN amr TEXT;
ALTER TABLE auth_codes ADD COLUMN amr TEXT;
ALTER TABLE refresh_tokens ADD COLUMN amr TEXT;
-- A sign-in whose password was right and that waits for its second factor.
CREATE TABLE mfa_challenges (
    hash BLOB PRIMARY KEY,           -- SHA-256 of the token the sign-in form carries
    user_id TEXT NOT NULL,
    expires INTEGER NOT NULL         -- epoch seconds
);
";

/// Passkeys (`passkeys`): a WebAuthn credential is a method of kind
/// `passkey`; the halves of each ceremony meet in `webauthn_challenges`.
const SCHEMA_V16: &str = "
ALTER TABLE mfa_methods ADD COLUMN credential_id TEXT;   -- base64url, passkeys only
ALTER TABLE mfa_methods ADD COLUMN credential TEXT;      -- the passkey (public key, counter, flags) as JSON
CREATE UNIQUE INDEX mfa_methods_credential ON mfa_methods(credential_id);
CREATE TABLE webauthn_challenges (
    hash BLOB PRIMARY KEY,           -- SHA-256 of the token the page carries
    purpose TEXT NOT NULL,           -- register, sign-in, second-factor
    user_id TEXT,                    -- who registers or signs in (none for a nameless sign-in)
    state TEXT NOT NULL,             -- the relying party's half of the ceremony (JSON)
    expires INTEGER NOT NULL         -- epoch seconds
);
";

/// Sign-in policy (`policy`): applications that require a second factor,
/// the registration campaign's skips, and a second step already proven by
/// registering a method during the sign-in.
const SCHEMA_V17: &str = "
ALTER TABLE clients ADD COLUMN require_mfa INTEGER NOT NULL DEFAULT 0;
CREATE TABLE mfa_campaign_skips (
    user_id TEXT PRIMARY KEY,
    skips INTEGER NOT NULL           -- times the person answered the campaign not now
);
ALTER TABLE mfa_challenges ADD COLUMN proven TEXT;        -- amr of a method registered in this sign-in (otp, hwk, swk)
ALTER TABLE mfa_challenges ADD COLUMN first_factor TEXT;  -- amr of the step before: pwd, fed, or a session's (none: pwd)
";

const SCHEMA_V18: &str = "
ALTER TABLE quarantine ADD COLUMN reason TEXT NOT NULL DEFAULT 'held-first';  -- why the holder has it (proto::hybrid::HoldReason)
";

/// Password writeback per domain (`writeback`).
const SCHEMA_V19: &str = "
ALTER TABLE domains ADD COLUMN password_writeback INTEGER NOT NULL DEFAULT 0;
";

/// Source of authority: synchronised groups the cloud took over
/// (`cloud_groups`); writeback maintains them on-premises.
const SCHEMA_V20: &str = "
CREATE TABLE group_authority (group_id TEXT PRIMARY KEY, since TEXT NOT NULL, actor TEXT NOT NULL);
";

/// Self-service password resets (`password_reset`): hashed tokens, their
/// stage (0 waiting for the code, 1 proven, 2 being written) and expiry.
const SCHEMA_V21: &str = "
CREATE TABLE password_resets (hash BLOB PRIMARY KEY, user_id TEXT NOT NULL, stage INTEGER NOT NULL, expires INTEGER NOT NULL);
";

/// SAML applications (the tenant as an identity provider, `saml_idp`) and
/// their sign-ins waiting for the person (hashed tokens, the request's ID).
const SCHEMA_V22: &str = "
CREATE TABLE saml_apps (id TEXT PRIMARY KEY, name TEXT NOT NULL, entity_id TEXT NOT NULL UNIQUE, acs_urls TEXT NOT NULL, name_id_format TEXT NOT NULL, attributes TEXT NOT NULL, sign_response INTEGER NOT NULL, allowed_groups TEXT NOT NULL, require_signed INTEGER NOT NULL, sp_certificates TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE saml_requests (hash BLOB PRIMARY KEY, app_id TEXT NOT NULL, request_id TEXT, acs_url TEXT NOT NULL, relay_state TEXT, force_authn INTEGER NOT NULL, need_mfa INTEGER NOT NULL, expires INTEGER NOT NULL);
CREATE TABLE saml_seen (app_id TEXT NOT NULL, request_id TEXT NOT NULL, expires INTEGER NOT NULL, PRIMARY KEY (app_id, request_id));
";

/// SAML Single Logout (where an application's LogoutResponses go), and
/// signing keys made ahead of their use: published (JWKS, SAML metadata)
/// but not yet signing, so relying parties learn them before a rotation.
const SCHEMA_V23: &str = "
ALTER TABLE saml_apps ADD COLUMN slo_url TEXT;
ALTER TABLE signing_keys ADD COLUMN prepared INTEGER NOT NULL DEFAULT 0;
";

/// Every lookup by display name also names the type, which
/// `resources_type_display_name` (V13) answers; the index on the name alone
/// only cost every write a random insert more (a tenth of the B-tree pages a
/// large export dirties).
const SCHEMA_V24: &str = "
DROP INDEX resources_display_name;
";

/// externalId is indexed only where it is not the immutableId: for a
/// synchronised object the two are the same value, which the unique index
/// on immutableId finds (`objects::by_external_id` searches both), so every
/// object created cost a random B-tree page of a second index of the same
/// values.
const SCHEMA_V25: &str = "
DROP INDEX resources_external_id;
CREATE INDEX resources_external_id_own ON resources(external_id) WHERE external_id IS DISTINCT FROM immutable_id;
";

/// Members refer to objects by a small integer (`resources.num`) instead of
/// their 32-character ids. Both member indexes — by group and by member —
/// take an entry per membership, and the one by member is written in random
/// order; with text ids it outgrew the writer's cache at a million users
/// and cost the export a random page per membership. `num` is the
/// resources table's own key (the rowid in SQLite), so the id's unique index
/// answers id → num without reading the row, and the table is laid out in
/// creation order as before. `AUTOINCREMENT`: a num is never used again, so
/// nothing can come to point at another object.
const SCHEMA_V26: &str = "
CREATE TABLE resources_v26 (
    num INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,              -- User | Group | Contact
    data TEXT NOT NULL,              -- canonical JSON without id, meta, members
    version INTEGER NOT NULL,
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    user_name_lc TEXT,
    external_id TEXT,
    immutable_id TEXT,
    display_name_lc TEXT
);
INSERT INTO resources_v26(id, type, data, version, created, modified, user_name_lc, external_id, immutable_id, display_name_lc)
    SELECT id, type, data, version, created, modified, user_name_lc, external_id, immutable_id, display_name_lc
    FROM resources;
CREATE TABLE members_v26 (
    group_num INTEGER NOT NULL,
    member_num INTEGER NOT NULL,
    PRIMARY KEY (group_num, member_num)
) WITHOUT ROWID;
INSERT INTO members_v26(group_num, member_num)
    SELECT g.num, m.num FROM members x
    JOIN resources_v26 g ON g.id = x.group_id JOIN resources_v26 m ON m.id = x.member_id;
DROP TABLE members;
DROP TABLE resources;
ALTER TABLE resources_v26 RENAME TO resources;
ALTER TABLE members_v26 RENAME TO members;
CREATE INDEX resources_type ON resources(type, id);
CREATE INDEX resources_user_name ON resources(user_name_lc);
CREATE UNIQUE INDEX resources_immutable_id ON resources(immutable_id);
CREATE INDEX resources_type_display_name ON resources(type, display_name_lc, id);
CREATE INDEX resources_external_id_own ON resources(external_id) WHERE external_id IS DISTINCT FROM immutable_id;
CREATE INDEX members_by_member ON members(member_num, group_num);
";

const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8, SCHEMA_V9, SCHEMA_V10,
    SCHEMA_V11, SCHEMA_V12, SCHEMA_V13, SCHEMA_V14, SCHEMA_V15, SCHEMA_V16, SCHEMA_V17, SCHEMA_V18, SCHEMA_V19,
    SCHEMA_V20, SCHEMA_V21, SCHEMA_V22, SCHEMA_V23, SCHEMA_V24, SCHEMA_V25, SCHEMA_V26,
];

/// The database. SQLite: one connection that writes (SQLite has one
/// writer anyway) and a few read-only ones for long reads (SCIM lists and
/// searches), so a slow read never holds up a write or a sign-in; WAL lets
/// readers and the writer work at once. PostgreSQL: a small pool of
/// connections shared by reads and writes (writes serialise on the
/// database's write lock, see [`crate::db`]); a connection that broke —
/// the server restarted — is replaced when it is next handed out.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    postgres: Option<PgPool>,
    /// SQLite: copies the write-ahead log into the database off the writer.
    _checkpointer: Option<sqlite_wal::Checkpointer>,
}

#[derive(Debug)]
struct PgPool {
    settings: DatabaseSettings,
    next: AtomicUsize,
    /// When reconnecting last failed: tried again at most once a second.
    failed_at: Mutex<Option<std::time::Instant>>,
}

/// Read-only connections beside the writer (SQLite); the pool's size
/// beside the first connection (PostgreSQL).
const READERS: usize = 2;
const PG_POOL: usize = 7;

/// The SQLite writer's page cache, in SQLite's notation (negative: KiB).
const WRITER_CACHE_KIB: i64 = -128 * 1024;

/// Where a tenant's data lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// A data directory holding `tenant.db` and `secrets.key` (the embedded default).
    Directory(PathBuf),
    /// A PostgreSQL database shared by every node, and the secrets key
    /// file every node has a copy of.
    Postgres { settings: DatabaseSettings, secrets_key: PathBuf },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Directory(dir) => write!(f, "{}", dir.display()),
            Location::Postgres { settings, .. } => f.write_str(&settings.url),
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let key = crate::secrets::load_key_file(&path.with_file_name(crate::secrets::KEY_FILE))?;
        let raw = rusqlite::Connection::open(path)?;
        // WAL + NORMAL: committed transactions survive a killed process.
        raw.pragma_update(None, "journal_mode", "WAL")?;
        raw.pragma_update(None, "synchronous", "NORMAL")?;
        raw.pragma_update(None, "foreign_keys", "ON")?;
        // The writer touches every index of a large directory: with SQLite's
        // default 2 MiB cache most page reads became system calls.
        raw.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        raw.busy_timeout(std::time::Duration::from_secs(5))?;
        let checkpointer = sqlite_wal::Checkpointer::start(&raw, path)?;
        // Schema upgrades build indexes over whole tables (schema 26 rebuilds
        // the resources), whose sorts spill to temporary files: kept in
        // memory they took a gigabyte at a million objects.
        migrate(&raw)?;
        // A Bulk request that failed runs again with a savepoint per
        // operation, whose journal of first-touched pages then stays in
        // memory instead of a temporary file.
        raw.pragma_update(None, "temp_store", "MEMORY")?;
        let conn = Connection::sqlite(raw, Some(key));
        crate::secrets::seal_existing(&conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            reader.busy_timeout(std::time::Duration::from_secs(5))?;
            readers.push(Mutex::new(Connection::sqlite(reader, Some(key))));
        }
        Ok(Store { conn: Mutex::new(conn), readers, postgres: None, _checkpointer: Some(checkpointer) })
    }

    pub fn open_in_memory() -> Result<Store> {
        let raw = rusqlite::Connection::open_in_memory()?;
        migrate(&raw)?;
        let conn = Connection::sqlite(raw, None);
        Ok(Store { conn: Mutex::new(conn), readers: Vec::new(), postgres: None, _checkpointer: None })
    }

    /// Connects to PostgreSQL, applies missing schema versions (refusing a
    /// newer schema), and checks that `secrets_key` is the key this
    /// database's secrets are sealed with (the first node to start sets it).
    pub fn open_postgres(settings: &DatabaseSettings, secrets_key: &Path) -> Result<Store> {
        settings.check().map_err(|e| TenantError::Invalid(e.0))?;
        let mut first = Connection::postgres(settings, None)?;
        let migrations: Vec<String> = MIGRATIONS.iter().map(|m| crate::db::postgres_schema(m)).collect();
        if let Some(client) = first.postgres_client() {
            pgconn::migrate(client, "tenant", &migrations).map_err(|e| TenantError::Invalid(e.0))?;
        }
        // A missing key file is made only for a database that has no key yet
        // (the first node); the others need a copy of that node's file.
        if !secrets_key.exists() && get_meta(&first, "secrets_key_check")?.is_some() {
            return Err(TenantError::Invalid(format!(
                "{} does not exist and this database's secrets are sealed with an existing key: copy the key file of the first tenant node there",
                secrets_key.display()
            )));
        }
        let key = crate::secrets::load_key_file(secrets_key)?;
        first.set_secrets_key(Some(key));
        {
            let tx = first.transaction()?;
            crate::secrets::check_key(&tx, secrets_key)?;
            crate::secrets::seal_existing(&tx)?;
            tx.commit()?;
        }
        let mut readers = Vec::with_capacity(PG_POOL);
        for _ in 0..PG_POOL {
            readers.push(Mutex::new(Connection::postgres(settings, Some(key))?));
        }
        Ok(Store {
            conn: Mutex::new(first),
            readers,
            postgres: Some(PgPool {
                settings: settings.clone(),
                next: AtomicUsize::new(0),
                failed_at: Mutex::new(None),
            }),
            _checkpointer: None,
        })
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// The PostgreSQL connection settings, for what needs a connection of its own (listening).
    pub fn postgres_settings(&self) -> Option<&DatabaseSettings> {
        self.postgres.as_ref().map(|p| &p.settings)
    }

    /// A connection for a long read: a free reader if there is one, else
    /// the first to come free. (In memory there are none: the writer.)
    pub fn read(&self) -> MutexGuard<'_, Connection> {
        if let Some(pool) = &self.postgres {
            return self.pooled(pool);
        }
        for reader in &self.readers {
            if let Ok(guard) = reader.try_lock() {
                return guard;
            }
        }
        match self.readers.first() {
            Some(reader) => reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            None => self.lock(),
        }
    }

    /// The connection that writes (SQLite) or one of the pool (PostgreSQL);
    /// a poisoned lock (a panic elsewhere) is still usable because every
    /// change runs in a transaction that rolled back.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        if let Some(pool) = &self.postgres {
            return self.pooled(pool);
        }
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A free pooled connection (else the next in turn), replaced first if it broke.
    fn pooled(&self, pool: &PgPool) -> MutexGuard<'_, Connection> {
        let all: Vec<&Mutex<Connection>> = std::iter::once(&self.conn).chain(&self.readers).collect();
        let start = pool.next.fetch_add(1, Ordering::Relaxed);
        let mut guard = None;
        for i in 0..all.len() {
            if let Some(slot) = all.get((start + i) % all.len())
                && let Ok(g) = slot.try_lock()
            {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => match all.get(start % all.len()) {
                Some(slot) => slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                None => self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            },
        };
        if guard.is_broken() {
            let mut failed_at = pool.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if failed_at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                match Connection::postgres(&pool.settings, guard.secrets_key()) {
                    Ok(fresh) => {
                        tracing::info!("reconnected to the tenant database");
                        *guard = fresh;
                        *failed_at = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the tenant database is unreachable; retrying at most once a second");
                        *failed_at = Some(std::time::Instant::now());
                    }
                }
            }
        }
        guard
    }
}

/// Applies the missing schema versions to a SQLite database, each in a
/// transaction of its own (rolled back if it fails).
fn migrate(sqlite: &rusqlite::Connection) -> Result<()> {
    let version: i64 = sqlite.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).map_err(|_| TenantError::Invalid("bad schema version".into()))?;
    if version > MIGRATIONS.len() {
        return Err(TenantError::Invalid(format!(
            "the database has schema version {version}, newer than this idbridge ({}); upgrade idbridge",
            MIGRATIONS.len()
        )));
    }
    // An upgrade may rebuild a table (schema 26 rebuilds the resources):
    // about a minute per million objects, so say why the start waits.
    let upgrading = version > 0 && version < MIGRATIONS.len();
    if upgrading {
        tracing::info!(from = version, to = MIGRATIONS.len(), "upgrading the tenant database's schema");
    }
    let started = std::time::Instant::now();
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = sqlite.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    if upgrading {
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "the tenant database's schema is upgraded");
    }
    Ok(())
}

pub fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
    Ok(stmt.query_row(params![key], |r| r.get(0)).optional()?)
}

pub fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Tenant-wide switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Never join an incoming synchronised object to a cloud object by userName or SMTP address.
    pub block_soft_match: bool,
    /// Never let an incoming object take over a cloud-managed object by immutableId.
    pub block_hard_match_takeover: bool,
    /// A user's userName must be an address in a verified domain. On by default.
    pub require_verified_domain: bool,
    /// A user whose on-premises password must be changed may choose a new
    /// one at cloud sign-in (otherwise the sign-in is refused). Off by default.
    pub allow_cloud_password_change: bool,
    /// How long a pass-through sign-in waits for an agent (seconds, default 10).
    pub pta_timeout_secs: u64,
    /// Requests per second one bearer token may make (burst: twice that);
    /// 0 is no limit. Read when the tenant starts.
    pub rate_limit_per_sec: u32,
}

/// The key that signs CSRF tokens: made once, kept in the database.
pub fn csrf_key(conn: &Connection) -> Result<[u8; 32]> {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    if let Some(text) = get_meta(conn, "csrf_key")?
        && let Some(key) = engine.decode(text).ok().and_then(|k| <[u8; 32]>::try_from(k).ok())
    {
        return Ok(key);
    }
    // Nodes starting together each propose a key; the first one stored wins
    // and every node reads that one back.
    let proposed = engine.encode(crate::util::random_bytes::<32>());
    conn.execute(
        "INSERT INTO meta(key, value) VALUES('csrf_key', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value
         WHERE length(meta.value) <> 44",
        params![proposed],
    )?;
    get_meta(conn, "csrf_key")?
        .and_then(|text| engine.decode(text).ok())
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| TenantError::Invalid("the CSRF key in the database is not 32 bytes".into()))
}

/// Reverse proxies whose `X-Forwarded-For` is believed (sign-in lockout and
/// audit use the client's address). Read when the tenant starts.
pub fn trusted_proxies(conn: &Connection) -> Result<Vec<crate::net::Cidr>> {
    crate::net::parse_list(&get_meta(conn, "trusted_proxies")?.unwrap_or_default()).map_err(crate::TenantError::Invalid)
}

pub fn set_trusted_proxies(conn: &Connection, proxies: &[crate::net::Cidr]) -> Result<()> {
    let text: Vec<String> = proxies.iter().map(ToString::to_string).collect();
    set_meta(conn, "trusted_proxies", &text.join(","))
}

impl Settings {
    /// All switches in one query (writes load them per object: on
    /// PostgreSQL every query is a round trip).
    pub fn load(conn: &Connection) -> Result<Settings> {
        let values: std::collections::HashMap<String, String> = conn
            .query_map(
                "SELECT key, value FROM meta WHERE key IN ('block_soft_match', 'block_hard_match_takeover',
                 'require_verified_domain', 'allow_cloud_password_change', 'pta_timeout_secs', 'rate_limit_per_sec')",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .into_iter()
            .collect();
        let get = |k: &str| values.get(k).map(String::as_str);
        Ok(Settings {
            block_soft_match: get("block_soft_match") == Some("true"),
            block_hard_match_takeover: get("block_hard_match_takeover") == Some("true"),
            require_verified_domain: get("require_verified_domain") != Some("false"),
            allow_cloud_password_change: get("allow_cloud_password_change") == Some("true"),
            pta_timeout_secs: get("pta_timeout_secs").and_then(|v| v.parse().ok()).filter(|v| *v > 0).unwrap_or(10),
            rate_limit_per_sec: get("rate_limit_per_sec")
                .and_then(|v| v.parse().ok())
                .unwrap_or(crate::ratelimit::Limit::default().per_sec),
        })
    }

    pub fn save(&self, conn: &Connection) -> Result<()> {
        set_meta(conn, "block_soft_match", if self.block_soft_match { "true" } else { "false" })?;
        set_meta(conn, "block_hard_match_takeover", if self.block_hard_match_takeover { "true" } else { "false" })?;
        set_meta(conn, "allow_cloud_password_change", if self.allow_cloud_password_change { "true" } else { "false" })?;
        set_meta(conn, "pta_timeout_secs", &self.pta_timeout_secs.to_string())?;
        set_meta(conn, "rate_limit_per_sec", &self.rate_limit_per_sec.to_string())?;
        set_meta(conn, "require_verified_domain", if self.require_verified_domain { "true" } else { "false" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERSHIPS: [(&str, &str); 4] = [("g1", "u1"), ("g1", "ü2"), ("g2", "g1"), ("g2", "ü2")];

    /// Objects and memberships as schema 25 kept them: members by id.
    fn fill_schema_25(conn: &Connection) {
        for (id, kind, imm) in
            [("u1", "User", "imm-u1"), ("ü2", "User", "imm-ü2"), ("g1", "Group", "imm-g1"), ("g2", "Group", "")]
        {
            conn.execute(
                "INSERT INTO resources(id, type, data, version, created, modified, immutable_id, display_name_lc)
                 VALUES(?1, ?2, '{}', 1, 'x', 'x', nullif(?3, ''), ?1)",
                params![id, kind, imm],
            )
            .unwrap();
        }
        for (group, member) in MEMBERSHIPS {
            conn.execute("INSERT INTO members(group_id, member_id) VALUES(?1, ?2)", params![group, member]).unwrap();
        }
    }

    /// After schema 26: every object and membership is there, by key, and
    /// the last object's key is not handed out again after it is deleted.
    fn check_schema_26(conn: &Connection) {
        let mut stmt = conn
            .prepare(
                "SELECT g.id, m.id FROM members x JOIN resources g ON g.num = x.group_num
                 JOIN resources m ON m.num = x.member_num ORDER BY 1, 2",
            )
            .unwrap();
        let pairs: Vec<(String, String)> =
            stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|p| p.unwrap()).collect();
        assert_eq!(pairs, MEMBERSHIPS.map(|(g, m)| (g.to_string(), m.to_string())));
        let imm: String =
            conn.query_row("SELECT id FROM resources WHERE immutable_id = 'imm-ü2'", params![], |r| r.get(0)).unwrap();
        assert_eq!(imm, "ü2");
        let last: i64 = conn.query_row("SELECT max(num) FROM resources", params![], |r| r.get(0)).unwrap();
        conn.execute("DELETE FROM resources WHERE num = ?1", params![last]).unwrap();
        conn.execute(
            "INSERT INTO resources(id, type, data, version, created, modified) VALUES('n', 'User', '{}', 1, 'x', 'x')",
            params![],
        )
        .unwrap();
        let fresh: i64 = conn.query_row("SELECT num FROM resources WHERE id = 'n'", params![], |r| r.get(0)).unwrap();
        assert!(fresh > last, "{fresh} after {last}");
    }

    /// Schema 26 moves members from ids to keys: a SQLite database written
    /// by the schema before keeps every object and membership, nested
    /// groups and non-ASCII ids included.
    #[test]
    fn members_survive_the_move_to_keys() {
        let conn = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap(), None);
        let sqlite = conn.sqlite_connection().unwrap();
        for sql in &MIGRATIONS[..25] {
            sqlite.execute_batch(sql).unwrap();
        }
        sqlite.pragma_update(None, "user_version", 25).unwrap();
        fill_schema_25(&conn);
        migrate(conn.sqlite_connection().unwrap()).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", params![], |r| r.get(0)).unwrap();
        assert_eq!(usize::try_from(version).unwrap(), MIGRATIONS.len());
        check_schema_26(&conn);
    }

    /// The same on PostgreSQL, where the key is an identity column.
    #[test]
    fn members_survive_the_move_to_keys_on_postgres() {
        let pg = testkit::Postgres::start().unwrap();
        let settings = pg.settings("tenant-schema-26");
        let dir = testkit::TempDir::new("tenant-schema-26").unwrap();
        {
            let mut conn = Connection::postgres(&settings, None).unwrap();
            let before: Vec<String> = MIGRATIONS[..25].iter().map(|m| crate::db::postgres_schema(m)).collect();
            pgconn::migrate(conn.postgres_client().unwrap(), "tenant", &before).unwrap();
            fill_schema_25(&conn);
        }
        let store = Store::open_postgres(&settings, &dir.join(crate::secrets::KEY_FILE)).unwrap();
        check_schema_26(&store.lock());
    }
}
