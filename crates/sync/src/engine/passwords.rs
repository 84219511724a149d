//! Stage 4, password hash sync: each password captured during import goes
//! to the tenant user its object was exported as.

use std::collections::HashSet;

use super::store::StoreError;
use super::{CycleReport, PasswordFailure, SyncStore, Target, Transaction};

/// Password hash sync after export: each captured password goes to the
/// tenant user its object was exported as. Failures are object errors
/// (retried when the password is next seen), never the cycle's end.
///
/// One chunk is at the target while the next one's users are looked up:
/// the store's work and the target's overlap. A chunk's answers are
/// recorded before the next chunk is sent.
pub(super) async fn push_passwords<St: SyncStore + ?Sized, T: Target>(
    store: &mut St,
    target: &mut T,
    source_name: &str,
    captured: Vec<crate::phs::Captured>,
    report: &mut CycleReport,
) -> Result<(), StoreError> {
    // In chunks: what is built to send (and the target's bookkeeping of
    // it) stays small however many users the directory has.
    let mut captured = captured.into_iter().peekable();
    let mut in_flight = None;
    while captured.peek().is_some() {
        let chunk: Vec<_> = captured.by_ref().take(PASSWORD_CHUNK).collect();
        let (batch, whose) = look_up(store, source_name, chunk, report)?;
        if let Some((answer, sent)) = in_flight.take()
            && !record(store, source_name, answer.await, &sent, report)?
        {
            // The target failed as a whole: the rest stay pending too.
            return Ok(());
        }
        if !batch.is_empty() {
            in_flight = Some((target.push_credentials(batch), whose));
        }
    }
    if let Some((answer, sent)) = in_flight.take() {
        record(store, source_name, answer.await, &sent, report)?;
    }
    Ok(())
}

/// Users whose passwords are looked up and sent together.
const PASSWORD_CHUNK: usize = if cfg!(test) { 4 } else { 5000 };

/// A chunk's metaverse object and source id of each user sent, by immutableId.
type Sent = std::collections::HashMap<String, (String, crate::SourceId)>;

/// The users of a chunk that can be sent, with where each came from. Out of
/// scope and unusable passwords are settled here; a user whose export
/// failed this cycle stays pending.
fn look_up<St: SyncStore + ?Sized>(
    store: &mut St,
    source_name: &str,
    captured: Vec<crate::phs::Captured>,
    report: &mut CycleReport,
) -> Result<(Vec<crate::phs::CredentialPush>, Sent), StoreError> {
    use crate::phs::{CredentialPush, Found};
    let mut batch = Vec::with_capacity(captured.len());
    let mut whose = Sent::new();
    let mut tx = Transaction::begin(&mut *store)?;
    for c in captured {
        let mv = match tx.join_link(source_name, &c.id)? {
            Some(mv) => Some(mv),
            None => tx.mv_for_object(source_name, &c.id)?,
        };
        let Some(mv) = mv else {
            // Out of scope: nobody to sign in as.
            tx.set_password_pending(source_name, &c.id, false)?;
            continue;
        };
        // Its export failed this cycle: stays pending, read again next cycle.
        let Some(anchor) = tx.exported_anchor(&mv)? else { continue };
        match c.found {
            Found::Secret(secret) => {
                whose.insert(anchor.clone(), (mv, c.id));
                batch.push(CredentialPush { immutable_id: anchor, secret, must_change: c.must_change });
            }
            Found::Unusable(why) => {
                let dn = object_name(&*tx, &mv, &anchor)?;
                let message = format!("password hash sync: {why}");
                tracing::warn!(object = %dn, reason = %why, "password not synchronised");
                tx.record_error(&mv, "password", &message)?;
                tx.set_password_pending(source_name, &c.id, false)?;
                report.errors.push((format!("User {dn}"), message));
            }
        }
    }
    tx.commit()?;
    Ok((batch, whose))
}

/// Records the target's answer for a chunk: `false` when the target failed
/// as a whole (its users stay pending).
fn record<St: SyncStore + ?Sized>(
    store: &mut St,
    source_name: &str,
    answer: Result<crate::phs::PushReport, super::TargetError>,
    whose: &Sent,
    report: &mut CycleReport,
) -> Result<bool, StoreError> {
    let pushed = match answer {
        Ok(pushed) => pushed,
        Err(e) => {
            tracing::warn!(source = source_name, error = %e.message, "password hash sync failed; the passwords are sent again when next imported");
            report.password_failure = Some(PasswordFailure::Target(e.message));
            return Ok(false);
        }
    };
    report.passwords_synced += pushed.stored;
    let mut tx = Transaction::begin(&mut *store)?;
    let failed: HashSet<&String> = pushed.failed.iter().map(|(id, _)| id).collect();
    for (immutable_id, (_, id)) in whose {
        if !failed.contains(immutable_id) {
            tx.set_password_pending(source_name, id, false)?;
        }
    }
    for (immutable_id, why) in &pushed.failed {
        if let Some((mv, _)) = whose.get(immutable_id) {
            let dn = object_name(&*tx, mv, immutable_id)?;
            let message = format!("password hash sync: {why}");
            tx.record_error(mv, "password", &message)?;
            report.errors.push((format!("User {dn}"), message));
        }
    }
    tx.commit()?;
    tracing::debug!(
        source = source_name,
        stored = pushed.stored,
        unchanged = pushed.unchanged,
        "password hash sync: a chunk done"
    );
    Ok(true)
}

/// How a user is named in a password failure: its on-premises DN, or its
/// anchor. Read only on failure: the metaverse object is decoded for it.
fn object_name<St: SyncStore + ?Sized>(store: &St, mv: &str, anchor: &str) -> Result<String, StoreError> {
    Ok(store.mv_get(mv)?.map_or_else(|| anchor.to_string(), |r| r.name().to_string()))
}
