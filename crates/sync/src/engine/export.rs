//! Stage 3, outbound sync and export: plan each dirty metaverse object's
//! change from the outbound rules and what the target last confirmed, hold
//! everything back when deletions exceed the threshold, send in dependency
//! order (referenced objects first) and record each confirmed result.

use std::collections::HashSet;

use directory::ObjectKind;
use serde_json::Value as Json;

use super::store::{MvRecord, StoreError};
use super::{
    CycleObserver, CycleOptions, CycleReport, CycleStatus, ExportOp, SyncStore, Target, TargetError, Transaction,
};
use crate::mapping::{self, MvView};

/// The deletions an export may send: the threshold, or more when the
/// operator allowed more this once.
pub(super) fn deletion_allowance(options: &CycleOptions) -> usize {
    options.allow_deletes.unwrap_or(0).max(options.deletion_threshold)
}

/// Exports every dirty metaverse object into `report`. Returns `false`
/// when the deletion threshold stopped it before anything was sent.
pub(super) async fn export<St, T>(
    store: &mut St,
    target: &mut T,
    options: &CycleOptions,
    observer: &mut (dyn CycleObserver + Send),
    report: &mut CycleReport,
) -> Result<bool, StoreError>
where
    St: SyncStore + Send + ?Sized,
    T: Target,
{
    // Only ids and references stay in memory; records are read per batch.
    let dirty = store.dirty_objects()?;
    let mut exported_ids = HashSet::new();
    let mut deletions = 0;
    let mut held = Vec::new();
    let mut nodes = Vec::with_capacity(dirty.len());
    // Groups whose members alone changed: exported by difference.
    let mut by_difference = HashSet::new();
    for d in dirty {
        if d.members_only {
            by_difference.insert(d.id.clone());
        }
        if d.exported {
            exported_ids.insert(d.id.clone());
            if d.deleted {
                deletions += 1;
                if held.len() < super::MAX_HELD_LISTED {
                    held.push(d.id.clone());
                }
            }
        }
        nodes.push(Node { id: d.id, refs: d.refs, members_only: d.members_only });
    }
    if deletions > deletion_allowance(options) {
        for id in held {
            let Some(cloud_id) = store.exported_id(&id)? else { continue };
            if let Some(r) = store.mv_get(&id)? {
                let name = ["userPrincipalName", "displayName", "mail"]
                    .iter()
                    .find_map(|a| r.attrs.get(*a).and_then(Json::as_str))
                    .map_or_else(|| r.anchor.clone(), str::to_string);
                report.held_deletions.push((r.kind, name, cloud_id));
            }
        }
        tracing::warn!(
            pending = deletions,
            threshold = options.deletion_threshold,
            "more deletions pending than the deletion threshold: nothing was exported. Check the changes (idbridge sync preview) and run with --allow-deletes {deletions} if they are right"
        );
        report.status =
            CycleStatus::StoppedDeletionThresholdExceeded { pending: deletions, threshold: options.deletion_threshold };
        return Ok(false);
    }
    // Levels: an object goes after the objects it refers to that are created
    // in this same run, so references resolve on the first pass. What still
    // waits (reference cycles) gets a second pass at the end.
    observer.stage("export", Some(nodes.len() as u64));
    let ordering = std::time::Instant::now();
    let contests = contest_order(&*store, &nodes, &options.rules)?;
    tracing::debug!(
        objects = nodes.len(),
        constraints = contests.len(),
        seconds = ordering.elapsed().as_secs_f64(),
        "exports contesting a unique value ordered"
    );
    let mut levels = dependency_levels(nodes, &exported_ids, &contests);
    for pass in 0..2 {
        let mut waiting = Vec::new();
        // Up to IN_FLIGHT batches at the target: while the engine records one
        // batch's answers, the tenant works on the next. Objects of one level
        // never refer to each other, so a batch's plan cannot depend on the
        // answers still in flight; a new level starts only once everything
        // before it is confirmed.
        let mut in_flight: std::collections::VecDeque<(Batch, _)> = std::collections::VecDeque::new();
        for (level, ids) in levels.iter().enumerate().flat_map(|(l, ids)| ids.chunks(EXPORT_BATCH).map(move |c| (l, c)))
        {
            if in_flight.front().is_some_and(|(b, _): &(Batch, _)| b.level != level) {
                while let Some((batch, answers)) = in_flight.pop_front() {
                    let answers = answers.await;
                    record(&mut *store, batch, answers, pass, &mut waiting, report, observer)?;
                }
            }
            let mut batch = prepare(&*store, ids, level, &by_difference, options)?;
            // Moved, not copied: a plan keeps its action and desired state for the record.
            let ops: Vec<ExportOp> = batch.plans.iter_mut().filter_map(|p| p.op.take()).collect();
            let answers = target.apply(ops);
            in_flight.push_back((batch, answers));
            if in_flight.len() >= IN_FLIGHT
                && let Some((batch, answers)) = in_flight.pop_front()
            {
                let answers = answers.await;
                record(&mut *store, batch, answers, pass, &mut waiting, report, observer)?;
            }
        }
        while let Some((batch, answers)) = in_flight.pop_front() {
            let answers = answers.await;
            record(&mut *store, batch, answers, pass, &mut waiting, report, observer)?;
        }
        levels = vec![waiting];
    }
    Ok(true)
}

