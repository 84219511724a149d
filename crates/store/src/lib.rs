//! The sync engine's durable state: connector spaces, the metaverse, what
//! was exported to the tenant, watermarks, run history and errors. Two
//! implementations of [`sync::engine::SyncStore`] and [`History`]:
//! [`SqliteStore`] (one file, one writer — the embedded default) and
//! [`PgStore`] (PostgreSQL, shared by an active and a standby daemon; the
//! active one holds the [`lease`] and every commit checks it).

mod codec;
pub mod lease;
mod member_chunks;
mod pack;
mod postgres;
mod sqlite;

use directory::{Dn, ObjectKind};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sync::SourceId;
use sync::engine::{CycleReport, MemberChanges, StoreError, SyncStore};

pub use postgres::{DatabaseSettings, PgStore, PgTls};
pub use sqlite::SqliteStore;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn kind_str(k: ObjectKind) -> &'static str {
    k.as_str()
}

fn kind_from(s: &str) -> ObjectKind {
    match s {
        "user" => ObjectKind::User,
        "group" => ObjectKind::Group,
        "contact" => ObjectKind::Contact,
        "organizationalUnit" => ObjectKind::OrganizationalUnit,
        _ => ObjectKind::Other,
    }
}

/// Now, RFC 3339 in UTC (rows written before this version hold epoch seconds).
fn now() -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::now_utc().replace_nanosecond(0).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// A source object joined to a metaverse object (for `sync explain`).
#[derive(Debug, Clone)]
pub struct JoinedRow {
    pub source: String,
    pub id: SourceId,
    pub attrs: serde_json::Map<String, Json>,
    pub precedence: Precedences,
    pub authoritative: Vec<String>,
}

use sync::rules::Precedences;

/// One stored error (per-object error queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRow {
    pub object: String,
    pub stage: String,
    pub message: String,
    pub attempts: i64,
}

/// One finished cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub source: String,
    /// RFC 3339, UTC.
    pub finished: String,
    pub status: String,
    pub report: RunSummary,
}

/// What a recorded cycle did (stored as JSON; fields a version did not
/// write read as zero or absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunSummary {
    /// `Full`, `Delta` or `FullFallback { reason }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_mode: Option<String>,
    pub imported: u64,
    pub deleted_on_premises: u64,
    pub synced: u64,
    pub out_of_scope: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// Objects that failed.
    pub errors: u64,
    /// Passwords stored in the tenant.
    pub passwords: u64,
    /// Password hash sync failed as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_failure: Option<String>,
    /// Milliseconds in import, sync and export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_ms: Option<[u64; 3]>,
    /// The cycle failed: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunSummary {
    pub fn of(report: &CycleReport) -> RunSummary {
        RunSummary {
            import_mode: Some(format!("{:?}", report.import_mode)),
            imported: report.imported,
            deleted_on_premises: report.deleted_on_premises,
            synced: report.synced,
            out_of_scope: report.out_of_scope,
            created: report.created,
            updated: report.updated,
            deleted: report.deleted,
            unchanged: report.unchanged,
            errors: report.error_count(),
            passwords: report.passwords_synced,
            password_failure: report.password_failure.as_ref().map(ToString::to_string),
            stage_ms: Some(report.stage_ms),
            error: None,
        }
    }
}

/// Object counts for `sync status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Objects in the connector spaces (deleted ones waiting for sync included).
    pub connector_space: i64,
    /// Live metaverse objects.
    pub metaverse: i64,
    /// Objects the tenant confirmed.
    pub exported: i64,
    /// Metaverse objects with something to export.
    pub pending_export: i64,
}

/// The run log the daemon writes and what `status`, `history`, `errors`
/// and `explain` read.
pub trait History {
    fn record_run(&mut self, source: &str, report: &CycleReport) -> Result<(), StoreError>;
    /// A cycle that ended with an error (the directory or the tenant could
    /// not be reached, …): recorded too, so `status` and `history` show it.
    fn record_failed_run(&mut self, source: &str, error: &str) -> Result<(), StoreError>;
    /// The last `limit` cycles, newest first.
    fn runs(&self, limit: usize) -> Result<Vec<RunRow>, StoreError>;
    /// The per-object error queue, oldest first.
    fn errors(&self) -> Result<Vec<ErrorRow>, StoreError>;
    /// The metaverse object with this userName (UPN), DN or immutableId:
    /// (metaverse id, source name, source id).
    fn find(&self, key: &str) -> Result<Option<(String, String, SourceId)>, StoreError>;
    fn counts(&self) -> Result<Counts, StoreError>;
    /// The source objects joined to `mv`.
    fn joined(&self, mv: &str) -> Result<Vec<JoinedRow>, StoreError>;
}

