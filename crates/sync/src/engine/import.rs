//! Stage 1, import: the source's changes into its connector space,
//! committed together with the new watermark; passwords captured on the way
//! stay in memory for this cycle only.

use std::collections::{HashMap, HashSet};

use super::{CycleError, CycleObserver, CycleOptions, PasswordFailure, SyncStore, Transaction};
use crate::source::{ImportMode, ImportSink, SinkError, Source, SourceChange, SourceId, SourceObject};

use super::store::StoreError;

/// What an import did.
#[derive(Debug)]
pub(super) struct Imported {
    pub mode: ImportMode,
    pub imported: u64,
    /// Deleted on-premises: reported by the source or found by reconciliation.
    pub deleted: u64,
    /// Passwords read this cycle, for the password stage.
    pub passwords: Vec<crate::phs::Captured>,
    /// Reading passwords failed as a whole (directory sync went on).
    pub password_failure: Option<PasswordFailure>,
}

/// Writes imported changes into the connector space as they stream in.
pub(super) struct ImportWriter<'a, St: SyncStore + ?Sized> {
    observer: &'a mut (dyn CycleObserver + Send),
    store: &'a mut St,
    source: &'a str,
    error: Option<StoreError>,
    /// What the changes taken so far gave; on the helper thread while it
    /// runs, and given back when it ends.
    intake: Intake,
    /// The source hands passwords out only by replication: users whose
    /// `pwdLastSet` changed (all of them with `all_passwords`) are marked
    /// pending and read after the import.
    replicated_passwords: bool,
    all_passwords: bool,
    /// Password hash sync is on (`intake.passwords` is kept), for the store's
    /// thread while the helper holds the intake.
    capture_passwords: bool,
    /// Takes and encodes changes on a helper thread once the import is
    /// large enough to be worth it; `None` before that, or when the store
    /// encodes only as it writes.
    encoder: Option<Encoder>,
    /// The store's encoder, for when the helper starts.
    encode: Option<super::CsEncoder>,
}

/// What the import counts and keeps of the changes it takes. Nothing here
/// touches the store, so the helper thread takes the changes while it runs.
#[derive(Default)]
struct Intake {
    imported: u64,
    /// Deleted on-premises, as the source reported.
    deleted: u64,
    /// The objects the source named, for reconciliation after a full import.
    seen: HashSet<SourceId>,
    /// Users' passwords, when the source has password hash sync on. In
    /// memory for this cycle only.
    /// Keyed by the object: a user seen twice in one import keeps the last.
    /// With the order it was imported in: the password stage visits the
    /// metaverse in that order, which is the order its rows were written in
    /// (neighbours on disk rather than a random page per user).
    passwords: Option<HashMap<SourceId, (u64, crate::phs::Captured)>>,
}

impl Intake {
    /// Counts the change and takes secrets out of it (capturing passwords
    /// for this cycle).
    fn take(&mut self, change: SourceChange) -> Queued {
        let mut queued = Queued { change, had_secret: false, captured: false };
        match &mut queued.change {
            SourceChange::Upsert(obj) => {
                self.imported += 1;
                self.seen.insert(obj.id.clone());
                // Secrets never reach the store, with or without password hash sync.
                let found = crate::phs::take_secrets(&mut obj.entry);
                queued.had_secret = found.is_some();
                if let (Some(found), Some(list), directory::ObjectKind::User) = (found, &mut self.passwords, obj.kind) {
                    queued.captured = true;
                    list.insert(
                        obj.id.clone(),
                        (
                            self.imported,
                            crate::phs::Captured {
                                id: obj.id.clone(),
                                must_change: crate::phs::must_change(&obj.entry),
                                found,
                            },
                        ),
                    );
                }
            }
            SourceChange::Present { id } => {
                self.seen.insert(id.clone());
            }
            SourceChange::Delete { .. } => self.deleted += 1,
        }
        queued
    }
}

/// A change taken from the source, on its way to the store in the order
/// it came.
struct Queued {
    change: SourceChange,
    /// The source gave the user's password with the entry (taken out of it).
    had_secret: bool,
    /// That password is kept for this cycle's password stage.
    captured: bool,
}

/// An encoded change back from the helper thread.
type Encoded = (Queued, Option<Result<super::EncodedCs, StoreError>>);

