//! AD / Samba delta import by uSNChanged with the Show Deleted control, for
//! bind accounts without replication rights (DirSync refused).
//!
//! Such accounts usually cannot read tombstones either, so deletions would go
//! unseen. Each delta therefore also lists the ids (only) of every in-scope
//! object and asks the engine to reconcile: what is not listed is gone.

use ldap3::Scope;
use sync::{ImportMode, ImportSink, ImportSummary, SourceChange, SourceId};

use crate::ber;
use crate::dirsync::is_deleted;
use crate::error::LdapError;
use crate::paged::PagedSearch;
use crate::source::{Counts, LdapSource};
use crate::watermark::{DeltaPosition, Mark};

pub(crate) async fn delta(
    source: &mut LdapSource,
    usn: u64,
    server: &str,
    sink: &mut (dyn ImportSink + Send),
) -> Result<ImportSummary, LdapError> {
    // The new high-water mark is read before the search: a change made during
    // the search is read again next time rather than missed.
    source.connect().await?;
    let (session, profile) = source.session_profile()?;
    let mut ldap = session.ldap.clone();
    let dse = crate::connect::read_root_dse(&mut ldap, &session.url, session.operation_timeout).await?;
    let current_server = dse.ds_service_name.clone().unwrap_or_else(|| session.url.clone());
    if !current_server.eq_ignore_ascii_case(server) {
        return Err(LdapError::Watermark(format!(
            "connected to another domain controller ({current_server}) than the one the uSNChanged watermark belongs to ({server}); USNs differ per DC"
        )));
    }
    let new_usn = dse
        .highest_committed_usn
        .ok_or(LdapError::Protocol { url: session.url.clone(), what: "rootDSE without highestCommittedUSN".into() })?;
    let nc = profile.naming_context.clone().unwrap_or_else(|| profile.bases.first().cloned().unwrap_or_default());
    let filter = format!("(&(uSNChanged>={}){})", usn.saturating_add(1), profile.filter);
    let mut attrs = profile.attributes.clone();
    attrs.extend(["isDeleted".to_string(), "uSNChanged".to_string()]);
    let mut search = PagedSearch::new(
        session,
        &nc.to_string(),
        Scope::Subtree,
        &filter,
        attrs,
        vec![ber::show_deleted_control()],
        source.settings().page_size,
        session.operation_timeout,
    );
    let mut counts = Counts::new();
    while let Some(raw) = search.next().await? {
        let Some(obj) = source.build_object(session, profile, raw).await? else {
            continue;
        };
        if is_deleted(obj.entry.values("isDeleted")) {
            counts.emit(sink, SourceChange::Delete { id: obj.id, dn: None })?;
        } else if source.object_in_scope(&obj.entry.dn) {
            counts.emit(sink, SourceChange::Upsert(obj))?;
        } else {
            counts.emit(sink, SourceChange::Delete { id: SourceId(obj.id.0), dn: Some(obj.entry.dn) })?;
        }
    }
    for base in &profile.bases {
        let mut listing = PagedSearch::new(
            session,
            &base.to_string(),
            Scope::Subtree,
            &profile.filter,
            vec![profile.id_attribute.clone(), "objectClass".into()],
            Vec::new(),
            source.settings().page_size,
            session.operation_timeout,
        );
        while let Some(raw) = listing.next().await? {
            if let Some(obj) = source.build_object(session, profile, raw).await?
                && source.object_in_scope(&obj.entry.dn)
            {
                counts.emit(sink, SourceChange::Present { id: obj.id })?;
            }
        }
    }
    let mark = Mark {
        version: 1,
        scope: profile.scope_fingerprint.clone(),
        ous: Vec::new(),
        position: DeltaPosition::Usn { usn: new_usn, server: current_server },
    };
    Ok(counts.summary(ImportMode::Delta, mark.encode(), profile.bases.clone()))
}