/// Batches sent before the first one's answers are recorded.
const IN_FLIGHT: usize = 2;

/// Records per batch when ordering contested unique values.
const CONTEST_BATCH: usize = if cfg!(test) { 16 } else { 512 };

/// Records the target's answers to one batch, in one transaction: what was
/// confirmed, what failed (retried next cycle), what still waits for a
/// reference (tried again in the second pass).
fn record<St: SyncStore + ?Sized>(
    store: &mut St,
    batch: Batch,
    answers: super::Answers,
    pass: usize,
    waiting: &mut Vec<String>,
    report: &mut CycleReport,
    observer: &mut (dyn CycleObserver + Send),
) -> Result<(), StoreError> {
    let mut answers = answers.into_iter();
    let mut tx = Transaction::begin(&mut *store)?;
    let count = batch.ids;
    // A group the cloud took over: what the tenant holds is the cloud's now,
    // so the record of what was exported is dropped. After the hand-back the
    // group is sent whole (a create the tenant matches by immutableId and
    // replaces), and the directory's values win, not a difference against a
    // state the tenant no longer has.
    for id in &batch.cloud_managed {
        if tx.exported_id(id)?.is_some() {
            tx.forget_exported(id)?;
        }
    }
    for (record, plan) in batch.records.iter().zip(batch.plans) {
        let result = if plan.action.is_some() {
            answers
                .next()
                .unwrap_or_else(|| Err(TargetError { message: "the target gave no answer".into(), not_found: false }))
        } else {
            Ok(None)
        };
        if plan.waiting && pass == 0 {
            waiting.push(record.id.clone());
        }
        match confirm(&mut *tx, record, plan, result)? {
            Ok(done) => match done {
                Exported::Created => report.created += 1,
                Exported::Updated => report.updated += 1,
                Exported::Deleted => report.deleted += 1,
                Exported::Unchanged => report.unchanged += 1,
            },
            Err(e) => {
                let what = format!(
                    "{} {}",
                    record.kind,
                    record.attrs.get("onPremisesDistinguishedName").and_then(Json::as_str).unwrap_or(&record.anchor)
                );
                tracing::warn!(object = %what, error = %e, "export failed; retried next cycle");
                report.errors.push((what, e.message));
            }
        }
    }
    tx.commit()?;
    observer.advance(count as u64);
    Ok(())
}

/// One batch's records and what exporting each takes.
struct Batch {
    /// The dependency level its objects are on.
    level: usize,
    /// How many metaverse ids it was made of (gone ones included).
    ids: usize,
    records: Vec<MvRecord>,
    plans: Vec<Plan>,
    /// Groups left out because the cloud manages them.
    cloud_managed: Vec<String>,
}

