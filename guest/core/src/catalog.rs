//! Outreach prospect attributes: which can be written, and as what type.
//! Source: Outreach API v2 reference, Prospect resource.

/// The JSON type Outreach expects for a writable prospect attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeKind {
    /// A string of at most `max_chars` characters.
    Text {
        max_chars: usize,
    },
    /// An array of strings, each at most `max_chars` characters.
    TextList {
        max_chars: usize,
    },
    Boolean,
    /// Any JSON number.
    Number,
    /// A whole number.
    Integer,
    /// A calendar date, sent as `YYYY-MM-DD`.
    Date,
}

/// Highest custom field number Outreach has (`custom150`).
pub const MAX_CUSTOM_FIELD: u32 = 150;
/// Length limit of `custom1`..`custom150`.
pub const CUSTOM_FIELD_MAX_CHARS: usize = 32_000;

const SHORT: AttributeKind = AttributeKind::Text { max_chars: 255 };
const URL: AttributeKind = AttributeKind::Text { max_chars: 1_000 };
const LONG: AttributeKind = AttributeKind::Text { max_chars: 65_535 };
const LIST: AttributeKind = AttributeKind::TextList { max_chars: 255 };

/// Writable attributes other than `customN`, sorted by name.
const WRITABLE: &[(&str, AttributeKind)] = &[
    ("addressCity", SHORT),
    ("addressCountry", SHORT),
    ("addressState", SHORT),
    ("addressStreet", SHORT),
    ("addressStreet2", SHORT),
    ("addressZip", SHORT),
    ("angelListUrl", URL),
    ("callOptedOut", AttributeKind::Boolean),
    ("callsOptStatus", SHORT),
    ("campaignName", SHORT),
    ("company", SHORT),
    ("dateOfBirth", AttributeKind::Date),
    ("degree", SHORT),
    ("emailOptedOut", AttributeKind::Boolean),
    ("emails", LIST),
    ("emailsOptStatus", SHORT),
    ("eventName", SHORT),
    ("externalId", SHORT),
    ("externalOwner", SHORT),
    ("externalSource", SHORT),
    ("facebookUrl", URL),
    ("firstName", SHORT),
    ("gender", SHORT),
    ("githubUrl", URL),
    ("githubUsername", SHORT),
    ("googlePlusUrl", URL),
    ("graduationDate", AttributeKind::Date),
    ("homePhones", LIST),
    ("jobStartDate", AttributeKind::Date),
    ("lastName", SHORT),
    ("linkedInConnections", AttributeKind::Integer),
    ("linkedInId", SHORT),
    ("linkedInUrl", URL),
    ("middleName", SHORT),
    ("mobilePhones", LIST),
    ("nickname", SHORT),
    ("occupation", SHORT),
    ("optedOut", AttributeKind::Boolean),
    ("otherPhones", LIST),
    ("personalNote1", LONG),
    ("personalNote2", LONG),
    ("preferredContact", SHORT),
    ("quoraUrl", URL),
    ("region", SHORT),
    ("school", SHORT),
    ("score", AttributeKind::Number),
    ("smsOptStatus", SHORT),
    ("smsOptedOut", AttributeKind::Boolean),
    ("source", SHORT),
    ("specialties", LONG),
    ("stackOverflowId", SHORT),
    ("stackOverflowUrl", URL),
    ("tags", LIST),
    ("timeZone", SHORT),
    ("title", SHORT),
    ("twitterUrl", URL),
    ("twitterUsername", SHORT),
    ("voipPhones", LIST),
    ("websiteUrl1", LONG),
    ("websiteUrl2", LONG),
    ("websiteUrl3", LONG),
    ("workPhones", LIST),
];

/// Attributes Outreach maintains itself; a mapping to one is refused.
const READ_ONLY: &[&str] = &[
    "availableAt",
    "bouncedAt",
    "clickCount",
    "contactHistogram",
    "createdAt",
    "engagedAt",
    "engagedScore",
    "firstName_phonetic",
    "id",
    "lastName_phonetic",
    "linkedInSlug",
    "name",
    "openCount",
    "optedOutAt",
    "replyCount",
    "timeZoneIana",
    "timeZoneInferred",
    "touchedAt",
    "trashedAt",
    "updatedAt",
];

/// Where a mapping target stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Writable(AttributeKind),
    /// `customN` with N in 1..=150.
    Custom(u32),
    ReadOnly,
    Unknown,
}

/// Looks up a prospect attribute name (case-sensitive, as Outreach is).
pub fn lookup(name: &str) -> Target {
    if let Some(n) = custom_field_number(name) {
        return if (1..=MAX_CUSTOM_FIELD).contains(&n) {
            Target::Custom(n)
        } else {
            Target::Unknown
        };
    }
    if let Ok(i) = WRITABLE.binary_search_by(|(n, _)| n.cmp(&name)) {
        return Target::Writable(WRITABLE[i].1);
    }
    if READ_ONLY.contains(&name) {
        Target::ReadOnly
    } else {
        Target::Unknown
    }
}

/// `custom12` → 12. Digits only, no leading zero, no sign.
pub fn custom_field_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("custom")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Kind of a custom field.
pub const CUSTOM_KIND: AttributeKind = AttributeKind::Text {
    max_chars: CUSTOM_FIELD_MAX_CHARS,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_table_is_sorted_for_binary_search() {
        assert!(WRITABLE.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn custom_fields_are_bounded() {
        assert_eq!(lookup("custom1"), Target::Custom(1));
        assert_eq!(lookup("custom150"), Target::Custom(150));
        assert_eq!(lookup("custom151"), Target::Unknown);
        assert_eq!(lookup("custom0"), Target::Unknown);
        assert_eq!(lookup("custom07"), Target::Unknown);
        assert_eq!(lookup("createdAt"), Target::ReadOnly);
        assert_eq!(lookup("firstName"), Target::Writable(SHORT));
        assert_eq!(lookup("emails"), Target::Writable(LIST));
    }

    /// Hosts offer the schema's targets to operators: it must list exactly
    /// what the component accepts.
    #[test]
    fn the_configuration_schema_offers_exactly_the_writable_targets() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schema/config.schema.json")).unwrap();
        let target = &schema["properties"]["attributeMappings"]["items"]["properties"]["target"];
        let named: alloc::vec::Vec<&str> = target["anyOf"][0]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let writable: alloc::vec::Vec<&str> = WRITABLE.iter().map(|(name, _)| *name).collect();
        assert_eq!(named, writable);
        assert_eq!(
            target["anyOf"][1]["pattern"],
            "^custom([1-9]|[1-9][0-9]|1[0-4][0-9]|150)$"
        );
        for n in [0, 1, 9, 10, 99, 100, 149, 150, 151, 1000] {
            let accepted = matches!(lookup(&alloc::format!("custom{n}")), Target::Custom(_));
            assert_eq!(accepted, (1..=150).contains(&n), "custom{n}");
        }
    }
}
