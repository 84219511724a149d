//! The per-attribute rule chains (as Microsoft IdFix checks them). In a
//! chain each failing rule's proposal becomes the working value for the
//! next, so the final proposal carries every fix; the finding lists every
//! rule that failed. Duplicates are checked separately (`duplicates`), on the
//! values as they are in the directory.
//!
//! Differences from the reference, where it was wrong for the cloud:
//! userPrincipalName's 64/48 character parts are checked, its apostrophe is
//! allowed and any non-ASCII character is flagged; proxy and target
//! character sets apply after the `type:` prefix; sAMAccountName flags the
//! apostrophe; `mail` is checked as an address in both modes; givenName's
//! limit is 64 and displayName's 256 (Microsoft's documented limits), and a
//! missing displayName is not an error (the sync uses the cn); the
//! dedicated mailNickname period rule works; an AD user without a
//! userPrincipalName is reported (it cannot sync).

use directory::{Entry, ObjectKind};

use crate::finding::{Action, ErrorKind, Finding};
use crate::skip::{common_name, object_class};
use crate::text::*;
use crate::tld::TldRule;
use crate::{Mode, Options};

/// One value going through a chain.
struct Chain {
    original: String,
    working: String,
    errors: Vec<ErrorKind>,
}

impl Chain {
    fn new(value: &str) -> Chain {
        Chain { original: value.to_string(), working: value.to_string(), errors: Vec::new() }
    }

    fn fail(&mut self, kind: ErrorKind, proposed: String) {
        self.errors.push(kind);
        self.working = proposed;
    }

    fn max_len(&mut self, max: usize) -> &mut Self {
        if utf16_len(&self.working) > max {
            let t = truncate(&self.working, max);
            self.fail(ErrorKind::Length, t);
        }
        self
    }

    /// Removes flagged characters; an empty result falls back to `fallback`.
    fn chars(&mut self, bad: impl Fn(char) -> bool, fallback: &str) -> &mut Self {
        if let Some(fixed) = remove_chars(&self.working, bad) {
            let fixed = if fixed.is_empty() { fallback.to_string() } else { fixed };
            self.fail(ErrorKind::Character, fixed);
        }
        self
    }

    /// The character check on the part after a `type:` prefix.
    fn chars_after_prefix(&mut self, bad: impl Fn(char) -> bool, fallback: &str) -> &mut Self {
        let (prefix, rest) = match split_prefix(&self.working) {
            Some((p, r)) => (p.to_string(), r.to_string()),
            None => (String::new(), self.working.clone()),
        };
        if let Some(fixed) = remove_chars(&rest, bad) {
            let fixed = if fixed.is_empty() { fallback.to_string() } else { format!("{prefix}{fixed}") };
            self.fail(ErrorKind::Character, fixed);
        }
        self
    }

    fn colons(&mut self) -> &mut Self {
        if let Some(fixed) = repair_colons(&self.working) {
            self.fail(ErrorKind::Character, fixed);
        }
        self
    }

    fn address(&mut self, tlds: &TldRule) -> &mut Self {
        if let Some((errors, fixed)) = check_address(&self.working, tlds) {
            self.errors.extend(errors);
            self.working = fixed;
        }
        self
    }

    fn finding(self, entry: &Entry, attribute: &str) -> Option<Finding> {
        if self.errors.is_empty() {
            return None;
        }
        let mut errors = self.errors;
        errors.sort();
        errors.dedup();
        let proposed = (self.working != self.original).then_some(self.working);
        Some(Finding {
            dn: entry.dn.to_string(),
            cn: common_name(entry),
            object_class: object_class(entry),
            attribute: attribute.to_string(),
            value: self.original,
            errors,
            action: Action::Edit,
            proposed,
            note: None,
        })
    }
}

fn blank(entry: &Entry, attribute: &str, proposed: String) -> Finding {
    Finding {
        dn: entry.dn.to_string(),
        cn: common_name(entry),
        object_class: object_class(entry),
        attribute: attribute.to_string(),
        value: String::new(),
        errors: vec![ErrorKind::Blank],
        action: Action::Edit,
        proposed: (!proposed.is_empty()).then_some(proposed),
        note: None,
    }
}

/// Every check of one object, in a stable order.
pub fn run(entry: &Entry, options: &Options, tlds: &TldRule) -> Vec<Finding> {
    match options.mode {
        Mode::MultiTenant => multi_tenant(entry, options, tlds),
        Mode::Dedicated => dedicated(entry, tlds),
    }
}

