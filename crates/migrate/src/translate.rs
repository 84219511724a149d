//! Connect's configuration → idbridge's: an `idbridge.toml` (one `[[source]]`
//! per AD connector, `[tenant]` for the Entra ID connector, staging on so it
//! runs beside Connect), a rules file with every custom rule, and the
//! report. Every generated rule is loaded by `sync`'s own rule loader before
//! it is written, so what is written is what the engine accepts.

use std::collections::BTreeSet;

use crate::export::{
    ConnectExport, Connector, ConnectorKind, Direction, Flow, LinkType, Mapping, MergeType, ScopeCondition, SyncRule,
};
use crate::known::{self, Counterpart};
use crate::names::{self, Metaverse};
use crate::report::{ConnectorReport, FlowReport, Outcome, Report, RuleReport};

/// The file name the rules are written to (the configuration lists it).
pub const RULES_FILE: &str = "connect-rules.toml";

/// What the migration produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    /// `idbridge.toml`.
    pub config: String,
    /// [`RULES_FILE`]; empty when no rule was written.
    pub rules: String,
    pub report: Report,
}

/// An AD connector on its way to a `[[source]]`.
struct SourcePlan<'a> {
    name: String,
    connector: &'a Connector,
    anchor_attribute: Option<String>,
    /// `(!(…))` pieces from rules that filter objects out (cloudFiltered).
    exclusions: Vec<String>,
    join_groups: Vec<Vec<(String, String)>>,
    project: bool,
    notes: Vec<String>,
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn quoted_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|i| quote(i)).collect::<Vec<_>>().join(", "))
}

/// `contoso.com - AAD` → `contoso-com-aad`.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let trimmed = out.trim_end_matches('-').to_string();
    if trimmed.is_empty() { "connect".into() } else { trimmed }
}

fn unique(base: String, taken: &mut BTreeSet<String>) -> String {
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// RFC 4515 escaping of an assertion value.
fn escape(value: &str) -> String {
    directory::filter::escape_value(value.as_bytes())
}

/// One scoping condition as an RFC 4515 filter.
fn condition_filter(attribute: &str, c: &ScopeCondition) -> Result<String, String> {
    let (a, v) = (attribute, escape(&c.value));
    let bits = || -> Result<String, String> {
        let raw = c.value.trim();
        let n = match raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
            Some(hex) => i64::from_str_radix(hex, 16),
            None => raw.parse::<i64>(),
        }
        .map_err(|_| format!("{} {} {:?}: the value is not a number", c.attribute, c.operator, c.value))?;
        Ok(format!("({a}:{}:={n})", directory::filter::BIT_AND))
    };
    Ok(match c.operator.as_str() {
        "EQUAL" if c.value.is_empty() => format!("(!({a}=*))"),
        "EQUAL" => format!("({a}={v})"),
        "NOTEQUAL" if c.value.is_empty() => format!("({a}=*)"),
        "NOTEQUAL" => format!("(!({a}={v}))"),
        "ISNULL" => format!("(!({a}=*))"),
        "ISNOTNULL" => format!("({a}=*)"),
        "STARTSWITH" => format!("({a}={v}*)"),
        "NOTSTARTSWITH" => format!("(!({a}={v}*))"),
        "ENDSWITH" => format!("({a}=*{v})"),
        "NOTENDSWITH" => format!("(!({a}=*{v}))"),
        "CONTAINS" => format!("({a}=*{v}*)"),
        "NOTCONTAINS" => format!("(!({a}=*{v}*))"),
        "LESSTHAN" => format!("(&({a}=*)(!({a}>={v})))"),
        "LESSTHAN_OR_EQUAL" => format!("({a}<={v})"),
        "GREATERTHAN" => format!("(&({a}=*)(!({a}<={v})))"),
        "GREATERTHAN_OR_EQUAL" => format!("({a}>={v})"),
        "ISBITSET" => bits()?,
        "ISBITNOTSET" => format!("(!{})", bits()?),
        "ISMEMBEROF" => format!("(memberOf={v})"),
        "ISNOTMEMBEROF" => format!("(!(memberOf={v}))"),
        other => return Err(format!("the scoping operator {other} has no counterpart")),
    })
}

