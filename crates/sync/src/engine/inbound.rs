//! Stage 2, inbound sync: every pending connector-space object into the
//! metaverse — scope, joins to other sources' objects, projection by the
//! inbound rules, and references resolved to metaverse ids.

use std::collections::{HashMap, HashSet};

use directory::Dn;

use super::store::StoreError;
use super::{CycleObserver, CycleOptions, JoinRules, SyncStore, Transaction};
use crate::mapping::{self, Flavor, Projection};
use crate::source::{SourceId, SourceObject};

/// What inbound sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Synced {
    pub synced: u64,
    pub out_of_scope: u64,
}

/// Syncs the source's pending objects (all of them with `full`) and
/// records the configuration and flavour it ran with. Commits once.
pub(super) fn sync_inbound<St: SyncStore + ?Sized>(
    source_name: &str,
    flavor: Flavor,
    store: &mut St,
    options: &CycleOptions,
    full: bool,
    config_changed: bool,
    observer: &mut (dyn CycleObserver + Send),
) -> Result<Synced, StoreError> {
    let mut tx = Transaction::begin(&mut *store)?;
    if full {
        tx.cs_mark_all_pending(source_name)?;
    }
    if config_changed {
        tx.mv_mark_dirty(source_name)?;
    }
    let mut done = Synced::default();
    let apply_once = options.rules.apply_once_targets();
    let scope = scope_members(&mut *tx, source_name, &options.scope_groups, full)?;
    if options.join.as_ref().is_some_and(|j| !j.project) {
        // What joined nothing may join an object another source projected since.
        tx.join_retry_unlinked(source_name)?;
    }
    // A group whose members alone changed is synced by difference: only the
    // added and removed members are resolved. Not when the projection may
    // depend on the members (a rule reads them), or a join or group scope
    // is configured, or everything is synced again anyway.
    let by_difference = !full
        && !config_changed
        && scope.is_none()
        && options.join.is_none()
        && !mapping::MEMBER_ATTRIBUTES.iter().any(|a| options.rules.inbound_reads(a));
    // Attributes are encoded ahead unless something may still change the
    // projection on the store's thread (apply-once flows, joins).
    let encode_mv = tx.mv_encoder().filter(|_| apply_once.is_empty() && options.join.is_none());
    let step = Step { source: source_name, flavor, options, scope: scope.as_ref(), apply_once: &apply_once, encode_mv };
    let mut refs = References::for_stage(full && options.join.is_none());
    // Decoding and projecting are pure: a helper thread does them for the
    // next batches while this one writes the current batch's results in the
    // order the objects were imported. Small syncs (a daemon's delta) stay
    // on this thread.
    std::thread::scope(|threads| -> Result<(), StoreError> {
        let mut helper: Option<Helper> = None;
        // Bounded: each pass handles what the previous one newly pointed at.
        for pass in 0..4 {
            let pending = tx.cs_pending(source_name)?;
            if pending.is_empty() {
                break;
            }
            if pass == 0 {
                observer.stage("sync", Some(pending.len() as u64));
            }
            if helper.is_none() && pending.len() >= PIPELINE_FROM {
                helper = Helper::start(threads, &step);
            }
            let batches: Vec<&[SourceId]> = pending.chunks(SYNC_BATCH).collect();
            let mut local = std::collections::VecDeque::new();
            let (mut sent, mut written) = (0, 0);
            while written < batches.len() {
                // Up to two batches ahead of the writes.
                while sent < batches.len() && sent < written + 2 {
                    let Some(ids) = batches.get(sent) else { break };
                    let read = read_batch(&*tx, source_name, ids, by_difference)?;
                    match &helper {
                        Some(h) => h.send(read)?,
                        None => local.push_back(step.prepare_batch(read)),
                    }
                    sent += 1;
                }
                let ready = match &helper {
                    Some(h) => h.recv()?,
                    None => local.pop_front().unwrap_or_default(),
                };
                written += 1;
                let mut written_objects = Vec::with_capacity(ready.len());
                for item in ready {
                    written_objects.extend(step.write(&mut *tx, item, &mut refs, &mut done, observer)?);
                }
                // Freeing a batch's entries and projections is a tenth of
                // the store thread's work: the helper does it when it can.
                if let Some(h) = &helper {
                    h.discard(written_objects);
                }
            }
        }
        Ok(())
    })?;
    tx.set_config_hash(source_name, &options.config_hash)?;
    tx.set_flavor(source_name, flavor)?;
    tx.commit()?;
    Ok(done)
}

