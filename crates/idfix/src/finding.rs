//! A finding: one attribute value of one object that would break directory
//! sync, why, and what to do about it.

use serde::{Deserialize, Serialize};

/// Why a value fails, in the reference tool's order and spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    Format,
    Blank,
    Duplicate,
    Character,
    TopLevelDomain,
    DomainPart,
    LocalPart,
    Length,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Format => "Format",
            ErrorKind::Blank => "Blank",
            ErrorKind::Duplicate => "Duplicate",
            ErrorKind::Character => "Character",
            ErrorKind::TopLevelDomain => "TopLevelDomain",
            ErrorKind::DomainPart => "DomainPart",
            ErrorKind::LocalPart => "LocalPart",
            ErrorKind::Length => "Length",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorKind> {
        [
            ErrorKind::Format,
            ErrorKind::Blank,
            ErrorKind::Duplicate,
            ErrorKind::Character,
            ErrorKind::TopLevelDomain,
            ErrorKind::DomainPart,
            ErrorKind::LocalPart,
            ErrorKind::Length,
        ]
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(text))
    }
}

/// What the finding proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Replace the value with the proposed one (an empty proposal removes the value).
    Edit,
    /// Remove the value (a secondary address that another object holds).
    Remove,
    /// Nothing to change on this object (it holds a value first; the other
    /// holder is the one to change). Reported so both sides are visible.
    Keep,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Edit => "EDIT",
            Action::Remove => "REMOVE",
            Action::Keep => "KEEP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub dn: String,
    pub cn: String,
    pub object_class: String,
    pub attribute: String,
    /// The value as it is in the directory.
    pub value: String,
    /// In the order of [`ErrorKind`].
    pub errors: Vec<ErrorKind>,
    pub action: Action,
    /// The value to write (with `Edit`); `None` when there is no fix to propose.
    pub proposed: Option<String>,
    /// More context, e.g. who else holds a duplicate value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Finding {
    pub fn error_text(&self) -> String {
        let mut e = self.errors.clone();
        e.sort();
        e.dedup();
        e.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
    }

    pub const CSV_HEADER: &'static str =
        "DISTINGUISHEDNAME,COMMONNAME,OBJECTCLASS,ATTRIBUTE,ERROR,VALUE,UPDATE,PROPOSEDACTION,NOTE";

    /// One RFC 4180 line (without the line break).
    pub fn csv_row(&self) -> String {
        [
            self.dn.as_str(),
            self.cn.as_str(),
            self.object_class.as_str(),
            self.attribute.as_str(),
            &self.error_text(),
            self.value.as_str(),
            self.proposed.as_deref().unwrap_or(""),
            self.action.as_str(),
            self.note.as_deref().unwrap_or(""),
        ]
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// RFC 4180: quoted when it holds a comma, a quote, a line break or edge
/// spaces; quotes doubled (the reference tool did not, and lost data).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_correctly_and_errors_print_in_order() {
        let f = Finding {
            dn: "CN=Smith\\, John,OU=Staff,DC=x".into(),
            cn: "Smith, John".into(),
            object_class: "user".into(),
            attribute: "displayName".into(),
            value: "say \"hi\"".into(),
            errors: vec![ErrorKind::TopLevelDomain, ErrorKind::Character],
            action: Action::Edit,
            proposed: Some("x".into()),
            note: None,
        };
        assert_eq!(f.error_text(), "Character, TopLevelDomain");
        assert_eq!(
            f.csv_row(),
            "\"CN=Smith\\, John,OU=Staff,DC=x\",\"Smith, John\",user,displayName,\"Character, TopLevelDomain\",\"say \"\"hi\"\"\",x,EDIT,"
        );
        assert_eq!(ErrorKind::parse("length"), Some(ErrorKind::Length));
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Finding>(&json).unwrap(), f);
    }
}
