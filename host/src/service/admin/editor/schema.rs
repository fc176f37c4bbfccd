//! What the pages offer comes from the component's configuration schema
//! (`describe`'s JSON Schema), not from a list in the host: the settings'
//! descriptions, the ways of matching, and the attribute targets.

use serde_json::Value;

/// The parts of a configuration schema the pages use.
#[derive(Clone, Debug, Default)]
pub struct Offered {
    /// Attribute targets named in the schema, and a note for the ones it
    /// describes by a pattern.
    pub targets: Vec<String>,
    pub target_note: Option<String>,
    /// The `match` setting's values, its default first.
    pub match_modes: Vec<String>,
    /// The identity mapping's fixed target, when the schema fixes one.
    pub identity_target: Option<String>,
    schema: Value,
}

impl Offered {
    pub fn read(schema_text: &str) -> Self {
        let schema: Value = serde_json::from_str(schema_text).unwrap_or(Value::Null);
        let properties = &schema["properties"];
        let target = &properties["attributeMappings"]["items"]["properties"]["target"];
        let mut targets = Vec::new();
        let mut target_note = None;
        let choices = target["anyOf"].as_array().cloned().unwrap_or_default();
        for choice in choices.iter().chain(std::iter::once(target)) {
            if let Some(names) = choice["enum"].as_array() {
                targets.extend(names.iter().filter_map(Value::as_str).map(str::to_owned));
            } else if choice.get("pattern").is_some() {
                target_note = choice["description"].as_str().map(str::to_owned);
            }
        }
        let mut match_modes: Vec<String> = properties["match"]["enum"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(default) = properties["match"]["default"].as_str()
            && let Some(at) = match_modes.iter().position(|m| m == default)
        {
            let default = match_modes.remove(at);
            match_modes.insert(0, default);
        }
        let identity_target = properties["identityMapping"]["properties"]["target"]["const"]
            .as_str()
            .map(str::to_owned);
        Self {
            targets,
            target_note,
            match_modes,
            identity_target,
            schema,
        }
    }

    /// Whether the schema declares top-level setting `name`.
    pub fn declares(&self, name: &str) -> bool {
        self.schema["properties"].get(name).is_some()
    }

    /// The schema's description of setting `path` (`identityMapping.source`,
    /// `audiences.mappingId` for an item's field).
    pub fn describe(&self, path: &str) -> Option<String> {
        let mut node = &self.schema;
        for part in path.split('.') {
            node = &node["properties"][part];
            if node.get("items").is_some() {
                node = &node["items"];
            }
        }
        node["description"].as_str().map(str::to_owned)
    }
}
