use super::*;
use crate::service::admin::editor::fields::place;

fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn offered() -> Offered {
    Offered::read(&crate::test_support::component_schema())
}

#[test]
fn audience_rows_keep_their_order_drop_empty_rows_and_keep_what_is_not_a_number() {
    let mut draft = Draft::new("session");
    draft.take(
        Step::Audiences,
        &form(&[
            ("audiences[0].id", "news"),
            ("audiences[0].name", "Newsletter"),
            ("audiences[0].mappingId", "4"),
            ("audiences[1].id", ""),
            ("audiences[1].name", " "),
            ("audiences[1].mappingId", ""),
            ("audiences[2].id", "vip"),
            ("audiences[2].mappingId", "twelve"),
        ]),
        &offered(),
    );
    assert_eq!(
        Value::Object(draft.settings.config.clone()),
        serde_json::json!({ "audiences": [
            { "id": "news", "name": "Newsletter", "mappingId": 4 },
            { "id": "vip", "mappingId": "twelve" },
        ] })
    );
}

#[test]
fn the_mapping_step_writes_what_the_component_reads() {
    let mut draft = Draft::new("session");
    let target = offered()
        .identity_target
        .expect("the schema fixes the identity's target");
    // The default way of matching is not written.
    let default_match = offered().match_modes[0].clone();
    draft.take(
        Step::Mapping,
        &form(&[
            ("match", default_match.as_str()),
            ("identityMapping.source", "Oid"),
            ("emailMapping.source", ""),
            ("companyMapping.domain", ""),
            ("companyMapping.name", "employer.name"),
            ("attributeMappings[0].source", "person.name.firstName"),
            ("attributeMappings[0].target", "firstName"),
            ("attributeMappings[1].source", ""),
            ("attributeMappings[1].target", ""),
        ]),
        &offered(),
    );
    assert_eq!(
        Value::Object(draft.settings.config.clone()),
        serde_json::json!({
            "identityMapping": { "source": "Oid", "target": target },
            "companyMapping": { "name": "employer.name" },
            "attributeMappings": [{ "source": "person.name.firstName", "target": "firstName" }],
        })
    );
}

#[test]
fn host_settings_are_checked_and_a_bad_webhook_leaves_the_old_one() {
    let mut draft = Draft::new("session");
    draft.settings.alert_webhook = Some("https://hooks.example/old-secret".into());
    let problems = draft.take(
        Step::Alerts,
        &form(&[("alert_webhook", "ftp://nowhere"), ("stall_minutes", "0")]),
        &offered(),
    );
    let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["alert_webhook", "stall_minutes"]);
    assert_eq!(
        draft.settings.alert_webhook.as_deref(),
        Some("https://hooks.example/old-secret")
    );
    assert!(!problems.iter().any(|(_, m)| m.contains("nowhere")));
    let problems = draft.take(
        Step::Alerts,
        &form(&[("alert_webhook_remove", "yes"), ("stall_minutes", "20")]),
        &offered(),
    );
    assert!(problems.is_empty());
    assert_eq!(draft.settings.alert_webhook, None);
    assert_eq!(draft.settings.stall_alert_secs, Some(1_200));
    let problems = draft.take(
        Step::Details,
        &form(&[("destination", "no spaces please")]),
        &offered(),
    );
    assert_eq!(problems[0].0, "destination");
}

#[test]
fn a_secret_never_reaches_a_field() {
    let mut draft = Draft::new("session");
    draft.settings.alert_webhook = Some("https://hooks.example/T0/secret".into());
    let sections = draft.sections(Step::Alerts, &offered(), &|_| false);
    let webhook = &sections[0].fields[0];
    assert!(webhook.is_secret() && webhook.secret_set());
    assert_eq!(webhook.value, "");
}

