//! OpenLDAP / 389 delta import through RFC 4533 content synchronisation in
//! refreshOnly mode, one cookie per base DN. Handles both refresh phases:
//! the delete phase (the server names what was deleted) and the present
//! phase (the server names what is still there; the rest is gone).

use directory::Dn;
use ldap3::Scope;
use sync::{ImportMode, ImportSink, ImportSummary, SourceChange, SourceId};

use crate::ber::{self, SyncInfo, SyncStateKind};
use crate::error::LdapError;
use crate::paged::search_error;
use crate::source::{Counts, LdapSource, MATCH_NOTHING};
use crate::watermark::{BaseCookie, DeltaPosition, Mark, b64, unb64};

/// `e-syncRefreshRequired`: the server cannot serve a delta from this cookie.
const SYNC_REFRESH_REQUIRED: u32 = 4096;

/// Takes the current cookie of `base` without reading any entry.
pub(crate) async fn cookie_only(source: &LdapSource, base: &Dn) -> Result<Vec<u8>, LdapError> {
    let (_, profile) = source.session_profile()?;
    // 389-ds ties a cookie to the filter of the search that got it (and
    // asks for a full refresh when a later search's filter differs): there
    // the cookie comes from the real filter, entries without attributes.
    let outcome = if profile.kind == crate::settings::ServerKind::Ds389 {
        run(source, base, &profile.filter, vec![NO_ATTRIBUTES.to_string()], None, None).await?
    } else {
        run(source, base, MATCH_NOTHING, profile.attributes.clone(), None, None).await?
    };
    outcome.cookie.ok_or(LdapError::Protocol {
        url: source_url(source),
        what: format!("sync response for {base} without a cookie"),
    })
}

fn source_url(source: &LdapSource) -> String {
    source.session_profile().map(|(s, _)| s.url.clone()).unwrap_or_default()
}

pub(crate) async fn delta(
    source: &mut LdapSource,
    cookies: &[BaseCookie],
    sink: &mut (dyn ImportSink + Send),
) -> Result<ImportSummary, LdapError> {
    let (_, profile) = source.session_profile()?;
    let bases = profile.bases.clone();
    let filter = profile.filter.clone();
    let attributes = profile.attributes.clone();
    let scope_fingerprint = profile.scope_fingerprint.clone();
    let mut counts = Counts::new();
    let mut new_cookies = Vec::new();
    let mut reconcile_within = Vec::new();
    for base in bases {
        let stored = cookies
            .iter()
            .find(|c| Dn::parse(&c.base).is_ok_and(|b| b == base))
            .ok_or_else(|| LdapError::Watermark(format!("no sync cookie stored for base {base}")))?;
        let cookie = unb64(&stored.cookie)?;
        let outcome =
            run(source, &base, &filter, attributes.clone(), Some(cookie), Some((&mut counts, &mut *sink))).await?;
        if outcome.present_phase {
            tracing::info!(%base, "the server answered with a present phase: objects it did not list are treated as deleted");
            reconcile_within.push(base.clone());
        }
        let cookie = outcome.cookie.unwrap_or_else(|| unb64(&stored.cookie).unwrap_or_default());
        new_cookies.push(BaseCookie { base: base.to_string(), cookie: b64(&cookie) });
    }
    let mark = Mark {
        version: 1,
        scope: scope_fingerprint,
        ous: Vec::new(),
        position: DeltaPosition::Syncrepl { cookies: new_cookies },
    };
    Ok(counts.summary(ImportMode::Delta, mark.encode(), reconcile_within))
}

struct Outcome {
    cookie: Option<Vec<u8>>,
    present_phase: bool,
}

/// RFC 4511's "no attributes" selector.
const NO_ATTRIBUTES: &str = "1.1";