/// Objects per batch handed to the helper thread (small in unit tests, so
/// that their few hundred objects go through several batches).
const SYNC_BATCH: usize = if cfg!(test) { 16 } else { 256 };
/// Fewer pending objects than this sync on the store's thread alone.
const PIPELINE_FROM: usize = 2 * SYNC_BATCH;

/// A pending object as read on the store's thread.
enum Read {
    /// A group whose members alone changed: tried by difference, in order.
    Members(SourceId, crate::engine::MemberChanges),
    /// The object (`None`: gone from the connector space), not decoded yet.
    Object(SourceId, Option<super::CsRead>),
}

/// A pending object ready to be written.
enum Ready {
    Members(SourceId, crate::engine::MemberChanges),
    Object(SourceId, Result<Option<Box<Decoded>>, StoreError>),
}

/// A decoded object, with what the inbound rules make of it when the
/// object is live and of a synchronised kind.
struct Decoded {
    obj: SourceObject,
    deleted: bool,
    /// Why the object is not synchronised, by its kind and flavour.
    out_of_scope: Option<&'static str>,
    projection: Option<Projection>,
    /// The projection's attributes in the store's encoding, when made ahead.
    encoded: Option<Result<super::EncodedMv, StoreError>>,
}

/// Reads one batch of pending objects (store thread).
fn read_batch<St: SyncStore + ?Sized>(
    store: &St,
    source: &str,
    ids: &[SourceId],
    by_difference: bool,
) -> Result<Vec<Read>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if by_difference && let Some(changes) = store.cs_member_changes(source, id)? {
            out.push(Read::Members(id.clone(), changes));
            continue;
        }
        out.push(Read::Object(id.clone(), store.cs_read(source, id)?));
    }
    Ok(out)
}

/// What syncing one object needs besides the store.
struct Step<'a> {
    source: &'a str,
    flavor: Flavor,
    options: &'a CycleOptions,
    scope: Option<&'a HashSet<String>>,
    apply_once: &'a [&'a str],
    encode_mv: Option<super::MvEncoder>,
}

