//! What a set-up wizard needs to know about a directory before anything is
//! written: the OU tree with object counts, and whether the bind account
//! has the rights the chosen features need (with the line that grants each).

use std::collections::BTreeMap;

use directory::{Dn, Entry, ObjectKind, Value};
use ldap3::Scope;

use crate::error::LdapError;
use crate::paged::PagedSearch;
use crate::rootdse::SYNCREPL_CONTROL;
use crate::settings::ServerKind;
use crate::source::{LdapSource, MATCH_NOTHING};

/// An OU (or container) and the objects in its subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OuCount {
    pub dn: Dn,
    /// How far below the base it is (0 = the base itself).
    pub depth: usize,
    pub users: u64,
    pub groups: u64,
    pub contacts: u64,
}

/// A right the bind account lacks, on which object, and how to grant it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RightProblem {
    /// Whether sync can go on without it (with less: slower deltas, no passwords).
    pub blocking: bool,
    pub right: String,
    pub object: String,
    pub fix: String,
}

/// Users (not computers) on AD.
const USERS: &str = "(&(objectClass=user)(!(objectClass=computer)))";
/// The schemaIDGUID of the user class (the same in every AD forest).
const USER_CLASS: &str = "bf967aba-0de6-11d0-a285-00aa003049e2";

const CONTAINERS: &str = "(|(objectClass=organizationalUnit)(objectClass=container)(objectClass=builtinDomain))";

impl LdapSource {
    /// The OUs and containers under the base DNs, each with the users,
    /// groups and contacts in its subtree (two paged searches).
    pub async fn ou_tree(&mut self) -> Result<Vec<OuCount>, LdapError> {
        self.connect().await?;
        let (session, profile) = self.session_profile()?;
        let timeout = session.operation_timeout;
        let mut tree: BTreeMap<String, OuCount> = BTreeMap::new();
        for base in &profile.bases {
            tree.insert(
                base.to_string().to_lowercase(),
                OuCount { dn: base.clone(), depth: 0, users: 0, groups: 0, contacts: 0 },
            );
            let mut ous = PagedSearch::new(
                session,
                &base.to_string(),
                Scope::Subtree,
                CONTAINERS,
                vec!["1.1".into()],
                Vec::new(),
                500,
                timeout,
            );
            while let Some((dn, _)) = ous.next().await? {
                let Ok(parsed) = Dn::parse(&dn) else { continue };
                let depth = parsed.len().saturating_sub(base.len());
                tree.insert(dn.to_lowercase(), OuCount { dn: parsed, depth, users: 0, groups: 0, contacts: 0 });
            }
            let mut objects = PagedSearch::new(
                session,
                &base.to_string(),
                Scope::Subtree,
                &profile.filter,
                vec!["objectClass".into()],
                Vec::new(),
                500,
                timeout,
            );
            while let Some((dn, attrs)) = objects.next().await? {
                let Ok(mut at) = Dn::parse(&dn) else { continue };
                // The same classification the import uses.
                let mut entry = Entry::new(at.clone());
                for (name, values) in attrs {
                    for v in values {
                        entry.add(&name, Value::from_bytes_as(false, v));
                    }
                }
                let kind = ObjectKind::of(&entry);
                while let Some(parent) = at.parent() {
                    if let Some(ou) = tree.get_mut(&parent.to_string().to_lowercase()) {
                        match kind {
                            ObjectKind::User => ou.users += 1,
                            ObjectKind::Group => ou.groups += 1,
                            ObjectKind::Contact => ou.contacts += 1,
                            ObjectKind::OrganizationalUnit | ObjectKind::Other => {}
                        }
                    }
                    if profile.bases.contains(&parent) {
                        break;
                    }
                    at = parent;
                }
            }
        }
        let mut list: Vec<OuCount> = tree.into_values().collect();
        // Parents before children, siblings by name: a tree when indented by depth.
        list.sort_by_key(|o| o.dn.to_string().split(',').rev().map(str::to_lowercase).collect::<Vec<_>>());
        Ok(list)
    }

