//! `/hybrid/v1`: password records from the sync side (password hash sync).
//! Needs a sync or admin token.

use serde::{Deserialize, Serialize};

/// `POST` here: [`PasswordBatch`] → [`PasswordResults`].
pub const PASSWORDS_PATH: &str = "/hybrid/v1/passwords";

/// Most records in one request (more is refused with 413).
pub const MAX_BATCH: usize = 1000;

/// A fencing token on every write of a sync daemon whose state is shared
/// (PostgreSQL): `LINEAGE.EPOCH` — the state's lease lineage and the
/// writer's epoch. The tenant remembers the highest epoch per lineage and
/// token and refuses a write with a lower one (409): a daemon replaced
/// while paused cannot overwrite its successor's exports.
pub const SYNC_FENCE_HEADER: &str = "idbridge-sync-fence";

/// A parsed [`SYNC_FENCE_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFence {
    /// Letters and digits, at most 64.
    pub lineage: String,
    pub epoch: i64,
}

impl SyncFence {
    pub fn parse(text: &str) -> Option<SyncFence> {
        let (lineage, epoch) = text.trim().rsplit_once('.')?;
        let good = !lineage.is_empty() && lineage.len() <= 64 && lineage.bytes().all(|b| b.is_ascii_alphanumeric());
        let epoch: i64 = epoch.parse().ok().filter(|e| *e > 0)?;
        good.then(|| SyncFence { lineage: lineage.to_string(), epoch })
    }
}

impl std::fmt::Display for SyncFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.lineage, self.epoch)
    }
}

/// `POST` here: one [`SyncReport`] per finished (or failed) cycle of a
/// sync daemon, so a daemon on another machine is visible centrally. Needs
/// a sync or admin token; answered with 204.
pub const SYNC_REPORTS_PATH: &str = "/hybrid/v1/sync-reports";

/// Most errors one report carries (the rest are counted in `failed`).
pub const MAX_REPORTED_ERRORS: usize = 100;

/// What one cycle of one connector (source) did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncReport {
    /// The source's name in `idbridge.toml` (at most 64 characters).
    pub connector: String,
    /// The daemon's host and process.
    pub host: String,
    pub version: String,
    /// RFC 3339, UTC.
    pub finished: String,
    /// `success`, `stopped` (the deletion threshold) or `failed`.
    pub status: String,
    #[serde(default)]
    pub staging: bool,
    /// The daemon's pause between cycles (seconds).
    #[serde(default)]
    pub interval_secs: u64,
    /// Milliseconds in import, sync and export.
    #[serde(default)]
    pub stage_ms: [u64; 3],
    #[serde(default)]
    pub imported: u64,
    #[serde(default)]
    pub deleted_on_premises: u64,
    #[serde(default)]
    pub synced: u64,
    #[serde(default)]
    pub out_of_scope: u64,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub updated: u64,
    #[serde(default)]
    pub deleted: u64,
    #[serde(default)]
    pub unchanged: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub passwords: u64,
    /// Deletions the threshold holds back (with `stopped`).
    #[serde(default)]
    pub deletions_held: u64,
    /// Objects that failed: (object, reason), at most [`MAX_REPORTED_ERRORS`].
    #[serde(default)]
    pub errors: Vec<ReportedError>,
    /// Why the cycle failed as a whole (with `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `stopped`: what the held deletions would delete, at most
    /// [`MAX_REPORTED_DELETIONS`] (`deletionsHeld` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_deletions: Vec<HeldDeletion>,
}

/// Most held deletions one report lists.
pub const MAX_REPORTED_DELETIONS: usize = 1000;

/// An object the deletion threshold kept from being deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeldDeletion {
    /// `User`, `Group` or `Contact`.
    pub kind: String,
    /// Its name (user name or display name), else its source anchor.
    pub object: String,
    /// Its id in the tenant.
    pub cloud_id: String,
}

