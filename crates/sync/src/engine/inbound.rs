//! Stage 2, inbound sync: every pending connector-space object into the
//! metaverse — scope, joins to other sources' objects, projection by the
//! inbound rules, and references resolved to metaverse ids.

use std::collections::HashSet;

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
    // Bounded: each pass handles what the previous one newly pointed at.
    for pass in 0..4 {
        let pending = tx.cs_pending(source_name)?;
        if pending.is_empty() {
            break;
        }
        if pass == 0 {
            observer.stage("sync", Some(pending.len() as u64));
        }
        for id in pending {
            if by_difference
                && let Some(changes) = tx.cs_member_changes(source_name, &id)?
                && tx.mv_change_members(source_name, &id, &changes)?
            {
                done.synced += 1;
                tx.cs_done(source_name, &id)?;
                observer.advance(1);
                continue;
            }
            let Some((obj, deleted)) = tx.cs_get(source_name, &id)? else { continue };
            let reason = if deleted {
                Some("deleted on-premises")
            } else if scope.as_ref().is_some_and(|members| !members.contains(&obj.entry.dn.normalized())) {
                Some("not a direct member of a scope group")
            } else {
                mapping::out_of_scope(flavor, &obj)
            };
            if let Some(reason) = reason {
                tracing::debug!(dn = %obj.entry.dn, reason, "not synchronised");
                tx.join_remove(source_name, &id)?;
                tx.mv_disconnect(source_name, &id)?;
                done.out_of_scope += 1;
            } else {
                let mut projection = mapping::project(flavor, source_name, &obj, &options.rules);
                keep_applied_once(&*tx, source_name, &id, &apply_once, &mut projection)?;
                if let Some(join) = &options.join {
                    let (linked, newly) = match tx.join_link(source_name, &id)? {
                        Some(mv) => (Some(mv), false),
                        None => (find_join(&mut *tx, source_name, &obj, join)?, true),
                    };
                    if let Some(mv) = linked {
                        let references = joined_references(&*tx, source_name, &projection, join)?;
                        let contribution = super::JoinContribution {
                            attrs: &projection.attrs,
                            precedence: &projection.precedence,
                            authoritative: &join.authoritative,
                            references: &references,
                        };
                        tx.join_put(source_name, &id, &mv, &contribution)?;
                        if newly && (join.references.manager || join.references.members) {
                            // Objects of this source that point at this one can now resolve it.
                            tx.cs_mark_referencing_pending(source_name, &obj.entry.dn, &id)?;
                        }
                        done.synced += 1;
                        tx.cs_done(source_name, &id)?;
                        observer.advance(1);
                        continue;
                    }
                    if !join.project {
                        tracing::debug!(dn = %obj.entry.dn, "joins no metaverse object; this source does not project");
                        done.out_of_scope += 1;
                        tx.cs_done(source_name, &id)?;
                        observer.advance(1);
                        continue;
                    }
                }
                let manager = match &projection.manager {
                    Some(dn) => tx.mv_for_dn(source_name, dn)?,
                    None => None,
                };
                let members = tx.mv_for_dns(source_name, &projection.members)?;
                let is_new = tx.mv_for_dn(source_name, &obj.entry.dn)?.is_none();
                tx.mv_project(source_name, &id, &projection, manager, members)?;
                done.synced += 1;
                if is_new {
                    // Objects that pointed at this one before it existed now can resolve it.
                    tx.cs_mark_referencing_pending(source_name, &obj.entry.dn, &id)?;
                }
            }
            tx.cs_done(source_name, &id)?;
            observer.advance(1);
        }
    }
    tx.set_config_hash(source_name, &options.config_hash)?;
    tx.set_flavor(source_name, flavor)?;
    tx.commit()?;
    Ok(done)
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