/// Reads a batch's records and plans each one's export. A group the cloud
/// manages is left out: it stays pending, its changes kept for when it is
/// handed back.
fn prepare<St: SyncStore + ?Sized>(
    store: &St,
    ids: &[String],
    level: usize,
    by_difference: &HashSet<String>,
    options: &CycleOptions,
) -> Result<Batch, StoreError> {
    let mut records = Vec::with_capacity(ids.len());
    let mut plans = Vec::with_capacity(ids.len());
    let mut held = Vec::new();
    let cloud_managed =
        |record: &MvRecord| record.kind == ObjectKind::Group && options.cloud_managed.contains(&record.anchor);
    for id in ids {
        // A group whose members alone changed: only those are looked up and sent.
        if by_difference.contains(id)
            && let Some((record, changes)) = store.member_changes_to_export(id)?
        {
            if cloud_managed(&record) {
                held.push(record.id);
                continue;
            }
            if let Some(plan) = plan_member_changes(store, &record, &changes)? {
                records.push(record);
                plans.push(plan);
                continue;
            }
        }
        if let Some(record) = store.mv_get(id)? {
            if cloud_managed(&record) {
                held.push(record.id);
                continue;
            }
            plans.push(plan(store, &record, &options.rules)?);
            records.push(record);
        }
    }
    Ok(Batch { level, ids: ids.len(), records, plans, cloud_managed: held })
}

/// The order the tenant's rule for unique values needs ([`proto::unique`]):
/// of the objects this run exports, those that newly claim a value go in
/// ascending anchor (immutableId) order, and all of them before any object
/// that gives the value up. Then a free value goes to the lowest claimant, a
/// released one to the lowest waiter, whatever order the changes came in —
/// and after a crash the rest is sent in the same order, so the tenant ends
/// the same. Returns (later, earlier) pairs of indices into `nodes`.
///
/// Keys are kept as 64-bit hashes, so a million objects cost 16 bytes each;
/// a collision only adds an ordering constraint.
pub(super) fn contest_order<St: SyncStore + ?Sized>(
    store: &St,
    nodes: &[Node],
    rules: &crate::rules::RuleSet,
) -> Result<Vec<(usize, usize)>, StoreError> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let hash = |key: &str| {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        h.finish()
    };
    // (key hash, node, claims it newly)
    let mut touches: Vec<(u64, usize, bool)> = Vec::new();
    // The store's thread reads records; the outbound rules that give their
    // unique values run on a helper thread, a batch behind.
    let keys = |batch: Vec<(usize, MvRecord, Option<Json>)>| -> Vec<(u64, usize, bool)> {
        let mut out = Vec::new();
        for (i, record, exported) in batch {
            let wanted = if record.deleted {
                Vec::new()
            } else {
                let view = MvView { kind: record.kind, anchor: &record.anchor, attrs: &record.attrs };
                mapping::unique_keys(record.kind, &mapping::desired_resource(&view, None, &[], rules))
            };
            let had = exported.map(|r| mapping::unique_keys(record.kind, &r)).unwrap_or_default();
            out.extend(wanted.iter().filter(|k| !had.contains(k)).map(|k| (hash(k), i, true)));
            out.extend(had.iter().filter(|k| !wanted.contains(k)).map(|k| (hash(k), i, false)));
        }
        out
    };
    // Members alone changed: no unique value is claimed or given up.
    let considered: Vec<usize> = (0..nodes.len()).filter(|&i| nodes.get(i).is_some_and(|n| !n.members_only)).collect();
    let read = |indices: &[usize]| -> Result<Vec<(usize, MvRecord, Option<Json>)>, StoreError> {
        let mut batch = Vec::with_capacity(indices.len());
        for &i in indices {
            let Some(node) = nodes.get(i) else { continue };
            let Some(record) = store.mv_get(&node.id)? else { continue };
            let exported = store.exported(&node.id)?.map(|(_, r)| r);
            batch.push((i, record, exported));
        }
        Ok(batch)
    };
    std::thread::scope(|threads| -> Result<(), StoreError> {
        let (to, batches) = std::sync::mpsc::sync_channel::<Vec<(usize, MvRecord, Option<Json>)>>(2);
        let helper = (considered.len() >= 2 * CONTEST_BATCH)
            .then(|| {
                std::thread::Builder::new().name("export-order".into()).spawn_scoped(threads, move || {
                    let mut all = Vec::new();
                    for batch in batches {
                        all.extend(keys(batch));
                    }
                    all
                })
            })
            .and_then(Result::ok);
        for chunk in considered.chunks(CONTEST_BATCH) {
            let batch = read(chunk)?;
            if helper.is_some() {
                // The helper ended early only by a panic, reported at the join.
                if to.send(batch).is_err() {
                    break;
                }
            } else {
                touches.extend(keys(batch));
            }
        }
        drop(to);
        if let Some(helper) = helper {
            touches.extend(
                helper.join().map_err(|_| StoreError("ordering the exports: the helper thread failed".into()))?,
            );
        }
        Ok(())
    })?;
    touches.sort_unstable();
    let mut edges = Vec::new();
    for group in touches.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        let mut claimants = Vec::new();
        for &(_, i, _) in group.iter().filter(|t| t.2) {
            if let Some(node) = nodes.get(i)
                && let Some(record) = store.mv_get(&node.id)?
            {
                claimants.push((record.anchor, i));
            }
        }
        claimants.sort();
        claimants.dedup_by_key(|c| c.1);
        for pair in claimants.windows(2) {
            if let [(_, earlier), (_, later)] = pair {
                edges.push((*later, *earlier));
            }
        }
        if let Some(&(_, last)) = claimants.last() {
            edges.extend(group.iter().filter(|t| !t.2 && t.1 != last).map(|t| (t.1, last)));
        }
    }
    Ok(edges)
}

