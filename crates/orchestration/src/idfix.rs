//! IdFix against a real directory: scan every configured source (or an
//! LDIF file) and write the findings as they come; apply chosen fixes over
//! LDAP — each one atomic modify that only succeeds if the value is still
//! what the scan saw — with a write-ahead undo log; and undo exactly.

use std::io::Write;
use std::path::{Path, PathBuf};

use config::Config;
use connector_ldap::{LdapError, LdapSource, write};
use directory::ldif::{ChangeRecord, LdifReader, LdifRecord, LdifWriter, ModOp, Modification};
use directory::{Dn, Value};
use idfix::plan::{exact_change, fix_change, selected};
use idfix::{Finding, Options, Scanner};
use sync::engine::CycleObserver;
use sync::{ImportSink, SinkError, Source, SourceChange};

use crate::idfix_index::DiskIndex;
use crate::{Error, IoContext, Result, directory_error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Where a scan reads from.
#[derive(Debug, Clone)]
pub enum ScanInput {
    /// The directories of a configuration: every `[[source]]`, or the one named.
    Config {
        path: PathBuf,
        source: Option<String>,
    },
    Ldif(PathBuf),
}

#[derive(Debug)]
pub struct ScanRequest {
    pub input: ScanInput,
    pub options: Options,
    pub format: Format,
    /// Where the findings go (standard output when `None`).
    pub out: Option<PathBuf>,
    /// Also write the proposed fixes as an LDIF change file.
    pub fixes_ldif: Option<PathBuf>,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub checked: u64,
    /// System objects, conflicts and the like.
    pub skipped: u64,
    pub findings: u64,
    /// Findings per error kind.
    pub by_kind: std::collections::BTreeMap<&'static str, u64>,
}

/// Where findings are written as they come (the scan keeps none in memory).
struct Output {
    format: Format,
    out: Box<dyn Write + Send>,
    fixes: Option<LdifWriter<std::io::BufWriter<std::fs::File>>>,
    report: ScanReport,
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() > n { format!("{}…", s.chars().take(n - 1).collect::<String>()) } else { s.to_string() }
}

impl Output {
    fn header(&mut self) -> std::io::Result<()> {
        match self.format {
            Format::Csv => writeln!(self.out, "{}", Finding::CSV_HEADER),
            Format::Table => writeln!(
                self.out,
                "{:<40} {:<18} {:<32} {:<30} {:<30} ACTION",
                "DISTINGUISHED NAME", "ATTRIBUTE", "ERROR", "VALUE", "PROPOSED"
            ),
            Format::Json => Ok(()),
        }
    }

    fn write(&mut self, f: &Finding) -> std::io::Result<()> {
        self.report.findings += 1;
        for e in &f.errors {
            *self.report.by_kind.entry(e.as_str()).or_default() += 1;
        }
        match self.format {
            Format::Json => writeln!(self.out, "{}", serde_json::to_string(f).map_err(std::io::Error::other)?)?,
            Format::Csv => writeln!(self.out, "{}", f.csv_row())?,
            Format::Table => writeln!(
                self.out,
                "{:<40} {:<18} {:<32} {:<30} {:<30} {}",
                cut(&f.dn, 40),
                cut(&f.attribute, 18),
                cut(&f.error_text(), 32),
                cut(&f.value, 30),
                cut(f.proposed.as_deref().unwrap_or("—"), 30),
                f.action.as_str()
            )?,
        }
        if let Some(w) = self.fixes.as_mut()
            && let Some(change) = fix_change(f)
        {
            w.write_comment(&format!("{} {}: {}", f.action.as_str(), f.attribute, f.error_text()))?;
            w.write_change(&change)?;
        }
        Ok(())
    }
}

/// Checks every user, group and contact and writes the findings.
pub async fn scan(req: ScanRequest, progress: &mut (dyn CycleObserver + Send)) -> Result<ScanReport> {
    let writer: Box<dyn Write + Send> = match &req.out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).on("create", p)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let fixes = match &req.fixes_ldif {
        Some(p) => Some(LdifWriter::new(std::io::BufWriter::new(std::fs::File::create(p).on("create", p)?))),
        None => None,
    };
    let mut output = Output { format: req.format, out: writer, fixes, report: ScanReport::default() };
    output.header().map_err(Error::Output)?;
    // The uniqueness index on disk: memory stays flat in the directory's size.
    let index = DiskIndex::create().map_err(|e| Error::Idfix(format!("creating the scan's index file: {e}")))?;
    let mut scanner = Scanner::with_index(req.options, Box::new(index));
    progress.stage("idfix scan", None);
    match &req.input {
        ScanInput::Ldif(path) => {
            let file = std::fs::File::open(path).on("open", path)?;
            for record in LdifReader::new(std::io::BufReader::with_capacity(1 << 16, file)) {
                let record =
                    record.map_err(|error| Error::Ldif { what: format!("reading {}", path.display()), error })?;
                let entry = match record {
                    LdifRecord::Content(e) | LdifRecord::Change(ChangeRecord::Add(e)) => e,
                    LdifRecord::Change(_) => continue,
                };
                progress.advance(1);
                let findings =
                    scanner.check(&entry).map_err(|e| Error::Idfix(format!("checking {}: {e}", entry.dn)))?;
                for f in findings {
                    output.write(&f).map_err(Error::Output)?;
                }
            }
        }
        ScanInput::Config { path, source } => {
            let cfg = Config::load(path)?;
            let sources: Vec<_> = match source {
                Some(name) => vec![cfg.source(Some(name))?],
                None => cfg.sources.iter().collect(),
            };
            // One pass over every source: duplicates are found across all of them.
            for src in sources {
                let mut ldap = crate::sources::Directory::open(src)?;
                let mut error: Option<Error> = None;
                let mut sink = |change: SourceChange| -> Result<(), SinkError> {
                    if let SourceChange::Upsert(obj) = change {
                        progress.advance(1);
                        let findings = match scanner.check(&obj.entry) {
                            Ok(f) => f,
                            Err(e) => {
                                let text = format!("checking {}: {e}", obj.entry.dn);
                                error = Some(Error::Idfix(text.clone()));
                                return Err(SinkError(text));
                            }
                        };
                        for f in findings {
                            if let Err(e) = output.write(&f) {
                                let text = e.to_string();
                                error = Some(Error::Output(e));
                                return Err(SinkError(text));
                            }
                        }
                    }
                    Ok(())
                };
                let sink: &mut (dyn ImportSink + Send) = &mut sink;
                let result = ldap.full_import(None, sink).await;
                if let Some(e) = error {
                    return Err(e);
                }
                result.map_err(|e| crate::refused!("source {:?}: {e}", src.name))?;
            }
        }
    }
    output.out.flush().map_err(Error::Output)?;
    if let Some(mut w) = output.fixes.take() {
        w.inner_mut().flush().map_err(Error::Output)?;
    }
    output.report.checked = scanner.checked;
    output.report.skipped = scanner.skipped;
    Ok(output.report)
}

