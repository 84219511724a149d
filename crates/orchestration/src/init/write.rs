//! Writing `idbridge.toml`: a new file with comments, or an existing one
//! edited in place (toml_edit), so that settings and comments the wizard
//! does not manage are kept exactly.

use super::{Context, Result};
use toml_edit::{Array, DocumentMut, Item, Table, value};

/// What the wizard decided for one directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceDraft {
    pub name: String,
    pub urls: Vec<String>,
    pub bind_dn: Option<String>,
    pub password_file: Option<String>,
    pub ca_file: Option<String>,
    pub starttls: bool,
    pub base_dns: Vec<String>,
    pub include_ous: Vec<String>,
    pub exclude_ous: Vec<String>,
    pub scope_groups: Vec<String>,
    pub filter: Option<String>,
    /// Join groups: each an AND of (source attribute, metaverse attribute).
    pub join: Vec<Vec<(String, String)>>,
    pub anchor_attribute: Option<String>,
    /// Fill empty ms-DS-ConsistencyGuid from objectGUID (AD).
    pub anchor_write_back: bool,
    pub password_hash_sync: bool,
}

/// What the wizard decided for the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    /// (SCIM URL, token file), when chosen.
    pub tenant: Option<(String, String)>,
    pub source: SourceDraft,
    pub staging: bool,
}

const HEADER: &str = "# idbridge configuration, written by `idbridge init` (run it again to change it;\n# settings it does not ask about are kept). Reference: README.md, section Configuration.\n# Secrets are never in this file: passwords and tokens are read from the files named here.\n";

fn strings(list: &[String]) -> Item {
    let mut a = Array::new();
    for s in list {
        a.push(s.as_str());
    }
    value(a)
}

fn set_or_remove(table: &mut Table, key: &str, item: Option<Item>) {
    match item {
        Some(i) => {
            table[key] = i;
        }
        None => {
            table.remove(key);
        }
    }
}

fn fill_source(t: &mut Table, s: &SourceDraft) {
    t["name"] = value(s.name.as_str());
    t["urls"] = strings(&s.urls);
    set_or_remove(t, "bind_dn", s.bind_dn.as_deref().map(value));
    set_or_remove(t, "password_file", s.password_file.as_deref().map(value));
    t["base_dns"] = strings(&s.base_dns);
    set_or_remove(t, "include_ous", (!s.include_ous.is_empty()).then(|| strings(&s.include_ous)));
    set_or_remove(t, "exclude_ous", (!s.exclude_ous.is_empty()).then(|| strings(&s.exclude_ous)));
    set_or_remove(t, "scope_groups", (!s.scope_groups.is_empty()).then(|| strings(&s.scope_groups)));
    set_or_remove(t, "filter", s.filter.as_deref().map(value));
    set_or_remove(t, "anchor_attribute", s.anchor_attribute.as_deref().map(value));
    set_or_remove(t, "anchor_write_back", s.anchor_write_back.then(|| value(true)));
    t["password_hash_sync"] = value(s.password_hash_sync);
    if s.starttls || s.ca_file.is_some() || t.contains_key("tls") {
        let tls = t.entry("tls").or_insert(Item::Table(Table::new()));
        if let Some(tls) = tls.as_table_mut() {
            tls["starttls"] = value(s.starttls);
            set_or_remove(tls, "ca_file", s.ca_file.as_deref().map(value));
        }
    }
    if s.join.is_empty() {
        t.remove("join");
    } else {
        let mut groups = Array::new();
        for group in &s.join {
            let mut pairs = Array::new();
            for (source, metaverse) in group {
                let mut pair = toml_edit::InlineTable::new();
                pair.insert("source", source.as_str().into());
                pair.insert("metaverse", metaverse.as_str().into());
                pairs.push(pair);
            }
            groups.push(pairs);
        }
        let mut join = Table::new();
        join["groups"] = value(groups);
        join["project"] = value(true);
        t["join"] = Item::Table(join);
    }
}