/// Orders records so that each comes after the not-yet-exported records it
/// refers to (manager, members) and after what `after` (later, earlier)
/// puts before it; a cycle is cut where it closes.
pub(super) fn dependency_levels(
    records: Vec<Node>,
    exported: &HashSet<String>,
    after: &[(usize, usize)],
) -> Vec<Vec<String>> {
    use std::collections::HashMap;
    let index: HashMap<&str, usize> = records.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect();
    let mut deps: Vec<Vec<usize>> = records
        .iter()
        .map(|r| {
            r.refs.iter().filter(|d| !exported.contains(*d)).filter_map(|d| index.get(d.as_str()).copied()).collect()
        })
        .collect();
    for &(later, earlier) in after {
        if let Some(d) = deps.get_mut(later)
            && earlier < records.len()
        {
            d.push(earlier);
        }
    }
    // Iterative depth-first levels; 0 = no pending dependency.
    let mut level: Vec<Option<usize>> = vec![None; records.len()];
    let mut on_stack = vec![false; records.len()];
    for start in 0..records.len() {
        if level[start].is_some() {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        on_stack[start] = true;
        while let Some((node, next)) = stack.pop() {
            if let Some(&dep) = deps[node].get(next) {
                stack.push((node, next + 1));
                if level[dep].is_none() && !on_stack[dep] {
                    on_stack[dep] = true;
                    stack.push((dep, 0));
                }
                continue;
            }
            // All dependencies visited (a cycle's back edge counts as level 0).
            let l = deps[node].iter().map(|d| level[*d].map_or(0, |x| x + 1)).max().unwrap_or(0);
            level[node] = Some(l);
            on_stack[node] = false;
        }
    }
    let depth = level.iter().filter_map(|l| *l).max().unwrap_or(0);
    let mut out: Vec<Vec<String>> = (0..=depth).map(|_| Vec::new()).collect();
    for (r, l) in records.into_iter().zip(level) {
        if let Some(bucket) = out.get_mut(l.unwrap_or(0)) {
            bucket.push(r.id);
        }
    }
    out
}

/// What export ordering needs of a metaverse object: its id and references.
#[derive(Debug)]
pub(super) struct Node {
    pub id: String,
    pub refs: Vec<String>,
    /// Its members alone changed (no unique value is claimed or given up).
    pub members_only: bool,
}

/// Objects per batch sent to the target (SCIM Bulk allows 1,000 operations).
const EXPORT_BATCH: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exported {
    Created,
    Updated,
    Deleted,
    Unchanged,
}

/// The kind of operation a plan sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Create,
    Patch,
    Delete,
}

/// What exporting one object takes, decided before anything is sent.
#[derive(Debug)]
struct Plan {
    /// What to send; taken when the batch is sent.
    op: Option<ExportOp>,
    /// What `op` was (it stays when `op` is taken).
    action: Option<Action>,
    desired: Option<Json>,
    tenant_id: Option<String>,
    /// A manager or member is not in the tenant yet.
    waiting: bool,
    /// Only member changes are sent (see [`plan_member_changes`]).
    members: Option<MemberDelta>,
}

