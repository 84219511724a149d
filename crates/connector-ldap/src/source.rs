//! `LdapSource`: the `Source` over LDAP — full import with paging and ranged
//! retrieval, and delta import through DirSync, uSNChanged or syncrepl.

use directory::{Anchor, Attribute, Dn, Entry, Filter, ObjectKind, Value};
use ldap3::Scope;
use sync::{ImportMode, ImportSink, ImportSummary, Source, SourceChange, SourceId, SourceObject, Watermark};

use crate::ber::{self, RawEntry};
use crate::connect::{self, Session};
use crate::error::LdapError;
use crate::ous::{OuScope, PinnedOu};
use crate::paged::{PagedSearch, PrefetchedSearch, search_error};
use crate::rootdse::{DIRSYNC_CONTROL, SYNCREPL_CONTROL};
use crate::settings::{LdapSettings, ServerKind};
use crate::watermark::{DeltaPosition, Mark, fingerprint};

/// Matches no object; used to take a change-tracking position without data.
pub(crate) const MATCH_NOTHING: &str = "(&(objectClass=top)(!(objectClass=top)))";

/// What the connector resolved for the server it is talking to.
#[derive(Debug, Clone)]
pub struct Profile {
    pub kind: ServerKind,
    /// Attribute holding the server's own object id.
    pub id_attribute: String,
    /// Attributes tried in order for the sourceAnchor of users.
    pub user_anchor_attributes: Vec<String>,
    /// Attribute used as sourceAnchor for other objects.
    pub anchor_attribute: String,
    pub bases: Vec<Dn>,
    /// AD: the naming context root that DirSync and tombstone searches use.
    pub naming_context: Option<Dn>,
    pub filter: String,
    pub attributes: Vec<String>,
    pub scope_fingerprint: String,
}

/// An LDAP directory as a sync source.
#[derive(Debug)]
pub struct LdapSource {
    settings: LdapSettings,
    session: Option<Session>,
    profile: Option<Profile>,
    /// The position the last import ended at (for push notification).
    last_mark: Option<Mark>,
    /// The OU selection resolved for the current import.
    ous: OuScope,
    /// The server refused AD change notifications (said once; then polled).
    notifications_refused: bool,
    /// AD: the DC's highestCommittedUSN just before the last import read
    /// anything. A change committed after it but before the next
    /// notification search was armed is found by comparing, not lost.
    usn_before_import: Option<u64>,
    /// A DRS session kept between cycles (password hash sync from AD).
    reader: Option<drsr::reader::SecretReader>,
    /// Users seen in this import whose ms-DS-ConsistencyGuid is empty:
    /// (DN, objectGUID), written back after the import (anchor write-back).
    pub(crate) anchor_backfill: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
}

pub(crate) struct Counts {
    upserts: u64,
    deletes: u64,
    presents: u64,
}

impl Counts {
    pub(crate) fn new() -> Self {
        Counts { upserts: 0, deletes: 0, presents: 0 }
    }

    /// Counts a change and hands it to the sink.
    pub(crate) fn emit(&mut self, sink: &mut (dyn ImportSink + Send), change: SourceChange) -> Result<(), LdapError> {
        match &change {
            SourceChange::Upsert(_) => self.upserts += 1,
            SourceChange::Delete { .. } => self.deletes += 1,
            SourceChange::Present { .. } => self.presents += 1,
        }
        sink.accept(change)?;
        Ok(())
    }

    pub(crate) fn summary(self, mode: ImportMode, watermark: Watermark, reconcile_within: Vec<Dn>) -> ImportSummary {
        ImportSummary {
            mode,
            watermark,
            reconcile_within,
            upserts: self.upserts,
            deletes: self.deletes,
            presents: self.presents,
        }
    }
}