/// The new text of the configuration: `existing` edited, or a new file.
pub fn merge(existing: Option<&str>, draft: &Draft) -> Result<String> {
    let mut doc: DocumentMut = match existing {
        Some(text) => text.parse().context("the existing configuration is not valid TOML")?,
        None => {
            let mut d = DocumentMut::new();
            d.decor_mut().set_prefix(HEADER);
            d
        }
    };
    if let Some((url, token_file)) = &draft.tenant {
        let tenant = doc.entry("tenant").or_insert(Item::Table(Table::new()));
        if let Some(t) = tenant.as_table_mut() {
            if t.is_empty() {
                t.decor_mut().set_prefix("\n# The cloud tenant: its SCIM API and a token with the sync scope.\n");
            }
            t["url"] = value(url.as_str());
            t["token_file"] = value(token_file.as_str());
        }
    }
    let sources = doc.entry("source").or_insert(Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
    let sources = sources.as_array_of_tables_mut().context("`source` in the existing file is not [[source]] tables")?;
    let position =
        sources.iter().position(|t| t.get("name").and_then(Item::as_str) == Some(draft.source.name.as_str()));
    match position.and_then(|i| sources.get_mut(i)) {
        Some(t) => fill_source(t, &draft.source),
        None => {
            let mut t = Table::new();
            t.decor_mut().set_prefix(format!(
                "\n# Directory {:?}. Only the listed OUs (all of base_dns when none) are synchronised.\n",
                draft.source.name
            ));
            fill_source(&mut t, &draft.source);
            sources.push(t);
        }
    }
    let sync = doc.entry("sync").or_insert(Item::Table(Table::new()));
    if let Some(s) = sync.as_table_mut() {
        if s.is_empty() {
            s.decor_mut().set_prefix(
                "\n# The engine. More than deletion_threshold deletions in one export stop it before anything is\n# sent (say `sync run --allow-deletes N` once if they are right). Staging: import and sync, export nothing.\n",
            );
            s["state"] = value("idbridge-sync.db");
            s["interval_secs"] = value(5);
            s["deletion_threshold"] = value(500);
        }
        s["staging"] = value(draft.staging);
    }
    Ok(doc.to_string())
}

/// The same configuration with its sync store elsewhere, in staging mode
/// (for a preview that touches nothing real).
pub fn with_state(text: &str, state: &std::path::Path) -> Result<String> {
    let mut doc: DocumentMut = text.parse().context("the configuration being written is not valid TOML")?;
    let sync = doc.entry("sync").or_insert(Item::Table(Table::new()));
    let sync = sync.as_table_mut().context("[sync] is not a table")?;
    sync["state"] = value(state.display().to_string());
    sync["staging"] = value(true);
    Ok(doc.to_string())
}

/// The same configuration with every source that reads its password from
/// `from` reading it from `to` instead.
pub fn with_password_file(text: &str, from: &std::path::Path, to: &std::path::Path) -> Result<String> {
    let mut doc: DocumentMut = text.parse().context("the configuration being written is not valid TOML")?;
    if let Some(sources) = doc.get_mut("source").and_then(Item::as_array_of_tables_mut) {
        for t in sources.iter_mut() {
            if t.get("password_file").and_then(Item::as_str) == Some(&from.display().to_string()) {
                t["password_file"] = value(to.display().to_string());
            }
        }
    }
    Ok(doc.to_string())
}

/// The lines that differ, `-` before and `+` after (an LCS line diff).
pub fn diff(before: &str, after: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out
}

/// A systemd unit that runs the sync daemon with this configuration.
pub fn systemd_unit(exe: &str, config: &str, dir: &str) -> String {
    format!(
        "[Unit]\nDescription=idbridge directory sync\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nExecStart={exe} sync run --config {config}\nWorkingDirectory={dir}\nRestart=on-failure\nRestartSec=10\n\
         NoNewPrivileges=yes\nProtectSystem=strict\nReadWritePaths={dir}\nPrivateTmp=yes\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            tenant: Some(("http://127.0.0.1:8443/scim/v2".into(), "tenant.token".into())),
            source: SourceDraft {
                name: "corp".into(),
                urls: vec!["ldaps://dc1".into()],
                bind_dn: Some("svc@corp".into()),
                password_file: Some("corp.pw".into()),
                base_dns: vec!["DC=corp".into()],
                include_ous: vec!["OU=Staff,DC=corp".into()],
                password_hash_sync: true,
                ..SourceDraft::default()
            },
            staging: false,
        }
    }

    #[test]
    fn a_new_file_parses_and_has_comments() {
        let text = merge(None, &draft()).unwrap();
        assert!(text.starts_with("# idbridge configuration"));
        let config = config::Config::parse(&text).unwrap();
        assert_eq!(config.sources[0].include_ous, ["OU=Staff,DC=corp"]);
        assert!(config.sources[0].password_hash_sync);
        assert_eq!(config.sync.deletion_threshold, 500);
    }

    #[test]
    fn editing_keeps_what_it_does_not_manage() {
        let before = "# my notes\n[[source]]\nname = \"corp\"\nurls = [\"ldap://old\"]\npage_size = 250 # tuned\n\n[sync]\nstate = \"/var/lib/idbridge/state.db\"\ninterval_secs = 30\n";
        let after = merge(Some(before), &draft()).unwrap();
        assert!(after.contains("# my notes") && after.contains("page_size = 250 # tuned"), "{after}");
        assert!(after.contains("interval_secs = 30") && after.contains("/var/lib/idbridge/state.db"));
        assert!(after.contains("ldaps://dc1") && !after.contains("ldap://old"));
        let mut second = draft();
        second.source.name = "resource".into();
        second.source.join = vec![vec![("mail".into(), "mail".into())]];
        let both = merge(Some(&after), &second).unwrap();
        let config = config::Config::parse(&both).unwrap();
        assert_eq!(config.sources.len(), 2);
        assert!(config.sources[1].join.is_some());
        let changes = diff(&after, &both);
        assert!(changes.iter().all(|l| l.starts_with('+')), "adding a directory only adds lines: {changes:?}");
    }
}
