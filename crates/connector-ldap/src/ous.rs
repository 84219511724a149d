//! The OU include/exclude lists, pinned by each OU's own id (objectGUID,
//! entryUUID). Renaming or moving a selected OU on the server then moves the
//! selection with it instead of taking every object in it out of scope — a
//! mass delete in the cloud. Connect stores its OU filter by GUID for the
//! same reason.

use directory::Dn;
use ldap3::Scope;
use serde::{Deserialize, Serialize};

use crate::ber;
use crate::connect::Session;
use crate::error::LdapError;
use crate::paged::search_error;
use crate::source::Profile;
use crate::watermark::{b64, unb64};

/// One configured OU and the id it had when it was first found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedOu {
    /// `include` or `exclude`.
    pub list: String,
    /// The DN as configured (normalised).
    pub configured: String,
    /// The OU's id attribute value (base64 of the raw value).
    pub id: String,
    /// Where the OU was at the last import.
    pub dn: String,
}

/// The OU selection in effect for one import.
#[derive(Debug, Clone, Default)]
pub struct OuScope {
    pub include: Vec<Dn>,
    pub exclude: Vec<Dn>,
    pub pins: Vec<PinnedOu>,
}

impl OuScope {
    /// Inside the bases, inside an included OU (if any are set), outside every excluded one.
    pub fn contains(&self, bases: &[Dn], dn: &Dn) -> bool {
        bases.iter().any(|b| dn.is_within(b))
            && (self.include.is_empty() || self.include.iter().any(|o| dn.is_within(o)))
            && !self.exclude.iter().any(|o| dn.is_within(o))
    }

    /// The pinned ids, in configuration order: part of the scope fingerprint,
    /// so an OU rename (same id) keeps the delta position valid.
    pub fn fingerprint_parts(&self) -> Vec<String> {
        self.pins.iter().map(|p| format!("{}:{}", p.list, p.id)).collect()
    }
}

/// Resolves the configured OUs against the server: by the id pinned at an
/// earlier import where there is one (following renames and moves), else by
/// DN (and pins it). An included OU that cannot be found is an error, so the
/// import stops before anything in it is taken for deleted.
pub async fn resolve(
    session: &Session,
    profile: &Profile,
    include: &[Dn],
    exclude: &[Dn],
    previous: &[PinnedOu],
) -> Result<OuScope, LdapError> {
    let mut scope = OuScope::default();
    for (list, configured) in include.iter().map(|d| ("include", d)).chain(exclude.iter().map(|d| ("exclude", d))) {
        let key = configured.normalized();
        let pin = previous.iter().find(|p| p.list == list && p.configured == key);
        let found = match pin {
            Some(pin) => find_by_id(session, profile, &pin.id).await?.map(|dn| (dn, pin)),
            None => None,
        };
        let (dn, id) = match found {
            Some((dn, pin)) => {
                if dn != *configured {
                    tracing::warn!(
                        configured = %configured,
                        now = %dn,
                        "the {list}_ous entry was renamed or moved on the server; following it by its {}. \
                         Update {list}_ous in the configuration to the new DN.",
                        profile.id_attribute
                    );
                }
                (dn, pin.id.clone())
            }
            None => match read_id(session, profile, configured).await? {
                Some(id) => {
                    if pin.is_some_and(|p| p.id != id) {
                        tracing::warn!(configured = %configured, "the {list}_ous entry was replaced by another object at the same DN; using the new one");
                    }
                    (configured.clone(), id)
                }
                None if list == "exclude" && pin.is_some() => {
                    tracing::warn!(configured = %configured, "the exclude_ous entry no longer exists on the server (and neither does anything in it); ignoring it");
                    continue;
                }
                None => {
                    let reason = if pin.is_some() {
                        "it was deleted, or moved out of the base DNs"
                    } else {
                        "no entry has this DN (check the spelling)"
                    };
                    return Err(LdapError::Settings(format!(
                        "{list}_ous entry \"{configured}\" cannot be found on {}: {reason}; \
                         nothing was imported from this source, so nothing in it is taken for deleted. \
                         Fix {list}_ous in the configuration.",
                        session.url
                    )));
                }
            },
        };
        match list {
            "include" => scope.include.push(dn.clone()),
            _ => scope.exclude.push(dn.clone()),
        }
        scope.pins.push(PinnedOu { list: list.to_string(), configured: key, id, dn: dn.to_string() });
    }
    Ok(scope)
}

/// The id attribute of the entry at `dn` (base64), `None` when there is no such entry.
async fn read_id(session: &Session, profile: &Profile, dn: &Dn) -> Result<Option<String>, LdapError> {
    let found = search(session, &dn.to_string(), Scope::Base, "(objectClass=*)", &profile.id_attribute).await?;
    Ok(found.into_iter().next().and_then(|(_, id)| id).map(|v| b64(&v)))
}

/// Where the object with this id is now, searched within the bases.
async fn find_by_id(session: &Session, profile: &Profile, id: &str) -> Result<Option<Dn>, LdapError> {
    let raw = unb64(id)?;
    // Every byte escaped: valid RFC 4515 for binary (objectGUID) and text ids alike.
    let value: String = raw.iter().map(|b| format!("\\{b:02x}")).collect();
    let filter = format!("({}={value})", profile.id_attribute);
    for base in &profile.bases {
        let found = search(session, &base.to_string(), Scope::Subtree, &filter, "1.1").await?;
        if let Some((dn, _)) = found.into_iter().next() {
            return Ok(Dn::parse(&dn).ok());
        }
    }
    Ok(None)
}

/// A small search: DNs and the first value of `attribute`. No such base → empty.
async fn search(
    session: &Session,
    base: &str,
    scope: Scope,
    filter: &str,
    attribute: &str,
) -> Result<Vec<(String, Option<Vec<u8>>)>, LdapError> {
    let mut ldap = session.ldap.clone();
    let conn_err = |e: ldap3::LdapError| LdapError::Connection {
        url: session.url.clone(),
        operation: format!("looking up the OU {base}"),
        reason: e.to_string(),
    };
    let mut stream = ldap
        .with_timeout(session.operation_timeout)
        .streaming_search(base, scope, filter, vec![attribute])
        .await
        .map_err(conn_err)?;
    let mut out = Vec::new();
    while let Some(entry) = stream.next().await.map_err(conn_err)? {
        if entry.is_ref() || entry.is_intermediate() {
            continue;
        }
        if let Some((dn, attrs)) = ber::parse_entry(entry.0) {
            let value = attrs
                .into_iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(attribute))
                .and_then(|(_, values)| values.into_iter().next());
            out.push((dn, value));
        }
    }
    let res = stream.finish().await;
    match res.rc {
        0 | 32 => Ok(out),
        rc => Err(search_error(&session.url, base, rc, &res.text)),
    }
}