/// Member changes a plan sends: metaverse ids with their tenant ids.
#[derive(Debug)]
struct MemberDelta {
    added: Vec<(String, String)>,
    removed: Vec<(String, Option<String>)>,
}

/// The export of a group whose members alone changed: a PATCH adding and
/// removing just those (members not in the tenant yet wait). `None` when the
/// tenant does not have the group (it is then created whole).
fn plan_member_changes<St: SyncStore + ?Sized>(
    store: &St,
    record: &MvRecord,
    changes: &super::MemberChanges<String>,
) -> Result<Option<Plan>, StoreError> {
    let Some(tenant_id) = store.exported_id(&record.id)? else { return Ok(None) };
    let mut delta = MemberDelta { added: Vec::new(), removed: Vec::new() };
    let mut waiting = false;
    for mv in &changes.added {
        match store.exported_id(mv)? {
            Some(id) => delta.added.push((mv.clone(), id)),
            None => waiting = true,
        }
    }
    for mv in &changes.removed {
        delta.removed.push((mv.clone(), store.exported_id(mv)?));
    }
    let added: Vec<&str> = delta.added.iter().map(|(_, id)| id.as_str()).collect();
    let removed: Vec<&str> = delta.removed.iter().filter_map(|(_, id)| id.as_deref()).collect();
    let operations = mapping::member_operations(&added, &removed);
    let op = (!operations.is_empty()).then(|| ExportOp::Patch { kind: record.kind, id: tenant_id.clone(), operations });
    let action = op.as_ref().map(|_| Action::Patch);
    Ok(Some(Plan { op, action, desired: None, tenant_id: Some(tenant_id), waiting, members: Some(delta) }))
}

fn plan<St: SyncStore + ?Sized>(
    store: &St,
    record: &MvRecord,
    rules: &crate::rules::RuleSet,
) -> Result<Plan, StoreError> {
    let existing = store.exported(&record.id)?;
    if record.deleted {
        let op = existing.as_ref().map(|(id, _)| ExportOp::Delete { kind: record.kind, id: id.clone() });
        let action = op.as_ref().map(|_| Action::Delete);
        return Ok(Plan {
            op,
            action,
            desired: None,
            tenant_id: existing.map(|(id, _)| id),
            waiting: false,
            members: None,
        });
    }
    let manager = match &record.manager {
        Some(m) => store.exported_id(m)?,
        None => None,
    };
    let members = store.exported_ids(&record.members)?;
    let waiting = (record.manager.is_some() && manager.is_none()) || members.len() < record.members.len();
    let desired = mapping::desired_resource(
        &MvView { kind: record.kind, anchor: &record.anchor, attrs: &record.attrs },
        manager.as_deref(),
        &members,
        rules,
    );
    Ok(match existing {
        None => Plan {
            op: Some(ExportOp::Create { kind: record.kind, resource: desired.clone() }),
            action: Some(Action::Create),
            desired: Some(desired),
            tenant_id: None,
            waiting,
            members: None,
        },
        Some((id, exported)) => {
            let operations = mapping::patch_operations(&exported, &desired);
            let op =
                (!operations.is_empty()).then(|| ExportOp::Patch { kind: record.kind, id: id.clone(), operations });
            let action = op.as_ref().map(|_| Action::Patch);
            Plan { op, action, desired: Some(desired), tenant_id: Some(id), waiting, members: None }
        }
    })
}

