//! Setting destinations up from the pages, step by step: details, account,
//! alerts, audiences with their Mapping IDs, the identity and attribute
//! mappings, then a review of the resulting settings and what saving
//! changes. Every step is checked by the component itself (its
//! `configured.create`), its errors shown beside the fields they name;
//! saving changes the destinations file as [`crate::service::editing`]
//! does. Enabling and disabling a destination are one form each.

pub mod draft;
pub mod drafts;
pub mod fields;
pub mod schema;
pub mod step;

use super::*;
use crate::service::editing::{Edit, Preview, SaveError};
use draft::Draft;
use fields::{Section, place};
use schema::Offered;
use step::Step;

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/admin/destinations/new", axum::routing::post(begin_new))
        .route(
            "/admin/destinations/{name}/edit",
            axum::routing::post(begin_edit),
        )
        .route(
            "/admin/destinations/{name}/enabled",
            axum::routing::post(enable),
        )
        .route("/admin/drafts/{id}/save", axum::routing::post(save))
        .route("/admin/drafts/{id}/{step}", get(show_step).post(take_step))
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    enabled: String,
}

fn refused(session: &Session, status: StatusCode, heading: &str, message: &str) -> Response {
    error_page(status, Some(&session.csrf), heading, message)
}

/// The page saying `error` stopped what the operator asked for.
fn failed(
    session: &Session,
    status: StatusCode,
    heading: &str,
    error: impl std::fmt::Display,
) -> Response {
    refused(session, status, heading, &sentence(&error.to_string()))
}

fn to_step(id: &str, step: Step) -> Response {
    Redirect::to(&format!("/admin/drafts/{id}/{}", step.slug())).into_response()
}

/// Whether `operator` may begin an edit here with a form carrying `csrf`.
fn may_begin(service: &Service, operator: &Operator, csrf: &str) -> Result<(), Refused> {
    check_csrf(&operator.session, csrf)?;
    service.may_edit().map_err(|e| {
        Box::new(failed(
            &operator.session,
            StatusCode::CONFLICT,
            "Not here",
            e,
        ))
    })
}

/// "New destination".
async fn begin_new(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = may_begin(&service, &operator, &form.csrf) {
        return *refused;
    }
    let id = service.drafts().begin(Draft::new(&operator.id));
    to_step(&id, Step::Details)
}

/// "Edit" on a destination's page.
async fn begin_edit(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = may_begin(&service, &operator, &form.csrf) {
        return *refused;
    }
    let served = match find(&service, &name, &operator.session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    let draft = Draft::of(&operator.id, &served.spec, &served.account);
    let id = service.drafts().begin(draft);
    to_step(&id, Step::Details)
}

#[derive(Template)]
#[template(path = "edit_step.html")]
struct StepPage<'a> {
    csrf: Option<&'a str>,
    heading: String,
    draft: &'a str,
    steps: Vec<StepLink>,
    step: &'static str,
    back: Option<&'static str>,
    problems: Vec<String>,
    sections: Vec<Section>,
    targets: Vec<String>,
    /// On the account step: the account's connection, and whether a
    /// browser login can be started for it.
    connection: Option<(String, String, bool)>,
}

struct StepLink {
    slug: &'static str,
    title: &'static str,
    current: bool,
}

fn step_links(current: Step) -> Vec<StepLink> {
    Step::ALL
        .into_iter()
        .map(|s| StepLink {
            slug: s.slug(),
            title: s.title(),
            current: s == current,
        })
        .collect()
}

fn heading(draft: &Draft) -> String {
    match &draft.original {
        Some(name) => format!("Edit {name}"),
        None => "New destination".into(),
    }
}

/// The draft in the URL, if this session began it.
fn draft_of(service: &Service, id: &str, operator: &Operator) -> Result<Draft, Refused> {
    service.drafts().get(id, &operator.id).ok_or_else(|| {
        Box::new(refused(
            &operator.session,
            StatusCode::NOT_FOUND,
            "No such draft",
            "This setup is not open (it expired, was saved, or belongs to another session). Start again from the destinations page.",
        ))
    })
}

fn step_of(slug: &str, session: &Session) -> Result<Step, Refused> {
    Step::from_slug(slug).ok_or_else(|| {
        Box::new(refused(
            session,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such step.",
        ))
    })
}

/// The component a draft's destination runs, and what its schema offers.
async fn offered(
    service: &Service,
    draft: &Draft,
) -> Result<(Arc<crate::engine::Runtime>, Offered), String> {
    let spec = draft.original.as_ref().and_then(|name| {
        service
            .current()
            .destinations
            .get(name)
            .map(|d| d.spec.clone())
    });
    let runtime = service.component_of(spec.as_ref()).await?;
    let offered = Offered::read(&runtime.describe().config_schema);
    Ok((runtime, offered))
}

