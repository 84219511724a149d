//! Where a synchronised object's values come from, as the sync engine
//! explains it. The tenant does not know the sync rules; the console asks
//! ([`request`]), the sync daemon picks the question up at its next cycle
//! ([`pending`]) and answers ([`answer`]) with what `idbridge sync explain`
//! shows. Asked per object, so nothing is computed or stored for objects
//! nobody looks at.

use crate::db::{Connection, OptionalExtension, params};
use proto::hybrid::{AttributeLineage, ObjectLineage};

use crate::error::{Result, TenantError};
use crate::objects;
use crate::util::now;

/// One object's lineage as stored, with when it was asked and answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub requested: Option<String>,
    pub answered: Option<String>,
    pub found: bool,
    pub source: String,
    pub source_object: String,
    pub joined: Vec<String>,
    pub attributes: Vec<AttributeLineage>,
}

impl Lineage {
    /// Asked, and no answer since.
    pub fn waiting(&self) -> bool {
        match (&self.requested, &self.answered) {
            (Some(asked), Some(answered)) => answered < asked,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// The immutableId (sourceAnchor) of a stored object, if it is synchronised.
fn immutable_id(object: &objects::Stored) -> Option<String> {
    object
        .data
        .as_object()?
        .iter()
        .filter(|(k, _)| k.starts_with("urn:"))
        .find_map(|(_, ext)| ext.get("immutableId").and_then(serde_json::Value::as_str))
        .map(str::to_string)
}

/// Asks the sync daemons where `resource_id`'s values come from.
pub fn request(conn: &Connection, resource_id: &str) -> Result<()> {
    let object = objects::load(conn, None, resource_id)?
        .ok_or_else(|| TenantError::NotFound(format!("object {resource_id}")))?;
    let Some(anchor) = immutable_id(&object) else {
        return Err(TenantError::Invalid("a cloud-only object has no on-premises source".into()));
    };
    conn.execute(
        "INSERT INTO lineage(resource_id, immutable_id, requested) VALUES(?1, ?2, ?3)
         ON CONFLICT(resource_id) DO UPDATE SET immutable_id = excluded.immutable_id, requested = excluded.requested",
        params![resource_id, anchor, now()],
    )?;
    Ok(())
}

/// The sourceAnchors asked about and not answered since, oldest first.
pub fn pending(conn: &Connection, limit: usize) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT immutable_id FROM lineage WHERE requested IS NOT NULL AND (answered IS NULL OR answered < requested)
         ORDER BY requested LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| r.get(0))?;
    Ok(rows.collect::<crate::db::Result<Vec<String>>>()?)
}

/// Stores a sync daemon's answers. "Not found" never overwrites what
/// another daemon (another forest's) found. The number stored.
pub fn answer(conn: &Connection, answers: &[ObjectLineage]) -> Result<usize> {
    let mut stored = 0;
    for a in answers {
        let Some(object) = objects::find_by_immutable_id(conn, &a.immutable_id)? else { continue };
        let changed = if a.found {
            conn.execute(
                "UPDATE lineage SET answered = ?2, found = 1, source = ?3, source_object = ?4, joined = ?5, attributes = ?6
                 WHERE resource_id = ?1",
                params![
                    object.id,
                    now(),
                    a.source,
                    a.source_object,
                    serde_json::to_string(&a.joined).unwrap_or_default(),
                    serde_json::to_string(&a.attributes).unwrap_or_default()
                ],
            )?
        } else {
            conn.execute(
                "UPDATE lineage SET answered = ?2 WHERE resource_id = ?1 AND found = 0",
                params![object.id, now()],
            )?
        };
        stored += changed;
    }
    Ok(stored)
}

pub fn get(conn: &Connection, resource_id: &str) -> Result<Option<Lineage>> {
    let row = conn
        .query_row(
            "SELECT requested, answered, found, coalesce(source, ''), coalesce(source_object, ''), joined, attributes
             FROM lineage WHERE resource_id = ?1",
            params![resource_id],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            },
        )
        .optional()?;
    Ok(row.map(|(requested, answered, found, source, source_object, joined, attributes)| Lineage {
        requested,
        answered,
        found,
        source,
        source_object,
        joined: joined.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default(),
        attributes: attributes.and_then(|a| serde_json::from_str(&a).ok()).unwrap_or_default(),
    }))
}