impl LdapSource {
    pub fn new(settings: LdapSettings) -> Result<Self, LdapError> {
        if let Some(f) = &settings.filter {
            Filter::parse(f).map_err(|e| LdapError::Settings(format!("filter: {e}")))?;
        }
        if settings.page_size == 0 {
            return Err(LdapError::Settings("page_size must be at least 1".into()));
        }
        Ok(LdapSource {
            settings,
            session: None,
            profile: None,
            last_mark: None,
            ous: OuScope::default(),
            notifications_refused: false,
            usn_before_import: None,
            reader: None,
            anchor_backfill: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Connects (with failover) if not connected, and resolves the profile.
    pub async fn connect(&mut self) -> Result<(&Session, &Profile), LdapError> {
        let stale = self.session.as_mut().is_none_or(|s| s.ldap.is_closed());
        if stale {
            let session = connect::connect(&self.settings).await?;
            let profile = resolve_profile(&self.settings, &session)?;
            tracing::info!(server = %session.url, kind = %session.root_dse.describe(), bases = ?profile.bases.iter().map(|b| b.to_string()).collect::<Vec<_>>(), "connected");
            self.session = Some(session);
            self.profile = Some(profile);
        }
        match (&self.session, &self.profile) {
            (Some(s), Some(p)) => Ok((s, p)),
            _ => Err(LdapError::Settings("not connected".into())),
        }
    }

    fn parts(&self) -> Result<(&Session, &Profile), LdapError> {
        match (&self.session, &self.profile) {
            (Some(s), Some(p)) => Ok((s, p)),
            _ => Err(LdapError::Settings("not connected".into())),
        }
    }

    fn in_scope(&self, profile: &Profile, dn: &Dn) -> bool {
        self.ous.contains(&profile.bases, dn)
    }

    /// Whether `dn` is under the bases and OUs the last import read.
    pub(crate) fn watches(&self, dn: &Dn) -> bool {
        self.profile.as_ref().is_some_and(|profile| self.in_scope(profile, dn))
    }

    /// Resolves the configured OUs (following renames by the ids pinned in
    /// `previous`) and returns the scope fingerprint for this import.
    async fn resolve_ous(&mut self, previous: &[PinnedOu]) -> Result<String, LdapError> {
        let (session, profile) = self.parts()?;
        let ous =
            crate::ous::resolve(session, profile, &self.settings.include_ous, &self.settings.exclude_ous, previous)
                .await?;
        let mut parts = vec![profile.scope_fingerprint.clone()];
        parts.extend(ous.fingerprint_parts());
        self.ous = ous;
        Ok(fingerprint(&parts))
    }

    /// Re-reads the rootDSE (for a fresh highestCommittedUSN).
    async fn refresh_root_dse(&mut self) -> Result<(), LdapError> {
        let Some(session) = self.session.as_mut() else {
            return Err(LdapError::Settings("not connected".into()));
        };
        session.root_dse = connect::read_root_dse(&mut session.ldap, &session.url, session.operation_timeout).await?;
        Ok(())
    }

    async fn full(
        &mut self,
        sink: &mut (dyn ImportSink + Send),
        mode: ImportMode,
        previous_ous: &[PinnedOu],
    ) -> Result<ImportSummary, LdapError> {
        self.connect().await?;
        let scope = self.resolve_ous(previous_ous).await?;
        // Take the change-tracking position first: changes made during the
        // import are then seen again by the next delta (idempotent), never lost.
        let position = self.start_position().await?;
        let (session, profile) = self.parts()?;
        let mut counts = Counts::new();
        for base in &profile.bases {
            // Read ahead on a task of its own, which also makes the entries
            // into objects: the sink takes them while the next ones arrive.
            let on_task = profile.clone();
            let mut search = PrefetchedSearch::start_mapped(
                PagedSearch::new(
                    session,
                    &base.to_string(),
                    Scope::Subtree,
                    &profile.filter,
                    profile.attributes.clone(),
                    Vec::new(),
                    self.settings.page_size,
                    session.operation_timeout,
                ),
                move |raw| assemble(&on_task, raw),
            );
            while let Some(assembled) = search.next().await? {
                if let Some(obj) = self.finish_object(session, profile, assembled).await?
                    && self.in_scope(profile, &obj.entry.dn)
                {
                    counts.emit(sink, SourceChange::Upsert(obj))?;
                }
            }
        }
        let mark = Mark { version: 1, scope, position, ous: self.ous.pins.clone() };
        Ok(counts.summary(mode, mark.encode(), profile.bases.clone()))
    }

    /// Where the next delta will start, taken before a full import.
    async fn start_position(&mut self) -> Result<DeltaPosition, LdapError> {
        let (session, profile) = self.parts()?;
        match profile.kind {
            ServerKind::ActiveDirectory => {
                if session.root_dse.supports_control(DIRSYNC_CONTROL) {
                    match self.dirsync_pass(MATCH_NOTHING, Vec::new(), None).await {
                        Ok(cookie) => {
                            return Ok(DeltaPosition::DirSync { cookie: crate::watermark::b64(&cookie) });
                        }
                        Err(LdapError::Search { code: 50, message, .. }) => {
                            tracing::warn!(
                                %message,
                                "the bind account lacks 'Replicating Directory Changes' on the naming context, so DirSync is refused; \
                                 delta imports will use uSNChanged instead (slower, and deletions are seen only where the account may read tombstones). \
                                 Grant the right to use DirSync."
                            );
                        }
                        Err(e) => return Err(e),
                    }
                }
                self.refresh_root_dse().await?;
                let (session, _) = self.parts()?;
                let usn = session.root_dse.highest_committed_usn.ok_or(LdapError::Protocol {
                    url: session.url.clone(),
                    what: "rootDSE without highestCommittedUSN".into(),
                })?;
                Ok(DeltaPosition::Usn {
                    usn,
                    server: session.root_dse.ds_service_name.clone().unwrap_or_else(|| session.url.clone()),
                })
            }
            _ if session.root_dse.supports_control(SYNCREPL_CONTROL) => {
                let mut cookies = Vec::new();
                let bases = profile.bases.clone();
                for base in bases {
                    let cookie = crate::syncrepl::cookie_only(self, &base).await?;
                    cookies.push(crate::watermark::BaseCookie {
                        base: base.to_string(),
                        cookie: crate::watermark::b64(&cookie),
                    });
                }
                Ok(DeltaPosition::Syncrepl { cookies })
            }
            _ => Ok(DeltaPosition::None),
        }
    }

    /// Builds a `SourceObject` from a raw entry: merges ranged values, derives
    /// the id, anchor and kind. `Ok(None)` (with a warning) for an object
    /// without a usable id — it cannot be tracked, and must not stop the rest.
    pub(crate) async fn build_object(
        &self,
        session: &Session,
        profile: &Profile,
        raw: RawEntry,
    ) -> Result<Option<SourceObject>, LdapError> {
        self.finish_object(session, profile, assemble(profile, raw)).await
    }

    /// An assembled entry as the object the import hands on: its ranges
    /// fetched if it still had some, and noted for anchor write-back.
    async fn finish_object(
        &self,
        session: &Session,
        profile: &Profile,
        assembled: Assembled,
    ) -> Result<Option<SourceObject>, LdapError> {
        let built = match assembled {
            Assembled::Object(built) => built,
            Assembled::Ranged(raw) => self.assemble_ranged(session, profile, raw).await?,
        };
        Ok(built.map(|obj| self.noted(obj)))
    }

    /// Fetches the rest of the values that came in ranges
    /// (`member;range=0-1499`) and files all of them under the plain name.
    async fn assemble_ranged(
        &self,
        session: &Session,
        profile: &Profile,
        (dn_text, attrs): RawEntry,
    ) -> Result<Option<SourceObject>, LdapError> {
        let mut complete = Vec::with_capacity(attrs.len());
        for (name, values) in attrs {
            match ranged(&name) {
                Some((base_name, Some(next_low))) => {
                    let mut all = values;
                    all.extend(fetch_range(session, &dn_text, base_name, next_low, None).await?);
                    complete.push((base_name.to_string(), all));
                }
                _ => complete.push((name, values)),
            }
        }
        Ok(object_from(profile, (dn_text, complete)))
    }

    /// What the connector remembers of an object it made (for anchor
    /// write-back); the object is handed on unchanged.
    fn noted(&self, obj: SourceObject) -> SourceObject {
        if self.settings.anchor_write_back
            && obj.kind == ObjectKind::User
            && self.profile.as_ref().is_some_and(|p| p.kind == ServerKind::ActiveDirectory)
        {
            self.note_empty_consistency_guid(&obj.entry);
        }
        obj
    }

    pub(crate) fn settings(&self) -> &LdapSettings {
        &self.settings
    }

    pub(crate) fn take_reader(&mut self) -> Option<drsr::reader::SecretReader> {
        self.reader.take()
    }

    pub(crate) fn keep_reader(&mut self, reader: drsr::reader::SecretReader) {
        self.reader = Some(reader);
    }

    pub(crate) fn session_profile(&self) -> Result<(&Session, &Profile), LdapError> {
        self.parts()
    }

    pub(crate) fn object_in_scope(&self, dn: &Dn) -> bool {
        self.profile.as_ref().is_some_and(|p| self.in_scope(p, dn))
    }

    /// The server this source is connected to, if any.
    pub fn server(&self) -> Option<(&Session, &Profile)> {
        self.parts().ok()
    }

    async fn delta(
        &mut self,
        since: &Watermark,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, LdapError> {
        self.connect().await?;
        let mark = match Mark::decode(since) {
            Ok(m) => m,
            Err(e) => {
                return self.fallback(sink, format!("the stored watermark is unusable ({e})"), &[]).await;
            }
        };
        let scope = self.resolve_ous(&mark.ous).await?;
        if mark.scope != scope {
            return self
                .fallback(
                    sink,
                    "the import scope (bases, OUs, filter or attributes) changed since the last import".into(),
                    &mark.ous,
                )
                .await;
        }
        let result = match &mark.position {
            DeltaPosition::None => {
                return self.fallback(sink, "the server offers no change tracking".into(), &mark.ous).await;
            }
            DeltaPosition::DirSync { cookie } => crate::dirsync::delta(self, cookie, sink).await,
            DeltaPosition::Usn { usn, server } => crate::usn::delta(self, *usn, server, sink).await,
            DeltaPosition::Syncrepl { cookies } => crate::syncrepl::delta(self, cookies, sink).await,
        };
        match result {
            Err(LdapError::Watermark(reason)) => self.fallback(sink, reason, &mark.ous).await,
            Ok(mut summary) => {
                // The delta mechanisms carry the position; the scope is this import's.
                if let Ok(mut new) = Mark::decode(&summary.watermark) {
                    new.scope = scope;
                    new.ous = self.ous.pins.clone();
                    summary.watermark = new.encode();
                }
                Ok(summary)
            }
            other => other,
        }
    }

    async fn fallback(
        &mut self,
        sink: &mut (dyn ImportSink + Send),
        reason: String,
        previous_ous: &[PinnedOu],
    ) -> Result<ImportSummary, LdapError> {
        tracing::warn!(%reason, "delta import not possible; running a full import instead");
        self.full(sink, ImportMode::FullFallback { reason }, previous_ous).await
    }

    /// Reads one object again in full (after DirSync named it as changed).
    /// `None` when it is gone or no longer matches the filter.
    pub(crate) async fn read_one(&self, dn: &str) -> Result<Option<SourceObject>, LdapError> {
        let (session, profile) = self.parts()?;
        let mut ldap = session.ldap.clone();
        let conn_err = |e: ldap3::LdapError| LdapError::Connection {
            url: session.url.clone(),
            operation: format!("reading {dn}"),
            reason: e.to_string(),
        };
        let mut stream = ldap
            .with_timeout(session.operation_timeout)
            .streaming_search(dn, Scope::Base, &profile.filter, profile.attributes.clone())
            .await
            .map_err(conn_err)?;
        let mut found = None;
        while let Some(re) = stream.next().await.map_err(conn_err)? {
            if re.is_ref() || re.is_intermediate() {
                continue;
            }
            found = ber::parse_entry(re.0);
        }
        let res = stream.finish().await;
        match res.rc {
            0 => {}
            32 => return Ok(None),
            rc => return Err(search_error(&session.url, dn, rc, &res.text)),
        }
        match found {
            Some(raw) => self.build_object(session, profile, raw).await,
            None => Ok(None),
        }
    }
}

impl LdapSource {
    /// Waits until the directory reports a change, at most `timeout`.
    /// `Ok(None)` when the server cannot push changes (AD, servers without
    /// syncrepl): the caller then just waits. `Ok(Some(true))` on a change.
    pub async fn wait_for_change(&mut self, timeout: std::time::Duration) -> Result<Option<bool>, LdapError> {
        let cookies = match self.last_mark.as_ref().map(|m| &m.position) {
            Some(DeltaPosition::Syncrepl { cookies }) => cookies.clone(),
            Some(DeltaPosition::DirSync { .. } | DeltaPosition::Usn { .. }) => {
                return self.wait_for_notification(timeout).await;
            }
            _ => return Ok(None),
        };
        self.connect().await?;
        if cookies.is_empty() {
            return Ok(None);
        }
        // Every base is watched (one persistent search each, on the one
        // connection): a change under any of them wakes the daemon.
        let mut bases = Vec::with_capacity(cookies.len());
        for c in &cookies {
            let base = Dn::parse(&c.base).map_err(|e| LdapError::Watermark(e.to_string()))?;
            bases.push((base, crate::watermark::unb64(&c.cookie)?));
        }
        let this: &LdapSource = self;
        let watches: Vec<sync::ChangeWatch<'_, LdapError>> = bases
            .into_iter()
            .map(|(base, cookie)| -> sync::ChangeWatch<'_, LdapError> {
                Box::pin(async move { crate::syncrepl::wait_for_push(this, &base, cookie, timeout).await })
            })
            .collect();
        sync::first_change(watches).await.map(Some)
    }

    /// AD: notes the DC's highestCommittedUSN before an import reads.
    async fn note_usn_before_import(&mut self) -> Result<(), LdapError> {
        let (_, profile) = self.connect().await?;
        if profile.kind != ServerKind::ActiveDirectory {
            return Ok(());
        }
        self.refresh_root_dse().await?;
        self.usn_before_import = self.session.as_ref().and_then(|s| s.root_dse.highest_committed_usn);
        Ok(())
    }

    /// AD: the DC's highestCommittedUSN before the last import read anything.
    pub(crate) fn usn_before_import(&self) -> Option<u64> {
        self.usn_before_import
    }

    /// Active Directory: waits for a change notification. A server that
    /// refuses the control is said once in the log and polled from then on.
    async fn wait_for_notification(&mut self, timeout: std::time::Duration) -> Result<Option<bool>, LdapError> {
        if self.notifications_refused {
            return Ok(None);
        }
        self.connect().await?;
        let supported =
            self.session.as_ref().is_some_and(|s| s.root_dse.supports_control(crate::notify::NOTIFICATION_CONTROL));
        let outcome = if supported {
            crate::notify::wait_for_notification(self, timeout).await?
        } else {
            crate::notify::Notified::Refused(12, "the control is not in the rootDSE's supportedControl".into())
        };
        match outcome {
            crate::notify::Notified::Change => Ok(Some(true)),
            crate::notify::Notified::Quiet => Ok(Some(false)),
            crate::notify::Notified::Refused(rc, text) => {
                let url = self.session.as_ref().map(|s| s.url.clone()).unwrap_or_default();
                tracing::warn!(server = %url, result_code = rc, reason = %text, "the directory refuses change notifications; polling every interval instead");
                self.notifications_refused = true;
                Ok(None)
            }
        }
    }

    fn remember(&mut self, summary: &ImportSummary) {
        self.last_mark = Mark::decode(&summary.watermark).ok();
    }
}

impl Source for LdapSource {
    type Error = LdapError;

    async fn full_import(
        &mut self,
        previous: Option<&Watermark>,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, LdapError> {
        // Only the OU pins of the previous watermark are used: a full import
        // starts its change tracking afresh.
        let pins = previous.and_then(|w| Mark::decode(w).ok()).map(|m| m.ous).unwrap_or_default();
        self.note_usn_before_import().await?;
        let summary = self.full(sink, ImportMode::Full, &pins).await?;
        self.remember(&summary);
        self.write_back_anchors().await;
        Ok(summary)
    }

    async fn delta_import(
        &mut self,
        since: &Watermark,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, LdapError> {
        self.note_usn_before_import().await?;
        let summary = self.delta(since, sink).await?;
        self.remember(&summary);
        self.write_back_anchors().await;
        Ok(summary)
    }

    async fn reread(
        &mut self,
        objects: &[(SourceId, Dn)],
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<u64, LdapError> {
        self.connect().await?;
        let mut read = 0;
        for (id, dn) in objects {
            // Same object (by id) and still in scope; anything else the next delta tells.
            if let Some(obj) = self.read_one(&dn.to_string()).await?
                && obj.id == *id
                && self.object_in_scope(&obj.entry.dn)
            {
                sink.accept(SourceChange::Upsert(obj))?;
                read += 1;
            }
        }
        Ok(read)
    }

    fn replicates_secrets(&self) -> bool {
        self.replicates()
    }

    async fn read_secrets(
        &mut self,
        objects: &[(SourceId, Dn)],
        population: usize,
    ) -> Result<Vec<(SourceId, sync::phs::Found)>, LdapError> {
        self.replicate_secrets(objects, population).await
    }
}

/// An entry made into an object (`None`: skipped, with a warning), or the
/// entry itself when some attribute's values came in ranges still to fetch.
pub(crate) enum Assembled {
    Object(Option<SourceObject>),
    Ranged(RawEntry),
}

/// Makes an entry into an object, unless values are still to be fetched:
/// pure work, so a full import does it on the task that reads ahead.
pub(crate) fn assemble(profile: &Profile, raw: RawEntry) -> Assembled {
    if raw.1.iter().any(|(name, _)| matches!(ranged(name), Some((_, Some(_))))) {
        return Assembled::Ranged(raw);
    }
    Assembled::Object(object_from(profile, raw))
}

/// An entry whose values are all there (a last range, `member;range=1500-*`,
/// is filed under the plain name) as an object: the id, anchor and kind
/// derived. `None` (with a warning) for a DN that does not parse or an object
/// without a usable id — it cannot be tracked, and must not stop the rest.
fn object_from(profile: &Profile, (dn_text, attrs): RawEntry) -> Option<SourceObject> {
    let dn = match Dn::parse(&dn_text) {
        Ok(dn) => dn,
        Err(e) => {
            tracing::warn!(dn = %dn_text, error = %e, "skipping an object whose DN cannot be parsed");
            return None;
        }
    };
    let mut entry = Entry::new(dn);
    for (name, values) in attrs {
        let name = match ranged(&name) {
            Some((base_name, _)) => base_name.to_string(),
            None => name,
        };
        let binary = directory::is_binary_attribute(&name);
        let values = values.into_iter().map(|v| Value::from_bytes_as(binary, v)).collect();
        entry.push_attribute(Attribute { name, values });
    }
    let kind = ObjectKind::of(&entry);
    let id = match object_id(profile, &entry) {
        Ok(id) => id,
        Err(reason) => {
            tracing::warn!(dn = %entry.dn, attribute = %profile.id_attribute, %reason, "skipping an object without a usable id");
            return None;
        }
    };
    let anchor = source_anchor(profile, kind, &entry, &id);
    Some(SourceObject { id, anchor, kind, entry })
}

/// `member;range=0-1499` → ("member", Some(1500)); `member;range=1500-*` → ("member", None).
pub(crate) fn ranged(name: &str) -> Option<(&str, Option<u64>)> {
    let (base, options) = name.split_once(';')?;
    let range = options.split(';').find_map(|o| o.strip_prefix("range=").or_else(|| o.strip_prefix("Range=")))?;
    let (_, high) = range.split_once('-')?;
    if high == "*" {
        Some((base, None))
    } else {
        high.parse::<u64>().ok()?.checked_add(1).map(|next| (base, Some(next)))
    }
}

/// AD ranged retrieval: reads the values of a large multi-valued attribute
/// from index `low` on. With `window`, asks for that many values per request;
/// without, takes what the server hands out (AD: MaxValRange, 1500 by default).
pub async fn fetch_range(
    session: &Session,
    dn: &str,
    attr: &str,
    mut low: u64,
    window: Option<u32>,
) -> Result<Vec<Vec<u8>>, LdapError> {
    let mut out = Vec::new();
    let mut ldap = session.ldap.clone();
    // Bounded: a server that never says '*' cannot loop us forever, and
    // running out of rounds is an error, never a silently shortened list.
    for _ in 0..MAX_RANGE_ROUNDS {
        let wanted = match window {
            Some(w) => format!("{attr};range={low}-{}", low.saturating_add(u64::from(w.max(1)) - 1)),
            None => format!("{attr};range={low}-*"),
        };
        let mut stream = ldap
            .with_timeout(session.operation_timeout)
            .streaming_search(dn, Scope::Base, "(objectClass=*)", vec![wanted])
            .await
            .map_err(|e| LdapError::Connection {
                url: session.url.clone(),
                operation: format!("reading {attr} of {dn}"),
                reason: e.to_string(),
            })?;
        let mut next = None;
        let mut got_any = false;
        while let Some(re) = stream.next().await.map_err(|e| LdapError::Connection {
            url: session.url.clone(),
            operation: format!("reading {attr} of {dn}"),
            reason: e.to_string(),
        })? {
            if re.is_ref() || re.is_intermediate() {
                continue;
            }
            let (_, attrs) = ber::parse_entry(re.0)
                .ok_or(LdapError::Protocol { url: session.url.clone(), what: "ranged entry".into() })?;
            for (name, values) in attrs {
                if let Some((base, more)) = ranged(&name)
                    && base.eq_ignore_ascii_case(attr)
                {
                    got_any = true;
                    out.extend(values);
                    next = more;
                }
            }
        }
        let res = stream.finish().await;
        if res.rc != 0 {
            return Err(search_error(&session.url, dn, res.rc, &res.text));
        }
        match next {
            Some(n) if got_any && n > low => low = n,
            Some(n) if got_any => {
                return Err(LdapError::Protocol {
                    url: session.url.clone(),
                    what: format!("ranged values of {attr} on {dn} (the next range starts at {n}, not after {low})"),
                });
            }
            _ => return Ok(out),
        }
    }
    Err(LdapError::Protocol {
        url: session.url.clone(),
        what: format!("ranged values of {attr} on {dn} (no end after {MAX_RANGE_ROUNDS} requests)"),
    })
}

/// Requests for one attribute's ranges: 100,000 × AD's 1,500 values is far
/// beyond any real group (AD's own limit is a few million links per object).
const MAX_RANGE_ROUNDS: usize = 100_000;

fn object_id(profile: &Profile, entry: &Entry) -> Result<SourceId, String> {
    let attr = profile.id_attribute.as_str();
    let value =
        entry.values(attr).first().ok_or_else(|| format!("{attr} is missing (is it readable by the bind account?)"))?;
    let bytes = match (attr.to_ascii_lowercase().as_str(), value) {
        ("objectguid", Value::Binary(b)) => Anchor::from_ad_guid(b).map_err(|e| e.to_string())?.0,
        ("entryuuid", Value::Text(t)) => Anchor::from_entry_uuid(t).map_err(|e| e.to_string())?.0,
        ("nsuniqueid", Value::Text(t)) => Anchor::from_ns_unique_id(t).map_err(|e| e.to_string())?.0,
        (_, v) => v.as_bytes().to_vec(),
    };
    Ok(SourceId(bytes))
}

fn source_anchor(profile: &Profile, kind: ObjectKind, entry: &Entry, id: &SourceId) -> Anchor {
    if kind == ObjectKind::User {
        for attr in &profile.user_anchor_attributes {
            if let Some(bytes) = entry.first_bytes(attr)
                && !bytes.is_empty()
            {
                // An AD consistency GUID must be a GUID; anything else is ignored.
                if attr.eq_ignore_ascii_case("ms-DS-ConsistencyGuid") && bytes.len() != 16 {
                    continue;
                }
                return Anchor::from_bytes(bytes);
            }
        }
    }
    match entry.first_bytes(&profile.anchor_attribute) {
        Some(b) if !profile.anchor_attribute.eq_ignore_ascii_case(&profile.id_attribute) && !b.is_empty() => {
            Anchor::from_bytes(b)
        }
        _ => Anchor(id.0.clone()),
    }
}

fn resolve_profile(settings: &LdapSettings, session: &Session) -> Result<Profile, LdapError> {
    let dse = &session.root_dse;
    let kind = settings.server_kind.unwrap_or_else(|| dse.kind());
    let (id_attribute, kind_filter) = match kind {
        ServerKind::ActiveDirectory => {
            ("objectGUID", "(|(&(objectClass=user)(!(objectClass=computer)))(objectClass=group)(objectClass=contact))")
        }
        ServerKind::Ds389 => (
            "nsUniqueId",
            "(|(objectClass=person)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))",
        ),
        ServerKind::OpenLdap | ServerKind::Other => (
            "entryUUID",
            "(|(objectClass=person)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))",
        ),
    };
    let mut user_anchor_attributes = Vec::new();
    let anchor_attribute = match &settings.anchor_attribute {
        Some(a) => {
            user_anchor_attributes.push(a.clone());
            a.clone()
        }
        None => {
            if kind == ServerKind::ActiveDirectory {
                user_anchor_attributes.push("ms-DS-ConsistencyGuid".to_string());
            }
            id_attribute.to_string()
        }
    };
    let bases = if settings.base_dns.is_empty() {
        let default = dse.default_naming_context.clone().or_else(|| {
            let user_contexts: Vec<&String> = dse
                .naming_contexts
                .iter()
                .filter(|c| !c.eq_ignore_ascii_case("cn=config") && !c.eq_ignore_ascii_case("cn=accesslog"))
                .collect();
            if user_contexts.len() == 1 { user_contexts.first().map(|c| (*c).clone()) } else { None }
        });
        let Some(text) = default else {
            return Err(LdapError::Settings(format!(
                "base_dns is not set and the server does not name a single default naming context (it has: {}); set base_dns",
                dse.naming_contexts.join("; ")
            )));
        };
        vec![Dn::parse(&text).map_err(|e| LdapError::Settings(format!("server's naming context: {e}")))?]
    } else {
        settings.base_dns.clone()
    };
    let naming_context = if kind == ServerKind::ActiveDirectory {
        let contexts: Vec<Dn> = dse.naming_contexts.iter().filter_map(|c| Dn::parse(c).ok()).collect();
        bases.first().and_then(|b| contexts.iter().filter(|nc| b.is_within(nc)).max_by_key(|nc| nc.len()).cloned())
    } else {
        None
    };
    let filter = match &settings.filter {
        Some(extra) => {
            let parsed = Filter::parse(extra).map_err(|e| LdapError::Settings(format!("filter: {e}")))?;
            format!("(&{kind_filter}{parsed})")
        }
        None => kind_filter.to_string(),
    };
    let mut attributes = settings.attributes.clone().unwrap_or_else(|| vec!["*".to_string()]);
    let mut required = vec!["objectClass".to_string(), id_attribute.to_string(), anchor_attribute.clone()];
    required.extend(user_anchor_attributes.iter().cloned());
    for r in required {
        if !attributes.iter().any(|a| a.eq_ignore_ascii_case(&r)) {
            attributes.push(r);
        }
    }
    let mut parts: Vec<String> = bases.iter().map(Dn::normalized).collect();
    parts.push(filter.clone());
    parts.extend(attributes.iter().map(|a| a.to_ascii_lowercase()));
    parts.push(anchor_attribute.clone());
    Ok(Profile {
        kind,
        id_attribute: id_attribute.to_string(),
        user_anchor_attributes,
        anchor_attribute,
        bases,
        naming_context,
        filter,
        attributes,
        scope_fingerprint: fingerprint(&parts),
    })
}

#[cfg(test)]
mod tests {
    use super::{Assembled, Profile, assemble, ranged};
    use crate::ServerKind;

    fn openldap() -> Profile {
        Profile {
            kind: ServerKind::OpenLdap,
            id_attribute: "entryUUID".into(),
            user_anchor_attributes: Vec::new(),
            anchor_attribute: "entryUUID".into(),
            bases: Vec::new(),
            naming_context: None,
            filter: "(objectClass=*)".into(),
            attributes: Vec::new(),
            scope_fingerprint: String::new(),
        }
    }

    /// The read-ahead task makes whole entries into objects (a last range
    /// filed under the plain name); an entry with ranges still to fetch
    /// comes back untouched, and one that cannot be tracked is skipped.
    #[test]
    fn entries_are_assembled_unless_ranges_are_still_to_fetch() {
        let uuid = b"0e8f3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b".to_vec();
        let entry = |member: &str| {
            (
                "cn=Grüne Gruppe,ou=Gruppen,dc=example,dc=org".to_string(),
                vec![
                    ("objectClass".to_string(), vec![b"groupOfNames".to_vec()]),
                    ("entryUUID".to_string(), vec![uuid.clone()]),
                    (member.to_string(), vec!["uid=zoë,dc=example,dc=org".as_bytes().to_vec()]),
                ],
            )
        };
        let Assembled::Object(Some(obj)) = assemble(&openldap(), entry("member;range=1500-*")) else {
            panic!("a last range is whole")
        };
        assert_eq!(obj.entry.first_text("member"), Some("uid=zoë,dc=example,dc=org"));
        assert_eq!(obj.entry.dn.to_string(), "cn=Grüne Gruppe,ou=Gruppen,dc=example,dc=org");
        assert_eq!(obj.kind, directory::ObjectKind::Group);

        let raw = entry("member;range=0-1499");
        let Assembled::Ranged(back) = assemble(&openldap(), raw.clone()) else { panic!("ranges to fetch") };
        assert_eq!(back, raw);

        let mut no_id = entry("member");
        no_id.1.retain(|(name, _)| name != "entryUUID");
        assert!(matches!(assemble(&openldap(), no_id), Assembled::Object(None)));
        let mut bad_dn = entry("member");
        bad_dn.0 = "not a DN ✗".into();
        assert!(matches!(assemble(&openldap(), bad_dn), Assembled::Object(None)));
    }

    #[test]
    fn parses_range_options() {
        assert_eq!(ranged("member;range=0-1499"), Some(("member", Some(1500))));
        assert_eq!(ranged("member;range=1500-*"), Some(("member", None)));
        assert_eq!(ranged("member"), None);
        assert_eq!(ranged("member;range=0-x"), None);
        assert_eq!(ranged(&format!("member;range=0-{}", u64::MAX)), None, "no overflow on a hostile bound");
        assert_eq!(ranged("cn;lang-de"), None);
    }
}