impl Step<'_> {
    /// Decodes and projects (any thread).
    fn prepare_batch(&self, batch: Vec<Read>) -> Vec<Ready> {
        batch
            .into_iter()
            .map(|read| match read {
                Read::Members(id, changes) => Ready::Members(id, changes),
                Read::Object(id, None) => Ready::Object(id, Ok(None)),
                Read::Object(id, Some(read)) => {
                    Ready::Object(id, read.decode().map(|(obj, deleted)| Some(Box::new(self.decoded(obj, deleted)))))
                }
            })
            .collect()
    }

    fn decoded(&self, obj: SourceObject, deleted: bool) -> Decoded {
        let out_of_scope = if deleted { None } else { mapping::out_of_scope(self.flavor, &obj) };
        let projection = (!deleted && out_of_scope.is_none())
            .then(|| mapping::project(self.flavor, self.source, &obj, &self.options.rules));
        let encoded = projection.as_ref().zip(self.encode_mv).map(|(p, encode)| encode(p));
        Decoded { obj, deleted, out_of_scope, projection, encoded }
    }

    /// Writes one object's sync (store thread, in import order).
    fn write<St: SyncStore + ?Sized>(
        &self,
        tx: &mut St,
        item: Ready,
        refs: &mut References,
        done: &mut Synced,
        observer: &mut (dyn CycleObserver + Send),
    ) -> Result<Option<Box<Decoded>>, StoreError> {
        let source_name = self.source;
        let (id, decoded) = match item {
            Ready::Members(id, changes) => {
                if tx.mv_change_members(source_name, &id, &changes)? {
                    done.synced += 1;
                    tx.cs_done(source_name, &id)?;
                    observer.advance(1);
                    return Ok(None);
                }
                // No metaverse object to change: synced whole.
                let decoded = tx.cs_get(source_name, &id)?.map(|(obj, deleted)| Box::new(self.decoded(obj, deleted)));
                (id, decoded)
            }
            Ready::Object(id, decoded) => (id, decoded?),
        };
        let Some(mut decoded) = decoded else { return Ok(None) };
        self.write_decoded(tx, &id, &mut decoded, refs, done, observer)?;
        // Given back, to be freed off the store's thread.
        Ok(Some(decoded))
    }

    fn write_decoded<St: SyncStore + ?Sized>(
        &self,
        tx: &mut St,
        id: &SourceId,
        decoded: &mut Decoded,
        refs: &mut References,
        done: &mut Synced,
        observer: &mut (dyn CycleObserver + Send),
    ) -> Result<(), StoreError> {
        let source_name = self.source;
        let (deleted, out_of_scope) = (decoded.deleted, decoded.out_of_scope);
        let (projection, encoded) = (decoded.projection.take(), decoded.encoded.take());
        let obj = &decoded.obj;
        let reason = if deleted {
            Some("deleted on-premises")
        } else if self.scope.is_some_and(|members| !members.contains(&obj.entry.dn.normalized())) {
            Some("not a direct member of a scope group")
        } else {
            out_of_scope
        };
        match (reason, projection) {
            (None, Some(mut projection)) => {
                keep_applied_once(&*tx, source_name, id, self.apply_once, &mut projection)?;
                if let Some(join) = &self.options.join {
                    let (linked, newly) = match tx.join_link(source_name, id)? {
                        Some(mv) => (Some(mv), false),
                        None => (find_join(&mut *tx, source_name, obj, join)?, true),
                    };
                    if let Some(mv) = linked {
                        let references = joined_references(&*tx, source_name, &projection, join)?;
                        let contribution = super::JoinContribution {
                            attrs: &projection.attrs,
                            precedence: &projection.precedence,
                            authoritative: &join.authoritative,
                            references: &references,
                        };
                        tx.join_put(source_name, id, &mv, &contribution)?;
                        if newly && (join.references.manager || join.references.members) {
                            // Objects of this source that point at this one can now resolve it.
                            refs.waiting.resolvable(&mut *tx, source_name, &obj.entry.dn, id)?;
                        }
                        done.synced += 1;
                        tx.cs_done(source_name, id)?;
                        observer.advance(1);
                        return Ok(());
                    }
                    if !join.project {
                        tracing::debug!(dn = %obj.entry.dn, "joins no metaverse object; this source does not project");
                        done.out_of_scope += 1;
                        tx.cs_done(source_name, id)?;
                        observer.advance(1);
                        return Ok(());
                    }
                }
                let (manager, members) = refs.resolve(&*tx, source_name, id, &projection)?;
                let (projected, dn_norm) = match encoded {
                    Some(encoded) => {
                        let encoded = encoded?;
                        let dn_norm = refs.projected.is_some().then(|| encoded.dn_norm.clone());
                        (tx.mv_project_encoded(source_name, id, &projection, manager, members, encoded)?, dn_norm)
                    }
                    None => {
                        let dn_norm = refs.projected.is_some().then(|| projection.source_dn_normalized());
                        (tx.mv_project(source_name, id, &projection, manager, members)?, dn_norm)
                    }
                };
                if let (Some(kept), Some(dn_norm)) = (&mut refs.projected, dn_norm) {
                    kept.record(&dn_norm, &projected.id);
                }
                done.synced += 1;
                if projected.newly_resolvable {
                    // Objects that pointed at this one before it existed now can resolve it.
                    refs.waiting.resolvable(&mut *tx, source_name, &obj.entry.dn, id)?;
                }
                decoded.projection = Some(projection);
            }
            (reason, _) => {
                let reason = reason.unwrap_or("not synchronised");
                tracing::debug!(dn = %obj.entry.dn, reason, "not synchronised");
                tx.join_remove(source_name, id)?;
                tx.mv_disconnect(source_name, id)?;
                if let Some(kept) = &mut refs.projected {
                    kept.forget(&obj.entry.dn.normalized());
                }
                done.out_of_scope += 1;
            }
        }
        tx.cs_done(source_name, id)?;
        observer.advance(1);
        Ok(())
    }
}

