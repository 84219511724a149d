//! What kind of identity object an entry is, from its object classes.

use std::fmt;

use crate::entry::Entry;

/// The object kinds idbridge synchronises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    User,
    Group,
    Contact,
    OrganizationalUnit,
    Other,
}

impl ObjectKind {
    /// Classifies an entry. AD `computer` objects are also `user`s, and are not people.
    pub fn of(entry: &Entry) -> ObjectKind {
        // One pass over objectClass, then a decision table.
        let mut seen = 0u32;
        const NAMES: [&str; 11] = [
            "computer",
            "contact",
            "user",
            "inetOrgPerson",
            "posixAccount",
            "person",
            "group",
            "groupOfNames",
            "groupOfUniqueNames",
            "posixGroup",
            "organizationalUnit",
        ];
        for value in entry.values("objectClass") {
            if let Some(text) = value.as_text()
                && let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(text))
            {
                seen |= 1 << i;
            }
        }
        let has = |name: &str| NAMES.iter().position(|n| *n == name).is_some_and(|i| seen & (1 << i) != 0);
        if has("computer") {
            ObjectKind::Other
        } else if has("contact") {
            ObjectKind::Contact
        } else if has("user") || has("inetOrgPerson") || has("posixAccount") && has("person") {
            ObjectKind::User
        } else if has("group") || has("groupOfNames") || has("groupOfUniqueNames") || has("posixGroup") {
            ObjectKind::Group
        } else if has("organizationalUnit") {
            ObjectKind::OrganizationalUnit
        } else if has("person") || entry.has_object_class("organizationalPerson") {
            // A (organizational)person without a login: treat like a contact.
            ObjectKind::Contact
        } else {
            ObjectKind::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::User => "user",
            ObjectKind::Group => "group",
            ObjectKind::Contact => "contact",
            ObjectKind::OrganizationalUnit => "organizationalUnit",
            ObjectKind::Other => "other",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dn::Dn;

    fn with_classes(classes: &[&str]) -> Entry {
        let mut e = Entry::new(Dn::root());
        for c in classes {
            e.add("objectClass", *c);
        }
        e
    }

    #[test]
    fn classifies() {
        assert_eq!(ObjectKind::of(&with_classes(&["top", "person", "organizationalPerson", "user"])), ObjectKind::User);
        assert_eq!(ObjectKind::of(&with_classes(&["top", "user", "computer"])), ObjectKind::Other);
        assert_eq!(ObjectKind::of(&with_classes(&["inetOrgPerson"])), ObjectKind::User);
        assert_eq!(ObjectKind::of(&with_classes(&["top", "group"])), ObjectKind::Group);
        assert_eq!(ObjectKind::of(&with_classes(&["groupOfNames"])), ObjectKind::Group);
        assert_eq!(
            ObjectKind::of(&with_classes(&["top", "person", "organizationalPerson", "contact"])),
            ObjectKind::Contact
        );
        assert_eq!(ObjectKind::of(&with_classes(&["organizationalUnit"])), ObjectKind::OrganizationalUnit);
    }
}
