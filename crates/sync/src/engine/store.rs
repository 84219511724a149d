//! The engine's durable state, in four small traits: transactions, the
//! connector spaces (what each source holds, its watermark and its
//! passwords waiting to be confirmed), the metaverse (projected and joined
//! objects) and the export log (what the tenant confirmed, what failed).
//! [`SyncStore`] is all four; the SQLite store (`store` crate) and the
//! in-memory store ([`super::memory`]) implement them.

use directory::{Dn, ObjectKind};
use serde_json::Value as Json;

use crate::mapping::{Flavor, Projection};
use crate::source::{SourceId, SourceObject, Watermark};

/// A storage failure (the store's own error, as text).
#[derive(Debug, Clone, thiserror::Error)]
#[error("sync store: {0}")]
pub struct StoreError(pub String);

/// A write transaction on a store: commits only when told, rolls
/// back when dropped otherwise — an error returned with `?`, a panic or a
/// cancelled future leaves nothing half-written and no transaction open.
pub struct Transaction<'a, St: Transactional + ?Sized> {
    store: &'a mut St,
    open: bool,
}

impl<'a, St: Transactional + ?Sized> Transaction<'a, St> {
    pub fn begin(store: &'a mut St) -> Result<Self, StoreError> {
        store.begin()?;
        Ok(Transaction { store, open: true })
    }

    pub fn commit(mut self) -> Result<(), StoreError> {
        self.open = false;
        let committed = self.store.commit();
        if committed.is_err() {
            // A failed COMMIT may leave the transaction open: never keep it.
            let _ = self.store.rollback();
        }
        committed
    }
}

impl<St: Transactional + ?Sized> std::fmt::Debug for Transaction<'_, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("open", &self.open).finish_non_exhaustive()
    }
}

impl<St: Transactional + ?Sized> std::ops::Deref for Transaction<'_, St> {
    type Target = St;
    fn deref(&self) -> &St {
        self.store
    }
}

impl<St: Transactional + ?Sized> std::ops::DerefMut for Transaction<'_, St> {
    fn deref_mut(&mut self) -> &mut St {
        self.store
    }
}

impl<St: Transactional + ?Sized> Drop for Transaction<'_, St> {
    fn drop(&mut self) {
        if self.open
            && let Err(e) = self.store.rollback()
        {
            tracing::warn!(error = %e, "sync store: rollback failed");
        }
    }
}

/// Reads that see one snapshot of a store and take its read lock once
/// ([`Transactional::begin_reads`]) rather than once per statement; ended
/// by [`Reads::end`], or when dropped. Only reads go through it (it holds
/// the store shared), so ending it loses nothing.
pub struct Reads<'a, St: Transactional + ?Sized> {
    store: &'a St,
    started: bool,
}

impl<'a, St: Transactional + ?Sized> Reads<'a, St> {
    pub fn begin(store: &'a St) -> Result<Self, StoreError> {
        let started = store.begin_reads()?;
        Ok(Reads { store, started })
    }

    pub fn end(mut self) -> Result<(), StoreError> {
        if !std::mem::take(&mut self.started) {
            return Ok(());
        }
        self.store.end_reads()
    }
}

impl<St: Transactional + ?Sized> std::fmt::Debug for Reads<'_, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads").field("started", &self.started).finish_non_exhaustive()
    }
}

impl<St: Transactional + ?Sized> Drop for Reads<'_, St> {
    fn drop(&mut self) {
        if self.started
            && let Err(e) = self.store.end_reads()
        {
            tracing::warn!(error = %e, "sync store: ending a read snapshot failed");
        }
    }
}

/// A connector-space object as read by [`ConnectorSpace::cs_read`]: its
/// entry is decoded by [`CsRead::decode`], on whichever thread calls it.
pub struct CsRead {
    id: SourceId,
    anchor: directory::Anchor,
    kind: ObjectKind,
    deleted: bool,
    entry: Box<dyn FnOnce() -> Result<directory::Entry, StoreError> + Send>,
}

impl CsRead {
    /// An object whose entry is decoded already.
    pub fn decoded(object: SourceObject, deleted: bool) -> Self {
        let SourceObject { id, anchor, kind, entry } = object;
        Self { id, anchor, kind, deleted, entry: Box::new(move || Ok(entry)) }
    }