/// What the stage keeps about references while it writes: who waits for
/// a DN, and which DNs it projected.
struct References {
    waiting: Waiting,
    /// Kept in a full sync without joins, where every object is projected
    /// in the stage (`None` otherwise: the store resolves everything).
    projected: Option<ProjectedDns>,
}

impl References {
    fn for_stage(full_without_joins: bool) -> Self {
        if full_without_joins {
            Self { waiting: Waiting::kept_in_memory(), projected: Some(ProjectedDns::default()) }
        } else {
            Self { waiting: Waiting::Store, projected: None }
        }
    }

    /// The metaverse ids of a projection's manager and members: one per
    /// member DN that resolves (a DN that two objects projected in this stage
    /// share gives both, as the store does). What does not resolve is
    /// recorded as waiting.
    fn resolve<St: SyncStore + ?Sized>(
        &mut self,
        tx: &St,
        source: &str,
        id: &SourceId,
        projection: &Projection,
    ) -> Result<(Option<String>, Vec<String>), StoreError> {
        let kept = self.projected.as_ref();
        let manager = match &projection.manager {
            Some(dn) => match kept.and_then(|k| k.get(&dn.normalized())) {
                Some(mv) => Some(mv.to_owned()),
                None => tx.mv_for_dn(source, dn)?,
            },
            None => None,
        };
        let dns = &projection.members;
        let mut members = Vec::with_capacity(dns.len());
        // Positions in `dns` of the members the store is asked about.
        let mut asked = Vec::new();
        for (i, dn) in dns.iter().enumerate() {
            match kept.and_then(|k| k.get(&dn.normalized())) {
                Some(mv) => members.push(mv.to_owned()),
                None => asked.push(i),
            }
        }
        let mut unresolved: Vec<&Dn> = Vec::new();
        if let (Some(dn), None) = (&projection.manager, &manager) {
            unresolved.push(dn);
        }
        if !asked.is_empty() {
            // Usually all or none: all in a first pass that meets a group
            // before its members, none once they are projected.
            let copies: Vec<Dn>;
            let asked_dns = if asked.len() == dns.len() {
                dns.as_slice()
            } else {
                copies = asked.iter().filter_map(|&i| dns.get(i).cloned()).collect();
                copies.as_slice()
            };
            let found = tx.mv_for_dns(source, asked_dns)?;
            let short = found.len() < asked_dns.len();
            members.extend(found);
            // One resolved id per DN that resolves, duplicates included.
            if short && self.waiting.in_memory() {
                let missing = tx.mv_unresolved(source, asked_dns)?;
                unresolved.extend(missing.into_iter().filter_map(|i| asked.get(i)).filter_map(|&i| dns.get(i)));
            }
        }
        self.waiting.record(id, &unresolved);
        Ok((manager, members))
    }
}

