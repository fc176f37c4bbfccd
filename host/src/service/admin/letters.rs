//! The dead letters pages: a list, a page at a time (newest first, read as
//! a page from the journal or the letters stream), each record and API
//! response cut to a preview with a link to the whole letter; and one
//! letter whole.

use super::*;
use crate::journal::{LetterPreview, PREVIEW_CHARS};

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

/// `text` as a list shows it: whole (pretty) when short, else its start
/// and its size.
fn preview(text: &str) -> (String, Option<u64>) {
    match text.char_indices().nth(PREVIEW_CHARS) {
        None => (pretty(text), None),
        Some((end, _)) => (text[..end].to_owned(), Some(text.len() as u64)),
    }
}

impl From<LetterPreview> for LetterRow {
    fn from(l: LetterPreview) -> Self {
        let cut = |text: &str, bytes: u64| (text.len() as u64) < bytes;
        let record_cut = cut(&l.record, l.record_bytes).then_some(l.record_bytes);
        let response_cut = l
            .response
            .as_deref()
            .filter(|r| cut(r, l.response_bytes))
            .map(|_| l.response_bytes);
        Self {
            id: l.id,
            run: l.run,
            line: l.line,
            code: l.code,
            reason: l.reason,
            status: l.status,
            record: match record_cut {
                Some(_) => l.record,
                None => pretty(&l.record),
            },
            record_cut,
            response: l.response,
            response_cut,
        }
    }
}

impl From<DeadLetter> for LetterRow {
    fn from(l: DeadLetter) -> Self {
        Self {
            id: l.id,
            run: l.run,
            line: l.line,
            code: l.code,
            reason: l.reason,
            status: l.status,
            record: serde_json::to_string_pretty(&l.record).unwrap_or_default(),
            record_cut: None,
            response: l.response,
            response_cut: None,
        }
    }
}

/// A cluster's letter: its id is its sequence in the letters stream, its
/// line the record's place in its intake message.
impl LetterRow {
    fn of_cluster(stored: crate::cluster::letters::Stored, whole: bool) -> Self {
        let l = stored.letter;
        let shown = |text: &str| {
            if whole {
                (pretty(text), None)
            } else {
                preview(text)
            }
        };
        let (record, record_cut) = shown(&l.record);
        let (response, response_cut) = match l.response.as_ref() {
            Some(r) => {
                let (text, cut) = shown(&r.body);
                (Some(text), cut)
            }
            None => (None, None),
        };
        Self {
            id: i64::try_from(stored.id).unwrap_or(i64::MAX),
            run: 0,
            line: l.batch_line.unwrap_or(u64::from(l.index) + 1),
            code: l.code,
            reason: l.reason,
            status: l.response.as_ref().map(|r| r.status),
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
pub(super) struct LetterQuery {
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
    Query(query): Query<LetterQuery>,
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
    let (letters, enabled) = if let Some(worker) = service.worker() {
        let before = before.and_then(|b| u64::try_from(b).ok());
        let letters = match worker.letters_of(&name, PAGE, before).await {
            Ok(letters) => letters,
            Err(e) => return unreadable(&session, &e),
        };
        let rows: Vec<LetterRow> = letters
            .into_iter()
            .rev()
            .filter(|l| code.as_ref().is_none_or(|c| *c == l.letter.code))
            .map(|l| LetterRow::of_cluster(l, false))
            .collect();
        (rows, served.clustered)
    } else {
        let filter = LetterFilter {
            run,
            code,
            before,
            newest: Some(PAGE),
            ..LetterFilter::default()
        };
        let previews = read_journal(&service, &served, move |journal| {
            journal.letter_previews(&filter)
        })
        .await;
        match previews {
            Ok(previews) => (
                previews.into_iter().map(LetterRow::from).collect(),
                served.stream.is_some(),
            ),
            Err(e) => return unreadable(&session, &e),
        }
    };
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
    let found = if let Some(worker) = service.worker() {
        let Ok(id) = u64::try_from(id) else {
            return not_found(&session);
        };
        match worker.letter_of(&name, id).await {
            Ok(found) => found.map(|l| (LetterRow::of_cluster(l, true), served.clustered)),
            Err(e) => return unreadable(&session, &e),
        }
    } else {
        let filter = LetterFilter {
            ids: vec![id],
            include_replayed: true,
            ..LetterFilter::default()
        };
        match read_journal(&service, &served, move |j| j.dead_letters(&filter)).await {
            Ok(mut found) => found
                .pop()
                .map(|l| (LetterRow::from(l), served.stream.is_some())),
            Err(e) => return unreadable(&session, &e),
        }
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
