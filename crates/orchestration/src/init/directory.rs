//! The directory steps: connection (with a live test and server-kind
//! detection), where to read, the OU picker, filters, and how objects are
//! identified (join across directories, sourceAnchor).

use super::{Context, InitError, Result, bail};
use crate::Error;
use connector_ldap::{LdapSettings, LdapSource, RootDse, ServerKind};
use directory::Dn;

use super::Answer;
use super::write::SourceDraft;
use super::{STEPS, Wizard, optional, parse_yes_no};

/// What the connection test learnt about the server.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub kind: ServerKind,
    pub description: String,
    pub naming_contexts: Vec<String>,
    pub default_naming_context: Option<String>,
}

impl ServerFacts {
    fn from_root_dse(dse: &RootDse) -> ServerFacts {
        let naming_contexts: Vec<String> = dse
            .naming_contexts
            .iter()
            .filter(|c| {
                // Configuration, schema and DNS partitions hold no people.
                let lower = c.to_ascii_lowercase();
                lower != "cn=config"
                    && lower != "cn=accesslog"
                    && !lower.starts_with("cn=configuration,")
                    && !lower.starts_with("cn=schema,")
                    && !lower.starts_with("dc=domaindnszones,")
                    && !lower.starts_with("dc=forestdnszones,")
            })
            .cloned()
            .collect();
        let default_naming_context = dse
            .default_naming_context
            .clone()
            .or_else(|| (naming_contexts.len() == 1).then(|| naming_contexts[0].clone()));
        ServerFacts { kind: dse.kind(), description: dse.describe(), naming_contexts, default_naming_context }
    }
}

/// The choices for `--join`, as join groups of (source, metaverse) attribute pairs.
pub fn join_groups(choice: &str) -> Result<Vec<Vec<(String, String)>>> {
    let pair = |s: &str, m: &str| (s.to_string(), m.to_string());
    Ok(match choice.trim().to_ascii_lowercase().as_str() {
        "none" | "" | "-" => Vec::new(),
        "mail" => vec![vec![pair("mail", "mail")]],
        // A resource-forest mailbox names its account-forest user by SID.
        "objectsid" => vec![vec![pair("msExchMasterAccountSID", "onPremisesSecurityIdentifier")]],
        "sam" => vec![vec![pair("sAMAccountName", "onPremisesSamAccountName"), pair("mailNickname", "mailNickname")]],
        other => match other.strip_prefix("attribute:") {
            Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                let original = choice.trim().get("attribute:".len()..).unwrap_or(name);
                vec![vec![pair(original, &original.replace('-', "_"))]]
            }
            _ => bail!("--join {choice:?}: use none, mail, objectsid, sam or attribute:NAME"),
        },
    })
}

/// The `--join` word that describes configured join groups.
fn join_choice(groups: &[Vec<(String, String)>]) -> String {
    for word in ["mail", "objectsid", "sam"] {
        if join_groups(word).is_ok_and(|g| g == groups) {
            return word.to_string();
        }
    }
    match groups {
        [] => "none".into(),
        [g] if g.len() == 1 => format!("attribute:{}", g[0].0),
        _ => "mail".into(),
    }
}

/// The anchor choices this kind of server offers, the default first.
fn anchor_choices(kind: ServerKind) -> &'static [&'static str] {
    match kind {
        ServerKind::ActiveDirectory => &["consistencyguid", "objectguid"],
        ServerKind::Ds389 => &["nsuniqueid", "entryuuid"],
        ServerKind::OpenLdap | ServerKind::Other => &["entryuuid"],
    }
}