/// A sync state of either kind, as the orchestration holds it.
pub trait StateStore: SyncStore + History + Send {}

impl<T: SyncStore + History + Send + ?Sized> StateStore for T {}

/// What the reference tables keep of a referenced DN: the first 8 bytes of
/// the MD5 of its normalized form, big-endian (PostgreSQL computes the same
/// in SQL when migrating). Why not the DN: a reference row shrinks from
/// ~180 to ~70 bytes with its index. A collision (odds ~2⁻⁶⁴ per pair)
/// only makes an object be synced again, unchanged: the keys are used only
/// to find who may need it.
fn ref_key(dn_norm: &str) -> i64 {
    use md5::Digest;
    let digest = md5::Md5::digest(dn_norm.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    i64::from_be_bytes(first)
}

/// The reference keys of an entry's DN-valued references (manager, members).
fn ref_keys(entry: &directory::Entry) -> std::collections::BTreeSet<i64> {
    let mut keys = std::collections::BTreeSet::new();
    for attr in ["manager", "member", "uniqueMember"] {
        for v in entry.values(attr) {
            if let Some(dn) = v.as_text().and_then(|t| Dn::parse(t).ok()) {
                keys.insert(ref_key(&dn.normalized()));
            }
        }
    }
    keys
}

/// A connector-space row as `cs_put` compares it with what comes in.
struct StoredCs {
    /// Packed (see [`pack`]); without the members when `member_chunks` is not empty.
    entry: Vec<u8>,
    /// The digests of the member chunks (see [`member_chunks`]); empty: stored whole.
    member_chunks: Vec<u8>,
    anchor: Vec<u8>,
    kind: String,
    pending: bool,
    members_only: bool,
    deleted: bool,
}

/// An imported object as `cs_put` stores it.
struct Incoming<'a> {
    /// Packed; without the members when `chunks` is set.
    entry: Vec<u8>,
    /// A large group's member values (see [`member_chunks`]).
    chunks: Option<Vec<member_chunks::Chunk<'a>>>,
    /// The chunks' digests in order; empty when stored whole.
    digest_list: Vec<u8>,
}

/// What `cs_put` stores, made ahead (any thread): the packed entry unless
/// the object is a large group (split when written), its reference keys and
/// its DN's text.
fn encode_cs(object: &sync::SourceObject) -> Result<sync::engine::EncodedCs, StoreError> {
    let entry = match member_chunks::split(&object.entry) {
        Some(_) => None,
        None => Some(pack::pack(&codec::entry_to_json(&object.entry))?),
    };
    Ok(sync::engine::EncodedCs { entry, ref_keys: ref_keys(&object.entry), dn: object.entry.dn.to_string() })
}

/// [`incoming`], with the entry packed ahead by [`encode_cs`] when it was.
fn incoming_encoded(object: &sync::SourceObject, packed: Option<Vec<u8>>) -> Result<Incoming<'_>, StoreError> {
    match packed {
        Some(entry) => Ok(Incoming { entry, chunks: None, digest_list: Vec::new() }),
        None => incoming(object),
    }
}

fn incoming(object: &sync::SourceObject) -> Result<Incoming<'_>, StoreError> {
    let chunks = member_chunks::split(&object.entry);
    let json = match chunks {
        Some(_) => codec::entry_head_to_json(&object.entry, member_chunks::is_member_attribute),
        None => codec::entry_to_json(&object.entry),
    };
    let digest_list = chunks.as_deref().map(member_chunks::digest_list).unwrap_or_default();
    Ok(Incoming { entry: pack::pack(&json)?, chunks, digest_list })
}

/// Reads stored member chunks by digest: (digest, attribute, values), in
/// any order.
type ChunkLoader<'a> = dyn Fn(&[member_chunks::Digest]) -> Result<Vec<StoredChunk>, StoreError> + 'a;