/// The findings of a `scan --format json` file that `only` selects and that propose a fix.
fn chosen(findings: &Path, only: &[String]) -> Result<Vec<(Finding, ChangeRecord)>> {
    let text = std::fs::read_to_string(findings).on("read", findings)?;
    let mut chosen = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Finding = serde_json::from_str(line).map_err(|e| {
            Error::Refused(format!(
                "{}, line {}: not a finding (write the file with `idfix scan --format json`): {e}",
                findings.display(),
                i + 1
            ))
        })?;
        if selected(&f, only)
            && let Some(change) = fix_change(&f)
        {
            chosen.push((f, change));
        }
    }
    Ok(chosen)
}

/// Writes the changes `apply` would make as LDIF; returns how many.
pub fn dry_run(findings: &Path, only: &[String], out: impl Write) -> Result<usize> {
    let chosen = chosen(findings, only)?;
    let mut w = LdifWriter::new(out);
    for (f, change) in &chosen {
        w.write_comment(&format!("{} {}: {}", f.action.as_str(), f.attribute, f.error_text()))
            .map_err(Error::Output)?;
        w.write_change(change).map_err(Error::Output)?;
    }
    Ok(chosen.len())
}

async fn connect(config: &Path, source: Option<&str>) -> Result<(LdapSource, String)> {
    let cfg = Config::load(config)?;
    let src = cfg.source(source)?;
    let mut ldap = LdapSource::new(src.to_settings()?).map_err(|e| directory_error(&src.name, e))?;
    ldap.connect().await.map_err(|e| directory_error(&src.name, e))?;
    Ok((ldap, src.name.clone()))
}

/// What a failed write means for the administrator.
fn explain_write_error(e: &LdapError, dn: &str, attribute: &str) -> Option<String> {
    match e {
        LdapError::Modify { code: write::INSUFFICIENT_ACCESS, .. } => Some(format!(
            "the bind account may not write {attribute} of {dn}: grant it write access to that attribute \
             (Active Directory: dsacls \"{dn}\" /G \"<account>:WP;{attribute}\"; OpenLDAP: an olcAccess line \
             `to attrs={attribute} by dn.exact=\"<bind DN>\" write`). Nothing was written for this or any later finding."
        )),
        _ => None,
    }
}

