//! `docs/configuration.md` is the one table of every command's options, their environment
//! variables, defaults and meanings. These tests hold it to the binary's own `-h` output, so the
//! table cannot drift from the code, and hold the code to giving every setting an environment
//! variable.

#[path = "support/cli_help.rs"]
mod cli_help;

use std::collections::BTreeMap;

use cli_help::{leaves, Leaf};

const TABLE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

/// Options that choose what one run of a command does (a query, a filter, what to mint, where to
/// write) rather than configure a process: these deliberately have no environment variable, so
/// that a variable set for one command never changes what another one selects.
const PER_RUN: &[(&str, &str)] = &[
    ("aggregate", "<ACCOUNT_ID>"),
    ("aggregate", "at-version"),
    ("audit export", "format"),
    ("audit export", "account"),
    ("audit export", "actor"),
    ("audit export", "action"),
    ("audit export", "from"),
    ("audit export", "to"),
    ("audit export", "newest-first"),
    ("audit export", "output"),
    ("audit verify", "offline"),
    ("events", "account"),
    ("events", "actor"),
    ("events", "type"),
    ("events", "from"),
    ("events", "to"),
    ("events", "follow"),
    ("events", "json"),
    ("replay", "until"),
    ("replay", "account"),
    ("token", "user"),
    ("token", "service"),
    ("token", "scope"),
    ("token", "staff"),
    ("projections rebuild", "<NAME>"),
];

fn key(o: &cli_help::Opt) -> &str {
    if o.long.is_empty() {
        &o.spec
    } else {
        &o.long
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn code(text: Option<&str>) -> String {
    match text {
        Some(t) if !t.is_empty() => format!("`{}`", cell(t)),
        _ => "—".to_owned(),
    }
}

/// The table a leaf command should have in the document, rendered from its `-h` output.
fn render(leaf: &Leaf) -> String {
    let mut out = String::from("| option | environment | default | meaning |\n|---|---|---|---|\n");
    for o in &leaf.options {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            cell(&o.spec),
            code(o.env.as_deref()),
            code(o.default.as_deref()),
            cell(&o.meaning)
        ));
    }
    out
}

/// The document's tables, by the command named in each `<!-- options: NAME -->` marker; a table
/// runs from the marker to the next blank line.
fn document_tables() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(TABLE_FILE).expect("docs/configuration.md is readable");
    let mut tables = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- options: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let mut table = String::new();
        for row in lines.by_ref().take_while(|l| !l.trim().is_empty()) {
            table.push_str(row);
            table.push('\n');
        }
        assert!(
            tables.insert(name.to_owned(), table).is_none(),
            "two tables for `{name}`"
        );
    }
    tables
}

#[test]
fn the_configuration_table_lists_every_option_of_every_command_as_the_binary_does() {
    let leaves = leaves();
    let tables = document_tables();

    let mut wrong = Vec::new();
    for (name, leaf) in &leaves {
        let expected = render(leaf);
        match tables.get(name) {
            Some(table) if *table == expected => {}
            Some(_) => wrong.push(format!(
                "the table of `onbehalf {name}` differs from its -h output; it should read:\n\n\
                 <!-- options: {name} -->\n{expected}"
            )),
            None => wrong.push(format!(
                "`onbehalf {name}` has no table; add:\n\n## `onbehalf {name}`\n\n{}.\n\n\
                 <!-- options: {name} -->\n{expected}",
                leaf.about
            )),
        }
    }
    for name in tables.keys() {
        if !leaves.contains_key(name) {
            wrong.push(format!(
                "the table of `{name}` names no command of the binary"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn every_setting_of_every_command_has_an_environment_variable() {
    let leaves = leaves();
    // The commands the deployments run must be among them.
    for name in [
        "serve",
        "relay",
        "token",
        "demo",
        "events",
        "replay",
        "aggregate",
    ] {
        assert!(leaves.contains_key(name), "no command `{name}`");
    }
    let mut missing = Vec::new();
    for (name, leaf) in &leaves {
        for o in &leaf.options {
            let per_run = PER_RUN.contains(&(name.as_str(), key(o)));
            match (&o.env, per_run) {
                (None, false) => missing.push(format!("onbehalf {name} {}", o.spec)),
                (Some(env), true) => missing.push(format!(
                    "onbehalf {name} {} is listed as per-run yet reads {env}",
                    o.spec
                )),
                _ => {}
            }
        }
    }
    assert!(
        missing.is_empty(),
        "settings without an environment variable: {missing:#?}"
    );
}

#[test]
fn an_environment_variable_means_the_same_setting_in_every_command() {
    // The same variable may serve several commands (DATABASE_URL, ONBEHALF_DATA_DIR), but then
    // with the same default everywhere, or a deployment's one value would mean different things.
    let mut seen: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for (name, leaf) in leaves() {
        for o in &leaf.options {
            let Some(env) = &o.env else { continue };
            assert!(
                env == "DATABASE_URL" || env.starts_with("ONBEHALF_"),
                "{name} {}: {env} is not in the ONBEHALF_ namespace",
                o.spec
            );
            match seen.get(env) {
                Some((first, default)) => assert_eq!(
                    *default, o.default,
                    "{env} defaults differently in `{first}` and `{name}`"
                ),
                None => {
                    seen.insert(env.clone(), (name.clone(), o.default.clone()));
                }
            }
        }
    }
}

#[test]
fn the_shared_variables_table_names_every_command_that_reads_each_one() {
    let text = std::fs::read_to_string(TABLE_FILE).expect("docs/configuration.md is readable");
    let mut readers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, leaf) in leaves() {
        for env in leaf.envs() {
            readers
                .entry(env.to_owned())
                .or_default()
                .push(name.clone());
        }
    }
    let names = |cell: &str| -> Vec<String> {
        let mut names: Vec<String> = cell
            .split(", ")
            .map(|n| n.trim().trim_matches('`').to_owned())
            .collect();
        names.sort();
        names
    };
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("| variable | read by |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(rows.len() >= 5, "the shared variables table: {rows:?}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for env in names(cells[1]) {
            let mut expected = readers.get(&env).cloned().unwrap_or_default();
            expected.sort();
            // A command may read one variable through two options (`audit verify`).
            expected.dedup();
            assert_eq!(names(cells[2]), expected, "the commands that read {env}");
        }
    }
}