/// A scoping filter (groups ORed, conditions ANDed) as one RFC 4515 filter.
/// `attribute` names each condition's attribute on idbridge's side: `None`
/// leaves the condition out (the engine guarantees it), an error refuses.
fn scope_filter(
    groups: &[Vec<ScopeCondition>],
    attribute: &dyn Fn(&ScopeCondition) -> Result<Option<String>, String>,
) -> Result<Option<String>, String> {
    let mut ors = Vec::new();
    for group in groups {
        let mut ands = Vec::new();
        for c in group {
            if let Some(a) = attribute(c)? {
                ands.push(condition_filter(&a, c)?);
            }
        }
        match ands.len() {
            0 => return Ok(None), // a group that always holds: the scope is everything
            1 => ors.extend(ands),
            _ => ors.push(format!("(&{})", ands.concat())),
        }
    }
    Ok(match ors.len() {
        0 => None,
        1 => ors.pop(),
        _ => Some(format!("(|{})", ors.concat())),
    })
}

/// An idbridge flow line, or why the mapping cannot be one.
struct FlowPlan {
    line: Option<String>,
    outcome: Outcome,
}

fn merge_word(m: &MergeType) -> Result<Option<&'static str>, String> {
    match m {
        MergeType::Update => Ok(None),
        MergeType::Merge => Ok(Some("merge")),
        MergeType::MergeCaseInsensitive => Ok(Some("merge-case-insensitive")),
        MergeType::Other(o) => Err(format!("the merge type {o} has no counterpart")),
    }
}

fn flow_line(target: &str, source: String, m: &Mapping, multi: bool, apply_once: bool) -> Result<String, String> {
    let mut parts = vec![format!("target = {}", quote(target)), source];
    if let Some(merge) = merge_word(&m.merge)? {
        parts.push(format!("merge = {}", quote(merge)));
    } else if multi {
        parts.push("multi = true".into());
    }
    if apply_once {
        parts.push("apply_once = true".into());
    }
    Ok(format!("  {{ {} }},", parts.join(", ")))
}

fn constant_value(text: &str) -> String {
    match text.to_ascii_lowercase().as_str() {
        "true" => "true".into(),
        "false" => "false".into(),
        _ => quote(text),
    }
}

fn checked_expression(text: &str) -> Result<String, String> {
    // One line in the rules file; Connect's exports keep the author's line breaks.
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    sync::expr::Expr::parse(&one_line).map_err(|e| format!("the expression cannot be used: {e}"))?;
    Ok(one_line)
}

