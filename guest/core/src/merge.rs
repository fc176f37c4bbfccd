//! Combining two queued updates for one prospect into one.
//!
//! Two JSON:API `PATCH` documents for the same `data.type` and `data.id`
//! combine member by member in `data.attributes` and `data.relationships`,
//! the newer value winning: a `PATCH` leaves members it does not name
//! unchanged, so sending the merge equals sending both in order. Anything
//! else — another method, path or headers, a body that is not such a
//! document — does not merge, and the host sends both, in order.

use alloc::borrow::ToOwned;
use alloc::string::ToString;
use serde_json::Value;

use crate::types::{Method, Request};

/// `older` and `newer` as one request, or `None` when they cannot combine.
pub fn merge(older: &Request, newer: &Request) -> Option<Request> {
    if older.method != Method::Patch
        || newer.method != Method::Patch
        || older.key != newer.key
        || older.path != newer.path
        || older.headers != newer.headers
    {
        return None;
    }
    let old: Value = serde_json::from_str(&older.body).ok()?;
    let mut new: Value = serde_json::from_str(&newer.body).ok()?;
    let old_data = old.get("data")?.as_object()?;
    let new_data = new.get_mut("data")?.as_object_mut()?;
    if old_data.get("type") != new_data.get("type") || old_data.get("id") != new_data.get("id") {
        return None;
    }
    for member in ["attributes", "relationships"] {
        match (old_data.get(member), new_data.get_mut(member)) {
            (None, _) => {}
            (Some(Value::Object(old_members)), Some(Value::Object(new_members))) => {
                for (name, value) in old_members {
                    if !new_members.contains_key(name) {
                        new_members.insert(name.clone(), value.clone());
                    }
                }
            }
            (Some(old_members @ Value::Object(_)), None) => {
                new_data.insert(member.to_owned(), old_members.clone());
            }
            _ => return None,
        }
    }
    // Any other member of the older `data` (links, meta) must not be lost.
    if old_data.keys().any(|name| !new_data.contains_key(name)) {
        return None;
    }
    let mut audiences = older.audiences.clone();
    for a in &newer.audiences {
        if !audiences.contains(a) {
            audiences.push(a.clone());
        }
    }
    Some(Request {
        method: newer.method,
        path: newer.path.clone(),
        headers: newer.headers.clone(),
        body: new.to_string(),
        key: newer.key.clone(),
        audiences,
        ..newer.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Header;
    use serde_json::json;

    fn patch(id: u64, attributes: Value, audiences: &[&str]) -> Request {
        Request {
            method: Method::Patch,
            path: format!("/prospects/{id}"),
            headers: vec![Header {
                name: "Content-Type".into(),
                value: "application/vnd.api+json".into(),
            }],
            body: json!({"data": {"type": "prospect", "id": id, "attributes": attributes}})
                .to_string(),
            key: id.to_string(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            purpose: Default::default(),
            recall: None,
            context: String::new(),
        }
    }

    fn attributes(r: &Request) -> Value {
        serde_json::from_str::<Value>(&r.body).unwrap()["data"]["attributes"].clone()
    }

    #[test]
    fn newer_values_win_per_attribute_and_older_ones_stay() {
        let older = patch(
            7,
            json!({"firstName": "Ada", "custom4": "Active"}),
            &["news"],
        );
        let newer = patch(7, json!({"custom4": "Removed", "title": "CTO"}), &["vip"]);
        let merged = merge(&older, &newer).unwrap();
        assert_eq!(
            attributes(&merged),
            json!({"firstName": "Ada", "custom4": "Removed", "title": "CTO"})
        );
        assert_eq!(merged.audiences, ["news", "vip"]);
        // A null is a value: it clears the field, and wins.
        let cleared = merge(&merged, &patch(7, json!({"title": null}), &[])).unwrap();
        assert_eq!(attributes(&cleared)["title"], Value::Null);
    }

    #[test]
    fn different_resources_or_methods_do_not_merge() {
        let a = patch(7, json!({"firstName": "Ada"}), &[]);
        let mut other_id = patch(8, json!({"firstName": "Bob"}), &[]);
        other_id.key = a.key.clone();
        assert!(merge(&a, &other_id).is_none());
        let mut post = a.clone();
        post.method = Method::Post;
        assert!(merge(&a, &post).is_none());
        let mut not_json = a.clone();
        not_json.body = "not json".into();
        assert!(merge(&a, &not_json).is_none());
    }

    #[test]
    fn members_other_than_attributes_and_relationships_block_a_merge() {
        let mut older = patch(7, json!({"firstName": "Ada"}), &[]);
        older.body =
            json!({"data": {"type": "prospect", "id": 7, "attributes": {}, "meta": {"x": 1}}})
                .to_string();
        let newer = patch(7, json!({"firstName": "Bob"}), &[]);
        assert!(merge(&older, &newer).is_none());
    }
}
