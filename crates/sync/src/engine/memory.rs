//! A store and a target in memory, for fast tests of the engine itself
//! (and of anything built on it) without SQLite or a tenant. They keep the
//! same contract as the real ones: what changed is marked for sync or
//! export, a transaction rolls back to where it began.

use std::collections::{BTreeMap, HashMap, HashSet};

use directory::{Dn, ObjectKind};
use serde_json::Value as Json;

use super::store::{ConnectorSpace, ExportLog, Metaverse, MvRecord, Projected, StoreError, Transactional};
use super::target::{ExportOp, Target, TargetError};
use crate::mapping::{Flavor, Projection};
use crate::source::{SourceId, SourceObject, Watermark};

#[derive(Debug, Clone, Default)]
struct SourceState {
    watermark: Option<Watermark>,
    config_hash: Option<String>,
    flavor: Option<Flavor>,
}

#[derive(Debug, Clone)]
struct CsRow {
    object: SourceObject,
    pending: bool,
    deleted: bool,
}

#[derive(Debug, Clone)]
struct MvRow {
    record: MvRecord,
    precedence: crate::rules::Precedences,
    source: String,
    cs_id: SourceId,
    dn_norm: String,
    dirty: bool,
}

#[derive(Debug, Clone)]
struct JoinRow {
    mv: String,
    attrs: serde_json::Map<String, Json>,
    precedence: crate::rules::Precedences,
    authoritative: Vec<String>,
    references: super::JoinedRefs,
}

#[derive(Debug, Clone, Default)]
struct State {
    sources: HashMap<String, SourceState>,
    cs: BTreeMap<(String, SourceId), CsRow>,
    mv: BTreeMap<String, MvRow>,
    joins: BTreeMap<(String, SourceId), JoinRow>,
    exported: HashMap<String, (String, Json)>,
    /// key → (stage, message, attempts)
    errors: BTreeMap<String, (String, String, u64)>,
    passwords_pending: HashSet<(String, SourceId)>,
    next_mv: u64,
}

/// A [`super::SyncStore`] in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: State,
    /// The state when the open transaction began.
    snapshot: Option<State>,
}

impl MemoryStore {
    /// The live metaverse row projected from this source object.
    fn live_row(&self, source: &str, id: &SourceId) -> Option<&MvRow> {
        self.state.mv.values().find(|row| row.source == source && row.cs_id == *id && !row.record.deleted)
    }

    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Recorded errors: (key, stage, message, attempts).
    pub fn errors(&self) -> Vec<(String, String, String, u64)> {
        self.state.errors.iter().map(|(k, (s, m, n))| (k.clone(), s.clone(), m.clone(), *n)).collect()
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.snapshot.is_some()
    }

    fn refs(object: &SourceObject) -> HashSet<String> {
        ["manager", "member", "uniqueMember"]
            .iter()
            .flat_map(|a| object.entry.values(a))
            .filter_map(|v| v.as_text().and_then(|t| Dn::parse(t).ok()))
            .map(|dn| dn.normalized())
            .collect()
    }

    fn mark_dirty(&mut self, mv: &str) {
        if let Some(row) = self.state.mv.get_mut(mv) {
            row.dirty = true;
        }
    }
}

impl Transactional for MemoryStore {
    fn begin(&mut self) -> Result<(), StoreError> {
        if self.snapshot.is_some() {
            return Err(StoreError("a transaction is already open".into()));
        }
        self.snapshot = Some(self.state.clone());
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        match self.snapshot.take() {
            Some(_) => Ok(()),
            None => Err(StoreError("no transaction is open".into())),
        }
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        if let Some(before) = self.snapshot.take() {
            self.state = before;
        }
        Ok(())
    }
}

impl ConnectorSpace for MemoryStore {
    fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError> {
        Ok(self.state.sources.get(source).and_then(|s| s.watermark.clone()))
    }

    fn set_watermark(&mut self, source: &str, watermark: &Watermark) -> Result<(), StoreError> {
        self.state.sources.entry(source.to_string()).or_default().watermark = Some(watermark.clone());
        Ok(())
    }

    fn config_hash(&self, source: &str) -> Result<Option<String>, StoreError> {
        Ok(self.state.sources.get(source).and_then(|s| s.config_hash.clone()))
    }