/// Imports with more changes than this encode on a helper thread.
const ENCODE_AHEAD_FROM: u64 = 32;
/// Work sent but not yet at the helper thread, at most.
const ENCODE_QUEUE: usize = 256;

/// The error when the helper thread ended before its work did.
fn helper_stopped() -> StoreError {
    StoreError("the import's helper thread stopped".into())
}

/// What the store's thread hands the helper.
enum Work {
    /// A change from the source, to take and encode.
    Take(SourceChange),
    /// Objects written: freeing their many small allocations is work the
    /// store's thread need not do.
    Free(Vec<SourceObject>),
}

/// Written objects handed to the helper to free at a time (a message, and
/// perhaps a wake-up, each).
const FREE_BATCH: usize = 64;

/// The helper thread that takes and encodes imported objects while the
/// store's thread writes the ones before them.
struct Encoder {
    to: Option<std::sync::mpsc::SyncSender<Work>>,
    /// Unbounded, so the helper never waits for the writer (which may be
    /// waiting to hand it more); holds at most what was sent.
    from: std::sync::mpsc::Receiver<Encoded>,
    in_flight: usize,
    /// Written objects not yet handed over to be freed.
    spent: Vec<SourceObject>,
    /// Gives the intake back when it ends.
    thread: Option<std::thread::JoinHandle<Intake>>,
}

impl Encoder {
    /// The helper, holding `intake` from now on; without a thread, `intake`
    /// is given back.
    fn start(encode: super::CsEncoder, intake: Intake) -> Result<Self, Intake> {
        let (to, work) = std::sync::mpsc::sync_channel::<Work>(ENCODE_QUEUE);
        let (encoded, from) = std::sync::mpsc::channel();
        // Handed over once the thread runs: a thread that cannot start must
        // not take the intake (the objects seen, the passwords) with it.
        let (hand_over, handed) = std::sync::mpsc::channel::<Intake>();
        let thread = std::thread::Builder::new().name("import-encode".into()).spawn(move || {
            let Ok(mut intake) = handed.recv() else { return Intake::default() };
            for item in work {
                match item {
                    Work::Take(change) => {
                        let queued = intake.take(change);
                        let done = match &queued.change {
                            SourceChange::Upsert(obj) => Some(encode(obj)),
                            _ => None,
                        };
                        // The writer is gone (the import failed): nothing more to do.
                        if encoded.send((queued, done)).is_err() {
                            break;
                        }
                    }
                    Work::Free(objects) => drop(objects),
                }
            }
            intake
        });
        let thread = match thread {
            Ok(thread) => thread,
            Err(_) => return Err(intake),
        };
        if let Err(std::sync::mpsc::SendError(intake)) = hand_over.send(intake) {
            return Err(intake);
        }
        Ok(Self { to: Some(to), from, in_flight: 0, spent: Vec::new(), thread: Some(thread) })
    }

