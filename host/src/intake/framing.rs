//! Reading an intake body into records: NDJSON (one record per line) or a
//! JSON array. Only a body that cannot be split into records at all is
//! refused — an array that does not parse (or is not UTF-8) — and the
//! error names the line. An NDJSON line is a record whatever it holds:
//! one that is not UTF-8 is an invalid entry (`invalid-record`), one that
//! is not JSON goes to the component like any record (which calls it
//! `not-json`), as in a command-line run, so one bad line never refuses
//! the rest of the batch. A record over the size limit is an invalid
//! entry too, not a failed request.

use serde_json::value::RawValue;

use crate::input::{Item, Refused};

/// How much of a record too large to take is kept for its dead letter.
const TOO_LARGE_PREFIX_BYTES: usize = 1024;

/// The two body formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    JsonArray,
}

impl Format {
    /// The format a `Content-Type` names (parameters such as `charset`
    /// ignored), if it is one of the two.
    pub fn of_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(Self::Ndjson)
            }
            "application/json" => Some(Self::JsonArray),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("line {line} is not valid UTF-8")]
    NotUtf8 { line: u64 },
    #[error("the body is not a JSON array of records (line {line}, column {column}): {detail}")]
    NotAnArray {
        line: u64,
        column: u64,
        detail: String,
    },
    #[error("the body holds no records")]
    Empty,
}

/// The records of `body`, in order; `Item::line` is the record's position
/// in the batch counted from 1 (blank NDJSON lines are not records).
pub fn records(
    body: &[u8],
    format: Format,
    max_record_bytes: usize,
) -> Result<Vec<Item>, FramingError> {
    let items: Vec<Item> = match format {
        Format::Ndjson => body
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| !line.trim_ascii().is_empty())
            .enumerate()
            .map(|(index, line)| ndjson_item(index as u64 + 1, line, max_record_bytes))
            .collect(),
        Format::JsonArray => {
            let text = std::str::from_utf8(body).map_err(|e| FramingError::NotUtf8 {
                line: line_of(body, e.valid_up_to()),
            })?;
            serde_json::from_str::<Vec<&RawValue>>(text)
                .map_err(|e| FramingError::NotAnArray {
                    line: e.line() as u64,
                    column: e.column() as u64,
                    detail: e.to_string(),
                })?
                .into_iter()
                .enumerate()
                .map(|(index, text)| item(index as u64 + 1, text.get(), max_record_bytes))
                .collect()
        }
    };
    if items.is_empty() {
        return Err(FramingError::Empty);
    }
    Ok(items)
}

/// An NDJSON line as a record: one that is not UTF-8 keeps its text (with
/// the bad bytes replaced) for its dead letter.
fn ndjson_item(position: u64, line: &[u8], max_record_bytes: usize) -> Item {
    match std::str::from_utf8(line) {
        Ok(text) => item(position, text, max_record_bytes),
        Err(e) => {
            let mut item = item(position, &String::from_utf8_lossy(line), max_record_bytes);
            if item.refused.is_none() {
                item.refused = Some(Refused {
                    code: "invalid-record",
                    message: format!(
                        "record {} is not valid UTF-8 (byte {})",
                        position - 1,
                        e.valid_up_to()
                    ),
                });
            }
            item
        }
    }
}

fn item(position: u64, text: &str, max_record_bytes: usize) -> Item {
    let (text, refused) = if text.len() > max_record_bytes {
        let mut end = TOO_LARGE_PREFIX_BYTES.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (
            text[..end].to_owned(),
            Some(Refused {
                code: "record-too-large",
                message: format!(
                    "record {} is {} bytes, over the {max_record_bytes}-byte limit (max_record_bytes)",
                    position - 1,
                    text.len()
                ),
            }),
        )
    } else {
        (text.to_owned(), None)
    };
    Item {
        line: position,
        text,
        refused,
        checkpoint: None,
        replay: None,
    }
}

/// The line (from 1) that byte `offset` of `body` is on.
fn line_of(body: &[u8], offset: usize) -> u64 {
    body[..offset.min(body.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.text.as_str()).collect()
    }

    #[test]
    fn ndjson_lines_are_records_and_blank_lines_are_not() {
        let items = records(b"{\"a\":1}\r\n\n  \n[2]\n", Format::Ndjson, 100).unwrap();
        assert_eq!(texts(&items), ["{\"a\":1}", "[2]"]);
        assert_eq!(items[1].line, 2);
    }

    #[test]
    fn an_array_keeps_each_element_as_written() {
        let items = records(b"[ {\"a\": 1} , {\"b\":[2]} ]", Format::JsonArray, 100).unwrap();
        assert_eq!(texts(&items), ["{\"a\": 1}", "{\"b\":[2]}"]);
    }

    fn framing(body: &[u8], format: Format) -> FramingError {
        match records(body, format, 100) {
            Err(e) => e,
            Ok(items) => panic!("{} records accepted", items.len()),
        }
    }

    #[test]
    fn bad_framing_names_the_line() {
        assert_eq!(
            framing(b"[{},\n\xff]", Format::JsonArray),
            FramingError::NotUtf8 { line: 2 }
        );
        assert!(matches!(
            framing(b"[{},\n{", Format::JsonArray),
            FramingError::NotAnArray { line: 2, .. }
        ));
        assert!(matches!(
            framing(b"{\"not\": \"an array\"}", Format::JsonArray),
            FramingError::NotAnArray { .. }
        ));
        assert_eq!(framing(b"\n\n", Format::Ndjson), FramingError::Empty);
        assert_eq!(framing(b"[]", Format::JsonArray), FramingError::Empty);
    }

    #[test]
    fn a_bad_ndjson_line_is_a_record_of_its_own_and_the_rest_stand() {
        let items = records(b"{}\n{oops\n\xffx\n{\"a\":1}\n", Format::Ndjson, 100).unwrap();
        assert_eq!(texts(&items), ["{}", "{oops", "\u{fffd}x", "{\"a\":1}"]);
        // Not JSON: the component's to judge, like any record.
        assert!(items[1].refused.is_none());
        let refused = items[2].refused.as_ref().expect("not UTF-8 is refused");
        assert_eq!(refused.code, "invalid-record");
        assert!(refused.message.starts_with("record 2 is not valid UTF-8"));
        assert!(items[0].refused.is_none() && items[3].refused.is_none());
        assert_eq!(items[3].line, 4);
    }

    #[test]
    fn a_record_too_large_is_refused_alone() {
        let big = format!("{{\"v\":\"{}\"}}", "é".repeat(600));
        let body = format!("{{}}\n{big}\n{{}}\n");
        let items = records(body.as_bytes(), Format::Ndjson, 100).unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].refused.is_none() && items[2].refused.is_none());
        let refused = items[1].refused.as_ref().unwrap();
        assert_eq!(refused.code, "record-too-large");
        assert!(
            refused.message.starts_with("record 1 is 1208 bytes"),
            "{}",
            refused.message
        );
        assert!(items[1].text.len() <= TOO_LARGE_PREFIX_BYTES);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Format::of_content_type("application/x-ndjson; charset=utf-8"),
            Some(Format::Ndjson)
        );
        assert_eq!(
            Format::of_content_type("Application/JSON"),
            Some(Format::JsonArray)
        );
        assert_eq!(Format::of_content_type("text/plain"), None);
        assert_eq!(Format::of_content_type(""), None);
    }
}
