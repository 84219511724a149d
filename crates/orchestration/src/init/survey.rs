//! One streamed pass over the chosen scope before anything is written:
//! object counts, an IdFix summary, the sign-in domains in use, and whether
//! the chosen sourceAnchor is populated consistently.

use std::collections::{BTreeMap, HashMap};

use super::Result;
use crate::Error;
use connector_ldap::LdapSource;
use directory::ObjectKind;
use sync::{ImportSink, SinkError, Source, SourceChange};

use super::Answer;
use super::{STEPS, Wizard};

/// How many examples of each problem are kept to show.
const EXAMPLES: usize = 3;

#[derive(Debug, Default)]
pub struct Survey {
    pub users: u64,
    pub groups: u64,
    pub contacts: u64,
    pub idfix_checked: u64,
    pub findings: u64,
    pub findings_by_error: BTreeMap<String, u64>,
    pub finding_examples: Vec<String>,
    /// Domain part of userPrincipalName (or mail), with how many users use it.
    pub domains: BTreeMap<String, u64>,
    /// Users without the chosen anchor attribute (they fall back to the object id).
    pub anchor_missing: u64,
    /// Objects whose anchor another object in scope has too.
    pub anchor_duplicates: u64,
    pub duplicate_examples: Vec<String>,
    /// AD: ms-DS-ConsistencyGuid set but different from objectGUID (set by an earlier tool).
    pub guid_differs: u64,
    /// AD: ms-DS-ConsistencyGuid set but not 16 bytes (ignored).
    pub guid_malformed: u64,
    pub guid_examples: Vec<String>,
    /// AD: users whose ms-DS-ConsistencyGuid is empty (written from objectGUID with write-back).
    pub guid_empty: u64,
}

struct Collector<'a> {
    survey: &'a mut Survey,
    scanner: idfix::Scanner,
    /// The anchor attribute to check, when one is configured.
    anchor_attribute: Option<String>,
    /// Anchor → first DN that had it (the anchors are small: 16 bytes for GUIDs).
    anchors: HashMap<Vec<u8>, String>,
}

fn domain_of(address: &str) -> Option<String> {
    address.rsplit_once('@').map(|(_, d)| d.trim().to_ascii_lowercase()).filter(|d| !d.is_empty())
}