    fn set_config_hash(&mut self, source: &str, hash: &str) -> Result<(), StoreError> {
        self.state.sources.entry(source.to_string()).or_default().config_hash = Some(hash.to_string());
        Ok(())
    }

    fn flavor(&self, source: &str) -> Result<Option<Flavor>, StoreError> {
        Ok(self.state.sources.get(source).and_then(|s| s.flavor))
    }

    fn set_flavor(&mut self, source: &str, flavor: Flavor) -> Result<(), StoreError> {
        self.state.sources.entry(source.to_string()).or_default().flavor = Some(flavor);
        Ok(())
    }

    fn cs_put(&mut self, source: &str, object: &SourceObject) -> Result<(), StoreError> {
        let key = (source.to_string(), object.id.clone());
        match self.state.cs.get_mut(&key) {
            Some(row) if row.object == *object && !row.deleted => {}
            Some(row) => {
                row.object = object.clone();
                row.pending = true;
                row.deleted = false;
            }
            None => {
                self.state.cs.insert(key, CsRow { object: object.clone(), pending: true, deleted: false });
            }
        }
        Ok(())
    }

    fn cs_delete(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        if let Some(row) = self.state.cs.get_mut(&(source.to_string(), id.clone())) {
            row.deleted = true;
            row.pending = true;
        }
        Ok(())
    }

    fn cs_unseen(&self, source: &str, seen: &HashSet<SourceId>) -> Result<Vec<(SourceId, Dn)>, StoreError> {
        Ok(self
            .state
            .cs
            .iter()
            .filter(|((s, id), row)| s == source && !row.deleted && !seen.contains(id))
            .map(|((_, id), row)| (id.clone(), row.object.entry.dn.clone()))
            .collect())
    }

    fn cs_mark_all_pending(&mut self, source: &str) -> Result<(), StoreError> {
        for ((s, _), row) in self.state.cs.iter_mut() {
            if s == source {
                row.pending = true;
            }
        }
        Ok(())
    }

    fn cs_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError> {
        Ok(self
            .state
            .cs
            .iter()
            .filter(|((s, _), row)| s == source && row.pending)
            .map(|((_, id), _)| id.clone())
            .collect())
    }

    fn cs_get(&self, source: &str, id: &SourceId) -> Result<Option<(SourceObject, bool)>, StoreError> {
        Ok(self.state.cs.get(&(source.to_string(), id.clone())).map(|row| (row.object.clone(), row.deleted)))
    }

    fn cs_find(&self, source: &str, dn: &Dn) -> Result<Option<SourceId>, StoreError> {
        let wanted = dn.normalized();
        Ok(self
            .state
            .cs
            .iter()
            .find(|((s, _), row)| s == source && !row.deleted && row.object.entry.dn.normalized() == wanted)
            .map(|((_, id), _)| id.clone()))
    }

    fn cs_referencing(&self, source: &str, dn: &Dn) -> Result<Vec<SourceId>, StoreError> {
        let wanted = dn.normalized();
        Ok(self
            .state
            .cs
            .iter()
            .filter(|((s, _), row)| s == source && MemoryStore::refs(&row.object).contains(&wanted))
            .map(|((_, id), _)| id.clone())
            .collect())
    }

    fn cs_mark_pending(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        if let Some(row) = self.state.cs.get_mut(&(source.to_string(), id.clone())) {
            row.pending = true;
        }
        Ok(())
    }

    fn cs_done(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        let key = (source.to_string(), id.clone());
        if self.state.cs.get(&key).is_some_and(|row| row.deleted) {
            self.state.cs.remove(&key);
        } else if let Some(row) = self.state.cs.get_mut(&key) {
            row.pending = false;
        }
        Ok(())
    }

    fn passwords_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError> {
        Ok(self.state.passwords_pending.iter().filter(|(s, _)| s == source).map(|(_, id)| id.clone()).collect())
    }

    fn set_password_pending(&mut self, source: &str, id: &SourceId, pending: bool) -> Result<(), StoreError> {
        let key = (source.to_string(), id.clone());
        if pending {
            self.state.passwords_pending.insert(key);
        } else {
            self.state.passwords_pending.remove(&key);
        }
        Ok(())
    }
}

