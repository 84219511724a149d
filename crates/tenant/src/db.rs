//! The tenant's storage boundary: one [`Connection`] type over SQLite (the
//! embedded default, a file beside the tenant) or PostgreSQL (shared by
//! several tenant nodes). Every module of the core writes its SQL once, in
//! the dialect both engines understand, and reads rows through [`Row`];
//! what differs between the engines lives here:
//!
//! - placeholders: SQLite's `?1` become PostgreSQL's `$1` (rewritten once
//!   per statement and cached with the prepared statement);
//! - types: the schema is written for SQLite and translated for PostgreSQL
//!   by [`postgres_schema`] (`INTEGER` → `BIGINT`, `BLOB` → `BYTEA`, text
//!   compared bytewise with `COLLATE "C"` as SQLite does);
//! - values cross as [`Value`] (integer, real, text, bytes, null), bound to
//!   whatever type the server infers for a parameter;
//! - transactions: [`Connection::transaction`] rolls back when dropped. On
//!   PostgreSQL a write transaction first takes advisory locks, so writes
//!   are serialised across every node as SQLite's single writer serialises
//!   them in one process (read-modify-write code such as smart lockout stays
//!   correct without per-statement locking). Two locks — the directory and
//!   sign-in state — let a sign-in go on while a large Bulk export writes
//!   ([`WriteLock`]); a transaction that touches both takes both, in order;
//! - the few functions the dialects spell differently ([`Connection::json_text`],
//!   [`Connection::contains`]).
//!
//! Why not an ORM or sqlx: the tenant's SQL is small and hand-written, the
//! core is synchronous (its callers already run it on blocking threads), and
//! both drivers used here (`rusqlite`, `tokio-postgres`) are the
//! ecosystem's well-kept ones; this module is only the seam between them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use pgconn::tokio_postgres::types::{Kind, Type};
use pgconn::tokio_postgres::{self, Client, Statement as PgStatement};
use pgconn::{DatabaseSettings, block, describe};

/// A failure of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// What the server or the driver said, in one line.
    #[error("{message}")]
    Postgres { message: String, code: Option<String>, closed: bool },
    #[error("the query returned no rows")]
    NoRows,
    #[error("column {column}: {message}")]
    Conversion { column: String, message: String },
}

impl DbError {
    fn pg(e: &tokio_postgres::Error) -> DbError {
        DbError::Postgres { message: describe(e), code: e.code().map(|c| c.code().to_string()), closed: e.is_closed() }
    }

    /// The database is busy or unreachable for a moment: worth a retry (503).
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => e.code == rusqlite::ErrorCode::DatabaseBusy,
            DbError::Postgres { code, closed, .. } => {
                *closed
                    // serialization_failure, deadlock_detected, admin/crash shutdown, cannot_connect_now
                    || matches!(code.as_deref(), Some("40001" | "40P01" | "57P01" | "57P02" | "57P03"))
                    || code.as_deref().is_some_and(|c| c.starts_with("08"))
            }
            _ => false,
        }
    }

    /// A uniqueness (or other) constraint refused the write.
    pub fn is_constraint_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => e.code == rusqlite::ErrorCode::ConstraintViolation,
            DbError::Postgres { code, .. } => code.as_deref().is_some_and(|c| c.starts_with("23")),
            _ => false,
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// `query_row`'s "no row" as `None`, as `rusqlite::OptionalExtension` does.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(DbError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

// ---- Values ----

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// What can be bound as a parameter.
pub trait ToSql {
    fn to_sql(&self) -> Value<'_>;
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_sql(&self) -> Value<'_> {
        (**self).to_sql()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_sql(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToSql::to_sql)
    }
}

