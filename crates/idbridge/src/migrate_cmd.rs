//! `idbridge migrate connect`: Entra Connect's exported configuration →
//! `idbridge.toml`, the rules file and a report (crate `migrate`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Entra Connect's configuration (the folder Get-ADSyncServerConfiguration writes) →
    /// idbridge.toml, connect-rules.toml and migration-report.txt, with staging on.
    /// Exit codes: 0 everything carried over (written), 2 not everything (written only with
    /// --allow-partial; the report says what and why), 1 an error.
    Connect {
        /// The export folder (Connectors/, SynchronizationRules/, GlobalSettings/).
        export: PathBuf,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// Write what could be carried over even when something could not.
        #[arg(long)]
        allow_partial: bool,
        /// Replace the files of an earlier run in --out.
        #[arg(long)]
        force: bool,
        /// A PowerShell rule script (the Synchronization Rules Editor's export) whose rules are
        /// added to the export's (repeatable; one with an exported rule's identifier replaces it).
        #[arg(long)]
        rules_script: Vec<PathBuf>,
    },
    /// What Connect is about to export against what idbridge would export, object by object
    /// (matched by sourceAnchor). Connect's side: `csexport "<Entra ID connector>" export.xml /f:x`
    /// on its staging server, or the CSV Microsoft's csanalyzer script makes of it. Run it with
    /// the migrated configuration in staging, before idbridge's first export.
    /// Exit codes: 0 they agree, 2 they differ, 1 an error.
    Compare {
        #[arg(long)]
        config: PathBuf,
        /// Connect's file (XML or CSV).
        #[arg(long)]
        connect_export: PathBuf,
    },
}

/// Not everything was carried over (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Partial(String);

pub const REPORT_FILE: &str = "migration-report.txt";

pub async fn run(command: MigrateCommand) -> Result<()> {
    match command {
        MigrateCommand::Connect { export, out, allow_partial, force, rules_script } => {
            connect(&export, &rules_script, &out, allow_partial, force)
        }
        MigrateCommand::Compare { config, connect_export } => compare(&config, &connect_export).await,
    }
}

async fn compare(config: &Path, file: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let connect = migrate::compare::read_connect_file(&file.display().to_string(), &bytes)?;
    let mut progress = crate::progress::StageProgress::default();
    let pending = orchestration::sync::preview(config, &mut progress).await?;
    progress.done();
    let ours: Vec<migrate::compare::Ours> = pending
        .iter()
        .filter(|p| p.action != "delete")
        .map(|p| migrate::compare::Ours {
            kind: p.kind.as_str().to_string(),
            resource: serde_json::Value::Object(
                p.changes.iter().map(|(path, _, new)| (path.clone(), new.clone())).collect(),
            ),
        })
        .collect();
    let comparison = migrate::compare::compare(&connect, &ours);
    crate::out!("{}", comparison.render());
    if !comparison.agrees() {
        return Err(Partial("Connect and idbridge would export different things (see above)".into()).into());
    }
    Ok(())
}

fn connect(export: &Path, scripts: &[PathBuf], out: &Path, allow_partial: bool, force: bool) -> Result<()> {
    let mut texts = Vec::new();
    for path in scripts {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        texts.push((path.display().to_string(), text));
    }
    let migration = migrate::migrate_with_scripts(export, &texts)?;
    let report = migration.report.render();
    crate::out!("{report}");
    let complete = migration.report.complete();
    if !complete && !allow_partial {
        return Err(Partial(
            "not everything could be carried over (see the report); nothing was written. Give --allow-partial to write what could be"
                .into(),
        )
        .into());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = vec![("idbridge.toml", migration.config.as_str()), (REPORT_FILE, report.as_str())];
    if !migration.rules.is_empty() {
        files.push((migrate::RULES_FILE, migration.rules.as_str()));
    }
    if !force && let Some((name, _)) = files.iter().find(|(name, _)| out.join(name).exists()) {
        anyhow::bail!(
            "{} exists already; give --force to replace the files of an earlier run",
            out.join(name).display()
        );
    }
    for (name, text) in &files {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("wrote {}", files.iter().map(|(n, _)| out.join(n).display().to_string()).collect::<Vec<_>>().join(", "));
    eprintln!("{}", checklist(&out.join("idbridge.toml")));
    if !complete {
        return Err(
            Partial("written with --allow-partial: not everything was carried over (see the report)".into()).into()
        );
    }
    Ok(())
}

/// The switch-over, step by step.
pub fn checklist(config: &Path) -> String {
    let c = config.display();
    format!(
        "Switching over from Entra Connect:
  1. Fill in the lines marked REVIEW in {c}: the directory URL, the bind password file, the tenant URL and its sync token.
  2. Side by side: Connect stays active; here staging = true imports and syncs, exporting nothing.
     Run `idbridge sync run --config {c} --once`, then `idbridge sync preview --config {c}` shows what the first export would do.
  3. Compare with what Connect exports: on its server csexport \"<Entra ID connector>\" export.xml /f:x, then
     `idbridge migrate compare --config {c} --connect-export export.xml` lists every object and attribute that differs.
  4. Swap: put Connect into staging mode (its wizard, \"Configure staging mode\"), set staging = false in {c}, run a cycle.
     The tenant matches each object by its immutableId — the sourceAnchor Connect used, which idbridge sends unchanged —
     so no object is created twice (a hard match, then only the differences are sent).
  5. Keep Connect in staging as the way back until you are sure; then uninstall it."
    )
}
