//! The PowerShell scripts Connect writes for its rules (the Synchronization
//! Rules Editor's "Export", and the rule sections of exported
//! configurations): `New-ADSyncRule`, `Add-ADSyncAttributeFlowMapping`,
//! `New-Object …ScopeCondition / …JoinCondition`,
//! `Add-ADSyncScopeConditionGroup`, `Add-ADSyncJoinConditionGroup`,
//! `Add-ADSyncRule`. Only that shape is read — the script is data here and
//! nothing in it runs; anything else (a variable such as
//! `$precedenceValue`, another command's output) is an error naming the line.
//!
//! Bounded like the XML: the script's size, the number of rules and the
//! length of each value.

use std::collections::BTreeMap;

use crate::export::{
    Direction, ExportError, Flow, JoinCondition, LinkType, Mapping, MergeType, ScopeCondition, SyncRule, guid_key,
};

const MAX_BYTES: usize = 64 << 20;
const MAX_RULES: usize = 20_000;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// `-Name`
    Param(String),
    /// A quoted string or a bare word.
    Text(String),
    /// `@('a','b')` or `@($condition0[0],…)`.
    List(Vec<String>),
}

/// One statement: its words, and the line it starts on.
struct Statement {
    line: usize,
    tokens: Vec<Token>,
}

/// Adds a value; after a comma it joins the value before it into a list
/// (`-ArgumentList 'mail','mail',$false`).
fn push_value(tokens: &mut Vec<Token>, value: Token, after_comma: &mut bool) {
    if std::mem::take(after_comma) {
        let joined = match (tokens.pop(), value) {
            (Some(Token::List(mut items)), Token::Text(t)) => {
                items.push(t);
                Token::List(items)
            }
            (Some(Token::Text(a)), Token::Text(b)) => Token::List(vec![a, b]),
            (Some(previous), value) => {
                tokens.push(previous);
                value
            }
            (None, value) => value,
        };
        tokens.push(joined);
    } else {
        tokens.push(value);
    }
}

/// Splits the script into statements (newlines end one, except after a
/// backtick or inside quotes or `@(…)`).
fn statements(text: &str) -> Result<Vec<Statement>, (usize, String)> {
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    let mut after_comma = false;
    let mut chars = text.chars().peekable();
    let (mut line, mut start) = (1usize, 1usize);
    let single_quoted =
        |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize| -> Result<String, String> {
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("a quoted string is not closed".into()),
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    Some('\'') => return Ok(s),
                    Some(c) => {
                        if c == '\n' {
                            *line += 1;
                        }
                        s.push(c);
                    }
                }
            }
        };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                after_comma = false;
                if !tokens.is_empty() {
                    out.push(Statement { line: start, tokens: std::mem::take(&mut tokens) });
                }
                line += 1;
                start = line;
            }
            '`' => {
                // A line continuation: skip to the end of the line.
                for n in chars.by_ref() {
                    if n == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '#' if tokens.is_empty() => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        line += 1;
                        start = line;
                        break;
                    }
                }
            }
            c if c.is_whitespace() => {}
            ',' => after_comma = true,
            '\'' => {
                let value = Token::Text(single_quoted(&mut chars, &mut line).map_err(|e| (line, e))?);
                push_value(&mut tokens, value, &mut after_comma);
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err((line, "a quoted string is not closed".into())),
                        Some('"') => break,
                        Some(c) => s.push(c),
                    }
                }
                push_value(&mut tokens, Token::Text(s), &mut after_comma);
            }
            '@' if chars.peek() == Some(&'(') => {
                chars.next();
                let mut items = Vec::new();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err((line, "@( is not closed".into())),
                        Some(')') => break,
                        Some('\'') => items.push(single_quoted(&mut chars, &mut line).map_err(|e| (line, e))?),
                        Some(',') => {
                            if !word.trim().is_empty() {
                                items.push(std::mem::take(&mut word).trim().to_string());
                            }
                            word.clear();
                        }
                        Some('\n') => line += 1,
                        Some(c) => word.push(c),
                    }
                }
                if !word.trim().is_empty() {
                    items.push(word.trim().to_string());
                }
                tokens.push(Token::List(items));
            }
            _ => {
                let mut word = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || n == '`' || n == ',' || n == '\'' {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                match word.strip_prefix('-') {
                    Some(name) if name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) => {
                        tokens.push(Token::Param(name.to_string()));
                    }
                    _ => push_value(&mut tokens, Token::Text(word), &mut after_comma),
                }
            }
        }
    }
    if !tokens.is_empty() {
        out.push(Statement { line: start, tokens });
    }
    Ok(out)
}