/// The metaverse ids of the DNs projected in this stage (a full sync).
///
/// Resolving a DN in the store reads the metaverse row it finds, since the
/// DN index holds a key of the DN and the DN is then compared: at a million
/// users that is a random page read per member, most of the stage's time.
/// References to objects projected earlier in the stage resolve here
/// instead. Only what is certain is kept: a DN projected by two objects, a
/// key two DNs share, or a DN past the limit is asked of the store, which is
/// always right. Within one full sync an object projected is not
/// disconnected later (its outcome depends only on its stored entry, which
/// the stage does not change); `forget` covers it anyway.
#[derive(Default)]
struct ProjectedDns {
    keys: std::hash::RandomState,
    /// Key of a normalised DN → its entry, or `SHARED`.
    by_key: HashMap<u64, u32>,
    /// The normalised DNs one after another, and their metaverse ids, with
    /// where each ends: one allocation each instead of two per entry.
    dns: String,
    dn_ends: Vec<usize>,
    ids: String,
    id_ends: Vec<usize>,
}

/// A key whose DNs the store resolves.
const SHARED: u32 = u32::MAX;
/// DNs kept at most (about 110 bytes each); past this the store resolves
/// the rest. In unit tests the large stage's test crosses it.
const PROJECTED_IN_MEMORY: usize = if cfg!(test) { 300 } else { 4_000_000 };

impl ProjectedDns {
    fn key(&self, dn_norm: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.keys, dn_norm)
    }

    /// Entry `i`'s DN and metaverse id.
    fn entry(&self, i: usize) -> Option<(&str, &str)> {
        let dn = super::span(&self.dn_ends, i).and_then(|range| self.dns.get(range))?;
        let mv = super::span(&self.id_ends, i).and_then(|range| self.ids.get(range))?;
        Some((dn, mv))
    }

    /// The metaverse id projected with `dn_norm` in this stage, if certain.
    fn get(&self, dn_norm: &str) -> Option<&str> {
        let i = *self.by_key.get(&self.key(dn_norm))?;
        let (dn, mv) = self.entry(i as usize)?;
        (dn == dn_norm).then_some(mv)
    }

    /// `mv` was projected with `dn_norm`.
    fn record(&mut self, dn_norm: &str, mv: &str) {
        if dn_norm.is_empty() {
            return;
        }
        let key = self.key(dn_norm);
        match self.by_key.get(&key).copied() {
            Some(SHARED) => {}
            // The same object again (a later pass), or a second DN or object for the key.
            Some(i) => {
                if self.entry(i as usize) != Some((dn_norm, mv)) {
                    self.by_key.insert(key, SHARED);
                }
            }
            None => {
                let Some(i) = u32::try_from(self.dn_ends.len()).ok().filter(|&i| (i as usize) < PROJECTED_IN_MEMORY)
                else {
                    return;
                };
                self.dns.push_str(dn_norm);
                self.ids.push_str(mv);
                self.dn_ends.push(self.dns.len());
                self.id_ends.push(self.ids.len());
                self.by_key.insert(key, i);
            }
        }
    }

    /// The object projected with `dn_norm` is no longer: the store resolves it.
    fn forget(&mut self, dn_norm: &str) {
        let key = self.key(dn_norm);
        if let Some(entry) = self.by_key.get_mut(&key) {
            *entry = SHARED;
        }
    }
}

/// Who must be synced again when a DN becomes resolvable (an object
/// projected anew, back from deletion or renamed).
///
/// In a full sync every object of the source is pending when the stage
/// starts, so the only objects that hold a reference that did not resolve
/// are those written earlier in this stage: they are kept here, and a DN
/// that becomes resolvable marks just them. Asking the store instead means
/// searching the reference keys of every object projected, to find in a
/// full sync that nearly every referencing object is still pending. In a
/// delta (or with joins, whose references resolve through other sources)
/// objects synced in earlier cycles may wait too: the store is asked.
enum Waiting {
    Store,
    Memory {
        /// Hash of the normalised DN → indices into `objects`. A hash shared
        /// by two DNs only marks an object more for sync, which is harmless.
        by_dn: HashMap<u64, Vec<u32>>,
        objects: Vec<SourceId>,
        entries: usize,
    },
}

/// References kept in memory at most; past this the stage asks the store
/// (always correct: it knows every reference) for the rest of the stage.
/// In unit tests the large stage's test crosses it halfway.
const WAITING_IN_MEMORY: usize = if cfg!(test) { 400 } else { 4_000_000 };

