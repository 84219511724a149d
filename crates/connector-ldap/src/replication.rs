//! Password hash sync from Active Directory: AD never shows a password hash
//! over LDAP, so users' NT hashes are replicated from the same DC the
//! session talks to (MS-DRSR, through the `drsr` crate), as the bind account.

use std::collections::HashMap;

use directory::Dn;
use ldap3::Scope;
use passwords::NtHash;
use sync::SourceId;
use sync::phs::{Found, PasswordSecret};

use crate::error::LdapError;
use crate::settings::{LdapSettings, ServerKind};
use crate::source::LdapSource;

/// One pass over the naming context costs about as much per object as this
/// fraction of a single-object request (measured against Samba: 0.15 ms per
/// principal in a pass, 0.8 ms per `EXOP_REPL_OBJ`; `cargo bench -p drsr`).
/// The pass is used when it is cheaper, with the objects in scope standing in
/// for the principals of the domain.
const PASS_COST_PER_OBJECT: f64 = 0.2;

/// Whether one pass over the naming context beats one request per user.
fn whole_pass_is_cheaper(users: usize, population: usize) -> bool {
    users >= 20 && (population as f64) * PASS_COST_PER_OBJECT < users as f64
}

/// The account to authenticate as: `DOMAIN\user` and `user@domain` are used
/// as they are; a DN is looked up for its sAMAccountName.
fn account_name(bind: &str) -> Option<(String, Option<String>)> {
    if let Some((domain, user)) = bind.split_once('\\') {
        return Some((user.to_string(), Some(domain.to_string())));
    }
    if !bind.contains('=')
        && let Some((user, _)) = bind.split_once('@')
    {
        return Some((user.to_string(), None));
    }
    None
}

fn replication_error(host: &str, e: drsr::RpcError) -> LdapError {
    LdapError::Replication { host: host.to_string(), message: e.to_string() }
}

impl LdapSource {
    /// Password hashes come by replication only from Active Directory;
    /// other servers hand them out in the entries (userPassword,
    /// sambaNTPassword). Until connected the kind is unknown: the setting
    /// decides (the sync command connects before each cycle).
    pub(crate) fn replicates(&self) -> bool {
        let kind = self.server().map(|(_, profile)| profile.kind);
        self.settings().replicate_secrets && kind.is_none_or(|k| k == ServerKind::ActiveDirectory)
    }