    /// An object whose entry `decode` makes from what the store read.
    pub fn deferred(
        id: SourceId,
        anchor: directory::Anchor,
        kind: ObjectKind,
        deleted: bool,
        decode: impl FnOnce() -> Result<directory::Entry, StoreError> + Send + 'static,
    ) -> Self {
        Self { id, anchor, kind, deleted, entry: Box::new(decode) }
    }

    /// The object and whether it is marked deleted.
    pub fn decode(self) -> Result<(SourceObject, bool), StoreError> {
        let entry = (self.entry)()?;
        Ok((SourceObject { id: self.id, anchor: self.anchor, kind: self.kind, entry }, self.deleted))
    }
}

impl std::fmt::Debug for CsRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsRead")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("deleted", &self.deleted)
            .finish()
    }
}

/// A metaverse object as [`Metaverse::mv_attrs_read`] reads it: what its
/// unique values come from, without its references. Its attributes are
/// decoded by [`MvAttrsRead::decode`], on whichever thread calls it.
pub struct MvAttrsRead {
    pub kind: ObjectKind,
    pub anchor: String,
    /// Its source object is gone.
    pub deleted: bool,
    attrs: Box<dyn FnOnce() -> Result<serde_json::Map<String, Json>, StoreError> + Send>,
}

impl MvAttrsRead {
    /// An object whose attributes are decoded already.
    pub fn decoded(record: MvRecord) -> Self {
        let MvRecord { kind, anchor, attrs, deleted, .. } = record;
        Self { kind, anchor, deleted, attrs: Box::new(move || Ok(attrs)) }
    }

    /// An object whose attributes `decode` makes from what the store read.
    pub fn deferred(
        kind: ObjectKind,
        anchor: String,
        deleted: bool,
        decode: impl FnOnce() -> Result<serde_json::Map<String, Json>, StoreError> + Send + 'static,
    ) -> Self {
        Self { kind, anchor, deleted, attrs: Box::new(decode) }
    }

    /// Its attributes, joined contributions merged in.
    pub fn decode(self) -> Result<serde_json::Map<String, Json>, StoreError> {
        (self.attrs)()
    }
}

impl std::fmt::Debug for MvAttrsRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvAttrsRead")
            .field("kind", &self.kind)
            .field("anchor", &self.anchor)
            .field("deleted", &self.deleted)
            .finish()
    }
}

/// Encodes an imported object the way its store keeps it (see
/// [`ConnectorSpace::cs_encoder`]); a plain function, so any thread may run it.
pub type CsEncoder = fn(&SourceObject) -> Result<EncodedCs, StoreError>;

/// An imported object in its store's own encoding, made ahead of writing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedCs {
    /// The entry as the store keeps it; `None`: made when written (a large
    /// group, whose members the store splits as it writes).
    pub entry: Option<Vec<u8>>,
    /// The store's keys of the DNs the object refers to.
    pub ref_keys: std::collections::BTreeSet<i64>,
    /// The object's DN as the text the store keeps.
    pub dn: String,
}

/// Encodes a projection's attributes the way its store keeps them (see
/// [`Metaverse::mv_encoder`]); a plain function, so any thread may run it.
pub type MvEncoder = fn(&Projection) -> Result<EncodedMv, StoreError>;

/// A projection's attributes in its store's own encoding, made ahead, and
/// the normalised DN it is indexed by
/// ([`crate::mapping::Projection::source_dn_normalized`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMv {
    pub attrs: Vec<u8>,
    pub dn_norm: String,
}

/// Encodes a resource, given as its JSON text ([`super::Resource::text`]),
/// the way its store keeps what the target confirmed (see
/// [`ExportLog::exported_encoder`]); a plain function, so any thread may
/// run it.
pub type ExportedEncoder = fn(&str) -> Result<EncodedExported, StoreError>;

/// A confirmed resource in its store's own encoding, made ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExported {
    pub resource: Vec<u8>,
}

/// What [`SyncStore::mv_project`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projected {
    /// The metaverse object's id.
    pub id: String,
    /// Its DN did not lead to a live metaverse object of this source before:
    /// it is new, back from deletion or renamed. Objects that refer to that DN
    /// may resolve it now. (May be `true` when another object of the source
    /// still had the DN: it only costs them a second look.)
    pub newly_resolvable: bool,
}

/// A metaverse object as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MvRecord {
    pub id: String,
    pub kind: ObjectKind,
    pub anchor: String,
    pub attrs: serde_json::Map<String, Json>,
    pub manager: Option<String>,
    pub members: Vec<String>,
    /// Its source object is gone: the tenant object is to be deleted.
    pub deleted: bool,
}

