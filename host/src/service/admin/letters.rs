//! The dead letters pages: a list, a page at a time (newest first, read as
//! a page from the journal or the letters stream), each record and API
//! response cut to a preview with a link to the whole letter; and one
//! letter whole.

use super::*;
use crate::read_model::{LetterQuery, LetterView, Shown};

/// A letter as a page shows it.
struct LetterRow {
    id: i64,
    run: i64,
    line: u64,
    code: String,
    reason: String,
    status: Option<u16>,
    record: String,
    /// The whole record's size, when only a preview is shown.
    record_cut: Option<u64>,
    response: Option<String>,
    response_cut: Option<u64>,
}

/// `text` pretty-printed when it is JSON.
fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// A text as a page shows it: whole (pretty when JSON), or its start and
/// its whole size.
fn shown(text: Shown) -> (String, Option<u64>) {
    match text {
        Shown::Whole(text) => (pretty(&text), None),
        Shown::Cut { start, bytes } => (start, Some(bytes)),
    }
}

impl From<LetterView> for LetterRow {
    fn from(l: LetterView) -> Self {
        let (record, record_cut) = shown(l.record);
        let (response, response_cut) = match l.response.map(shown) {
            Some((text, cut)) => (Some(text), cut),
            None => (None, None),
        };
        Self {
            id: l.id,
            run: l.run,
            line: l.line,
            code: l.code,
            reason: l.reason,
            status: l.status,
            record,
            record_cut,
            response,
            response_cut,
        }
    }
}

#[derive(Template)]
#[template(path = "letters.html")]
struct LettersPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    /// Letters can be replayed (the destination is running).
    enabled: bool,
    code: String,
    run: String,
    letters: Vec<LetterRow>,
    /// Where the next (older) page starts, when there is one.
    older: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct LetterParams {
    #[serde(default)]
    code: String,
    #[serde(default)]
    run: String,
    #[serde(default)]
    before: String,
}

fn bad_filter(session: &Session, what: &str) -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        Some(&session.csrf),
        "Bad filter",
        &format!("The {what} filter must be a number."),
    )
}

pub(super) async fn letters(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path(name): Path<String>,
    Query(query): Query<LetterParams>,
) -> Response {
    let session = operator.session;
    let served = match find(&service, &name, &session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    let number = |text: &str| match text.trim() {
        "" => Ok(None),
        text => text.parse::<i64>().map(Some),
    };
    let Ok(run) = number(&query.run) else {
        return bad_filter(&session, "run");
    };
    let Ok(before) = number(&query.before) else {
        return bad_filter(&session, "page");
    };
    let code = Some(query.code.trim().to_owned()).filter(|c| !c.is_empty());
    let wanted = LetterQuery {
        run,
        code,
        before,
        newest: PAGE,
    };
    let letters: Vec<LetterRow> = match served.read.letters(wanted).await {
        Ok(letters) => letters.into_iter().map(LetterRow::from).collect(),
        Err(e) => return unreadable(&session, &e),
    };
    let enabled = served.read.replayable();
    let older = (letters.len() >= PAGE)
        .then(|| letters.last().map(|l| l.id))
        .flatten();
    html(
        StatusCode::OK,
        &LettersPage {
            csrf: Some(&session.csrf),
            name: &name,
            enabled,
            code: query.code,
            run: query.run,
            letters,
            older,
        },
    )
}

#[derive(Template)]
#[template(path = "letter.html")]
struct LetterPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    enabled: bool,
    l: LetterRow,
}

/// One letter, whole.
pub(super) async fn letter(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path((name, id)): Path<(String, i64)>,
) -> Response {
    let session = operator.session;
    let served = match find(&service, &name, &session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    let found = match served.read.letter(id).await {
        Ok(found) => found.map(|l| (LetterRow::from(l), served.read.replayable())),
        Err(e) => return unreadable(&session, &e),
    };
    let Some((l, enabled)) = found else {
        return not_found(&session);
    };
    html(
        StatusCode::OK,
        &LetterPage {
            csrf: Some(&session.csrf),
            name: &name,
            enabled,
            l,
        },
    )
}

fn not_found(session: &Session) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        Some(&session.csrf),
        "Not found",
        "No such dead letter.",
    )
}
