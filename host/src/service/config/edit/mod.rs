//! Changes to the destinations file made from the status page, applied
//! to its text with a format-preserving TOML editor: a setting the
//! operator did not change keeps its comments, layout and position, and
//! a changed one keeps the comments around it.

use serde_json::Value as Json;
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, TableLike, Value};

/// What the status page sets of one destination: its keys in the
/// destinations file, and its component configuration. Keys it does not
/// set (`component`, `ingest_keys`, `concurrency`, …) are left as written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DestinationSettings {
    pub name: String,
    pub account: String,
    /// Empty: the component's production API.
    pub api_base: String,
    pub enabled: bool,
    pub alert_webhook: Option<String>,
    pub alert_command: Option<String>,
    pub stall_alert_secs: Option<u64>,
    /// The component configuration, a JSON object.
    pub config: serde_json::Map<String, Json>,
}

impl DestinationSettings {
    /// The settings of `spec` as the file gives them (on `account` when it
    /// names none; a configuration that is not a JSON object reads as
    /// empty).
    pub fn of(spec: &super::DestinationSpec, account: &str) -> Self {
        let config = match serde_json::from_str(&spec.config) {
            Ok(Json::Object(config)) => config,
            _ => serde_json::Map::new(),
        };
        Self {
            name: spec.name.clone(),
            account: spec.account.clone().unwrap_or_else(|| account.to_owned()),
            api_base: spec.api_base.clone().unwrap_or_default(),
            enabled: spec.enabled,
            alert_webhook: spec.alerts.webhook.clone(),
            alert_command: spec.alerts.command.clone(),
            stall_alert_secs: spec.alerts.stall_after.map(|d| d.as_secs()),
            config,
        }
    }
}

/// Where a destination's configuration is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigPlace {
    /// In the destinations file (`config = { … }` or `[destinations.config]`).
    Inline,
    /// In the JSON file at this path, as the destinations file names it
    /// (relative to the file's directory).
    File(String),
}

/// Why a change cannot be made to the text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the destinations file is not valid TOML: {0}")]
    NotToml(String),
    #[error("the destinations file has no destination named {0:?}")]
    NoSuchDestination(String),
    #[error("a destination named {0:?} exists already")]
    NameTaken(String),
    #[error("the destinations file's `destinations` is not an array of tables")]
    NotAnArrayOfTables,
}

/// The destinations file's text, being edited.
pub struct DestinationsText {
    document: DocumentMut,
}

/// The text that stands for a secret in what pages and the change history
/// show.
pub const MASKED: &str = "•••••• (set, not shown)";

impl DestinationsText {
    pub fn parse(text: &str) -> Result<Self, EditError> {
        let document = text
            .parse::<DocumentMut>()
            .map_err(|e| EditError::NotToml(e.message().to_owned()))?;
        Ok(Self { document })
    }

    fn destinations(&self) -> Option<&ArrayOfTables> {
        self.document.get("destinations")?.as_array_of_tables()
    }

    fn destinations_mut(&mut self) -> Result<&mut ArrayOfTables, EditError> {
        let item = self
            .document
            .entry("destinations")
            .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
        item.as_array_of_tables_mut()
            .ok_or(EditError::NotAnArrayOfTables)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.destinations()?
            .iter()
            .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
    }

    fn table_mut(&mut self, name: &str) -> Result<&mut Table, EditError> {
        let at = self
            .position(name)
            .ok_or_else(|| EditError::NoSuchDestination(name.to_owned()))?;
        self.destinations_mut()?
            .get_mut(at)
            .ok_or_else(|| EditError::NoSuchDestination(name.to_owned()))
    }

    /// Where destination `name`'s configuration is written.
    pub fn config_place(&self, name: &str) -> Option<ConfigPlace> {
        let at = self.position(name)?;
        let table = self.destinations()?.get(at)?;
        Some(match table.get("config").and_then(Item::as_str) {
            Some(path) => ConfigPlace::File(path.to_owned()),
            None => ConfigPlace::Inline,
        })
    }

