//! Building blocks of the checks: lengths as the cloud counts them (UTF-16
//! code units, never cutting a character in two), character sets, the
//! extra-colon repair, and the address check (RFC 5322 dot-atom local part,
//! routable domain).

use crate::finding::ErrorKind;
use crate::tld::TldRule;

/// Length in UTF-16 code units (what the cloud's limits count).
pub fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// At most `max` UTF-16 code units, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    let mut used = 0;
    let mut out = String::new();
    for c in s.chars() {
        used += c.len_utf16();
        if used > max {
            break;
        }
        out.push(c);
    }
    out
}

/// `s` without the characters `bad` flags; `None` when nothing is flagged.
pub fn remove_chars(s: &str, bad: impl Fn(char) -> bool) -> Option<String> {
    s.chars().any(&bad).then(|| s.chars().filter(|c| !bad(*c)).collect())
}

/// Unicode whitespace, as the reference tool's `\s` (NBSP included).
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{85}' || c == '\u{a0}'
}

/// userPrincipalName: whitespace, `\ % & * + / = ? { } | < > ( ) ; : , [ ] "`
/// and anything outside ASCII (diacritics are not allowed in a UPN). The
/// apostrophe is allowed, as Microsoft documents (the reference flagged it).
pub fn bad_upn_char(c: char) -> bool {
    is_space(c) || !c.is_ascii() || "\\%&*+/=?{}|<>();:,[]\"".contains(c)
}

/// An SMTP address in proxyAddresses (after the `smtp:` prefix).
pub fn bad_smtp_proxy_char(c: char) -> bool {
    is_space(c) || "<>();,[]\"".contains(c)
}

/// Other proxyAddresses types (after the prefix).
pub fn bad_other_proxy_char(c: char) -> bool {
    is_space(c) || "<>(),[]\"".contains(c)
}

/// X.400 / X.500 addresses: spaces, parentheses and `;` belong to them; the
/// apostrophe too (Exchange Online generates X500 addresses with it).
pub fn bad_x_char(c: char) -> bool {
    matches!(c, '\u{c}' | '\n' | '\r' | '\t' | '\u{b}' | '[' | ']' | '"')
}

/// targetAddress, SMTP (after the prefix).
pub fn bad_smtp_target_char(c: char) -> bool {
    is_space(c) || "\\<>();,[]\"".contains(c)
}

/// targetAddress, other types.
pub fn bad_other_target_char(c: char) -> bool {
    is_space(c) || "\\<>(),[]\"".contains(c)
}

/// sAMAccountName, as Microsoft documents it (the apostrophe included).
pub fn bad_sam_char(c: char) -> bool {
    "\\\"|,/[]:<>+=;?*'".contains(c) || c.is_control()
}

/// Dedicated mailNickname.
pub fn bad_dedicated_nickname_char(c: char) -> bool {
    is_space(c) || "\\!#$%&*+/=?^`{}|~<>()';:,[]\"@".contains(c)
}

/// `type:address` → ("type:", "address"); `None` without a prefix.
pub fn split_prefix(v: &str) -> Option<(&str, &str)> {
    let colon = v.find(':')?;
    (colon > 0).then(|| v.split_at(colon + 1))
}

/// Whether a proxy or target value is an SMTP address: the prefix is
/// `smtp:` (the reference matched `smtp:` anywhere, so an X500 value holding
/// it was checked as SMTP).
pub fn is_smtp(v: &str) -> bool {
    split_prefix(v).is_some_and(|(p, _)| p.eq_ignore_ascii_case("smtp:"))
}

pub fn is_x400_or_x500(v: &str) -> bool {
    split_prefix(v).is_some_and(|(p, _)| {
        let p = p.to_ascii_lowercase();
        p == "x400:" || p == "x.400:" || p == "x500:" || p == "x.500:"
    })
}

/// A colon after the type prefix: all further colons removed.
pub fn repair_colons(v: &str) -> Option<String> {
    let (prefix, rest) = split_prefix(v)?;
    rest.contains(':').then(|| format!("{prefix}{}", rest.replace(':', "")))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c)
}

fn dot_atom(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|part| !part.is_empty() && part.chars().all(is_atext))
}

fn label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// A host name of ASCII labels whose last label is a TLD (letters, or punycode).
fn domain_ok(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    let Some(tld) = labels.last() else { return false };
    labels.len() >= 2
        && labels.iter().all(|l| label_ok(l))
        && (tld.chars().all(|c| c.is_ascii_alphabetic()) && tld.len() >= 2 || tld.starts_with("xn--"))
}