fn now_stamp() -> String {
    tenant::util::now()
}

#[derive(Debug, Clone)]
pub struct ApplyRequest {
    /// A findings file written by `scan --format json`.
    pub findings: PathBuf,
    pub config: PathBuf,
    pub source: Option<String>,
    /// Only these attributes or error kinds.
    pub only: Vec<String>,
    /// Where the undo log goes (a new file each run, never overwritten).
    pub undo_dir: PathBuf,
}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: u64,
    /// Skipped: the directory no longer held what the scan saw.
    pub changed_since: u64,
    /// Refused by the server for that value only; to be fixed by hand.
    pub failed: u64,
    /// The undo log; `None` when nothing was chosen.
    pub undo_log: Option<PathBuf>,
}

/// Applies the chosen fixes; `notice` is told each object skipped or
/// failed. Stops at the first error that would fail every later fix too
/// (no right to write, the server gone), saying how to undo what was done.
pub async fn apply(req: &ApplyRequest, notice: &mut dyn FnMut(&str)) -> Result<ApplyReport> {
    let chosen = chosen(&req.findings, &req.only)?;
    let mut report = ApplyReport::default();
    if chosen.is_empty() {
        return Ok(report);
    }
    let (ldap, name) = connect(&req.config, req.source.as_deref()).await?;
    let (session, _) =
        ldap.server().ok_or_else(|| Error::Refused(format!("source {name:?}: not connected to a directory server")))?;
    std::fs::create_dir_all(&req.undo_dir).on("create", &req.undo_dir)?;
    let log_path = req.undo_dir.join(format!("idfix-undo-{}.ldif", now_stamp().replace([':', '.'], "-")));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&log_path)
        .on("create the undo log (it is never overwritten)", &log_path)?;
    let mut log = LdifWriter::new(std::io::BufWriter::new(file));
    let io = |e: std::io::Error| Error::Io { action: "write the undo log", path: log_path.clone(), error: e };
    log.write_comment(&format!("idbridge idfix undo log: source {name:?}, findings {}", req.findings.display()))
        .map_err(io)?;
    log.write_comment("each record puts back one applied fix; `idbridge idfix undo --log THIS_FILE`").map_err(io)?;
    for (f, _) in &chosen {
        let dn = f.dn.as_str();
        let Some(current) =
            write::read_values(session, dn, &f.attribute).await.map_err(|e| directory_error(&name, e))?
        else {
            report.changed_since += 1;
            notice(&format!("skipped: {dn} no longer exists"));
            continue;
        };
        let current: Vec<String> = current.into_iter().map(|v| String::from_utf8_lossy(&v).into_owned()).collect();
        let Some((forward, back)) = exact_change(f, &current) else {
            report.changed_since += 1;
            notice(&format!(
                "skipped: {dn} {} changed since the scan (it is no longer {:?}); scan again",
                f.attribute, f.value
            ));
            continue;
        };
        // Write-ahead: the undo record is on disk before the directory
        // changes, so a crash in between loses nothing (`undo` skips a record
        // whose fix never reached the directory).
        let parsed = Dn::parse(dn).map_err(|error| Error::Dn { what: format!("the finding's DN {dn:?}"), error })?;
        log.write_comment(&format!(
            "undoes {} {} ({}) applied {}",
            f.action.as_str(),
            f.attribute,
            f.error_text(),
            now_stamp()
        ))
        .map_err(io)?;
        log.write_change(&ChangeRecord::Modify { dn: parsed, mods: back }).map_err(io)?;
        log.inner_mut().flush().map_err(io)?;
        log.inner_mut().get_ref().sync_data().map_err(io)?;
        match write::modify(session, dn, &forward).await {
            Ok(()) => report.applied += 1,
            Err(LdapError::Modify { code: write::NO_SUCH_ATTRIBUTE | write::ATTRIBUTE_OR_VALUE_EXISTS, .. }) => {
                report.changed_since += 1;
                notice(&format!(
                    "skipped: {dn} {} changed since the scan (it is no longer {:?}); scan again",
                    f.attribute, f.value
                ));
            }
            Err(e @ LdapError::Modify { code: write::INSUFFICIENT_ACCESS, .. })
            | Err(e @ LdapError::Connection { .. }) => {
                log.inner_mut().flush().map_err(io)?;
                let message = match explain_write_error(&e, dn, &f.attribute) {
                    Some(h) => format!("{e}\n{h}"),
                    None => e.to_string(),
                };
                if report.applied == 0 {
                    // Nothing reached the directory: no undo log is needed.
                    drop(log);
                    let _ = std::fs::remove_file(&log_path);
                    return Err(Error::Refused(format!("{message}\nno fix was applied")));
                }
                return Err(Error::Refused(format!(
                    "{message}\n{} fixes were applied before this one; undo them with `idbridge idfix undo --log {}`",
                    report.applied,
                    log_path.display()
                )));
            }
            Err(e) => {
                // This value only (e.g. the server's syntax rules refuse it): the rest go on.
                report.failed += 1;
                notice(&format!("failed: {dn} {}: {e}; fix it by hand", f.attribute));
            }
        }
    }
    log.inner_mut().flush().map_err(io)?;
    report.undo_log = Some(log_path);
    Ok(report)
}