    /// The rights the chosen features need, checked with the bind account:
    /// read access to every base and included OU; on AD, "Replicating
    /// Directory Changes" for DirSync deltas and (for password hash sync)
    /// "… All" by replication; on OpenLDAP, the syncprov overlay for deltas.
    pub async fn check_rights(&mut self, password_hash_sync: bool) -> Result<Vec<RightProblem>, LdapError> {
        self.connect().await?;
        let mut problems = Vec::new();
        let kind = self.session_profile()?.1.kind;
        let bind = self.settings().bind_dn.clone().unwrap_or_else(|| "(anonymous)".into());
        let sid = if kind == ServerKind::ActiveDirectory { self.bind_account_sid().await } else { String::new() };
        let (session, profile) = self.session_profile()?;
        let mut places: Vec<Dn> = profile.bases.clone();
        places.extend(self.settings().include_ous.iter().cloned());
        for place in places {
            let mut ldap = session.ldap.clone();
            let result = ldap
                .with_timeout(session.operation_timeout)
                .search(&place.to_string(), Scope::Base, "(objectClass=*)", vec!["1.1"])
                .await;
            let readable = matches!(&result, Ok(r) if r.1.rc == 0 && !r.0.is_empty());
            if !readable {
                let fix = match kind {
                    ServerKind::ActiveDirectory => format!(
                        "dsacls \"{place}\" /I:T /G \"{bind}:GR\" (Windows), or on Samba: samba-tool dsacl set --objectdn=\"{place}\" --sddl=\"(A;CI;RPLCLORC;;;{sid})\""
                    ),
                    _ => format!("olcAccess: to dn.subtree=\"{place}\" by dn.exact=\"{bind}\" read by * break"),
                };
                problems.push(RightProblem { blocking: true, right: "read".into(), object: place.to_string(), fix });
            }
        }
        match kind {
            ServerKind::ActiveDirectory => {
                if let Err(LdapError::Search { code: 50, .. }) =
                    self.dirsync_pass(MATCH_NOTHING, Vec::new(), None).await
                {
                    let nc =
                        self.session_profile()?.1.naming_context.clone().map(|n| n.to_string()).unwrap_or_default();
                    problems.push(RightProblem {
                        blocking: false,
                        right: "Replicating Directory Changes (DirSync deltas; without it deltas use uSNChanged, slower)".into(),
                        object: nc.clone(),
                        fix: format!(
                            "dsacls \"{nc}\" /G \"{bind}:CA;Replicating Directory Changes\" (Windows), or on Samba: samba-tool dsacl set --objectdn=\"{nc}\" --sddl=\"(OA;;CR;{};;{sid})\"",
                            drsr::REPLICATING_CHANGES
                        ),
                    });
                }
                if password_hash_sync && let Err(LdapError::ReplicationRights(message)) = self.replication_probe().await
                {
                    let nc =
                        self.session_profile()?.1.naming_context.clone().map(|n| n.to_string()).unwrap_or_default();
                    problems.push(RightProblem {
                        blocking: true,
                        right: "Replicating Directory Changes + Replicating Directory Changes All (password hash sync)"
                            .into(),
                        object: nc,
                        fix: message,
                    });
                }
            }
            ServerKind::OpenLdap | ServerKind::Ds389 | ServerKind::Other => {
                let (session, profile) = self.session_profile()?;
                if !session.root_dse.supported_controls.iter().any(|c| c == SYNCREPL_CONTROL) {
                    let base = profile.bases.first().map(Dn::to_string).unwrap_or_default();
                    problems.push(RightProblem {
                        blocking: false,
                        right: "content synchronisation (RFC 4533) for delta imports; without it every cycle is a full import".into(),
                        object: base,
                        fix: "load the syncprov overlay on the database: dn: olcOverlay=syncprov,olcDatabase={1}mdb,cn=config / objectClass: olcSyncProvConfig".into(),
                    });
                }
                if password_hash_sync && let Some(p) = self.password_read_problem(kind, &bind).await? {
                    problems.push(p);
                }
            }
        }
        Ok(problems)
    }