/// Records the target's answer for one planned export (inside the caller's transaction).
fn confirm<St: SyncStore + ?Sized>(
    store: &mut St,
    record: &MvRecord,
    plan: Plan,
    result: Result<Option<String>, TargetError>,
) -> Result<Result<Exported, TargetError>, StoreError> {
    let created_id: Option<String> = match (result, plan.action) {
        (Err(e), Some(Action::Delete)) if e.not_found => None,
        (Err(e), Some(Action::Patch)) if e.not_found => {
            // Deleted in the tenant behind our back: it is created again next cycle.
            store.forget_exported(&record.id)?;
            store.record_error(&record.id, "export", &format!("{e}; it will be created again"))?;
            return Ok(Err(TargetError { message: format!("{e}; it will be created again"), not_found: true }));
        }
        (Err(e), _) => {
            store.record_error(&record.id, "export", &e.message)?;
            return Ok(Err(e));
        }
        (Ok(id), _) => id,
    };
    if let Some(delta) = plan.members {
        store.set_member_changes_exported(&record.id, &delta.added, &delta.removed)?;
        if plan.waiting {
            store.record_error(
                &record.id,
                "export",
                "a referenced object (manager or member) is not in the tenant yet",
            )?;
        }
        return Ok(Ok(if plan.action.is_some() { Exported::Updated } else { Exported::Unchanged }));
    }
    let done = match (plan.action, plan.desired) {
        (Some(Action::Delete) | None, None) => {
            store.forget_exported(&record.id)?;
            Exported::Deleted
        }
        (Some(Action::Create), Some(desired)) => {
            let Some(id) = created_id else {
                store.record_error(&record.id, "export", "the target created the object but gave no id")?;
                return Ok(Err(TargetError { message: "no id in the answer".into(), not_found: false }));
            };
            store.set_exported(&record.id, &id, &desired)?;
            Exported::Created
        }
        (op, Some(desired)) => {
            let id = plan.tenant_id.unwrap_or_default();
            store.set_exported(&record.id, &id, &desired)?;
            if op.is_some() { Exported::Updated } else { Exported::Unchanged }
        }
        (Some(_), None) => Exported::Unchanged,
    };
    if plan.waiting {
        // Stays dirty so the missing references are filled in (this cycle's second pass, or the next).
        store.record_error(&record.id, "export", "a referenced object (manager or member) is not in the tenant yet")?;
    }
    Ok(Ok(done))
}

/// One export the next cycle will send (for `sync preview`).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingExport {
    pub kind: ObjectKind,
    /// The on-premises DN, or the immutableId.
    pub object: String,
    pub action: &'static str,
    /// Per attribute: (path, old value, new value); members as added/removed ids.
    pub changes: Vec<(String, Json, Json)>,
    /// A referenced object is not in the tenant yet.
    pub waiting: bool,
}

fn old_value(exported: &Json, path: &str) -> Json {
    match path.rsplit_once(':') {
        Some((urn, attr)) if path.starts_with("urn:") => {
            exported.get(urn).and_then(|e| e.get(attr)).cloned().unwrap_or(Json::Null)
        }
        _ => exported.get(path).cloned().unwrap_or(Json::Null),
    }
}

/// What the next export would send, computed from the store without sending.
pub fn pending_exports<St: SyncStore + ?Sized>(
    store: &St,
    rules: &crate::rules::RuleSet,
) -> Result<Vec<PendingExport>, StoreError> {
    let mut out = Vec::new();
    for id in store.dirty()? {
        let Some(record) = store.mv_get(&id)? else { continue };
        let plan = plan(store, &record, rules)?;
        let object = record
            .attrs
            .get("onPremisesDistinguishedName")
            .and_then(Json::as_str)
            .unwrap_or(&record.anchor)
            .to_string();
        let exported = store.exported(&record.id)?.map(|(_, r)| r).unwrap_or(Json::Null);
        let (action, changes) = match &plan.op {
            Some(ExportOp::Create { resource, .. }) => {
                let mut changes = Vec::new();
                if let Some(obj) = resource.as_object() {
                    for (k, v) in obj.iter().filter(|(k, _)| *k != "schemas") {
                        changes.push((k.clone(), Json::Null, v.clone()));
                    }
                }
                ("create", changes)
            }
            Some(ExportOp::Patch { operations, .. }) => {
                let changes = operations
                    .iter()
                    .map(|op| {
                        let path = op["path"].as_str().unwrap_or_default().to_string();
                        match op["op"].as_str() {
                            Some("add") => (path, Json::Null, op["value"].clone()),
                            Some("remove") if path.starts_with("members[") => (path, json_str("member"), Json::Null),
                            Some("remove") => {
                                let old = old_value(&exported, &path);
                                (path, old, Json::Null)
                            }
                            _ => {
                                let old = old_value(&exported, &path);
                                (path, old, op["value"].clone())
                            }
                        }
                    })
                    .collect();
                ("update", changes)
            }
            Some(ExportOp::Delete { .. }) => ("delete", Vec::new()),
            None => continue,
        };
        out.push(PendingExport { kind: record.kind, object, action, changes, waiting: plan.waiting });
    }
    Ok(out)
}

fn json_str(s: &str) -> Json {
    Json::String(s.to_string())
}