/// `--anchor` → (anchor_attribute to configure, write objectGUID back into ms-DS-ConsistencyGuid).
pub fn anchor_setting(kind: ServerKind, choice: &str) -> Result<(Option<String>, bool)> {
    let c = choice.trim();
    match c.to_ascii_lowercase().as_str() {
        "consistencyguid" if kind == ServerKind::ActiveDirectory => Ok((None, true)),
        "objectguid" if kind == ServerKind::ActiveDirectory => Ok((Some("objectGUID".into()), false)),
        "entryuuid" if kind != ServerKind::ActiveDirectory => Ok((None, false)),
        "nsuniqueid" if kind == ServerKind::Ds389 => Ok((None, false)),
        lower => match lower.strip_prefix("attribute:") {
            Some(name) if !name.is_empty() => {
                Ok((Some(c.get("attribute:".len()..).unwrap_or(name).to_string()), false))
            }
            _ => bail!(
                "--anchor {choice:?} does not fit a {kind} server: use {} or attribute:NAME",
                anchor_choices(kind).join(", ")
            ),
        },
    }
}

/// The `--anchor` word for a configured source.
fn anchor_choice(kind: ServerKind, source: &SourceDraft) -> String {
    match (&source.anchor_attribute, kind) {
        (None, ServerKind::ActiveDirectory) => "consistencyguid".into(),
        (Some(a), ServerKind::ActiveDirectory) if a.eq_ignore_ascii_case("objectGUID") => "objectguid".into(),
        (None, _) => anchor_choices(kind)[0].into(),
        (Some(a), _) => format!("attribute:{a}"),
    }
}

fn draft_of(existing: &config::SourceConfig) -> SourceDraft {
    let groups = existing
        .join
        .as_ref()
        .map(|j| j.groups.iter().map(|g| g.iter().map(|p| (p.source.clone(), p.metaverse.clone())).collect()).collect())
        .unwrap_or_default();
    SourceDraft {
        name: existing.name.clone(),
        urls: existing.urls.clone(),
        bind_dn: existing.bind_dn.clone(),
        password_file: existing.password_file.as_ref().map(|p| p.display().to_string()),
        ca_file: existing.tls.ca_file.as_ref().map(|p| p.display().to_string()),
        starttls: existing.tls.starttls,
        base_dns: existing.base_dns.clone(),
        include_ous: existing.include_ous.clone(),
        exclude_ous: existing.exclude_ous.clone(),
        scope_groups: existing.scope_groups.clone(),
        filter: existing.filter.clone(),
        join: groups,
        anchor_attribute: existing.anchor_attribute.clone(),
        anchor_write_back: existing.anchor_write_back,
        password_hash_sync: existing.password_hash_sync,
    }
}

/// A list flag's values, or the configured list, as one comma-separated answer.
fn listed(given: &[String], configured: &[String]) -> (Option<String>, String) {
    let given = (!given.is_empty()).then(|| given.join(";"));
    (given, configured.join(";"))
}

fn split_list(text: &str) -> Vec<String> {
    text.split(';').map(str::trim).filter(|s| !s.is_empty() && *s != "-").map(str::to_string).collect()
}

impl Wizard {
    /// The connector settings the draft gives for this source, exactly as the
    /// written file will (the same parser reads both).
    pub(super) fn settings(&self) -> Result<LdapSettings> {
        let text = self.merged()?;
        let mut config = config::Config::parse(&text).context("the configuration being written")?;
        let name = self.source.name.clone();
        let source = config.sources.iter_mut().find(|s| s.name == name).context("the directory being configured")?;
        match &self.typed_password {
            // Its file is written only at the end: take the password from memory.
            Some((file, secret)) if source.password_file.as_deref() == Some(file.as_path()) => {
                source.password_file = None;
                let mut settings = source.to_settings_without_password()?;
                settings.password = Some(secret.clone());
                Ok(settings)
            }
            _ => Ok(source.to_settings()?),
        }
    }

    pub(super) fn kind(&self) -> ServerKind {
        self.server.as_ref().map(|s| s.kind).unwrap_or(ServerKind::Other)
    }