    /// LDAP servers: password hash sync reads userPassword, sambaNTPassword
    /// or ipaNTHash. A filter on them finds nothing when the account may not
    /// read them (or no user has one): one entry is enough to know.
    async fn password_read_problem(&self, kind: ServerKind, bind: &str) -> Result<Option<RightProblem>, LdapError> {
        let (session, profile) = self.session_profile()?;
        let filter = format!("(&{}(|(userPassword=*)(sambaNTPassword=*)(ipaNTHash=*)))", profile.filter);
        for base in &profile.bases {
            let mut ldap = session.ldap.clone();
            let found = ldap
                .with_timeout(session.operation_timeout)
                .with_search_options(ldap3::SearchOptions::new().sizelimit(1))
                .search(
                    &base.to_string(),
                    Scope::Subtree,
                    &filter,
                    vec!["userPassword", "sambaNTPassword", "ipaNTHash"],
                )
                .await;
            if matches!(found, Ok(ldap3::SearchResult(entries, _)) if !entries.is_empty()) {
                return Ok(None);
            }
        }
        let base = profile.bases.first().map(Dn::to_string).unwrap_or_default();
        let fix = match kind {
            ServerKind::Ds389 => format!(
                "aci: (targetattr=\"userPassword || ipaNTHash\")(version 3.0; acl \"idbridge password hash sync\"; allow (read,search,compare) userdn=\"ldap:///{bind}\";) on {base}"
            ),
            _ => format!(
                "olcAccess: to dn.subtree=\"{base}\" attrs=userPassword,sambaNTPassword by dn.exact=\"{bind}\" read by self write by anonymous auth by * none"
            ),
        };
        Ok(Some(RightProblem {
            blocking: true,
            right: "read users' userPassword / sambaNTPassword / ipaNTHash (password hash sync; no user in scope showed one: the account may not read them, or none is set)".into(),
            object: base,
            fix,
        }))
    }

