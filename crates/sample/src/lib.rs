//! Realistic directory data of any size, written
//! as LDIF in one streaming pass. Every object is a pure function of the seed
//! and its index, so managers and group members are named without keeping
//! the directory in memory.

use std::io::Write;

use directory::{Dn, Entry, LdifWriter, Rdn, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Active Directory: user/group/contact objects, UPNs, proxyAddresses.
    Ad,
    /// OpenLDAP: inetOrgPerson and groupOfNames.
    Openldap,
}

#[derive(Debug, Clone)]
pub struct SampleSpec {
    pub users: u64,
    pub groups: u64,
    pub contacts: u64,
    pub flavor: Flavor,
    /// Percentage (0–100) of users given one of the problems IdFix looks for.
    pub defects_percent: u8,
    pub seed: u64,
    pub base_dn: Dn,
    /// Mail / UPN domain.
    pub domain: String,
    /// Give every user a password (`userPassword`, `{SSHA}`); see [`SampleSpec::password`].
    pub passwords: bool,
}

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn for_item(seed: u64, kind: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ kind.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items.get(self.below(items.len() as u64) as usize).copied().unwrap_or_default()
    }

    fn percent(&mut self, p: u8) -> bool {
        self.below(100) < u64::from(p)
    }
}

const GIVEN: &[&str] = &[
    "Anna",
    "Jürgen",
    "Zoë",
    "José",
    "Øyvind",
    "Łukasz",
    "Siobhán",
    "Chloé",
    "Mateo",
    "Aarav",
    "Yuki",
    "Olumide",
    "Fatima",
    "Émile",
    "Ingrid",
    "Dmitri",
    "Björn",
    "Nuño",
    "Priya",
    "Kwame",
    "Ana María",
    "Li",
    "Søren",
    "Ayşe",
    "Nikolaj",
    "Grace",
    "Hiroshi",
    "Amélie",
    "Tomás",
    "Zsófia",
];
const SURNAMES: &[&str] = &[
    "Müller",
    "Smith",
    "García",
    "O'Brien",
    "Nowak",
    "Johansson",
    "Dubois",
    "Rossi",
    "Kowalczyk",
    "Nakamura",
    "Okafor",
    "Haddad",
    "Schröder",
    "Fernández",
    "Van der Berg",
    "Andersson",
    "Papadopoulos",
    "Yılmaz",
    "Novák",
    "Ivanova",
    "Ng",
    "Silva",
    "Lefèvre",
    "Kim",
    "Østergaard",
    "Dvořák",
    "MacDonald",
    "Abdullah",
    "Costa",
    "Weiß",
];
const DEPARTMENTS: &[&str] = &[
    "Engineering",
    "Finance",
    "Sales",
    "Marketing",
    "Human Resources",
    "Legal",
    "Operations",
    "Support",
    "Research & Development",
    "Logistics",
];
const TITLES: &[&str] = &[
    "Engineer",
    "Senior Engineer",
    "Analyst",
    "Manager",
    "Director",
    "Consultant",
    "Accountant",
    "Designer",
    "Specialist",
    "Coordinator",
];
const CITIES: &[&str] =
    &["Berlin", "Zürich", "São Paulo", "Kraków", "Tokyo", "Lagos", "Montréal", "København", "Dublin", "Austin"];
const PARTNERS: &[&str] = &["partner.example", "supplier.example", "agency.example"];

/// ASCII login part: letters and digits of the name, accents dropped.
fn ascii_fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let mapped = match c {
            'ä' | 'à' | 'á' | 'â' | 'ã' | 'å' => "a",
            'æ' => "ae",
            'ç' => "c",
            'è' | 'é' | 'ê' | 'ë' => "e",
            'ì' | 'í' | 'î' | 'ï' | 'ı' => "i",
            'ñ' => "n",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' => "o",
            'ù' | 'ú' | 'û' | 'ü' => "u",
            'ý' | 'ÿ' => "y",
            'ß' => "ss",
            'ł' => "l",
            'ş' => "s",
            'ř' => "r",
            'ő' => "o",
            'Ø' => "o",
            'Ł' => "l",
            'Ö' => "o",
            'É' => "e",
            _ if c.is_ascii_alphanumeric() => {
                out.push(c.to_ascii_lowercase());
                continue;
            }
            _ => "",
        };
        out.push_str(mapped);
    }
    out
}

struct Person {
    given: String,
    surname: String,
    login: String,
    display: String,
    dn: Dn,
}

impl SampleSpec {
    fn people_ou(&self) -> Dn {
        match self.flavor {
            Flavor::Ad => self.base_dn.child(Rdn::single("OU", "People")),
            Flavor::Openldap => self.base_dn.child(Rdn::single("ou", "people")),
        }
    }