/// A stored member chunk: digest, attribute, values.
type StoredChunk = (member_chunks::Digest, String, Vec<String>);

/// A member-chunk row as read: its digest and its packed values.
fn stored_chunk(digest: &[u8], attr: String, packed: &[u8]) -> Result<StoredChunk, StoreError> {
    let digest =
        member_chunks::Digest::try_from(digest).map_err(|_| StoreError("a member chunk's digest is corrupt".into()))?;
    let values = member_chunks::values_from_json(&pack::unpack(packed)?)
        .ok_or_else(|| StoreError("a member chunk is corrupt".into()))?;
    Ok((digest, attr, values))
}

/// The stored entry: its packed head and, when split, its member chunks put back.
fn stored_entry(
    entry: &[u8],
    chunk_list: &[u8],
    load: &ChunkLoader<'_>,
) -> Result<Option<directory::Entry>, StoreError> {
    let Some(head) = codec::entry_from_json(&pack::unpack(entry)?) else { return Ok(None) };
    if chunk_list.is_empty() {
        return Ok(Some(head));
    }
    let digests = member_chunks::digests(chunk_list);
    let mut loaded: std::collections::HashMap<member_chunks::Digest, (String, Vec<String>)> =
        load(&digests)?.into_iter().map(|(d, attr, values)| (d, (attr, values))).collect();
    let mut chunks = Vec::with_capacity(digests.len());
    for digest in &digests {
        chunks.push(
            loaded.remove(digest).ok_or_else(|| StoreError("a member chunk of a stored group is missing".into()))?,
        );
    }
    Ok(Some(member_chunks::join(head, chunks)))
}

/// The member chunks to write (digest, attribute, packed values) and to
/// delete when an entry stored with `old_list` is replaced by `new`.
type ChunkWrites<'a> = (Vec<(member_chunks::Digest, &'a str, Vec<u8>)>, Vec<member_chunks::Digest>);

fn chunk_writes<'a>(old_list: &[u8], new: &'a Incoming<'_>) -> Result<ChunkWrites<'a>, StoreError> {
    use std::collections::HashSet;
    let old: HashSet<member_chunks::Digest> = member_chunks::digests(old_list).into_iter().collect();
    let chunks = new.chunks.as_deref().unwrap_or_default();
    let kept: HashSet<member_chunks::Digest> = chunks.iter().map(|c| c.digest).collect();
    let mut write = Vec::new();
    for c in chunks.iter().filter(|c| !old.contains(&c.digest)) {
        write.push((c.digest, c.attr, pack::pack(&member_chunks::values_to_json(&c.values))?));
    }
    Ok((write, old.into_iter().filter(|d| !kept.contains(d)).collect()))
}

/// What an imported object is to the connector space.
enum Put {
    /// As stored: nothing to write.
    Unchanged,
    /// New, or something else than its members changed: synced whole.
    Whole,
    /// A group whose members alone changed (normalized DNs added, removed).
    Members(Vec<String>, Vec<String>),
}

/// Compares an imported object with the stored row.
fn classify_put(
    old: Option<&StoredCs>,
    new: &Incoming<'_>,
    object: &sync::SourceObject,
    load: &ChunkLoader<'_>,
) -> Result<Put, StoreError> {
    let Some(before) = old else { return Ok(Put::Whole) };
    let same_object = !before.deleted && before.anchor == object.anchor.0 && before.kind == kind_str(object.kind);
    if same_object && before.entry == new.entry && before.member_chunks == new.digest_list {
        return Ok(Put::Unchanged);
    }
    // Members alone changed (and nothing else waits for sync): only they
    // are compared, keyed and synced.
    if !(same_object && members_by_difference(object) && (!before.pending || before.members_only)) {
        return Ok(Put::Whole);
    }
    if let Some(chunks) = new.chunks.as_deref().filter(|_| !before.member_chunks.is_empty()) {
        if before.entry != new.entry {
            // The head holds everything but the members.
            return Ok(Put::Whole);
        }
        if let Some(changes) = chunk_changes(&before.member_chunks, chunks, load)? {
            return Ok(changes);
        }
    }
    let Some(stored) = stored_entry(&before.entry, &before.member_chunks, load)? else { return Ok(Put::Whole) };
    Ok(match member_changes(&stored, &object.entry) {
        Some((added, removed)) => Put::Members(added, removed),
        None => Put::Whole,
    })
}