fn multi_tenant(entry: &Entry, options: &Options, tlds: &TldRule) -> Vec<Finding> {
    let cn = common_name(entry);
    let kind = ObjectKind::of(entry);
    let mut out = Vec::new();
    // A missing displayName is not flagged (the reference did, issue #18):
    // Microsoft documents it as optional, and the sync takes the cn instead.
    if let Some(v) = entry.first_text("displayName") {
        let mut c = Chain::new(v);
        c.max_len(256);
        out.extend(c.finding(entry, "displayName"));
    }
    if let Some(v) = entry.first_text("givenName") {
        let mut c = Chain::new(v);
        c.max_len(64);
        out.extend(c.finding(entry, "givenName"));
    }
    if let Some(v) = entry.first_text("mail") {
        let mut c = Chain::new(v);
        c.max_len(256).chars(is_space, &cn).address(tlds);
        out.extend(c.finding(entry, "mail"));
    }
    if let Some(v) = entry.first_text("mailNickname") {
        let mut c = Chain::new(v);
        c.max_len(64).chars(is_space, &cn);
        if c.working.starts_with('.') {
            let trimmed = c.working.trim_start_matches('.').to_string();
            c.fail(ErrorKind::Character, if trimmed.is_empty() { cn.clone() } else { trimmed });
        }
        out.extend(c.finding(entry, "mailNickname"));
    }
    for v in entry.values("proxyAddresses").iter().filter_map(|v| v.as_text()) {
        let mut c = Chain::new(v);
        c.max_len(256).colons();
        if is_smtp(&c.working) {
            c.chars_after_prefix(bad_smtp_proxy_char, &cn).address(tlds);
        } else if is_x400_or_x500(&c.working) {
            c.chars_after_prefix(bad_x_char, &cn);
        } else {
            c.chars_after_prefix(bad_other_proxy_char, &cn);
        }
        out.extend(c.finding(entry, "proxyAddresses"));
    }
    if let Some(v) = entry.first_text("sAMAccountName") {
        let mut c = Chain::new(v);
        c.max_len(if kind == ObjectKind::User { 20 } else { 256 }).chars(bad_sam_char, &cn);
        out.extend(c.finding(entry, "sAMAccountName"));
    }
    if let Some(v) = entry.first_text("targetAddress") {
        let mut c = Chain::new(v);
        c.max_len(256).colons();
        if is_smtp(&c.working) {
            c.chars_after_prefix(bad_smtp_target_char, &cn).address(tlds);
        } else {
            c.chars_after_prefix(bad_other_target_char, &cn);
        }
        out.extend(c.finding(entry, "targetAddress"));
    }
    if !options.alternate_login_id {
        match entry.first_text("userPrincipalName") {
            Some(v) => {
                let mut c = Chain::new(v);
                c.max_len(113);
                // Microsoft's limits for the parts: 64 before the @, 48 after (the reference skipped them).
                if let Some((local, domain)) = c.working.rsplit_once('@').map(|(l, d)| (l.to_string(), d.to_string()))
                    && (utf16_len(&local) > 64 || utf16_len(&domain) > 48)
                {
                    let fixed = format!("{}@{}", truncate(&local, 64), truncate(&domain, 48));
                    c.fail(ErrorKind::Length, fixed);
                }
                c.chars(bad_upn_char, &cn).address(tlds);
                out.extend(c.finding(entry, "userPrincipalName"));
            }
            None if kind == ObjectKind::User && entry.has("sAMAccountName") && entry.has_object_class("user") => {
                // An AD user without a UPN cannot sync; propose sAMAccountName@<the DN's domain>.
                let domain: Vec<&str> = entry.dn.rdns().iter().filter_map(|r| r.value_of("dc")).collect();
                let sam = entry.first_text("sAMAccountName").unwrap_or_default();
                out.push(blank(entry, "userPrincipalName", format!("{sam}@{}", domain.join(".").to_lowercase())));
            }
            None => {}
        }
    }
    out
}

