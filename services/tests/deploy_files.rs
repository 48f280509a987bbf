//! The files under `deploy/` parse, and they name the commands, flags, environment variables,
//! ports, stream and subjects the code has. No container engine runs here, so this is what keeps
//! them honest: the truth comes from the real binary's `-h` output and the crate's constants.

#[path = "support/cli_help.rs"]
mod cli_help;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cli_help::{leaves, Leaf};
use onbehalf::relay::StreamSettings;
use onbehalf_events::subjects::{EVENTS_STREAM, SUBJECT_PREFIX};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// Variables the deploy files may set that are not onbehalf options.
const OTHER_ENV: &[&str] = &["RUST_LOG"];

/// The commands a distributed deployment runs.
const DISTRIBUTED: &[&str] = &["serve", "relay", "project"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_documents(relative: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&read(relative))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {value:?}"))
        .iter()
        .map(|v| str_of(v, what).to_owned())
        .collect()
}

/// The leaf command an argument list runs, and the long flags it passes (`--a=b` or `--a b`).
fn command_of<'a>(
    leaves: &'a BTreeMap<String, Leaf>,
    args: &[String],
    what: &str,
) -> (&'a Leaf, Vec<(String, Option<String>)>) {
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|a| !a.starts_with('-'))
        .collect();
    let leaf = (1..=words.len())
        .rev()
        .find_map(|n| leaves.get(&words[..n].join(" ")))
        .unwrap_or_else(|| panic!("{what}: `{}` is no command of the binary", words.join(" ")));
    let mut flags = Vec::new();
    let mut rest = args[leaf.path.len()..].iter().peekable();
    while let Some(arg) = rest.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            panic!("{what}: unexpected argument `{arg}`");
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => {
                let takes_value = leaf.option(flag).is_some_and(|o| o.spec.contains('<'));
                let value = if takes_value {
                    rest.next().cloned()
                } else {
                    None
                };
                (flag.to_owned(), value)
            }
        };
        assert!(
            leaf.option(&name).is_some(),
            "{what}: `onbehalf {}` has no flag --{name}",
            leaf.name()
        );
        flags.push((name, value));
    }
    (leaf, flags)
}

fn assert_env_known(leaf: &Leaf, env: &str, what: &str) {
    assert!(
        leaf.envs().contains(&env) || OTHER_ENV.contains(&env),
        "{what}: `onbehalf {}` reads no variable {env} (it reads {:?})",
        leaf.name(),
        leaf.envs()
    );
}

/// The port of `host:port`, `scheme://host:port` or `scheme://user@host:port/path`.
fn port_of(address: &str) -> u16 {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in `{address}`"))
}

fn host_of(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port
        .rsplit_once(':')
        .map_or(host_port, |(host, _)| host)
}

fn default_of<'a>(leaves: &'a BTreeMap<String, Leaf>, command: &str, flag: &str) -> &'a str {
    leaves[command]
        .option(flag)
        .and_then(|o| o.default.as_deref())
        .unwrap_or_else(|| panic!("`onbehalf {command} --{flag}` has no default"))
}

// ---------------------------------------------------------------------------------------------
// compose.yaml
// ---------------------------------------------------------------------------------------------

