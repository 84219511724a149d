//! `idbridge source dump`: what the connector sees, as LDIF or JSON lines.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use connector_ldap::{LdapSettings, LdapSource};
use directory::{Dn, LdifWriter, Value};
use serde::{Deserialize, Serialize};
use sync::engine::CycleObserver;
use sync::{ImportMode, ImportSummary, SinkError, Source, SourceChange, SourceId, Watermark};

use crate::{Error, IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    Ldif,
    Json,
}

/// Between dumps: the watermark and the objects seen (id → DN), so a delta
/// can name deletions found by reconciliation.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DumpState {
    watermark: Option<Watermark>,
    objects: BTreeMap<String, String>,
}

fn hex(id: &SourceId) -> String {
    id.to_string()
}

fn load_state(path: &Path) -> Result<DumpState> {
    let text = std::fs::read_to_string(path).on("read the state file", path)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Refused(format!("the state file {} is not one `source dump` wrote ({e})", path.display())))
}

fn save_state(path: &Path, state: &DumpState) -> Result<()> {
    let text = serde_json::to_vec(state).map_err(|e| Error::Output(std::io::Error::other(e)))?;
    Ok(config::files::write_atomically(path, &text)?)
}

struct Output<W: Write> {
    format: DumpFormat,
    ldif: LdifWriter<W>,
}

impl<W: Write> Output<W> {
    fn upsert(&mut self, obj: &sync::SourceObject) -> std::io::Result<()> {
        match self.format {
            DumpFormat::Ldif => {
                self.ldif.write_comment(&format!(
                    "{} id={} immutableId={}",
                    obj.kind,
                    obj.id,
                    obj.anchor.immutable_id()
                ))?;
                self.ldif.write_entry(&obj.entry)
            }
            DumpFormat::Json => {
                let mut attrs = serde_json::Map::new();
                for a in obj.entry.attributes() {
                    let values = a
                        .values
                        .iter()
                        .map(|v| match v {
                            Value::Text(t) => serde_json::Value::String(t.clone()),
                            Value::Binary(b) => serde_json::json!({ "base64": STANDARD.encode(b) }),
                        })
                        .collect();
                    attrs.insert(a.name.clone(), serde_json::Value::Array(values));
                }
                let line = serde_json::json!({
                    "op": "upsert", "id": hex(&obj.id), "immutableId": obj.anchor.immutable_id(),
                    "kind": obj.kind.as_str(), "dn": obj.entry.dn.to_string(), "attributes": attrs,
                });
                writeln!(self.ldif_inner(), "{line}")
            }
        }
    }

    fn delete(&mut self, id: &SourceId, dn: Option<&str>) -> std::io::Result<()> {
        match self.format {
            DumpFormat::Ldif => self
                .ldif
                .write_comment(&format!("deleted id={id}{}", dn.map(|d| format!(" dn={d}")).unwrap_or_default())),
            DumpFormat::Json => {
                let line = serde_json::json!({ "op": "delete", "id": hex(id), "dn": dn });
                writeln!(self.ldif_inner(), "{line}")
            }
        }
    }

    fn ldif_inner(&mut self) -> &mut W {
        self.ldif.inner_mut()
    }
}

/// What `source dump` is asked for.
#[derive(Debug)]
pub struct DumpRequest {
    /// The source's name in messages.
    pub name: String,
    pub settings: LdapSettings,
    pub delta: bool,
    pub state: Option<PathBuf>,
    pub format: DumpFormat,
    pub out: Option<PathBuf>,
}

/// What a dump did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpReport {
    pub mode: ImportMode,
    /// The server read, and what it is.
    pub server: String,
    pub upserts: u64,
    /// Reported by the server or found by reconciliation.
    pub deletions: u64,
    pub unchanged: u64,
}