    fn groups_ou(&self) -> Dn {
        match self.flavor {
            Flavor::Ad => self.base_dn.child(Rdn::single("OU", "Groups")),
            Flavor::Openldap => self.base_dn.child(Rdn::single("ou", "groups")),
        }
    }

    fn person(&self, i: u64) -> Person {
        let mut r = Rng::for_item(self.seed, 1, i);
        let given = r.pick(GIVEN).to_string();
        let surname = r.pick(SURNAMES).to_string();
        let login = format!("{}.{}{i}", ascii_fold(&given), ascii_fold(&surname));
        // AD shops often name people "Last, First": a comma that must be escaped in the DN.
        let display = if self.flavor == Flavor::Ad && r.percent(15) {
            format!("{surname}, {given} {i}")
        } else {
            format!("{given} {surname} {i}")
        };
        let dn = match self.flavor {
            Flavor::Ad => self.people_ou().child(Rdn::single("CN", display.clone())),
            Flavor::Openldap => self.people_ou().child(Rdn::single("uid", login.clone())),
        };
        Person { given, surname, login, display, dn }
    }

    fn group_dn(&self, g: u64) -> Dn {
        let name =
            format!("{} {g}", DEPARTMENTS.get((g % DEPARTMENTS.len() as u64) as usize).copied().unwrap_or("Team"));
        let attr = if self.flavor == Flavor::Ad { "CN" } else { "cn" };
        self.groups_ou().child(Rdn::single(attr, name))
    }

    fn user_entry(&self, i: u64) -> Entry {
        let p = self.person(i);
        let mut r = Rng::for_item(self.seed, 2, i);
        let mut e = Entry::new(p.dn.clone());
        let mut mail = format!("{}@{}", p.login, self.domain);
        let mut upn = mail.clone();
        let mut display = p.display.clone();
        let mut extra_proxy = None;
        if self.users > 1 && r.percent(self.defects_percent) {
            let other = self.person(r.below(self.users));
            match r.below(6) {
                0 => upn = format!("{}@{}", other.login, self.domain),
                1 => mail = format!("{}@{}", other.login, self.domain),
                2 => extra_proxy = Some(format!("smtp:{}@{}", other.login, self.domain)),
                // A space (valid IA5, so a server stores it) where an address may have none.
                3 => mail = format!("{} {}@{}", ascii_fold(&p.given), ascii_fold(&p.surname), self.domain),
                4 => display = format!("{display} {}", "x".repeat(260)),
                _ => upn = format!("{}@corp.local", p.login),
            }
        }
        let disabled = r.percent(5);
        match self.flavor {
            Flavor::Ad => {
                for c in ["top", "person", "organizationalPerson", "user"] {
                    e.add("objectClass", c);
                }
                e.add("sAMAccountName", truncate_chars(&p.login, 20));
                e.add("userPrincipalName", upn);
                e.add("proxyAddresses", format!("SMTP:{mail}"));
                e.add("proxyAddresses", format!("smtp:{}@mail.{}", p.login, self.domain));
                if let Some(x) = extra_proxy {
                    e.add("proxyAddresses", x);
                }
                e.add("userAccountControl", if disabled { "514" } else { "512" });
                e.add("department", r.pick(DEPARTMENTS));
                e.add("company", "Example Corp");
            }
            Flavor::Openldap => {
                e.add("objectClass", "inetOrgPerson");
                e.add("uid", p.login.clone());
                e.add("departmentNumber", r.pick(DEPARTMENTS));
                e.add("employeeType", if disabled { "disabled" } else { "staff" });
                if let Some(x) = extra_proxy {
                    e.add("mail", x.trim_start_matches("smtp:"));
                }
            }
        }
        e.add("cn", p.dn.rdn().and_then(|r| r.avas().first()).and_then(|a| a.text()).unwrap_or_default());
        e.add("sn", p.surname.clone());
        e.add("givenName", p.given.clone());
        e.add("displayName", display);
        e.add("mail", mail);
        e.add("title", r.pick(TITLES));
        e.add("l", r.pick(CITIES));
        e.add("telephoneNumber", format!("+49 30 {:07}", r.below(10_000_000)));
        e.add("employeeNumber", format!("{}", 100_000 + i));
        if i > 0 {
            e.add("manager", Value::Text(self.person(i / 8).dn.to_string()));
        }
        if self.passwords {
            let salt = Rng::for_item(self.seed, 8, i).next().to_be_bytes();
            e.add("userPassword", passwords::scheme::ssha(&self.password(i), &salt));
        }
        e
    }