/// The attribute already holds what this undo record would restore: the
/// fix it was written for never reached the directory (it failed, or the
/// run stopped between the log and the modify).
async fn already_as_before(
    session: &connector_ldap::connect::Session,
    dn: &Dn,
    attr: &str,
    mods: &[Modification],
) -> Result<bool, LdapError> {
    let current: Vec<String> = write::read_values(session, &dn.to_string(), attr)
        .await?
        .unwrap_or_default()
        .into_iter()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .collect();
    let values = |op: ModOp| -> Vec<&str> {
        mods.iter().filter(|m| m.op == op).flat_map(|m| m.values.iter().filter_map(Value::as_text)).collect()
    };
    let (added, deleted) = (values(ModOp::Add), values(ModOp::Delete));
    Ok(added.iter().all(|v| current.iter().any(|c| c == v))
        && deleted.iter().filter(|v| !added.contains(v)).all(|v| !current.iter().any(|c| c == v)))
}

/// What `undo` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UndoReport {
    pub restored: u64,
    /// The value changed after the fix: left as it is.
    pub refused: u64,
    /// The fix never reached the directory: nothing to undo.
    pub not_applied: u64,
}

/// Puts back exactly what an apply run changed, latest first.
pub async fn undo(log: &Path, config: &Path, source: Option<&str>, notice: &mut dyn FnMut(&str)) -> Result<UndoReport> {
    let file = std::fs::File::open(log).on("open", log)?;
    let mut changes = Vec::new();
    for record in LdifReader::new(std::io::BufReader::new(file)) {
        match record.map_err(|error| Error::Ldif { what: format!("reading {}", log.display()), error })? {
            LdifRecord::Change(c @ ChangeRecord::Modify { .. }) => changes.push(c),
            other => {
                return Err(Error::Refused(format!("{}: not an idfix undo log (found {other:?})", log.display())));
            }
        }
    }
    let (ldap, name) = connect(config, source).await?;
    let (session, _) =
        ldap.server().ok_or_else(|| Error::Refused(format!("source {name:?}: not connected to a directory server")))?;
    let mut report = UndoReport::default();
    for change in changes.iter().rev() {
        let ChangeRecord::Modify { dn, mods } = change else { continue };
        let attr = mods.first().map(|m| m.attr.as_str()).unwrap_or("");
        match write::modify(session, &dn.to_string(), mods).await {
            Ok(()) => report.restored += 1,
            Err(LdapError::Modify { code: write::NO_SUCH_ATTRIBUTE | write::ATTRIBUTE_OR_VALUE_EXISTS, .. })
                if already_as_before(session, dn, attr, mods).await.map_err(|e| directory_error(&name, e))? =>
            {
                report.not_applied += 1;
            }
            Err(LdapError::Modify { code: write::NO_SUCH_ATTRIBUTE | write::ATTRIBUTE_OR_VALUE_EXISTS, .. }) => {
                report.refused += 1;
                let now = mods
                    .iter()
                    .find(|m| m.op == ModOp::Delete)
                    .and_then(|m| m.values.first())
                    .and_then(Value::as_text)
                    .unwrap_or("");
                notice(&format!(
                    "refused: {dn} {attr} is no longer {now:?} (it changed after the fix); left as it is — restore it by hand if needed"
                ));
            }
            Err(e) => {
                let hint = explain_write_error(&e, &dn.to_string(), attr).unwrap_or_default();
                return Err(Error::Refused(format!(
                    "{e}\n{hint}\n{} changes were restored before this one",
                    report.restored
                )));
            }
        }
    }
    Ok(report)
}