    /// Whether the bind account may write ms-DS-ConsistencyGuid on the users
    /// in scope (AD asks itself: allowedAttributesEffective on one user).
    pub async fn check_anchor_write_back(&mut self) -> Result<Option<RightProblem>, LdapError> {
        self.connect().await?;
        let sid = self.bind_account_sid().await;
        let bind = self.settings().bind_dn.clone().unwrap_or_default();
        let attribute_guid = self
            .schema_guid("ms-DS-ConsistencyGuid")
            .await
            .unwrap_or_else(|| "23773dc2-b63a-11d2-90e1-00c04fd91ab1".into());
        for (place, entry) in self.one_user_per_place("allowedAttributesEffective", Vec::new()).await? {
            let writable = entry
                .attrs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("allowedAttributesEffective"))
                .flat_map(|(_, v)| v)
                .any(|a| a.eq_ignore_ascii_case("ms-DS-ConsistencyGuid"));
            if !writable {
                return Ok(Some(RightProblem {
                    blocking: true,
                    right: "write ms-DS-ConsistencyGuid on users (sourceAnchor write-back)".into(),
                    object: place.to_string(),
                    fix: format!(
                        "dsacls \"{place}\" /I:S /G \"{bind}:WP;ms-DS-ConsistencyGuid;user\" (Windows), or on Samba: samba-tool dsacl set --objectdn=\"{place}\" --sddl=\"(OA;CIIO;WP;{attribute_guid};{USER_CLASS};{sid})\"; or choose --anchor objectguid"
                    ),
                }));
            }
        }
        Ok(None)
    }

    /// Whether the bind account may reset the passwords of the users in
    /// scope (password writeback's administrator and self-service resets):
    /// the extended right "Reset Password" on one user of each included OU
    /// (or base), decided from the user's DACL (read with the SD flags
    /// control: the DACL only, which a non-administrator may read) and the
    /// account's SID and groups (tokenGroups), as Windows decides it. Only AD
    /// has such a right to read; elsewhere `None`.
    pub async fn check_reset_password_right(&mut self) -> Result<Option<RightProblem>, LdapError> {
        self.connect().await?;
        if self.session_profile()?.1.kind != ServerKind::ActiveDirectory {
            return Ok(None);
        }
        let bind = self.settings().bind_dn.clone().unwrap_or_default();
        let holder = self.bind_account_sids().await;
        let sid = self.bind_account_sid().await;
        // SD flags control (LDAP_SERVER_SD_FLAGS_OID): SEQUENCE { INTEGER 4 } = the DACL.
        let dacl_only = ldap3::controls::RawControl {
            ctype: "1.2.840.113556.1.4.801".into(),
            crit: true,
            val: Some(vec![0x30, 0x03, 0x02, 0x01, 0x04]),
        };
        for (place, entry) in self.one_user_per_place("nTSecurityDescriptor", vec![dacl_only]).await? {
            let granted = entry
                .bin_attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("nTSecurityDescriptor"))
                .and_then(|(_, v)| v.first())
                .and_then(|sd| directory::security_descriptor::parse_dacl(sd).ok())
                .is_some_and(|dacl| {
                    dacl.grants_control_access(
                        &directory::security_descriptor::RESET_PASSWORD,
                        &directory::security_descriptor::USER_CLASS,
                        &holder,
                    )
                });
            if !granted {
                return Ok(Some(RightProblem {
                    blocking: true,
                    right: format!("Reset Password on users (password writeback resets; checked on {})", entry.dn),
                    object: place.to_string(),
                    fix: format!(
                        "dsacls \"{place}\" /I:S /G \"{bind}:CA;Reset Password;user\" (Windows), or on Samba: samba-tool dsacl set --objectdn=\"{place}\" --sddl=\"(OA;CIIO;CR;{};{USER_CLASS};{sid})\"",
                        directory::security_descriptor::RESET_PASSWORD
                    ),
                }));
            }
        }
        Ok(None)
    }

    /// One user (with `attribute`) under each included OU — or each base
    /// without any: its effective rights stand for its OU's. Places without
    /// a user, or whose search fails, are left out.
    async fn one_user_per_place(
        &self,
        attribute: &str,
        controls: Vec<ldap3::controls::RawControl>,
    ) -> Result<Vec<(Dn, ldap3::SearchEntry)>, LdapError> {
        let (session, profile) = self.session_profile()?;
        let places: Vec<Dn> = if self.settings().include_ous.is_empty() {
            profile.bases.clone()
        } else {
            self.settings().include_ous.clone()
        };
        let mut found = Vec::new();
        for place in places {
            let mut ldap = session.ldap.clone();
            let searched = ldap
                .with_timeout(session.operation_timeout)
                .with_controls(controls.clone())
                .with_search_options(ldap3::SearchOptions::new().sizelimit(1))
                .search(&place.to_string(), Scope::Subtree, USERS, vec![attribute])
                .await;
            let Ok(ldap3::SearchResult(entries, _)) = searched else { continue };
            if let Some(first) = entries.into_iter().next() {
                found.push((place, ldap3::SearchEntry::construct(first)));
            }
        }
        Ok(found)
    }

    /// The bind account's SID, its groups' (tokenGroups) and the two every
    /// bound account holds; empty of its own when they cannot be read.
    async fn bind_account_sids(&self) -> Vec<directory::Sid> {
        let mut sids = Vec::new();
        if let Some(dn) = self.bind_account_dn().await
            && let Ok((session, _)) = self.session_profile()
        {
            let mut ldap = session.ldap.clone();
            // tokenGroups is constructed: only a base search returns it.
            let found = ldap
                .with_timeout(session.operation_timeout)
                .search(&dn, Scope::Base, "(objectClass=*)", vec!["objectSid", "tokenGroups"])
                .await;
            if let Ok(ldap3::SearchResult(entries, _)) = found
                && let Some(first) = entries.into_iter().next()
            {
                let entry = ldap3::SearchEntry::construct(first);
                for name in ["objectSid", "tokenGroups"] {
                    let values = entry.bin_attrs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
                    sids.extend(values.flat_map(|(_, v)| v).filter_map(|b| directory::Sid::from_bytes(b).ok()));
                }
            }
        }
        sids.extend(directory::security_descriptor::implicit_sids());
        sids
    }

    /// The schemaIDGUID of an attribute, as text.
    async fn schema_guid(&self, attribute: &str) -> Option<String> {
        let (session, _) = self.session_profile().ok()?;
        let schema = session.root_dse.config_context.as_ref().map(|c| format!("CN=Schema,{c}"))?;
        let mut ldap = session.ldap.clone();
        let filter = format!("(lDAPDisplayName={})", ldap3::ldap_escape(attribute));
        let (entries, _) = ldap
            .with_timeout(session.operation_timeout)
            .search(&schema, Scope::OneLevel, &filter, vec!["schemaIDGUID"])
            .await
            .ok()?
            .success()
            .ok()?;
        let entry = ldap3::SearchEntry::construct(entries.into_iter().next()?);
        let bytes = entry.bin_attrs.get("schemaIDGUID")?.first()?;
        directory::Guid::from_ad_bytes(bytes).ok().map(|g| g.to_string())
    }
}