impl ToSql for str {
    fn to_sql(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToSql for String {
    fn to_sql(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToSql for [u8] {
    fn to_sql(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl ToSql for Vec<u8> {
    fn to_sql(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<const N: usize> ToSql for [u8; N] {
    fn to_sql(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl ToSql for bool {
    fn to_sql(&self) -> Value<'_> {
        Value::Integer(i64::from(*self))
    }
}

impl ToSql for f64 {
    fn to_sql(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

macro_rules! integer_to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> Value<'_> {
                // Counts and times beyond i64 do not occur; saturate rather than wrap.
                Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
integer_to_sql!(i64, i32, u32, u64, usize, u16, u8);

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(i),
            Value::Real(r) => ValueRef::Real(r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// An owned value, for parameters built at run time ([`params_from_iter`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl OwnedValue {
    fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Null => Value::Null,
            OwnedValue::Integer(i) => Value::Integer(*i),
            OwnedValue::Real(r) => Value::Real(*r),
            OwnedValue::Text(t) => Value::Text(t),
            OwnedValue::Blob(b) => Value::Blob(b),
        }
    }

    pub fn of(value: Value<'_>) -> OwnedValue {
        match value {
            Value::Null => OwnedValue::Null,
            Value::Integer(i) => OwnedValue::Integer(i),
            Value::Real(r) => OwnedValue::Real(r),
            Value::Text(t) => OwnedValue::Text(t.to_string()),
            Value::Blob(b) => OwnedValue::Blob(b.to_vec()),
        }
    }
}

impl ToSql for OwnedValue {
    fn to_sql(&self) -> Value<'_> {
        self.as_value()
    }
}

/// A statement's parameters.
pub trait Params {
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for &[&dyn ToSql] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|p| p.to_sql()).collect()
    }
}

impl<T: ToSql, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(ToSql::to_sql).collect()
    }
}

/// Parameters collected at run time.
#[derive(Debug, Clone, Default)]
pub struct OwnedParams(Vec<OwnedValue>);

impl Params for OwnedParams {
    fn values(&self) -> Vec<Value<'_>> {
        self.0.iter().map(OwnedValue::as_value).collect()
    }
}

/// Parameters from an iterator of bindable values.
pub fn params_from_iter<I>(values: I) -> OwnedParams
where
    I: IntoIterator,
    I::Item: ToSql,
{
    OwnedParams(values.into_iter().map(|v| OwnedValue::of(v.to_sql())).collect())
}

/// `params![a, b]`: a statement's parameters, as rusqlite's macro.
#[macro_export]
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::db::ToSql]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::db::ToSql),+] as &[&dyn $crate::db::ToSql]
    };
}
pub use crate::params;

/// What can be read from a column.
pub trait FromSql: Sized {
    fn from_sql(value: Value<'_>) -> std::result::Result<Self, String>;
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(value: Value<'_>) -> std::result::Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_sql(other).map(Some),
        }
    }
}

fn wrong(value: Value<'_>, wanted: &str) -> String {
    let found = match value {
        Value::Null => "NULL",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a real number",
        Value::Text(_) => "text",
        Value::Blob(_) => "bytes",
    };
    format!("{found} where {wanted} was expected")
}

impl FromSql for String {
    fn from_sql(value: Value<'_>) -> std::result::Result<Self, String> {
        match value {
            Value::Text(t) => Ok(t.to_string()),
            other => Err(wrong(other, "text")),
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_sql(value: Value<'_>) -> std::result::Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.to_vec()),
            Value::Text(t) => Ok(t.as_bytes().to_vec()),
            other => Err(wrong(other, "bytes")),
        }
    }
}

impl FromSql for bool {
    fn from_sql(value: Value<'_>) -> std::result::Result<Self, String> {
        match value {
            Value::Integer(i) => Ok(i != 0),
            other => Err(wrong(other, "a boolean")),
        }
    }
}

impl FromSql for f64 {
    fn from_sql(value: Value<'_>) -> std::result::Result<Self, String> {
        match value {
            Value::Real(r) => Ok(r),
            #[allow(clippy::cast_precision_loss)]
            Value::Integer(i) => Ok(i as f64),
            other => Err(wrong(other, "a number")),
        }
    }
}

macro_rules! integer_from_sql {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_sql(value: Value<'_>) -> std::result::Result<Self, String> {
                match value {
                    Value::Integer(i) => <$t>::try_from(i).map_err(|_| format!("{i} is out of range")),
                    other => Err(wrong(other, "an integer")),
                }
            }
        }
    )*};
}
integer_from_sql!(i64, i32, u32, u64, usize);

// ---- Rows ----

/// A column index: a position or a name.
pub trait RowIndex: rusqlite::RowIndex + tokio_postgres::row::RowIndex + fmt::Display + Copy {}
impl RowIndex for usize {}
impl RowIndex for &str {}

/// One row of a result.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a tokio_postgres::Row),
}

impl fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Row")
    }
}