/// A statement's command and its parameters (a switch has no value).
fn parameters(s: &Statement) -> (String, BTreeMap<String, Option<Token>>) {
    let mut iter = s.tokens.iter().peekable();
    let command = match iter.next() {
        Some(Token::Text(t)) => t.clone(),
        _ => String::new(),
    };
    let mut params = BTreeMap::new();
    while let Some(t) = iter.next() {
        if let Token::Param(name) = t {
            let value = match iter.peek() {
                Some(Token::Param(_)) | None => None,
                Some(_) => iter.next().cloned(),
            };
            params.insert(name.to_ascii_lowercase(), value);
        }
    }
    (command, params)
}

fn text(params: &BTreeMap<String, Option<Token>>, name: &str) -> Option<String> {
    match params.get(name) {
        Some(Some(Token::Text(t))) => Some(t.clone()),
        _ => None,
    }
}

fn list(params: &BTreeMap<String, Option<Token>>, name: &str) -> Vec<String> {
    match params.get(name) {
        Some(Some(Token::List(items))) => items.clone(),
        Some(Some(Token::Text(t))) => vec![t.clone()],
        _ => Vec::new(),
    }
}

/// `$condition0[0]` → `condition0`.
fn variable(reference: &str) -> String {
    reference.trim_start_matches('$').split('[').next().unwrap_or_default().to_ascii_lowercase()
}

enum Condition {
    Scope(ScopeCondition),
    Join(JoinCondition),
}