impl Waiting {
    fn kept_in_memory() -> Self {
        Self::Memory { by_dn: HashMap::new(), objects: Vec::new(), entries: 0 }
    }

    fn in_memory(&self) -> bool {
        matches!(self, Self::Memory { .. })
    }

    /// `id` was written with references to `dns` that did not resolve.
    fn record(&mut self, id: &SourceId, dns: &[&Dn]) {
        let Self::Memory { by_dn, objects, entries } = self else { return };
        if dns.is_empty() {
            return;
        }
        *entries += dns.len();
        let index = u32::try_from(objects.len()).ok().filter(|_| *entries <= WAITING_IN_MEMORY);
        let Some(index) = index else {
            tracing::debug!(references = *entries, "too many unresolved references to keep: the store is asked");
            *self = Self::Store;
            return;
        };
        objects.push(id.clone());
        for dn in dns {
            by_dn.entry(super::hash64(&dn.normalized())).or_default().push(index);
        }
    }

    /// `dn` (the DN of `except`) resolves now: whatever waits for it is
    /// marked for sync (in this stage's next pass).
    fn resolvable<St: SyncStore + ?Sized>(
        &mut self,
        tx: &mut St,
        source: &str,
        dn: &Dn,
        except: &SourceId,
    ) -> Result<(), StoreError> {
        let Self::Memory { by_dn, objects, .. } = self else {
            return tx.cs_mark_referencing_pending(source, dn, except);
        };
        for index in by_dn.remove(&super::hash64(&dn.normalized())).unwrap_or_default() {
            if let Some(id) = objects.get(index as usize).filter(|id| *id != except) {
                tx.cs_mark_pending(source, id)?;
            }
        }
        Ok(())
    }
}

/// What the helper thread is given. Written objects stay in the boxes
/// they came in: unboxing would copy each one.
#[allow(clippy::vec_box)]
enum Job {
    Prepare(Vec<Read>),
    Discard(Vec<Box<Decoded>>),
}

/// The helper thread: decodes and projects the batches it is sent, in order.
struct Helper {
    to: std::sync::mpsc::SyncSender<Job>,
    from: std::sync::mpsc::Receiver<Vec<Ready>>,
}

impl Helper {
    /// `None` when no thread can be made: the stage then runs on one.
    fn start<'scope, 'env>(threads: &'scope std::thread::Scope<'scope, 'env>, step: &'env Step<'env>) -> Option<Self> {
        let (to, jobs) = std::sync::mpsc::sync_channel::<Job>(2);
        let (results, from) = std::sync::mpsc::sync_channel(2);
        std::thread::Builder::new()
            .name("sync-prepare".into())
            .spawn_scoped(threads, move || {
                for job in jobs {
                    match job {
                        // The store's thread stopped (an error): nothing more to do.
                        Job::Prepare(batch) => {
                            if results.send(step.prepare_batch(batch)).is_err() {
                                break;
                            }
                        }
                        Job::Discard(written) => drop(written),
                    }
                }
            })
            .ok()?;
        Some(Self { to, from })
    }

    fn send(&self, batch: Vec<Read>) -> Result<(), StoreError> {
        self.to.send(Job::Prepare(batch)).map_err(|_| StoreError("the sync stage's helper thread stopped".into()))
    }

    /// Written objects to free. Never waits: with the helper busy they are
    /// freed here.
    #[allow(clippy::vec_box)]
    fn discard(&self, written: Vec<Box<Decoded>>) {
        if !written.is_empty() {
            let _ = self.to.try_send(Job::Discard(written));
        }
    }

    fn recv(&self) -> Result<Vec<Ready>, StoreError> {
        self.from.recv().map_err(|_| StoreError("the sync stage's helper thread stopped".into()))
    }
}