fn dedicated(entry: &Entry, tlds: &TldRule) -> Vec<Finding> {
    let cn = common_name(entry);
    let kind = ObjectKind::of(entry);
    let mut out = Vec::new();
    match entry.first_text("displayName") {
        Some(v) => {
            let mut c = Chain::new(v);
            c.max_len(256);
            if c.working.trim() != c.working {
                let t = c.working.trim().to_string();
                c.fail(ErrorKind::Character, if t.is_empty() { cn.clone() } else { t });
            }
            out.extend(c.finding(entry, "displayName"));
        }
        None if kind == ObjectKind::Group => out.push(blank(entry, "displayName", truncate(&cn, 255))),
        None => {}
    }
    if let Some(v) = entry.first_text("mail") {
        let mut c = Chain::new(v);
        c.max_len(256).chars(is_space, &cn).address(tlds);
        out.extend(c.finding(entry, "mail"));
    }
    match entry.first_text("mailNickname") {
        Some(v) => {
            let mut c = Chain::new(v);
            c.max_len(64).chars(bad_dedicated_nickname_char, &cn);
            // The reference's "periods" rule never fired; this one does.
            if c.working.starts_with('.') || c.working.ends_with('.') {
                let t = c.working.trim_matches('.').to_string();
                c.fail(ErrorKind::Format, if t.is_empty() { cn.clone() } else { t });
            }
            out.extend(c.finding(entry, "mailNickname"));
        }
        None if kind == ObjectKind::Contact || kind == ObjectKind::User => {
            let given = entry.first_text("givenName");
            let sn = entry.first_text("sn");
            let proposal = match (given, sn) {
                (Some(g), Some(s)) => format!("{g}.{s}"),
                (None, Some(s)) => s.to_string(),
                (Some(g), None) => g.to_string(),
                (None, None) => entry.first_text("sAMAccountName").unwrap_or(&cn).to_string(),
            };
            out.push(blank(
                entry,
                "mailNickname",
                remove_chars(&proposal, bad_dedicated_nickname_char).unwrap_or(proposal),
            ));
        }
        None => {}
    }
    for v in entry.values("proxyAddresses").iter().filter_map(|v| v.as_text()) {
        let mut c = Chain::new(v);
        c.max_len(256).colons();
        if is_smtp(&c.working) {
            c.address(tlds);
        }
        out.extend(c.finding(entry, "proxyAddresses"));
    }
    match entry.first_text("targetAddress") {
        Some(v) => {
            let mut c = Chain::new(v);
            c.max_len(256);
            if is_smtp(&c.working) {
                c.address(tlds);
            }
            out.extend(c.finding(entry, "targetAddress"));
        }
        None if kind == ObjectKind::Contact => {
            let mail = entry.first_text("mail").unwrap_or_default();
            out.push(blank(
                entry,
                "targetAddress",
                if mail.is_empty() { String::new() } else { truncate(&format!("SMTP:{mail}"), 256) },
            ));
        }
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use directory::Dn;

    use super::*;

    fn entry(classes: &[&str], attrs: &[(&str, &str)]) -> Entry {
        let mut e = Entry::new(Dn::parse("CN=x,OU=y,DC=contoso,DC=com").unwrap());
        for c in classes {
            e.add("objectClass", *c);
        }
        for (k, v) in attrs {
            e.add(k, *v);
        }
        e
    }

    fn kinds(findings: &[Finding], attribute: &str) -> (Vec<ErrorKind>, Option<String>) {
        let f =
            findings.iter().find(|f| f.attribute == attribute).unwrap_or_else(|| panic!("{attribute}: {findings:?}"));
        (f.errors.clone(), f.proposed.clone())
    }

    #[test]
    fn dedicated_mode_chains() {
        let options = Options { mode: Mode::Dedicated, ..Options::default() };
        let tlds = TldRule::default();
        let contact = entry(
            &["contact"],
            &[
                ("cn", "x"),
                ("givenName", "Ann"),
                ("sn", "Lee"),
                ("mail", "ann lee@contoso.com"),
                ("displayName", " Ann "),
            ],
        );
        let f = run(&contact, &options, &tlds);
        assert_eq!(kinds(&f, "displayName"), (vec![ErrorKind::Character], Some("Ann".into())));
        assert_eq!(kinds(&f, "mail"), (vec![ErrorKind::Character], Some("annlee@contoso.com".into())));
        // A contact without mailNickname gets givenName.sn; without targetAddress, SMTP: + mail.
        assert_eq!(kinds(&f, "mailNickname"), (vec![ErrorKind::Blank], Some("Ann.Lee".into())));
        assert_eq!(kinds(&f, "targetAddress"), (vec![ErrorKind::Blank], Some("SMTP:ann lee@contoso.com".into())));
        let user = entry(&["user"], &[("cn", "x"), ("mailNickname", ".a#b."), ("mail", "a@contoso.com")]);
        let f = run(&user, &options, &tlds);
        // The period rule works here (the reference's never fired).
        assert_eq!(kinds(&f, "mailNickname"), (vec![ErrorKind::Format, ErrorKind::Character], Some("ab".into())));
        assert!(f.iter().all(|x| x.attribute != "userPrincipalName"), "dedicated does not check UPNs");
        let group = entry(&["group"], &[("cn", "Staff")]);
        assert_eq!(kinds(&run(&group, &options, &tlds), "displayName"), (vec![ErrorKind::Blank], Some("Staff".into())));
    }
}