impl MvRecord {
    /// How messages name the object: its on-premises DN, or its anchor.
    pub fn name(&self) -> &str {
        self.attrs.get("onPremisesDistinguishedName").and_then(Json::as_str).unwrap_or(&self.anchor)
    }
}

/// What changed in a group's members: DNs since it was last synced, or
/// metaverse ids since the tenant last confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChanges<T = Dn> {
    pub added: Vec<T>,
    pub removed: Vec<T>,
}

impl<T> Default for MemberChanges<T> {
    fn default() -> Self {
        MemberChanges { added: Vec::new(), removed: Vec::new() }
    }
}

impl<T> MemberChanges<T> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// From (member, added) pairs, as stores keep changes.
impl<T> FromIterator<(T, bool)> for MemberChanges<T> {
    fn from_iter<I: IntoIterator<Item = (T, bool)>>(rows: I) -> Self {
        let mut changes = MemberChanges::default();
        for (member, added) in rows {
            if added { changes.added.push(member) } else { changes.removed.push(member) }
        }
        changes
    }
}

/// Write transactions. The engine never calls these directly: it goes
/// through [`Transaction`], which rolls back when dropped.
pub trait Transactional {
    /// Opens a write transaction.
    fn begin(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Undoes everything since `begin`; a no-op when no transaction is open
    /// (the database may have rolled back by itself after an IO error).
    fn rollback(&mut self) -> Result<(), StoreError>;
    /// Starts a snapshot for the reads that follow, until
    /// [`Transactional::end_reads`]: a store whose every statement would
    /// otherwise take and release a read lock takes it once. `false` when
    /// nothing was started (a transaction is open, or the store has no such
    /// cost).
    fn begin_reads(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Ends what [`Transactional::begin_reads`] started (called only when
    /// it returned `true`).
    fn end_reads(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Per source: its import position, what the last full sync ran with, its
/// objects as imported, and users whose password waits for the target.
pub trait ConnectorSpace {
    fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError>;
    fn set_watermark(&mut self, source: &str, watermark: &Watermark) -> Result<(), StoreError>;
    /// A fingerprint of the effective configuration the last full sync ran with.
    fn config_hash(&self, source: &str) -> Result<Option<String>, StoreError>;
    fn set_config_hash(&mut self, source: &str, hash: &str) -> Result<(), StoreError>;
    /// The mapping flavour the source's last cycle ran with (`explain` maps
    /// its objects the same way).
    fn flavor(&self, source: &str) -> Result<Option<Flavor>, StoreError>;
    fn set_flavor(&mut self, source: &str, flavor: Flavor) -> Result<(), StoreError>;

    /// Stores an imported object; marks it for sync if it changed.
    fn cs_put(&mut self, source: &str, object: &SourceObject) -> Result<(), StoreError>;
    /// Makes what [`ConnectorSpace::cs_put_encoded`] stores without the
    /// store, so that it can run on another thread than the store's (the
    /// import encodes on a helper thread while the store writes). `None`:
    /// the store encodes when it writes.
    fn cs_encoder(&self) -> Option<CsEncoder> {
        None
    }
    /// [`ConnectorSpace::cs_put`] with the object encoded ahead by the
    /// store's own [`ConnectorSpace::cs_encoder`].
    fn cs_put_encoded(&mut self, source: &str, object: &SourceObject, _encoded: EncodedCs) -> Result<(), StoreError> {
        self.cs_put(source, object)
    }
    /// Marks an object as gone (it is removed once synced).
    fn cs_delete(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;
    /// The live objects whose ids are not in `seen`, with their DNs
    /// (reconciliation after a full import: what the source no longer
    /// has). Only those DNs are parsed: after a full import of a million
    /// objects that is usually none.
    fn cs_unseen(
        &self,
        source: &str,
        seen: &std::collections::HashSet<SourceId>,
    ) -> Result<Vec<(SourceId, Dn)>, StoreError>;
    /// How many live objects the connector space of `source` holds.
    fn cs_count(&self, source: &str) -> Result<usize, StoreError> {
        Ok(self.cs_unseen(source, &std::collections::HashSet::new())?.len())
    }
    fn cs_mark_all_pending(&mut self, source: &str) -> Result<(), StoreError>;
    fn cs_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError>;
    /// The object and whether it is marked deleted.
    fn cs_get(&self, source: &str, id: &SourceId) -> Result<Option<(SourceObject, bool)>, StoreError>;
    /// The same, with the decoding of its entry (decompression, parsing)
    /// left to the caller, so that it can run on another thread than the
    /// store's: the sync stage decodes and projects a batch on a helper
    /// thread while the store writes the previous one.
    fn cs_read(&self, source: &str, id: &SourceId) -> Result<Option<CsRead>, StoreError> {
        Ok(self.cs_get(source, id)?.map(|(object, deleted)| CsRead::decoded(object, deleted)))
    }
    /// The object at `dn`, if the connector space has one.
    fn cs_find(&self, source: &str, dn: &Dn) -> Result<Option<SourceId>, StoreError>;
    /// Objects whose manager or member references point at `dn`.
    fn cs_referencing(&self, source: &str, dn: &Dn) -> Result<Vec<SourceId>, StoreError>;
    fn cs_mark_pending(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;
    /// Marks for sync every object whose references point at `dn`, except
    /// `except` (a store may do it in one statement).
    fn cs_mark_referencing_pending(&mut self, source: &str, dn: &Dn, except: &SourceId) -> Result<(), StoreError> {
        for other in self.cs_referencing(source, dn)? {
            if &other != except {
                self.cs_mark_pending(source, &other)?;
            }
        }
        Ok(())
    }
    /// A pending group whose members alone changed since it was last
    /// synced: the changes recorded at import (a large group is then synced
    /// by difference). `None` when anything else changed, or the store does
    /// not record member changes: the group is synced whole.
    fn cs_member_changes(&self, _source: &str, _id: &SourceId) -> Result<Option<MemberChanges>, StoreError> {
        Ok(None)
    }
    /// Sync is done with the object: clears the mark, removes deleted ones.
    fn cs_done(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;

    /// Password hash sync: users whose password was read but not yet
    /// confirmed by the target (ids only — never the secret). They are read
    /// again next cycle, so a crash or an unreachable tenant loses nothing.
    fn passwords_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError>;
    fn set_password_pending(&mut self, source: &str, id: &SourceId, pending: bool) -> Result<(), StoreError>;
}

/// The metaverse: one object per projected source object, with the
/// contributions of objects of other sources joined to it.
pub trait Metaverse {
    /// The metaverse object projected from the source object at `dn`.
    fn mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError>;
    /// The metaverse objects of those of `dns` that have one (any order); a
    /// store may resolve a large group's members in one query.
    fn mv_for_dns(&self, source: &str, dns: &[Dn]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::with_capacity(dns.len());
        for dn in dns {
            out.extend(self.mv_for_dn(source, dn)?);
        }
        Ok(out)
    }
    /// The positions in `dns` of those that have no metaverse object (what
    /// `mv_for_dns` leaves out), in any order.
    fn mv_unresolved(&self, source: &str, dns: &[Dn]) -> Result<Vec<usize>, StoreError> {
        let mut out = Vec::new();
        for (i, dn) in dns.iter().enumerate() {
            if self.mv_for_dn(source, dn)?.is_none() {
                out.push(i);
            }
        }
        Ok(out)
    }
    /// Creates or updates the metaverse object of a source object; marks it
    /// for export if it changed.
    fn mv_project(
        &mut self,
        source: &str,
        id: &SourceId,
        projection: &Projection,
        manager: Option<String>,
        members: Vec<String>,
    ) -> Result<Projected, StoreError>;
    /// Makes the stored form of a projection's attributes without the
    /// store, so that it can run on another thread than the store's (the
    /// sync stage's helper thread). `None`: the store encodes as it writes.
    fn mv_encoder(&self) -> Option<MvEncoder> {
        None
    }
    /// [`Metaverse::mv_project`] with the attributes encoded ahead by the
    /// store's own [`Metaverse::mv_encoder`] from this same projection.
    fn mv_project_encoded(
        &mut self,
        source: &str,
        id: &SourceId,
        projection: &Projection,
        manager: Option<String>,
        members: Vec<String>,
        _encoded: EncodedMv,
    ) -> Result<Projected, StoreError> {
        self.mv_project(source, id, projection, manager, members)
    }
    /// Applies member changes to the metaverse object of group `id`: added
    /// DNs resolved to the live metaverse objects they projected, removed
    /// ones to any; marks it for export if its members changed. `false` when
    /// the store cannot — no metaverse object yet, a joined object may give
    /// its members, or the store has no such path: the group is then
    /// projected whole.
    fn mv_change_members(
        &mut self,
        _source: &str,
        _id: &SourceId,
        _changes: &MemberChanges,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// The live metaverse object projected from this source object.
    fn mv_for_object(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError>;
    /// The attributes of the live metaverse object linked to this source object.
    fn mv_attrs(&self, source: &str, id: &SourceId) -> Result<Option<serde_json::Map<String, Json>>, StoreError>;
    /// The source object left scope or was deleted: its metaverse object goes.
    fn mv_disconnect(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;
    /// The metaverse object with its joined contributions merged in.
    fn mv_get(&self, id: &str) -> Result<Option<MvRecord>, StoreError>;
    /// [`Metaverse::mv_get`] without the references, its attributes
    /// decoded when the caller asks (a store may then decode on another
    /// thread): what ordering an export's contested values reads of every
    /// object.
    fn mv_attrs_read(&self, id: &str) -> Result<Option<MvAttrsRead>, StoreError> {
        Ok(self.mv_get(id)?.map(MvAttrsRead::decoded))
    }
    /// Marks every metaverse object of `source` for export planning (the
    /// outbound rules changed: what the tenant should hold may differ).
    fn mv_mark_dirty(&mut self, source: &str) -> Result<(), StoreError>;

    /// Live metaverse objects of `kind` projected by another source whose
    /// `mv_attr` equals `value` (case-insensitively).
    fn join_candidates(
        &mut self,
        source: &str,
        kind: ObjectKind,
        mv_attr: &str,
        value: &str,
    ) -> Result<Vec<String>, StoreError>;
    /// The metaverse object this source object is joined to.
    fn join_link(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError>;
    /// Joins (or updates the join of) a source object to `mv` with the
    /// attributes it contributes and the precedence of the rule behind each
    /// (merged by [`crate::mapping::merge_joined`]); marks `mv` for export if
    /// anything changed.
    fn join_put(
        &mut self,
        source: &str,
        id: &SourceId,
        mv: &str,
        contribution: &JoinContribution<'_>,
    ) -> Result<(), StoreError>;
    /// The metaverse object the source object at `dn` is joined to (not
    /// one it projected: see [`Metaverse::mv_for_dn`]).
    fn joined_mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError>;
    /// The metaverse object the source object at `dn` projected or is joined to.
    fn mv_linked_to_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError> {
        match self.mv_for_dn(source, dn)? {
            Some(mv) => Ok(Some(mv)),
            None => self.joined_mv_for_dn(source, dn),
        }
    }
    /// Removes a join; its metaverse object is exported without the contribution.
    fn join_remove(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;
    /// Marks the source's objects without a join for another attempt.
    fn join_retry_unlinked(&mut self, source: &str) -> Result<(), StoreError>;
}

/// What a joined source object gives its metaverse object.
#[derive(Debug, Clone, Copy)]
pub struct JoinContribution<'a> {
    pub attrs: &'a serde_json::Map<String, Json>,
    /// The precedence of the rule behind each attribute.
    pub precedence: &'a crate::rules::Precedences,
    /// Attributes its source is authoritative for.
    pub authoritative: &'a [String],
    /// The references it gives instead of the projecting object's (see
    /// [`JoinedRefs`]).
    pub references: &'a JoinedRefs,
}

/// References a joined object gives: `None` where it gives none (not
/// configured, or a manager not synchronised yet); `Some(None)` for
/// "no manager".
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinedRefs {
    /// Stored as absent (none given), `null` (no manager) or the id.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "given_or_not")]
    pub manager: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
}

/// `Option<Option<T>>` as JSON: a missing key is `None`, `null` is `Some(None)`.
mod given_or_not {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

impl JoinedRefs {
    /// Puts the references given into `record` (members sorted, once each).
    pub fn apply(&self, record: &mut MvRecord) {
        if let Some(manager) = &self.manager {
            record.manager.clone_from(manager);
        }
        if let Some(members) = &self.members {
            let mut members = members.clone();
            members.sort();
            members.dedup();
            record.members = members;
        }
    }
}

/// What export ordering needs of a dirty metaverse object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyObject {
    pub id: String,
    pub deleted: bool,
    /// Metaverse ids it refers to: its manager, then its members.
    pub refs: Vec<String>,
    /// The tenant has it.
    pub exported: bool,
    /// Its members alone changed: `refs` are the members it adds, and
    /// [`ExportLog::member_changes_to_export`] has what to send.
    pub members_only: bool,
}

/// What the target confirmed, what is left to export, and what failed.
pub trait ExportLog {
    /// Metaverse objects with something to export — users and contacts,
    /// then groups, then deletions — with what ordering the export needs of
    /// each (read without the attributes).
    fn dirty_objects(&self) -> Result<Vec<DirtyObject>, StoreError>;
    /// [`ExportLog::dirty_objects`] one by one, in its order: a store that
    /// can stream them spares the caller a million of them at once.
    fn for_each_dirty_object(
        &self,
        each: &mut dyn FnMut(DirtyObject) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.dirty_objects()?.into_iter().try_for_each(each)
    }
    /// Just the ids of [`ExportLog::dirty_objects`], in its order.
    fn dirty(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.dirty_objects()?.into_iter().map(|d| d.id).collect())
    }
    /// The tenant id and the resource last confirmed by the tenant.
    fn exported(&self, mv: &str) -> Result<Option<(String, Json)>, StoreError>;
    /// Just the tenant id (cheaper than [`ExportLog::exported`]).
    fn exported_id(&self, mv: &str) -> Result<Option<String>, StoreError>;
    /// The anchor (the tenant object's immutableId) of an exported
    /// metaverse object, `None` when it is not exported. Password hash sync
    /// asks this of every user: a store answers without decoding the object.
    fn exported_anchor(&self, mv: &str) -> Result<Option<String>, StoreError>;
    /// The tenant ids of those of `mvs` that are exported (any order); a
    /// store may answer a large group's members in one query.
    fn exported_ids(&self, mvs: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::with_capacity(mvs.len());
        for m in mvs {
            out.extend(self.exported_id(m)?);
        }
        Ok(out)
    }
    /// A dirty group whose members alone changed since the tenant last
    /// confirmed it: the group (without its members) and the metaverse ids
    /// added and removed since. `None` when anything else changed, or the
    /// store does not record member changes: the group is exported whole.
    fn member_changes_to_export(&self, _mv: &str) -> Result<Option<(MvRecord, MemberChanges<String>)>, StoreError> {
        Ok(None)
    }
    /// The tenant confirmed these member changes of `mv` (metaverse ids with
    /// their tenant ids; a removed member may have none left): they are
    /// part of the resource last confirmed now. Changes not given (a member
    /// not in the tenant yet) stay pending; with none left the group is clean.
    fn set_member_changes_exported(
        &mut self,
        _mv: &str,
        _added: &[(String, String)],
        _removed: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        Err(StoreError("this store records no member changes".into()))
    }
    /// The tenant confirmed `resource` for `mv`: remember it, clear dirty and errors.
    fn set_exported(&mut self, mv: &str, tenant_id: &str, resource: &Json) -> Result<(), StoreError>;
    /// Makes what [`ExportLog::set_exported_encoded`] stores without the
    /// store, so that it can run on another thread than the store's (the
    /// export encodes a batch while the target works on it). `None`: the
    /// store encodes when it writes.
    fn exported_encoder(&self) -> Option<ExportedEncoder> {
        None
    }
    /// [`ExportLog::set_exported`] with the resource encoded ahead by the
    /// store's own [`ExportLog::exported_encoder`] from this same resource.
    fn set_exported_encoded(
        &mut self,
        mv: &str,
        tenant_id: &str,
        resource: &Json,
        _encoded: EncodedExported,
    ) -> Result<(), StoreError> {
        self.set_exported(mv, tenant_id, resource)
    }
    /// The tenant object is gone: forget it (a deleted object's rows go too).
    fn forget_exported(&mut self, mv: &str) -> Result<(), StoreError>;
    /// Records an error under `mv` (a metaverse id, or another key) and keeps `mv` dirty.
    fn record_error(&mut self, mv: &str, stage: &str, message: &str) -> Result<(), StoreError>;
    /// The error recorded under `key` is resolved.
    fn clear_error(&mut self, key: &str) -> Result<(), StoreError>;
}

/// Everything the engine needs of its store.
pub trait SyncStore: Transactional + ConnectorSpace + Metaverse + ExportLog {}

impl<T: Transactional + ConnectorSpace + Metaverse + ExportLog + ?Sized> SyncStore for T {}