/// An inbound mapping: source attributes keep their names, the target is
/// renamed to idbridge's metaverse name.
fn inbound_flow(m: &Mapping, plan: &mut SourcePlan<'_>, rule: &SyncRule) -> FlowPlan {
    let refuse = |why: String| FlowPlan { line: None, outcome: Outcome::NotSupported(why) };
    let dest = m.dest.as_str();
    if dest.eq_ignore_ascii_case("cloudFiltered") {
        return match &m.flow {
            Flow::Constant(c) if c.eq_ignore_ascii_case("true") => {
                let objects = if rule.source_type.eq_ignore_ascii_case("person") {
                    "(objectClass=user)".to_string()
                } else {
                    format!("(objectClass={})", escape(&rule.source_type))
                };
                let scope = match scope_filter(&rule.scope, &|c| Ok(Some(c.attribute.clone()))) {
                    Ok(s) => s.unwrap_or_default(),
                    Err(e) => return refuse(e),
                };
                plan.exclusions.push(format!("(!(&{objects}{scope}))"));
                FlowPlan {
                    line: None,
                    outcome: Outcome::Translated(vec![format!(
                        "objects in this rule's scope are filtered out: the source {:?} gets filter (!(&{objects}{scope}))",
                        plan.name
                    )]),
                }
            }
            _ => refuse(
                "cloudFiltered decided by an expression: idbridge filters objects with the source's LDAP filter (write the condition as one)"
                    .into(),
            ),
        };
    }
    if dest.eq_ignore_ascii_case("sourceAnchor") || dest.eq_ignore_ascii_case("sourceAnchorBinary") {
        return match &m.flow {
            Flow::Direct(s) if s.len() == 1 => {
                let attribute = s.first().cloned().unwrap_or_default();
                plan.anchor_attribute = Some(attribute.clone());
                FlowPlan {
                    line: None,
                    outcome: Outcome::Translated(vec![format!(
                        "the sourceAnchor comes from {attribute}: anchor_attribute of source {:?}",
                        plan.name
                    )]),
                }
            }
            _ => refuse(
                "a sourceAnchor computed by an expression: idbridge takes it from one attribute (anchor_attribute)"
                    .into(),
            ),
        };
    }
    let target = match names::metaverse(dest) {
        Metaverse::Attribute(a) => a,
        Metaverse::BuiltIn(why) => return refuse(format!("{dest}: {why}")),
    };
    let renamed = !target.eq_ignore_ascii_case(dest);
    let multi = names::multi_valued(&target);
    let source = match &m.flow {
        Flow::Direct(s) => format!("source = {}", quoted_list(s)),
        Flow::Constant(c) => format!("constant = {}", constant_value(c)),
        Flow::Expression { expression, .. } => match checked_expression(expression) {
            Ok(e) => format!("expression = {}", quote(&e)),
            Err(why) => return refuse(why),
        },
        Flow::Empty => return refuse("the mapping has no source".into()),
    };
    match flow_line(&target, source, m, multi, m.execute_once) {
        Ok(line) => FlowPlan {
            line: Some(line),
            outcome: if renamed {
                Outcome::Translated(vec![format!("metaverse {dest} is idbridge's {target}")])
            } else {
                Outcome::Imported
            },
        },
        Err(why) => refuse(why),
    }
}

/// Connect metaverse → idbridge metaverse, for an outbound rule's sources.
fn rename_metaverse(name: &str) -> Result<String, String> {
    match names::metaverse(name) {
        Metaverse::Attribute(a) => Ok(a),
        Metaverse::BuiltIn(why) => Err(format!("[{name}]: {why}")),
    }
}

fn outbound_flow(m: &Mapping, object: &str) -> FlowPlan {
    let refuse = |why: String| FlowPlan { line: None, outcome: Outcome::NotSupported(why) };
    let Some(target) = names::scim_path(object, &m.dest) else {
        return refuse(format!("the tenant has no attribute for the Entra ID connector's {}", m.dest));
    };
    if m.execute_once {
        return refuse("apply once on an outbound flow has no counterpart".into());
    }
    let source = match &m.flow {
        Flow::Direct(s) => match s.iter().map(|a| rename_metaverse(a)).collect::<Result<Vec<_>, _>>() {
            Ok(renamed) => format!("source = {}", quoted_list(&renamed)),
            Err(why) => return refuse(why),
        },
        Flow::Constant(c) => format!("constant = {}", constant_value(c)),
        Flow::Expression { expression, .. } => {
            match names::rename_references(expression, &rename_metaverse).and_then(|e| checked_expression(&e)) {
                Ok(e) => format!("expression = {}", quote(&e)),
                Err(why) => return refuse(why),
            }
        }
        Flow::Empty => return refuse("the mapping has no source".into()),
    };
    let multi = target.contains("proxyAddresses");
    match flow_line(&target, source, m, multi, false) {
        Ok(line) => FlowPlan {
            line: Some(line),
            outcome: Outcome::Translated(vec![format!("Entra ID's {} is the tenant's {target}", m.dest)]),
        },
        Err(why) => refuse(why),
    }
}