/// The references a joined object gives (`[source.join] references`),
/// resolved to the metaverse objects the referenced objects of the same
/// source projected or are joined to. A manager not synchronised yet gives
/// nothing for now (the projecting object's stays until it is); members
/// not synchronised yet are left out, as for a projecting group.
fn joined_references<St: SyncStore + ?Sized>(
    store: &St,
    source: &str,
    projection: &Projection,
    join: &JoinRules,
) -> Result<super::JoinedRefs, StoreError> {
    let mut refs = super::JoinedRefs::default();
    if join.references.manager && projection.kind == directory::ObjectKind::User {
        refs.manager = match &projection.manager {
            None => Some(None),
            Some(dn) => store.mv_linked_to_dn(source, dn)?.map(Some),
        };
    }
    if join.references.members && projection.kind == directory::ObjectKind::Group {
        let mut members = Vec::with_capacity(projection.members.len());
        for dn in &projection.members {
            members.extend(store.mv_linked_to_dn(source, dn)?);
        }
        refs.members = Some(members);
    }
    Ok(refs)
}

/// Group-based scoping: the normalised DNs of the scope groups' direct
/// members, or `None` when there is no group scope. A change to a scope
/// group marks every object for sync, since any of them may have entered or
/// left scope.
fn scope_members<St: SyncStore + ?Sized>(
    store: &mut St,
    source: &str,
    groups: &[Dn],
    full: bool,
) -> Result<Option<HashSet<String>>, StoreError> {
    if groups.is_empty() {
        return Ok(None);
    }
    let pending: HashSet<SourceId> =
        if full { HashSet::new() } else { store.cs_pending(source)?.into_iter().collect() };
    let mut members = HashSet::new();
    let mut changed = false;
    for group in groups {
        let Some(id) = store.cs_find(source, group)? else {
            tracing::warn!(source, group = %group, "scope group not found in the source: none of its members sync");
            continue;
        };
        changed |= pending.contains(&id);
        if let Some((obj, false)) = store.cs_get(source, &id)? {
            for value in obj.entry.values("member").iter().chain(obj.entry.values("uniqueMember")) {
                if let Some(dn) = value.as_text().and_then(|t| Dn::parse(t).ok()) {
                    members.insert(dn.normalized());
                }
            }
        }
    }
    if changed {
        tracing::info!(source, "a scope group changed: every object is checked against the group scope");
        store.cs_mark_all_pending(source)?;
    }
    Ok(Some(members))
}

