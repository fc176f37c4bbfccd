use super::*;
use crate::service::config::ServiceFile;
use std::path::Path;

const FILE: &str = r#"# The service of the EU team.
state_dir = "state"   # journals live here

[accounts."ada@example.com"]
rate_limit = 5000 # half of it

# Sales first: it has the biggest budget.
[[destinations]]
name = "sales"          # used in URLs
account = "ada@example.com"
api_base = "http://127.0.0.1:9/api/v2"
alert_webhook = "https://hooks.example/T0/secret-token"
config = { name = "Sales", identityMapping = { source = "Oid", target = "CrmId" }, audiences = [
    # The newsletter writes field 4.
    { id = "news", name = "Newsletter", mappingId = 4 },
    { id = "vip", mappingId = 12 },  # VIPs
] }

[[destinations]]
name = "support"
config = "support.json" # kept beside this file
"#;

fn settings_of(text: &str, name: &str) -> DestinationSettings {
    let file = ServiceFile::parse(text, Path::new("/nonexistent"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let spec = file.destinations.iter().find(|d| d.name == name).unwrap();
    DestinationSettings::of(spec, "")
}

/// `FILE` with its `support` destination's config inline, so that it parses
/// without the JSON file.
fn parseable(text: &str) -> String {
    text.replace(
        "config = \"support.json\"",
        "config = { name = \"Support\" }",
    )
}

#[test]
fn changing_a_mapping_id_changes_that_number_and_nothing_else() {
    let mut settings = settings_of(&parseable(FILE), "sales");
    settings.config["audiences"][1]["mappingId"] = Json::from(13);
    let mut text = DestinationsText::parse(FILE).unwrap();
    text.set(Some("sales"), &settings).unwrap();
    let after = text.to_string();
    assert_eq!(after, FILE.replace("mappingId = 12 }", "mappingId = 13 }"));
}

#[test]
fn an_unchanged_destination_is_written_back_byte_for_byte() {
    let settings = settings_of(&parseable(FILE), "sales");
    let mut text = DestinationsText::parse(FILE).unwrap();
    text.set(Some("sales"), &settings).unwrap();
    assert_eq!(text.to_string(), FILE);
}

#[test]
fn an_added_audience_and_a_removed_one_keep_the_comments_of_the_rest() {
    let mut settings = settings_of(&parseable(FILE), "sales");
    let audiences = settings.config["audiences"].as_array_mut().unwrap();
    audiences.remove(1);
    audiences.push(serde_json::json!({ "id": "churn", "name": "Churn \"risk\"", "mappingId": 7 }));
    let mut text = DestinationsText::parse(FILE).unwrap();
    text.set(Some("sales"), &settings).unwrap();
    let after = text.to_string();
    assert!(
        after.contains("# The newsletter writes field 4."),
        "{after}"
    );
    assert!(
        after.contains("# Sales first: it has the biggest budget."),
        "{after}"
    );
    assert!(
        after.contains("name = \"sales\"          # used in URLs"),
        "{after}"
    );
    assert_eq!(settings_of(&parseable(&after), "sales"), settings);
}

#[test]
fn a_new_destination_is_appended_and_reads_back_as_set() {
    let config = serde_json::json!({
        "name": "Webinars",
        "identityMapping": { "source": "Oid", "target": "CrmId" },
        "attributeMappings": [{ "source": "person.name.firstName", "target": "firstName" }],
        "audiences": [{ "id": "web", "name": "Webinar", "mappingId": 5 }],
    });
    let Json::Object(config) = config else {
        unreachable!()
    };
    let settings = DestinationSettings {
        name: "webinars".into(),
        account: "ada@example.com".into(),
        api_base: String::new(),
        enabled: true,
        alert_webhook: None,
        alert_command: Some("logger -t crm".into()),
        stall_alert_secs: Some(600),
        config,
    };
    let mut text = DestinationsText::parse(FILE).unwrap();
    text.set(None, &settings).unwrap();
    let after = text.to_string();
    assert!(
        after.starts_with(FILE),
        "the text before is kept as it was:\n{after}"
    );
    assert_eq!(settings_of(&parseable(&after), "webinars"), settings);
    assert_eq!(text.config_place("webinars"), Some(ConfigPlace::Inline));
}

#[test]
fn a_configuration_in_a_json_file_is_left_to_the_caller() {
    let text = DestinationsText::parse(FILE).unwrap();
    assert_eq!(
        text.config_place("support"),
        Some(ConfigPlace::File("support.json".into()))
    );
}

#[test]
fn disabling_says_so_and_enabling_again_keeps_the_line() {
    let mut text = DestinationsText::parse(FILE).unwrap();
    text.set_enabled("support", false).unwrap();
    let off = text.to_string();
    assert!(!settings_of(&parseable(&off), "support").enabled);
    text.set_enabled("support", true).unwrap();
    assert!(settings_of(&parseable(&text.to_string()), "support").enabled);
    assert_eq!(
        text.set_enabled("nobody", true),
        Err(EditError::NoSuchDestination("nobody".into()))
    );
}

#[test]
fn a_name_in_use_is_refused() {
    let mut settings = settings_of(&parseable(FILE), "sales");
    settings.name = "support".into();
    let mut text = DestinationsText::parse(FILE).unwrap();
    assert_eq!(
        text.set(Some("sales"), &settings),
        Err(EditError::NameTaken("support".into()))
    );
    assert_eq!(text.to_string(), FILE);
}

#[test]
fn what_is_shown_masks_the_webhook() {
    let text = DestinationsText::parse(FILE).unwrap();
    let shown = text.shown("sales").unwrap();
    assert!(!shown.contains("secret-token"), "{shown}");
    assert!(shown.contains(MASKED), "{shown}");
    assert!(shown.contains("mappingId = 12"), "{shown}");
}

#[test]
fn a_configuration_written_as_tables_is_edited_in_place() {
    let file = r#"[[destinations]]
name = "tables"
account = "ada@example.com"

[destinations.config]
name = "Tables" # shown in summaries
identityMapping = { source = "Oid", target = "CrmId" }

# Newsletter first.
[[destinations.config.audiences]]
id = "news"
mappingId = 4

[[destinations.config.audiences]]
id = "vip" # the VIPs
mappingId = 12
"#;
    let mut settings = settings_of(file, "tables");
    settings.config["audiences"][0]["mappingId"] = Json::from(5);
    settings.config["audiences"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "id": "churn", "mappingId": 7 }));
    let mut text = DestinationsText::parse(file).unwrap();
    text.set(Some("tables"), &settings).unwrap();
    let after = text.to_string();
    assert!(
        after.contains(
            "# Newsletter first.\n[[destinations.config.audiences]]\nid = \"news\"\nmappingId = 5\n"
        ),
        "{after}"
    );
    assert!(
        after.contains("id = \"vip\" # the VIPs\nmappingId = 12"),
        "{after}"
    );
    assert!(
        after.contains("name = \"Tables\" # shown in summaries"),
        "{after}"
    );
    assert_eq!(settings_of(&after, "tables"), settings);
}
