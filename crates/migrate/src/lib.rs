//! From Entra Connect to idbridge: the configuration Connect exports with
//! `Get-ADSyncServerConfiguration` becomes an `idbridge.toml`, a rules file
//! and a report (`idbridge migrate connect`).
//!
//! - [`export`]: reading the folder (bounded XML, errors name file and element).
//! - [`known`]: the out-of-box rules — what idbridge has in their place, and
//!   the fingerprints that tell an edited one from the original.
//! - [`names`]: attribute names across the bridge (metaverse, tenant).
//! - [`translate`]: the translation; every generated rule is loaded by
//!   `sync`'s rule loader before anything is returned.
//! - [`report`]: what became of every connector, rule and flow.
//! - [`script`]: Connect's PowerShell rule scripts, read as data.
//! - [`compare`]: Connect's pending exports (csexport XML, or its CSV) against idbridge's.

pub mod compare;
pub mod export;
pub mod known;
pub mod names;
pub mod report;
pub mod script;
pub mod translate;

use std::path::Path;

pub use export::{ConnectExport, ExportError};
pub use report::{Outcome, Report};
pub use translate::{Migration, RULES_FILE};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("{0}: the export has no Active Directory connector, so there is no directory to synchronise")]
    NoDirectory(String),
    /// A translation that the rule loader refuses is a fault here, not in the export.
    #[error("the translated rules do not load ({0}); please report this with the export's rule")]
    Untranslatable(String),
}

/// Reads the export in `dir` and translates it.
pub fn migrate(dir: &Path) -> Result<Migration, MigrateError> {
    migrate_with_scripts(dir, &[])
}

