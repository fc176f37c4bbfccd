//! Reading an intake body into records: NDJSON (one record per line) or a
//! JSON array. The framing must be sound for anything to be accepted — a
//! body that is not UTF-8, a line that is not JSON, an array that does not
//! parse — and the error names the line; what a record means is the
//! component's business (a record it cannot use becomes an invalid entry).
//! A record over the size limit is an invalid entry too, not a failed
//! request.

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
    #[error("line {line} is not JSON: {detail}")]
    NotJson { line: u64, detail: String },
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
    let text = std::str::from_utf8(body).map_err(|e| FramingError::NotUtf8 {
        line: line_of(body, e.valid_up_to()),
    })?;
    let texts: Vec<&str> = match format {
        Format::Ndjson => {
            let mut texts = Vec::new();
            for (number, line) in text.split('\n').enumerate() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.trim().is_empty() {
                    continue;
                }
                // A record too large is refused whatever it holds.
                if line.len() <= max_record_bytes
                    && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line)
                {
                    return Err(FramingError::NotJson {
                        line: number as u64 + 1,
                        detail: e.to_string(),
                    });
                }
                texts.push(line);
            }
            texts
        }
        Format::JsonArray => serde_json::from_str::<Vec<&RawValue>>(text)
            .map_err(|e| FramingError::NotAnArray {
                line: e.line() as u64,
                column: e.column() as u64,
                detail: e.to_string(),
            })?
            .into_iter()
            .map(RawValue::get)
            .collect(),
    };
    if texts.is_empty() {
        return Err(FramingError::Empty);
    }
    Ok(texts
        .into_iter()
        .enumerate()
        .map(|(index, text)| item(index as u64 + 1, text, max_record_bytes))
        .collect())
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
        position: None,
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
        let not_json = framing(b"{}\n{}\n{oops\n", Format::Ndjson).to_string();
        assert!(not_json.starts_with("line 3 is not JSON: "), "{not_json}");
        assert_eq!(
            framing(b"{}\n\xff\n", Format::Ndjson),
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