/// The rules of a script, each with `file` (the script's name) and the line
/// its `New-ADSyncRule` starts on.
pub fn read_rules(file: &str, script: &str) -> Result<Vec<SyncRule>, ExportError> {
    let err = |line: usize, message: String| ExportError::File {
        file: file.to_string(),
        message: format!("line {line}: {message}"),
    };
    if script.len() > MAX_BYTES {
        return Err(err(1, format!("larger than {MAX_BYTES} bytes")));
    }
    let statements = statements(script).map_err(|(line, m)| err(line, m))?;
    let mut rules = Vec::new();
    let mut current: Option<SyncRule> = None;
    let mut conditions: BTreeMap<String, Condition> = BTreeMap::new();
    for s in &statements {
        let (command, p) = parameters(s);
        let need = |name: &str| text(&p, name).ok_or_else(|| err(s.line, format!("{command} has no -{name} value")));
        match command.to_ascii_lowercase().as_str() {
            "new-adsyncrule" => {
                let precedence_text = need("precedence")?;
                let precedence = precedence_text.parse::<i64>().map_err(|_| {
                    err(
                        s.line,
                        format!("-Precedence {precedence_text} is not a number (a script variable is not read)"),
                    )
                })?;
                let direction = match need("direction")?.to_ascii_lowercase().as_str() {
                    "inbound" => Direction::Inbound,
                    "outbound" => Direction::Outbound,
                    other => return Err(err(s.line, format!("-Direction {other:?} is not Inbound or Outbound"))),
                };
                let link = match need("linktype")?.as_str() {
                    "Join" => LinkType::Join,
                    "Provision" => LinkType::Provision,
                    "StickyJoin" => LinkType::StickyJoin,
                    other => LinkType::Other(other.to_string()),
                };
                current = Some(SyncRule {
                    id: guid_key(&text(&p, "identifier").unwrap_or_default()),
                    name: need("name")?,
                    description: text(&p, "description").unwrap_or_default(),
                    tag: text(&p, "immutabletag").filter(|t| !t.is_empty()),
                    direction,
                    disabled: p.contains_key("disabled"),
                    connector: guid_key(&need("connector")?),
                    source_type: need("sourceobjecttype")?,
                    target_type: need("targetobjecttype")?,
                    link,
                    precedence,
                    password_sync: p.contains_key("enablepasswordsync"),
                    mappings: Vec::new(),
                    join: Vec::new(),
                    scope: Vec::new(),
                    file: format!("{file}, line {}", s.line),
                });
            }
            "add-adsyncattributeflowmapping" => {
                let rule = current.as_mut().ok_or_else(|| err(s.line, "a flow before any New-ADSyncRule".into()))?;
                let sources = list(&p, "source");
                let flow = match need("flowtype")?.to_ascii_lowercase().as_str() {
                    "direct" => Flow::Direct(sources),
                    "constant" => Flow::Constant(sources.first().cloned().unwrap_or_default()),
                    "expression" => Flow::Expression { expression: need("expression")?, sources },
                    other => {
                        return Err(err(s.line, format!("-FlowType {other:?} is not Direct, Constant or Expression")));
                    }
                };
                let merge = match text(&p, "valuemergetype").unwrap_or_else(|| "Update".into()).as_str() {
                    "Update" => MergeType::Update,
                    "Merge" => MergeType::Merge,
                    "MergeCaseInsensitive" => MergeType::MergeCaseInsensitive,
                    other => MergeType::Other(other.to_string()),
                };
                rule.mappings.push(Mapping {
                    dest: need("destination")?,
                    flow,
                    merge,
                    execute_once: p.contains_key("executeonce"),
                });
            }
            "new-object" => {
                let kind = need("typename")?;
                let args = list(&p, "argumentlist");
                let var = text(&p, "outvariable").map(|v| v.to_ascii_lowercase()).unwrap_or_default();
                let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
                if kind.ends_with("ScopeCondition") {
                    let condition =
                        ScopeCondition { attribute: arg(0), value: arg(1), operator: arg(2).to_ascii_uppercase() };
                    conditions.insert(var, Condition::Scope(condition));
                } else if kind.ends_with("JoinCondition") {
                    let condition = JoinCondition {
                        cs_attribute: arg(0),
                        mv_attribute: arg(1),
                        case_sensitive: arg(2).eq_ignore_ascii_case("$true"),
                    };
                    conditions.insert(var, Condition::Join(condition));
                }
            }
            "add-adsyncscopeconditiongroup" | "add-adsyncjoinconditiongroup" => {
                let rule = current
                    .as_mut()
                    .ok_or_else(|| err(s.line, "a condition group before any New-ADSyncRule".into()))?;
                let scope = command.eq_ignore_ascii_case("Add-ADSyncScopeConditionGroup");
                let refs = list(&p, if scope { "scopeconditions" } else { "joinconditions" });
                let mut scope_group = Vec::new();
                let mut join_group = Vec::new();
                for r in refs {
                    match conditions.get(&variable(&r)) {
                        Some(Condition::Scope(c)) if scope => scope_group.push(c.clone()),
                        Some(Condition::Join(c)) if !scope => join_group.push(c.clone()),
                        _ => return Err(err(s.line, format!("{r} is not a condition made above"))),
                    }
                }
                if scope {
                    rule.scope.push(scope_group);
                } else {
                    rule.join.push(join_group);
                }
            }
            "add-adsyncrule" => {
                if let Some(rule) = current.take() {
                    rules.push(rule);
                    if rules.len() > MAX_RULES {
                        return Err(err(s.line, format!("more than {MAX_RULES} rules")));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(rule) = current {
        return Err(err(1, format!("the rule {:?} is never added (no Add-ADSyncRule after it)", rule.name)));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "New-ADSyncRule  `
-Name 'In from AD - User Department' `
-Identifier '11111111-2222-3333-4444-555555555555' `
-Description 'It''s ours' `
-Direction 'Inbound' `
-Precedence 50 `
-SourceObjectType 'user' `
-TargetObjectType 'person' `
-Connector '5d2c1f0e-7a41-4c55-9d0e-2b7f9c1a0a01' `
-LinkType 'Join' `
-SoftDeleteExpiryInterval 0 `
-ImmutableTag '' `
-EnablePasswordSync  `
-OutVariable syncRule

Add-ADSyncAttributeFlowMapping  `
-SynchronizationRule $syncRule[0] `
-Source @('department') `
-Destination 'extensionAttribute1' `
-FlowType 'Expression' `
-ValueMergeType 'Update' `
-Expression '
  IIF(IsPresent([department]), \"Dept-\" & UCase([department]), NULL)
  ' `
-OutVariable syncRule

Add-ADSyncAttributeFlowMapping  `
-SynchronizationRule $syncRule[0] `
-Source @('Migrated') `
-Destination 'extensionAttribute2' `
-FlowType 'Constant' `
-ValueMergeType 'Update' `
-ExecuteOnce  `
-OutVariable syncRule

New-Object  `
-TypeName 'Microsoft.IdentityManagement.PowerShell.ObjectModel.ScopeCondition' `
-ArgumentList 'department','','ISNOTNULL' `
-OutVariable condition0

New-Object  `
-TypeName 'Microsoft.IdentityManagement.PowerShell.ObjectModel.ScopeCondition' `
-ArgumentList 'userAccountControl','2','ISBITNOTSET' `
-OutVariable condition1

Add-ADSyncScopeConditionGroup  `
-SynchronizationRule $syncRule[0] `
-ScopeConditions @($condition0[0],$condition1[0]) `
-OutVariable syncRule

New-Object  `
-TypeName 'Microsoft.IdentityManagement.PowerShell.ObjectModel.JoinCondition' `
-ArgumentList 'mail','mail',$false `
-OutVariable condition0

Add-ADSyncJoinConditionGroup  `
-SynchronizationRule $syncRule[0] `
-JoinConditions @($condition0[0]) `
-OutVariable syncRule

Add-ADSyncRule  `
-SynchronizationRule $syncRule[0]

Get-ADSyncRule  `
-Identifier '11111111-2222-3333-4444-555555555555'
";

    #[test]
    fn a_rule_script_reads_like_the_xml() {
        let rules = read_rules("rules.ps1", SCRIPT).unwrap();
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.name, "In from AD - User Department");
        assert_eq!(r.description, "It's ours");
        assert_eq!((r.precedence, r.direction, r.tag.clone()), (50, Direction::Inbound, None));
        assert!(r.password_sync && !r.disabled);
        assert_eq!(r.connector, "5d2c1f0e-7a41-4c55-9d0e-2b7f9c1a0a01");
        assert_eq!(r.file, "rules.ps1, line 1");
        assert_eq!(r.mappings.len(), 2);
        assert!(matches!(&r.mappings[0].flow, Flow::Expression { expression, sources }
            if expression.trim() == "IIF(IsPresent([department]), \"Dept-\" & UCase([department]), NULL)" && sources == &["department"]));
        assert_eq!(r.mappings[1].flow, Flow::Constant("Migrated".into()));
        assert!(r.mappings[1].execute_once);
        assert_eq!(r.scope.len(), 1);
        assert_eq!(
            r.scope[0][1],
            ScopeCondition {
                attribute: "userAccountControl".into(),
                value: "2".into(),
                operator: "ISBITNOTSET".into()
            }
        );
        assert_eq!(
            r.join,
            vec![vec![JoinCondition {
                cs_attribute: "mail".into(),
                mv_attribute: "mail".into(),
                case_sensitive: false
            }]]
        );
    }

    #[test]
    fn scripts_that_are_not_data_are_refused_with_the_line() {
        let variable = SCRIPT.replace("-Precedence 50", "-Precedence $precedenceValue");
        let e = read_rules("r.ps1", &variable).unwrap_err().to_string();
        assert!(e.contains("r.ps1: line 1: -Precedence $precedenceValue is not a number"), "{e}");
        let unclosed = SCRIPT.replace("'It''s ours'", "'It''s ours");
        assert!(read_rules("r.ps1", &unclosed).is_err());
        let missing = SCRIPT.replace("Add-ADSyncRule  `\n-SynchronizationRule $syncRule[0]\n", "");
        assert!(read_rules("r.ps1", &missing).unwrap_err().to_string().contains("never added"));
        let dangling = SCRIPT.replace("@($condition0[0],$condition1[0])", "@($condition7[0])");
        assert!(read_rules("r.ps1", &dangling).unwrap_err().to_string().contains("$condition7[0] is not a condition"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        #[test]
        fn hostile_scripts_never_panic(text in "\\PC{0,300}", at in 0usize..2000) {
            let cut = SCRIPT.char_indices().map(|(i, _)| i).take_while(|i| *i <= at).last().unwrap_or(0);
            let mixed = format!("{}{text}{}", SCRIPT.get(..cut).unwrap_or(""), SCRIPT.get(cut..).unwrap_or(""));
            let _ = read_rules("x.ps1", &mixed);
        }
    }
}