    /// User `i`'s password when `passwords` is on: deterministic, so the demo can print it.
    pub fn password(&self, i: u64) -> String {
        let mut r = Rng::for_item(self.seed, 7, i);
        let city = ascii_fold(r.pick(CITIES));
        let mut chars = city.chars();
        let city = chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default();
        format!("{city}-{}-{:04}", r.pick(TITLES).split(' ').next().unwrap_or("Team"), r.below(10_000))
    }

    /// The first `n` enabled users: (user name, password).
    pub fn sign_in_examples(&self, n: usize) -> Vec<(String, String)> {
        (0..self.users)
            .map(|i| (i, self.user_entry(i)))
            .filter(|(_, e)| {
                e.first_text("employeeType") != Some("disabled") && e.first_text("userAccountControl") != Some("514")
            })
            .filter_map(|(i, e)| {
                // Only people without a planted defect: their name is theirs alone.
                let expected = format!("{}@{}", self.person(i).login, self.domain);
                let name = e.first_text("userPrincipalName").or_else(|| e.first_text("mail"))?;
                (name == expected && e.values("mail").len() == 1).then(|| (expected, self.password(i)))
            })
            .take(n)
            .collect()
    }

    fn group_entry(&self, g: u64) -> Entry {
        let dn = self.group_dn(g);
        let mut r = Rng::for_item(self.seed, 3, g);
        let mut e = Entry::new(dn.clone());
        let cn = dn.rdn().and_then(|r| r.avas().first()).and_then(|a| a.text()).unwrap_or_default().to_string();
        match self.flavor {
            Flavor::Ad => {
                e.add("objectClass", "top");
                e.add("objectClass", "group");
                e.add("sAMAccountName", truncate_chars(&ascii_fold(&cn), 20));
                e.add("groupType", "-2147483646");
                e.add("mail", format!("{}@{}", ascii_fold(&cn), self.domain));
            }
            Flavor::Openldap => e.add("objectClass", "groupOfNames"),
        }
        e.add("cn", cn);
        e.add("description", format!("Sample group {g}"));
        let size = if self.users == 0 { 0 } else { 1 + r.below(self.users.min(50)) };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..size {
            seen.insert(r.below(self.users));
        }
        for m in seen {
            e.add("member", Value::Text(self.person(m).dn.to_string()));
        }
        // Nesting: every group but the first few is also a member of a parent group.
        for child in [g * 3 + 1, g * 3 + 2] {
            if child < self.groups {
                e.add("member", Value::Text(self.group_dn(child).to_string()));
            }
        }
        if !e.has("member") {
            // groupOfNames requires a member.
            e.add("member", Value::Text(self.base_dn.to_string()));
        }
        e
    }

    fn contact_entry(&self, c: u64) -> Entry {
        let mut r = Rng::for_item(self.seed, 4, c);
        let given = r.pick(GIVEN);
        let surname = r.pick(SURNAMES);
        let mail = format!("{}.{}@{}", ascii_fold(given), ascii_fold(surname), r.pick(PARTNERS));
        let name = format!("{given} {surname} (external {c})");
        let (attr, classes): (&str, &[&str]) = match self.flavor {
            Flavor::Ad => ("CN", &["top", "person", "organizationalPerson", "contact"]),
            // Not inetOrgPerson: a contact has no login. extensibleObject carries mail.
            Flavor::Openldap => ("cn", &["person", "organizationalPerson", "extensibleObject"]),
        };
        let mut e = Entry::new(
            self.base_dn
                .child(Rdn::single(if self.flavor == Flavor::Ad { "OU" } else { "ou" }, "Contacts"))
                .child(Rdn::single(attr, name.clone())),
        );
        for cl in classes {
            e.add("objectClass", *cl);
        }
        e.add("cn", name);
        e.add("sn", surname);
        e.add("givenName", given);
        e.add("mail", mail.clone());
        if self.flavor == Flavor::Ad {
            // proxyAddresses is in the base AD schema; targetAddress needs Exchange's.
            e.add("proxyAddresses", format!("SMTP:{mail}"));
        }
        e
    }

    fn ou_entry(&self, dn: Dn) -> Entry {
        let mut e = Entry::new(dn.clone());
        e.add("objectClass", "top");
        e.add("objectClass", "organizationalUnit");
        e.add("ou", dn.rdn().and_then(|r| r.avas().first()).and_then(|a| a.text()).unwrap_or_default());
        e
    }