/// Outbound scoping conditions the engine guarantees (only synchronised,
/// unfiltered objects with an anchor are exported) are left out.
fn outbound_scope_attribute(c: &ScopeCondition) -> Result<Option<String>, String> {
    let implied = [
        ("cloudFiltered", "NOTEQUAL"),
        ("sourceAnchor", "ISNOTNULL"),
        ("cloudMastered", "NOTEQUAL"),
        ("cloudAnchor", "ISNOTNULL"),
    ];
    if implied.iter().any(|(a, op)| c.attribute.eq_ignore_ascii_case(a) && c.operator == *op) {
        return Ok(None);
    }
    rename_metaverse(&c.attribute).map(Some)
}

/// A later directory's join rule → `[source.join]` groups of its source
/// (conditions on Connect's own bookkeeping, such as the sourceAnchor, are
/// left out: the notes say which).
fn harvest_join(rule: &SyncRule, p: &mut SourcePlan<'_>) -> Vec<String> {
    let mut notes = Vec::new();
    for group in &rule.join {
        let mut pairs = Vec::new();
        for c in group {
            match names::metaverse(&c.mv_attribute) {
                Metaverse::Attribute(mv) => pairs.push((c.cs_attribute.clone(), mv)),
                Metaverse::BuiltIn(why) => {
                    notes.push(format!("join condition {} = {} left out ({why})", c.cs_attribute, c.mv_attribute));
                }
            }
        }
        if !pairs.is_empty() && !p.join_groups.contains(&pairs) {
            p.join_groups.push(pairs);
        }
    }
    if rule.link == LinkType::Provision {
        p.project = true;
    }
    notes
}