impl Row<'_> {
    pub fn get<I: RowIndex, T: FromSql>(&self, idx: I) -> Result<T> {
        let conversion = |message: String| DbError::Conversion { column: idx.to_string(), message };
        match self {
            Row::Sqlite(row) => {
                let value = match row.get_ref(idx)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(i) => Value::Integer(i),
                    rusqlite::types::ValueRef::Real(r) => Value::Real(r),
                    rusqlite::types::ValueRef::Text(t) => {
                        Value::Text(std::str::from_utf8(t).map_err(|e| conversion(e.to_string()))?)
                    }
                    rusqlite::types::ValueRef::Blob(b) => Value::Blob(b),
                };
                T::from_sql(value).map_err(conversion)
            }
            Row::Postgres(row) => {
                let cell: Cell<'_> = row.try_get(idx).map_err(|e| DbError::pg(&e))?;
                T::from_sql(cell.0).map_err(conversion)
            }
        }
    }
}

/// The driver's traits for [`Value`], apart (their method names are ours too).
mod pg_types {
    use pgconn::tokio_postgres;
    use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

    use super::Value;

    /// A PostgreSQL column as a [`Value`].
    pub(super) struct Cell<'a>(pub(super) Value<'a>);

    impl<'a> FromSql<'a> for Cell<'a> {
        fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Cell(match *ty {
                Type::INT8 => Value::Integer(i64::from_sql(ty, raw)?),
                Type::INT4 => Value::Integer(i64::from(i32::from_sql(ty, raw)?)),
                Type::INT2 => Value::Integer(i64::from(i16::from_sql(ty, raw)?)),
                Type::BOOL => Value::Integer(i64::from(bool::from_sql(ty, raw)?)),
                Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
                Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
                Type::BYTEA => Value::Blob(<&[u8]>::from_sql(ty, raw)?),
                _ => Value::Text(<&str>::from_sql(ty, raw)?),
            }))
        }

        fn from_sql_null(_: &Type) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Cell(Value::Null))
        }

        fn accepts(ty: &Type) -> bool {
            matches!(
                *ty,
                Type::INT8
                    | Type::INT4
                    | Type::INT2
                    | Type::BOOL
                    | Type::FLOAT8
                    | Type::FLOAT4
                    | Type::BYTEA
                    | Type::TEXT
                    | Type::VARCHAR
                    | Type::BPCHAR
                    | Type::NAME
                    | Type::JSON
                    | Type::UNKNOWN
            )
        }
    }

    /// A [`Value`] bound to whatever type the server inferred for the parameter.
    #[derive(Debug)]
    pub(super) struct Bind<'a>(pub(super) Value<'a>);

    impl ToSql for Bind<'_> {
        fn to_sql(
            &self,
            ty: &Type,
            out: &mut pgconn::tokio_postgres::types::private::BytesMut,
        ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            match self.0 {
                Value::Null => Ok(IsNull::Yes),
                Value::Integer(i) => match *ty {
                    Type::INT8 => i.to_sql(ty, out),
                    Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                    Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                    Type::BOOL => (i != 0).to_sql(ty, out),
                    #[allow(clippy::cast_precision_loss)]
                    Type::FLOAT8 => (i as f64).to_sql(ty, out),
                    _ => i.to_string().as_str().to_sql(ty, out),
                },
                Value::Real(r) => match *ty {
                    Type::FLOAT4 => {
                        #[allow(clippy::cast_possible_truncation)]
                        let r = r as f32;
                        r.to_sql(ty, out)
                    }
                    Type::FLOAT8 => r.to_sql(ty, out),
                    _ => r.to_string().as_str().to_sql(ty, out),
                },
                Value::Text(t) => match *ty {
                    Type::BYTEA => t.as_bytes().to_sql(ty, out),
                    _ => t.to_sql(ty, out),
                },
                Value::Blob(b) => b.to_sql(ty, out),
            }
        }

        fn accepts(_: &Type) -> bool {
            true
        }

        tokio_postgres::types::to_sql_checked!();
    }
}
use pg_types::{Bind, Cell};

// ---- Connections ----

/// An open connection to the tenant's database.
pub struct Connection {
    engine: Engine,
    /// The key secrets are sealed with (see `secrets`); `None` keeps them
    /// as they are (an in-memory database in tests).
    secrets_key: Option<[u8; 32]>,
}

enum Engine {
    Sqlite(rusqlite::Connection),
    Postgres(PgConnection),
}

struct PgConnection {
    client: Client,
    /// Prepared statements by the SQL as written (before placeholder rewriting).
    statements: RefCell<HashMap<String, PgStatement>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.engine {
            Engine::Sqlite(_) => "Connection(SQLite)",
            Engine::Postgres(_) => "Connection(PostgreSQL)",
        })
    }
}

