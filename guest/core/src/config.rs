//! Destination configuration: parsing and validation.
//! Every problem is collected, each naming the setting it concerns.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{Map, Value};

use crate::catalog::{self, AttributeKind, Target};
use crate::types::ConfigError;

/// The identity target every configuration must map to.
pub const IDENTITY_TARGET: &str = "OutreachId";

/// Audience membership statuses, as XDM `segmentMembership` writes them.
pub const STATUSES: [&str; 3] = ["realized", "existing", "exited"];

/// A source field path into a profile, e.g. `person.name.firstName`.
#[derive(Clone, Debug)]
pub struct SourcePath {
    pub text: String,
    pub segments: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct AttributeMapping {
    pub source: SourcePath,
    pub target: String,
    pub kind: AttributeKind,
}

#[derive(Clone, Debug)]
pub struct Audience {
    pub id: String,
    /// Display name when configured; messages fall back to the id.
    pub name: Option<String>,
    /// N of the prospect field `customN`.
    pub mapping_id: u32,
    /// `"customN"`, built once.
    pub field: String,
}

impl Audience {
    /// How summaries show the audience: `Newsletter (Mapping ID 4)`.
    pub fn label(&self) -> String {
        let name = self.name.as_deref().unwrap_or(&self.id);
        format!("{name} (Mapping ID {})", self.mapping_id)
    }

    /// How messages refer to the audience: `"Newsletter" (id 7f4b, Mapping ID 4)`.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!(
                "audience \"{name}\" (id {}, Mapping ID {})",
                self.id, self.mapping_id
            ),
            None => format!("audience \"{}\" (Mapping ID {})", self.id, self.mapping_id),
        }
    }
}

/// How a profile finds its prospect (the `match` setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Match {
    /// By the Outreach prospect id in the identity namespace (the original
    /// product's behaviour).
    #[default]
    OutreachId,
    /// By email address: looked up, updated when found, created when not.
    Email,
    /// By the prospect id when the profile has one, else by email.
    OutreachIdOrEmail,
}

impl Match {
    const NAMES: [(&'static str, Match); 3] = [
        ("outreachId", Match::OutreachId),
        ("email", Match::Email),
        ("outreachIdOrEmail", Match::OutreachIdOrEmail),
    ];

    pub fn uses_id(self) -> bool {
        self != Match::Email
    }

    pub fn uses_email(self) -> bool {
        self != Match::OutreachId
    }
}

/// Where a profile's company is, synced as an Outreach account (the
/// `companyMapping` setting): its web domain and its name, at least one.
#[derive(Clone, Debug)]
pub struct CompanyMapping {
    pub domain: Option<SourcePath>,
    pub name: Option<SourcePath>,
}

/// A validated destination configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub description: Option<String>,
    pub account: Option<String>,
    pub matching: Match,
    /// Identity namespace in `identityMap` that holds the Outreach prospect
    /// id; empty when prospects are matched by email only.
    pub identity_namespace: String,
    /// Where the profile's email address is, for the email matches.
    pub email_source: Option<SourcePath>,
    /// Where the profile's company is, when it is synced as an account.
    pub company: Option<CompanyMapping>,
    pub attributes: Vec<AttributeMapping>,
    /// In configuration order.
    pub audiences: Vec<Audience>,
    /// Value written for `realized`, `existing`, `exited` (in that order).
    pub status_values: [String; 3],
}

impl Config {
    pub fn audience_by_mapping_id(&self, n: u32) -> Option<&Audience> {
        self.audiences.iter().find(|a| a.mapping_id == n)
    }

    /// The OAuth scopes the configuration's requests need: matching by
    /// email reads prospects, and Outreach's scopes are not additive
    /// (`prospects.write` cannot read).
    pub fn scopes(&self) -> Vec<String> {
        let scope = if self.matching.uses_email() {
            "prospects.all"
        } else {
            "prospects.write"
        };
        let mut scopes = alloc::vec![scope.to_string()];
        if self.company.is_some() {
            scopes.push("accounts.all".to_string());
        }
        scopes
    }

    pub fn attribute_by_target(&self, target: &str) -> Option<&AttributeMapping> {
        self.attributes.iter().find(|a| a.target == target)
    }
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "description",
    "account",
    "match",
    "identityMapping",
    "emailMapping",
    "companyMapping",
    "attributeMappings",
    "audiences",
    "statusLabels",
];

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, setting: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            setting: setting.into(),
            message: message.into(),
        });
    }
}

