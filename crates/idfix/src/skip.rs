//! Objects that are not checked: they never sync, or the cloud creates them.
//! IdFix's list of objects it leaves alone, done correctly: well-known
//! accounts by name (not by any prefix — "Guesthouse" is checked), its
//! msExchRecipientTypeDetails exclusions by their decimal values (the
//! reference compared hex strings and never matched), and inetOrgPerson
//! counted as a user.

use directory::{Entry, ObjectKind};

use crate::Mode;

/// Accounts every directory has, by exact `cn`.
const WELL_KNOWN: &[&str] = &["Administrator", "Guest", "krbtgt", "DefaultAccount", "WDAGUtilityAccount"];

/// Families of system objects, by `cn` prefix (each prefix ends where the family's names do).
const SYSTEM_PREFIXES: &[&str] = &[
    "CAS_{",
    "DiscoverySearchMailbox",
    "FederatedEmail.",
    "HTTPConnector",
    "IUSR_",
    "IWAM_",
    "MSOL_",
    "SUPPORT_",
    "SystemMailbox{",
    "HealthMailbox",
    "Exchange Online-ApplicationAccount",
    "WWIOadmini",
];

/// msExchRecipientTypeDetails of system mailboxes (arbitration, discovery,
/// monitoring, …), as the decimal strings AD returns.
const SYSTEM_RECIPIENT_TYPES: &[&str] = &["4096", "8192", "16384", "4194304", "8388608", "16777216", "536870912"];

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The object's `cn`, or the value of its RDN.
pub fn common_name(entry: &Entry) -> String {
    entry
        .first_text("cn")
        .map(str::to_string)
        .or_else(|| entry.dn.rdn().and_then(|r| r.avas().first()).and_then(|a| a.text()).map(str::to_string))
        .unwrap_or_default()
}

/// The most specific object class (the last value), as the reference tool shows it.
pub fn object_class(entry: &Entry) -> String {
    entry.values("objectClass").iter().rev().find_map(|v| v.as_text()).unwrap_or("").to_string()
}

/// Why the object is not checked, or `None`.
pub fn reason(entry: &Entry, mode: Mode) -> Option<&'static str> {
    let kind = ObjectKind::of(entry);
    if !matches!(kind, ObjectKind::User | ObjectKind::Group | ObjectKind::Contact) {
        return Some("not a user, group or contact");
    }
    let cn = common_name(entry);
    if cn.ends_with('$') {
        return Some("a machine account");
    }
    if WELL_KNOWN.iter().any(|w| w.eq_ignore_ascii_case(&cn)) {
        return Some("a well-known account");
    }
    if SYSTEM_PREFIXES.iter().any(|p| starts_with_ci(&cn, p)) {
        return Some("a system object");
    }
    let dn = entry.dn.to_string();
    if dn.contains("\\0ACNF:") || dn.contains("\nCNF:") || dn.to_ascii_uppercase().contains("\\0ACNF:") {
        return Some("a replication conflict object");
    }
    if entry.first_text("isCriticalSystemObject").is_some_and(|v| v.eq_ignore_ascii_case("TRUE")) {
        return Some("a critical system object");
    }
    if mode != Mode::MultiTenant {
        return None;
    }
    match kind {
        ObjectKind::User => {
            let sam = entry.first_text("sAMAccountName").unwrap_or("");
            if ["CAS_", "SUPPORT_", "MSOL_"].iter().any(|p| starts_with_ci(sam, p)) {
                return Some("a system account (sAMAccountName)");
            }
            let nick = entry.first_text("mailNickname").unwrap_or("");
            if ["CAS_", "SYSTEMMAILBOX"].iter().any(|p| starts_with_ci(nick, p)) {
                return Some("a system mailbox (mailNickname)");
            }
            if entry.first_text("msExchHideFromAddressLists").is_some_and(|v| v.eq_ignore_ascii_case("TRUE"))
                && starts_with_ci(entry.first_text("displayName").unwrap_or(""), "MSOL")
            {
                return Some("the directory sync service account");
            }
            if entry
                .first_text("msExchRecipientTypeDetails")
                .is_some_and(|v| SYSTEM_RECIPIENT_TYPES.contains(&v.trim()))
            {
                return Some("a system mailbox (msExchRecipientTypeDetails)");
            }
        }
        ObjectKind::Group => {
            // AD groups: security groups sync only with mail, distribution groups only with proxyAddresses.
            if let Some(group_type) = entry.first_text("groupType").and_then(|g| g.trim().parse::<i64>().ok()) {
                if group_type < 0 && !entry.has("mail") {
                    return Some("a security group without mail");
                }
                if group_type >= 0 && !entry.has("proxyAddresses") {
                    return Some("a distribution group without proxyAddresses");
                }
            }
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::Dn;

    fn user(dn: &str, attrs: &[(&str, &str)]) -> Entry {
        let mut e = Entry::new(Dn::parse(dn).unwrap());
        for c in ["top", "person", "organizationalPerson", "user"] {
            e.add("objectClass", c);
        }
        for (k, v) in attrs {
            e.add(k, *v);
        }
        e
    }

    #[test]
    fn skips_what_never_syncs_and_nothing_else() {
        let skipped = |e: &Entry| reason(e, Mode::MultiTenant).is_some();
        assert!(skipped(&user("CN=Guest,CN=Users,DC=x", &[("cn", "Guest")])));
        assert!(!skipped(&user("CN=Guesthouse Booking,CN=Users,DC=x", &[("cn", "Guesthouse Booking")])));
        assert!(!skipped(&user("CN=Administration Office,DC=x", &[("cn", "Administration Office")])));
        assert!(skipped(&user("CN=HealthMailbox0a1b,DC=x", &[("cn", "HealthMailbox0a1b")])));
        assert!(skipped(&user("CN=a\\0ACNF:1234,DC=x", &[("cn", "a\nCNF:1234")])));
        assert!(skipped(&user("CN=m,DC=x", &[("cn", "m"), ("msExchRecipientTypeDetails", "8388608")])));
        assert!(!skipped(&user("CN=m,DC=x", &[("cn", "m"), ("msExchRecipientTypeDetails", "1")])));
        assert!(skipped(&user("CN=k,DC=x", &[("cn", "k"), ("isCriticalSystemObject", "TRUE")])));
        let mut group = Entry::new(Dn::parse("CN=g,DC=x").unwrap());
        group.add("objectClass", "group");
        group.add("cn", "g");
        group.add("groupType", "-2147483646");
        assert!(skipped(&group));
        group.add("mail", "g@x.org");
        assert!(!skipped(&group));
    }
}
