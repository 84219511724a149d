//! `idbridge source dump`: what the connector sees, as LDIF or JSON lines.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use connector_ldap::{LdapSettings, LdapSource};
use directory::{Dn, LdifWriter, Value};
use serde::{Deserialize, Serialize};
use sync::{ImportMode, ImportSummary, SinkError, Source, SourceChange, SourceId, Watermark};

use crate::progress::Progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the state file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("the state file {} is not one `source dump` wrote", path.display()))
}

fn save_state(path: &Path, state: &DumpState) -> Result<()> {
    Ok(config::files::write_atomically(path, &serde_json::to_vec(state)?)?)
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

pub struct DumpRequest {
    pub settings: LdapSettings,
    pub delta: bool,
    pub state: Option<PathBuf>,
    pub format: DumpFormat,
    pub out: Option<PathBuf>,
}

pub async fn run(req: DumpRequest) -> Result<()> {
    if req.delta && req.state.is_none() {
        bail!("--delta needs --state FILE, written by an earlier `source dump --state FILE`");
    }
    let mut state = match (&req.state, req.delta) {
        (Some(p), true) => load_state(p)?,
        _ => DumpState::default(),
    };
    let writer: Box<dyn Write + Send> = match &req.out {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?),
        None => Box::new(std::io::stdout()),
    };
    let mut out =
        Output { format: req.format, ldif: LdifWriter::new(std::io::BufWriter::with_capacity(1 << 16, writer)) };
    let keep_state = req.state.is_some();
    let mut source = LdapSource::new(req.settings).context("invalid source settings")?;
    let mut progress = Progress::new(if req.delta { "delta import" } else { "full import" });
    let mut seen: HashSet<SourceId> = HashSet::new();
    let mut seen_dns: BTreeMap<String, String> = BTreeMap::new();
    let mut deleted: Vec<(SourceId, Option<String>)> = Vec::new();
    let mut sink = |change: SourceChange| -> Result<(), SinkError> {
        progress.inc();
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
            bail!("the state file has no watermark; run a full dump with --state first")
        }
        _ => source.full_import(state.watermark.as_ref(), &mut sink).await,
    }
    .context("import failed")?;
    progress.finish();

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
        out.delete(&id, Some(dn)).context("writing the dump")?;
        state.objects.remove(id_hex);
    }
    out.ldif.inner_mut().flush().context("writing the dump")?;

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
    let mode = match &summary.mode {
        ImportMode::Full => "full".to_string(),
        ImportMode::Delta => "delta".to_string(),
        ImportMode::FullFallback { reason } => format!("full (delta impossible: {reason})"),
    };
    eprintln!(
        "{mode} import from {server}: {} objects, {} deletions{} in {:.1} s ({:.0} objects/s)",
        summary.upserts,
        summary.deletes + reconciled.len() as u64,
        if summary.presents > 0 { format!(", {} unchanged", summary.presents) } else { String::new() },
        progress.elapsed().as_secs_f64(),
        progress.rate()
    );
    Ok(())
}