/// What a write transaction serialises with on PostgreSQL (SQLite has one
/// writer, so there every transaction excludes every other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteLock {
    /// Everything: the default, the semantics of SQLite's single writer.
    All,
    /// The directory (SCIM writes and Bulk): sign-ins go on meanwhile.
    Directory,
    /// Sign-in state (lockout counters, familiar locations): a large Bulk
    /// export does not hold up a sign-in.
    SignIn,
    /// None: the transaction's statements lock the rows they touch
    /// (`FOR UPDATE SKIP LOCKED`), and nothing else depends on it.
    Rows,
}

impl WriteLock {
    /// The advisory locks to take, in one global order (directory before
    /// sign-in), so two transactions never wait for each other in a cycle.
    fn keys(self) -> &'static [i64] {
        match self {
            WriteLock::All => &[DIRECTORY_LOCK, SIGN_IN_LOCK],
            WriteLock::Directory => &[DIRECTORY_LOCK],
            WriteLock::SignIn => &[SIGN_IN_LOCK],
            WriteLock::Rows => &[],
        }
    }
}

const DIRECTORY_LOCK: i64 = 7_305_571_162;
const SIGN_IN_LOCK: i64 = 7_305_571_163;

impl Connection {
    pub fn sqlite(conn: rusqlite::Connection, secrets_key: Option<[u8; 32]>) -> Connection {
        Connection { engine: Engine::Sqlite(conn), secrets_key }
    }

    /// Connects to PostgreSQL (the schema is migrated by the store).
    pub fn postgres(settings: &DatabaseSettings, secrets_key: Option<[u8; 32]>) -> Result<Connection> {
        let client =
            pgconn::connect(settings).map_err(|e| DbError::Postgres { message: e.0, code: None, closed: true })?;
        // A node that dies (or hangs) inside a transaction must not keep the
        // write lock: the server ends such a session.
        // The tenant's statements are keyed lookups on indexed columns: a
        // cached generic plan serves them (pgconn plans each execution anew
        // for the sync store's first bulk import, which this is not).
        block(client.batch_execute("SET idle_in_transaction_session_timeout = '60s'; SET plan_cache_mode = auto"))
            .map_err(|e| DbError::pg(&e))?;
        Ok(Connection {
            engine: Engine::Postgres(PgConnection { client, statements: RefCell::new(HashMap::new()) }),
            secrets_key,
        })
    }

    /// The underlying client, for migrations.
    pub(crate) fn postgres_client(&mut self) -> Option<&mut Client> {
        match &mut self.engine {
            Engine::Postgres(pg) => Some(&mut pg.client),
            Engine::Sqlite(_) => None,
        }
    }

