//! The steps of setting a destination up, in order, and which settings
//! each one shows (so that a problem is shown on its step).

/// The steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Details,
    Account,
    Alerts,
    Audiences,
    Mapping,
    Review,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Details,
        Step::Account,
        Step::Alerts,
        Step::Audiences,
        Step::Mapping,
        Step::Review,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Step::Details => "details",
            Step::Account => "account",
            Step::Alerts => "alerts",
            Step::Audiences => "audiences",
            Step::Mapping => "mapping",
            Step::Review => "review",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Step::Details => "Details",
            Step::Account => "Account",
            Step::Alerts => "Alerts",
            Step::Audiences => "Audiences",
            Step::Mapping => "Mapping",
            Step::Review => "Review",
        }
    }

    pub fn from_slug(slug: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.slug() == slug)
    }

    pub fn next(self) -> Step {
        let at = Step::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Step::ALL.get(at + 1).copied().unwrap_or(Step::Review)
    }

    pub fn previous(self) -> Option<Step> {
        let at = Step::ALL.iter().position(|s| *s == self)?;
        at.checked_sub(1).map(|i| Step::ALL[i])
    }

    /// Whether a problem with component setting `setting` is this step's
    /// to show.
    pub fn owns(self, setting: &str) -> bool {
        let root = setting.split(['.', '[']).next().unwrap_or(setting);
        let roots: &[&str] = match self {
            Step::Details => &["name", "description"],
            Step::Account => &["account"],
            Step::Alerts => &[],
            Step::Audiences => &["audiences", "statusLabels"],
            Step::Mapping => &[
                "match",
                "identityMapping",
                "emailMapping",
                "companyMapping",
                "attributeMappings",
            ],
            Step::Review => return true,
        };
        roots.contains(&root)
    }
}
