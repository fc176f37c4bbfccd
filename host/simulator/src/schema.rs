//! The prospect resource as Outreach documents it (API v2 reference,
//! "Prospect"): which attributes a `PATCH` may write, their JSON types and
//! length limits. Written from the documentation on its own, not shared
//! with the destination under test, so that a mistake in the destination's
//! own table shows up as a refusal here.

/// What a writable attribute accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// A string of at most this many characters (or null).
    Text(usize),
    /// An array of strings, each of at most this many characters.
    TextArray(usize),
    Boolean,
    /// Any JSON number.
    Number,
    /// A whole JSON number.
    WholeNumber,
    /// A `YYYY-MM-DD` calendar date.
    Date,
}

/// Where an attribute name stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribute {
    Writable(Field),
    /// Outreach maintains it; writing it is refused.
    ReadOnly,
    /// No such attribute (or a custom field beyond the account's).
    Unknown,
}

/// Custom fields hold nullable strings of up to 32,000 characters.
const CUSTOM: Field = Field::Text(32_000);

/// `name` on an account with `custom_fields` custom fields.
pub fn attribute(name: &str, custom_fields: u32) -> Attribute {
    if let Some(number) = name.strip_prefix("custom") {
        let valid = !number.starts_with('0')
            && number
                .parse::<u32>()
                .is_ok_and(|n| (1..=custom_fields).contains(&n))
            && number.bytes().all(|b| b.is_ascii_digit());
        return if valid {
            Attribute::Writable(CUSTOM)
        } else {
            Attribute::Unknown
        };
    }
    let field = match name {
        // Short strings: 255 characters.
        "addressCity" | "addressCountry" | "addressState" | "addressStreet" | "addressStreet2"
        | "addressZip" | "callsOptStatus" | "campaignName" | "company" | "degree"
        | "emailsOptStatus" | "eventName" | "externalId" | "externalOwner" | "externalSource"
        | "firstName" | "gender" | "githubUsername" | "lastName" | "linkedInId" | "middleName"
        | "nickname" | "occupation" | "preferredContact" | "region" | "school" | "smsOptStatus"
        | "source" | "stackOverflowId" | "timeZone" | "title" | "twitterUsername" => {
            Field::Text(255)
        }
        // Profile URLs: 1,000 characters.
        "angelListUrl" | "facebookUrl" | "githubUrl" | "googlePlusUrl" | "linkedInUrl"
        | "quoraUrl" | "stackOverflowUrl" | "twitterUrl" => Field::Text(1_000),
        // Long text: 65,535 characters.
        "personalNote1" | "personalNote2" | "specialties" | "websiteUrl1" | "websiteUrl2"
        | "websiteUrl3" => Field::Text(65_535),
        "emails" | "homePhones" | "mobilePhones" | "otherPhones" | "tags" | "voipPhones"
        | "workPhones" => Field::TextArray(255),
        "callOptedOut" | "emailOptedOut" | "optedOut" | "smsOptedOut" => Field::Boolean,
        "score" => Field::Number,
        "linkedInConnections" => Field::WholeNumber,
        "dateOfBirth" | "graduationDate" | "jobStartDate" => Field::Date,
        "availableAt" | "bouncedAt" | "clickCount" | "contactHistogram" | "createdAt"
        | "engagedAt" | "engagedScore" | "firstName_phonetic" | "id" | "lastName_phonetic"
        | "linkedInSlug" | "name" | "openCount" | "optedOutAt" | "replyCount" | "timeZoneIana"
        | "timeZoneInferred" | "touchedAt" | "trashedAt" | "updatedAt" => {
            return Attribute::ReadOnly;
        }
        _ => return Attribute::Unknown,
    };
    Attribute::Writable(field)
}

/// Whether `text` is a date Outreach stores: `YYYY-MM-DD`, a real day.
pub fn is_date(text: &str) -> bool {
    text.len() == 10 && chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_fields_exist_up_to_the_account_s_count() {
        assert_eq!(attribute("custom1", 150), Attribute::Writable(CUSTOM));
        assert_eq!(attribute("custom150", 150), Attribute::Writable(CUSTOM));
        assert_eq!(attribute("custom151", 150), Attribute::Unknown);
        assert_eq!(attribute("custom11", 10), Attribute::Unknown);
        for odd in ["custom0", "custom01", "custom+1", "custom", "custom1x"] {
            assert_eq!(attribute(odd, 150), Attribute::Unknown, "{odd}");
        }
    }

    #[test]
    fn names_are_case_sensitive_and_read_only_ones_refused() {
        assert_eq!(
            attribute("title", 150),
            Attribute::Writable(Field::Text(255))
        );
        assert_eq!(attribute("Title", 150), Attribute::Unknown);
        assert_eq!(attribute("updatedAt", 150), Attribute::ReadOnly);
    }

    #[test]
    fn dates_are_real_calendar_days() {
        assert!(is_date("2024-02-29"));
        assert!(!is_date("2023-02-29"));
        assert!(!is_date("2024-2-29"));
        assert!(!is_date("2024-02-29T00:00:00Z"));
        assert!(!is_date("+2024-02-29"));
    }
}