    /// Destination `name`'s table as the file has it, secrets masked (what
    /// pages and the change history show).
    pub fn shown(&self, name: &str) -> Option<String> {
        let at = self.position(name)?;
        let mut table = self.destinations()?.get(at)?.clone();
        if let Some(webhook) = table.get_mut("alert_webhook")
            && webhook.is_value()
        {
            replace_value(webhook, Value::from(MASKED));
        }
        let mut one = ArrayOfTables::new();
        one.push(table);
        let mut document = DocumentMut::new();
        document.insert("destinations", Item::ArrayOfTables(one));
        Some(document.to_string().trim().to_owned())
    }

    /// Sets destination `original`'s settings (`None`: adds a destination).
    /// A configuration kept in a JSON file is not touched here: the caller
    /// writes that file.
    pub fn set(
        &mut self,
        original: Option<&str>,
        settings: &DestinationSettings,
    ) -> Result<(), EditError> {
        let renamed = original != Some(settings.name.as_str());
        if renamed && self.position(&settings.name).is_some() {
            return Err(EditError::NameTaken(settings.name.clone()));
        }
        let table = match original {
            Some(name) => self.table_mut(name)?,
            None => {
                let destinations = self.destinations_mut()?;
                destinations.push(Table::new());
                let at = destinations.len() - 1;
                destinations
                    .get_mut(at)
                    .ok_or(EditError::NotAnArrayOfTables)?
            }
        };
        set_key(table, "name", Some(Json::from(settings.name.clone())));
        set_key(table, "account", Some(Json::from(settings.account.clone())));
        let api_base = (!settings.api_base.trim().is_empty()).then(|| settings.api_base.clone());
        set_key(table, "api_base", api_base.map(Json::from));
        // `enabled` is written only when it says something.
        let enabled = (!settings.enabled || table.contains_key("enabled"))
            .then_some(Json::Bool(settings.enabled));
        set_key(table, "enabled", enabled);
        set_key(
            table,
            "alert_webhook",
            settings.alert_webhook.clone().map(Json::from),
        );
        set_key(
            table,
            "alert_command",
            settings.alert_command.clone().map(Json::from),
        );
        set_key(
            table,
            "stall_alert_secs",
            settings.stall_alert_secs.map(Json::from),
        );
        let config = Json::Object(settings.config.clone());
        match table.get_mut("config") {
            Some(item) if item.is_str() => {}
            Some(item) => merge(item, &config),
            None => {
                let mut section = Table::new();
                for (key, value) in &settings.config {
                    if let Some(value) = to_value(value, 0) {
                        section.insert(key, Item::Value(value));
                    }
                }
                table.insert("config", Item::Table(section));
            }
        }
        Ok(())
    }

    /// Turns destination `name` on or off.
    pub fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<(), EditError> {
        let table = self.table_mut(name)?;
        set_key(table, "enabled", Some(Json::Bool(enabled)));
        Ok(())
    }
}

impl std::fmt::Display for DestinationsText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.document)
    }
}

/// Sets `key` of `table` to `value` (`None`: removes it), keeping the
/// comments and layout around it, and leaving it untouched when equal.
fn set_key(table: &mut dyn TableLike, key: &str, value: Option<Json>) {
    match (table.get_mut(key), value) {
        (Some(item), Some(value)) => merge(item, &value),
        (Some(_), None) => {
            table.remove(key);
        }
        (None, Some(value)) => {
            if let Some(value) = to_value(&value, 0) {
                table.insert(key, Item::Value(value));
            }
        }
        (None, None) => {}
    }
}

/// Makes `item` say `new`, changing only what differs: tables key by key,
/// arrays element by element, so that unchanged parts keep their comments
/// and layout.
fn merge(item: &mut Item, new: &Json) {
    if to_json(item).as_ref() == Some(new) {
        return;
    }
    match (item, new) {
        (Item::Table(table), Json::Object(fields)) => merge_table(table, fields),
        (Item::Value(Value::InlineTable(table)), Json::Object(fields)) => {
            merge_table(table, fields);
        }
        (Item::ArrayOfTables(tables), Json::Array(elements))
            if elements.iter().all(Json::is_object) =>
        {
            while tables.len() > elements.len() {
                tables.remove(tables.len() - 1);
            }
            for (at, element) in elements.iter().enumerate() {
                let Json::Object(fields) = element else {
                    continue;
                };
                match tables.get_mut(at) {
                    Some(table) => merge_table(table, fields),
                    None => {
                        let mut table = Table::new();
                        merge_table(&mut table, fields);
                        tables.push(table);
                    }
                }
            }
        }
        (Item::Value(Value::Array(array)), Json::Array(elements)) => {
            merge_array(array, elements);
        }
        (item, new) => {
            if let Some(value) = to_value(new, 0) {
                replace_value(item, value);
            }
        }
    }
}

