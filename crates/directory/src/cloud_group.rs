//! The mark a group written back from the cloud carries in the directory,
//! so the import knows it for the cloud's own (and never brings a second
//! copy back) and the writer finds what it wrote.
//!
//! The value is `Group_<cloud id>`. Active Directory keeps it in
//! `adminDescription` — the attribute and form Entra Connect's own group
//! writeback uses, so an estate that ran Connect reads it the same way —,
//! other directories in `businessCategory`, an optional attribute of
//! `groupOfNames` that nothing else here reads.

use crate::Entry;

/// The value's prefix.
pub const PREFIX: &str = "Group_";

/// Active Directory's attribute for the mark.
pub const AD_ATTRIBUTE: &str = "adminDescription";

/// Other directories' attribute for the mark (`groupOfNames`).
pub const LDAP_ATTRIBUTE: &str = "businessCategory";

/// The mark of the cloud group `cloud_id`.
pub fn mark(cloud_id: &str) -> String {
    format!("{PREFIX}{cloud_id}")
}

/// The cloud id a mark names; `None` for any other value (a cloud id is a
/// UUID: hex digits and dashes).
pub fn cloud_id(value: &str) -> Option<&str> {
    let id = value.strip_prefix(PREFIX)?;
    let plausible = (8..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    plausible.then_some(id)
}

/// The cloud group an entry was written back from, if it was.
pub fn written_back_from(entry: &Entry) -> Option<&str> {
    [AD_ATTRIBUTE, LDAP_ATTRIBUTE].iter().find_map(|a| entry.first_text(a).and_then(cloud_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_other_values_are_not_marks() {
        let id = "0190f3a2-7c4e-7b21-9d3e-1f2a3b4c5d6e";
        assert_eq!(cloud_id(&mark(id)), Some(id));
        assert_eq!(cloud_id("Group_Sales"), None, "a word after the prefix is someone's own value");
        assert_eq!(cloud_id("Group_"), None);
        assert_eq!(cloud_id("Gruppe_ünïcödé"), None);
        assert_eq!(cloud_id("group_0190f3a2"), None, "the prefix is case-sensitive");
    }
}