/// Writes what the connector sees (LDIF or JSON lines) to `req.out` or
/// standard output; with a state file, a later `delta` dump writes only
/// what changed, deletions included.
pub async fn run(req: DumpRequest, progress: &mut (dyn CycleObserver + Send)) -> Result<DumpReport> {
    if req.delta && req.state.is_none() {
        return Err(Error::Refused(
            "--delta needs --state FILE, written by an earlier `source dump --state FILE`".into(),
        ));
    }
    let mut state = match (&req.state, req.delta) {
        (Some(p), true) => load_state(p)?,
        _ => DumpState::default(),
    };
    let writer: Box<dyn Write + Send> = match &req.out {
        Some(p) => Box::new(std::fs::File::create(p).on("create", p)?),
        None => Box::new(std::io::stdout()),
    };
    let mut out =
        Output { format: req.format, ldif: LdifWriter::new(std::io::BufWriter::with_capacity(1 << 16, writer)) };
    let keep_state = req.state.is_some();
    let name = req.name.clone();
    let mut source = LdapSource::new(req.settings).map_err(|e| crate::directory_error(&name, e))?;
    progress.stage(if req.delta { "delta import" } else { "full import" }, None);
    let mut seen: HashSet<SourceId> = HashSet::new();
    let mut seen_dns: BTreeMap<String, String> = BTreeMap::new();
    let mut deleted: Vec<(SourceId, Option<String>)> = Vec::new();
    let mut sink = |change: SourceChange| -> Result<(), SinkError> {
        progress.advance(1);
        let io = |e: std::io::Error| SinkError(format!("writing the dump: {e}"));
        match change {
            SourceChange::Upsert(mut obj) => {
                // Password hashes never leave through a dump either.
                let _ = sync::phs::take_secrets(&mut obj.entry);
                out.upsert(&obj).map_err(io)?;
                if keep_state {
                    seen_dns.insert(hex(&obj.id), obj.entry.dn.to_string());
                    seen.insert(obj.id);
                }
            }
            SourceChange::Present { id } => {
                if keep_state {
                    seen.insert(id);
                }
            }
            SourceChange::Delete { id, dn } => {
                let dn = dn.map(|d| d.to_string());
                out.delete(&id, dn.as_deref()).map_err(io)?;
                deleted.push((id, dn));
            }
        }
        Ok(())
    };
    let summary: ImportSummary = match (&state.watermark, req.delta) {
        (Some(w), true) => source.delta_import(w, &mut sink).await,
        (None, true) => {
            return Err(Error::Refused("the state file has no watermark; run a full dump with --state first".into()));
        }
        _ => source.full_import(state.watermark.as_ref(), &mut sink).await,
    }
    .map_err(|e| crate::directory_error(&name, e))?;

    // Reconciliation: known objects in the reconciled subtrees that were not reported are gone.
    let mut reconciled = Vec::new();
    if keep_state && !summary.reconcile_within.is_empty() {
        let seen_hex: HashSet<String> = seen.iter().map(hex).collect();
        for (id_hex, dn_text) in &state.objects {
            let Ok(dn) = Dn::parse(dn_text) else { continue };
            if !seen_hex.contains(id_hex) && summary.reconcile_within.iter().any(|b| dn.is_within(b)) {
                reconciled.push((id_hex.clone(), dn_text.clone()));
            }
        }
    }
    for (id_hex, dn) in &reconciled {
        let id = SourceId(
            id_hex
                .as_bytes()
                .chunks(2)
                .filter_map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap_or(""), 16).ok())
                .collect(),
        );
        out.delete(&id, Some(dn)).map_err(Error::Output)?;
        state.objects.remove(id_hex);
    }
    out.ldif.inner_mut().flush().map_err(Error::Output)?;

    if let Some(path) = &req.state {
        if !req.delta || summary.mode != ImportMode::Delta {
            state.objects.clear();
        }
        for (id, _) in &deleted {
            state.objects.remove(&hex(id));
        }
        state.objects.extend(seen_dns);
        state.watermark = Some(summary.watermark.clone());
        save_state(path, &state)?;
    }
    let server = source.server().map(|(s, _)| format!("{} ({})", s.url, s.root_dse.describe())).unwrap_or_default();
    Ok(DumpReport {
        mode: summary.mode,
        server,
        upserts: summary.upserts,
        deletions: summary.deletes + reconciled.len() as u64,
        unchanged: summary.presents,
    })
}