#[test]
fn the_compose_file_runs_two_replicas_a_relay_and_a_worker_with_flags_the_binary_knows() {
    let leaves = leaves();
    let compose = &yaml_documents("compose.yaml")[0];
    let services = compose["services"]
        .as_mapping()
        .expect("compose.yaml has services");
    let names: BTreeSet<&str> = services.keys().map(|k| str_of(k, "service name")).collect();

    let mut by_command: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut published = BTreeSet::new();
    let mut secret_files = BTreeMap::new();
    for (name, service) in services {
        let name = str_of(name, "service name");
        for dependency in service["depends_on"]
            .as_mapping()
            .map(|m| m.keys().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let dependency = str_of(dependency, "dependency");
            assert!(
                names.contains(dependency),
                "{name} depends on unknown {dependency}"
            );
        }
        let image = str_of(&service["image"], "image");
        if !image.starts_with("onbehalf:") {
            continue;
        }
        let what = format!("compose.yaml service {name}");
        let (leaf, flags) = command_of(&leaves, &strings(&service["command"], &what), &what);
        by_command.entry(leaf.name()).or_default().push(name);
        let env: BTreeMap<String, String> = service["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{what} has an environment map"))
            .iter()
            .map(|(k, v)| (str_of(k, "name").to_owned(), str_of(v, "value").to_owned()))
            .collect();
        for key in env.keys() {
            assert_env_known(leaf, key, &what);
        }
        let setting = |flag: &str| -> Option<String> {
            let env_name = leaf.option(flag)?.env.clone()?;
            flags
                .iter()
                .find(|(f, _)| f == flag)
                .and_then(|(_, v)| v.clone())
                .or_else(|| env.get(&env_name).cloned())
        };

        // Every distributed process works on the PostgreSQL service.
        let database = setting("database-url").unwrap_or_else(|| panic!("{what}: no database"));
        assert_eq!(host_of(&database), "postgres", "{what}");
        assert_eq!(port_of(&database), 5432, "{what}");

        if matches!(leaf.name().as_str(), "serve" | "project") {
            secret_files.insert(name, setting("invitation-secret-file"));
        }
        match leaf.name().as_str() {
            "serve" => {
                let listen = setting("listen").unwrap_or_else(|| panic!("{what}: no listen"));
                let ports = strings(&service["ports"], &what);
                assert_eq!(ports.len(), 1, "{what}");
                let (host, container) = ports[0].split_once(':').expect("host:container");
                assert_eq!(
                    container.parse::<u16>().ok(),
                    Some(port_of(&listen)),
                    "{what}"
                );
                assert!(
                    published.insert(host.to_owned()),
                    "{what}: port {host} taken"
                );
                // Beyond loopback the server refuses plain text.
                assert!(
                    setting("tls-cert").is_some() && setting("tls-key").is_some(),
                    "{what}"
                );
                assert!(setting("invitation-secret-file").is_some(), "{what}");
                // Replicas answer reads from the read models the worker keeps.
                assert_eq!(
                    setting("read-models").as_deref(),
                    Some("postgres"),
                    "{what}"
                );
            }
            "relay" | "project" => {
                let nats = setting("nats-url").unwrap_or_else(|| panic!("{what}: no nats"));
                assert_eq!(host_of(&nats), "nats", "{what}");
                let nats_args = strings(&services["nats"]["command"], "nats command");
                assert!(nats_args.contains(&"-js".to_owned()), "JetStream is on");
                let port = nats_args
                    .iter()
                    .position(|a| a == "-p")
                    .map(|i| nats_args[i + 1].parse::<u16>().expect("port"));
                assert_eq!(port, Some(port_of(&nats)), "{what}");
                assert_eq!(
                    port_of(&nats),
                    port_of(default_of(&leaves, "relay", "nats-url")),
                    "the broker listens on the default NATS port"
                );
            }
            other => panic!("{what}: unexpected command {other}"),
        }
    }
    assert_eq!(
        by_command.get("serve").map(Vec::len),
        Some(2),
        "{by_command:?}"
    );
    assert_eq!(
        by_command.get("relay").map(Vec::len),
        Some(1),
        "{by_command:?}"
    );
    assert_eq!(
        by_command.get("project").map(Vec::len),
        Some(1),
        "{by_command:?}"
    );
    assert!(
        names.contains("postgres") && names.contains("nats"),
        "{names:?}"
    );
    // Replicas and the worker mint and accept the same invitation tokens.
    let files: BTreeSet<_> = secret_files.values().collect();
    assert_eq!(files.len(), 1, "one invitation secret: {secret_files:?}");
    assert!(files.iter().all(|f| f.is_some()), "{secret_files:?}");
}

