//! Which top-level domains are routable. The reference tool kept a 2015
//! allow-list (flagging `.app`, `.shop`, … and reading the file for every
//! check). Here the rule is the other way round, which does not go stale:
//! any syntactically valid TLD is routable unless it is one of the names
//! reserved for private use (RFC 2606, RFC 6761, RFC 6762, RFC 8375, ICANN's
//! name-collision and `.internal` decisions) — and the administrator can add
//! TLDs and mark their own internal domains.

/// Never routable on the internet.
pub const PRIVATE_TLDS: &[&str] = &[
    "local",
    "localdomain",
    "localhost",
    "lan",
    "home",
    "corp",
    "mail",
    "internal",
    "intranet",
    "private",
    "priv",
    "test",
    "example",
    "invalid",
    "onion",
    "alt",
];

#[derive(Debug, Clone, Default)]
pub struct TldRule {
    extra: Vec<String>,
    internal_domains: Vec<String>,
}

impl TldRule {
    pub fn new(extra_tlds: &[String], internal_domains: &[String]) -> TldRule {
        TldRule {
            extra: extra_tlds.iter().map(|t| t.trim_start_matches('.').to_lowercase()).collect(),
            internal_domains: internal_domains.iter().map(|d| d.trim_start_matches('.').to_lowercase()).collect(),
        }
    }

    /// Whether the TLD of `domain` (the part after its last dot) is routable.
    pub fn tld_ok(&self, domain: &str) -> bool {
        let domain = domain.to_lowercase();
        let Some((_, tld)) = domain.rsplit_once('.') else { return false };
        if self.extra.iter().any(|t| t == tld) {
            return true;
        }
        if PRIVATE_TLDS.contains(&tld) {
            return false;
        }
        let ascii = (2..=63).contains(&tld.len()) && tld.chars().all(|c| c.is_ascii_alphabetic());
        let punycode =
            tld.starts_with("xn--") && tld.len() <= 63 && tld.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let unicode = !tld.is_ascii() && tld.chars().all(char::is_alphabetic) && tld.chars().count() >= 2;
        ascii || punycode || unicode
    }

    /// A domain the administrator said is internal (or a subdomain of one).
    pub fn internal(&self, domain: &str) -> bool {
        let domain = domain.to_lowercase();
        self.internal_domains.iter().any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_tlds_pass_private_ones_do_not() {
        let rule = TldRule::new(&["lab".to_string()], &["corp.example.com".to_string()]);
        for ok in ["contoso.com", "x.app", "shop.shop", "a.co.uk", "b.xn--p1ai", "c.рф", "x.lab"] {
            assert!(rule.tld_ok(ok), "{ok}");
        }
        for bad in ["contoso.local", "x.corp", "y.internal", "z.test", "nodot", "a.1", "a.c", "a.lan"] {
            assert!(!rule.tld_ok(bad), "{bad}");
        }
        assert!(rule.internal("eu.corp.example.com"));
        assert!(!rule.internal("example.com"));
    }
}