/// A custom (or edited out-of-box) rule → its idbridge rule text.
fn custom_rule(
    rule: &SyncRule,
    kind: &ConnectorKind,
    plan: Option<&mut SourcePlan<'_>>,
    first_source: bool,
    rule_name: String,
    mut notes: Vec<String>,
) -> (RuleReport, Option<String>) {
    let mut report = RuleReport {
        name: rule.name.clone(),
        file: rule.file.clone(),
        written_as: None,
        outcome: Outcome::Imported,
        flows: Vec::new(),
    };
    let refuse = |mut report: RuleReport, why: String| {
        report.outcome = Outcome::NotSupported(why);
        (report, None)
    };
    let (direction, object_type) = match (kind, rule.direction) {
        (ConnectorKind::ActiveDirectory, Direction::Inbound) => ("inbound", rule.source_type.as_str()),
        (ConnectorKind::EntraId, Direction::Outbound) => ("outbound", rule.source_type.as_str()),
        (ConnectorKind::ActiveDirectory, Direction::Outbound) => {
            return refuse(
                report,
                "it writes to Active Directory: idbridge writes back passwords and cloud groups, not attributes".into(),
            );
        }
        (ConnectorKind::EntraId, Direction::Inbound) => {
            return refuse(
                report,
                "it reads the cloud into the metaverse: idbridge's metaverse is fed by on-premises directories".into(),
            );
        }
        (ConnectorKind::Other { .. }, _) => return refuse(report, "its connector has no counterpart".into()),
    };
    let Some(objects) = names::object_kind(object_type) else {
        return refuse(
            report,
            format!("objects of type {object_type}: idbridge synchronises users, groups and contacts"),
        );
    };
    if let LinkType::Other(link) = &rule.link {
        return refuse(report, format!("the link type {link} has no counterpart"));
    }
    let scope = if direction == "inbound" {
        scope_filter(&rule.scope, &|c| Ok(Some(c.attribute.clone())))
    } else {
        scope_filter(&rule.scope, &outbound_scope_attribute)
    };
    let scope = match scope {
        Ok(s) => s,
        Err(why) => return refuse(report, format!("its scoping filter: {why}")),
    };
    let mut lines = Vec::new();
    let mut plan = plan;
    for m in &rule.mappings {
        let flow = match (direction, plan.as_deref_mut()) {
            ("inbound", Some(p)) => inbound_flow(m, p, rule),
            ("inbound", None) => {
                FlowPlan { line: None, outcome: Outcome::NotSupported("no source for its connector".into()) }
            }
            _ => outbound_flow(m, object_type),
        };
        if let Some(line) = flow.line {
            lines.push(line);
        }
        report.flows.push(FlowReport { dest: m.dest.clone(), outcome: flow.outcome });
    }
    // Join criteria: the first directory's objects project; a later directory's join to them.
    if direction == "inbound" && !rule.join.is_empty() {
        if first_source {
            notes.push("its join criteria are not needed: the first directory's objects are projected and matched in the tenant by immutableId".into());
        } else if let Some(p) = plan.as_deref_mut() {
            notes.extend(harvest_join(rule, p));
            notes.push(format!(
                "its join criteria join source {:?} to the directories before it ([source.join])",
                p.name
            ));
        }
    }
    if rule.link == LinkType::StickyJoin {
        notes.push("StickyJoin: idbridge keeps a joined object joined while it is in scope, as a Join".into());
    }
    let carried = report.flows.iter().any(|f| f.outcome.carried());
    if !carried && !rule.mappings.is_empty() {
        return refuse(report, "none of its flows can be carried over (see each flow)".into());
    }
    if report.flows.iter().any(|f| !f.outcome.carried()) {
        notes.push("some of its flows are not carried over (see each flow)".into());
    } else if report.flows.iter().any(|f| matches!(f.outcome, Outcome::Translated(_))) {
        notes.push("its flows are translated (see each flow)".into());
    }
    if rule.disabled {
        notes.push("disabled in Connect: written with disabled = true".into());
    }
    report.outcome = if notes.is_empty() { Outcome::Imported } else { Outcome::Translated(notes) };
    if lines.is_empty() {
        return (report, None);
    }
    let mut text = format!("# From Connect: {} ({})\n[[rule]]\nname = {}\n", rule.name, rule.file, quote(&rule_name));
    text.push_str(&format!("direction = {}\nobjects = [{}]\n", quote(direction), quote(objects)));
    if let Some(p) = plan.as_deref()
        && direction == "inbound"
    {
        text.push_str(&format!("sources = [{}]\n", quote(&p.name)));
    }
    let precedence = i32::try_from(rule.precedence).unwrap_or(i32::MAX);
    text.push_str(&format!("precedence = {precedence}\n"));
    if let Some(scope) = scope {
        text.push_str(&format!("scope = {}\n", quote(&scope)));
    }
    if rule.disabled {
        text.push_str("disabled = true\n");
    }
    text.push_str("flows = [\n");
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str("]\n");
    report.written_as = Some(rule_name);
    (report, Some(text))
}

/// The sourceAnchor an out-of-box rule of an AD connector computes, as
/// idbridge's anchor_attribute (`None`: ms-DS-ConsistencyGuid, idbridge's default).
fn anchor_of(rule: &SyncRule) -> Option<Option<String>> {
    let m = rule.mappings.iter().find(|m| m.dest.eq_ignore_ascii_case("sourceAnchor"))?;
    let text = match &m.flow {
        Flow::Expression { expression, .. } => expression.to_ascii_lowercase(),
        Flow::Direct(s) => s.join(",").to_ascii_lowercase(),
        _ => return None,
    };
    if text.contains("ms-ds-consistencyguid") {
        Some(None)
    } else if text.contains("objectguid") {
        Some(Some("objectGUID".into()))
    } else {
        None
    }
}

