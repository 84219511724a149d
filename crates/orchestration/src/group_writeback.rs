//! Group writeback, each round: the groups the cloud manages are read from
//! the tenant before the cycles (the taken-over ones are then left out of
//! every export), and after a source's cycle they are written into its
//! `[source.writeback] groups_ou` (`connector_ldap::group_writeback`).
//!
//! Members are mapped back through the connector space: the tenant gives a
//! synchronised member's on-premises DN, and only a DN this source holds is
//! written; cloud-only members and members of other directories are
//! reported, never invented.

use std::collections::HashSet;

use config::SourceConfig;
use connector_ldap::group_writeback::{self as writer, Member, Place, Round, WritebackReport};
use connector_scim::ScimTarget;
use directory::Dn;
use proto::hybrid::{CloudGroup, CloudMember};
use store::StateStore;

use crate::{Error, Result};

/// The cloud-managed groups as read at the start of a round.
#[derive(Debug, Clone, Default)]
pub struct CloudGroups {
    pub groups: Vec<CloudGroup>,
}

impl CloudGroups {
    /// The immutableIds of synchronised groups the cloud took over: their
    /// exports wait while the cloud manages them.
    pub fn taken_over(&self) -> HashSet<String> {
        self.groups.iter().filter_map(|g| g.taken_over.as_ref().map(|t| t.immutable_id.clone())).collect()
    }
}

/// Reads every page. A tenant from before group writeback (404) has none;
/// any other failure fails the round, so nothing is exported over a
/// taken-over group because the list could not be read.
pub async fn read(target: &ScimTarget) -> Result<CloudGroups> {
    let mut groups = Vec::new();
    let mut after = String::new();
    // Bounded: each page moves `after` forward; a tenant that repeats itself is an error.
    for _ in 0..proto::hybrid::MAX_CLOUD_GROUP_PAGES {
        let Some(page) = target.cloud_groups(&after).await.map_err(|e| Error::CloudGroups(e.message))? else {
            return Ok(CloudGroups::default());
        };
        groups.extend(page.groups);
        match page.next {
            Some(next) if next > after => after = next,
            Some(_) => return Err(Error::CloudGroups("the tenant's pages of cloud groups do not move on".into())),
            None => return Ok(CloudGroups { groups }),
        }
    }
    Err(Error::CloudGroups(format!("more than {} pages of cloud groups", proto::hybrid::MAX_CLOUD_GROUP_PAGES)))
}

/// A member that could not be written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedMember {
    pub group: String,
    pub member: String,
    pub why: &'static str,
}

/// What writing one source's groups did, and the members left out.
#[derive(Debug, Clone, Default)]
pub struct GroupWriteback {
    pub source: String,
    pub written: WritebackReport,
    pub skipped_members: Vec<SkippedMember>,
}

/// The groups `src` gets: cloud-created ones, and the taken-over groups
/// that live in this directory, with members mapped to its DNs.
pub fn plan_for(
    src: &SourceConfig,
    store: &dyn StateStore,
    cloud: &CloudGroups,
) -> Result<(Vec<writer::CloudGroup>, Vec<SkippedMember>)> {
    let in_this_directory = |dn: &Dn| -> Result<bool> { Ok(store.cs_find(&src.name, dn)?.is_some()) };
    let cloud_created: HashSet<&str> =
        cloud.groups.iter().filter(|g| g.taken_over.is_none()).map(|g| g.id.as_str()).collect();
    let mut groups = Vec::new();
    let mut skipped = Vec::new();
    for group in &cloud.groups {
        let place = match &group.taken_over {
            None => Place::WritebackOu,
            Some(taken) => match taken.on_premises_dn.as_deref().and_then(|d| Dn::parse(d).ok()) {
                Some(dn) if in_this_directory(&dn)? => Place::At(dn),
                // Another directory's group (or one without a DN): not ours to write.
                _ => continue,
            },
        };
        let mut members = Vec::with_capacity(group.members.len());
        let mut skip = |member: &str, why| {
            skipped.push(SkippedMember { group: group.display_name.clone(), member: member.to_string(), why });
        };
        for member in &group.members {
            match member {
                CloudMember::OnPremises { dn } => match Dn::parse(dn) {
                    Ok(parsed) if in_this_directory(&parsed)? => members.push(Member::Dn(parsed)),
                    _ => skip(dn, "not in this directory"),
                },
                CloudMember::CloudGroup { id } if cloud_created.contains(id.as_str()) => {
                    members.push(Member::CloudGroup(id.clone()));
                }
                CloudMember::CloudGroup { id } => skip(id, "unknown group"),
                CloudMember::CloudOnly { name } => skip(name, "cloud-only: no on-premises account"),
            }
        }
        groups.push(writer::CloudGroup {
            cloud_id: group.id.clone(),
            name: group.display_name.clone(),
            members,
            place,
        });
    }
    Ok((groups, skipped))
}

/// Writes the cloud's groups into `src`'s writeback OU (and its taken-over
/// groups where they are). `None` when the source has no writeback.
pub async fn write_back(
    src: &SourceConfig,
    store: &dyn StateStore,
    cloud: &CloudGroups,
    deletion_limit: usize,
) -> Result<Option<GroupWriteback>> {
    let Some(writeback) = &src.writeback else { return Ok(None) };
    let groups_ou = Dn::parse(&writeback.groups_ou).map_err(|e| {
        Error::Config(config::ConfigError::Invalid(format!(
            "source {:?}: writeback.groups_ou {:?} is not a DN: {e}",
            src.name, writeback.groups_ou
        )))
    })?;
    let (groups, skipped_members) = plan_for(src, store, cloud)?;
    let settings = src.to_settings()?;
    let written = writer::write_groups(
        &settings,
        Round { groups_ou: &groups_ou, groups: &groups, complete: true, deletion_limit },
    )
    .await
    .map_err(|e| Error::Directory { source_name: src.name.clone(), error: Box::new(e) })?;
    for (group, message) in &written.failures {
        tracing::warn!(source = %src.name, %group, %message, "group writeback: the directory refused a group");
    }
    if !skipped_members.is_empty() {
        tracing::info!(
            source = %src.name,
            skipped = skipped_members.len(),
            "group writeback: members without an account in this directory were left out"
        );
    }
    Ok(Some(GroupWriteback { source: src.name.clone(), written, skipped_members }))
}
