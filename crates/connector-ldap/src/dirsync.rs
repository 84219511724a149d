//! AD / Samba delta import through the DirSync control (1.2.840.113556.1.4.841).
//!
//! DirSync names the objects changed since the cookie (and the tombstones of
//! deleted ones). Each changed object is then read again in full, so the
//! engine always receives whole objects — also for objects moved into scope.

use std::collections::HashMap;

use directory::{Dn, Value};
use ldap3::Scope;
use sync::{ImportMode, ImportSink, ImportSummary, SourceChange, SourceId};

use crate::ber;
use crate::error::LdapError;
use crate::paged::search_error;
use crate::source::{Counts, LdapSource};
use crate::watermark::{DeltaPosition, Mark, b64, unb64};

const MAX_BYTES: i64 = 1_048_576;

/// One object DirSync reported.
pub(crate) struct Reported {
    pub guid: Vec<u8>,
    pub dn: String,
    pub deleted: bool,
}

impl LdapSource {
    /// Runs DirSync from `cookie` to the end ("more data" loop), handing each
    /// reported object to the caller; returns the new cookie.
    pub(crate) async fn dirsync_pass(
        &self,
        filter: &str,
        extra_attrs: Vec<String>,
        cookie: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, LdapError> {
        self.dirsync_collect(filter, extra_attrs, cookie, &mut |_| {}).await
    }

    pub(crate) async fn dirsync_collect(
        &self,
        filter: &str,
        extra_attrs: Vec<String>,
        cookie: Option<Vec<u8>>,
        on_object: &mut (dyn FnMut(Reported) + Send),
    ) -> Result<Vec<u8>, LdapError> {
        let (session, profile) = self.session_profile()?;
        let nc = profile.naming_context.as_ref().ok_or_else(|| {
            LdapError::Settings("no naming context contains the configured base DNs; check base_dns".into())
        })?;
        let nc_text = nc.to_string();
        let mut attrs = profile.attributes.clone();
        attrs.extend(extra_attrs);
        attrs.push("isDeleted".into());
        let mut cookie = cookie.unwrap_or_default();
        let mut ldap = session.ldap.clone();
        let conn_err = |e: ldap3::LdapError| LdapError::Connection {
            url: session.url.clone(),
            operation: "DirSync".into(),
            reason: e.to_string(),
        };
        // Bounded: each round returns up to MAX_BYTES; a million rounds is far beyond any directory.
        for _ in 0..1_000_000 {
            let mut stream = ldap
                .with_controls(vec![ber::dirsync_control(0, MAX_BYTES, cookie.clone())])
                .with_timeout(session.operation_timeout)
                .streaming_search(&nc_text, Scope::Subtree, filter, attrs.clone())
                .await
                .map_err(conn_err)?;
            while let Some(re) = stream.next().await.map_err(conn_err)? {
                if re.is_ref() || re.is_intermediate() {
                    continue;
                }
                let (dn, raw) = ber::parse_entry(re.0)
                    .ok_or(LdapError::Protocol { url: session.url.clone(), what: "DirSync entry".into() })?;
                let mut guid = None;
                let mut deleted = false;
                for (name, values) in raw {
                    if name.eq_ignore_ascii_case("objectGUID") {
                        guid = values.into_iter().next();
                    } else if name.eq_ignore_ascii_case("isDeleted") {
                        deleted = values.first().is_some_and(|v| v.eq_ignore_ascii_case(b"TRUE"));
                    }
                }
                match guid {
                    Some(guid) => on_object(Reported { guid, dn, deleted }),
                    None => {
                        tracing::warn!(%dn, "DirSync returned an object without objectGUID; skipped")
                    }
                }
            }
            let res = stream.finish().await;
            if res.rc != 0 {
                return Err(search_error(&session.url, &nc_text, res.rc, &res.text));
            }
            let (more, next) = res
                .ctrls
                .iter()
                .find(|c| c.1.ctype == ber::DIRSYNC_OID)
                .and_then(|c| c.1.val.as_deref())
                .and_then(ber::parse_dirsync_response)
                .ok_or(LdapError::Protocol {
                    url: session.url.clone(),
                    what: "DirSync response without its control".into(),
                })?;
            if !next.is_empty() {
                cookie = next;
            }
            if !more {
                return Ok(cookie);
            }
        }
        Ok(cookie)
    }
}

pub(crate) async fn delta(
    source: &mut LdapSource,
    cookie_b64: &str,
    sink: &mut (dyn ImportSink + Send),
) -> Result<ImportSummary, LdapError> {
    let cookie = unb64(cookie_b64)?;
    let (_, profile) = source.session_profile()?;
    let filter = profile.filter.clone();
    let scope_fingerprint = profile.scope_fingerprint.clone();
    // Keep the last report per object, in first-seen order.
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut latest: HashMap<Vec<u8>, Reported> = HashMap::new();
    let result = source
        .dirsync_collect(&filter, Vec::new(), Some(cookie), &mut |r: Reported| {
            if !latest.contains_key(&r.guid) {
                order.push(r.guid.clone());
            }
            latest.insert(r.guid.clone(), r);
        })
        .await;
    let new_cookie = match result {
        Ok(c) => c,
        Err(LdapError::Search { code, message, .. }) if code != 0 => {
            return Err(LdapError::Watermark(format!(
                "the DC refused the DirSync cookie or the request (LDAP result {code}: {message})"
            )));
        }
        Err(e) => return Err(e),
    };
    let mut counts = Counts::new();
    for guid in order {
        let Some(r) = latest.remove(&guid) else {
            continue;
        };
        let id = SourceId(guid);
        if r.deleted {
            counts.emit(sink, SourceChange::Delete { id, dn: None })?;
            continue;
        }
        let dn = Dn::parse(&r.dn).ok();
        if !dn.as_ref().is_some_and(|d| source.object_in_scope(d)) {
            counts.emit(sink, SourceChange::Delete { id, dn })?;
            continue;
        }
        match source.read_one(&r.dn).await? {
            Some(obj) => counts.emit(sink, SourceChange::Upsert(obj))?,
            // Gone or filtered out between DirSync and the read: the next delta reports it.
            None => {
                tracing::debug!(dn = %r.dn, "changed object no longer readable; left to the next delta")
            }
        }
    }
    let mark = Mark {
        version: 1,
        scope: scope_fingerprint,
        ous: Vec::new(),
        position: DeltaPosition::DirSync { cookie: b64(&new_cookie) },
    };
    Ok(counts.summary(ImportMode::Delta, mark.encode(), Vec::new()))
}

/// True if a raw `isDeleted` value says TRUE.
pub(crate) fn is_deleted(values: &[Value]) -> bool {
    values.first().and_then(Value::as_text).is_some_and(|t| t.eq_ignore_ascii_case("TRUE"))
}