/// `GET` here (`{connector}` replaced): the deletions an administrator
/// allowed the connector's next cycle in the console, as
/// [`DeletionAllowance`]; 404 when none. Needs a sync or admin token.
pub const DELETION_ALLOWANCE_PATH: &str = "/hybrid/v1/deletion-allowances/{connector}";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletionAllowance {
    pub connector: String,
    /// Up to this many deletions go through once (like `--allow-deletes`).
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedError {
    pub object: String,
    pub message: String,
}

impl SyncReport {
    /// What the tenant refuses: an empty or long connector name, an unknown
    /// status, too many errors, over-long texts.
    pub fn check(&self) -> Result<(), String> {
        let bounded = |what: &str, text: &str, max: usize| {
            if text.chars().count() > max { Err(format!("{what}: at most {max} characters")) } else { Ok(()) }
        };
        if self.connector.trim().is_empty() {
            return Err("connector: a source name is needed".into());
        }
        bounded("connector", &self.connector, 64)?;
        bounded("host", &self.host, 256)?;
        bounded("version", &self.version, 64)?;
        bounded("finished", &self.finished, 64)?;
        if !matches!(self.status.as_str(), "success" | "stopped" | "failed") {
            return Err(format!("status: success, stopped or failed, not {:?}", self.status));
        }
        if self.errors.len() > MAX_REPORTED_ERRORS {
            return Err(format!("errors: at most {MAX_REPORTED_ERRORS}"));
        }
        for e in &self.errors {
            bounded("errors.object", &e.object, 1024)?;
            bounded("errors.message", &e.message, 2048)?;
        }
        if self.held_deletions.len() > MAX_REPORTED_DELETIONS {
            return Err(format!("heldDeletions: at most {MAX_REPORTED_DELETIONS}"));
        }
        for d in &self.held_deletions {
            bounded("heldDeletions.kind", &d.kind, 16)?;
            bounded("heldDeletions.object", &d.object, 1024)?;
            bounded("heldDeletions.cloudId", &d.cloud_id, 256)?;
        }
        bounded("error", self.error.as_deref().unwrap_or(""), 4096)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PasswordBatch {
    pub credentials: Vec<CredentialUpdate>,
}

/// One item of a batch: a record to store, or `remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialUpdate {
    pub immutable_id: String,
    /// The record (`PPH1$…` or an LDAP `{SCHEME}` hash); absent with `remove`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub must_change_password: bool,
    /// The user has no password on-premises any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
}

/// How one item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialStatus {
    Stored,
    Removed,
    UnknownUser,
    /// The token may not set passwords in the user's domain.
    Forbidden,
    Invalid,
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::Stored => "stored",
            CredentialStatus::Removed => "removed",
            CredentialStatus::UnknownUser => "unknown-user",
            CredentialStatus::Forbidden => "forbidden",
            CredentialStatus::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialResult {
    pub immutable_id: String,
    pub status: CredentialStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One result per item, in the batch's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordResults {
    pub results: Vec<CredentialResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_is_camel_case_and_kebab_status() -> Result<(), serde_json::Error> {
        let batch: PasswordBatch = serde_json::from_str(
            r#"{"credentials":[{"immutableId":"a","record":"PPH1$x","mustChangePassword":true},{"immutableId":"b","remove":true}]}"#,
        )?;
        assert_eq!(batch.credentials.len(), 2);
        assert!(batch.credentials.iter().any(|c| c.remove && c.immutable_id == "b"));
        let out = serde_json::to_string(&PasswordResults {
            results: vec![CredentialResult {
                immutable_id: "ü".into(),
                status: CredentialStatus::UnknownUser,
                detail: None,
            }],
        })?;
        assert_eq!(out, r#"{"results":[{"immutableId":"ü","status":"unknown-user"}]}"#);
        Ok(())
    }
}

/// `GET` here: the objects whose lineage the admin console asked for, as
/// [`LineageRequests`] (at most [`MAX_LINEAGE_OBJECTS`]); `POST` a
/// [`LineageBatch`] with the answers (204). Needs a sync or admin token.
pub const LINEAGE_PATH: &str = "/hybrid/v1/lineage";

/// Most objects one request or batch names.
pub const MAX_LINEAGE_OBJECTS: usize = 100;

/// Most attributes one object's lineage lists.
pub const MAX_LINEAGE_ATTRIBUTES: usize = 300;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineageRequests {
    /// The objects' sourceAnchors.
    pub immutable_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LineageBatch {
    pub objects: Vec<ObjectLineage>,
}

/// Where one synchronised object's tenant attributes come from, as the
/// sync engine explains it (`idbridge sync explain`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectLineage {
    pub immutable_id: String,
    /// `false`: this sync daemon has no object with that sourceAnchor.
    pub found: bool,
    /// The source (connector) and the on-premises object (DN).
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub source_object: String,
    /// Objects of other sources joined to it: "source: DN".
    #[serde(default)]
    pub joined: Vec<String>,
    #[serde(default)]
    pub attributes: Vec<AttributeLineage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributeLineage {
    /// The tenant (SCIM) path.
    pub attribute: String,
    /// The outbound flow: metaverse attribute or expression, and rule.
    pub outbound: String,
    /// Where that metaverse attribute came from: source attribute and rule,
    /// a joined object, or the engine itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<String>,
}

impl LineageBatch {
    /// What the tenant refuses: too many objects or attributes, over-long texts.
    pub fn check(&self) -> Result<(), String> {
        let bounded = |what: &str, text: &str| {
            if text.chars().count() > 2048 { Err(format!("{what}: at most 2048 characters")) } else { Ok(()) }
        };
        if self.objects.len() > MAX_LINEAGE_OBJECTS {
            return Err(format!("objects: at most {MAX_LINEAGE_OBJECTS}"));
        }
        for o in &self.objects {
            bounded("immutableId", &o.immutable_id)?;
            bounded("source", &o.source)?;
            bounded("sourceObject", &o.source_object)?;
            if o.attributes.len() > MAX_LINEAGE_ATTRIBUTES || o.joined.len() > MAX_LINEAGE_ATTRIBUTES {
                return Err(format!("attributes: at most {MAX_LINEAGE_ATTRIBUTES} per object"));
            }
            for j in &o.joined {
                bounded("joined", j)?;
            }
            for a in &o.attributes {
                bounded("attribute", &a.attribute)?;
                bounded("outbound", &a.outbound)?;
                bounded("inbound", a.inbound.as_deref().unwrap_or_default())?;
            }
        }
        Ok(())
    }
}

/// `GET` here: the synchronised objects waiting for a value another object
/// holds (duplicate attribute resiliency), as [`QuarantineList`], the longest
/// waiting first, at most [`MAX_QUARANTINE_LISTED`]. Needs a sync or admin token.
pub const QUARANTINE_PATH: &str = "/hybrid/v1/quarantine";

/// Most entries one quarantine list carries (`total` counts them all).
pub const MAX_QUARANTINE_LISTED: usize = 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineList {
    /// Every waiting value, listed or not.
    pub total: u64,
    pub entries: Vec<QuarantineEntry>,
}

/// One value one object waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineEntry {
    pub object: ObjectName,
    /// `userName` or `proxyAddresses`.
    pub attribute: String,
    /// The value as the object wants it.
    pub value: String,
    pub holder: ObjectName,
    pub reason: HoldReason,
    /// When the object started waiting (RFC 3339).
    pub since: String,
}

/// A tenant object as people recognise it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectName {
    pub id: String,
    /// userName, else displayName, else the id.
    pub name: String,
    /// The sourceAnchor of a synchronised object; none for a cloud-only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable_id: Option<String>,
}

impl std::fmt::Display for ObjectName {
    /// "ana@example.org (object 1234, immutableId QUJD)", "Sales (cloud-only object 99)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.immutable_id {
            Some(imm) => write!(f, "{} (object {}, immutableId {imm})", self.name, self.id),
            None => write!(f, "{} (cloud-only object {})", self.name, self.id),
        }
    }
}