/// How a JSON value's type is named in messages ("not a number").
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A required or optional non-empty string setting.
fn string_setting(
    obj: &Map<String, Value>,
    key: &str,
    setting: &str,
    required: bool,
    errors: &mut Errors,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) if required => {
            errors.push(setting, format!("{setting} is required"));
            None
        }
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() && required => {
            errors.push(setting, format!("{setting} must not be empty"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(
                setting,
                format!("{setting} must be a string, not {}", kind_of(other)),
            );
            None
        }
    }
}

fn parse_source_path(text: &str) -> Option<SourcePath> {
    let segments: Vec<String> = text.split('.').map(ToString::to_string).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(SourcePath {
        text: text.to_string(),
        segments,
    })
}

/// Accepts a JSON integer or a string of digits.
fn mapping_id_value(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => {
            let t = s.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse::<i128>().ok().or(Some(i128::MAX))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Parses and validates a destination configuration given as JSON text.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Errors(Vec::new());
    let root: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push("", format!("configuration is not valid JSON: {e}"));
            return Err(errors.0);
        }
    };
    let Value::Object(root) = root else {
        errors.push(
            "",
            format!(
                "configuration must be a JSON object, not {}",
                kind_of(&root)
            ),
        );
        return Err(errors.0);
    };
    for key in root.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            errors.push(
                key.as_str(),
                format!(
                    "unknown setting \"{key}\"; known settings are {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            );
        }
    }

    let name = string_setting(&root, "name", "name", true, &mut errors);
    let description = string_setting(&root, "description", "description", false, &mut errors);
    let account = string_setting(&root, "account", "account", false, &mut errors);
    let matching = parse_match(&root, &mut errors);
    let identity_namespace = if matching.uses_id() || root.contains_key("identityMapping") {
        parse_identity(&root, &mut errors)
    } else {
        None
    };
    let email_source = parse_email(&root, matching, &mut errors);
    let company = parse_company(&root, &mut errors);
    let audiences = parse_audiences(&root, &mut errors);
    let attributes = parse_attributes(&root, &audiences, &mut errors);
    let status_values = parse_labels(&root, &mut errors);

    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    Ok(Config {
        name: name.unwrap_or_default(),
        description,
        account,
        matching,
        identity_namespace: identity_namespace.unwrap_or_default(),
        email_source,
        company,
        attributes,
        audiences,
        status_values,
    })
}

