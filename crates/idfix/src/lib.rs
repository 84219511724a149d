//! Directory hygiene (the successor of Microsoft IdFix, with its rules):
//! which attribute values would
//! break directory sync, and what to change them to. Pure: objects come in as
//! [`directory::Entry`] values, findings go out; reading the directory,
//! writing files and applying fixes are the caller's.
//!
//! - [`skip`]: which objects are not checked (system objects, conflicts, …).
//! - [`text`]: building blocks — lengths, character sets, the address check.
//! - [`tld`]: which top-level domains are routable.
//! - [`checks`]: the per-attribute rule chains (multi-tenant and dedicated).
//! - [`duplicates`]: uniqueness the way the cloud enforces it.
//! - [`finding`]: a finding and its CSV / JSON forms.
//! - [`plan`]: the LDAP modifications that apply (and undo) a finding.
//!
//! Where Microsoft IdFix is wrong, this crate does what
//! the cloud needs instead; each difference is named where it is made.

pub mod checks;
pub mod duplicates;
pub mod finding;
pub mod plan;
pub mod skip;
pub mod text;
pub mod tld;

pub use finding::{Action, ErrorKind, Finding};

use directory::Entry;

/// Which rule set: the default (Microsoft 365 multi-tenant) or dedicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    MultiTenant,
    Dedicated,
}

/// Scan options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub mode: Mode,
    /// Skip the userPrincipalName checks (sign-in by an alternate login id).
    pub alternate_login_id: bool,
    /// Top-level domains to accept besides the built-in rule (lower case, no dot).
    pub extra_tlds: Vec<String>,
    /// Domains (lower case) that are not routable although their TLD is, e.g. an internal `corp.example.com`.
    pub non_routable_domains: Vec<String>,
}

/// One pass over a directory: feed every object to [`Scanner::check`].
#[derive(Debug)]
pub struct Scanner {
    options: Options,
    tlds: tld::TldRule,
    duplicates: duplicates::Index,
    /// Objects checked and skipped so far.
    pub checked: u64,
    pub skipped: u64,
}

impl Scanner {
    /// A scanner whose uniqueness index is in memory.
    pub fn new(options: Options) -> Scanner {
        Scanner::with_index(options, Box::new(duplicates::MemoryIndex::default()))
    }

    /// A scanner whose uniqueness index is kept by `store` (e.g. on disk).
    pub fn with_index(options: Options, store: Box<dyn duplicates::IndexStore>) -> Scanner {
        let tlds = tld::TldRule::new(&options.extra_tlds, &options.non_routable_domains);
        Scanner { options, tlds, duplicates: duplicates::Index::with_store(store), checked: 0, skipped: 0 }
    }

    /// The findings for one object (and, for duplicates, for the object
    /// that held the value first, the first time it is found shared).
    pub fn check(&mut self, entry: &Entry) -> Result<Vec<Finding>, duplicates::IndexError> {
        if skip::reason(entry, self.options.mode).is_some() {
            self.skipped += 1;
            return Ok(Vec::new());
        }
        self.checked += 1;
        let mut findings = checks::run(entry, &self.options, &self.tlds);
        self.duplicates.check(entry, self.options.mode, &mut findings)?;
        Ok(findings)
    }
}

#[cfg(test)]
mod fixture {
    use directory::ldif::{LdifRecord, parse_str};

    use super::*;

    /// One object per rule (tests/fixture.ldif); tests/expected.csv is every
    /// finding, exactly: nothing missing, nothing clean flagged.
    #[test]
    fn the_fixture_gives_exactly_the_expected_findings() {
        let mut scanner = Scanner::new(Options::default());
        let mut rows = vec![Finding::CSV_HEADER.to_string()];
        for record in parse_str(include_str!("../tests/fixture.ldif")).unwrap() {
            if let LdifRecord::Content(entry) = record {
                rows.extend(scanner.check(&entry).unwrap().iter().map(Finding::csv_row));
            }
        }
        let expected: Vec<&str> = include_str!("../tests/expected.csv").lines().collect();
        assert_eq!(rows, expected);
        assert_eq!((scanner.checked, scanner.skipped), (20, 6));
    }
}