/// Why the holder has a value another object wants (see [`crate::unique`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldReason {
    /// It had the value before this object asked for it; the holder keeps it.
    HeldFirst,
    /// It got the value when it was released, having the lowest immutableId
    /// of the objects waiting for it.
    LowestImmutableId,
}

impl HoldReason {
    /// The rule, in words.
    pub fn explain(self) -> &'static str {
        match self {
            HoldReason::HeldFirst => "it held the value first, and the holder keeps it",
            HoldReason::LowestImmutableId => {
                "it got the value when it was released, having the lowest immutableId of the objects waiting for it"
            }
        }
    }

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::HeldFirst => "held-first",
            HoldReason::LowestImmutableId => "lowest-immutable-id",
        }
    }

    pub fn parse(text: &str) -> Option<HoldReason> {
        [HoldReason::HeldFirst, HoldReason::LowestImmutableId].into_iter().find(|r| r.as_str() == text)
    }
}

/// `GET /hybrid/v1/cloud-groups?after=ID`: the groups the cloud manages —
/// created in the cloud, or synchronised and taken over — for group
/// writeback, a [`CloudGroupPage`] at a time in id order.
pub const CLOUD_GROUPS_PATH: &str = "/hybrid/v1/cloud-groups";

/// Groups per page (a page carries every member of each).
pub const MAX_CLOUD_GROUPS_PAGE: usize = 200;

/// Pages a reader follows before it gives up (a million groups).
pub const MAX_CLOUD_GROUP_PAGES: usize = 5_000;

/// One page of cloud-managed groups; `next` is the `after` of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudGroupPage {
    pub groups: Vec<CloudGroup>,
    #[serde(default)]
    pub next: Option<String>,
}

/// A group the cloud manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudGroup {
    /// The tenant's id.
    pub id: String,
    pub display_name: String,
    /// A synchronised group an administrator took over (source of
    /// authority); `None` for a group created in the cloud.
    #[serde(default)]
    pub taken_over: Option<TakenOver>,
    pub members: Vec<CloudMember>,
}

/// Where a taken-over group came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TakenOver {
    pub immutable_id: String,
    #[serde(default)]
    pub on_premises_dn: Option<String>,
}

/// A member of a cloud-managed group, as the directory can hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum CloudMember {
    /// A synchronised object, at its on-premises DN.
    OnPremises { dn: String },
    /// Another group the cloud manages, by its tenant id.
    CloudGroup { id: String },
    /// A cloud-only object: nothing on-premises to point at.
    CloudOnly { name: String },
}