/// The member changes of a group stored split and coming split, from the
/// chunks that differ alone; `None` when the group has values in more than
/// one member attribute (a value may then be in both: compared whole).
fn chunk_changes(
    old_list: &[u8],
    chunks: &[member_chunks::Chunk<'_>],
    load: &ChunkLoader<'_>,
) -> Result<Option<Put>, StoreError> {
    use std::collections::HashSet;
    let Some(attr) = chunks.first().map(|c| c.attr) else { return Ok(None) };
    if chunks.iter().any(|c| !c.attr.eq_ignore_ascii_case(attr)) {
        return Ok(None);
    }
    let old: HashSet<member_chunks::Digest> = member_chunks::digests(old_list).into_iter().collect();
    let kept: HashSet<member_chunks::Digest> = chunks.iter().map(|c| c.digest).collect();
    let gone_digests: Vec<member_chunks::Digest> = old.iter().filter(|d| !kept.contains(*d)).copied().collect();
    let gone = load(&gone_digests)?;
    if gone.len() != gone_digests.len() {
        return Err(StoreError("a member chunk of a stored group is missing".into()));
    }
    if gone.iter().any(|(_, a, _)| !a.eq_ignore_ascii_case(attr)) {
        return Ok(None);
    }
    let gone_values: HashSet<&str> = gone.iter().flat_map(|(_, _, values)| values.iter().map(String::as_str)).collect();
    let came_values: HashSet<&str> =
        chunks.iter().filter(|c| !old.contains(&c.digest)).flat_map(|c| c.values.iter().copied()).collect();
    let added: Vec<&str> = came_values.difference(&gone_values).copied().collect();
    let removed: Vec<&str> = gone_values.difference(&came_values).copied().collect();
    let (added, removed) = normalized_changes(&added, &removed);
    Ok(Some(Put::Members(added, removed)))
}

/// A group's metaverse members (sorted, once each) with logged changes
/// (member, added) put in.
fn members_with_log(mut members: Vec<String>, log: MemberChanges<String>) -> Vec<String> {
    if log.is_empty() {
        return members;
    }
    let gone: std::collections::HashSet<&str> = log.removed.iter().map(String::as_str).collect();
    members.retain(|m| !gone.contains(m.as_str()));
    // The stable sort merges the few added onto the sorted run in linear time.
    members.extend(log.added);
    members.sort();
    members.dedup();
    members
}

/// A group as its member changes are exported: without its members (and
/// without joined contributions: a group with joins is never exported by
/// difference).
fn group_head(mv: &str, kind: &str, anchor: String, attrs: &str) -> Result<sync::engine::MvRecord, StoreError> {
    let attrs = match serde_json::from_str::<Json>(attrs).map_err(err)? {
        Json::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    Ok(sync::engine::MvRecord {
        id: mv.to_string(),
        kind: kind_from(kind),
        anchor,
        attrs,
        manager: None,
        members: Vec::new(),
        deleted: false,
    })
}

/// Whether a group's member changes can be synced alone (see
/// [`sync::engine::ConnectorSpace::cs_member_changes`]): a group without a
/// manager, whose references are then all members.
fn members_by_difference(object: &sync::SourceObject) -> bool {
    object.kind == directory::ObjectKind::Group && !object.entry.has("manager")
}

/// The member changes from `old` to `new` when nothing else differs (DN,
/// other attributes): normalized DNs added and removed. `None` when
/// something else changed.
fn member_changes(old: &directory::Entry, new: &directory::Entry) -> Option<(Vec<String>, Vec<String>)> {
    let is_member = member_chunks::is_member_attribute;
    if old.dn != new.dn {
        return None;
    }
    let others = |e: &directory::Entry| e.attributes().filter(|a| !is_member(&a.name)).count();
    if others(old) != others(new) {
        return None;
    }
    for a in new.attributes().filter(|a| !is_member(&a.name)) {
        if old.values(&a.name) != a.values.as_slice() {
            return None;
        }
    }
    // Values as the source gave them, compared as text, so only the changed
    // ones are parsed as DNs.
    fn texts(e: &directory::Entry) -> Vec<&str> {
        sync::mapping::MEMBER_ATTRIBUTES
            .iter()
            .flat_map(|m| e.values(m))
            .filter_map(directory::Value::as_text)
            .collect()
    }
    let (before, after) = (texts(old), texts(new));
    let (added, removed) = text_changes(&before, &after);
    Some(normalized_changes(&added, &removed))
}

/// Member values added and removed (as the directory wrote them) as
/// normalized DNs added and removed.
fn normalized_changes(added: &[&str], removed: &[&str]) -> (Vec<String>, Vec<String>) {
    use std::collections::HashSet;
    let normalized = |t: &&str| Dn::parse(t).ok().map(|d| d.normalized());
    let added: HashSet<String> = added.iter().filter_map(normalized).collect();
    let removed: HashSet<String> = removed.iter().filter_map(normalized).collect();
    // A value written differently but naming the same DN is no change.
    (added.difference(&removed).cloned().collect(), removed.difference(&added).cloned().collect())
}

/// The values of `after` not in `before` and of `before` not in `after`.
/// A directory sends a group's values in the same order each time, so the
/// lists usually differ only in a short stretch: past their common start and
/// end only that stretch is compared — each value found there is checked
/// against the whole other list, as values may have moved — and a long
/// stretch (a mass change) is compared by hashing.
fn text_changes<'a>(before: &[&'a str], after: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    use std::collections::HashSet;
    /// Longer differing stretches are compared by hashing.
    const SHORT: usize = 8;
    let start = before.iter().zip(after).take_while(|(a, b)| a == b).count();
    let (rest_before, rest_after) = (before.get(start..).unwrap_or_default(), after.get(start..).unwrap_or_default());
    let end = rest_before.iter().rev().zip(rest_after.iter().rev()).take_while(|(a, b)| a == b).count();
    let middle_before = rest_before.get(..rest_before.len() - end).unwrap_or_default();
    let middle_after = rest_after.get(..rest_after.len() - end).unwrap_or_default();
    if middle_before.len() + middle_after.len() <= SHORT {
        let added = middle_after.iter().filter(|v| !before.contains(v)).copied().collect();
        let removed = middle_before.iter().filter(|v| !after.contains(v)).copied().collect();
        return (added, removed);
    }
    let (before_set, after_set): (HashSet<&str>, HashSet<&str>) =
        (before.iter().copied().collect(), after.iter().copied().collect());
    (
        after.iter().filter(|v| !before_set.contains(*v)).copied().collect(),
        before.iter().filter(|v| !after_set.contains(*v)).copied().collect(),
    )
}