    /// Writes the OUs (`with_ous`), users, groups and contacts as LDIF.
    pub fn write(&self, out: impl Write, with_ous: bool) -> std::io::Result<u64> {
        let mut w = LdifWriter::new(out);
        w.write_comment(&format!(
            "idbridge sample data: {} users, {} groups, {} contacts, flavor {:?}, seed {}, defects {}%",
            self.users, self.groups, self.contacts, self.flavor, self.seed, self.defects_percent
        ))?;
        let mut n = 0;
        if with_ous {
            let contacts_ou =
                self.base_dn.child(Rdn::single(if self.flavor == Flavor::Ad { "OU" } else { "ou" }, "Contacts"));
            for dn in [self.people_ou(), self.groups_ou(), contacts_ou] {
                w.write_entry(&self.ou_entry(dn))?;
                n += 1;
            }
        }
        for i in 0..self.users {
            w.write_entry(&self.user_entry(i))?;
            n += 1;
        }
        // Children before parents: AD requires a member to exist when it is added.
        for g in (0..self.groups).rev() {
            w.write_entry(&self.group_entry(g))?;
            n += 1;
        }
        for c in 0..self.contacts {
            w.write_entry(&self.contact_entry(c))?;
            n += 1;
        }
        w.into_inner().flush()?;
        Ok(n)
    }
}

fn truncate_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The mail domain implied by `dc=` components of a base DN.
pub fn domain_of(base: &Dn) -> Option<String> {
    let parts: Vec<&str> = base
        .rdns()
        .iter()
        .filter_map(|r| r.avas().first().filter(|a| a.attr.eq_ignore_ascii_case("dc")).and_then(|a| a.text()))
        .collect();
    if parts.is_empty() { None } else { Some(parts.join(".").to_ascii_lowercase()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::ldif::{LdifReader, LdifRecord};

    fn spec(flavor: Flavor, defects: u8) -> SampleSpec {
        let base = Dn::parse("dc=example,dc=org").unwrap();
        SampleSpec {
            users: 300,
            groups: 20,
            contacts: 5,
            flavor,
            defects_percent: defects,
            seed: 7,
            domain: domain_of(&base).unwrap(),
            base_dn: base,
            passwords: true,
        }
    }

    fn entries(s: &SampleSpec) -> Vec<Entry> {
        let mut buf = Vec::new();
        s.write(&mut buf, true).unwrap();
        LdifReader::new(buf.as_slice())
            .map(|r| match r.unwrap() {
                LdifRecord::Content(e) => e,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn deterministic_unique_and_realistic() {
        let a = entries(&spec(Flavor::Ad, 0));
        assert_eq!(a, entries(&spec(Flavor::Ad, 0)), "same seed, same data");
        assert_eq!(a.len(), 3 + 300 + 20 + 5);
        let dns: std::collections::HashSet<_> = a.iter().map(|e| e.dn.clone()).collect();
        assert_eq!(dns.len(), a.len(), "DNs are unique");
        let upns: std::collections::HashSet<_> = a.iter().filter_map(|e| e.first_text("userPrincipalName")).collect();
        assert_eq!(upns.len(), 300, "no duplicate UPN without defects");
        assert!(a.iter().any(|e| e.dn.to_string().contains("\\,")), "some DNs need escaping");
        assert!(a.iter().any(|e| e.first_text("givenName").is_some_and(|g| !g.is_ascii())));
        assert!(a.iter().any(|e| e.first_text("userAccountControl") == Some("514")), "some disabled");
        assert!(
            a.iter().any(|e| e.values("member").iter().any(|m| m.as_text().is_some_and(|t| t.contains("OU=Groups")))),
            "nested groups"
        );
        assert!(a.iter().filter(|e| e.has("manager")).count() >= 299);
    }

    #[test]
    fn defects_appear_when_asked() {
        let d = entries(&spec(Flavor::Ad, 60));
        let upns: Vec<_> = d.iter().filter_map(|e| e.first_text("userPrincipalName")).collect();
        let unique: std::collections::HashSet<_> = upns.iter().collect();
        assert!(unique.len() < upns.len(), "duplicate UPNs");
        assert!(upns.iter().any(|u| u.ends_with(".local")));
        assert!(d.iter().any(|e| { e.first_text("displayName").is_some_and(|n| n.chars().count() > 256) }));
        assert!(d.iter().any(|e| e.first_text("mail").is_some_and(|m| m.contains(' '))));
    }

    #[test]
    fn openldap_flavor() {
        let o = entries(&spec(Flavor::Openldap, 0));
        assert_eq!(o.iter().filter(|e| e.has_object_class("inetOrgPerson")).count(), 300);
        let contacts: Vec<&Entry> =
            o.iter().filter(|e| directory::ObjectKind::of(e) == directory::ObjectKind::Contact).collect();
        assert_eq!(contacts.len(), 5, "contacts are not people with logins");
        assert!(o.iter().all(|e| !e.has_object_class("groupOfNames") || e.has("member")));
        assert_eq!(ascii_fold("Jürgen Øyvind-Łukasz"), "jurgenoyvindlukasz");
    }
}
