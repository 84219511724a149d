//! Stage 3, outbound sync and export: plan each dirty metaverse object's
//! change from the outbound rules and what the target last confirmed, hold
//! everything back when deletions exceed the threshold, send in dependency
//! order (referenced objects first) and record each confirmed result.

use directory::ObjectKind;
use serde_json::Value as Json;

use super::store::{MvAttrsRead, MvRecord, Reads, StoreError};
use super::{
    CycleObserver, CycleOptions, CycleReport, CycleStatus, ExportOp, Resource, SyncStore, Target, TargetError,
    Transaction, hash64, span,
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
    // Only ids and references stay in memory, compactly; records are read per batch.
    let mut graph = Graph::default();
    let mut deletions = 0;
    let mut held = Vec::new();
    store.for_each_dirty_object(&mut |d| {
        if d.exported && d.deleted {
            deletions += 1;
            if held.len() < super::MAX_HELD_LISTED {
                held.push(d.id.clone());
            }
        }
        graph.push(d);
        Ok(())
    })?;
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
    observer.stage("export", Some(graph.len() as u64));
    let ordering = std::time::Instant::now();
    let contests = contest_order(&*store, &graph, &options.rules)?;
    tracing::debug!(
        objects = graph.len(),
        constraints = contests.len(),
        seconds = ordering.elapsed().as_secs_f64(),
        "exports contesting a unique value ordered"
    );
    let mut levels = dependency_levels(&graph, &contests);
    let encoder = store.exported_encoder();
    for pass in 0..2 {
        let mut waiting = Vec::new();
        // Up to IN_FLIGHT batches at the target: while the engine records one
        // batch's answers, the tenant works on the next. Objects of one level
        // never refer to each other, so a batch's plan cannot depend on the
        // answers still in flight; a new level starts only once everything
        // before it is confirmed.
        let mut in_flight: std::collections::VecDeque<(Batch, _)> = std::collections::VecDeque::new();
        for (level, nodes) in
            levels.iter().enumerate().flat_map(|(l, nodes)| nodes.chunks(EXPORT_BATCH).map(move |c| (l, c)))
        {
            if in_flight.front().is_some_and(|(b, _): &(Batch, _)| b.level != level) {
                while let Some((batch, answers)) = in_flight.pop_front() {
                    let answers = answers.await;
                    record(&mut *store, batch, answers, pass, &mut waiting, report, observer)?;
                }
            }
            let reads = Reads::begin(&*store)?;
            let mut batch = prepare(&*store, &graph, nodes, level, options)?;
            reads.end()?;
            // Moved, not copied: a plan keeps its action and desired state for the record.
            let ops: Vec<ExportOp> = batch.plans.iter_mut().filter_map(|p| p.op.take()).collect();
            let answers = target.apply(ops);
            batch.encoding = encoder.and_then(|encode| Encoding::start(encode, &batch.plans));
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

/// A batch's resources in the store's encoding, made on a thread of their
/// own while the batch is at the target: the store's thread, which plans
/// the next batch and records this one, then only writes them.
struct Encoding(std::thread::JoinHandle<Vec<Option<Result<super::EncodedExported, StoreError>>>>);

impl Encoding {
    /// Encodes the resource of each plan that has one, in the plans' order;
    /// `None` if no thread could be started (the store then encodes).
    fn start(encode: super::ExportedEncoder, plans: &[Plan]) -> Option<Encoding> {
        let resources: Vec<Option<std::sync::Arc<Resource>>> = plans.iter().map(|p| p.desired.clone()).collect();
        std::thread::Builder::new()
            .name("export-encode".into())
            .spawn(move || resources.iter().map(|r| r.as_deref().map(|r| encode(r.text().get()))).collect())
            .ok()
            .map(Encoding)
    }

    /// One entry per plan, as given to [`Encoding::start`].
    fn finish(self) -> Result<Vec<Option<super::EncodedExported>>, StoreError> {
        let encoded = self.0.join().map_err(|_| StoreError("the export's encoding thread stopped".into()))?;
        encoded.into_iter().map(Option::transpose).collect()
    }
}

/// Records per batch when ordering contested unique values.
const CONTEST_BATCH: usize = if cfg!(test) { 16 } else { 512 };

/// Threads decoding records and running outbound flows while ordering
/// contested values: the tenant has nothing to do yet, so the store's
/// thread and two helpers share the cores.
const CONTEST_HELPERS: usize = 2;

/// Records the target's answers to one batch, in one transaction: what was
/// confirmed, what failed (retried next cycle), what still waits for a
/// reference (tried again in the second pass).
fn record<St: SyncStore + ?Sized>(
    store: &mut St,
    batch: Batch,
    answers: super::Answers,
    pass: usize,
    waiting: &mut Vec<u32>,
    report: &mut CycleReport,
    observer: &mut (dyn CycleObserver + Send),
) -> Result<(), StoreError> {
    let mut answers = answers.into_iter();
    let mut encoded = match batch.encoding {
        Some(encoding) => encoding.finish()?,
        None => Vec::new(),
    }
    .into_iter();
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
    for ((record, plan), node) in batch.records.iter().zip(batch.plans).zip(batch.nodes) {
        let result = if plan.action.is_some() {
            answers
                .next()
                .unwrap_or_else(|| Err(TargetError { message: "the target gave no answer".into(), not_found: false }))
        } else {
            Ok(None)
        };
        if plan.waiting && pass == 0 {
            waiting.push(node);
        }
        match confirm(&mut *tx, record, plan, result, encoded.next().flatten())? {
            Ok(done) => match done {
                Exported::Created => report.created += 1,
                Exported::Updated => report.updated += 1,
                Exported::Deleted => report.deleted += 1,
                Exported::Unchanged => report.unchanged += 1,
            },
            Err(e) => {
                let what = format!("{} {}", record.kind, record.name());
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
    /// The graph's node of each record.
    nodes: Vec<u32>,
    /// Groups left out because the cloud manages them.
    cloud_managed: Vec<String>,
    /// The plans' resources being encoded for the store (when it can).
    encoding: Option<Encoding>,
}

/// Reads a batch's records and plans each one's export. A group the cloud
/// manages is left out: it stays pending, its changes kept for when it is
/// handed back.
fn prepare<St: SyncStore + ?Sized>(
    store: &St,
    graph: &Graph,
    batch_nodes: &[u32],
    level: usize,
    options: &CycleOptions,
) -> Result<Batch, StoreError> {
    let mut records = Vec::with_capacity(batch_nodes.len());
    let mut plans = Vec::with_capacity(batch_nodes.len());
    let mut nodes = Vec::with_capacity(batch_nodes.len());
    let mut held = Vec::new();
    let cloud_managed =
        |record: &MvRecord| record.kind == ObjectKind::Group && options.cloud_managed.contains(&record.anchor);
    for &node in batch_nodes {
        let id = graph.id(node);
        // A group whose members alone changed: only those are looked up and sent.
        if graph.members_only(node)
            && let Some((record, changes)) = store.member_changes_to_export(id)?
        {
            if cloud_managed(&record) {
                held.push(record.id);
                continue;
            }
            if let Some(plan) = plan_member_changes(store, &record, &changes)? {
                records.push(record);
                plans.push(plan);
                nodes.push(node);
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
            nodes.push(node);
        }
    }
    Ok(Batch { level, ids: batch_nodes.len(), records, plans, nodes, cloud_managed: held, encoding: None })
}

/// The order the tenant's rule for unique values needs ([`proto::unique`]):
/// of the objects this run exports, those that newly claim a value go in
/// ascending anchor (immutableId) order, and all of them before any object
/// that gives the value up. Then a free value goes to the lowest claimant, a
/// released one to the lowest waiter, whatever order the changes came in —
/// and after a crash the rest is sent in the same order, so the tenant ends
/// the same. Returns (later, earlier) pairs of the graph's nodes.
///
/// Keys are kept as 64-bit hashes, so a million objects cost 16 bytes each;
/// a collision only adds an ordering constraint.
pub(super) fn contest_order<St: SyncStore + ?Sized>(
    store: &St,
    graph: &Graph,
    rules: &crate::rules::RuleSet,
) -> Result<Vec<(usize, usize)>, StoreError> {
    // (key hash, node, claims it newly): 16 bytes each, two or three per object.
    let mut touches: Vec<(u64, u32, bool)> = Vec::new();
    let targets = mapping::unique_key_targets(rules);
    // The store's thread reads records; helper threads decode them and run
    // the outbound flows that give unique values, a batch behind.
    let keys = |batch: Vec<(u32, MvAttrsRead, Option<Json>)>| -> Result<Vec<(u64, u32, bool)>, StoreError> {
        let mut out = Vec::new();
        for (i, read, exported) in batch {
            let kind = read.kind;
            let had = exported.map(|r| mapping::unique_keys(kind, &r)).unwrap_or_default();
            let wanted = if read.deleted {
                Vec::new()
            } else {
                let anchor = read.anchor.clone();
                let attrs = read.decode()?;
                mapping::desired_unique_keys(&MvView { kind, anchor: &anchor, attrs: &attrs }, rules, &targets)
            };
            out.extend(wanted.iter().filter(|k| !had.contains(k)).map(|k| (hash64(k), i, true)));
            out.extend(had.iter().filter(|k| !wanted.contains(k)).map(|k| (hash64(k), i, false)));
        }
        Ok(out)
    };
    // Members alone changed: no unique value is claimed or given up.
    let considered: Vec<u32> =
        (0..graph.len()).filter(|&i| !graph.members_only(i)).filter_map(|i| u32::try_from(i).ok()).collect();
    let read = |indices: &[u32]| -> Result<Vec<(u32, MvAttrsRead, Option<Json>)>, StoreError> {
        let reads = Reads::begin(store)?;
        let mut batch = Vec::with_capacity(indices.len());
        for &i in indices {
            let id = graph.id(i);
            let Some(record) = store.mv_attrs_read(id)? else { continue };
            // What the tenant holds gives up values: only an exported object has any.
            let exported = if graph.has(i as usize, EXPORTED) { store.exported(id)?.map(|(_, r)| r) } else { None };
            batch.push((i, record, exported));
        }
        reads.end()?;
        Ok(batch)
    };
    std::thread::scope(|threads| -> Result<(), StoreError> {
        // Batches go to the helpers in turn; each returns the keys of its own.
        let mut helpers = Vec::new();
        if considered.len() >= 2 * CONTEST_BATCH {
            for _ in 0..CONTEST_HELPERS {
                let (to, batches) = std::sync::mpsc::sync_channel::<Vec<(u32, MvAttrsRead, Option<Json>)>>(2);
                let keys = &keys;
                let spawned =
                    std::thread::Builder::new().name("export-order".into()).spawn_scoped(threads, move || {
                        let mut all = Vec::new();
                        for batch in batches {
                            all.extend(keys(batch)?);
                        }
                        Ok::<_, StoreError>(all)
                    });
                if let Ok(helper) = spawned {
                    helpers.push((to, helper));
                }
            }
        }
        let mut turn = (0..helpers.len()).cycle();
        for chunk in considered.chunks(CONTEST_BATCH) {
            let batch = read(chunk)?;
            match turn.next().and_then(|n| helpers.get(n)) {
                Some((to, _)) => {
                    // A helper ends early only by an error or a panic, reported at its join.
                    if to.send(batch).is_err() {
                        break;
                    }
                }
                None => touches.extend(keys(batch)?),
            }
        }
        for (to, helper) in helpers {
            drop(to);
            let found =
                helper.join().map_err(|_| StoreError("ordering the exports: a helper thread failed".into()))??;
            touches.extend(found);
        }
        Ok(())
    })?;
    touches.sort_unstable();
    let mut edges = Vec::new();
    for group in touches.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        let mut claimants = Vec::new();
        for &(_, i, _) in group.iter().filter(|t| t.2) {
            if let Some(record) = store.mv_get(graph.id(i))? {
                claimants.push((record.anchor, i as usize));
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
            edges.extend(group.iter().filter(|t| !t.2 && t.1 as usize != last).map(|t| (t.1 as usize, last)));
        }
    }
    Ok(edges)
}

/// Orders the graph's nodes so that each comes after the not-yet-exported
/// nodes it refers to (manager, members) and after what `after` (later,
/// earlier) puts before it; a cycle is cut where it closes. Returns the
/// nodes of each level.
pub(super) fn dependency_levels(graph: &Graph, after: &[(usize, usize)]) -> Vec<Vec<u32>> {
    let deps = graph.dependencies(after);
    let count = graph.len();
    // Iterative depth-first levels; 0 = no pending dependency.
    let mut level: Vec<Option<u32>> = vec![None; count];
    let mut on_stack = vec![false; count];
    let level_of = |level: &[Option<u32>], node: u32| level.get(node as usize).copied().flatten();
    for start in 0..count {
        if level.get(start).copied().flatten().is_some() {
            continue;
        }
        let Ok(start) = u32::try_from(start) else { break };
        let mut stack = vec![(start, 0usize)];
        set(&mut on_stack, start, true);
        while let Some((node, next)) = stack.pop() {
            if let Some(&dep) = deps.of(node).get(next) {
                stack.push((node, next + 1));
                if level_of(&level, dep).is_none() && !on_stack.get(dep as usize).copied().unwrap_or(true) {
                    set(&mut on_stack, dep, true);
                    stack.push((dep, 0));
                }
                continue;
            }
            // All dependencies visited (a cycle's back edge counts as level 0).
            let l = deps.of(node).iter().map(|&d| level_of(&level, d).map_or(0, |x| x + 1)).max().unwrap_or(0);
            set(&mut level, node, Some(l));
            set(&mut on_stack, node, false);
        }
    }
    let depth = level.iter().filter_map(|l| *l).max().unwrap_or(0);
    let mut out: Vec<Vec<u32>> = (0..=depth).map(|_| Vec::new()).collect();
    for (node, l) in (0..).zip(level) {
        if let Some(bucket) = out.get_mut(l.unwrap_or(0) as usize) {
            bucket.push(node);
        }
    }
    out
}

fn set<T>(values: &mut [T], index: u32, value: T) {
    if let Some(slot) = values.get_mut(index as usize) {
        *slot = value;
    }
}

/// The dirty metaverse objects as export ordering needs them: ids, flags and
/// references, kept compact. A `String` and a `Vec<String>` of references
/// per object cost about 300 bytes each (headers, one allocation per id);
/// here ids lie end to end and a reference is the 64-bit hash of the id it
/// names until it is resolved to a node — about 70 bytes per object. Two ids
/// with one hash (about one chance in 10^7 at a million objects) can only
/// order an object wrongly: a reference not yet in the tenant is then
/// found missing when planned, and the object is sent again in the
/// export's second pass, as for a reference cycle.
#[derive(Debug, Default)]
pub(super) struct Graph {
    ids: String,
    /// Where each node's id ends in `ids`.
    id_ends: Vec<usize>,
    flags: Vec<u8>,
    /// Where each node's references end in `refs`.
    ref_ends: Vec<usize>,
    refs: Vec<u64>,
}

const EXPORTED: u8 = 1;
const MEMBERS_ONLY: u8 = 2;

impl Graph {
    pub(super) fn push(&mut self, object: super::DirtyObject) {
        self.ids.push_str(&object.id);
        self.id_ends.push(self.ids.len());
        let flag = |set: bool, flag: u8| if set { flag } else { 0 };
        self.flags.push(flag(object.exported, EXPORTED) | flag(object.members_only, MEMBERS_ONLY));
        self.refs.extend(object.refs.iter().map(|r| hash64(r)));
        self.ref_ends.push(self.refs.len());
    }

    pub(super) fn len(&self) -> usize {
        self.id_ends.len()
    }

    /// Node `node`'s metaverse id ("" past the end).
    pub(super) fn id(&self, node: impl TryInto<usize>) -> &str {
        let Ok(node) = node.try_into() else { return "" };
        span(&self.id_ends, node).and_then(|range| self.ids.get(range)).unwrap_or("")
    }

    fn has(&self, node: usize, flag: u8) -> bool {
        self.flags.get(node).is_some_and(|f| f & flag != 0)
    }

    /// Its members alone changed (no unique value is claimed or given up).
    pub(super) fn members_only(&self, node: impl TryInto<usize>) -> bool {
        node.try_into().is_ok_and(|n| self.has(n, MEMBERS_ONLY))
    }

    /// Each node's dependencies: the nodes it refers to that the tenant does
    /// not have yet, then those `after` (later, earlier) puts before it.
    fn dependencies(&self, after: &[(usize, usize)]) -> Dependencies {
        use std::collections::HashMap;
        let mut by_hash: HashMap<u64, u32> = HashMap::with_capacity(self.len());
        for node in 0..self.len() {
            let Ok(index) = u32::try_from(node) else { break };
            by_hash.entry(hash64(self.id(node))).or_insert(index);
        }
        let mut after: Vec<(usize, usize)> = after.iter().copied().filter(|&(_, e)| e < self.len()).collect();
        after.sort_unstable();
        let mut after = after.into_iter().peekable();
        let mut deps = Dependencies { ends: Vec::with_capacity(self.len()), nodes: Vec::new() };
        for node in 0..self.ref_ends.len() {
            let refs = span(&self.ref_ends, node).and_then(|range| self.refs.get(range)).unwrap_or_default();
            deps.nodes.extend(
                refs.iter().filter_map(|hash| by_hash.get(hash).copied()).filter(|&d| !self.has(d as usize, EXPORTED)),
            );
            while let Some((_, earlier)) = after.next_if(|&(later, _)| later <= node) {
                deps.nodes.extend(u32::try_from(earlier));
            }
            deps.ends.push(deps.nodes.len());
        }
        deps
    }
}

impl FromIterator<super::DirtyObject> for Graph {
    fn from_iter<I: IntoIterator<Item = super::DirtyObject>>(objects: I) -> Self {
        let mut graph = Graph::default();
        objects.into_iter().for_each(|o| graph.push(o));
        graph
    }
}

/// Dependencies per node, end to end.
struct Dependencies {
    ends: Vec<usize>,
    nodes: Vec<u32>,
}

impl Dependencies {
    fn of(&self, node: u32) -> &[u32] {
        span(&self.ends, node as usize).and_then(|range| self.nodes.get(range)).unwrap_or_default()
    }
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
    desired: Option<std::sync::Arc<Resource>>,
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
    let desired = std::sync::Arc::new(Resource::new(mapping::desired_resource(
        &MvView { kind: record.kind, anchor: &record.anchor, attrs: &record.attrs },
        manager.as_deref(),
        &members,
        rules,
    )));
    Ok(match existing {
        None => Plan {
            op: Some(ExportOp::Create { kind: record.kind, resource: std::sync::Arc::clone(&desired) }),
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

/// Records the target's answer for one planned export (inside the caller's
/// transaction); `encoded`: the plan's resource in the store's encoding, if
/// made ahead.
fn confirm<St: SyncStore + ?Sized>(
    store: &mut St,
    record: &MvRecord,
    plan: Plan,
    result: Result<Option<String>, TargetError>,
    mut encoded: Option<super::EncodedExported>,
) -> Result<Result<Exported, TargetError>, StoreError> {
    let mut set_exported = |store: &mut St, id: &str, desired: &Json| match encoded.take() {
        Some(encoded) => store.set_exported_encoded(&record.id, id, desired, encoded),
        None => store.set_exported(&record.id, id, desired),
    };
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
            set_exported(store, &id, &desired)?;
            Exported::Created
        }
        (op, Some(desired)) => {
            let id = plan.tenant_id.unwrap_or_default();
            set_exported(store, &id, &desired)?;
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
        let object = record.name().to_string();
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
