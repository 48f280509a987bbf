//! The `onbehalf` binary as a newcomer uses it: `serve` on a fresh data directory, `token`, and
//! `demo` twice against the same server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onbehalf::auth::{keys_dir, Verifier};
use onbehalf::testing::TempDataDir;
use onbehalf_events::Actor;

const BIN: &str = env!("CARGO_BIN_EXE_onbehalf");

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `onbehalf serve` on a free port and waits for its "listening" log line.
fn serve(data_dir: &std::path::Path) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1) {
                let addr = addr
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(Ok((addr, lines.clone())));
                // Keep draining so the server never blocks on a full pipe.
            }
            lines.push(line);
        }
        let _ = tx.send(Err(lines));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok((addr, lines))) => {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("created a development signing key pair")),
                "a fresh data directory logs that it created a key pair: {lines:?}"
            );
            Server { child, addr }
        }
        Ok(Err(lines)) => panic!("server exited before listening: {lines:?}"),
        Err(_) => panic!("server did not report its address within 30 s"),
    }
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_against_a_fresh_embedded_server_prints_the_same_report_twice() {
    let dir = TempDataDir::new();
    let server = serve(dir.path());
    let url = format!("http://{}", server.addr);
    let data_dir = dir.path().to_str().expect("utf-8 path");

    let started = Instant::now();
    let (ok, first, err) = run(&["demo", "--server", &url, "--data-dir", data_dir]);
    assert!(ok, "first demo run failed: {err}");
    let (ok, second, err) = run(&["demo", "--server", &url, "--data-dir", data_dir]);
    assert!(ok, "second demo run failed: {err}");
    assert!(started.elapsed() < Duration::from_secs(60));

    assert_eq!(
        first, second,
        "a second run appends nothing and reports the same"
    );
    let lines: Vec<&str> = first.lines().collect();
    let switcher: Vec<&str> = lines.iter().skip(1).take(5).copied().collect();
    assert_eq!(lines[0], "Account switcher of designer@yourcompany.com");
    assert_eq!(switcher.iter().filter(|l| l.contains(" OWNER ")).count(), 1);
    assert_eq!(
        switcher
            .iter()
            .filter(|l| l.contains(" MEMBER  full access (13 permissions)"))
            .count(),
        4
    );
    for client in [
        "ABC Company",
        "New Life Church",
        "Star Logistics",
        "Green Farm Ltd",
    ] {
        assert!(
            switcher.iter().any(|l| l.trim_start().starts_with(client)),
            "{client} in {switcher:?}"
        );
    }
    assert!(
        first.contains("Starter Hosting  abc.co.tz    SERVICE_ACTIVE"),
        "{first}"
    );
    assert!(
        first.contains("#1    PAID    total TZS 150,000.00"),
        "{first}"
    );
    assert!(
        first.contains("admin@abc.co.tz              Invoice #1 for ABC Company"),
        "{first}"
    );
    assert!(
        first.contains("designer@yourcompany.com     PaymentReceived        demo-pay-abc-hosting"),
        "{first}"
    );
}

#[test]
fn token_prints_a_service_token_the_data_directorys_keys_verify() {
    let dir = TempDataDir::new();
    onbehalf::auth::ensure_dev_keypair(dir.path()).expect("key pair");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let (ok, token, err) = run(&[
        "token",
        "--service",
        "billing",
        "--scope",
        "billing:write audit:read",
        "--data-dir",
        data_dir,
    ]);
    assert!(ok, "{err}");

    let keys = Verifier::load_dir(&keys_dir(dir.path())).expect("keys");
    let verifier = Verifier::new("onbehalf", "onbehalf", &keys).expect("verifier");
    let caller = verifier.verify(token.trim()).expect("the token verifies");
    assert_eq!(caller.actor, Actor::Service("billing".into()));
    assert_eq!(
        caller.scopes.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["audit:read", "billing:write"]
    );
}

#[test]
fn token_without_a_key_says_how_to_get_one() {
    let dir = TempDataDir::new();
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let (ok, _, err) = run(&[
        "token",
        "--user",
        "0f6c1f4e-3f0a-4a57-9a43-5a1b0c3b2f10",
        "--data-dir",
        data_dir,
    ]);
    assert!(!ok);
    assert!(err.contains("no signing key in"), "{err}");
    assert!(err.contains("onbehalf serve --data-dir"), "{err}");
}

#[test]
fn token_refuses_a_lifetime_beyond_a_year_instead_of_overflowing() {
    let dir = TempDataDir::new();
    onbehalf::auth::ensure_dev_keypair(dir.path()).expect("key pair");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    for ttl in [
        "367d",
        "100000000000d",
        "99999999999999999d",
        "9223372036854775807s",
    ] {
        let out = Command::new(BIN)
            .args([
                "token",
                "--service",
                "ops",
                "--ttl",
                ttl,
                "--data-dir",
                data_dir,
            ])
            .output()
            .expect("the binary runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--ttl {ttl}: {err}");
        assert!(
            err.contains("the duration must be at most 366d"),
            "--ttl {ttl}: {err}"
        );
    }
    let (ok, token, err) = run(&[
        "token",
        "--service",
        "ops",
        "--ttl",
        "366d",
        "--data-dir",
        data_dir,
    ]);
    assert!(ok, "{err}");
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
}

#[test]
fn token_refuses_the_nil_user_id_the_server_would_refuse() {
    let dir = TempDataDir::new();
    onbehalf::auth::ensure_dev_keypair(dir.path()).expect("key pair");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let out = Command::new(BIN)
        .args([
            "token",
            "--user",
            "00000000-0000-0000-0000-000000000000",
            "--data-dir",
            data_dir,
        ])
        .output()
        .expect("the binary runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the nil UUID names no user"), "{err}");
    assert!(out.stdout.is_empty());
}
