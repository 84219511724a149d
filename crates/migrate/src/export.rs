//! Reading the folder Entra Connect writes with `Get-ADSyncServerConfiguration`:
//! `Connectors/Connector_{guid}.xml` (one per connector: its type, forest,
//! partitions and OU selection, password hash sync), and
//! `SynchronizationRules/SynchronizationRule_{guid}.xml` (one per rule).
//! `GlobalSettings/` is read for its parameters when it has any.
//!
//! The files come from someone else's server: each is bounded in size and
//! shape (`xmldoc`'s limits, no DTDs), the number of files is bounded, and
//! every problem names the file and the element.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use xmldoc::{Element, Limits};

/// Bounds for one exported file. An AD connector with its schema is a few
/// megabytes and some tens of thousands of elements; a rule a few kilobytes.
const LIMITS: Limits = Limits {
    max_bytes: 64 << 20,
    max_depth: 64,
    max_elements: 2_000_000,
    max_attributes: 64,
    max_namespace_declarations: 1024,
};

/// The most files read from one folder.
const MAX_FILES: usize = 20_000;

/// Why an export could not be read. Each names the file (relative to the
/// export folder) and, where it is about the content, the element.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{dir}: not an Entra Connect export (Get-ADSyncServerConfiguration writes the folders Connectors/ and SynchronizationRules/; neither is here)"
    )]
    NotAnExport { dir: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

fn file_error(file: &str, message: impl Into<String>) -> ExportError {
    ExportError::File { file: file.to_string(), message: message.into() }
}

/// An export, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectExport {
    pub dir: PathBuf,
    pub connectors: Vec<Connector>,
    pub rules: Vec<SyncRule>,
    /// GlobalSettings parameters (name → value), when the export has them.
    pub parameters: BTreeMap<String, String>,
}

