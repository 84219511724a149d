//! `idbridge idfix scan|apply|undo`: the command line of
//! `orchestration::idfix` (find what would break directory sync, apply
//! chosen fixes with an undo log, undo exactly).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};
use idfix::{Mode, Options};
use orchestration::idfix::{ApplyRequest, ScanInput, ScanRequest};

use crate::progress::StageProgress;

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

impl From<Format> for orchestration::idfix::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Table => orchestration::idfix::Format::Table,
            Format::Csv => orchestration::idfix::Format::Csv,
            Format::Json => orchestration::idfix::Format::Json,
        }
    }
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
            let input = match (config, ldif) {
                (_, Some(path)) => ScanInput::Ldif(path),
                (Some(path), None) => ScanInput::Config { path, source },
                (None, None) => bail!("give --config idbridge.toml (the configured directories) or --ldif FILE"),
            };
            let started = Instant::now();
            let mut progress = StageProgress::default();
            let request = ScanRequest { input, options, format: format.into(), out, fixes_ldif };
            let report = orchestration::idfix::scan(request, &mut progress).await?;
            progress.done();
            let secs = started.elapsed().as_secs_f64();
            let by_kind: Vec<String> = report.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
            eprintln!(
                "idfix: {} objects checked, {} skipped (system objects), {} findings{} in {:.1} s ({:.0} objects/s)",
                report.checked,
                report.skipped,
                report.findings,
                if by_kind.is_empty() { String::new() } else { format!(" ({})", by_kind.join(", ")) },
                secs,
                (report.checked + report.skipped) as f64 / secs.max(1e-9)
            );
            let tld = report.by_kind.get("TopLevelDomain").copied().unwrap_or(0);
            if tld * 2 > report.findings && tld > 10 {
                eprintln!(
                    "idfix: most findings are addresses in a top-level domain the cloud will not accept (such as .test or .local); if it is a lab's own, declare it with --allow-tld TLD"
                );
            }
            Ok(())
        }
        IdfixCommand::Apply { findings, config, source, only, dry_run, undo_dir } => {
            if dry_run {
                let shown = orchestration::idfix::dry_run(&findings, &only, std::io::stdout())?;
                if shown == 0 {
                    eprintln!("nothing to apply (no finding with a proposed fix matches)");
                } else {
                    eprintln!("dry run: {shown} changes shown, nothing written");
                }
                return Ok(());
            }
            let request = ApplyRequest { findings, config, source, only, undo_dir };
            let report = orchestration::idfix::apply(&request, &mut |line| eprintln!("{line}")).await?;
            let Some(log) = report.undo_log else {
                eprintln!("nothing to apply (no finding with a proposed fix matches)");
                return Ok(());
            };
            eprintln!(
                "{} fixes applied, {} skipped (changed since the scan), {} failed; undo log: {}",
                report.applied,
                report.changed_since,
                report.failed,
                log.display()
            );
            if report.failed > 0 {
                bail!("{} fixes failed (listed above)", report.failed);
            }
            Ok(())
        }
        IdfixCommand::Undo { log, config, source } => {
            let report =
                orchestration::idfix::undo(&log, &config, source.as_deref(), &mut |line| eprintln!("{line}")).await?;
            eprintln!(
                "{} changes restored, {} refused (changed since), {} never applied (nothing to undo)",
                report.restored, report.refused, report.not_applied
            );
            if report.refused > 0 {
                bail!("{} changes could not be undone because their values changed since the fix", report.refused);
            }
            Ok(())
        }
    }
}
