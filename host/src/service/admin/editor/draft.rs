//! A destination being set up in the pages: the settings entered so far
//! (held by the service, never in the browser: a webhook URL stays out of
//! every page), what each step's form changes, and the fields it shows.
//!
//! A component setting's form field is named by the setting's path as the
//! component names it in its errors (`audiences[2].mappingId`), so each
//! error lands next to the field it is about.

use serde_json::{Map, Value};

use super::fields::{Field, FieldKind, Section};
use super::schema::Offered;
use super::step::Step;
use crate::service::config::DestinationSpec;
use crate::service::config::edit::DestinationSettings;

/// Blank rows offered below a list's rows, for adding.
const BLANK_ROWS: usize = 2;
/// Blank rows "More rows" offers at most at once.
pub const MAX_BLANK_ROWS: usize = 32;

/// A destination being set up.
#[derive(Clone, Debug)]
pub struct Draft {
    /// The session that began it: no other may read or change it.
    pub owner: String,
    /// The destination being edited (`None`: a new one).
    pub original: Option<String>,
    pub settings: DestinationSettings,
    /// Rows shown beyond the ones filled in.
    pub blank_rows: usize,
    /// The destination as it was served when editing began: saving over a
    /// change made since (by another operator, or a reload) is refused.
    pub base: Option<DestinationSpec>,
    pub(super) touched_ms: u64,
}

impl Draft {
    pub fn new(owner: &str) -> Self {
        Self {
            owner: owner.to_owned(),
            original: None,
            settings: DestinationSettings {
                enabled: true,
                ..DestinationSettings::default()
            },
            blank_rows: BLANK_ROWS,
            base: None,
            touched_ms: 0,
        }
    }

    /// A draft of `spec` as it is served (on `account` when it names none).
    pub fn of(owner: &str, spec: &DestinationSpec, account: &str) -> Self {
        Self {
            owner: owner.to_owned(),
            original: Some(spec.name.clone()),
            settings: DestinationSettings::of(spec, account),
            blank_rows: BLANK_ROWS,
            base: Some(spec.clone()),
            touched_ms: 0,
        }
    }

    /// The component configuration as JSON text.
    pub fn config_json(&self) -> String {
        Value::Object(self.settings.config.clone()).to_string()
    }

