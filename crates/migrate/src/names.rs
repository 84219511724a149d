//! Attribute names across the two systems: Connect's metaverse names and
//! idbridge's (README "Migrating from Entra Connect" has the table), and the
//! Entra ID connector's attribute names and the tenant's SCIM paths.

/// What a Connect metaverse attribute is on idbridge's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metaverse {
    /// idbridge's metaverse attribute of that meaning.
    Attribute(String),
    /// Something idbridge computes or keeps itself (why, for the report).
    BuiltIn(&'static str),
}

/// Connect's metaverse name → idbridge's, where they differ.
const RENAMED: &[(&str, &str)] = &[
    ("accountName", "onPremisesSamAccountName"),
    ("sn", "surname"),
    ("title", "jobTitle"),
    ("company", "companyName"),
    ("l", "city"),
    ("st", "state"),
    ("c", "country"),
    ("co", "country"),
    ("employeeID", "employeeId"),
    ("objectSidString", "onPremisesSecurityIdentifier"),
];

/// Connect's own bookkeeping in the metaverse, and references.
const BUILT_IN: &[(&str, &str)] = &[
    ("sourceAnchor", "the sourceAnchor is the source's anchor_attribute"),
    ("sourceAnchorBinary", "the sourceAnchor is the source's anchor_attribute"),
    ("cloudSourceAnchor", "the sourceAnchor is the source's anchor_attribute"),
    ("cloudAnchor", "the tenant's object id is kept by the engine"),
    ("cloudMastered", "objects created in the cloud are the tenant's own"),
    ("cloudCreated", "objects created in the cloud are the tenant's own"),
    ("sourceObjectType", "object types are the engine's (user, group, contact)"),
    ("objectSid", "onPremisesSecurityIdentifier is built in"),
    ("domainFQDN", "onPremisesDomainName is built in"),
    ("domainNetBios", "the domain's NetBIOS name is not kept"),
    ("forestFQDN", "the forest's name is not kept"),
    ("forestNetBios", "the forest's NetBIOS name is not kept"),
    ("contributingConnectorUser", "the contributing source is the engine's"),
    ("manager", "the manager is a reference the engine resolves"),
    ("member", "members are references the engine resolves"),
    ("distinguishedName", "onPremisesDistinguishedName is built in"),
    ("pwdLastSet", "password hash sync reads password changes itself"),
    ("cn", "cn is read as displayName's fallback by the built-in rules"),
];

/// Multi-valued attributes (a direct flow of one takes every value).
const MULTI_VALUED: &[&str] = &[
    "proxyAddresses",
    "otherTelephone",
    "otherMobile",
    "otherHomePhone",
    "otherFacsimileTelephoneNumber",
    "otherPager",
    "otherIpPhone",
    "url",
    "userCertificate",
    "member",
];

pub fn metaverse(connect: &str) -> Metaverse {
    if let Some((_, why)) = BUILT_IN.iter().find(|(n, _)| n.eq_ignore_ascii_case(connect)) {
        return Metaverse::BuiltIn(why);
    }
    let name = RENAMED.iter().find(|(n, _)| n.eq_ignore_ascii_case(connect)).map_or(connect, |(_, to)| to);
    Metaverse::Attribute(name.to_string())
}