/// Member changes the tenant confirmed are logged next to a group's
/// resource and folded into it once this many are logged: a member added
/// to a group of 250,000 writes one row, and the resource (megabytes) is
/// rewritten once per this many changes. Readers put the log in.
const FOLD_MEMBER_LOG: i64 = 1000;

/// Puts confirmed member changes (tenant ids) into a group's resource as
/// last confirmed (JSON text): members sorted by id, as the outbound mapping
/// gives them, and no `members` at all when none are left. Only `members` is
/// parsed: the rest of the resource is kept as text.
fn apply_member_changes(resource: &str, changes: &MemberChanges<String>) -> Result<String, StoreError> {
    if changes.is_empty() {
        return Ok(resource.to_string());
    }
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Member {
        value: String,
    }
    let mut fields: std::collections::BTreeMap<String, Box<RawValue>> = serde_json::from_str(resource).map_err(err)?;
    let mut members: Vec<Member> = match fields.get("members") {
        Some(raw) => serde_json::from_str(raw.get()).map_err(err)?,
        None => Vec::new(),
    };
    let gone: std::collections::HashSet<&str> = changes.removed.iter().map(String::as_str).collect();
    members.retain(|m| !gone.contains(m.value.as_str()));
    members.extend(changes.added.iter().map(|id| Member { value: id.clone() }));
    members.sort_by(|a, b| a.value.cmp(&b.value));
    members.dedup_by(|a, b| a.value == b.value);
    if members.is_empty() {
        fields.remove("members");
    } else {
        let text = serde_json::to_string(&members).map_err(err)?;
        fields.insert("members".into(), RawValue::from_string(text).map_err(err)?);
    }
    serde_json::to_string(&fields).map_err(err)
}