/// The account a draft names, as the service would make it for the
/// destination (its tokens in the service's store), for an account the
/// service does not use yet.
pub(super) async fn account_of(
    service: &Service,
    draft: &Draft,
) -> Result<crate::account::Account, String> {
    let (runtime, _) = offered(service, draft).await?;
    service
        .account_for(&draft.settings.account, runtime, draft.config_json())
        .await
}

/// The component's problems with the draft's configuration, by setting.
async fn component_problems(
    runtime: Arc<crate::engine::Runtime>,
    config: String,
) -> Vec<(String, String)> {
    let checked = tokio::task::spawn_blocking(move || runtime.configure(&config)).await;
    match checked {
        Ok(Ok(Ok(_))) => Vec::new(),
        Ok(Ok(Err(errors))) => errors.into_iter().map(|e| (e.setting, e.message)).collect(),
        Ok(Err(e)) => vec![(String::new(), format!("the component failed: {e}"))],
        Err(e) => vec![(String::new(), format!("the check did not finish: {e}"))],
    }
}

async fn show_step(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path((id, slug)): Path<(String, String)>,
) -> Response {
    let draft = match draft_of(&service, &id, &operator) {
        Ok(draft) => draft,
        Err(response) => return *response,
    };
    let step = match step_of(&slug, &operator.session) {
        Ok(step) => step,
        Err(response) => return *response,
    };
    if step == Step::Review {
        return review(&service, &operator, &id, &draft, Vec::new()).await;
    }
    step_page(
        &service,
        &operator,
        &id,
        &draft,
        step,
        Vec::new(),
        StatusCode::OK,
    )
    .await
}

async fn step_page(
    service: &Service,
    operator: &Operator,
    id: &str,
    draft: &Draft,
    step: Step,
    problems: Vec<(String, String)>,
    status: StatusCode,
) -> Response {
    let (_, offered) = match offered(service, draft).await {
        Ok(found) => found,
        Err(e) => {
            return failed(
                &operator.session,
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                e,
            );
        }
    };
    let set = service.current();
    let has_account = |name: &str| set.accounts.contains_key(name);
    let mut sections = draft.sections(step, &offered, &has_account);
    let problems = place(&mut sections, problems);
    let account = match set.accounts.get(&draft.settings.account) {
        Some(account) => Some(account.clone()),
        None if step == Step::Account && !draft.settings.account.is_empty() => {
            account_of(service, draft).await.ok().map(Arc::new)
        }
        None => None,
    };
    let connection = match (step, account) {
        (Step::Account, Some(account)) => {
            let now_secs = crate::clock::now_ms() / 1000;
            let state = match account.connection(now_secs).await {
                crate::account::Connection::Fixed => "uses the fixed access token".to_owned(),
                crate::account::Connection::NeedsLogin(why) => format!("needs a login ({why})"),
                crate::account::Connection::Connected { .. } => "is connected ✓".to_owned(),
            };
            Some((account.name.clone(), state, account.connectable()))
        }
        _ => None,
    };
    html(
        status,
        &StepPage {
            csrf: Some(&operator.session.csrf),
            heading: heading(draft),
            draft: id,
            steps: step_links(step),
            step: step.slug(),
            back: step.previous().map(Step::slug),
            problems: problems.iter().map(|p| sentence(p)).collect(),
            sections,
            targets: offered.targets,
            connection,
        },
    )
}

async fn take_step(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path((id, slug)): Path<(String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    if let Err(refused) = check_csrf(&operator.session, csrf) {
        return *refused;
    }
    let mut draft = match draft_of(&service, &id, &operator) {
        Ok(draft) => draft,
        Err(response) => return *response,
    };
    let step = match step_of(&slug, &operator.session) {
        Ok(step) => step,
        Err(response) => return *response,
    };
    let (runtime, offered) = match offered(&service, &draft).await {
        Ok(found) => found,
        Err(e) => {
            return failed(
                &operator.session,
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                e,
            );
        }
    };
    let mut problems = draft.take(step, &form, &offered);
    if step == Step::Details
        && draft.original.is_none()
        && service
            .current()
            .destinations
            .contains_key(&draft.settings.name)
    {
        problems.push((
            "destination".into(),
            "Another destination has this short name.".into(),
        ));
    }
    let more_rows = form.iter().any(|(k, v)| k == "go" && v == "more");
    if more_rows {
        draft.blank_rows = (draft.blank_rows + 3).min(draft::MAX_BLANK_ROWS);
    }
    problems.extend(
        component_problems(runtime, draft.config_json())
            .await
            .into_iter()
            .filter(|(setting, _)| step.owns(setting)),
    );
    service.drafts().put(&id, draft.clone());
    if !problems.is_empty() || more_rows {
        let status = if problems.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        return step_page(&service, &operator, &id, &draft, step, problems, status).await;
    }
    to_step(&id, step.next())
}

/// What saving `draft` asks of the service.
fn edit_of(draft: &Draft) -> Edit {
    Edit::Settings {
        original: draft.original.clone(),
        settings: Box::new(draft.settings.clone()),
    }
}

pub(super) struct DiffLine {
    pub(super) class: &'static str,
    pub(super) text: String,
}

#[derive(Template)]
#[template(path = "edit_review.html")]
struct ReviewPage<'a> {
    csrf: Option<&'a str>,
    heading: String,
    draft: &'a str,
    steps: Vec<StepLink>,
    name: &'a str,
    running: bool,
    diff: Vec<DiffLine>,
    consequences: Vec<String>,
    problems: Vec<String>,
}