async fn run(
    source: &LdapSource,
    base: &Dn,
    filter: &str,
    attributes: Vec<String>,
    cookie: Option<Vec<u8>>,
    mut out: Option<(&mut Counts, &mut (dyn ImportSink + Send))>,
) -> Result<Outcome, LdapError> {
    let (session, profile) = source.session_profile()?;
    let base_text = base.to_string();
    let had_cookie = cookie.is_some();
    let mut ldap = session.ldap.clone();
    let conn_err = |e: ldap3::LdapError| LdapError::Connection {
        url: session.url.clone(),
        operation: format!("syncrepl on {base_text}"),
        reason: e.to_string(),
    };
    let mut stream = ldap
        .with_controls(vec![ber::sync_request_control(cookie)])
        .with_timeout(session.operation_timeout)
        .streaming_search(&base_text, Scope::Subtree, filter, attributes)
        .await
        .map_err(conn_err)?;
    let mut latest_cookie = None;
    let protocol = |what: &str| LdapError::Protocol { url: session.url.clone(), what: what.to_string() };
    while let Some(re) = stream.next().await.map_err(conn_err)? {
        if re.is_ref() {
            continue;
        }
        if re.is_intermediate() {
            let info = ber::parse_sync_info(re.0).ok_or_else(|| protocol("Sync Info message"))?;
            match info {
                SyncInfo::NewCookie(c) => latest_cookie = Some(c),
                SyncInfo::RefreshDelete { cookie } | SyncInfo::RefreshPresent { cookie } => {
                    if cookie.is_some() {
                        latest_cookie = cookie;
                    }
                }
                SyncInfo::IdSet { cookie, refresh_deletes, uuids } => {
                    if cookie.is_some() {
                        latest_cookie = cookie;
                    }
                    if let Some((counts, sink)) = out.as_mut() {
                        for uuid in uuids {
                            let id = SourceId(uuid);
                            let change = if refresh_deletes {
                                SourceChange::Delete { id, dn: None }
                            } else {
                                SourceChange::Present { id }
                            };
                            counts.emit(*sink, change)?;
                        }
                    }
                }
            }
            continue;
        }
        let state =
            re.1.iter()
                .find(|c| c.1.ctype == ber::SYNC_STATE_OID)
                .and_then(|c| c.1.val.as_deref())
                .and_then(ber::parse_sync_state)
                .ok_or_else(|| protocol("entry without a Sync State control"))?;
        let (kind, uuid, entry_cookie) = state;
        if entry_cookie.is_some() {
            latest_cookie = entry_cookie;
        }
        let Some((counts, sink)) = out.as_mut() else {
            continue;
        };
        let id = SourceId(uuid);
        match kind {
            SyncStateKind::Present => counts.emit(*sink, SourceChange::Present { id })?,
            SyncStateKind::Delete => {
                let dn = ber::parse_entry(re.0).and_then(|(dn, _)| Dn::parse(&dn).ok());
                counts.emit(*sink, SourceChange::Delete { id, dn })?;
            }
            SyncStateKind::Add | SyncStateKind::Modify => {
                let raw = ber::parse_entry(re.0).ok_or_else(|| protocol("sync entry"))?;
                // 389-ds sends sync entries without operational attributes
                // (nsUniqueId, entryUUID) even when asked: such an entry is
                // read again by its DN.
                let has_id = raw.1.iter().any(|(name, _)| name.eq_ignore_ascii_case(&profile.id_attribute));
                let dn = raw.0.clone();
                let object = if has_id {
                    source.build_object(session, profile, raw).await?
                } else {
                    source.read_one(&dn).await?
                };
                let object = match object {
                    None if !has_id => {
                        // Gone or no longer matching since: what was there is deleted.
                        counts.emit(*sink, SourceChange::Delete { id, dn: Dn::parse(&dn).ok() })?;
                        continue;
                    }
                    other => other,
                };
                match object {
                    Some(obj) if source.object_in_scope(&obj.entry.dn) => {
                        counts.emit(*sink, SourceChange::Upsert(obj))?
                    }
                    Some(obj) => counts.emit(*sink, SourceChange::Delete { id, dn: Some(obj.entry.dn) })?,
                    None => {}
                }
            }
        }
    }
    let res = stream.finish().await;
    if res.rc == SYNC_REFRESH_REQUIRED {
        return Err(LdapError::Watermark(format!(
            "the server can no longer send the changes since the stored cookie for {base_text} (e-syncRefreshRequired)"
        )));
    }
    if res.rc != 0 {
        if had_cookie {
            return Err(LdapError::Watermark(format!(
                "the server rejected the sync cookie for {base_text} (LDAP result {}: {})",
                res.rc, res.text
            )));
        }
        return Err(search_error(&session.url, &base_text, res.rc, &res.text));
    }
    let (done_cookie, refresh_deletes) = res
        .ctrls
        .iter()
        .find(|c| c.1.ctype == ber::SYNC_DONE_OID)
        .and_then(|c| c.1.val.as_deref())
        .and_then(ber::parse_sync_done)
        .unwrap_or((None, false));
    // 389-ds answers a cookie with the changes since — deletions as ID sets
    // or delete states — and never lists the unchanged entries, yet leaves
    // refreshDeletes unset: that is no present phase, and reconciling on it
    // would delete every unchanged object.
    let ds389_changes = had_cookie && profile.kind == crate::settings::ServerKind::Ds389;
    Ok(Outcome { cookie: done_cookie.or(latest_cookie), present_phase: !refresh_deletes && !ds389_changes })
}