    /// Takes what step `step`'s form sent; returns the problems found
    /// with the host's own settings, by field name.
    pub fn take(
        &mut self,
        step: Step,
        form: &[(String, String)],
        offered: &Offered,
    ) -> Vec<(String, String)> {
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let mut problems = Vec::new();
        let config = &mut self.settings.config;
        match step {
            Step::Details => {
                if self.original.is_none() {
                    let name = field("destination");
                    if !crate::service::config::valid_name(&name) {
                        problems.push((
                            "destination".to_owned(),
                            "The short name must be 1-64 letters, digits, '-' or '_': it is used in URLs and file names.".to_owned(),
                        ));
                    }
                    self.settings.name = name;
                }
                set_text(config, "name", &field("name"));
                set_text(config, "description", &field("description"));
            }
            Step::Account => {
                self.settings.account = field("account");
                if self.settings.account.is_empty() {
                    problems.push((
                        "account".to_owned(),
                        "Name the API account (the user whose login the destination uses)."
                            .to_owned(),
                    ));
                }
                let api_base = field("api_base");
                if !api_base.is_empty() && url::Url::parse(&api_base).is_err() {
                    problems.push(("api_base".to_owned(), "This is not a URL.".to_owned()));
                }
                self.settings.api_base = api_base;
            }
            Step::Alerts => {
                let replacement = field("alert_webhook");
                if field("alert_webhook_remove") == "yes" {
                    self.settings.alert_webhook = None;
                } else if !replacement.is_empty() {
                    let check = crate::alerts::AlertSettings {
                        webhook: Some(replacement.clone()),
                        ..crate::alerts::AlertSettings::default()
                    };
                    match crate::alerts::Alerts::new(check) {
                        Ok(_) => self.settings.alert_webhook = Some(replacement),
                        Err(e) => problems.push((
                            "alert_webhook".to_owned(),
                            format!(
                                "{}; the webhook was not changed.",
                                crate::service::admin::sentence(&e.to_string())
                            ),
                        )),
                    }
                }
                let command = field("alert_command");
                self.settings.alert_command = (!command.is_empty()).then_some(command);
                let minutes = field("stall_minutes");
                if minutes.is_empty() {
                    self.settings.stall_alert_secs = None;
                } else {
                    match minutes.parse::<u64>() {
                        Ok(m) if (1..=10_080).contains(&m) => {
                            // The field shows whole minutes: a file's 90 s
                            // shown as 2 and sent back unchanged stays 90 s.
                            let shown = self.settings.stall_alert_secs.map(|s| s.div_ceil(60));
                            if shown != Some(m) {
                                self.settings.stall_alert_secs = Some(m * 60);
                            }
                        }
                        _ => problems.push((
                            "stall_minutes".to_owned(),
                            "Give a whole number of minutes from 1 to 10080 (a week).".to_owned(),
                        )),
                    }
                }
            }
            Step::Audiences => {
                let rows = rows(form, "audiences", &["id", "name", "mappingId"]);
                let audiences: Vec<Value> = rows
                    .into_iter()
                    .map(|row| {
                        let mut audience = Map::new();
                        set_text(&mut audience, "id", &row[0]);
                        set_text(&mut audience, "name", &row[1]);
                        if !row[2].is_empty() {
                            audience.insert("mappingId".into(), number_or_text(&row[2]));
                        }
                        Value::Object(audience)
                    })
                    .collect();
                set_list(config, "audiences", audiences);
            }
            Step::Mapping => {
                let mode = field("match");
                // The default is written only when the file already says it.
                let written = config.get("match").and_then(Value::as_str) == Some(mode.as_str());
                let matching = (!mode.is_empty()
                    && (written || offered.match_modes.first() != Some(&mode)))
                .then(|| Value::from(mode));
                let identity = field("identityMapping.source");
                let identity = (!identity.is_empty()).then(|| {
                    let target = offered
                        .identity_target
                        .clone()
                        .unwrap_or_else(|| field("identityMapping.target"));
                    serde_json::json!({ "source": identity, "target": target })
                });
                let email = field("emailMapping.source");
                let email = (!email.is_empty()).then(|| serde_json::json!({ "source": email }));
                let mut company = Map::new();
                set_text(&mut company, "domain", &field("companyMapping.domain"));
                set_text(&mut company, "name", &field("companyMapping.name"));
                let company = (!company.is_empty()).then_some(Value::Object(company));
                let mappings: Vec<Value> = rows(form, "attributeMappings", &["source", "target"])
                    .into_iter()
                    .map(|row| serde_json::json!({ "source": row[0], "target": row[1] }))
                    .collect();
                let mappings = (!mappings.is_empty()).then_some(Value::Array(mappings));
                // A setting the schema does not declare had no field: what
                // the configuration holds of it stays.
                for (key, value) in [
                    ("match", matching),
                    ("identityMapping", identity),
                    ("emailMapping", email),
                    ("companyMapping", company),
                    ("attributeMappings", mappings),
                ] {
                    if !offered.declares(key) {
                        continue;
                    }
                    match value {
                        Some(value) => config.insert(key.to_owned(), value),
                        None => config.remove(key),
                    };
                }
            }
            Step::Review => {}
        }
        problems
    }

