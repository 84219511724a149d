//! Rules as data: inbound — which source attributes flow into
//! which metaverse attributes — and outbound — which metaverse attributes
//! become which tenant (SCIM) attributes; for which objects, in which scope,
//! with which precedence. The built-in sets are `default-rules.toml` and
//! `default-outbound-rules.toml`; files listed in `[sync] rules` add rules
//! or override them by name.

use directory::{Entry, Filter, ObjectKind, Value};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::mapping::Flavor;

pub const DEFAULT_RULES: &str = include_str!("default-rules.toml");
pub const DEFAULT_OUTBOUND_RULES: &str = include_str!("default-outbound-rules.toml");

/// Which way a rule's flows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Source object → metaverse.
    Inbound,
    /// Metaverse → tenant resource.
    Outbound,
}

/// A rule problem, naming the file, the rule and the flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {place}: {message}")]
pub struct RuleError {
    pub file: String,
    /// `line 12, column 3`, `rule "person"` or `rule "person", flow 3 (jobTitle)`.
    pub place: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default, rename = "rule")]
    rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    name: String,
    #[serde(default = "inbound")]
    direction: String,
    objects: Vec<String>,
    flavor: Option<String>,
    scope: Option<String>,
    #[serde(default = "default_precedence")]
    precedence: i32,
    /// Inbound: the sources (`[[source]]` names) whose objects it applies to; all when absent.
    sources: Option<Vec<String>>,
    /// Checked, then left out (with a built-in rule's name: that rule is left out too).
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    flows: Vec<FlowDef>,
}

fn inbound() -> String {
    "inbound".into()
}
fn default_precedence() -> i32 {
    500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowDef {
    target: String,
    source: Option<Vec<String>>,
    constant: Option<toml::Value>,
    expression: Option<String>,
    #[serde(default)]
    multi: bool,
    merge: Option<String>,
    #[serde(default)]
    apply_once: bool,
}

/// How a flow combines with flows of other rules into the same attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeType {
    /// The first rule (by precedence) with a value sets the attribute; the rest are ignored.
    #[default]
    Update,
    /// Values of every merging rule are joined, duplicates removed.
    Merge,
    /// As `Merge`, duplicates compared without regard to case (the first spelling stays).
    MergeCaseInsensitive,
}

/// Where a flow's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowSource {
    /// The first of these source attributes that has a value.
    Attributes(Vec<String>),
    Constant(Json),
    /// An expression over the source object's attributes.
    Expression(crate::expr::Expr),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleFlow {
    pub target: String,
    /// Outbound flows: the parsed SCIM path of `target`.
    pub path: Option<crate::outbound::ScimPath>,
    pub source: FlowSource,
    pub multi: bool,
    pub merge: MergeType,
    /// Set when the metaverse object is created (or while it has no value), never changed after.
    pub apply_once: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub direction: Direction,
    /// The file the rule came from (for errors and `explain`).
    pub file: String,
    pub objects: Vec<ObjectKind>,
    pub flavor: Option<Flavor>,
    pub scope: Option<Filter>,
    pub precedence: i32,
    /// The sources whose objects an inbound rule applies to; empty: every source.
    pub sources: Vec<String>,
    pub flows: Vec<RuleFlow>,
    /// `disabled = true`: checked when it loads, then not applied.
    pub disabled: bool,
}

/// Per metaverse attribute, the precedence of the rule that gave it (or
/// settled it empty with `AuthoritativeNull`). Values the engine computes
/// itself have none: any rule beats them.
pub type Precedences = std::collections::BTreeMap<String, i32>;

/// The object inbound rules are applied to.
#[derive(Debug, Clone, Copy)]
pub struct InboundObject<'a> {
    pub kind: ObjectKind,
    pub flavor: Flavor,
    /// The `[[source]]` it comes from (rules may be limited to some sources).
    pub source: &'a str,
    pub entry: &'a Entry,
}

/// The effective rules, in precedence order.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Each outbound target's parsed SCIM path, for building resources
    /// without parsing a path per attribute of every object.
    paths: std::collections::HashMap<String, crate::outbound::ScimPath>,
}