// ---------------------------------------------------------------------------------------------
// k8s/
// ---------------------------------------------------------------------------------------------

/// The Secrets deploy/README.md creates, with their keys.
fn documented_secrets() -> BTreeMap<String, BTreeSet<String>> {
    let readme = read("README.md");
    let mut secrets = BTreeMap::new();
    let joined = readme.replace("\\\n", " ");
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .windows(3)
            .position(|w| w[0] == "kubectl" && w[2] == "secret")
        else {
            continue;
        };
        let (kind, name) = (words[at + 3], words[at + 4]);
        let mut keys: BTreeSet<String> = words
            .iter()
            .filter_map(|w| {
                w.strip_prefix("--from-literal=")
                    .or_else(|| w.strip_prefix("--from-file="))
            })
            .map(|kv| kv.split('=').next().unwrap_or(kv).to_owned())
            .collect();
        if kind == "tls" {
            keys.extend(["tls.crt".to_owned(), "tls.key".to_owned()]);
        }
        secrets.insert(name.to_owned(), keys);
    }
    secrets
}

#[test]
fn the_kubernetes_manifests_agree_with_each_other_and_with_the_binary() {
    let leaves = leaves();
    let secrets = documented_secrets();
    assert!(!secrets.is_empty(), "deploy/README.md creates the Secrets");

    let kustomization = &yaml_documents("k8s/kustomization.yaml")[0];
    let resources: BTreeSet<String> = strings(&kustomization["resources"], "resources")
        .into_iter()
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("k8s"))
        .expect("k8s directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        resources, on_disk,
        "the kustomization applies every manifest"
    );

    let docs: Vec<Value> = resources
        .iter()
        .flat_map(|r| yaml_documents(&format!("k8s/{r}")))
        .collect();
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_owned();
    let name = |d: &Value| str_of(&d["metadata"]["name"], "metadata.name").to_owned();

    let config_maps: BTreeMap<String, BTreeMap<String, String>> = docs
        .iter()
        .filter(|d| kind(d) == "ConfigMap")
        .map(|d| {
            let data = d["data"]
                .as_mapping()
                .expect("data")
                .iter()
                .map(|(k, v)| (str_of(k, "key").to_owned(), str_of(v, "value").to_owned()))
                .collect();
            (name(d), data)
        })
        .collect();
    let every_env: BTreeSet<&str> = leaves.values().flat_map(|l| l.envs()).collect();
    for (map, data) in &config_maps {
        for key in data.keys() {
            assert!(
                every_env.contains(key.as_str()) || OTHER_ENV.contains(&key.as_str()),
                "ConfigMap {map}: no command reads {key}"
            );
        }
    }

    let mut commands = BTreeMap::new();
    let mut api_labels = None;
    let mut secret_files = BTreeMap::new();
    for deployment in docs.iter().filter(|d| kind(d) == "Deployment") {
        let deployment_name = name(deployment);
        let spec = &deployment["spec"];
        let labels = spec["template"]["metadata"]["labels"]
            .as_mapping()
            .expect("labels");
        for (k, v) in spec["selector"]["matchLabels"]
            .as_mapping()
            .expect("selector")
        {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{deployment_name}: selector matches the pods"
            );
        }
        let pod = &spec["template"]["spec"];
        let volumes: BTreeMap<String, Option<String>> = pod["volumes"]
            .as_sequence()
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|v| {
                let secret = v["secret"]["secretName"].as_str().map(str::to_owned);
                (str_of(&v["name"], "volume name").to_owned(), secret)
            })
            .collect();
        for secret in volumes.values().flatten() {
            assert!(
                secrets.contains_key(secret),
                "{deployment_name}: Secret {secret} is made in README"
            );
        }
        let containers = pod["containers"].as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "{deployment_name}");
        let container = &containers[0];
        let what = format!("Deployment {deployment_name}");
        let (leaf, flags) = command_of(&leaves, &strings(&container["args"], &what), &what);
        assert!(
            flags.is_empty(),
            "{what}: settings come from the environment"
        );
        commands.insert(
            leaf.name(),
            (deployment_name.clone(), spec["replicas"].as_u64()),
        );

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for source in container["envFrom"]
            .as_sequence()
            .map(|v| v.as_slice())
            .unwrap_or_default()
        {
            let map = str_of(&source["configMapRef"]["name"], "configMapRef");
            let data = config_maps
                .get(map)
                .unwrap_or_else(|| panic!("{what}: no ConfigMap {map}"));
            env.extend(data.clone());
        }
        let mounts: Vec<(String, String)> = container["volumeMounts"]
            .as_sequence()
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|m| {
                let volume = str_of(&m["name"], "mount name").to_owned();
                assert!(volumes.contains_key(&volume), "{what}: no volume {volume}");
                (str_of(&m["mountPath"], "mountPath").to_owned(), volume)
            })
            .collect();
        for entry in container["env"].as_sequence().expect("env") {
            let key = str_of(&entry["name"], "env name");
            assert_env_known(leaf, key, &what);
            if let Some(value) = entry["value"].as_str() {
                // A file path into a mounted Secret names one of the Secret's keys.
                for (mount, volume) in &mounts {
                    let Some(file) = value.strip_prefix(&format!("{mount}/")) else {
                        continue;
                    };
                    if let Some(Some(secret)) = volumes.get(volume) {
                        assert!(
                            secrets[secret].contains(file),
                            "{what}: {key} names {file}, not a key of Secret {secret}"
                        );
                    }
                }
                env.insert(key.to_owned(), value.to_owned());
            } else {
                let reference = &entry["valueFrom"]["secretKeyRef"];
                let secret = str_of(&reference["name"], "secretKeyRef.name");
                let secret_key = str_of(&reference["key"], "secretKeyRef.key");
                assert!(
                    secrets
                        .get(secret)
                        .is_some_and(|keys| keys.contains(secret_key)),
                    "{what}: Secret {secret} with key {secret_key} is made in README ({secrets:?})"
                );
                env.insert(key.to_owned(), format!("secret:{secret}"));
            }
        }
        assert!(
            env.contains_key("DATABASE_URL"),
            "{what}: the PostgreSQL log"
        );
        if matches!(leaf.name().as_str(), "serve" | "project") {
            let file = env.get("ONBEHALF_INVITATION_SECRET_FILE").cloned();
            // The same path, and in the same Secret.
            let secret = file.as_ref().and_then(|file| {
                mounts.iter().find_map(|(mount, volume)| {
                    file.starts_with(&format!("{mount}/"))
                        .then(|| volumes[volume].clone())
                        .flatten()
                })
            });
            secret_files.insert(deployment_name.clone(), (file, secret));
        }

        if leaf.name() == "serve" {
            api_labels = Some(labels.clone());
            let listen = env.get("ONBEHALF_LISTEN").expect("listen address");
            let ports = container["ports"].as_sequence().expect("ports");
            let grpc = ports
                .iter()
                .find(|p| p["name"].as_str() == Some("grpc"))
                .expect("a port named grpc");
            let port = grpc["containerPort"].as_u64().expect("containerPort");
            assert_eq!(port, u64::from(port_of(listen)), "{what}");
            assert!(env.contains_key("ONBEHALF_TLS_CERT") && env.contains_key("ONBEHALF_TLS_KEY"));
            // Readiness comes from the gRPC health service, on the listening port, over TLS.
            let probe = strings(&container["readinessProbe"]["exec"]["command"], "probe");
            assert_eq!(probe[0], "grpc_health_probe", "{what}");
            let addr = probe
                .iter()
                .find_map(|a| a.strip_prefix("-addr="))
                .expect("probe address");
            assert_eq!(u64::from(port_of(addr)), port, "{what}");
            assert!(probe.contains(&"-tls".to_owned()), "{what}");
            assert_eq!(
                env.get("ONBEHALF_READ_MODELS").map(String::as_str),
                Some("postgres"),
                "{what}: replicas read the worker's read models"
            );
        } else {
            assert!(env.contains_key("ONBEHALF_NATS_URL"), "{what}: the broker");
        }
    }
    for command in DISTRIBUTED {
        assert!(
            commands.contains_key(*command),
            "no Deployment runs {command}: {commands:?}"
        );
    }
    assert!(
        commands["relay"].1.unwrap_or(1) >= 2,
        "a standby relay takes over from the lease holder"
    );

    let files: BTreeSet<_> = secret_files.values().collect();
    assert_eq!(files.len(), 1, "one invitation secret: {secret_files:?}");
    assert!(
        files.iter().all(|(f, s)| f.is_some() && s.is_some()),
        "{secret_files:?}"
    );

    let services: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Service").collect();
    assert_eq!(services.len(), 1);
    let service = services[0];
    let api_labels = api_labels.expect("an API Deployment");
    for (k, v) in service["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(
            api_labels.get(k),
            Some(v),
            "the Service selects the API pods"
        );
    }
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["targetPort"].as_str(), Some("grpc"));
    assert_eq!(
        port["port"].as_u64(),
        Some(u64::from(port_of(default_of(&leaves, "serve", "listen"))))
    );
}

