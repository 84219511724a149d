//! `idbridge idfix scan|apply|undo`: find what would break directory sync,
//! write the findings (table, CSV, JSON lines, an LDIF file of the fixes),
//! apply chosen fixes over LDAP — each as one atomic modify that only
//! succeeds if the value is still what the scan saw — with an undo log, and
//! undo exactly.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use connector_ldap::{LdapError, LdapSource, write};
use directory::ldif::{ChangeRecord, LdifReader, LdifRecord, LdifWriter, ModOp, Modification};
use directory::{Dn, Value};
use idfix::{Action, ErrorKind, Finding, Mode, Options, Scanner};
use sync::{ImportSink, SinkError, Source, SourceChange};

use crate::progress::Progress;
use config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum IdfixCommand {
    /// Check every user, group and contact; write the findings.
    Scan {
        /// Read the directories of this configuration (every [[source]], or --source).
        #[arg(long, conflicts_with = "ldif")]
        config: Option<PathBuf>,
        #[arg(long, requires = "config")]
        source: Option<String>,
        /// Read an LDIF file instead of a directory.
        #[arg(long)]
        ldif: Option<PathBuf>,
        /// The rule set: multi-tenant (Microsoft 365, the default) or dedicated.
        #[arg(long, default_value = "multi-tenant", value_parser = ["multi-tenant", "dedicated"])]
        mode: String,
        /// People sign in with an alternate login id: skip the userPrincipalName checks.
        #[arg(long)]
        alternate_login_id: bool,
        /// Accept this top-level domain too (repeat for several).
        #[arg(long = "allow-tld")]
        allow_tlds: Vec<String>,
        /// Treat this domain (and its subdomains) as not routable (repeat for several).
        #[arg(long = "internal-domain")]
        internal_domains: Vec<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Where the findings go (default: standard output). Keep a --format json file for `apply`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write the proposed fixes as an LDIF change file.
        #[arg(long)]
        fixes_ldif: Option<PathBuf>,
    },
    /// Write chosen fixes to the directory, with an undo log.
    Apply {
        /// A findings file written by `scan --format json`.
        #[arg(long)]
        findings: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        source: Option<String>,
        /// Only these attributes or error kinds (e.g. userPrincipalName,Character).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Show what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where the undo log goes (a new file each run, never overwritten).
        #[arg(long, default_value = ".")]
        undo_dir: PathBuf,
    },
    /// Put back exactly what an apply run changed.
    Undo {
        /// The undo log an apply run wrote.
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        source: Option<String>,
    },
}

pub async fn run(command: IdfixCommand) -> Result<()> {
    match command {
        IdfixCommand::Scan {
            config,
            source,
            ldif,
            mode,
            alternate_login_id,
            allow_tlds,
            internal_domains,
            format,
            out,
            fixes_ldif,
        } => {
            let options = Options {
                mode: if mode == "dedicated" { Mode::Dedicated } else { Mode::MultiTenant },
                alternate_login_id,
                extra_tlds: allow_tlds,
                non_routable_domains: internal_domains,
            };
            scan(config, source, ldif, options, format, out, fixes_ldif).await
        }
        IdfixCommand::Apply { findings, config, source, only, dry_run, undo_dir } => {
            apply(&findings, &config, source.as_deref(), &only, dry_run, &undo_dir).await
        }
        IdfixCommand::Undo { log, config, source } => undo(&log, &config, source.as_deref()).await,
    }
}

/// Where findings are written as they come (the scan keeps none in memory).
struct Output {
    format: Format,
    out: Box<dyn Write + Send>,
    fixes: Option<LdifWriter<std::io::BufWriter<std::fs::File>>>,
    counts: std::collections::BTreeMap<&'static str, u64>,
    findings: u64,
}

