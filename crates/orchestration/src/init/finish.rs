//! The last step: rights checks with exact fixes, a preview of the first
//! sync, the change to the file, and — only after a yes — writing it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Context, InitError, Result};
use connector_ldap::LdapSource;

use super::Answer;
use super::{STEPS, Wizard, optional, write};

/// Rows of the preview shown before writing.
const PREVIEW_ROWS: usize = 8;

/// Removes the preview's scratch directory.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Wizard {
    pub(super) async fn finish_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(9, STEPS, "Permissions, preview, and writing the file");
        if let Some(back) = self.check_rights().await? {
            return Ok(back);
        }
        self.preview().await?;
        let after = self.merged()?;
        self.show_change(&after);
        let Answer::Value(unit) = self.ask.ask(
            "Also write a systemd unit for the sync daemon (path; '-' = no)",
            "--systemd-unit",
            self.args.systemd_unit.clone(),
            Some(String::new()),
            "e.g. /etc/systemd/system/idbridge-sync.service",
        )?
        else {
            return Ok(Answer::Back);
        };
        self.systemd_unit = optional(unit).map(|u| self.absolute(&u));
        let Answer::Value(yes) = self.ask.confirm(
            &format!("Write {}", self.config_path.display()),
            "--yes",
            self.args.yes.then_some(true),
            true,
        )?
        else {
            return Ok(Answer::Back);
        };
        if !yes {
            return Err(InitError::Declined);
        }
        self.write(&after).await?;
        Ok(Answer::Value(()))
    }

    /// Some(Back) when the administrator goes back to change settings.
    async fn check_rights(&mut self) -> Result<Option<Answer<()>>> {
        let settings = self.settings()?;
        let mut source = LdapSource::new(settings)?;
        let mut problems = source
            .check_rights(self.source.password_hash_sync)
            .await
            .with_context(|| format!("checking the rights of the bind account on {:?}", self.source.name))?;
        if self.source.anchor_write_back
            && let Some(p) = source.check_anchor_write_back().await?
        {
            problems.push(p);
        }
        if self.password_writeback
            && let Some(p) = source.check_reset_password_right().await?
        {
            problems.push(p);
        }
        let blocking: Vec<_> = problems.iter().filter(|p| p.blocking).collect();
        for p in &problems {
            let line = format!("missing right: {} on {}\n    fix: {}", p.right, p.object, p.fix);
            if p.blocking { self.ask.bad(&line) } else { self.ask.warn(&line) }
        }
        if problems.is_empty() {
            self.ask.good("the bind account has every right the chosen settings need");
        }
        if blocking.is_empty() {
            return Ok(None);
        }
        let summary = blocking
            .iter()
            .map(|p| format!("missing right: {} on {}; fix: {}", p.right, p.object, p.fix))
            .collect::<Vec<_>>()
            .join("\n");
        if !self.ask.interactive() {
            return Err(InitError::Blocked(summary));
        }
        let answer = self.ask.ask(
            "Grant the rights, then press Enter to check again ('<' to change the settings)",
            "",
            None,
            Some(String::new()),
            "the lines above say which right is missing on which object, and the command that grants it",
        )?;
        match answer {
            Answer::Back => Ok(Some(Answer::Back)),
            Answer::Value(_) => Err(InitError::Retry),
        }
    }

    /// Imports and syncs the draft into a scratch store (staging: nothing is
    /// sent) and shows what the first export would do.
    async fn preview(&mut self) -> Result<()> {
        // It holds a stand-in for the bind password: private, never reused.
        let dir = config::files::private_temp_dir("idbridge-init")?;
        let scratch = Scratch(dir);
        let mut text = self.merged()?;
        text = write::with_state(&text, &scratch.0.join("preview.db"))?;
        if let Some((file, secret)) = &self.typed_password {
            // The typed password's own file is written only at the end.
            let stand_in = scratch.0.join("bind.password");
            config::files::write_secret(&stand_in, secret.expose().as_bytes())?;
            text = write::with_password_file(&text, file, &stand_in)?;
        }
        let path = scratch.0.join("preview.toml");
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        let objects = self.survey.as_ref().map(|s| s.users + s.groups + s.contacts).unwrap_or_default();
        self.ask.say(&format!(
            "Preview: importing and synchronising {objects} objects{} into a scratch store (nothing is sent) …",
            if self.other_sources().is_empty() { "" } else { " and the other configured directories" }
        ));
        let pending =
            crate::sync::preview(&path, &mut sync::engine::Quiet).await.context("the preview of the first sync")?;
        let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for p in &pending {
            *counts.entry((p.action, p.kind.as_str())).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|((a, k), n)| format!("{n} {k}s to {a}")).collect();
        let what = if self.existing.is_some() {
            "synchronised from scratch, the whole configuration would send (the running sync store sends only what changed)"
        } else {
            "the first sync would send"
        };
        self.ask.good(&format!("{what}: {}", if parts.is_empty() { "nothing".to_string() } else { parts.join(", ") }));
        for p in pending.iter().take(PREVIEW_ROWS) {
            let row = format!("  {} {} {}", p.action, p.kind.as_str(), p.object);
            self.ask.say(&row.chars().take(78).collect::<String>());
        }
        if pending.len() > PREVIEW_ROWS {
            self.ask.say(&format!(
                "  … and {} more (all of them: idbridge sync preview --config {})",
                pending.len() - PREVIEW_ROWS,
                self.config_path.display()
            ));
        }
        let threshold = self.existing_config.as_ref().map(|c| c.sync.deletion_threshold).unwrap_or(500);
        self.ask.say(&format!(
            "Deletion threshold: {threshold}. If one export would delete more than {threshold} cloud objects (a wrong\nfilter, an OU moved away), idbridge stops before sending anything and says so;\n`idbridge sync run --allow-deletes N` lets such an export through once."
        ));
        Ok(())
    }

    /// The change to the file, and whether a full sync follows.
    fn show_change(&self, after: &str) {
        match &self.existing {
            None => {
                let lines = after.lines().count();
                self.ask.say(&format!("{} would be created ({lines} lines).", self.config_path.display()));
            }
            Some(before) => {
                let changes = write::diff(before, after);
                if changes.is_empty() {
                    self.ask.good("the file would not change");
                    return;
                }
                self.ask.say(&format!("Changes to {}:", self.config_path.display()));
                for line in changes.iter().take(40) {
                    self.ask.say(&format!("  {}", line.chars().take(76).collect::<String>()));
                }
                if changes.len() > 40 {
                    self.ask.say(&format!("  … {} more changed lines", changes.len() - 40));
                }
                let full = match self.existing_source(&self.source.name) {
                    None => format!(
                        "{:?} is new: the next cycle imports it in full; other directories continue with deltas",
                        self.source.name
                    ),
                    Some(_) => format!(
                        "the settings of {:?} change: the next cycle runs a full import and sync of it (nothing is deleted unless it left the scope)",
                        self.source.name
                    ),
                };
                self.ask.say(&full);
            }
        }
    }

    async fn write(&self, text: &str) -> Result<()> {
        if let Some((file, secret)) = &self.typed_password
            && text.contains(&file.display().to_string())
        {
            config::files::write_secret(file, format!("{}\n", secret.expose()).as_bytes())?;
            self.ask.good(&format!("wrote the bind password to {} (mode 0600)", file.display()));
        }
        for note in self.apply_local_tenant()? {
            self.ask.good(&note);
        }
        for note in self.apply_remote_tenant().await? {
            self.ask.good(&note);
        }
        if let Some(before) = &self.existing {
            let backup = self.config_path.with_extension("toml.bak");
            std::fs::write(&backup, before).with_context(|| format!("cannot write the backup {}", backup.display()))?;
            self.ask.good(&format!("the previous version is in {}", backup.display()));
        }
        config::files::write_atomically(&self.config_path, text.as_bytes())?;
        self.ask.good(&format!("wrote {}", self.config_path.display()));
        if let Some(unit) = &self.systemd_unit {
            let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "idbridge".into());
            let body = write::systemd_unit(
                &exe,
                &self.config_path.display().to_string(),
                &self.config_dir.display().to_string(),
            );
            std::fs::write(unit, body).with_context(|| format!("cannot write {}", unit.display()))?;
            self.ask.good(&format!(
                "wrote {} (then: systemctl daemon-reload && systemctl enable --now {})",
                unit.display(),
                unit.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            ));
        }
        self.ask.say("");
        self.ask.say("Next:");
        for line in self.sign_in_instructions() {
            self.ask.say(&format!("  {line}"));
        }
        let config = self.config_path.display();
        if self.tenant_data().is_some() {
            self.ask.say("  (start the tenant first, as said above)");
        }
        self.ask.say(&format!("  idbridge sync run --config {config} --once     # the first sync, then look at it:"));
        self.ask.say(&format!("  idbridge sync status --config {config}"));
        self.ask
            .say(&format!("  idbridge sync run --config {config}            # the daemon: delta cycles back to back"));
        Ok(())
    }
}
