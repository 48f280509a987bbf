//! Mail templates: one file per notification kind, with `{{name}}` placeholders.

use std::collections::BTreeMap;
use std::path::Path;

use onbehalf_projections::Notification;

/// The templates built into the binary: the repository's `templates/` directory.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "invitation",
        include_str!("../../../templates/invitation.txt"),
    ),
    (
        "member_joined",
        include_str!("../../../templates/member_joined.txt"),
    ),
    (
        "member_removed",
        include_str!("../../../templates/member_removed.txt"),
    ),
    (
        "permissions_granted",
        include_str!("../../../templates/permissions_granted.txt"),
    ),
    (
        "permissions_revoked",
        include_str!("../../../templates/permissions_revoked.txt"),
    ),
    (
        "ownership_transferred",
        include_str!("../../../templates/ownership_transferred.txt"),
    ),
    (
        "service_ordered",
        include_str!("../../../templates/service_ordered.txt"),
    ),
    (
        "service_renewed",
        include_str!("../../../templates/service_renewed.txt"),
    ),
    (
        "service_cancelled",
        include_str!("../../../templates/service_cancelled.txt"),
    ),
    (
        "service_suspended",
        include_str!("../../../templates/service_suspended.txt"),
    ),
    (
        "service_unsuspended",
        include_str!("../../../templates/service_unsuspended.txt"),
    ),
    (
        "invoice_issued",
        include_str!("../../../templates/invoice_issued.txt"),
    ),
    (
        "payment_received",
        include_str!("../../../templates/payment_received.txt"),
    ),
    (
        "payment_reminder",
        include_str!("../../../templates/payment_reminder.txt"),
    ),
];

/// Why templates could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A file could not be read.
    #[error("cannot read the template {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        message: String,
    },
    /// A file does not start with a `Subject:` line followed by a blank line.
    #[error("the template {path} must start with `Subject: ...` and a blank line")]
    Shape {
        /// The file.
        path: String,
    },
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    subject: String,
    body: String,
}

impl Template {
    fn parse(text: &str) -> Option<Template> {
        let text = text.replace("\r\n", "\n");
        let (first, rest) = text.split_once('\n')?;
        let subject = first.strip_prefix("Subject:")?.trim().to_owned();
        let body = rest.strip_prefix('\n')?;
        Some(Template {
            subject,
            body: body.trim_end_matches('\n').to_owned(),
        })
    }
}

/// The templates a mailer renders with, by notification kind.
#[derive(Clone, Debug)]
pub struct Templates {
    by_kind: BTreeMap<String, Template>,
}

impl Templates {
    /// The built-in templates only.
    pub fn built_in() -> Templates {
        let by_kind = BUILT_IN
            .iter()
            .filter_map(|(kind, text)| Some(((*kind).to_owned(), Template::parse(text)?)))
            .collect();
        Templates { by_kind }
    }

    /// The built-in templates, each replaced by `<dir>/<kind>.txt` where that file exists,
    /// plus any other `<kind>.txt` in `dir`.
    pub fn load(dir: &Path) -> Result<Templates, TemplateError> {
        let mut templates = Templates::built_in();
        let entries = std::fs::read_dir(dir).map_err(|e| TemplateError::Read {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(kind) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".txt"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| TemplateError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let template = Template::parse(&text).ok_or_else(|| TemplateError::Shape {
                path: path.display().to_string(),
            })?;
            templates.by_kind.insert(kind.to_owned(), template);
        }
        Ok(templates)
    }

    /// The subject and body of `notification`: its kind's template with every known
    /// placeholder replaced, or the notification's own text for a kind without a template.
    pub fn render(&self, notification: &Notification) -> (String, String) {
        let Some(template) = self.by_kind.get(&notification.kind) else {
            return (notification.subject.clone(), notification.body.clone());
        };
        let mut fields = notification.fields.clone();
        fields.insert("subject".into(), notification.subject.clone());
        fields.insert("body".into(), notification.body.clone());
        // A subject is one line whatever a field holds.
        let subject = fill(&template.subject, &fields).replace(['\r', '\n'], " ");
        (subject, fill(&template.body, &fields))
    }
}

/// Replaces each `{{name}}` whose name is in `fields`; anything else is copied as written.
fn fill(template: &str, fields: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                match fields.get(name) {
                    Some(value) => out.push_str(value),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_placeholders_are_filled_and_unknown_ones_left_as_written() {
        let fields = BTreeMap::from([
            ("account_name".to_owned(), "ABC Company".to_owned()),
            ("total".to_owned(), "TZS 150,000.00".to_owned()),
        ]);
        assert_eq!(
            fill("{{account_name}} owes {{ total }}; {{nope}} {{", &fields),
            "ABC Company owes TZS 150,000.00; {{nope}} {{"
        );
    }

    #[test]
    fn every_built_in_template_parses() {
        assert_eq!(Templates::built_in().by_kind.len(), BUILT_IN.len());
    }

    #[test]
    fn a_template_without_a_subject_line_is_refused() {
        assert_eq!(Template::parse("Hello\n\nbody"), None);
        assert_eq!(
            Template::parse("Subject: Hi {{x}}\n\nline 1\nline 2\n"),
            Some(Template {
                subject: "Hi {{x}}".into(),
                body: "line 1\nline 2".into()
            })
        );
    }
}
