//! Uniqueness, the way the cloud enforces it (the reference compared only
//! values of the same attribute, and proposed the same value as the "fix").
//!
//! - One address space: userPrincipalName, mail and every SMTP address in
//!   proxyAddresses, compared without case and without the `smtp:` prefix.
//!   One object may hold an address in several attributes (mail = primary
//!   SMTP = UPN is normal); two objects may not.
//! - proxyAddresses of other types, mailNickname, sAMAccountName and
//!   targetAddress: each unique in its own space.
//! - An object listing the same address twice in proxyAddresses.
//!
//! Which holder should change? The one that looks less like the value's
//! owner: an object whose own name (uid, sAMAccountName, mailNickname) is the
//! address's local part, or that holds the value in more of its address
//! attributes, keeps it; on a tie the holder seen first keeps it. The other
//! gets the finding with a real proposal — a numbered variant no other
//! object holds (`ann.lee2@x.org`), or, for a secondary `smtp:` address, its
//! removal — and the keeper is reported too (KEEP), so both sides are visible.

use std::collections::{HashMap, HashSet};

use directory::Entry;

use crate::Mode;
use crate::finding::{Action, ErrorKind, Finding};
use crate::skip::{common_name, object_class};
use crate::text::{is_smtp, split_prefix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Space {
    Address,
    OtherProxy,
    MailNickname,
    SamAccountName,
    TargetAddress,
}

impl Space {
    fn code(self) -> u8 {
        self as u8
    }
}

/// The attributes a slot can name, stored as their position here.
const ATTRIBUTES: [&str; 6] =
    ["userPrincipalName", "mail", "proxyAddresses", "mailNickname", "sAMAccountName", "targetAddress"];

fn attribute_code(attribute: &str) -> u8 {
    ATTRIBUTES.iter().position(|a| *a == attribute).and_then(|i| u8::try_from(i).ok()).unwrap_or(0)
}

fn attribute_name(code: u8) -> &'static str {
    ATTRIBUTES.get(usize::from(code)).copied().unwrap_or("userPrincipalName")
}

/// An object that holds a value, for the findings about it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub dn: String,
    pub cn: String,
    pub class: String,
}

/// Who holds a value first, as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The holder's number (from [`IndexStore::add_holder`]).
    pub object: u32,
    /// Which attribute (a position in the crate's attribute list).
    pub attribute: u8,
    /// The value as stored in the directory.
    pub value: String,
    /// How much the holder looks like the value's owner (see `ownership`).
    pub score: u32,
    pub reported: bool,
}

/// The index failed (a disk store's error, named by the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexError(pub String);

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the uniqueness index failed: {}", self.0)
    }
}

impl std::error::Error for IndexError {}

/// Where the uniqueness index lives. In memory by default ([`MemoryIndex`]);
/// a caller with a disk (the `idbridge` binary) keeps it there, so a scan's
/// memory stays flat whatever the directory's size. Keys are (space, lower-case value).
pub trait IndexStore: std::fmt::Debug + Send {
    fn slot(&mut self, space: u8, key: &str) -> Result<Option<Slot>, IndexError>;
    fn set_slot(&mut self, space: u8, key: &str, slot: &Slot) -> Result<(), IndexError>;
    /// Whether `key` was proposed as a fix already.
    fn proposed(&mut self, space: u8, key: &str) -> Result<bool, IndexError>;
    fn propose(&mut self, space: u8, key: &str) -> Result<(), IndexError>;
    /// Numbers holders from 0 in the order added.
    fn add_holder(&mut self, holder: Holder) -> Result<u32, IndexError>;
    fn holder(&mut self, id: u32) -> Result<Option<Holder>, IndexError>;
}

/// The index in memory (about 0.4 KiB per object).
#[derive(Debug, Default)]
pub struct MemoryIndex {
    holders: Vec<Holder>,
    values: HashMap<(u8, String), Slot>,
    proposed: HashSet<(u8, String)>,
}