    /// The SQLite connection, for what only SQLite has (query plans, the
    /// schema version), in tests.
    #[cfg(test)]
    pub(crate) fn sqlite_connection(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(c) => Some(c),
            Engine::Postgres(_) => None,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    /// A PostgreSQL connection that broke (the server restarted): the pool
    /// replaces it.
    pub(crate) fn is_broken(&self) -> bool {
        match &self.engine {
            Engine::Postgres(pg) => pg.client.is_closed(),
            Engine::Sqlite(_) => false,
        }
    }

    pub fn secrets_key(&self) -> Option<[u8; 32]> {
        self.secrets_key
    }

    pub(crate) fn set_secrets_key(&mut self, key: Option<[u8; 32]>) {
        self.secrets_key = key;
    }

    /// The text of `key` in the JSON text column `column`.
    pub fn json_text(&self, column: &str, key: &str) -> String {
        match self.engine {
            Engine::Sqlite(_) => format!("json_extract({column}, '$.{key}')"),
            Engine::Postgres(_) => format!("(({column})::json ->> '{key}')"),
        }
    }

    /// `column` in a condition SQLite should not answer from an index (a
    /// unary `+`, SQLite's way to steer its planner); PostgreSQL plans alone.
    pub fn unindexed(&self, column: &str) -> String {
        match self.engine {
            Engine::Sqlite(_) => format!("+{column}"),
            Engine::Postgres(_) => column.to_string(),
        }
    }

    /// Whether text column `column` contains parameter `param` (`?2`), exactly.
    pub fn contains(&self, column: &str, param: &str) -> String {
        match self.engine {
            Engine::Sqlite(_) => format!("instr({column}, {param}) > 0"),
            Engine::Postgres(_) => format!("strpos({column}, {param}) > 0"),
        }
    }

    fn pg_statement(pg: &PgConnection, sql: &str, params: usize) -> Result<PgStatement> {
        if let Some(s) = pg.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let (translated, referenced) = postgres_placeholders(sql);
        // The server infers each parameter's type from where it is used; one
        // a statement does not use (a shared parameter list) is declared text.
        let types: Vec<Type> = (1..=params)
            .map(|i| {
                if referenced.contains(&i) {
                    Type::new(String::new(), 0, Kind::Simple, String::new())
                } else {
                    Type::TEXT
                }
            })
            .collect();
        let statement = block(pg.client.prepare_typed(&translated, &types)).map_err(|e| {
            // A statement the server cannot prepare is a mistake here: say which.
            let mut error = DbError::pg(&e);
            if let DbError::Postgres { message, .. } = &mut error {
                let head: String = sql.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(160).collect();
                message.push_str(&format!(" in \"{head}\""));
            }
            error
        })?;
        let mut cache = pg.statements.borrow_mut();
        // A bound on what dynamic SQL (search filters) can leave behind.
        if cache.len() >= 512 {
            cache.clear();
        }
        cache.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn pg_query(pg: &PgConnection, sql: &str, params: &[Value<'_>]) -> Result<Vec<tokio_postgres::Row>> {
        let statement = Connection::pg_statement(pg, sql, params.len())?;
        let binds: Vec<Bind<'_>> = params.iter().map(|v| Bind(*v)).collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            binds.iter().map(|b| b as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        block(pg.client.query(&statement, &refs)).map_err(|e| DbError::pg(&e))
    }

    /// Runs a statement; the number of rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.values();
        match &self.engine {
            Engine::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(values.iter()))?),
            Engine::Postgres(pg) => {
                let statement = Connection::pg_statement(pg, sql, values.len())?;
                let binds: Vec<Bind<'_>> = values.iter().map(|v| Bind(*v)).collect();
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    binds.iter().map(|b| b as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                let n = block(pg.client.execute(&statement, &refs)).map_err(|e| DbError::pg(&e))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs several statements without parameters (schema changes).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.engine {
            Engine::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Engine::Postgres(pg) => block(pg.client.batch_execute(sql)).map_err(|e| DbError::pg(&e)),
        }
    }

    /// The first row, mapped; [`DbError::NoRows`] if there is none.
    pub fn query_row<T, P: Params>(&self, sql: &str, params: P, f: impl FnOnce(&Row<'_>) -> Result<T>) -> Result<T> {
        let values = params.values();
        match &self.engine {
            Engine::Sqlite(c) => {
                let mut statement = c.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(row) => f(&Row::Sqlite(row)),
                    None => Err(DbError::NoRows),
                }
            }
            Engine::Postgres(pg) => {
                let rows = Connection::pg_query(pg, sql, &values)?;
                match rows.first() {
                    Some(row) => f(&Row::Postgres(row)),
                    None => Err(DbError::NoRows),
                }
            }
        }
    }

    /// Every row, mapped.
    pub fn query_map<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let values = params.values();
        match &self.engine {
            Engine::Sqlite(c) => {
                let mut statement = c.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Engine::Postgres(pg) => {
                let rows = Connection::pg_query(pg, sql, &values)?;
                rows.iter().map(|row| f(&Row::Postgres(row))).collect()
            }
        }
    }

    /// A statement to run several times (the SQL is prepared and cached on first use).
    pub fn prepare<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        Ok(Statement { conn: self, sql: sql.to_string() })
    }

    /// As [`Connection::prepare`] (every statement is cached).
    pub fn prepare_cached<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        self.prepare(sql)
    }

    /// Begins a transaction: committed by [`Transaction::commit`], rolled
    /// back when dropped otherwise. On PostgreSQL it first takes the write
    /// lock (see the module's documentation).
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.unchecked_transaction()
    }

    /// [`Connection::transaction`] on a shared reference (the caller makes
    /// sure no other transaction is open on this connection).
    pub fn unchecked_transaction(&self) -> Result<Transaction<'_>> {
        self.transaction_for(WriteLock::All)
    }

    /// A transaction that serialises on PostgreSQL only with what `lock` names.
    pub fn transaction_for(&self, lock: WriteLock) -> Result<Transaction<'_>> {
        match &self.engine {
            Engine::Sqlite(c) => c.execute_batch("BEGIN")?,
            Engine::Postgres(pg) => {
                let mut sql = "BEGIN;".to_string();
                for key in lock.keys() {
                    sql.push_str(&format!(" SELECT pg_advisory_xact_lock({key});"));
                }
                block(pg.client.batch_execute(&sql)).map_err(|e| DbError::pg(&e))?;
            }
        }
        Ok(Transaction { conn: self, finished: false })
    }

    fn finish(&self, sql: &str) -> Result<()> {
        self.execute_batch(sql)
    }
}