impl Metaverse for MemoryStore {
    fn mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError> {
        let wanted = dn.normalized();
        Ok(self
            .state
            .mv
            .values()
            .find(|row| row.source == source && row.dn_norm == wanted && !row.record.deleted)
            .map(|row| row.record.id.clone()))
    }

    fn mv_project(
        &mut self,
        source: &str,
        id: &SourceId,
        p: &Projection,
        manager: Option<String>,
        mut members: Vec<String>,
    ) -> Result<Projected, StoreError> {
        members.sort();
        members.dedup();
        let dn_norm = p.source_dn_normalized();
        let record = |mv: &str| MvRecord {
            id: mv.to_string(),
            kind: p.kind,
            anchor: p.anchor.clone(),
            attrs: p.attrs.clone(),
            manager: manager.clone(),
            members: members.clone(),
            deleted: false,
        };
        let existing = self.state.mv.values_mut().find(|row| row.source == source && row.cs_id == *id);
        match existing {
            Some(row) => {
                let new = record(&row.record.id);
                let newly_resolvable = row.record.deleted || row.dn_norm != dn_norm;
                if row.record != new || row.dn_norm != dn_norm || row.precedence != p.precedence {
                    row.record = new;
                    row.precedence = p.precedence.clone();
                    row.dn_norm = dn_norm;
                    row.dirty = true;
                }
                Ok(Projected { id: row.record.id.clone(), newly_resolvable })
            }
            None => {
                self.state.next_mv += 1;
                let mv = format!("mv{:08}", self.state.next_mv);
                let row = MvRow {
                    record: record(&mv),
                    precedence: p.precedence.clone(),
                    source: source.to_string(),
                    cs_id: id.clone(),
                    dn_norm,
                    dirty: true,
                };
                self.state.mv.insert(mv.clone(), row);
                Ok(Projected { id: mv, newly_resolvable: true })
            }
        }
    }