// ---------------------------------------------------------------------------------------------
// systemd/
// ---------------------------------------------------------------------------------------------

/// A unit file as sections of `key=value` lines (a key may repeat).
fn ini(relative: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = None;
    for (n, line) in read(relative).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{relative}:{}: not key=value: {line}", n + 1));
        let section = current
            .clone()
            .unwrap_or_else(|| panic!("{relative}:{}: outside a section", n + 1));
        sections
            .entry(section)
            .or_default()
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    sections
}

fn values<'a>(
    unit: &'a BTreeMap<String, Vec<(String, String)>>,
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    unit.get(section)
        .map(|lines| {
            lines
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// The environment file as `KEY=value` lines.
fn env_file(relative: &str) -> BTreeMap<String, String> {
    read(relative)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{relative}: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_systemd_units_run_commands_and_flags_the_binary_knows() {
    let leaves = leaves();
    let units: Vec<String> = std::fs::read_dir(deploy_dir().join("systemd"))
        .expect("systemd directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".service"))
        .collect();
    let environment = env_file("systemd/onbehalf.env");
    let mut run = BTreeMap::new();
    let mut env_users: Vec<&Leaf> = Vec::new();
    for unit_name in &units {
        let what = format!("systemd/{unit_name}");
        let unit = ini(&what);
        for section in ["Unit", "Service", "Install"] {
            assert!(unit.contains_key(section), "{what}: no [{section}]");
        }
        let exec = values(&unit, "Service", "ExecStart");
        assert_eq!(exec.len(), 1, "{what}");
        let words: Vec<String> = exec[0].split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[0], "/usr/local/bin/onbehalf", "{what}");
        let (leaf, flags) = command_of(&leaves, &words[1..], &what);
        run.insert(unit_name.clone(), leaf.name());
        for line in values(&unit, "Service", "Environment") {
            let (key, _) = line.split_once('=').expect("KEY=value");
            assert_env_known(leaf, key, &what);
        }
        for file in values(&unit, "Service", "EnvironmentFile") {
            assert_eq!(
                file, "/etc/onbehalf/onbehalf.env",
                "{what}: the shipped file"
            );
            env_users.push(leaf);
        }
        let listen = flags
            .iter()
            .find(|(f, _)| f == "listen")
            .and_then(|(_, v)| v.clone());
        if leaf.name() == "serve" {
            let listen =
                listen.unwrap_or_else(|| default_of(&leaves, "serve", "listen").to_owned());
            // The template's instance is the port; plain text stays on loopback.
            assert!(listen.starts_with("127.0.0.1:"), "{what}: {listen}");
            if unit_name.ends_with("@.service") {
                assert_eq!(listen, "127.0.0.1:%i", "{what}");
                let read_models = flags
                    .iter()
                    .find(|(f, _)| f == "read-models")
                    .and_then(|(_, v)| v.as_deref());
                assert_eq!(read_models, Some("postgres"), "{what}");
            } else {
                assert_eq!(
                    port_of(&listen),
                    port_of(default_of(&leaves, "serve", "listen"))
                );
            }
        }
    }
    for command in DISTRIBUTED {
        assert!(
            run.iter()
                .any(|(unit, c)| c == command && unit != "onbehalf.service"),
            "no distributed unit runs {command}: {run:?}"
        );
    }
    assert_eq!(
        run.get("onbehalf.service").map(String::as_str),
        Some("serve")
    );
    assert!(!env_users.is_empty());
    for key in environment.keys() {
        assert!(
            env_users
                .iter()
                .any(|leaf| leaf.envs().contains(&key.as_str()))
                || OTHER_ENV.contains(&key.as_str()),
            "onbehalf.env sets {key}, which none of its units reads"
        );
    }
    for leaf in &env_users {
        if DISTRIBUTED.contains(&leaf.name().as_str()) {
            assert!(environment.contains_key("DATABASE_URL"));
        }
    }
    assert_eq!(
        port_of(&environment["ONBEHALF_NATS_URL"]),
        port_of(default_of(&leaves, "relay", "nats-url"))
    );
}

// ---------------------------------------------------------------------------------------------
// nats/ and README
// ---------------------------------------------------------------------------------------------

#[test]
fn the_nats_stream_definition_is_the_relays_built_in_stream() {
    let file: serde_json::Value =
        serde_json::from_str(&read("nats/onbehalf-events.json")).expect("JSON");
    let builtin = serde_json::to_value(StreamSettings::builtin().to_config()).expect("encodes");
    assert_eq!(file, builtin);
    assert_eq!(file["name"], EVENTS_STREAM);
    assert_eq!(
        file["subjects"],
        serde_json::json!([format!("{SUBJECT_PREFIX}.>")])
    );
    assert_eq!(file["name"], "ONBEHALF_EVENTS");
    assert_eq!(file["subjects"], serde_json::json!(["onbehalf.v1.>"]));
}

#[test]
fn the_readme_commands_name_commands_flags_and_variables_the_binary_knows() {
    let leaves = leaves();
    let readme = read("README.md").replace("\\\n", " ");
    let every_env: BTreeSet<&str> = leaves.values().flat_map(|l| l.envs()).collect();
    let mut in_code = false;
    let mut checked = BTreeSet::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let line = line
            .split('#')
            .next()
            .unwrap_or(line)
            .trim()
            .trim_end_matches('&')
            .trim();
        if let Some(assignment) = line.strip_prefix("export ") {
            let (key, _) = assignment.split_once('=').expect("export KEY=value");
            if key != "PATH" {
                assert!(
                    every_env.contains(key),
                    "README exports {key}, which no command reads"
                );
            }
            continue;
        }
        let Some(args) = line.strip_prefix("onbehalf ") else {
            continue;
        };
        let args: Vec<String> = args
            .split_whitespace()
            .take_while(|w| !w.starts_with('<'))
            .map(str::to_owned)
            .collect();
        let (leaf, _) = command_of(&leaves, &args, &format!("README: {line}"));
        checked.insert(leaf.name());
    }
    for command in DISTRIBUTED {
        assert!(
            checked.contains(*command),
            "the README runs {command}: {checked:?}"
        );
    }
}