/// Waits for the server to push a change under `base` (refreshAndPersist
/// from `cookie`), at most `timeout`. True when something changed (or the
/// server ended the search, which is worth a cycle too).
pub(crate) async fn wait_for_push(
    source: &LdapSource,
    base: &Dn,
    cookie: Vec<u8>,
    timeout: std::time::Duration,
) -> Result<bool, LdapError> {
    let (session, profile) = source.session_profile()?;
    let base_text = base.to_string();
    let mut ldap = session.ldap.clone();
    let conn_err = |e: ldap3::LdapError| LdapError::Connection {
        url: session.url.clone(),
        operation: format!("waiting for changes under {base_text}"),
        reason: e.to_string(),
    };
    let mut stream = ldap
        .with_controls(vec![ber::sync_persist_control(Some(cookie))])
        .streaming_search(&base_text, Scope::Subtree, &profile.filter, vec!["entryUUID".to_string()])
        .await
        .map_err(conn_err)?;
    let msgid = stream.ldap_handle().last_id();
    // A caller racing several bases drops the losers: their persistent
    // searches must still end on the server, not pile up one per cycle.
    let mut abandon_on_drop = AbandonOnDrop::new(ldap.clone(), msgid);
    let deadline = tokio::time::Instant::now() + timeout;
    let changed = loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break false,
            Ok(Err(e)) => return Err(conn_err(e)),
            Ok(Ok(None)) => break true,
            Ok(Ok(Some(item))) => item,
        };
        if next.is_ref() {
            continue;
        }
        if next.is_intermediate() {
            // End-of-refresh markers carry no change; a set of deleted ids does.
            if let Some(SyncInfo::IdSet { refresh_deletes: true, uuids, .. }) = ber::parse_sync_info(next.0)
                && !uuids.is_empty()
            {
                break true;
            }
            continue;
        }
        let state = next
            .1
            .iter()
            .find(|c| c.1.ctype == ber::SYNC_STATE_OID)
            .and_then(|c| c.1.val.as_deref())
            .and_then(ber::parse_sync_state);
        match state {
            Some((SyncStateKind::Present, _, _)) => continue,
            _ => break true,
        }
    };
    // Stop the server's side of the persistent search.
    abandon_on_drop.disarm();
    let _ = ldap.abandon(msgid).await;
    let _ = stream.finish().await;
    Ok(changed)
}

/// Abandons a persistent search whose waiting future was dropped before it
/// could do so itself (the abandon is sent from a spawned task, since `Drop`
/// cannot await).
pub(crate) struct AbandonOnDrop {
    ldap: Option<ldap3::Ldap>,
    msgid: ldap3::RequestId,
}

impl AbandonOnDrop {
    pub(crate) fn new(ldap: ldap3::Ldap, msgid: ldap3::RequestId) -> AbandonOnDrop {
        AbandonOnDrop { ldap: Some(ldap), msgid }
    }

    /// The caller abandons (or the search ended) itself.
    pub(crate) fn disarm(&mut self) {
        self.ldap = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let (Some(mut ldap), Ok(runtime)) = (self.ldap.take(), tokio::runtime::Handle::try_current()) {
            let msgid = self.msgid;
            runtime.spawn(async move {
                let _ = ldap.abandon(msgid).await;
            });
        }
    }
}