impl ImportSink for Collector<'_> {
    fn accept(&mut self, change: SourceChange) -> Result<(), SinkError> {
        let SourceChange::Upsert(obj) = change else { return Ok(()) };
        let s = &mut *self.survey;
        let dn = obj.entry.dn.to_string();
        match obj.kind {
            ObjectKind::User => {
                s.users += 1;
                let sign_in = obj.entry.first_text("userPrincipalName").or_else(|| obj.entry.first_text("mail"));
                if let Some(d) = sign_in.and_then(domain_of) {
                    *s.domains.entry(d).or_default() += 1;
                }
                match &self.anchor_attribute {
                    Some(a) if !obj.entry.has(a) => s.anchor_missing += 1,
                    _ => {}
                }
                if let Some(guid) = obj.entry.first_bytes("objectGUID") {
                    match obj.entry.first_bytes("ms-DS-ConsistencyGuid") {
                        None | Some([]) => s.guid_empty += 1,
                        Some(c) if c.len() != 16 => {
                            s.guid_malformed += 1;
                            if s.guid_examples.len() < EXAMPLES {
                                s.guid_examples
                                    .push(format!("{dn}: ms-DS-ConsistencyGuid is {} bytes, not a GUID", c.len()));
                            }
                        }
                        Some(c) if c != guid => {
                            s.guid_differs += 1;
                            if s.guid_examples.len() < EXAMPLES {
                                s.guid_examples.push(format!("{dn}: ms-DS-ConsistencyGuid differs from objectGUID"));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            ObjectKind::Group => s.groups += 1,
            ObjectKind::Contact => s.contacts += 1,
            ObjectKind::OrganizationalUnit | ObjectKind::Other => {}
        }
        if let Some(first) = self.anchors.get(&obj.anchor.0) {
            s.anchor_duplicates += 1;
            if s.duplicate_examples.len() < EXAMPLES {
                s.duplicate_examples.push(format!("{dn} has the same sourceAnchor as {first}"));
            }
        } else {
            self.anchors.insert(obj.anchor.0.clone(), dn.clone());
        }
        let findings = self.scanner.check(&obj.entry).map_err(|e| SinkError(e.to_string()))?;
        for f in findings {
            s.findings += 1;
            for e in &f.errors {
                *s.findings_by_error.entry(e.as_str().to_string()).or_default() += 1;
            }
            if s.finding_examples.len() < EXAMPLES {
                s.finding_examples.push(format!("{} {}: {:?} ({})", f.dn, f.attribute, f.value, f.error_text()));
            }
        }
        Ok(())
    }
}

impl Wizard {
    pub(super) async fn survey_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(7, STEPS, "Checking the data in scope");
        let mut settings = self.settings()?;
        // The survey reads no password hashes.
        settings.replicate_secrets = false;
        let mut source = LdapSource::new(settings)?;
        let mut survey = Survey::default();
        let anchor_attribute = self.source.anchor_attribute.clone().filter(|a| !a.eq_ignore_ascii_case("objectGUID"));
        let mut collector = Collector {
            survey: &mut survey,
            scanner: idfix::Scanner::with_index(
                idfix::Options::default(),
                Box::new(crate::idfix_index::DiskIndex::create().map_err(|e| Error::Idfix(e.to_string()))?),
            ),
            anchor_attribute: anchor_attribute.clone(),
            anchors: HashMap::new(),
        };
        let started = std::time::Instant::now();
        let result = source.full_import(None, &mut collector).await;
        let checked = collector.scanner.checked;
        drop(collector);
        if let Err(e) = result {
            return Err(self.failed(format!("reading the directory failed: {e}")));
        }
        survey.idfix_checked = checked;
        self.ask.good(&format!(
            "read {} users, {} groups, {} contacts in {:.1} s",
            survey.users,
            survey.groups,
            survey.contacts,
            started.elapsed().as_secs_f64()
        ));
        if survey.findings == 0 {
            self.ask.good("IdFix: no problems found");
        } else {
            let by: Vec<String> = survey.findings_by_error.iter().map(|(k, n)| format!("{k} {n}")).collect();
            self.ask.warn(&format!(
                "IdFix: {} values would be refused or changed by the cloud ({}); those objects wait in quarantine:",
                survey.findings,
                by.join(", ")
            ));
            for e in &survey.finding_examples {
                self.ask.say(&format!("    {e}"));
            }
            self.ask.say("  Full list and fixes: idbridge idfix scan --config <this file>");
        }
        if let Some(a) = &anchor_attribute
            && survey.anchor_missing > 0
        {
            self.ask.warn(&format!(
                "{} users have no {a}: they would be anchored by the object id instead, and setting {a} later would break their link",
                survey.anchor_missing
            ));
        }
        if survey.anchor_duplicates > 0 {
            self.ask.warn(&format!(
                "{} objects share a sourceAnchor with another object (only the first of each syncs):",
                survey.anchor_duplicates
            ));
            for e in &survey.duplicate_examples {
                self.ask.say(&format!("    {e}"));
            }
        }
        if self.source.anchor_write_back {
            if survey.guid_differs + survey.guid_malformed > 0 {
                self.ask.warn(&format!(
                    "ms-DS-ConsistencyGuid is already set on {} users to something other than their objectGUID (an earlier sync tool or a forest move?); they keep that value as anchor{}:",
                    survey.guid_differs + survey.guid_malformed,
                    if survey.guid_malformed > 0 { ", except values that are not GUIDs, which are ignored" } else { "" }
                ));
                for e in &survey.guid_examples {
                    self.ask.say(&format!("    {e}"));
                }
            }
            self.ask.say(&format!(
                "  {} users have no ms-DS-ConsistencyGuid yet: idbridge writes their objectGUID there",
                survey.guid_empty
            ));
        }
        self.survey = Some(survey);
        Ok(Answer::Value(()))
    }
}