fn parse_match(root: &Map<String, Value>, errors: &mut Errors) -> Match {
    let names = || {
        Match::NAMES
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match root.get("match") {
        None | Some(Value::Null) => Match::default(),
        Some(Value::String(s)) => match Match::NAMES.iter().find(|(name, _)| name == s) {
            Some((_, matching)) => *matching,
            None => {
                errors.push("match", format!("match \"{s}\" is not one of {}", names()));
                Match::default()
            }
        },
        Some(other) => {
            errors.push(
                "match",
                format!("match must be one of {}, not {}", names(), kind_of(other)),
            );
            Match::default()
        }
    }
}

/// `emailMapping: {"source": path}`: required by the email matches, refused
/// by the id match (which would silently ignore it).
fn parse_email(
    root: &Map<String, Value>,
    matching: Match,
    errors: &mut Errors,
) -> Option<SourcePath> {
    let setting = "emailMapping";
    let obj = match root.get(setting) {
        None | Some(Value::Null) if matching.uses_email() => {
            errors.push(
                setting,
                "emailMapping is required when prospects are matched by email: {\"source\": the profile's email path, e.g. personalEmail.address}",
            );
            return None;
        }
        None | Some(Value::Null) => return None,
        Some(_) if !matching.uses_email() => {
            errors.push(
                setting,
                "emailMapping is only used when prospects are matched by email: set match to \"email\" or \"outreachIdOrEmail\", or remove it",
            );
            return None;
        }
        Some(Value::Object(o)) => o,
        Some(other) => {
            errors.push(
                setting,
                format!(
                    "emailMapping must be an object {{\"source\": path}}, not {}",
                    kind_of(other)
                ),
            );
            return None;
        }
    };
    for key in obj.keys() {
        if key != "source" {
            errors.push(
                format!("emailMapping.{key}"),
                format!("unknown setting \"emailMapping.{key}\"; emailMapping has only source"),
            );
        }
    }
    let source = string_setting(obj, "source", "emailMapping.source", true, errors)?;
    match parse_source_path(&source) {
        Some(path) => Some(path),
        None => {
            errors.push(
                "emailMapping.source",
                format!("emailMapping.source \"{source}\" has an empty segment"),
            );
            None
        }
    }
}

/// `companyMapping: {"domain": path, "name": path}` (at least one).
fn parse_company(root: &Map<String, Value>, errors: &mut Errors) -> Option<CompanyMapping> {
    let setting = "companyMapping";
    let obj = match root.get(setting) {
        None | Some(Value::Null) => return None,
        Some(Value::Object(o)) => o,
        Some(other) => {
            errors.push(
                setting,
                format!(
                    "companyMapping must be an object {{\"domain\": path, \"name\": path}}, not {}",
                    kind_of(other)
                ),
            );
            return None;
        }
    };
    for key in obj.keys() {
        if key != "domain" && key != "name" {
            errors.push(
                format!("companyMapping.{key}"),
                format!(
                    "unknown setting \"companyMapping.{key}\"; companyMapping has domain and name"
                ),
            );
        }
    }
    let mut path = |key: &str| {
        let at = format!("companyMapping.{key}");
        let text = string_setting(obj, key, &at, false, errors)?;
        match parse_source_path(&text) {
            Some(path) => Some(path),
            None => {
                errors.push(at.as_str(), format!("{at} \"{text}\" has an empty segment"));
                None
            }
        }
    };
    let mapping = CompanyMapping {
        domain: path("domain"),
        name: path("name"),
    };
    if mapping.domain.is_none() && mapping.name.is_none() {
        if !obj.keys().any(|k| k == "domain" || k == "name") {
            errors.push(
                setting,
                "companyMapping needs the path of the company's domain, its name, or both",
            );
        }
        return None;
    }
    Some(mapping)
}

fn parse_identity(root: &Map<String, Value>, errors: &mut Errors) -> Option<String> {
    let setting = "identityMapping";
    let obj = match root.get(setting) {
        None | Some(Value::Null) => {
            errors.push(
                setting,
                format!(
                    "identityMapping is required: map the identity namespace that holds the prospect id to {IDENTITY_TARGET}"
                ),
            );
            return None;
        }
        Some(Value::Object(o)) => o,
        Some(other) => {
            errors.push(
                setting,
                format!(
                    "identityMapping must be an object {{\"source\": namespace, \"target\": \"{IDENTITY_TARGET}\"}}, not {}",
                    kind_of(other)
                ),
            );
            return None;
        }
    };
    let source = string_setting(obj, "source", "identityMapping.source", true, errors);
    match obj.get("target") {
        Some(Value::String(t)) if t == IDENTITY_TARGET => {}
        Some(Value::String(t)) => errors.push(
            "identityMapping.target",
            format!("identityMapping.target must be \"{IDENTITY_TARGET}\", not \"{t}\""),
        ),
        None | Some(Value::Null) => errors.push(
            "identityMapping.target",
            format!("identityMapping.target is required and must be \"{IDENTITY_TARGET}\""),
        ),
        Some(other) => errors.push(
            "identityMapping.target",
            format!(
                "identityMapping.target must be \"{IDENTITY_TARGET}\", not {}",
                kind_of(other)
            ),
        ),
    }
    source
}

fn array_setting<'a>(root: &'a Map<String, Value>, key: &str, errors: &mut Errors) -> &'a [Value] {
    match root.get(key) {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(other) => {
            errors.push(
                key,
                format!("{key} must be an array, not {}", kind_of(other)),
            );
            &[]
        }
    }
}

fn parse_audiences(root: &Map<String, Value>, errors: &mut Errors) -> Vec<Audience> {
    let mut audiences: Vec<Audience> = Vec::new();
    for (i, item) in array_setting(root, "audiences", errors).iter().enumerate() {
        let setting = format!("audiences[{i}]");
        let Value::Object(obj) = item else {
            errors.push(
                setting.as_str(),
                format!(
                    "{setting} must be an object {{\"id\", \"mappingId\"}}, not {}",
                    kind_of(item)
                ),
            );
            continue;
        };
        let Some(id) = string_setting(obj, "id", &format!("{setting}.id"), true, errors) else {
            continue;
        };
        let name = string_setting(obj, "name", &format!("{setting}.name"), false, errors);
        let mapping_setting = format!("{setting}.mappingId");
        let mapping_id = match obj.get("mappingId") {
            None | Some(Value::Null) => {
                errors.push(
                    mapping_setting,
                    format!(
                        "audience \"{id}\": mapping id is required (the N of Outreach custom field customN, 1..150)"
                    ),
                );
                continue;
            }
            Some(v) => match mapping_id_value(v) {
                Some(n) if (1..=i128::from(catalog::MAX_CUSTOM_FIELD)).contains(&n) => n as u32,
                Some(n) => {
                    let shown = if n == i128::MAX {
                        v.to_string()
                    } else {
                        n.to_string()
                    };
                    errors.push(
                        mapping_setting,
                        format!("audience \"{id}\": mapping id {shown} is outside 1..150"),
                    );
                    continue;
                }
                None => {
                    errors.push(
                        mapping_setting,
                        format!("audience \"{id}\": mapping id must be an integer 1..150, not {v}"),
                    );
                    continue;
                }
            },
        };
        if audiences.iter().any(|a| a.id == id) {
            errors.push(
                format!("{setting}.id"),
                format!("audience \"{id}\" is scheduled twice"),
            );
            continue;
        }
        if let Some(other) = audiences.iter().find(|a| a.mapping_id == mapping_id) {
            errors.push(
                mapping_setting,
                format!(
                    "audience \"{id}\": mapping id {mapping_id} is already used by audience \"{}\"",
                    other.id
                ),
            );
            continue;
        }
        audiences.push(Audience {
            id,
            name,
            mapping_id,
            field: format!("custom{mapping_id}"),
        });
    }
    audiences
}