#[test]
fn each_problem_lands_beside_the_field_it_names() {
    let mut draft = Draft::new("session");
    draft.settings.config = serde_json::json!({ "audiences": [
        { "id": "a", "mappingId": 4 }, { "id": "b", "mappingId": 4 }
    ] })
    .as_object()
    .cloned()
    .unwrap();
    let mut sections = draft.sections(Step::Audiences, &offered(), &|_| false);
    let unplaced = place(
        &mut sections,
        vec![
            (
                "audiences[1].mappingId".into(),
                "mapping id 4 is used twice".into(),
            ),
            ("audiences[0]".into(), "first row".into()),
            ("statusLabels".into(), "no field shows this".into()),
        ],
    );
    assert_eq!(unplaced, ["no field shows this"]);
    let field = |name: &str| {
        sections[0]
            .rows
            .iter()
            .flatten()
            .find(|f| f.name == name)
            .unwrap()
    };
    assert_eq!(
        field("audiences[1].mappingId").error.as_deref(),
        Some("mapping id 4 is used twice")
    );
    assert_eq!(field("audiences[0].id").error.as_deref(), Some("first row"));
    assert_eq!(field("audiences[0].mappingId").error, None);
}

#[test]
fn steps_own_the_settings_they_show() {
    assert!(Step::Audiences.owns("audiences[3].mappingId"));
    assert!(Step::Mapping.owns("attributeMappings[0].target"));
    assert!(Step::Mapping.owns("identityMapping"));
    assert!(!Step::Details.owns("audiences[0].id"));
    assert!(Step::Details.owns("name"));
    assert!(Step::Review.owns("anything"));
}

#[test]
fn a_setting_the_schema_does_not_declare_has_no_field_and_is_kept() {
    let narrow = Offered::read(
        r#"{ "properties": { "identityMapping": { "properties": { "target": { "const": "Id" } } }, "attributeMappings": {} } }"#,
    );
    let mut draft = Draft::new("session");
    draft.settings.config = serde_json::json!({ "emailMapping": { "source": "kept.address" } })
        .as_object()
        .cloned()
        .unwrap();
    let sections = draft.sections(Step::Mapping, &narrow, &|_| false);
    let names: Vec<&str> = sections[0].fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["identityMapping.source"]);
    draft.take(
        Step::Mapping,
        &form(&[("identityMapping.source", "Oid")]),
        &narrow,
    );
    assert_eq!(
        Value::Object(draft.settings.config.clone()),
        serde_json::json!({
            "emailMapping": { "source": "kept.address" },
            "identityMapping": { "source": "Oid", "target": "Id" },
        })
    );
}

#[test]
fn stall_seconds_the_minutes_field_cannot_show_survive_an_unchanged_submit() {
    let mut draft = Draft::new("session");
    draft.settings.stall_alert_secs = Some(90);
    let shown = draft.sections(Step::Alerts, &offered(), &|_| false);
    assert_eq!(shown[0].fields[2].value, "2");
    draft.take(Step::Alerts, &form(&[("stall_minutes", "2")]), &offered());
    assert_eq!(draft.settings.stall_alert_secs, Some(90));
    draft.take(Step::Alerts, &form(&[("stall_minutes", "3")]), &offered());
    assert_eq!(draft.settings.stall_alert_secs, Some(180));
}

#[test]
fn the_default_way_of_matching_stays_written_where_the_file_wrote_it() {
    let default_match = offered().match_modes[0].clone();
    let mut draft = Draft::new("session");
    draft.settings.config = serde_json::json!({ "match": default_match.clone() })
        .as_object()
        .cloned()
        .unwrap();
    let taken = form(&[
        ("match", default_match.as_str()),
        ("identityMapping.source", "Oid"),
    ]);
    draft.take(Step::Mapping, &taken, &offered());
    assert_eq!(
        draft.settings.config["match"],
        Value::from(default_match.clone())
    );
    let mut fresh = Draft::new("session");
    fresh.take(Step::Mapping, &taken, &offered());
    assert!(!fresh.settings.config.contains_key("match"));
}
