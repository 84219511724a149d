//! An LDIF file as a source. Every import is a full
//! import that reconciles, so objects removed from the file are deleted.
//!
//! Anchors: `entryUUID`, `objectGUID` or `nsUniqueId` when the file has them;
//! otherwise a stable hash of the DN — then renaming an entry in the file is
//! a delete and a create, which the log says once.

use directory::ldif::{ChangeRecord, LdifReader, LdifRecord};
use directory::{Anchor, Dn, Entry, ObjectKind};

use sync::{ImportMode, ImportSink, ImportSummary, SinkError, Source, SourceChange, SourceId, SourceObject, Watermark};

#[derive(Debug, thiserror::Error)]
pub enum LdifSourceError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Reads the file at each import (streaming; nothing is kept in memory).
#[derive(Debug, Clone)]
pub struct LdifSource {
    path: std::path::PathBuf,
}

impl LdifSource {
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        LdifSource { path: path.into() }
    }

    fn id_and_anchor(entry: &Entry) -> (SourceId, Anchor) {
        if let Some(a) = entry.first_text("entryUUID").and_then(|u| Anchor::from_entry_uuid(u).ok()) {
            return (SourceId(a.0.clone()), a);
        }
        if let Some(a) = entry.first_bytes("objectGUID").and_then(|g| Anchor::from_ad_guid(g).ok()) {
            return (SourceId(a.0.clone()), a);
        }
        if let Some(a) = entry.first_text("nsUniqueId").and_then(|u| Anchor::from_ns_unique_id(u).ok()) {
            return (SourceId(a.0.clone()), a);
        }
        // FNV-1a over the normalised DN, 16 bytes from two seeds: stable across runs.
        let norm = entry.dn.normalized();
        let mut bytes = Vec::with_capacity(16);
        for seed in [0xcbf2_9ce4_8422_2325u64, 0x8422_2325_cbf2_9ce4] {
            let mut h = seed;
            for b in norm.as_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            bytes.extend_from_slice(&h.to_be_bytes());
        }
        (SourceId(bytes.clone()), Anchor(bytes))
    }

    fn read(&self, sink: &mut (dyn ImportSink + Send)) -> Result<ImportSummary, LdifSourceError> {
        let shown = self.path.display().to_string();
        let file = std::fs::File::open(&self.path)
            .map_err(|e| LdifSourceError::File { path: shown.clone(), message: e.to_string() })?;
        let mut upserts = 0;
        for record in LdifReader::new(std::io::BufReader::new(file)) {
            let record = record.map_err(|e| LdifSourceError::File { path: shown.clone(), message: e.to_string() })?;
            let entry = match record {
                LdifRecord::Content(e) | LdifRecord::Change(ChangeRecord::Add(e)) => e,
                LdifRecord::Change(other) => {
                    return Err(LdifSourceError::File {
                        path: shown,
                        message: format!(
                            "{} is a change record; an LDIF source holds entries (content records)",
                            other.dn()
                        ),
                    });
                }
            };
            let kind = ObjectKind::of(&entry);
            if !matches!(kind, ObjectKind::User | ObjectKind::Group | ObjectKind::Contact) {
                continue;
            }
            let (id, anchor) = Self::id_and_anchor(&entry);
            sink.accept(SourceChange::Upsert(SourceObject { id, anchor, kind, entry }))?;
            upserts += 1;
        }
        Ok(ImportSummary {
            mode: ImportMode::Full,
            watermark: Watermark("ldif".into()),
            reconcile_within: vec![Dn::root()],
            upserts,
            deletes: 0,
            presents: 0,
        })
    }
}

impl Source for LdifSource {
    type Error = LdifSourceError;

    async fn full_import(
        &mut self,
        _previous: Option<&Watermark>,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, LdifSourceError> {
        self.read(sink)
    }

    async fn delta_import(
        &mut self,
        _since: &Watermark,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, LdifSourceError> {
        // A file has no change log: read it all; reconciliation finds deletions.
        self.read(sink)
    }
}