/// The address check (IdFix's "RFC 2822" rule), on a
/// value that may carry an `smtp:` prefix. Returns the flags and the
/// repaired value (prefix kept), or `None` when the address is fine.
///
/// Differences from the reference: the TLD is taken from the domain part (not
/// from the whole string), any current TLD passes (see `tld`), and the local
/// part repair also removes leading, trailing and doubled dots.
pub fn check_address(v: &str, tlds: &TldRule) -> Option<(Vec<ErrorKind>, String)> {
    let (prefix, mut s) = match split_prefix(v) {
        Some((p, rest)) if p.eq_ignore_ascii_case("smtp:") => (p.to_string(), rest.to_string()),
        _ => (String::new(), v.to_string()),
    };
    let mut errors = Vec::new();
    // 1. A routable domain.
    if let Some((_, domain)) = s.rsplit_once('@')
        && (!tlds.tld_ok(domain) || tlds.internal(domain))
    {
        errors.push(ErrorKind::TopLevelDomain);
    }
    // 2. The domain part.
    let domain_valid = s.rsplit_once('@').is_some_and(|(_, d)| domain_ok(d));
    if !domain_valid {
        errors.push(ErrorKind::DomainPart);
        if let Some((local, domain)) = s.rsplit_once('@') {
            let kept: String = domain.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-').collect();
            s = format!("{local}@{kept}");
        }
    }
    // 3. The local part: one `@`, a dot-atom before it.
    let local_valid = s.matches('@').count() == 1 && s.split_once('@').is_some_and(|(l, _)| dot_atom(l));
    if !local_valid {
        errors.push(ErrorKind::LocalPart);
        if let Some((local, domain)) = s.rsplit_once('@') {
            let kept: String = local.chars().filter(|c| is_atext(*c) || *c == '.').collect();
            let tidy: Vec<&str> = kept.split('.').filter(|p| !p.is_empty()).collect();
            s = format!("{}@{domain}", tidy.join("."));
        }
    }
    // 4. The whole address after the repairs.
    let whole = s.split_once('@').is_some_and(|(l, d)| dot_atom(l) && domain_ok(d)) && s.matches('@').count() == 1;
    if !whole {
        errors.push(ErrorKind::Format);
    }
    if errors.is_empty() {
        return None;
    }
    Some((errors, format!("{prefix}{s}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> TldRule {
        TldRule::new(&[], &[])
    }

    #[test]
    fn lengths_count_utf16_and_never_split_a_character() {
        assert_eq!(utf16_len("a𝄞"), 3);
        assert_eq!(truncate("ab𝄞c", 3), "ab");
        assert_eq!(truncate("abc", 5), "abc");
    }

    #[test]
    fn address_check_matches_the_worked_examples_and_fixes_the_quirks() {
        // "John Smith@contoso.local": the space is the UPN character rule's; here the TLD fails.
        let (e, fixed) = check_address("JohnSmith@contoso.local", &rule()).unwrap();
        assert_eq!(e, vec![ErrorKind::TopLevelDomain]);
        assert_eq!(fixed, "JohnSmith@contoso.local");
        let (e, fixed) = check_address("user@@lab###.local", &rule()).unwrap();
        assert_eq!(e, vec![ErrorKind::TopLevelDomain, ErrorKind::DomainPart, ErrorKind::LocalPart]);
        assert_eq!(fixed, "user@lab.local");
        let (e, fixed) = check_address("johnsmith", &rule()).unwrap();
        assert_eq!(e, vec![ErrorKind::DomainPart, ErrorKind::LocalPart, ErrorKind::Format]);
        assert_eq!(fixed, "johnsmith");
        // The TLD of the domain, not of the whole string: first.last@contoso has no TLD.
        let (e, _) = check_address("first.last@contoso", &rule()).unwrap();
        assert!(e.contains(&ErrorKind::TopLevelDomain) && e.contains(&ErrorKind::DomainPart));
        assert_eq!(check_address("first.last@contoso.app", &rule()), None);
        assert_eq!(check_address("SMTP:a.b@x.shop", &rule()), None);
        let (_, fixed) = check_address("smtp:.a..b.@x.com", &rule()).unwrap();
        assert_eq!(fixed, "smtp:a.b@x.com");
    }

    #[test]
    fn prefixes_and_colons() {
        assert!(is_smtp("SMTP:a@x.org") && is_smtp("smtp:a@x.org"));
        assert!(!is_smtp("X500:/o=smtp:x"), "smtp: inside an X500 value is not an SMTP address");
        assert!(is_x400_or_x500("x500:/o=Org/ou=x"));
        assert_eq!(repair_colons("smtp:a:b@x.org").as_deref(), Some("smtp:ab@x.org"));
        assert_eq!(repair_colons("smtp:a@x.org"), None);
        assert_eq!(remove_chars("a b", is_space).as_deref(), Some("ab"));
        assert!(!bad_upn_char('\'') && bad_upn_char('é') && bad_sam_char('\''));
    }
}