fn merge_table(table: &mut dyn TableLike, fields: &serde_json::Map<String, Json>) {
    let gone: Vec<String> = table
        .iter()
        .map(|(key, _)| key.to_owned())
        .filter(|key| !fields.contains_key(key))
        .collect();
    for key in gone {
        table.remove(&key);
    }
    for (key, value) in fields {
        set_key(table, key, (!value.is_null()).then(|| value.clone()));
    }
}

fn merge_array(array: &mut Array, elements: &[Json]) {
    let multiline = array.iter().next().is_some_and(|v| {
        v.decor()
            .prefix()
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains('\n'))
    }) || (array.is_empty() && elements.iter().any(|e| e.is_object()));
    while array.len() > elements.len() {
        array.remove(array.len() - 1);
    }
    for (at, element) in elements.iter().enumerate() {
        match array.get_mut(at) {
            Some(value) => {
                let mut item = Item::Value(value.clone());
                merge(&mut item, element);
                if let Item::Value(merged) = item {
                    *value = merged;
                }
            }
            None => {
                if let Some(mut value) = to_value(element, 1) {
                    if multiline {
                        value.decor_mut().set_prefix("\n    ");
                    }
                    array.push_formatted(value);
                }
            }
        }
    }
    let ends_on_its_own_line = array.trailing().as_str().is_some_and(|t| t.contains('\n'));
    if multiline && !ends_on_its_own_line {
        array.set_trailing_comma(true);
        array.set_trailing("\n");
    }
}

/// Puts `value` where `item`'s value was, with the old one's comments.
fn replace_value(item: &mut Item, mut value: Value) {
    if let Item::Value(old) = item {
        *value.decor_mut() = old.decor().clone();
    }
    *item = Item::Value(value);
}

/// `json` as a TOML value (`None` for null, which TOML cannot say).
/// Arrays of tables are written one element a line.
fn to_value(json: &Json, depth: usize) -> Option<Value> {
    let mut value = match json {
        Json::Null => return None,
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64()?),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(elements) => {
            let mut array = Array::new();
            let one_a_line = elements.iter().any(Json::is_object);
            for element in elements {
                if let Some(mut value) = to_value(element, depth + 1) {
                    if one_a_line {
                        value.decor_mut().set_prefix("\n    ");
                    }
                    array.push_formatted(value);
                }
            }
            if one_a_line {
                array.set_trailing_comma(true);
                array.set_trailing("\n");
            }
            Value::Array(array)
        }
        Json::Object(fields) => {
            let mut table = InlineTable::new();
            for (key, value) in fields {
                if let Some(value) = to_value(value, depth + 1) {
                    table.insert(key, value);
                }
            }
            Value::InlineTable(table)
        }
    };
    if depth == 0 {
        value.decor_mut().set_prefix(" ");
    }
    Some(value)
}

/// `item` as JSON (dates as their text); `None` for what JSON cannot say.
fn to_json(item: &Item) -> Option<Json> {
    match item {
        Item::None => None,
        Item::Value(value) => value_json(value),
        Item::Table(table) => Some(Json::Object(
            table
                .iter()
                .filter_map(|(k, v)| Some((k.to_owned(), to_json(v)?)))
                .collect(),
        )),
        Item::ArrayOfTables(tables) => Some(Json::Array(
            tables
                .iter()
                .filter_map(|t| to_json(&Item::Table(t.clone())))
                .collect(),
        )),
    }
}

fn value_json(value: &Value) -> Option<Json> {
    Some(match value {
        Value::String(s) => Json::from(s.value().as_str()),
        Value::Integer(i) => Json::from(*i.value()),
        Value::Float(f) => Json::from(*f.value()),
        Value::Boolean(b) => Json::from(*b.value()),
        Value::Datetime(d) => Json::from(d.value().to_string()),
        Value::Array(array) => Json::Array(array.iter().filter_map(value_json).collect()),
        Value::InlineTable(table) => Json::Object(
            table
                .iter()
                .filter_map(|(k, v)| Some((k.to_owned(), value_json(v)?)))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests;