/// The normalized form of `key` if it is a DN, else empty (for `find`).
fn dn_key(key: &str) -> String {
    Dn::parse(key).map(|d| d.normalized()).unwrap_or_default()
}

/// Adds what one joined source object contributes (stored as JSON: its
/// attributes, the precedence behind each, the attributes its source is
/// authoritative for), by [`sync::mapping::merge_joined`].
fn merge_contribution(
    attrs: &mut serde_json::Map<String, Json>,
    precedence: &mut Precedences,
    joined: &str,
    joined_precedence: &str,
    authoritative: &str,
) -> Result<(), StoreError> {
    let Json::Object(joined) = serde_json::from_str(joined).map_err(err)? else { return Ok(()) };
    let joined_precedence: Precedences = serde_json::from_str(joined_precedence).map_err(err)?;
    let authoritative: Vec<String> = serde_json::from_str(authoritative).map_err(err)?;
    sync::mapping::merge_joined(attrs, precedence, joined, &joined_precedence, &authoritative);
    Ok(())
}

/// Precedences as stored (JSON text; `{}` for rows written before there were any).
fn precedence_text(precedence: &Precedences) -> String {
    serde_json::to_string(precedence).unwrap_or_else(|_| "{}".into())
}

fn precedence_from(text: &str) -> Result<Precedences, StoreError> {
    serde_json::from_str(text).map_err(err)
}

/// A joined object's references as stored (`{}` for rows written before there were any).
fn joined_refs(text: &str) -> Result<sync::engine::JoinedRefs, StoreError> {
    serde_json::from_str(text).map_err(err)
}

/// A projection as stored: attributes and sorted members as JSON text,
/// and the normalized DN it came from.
fn projection_row(p: &sync::mapping::Projection, members: &mut Vec<String>) -> (String, String, String) {
    (Json::Object(p.attrs.clone()).to_string(), members_text(members), p.source_dn_normalized())
}

/// A metaverse object's members as stored: sorted, once each, as a JSON
/// array (both backends; an unchanged list is then the same text).
fn members_text(members: &mut Vec<String>) -> String {
    members.sort();
    members.dedup();
    serde_json::json!(members).to_string()
}

/// A projection's attributes as the SQLite store keeps them (any thread).
fn encode_mv(p: &sync::mapping::Projection) -> Result<sync::engine::EncodedMv, StoreError> {
    // The same text as `projection_row`'s, without copying the map first.
    Ok(sync::engine::EncodedMv {
        attrs: pack::pack(&serde_json::to_string(&p.attrs).map_err(err)?)?,
        dn_norm: p.source_dn_normalized(),
    })
}

/// A confirmed resource as the SQLite store keeps it (any thread).
fn encode_exported(resource: &serde_json::Value) -> Result<sync::engine::EncodedExported, StoreError> {
    encode_exported_text(&resource.to_string())
}

/// [`encode_exported`] of a resource's JSON text (the export's encoder).
fn encode_exported_text(text: &str) -> Result<sync::engine::EncodedExported, StoreError> {
    Ok(sync::engine::EncodedExported { resource: pack::pack(text)? })
}

/// A join attribute goes into SQL text (an index name, a JSON path): letters, digits and '_' only.
fn check_join_attribute(mv_attr: &str) -> Result<(), StoreError> {
    if mv_attr.is_empty() || !mv_attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError(format!("join attribute {mv_attr:?}: letters, digits and '_' only")));
    }
    Ok(())
}

