//! What a step shows: sections of fields, each field named by the setting
//! path the component reports, so that a problem lands beside its field.

/// A group of fields on a step.
pub struct Section {
    pub legend: String,
    pub help: Option<String>,
    pub fields: Vec<Field>,
    /// A list's rows, each a row of fields.
    pub rows: Vec<Vec<Field>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Select(Vec<String>),
    /// An attribute target: text, offered the component's targets.
    Target,
    /// A secret: never shown, only whether one is set.
    Secret {
        set: bool,
    },
}

pub struct Field {
    pub name: String,
    pub label: String,
    pub value: String,
    pub kind: FieldKind,
    pub help: Option<String>,
    pub read_only: bool,
    pub narrow: bool,
    /// The problem with it, to show beside it.
    pub error: Option<String>,
}

impl Field {
    pub(super) fn text(name: &str, label: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            label: label.to_owned(),
            value: value.to_owned(),
            kind: FieldKind::Text,
            help: None,
            read_only: false,
            narrow: false,
            error: None,
        }
    }

    /// An id usable in HTML (`aria-describedby`).
    pub fn id(&self) -> String {
        self.name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    }

    /// The ids of its help and its error, for `aria-describedby`.
    pub fn described_by(&self) -> String {
        let mut ids = Vec::new();
        if self.help.is_some() {
            ids.push(format!("{}-help", self.id()));
        }
        if self.error.is_some() {
            ids.push(format!("{}-error", self.id()));
        }
        ids.join(" ")
    }

    pub fn is_select(&self) -> bool {
        matches!(self.kind, FieldKind::Select(_))
    }

    pub fn options(&self) -> &[String] {
        match &self.kind {
            FieldKind::Select(options) => options,
            _ => &[],
        }
    }

    pub fn is_target(&self) -> bool {
        self.kind == FieldKind::Target
    }

    pub fn is_secret(&self) -> bool {
        matches!(self.kind, FieldKind::Secret { .. })
    }

    pub fn secret_set(&self) -> bool {
        self.kind == FieldKind::Secret { set: true }
    }
}

/// Puts each problem beside the field it names; returns the ones no field
/// on the page names.
pub fn place(sections: &mut [Section], problems: Vec<(String, String)>) -> Vec<String> {
    let mut unplaced = Vec::new();
    for (setting, message) in problems {
        let field = sections
            .iter_mut()
            .flat_map(|s| s.fields.iter_mut().chain(s.rows.iter_mut().flatten()))
            .find(|f| {
                f.name == setting
                    || f.name.starts_with(&format!("{setting}."))
                    || f.name.starts_with(&format!("{setting}["))
            });
        match field {
            Some(field) => {
                let joined = match field.error.take() {
                    Some(before) => format!("{before} {message}"),
                    None => message,
                };
                field.error = Some(joined);
            }
            None => unplaced.push(message),
        }
    }
    unplaced
}