/// The metaverse object a source object joins: the first join group with
/// exactly one match. Several matches is an error on the object, recorded
/// and retried each cycle, never a guess.
fn find_join<St: SyncStore + ?Sized>(
    store: &mut St,
    source: &str,
    obj: &SourceObject,
    join: &JoinRules,
) -> Result<Option<String>, StoreError> {
    let error_key = format!("join:{source}:{}", obj.entry.dn);
    store.clear_error(&error_key)?;
    for group in &join.groups {
        let mut matches: Option<HashSet<String>> = None;
        for (source_attr, mv_attr) in group {
            let mut found = HashSet::new();
            for value in obj.entry.values(source_attr) {
                let text = match value {
                    directory::Value::Binary(b) => match directory::Sid::from_bytes(b) {
                        Ok(sid) => sid.to_string(),
                        Err(_) => continue,
                    },
                    other => match other.as_text() {
                        Some(t) if !t.is_empty() => t.to_string(),
                        _ => continue,
                    },
                };
                found.extend(store.join_candidates(source, obj.kind, mv_attr, &text)?);
            }
            matches = Some(match matches {
                None => found,
                Some(before) => before.intersection(&found).cloned().collect(),
            });
        }
        match matches.map(|m| m.into_iter().collect::<Vec<_>>()).as_deref() {
            Some([one]) => {
                tracing::debug!(dn = %obj.entry.dn, mv = %one, "joined");
                return Ok(Some(one.clone()));
            }
            Some(many) if many.len() > 1 => {
                let message = format!(
                    "{} metaverse objects match the join rule {:?}; make the join attributes unique, or add a more specific join group first",
                    many.len(),
                    group.iter().map(|(s, m)| format!("{s} = {m}")).collect::<Vec<_>>().join(" and ")
                );
                tracing::warn!(dn = %obj.entry.dn, "{message}");
                store.record_error(&error_key, "join", &message)?;
                return Ok(None);
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Apply-once flows: an attribute the metaverse object already has keeps its value.
fn keep_applied_once<St: SyncStore + ?Sized>(
    store: &St,
    source: &str,
    id: &SourceId,
    targets: &[&str],
    projection: &mut Projection,
) -> Result<(), StoreError> {
    if targets.is_empty() {
        return Ok(());
    }
    let Some(existing) = store.mv_attrs(source, id)? else { return Ok(()) };
    for target in targets {
        if let Some(v) = existing.get(*target).filter(|v| !v.is_null()) {
            projection.attrs.insert((*target).to_string(), v.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod projected_dns_tests {
    use super::{PROJECTED_IN_MEMORY, ProjectedDns};

    #[test]
    fn only_what_is_certain_is_kept() {
        let mut kept = ProjectedDns::default();
        kept.record("uid=änne,dc=example,dc=org", "mv-1");
        kept.record("uid=bob,dc=example,dc=org", "mv-2");
        assert_eq!(kept.get("uid=änne,dc=example,dc=org"), Some("mv-1"));
        assert_eq!(kept.get("uid=bob,dc=example,dc=org"), Some("mv-2"));
        assert_eq!(kept.get("uid=anne,dc=example,dc=org"), None, "never projected");
        assert_eq!(kept.get(""), None);

        // The same object again (a later pass) keeps it.
        kept.record("uid=bob,dc=example,dc=org", "mv-2");
        assert_eq!(kept.get("uid=bob,dc=example,dc=org"), Some("mv-2"));
        // A second object with the DN: the store answers (it knows both).
        kept.record("uid=bob,dc=example,dc=org", "mv-3");
        assert_eq!(kept.get("uid=bob,dc=example,dc=org"), None);
        kept.record("uid=bob,dc=example,dc=org", "mv-2");
        assert_eq!(kept.get("uid=bob,dc=example,dc=org"), None, "a shared DN stays with the store");

        kept.forget("uid=änne,dc=example,dc=org");
        assert_eq!(kept.get("uid=änne,dc=example,dc=org"), None);
        kept.record("", "mv-4");
        assert_eq!(kept.get(""), None, "an object without a DN is not kept");
    }

    #[test]
    fn a_key_two_dns_share_is_left_to_the_store() {
        // Two DNs of one key cannot be looked for (the keys are seeded per
        // instance): "uid=b"'s key is pointed at "uid=a"'s entry, as a
        // collision would.
        let mut kept = ProjectedDns::default();
        kept.record("uid=a,dc=example,dc=org", "mv-a");
        let key = kept.key("uid=b,dc=example,dc=org");
        let a = *kept.by_key.get(&kept.key("uid=a,dc=example,dc=org")).unwrap();
        // Never "uid=a"'s id for "uid=b": the DN is compared.
        kept.by_key.insert(key, a);
        assert_eq!(kept.get("uid=b,dc=example,dc=org"), None);
        // Recording "uid=b" under that key marks it shared: the store answers both.
        kept.record("uid=b,dc=example,dc=org", "mv-b");
        assert_eq!(kept.get("uid=b,dc=example,dc=org"), None);
    }

    #[test]
    fn past_the_limit_the_store_answers() {
        let mut kept = ProjectedDns::default();
        for i in 0..=PROJECTED_IN_MEMORY {
            kept.record(&format!("uid=u{i},dc=example,dc=org"), &format!("mv-{i}"));
        }
        assert_eq!(kept.get("uid=u0,dc=example,dc=org"), Some("mv-0"));
        let last = format!("uid=u{PROJECTED_IN_MEMORY},dc=example,dc=org");
        assert_eq!(kept.get(&last), None);
        assert_eq!(kept.dn_ends.len(), PROJECTED_IN_MEMORY);
    }
}