/// A failed run's stored summary.
fn failed_summary(error: &str) -> Result<String, StoreError> {
    serde_json::to_string(&RunSummary { error: Some(error.to_string()), ..RunSummary::default() }).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::{MemberChanges, apply_member_changes, text_changes};

    /// Attributes encoded ahead (on the sync stage's helper thread) are the
    /// bytes a projection written whole stores: an unchanged object stays
    /// unchanged whichever way it was written. Its DN is normalised there too.
    #[test]
    fn attributes_encoded_ahead_are_the_stored_bytes() {
        let attrs = serde_json::json!({
            "displayName": "Zoë Ångström", "mail": ["zoë@example.org", "z@example.org"], "title": null, "n": 3,
            "onPremisesDistinguishedName": "CN=Zoë  Ångström,OU=People,DC=Example,DC=org"
        });
        let projection = sync::mapping::Projection {
            kind: directory::ObjectKind::User,
            anchor: "anchor".into(),
            attrs: attrs.as_object().cloned().unwrap_or_default(),
            precedence: Default::default(),
            manager: None,
            members: Vec::new(),
        };
        let (text, _, _) = super::projection_row(&projection, &mut Vec::new());
        let encoded = super::encode_mv(&projection).ok();
        assert_eq!(encoded.as_ref().map(|e| e.attrs.clone()), super::pack::pack(&text).ok());
        assert_eq!(encoded.map(|e| e.dn_norm).as_deref(), Some("cn=zoë ångström,ou=people,dc=example,dc=org"));
    }

    /// An entry encoded ahead (on the import's helper thread) is stored with
    /// the bytes and reference keys `cs_put` would make itself.
    #[test]
    fn entries_encoded_ahead_are_the_stored_bytes() {
        let dn = |t: &str| directory::Dn::parse(t).unwrap_or_default();
        let mut entry = directory::Entry::new(dn("uid=zoë,ou=Leute,dc=example,dc=org"));
        entry.add("cn", "Zoë Ångström");
        entry.add("manager", "uid=Ärger,ou=Leute,dc=example,dc=org");
        let object = sync::SourceObject {
            id: sync::SourceId(vec![1, 2, 3]),
            anchor: directory::Anchor(vec![9; 16]),
            kind: directory::ObjectKind::User,
            entry,
        };
        let encoded = super::encode_cs(&object).ok().unwrap_or_default();
        assert_eq!(encoded.entry, super::incoming(&object).ok().map(|i| i.entry));
        assert_eq!(encoded.ref_keys, super::ref_keys(&object.entry));
        assert_eq!(encoded.ref_keys.len(), 1);
    }

    fn sorted(mut v: Vec<&str>) -> Vec<&str> {
        v.sort_unstable();
        v
    }

    #[test]
    fn member_values_compare_by_the_stretch_that_differs() {
        let many: Vec<String> = (0..1000).map(|i| format!("uid=u{i},dc=example,dc=org")).collect();
        let base: Vec<&str> = many.iter().map(String::as_str).collect();
        // Appended at the end, removed in the middle, both.
        let mut after = base.clone();
        after.push("uid=new,dc=example,dc=org");
        assert_eq!(text_changes(&base, &after), (vec!["uid=new,dc=example,dc=org"], vec![]));
        let mut after = base.clone();
        let gone = after.remove(500);
        after.insert(10, "uid=ü,dc=example,dc=org");
        assert_eq!(text_changes(&base, &after), (vec!["uid=ü,dc=example,dc=org"], vec![gone]));
        // A value that only moved is no change, even next to a change.
        let mut after = base.clone();
        let moved = after.remove(3);
        after.insert(7, moved);
        assert_eq!(text_changes(&base, &after), (vec![], vec![]));
        // A mass change (by hashing): every other value replaced.
        let after: Vec<&str> = base.iter().enumerate().map(|(i, v)| if i % 2 == 0 { *v } else { "x" }).collect();
        let (added, removed) = text_changes(&base, &after);
        assert_eq!(added, vec!["x"; 500]);
        assert_eq!(removed.len(), 500);
        assert_eq!(text_changes(&[], &["a", "b"]).0, sorted(vec!["a", "b"]));
        assert_eq!(text_changes(&["a", "b"], &[]).1, vec!["a", "b"]);
    }

    #[test]
    fn confirmed_member_changes_patch_only_the_members() {
        let resource = r#"{"displayName":"Équipe","members":[{"value":"b"},{"value":"d"}],"schemas":["x"]}"#;
        let changes = |added: &[&str], removed: &[&str]| MemberChanges {
            added: added.iter().map(|s| s.to_string()).collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
        };
        let patched = apply_member_changes(resource, &changes(&["a"], &["d"])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&patched).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"displayName": "Équipe", "members": [{"value": "a"}, {"value": "b"}], "schemas": ["x"]})
        );
        // (A removed member no longer in the tenant has no id: nothing to take out.)
        let emptied = apply_member_changes(&patched, &changes(&[], &["a", "b"])).unwrap();
        assert_eq!(emptied, r#"{"displayName":"Équipe","schemas":["x"]}"#);
        assert!(apply_member_changes("not json", &changes(&["a"], &[])).is_err());
    }
}