fn parse_attributes(
    root: &Map<String, Value>,
    audiences: &[Audience],
    errors: &mut Errors,
) -> Vec<AttributeMapping> {
    let mut mappings: Vec<AttributeMapping> = Vec::new();
    for (i, item) in array_setting(root, "attributeMappings", errors)
        .iter()
        .enumerate()
    {
        let setting = format!("attributeMappings[{i}]");
        let Value::Object(obj) = item else {
            errors.push(
                setting.as_str(),
                format!(
                    "{setting} must be an object {{\"source\", \"target\"}}, not {}",
                    kind_of(item)
                ),
            );
            continue;
        };
        let source = string_setting(obj, "source", &format!("{setting}.source"), true, errors);
        let target = string_setting(obj, "target", &format!("{setting}.target"), true, errors);
        let (Some(source), Some(target)) = (source, target) else {
            continue;
        };
        let Some(path) = parse_source_path(&source) else {
            errors.push(
                format!("{setting}.source"),
                format!(
                    "attribute mapping \"{source}\" → \"{target}\": source path has an empty segment"
                ),
            );
            continue;
        };
        let target_setting = format!("{setting}.target");
        let kind = match catalog::lookup(&target) {
            Target::Writable(kind) => kind,
            Target::Custom(n) => {
                if let Some(a) = audiences.iter().find(|a| a.mapping_id == n) {
                    errors.push(
                        target_setting,
                        format!(
                            "attribute mapping \"{source}\" → \"{target}\": custom{n} is the field of audience \"{}\" (mapping id {n})",
                            a.id
                        ),
                    );
                    continue;
                }
                catalog::CUSTOM_KIND
            }
            Target::ReadOnly => {
                errors.push(
                    target_setting,
                    format!(
                        "attribute mapping \"{source}\" → \"{target}\": \"{target}\" is a read-only prospect attribute"
                    ),
                );
                continue;
            }
            Target::Unknown => {
                errors.push(
                    target_setting,
                    format!(
                        "attribute mapping \"{source}\" → \"{target}\": \"{target}\" is not a writable Outreach prospect attribute"
                    ),
                );
                continue;
            }
        };
        if let Some(other) = mappings.iter().find(|m| m.target == target) {
            errors.push(
                target_setting,
                format!(
                    "attribute mapping \"{source}\" → \"{target}\": \"{target}\" is already mapped from \"{}\"",
                    other.source.text
                ),
            );
            continue;
        }
        mappings.push(AttributeMapping {
            source: path,
            target,
            kind,
        });
    }
    mappings
}

fn parse_labels(root: &Map<String, Value>, errors: &mut Errors) -> [String; 3] {
    let mut values = STATUSES.map(ToString::to_string);
    let labels = match root.get("statusLabels") {
        None | Some(Value::Null) => return values,
        Some(Value::Object(o)) => o,
        Some(other) => {
            errors.push(
                "statusLabels",
                format!(
                    "statusLabels must be an object such as {{\"realized\": \"Active\"}}, not {}",
                    kind_of(other)
                ),
            );
            return values;
        }
    };
    for (status, label) in labels {
        let setting = format!("statusLabels.{status}");
        let Some(slot) = STATUSES.iter().position(|s| s == status) else {
            errors.push(
                setting,
                format!(
                    "statusLabels: unknown status \"{status}\"; statuses are realized, existing, exited"
                ),
            );
            continue;
        };
        match label {
            Value::String(s) if s.trim().is_empty() => {
                errors.push(setting, format!("statusLabels.{status} must not be empty"))
            }
            Value::String(s) if s.chars().count() > catalog::CUSTOM_FIELD_MAX_CHARS => errors.push(
                setting,
                format!(
                    "statusLabels.{status} is longer than the {} characters a custom field holds",
                    catalog::CUSTOM_FIELD_MAX_CHARS
                ),
            ),
            Value::String(s) => values[slot] = s.clone(),
            other => errors.push(
                setting,
                format!(
                    "statusLabels.{status} must be a string, not {}",
                    kind_of(other)
                ),
            ),
        }
    }
    values
}