/// A statement bound to its connection.
#[derive(Debug)]
pub struct Statement<'c> {
    conn: &'c Connection,
    sql: String,
}

impl Statement<'_> {
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }

    pub fn query_row<T, P: Params>(&mut self, params: P, f: impl FnOnce(&Row<'_>) -> Result<T>) -> Result<T> {
        self.conn.query_row(&self.sql, params, f)
    }

    /// Every row, mapped (read at once), as an iterator of results like rusqlite's.
    pub fn query_map<T, P: Params>(
        &mut self,
        params: P,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.conn.query_map(&self.sql, params, |row| Ok(f(row)))?;
        Ok(rows.into_iter())
    }
}

/// An open transaction; rolls back when dropped unless committed.
#[derive(Debug)]
pub struct Transaction<'c> {
    conn: &'c Connection,
    finished: bool,
}

impl Transaction<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.finished = true;
        self.conn.finish("COMMIT")
    }

    pub fn rollback(mut self) -> Result<()> {
        self.finished = true;
        self.conn.finish("ROLLBACK")
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished
            && let Err(e) = self.conn.finish("ROLLBACK")
        {
            // A broken connection rolled back by itself (the server ends the transaction).
            tracing::debug!(error = %e, "rollback failed");
        }
    }
}

/// SQLite placeholders (`?1`, `?`) as PostgreSQL's (`$1`), and the numbers
/// used; text in quotes is left alone.
fn postgres_placeholders(sql: &str) -> (String, std::collections::BTreeSet<usize>) {
    let mut used = std::collections::BTreeSet::new();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1usize;
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                let number = if digits.is_empty() {
                    next += 1;
                    next - 1
                } else {
                    digits.parse().unwrap_or(0)
                };
                used.insert(number);
                out.push('$');
                out.push_str(&number.to_string());
            }
            other => out.push(other),
        }
    }
    (out, used)
}

/// The SQLite schema (one migration) in PostgreSQL's words: integers are
/// 64-bit, bytes are `BYTEA`, text compares bytewise (`COLLATE "C"`, as
/// SQLite's default), an `AUTOINCREMENT` key is an identity column.
pub fn postgres_schema(sqlite: &str) -> String {
    let mut out = String::with_capacity(sqlite.len() * 2);
    for line in sqlite.lines() {
        let code = line.split_once("--").map_or(line, |(code, _)| code);
        let code = code
            .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
            .replace(") WITHOUT ROWID", ")");
        let mut translated = String::with_capacity(code.len() + 16);
        let mut word = String::new();
        let flush = |word: &mut String, translated: &mut String| {
            translated.push_str(match word.as_str() {
                "INTEGER" => "BIGINT",
                "BLOB" => "BYTEA",
                "TEXT" => "TEXT COLLATE \"C\"",
                other => other,
            });
            word.clear();
        };
        for c in code.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
            } else {
                flush(&mut word, &mut translated);
                translated.push(c);
            }
        }
        flush(&mut word, &mut translated);
        out.push_str(translated.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        let (sql, used) = postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12 AND e = ?");
        assert_eq!(sql, "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12 AND e = $1");
        assert_eq!(used.into_iter().collect::<Vec<_>>(), vec![1, 12]);
        let (sql, _) = postgres_placeholders("x = ? AND y = ? AND z = 'é?'");
        assert_eq!(sql, "x = $1 AND y = $2 AND z = 'é?'");
    }

    #[test]
    fn the_schema_translates_types_and_keeps_names() {
        let pg = postgres_schema(
            "CREATE TABLE t (\n  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n  text_col TEXT NOT NULL, -- TEXT here\n  b BLOB\n) WITHOUT ROWID;",
        );
        assert!(pg.contains("seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"), "{pg}");
        assert!(pg.contains("text_col TEXT COLLATE \"C\" NOT NULL,"), "{pg}");
        assert!(pg.contains("b BYTEA\n);"), "{pg}");
        assert!(!pg.contains("here"), "{pg}");
    }
}
