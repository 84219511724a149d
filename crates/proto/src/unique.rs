//! Which values the tenant keeps unique, and who gets a value several
//! objects want. The tenant enforces this; the sync engine orders its
//! exports by it, so the tenant converges to the same holders whatever the
//! order of the on-premises changes and whatever crashed in between.
//!
//! - userName (users) and every SMTP address in proxyAddresses (any kind)
//!   are unique across users, groups and contacts, compared without case.
//! - **The holder keeps a value.** A synchronised object that wants a held
//!   value waits for it in quarantine; a cloud-only object is refused.
//! - **A released value goes to the waiting object with the lowest
//!   immutableId** (byte order), so the outcome does not depend on who
//!   asked first.
//! - The sync engine sends, within one cycle, the objects that newly want a
//!   value in ascending immutableId order and before any object that gives
//!   it up: a free value goes to the lowest claimant of that cycle.

/// The attribute a unique value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UniqueAttribute {
    UserName,
    ProxyAddresses,
}

impl UniqueAttribute {
    /// The SCIM attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            UniqueAttribute::UserName => "userName",
            UniqueAttribute::ProxyAddresses => "proxyAddresses",
        }
    }
}

/// One value an object claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub attribute: UniqueAttribute,
    /// The value compared: lower case (an address for proxyAddresses).
    pub key: String,
    /// As the object has it (`SMTP:a@b` for a proxy address).
    pub given: String,
}

/// `smtp:a@b` / `SMTP:a@b` → `a@b`.
pub fn smtp_address(proxy: &str) -> Option<&str> {
    let (prefix, address) = proxy.split_once(':')?;
    prefix.eq_ignore_ascii_case("smtp").then_some(address).filter(|a| !a.is_empty())
}

/// The values an object with `user_name` (users only) and `proxies` claims,
/// each key once.
pub fn claims<'a>(user_name: Option<&str>, proxies: impl IntoIterator<Item = &'a str>) -> Vec<Claim> {
    let mut out = Vec::new();
    if let Some(u) = user_name {
        out.push(Claim { attribute: UniqueAttribute::UserName, key: u.to_lowercase(), given: u.to_string() });
    }
    for p in proxies {
        if let Some(address) = smtp_address(p) {
            let key = address.to_lowercase();
            if !out.iter().any(|c| c.key == key) {
                out.push(Claim { attribute: UniqueAttribute::ProxyAddresses, key, given: p.to_string() });
            }
        }
    }
    out
}

/// Of the objects waiting for a released value, the one that gets it:
/// the lowest immutableId.
pub fn next_holder<'a, T>(waiting: impl IntoIterator<Item = (&'a str, T)>) -> Option<T> {
    waiting.into_iter().min_by(|a, b| a.0.cmp(b.0)).map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_name_and_its_address_are_one_key_and_case_does_not_matter() {
        let c =
            claims(Some("Ana@Example.org"), ["SMTP:ana@example.org", "smtp:Ärger@example.org", "x500:/o=x", "smtp:"]);
        let keys: Vec<&str> = c.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["ana@example.org", "ärger@example.org"]);
        assert_eq!(c[1].given, "smtp:Ärger@example.org");
        assert_eq!(c[0].attribute, UniqueAttribute::UserName);
    }

    #[test]
    fn the_lowest_immutable_id_gets_a_released_value() {
        assert_eq!(next_holder([("b", 1), ("A", 2), ("a", 3)]), Some(2));
        assert_eq!(next_holder::<u8>([]), None);
    }
}