impl Default for RuleSet {
    fn default() -> Self {
        // The built-in file is tested; should it ever fail, no rules is safer than a panic.
        RuleSet::load(&[]).unwrap_or(RuleSet { rules: Vec::new(), paths: Default::default() })
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_file(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let parsed: RuleFile = toml::from_str(text).map_err(|e| {
        let place = e
            .span()
            .map(|s| {
                let before = text.get(..s.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
                format!("line {line}, column {column}")
            })
            .unwrap_or_else(|| "the file".into());
        RuleError { file: file.into(), place, message: e.message().to_string() }
    })?;
    let mut out = Vec::new();
    for def in parsed.rules {
        let err = |message: String| RuleError { file: file.into(), place: format!("rule {:?}", def.name), message };
        if !valid_name(&def.name) {
            return Err(err("a rule name uses letters, digits, '-' and '_'".into()));
        }
        let direction = match def.direction.as_str() {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            other => return Err(err(format!("direction {other:?} is not inbound or outbound"))),
        };
        if direction == Direction::Outbound && def.flavor.is_some() {
            return Err(err("flavor applies to inbound rules (an outbound rule sees the metaverse)".into()));
        }
        let objects = def
            .objects
            .iter()
            .map(|o| match o.as_str() {
                "user" => Ok(ObjectKind::User),
                "group" => Ok(ObjectKind::Group),
                "contact" => Ok(ObjectKind::Contact),
                other => Err(err(format!("objects: {other:?} is not user, group or contact"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if objects.is_empty() {
            return Err(err("objects is empty".into()));
        }
        let flavor = match def.flavor.as_deref() {
            None => None,
            Some("active-directory") => Some(Flavor::ActiveDirectory),
            Some("ldap") => Some(Flavor::Ldap),
            Some(other) => return Err(err(format!("flavor {other:?} is not active-directory or ldap"))),
        };
        let sources = match &def.sources {
            None => Vec::new(),
            Some(_) if direction == Direction::Outbound => {
                return Err(err("sources applies to inbound rules (an outbound rule sees the metaverse)".into()));
            }
            Some(list) if list.is_empty() => {
                return Err(err("sources is empty (leave it out for every source)".into()));
            }
            Some(list) => {
                if let Some(bad) = list.iter().find(|s| s.is_empty()) {
                    return Err(err(format!("sources: {bad:?} is not a source name")));
                }
                list.clone()
            }
        };
        let scope = match &def.scope {
            Some(text) => {
                let f = Filter::parse(text).map_err(|e| err(format!("scope: {e}")))?;
                // Evaluate once against an empty entry to reject what cannot be evaluated (extensible matches).
                f.matches(&Entry::default()).map_err(|e| err(format!("scope: {e}")))?;
                Some(f)
            }
            None => None,
        };
        let mut flows = Vec::new();
        for (i, f) in def.flows.into_iter().enumerate() {
            let ferr = |message: String| RuleError {
                file: file.into(),
                place: format!("rule {:?}, flow {} ({})", def.name, i + 1, f.target),
                message,
            };
            let path = match direction {
                Direction::Inbound if !valid_name(&f.target) => {
                    return Err(ferr("target must be a metaverse attribute name".into()));
                }
                Direction::Inbound => None,
                Direction::Outbound => Some(crate::outbound::ScimPath::parse(&f.target).map_err(ferr)?),
            };
            if direction == Direction::Outbound && f.apply_once {
                return Err(ferr("apply_once is for inbound flows".into()));
            }
            let source = match (&f.source, &f.constant, &f.expression) {
                (None, None, Some(text)) => FlowSource::Expression(
                    crate::expr::Expr::parse(text).map_err(|e| ferr(format!("expression, {e}")))?,
                ),
                (Some(s), None, None) if !s.is_empty() => FlowSource::Attributes(s.clone()),
                (None, Some(c), None) => FlowSource::Constant(match c {
                    toml::Value::String(s) => json!(s),
                    toml::Value::Boolean(b) => json!(b),
                    toml::Value::Integer(n) => json!(n),
                    other => return Err(ferr(format!("constant {other} must be a string, boolean or integer"))),
                }),
                _ => {
                    return Err(ferr("give exactly one of source = [..], constant = .. or expression = \"..\"".into()));
                }
            };
            let merge = match f.merge.as_deref() {
                None | Some("update") => MergeType::Update,
                Some("merge") => MergeType::Merge,
                Some("merge-case-insensitive") => MergeType::MergeCaseInsensitive,
                Some(other) => {
                    return Err(ferr(format!("merge {other:?} is not update, merge or merge-case-insensitive")));
                }
            };
            flows.push(RuleFlow {
                target: f.target.clone(),
                path,
                source,
                multi: f.multi || merge != MergeType::Update,
                merge,
                apply_once: f.apply_once,
            });
        }
        out.push(Rule {
            name: def.name,
            direction,
            file: file.into(),
            objects,
            flavor,
            scope,
            precedence: def.precedence,
            sources,
            flows,
            disabled: def.disabled,
        });
    }
    Ok(out)
}

impl RuleSet {
    /// The built-in rules, then each (file name, text) in order: a rule with
    /// a known name replaces that rule, a new name adds one.
    pub fn load(files: &[(String, String)]) -> Result<RuleSet, RuleError> {
        let mut rules = parse_file("built-in rules", DEFAULT_RULES)?;
        rules.extend(parse_file("built-in outbound rules", DEFAULT_OUTBOUND_RULES)?);
        for (name, text) in files {
            for rule in parse_file(name, text)? {
                match rules.iter_mut().find(|r| r.name == rule.name) {
                    Some(slot) => *slot = rule,
                    None => rules.push(rule),
                }
            }
        }
        rules.retain(|r| !r.disabled);
        // Stable: equal precedence keeps file order.
        rules.sort_by_key(|r| r.precedence);
        let paths =
            rules.iter().flat_map(|r| &r.flows).filter_map(|f| f.path.clone().map(|p| (f.target.clone(), p))).collect();
        Ok(RuleSet { rules, paths })
    }

    /// The parsed SCIM path of an outbound flow's target.
    pub fn outbound_path(&self, target: &str) -> Option<&crate::outbound::ScimPath> {
        self.paths.get(target)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether some inbound rule reads the source attribute `name` (in a
    /// flow or its scope): then a change to it may change the projection.
    pub fn inbound_reads(&self, name: &str) -> bool {
        self.rules.iter().filter(|r| r.direction == Direction::Inbound).any(|r| {
            r.scope.as_ref().is_some_and(|f| f.mentions(name))
                || r.flows.iter().any(|f| match &f.source {
                    FlowSource::Attributes(list) => list.iter().any(|a| a.eq_ignore_ascii_case(name)),
                    FlowSource::Expression(e) => e.reads(name),
                    FlowSource::Constant(_) => false,
                })
        })
    }

    /// Metaverse attributes that some rule sets only once.
    pub fn apply_once_targets(&self) -> Vec<&str> {
        let mut targets: Vec<&str> = self
            .rules
            .iter()
            .filter(|r| r.direction == Direction::Inbound)
            .flat_map(|r| &r.flows)
            .filter(|f| f.apply_once)
            .map(|f| f.target.as_str())
            .collect();
        targets.sort_unstable();
        targets.dedup();
        targets
    }

    /// Applies every rule that matches the object, in precedence order.
    /// An `Update` flow with a value settles its attribute: later rules are
    /// ignored for it. `Merge` flows add their values to what earlier
    /// merging flows gave. A flow giving `Null` or `IgnoreThisFlow`
    /// contributes nothing, so a later rule may; `AuthoritativeNull` settles
    /// the attribute as empty. Records (attribute, origin) when `origin`
    /// is given (`explain`; a cycle records nothing, sparing an allocation
    /// per flow).
    pub fn apply(
        &self,
        object: InboundObject<'_>,
        out: &mut Map<String, Json>,
        precedence: &mut Precedences,
        origin: Option<&mut Vec<Origin>>,
    ) {
        let entry = object.entry;
        self.apply_direction(
            Direction::Inbound,
            object.kind,
            Some((object.flavor, object.source)),
            &|| entry,
            &|f| flow_value(f, entry),
            &|_| true,
            out,
            Some(precedence),
            origin,
        );
    }

    /// The outbound rules for a metaverse object: (SCIM target path → value),
    /// with the same precedence and merge semantics as inbound. Attribute
    /// sources read the metaverse values with their JSON types; expressions
    /// and scope filters see them as directory attributes.
    pub fn apply_outbound(
        &self,
        kind: ObjectKind,
        attrs: &Map<String, Json>,
        out: &mut Map<String, Json>,
        origin: Option<&mut Vec<Origin>>,
    ) {
        self.apply_outbound_to(kind, attrs, &|_| true, out, origin);
    }

    /// [`RuleSet::apply_outbound`] for the flows whose target `targets`
    /// accepts alone: each target gets the value it gets from all the rules
    /// (precedence and merging are per target), and a rule with no such flow
    /// is not even scoped.
    pub fn apply_outbound_to(
        &self,
        kind: ObjectKind,
        attrs: &Map<String, Json>,
        targets: &dyn Fn(&str) -> bool,
        out: &mut Map<String, Json>,
        origin: Option<&mut Vec<Origin>>,
    ) {
        // Built only when a scope filter or an expression needs it.
        let entry = std::cell::OnceCell::new();
        let entry = || entry.get_or_init(|| metaverse_entry(attrs));
        self.apply_direction(
            Direction::Outbound,
            kind,
            None,
            &entry,
            &|f| outbound_flow_value(f, attrs, entry),
            targets,
            out,
            None,
            origin,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_direction<'e>(
        &self,
        direction: Direction,
        kind: ObjectKind,
        inbound: Option<(Flavor, &str)>,
        entry: &dyn Fn() -> &'e Entry,
        value_of: &dyn Fn(&RuleFlow) -> Contribution,
        targets: &dyn Fn(&str) -> bool,
        out: &mut Map<String, Json>,
        mut precedence: Option<&mut Precedences>,
        mut origin: Option<&mut Vec<Origin>>,
    ) {
        let mut settled: Vec<&str> = Vec::new();
        let flavor = inbound.map(|(f, _)| f);
        for rule in &self.rules {
            if rule.direction != direction
                || !rule.objects.contains(&kind)
                || rule.flavor.is_some_and(|f| Some(f) != flavor)
                || inbound
                    .is_some_and(|(_, source)| !rule.sources.is_empty() && !rule.sources.iter().any(|s| s == source))
            {
                continue;
            }
            if !rule.flows.iter().any(|f| targets(&f.target)) {
                continue;
            }
            if let Some(scope) = &rule.scope
                && !scope.matches(entry()).unwrap_or(false)
            {
                continue;
            }
            for flow in &rule.flows {
                let target = flow.target.as_str();
                if !targets(target) {
                    continue;
                }
                let merged_before = out.contains_key(target);
                // `out` answers the common case; `settled` adds AuthoritativeNull and update-over-merge.
                let blocked = match flow.merge {
                    MergeType::Update => merged_before || settled.contains(&target),
                    MergeType::Merge | MergeType::MergeCaseInsensitive => settled.contains(&target),
                };
                if blocked {
                    continue;
                }
                let (value, from) = match value_of(flow) {
                    Contribution::Nothing => continue,
                    Contribution::Failed(err) => {
                        tracing::warn!(object = %entry().dn, rule = %rule.name, flow = %target, error = %err, "expression failed; the attribute is left out");
                        continue;
                    }
                    Contribution::AuthoritativeNull => {
                        if !merged_before {
                            settled.push(target);
                            if let Some(p) = precedence.as_deref_mut() {
                                p.entry(target.to_string()).or_insert(rule.precedence);
                            }
                            if let Some(origin) = origin.as_deref_mut() {
                                origin.push(Origin::new(target, Provenance::AuthoritativeNull, Some(&rule.name)));
                            }
                        }
                        continue;
                    }
                    Contribution::Value(v, from) => (v, from),
                };
                let from = || Contributor { provenance: from, rule: Some(rule.name.clone()) };
                // Rules run lowest precedence first: the first to give a value is the attribute's.
                if let Some(p) = precedence.as_deref_mut() {
                    p.entry(target.to_string()).or_insert(rule.precedence);
                }
                match flow.merge {
                    MergeType::Update => {
                        settled.push(target);
                        out.insert(target.to_string(), value);
                        if let Some(origin) = origin.as_deref_mut() {
                            origin.push(Origin { attribute: target.to_string(), from: vec![from()] });
                        }
                    }
                    MergeType::Merge | MergeType::MergeCaseInsensitive => {
                        let mut values = texts(out.get(target));
                        let fold = flow.merge == MergeType::MergeCaseInsensitive;
                        for v in texts(Some(&value)) {
                            let seen = values
                                .iter()
                                .any(|have| if fold { have.to_lowercase() == v.to_lowercase() } else { *have == v });
                            if !seen {
                                values.push(v);
                            }
                        }
                        out.insert(target.to_string(), json!(values));
                        if let Some(origin) = origin.as_deref_mut() {
                            match origin.iter_mut().find(|o| o.attribute == target) {
                                Some(o) => o.from.push(from()),
                                None => origin.push(Origin { attribute: target.to_string(), from: vec![from()] }),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What gave an attribute a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Provenance {
    /// Inbound: the directory attribute the flow read.
    SourceAttribute(String),
    /// Outbound: the metaverse attribute the flow read.
    MetaverseAttribute(String),
    Expression(String),
    Constant(Json),
    /// An `AuthoritativeNull` settled the attribute as empty.
    AuthoritativeNull,
    /// The engine itself, not a rule; the text says how.
    BuiltIn(&'static str),
    /// A joined object of another source, and why its value was taken.
    Joined {
        source: String,
        dn: String,
        win: crate::mapping::JoinedWin,
    },
}

/// One contribution: what gave it and under which rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Contributor {
    pub provenance: Provenance,
    pub rule: Option<String>,
}

/// Where one attribute's value came from: one contributor, or several
/// merged in precedence order.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub attribute: String,
    pub from: Vec<Contributor>,
}

impl Origin {
    fn new(attribute: &str, provenance: Provenance, rule: Option<&str>) -> Origin {
        Origin {
            attribute: attribute.to_string(),
            from: vec![Contributor { provenance, rule: rule.map(str::to_string) }],
        }
    }

    /// Set by the engine itself.
    pub fn built_in(attribute: &str, how: &'static str) -> Origin {
        Origin::new(attribute, Provenance::BuiltIn(how), None)
    }

    /// Given by a joined object of another source.
    pub fn joined(attribute: &str, source: &str, dn: &str, win: crate::mapping::JoinedWin) -> Origin {
        let provenance = Provenance::Joined { source: source.to_string(), dn: dn.to_string(), win };
        Origin::new(attribute, provenance, None)
    }

    /// The metaverse attributes the contributing flows read (outbound).
    pub fn metaverse_attributes(&self) -> impl Iterator<Item = &str> {
        self.from.iter().filter_map(|c| match &c.provenance {
            Provenance::MetaverseAttribute(a) => Some(a.as_str()),
            _ => None,
        })
    }
}

impl std::fmt::Display for Contributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.provenance {
            Provenance::SourceAttribute(a) => write!(f, "{a}")?,
            Provenance::MetaverseAttribute(a) => write!(f, "metaverse {a}")?,
            Provenance::Expression(e) => write!(f, "expression {e}")?,
            Provenance::Constant(v) => write!(f, "constant {v}")?,
            Provenance::AuthoritativeNull => write!(f, "AuthoritativeNull")?,
            Provenance::BuiltIn(how) => write!(f, "{how}")?,
            Provenance::Joined { source, dn, win } => {
                use crate::mapping::JoinedWin;
                let why = match win {
                    JoinedWin::Authoritative => "authoritative".to_string(),
                    JoinedWin::Gap => "fills a gap".to_string(),
                    JoinedWin::Precedence { joined, before: Some(before) } => {
                        format!("precedence {joined} over {before}")
                    }
                    JoinedWin::Precedence { joined, before: None } => {
                        format!("precedence {joined} over a computed value")
                    }
                };
                write!(f, "source {source:?} object {dn} (joined, {why})")?;
            }
        }
        match &self.rule {
            Some(rule) => write!(f, " (rule {rule})"),
            None => Ok(()),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.from.iter().enumerate() {
            if i > 0 {
                f.write_str(", merged with ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// What one flow gives for one object.
enum Contribution {
    Nothing,
    AuthoritativeNull,
    Failed(crate::expr::EvalError),
    /// The value and where it came from.
    Value(Json, Provenance),
}

fn flow_value(flow: &RuleFlow, entry: &Entry) -> Contribution {
    use crate::expr::Val;
    match &flow.source {
        FlowSource::Expression(e) => match e.eval(entry) {
            Ok(Val::Null | Val::IgnoreThisFlow) => Contribution::Nothing,
            Ok(Val::AuthoritativeNull) => Contribution::AuthoritativeNull,
            Ok(v) => Contribution::Value(v.to_json(), Provenance::Expression(e.to_string())),
            Err(err) => Contribution::Failed(err),
        },
        FlowSource::Constant(v) => Contribution::Value(v.clone(), Provenance::Constant(v.clone())),
        FlowSource::Attributes(sources) => {
            for from in sources {
                let values: Vec<String> = entry
                    .values(from)
                    .iter()
                    .filter_map(Value::as_text)
                    .map(str::to_string)
                    .filter(|s| !s.is_empty())
                    .collect();
                if let Some(first) = values.first() {
                    let v = if flow.multi { json!(values) } else { json!(first) };
                    return Contribution::Value(v, Provenance::SourceAttribute(from.clone()));
                }
            }
            Contribution::Nothing
        }
    }
}

/// A metaverse object as directory attributes, for expressions and scope
/// filters in outbound rules (booleans as TRUE/FALSE, lists as values).
fn metaverse_entry(attrs: &Map<String, Json>) -> Entry {
    let dn = attrs
        .get("onPremisesDistinguishedName")
        .and_then(Json::as_str)
        .and_then(|d| directory::Dn::parse(d).ok())
        .unwrap_or_default();
    let mut entry = Entry::new(dn);
    for (name, value) in attrs {
        let items = match value {
            Json::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for item in items {
            let text = match item {
                Json::String(s) => s,
                Json::Bool(b) => if b { "TRUE" } else { "FALSE" }.to_string(),
                Json::Null => continue,
                other => other.to_string(),
            };
            entry.add(name, text);
        }
    }
    entry
}

fn outbound_flow_value<'e>(flow: &RuleFlow, attrs: &Map<String, Json>, entry: impl Fn() -> &'e Entry) -> Contribution {
    let FlowSource::Attributes(sources) = &flow.source else { return flow_value(flow, entry()) };
    for from in sources {
        let value = match attrs.get(from) {
            None | Some(Json::Null) => continue,
            Some(Json::String(s)) if s.is_empty() => continue,
            Some(Json::Array(a)) if a.is_empty() => continue,
            Some(Json::Array(a)) if !flow.multi => a[0].clone(),
            Some(v) if flow.multi && !v.is_array() => json!([v]),
            Some(v) => v.clone(),
        };
        return Contribution::Value(value, Provenance::MetaverseAttribute(from.clone()));
    }
    Contribution::Nothing
}

/// A JSON value as a list of texts (for merging).
fn texts(v: Option<&Json>) -> Vec<String> {
    match v {
        Some(Json::Array(items)) => items.iter().filter_map(|i| texts(Some(i)).into_iter().next()).collect(),
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Null) | None => Vec::new(),
        Some(other) => vec![other.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::Dn;

    fn entry(pairs: &[(&str, &str)]) -> Entry {
        let mut e = Entry::new(Dn::parse("uid=a,ou=people,dc=example,dc=org").unwrap());
        for (k, v) in pairs {
            e.add(k, *v);
        }
        e
    }

    /// An LDAP user of source "lab".
    fn user(entry: &Entry) -> InboundObject<'_> {
        InboundObject { kind: ObjectKind::User, flavor: Flavor::Ldap, source: "lab", entry }
    }

    /// The rules applied to a user with these attributes: (attributes, origins).
    fn apply_to(set: &RuleSet, pairs: &[(&str, &str)]) -> (Map<String, Json>, Vec<Origin>) {
        let mut out = Map::new();
        let mut origin = Vec::new();
        set.apply(user(&entry(pairs)), &mut out, &mut Precedences::new(), Some(&mut origin));
        (out, origin)
    }

    #[test]
    fn built_in_rules_load_and_apply() {
        let set = RuleSet::load(&[]).unwrap();
        assert!(set.rules().len() >= 4);
        let mut out = Map::new();
        let mut origin = Vec::new();
        let e = entry(&[("uid", "a"), ("title", "Boss"), ("cn", "A")]);
        set.apply(user(&e), &mut out, &mut Precedences::new(), Some(&mut origin));
        assert_eq!(out["jobTitle"], "Boss");
        assert_eq!(out["mailNickname"], "a");
        assert!(origin.iter().any(|o| o.attribute == "jobTitle" && o.to_string() == "title (rule person)"));
    }

    #[test]
    fn a_rule_for_some_sources_applies_to_theirs_and_each_attribute_keeps_its_precedence() {
        let text = r#"
[[rule]]
name = "hr-title"
objects = ["user"]
sources = ["hr"]
precedence = 50
flows = [{ target = "jobTitle", expression = "\"HR: \" & [title]" }]

[[rule]]
name = "no-phones"
objects = ["user"]
precedence = 60
flows = [{ target = "telephoneNumber", expression = "AuthoritativeNull" }]
"#;
        let set = RuleSet::load(&[("hr.toml".into(), text.into())]).unwrap();
        let e = entry(&[("uid", "a"), ("title", "Chef de cuisine"), ("telephoneNumber", "+33 1")]);
        let applied = |source: &str| {
            let (mut out, mut precedence) = (Map::new(), Precedences::new());
            set.apply(InboundObject { source, ..user(&e) }, &mut out, &mut precedence, None);
            (out, precedence)
        };
        let (hr, hr_precedence) = applied("hr");
        assert_eq!(hr["jobTitle"], "HR: Chef de cuisine");
        assert_eq!((hr_precedence["jobTitle"], hr_precedence["mailNickname"]), (50, 100));
        assert!(!hr.contains_key("telephoneNumber"));
        assert_eq!(hr_precedence["telephoneNumber"], 60, "settled empty by AuthoritativeNull at 60");
        let (lab, lab_precedence) = applied("lab");
        assert_eq!((&lab["jobTitle"], lab_precedence["jobTitle"]), (&json!("Chef de cuisine"), 200));

        for (bad, says) in [
            ("sources = []", "sources is empty"),
            ("sources = [\"\"]", "is not a source name"),
            ("direction = \"outbound\"\nsources = [\"hr\"]", "sources applies to inbound rules"),
        ] {
            let text = format!("[[rule]]\nname = \"x\"\nobjects = [\"user\"]\n{bad}\nflows = []\n");
            let e = RuleSet::load(&[("bad.toml".into(), text)]).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn disabled_rules_are_checked_and_left_out() {
        let off = "[[rule]]\nname = \"person\"\nobjects = [\"user\"]\ndisabled = true\nflows = [{ target = \"jobTitle\", source = [\"title\"] }]\n\n[[rule]]\nname = \"mine\"\nobjects = [\"user\"]\ndisabled = true\nflows = [{ target = \"jobTitle\", constant = \"x\" }]\n";
        let set = RuleSet::load(&[("off.toml".into(), off.into())]).unwrap();
        assert!(set.rules().iter().all(|r| r.name != "person" && r.name != "mine"), "both left out");
        let broken = "[[rule]]\nname = \"x\"\nobjects = [\"user\"]\ndisabled = true\nflows = [{ target = \"jobTitle\", expression = \"Nope([a])\" }]\n";
        let err = RuleSet::load(&[("broken.toml".into(), broken.into())]).unwrap_err();
        assert!(err.to_string().contains("unknown function"), "{err}");
    }

    #[test]
    fn overrides_scopes_constants_and_precedence() {
        let custom = r#"
[[rule]]
name = "person"
objects = ["user", "contact"]
precedence = 200
flows = [{ target = "jobTitle", source = ["employeeType", "title"] }]

[[rule]]
name = "sales-title"
objects = ["user"]
scope = "(departmentNumber=Sales)"
precedence = 10
flows = [{ target = "jobTitle", constant = "Sales" }, { target = "companyName", constant = "Example Sales Ltd" }]
"#;
        let set = RuleSet::load(&[("custom.toml".into(), custom.into())]).unwrap();
        let apply = |pairs: &[(&str, &str)]| {
            let mut out = Map::new();
            set.apply(user(&entry(pairs)), &mut out, &mut Precedences::new(), None);
            out
        };
        let sales = apply(&[("departmentNumber", "Sales"), ("title", "Rep")]);
        assert_eq!(
            (sales["jobTitle"].as_str(), sales["companyName"].as_str()),
            (Some("Sales"), Some("Example Sales Ltd"))
        );
        let other = apply(&[("departmentNumber", "Legal"), ("title", "Counsel"), ("employeeType", "staff")]);
        assert_eq!(other["jobTitle"], "staff", "the override replaced the built-in person rule");
        assert!(other.get("mail").is_none(), "the replaced rule's other flows are gone");
    }

    #[test]
    fn expression_flows() {
        let custom = r#"
[[rule]]
name = "mail-from-name"
objects = ["user"]
precedence = 10
flows = [{ target = "mail", expression = "LCase(Trim([givenName])) & \".\" & LCase([sn]) & \"@example.org\"" }]
"#;
        let set = RuleSet::load(&[("x.toml".into(), custom.into())]).unwrap();
        let (out, origin) = apply_to(&set, &[("givenName", " Ann "), ("sn", "Lee"), ("mail", "old@x")]);
        assert_eq!(out["mail"], "ann.lee@example.org");
        assert!(origin.iter().any(|o| o.attribute == "mail" && o.to_string().starts_with("expression")));
        let bad = "[[rule]]\nname = \"b\"\nobjects = [\"user\"]\nflows = [{ target = \"mail\", expression = \"LCase([a]\" }]\n";
        let e = RuleSet::load(&[("y.toml".into(), bad.into())]).unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("rule \"b\", flow 1 (mail)") && e.contains("column 10"), "{e}");
    }

    #[test]
    fn merge_types_and_null_markers() {
        let custom = r#"
[[rule]]
name = "addresses-primary"
objects = ["user"]
precedence = 10
flows = [
  { target = "proxyAddresses", source = ["proxyAddresses"], merge = "merge-case-insensitive" },
  { target = "jobTitle", expression = "IIF([employeeType] = \"contractor\", AuthoritativeNull, IgnoreThisFlow)" },
  { target = "department", expression = "IIF(IsPresent([ou]), [ou], IgnoreThisFlow)" },
]

[[rule]]
name = "addresses-alias"
objects = ["user"]
precedence = 20
flows = [
  { target = "proxyAddresses", expression = "\"smtp:\" & [uid] & \"@alias.example.org\"", merge = "merge-case-insensitive" },
  { target = "proxyAddresses", constant = "smtp:ALL@example.org", merge = "merge-case-insensitive" },
]
"#;
        let set = RuleSet::load(&[("m.toml".into(), custom.into())]).unwrap();
        let (out, origin) = apply_to(
            &set,
            &[
                ("uid", "ann"),
                ("proxyAddresses", "SMTP:ann@example.org"),
                ("proxyAddresses", "smtp:all@example.org"),
                ("title", "Boss"),
                ("employeeType", "contractor"),
                ("departmentNumber", "Sales"),
            ],
        );
        assert_eq!(
            out["proxyAddresses"],
            json!(["SMTP:ann@example.org", "smtp:all@example.org", "smtp:ann@alias.example.org"]),
            "merged in precedence order, the case-insensitive duplicate dropped"
        );
        let from = &origin.iter().find(|o| o.attribute == "proxyAddresses").unwrap().to_string();
        assert!(from.contains("addresses-primary") && from.contains("merged with") && from.contains("addresses-alias"));
        assert!(out.get("jobTitle").is_none(), "AuthoritativeNull keeps the built-in title out: {out:?}");
        assert_eq!(out["department"], "Sales", "IgnoreThisFlow lets the built-in rule give department");

        let (staff, _) =
            apply_to(&set, &[("uid", "bo"), ("title", "Clerk"), ("ou", "Ops"), ("departmentNumber", "Sales")]);
        assert_eq!(staff["jobTitle"], "Clerk", "IgnoreThisFlow: the built-in rule gives the title");
        assert_eq!(staff["department"], "Ops");
        assert_eq!(staff["proxyAddresses"], json!(["smtp:bo@alias.example.org", "smtp:ALL@example.org"]));

        let exact = custom.replace("merge-case-insensitive", "merge");
        let set = RuleSet::load(&[("m.toml".into(), exact)]).unwrap();
        let (out, _) = apply_to(&set, &[("uid", "cy"), ("proxyAddresses", "smtp:all@example.org")]);
        assert_eq!(out["proxyAddresses"].as_array().map(Vec::len), Some(3), "exact merge keeps both spellings");

        let bad = "[[rule]]\nname = \"x\"\nobjects = [\"user\"]\nflows = [{ target = \"a\", constant = \"b\", merge = \"sum\" }]\n";
        let e = RuleSet::load(&[("b.toml".into(), bad.into())]).unwrap_err().to_string();
        assert!(e.contains("rule \"x\", flow 1 (a)") && e.contains("merge \"sum\""), "{e}");
    }

    #[test]
    fn errors_name_file_rule_flow_and_line() {
        let cases = [
            ("[[rule]]\nname = \"x\"\nobjects = [\"user\"]\nflows = [{ target = \"a\" }]\n", "rule \"x\", flow 1 (a)"),
            ("[[rule]]\nname = \"x\"\nobjects = [\"robot\"]\n", "rule \"x\""),
            ("[[rule]]\nname = \"x\"\nobjects = [\"user\"]\nscope = \"(cn=\"\n", "scope"),
            ("[[rule]]\nname = \"x\"\nobjects = [\"user\"]\nbogus = 1\n", "line 4"),
            ("[[rule]]\nname = \"x\"\nobjects = [\"user\"]\nscope = \"(cn:caseExactMatch:=a)\"\n", "extensible"),
        ];
        for (text, needle) in cases {
            let e = RuleSet::load(&[("mine.toml".into(), text.into())]).unwrap_err().to_string();
            assert!(e.starts_with("mine.toml: ") && e.contains(needle), "{e}");
        }
    }
}