    fn mv_for_object(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError> {
        Ok(self.live_row(source, id).map(|row| row.record.id.clone()))
    }

    fn mv_attrs(&self, source: &str, id: &SourceId) -> Result<Option<serde_json::Map<String, Json>>, StoreError> {
        Ok(self.live_row(source, id).map(|row| row.record.attrs.clone()))
    }

    fn mv_disconnect(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        let Some(mv) =
            self.state.mv.values().find(|row| row.source == source && row.cs_id == *id).map(|r| r.record.id.clone())
        else {
            return Ok(());
        };
        // Objects joined to it look for a new metaverse object next sync.
        let joined: Vec<(String, SourceId)> =
            self.state.joins.iter().filter(|(_, j)| j.mv == mv).map(|(k, _)| k.clone()).collect();
        for key in joined {
            self.state.joins.remove(&key);
            if let Some(row) = self.state.cs.get_mut(&key) {
                row.pending = true;
            }
        }
        if self.state.exported.contains_key(&mv) {
            if let Some(row) = self.state.mv.get_mut(&mv) {
                row.record.deleted = true;
                row.dirty = true;
            }
        } else {
            self.state.mv.remove(&mv);
            self.state.errors.remove(&mv);
        }
        Ok(())
    }

    fn mv_get(&self, id: &str) -> Result<Option<MvRecord>, StoreError> {
        let Some(row) = self.state.mv.get(id) else { return Ok(None) };
        let mut record = row.record.clone();
        let mut precedence = row.precedence.clone();
        for join in self.state.joins.values().filter(|j| j.mv == id) {
            crate::mapping::merge_joined(
                &mut record.attrs,
                &mut precedence,
                join.attrs.clone(),
                &join.precedence,
                &join.authoritative,
            );
            join.references.apply(&mut record);
        }
        Ok(Some(record))
    }

    fn mv_mark_dirty(&mut self, source: &str) -> Result<(), StoreError> {
        for row in self.state.mv.values_mut().filter(|row| row.source == source) {
            row.dirty = true;
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
        let wanted = value.to_lowercase();
        Ok(self
            .state
            .mv
            .values()
            .filter(|row| row.source != source && row.record.kind == kind && !row.record.deleted)
            .filter(|row| {
                // A multi-valued attribute joins on any of its values.
                let values = match row.record.attrs.get(mv_attr) {
                    Some(Json::Array(items)) => items.iter().collect(),
                    Some(one) => vec![one],
                    None => Vec::new(),
                };
                values.into_iter().filter_map(Json::as_str).any(|v| v.to_lowercase() == wanted)
            })
            .map(|row| row.record.id.clone())
            .collect())
    }

    fn join_link(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError> {
        Ok(self.state.joins.get(&(source.to_string(), id.clone())).map(|j| j.mv.clone()))
    }

    fn join_put(
        &mut self,
        source: &str,
        id: &SourceId,
        mv: &str,
        contribution: &super::JoinContribution<'_>,
    ) -> Result<(), StoreError> {
        let row = JoinRow {
            mv: mv.to_string(),
            attrs: contribution.attrs.clone(),
            precedence: contribution.precedence.clone(),
            authoritative: contribution.authoritative.to_vec(),
            references: contribution.references.clone(),
        };
        let key = (source.to_string(), id.clone());
        let changed = self.state.joins.get(&key).is_none_or(|old| {
            old.mv != row.mv
                || old.attrs != row.attrs
                || old.precedence != row.precedence
                || old.authoritative != row.authoritative
                || old.references != row.references
        });
        if changed {
            self.state.joins.insert(key, row);
            self.mark_dirty(mv);
        }
        Ok(())
    }

    fn joined_mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError> {
        let wanted = dn.normalized();
        Ok(self
            .state
            .cs
            .iter()
            .filter(|(key, row)| key.0 == source && !row.deleted && row.object.entry.dn.normalized() == wanted)
            .find_map(|(key, _)| self.state.joins.get(key).map(|j| j.mv.clone())))
    }

    fn join_remove(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError> {
        if let Some(join) = self.state.joins.remove(&(source.to_string(), id.clone())) {
            self.mark_dirty(&join.mv);
        }
        Ok(())
    }

    fn join_retry_unlinked(&mut self, source: &str) -> Result<(), StoreError> {
        let joins = &self.state.joins;
        for (key, row) in self.state.cs.iter_mut() {
            if key.0 == source && !row.deleted && !row.pending && !joins.contains_key(key) {
                row.pending = true;
            }
        }
        Ok(())
    }
}

impl ExportLog for MemoryStore {
    fn dirty_objects(&self) -> Result<Vec<super::DirtyObject>, StoreError> {
        let rank = |kind: ObjectKind| match kind {
            ObjectKind::User => 0,
            ObjectKind::Contact => 1,
            _ => 2,
        };
        let mut dirty: Vec<&MvRow> = self.state.mv.values().filter(|row| row.dirty).collect();
        dirty.sort_by(|a, b| {
            (a.record.deleted, rank(a.record.kind), &a.record.id).cmp(&(
                b.record.deleted,
                rank(b.record.kind),
                &b.record.id,
            ))
        });
        Ok(dirty
            .into_iter()
            .map(|row| {
                let r = &row.record;
                super::DirtyObject {
                    exported: self.state.exported.contains_key(&r.id),
                    deleted: r.deleted,
                    refs: r.manager.iter().chain(&r.members).cloned().collect(),
                    id: r.id.clone(),
                    members_only: false,
                }
            })
            .collect())
    }

    fn exported(&self, mv: &str) -> Result<Option<(String, Json)>, StoreError> {
        Ok(self.state.exported.get(mv).cloned())
    }

    fn exported_id(&self, mv: &str) -> Result<Option<String>, StoreError> {
        Ok(self.state.exported.get(mv).map(|(id, _)| id.clone()))
    }

    fn exported_anchor(&self, mv: &str) -> Result<Option<String>, StoreError> {
        if !self.state.exported.contains_key(mv) {
            return Ok(None);
        }
        Ok(self.state.mv.get(mv).map(|row| row.record.anchor.clone()))
    }

    fn set_exported(&mut self, mv: &str, tenant_id: &str, resource: &Json) -> Result<(), StoreError> {
        self.state.exported.insert(mv.to_string(), (tenant_id.to_string(), resource.clone()));
        if let Some(row) = self.state.mv.get_mut(mv) {
            row.dirty = false;
        }
        self.state.errors.remove(mv);
        Ok(())
    }

    fn forget_exported(&mut self, mv: &str) -> Result<(), StoreError> {
        self.state.exported.remove(mv);
        self.state.errors.remove(mv);
        if self.state.mv.get(mv).is_some_and(|row| row.record.deleted) {
            self.state.mv.remove(mv);
        }
        self.mark_dirty(mv);
        Ok(())
    }

    fn record_error(&mut self, mv: &str, stage: &str, message: &str) -> Result<(), StoreError> {
        let entry = self.state.errors.entry(mv.to_string()).or_insert_with(|| (String::new(), String::new(), 0));
        *entry = (stage.to_string(), message.to_string(), entry.2 + 1);
        self.mark_dirty(mv);
        Ok(())
    }

    fn clear_error(&mut self, key: &str) -> Result<(), StoreError> {
        self.state.errors.remove(key);
        Ok(())
    }
}

/// A [`Target`] in memory: objects by id, every batch it was sent, and
/// failures to answer with when told.
#[derive(Debug, Clone, Default)]
pub struct MemoryTarget {
    /// id → (kind, resource)
    pub objects: BTreeMap<String, (ObjectKind, Json)>,
    /// Every batch, in order.
    pub batches: Vec<Vec<ExportOp>>,
    /// Creates of resources whose `externalId` is listed here fail.
    pub refuse: HashSet<String>,
    next_id: u64,
    /// Password hash sync: each user's "must change" flag by immutableId.
    pub passwords: BTreeMap<String, bool>,
    /// Password pushes so far, and the one (counted from 0) that fails as a whole.
    pub password_pushes: usize,
    pub refuse_password_push: Option<usize>,
}

impl MemoryTarget {
    pub fn new() -> MemoryTarget {
        MemoryTarget::default()
    }

    /// The object whose `externalId` (immutableId) is `anchor`.
    pub fn by_anchor(&self, anchor: &str) -> Option<(&String, &Json)> {
        self.objects
            .iter()
            .find(|(_, (_, r))| r.get("externalId").and_then(Json::as_str) == Some(anchor))
            .map(|(id, (_, r))| (id, r))
    }

    fn apply_one(&mut self, op: &ExportOp) -> Result<Option<String>, TargetError> {
        let not_found = || TargetError { message: "no such object".into(), not_found: true };
        match op {
            ExportOp::Create { kind, resource } => {
                let anchor = resource.get("externalId").and_then(Json::as_str).unwrap_or_default();
                if self.refuse.contains(anchor) {
                    return Err(TargetError { message: format!("refused {anchor}"), not_found: false });
                }
                self.next_id += 1;
                let id = format!("t{:06}", self.next_id);
                self.objects.insert(id.clone(), (*kind, Json::clone(resource)));
                Ok(Some(id))
            }
            ExportOp::Patch { id, .. } => {
                // The engine remembers the desired resource itself; the
                // target only has to know the object exists.
                if self.objects.contains_key(id) { Ok(None) } else { Err(not_found()) }
            }
            ExportOp::Delete { id, .. } => self.objects.remove(id).map(|_| None).ok_or_else(not_found),
        }
    }
}

impl Target for MemoryTarget {
    fn apply(&mut self, ops: Vec<ExportOp>) -> impl Future<Output = super::Answers> + Send + use<> {
        let answers = ops.iter().map(|op| self.apply_one(op)).collect();
        self.batches.push(ops);
        std::future::ready(answers)
    }

    fn push_credentials(
        &mut self,
        items: Vec<crate::phs::CredentialPush>,
    ) -> impl Future<Output = Result<crate::phs::PushReport, TargetError>> + Send + use<> {
        let push = self.password_pushes;
        self.password_pushes += 1;
        let answer = if self.refuse_password_push == Some(push) {
            Err(TargetError { message: format!("password push {push} refused"), not_found: false })
        } else {
            for item in &items {
                self.passwords.insert(item.immutable_id.clone(), item.must_change);
            }
            Ok(crate::phs::PushReport { stored: items.len() as u64, ..Default::default() })
        };
        std::future::ready(answer)
    }
}