/// The whole translation.
pub fn translate(export: &ConnectExport) -> Migration {
    let mut report = Report { export: export.dir.display().to_string(), ..Report::default() };
    let mut taken = BTreeSet::new();
    let mut plans: Vec<SourcePlan<'_>> = Vec::new();
    let mut tenant: Option<&Connector> = None;
    for c in &export.connectors {
        let mut entry = ConnectorReport {
            name: c.name.clone(),
            file: c.file.clone(),
            written_as: None,
            outcome: Outcome::Imported,
        };
        match &c.kind {
            ConnectorKind::ActiveDirectory => {
                let name = unique(slug(&c.name), &mut taken);
                entry.written_as = Some(format!("[[source]] {name:?}"));
                plans.push(SourcePlan {
                    name,
                    connector: c,
                    anchor_attribute: None,
                    exclusions: Vec::new(),
                    join_groups: Vec::new(),
                    project: false,
                    notes: Vec::new(),
                });
            }
            ConnectorKind::EntraId if tenant.is_none() => {
                tenant = Some(c);
                entry.written_as = Some("[tenant]".into());
                entry.outcome = Outcome::Translated(vec![
                    "the tenant is idbridge's: give its SCIM URL and a sync token (idbridge tenant token create --scope sync)".into(),
                ]);
            }
            ConnectorKind::EntraId => {
                entry.outcome = Outcome::NotSupported(
                    "a second Entra ID connector: idbridge synchronises into one tenant per configuration".into(),
                );
            }
            ConnectorKind::Other { category, subtype } => {
                entry.outcome = Outcome::NotSupported(format!(
                    "<category>{category}</category> <subtype>{subtype}</subtype>: idbridge has no counterpart for this connector type (it reads Active Directory, Samba AD, OpenLDAP, 389 and LDIF)"
                ));
            }
        }
        report.connectors.push(entry);
    }
    // The sourceAnchor chosen in Connect's wizard, where the export says it.
    if let Some(anchor) = export.parameters.get("Microsoft.SynchronizationOption.AnchorAttribute") {
        let setting = if anchor.eq_ignore_ascii_case("mS-DS-ConsistencyGuid") { None } else { Some(anchor.clone()) };
        for p in &mut plans {
            p.anchor_attribute = setting.clone();
            p.notes.push(format!("sourceAnchor {anchor} (GlobalSettings)"));
        }
    }
    let anchor_from_settings = export.parameters.contains_key("Microsoft.SynchronizationOption.AnchorAttribute");
    let mut rules: Vec<&SyncRule> = export.rules.iter().collect();
    rules.sort_by(|a, b| a.precedence.cmp(&b.precedence).then(a.name.cmp(&b.name)));
    let mut rule_texts = Vec::new();
    let mut rule_names = BTreeSet::new();
    for rule in rules {
        let connector = export.connectors.iter().find(|c| c.id == rule.connector);
        let plan_index = plans.iter().position(|p| p.connector.id == rule.connector);
        let Some(connector) = connector else {
            report.rules.push(RuleReport {
                name: rule.name.clone(),
                file: rule.file.clone(),
                written_as: None,
                outcome: Outcome::NotSupported(format!("its connector {{{}}} is not in the export", rule.connector)),
                flows: Vec::new(),
            });
            continue;
        };
        let mut notes = Vec::new();
        if let Some((stem, version)) = rule.tag.as_deref().and_then(known::split_tag) {
            let edited = known::unedited(rule) == Some(false);
            match (known::counterpart(stem), edited) {
                (Some(counterpart), false) => {
                    if let (Some(i), Some(anchor), false) = (plan_index, anchor_of(rule), anchor_from_settings)
                        && let Some(p) = plans.get_mut(i)
                    {
                        p.anchor_attribute = p.anchor_attribute.take().or(anchor);
                    }
                    // A later forest's out-of-box join rules hold how its people match the earlier ones'.
                    if let Some(i) = plan_index.filter(|i| *i > 0)
                        && stem.to_ascii_lowercase().ends_with("join")
                        && stem.starts_with("InfromAD")
                        && let Some(p) = plans.get_mut(i)
                    {
                        let left_out = harvest_join(rule, p);
                        p.notes.extend(left_out.into_iter().map(|n| format!("{}: {n}", rule.name)));
                    }
                    let mut outcome = match counterpart {
                        Counterpart::BuiltIn(what) => Outcome::BuiltIn(what.to_string()),
                        Counterpart::Missing(what) => Outcome::NotSupported(what.to_string()),
                    };
                    if known::unedited(rule).is_none()
                        && let Outcome::BuiltIn(what) = &outcome
                    {
                        outcome = Outcome::BuiltIn(format!(
                            "{what} (version {version} of this out-of-box rule is not one idbridge knows, so its content was not compared: fingerprint {})",
                            known::fingerprint(rule)
                        ));
                    }
                    if rule.disabled && outcome.carried() {
                        outcome = Outcome::NotSupported(
                            "disabled in Connect, but idbridge's built-in counterpart cannot be switched off this way".into(),
                        );
                    }
                    report.rules.push(RuleReport {
                        name: rule.name.clone(),
                        file: rule.file.clone(),
                        written_as: None,
                        outcome,
                        flows: Vec::new(),
                    });
                    continue;
                }
                (None, false) => {
                    report.rules.push(RuleReport {
                        name: rule.name.clone(),
                        file: rule.file.clone(),
                        written_as: None,
                        outcome: Outcome::NotSupported(format!(
                            "an out-of-box rule ({}) idbridge does not know",
                            rule.tag.as_deref().unwrap_or_default()
                        )),
                        flows: Vec::new(),
                    });
                    continue;
                }
                (_, true) => notes.push(format!(
                    "an edited out-of-box rule ({}): translated as a custom rule, beside idbridge's built-in counterpart",
                    rule.tag.as_deref().unwrap_or_default()
                )),
            }
        }
        let rule_name = unique(format!("connect-{}", slug(&rule.name)), &mut rule_names);
        let first_source = plan_index == Some(0);
        let plan = plan_index.and_then(|i| plans.get_mut(i));
        let (entry, text) = custom_rule(rule, &connector.kind, plan, first_source, rule_name, notes);
        if let Some(text) = text {
            rule_texts.push(text);
        }
        report.rules.push(entry);
    }
    for (i, plan) in plans.iter_mut().enumerate() {
        if i > 0 && plan.join_groups.is_empty() {
            plan.notes.push("no join criteria: its objects become their own tenant objects".into());
        }
    }
    let rules = rule_texts.join("\n");
    let config = config_text(export, &plans, tenant, !rules.is_empty());
    for (plan, entry) in plans.iter().zip(
        report.connectors.iter_mut().filter(|c| c.written_as.as_deref().is_some_and(|w| w.starts_with("[[source]]"))),
    ) {
        let mut notes = vec![
            "REVIEW in idbridge.toml: the server URL (idbridge binds over LDAPS or StartTLS), the bind account and its password file".to_string(),
        ];
        notes.extend(plan.notes.iter().cloned());
        entry.outcome = Outcome::Translated(notes);
    }
    Migration { config, rules, report }
}