    /// Ends the helper after what it holds; the intake back, unless the
    /// thread died.
    fn finish(mut self) -> Option<Intake> {
        self.to.take();
        self.thread.take().and_then(|thread| thread.join().ok())
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // Its input closed, the helper ends after what it holds.
        self.to.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<St: SyncStore + ?Sized> ImportWriter<'_, St> {
    /// A replicated-password user whose password changed since the
    /// connector space last saw it (or every one, on a full resync).
    fn password_changed(&self, obj: &SourceObject) -> Result<bool, StoreError> {
        let Some(now) = obj.entry.first_text("pwdLastSet") else { return Ok(false) };
        if self.all_passwords {
            return Ok(true);
        }
        let before = self.store.cs_get(self.source, &obj.id)?;
        Ok(before.as_ref().and_then(|(o, _)| o.entry.first_text("pwdLastSet")) != Some(now))
    }

    /// Writes one change into the connector space, in the order accepted;
    /// gives back an object written, to be freed.
    fn write(
        &mut self,
        queued: Queued,
        encoded: Option<Result<super::EncodedCs, StoreError>>,
    ) -> Result<Option<SourceObject>, StoreError> {
        match queued.change {
            SourceChange::Upsert(obj) => {
                if !queued.had_secret
                    && self.replicated_passwords
                    && self.capture_passwords
                    && obj.kind == directory::ObjectKind::User
                    && self.password_changed(&obj)?
                {
                    self.store.set_password_pending(self.source, &obj.id, true)?;
                }
                if queued.captured {
                    // Committed with the import: if the cycle ends before the
                    // tenant confirms, the next one reads this user again.
                    self.store.set_password_pending(self.source, &obj.id, true)?;
                }
                match encoded {
                    Some(encoded) => self.store.cs_put_encoded(self.source, &obj, encoded?)?,
                    None => self.store.cs_put(self.source, &obj)?,
                }
                Ok(Some(obj))
            }
            SourceChange::Present { .. } => Ok(None),
            SourceChange::Delete { id, .. } => self.store.cs_delete(self.source, &id).map(|()| None),
        }
    }

    /// Writes what the helper thread has encoded: all of it (`wait`), or
    /// what is ready now.
    fn drain(&mut self, wait: bool) -> Result<(), StoreError> {
        loop {
            let Some(encoder) = &mut self.encoder else { return Ok(()) };
            if encoder.in_flight == 0 {
                return Ok(());
            }
            let next = if wait { encoder.from.recv().ok() } else { encoder.from.try_recv().ok() };
            let Some((queued, encoded)) = next else {
                return if wait { Err(helper_stopped()) } else { Ok(()) };
            };
            encoder.in_flight -= 1;
            let written = self.write(queued, encoded)?;
            if let (Some(obj), Some(encoder)) = (written, &mut self.encoder) {
                encoder.spent.push(obj);
                if encoder.spent.len() >= FREE_BATCH
                    && let Some(to) = &encoder.to
                {
                    // A helper that is gone frees nothing: the objects are freed here.
                    let _ = to.send(Work::Free(std::mem::take(&mut encoder.spent)));
                }
            }
        }
    }

    /// Everything accepted so far is in the store (or the first error is
    /// kept in `self.error`), and the helper, if any, has ended and given
    /// the intake back.
    fn flush(&mut self) {
        if self.error.is_none()
            && let Err(e) = self.drain(true)
        {
            self.error = Some(e);
        }
        if let Some(encoder) = self.encoder.take() {
            match encoder.finish() {
                Some(intake) => self.intake = intake,
                None => {
                    self.error.get_or_insert_with(helper_stopped);
                }
            }
        }
    }

    fn accept_change(&mut self, change: SourceChange) -> Result<(), StoreError> {
        if self.encoder.is_none()
            && self.intake.imported >= ENCODE_AHEAD_FROM
            && let Some(encode) = self.encode.take()
        {
            match Encoder::start(encode, std::mem::take(&mut self.intake)) {
                Ok(encoder) => self.encoder = Some(encoder),
                // Without a thread the import goes on taking and writing on this one.
                Err(intake) => self.intake = intake,
            }
        }
        match &mut self.encoder {
            Some(encoder) => {
                let sent = encoder.to.as_ref().map(|to| to.send(Work::Take(change)));
                if !matches!(sent, Some(Ok(()))) {
                    return Err(helper_stopped());
                }
                encoder.in_flight += 1;
                self.drain(false)
            }
            None => {
                let queued = self.intake.take(change);
                self.write(queued, None).map(drop)
            }
        }
    }
}

impl<St: SyncStore + ?Sized> ImportSink for ImportWriter<'_, St> {
    fn accept(&mut self, change: SourceChange) -> Result<(), SinkError> {
        self.observer.advance(1);
        if let Some(e) = &self.error {
            return Err(SinkError(e.to_string()));
        }
        self.accept_change(change).map_err(|e| {
            let text = e.to_string();
            self.error = Some(e);
            SinkError(text)
        })
    }
}