    /// Reads the NT hashes of `objects` by replication. Users the DC does
    /// not return are left out (they stay pending).
    pub(crate) async fn replicate_secrets(
        &mut self,
        objects: &[(SourceId, Dn)],
        population: usize,
    ) -> Result<Vec<(SourceId, Found)>, LdapError> {
        self.connect().await?;
        let profile = self.session_profile()?.1;
        if profile.kind != ServerKind::ActiveDirectory {
            let why = format!("{} keeps no replicable password hashes; only Active Directory does", profile.kind);
            return Ok(objects.iter().map(|(id, _)| (id.clone(), Found::Unusable(why.clone()))).collect());
        }
        let (host, nc, settings, credentials) = self.replication_target().await?;
        let mut reader = match self.take_reader() {
            Some(reader) => reader,
            None => drsr::reader::SecretReader::connect(&host, &credentials, settings.operation_timeout)
                .await
                .map_err(|e| replication_error(&host, e))?,
        };
        let wanted: HashMap<&[u8], &SourceId> = objects.iter().map(|(id, _)| (id.0.as_slice(), id)).collect();
        let mut out = Vec::with_capacity(objects.len());
        let keep = |secret: drsr::reader::UserSecret, out: &mut Vec<(SourceId, Found)>| {
            if let Some(id) = wanted.get(secret.guid.as_slice()) {
                out.push(((*id).clone(), found(secret.nt_hash)));
            }
        };
        let result = if whole_pass_is_cheaper(objects.len(), population) {
            reader.naming_context(&nc.to_string(), |s| keep(s, &mut out)).await.map(|_| ())
        } else {
            let mut result = Ok(());
            for (_, dn) in objects {
                match reader.user(&dn.to_string()).await {
                    Ok(Some(secret)) => keep(secret, &mut out),
                    Ok(None) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result
        };
        match result {
            Ok(()) => {
                self.keep_reader(reader);
                Ok(out)
            }
            // The session is dropped: the next attempt connects afresh.
            Err(drsr::RpcError::ReplicationDenied) => Err(self.rights_error(&nc, &credentials.user).await),
            Err(e) => Err(replication_error(&host, e)),
        }
    }

    async fn replication_credentials(&self, settings: &LdapSettings) -> Result<drsr::rpc::Credentials, LdapError> {
        let bind = settings.bind_dn.as_deref().ok_or_else(|| {
            LdapError::Settings(
                "password hash sync from Active Directory needs a bind account with replication rights (bind_dn)"
                    .into(),
            )
        })?;
        let password = settings.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
        let (user, domain) = match account_name(bind) {
            Some(name) => name,
            None => (self.sam_account_name(bind).await?, None),
        };
        Ok(drsr::rpc::Credentials { user, domain, password })
    }

    /// The DC to replicate from, its naming context, the settings and the
    /// account to authenticate as.
    async fn replication_target(&self) -> Result<(String, Dn, LdapSettings, drsr::rpc::Credentials), LdapError> {
        let (session, profile) = self.session_profile()?;
        let host = crate::connect::host_of(&session.url).unwrap_or_default();
        let nc = profile
            .naming_context
            .clone()
            .ok_or_else(|| LdapError::Settings("the DC names no default naming context".into()))?;
        let settings = self.settings().clone();
        let credentials = self.replication_credentials(&settings).await?;
        Ok((host, nc, settings, credentials))
    }

    /// Whether the bind account may replicate secrets: one single-object
    /// request for the account's own object.
    pub(crate) async fn replication_probe(&mut self) -> Result<(), LdapError> {
        self.connect().await?;
        let (host, nc, settings, credentials) = self.replication_target().await?;
        let own = self.account_dn(&nc, &credentials.user).await.unwrap_or_else(|| nc.to_string());
        let mut reader = drsr::reader::SecretReader::connect(&host, &credentials, settings.operation_timeout)
            .await
            .map_err(|e| replication_error(&host, e))?;
        match reader.user(&own).await {
            Ok(_) => Ok(()),
            Err(drsr::RpcError::ReplicationDenied) => Err(self.rights_error(&nc, &credentials.user).await),
            Err(e) => Err(replication_error(&host, e)),
        }
    }

    /// The bind account's objectSid, for the SDDL lines that grant it rights
    /// (a placeholder when it cannot be read).
    pub(crate) async fn bind_account_sid(&self) -> String {
        let nc = self.session_profile().ok().and_then(|(_, p)| p.naming_context.clone());
        let settings = self.settings().clone();
        let sid = match (nc, self.replication_credentials(&settings).await) {
            (Some(nc), Ok(credentials)) => self.object_sid(&nc, &credentials.user).await,
            _ => None,
        };
        sid.unwrap_or_else(|| "<the account's SID>".into())
    }

    /// The DN of the bind account (given as a DN, user@domain or DOMAIN\\user).
    pub(crate) async fn bind_account_dn(&self) -> Option<String> {
        let nc = self.session_profile().ok()?.1.naming_context.clone()?;
        let credentials = self.replication_credentials(&self.settings().clone()).await.ok()?;
        self.account_dn(&nc, &credentials.user).await
    }

    /// The entry of the account `user` (sAMAccountName) under `nc`, with `attributes`.
    async fn account_entry(&self, nc: &Dn, user: &str, attributes: Vec<&str>) -> Option<ldap3::SearchEntry> {
        let (session, _) = self.session_profile().ok()?;
        let mut ldap = session.ldap.clone();
        let filter = format!("(sAMAccountName={})", ldap3::ldap_escape(user));
        let (entries, _) = ldap
            .with_timeout(session.operation_timeout)
            .search(&nc.to_string(), Scope::Subtree, &filter, attributes)
            .await
            .ok()?
            .success()
            .ok()?;
        Some(ldap3::SearchEntry::construct(entries.into_iter().next()?))
    }

    /// The DN of the account `user` (sAMAccountName) under `nc`.
    async fn account_dn(&self, nc: &Dn, user: &str) -> Option<String> {
        self.account_entry(nc, user, vec!["1.1"]).await.map(|e| e.dn)
    }

    /// Missing replication rights, with the commands that grant them to
    /// this account on this naming context.
    async fn rights_error(&self, nc: &Dn, user: &str) -> LdapError {
        let bind = self.settings().bind_dn.clone().unwrap_or_default();
        let principal = if account_name(&bind).is_some() { bind } else { user.to_string() };
        let sid = self.object_sid(nc, user).await.unwrap_or_else(|| "<the account's SID>".into());
        let (changes, all) = (drsr::REPLICATING_CHANGES, drsr::REPLICATING_CHANGES_ALL);
        LdapError::ReplicationRights(format!(
            "the bind account {principal} may not replicate password hashes: it needs the extended rights \
             \"Replicating Directory Changes\" ({changes}) and \"Replicating Directory Changes All\" ({all}) on {nc}. \
             Windows: dsacls \"{nc}\" /G \"{principal}:CA;Replicating Directory Changes\" and \
             dsacls \"{nc}\" /G \"{principal}:CA;Replicating Directory Changes All\"; \
             Samba: samba-tool dsacl set --objectdn=\"{nc}\" --sddl=\"(OA;;CR;{changes};;{sid})(OA;;CR;{all};;{sid})\""
        ))
    }

    /// The objectSid (S-1-5-…) of the account `user` (sAMAccountName) under `nc`.
    async fn object_sid(&self, nc: &Dn, user: &str) -> Option<String> {
        let entry = self.account_entry(nc, user, vec!["objectSid"]).await?;
        let bytes = entry.bin_attrs.get("objectSid")?.first()?;
        directory::Sid::from_bytes(bytes).ok().map(|s| s.to_string())
    }

    /// The sAMAccountName of the bind account given as a DN.
    async fn sam_account_name(&self, dn: &str) -> Result<String, LdapError> {
        let (session, _) = self.session_profile()?;
        let mut ldap = session.ldap.clone();
        let search = ldap
            .with_timeout(session.operation_timeout)
            .search(dn, Scope::Base, "(objectClass=*)", vec!["sAMAccountName"])
            .await
            .map_err(|e| LdapError::Connection {
                url: session.url.clone(),
                operation: format!("reading the sAMAccountName of {dn}"),
                reason: e.to_string(),
            })?;
        let (entries, _) = search.success().map_err(|e| LdapError::Connection {
            url: session.url.clone(),
            operation: format!("reading the sAMAccountName of {dn}"),
            reason: e.to_string(),
        })?;
        entries
            .into_iter()
            .next()
            .map(ldap3::SearchEntry::construct)
            .and_then(|e| e.attrs.get("sAMAccountName").and_then(|v| v.first().cloned()))
            .ok_or_else(|| {
                LdapError::Settings(format!(
                    "cannot read the sAMAccountName of the bind account {dn:?}; give bind_dn as user@domain or DOMAIN\\user"
                ))
            })
    }
}

fn found(nt_hash: Option<drsr::reader::NtSecret>) -> Found {
    match nt_hash {
        Some(h) => Found::Secret(PasswordSecret::Nt(NtHash(h.0))),
        None => Found::Unusable("no password is set in the directory".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_when_many_of_the_domain_changed() {
        assert!(whole_pass_is_cheaper(1000, 1000), "a first sync");
        assert!(whole_pass_is_cheaper(300, 1000));
        assert!(!whole_pass_is_cheaper(100, 1000));
        assert!(!whole_pass_is_cheaper(1000, 100_000), "a busy hour in a large domain");
        assert!(!whole_pass_is_cheaper(5, 5), "a handful is always asked for one by one");
    }

    #[test]
    fn account_names() {
        assert_eq!(account_name("CORP\\svc"), Some(("svc".into(), Some("CORP".into()))));
        assert_eq!(account_name("svc@corp.example.com"), Some(("svc".into(), None)));
        assert_eq!(account_name("CN=svc,CN=Users,DC=corp"), None);
    }
}