/// The lines of `before` and `after`, each marked kept, removed or added.
pub(super) fn diff(before: Option<&str>, after: &str) -> Vec<DiffLine> {
    let before = before.unwrap_or_default();
    similar::TextDiff::from_lines(before, after)
        .iter_all_changes()
        .map(|change| DiffLine {
            class: match change.tag() {
                similar::ChangeTag::Equal => "same",
                similar::ChangeTag::Delete => "removed",
                similar::ChangeTag::Insert => "added",
            },
            text: change.value().trim_end_matches('\n').to_owned(),
        })
        .collect()
}

/// The review; `refused`: what a save just met (beyond what the review's
/// own check finds, such as a journal that cannot be opened).
async fn review(
    service: &Service,
    operator: &Operator,
    id: &str,
    draft: &Draft,
    refused_by_save: Vec<String>,
) -> Response {
    let preview = match service.preview(&edit_of(draft)).await {
        Ok(preview) => preview,
        Err(e) => {
            return failed(&operator.session, StatusCode::CONFLICT, "Cannot review", e);
        }
    };
    let Preview {
        before,
        after,
        mut problems,
    } = preview;
    for problem in refused_by_save {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    let after = after.unwrap_or_default();
    let name = &draft.settings.name;
    let running = draft
        .original
        .as_ref()
        .and_then(|n| {
            service
                .current()
                .destinations
                .get(n)
                .map(|d| d.intake.is_some())
        })
        .unwrap_or(false);
    let changed = before.as_deref() != Some(after.as_str());
    let consequences = match (&draft.original, running, changed) {
        (None, _, _) => vec![
            format!("Saving adds {name} to the destinations file and starts it: records posted to /v1/destinations/{name}/records are delivered."),
        ],
        (Some(_), _, false) => vec!["Nothing changes: the settings are as the file has them.".into()],
        (Some(_), true, true) => vec![
            "Saving restarts this destination's delivery in place, without restarting the service: its intake answers 503 for the moment it takes.".into(),
            "Updates already queued stay queued and are sent as they were planned; records received after saving use the new settings.".into(),
        ],
        (Some(_), false, true) => vec!["Saving changes the settings of this destination, which is not running.".into()],
    };
    html(
        if problems.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        },
        &ReviewPage {
            csrf: Some(&operator.session.csrf),
            heading: heading(draft),
            draft: id,
            steps: step_links(Step::Review),
            name,
            running,
            diff: diff(before.as_deref(), &after),
            consequences,
            problems: problems.iter().map(|p| sentence(p)).collect(),
        },
    )
}

async fn save(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = check_csrf(&operator.session, &form.csrf) {
        return *refused;
    }
    let draft = match draft_of(&service, &id, &operator) {
        Ok(draft) => draft,
        Err(response) => return *response,
    };
    if let Some(original) = &draft.original {
        let now = service
            .current()
            .destinations
            .get(original)
            .map(|d| d.spec.clone());
        if now != draft.base {
            return refused(
                &operator.session,
                StatusCode::CONFLICT,
                "Changed meanwhile",
                "This destination's settings changed since you began editing (another operator, or a reload of the file): nothing was saved. Edit it again to start from its current settings.",
            );
        }
    }
    match service.save(&edit_of(&draft), &operator.session.user).await {
        Ok(change) => {
            service.drafts().end(&id);
            Redirect::to(&format!(
                "/admin/destinations/{}",
                urlencoding(&change.destination)
            ))
            .into_response()
        }
        Err(SaveError::Problems(problems)) => {
            tracing::warn!("a change from the status page was refused: {problems}");
            review(&service, &operator, &id, &draft, problems.problems).await
        }
        Err(e) => failed(&operator.session, StatusCode::CONFLICT, "Not saved", e),
    }
}

/// "Enable" / "Disable" on a destination's page.
async fn enable(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = &operator.session;
    if let Err(refused) = check_csrf(session, &form.csrf) {
        return *refused;
    }
    if let Err(response) = find(&service, &name, session) {
        return *response;
    }
    let edit = Edit::Enable {
        name: name.clone(),
        enabled: form.enabled == "yes",
    };
    match service.save(&edit, &session.user).await {
        Ok(_) => {
            Redirect::to(&format!("/admin/destinations/{}", urlencoding(&name))).into_response()
        }
        Err(e) => failed(session, StatusCode::CONFLICT, "Not changed", e),
    }
}

fn urlencoding(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes()).collect()
}