impl Output {
    fn write(&mut self, f: &Finding) -> std::io::Result<()> {
        self.findings += 1;
        for e in &f.errors {
            *self.counts.entry(e.as_str()).or_default() += 1;
        }
        match self.format {
            Format::Json => {
                writeln!(self.out, "{}", serde_json::to_string(f).unwrap_or_default())?;
            }
            Format::Csv => writeln!(self.out, "{}", f.csv_row())?,
            Format::Table => {
                let cut = |s: &str, n: usize| -> String {
                    if s.chars().count() > n {
                        format!("{}…", s.chars().take(n - 1).collect::<String>())
                    } else {
                        s.to_string()
                    }
                };
                writeln!(
                    self.out,
                    "{:<40} {:<18} {:<32} {:<30} {:<30} {}",
                    cut(&f.dn, 40),
                    cut(&f.attribute, 18),
                    cut(&f.error_text(), 32),
                    cut(&f.value, 30),
                    cut(f.proposed.as_deref().unwrap_or("—"), 30),
                    f.action.as_str()
                )?;
            }
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

#[allow(clippy::too_many_arguments)]
async fn scan(
    config: Option<PathBuf>,
    source: Option<String>,
    ldif: Option<PathBuf>,
    options: Options,
    format: Format,
    out: Option<PathBuf>,
    fixes_ldif: Option<PathBuf>,
) -> Result<()> {
    let writer: Box<dyn Write + Send> = match &out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let fixes = match &fixes_ldif {
        Some(p) => Some(LdifWriter::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ))),
        None => None,
    };
    let mut output = Output { format, out: writer, fixes, counts: Default::default(), findings: 0 };
    match format {
        Format::Csv => writeln!(output.out, "{}", Finding::CSV_HEADER)?,
        Format::Table => writeln!(
            output.out,
            "{:<40} {:<18} {:<32} {:<30} {:<30} ACTION",
            "DISTINGUISHED NAME", "ATTRIBUTE", "ERROR", "VALUE", "PROPOSED"
        )?,
        Format::Json => {}
    }
    // The uniqueness index on disk: memory stays flat in the directory's size.
    let index = crate::idfix_index::DiskIndex::create().context("creating the scan's index file")?;
    let mut scanner = Scanner::with_index(options, Box::new(index));
    let mut progress = Progress::new("idfix scan");
    let started = std::time::Instant::now();
    match (&config, &ldif) {
        (_, Some(path)) => {
            let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            for record in LdifReader::new(std::io::BufReader::with_capacity(1 << 16, file)) {
                let record = record.with_context(|| format!("reading {}", path.display()))?;
                let entry = match record {
                    LdifRecord::Content(e) | LdifRecord::Change(ChangeRecord::Add(e)) => e,
                    LdifRecord::Change(_) => continue,
                };
                progress.inc();
                for f in scanner.check(&entry).with_context(|| format!("checking {}", entry.dn))? {
                    output.write(&f)?;
                }
            }
        }
        (Some(path), None) => {
            let cfg = Config::load(path)?;
            let sources: Vec<_> = match &source {
                Some(name) => vec![cfg.source(Some(name))?],
                None => cfg.sources.iter().collect(),
            };
            if sources.is_empty() {
                bail!("{}: no [[source]] is configured", path.display());
            }
            // One pass over every source: duplicates are found across all of them.
            for src in sources {
                let mut ldap = LdapSource::new(src.to_settings()?).with_context(|| format!("source {:?}", src.name))?;
                let mut error: Option<anyhow::Error> = None;
                let mut sink = |change: SourceChange| -> Result<(), SinkError> {
                    if let SourceChange::Upsert(obj) = change {
                        progress.inc();
                        let findings = match scanner.check(&obj.entry) {
                            Ok(f) => f,
                            Err(e) => {
                                let text = e.to_string();
                                error = Some(anyhow::Error::new(e).context(format!("checking {}", obj.entry.dn)));
                                return Err(SinkError(text));
                            }
                        };
                        for f in findings {
                            if let Err(e) = output.write(&f) {
                                let text = e.to_string();
                                error = Some(anyhow::Error::new(e).context("writing the findings"));
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
                result.with_context(|| format!("reading source {:?}", src.name))?;
            }
        }
        (None, None) => bail!("give --config idbridge.toml (the configured directories) or --ldif FILE"),
    }
    progress.finish();
    output.out.flush()?;
    if let Some(mut w) = output.fixes.take() {
        w.inner_mut().flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    let by_kind: Vec<String> = output.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    eprintln!(
        "idfix: {} objects checked, {} skipped (system objects), {} findings{} in {:.1} s ({:.0} objects/s)",
        scanner.checked,
        scanner.skipped,
        output.findings,
        if by_kind.is_empty() { String::new() } else { format!(" ({})", by_kind.join(", ")) },
        secs,
        (scanner.checked + scanner.skipped) as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// The directory change a finding proposes, as one modify: the old value
/// deleted and the new one added in the same request, so it applies only if
/// the old value is still there and never loses a value half-way.
pub fn fix_change(f: &Finding) -> Option<ChangeRecord> {
    let dn = Dn::parse(&f.dn).ok()?;
    let values = |v: &str| vec![Value::Text(v.to_string())];
    let mods = match (f.action, f.proposed.as_deref()) {
        (Action::Keep, _) => return None,
        (Action::Remove, _) => {
            vec![Modification { op: ModOp::Delete, attr: f.attribute.clone(), values: values(&f.value) }]
        }
        (Action::Edit, None) => return None,
        (Action::Edit, Some(new)) if f.value.is_empty() => {
            vec![Modification { op: ModOp::Add, attr: f.attribute.clone(), values: values(new) }]
        }
        (Action::Edit, Some(new)) => vec![
            Modification { op: ModOp::Delete, attr: f.attribute.clone(), values: values(&f.value) },
            Modification { op: ModOp::Add, attr: f.attribute.clone(), values: values(new) },
        ],
    };
    Some(ChangeRecord::Modify { dn, mods })
}

/// The exact change for a finding, given the attribute's current values:
/// (forward, back), each one modify (see `transform`). `None` when the
/// directory no longer holds what the finding saw.
fn exact_change(f: &Finding, current: &[String]) -> Option<(Vec<Modification>, Vec<Modification>)> {
    let after: Vec<String> = if f.value.is_empty() {
        // Blank: the attribute must still be absent.
        if !current.is_empty() {
            return None;
        }
        vec![f.proposed.clone()?]
    } else {
        let at = current.iter().position(|v| *v == f.value)?;
        let mut list = current.to_vec();
        match (f.action, &f.proposed) {
            (Action::Edit, Some(new)) => list[at] = new.clone(),
            (Action::Remove, _) => {
                list.remove(at);
            }
            _ => return None,
        }
        list
    };
    Some((transform(&f.attribute, current, &after), transform(&f.attribute, &after, current)))
}

/// Value-level operations that turn the attribute's list `from` into `to`,
/// order included, in one modify: new values added, old ones deleted (a
/// delete fails if the value is not there — the modify then changes
/// nothing), then the values after the first misplaced one moved to the end
/// in order (delete + add). The attribute never becomes empty on the way, so
/// the server keeps its place in the entry: an undo restores the entry
/// byte for byte.
fn transform(attr: &str, from: &[String], to: &[String]) -> Vec<Modification> {
    let m = |op, v: &String| Modification { op, attr: attr.to_string(), values: vec![Value::Text(v.clone())] };
    let mut ops = Vec::new();
    let mut list: Vec<String> = from.to_vec();
    for v in to.iter().filter(|v| !from.contains(v)) {
        ops.push(m(ModOp::Add, v));
        list.push(v.clone());
    }
    for v in from.iter().filter(|v| !to.contains(v)) {
        ops.push(m(ModOp::Delete, v));
        list.retain(|x| x != v);
    }
    if let Some(first) = list.iter().zip(to).position(|(a, b)| a != b) {
        for v in &to[first..] {
            ops.push(m(ModOp::Delete, v));
            ops.push(m(ModOp::Add, v));
        }
    }
    ops
}

fn selected(f: &Finding, only: &[String]) -> bool {
    only.is_empty()
        || only
            .iter()
            .any(|o| f.attribute.eq_ignore_ascii_case(o) || ErrorKind::parse(o).is_some_and(|k| f.errors.contains(&k)))
}

async fn connect(config: &Path, source: Option<&str>) -> Result<(LdapSource, String)> {
    let cfg = Config::load(config)?;
    let src = cfg.source(source).with_context(|| format!("in {}", config.display()))?;
    let mut ldap = LdapSource::new(src.to_settings()?).with_context(|| format!("source {:?}", src.name))?;
    ldap.connect().await.with_context(|| format!("connecting to source {:?}", src.name))?;
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

async fn apply(
    findings: &Path,
    config: &Path,
    source: Option<&str>,
    only: &[String],
    dry_run: bool,
    undo_dir: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(findings).with_context(|| format!("cannot read {}", findings.display()))?;
    let mut chosen = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Finding = serde_json::from_str(line).with_context(|| {
            format!(
                "{}, line {}: not a finding (write the file with `idfix scan --format json`)",
                findings.display(),
                i + 1
            )
        })?;
        if selected(&f, only)
            && let Some(change) = fix_change(&f)
        {
            chosen.push((f, change));
        }
    }
    if chosen.is_empty() {
        eprintln!("nothing to apply (no finding with a proposed fix matches)");
        return Ok(());
    }
    if dry_run {
        let mut w = LdifWriter::new(std::io::stdout());
        for (f, change) in &chosen {
            w.write_comment(&format!("{} {}: {}", f.action.as_str(), f.attribute, f.error_text()))?;
            w.write_change(change)?;
        }
        eprintln!("dry run: {} changes shown, nothing written", chosen.len());
        return Ok(());
    }
    let (ldap, name) = connect(config, source).await?;
    let (session, _) = ldap.server().context("not connected")?;
    std::fs::create_dir_all(undo_dir).with_context(|| format!("cannot create {}", undo_dir.display()))?;
    let stamp = tenant::util::now().replace([':', '.'], "-");
    let log_path = undo_dir.join(format!("idfix-undo-{stamp}.ldif"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&log_path)
        .with_context(|| format!("cannot create the undo log {} (it is never overwritten)", log_path.display()))?;
    let mut log = LdifWriter::new(std::io::BufWriter::new(file));
    log.write_comment(&format!("idbridge idfix undo log: source {name:?}, findings {}", findings.display()))?;
    log.write_comment("each record puts back one applied fix; `idbridge idfix undo --log THIS_FILE`")?;
    let (mut applied, mut changed_since, mut failed) = (0, 0, 0);
    for (f, _) in &chosen {
        let dn = f.dn.as_str();
        let Some(current) = write::read_values(session, dn, &f.attribute).await? else {
            changed_since += 1;
            eprintln!("skipped: {dn} no longer exists");
            continue;
        };
        let current: Vec<String> = current.into_iter().map(|v| String::from_utf8_lossy(&v).into_owned()).collect();
        let Some((forward, back)) = exact_change(f, &current) else {
            changed_since += 1;
            eprintln!(
                "skipped: {dn} {} changed since the scan (it is no longer {:?}); scan again",
                f.attribute, f.value
            );
            continue;
        };
        // Write-ahead: the undo record is on disk before the directory
        // changes, so a crash in between loses nothing (`undo` skips a record
        // whose fix never reached the directory).
        log.write_comment(&format!(
            "undoes {} {} ({}) applied {}",
            f.action.as_str(),
            f.attribute,
            f.error_text(),
            tenant::util::now()
        ))?;
        log.write_change(&ChangeRecord::Modify { dn: Dn::parse(dn)?, mods: back })?;
        log.inner_mut().flush()?;
        log.inner_mut().get_ref().sync_data().with_context(|| format!("cannot sync {}", log_path.display()))?;
        match write::modify(session, dn, &forward).await {
            Ok(()) => applied += 1,
            Err(LdapError::Modify { code: write::NO_SUCH_ATTRIBUTE | write::ATTRIBUTE_OR_VALUE_EXISTS, .. }) => {
                changed_since += 1;
                eprintln!(
                    "skipped: {dn} {} changed since the scan (it is no longer {:?}); scan again",
                    f.attribute, f.value
                );
            }
            Err(e @ LdapError::Modify { code: write::INSUFFICIENT_ACCESS, .. })
            | Err(e @ LdapError::Connection { .. }) => {
                log.inner_mut().flush()?;
                let hint = explain_write_error(&e, dn, &f.attribute);
                let message = match hint {
                    Some(h) => format!("{e}\n{h}"),
                    None => e.to_string(),
                };
                if applied == 0 {
                    // Nothing reached the directory: no undo log is needed.
                    drop(log);
                    let _ = std::fs::remove_file(&log_path);
                    bail!("{message}\nno fix was applied");
                }
                bail!(
                    "{message}\n{applied} fixes were applied before this one; undo them with `idbridge idfix undo --log {}`",
                    log_path.display()
                );
            }
            Err(e) => {
                // This value only (e.g. the server's syntax rules refuse it): the rest go on.
                failed += 1;
                eprintln!("failed: {dn} {}: {e}; fix it by hand", f.attribute);
            }
        }
    }
    log.inner_mut().flush()?;
    eprintln!(
        "{applied} fixes applied, {changed_since} skipped (changed since the scan), {failed} failed; undo log: {}",
        log_path.display()
    );
    if failed > 0 {
        bail!("{failed} fixes failed (listed above)");
    }
    Ok(())
}

/// The attribute already holds what this undo record would restore: the
/// fix it was written for never reached the directory (it failed, or the
/// run stopped between the log and the modify).
async fn already_as_before(
    session: &connector_ldap::connect::Session,
    dn: &Dn,
    attr: &str,
    mods: &[Modification],
) -> Result<bool> {
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

async fn undo(log: &Path, config: &Path, source: Option<&str>) -> Result<()> {
    let file = std::fs::File::open(log).with_context(|| format!("cannot open {}", log.display()))?;
    let mut changes = Vec::new();
    for record in LdifReader::new(std::io::BufReader::new(file)) {
        match record.with_context(|| format!("reading {}", log.display()))? {
            LdifRecord::Change(c @ ChangeRecord::Modify { .. }) => changes.push(c),
            other => bail!("{}: not an idfix undo log (found {other:?})", log.display()),
        }
    }
    let (ldap, _) = connect(config, source).await?;
    let (session, _) = ldap.server().context("not connected")?;
    let (mut restored, mut refused, mut not_applied) = (0, 0, 0);
    // Latest first: several fixes of one attribute unwind in order.
    for change in changes.iter().rev() {
        let ChangeRecord::Modify { dn, mods } = change else { continue };
        let attr = mods.first().map(|m| m.attr.as_str()).unwrap_or("");
        match write::modify(session, &dn.to_string(), mods).await {
            Ok(()) => restored += 1,
            Err(LdapError::Modify { code: write::NO_SUCH_ATTRIBUTE | write::ATTRIBUTE_OR_VALUE_EXISTS, .. })
                if already_as_before(session, dn, attr, mods).await? =>
            {
                not_applied += 1;
            }
            Err(LdapError::Modify { code: write::NO_SUCH_ATTRIBUTE | write::ATTRIBUTE_OR_VALUE_EXISTS, .. }) => {
                refused += 1;
                let now = mods
                    .iter()
                    .find(|m| m.op == ModOp::Delete)
                    .and_then(|m| m.values.first())
                    .and_then(Value::as_text)
                    .unwrap_or("");
                eprintln!(
                    "refused: {dn} {attr} is no longer {now:?} (it changed after the fix); left as it is — restore it by hand if needed"
                );
            }
            Err(e) => {
                let hint = explain_write_error(&e, &dn.to_string(), attr).unwrap_or_default();
                bail!("{e}\n{hint}\n{restored} changes were restored before this one");
            }
        }
    }
    eprintln!(
        "{restored} changes restored, {refused} refused (changed since), {not_applied} never applied (nothing to undo)"
    );
    if refused > 0 {
        bail!("{refused} changes could not be undone because their values changed since the fix");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies value operations the way an LDAP server does.
    fn run(ops: &[Modification], mut list: Vec<String>) -> Vec<String> {
        for op in ops {
            let v = op.values[0].as_text().unwrap().to_string();
            match op.op {
                ModOp::Add => {
                    assert!(!list.contains(&v), "add of an existing value");
                    list.push(v)
                }
                ModOp::Delete => {
                    let at = list.iter().position(|x| *x == v).expect("delete of a missing value");
                    list.remove(at);
                    assert!(!list.is_empty() || ops.len() == 1, "the attribute would vanish mid-way");
                }
                _ => panic!("unexpected modify operation"),
            }
        }
        list
    }

    #[test]
    fn transforms_keep_the_order_and_undo_exactly() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for (from, to) in [
            (s(&["a"]), s(&["a2"])),
            (s(&["a", "b", "c"]), s(&["a", "b2", "c"])),
            (s(&["a", "b", "c"]), s(&["b2", "b", "c"])),
            (s(&["a", "b", "c"]), s(&["a", "c"])),
        ] {
            assert_eq!(run(&transform("x", &from, &to), from.clone()), to);
            assert_eq!(run(&transform("x", &to, &from), to.clone()), from);
        }
    }
}
