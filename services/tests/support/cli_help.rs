//! The `onbehalf` binary's command-line interface as its own `-h` output describes it: every
//! command, and each command's options with their environment variables and defaults.
//!
//! The deploy-file and configuration-table tests take their truth from here, so what they check
//! is what the real binary accepts.

// Each test file that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");

/// One option or argument of a command, as `-h` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    /// How it is written: `--listen <LISTEN>`, `--follow`, or `<ACCOUNT_ID>` for an argument.
    pub spec: String,
    /// The long name without dashes (`listen`); empty for a positional argument.
    pub long: String,
    /// The environment variable that sets it, if any.
    pub env: Option<String>,
    /// The default value, if any.
    pub default: Option<String>,
    /// The help text, with the possible values appended when clap lists them.
    pub meaning: String,
}

/// A command with no subcommands: `["serve"]`, `["audit", "export"]`, ...
#[derive(Clone, Debug)]
pub struct Leaf {
    pub path: Vec<String>,
    pub about: String,
    pub options: Vec<Opt>,
}

impl Leaf {
    pub fn name(&self) -> String {
        self.path.join(" ")
    }

    pub fn option(&self, long: &str) -> Option<&Opt> {
        self.options.iter().find(|o| o.long == long)
    }

    pub fn envs(&self) -> Vec<&str> {
        self.options
            .iter()
            .filter_map(|o| o.env.as_deref())
            .collect()
    }
}

/// `onbehalf <path> -h`, run with an empty environment so that no variable of the caller's
/// shows up as a current value in the help text.
pub fn help(path: &[String]) -> String {
    let out = Command::new(BIN)
        .args(path)
        .arg("-h")
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "onbehalf {path:?} -h failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Every leaf command of the binary, in the order `-h` lists them, keyed by its name.
pub fn leaves() -> BTreeMap<String, Leaf> {
    let mut found = BTreeMap::new();
    collect(&[], String::new(), &mut found);
    found
}

fn collect(path: &[String], about: String, found: &mut BTreeMap<String, Leaf>) {
    let text = help(path);
    let commands = section(&text, "Commands:");
    if commands.is_empty() {
        let leaf = Leaf {
            path: path.to_vec(),
            about,
            options: parse_options(&text),
        };
        found.insert(leaf.name(), leaf);
        return;
    }
    for line in commands {
        let line = line.trim();
        let (name, about) = line.split_once(' ').unwrap_or((line, ""));
        if name == "help" {
            continue;
        }
        let mut child = path.to_vec();
        child.push(name.to_owned());
        collect(&child, about.trim().to_owned(), found);
    }
}

/// The lines of a `Heading:` section, up to the next blank line.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| l.trim_end() != heading)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

/// The options and arguments of a leaf's `-h`, without `-h, --help`.
fn parse_options(text: &str) -> Vec<Opt> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for heading in ["Arguments:", "Options:"] {
        for line in section(text, heading) {
            let trimmed = line.trim_start();
            let starts_entry = trimmed.starts_with('-') || trimmed.starts_with('<');
            let indent = line.len() - trimmed.len();
            // clap puts an entry's help on the following, deeper-indented lines when the
            // entry's name is long.
            if starts_entry && indent <= 6 {
                let (spec, rest) = match trimmed.find("  ") {
                    Some(i) => (&trimmed[..i], trimmed[i..].trim()),
                    None => (trimmed, ""),
                };
                entries.push((spec.to_owned(), rest.to_owned()));
            } else if let Some(last) = entries.last_mut() {
                if !last.1.is_empty() {
                    last.1.push(' ');
                }
                last.1.push_str(trimmed.trim());
            }
        }
    }
    entries
        .into_iter()
        .filter(|(spec, _)| spec != "-h, --help")
        .map(|(spec, text)| {
            let (text, values) = take_bracket(&text, "[possible values: ");
            let (text, default) = take_bracket(&text, "[default: ");
            let (text, env) = take_bracket(&text, "[env: ");
            let env = env.map(|e| e.trim_end_matches('=').to_owned());
            let long = spec
                .split_whitespace()
                .find_map(|w| w.strip_prefix("--"))
                .unwrap_or_default()
                .to_owned();
            let mut meaning = text.trim().to_owned();
            if let Some(values) = values {
                let values: Vec<String> = values.split(", ").map(|v| format!("`{v}`")).collect();
                meaning = format!("{meaning}; one of {}", values.join(", "));
            }
            Opt {
                spec,
                long,
                env,
                default,
                meaning,
            }
        })
        .collect()
}

/// Removes the last `[prefix...]` from `text`, returning the rest and the bracket's content.
fn take_bracket(text: &str, prefix: &str) -> (String, Option<String>) {
    let Some(start) = text.rfind(prefix) else {
        return (text.to_owned(), None);
    };
    let Some(len) = text[start..].find(']') else {
        return (text.to_owned(), None);
    };
    let inner = text[start + prefix.len()..start + len].to_owned();
    let rest = format!("{}{}", &text[..start], &text[start + len + 1..]);
    (rest.trim_end().to_owned(), Some(inner))
}