impl IndexStore for MemoryIndex {
    fn slot(&mut self, space: u8, key: &str) -> Result<Option<Slot>, IndexError> {
        Ok(self.values.get(&(space, key.to_string())).cloned())
    }
    fn set_slot(&mut self, space: u8, key: &str, slot: &Slot) -> Result<(), IndexError> {
        self.values.insert((space, key.to_string()), slot.clone());
        Ok(())
    }
    fn proposed(&mut self, space: u8, key: &str) -> Result<bool, IndexError> {
        Ok(self.proposed.contains(&(space, key.to_string())))
    }
    fn propose(&mut self, space: u8, key: &str) -> Result<(), IndexError> {
        self.proposed.insert((space, key.to_string()));
        Ok(())
    }
    fn add_holder(&mut self, holder: Holder) -> Result<u32, IndexError> {
        self.holders.push(holder);
        Ok(u32::try_from(self.holders.len() - 1).unwrap_or(u32::MAX))
    }
    fn holder(&mut self, id: u32) -> Result<Option<Holder>, IndexError> {
        Ok(self.holders.get(id as usize).cloned())
    }
}

/// What one scan has seen so far.
#[derive(Debug)]
pub struct Index {
    store: Box<dyn IndexStore>,
}

impl Default for Index {
    fn default() -> Self {
        Index { store: Box::new(MemoryIndex::default()) }
    }
}