/// What kind of directory a connector reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorKind {
    ActiveDirectory,
    /// The cloud side (Azure AD / Entra ID connector).
    EntraId,
    /// Anything else (generic LDAP, SQL, web services, PowerShell …): its
    /// `<category>` and `<subtype>` as written.
    Other {
        category: String,
        subtype: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Connector {
    /// The GUID, lower case without braces (rules refer to it).
    pub id: String,
    pub name: String,
    pub kind: ConnectorKind,
    /// The file it came from, relative to the export folder.
    pub file: String,
    pub forest: Option<String>,
    pub login_user: Option<String>,
    pub login_domain: Option<String>,
    pub password_hash_sync: bool,
    pub partitions: Vec<Partition>,
    /// The attributes Connect reads (its attribute inclusion list).
    pub attributes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub dn: String,
    pub selected: bool,
    pub inclusions: Vec<String>,
    pub exclusions: Vec<String>,
    /// The domain controller Connect used last.
    pub last_dc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkType {
    Join,
    Provision,
    StickyJoin,
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncRule {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `Microsoft.InfromADUserCommon.004` on an out-of-box rule.
    pub tag: Option<String>,
    pub direction: Direction,
    pub disabled: bool,
    /// The connector's GUID, lower case without braces.
    pub connector: String,
    pub source_type: String,
    pub target_type: String,
    pub link: LinkType,
    pub precedence: i64,
    pub password_sync: bool,
    pub mappings: Vec<Mapping>,
    /// Join criteria: groups tried in order, every condition of a group must match.
    pub join: Vec<Vec<JoinCondition>>,
    /// Scoping filter: groups ORed, the conditions of a group ANDed.
    pub scope: Vec<Vec<ScopeCondition>>,
    /// The file it came from, relative to the export folder.
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Direct(Vec<String>),
    Constant(String),
    Expression {
        expression: String,
        sources: Vec<String>,
    },
    /// A mapping with no source at all.
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeType {
    Update,
    Merge,
    MergeCaseInsensitive,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub dest: String,
    pub flow: Flow,
    pub merge: MergeType,
    /// Connect's "apply once".
    pub execute_once: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinCondition {
    pub cs_attribute: String,
    pub mv_attribute: String,
    pub case_sensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeCondition {
    pub attribute: String,
    /// Upper case: EQUAL, NOTEQUAL, ISNULL, STARTSWITH, ISBITSET, ISMEMBEROF …
    pub operator: String,
    pub value: String,
}

/// A GUID as the rules and files spell it, made comparable.
pub fn guid_key(text: &str) -> String {
    text.trim().trim_start_matches('{').trim_end_matches('}').to_ascii_lowercase()
}

fn child_text(e: &Element, name: &str) -> Option<String> {
    e.child("", name).map(|c| c.text().trim().to_string())
}

fn required(e: &Element, name: &str, file: &str) -> Result<String, ExportError> {
    child_text(e, name).ok_or_else(|| file_error(file, format!("<{}> has no <{name}>", e.local)))
}

fn children<'a>(e: &'a Element, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
    e.elements().filter(move |c| c.local == name)
}

fn truthy(text: &str) -> bool {
    matches!(text.trim().to_ascii_lowercase().as_str(), "true" | "1")
}

fn parse_file(dir: &Path, relative: &str) -> Result<Element, ExportError> {
    let bytes = std::fs::read(dir.join(relative)).map_err(|e| file_error(relative, format!("cannot read it: {e}")))?;
    if bytes.len() > LIMITS.max_bytes {
        return Err(file_error(relative, format!("larger than {} bytes", LIMITS.max_bytes)));
    }
    // Connect writes UTF-8, sometimes with a byte order mark.
    let text = String::from_utf8(bytes).map_err(|_| file_error(relative, "not UTF-8 text"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    xmldoc::parse_within(text, &LIMITS).map_err(|e| file_error(relative, e.to_string()))
}

/// The `.xml` files of a subfolder, sorted (relative paths).
fn xml_files(dir: &Path, sub: &str) -> Result<Vec<String>, ExportError> {
    let path = dir.join(sub);
    if !path.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(&path).map_err(|e| file_error(sub, format!("cannot list it: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| file_error(sub, format!("cannot list it: {e}")))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.to_ascii_lowercase().ends_with(".xml") {
            names.push(format!("{sub}/{name}"));
            if names.len() > MAX_FILES {
                return Err(file_error(sub, format!("more than {MAX_FILES} files")));
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Reads an export folder.
pub fn read(dir: &Path) -> Result<ConnectExport, ExportError> {
    let display = dir.display().to_string();
    if !dir.is_dir() {
        return Err(ExportError::NotAnExport { dir: display });
    }
    if !dir.join("Connectors").is_dir() && !dir.join("SynchronizationRules").is_dir() {
        return Err(ExportError::NotAnExport { dir: display });
    }
    let mut connectors = Vec::new();
    for file in xml_files(dir, "Connectors")? {
        connectors.push(read_connector(&parse_file(dir, &file)?, &file)?);
    }
    let mut rules = Vec::new();
    for file in xml_files(dir, "SynchronizationRules")? {
        rules.push(read_rule(&parse_file(dir, &file)?, &file)?);
    }
    let mut parameters = BTreeMap::new();
    for file in xml_files(dir, "GlobalSettings")? {
        let root = parse_file(dir, &file)?;
        for p in root.descendants().into_iter().filter(|e| e.local == "parameter") {
            if let Some(name) = p.attr("name") {
                parameters.insert(name.to_string(), p.text().trim().to_string());
            }
        }
    }
    Ok(ConnectExport { dir: dir.to_path_buf(), connectors, rules, parameters })
}

fn read_connector(root: &Element, file: &str) -> Result<Connector, ExportError> {
    if root.local != "ma-data" {
        return Err(file_error(file, format!("the root element is <{}>, not a connector's <ma-data>", root.local)));
    }
    let id = guid_key(&required(root, "id", file)?);
    let name = required(root, "name", file)?;
    let category = child_text(root, "category").unwrap_or_default();
    let subtype = child_text(root, "subtype").unwrap_or_default();
    let kind = if category.eq_ignore_ascii_case("AD") {
        ConnectorKind::ActiveDirectory
    } else if category.eq_ignore_ascii_case("Extensible2")
        && (subtype.contains("Azure Active Directory") || subtype.contains("Entra"))
    {
        ConnectorKind::EntraId
    } else {
        ConnectorKind::Other { category, subtype }
    };
    let adma = root.child("", "private-configuration").and_then(|p| p.child("", "adma-configuration"));
    let adma_text = |name: &str| adma.and_then(|a| child_text(a, name)).filter(|t| !t.is_empty());
    let password_hash_sync = adma
        .and_then(|a| a.child("", "password-hash-sync-config"))
        .and_then(|p| child_text(p, "enabled"))
        .is_some_and(|t| truthy(&t));
    let mut partitions = Vec::new();
    if let Some(data) = root.child("", "ma-partition-data") {
        for p in children(data, "partition") {
            let dn = required(p, "name", file)?;
            let containers = p.child("", "filter").and_then(|f| f.child("", "containers"));
            let listed = |list: &str, item: &str| -> Vec<String> {
                containers
                    .and_then(|c| c.child("", list))
                    .map(|l| children(l, item).map(|i| i.text().trim().to_string()).collect())
                    .unwrap_or_default()
            };
            partitions.push(Partition {
                dn,
                selected: child_text(p, "selected").is_some_and(|t| truthy(&t)),
                inclusions: listed("inclusions", "inclusion"),
                exclusions: listed("exclusions", "exclusion"),
                last_dc: p
                    .child("", "custom-data")
                    .and_then(|c| c.child("", "adma-partition-data"))
                    .and_then(|a| child_text(a, "last-dc"))
                    .filter(|t| !t.is_empty()),
            });
        }
    }
    let attributes = root
        .child("", "attribute-inclusion")
        .map(|a| children(a, "attribute").map(|x| x.text().trim().to_string()).collect())
        .unwrap_or_default();
    Ok(Connector {
        id,
        name,
        kind,
        file: file.to_string(),
        forest: adma_text("forest-name"),
        login_user: adma_text("forest-login-user"),
        login_domain: adma_text("forest-login-domain"),
        password_hash_sync,
        partitions,
        attributes,
    })
}

fn read_rule(root: &Element, file: &str) -> Result<SyncRule, ExportError> {
    if root.local != "synchronizationRule" {
        return Err(file_error(
            file,
            format!("the root element is <{}>, not a rule's <synchronizationRule>", root.local),
        ));
    }
    let name = required(root, "name", file)?;
    let direction = match required(root, "direction", file)?.to_ascii_lowercase().as_str() {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        other => return Err(file_error(file, format!("<direction> {other:?} is not Inbound or Outbound"))),
    };
    let precedence_text = required(root, "precedence", file)?;
    let precedence = precedence_text
        .parse::<i64>()
        .map_err(|_| file_error(file, format!("<precedence> {precedence_text:?} is not a number")))?;
    let link = match required(root, "linkType", file)?.as_str() {
        "Join" => LinkType::Join,
        "Provision" => LinkType::Provision,
        "StickyJoin" => LinkType::StickyJoin,
        other => LinkType::Other(other.to_string()),
    };
    let mut mappings = Vec::new();
    if let Some(list) = root.child("", "attribute-mappings") {
        for (i, m) in children(list, "mapping").enumerate() {
            let dest = child_text(m, "dest")
                .filter(|d| !d.is_empty())
                .ok_or_else(|| file_error(file, format!("<attribute-mappings>, <mapping> {}: no <dest>", i + 1)))?;
            let src = m.child("", "src");
            let sources: Vec<String> =
                src.map(|s| children(s, "attr").map(|a| a.text().trim().to_string()).collect()).unwrap_or_default();
            let flow = match child_text(m, "expression").filter(|e| !e.is_empty()) {
                Some(expression) => Flow::Expression { expression, sources },
                None if !sources.is_empty() => Flow::Direct(sources),
                None => match src.map(|s| s.text().trim().to_string()).filter(|t| !t.is_empty()) {
                    Some(constant) => Flow::Constant(constant),
                    None => Flow::Empty,
                },
            };
            let merge = match child_text(m, "valueMergeType").unwrap_or_else(|| "Update".into()).as_str() {
                "Update" => MergeType::Update,
                "Merge" => MergeType::Merge,
                "MergeCaseInsensitive" => MergeType::MergeCaseInsensitive,
                other => MergeType::Other(other.to_string()),
            };
            let execute_once = m.attr("execute-once").is_some_and(truthy);
            mappings.push(Mapping { dest, flow, merge, execute_once });
        }
    }
    let mut join = Vec::new();
    if let Some(criteria) = root.child("", "relationshipCriteria") {
        for group in children(criteria, "conditions") {
            let mut conditions = Vec::new();
            for c in children(group, "condition") {
                conditions.push(JoinCondition {
                    cs_attribute: required(c, "csAttribute", file)?,
                    mv_attribute: required(c, "ilmAttribute", file)?,
                    case_sensitive: child_text(c, "caseSensitive").is_some_and(|t| truthy(&t)),
                });
            }
            if !conditions.is_empty() {
                join.push(conditions);
            }
        }
    }
    let mut scope = Vec::new();
    if let Some(criteria) = root.child("", "synchronizationCriteria") {
        for group in children(criteria, "conditions") {
            let mut conditions = Vec::new();
            for c in children(group, "scope") {
                conditions.push(ScopeCondition {
                    attribute: required(c, "csAttribute", file)?,
                    operator: required(c, "csOperator", file)?.to_ascii_uppercase(),
                    value: child_text(c, "csValue").unwrap_or_default(),
                });
            }
            if !conditions.is_empty() {
                scope.push(conditions);
            }
        }
    }
    Ok(SyncRule {
        id: guid_key(&child_text(root, "id").unwrap_or_default()),
        name,
        description: child_text(root, "description").unwrap_or_default(),
        tag: child_text(root, "immutable-tag").filter(|t| !t.is_empty()),
        direction,
        disabled: child_text(root, "disabled").is_some_and(|t| truthy(&t)),
        connector: guid_key(&required(root, "connector", file)?),
        source_type: required(root, "sourceObjectType", file)?,
        target_type: required(root, "targetObjectType", file)?,
        link,
        precedence,
        password_sync: child_text(root, "EnablePasswordSync").is_some_and(|t| truthy(&t)),
        mappings,
        join,
        scope,
        file: file.to_string(),
    })
}