/// [`migrate`], with the rules of Connect's PowerShell rule scripts
/// (`(file name, text)`) added to the export's — one with the identifier of
/// an exported rule replaces it.
pub fn migrate_with_scripts(dir: &Path, scripts: &[(String, String)]) -> Result<Migration, MigrateError> {
    let mut export = export::read(dir)?;
    for (name, text) in scripts {
        for rule in script::read_rules(name, text)? {
            match export.rules.iter_mut().find(|r| !rule.id.is_empty() && r.id == rule.id) {
                Some(slot) => *slot = rule,
                None => export.rules.push(rule),
            }
        }
    }
    if !export.connectors.iter().any(|c| c.kind == export::ConnectorKind::ActiveDirectory) {
        return Err(MigrateError::NoDirectory(dir.display().to_string()));
    }
    let migration = translate::translate(&export);
    if !migration.rules.is_empty() {
        sync::rules::RuleSet::load(&[(RULES_FILE.to_string(), migration.rules.clone())])
            .map_err(|e| MigrateError::Untranslatable(e.to_string()))?;
    }
    Ok(migration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/custom")
    }

    /// A copy of the fixture in a temporary folder, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "idbridge-migrate-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            for sub in ["Connectors", "SynchronizationRules", "GlobalSettings"] {
                std::fs::create_dir_all(dir.join(sub)).unwrap();
                for f in std::fs::read_dir(fixture().join(sub)).unwrap() {
                    let f = f.unwrap();
                    std::fs::copy(f.path(), dir.join(sub).join(f.file_name())).unwrap();
                }
            }
            Scratch(dir)
        }
        fn write(&self, relative: &str, text: &str) {
            std::fs::write(self.0.join(relative), text).unwrap();
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rule<'a>(report: &'a Report, name: &str) -> &'a report::RuleReport {
        report.rules.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("{name} is in the report"))
    }

    #[test]
    fn custom_export_translates_rule_by_rule_and_loads() {
        let m = migrate(&fixture()).unwrap();
        let c = m.report.counts();
        assert_eq!(
            (c.imported, c.translated, c.built_in, c.not_supported, c.flows_not_supported),
            (1, 6, 2, 3, 2),
            "{}",
            m.report.render()
        );
        assert!(!m.report.complete());
        // The configuration is one idbridge reads.
        let config = config::Config::parse(&m.config).unwrap();
        let source = &config.sources[0];
        assert_eq!(source.name, "example-test");
        assert_eq!(source.base_dns, vec!["DC=example,DC=test"]);
        assert_eq!(source.include_ous, vec!["OU=Staff,DC=example,DC=test"]);
        assert_eq!(source.exclude_ous, vec!["OU=Service Accounts,OU=Staff,DC=example,DC=test"]);
        assert_eq!(source.filter.as_deref(), Some("(!(&(objectClass=user)(adminDescription=NoSync*)))"));
        assert!(source.password_hash_sync);
        assert_eq!(source.anchor_attribute, None, "mS-DS-ConsistencyGuid is idbridge's default");
        assert!(config.sync.staging, "side by side: nothing is exported");
        // Rules against the text of their XML.
        let department = rule(&m.report, "In from AD - User Department Code");
        assert_eq!(department.outcome, Outcome::Imported);
        assert!(m.rules.contains("scope = \"(&(department=*)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))\""));
        assert!(
            m.rules
                .contains(r#"{ target = "extensionAttribute1", expression = '"Dept-" & UCase(Trim([department]))' }"#)
        );
        assert!(
            m.rules.contains(
                r#"{ target = "extensionAttribute2", constant = "Migrated from Connect", apply_once = true }"#
            )
        );
        assert!(m.rules.contains(
            "scope = \"(|(&(mail=*@example.test)(!(title=Intern)))(&(department=*Sales*)(employeeType=Contractor)))\""
        ));
        assert!(
            m.rules.contains(
                r#"{ target = "proxyAddresses", source = ["otherMailbox"], merge = "merge-case-insensitive" }"#
            )
        );
        // Outbound: the metaverse's c is idbridge's country; implied conditions are left out.
        assert!(m.rules.contains(
            r#"{ target = "hybrid:usageLocation", expression = 'IIF(IsPresent([country]), UCase([country]), "DE")' }"#
        ));
        assert!(m.rules.contains("name = \"connect-out-to-aad-user-usagelocation\"\ndirection = \"outbound\"\nobjects = [\"user\"]\nprecedence = 53\nscope = \"(department=*)\"\n"));
        assert!(m.rules.contains("precedence = 55\ndisabled = true\n"));
        // Refusals name why.
        let certificates = rule(&m.report, "In from AD - User Certificates");
        assert!(certificates.flows.iter().any(
            |f| matches!(&f.outcome, Outcome::NotSupported(w) if w.contains("unknown function \"CertThumbprint\""))
        ));
        let odd = rule(&m.report, "In from AD - User Odd Scope");
        assert!(matches!(&odd.outcome, Outcome::NotSupported(w) if w.contains("MATCHES")));
        assert!(
            matches!(&rule(&m.report, "Out to AD - User Cloud Id").outcome, Outcome::NotSupported(w) if w.contains("writes to Active Directory"))
        );
        assert!(
            matches!(&rule(&m.report, "In from AD - Computer Owner").outcome, Outcome::NotSupported(w) if w.contains("computer"))
        );
        // An edited out-of-box rule is a custom one; an unknown version is mapped, with its fingerprint.
        let edited = rule(&m.report, "In from AD - Group Common");
        assert!(matches!(&edited.outcome, Outcome::Translated(n) if n.iter().any(|n| n.contains("edited out-of-box"))));
        assert!(
            matches!(&rule(&m.report, "In from AD - Contact Join").outcome, Outcome::BuiltIn(w) if w.contains("fingerprint"))
        );
        // Every rule is in the report, once.
        assert_eq!(m.report.rules.len(), 12);
        let text = m.report.render();
        assert!(text.contains("12 rules: 1 imported, 6 translated, 2 built in, 3 not supported; 2 flows of carried rules not supported."), "{text}");
    }

    #[test]
    fn an_unedited_out_of_box_rule_matches_its_fingerprint() {
        let export = export::read(&fixture()).unwrap();
        let mut original = export.rules.iter().find(|r| r.name == "In from AD - Group Common").unwrap().clone();
        assert_eq!(known::unedited(&original), Some(false), "our copy differs from the installed 004");
        original.tag = Some("Microsoft.InfromADGroupCommon.777".into());
        assert_eq!(known::unedited(&original), None, "a version idbridge does not know");
        // Name, precedence, connector and ids are not content.
        let mut moved = original.clone();
        moved.name = "Renamed".into();
        moved.precedence = 1;
        moved.connector = "x".into();
        assert_eq!(known::fingerprint(&moved), known::fingerprint(&original));
        moved.mappings.clear();
        assert_ne!(known::fingerprint(&moved), known::fingerprint(&original));
    }

    #[test]
    fn bad_exports_are_named_by_file_and_element() {
        let empty = std::env::temp_dir().join(format!("idbridge-migrate-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(migrate(&empty), Err(MigrateError::Export(ExportError::NotAnExport { .. }))));
        let _ = std::fs::remove_dir_all(&empty);

        let scratch = Scratch::new();
        let file = "SynchronizationRules/SynchronizationRule_{a1c3e5f7-1111-4a2b-9c3d-000000000001}.xml";
        let full = std::fs::read_to_string(scratch.0.join(file)).unwrap();
        let cut = full.get(..full.len() / 2).unwrap();
        scratch.write(file, cut);
        let err = migrate(&scratch.0).unwrap_err().to_string();
        assert!(err.starts_with(file) && err.contains("malformed XML"), "{err}");
        scratch.write(file, &full.replace("  <direction>Inbound</direction>\n", ""));
        let err = migrate(&scratch.0).unwrap_err().to_string();
        assert!(err.contains(file) && err.contains("<synchronizationRule> has no <direction>"), "{err}");
        scratch.write(file, &full.replace("<precedence>50</precedence>", "<precedence>fünfzig</precedence>"));
        assert!(migrate(&scratch.0).unwrap_err().to_string().contains("<precedence> \"fünfzig\" is not a number"));
        scratch.write(file, &format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{full}"));
        assert!(migrate(&scratch.0).unwrap_err().to_string().contains(file));
        scratch.write(file, &full);

        // A connector type idbridge has no counterpart for.
        scratch.write(
            "Connectors/Connector_{00000000-0000-0000-0000-0000000000aa}.xml",
            "<ma-data><id>{00000000-0000-0000-0000-0000000000AA}</id><name>HR database</name><category>Extensible2</category><subtype>Generic SQL (Microsoft)</subtype></ma-data>",
        );
        let m = migrate(&scratch.0).unwrap();
        let sql = m.report.connectors.iter().find(|c| c.name == "HR database").unwrap();
        assert_eq!(sql.file, "Connectors/Connector_{00000000-0000-0000-0000-0000000000aa}.xml");
        assert!(
            matches!(&sql.outcome, Outcome::NotSupported(w) if w.contains("<subtype>Generic SQL (Microsoft)</subtype>"))
        );
        // A file that is not a connector at all.
        scratch.write("Connectors/Connector_{00000000-0000-0000-0000-0000000000aa}.xml", "<synchronizationRule/>");
        let err = migrate(&scratch.0).unwrap_err().to_string();
        assert!(err.contains("not a connector's <ma-data>"), "{err}");
    }

    #[test]
    fn an_export_without_a_directory_is_refused() {
        let scratch = Scratch::new();
        std::fs::remove_file(scratch.0.join("Connectors/Connector_{5d2c1f0e-7a41-4c55-9d0e-2b7f9c1a0a01}.xml"))
            .unwrap();
        assert!(matches!(migrate(&scratch.0), Err(MigrateError::NoDirectory(_))));
    }

    #[test]
    fn a_second_forest_joins_the_first_by_its_join_rule() {
        let scratch = Scratch::new();
        let first = "Connectors/Connector_{5d2c1f0e-7a41-4c55-9d0e-2b7f9c1a0a01}.xml";
        let connector = std::fs::read_to_string(scratch.0.join(first)).unwrap();
        scratch.write(
            "Connectors/Connector_{6e3d2a1f-8b52-4d66-ae1f-3c8a0d2b1b02}.xml",
            &connector
                .replace("5D2C1F0E-7A41-4C55-9D0E-2B7F9C1A0A01", "6E3D2A1F-8B52-4D66-AE1F-3C8A0D2B1B02")
                .replace("<name>example.test</name>", "<name>resource.example.test</name>")
                .replace("DC=example,DC=test", "DC=resource,DC=example,DC=test"),
        );
        scratch.write(
            "SynchronizationRules/SynchronizationRule_{b0000000-0000-4000-8000-000000000001}.xml",
            "<synchronizationRule><id>{b0000000-0000-4000-8000-000000000001}</id><name>In from AD - User Join</name>\
             <immutable-tag>Microsoft.InfromADUserJoin.093</immutable-tag><direction>Inbound</direction><disabled>False</disabled>\
             <connector>{6E3D2A1F-8B52-4D66-AE1F-3C8A0D2B1B02}</connector><sourceObjectType>user</sourceObjectType>\
             <targetObjectType>person</targetObjectType><linkType>Provision</linkType><precedence>201</precedence>\
             <relationshipCriteria><conditions><condition><csAttribute>objectGUID</csAttribute><ilmAttribute>sourceAnchorBinary</ilmAttribute></condition></conditions>\
             <conditions><condition><csAttribute>mail</csAttribute><ilmAttribute>mail</ilmAttribute></condition></conditions></relationshipCriteria>\
             </synchronizationRule>",
        );
        let m = migrate(&scratch.0).unwrap();
        let config = config::Config::parse(&m.config).unwrap();
        assert_eq!(config.sources.len(), 2);
        let second = &config.sources[1];
        assert_eq!(second.name, "resource-example-test");
        let join = second.join.as_ref().expect("the second forest joins the first");
        assert_eq!(join.groups.len(), 1);
        assert_eq!((join.groups[0][0].source.as_str(), join.groups[0][0].metaverse.as_str()), ("mail", "mail"));
        assert!(join.project, "Provision: people only in the second forest are projected");
        let entry = m.report.connectors.iter().find(|c| c.name == "resource.example.test").unwrap();
        assert!(
            matches!(&entry.outcome, Outcome::Translated(n) if n.iter().any(|n| n.contains("sourceAnchorBinary left out")))
        );
        assert!(config.sources[0].join.is_none());
    }

    #[test]
    fn a_rules_script_adds_to_the_export() {
        let script = "New-ADSyncRule `\n-Name 'In from AD - User Office' `\n-Identifier 'f0000000-0000-4000-8000-000000000001' `\n\
            -Direction 'Inbound' `\n-Precedence 40 `\n-SourceObjectType 'user' `\n-TargetObjectType 'person' `\n\
            -Connector '5d2c1f0e-7a41-4c55-9d0e-2b7f9c1a0a01' `\n-LinkType 'Join' `\n-ImmutableTag '' `\n-OutVariable syncRule\n\n\
            Add-ADSyncAttributeFlowMapping `\n-SynchronizationRule $syncRule[0] `\n-Source @('physicalDeliveryOfficeName') `\n\
            -Destination 'extensionAttribute7' `\n-FlowType 'Direct' `\n-ValueMergeType 'Update' `\n-OutVariable syncRule\n\n\
            Add-ADSyncRule `\n-SynchronizationRule $syncRule[0]\n";
        let m = migrate_with_scripts(&fixture(), &[("office.ps1".into(), script.into())]).unwrap();
        assert_eq!(m.report.rules.len(), 13);
        let office = rule(&m.report, "In from AD - User Office");
        assert_eq!(office.file, "office.ps1, line 1");
        assert_eq!(office.outcome, Outcome::Imported);
        assert!(m.rules.contains(r#"{ target = "extensionAttribute7", source = ["physicalDeliveryOfficeName"] }"#));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever a rule file holds (non-ASCII included), reading it ends in a value or an error.
        #[test]
        fn hostile_rule_files_never_panic(text in "\\PC{0,300}", cut in 0usize..4000) {
            let scratch = Scratch::new();
            let file = "SynchronizationRules/SynchronizationRule_{a1c3e5f7-1111-4a2b-9c3d-000000000003}.xml";
            let full = std::fs::read_to_string(scratch.0.join(file)).unwrap();
            let at = full.char_indices().map(|(i, _)| i).take_while(|i| *i <= cut.min(full.len())).last().unwrap_or(0);
            scratch.write(file, &format!("{}{text}{}", full.get(..at).unwrap_or(""), full.get(at..).unwrap_or("")));
            let _ = migrate(&scratch.0);
        }
    }

    /// A real export, when one is at hand: `IDBRIDGE_CONNECT_CONTOSO` names the
    /// folder of the Contoso export published with Microsoft's
    /// AADConnectConfigDocumenter (src/SolutionOutput/Data/Contoso/Pilot or
    /// Production — the same configuration). Its files are not redistributed here.
    #[test]
    fn the_published_contoso_export() {
        let Some(dir) = std::env::var_os("IDBRIDGE_CONNECT_CONTOSO") else { return };
        let m = migrate(Path::new(&dir)).unwrap();
        let c = m.report.counts();
        assert_eq!((c.imported, c.translated, c.built_in, c.not_supported), (0, 0, 22, 40), "{}", m.report.render());
        assert_eq!(m.report.rules.len(), 62);
        // Every out-of-box rule is the version idbridge knows, unedited.
        assert!(!m.report.render().contains("fingerprint"));
        let config = config::Config::parse(&m.config).unwrap();
        let source = &config.sources[0];
        assert_eq!(source.base_dns, vec!["DC=contoso,DC=com"]);
        assert_eq!(source.include_ous, vec!["OU=CORP,DC=contoso,DC=com"]);
        assert!(source.exclude_ous.is_empty());
        assert_eq!(
            source.anchor_attribute.as_deref(),
            Some("objectGUID"),
            "the In from AD - User Common rule's sourceAnchor"
        );
        assert!(!source.password_hash_sync);
        assert_eq!(source.bind_dn.as_deref(), Some("MSOL_d1edb676ca03@contoso.com"));
        assert!(m.rules.is_empty(), "no custom rules");
        let exchange = rule(&m.report, "Out to AAD - User ExchangeOnline");
        assert!(matches!(&exchange.outcome, Outcome::NotSupported(w) if w.contains("Exchange")));
        assert!(matches!(&rule(&m.report, "In from AD - User Join").outcome, Outcome::BuiltIn(_)));
    }
}