    /// What step `step` shows: its sections of fields, filled in.
    pub fn sections(
        &self,
        step: Step,
        offered: &Offered,
        has_account: &dyn Fn(&str) -> bool,
    ) -> Vec<Section> {
        let config = &self.settings.config;
        let text = |key: &str| {
            config
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let nested = |outer: &str, key: &str| {
            config
                .get(outer)
                .and_then(|o| o.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match step {
            Step::Details => vec![Section {
                legend: "The destination".into(),
                help: None,
                fields: vec![
                    Field {
                        read_only: self.original.is_some(),
                        help: Some(if self.original.is_some() {
                            "The short name cannot change: the destination's journal and intake URL are named by it.".into()
                        } else {
                            "Letters, digits, '-' or '_'; records are posted to /v1/destinations/NAME/records.".into()
                        }),
                        ..Field::text("destination", "Short name", &self.settings.name)
                    },
                    Field {
                        help: offered.describe("name"),
                        ..Field::text("name", "Name", &text("name"))
                    },
                    Field {
                        help: offered.describe("description"),
                        ..Field::text("description", "Description", &text("description"))
                    },
                ],
                rows: Vec::new(),
            }],
            Step::Account => {
                let account = &self.settings.account;
                let note = if account.is_empty() {
                    None
                } else if has_account(account) {
                    Some(format!("{account} is already used by this service: its login is shared."))
                } else {
                    Some(format!("{account} is new to this service: its login can be made now, with Connect below, or after saving, from the destinations page."))
                };
                vec![Section {
                    legend: "The API account".into(),
                    help: note,
                    fields: vec![
                        Field {
                            help: offered.describe("account"),
                            ..Field::text("account", "Account", account)
                        },
                        Field {
                            help: Some("Empty: the component's production API. Set it to send to a sandbox or a simulator.".into()),
                            ..Field::text("api_base", "API base URL", &self.settings.api_base)
                        },
                    ],
                    rows: Vec::new(),
                }]
            }
            Step::Alerts => vec![Section {
                legend: "Alerts".into(),
                help: Some("Unset here: the service's own alert settings apply.".into()),
                fields: vec![
                    Field {
                        kind: FieldKind::Secret {
                            set: self.settings.alert_webhook.is_some(),
                        },
                        help: Some(if self.settings.alert_webhook.is_some() {
                            "A webhook is set; it is not shown. Type a URL to replace it, or tick Remove.".into()
                        } else {
                            "A URL that receives each alert as a JSON POST.".into()
                        }),
                        ..Field::text("alert_webhook", "Webhook URL", "")
                    },
                    Field {
                        help: Some("A shell command run with the alert as JSON on its standard input.".into()),
                        ..Field::text("alert_command", "Command", self.settings.alert_command.as_deref().unwrap_or_default())
                    },
                    Field {
                        help: Some("Alert when delivery has stalled this long (empty: the service's setting, else 15).".into()),
                        ..Field::text(
                            "stall_minutes",
                            "Stall alert after (minutes)",
                            &self.settings.stall_alert_secs.map(|s| s.div_ceil(60).to_string()).unwrap_or_default(),
                        )
                    },
                ],
                rows: Vec::new(),
            }],
            Step::Audiences => {
                let audiences = list(config, "audiences");
                let mut rows = Vec::new();
                for at in 0..audiences.len() + self.blank_rows {
                    let audience = audiences.get(at);
                    let value = |key: &str| audience.and_then(|a| a.get(key)).map(shown).unwrap_or_default();
                    rows.push(vec![
                        Field::text(&format!("audiences[{at}].id"), "Audience id", &value("id")),
                        Field::text(&format!("audiences[{at}].name"), "Name", &value("name")),
                        Field {
                            narrow: true,
                            ..Field::text(&format!("audiences[{at}].mappingId"), "Mapping ID", &value("mappingId"))
                        },
                    ]);
                }
                vec![Section {
                    legend: "Audiences to activate".into(),
                    help: Some(format!(
                        "Each audience's status is written to the field its Mapping ID names. Mapping ID: {} Leave a row empty to remove it.",
                        offered.describe("audiences.mappingId").unwrap_or_default()
                    )),
                    fields: Vec::new(),
                    rows,
                }]
            }
            Step::Mapping => {
                let mode = config
                    .get("match")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| offered.match_modes.first().cloned())
                    .unwrap_or_default();
                let mut identity = vec![
                    Field {
                        kind: FieldKind::Select(offered.match_modes.clone()),
                        help: offered.describe("match"),
                        ..Field::text("match", "Find each record by", &mode)
                    },
                    Field {
                        help: Some(format!(
                            "{} It maps to {}.",
                            offered.describe("identityMapping.source").unwrap_or_default(),
                            offered.identity_target.as_deref().unwrap_or("the target")
                        )),
                        ..Field::text("identityMapping.source", "Identity namespace", &nested("identityMapping", "source"))
                    },
                    Field {
                        help: offered.describe("emailMapping.source"),
                        ..Field::text("emailMapping.source", "Email address from", &nested("emailMapping", "source"))
                    },
                    Field {
                        help: offered.describe("companyMapping").map(|d| format!("Optional. {d} {}", offered.describe("companyMapping.domain").unwrap_or_default())),
                        ..Field::text("companyMapping.domain", "Company domain from", &nested("companyMapping", "domain"))
                    },
                    Field {
                        help: offered.describe("companyMapping.name"),
                        ..Field::text("companyMapping.name", "Company name from", &nested("companyMapping", "name"))
                    },
                ];
                // Only what this component's schema declares.
                identity.retain(|f| {
                    let setting = f.name.split('.').next().unwrap_or_default();
                    offered.declares(setting)
                });
                if offered.identity_target.is_none() {
                    identity.push(Field::text("identityMapping.target", "Identity target", &nested("identityMapping", "target")));
                }
                let mappings = list(config, "attributeMappings");
                let mut rows = Vec::new();
                for at in 0..mappings.len() + self.blank_rows {
                    let mapping = mappings.get(at);
                    let value = |key: &str| mapping.and_then(|a| a.get(key)).map(shown).unwrap_or_default();
                    rows.push(vec![
                        Field {
                            help: None,
                            ..Field::text(&format!("attributeMappings[{at}].source"), "Source field", &value("source"))
                        },
                        Field {
                            kind: FieldKind::Target,
                            ..Field::text(&format!("attributeMappings[{at}].target"), "Target field", &value("target"))
                        },
                    ]);
                }
                vec![
                    Section {
                        legend: "Identity".into(),
                        help: None,
                        fields: identity,
                        rows: Vec::new(),
                    },
                    Section {
                        legend: "Attributes".into(),
                        help: Some(format!(
                            "{} Target fields are the ones the component accepts{}. Leave a row empty to remove it.",
                            offered.describe("attributeMappings.source").unwrap_or_default(),
                            offered.target_note.as_deref().map(|n| format!(" (and: {n})")).unwrap_or_default()
                        )),
                        fields: Vec::new(),
                        rows,
                    },
                ]
            }
            Step::Review => Vec::new(),
        }
    }
}

fn set_text(object: &mut Map<String, Value>, key: &str, text: &str) {
    if text.is_empty() {
        object.remove(key);
    } else {
        object.insert(key.to_owned(), Value::from(text));
    }
}

fn set_list(object: &mut Map<String, Value>, key: &str, items: Vec<Value>) {
    if items.is_empty() {
        object.remove(key);
    } else {
        object.insert(key.to_owned(), Value::Array(items));
    }
}

fn list(object: &Map<String, Value>, key: &str) -> Vec<Value> {
    object
        .get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A number as typed, when it is one; else the text, for the component to
/// refuse with its own message.
fn number_or_text(text: &str) -> Value {
    match text.parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(text),
    }
}

/// A value as a form field shows it.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The rows of list `list` the form sent (`list[i].column`), in order,
/// rows left wholly empty dropped.
fn rows(form: &[(String, String)], list: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let mut by_index: std::collections::BTreeMap<usize, Vec<String>> =
        std::collections::BTreeMap::new();
    for (name, value) in form {
        let Some(rest) = name.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
            continue;
        };
        let Some((index, column)) = rest.split_once("].") else {
            continue;
        };
        let (Ok(index), Some(at)) = (
            index.parse::<usize>(),
            columns.iter().position(|c| *c == column),
        ) else {
            continue;
        };
        // A form of a thousand rows is not one of these pages'.
        if index >= 1_000 {
            continue;
        }
        by_index
            .entry(index)
            .or_insert_with(|| vec![String::new(); columns.len()])[at] = value.trim().to_owned();
    }
    by_index
        .into_values()
        .filter(|row| row.iter().any(|v| !v.is_empty()))
        .collect()
}

#[cfg(test)]
mod tests;
