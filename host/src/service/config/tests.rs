use super::*;

const HASH: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

#[test]
fn a_minimal_file_gets_the_defaults() {
    let file = ServiceFile::parse(
        "[[destinations]]\nname = \"crm\"\nconfig = { name = \"x\" }\n",
        Path::new("/etc/svc"),
    )
    .unwrap();
    assert_eq!(file.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(file.state_dir, Path::new("/etc/svc/state"));
    assert_eq!(file.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    let crm = &file.destinations[0];
    assert!(crm.enabled);
    assert_eq!(crm.config, r#"{"name":"x"}"#);
    assert_eq!(crm.max_queued_updates, DEFAULT_MAX_QUEUED_UPDATES);
}

#[test]
fn every_problem_is_reported_with_its_destination_and_setting() {
    let text = format!(
        r#"
listen = "0.0.0.0:8088"
[accounts.ops]
rate_limit = 0
[[destinations]]
name = "bad name"
config = "missing.json"
[[destinations]]
name = "twin"
config = {{ a = 1 }}
ingest_keys = ["plaintext-key"]
concurrency = 0
[[destinations]]
name = "twin"
config = {{ a = 1 }}
api_base = "not a url"
ingest_keys = ["{HASH}"]
"#
    );
    let problems = ServiceFile::parse(&text, Path::new("/nonexistent"))
        .unwrap_err()
        .problems;
    let expected = [
        "account \"ops\": rate_limit",
        "destination \"bad name\": name",
        "destination \"bad name\": config: cannot read /nonexistent/missing.json",
        "destination \"twin\": ingest_keys[0]",
        "destination \"twin\": concurrency",
        "destination \"twin\": name: used by another destination",
        "destination \"twin\": api_base",
        "listen: 0.0.0.0:8088 is not a loopback address",
    ];
    for wanted in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(wanted)),
            "{wanted:?} not in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

#[test]
fn the_cluster_section_has_defaults_and_bounds() {
    let minimal = "[[destinations]]\nname = \"crm\"\nconfig = {}\n";
    let file = ServiceFile::parse(minimal, Path::new(".")).unwrap();
    assert_eq!(file.cluster, ClusterFileSettings::default());
    let set = format!("[cluster]\npartitions = 64\nlease_secs = 4\nreplicas = 1\n{minimal}");
    let file = ServiceFile::parse(&set, Path::new(".")).unwrap();
    assert_eq!(file.cluster.partitions, 64);
    assert_eq!(file.cluster.lease, Duration::from_secs(4));
    assert_eq!(file.cluster.replicas, 1);
    let wrong = format!(
        "[cluster]\npartitions = 0\nlease_secs = 1\nreplicas = 9\nwindow_records = 0\n{minimal}"
    );
    let problems = ServiceFile::parse(&wrong, Path::new("."))
        .unwrap_err()
        .problems;
    assert_eq!(
        problems,
        [
            "cluster: partitions must be 1 to 999",
            "cluster: lease_secs must be 2 to 300",
            "cluster: replicas must be 1 to 5",
            "cluster: window_records must be at least 1",
        ]
    );
    let typo = format!("[cluster]\npartition = 4\n{minimal}");
    let problems = ServiceFile::parse(&typo, Path::new("."))
        .unwrap_err()
        .problems;
    assert!(problems[0].contains("partition"), "{problems:?}");
}

#[test]
fn duplicate_names_and_unknown_settings_are_refused() {
    let twice = "[[destinations]]\nname = \"a\"\nconfig = {}\n[[destinations]]\nname = \"a\"\nconfig = {}\n";
    let problems = ServiceFile::parse(twice, Path::new("."))
        .unwrap_err()
        .problems;
    assert_eq!(
        problems,
        ["destination \"a\": name: used by another destination"]
    );
    let typo = "[[destinations]]\nname = \"a\"\nconfig = {}\nenabeld = false\n";
    let problems = ServiceFile::parse(typo, Path::new("."))
        .unwrap_err()
        .problems;
    assert!(problems[0].contains("enabeld"), "{problems:?}");
}

#[test]
fn the_admin_section_needs_a_user_and_a_password_hash() {
    let text = "[admin]\nuser = \" \"\npassword_hash = \"plaintext\"\n[[destinations]]\nname = \"a\"\nconfig = {}\n";
    let problems = ServiceFile::parse(text, Path::new("."))
        .unwrap_err()
        .problems;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("admin: user"), "{problems:?}");
    assert!(
        problems[1].starts_with("admin: password_hash: not a password hash"),
        "{problems:?}"
    );
    let good = "[admin]\nuser = \"ops\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$4T4g+BWN2Aksu06wLNxaUA$meUqUye6Ui2NaJc5G+gnfCDejmlGtKQ0jC2psy+cvH4\"\n[[destinations]]\nname = \"a\"\nconfig = {}\n";
    let admin = ServiceFile::parse(good, Path::new("."))
        .unwrap()
        .admin
        .unwrap();
    assert_eq!(admin.session, Duration::from_secs(8 * 3_600));
    assert!(!admin.secure_cookies);
}

#[test]
fn a_public_listener_needs_keys_for_every_destination() {
    let keyed = format!(
        "listen = \"0.0.0.0:1\"\ningest_keys = [\"{HASH}\"]\n[[destinations]]\nname = \"a\"\nconfig = {{}}\n"
    );
    assert!(ServiceFile::parse(&keyed, Path::new(".")).is_ok());
    let local = "[[destinations]]\nname = \"a\"\nconfig = {}\n";
    let file = ServiceFile::parse(local, Path::new(".")).unwrap();
    assert!(
        file.clone()
            .listening_on("127.0.0.1:9".parse().unwrap())
            .is_ok()
    );
    assert!(file.listening_on("10.0.0.1:9".parse().unwrap()).is_err());
}

#[test]
fn a_toml_error_names_the_line_but_never_quotes_it() {
    // A missing quote on the webhook line: the line holds the secret.
    let text =
        "stall_alert_secs = 60\nalert_webhook = \"https://hooks.example.com/T0/SECRET-PATH\n";
    let problems = ServiceFile::parse(text, Path::new("."))
        .unwrap_err()
        .problems;
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("TOML: line 2, column "),
        "{problems:?}"
    );
    assert!(!problems[0].contains("SECRET"), "{problems:?}");
}

#[test]
fn a_destination_alerts_where_it_says_and_else_where_the_file_does() {
    let file = ServiceFile::parse(
        r#"
alert_webhook = "https://hooks.example/all?token=shared"
stall_alert_secs = 600
[[destinations]]
name = "own"
config = { name = "x" }
alert_webhook = "https://hooks.example/own?token=mine"
alert_command = "logger"
stall_alert_secs = 120
[[destinations]]
name = "shared"
config = { name = "y" }
"#,
        Path::new("/etc/svc"),
    )
    .unwrap();
    let own = file.alerts_of(&file.destinations[0]);
    assert_eq!(
        own.webhook.as_deref(),
        Some("https://hooks.example/own?token=mine")
    );
    assert_eq!(own.command.as_deref(), Some("logger"));
    assert_eq!(own.stall_after, Some(Duration::from_secs(120)));
    let shared = file.alerts_of(&file.destinations[1]);
    assert_eq!(
        shared.webhook.as_deref(),
        Some("https://hooks.example/all?token=shared")
    );
    assert_eq!(shared.command, None);
    assert_eq!(shared.stall_after, Some(Duration::from_secs(600)));
}

#[test]
fn a_destinations_bad_webhook_is_named_without_repeating_it() {
    let problems = ServiceFile::parse(
        "[[destinations]]\nname = \"crm\"\nconfig = { name = \"x\" }\nalert_webhook = \"ftp://secret-token@x\"\nstall_alert_secs = 0\n",
        Path::new("/etc/svc"),
    )
    .unwrap_err()
    .problems;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("destination \"crm\": alert_webhook")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("destination \"crm\": stall_alert_secs")),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.contains("secret-token")),
        "{problems:?}"
    );
}