pub fn multi_valued(name: &str) -> bool {
    MULTI_VALUED.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// The Entra ID connector's attribute → the tenant's SCIM path, per object type.
pub fn scim_path(object: &str, aad: &str) -> Option<String> {
    let work = |sub: &str| format!("addresses[type eq \"work\"].{sub}");
    let user = |aad: &str| -> Option<String> {
        Some(match aad.to_ascii_lowercase().as_str() {
            "accountenabled" => "active".into(),
            "userprincipalname" => "userName".into(),
            "displayname" => "displayName".into(),
            "givenname" => "name.givenName".into(),
            "surname" => "name.familyName".into(),
            "title" => "title".into(),
            "department" => "enterprise:department".into(),
            "company" | "companyname" => "enterprise:organization".into(),
            "employeeid" => "enterprise:employeeNumber".into(),
            "mail" => "emails[type eq \"work\"].value".into(),
            "telephonenumber" => "phoneNumbers[type eq \"work\"].value".into(),
            "mobile" => "phoneNumbers[type eq \"mobile\"].value".into(),
            "facsimiletelephonenumber" => "phoneNumbers[type eq \"fax\"].value".into(),
            "streetaddress" => work("streetAddress"),
            "city" => work("locality"),
            "state" => work("region"),
            "postalcode" => work("postalCode"),
            "country" => work("country"),
            "usagelocation" => "hybrid:usageLocation".into(),
            _ => return common(aad),
        })
    };
    match object.to_ascii_lowercase().as_str() {
        "user" | "person" | "inetorgperson" => user(aad),
        "group" => match aad.to_ascii_lowercase().as_str() {
            "displayname" => Some("displayName".into()),
            _ => common(aad),
        },
        "contact" => match aad.to_ascii_lowercase().as_str() {
            "displayname" => Some("displayName".into()),
            "givenname" => Some("name.givenName".into()),
            "surname" => Some("name.familyName".into()),
            "title" => Some("title".into()),
            "company" | "companyname" => Some("companyName".into()),
            "mail" => Some("emails[type eq \"work\"].value".into()),
            _ => common(aad),
        },
        _ => None,
    }
}

/// Attributes every object type has in the hybrid extension.
fn common(aad: &str) -> Option<String> {
    let lower = aad.to_ascii_lowercase();
    if let Some(n) = lower.strip_prefix("extensionattribute")
        && n.parse::<u8>().is_ok_and(|n| (1..=15).contains(&n))
    {
        return Some(format!("hybrid:extensionAttribute{n}"));
    }
    Some(match lower.as_str() {
        "alias" | "mailnickname" => "hybrid:mailNickname".into(),
        "proxyaddresses" => "hybrid:proxyAddresses".into(),
        "onpremisessamaccountname" => "hybrid:onPremisesSamAccountName".into(),
        _ => return None,
    })
}

/// The object types of a rule, as idbridge's rules name them.
pub fn object_kind(connect: &str) -> Option<&'static str> {
    match connect.to_ascii_lowercase().as_str() {
        "user" | "inetorgperson" | "person" => Some("user"),
        "group" => Some("group"),
        "contact" => Some("contact"),
        _ => None,
    }
}

/// `[name]` references in an expression, outside its string literals,
/// replaced by `rename` (an error names what could not be renamed).
pub fn rename_references(expression: &str, rename: &dyn Fn(&str) -> Result<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(expression.len());
    let mut chars = expression.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_string = !in_string;
                out.push(c);
            }
            '\\' if in_string => {
                out.push(c);
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            '[' if !in_string => {
                let mut name = String::new();
                let mut closed = false;
                for n in chars.by_ref() {
                    if n == ']' {
                        closed = true;
                        break;
                    }
                    name.push(n);
                }
                if !closed {
                    return Err(format!("'[{name}' is not closed"));
                }
                out.push('[');
                out.push_str(&rename(&name)?);
                out.push(']');
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_of_the_bridge() {
        assert_eq!(metaverse("sn"), Metaverse::Attribute("surname".into()));
        assert_eq!(metaverse("extensionAttribute7"), Metaverse::Attribute("extensionAttribute7".into()));
        assert!(matches!(metaverse("cloudAnchor"), Metaverse::BuiltIn(_)));
        assert_eq!(scim_path("person", "surname").as_deref(), Some("name.familyName"));
        assert_eq!(scim_path("user", "extensionAttribute15").as_deref(), Some("hybrid:extensionAttribute15"));
        assert_eq!(scim_path("user", "extensionAttribute16"), None);
        assert_eq!(scim_path("group", "alias").as_deref(), Some("hybrid:mailNickname"));
        assert_eq!(scim_path("device", "displayName"), None);
        assert_eq!(scim_path("user", "msExchMailboxGuid"), None);
    }

    #[test]
    fn references_are_renamed_outside_strings_only() {
        let rename = |n: &str| -> Result<String, String> {
            match metaverse(n) {
                Metaverse::Attribute(a) => Ok(a),
                Metaverse::BuiltIn(why) => Err(format!("[{n}]: {why}")),
            }
        };
        assert_eq!(
            rename_references("IIF(IsPresent([sn]), [sn] & \"[sn] \\\" [l]\", [l])", &rename).unwrap(),
            "IIF(IsPresent([surname]), [surname] & \"[sn] \\\" [l]\", [city])"
        );
        assert!(rename_references("[cloudAnchor]", &rename).unwrap_err().contains("engine"));
        assert!(rename_references("[sn", &rename).unwrap_err().contains("not closed"));
        assert_eq!(rename_references("\"ü[\" & [title]", &rename).unwrap(), "\"ü[\" & [jobTitle]");
    }
}