    pub(super) async fn connection_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(2, STEPS, "The on-premises directory");
        let configured: Vec<String> = self
            .existing_config
            .as_ref()
            .map(|c| c.sources.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default();
        if !configured.is_empty() {
            self.ask.say(&format!(
                "Configured already: {}. Give one of these names to change it, a new name to add a directory.",
                configured.join(", ")
            ));
        }
        let default_name = configured.first().cloned().unwrap_or_else(|| "corp".into());
        let Answer::Value(name) = self.ask.ask(
            "Directory name",
            "--name",
            self.args.name.clone(),
            Some(default_name),
            "a short name for logs and the sync state, like corp or resource",
        )?
        else {
            return Ok(Answer::Back);
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(self.failed(format!("--name {name:?}: letters, digits, '-' and '_' only")));
        }
        let previous = match self.existing_source(&name) {
            Some(s) => draft_of(s),
            None if self.source.name == name => self.source.clone(),
            None => SourceDraft { name: name.clone(), ..SourceDraft::default() },
        };
        let Answer::Value(urls) = self.ask.ask(
            "Server URL(s), comma-separated for failover",
            "--directory",
            self.args.directory.clone(),
            (!previous.urls.is_empty()).then(|| previous.urls.join(",")),
            "ldaps://dc1.corp.example (port 636) or ldap://… with StartTLS; several are tried in order",
        )?
        else {
            return Ok(Answer::Back);
        };
        let urls: Vec<String> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect();
        if urls.is_empty() {
            return Err(self.failed("give at least one ldap:// or ldaps:// URL".into()));
        }
        if let Some(bad) = urls.iter().find(|u| !(u.starts_with("ldap://") || u.starts_with("ldaps://"))) {
            return Err(self.failed(format!("{bad:?} is not an ldap:// or ldaps:// URL")));
        }
        let mut starttls = false;
        if urls.iter().any(|u| u.starts_with("ldap://")) {
            let loopback = urls.iter().all(|u| {
                connector_ldap::connect::host_of(u)
                    .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "::1")
            });
            let default = previous.starttls || (!loopback && previous.urls.is_empty());
            let given = self.args.starttls.as_deref().map(|t| parse_yes_no("--starttls", t)).transpose()?;
            let Answer::Value(s) =
                self.ask.confirm("Use StartTLS on ldap:// (encrypts the bind)", "--starttls", given, default)?
            else {
                return Ok(Answer::Back);
            };
            starttls = s;
            if !starttls && !loopback {
                self.ask.warn("without TLS the bind password crosses the network in clear text");
            }
        }
        let tls = starttls || urls.iter().any(|u| u.starts_with("ldaps://"));
        let mut ca_file = None;
        if tls {
            let Answer::Value(ca) = self.ask.ask(
                "CA certificate (PEM) that signed the server's certificate ('-' = the system's)",
                "--ca-file",
                self.args.ca_file.clone(),
                Some(previous.ca_file.clone().unwrap_or_default()),
                "the file with your enterprise CA; the system's trusted CAs are used without one",
            )?
            else {
                return Ok(Answer::Back);
            };
            ca_file = optional(ca).map(|c| self.absolute(&c).display().to_string());
        }
        let Answer::Value(bind) = self.ask.ask(
            "Bind account (DN, or user@domain on AD; '-' = anonymous)",
            "--bind-dn",
            self.args.bind_dn.clone(),
            Some(previous.bind_dn.clone().unwrap_or_default()),
            "a dedicated service account; on AD it needs the replication rights for deltas and password hash sync",
        )?
        else {
            return Ok(Answer::Back);
        };
        let bind_dn = optional(bind);
        let mut password_file = None;
        if bind_dn.is_some() {
            let typed_here = self.typed_password.as_ref().map(|(f, _)| f.display().to_string());
            let offered = self.args.password_file.as_ref().map(|p| p.display().to_string());
            let default = previous
                .password_file
                .clone()
                .or(typed_here.clone())
                .or_else(|| self.ask.interactive().then(String::new));
            let Answer::Value(file) = self.ask.ask(
                if self.ask.interactive() {
                    "File holding that account's password (Enter with none: type it)"
                } else {
                    "File holding that account's password"
                },
                "--password-file",
                offered,
                default,
                "one line with the password; keep it readable by the idbridge user only (chmod 600)",
            )?
            else {
                return Ok(Answer::Back);
            };
            let path = match optional(file) {
                Some(file) => self.absolute(&file),
                None if self.ask.interactive() => {
                    let path = self.config_dir.join(format!("{name}.password"));
                    let prompt = format!(
                        "Password for {} (not shown; saved to {}, mode 0600): ",
                        bind_dn.as_deref().unwrap_or_default(),
                        path.display()
                    );
                    let typed = self.ask.password(&prompt)?;
                    if typed.is_empty() {
                        return Err(self.failed("no password was typed".into()));
                    }
                    self.typed_password = Some((path.clone(), connector_ldap::Secret::new(typed)));
                    path
                }
                None => return Err(self.failed("a bind account needs --password-file".into())),
            };
            let typed = self.typed_password.as_ref().is_some_and(|(f, _)| *f == path);
            if !typed && let Err(e) = std::fs::metadata(&path) {
                return Err(self.failed(format!("cannot read the password file {}: {e}", path.display())));
            }
            password_file = Some(path.display().to_string());
        }
        self.source = SourceDraft { name, urls, bind_dn, password_file, ca_file, starttls, ..previous };
        let mut settings = self.settings()?;
        settings.base_dns.clear();
        self.ask.say("Connecting …");
        match connector_ldap::connect::connect(&settings).await {
            Ok(session) => {
                let facts = ServerFacts::from_root_dse(&session.root_dse);
                self.ask.good(&format!("connected to {} and bound: {}", session.url, facts.description));
                if facts.kind == ServerKind::Other {
                    self.ask.warn("an unknown kind of server: it is read like OpenLDAP (entryUUID, no delta tracking)");
                }
                self.server = Some(facts);
                Ok(Answer::Value(()))
            }
            Err(e) => Err(self.failed(format!("cannot connect: {e}"))),
        }
    }

    pub(super) fn base_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(3, STEPS, "Where to read");
        let facts = self.server.clone().context("no server facts (the connection step did not run)")?;
        if !facts.naming_contexts.is_empty() {
            self.ask.say(&format!("The server holds: {}", facts.naming_contexts.join("; ")));
        }
        let (given, configured) = listed(&self.args.base_dn, &self.source.base_dns);
        let default = if configured.is_empty() { facts.default_naming_context.clone() } else { Some(configured) };
        let Answer::Value(text) = self.ask.ask(
            "Base DN(s) to read, ';'-separated",
            "--base-dn",
            given,
            default,
            "the domain's naming context, or a narrower subtree",
        )?
        else {
            return Ok(Answer::Back);
        };
        let bases = split_list(&text);
        if bases.is_empty() {
            return Err(self.failed("give at least one base DN".into()));
        }
        for b in &bases {
            if let Err(e) = Dn::parse(b) {
                return Err(self.failed(format!("base DN {b:?}: {e}")));
            }
        }
        self.source.base_dns = bases;
        Ok(Answer::Value(()))
    }

    pub(super) async fn ou_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(4, STEPS, "Which OUs");
        let mut settings = self.settings()?;
        settings.include_ous.clear();
        settings.exclude_ous.clear();
        settings.filter = None;
        let mut source = LdapSource::new(settings)?;
        let tree = match source.ou_tree().await {
            Ok(t) => t,
            Err(e) => return Err(self.failed(format!("cannot read the OU tree: {e}"))),
        };
        self.ask.say(&format!(
            "{:>3}  {:<46} {:>8} {:>8} {:>8}",
            "#", "OU (objects in its subtree)", "users", "groups", "contacts"
        ));
        for (i, ou) in tree.iter().enumerate() {
            let rdn = if ou.depth == 0 {
                ou.dn.to_string()
            } else {
                ou.dn.to_string().split(',').next().unwrap_or_default().to_string()
            };
            let label: String = format!("{}{}", "  ".repeat(ou.depth.min(8)), rdn).chars().take(46).collect();
            self.ask.say(&format!("{:>3}  {:<46} {:>8} {:>8} {:>8}", i + 1, label, ou.users, ou.groups, ou.contacts));
        }
        let pick = |text: &str| -> Result<Vec<String>, String> {
            let mut out = Vec::new();
            // Numbers may be comma-separated; DNs contain commas, so they are ';'-separated.
            let numbers_only = text.chars().all(|c| c.is_ascii_digit() || c == ',' || c == ';' || c == ' ');
            let items = if numbers_only { split_list(&text.replace(',', ";")) } else { split_list(text) };
            for item in items {
                let dn = match item.parse::<usize>() {
                    Ok(n) => match n.checked_sub(1).and_then(|i| tree.get(i)) {
                        Some(ou) => ou.dn.to_string(),
                        None => return Err(format!("{n} is not a number from the list (1–{})", tree.len())),
                    },
                    Err(_) => match Dn::parse(&item) {
                        Ok(dn) if tree.iter().any(|o| o.dn == dn) => dn.to_string(),
                        Ok(_) => return Err(format!("{item:?} is not an OU or container under the base DN(s)")),
                        Err(e) => return Err(format!("{item:?}: {e}")),
                    },
                };
                out.push(dn);
            }
            Ok(out)
        };
        let (given, configured) = listed(&self.args.include_ou, &self.source.include_ous);
        let Answer::Value(text) = self.ask.ask(
            "Include OUs (numbers or DNs, ';'-separated; '-' = everything)",
            "--include-ou",
            given,
            Some(configured),
            "only objects in these subtrees sync; new child OUs are included automatically",
        )?
        else {
            return Ok(Answer::Back);
        };
        let include = match pick(&text) {
            Ok(list) => list,
            Err(e) => return Err(self.failed(e)),
        };
        let (given, configured) = listed(&self.args.exclude_ou, &self.source.exclude_ous);
        let Answer::Value(text) = self.ask.ask(
            "Exclude OUs (numbers or DNs; '-' = none)",
            "--exclude-ou",
            given,
            Some(configured),
            "subtrees left out even inside an included OU",
        )?
        else {
            return Ok(Answer::Back);
        };
        let exclude = match pick(&text) {
            Ok(list) => list,
            Err(e) => return Err(self.failed(e)),
        };
        let counted = |dn: &str| tree.iter().find(|o| o.dn.to_string() == dn).map(|o| (o.users, o.groups, o.contacts));
        let total = |list: &[String]| {
            list.iter().filter_map(|d| counted(d)).fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
        };
        let (mut u, mut g, mut c) = if include.is_empty() {
            tree.iter()
                .filter(|o| o.depth == 0)
                .fold((0, 0, 0), |a, o| (a.0 + o.users, a.1 + o.groups, a.2 + o.contacts))
        } else {
            total(&include)
        };
        let (xu, xg, xc) = total(&exclude);
        (u, g, c) = (u.saturating_sub(xu), g.saturating_sub(xg), c.saturating_sub(xc));
        self.ask.good(&format!("in scope: about {u} users, {g} groups, {c} contacts"));
        self.source.include_ous = include;
        self.source.exclude_ous = exclude;
        Ok(Answer::Value(()))
    }

    pub(super) fn filter_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(5, STEPS, "Filtering (optional)");
        let Answer::Value(group) = self.ask.ask(
            "Only members of this group (DN; '-' = no group filter)",
            "--scope-group",
            self.args.scope_group.clone(),
            Some(self.source.scope_groups.first().cloned().unwrap_or_default()),
            "for a pilot: only direct members of the group sync (nested groups are not expanded)",
        )?
        else {
            return Ok(Answer::Back);
        };
        let groups: Vec<String> = optional(group).into_iter().collect();
        for g in &groups {
            if let Err(e) = Dn::parse(g) {
                return Err(self.failed(format!("--scope-group {g:?}: {e}")));
            }
        }
        let Answer::Value(filter) = self.ask.ask(
            "Only objects matching this LDAP filter ('-' = no filter)",
            "--filter",
            self.args.filter.clone(),
            Some(self.source.filter.clone().unwrap_or_default()),
            "e.g. (department=Sales); it is combined with the object-kind filter",
        )?
        else {
            return Ok(Answer::Back);
        };
        let filter = optional(filter);
        if let Some(f) = &filter
            && (!f.starts_with('(') || !f.ends_with(')') || f.matches('(').count() != f.matches(')').count())
        {
            return Err(self.failed(format!(
                "--filter {f:?} is not an LDAP filter: it needs balanced parentheses, like (department=Sales)"
            )));
        }
        self.source.scope_groups = groups;
        self.source.filter = filter;
        Ok(Answer::Value(()))
    }

    /// How objects are told apart: join with other directories, and the sourceAnchor.
    pub(super) async fn identity_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(6, STEPS, "Identifying people");
        let others = self.other_sources();
        if others.is_empty() {
            self.source.join.clear();
        } else {
            self.ask.say(&format!(
                "A person may exist in {} too. How are the same people recognised?\n  none  mail  objectsid (msExchMasterAccountSID = objectSid of the other forest)\n  sam (sAMAccountName + mailNickname)  attribute:NAME",
                others.join(", ")
            ));
            let default = if self.source.join.is_empty() { "mail".into() } else { join_choice(&self.source.join) };
            let Answer::Value(choice) = self.ask.ask(
                "Match by",
                "--join",
                self.args.join.clone(),
                Some(default),
                "with none, every object of this directory becomes its own cloud object",
            )?
            else {
                return Ok(Answer::Back);
            };
            match join_groups(&choice) {
                Ok(groups) => self.source.join = groups,
                Err(e) => return Err(self.failed(e.to_string())),
            }
        }
        let kind = self.kind();
        let choices = anchor_choices(kind);
        self.ask.say(&format!(
            "The sourceAnchor ties each person to their cloud object for life; it must never change.\n  choices here: {}, attribute:NAME",
            choices.join(", ")
        ));
        if kind == ServerKind::ActiveDirectory {
            self.ask.say(
                "  consistencyguid: ms-DS-ConsistencyGuid, filled from objectGUID where empty (survives a forest move)",
            );
        }
        let Answer::Value(choice) = self.ask.ask(
            "sourceAnchor",
            "--anchor",
            self.args.anchor.clone(),
            Some(anchor_choice(kind, &self.source)),
            "changing it after the first sync would make every object look new",
        )?
        else {
            return Ok(Answer::Back);
        };
        match anchor_setting(kind, &choice) {
            Ok((attribute, write_back)) => {
                self.source.anchor_attribute = attribute;
                self.source.anchor_write_back = write_back;
                Ok(Answer::Value(()))
            }
            Err(e) => Err(self.failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_words_round_trip() {
        for word in ["none", "mail", "objectsid", "sam", "attribute:employeeNumber"] {
            assert_eq!(join_choice(&join_groups(word).unwrap()), word);
        }
        assert!(join_groups("bogus").is_err());
        assert_eq!(join_groups("attribute:extensionAttribute1").unwrap()[0][0].1, "extensionAttribute1");
    }

    #[test]
    fn anchors_fit_the_server() {
        assert_eq!(anchor_setting(ServerKind::ActiveDirectory, "consistencyguid").unwrap(), (None, true));
        assert_eq!(anchor_setting(ServerKind::OpenLdap, "entryuuid").unwrap(), (None, false));
        assert!(anchor_setting(ServerKind::OpenLdap, "consistencyguid").is_err());
        assert_eq!(
            anchor_setting(ServerKind::OpenLdap, "attribute:employeeNumber").unwrap(),
            (Some("employeeNumber".into()), false)
        );
    }
}