/// (space, attribute, value as stored, comparison key)
type Held = (Space, &'static str, String, String);

/// A comparison key and every (attribute, value) of one object that has it.
type Group = ((Space, String), Vec<(&'static str, String)>);

fn held_values(entry: &Entry, mode: Mode) -> Vec<Held> {
    let mut out = Vec::new();
    let text =
        |name: &str| entry.values(name).iter().filter_map(|v| v.as_text()).map(str::to_string).collect::<Vec<_>>();
    if mode == Mode::MultiTenant {
        for v in text("userPrincipalName").into_iter().take(1) {
            out.push((Space::Address, "userPrincipalName", v.clone(), v.to_lowercase()));
        }
    }
    for v in text("mail").into_iter().take(1) {
        out.push((Space::Address, "mail", v.clone(), v.to_lowercase()));
    }
    for v in text("proxyAddresses") {
        match split_prefix(&v) {
            Some((_, address)) if is_smtp(&v) => {
                let key = address.to_lowercase();
                out.push((Space::Address, "proxyAddresses", v.clone(), key));
            }
            _ => out.push((Space::OtherProxy, "proxyAddresses", v.clone(), v.to_lowercase())),
        }
    }
    for v in text("mailNickname").into_iter().take(1) {
        out.push((Space::MailNickname, "mailNickname", v.clone(), v.to_lowercase()));
    }
    if mode == Mode::MultiTenant {
        for v in text("sAMAccountName").into_iter().take(1) {
            out.push((Space::SamAccountName, "sAMAccountName", v.clone(), v.to_lowercase()));
        }
        for v in text("targetAddress").into_iter().take(1) {
            let key = split_prefix(&v).filter(|_| is_smtp(&v)).map(|(_, a)| a.to_string()).unwrap_or(v.clone());
            out.push((Space::TargetAddress, "targetAddress", v.clone(), key.to_lowercase()));
        }
    }
    out
}

impl Index {
    pub fn with_store(store: Box<dyn IndexStore>) -> Index {
        Index { store }
    }

    /// A variant of `value` (keeping its prefix) that nobody holds or was proposed.
    fn variant(&mut self, space: Space, value: &str) -> Result<Option<String>, IndexError> {
        let (prefix, body) = match split_prefix(value) {
            Some((p, b)) if space == Space::Address || space == Space::TargetAddress => (p.to_string(), b.to_string()),
            _ => (String::new(), value.to_string()),
        };
        let (stem, domain) = match body.rsplit_once('@') {
            Some((l, d)) if space == Space::Address || space == Space::TargetAddress => {
                (l.to_string(), format!("@{d}"))
            }
            _ => (body.clone(), String::new()),
        };
        for n in 2..10_000u32 {
            let candidate = format!("{stem}{n}{domain}");
            let key = candidate.to_lowercase();
            if self.store.slot(space.code(), &key)?.is_none() && !self.store.proposed(space.code(), &key)? {
                self.store.propose(space.code(), &key)?;
                return Ok(Some(format!("{prefix}{candidate}")));
            }
        }
        Ok(None)
    }

    /// Adds duplicate findings for `entry` to `findings` (merging with a
    /// finding the checks made for the same value).
    pub fn check(&mut self, entry: &Entry, mode: Mode, findings: &mut Vec<Finding>) -> Result<(), IndexError> {
        let me = self.store.add_holder(Holder {
            dn: entry.dn.to_string(),
            cn: common_name(entry),
            class: object_class(entry),
        })?;
        // This object's values, grouped by what they are compared as.
        let mut keys: Vec<Group> = Vec::new();
        for (space, attribute, value, key) in held_values(entry, mode) {
            if key.is_empty() {
                continue;
            }
            let slot_key = (space, key);
            match keys.iter_mut().find(|(k, _)| *k == slot_key) {
                Some((_, list)) => {
                    // The same address twice in proxyAddresses (case or prefix aside) is a fault of its own.
                    if attribute == "proxyAddresses"
                        && list.iter().any(|(a, _)| *a == "proxyAddresses")
                        && !is_primary(&value)
                    {
                        let note = "the same address is listed twice in proxyAddresses".to_string();
                        self.flag(entry, findings, attribute, &value, Action::Remove, None, note);
                    } else {
                        list.push((attribute, value));
                    }
                }
                None => keys.push((slot_key, vec![(attribute, value)])),
            }
        }
        let mut extra = Vec::new();
        for (slot_key, held) in keys {
            let score = ownership(entry, &slot_key.1, held.len());
            let (space, key) = (slot_key.0.code(), slot_key.1.as_str());
            let Some(mut slot) = self.store.slot(space, key)? else {
                let (attribute, value) = held[0].clone();
                let slot = Slot { object: me, attribute: attribute_code(attribute), value, score, reported: false };
                self.store.set_slot(space, key, &slot)?;
                continue;
            };
            let first = self.store.holder(slot.object)?.unwrap_or(Holder {
                dn: String::new(),
                cn: String::new(),
                class: String::new(),
            });
            let (first_dn, first_cn, first_class) = (first.dn, first.cn, first.class);
            if score > slot.score {
                // This object is the owner; the first holder should change.
                let finding = Finding {
                    dn: first_dn.clone(),
                    cn: first_cn,
                    object_class: first_class,
                    attribute: attribute_name(slot.attribute).to_string(),
                    value: slot.value.clone(),
                    errors: vec![ErrorKind::Duplicate],
                    action: Action::Edit,
                    proposed: None,
                    note: Some(format!("also held by {}, whose own name or addresses match it", entry.dn)),
                };
                let (first_attr, first_value) = (attribute_name(slot.attribute), slot.value.clone());
                let owner = Slot {
                    object: me,
                    attribute: attribute_code(held[0].0),
                    value: held[0].1.clone(),
                    score,
                    reported: true,
                };
                self.store.set_slot(space, key, &owner)?;
                let mut finding = finding;
                if first_attr == "proxyAddresses" && !is_primary(&first_value) {
                    finding.action = Action::Remove;
                } else {
                    finding.proposed = self.variant(slot_key.0, &first_value)?;
                }
                extra.push(finding);
                for (attribute, value) in &held {
                    extra.push(Finding {
                        dn: entry.dn.to_string(),
                        cn: common_name(entry),
                        object_class: object_class(entry),
                        attribute: attribute.to_string(),
                        value: value.clone(),
                        errors: vec![ErrorKind::Duplicate],
                        action: Action::Keep,
                        proposed: None,
                        note: Some(format!("kept here; also held by {first_dn}")),
                    });
                }
                continue;
            }
            // The first holder keeps it; this object changes.
            let note = format!("also held by {first_dn} ({})", attribute_name(slot.attribute));
            if !slot.reported {
                slot.reported = true;
                self.store.set_slot(space, key, &slot)?;
                extra.push(Finding {
                    dn: first_dn.clone(),
                    cn: first_cn,
                    object_class: first_class,
                    attribute: attribute_name(slot.attribute).to_string(),
                    value: slot.value.clone(),
                    errors: vec![ErrorKind::Duplicate],
                    action: Action::Keep,
                    proposed: None,
                    note: Some(format!("held first; also held by {} ({})", entry.dn, held[0].0)),
                });
            }
            for (attribute, value) in &held {
                if *attribute == "proxyAddresses" && !is_primary(value) && is_smtp(value) {
                    self.flag(entry, findings, attribute, value, Action::Remove, None, note.clone());
                } else {
                    let base = findings
                        .iter()
                        .find(|f| f.attribute == *attribute && f.value == *value)
                        .and_then(|f| f.proposed.clone())
                        .unwrap_or_else(|| value.clone());
                    let proposal = self.variant(slot_key.0, &base)?;
                    self.flag(entry, findings, attribute, value, Action::Edit, proposal, note.clone());
                }
            }
        }
        findings.extend(extra);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn flag(
        &self,
        entry: &Entry,
        findings: &mut Vec<Finding>,
        attribute: &str,
        value: &str,
        action: Action,
        proposed: Option<String>,
        note: String,
    ) {
        match findings.iter_mut().find(|f| f.attribute == attribute && f.value == value && f.dn == entry.dn.to_string())
        {
            Some(f) => {
                f.errors.push(ErrorKind::Duplicate);
                f.errors.sort();
                f.errors.dedup();
                f.action = action;
                f.proposed = if action == Action::Remove { None } else { proposed.or(f.proposed.take()) };
                f.note = Some(note);
            }
            None => findings.push(Finding {
                dn: entry.dn.to_string(),
                cn: common_name(entry),
                object_class: object_class(entry),
                attribute: attribute.to_string(),
                value: value.to_string(),
                errors: vec![ErrorKind::Duplicate],
                action,
                proposed,
                note: Some(note),
            }),
        }
    }
}

fn is_primary(value: &str) -> bool {
    value.starts_with("SMTP:")
}

/// How much `entry` looks like the owner of `key`: 2 when the address's local
/// part (or the name itself) is one of the object's own names, plus how many
/// of its attributes hold the value.
fn ownership(entry: &Entry, key: &str, held_in: usize) -> u32 {
    let local = key.split('@').next().unwrap_or(key);
    let own = ["uid", "sAMAccountName", "mailNickname"]
        .iter()
        .filter_map(|a| entry.first_text(a))
        .any(|name| name.eq_ignore_ascii_case(local));
    u32::from(own) * 2 + u32::try_from(held_in).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::Dn;

    fn person(dn: &str, attrs: &[(&str, &str)]) -> Entry {
        let mut e = Entry::new(Dn::parse(dn).unwrap());
        e.add("objectClass", "user");
        for (k, v) in attrs {
            e.add(k, *v);
        }
        e
    }

    #[test]
    fn duplicates_across_attributes_and_objects_with_real_proposals() {
        let mut index = Index::default();
        let mut f = Vec::new();
        index
            .check(
                &person(
                    "CN=a,DC=x",
                    &[("userPrincipalName", "ann@x.org"), ("mail", "ann@x.org"), ("proxyAddresses", "SMTP:ann@x.org")],
                ),
                Mode::MultiTenant,
                &mut f,
            )
            .unwrap();
        assert!(f.is_empty(), "one object may hold its address in several attributes: {f:?}");
        // Another object: mail = the first one's UPN, a secondary alias of the first one's address.
        index
            .check(
                &person(
                    "CN=b,DC=x",
                    &[
                        ("mail", "ANN@x.org"),
                        ("proxyAddresses", "smtp:Ann@X.org"),
                        ("proxyAddresses", "SMTP:bob@x.org"),
                    ],
                ),
                Mode::MultiTenant,
                &mut f,
            )
            .unwrap();
        let mail = f.iter().find(|x| x.dn == "CN=b,DC=x" && x.attribute == "mail").unwrap();
        assert_eq!((mail.action, mail.proposed.as_deref()), (Action::Edit, Some("ANN2@x.org")));
        assert!(mail.note.as_deref().unwrap().contains("CN=a,DC=x"));
        let alias = f.iter().find(|x| x.dn == "CN=b,DC=x" && x.attribute == "proxyAddresses").unwrap();
        assert_eq!((alias.action, alias.proposed.as_deref()), (Action::Remove, None));
        let keep = f.iter().find(|x| x.dn == "CN=a,DC=x").unwrap();
        assert_eq!(keep.action, Action::Keep);
        assert_eq!(f.iter().filter(|x| x.dn == "CN=a,DC=x").count(), 1, "the first holder is reported once");
        // A third holder: the proposal skips what was proposed already.
        let mut g = Vec::new();
        index.check(&person("CN=c,DC=x", &[("mail", "ann@x.org")]), Mode::MultiTenant, &mut g).unwrap();
        assert_eq!(g[0].proposed.as_deref(), Some("ann3@x.org"));
        // The same address twice in one object's proxyAddresses.
        let mut h = Vec::new();
        index
            .check(
                &person("CN=d,DC=x", &[("proxyAddresses", "SMTP:dee@x.org"), ("proxyAddresses", "smtp:DEE@x.org")]),
                Mode::MultiTenant,
                &mut h,
            )
            .unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].value.as_str(), h[0].action), ("smtp:DEE@x.org", Action::Remove));
    }
}