fn config_text(
    export: &ConnectExport,
    plans: &[SourcePlan<'_>],
    tenant: Option<&Connector>,
    with_rules: bool,
) -> String {
    let mut out = format!(
        "# Written by `idbridge migrate connect` from the Entra Connect export {}.\n# Lines marked REVIEW need your values before the first cycle.\n",
        export.dir.display()
    );
    for plan in plans {
        let c = plan.connector;
        let selected: Vec<&crate::export::Partition> = c.partitions.iter().filter(|p| p.selected).collect();
        let partitions = if selected.is_empty() { c.partitions.iter().collect() } else { selected };
        let host = partitions
            .iter()
            .find_map(|p| p.last_dc.clone())
            .or_else(|| c.forest.clone())
            .unwrap_or_else(|| "dc.example.com".into());
        let base_dns: Vec<String> = partitions.iter().map(|p| p.dn.clone()).collect();
        let same = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b.trim());
        let is_partition = |dn: &str| partitions.iter().any(|p| same(&p.dn, dn));
        let include: Vec<String> =
            partitions.iter().flat_map(|p| p.inclusions.iter()).filter(|d| !is_partition(d)).cloned().collect();
        let exclude: Vec<String> =
            partitions.iter().flat_map(|p| p.exclusions.iter()).filter(|d| !is_partition(d)).cloned().collect();
        out.push_str(&format!(
            "\n# Connect connector {:?} ({})\n[[source]]\nname = {}\n",
            c.name,
            c.file,
            quote(&plan.name)
        ));
        out.push_str(&format!(
            "urls = [{}]   # REVIEW: Connect bound with Kerberos sign-and-seal; idbridge binds over LDAPS (or ldap:// with tls.starttls = true)\n",
            quote(&format!("ldaps://{host}"))
        ));
        let bind = match (&c.login_user, &c.login_domain) {
            (Some(u), Some(d)) => format!("{u}@{d}"),
            (Some(u), None) => u.clone(),
            _ => "svc-idbridge@example.com".into(),
        };
        out.push_str(&format!(
            "bind_dn = {}   # REVIEW: Connect's account; the export holds no password\n",
            quote(&bind)
        ));
        out.push_str(&format!(
            "password_file = {}   # REVIEW: create it, mode 0600\n",
            quote(&format!("{}.password", plan.name))
        ));
        out.push_str(&format!("base_dns = {}\n", quoted_list(&base_dns)));
        if !include.is_empty() {
            out.push_str(&format!("include_ous = {}\n", quoted_list(&include)));
        }
        if !exclude.is_empty() {
            out.push_str(&format!("exclude_ous = {}\n", quoted_list(&exclude)));
        }
        if !plan.exclusions.is_empty() {
            let filter = if plan.exclusions.len() == 1 {
                plan.exclusions.concat()
            } else {
                format!("(&{})", plan.exclusions.concat())
            };
            out.push_str(&format!("filter = {}   # Connect's cloudFiltered rules\n", quote(&filter)));
        }
        out.push_str("server_kind = \"active-directory\"\n");
        if let Some(anchor) = &plan.anchor_attribute {
            out.push_str(&format!("anchor_attribute = {}\n", quote(anchor)));
        }
        out.push_str(&format!("password_hash_sync = {}\n", c.password_hash_sync));
        if !plan.join_groups.is_empty() {
            let groups: Vec<String> = plan
                .join_groups
                .iter()
                .map(|g| {
                    let pairs: Vec<String> = g
                        .iter()
                        .map(|(s, m)| format!("{{ source = {}, metaverse = {} }}", quote(s), quote(m)))
                        .collect();
                    format!("[{}]", pairs.join(", "))
                })
                .collect();
            out.push_str(&format!("\n[source.join]\ngroups = [{}]\nproject = {}\n", groups.join(", "), plan.project));
        }
    }
    out.push_str("\n[tenant]\n");
    if let Some(t) = tenant {
        out.push_str(&format!("# In place of Connect's connector {:?} ({})\n", t.name, t.file));
    }
    out.push_str("url = \"https://tenant.example.com/scim/v2\"   # REVIEW: your tenant's SCIM root\n");
    out.push_str("token_file = \"tenant.token\"   # REVIEW: idbridge tenant token create --scope sync\n");
    out.push_str("\n[sync]\n# Side by side with Connect: import and sync, export nothing, until you switch over.\nstaging = true\n");
    if with_rules {
        out.push_str(&format!("rules = [{}]\n", quote(RULES_FILE)));
    }
    out
}