/// Imports `source` into its connector space: a delta from the stored
/// watermark, or a full import (`full`), then passwords not yet confirmed
/// by the target are read again. Commits once, with the new watermark.
pub(super) async fn import<S, St>(
    source_name: &str,
    source: &mut S,
    store: &mut St,
    options: &CycleOptions,
    full: bool,
    observer: &mut (dyn CycleObserver + Send),
) -> Result<Imported, CycleError>
where
    S: Source,
    St: SyncStore + Send + ?Sized,
{
    let mut tx = Transaction::begin(&mut *store)?;
    let store_encoder = tx.cs_encoder();
    let previous = tx.watermark(source_name)?;
    let watermark = if full { None } else { previous.clone() };
    observer.stage("import", None);
    let capture_passwords = options.password_sync && !options.staging;
    let mut writer = ImportWriter {
        observer: &mut *observer,
        store: &mut *tx,
        source: source_name,
        error: None,
        intake: Intake { passwords: capture_passwords.then(HashMap::new), ..Intake::default() },
        replicated_passwords: source.replicates_secrets(),
        all_passwords: options.full,
        capture_passwords,
        encoder: None,
        encode: store_encoder,
    };
    let mut password_failure = None;
    let mut result = match &watermark {
        Some(w) => source.delta_import(w, &mut writer).await,
        None => source.full_import(previous.as_ref(), &mut writer).await,
    };
    writer.flush();
    // Passwords read earlier but never confirmed by the tenant (a crash, an
    // unreachable tenant): read those users again.
    if result.is_ok() && writer.error.is_none() && writer.intake.passwords.is_some() {
        let mut again = Vec::new();
        let mut must_change = HashMap::new();
        for id in writer.store.passwords_pending(source_name)? {
            if writer.intake.passwords.as_ref().is_some_and(|captured| captured.contains_key(&id)) {
                continue;
            }
            match writer.store.cs_get(source_name, &id)? {
                Some((obj, false)) => {
                    must_change.insert(id.clone(), crate::phs::must_change(&obj.entry));
                    again.push((id, obj.entry.dn));
                }
                _ => writer.store.set_password_pending(source_name, &id, false)?,
            }
        }
        if !again.is_empty() && writer.replicated_passwords {
            tracing::info!(source = source_name, users = again.len(), "reading passwords by replication");
            let population = writer.store.cs_count(source_name)?;
            match source.read_secrets(&again, population).await {
                Ok(found) => {
                    let asked: HashSet<&SourceId> = again.iter().map(|(id, _)| id).collect();
                    let list = writer.intake.passwords.get_or_insert_with(HashMap::new);
                    let after = writer.intake.imported;
                    for (id, found) in found {
                        if !asked.contains(&id) {
                            continue;
                        }
                        let captured = crate::phs::Captured {
                            must_change: must_change.get(&id).copied().unwrap_or(false),
                            id: id.clone(),
                            found,
                        };
                        list.insert(id, (after, captured));
                    }
                }
                // Directory sync goes on; the users stay pending and are
                // tried again next cycle.
                Err(e) => {
                    tracing::warn!(source = source_name, error = %e, "password hash sync: cannot read passwords");
                    password_failure = Some(PasswordFailure::Read(e.to_string()));
                }
            }
        } else if !again.is_empty() {
            tracing::info!(
                source = source_name,
                users = again.len(),
                "reading users again whose passwords the tenant has not confirmed"
            );
            if let Err(e) = source.reread(&again, &mut writer).await {
                result = Err(e);
            }
            writer.flush();
        }
    }
    let (seen, imported, deleted) =
        (std::mem::take(&mut writer.intake.seen), writer.intake.imported, writer.intake.deleted);
    let mut passwords: Vec<_> = writer.intake.passwords.take().map(|m| m.into_values().collect()).unwrap_or_default();
    passwords.sort_unstable_by_key(|(order, _)| *order);
    let passwords = passwords.into_iter().map(|(_, captured)| captured).collect();
    if let Some(e) = writer.error.take() {
        return Err(e.into());
    }
    let summary =
        result.map_err(|e| CycleError::Import { source_name: source_name.to_string(), message: e.to_string() })?;
    let mut reconciled = 0;
    if !summary.reconcile_within.is_empty() {
        for (id, dn) in tx.cs_unseen(source_name, &seen)? {
            if summary.reconcile_within.iter().any(|b| dn.is_within(b)) {
                tx.cs_delete(source_name, &id)?;
                reconciled += 1;
            }
        }
    }
    tx.set_watermark(source_name, &summary.watermark)?;
    tx.commit()?;
    Ok(Imported { mode: summary.mode, imported, deleted: deleted + reconciled, passwords, password_failure })
}
