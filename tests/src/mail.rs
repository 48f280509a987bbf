//! Mail for the tests: a small SMTP receiver on loopback that records every message it
//! accepts, and the scheduler and mailer of a [`TestServer`]'s log running in the test.
//!
//! The receiver speaks just enough of RFC 5321 for a client: greeting, `EHLO`/`HELO`, `MAIL`,
//! `RCPT`, `DATA` (with dot-unstuffing), `RSET`, `NOOP`, `QUIT`. A test can make it refuse a
//! recipient with a reply of its choice, a number of times or for good.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onbehalf::executor::Executor;
use onbehalf::mailer::state::SqliteDeliveryState;
use onbehalf::mailer::{
    DeliveryState, Mailer, MailerConfig, SmtpSecurity, SmtpSettings, Templates,
};
use onbehalf::read::ReadSide;
use onbehalf::scheduler::{Scheduler, SchedulerConfig};
use onbehalf::server::{self, ServerConfig};
use onbehalf::tokens::InvitationTokens;
use onbehalf_projections::ReadModels;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::TestServer;

/// The sender the test mailers use.
pub const FROM: &str = "Billing <billing@provider.test>";

/// One message the receiver accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope recipients, in order.
    pub rcpt_to: Vec<String>,
    /// The `Subject` header, unfolded.
    pub subject: String,
    /// The `Message-ID` header.
    pub message_id: String,
    /// The body, decoded, with `\n` line ends and no trailing newline.
    pub body: String,
}

#[derive(Debug)]
struct Refusal {
    recipient: String,
    reply: String,
    times: Option<usize>,
}

#[derive(Debug, Default)]
struct SinkState {
    received: Vec<ReceivedMail>,
    refusals: Vec<Refusal>,
    refused: usize,
}

/// An SMTP receiver on `127.0.0.1:<free port>`.
#[derive(Debug, Clone)]
pub struct MailSink {
    /// The port it listens on.
    pub port: u16,
    state: Arc<Mutex<SinkState>>,
}

impl MailSink {
    /// Starts the receiver; it runs until the test's runtime ends.
    pub async fn start() -> MailSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("an address").port();
        let state: Arc<Mutex<SinkState>> = Arc::default();
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let _ = converse(socket, state).await;
                });
            }
        });
        MailSink { port, state }
    }

    /// Replies `reply` (e.g. `451 4.3.0 try later`) to `RCPT TO` for `recipient`, `times`
    /// times (`None`: always).
    pub fn refuse(&self, recipient: &str, reply: &str, times: Option<usize>) {
        self.lock().refusals.push(Refusal {
            recipient: recipient.to_ascii_lowercase(),
            reply: reply.into(),
            times,
        });
    }

    /// Every message accepted so far, in the order accepted.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.lock().received.clone()
    }

    /// How many `RCPT TO` were refused so far.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    /// The subjects each recipient received, in order, by recipient.
    pub fn mailboxes(&self) -> BTreeMap<String, Vec<String>> {
        let mut boxes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for mail in self.received() {
            for rcpt in &mail.rcpt_to {
                boxes
                    .entry(rcpt.clone())
                    .or_default()
                    .push(mail.subject.clone());
            }
        }
        boxes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SMTP settings that point a mailer at this receiver, in plain text.
    pub fn settings(&self) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            security: SmtpSecurity::None,
            credentials: None,
            ca_file: None,
            from: FROM.into(),
            timeout: Duration::from_secs(10),
        }
    }
}

fn angle(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg[start..].find('>').map_or(arg.len(), |i| start + i);
    arg[start..end].to_ascii_lowercase()
}

async fn converse(
    socket: tokio::net::TcpStream,
    state: Arc<Mutex<SinkState>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut rcpt_to: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => "250-sink.test\r\n250 8BITMIME".into(),
            "HELO" | "NOOP" => "250 ok".into(),
            "MAIL" => {
                rcpt_to.clear();
                "250 ok".into()
            }
            "RSET" => {
                rcpt_to.clear();
                "250 ok".into()
            }
            "RCPT" => {
                let recipient = angle(&command);
                let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
                let refusal = guard
                    .refusals
                    .iter_mut()
                    .find(|r| r.recipient == recipient && r.times.is_none_or(|left| left > 0));
                match refusal {
                    Some(refusal) => {
                        if let Some(left) = &mut refusal.times {
                            *left -= 1;
                        }
                        let reply = refusal.reply.clone();
                        guard.refused += 1;
                        reply
                    }
                    None => {
                        rcpt_to.push(recipient);
                        "250 ok".into()
                    }
                }
            }
            "DATA" => {
                write.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    let mut line = String::new();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let line = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(line);
                }
                let mail = parse_message(&data, std::mem::take(&mut rcpt_to));
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .received
                    .push(mail);
                "250 queued".into()
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => "502 not implemented".into(),
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

fn parse_message(data: &str, rcpt_to: Vec<String>) -> ReceivedMail {
    let data = data.replace("\r\n", "\n");
    let (head, body) = data.split_once("\n\n").unwrap_or((&data, ""));
    // Unfold: a line starting with white space continues the header before it.
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let body = match header("content-transfer-encoding")
        .to_ascii_lowercase()
        .as_str()
    {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, compact)
                .expect("a base64 body");
            String::from_utf8(bytes).expect("a UTF-8 body")
        }
        _ => body.to_owned(),
    };
    ReceivedMail {
        rcpt_to,
        subject: header("subject"),
        message_id: header("message-id"),
        body: body.replace("\r\n", "\n").trim_end_matches('\n').to_owned(),
    }
}

fn decode_quoted_printable(body: &str) -> String {
    let mut bytes = Vec::new();
    let mut lines = body.split('\n').peekable();
    while let Some(line) = lines.next() {
        let (line, soft) = match line.strip_suffix('=') {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let raw = line.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'=' && i + 3 <= raw.len() {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    bytes.push(b);
                    i += 3;
                    continue;
                }
            }
            bytes.push(raw[i]);
            i += 1;
        }
        if !soft && lines.peek().is_some() {
            bytes.push(b'\n');
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The log of `server` opened a second time, as a scheduler or mailer process opens it.
async fn log_of(server: &TestServer) -> (Arc<dyn onbehalf::store::EventStore>, ServerConfig) {
    let mut config = ServerConfig::new(server.data_dir());
    config.database_url = server.database().map(|db| db.url.clone());
    let store = server::open_store(&config).await.expect("the log opens");
    (store, config)
}

/// A scheduler replica on `server`'s log and clock, as another process would run it, with the
/// read models it decides from.
#[derive(Debug)]
pub struct Replica {
    /// The scheduler.
    pub scheduler: Scheduler,
    executor: Executor,
    read: ReadSide,
}

impl Replica {
    /// Reads this replica's read models once they have reached the head of the log.
    pub async fn models<T>(&self, read: impl FnOnce(&ReadModels) -> T) -> T {
        let head = self
            .executor
            .store()
            .head_position()
            .await
            .expect("the log's head is readable");
        self.executor.announce(head);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        self.read
            .read(head, deadline, read)
            .await
            .expect("the read models reach the head")
    }
}

/// Starts a scheduler replica on `server`'s log and clock.
pub async fn scheduler(server: &TestServer, config: SchedulerConfig) -> Replica {
    let (store, _) = log_of(server).await;
    let (appended_tx, appended_rx) = tokio::sync::watch::channel(0);
    let executor = Executor::new(store.clone(), Arc::new(server.clock.clone()), appended_tx);
    let links = invitation_links(server);
    let read = ReadSide::start(store, ReadModels::new(links), appended_rx)
        .await
        .expect("the read models fold");
    Replica {
        scheduler: Scheduler::new(executor.clone(), read.clone(), config),
        executor,
        read,
    }
}

fn invitation_links(server: &TestServer) -> Arc<InvitationTokens> {
    let secret = std::fs::read(server.data_dir().join("invitation.secret"))
        .expect("the server wrote its invitation secret");
    Arc::new(
        InvitationTokens::new(secret, "http://localhost:8080/invitations/accept")
            .expect("the secret is usable"),
    )
}

/// The delivery state a mailer of `server` keeps: `mailer.db` in its data directory.
pub async fn delivery_state(server: &TestServer) -> Arc<dyn DeliveryState> {
    match server.database() {
        Some(db) => Arc::new(
            onbehalf::mailer::state::PostgresDeliveryState::connect(&db.url)
                .await
                .expect("the delivery state opens"),
        ),
        None => Arc::new(
            SqliteDeliveryState::open(server.data_dir())
                .await
                .expect("the delivery state opens"),
        ),
    }
}

/// A mailer on `server`'s log and clock sending to `sink`, named `name`, as a fresh process
/// would start: it folds the read models from the log and reads the delivery state.
pub async fn mailer(
    server: &TestServer,
    sink: &MailSink,
    name: &str,
    templates: Templates,
) -> Mailer {
    let (store, _) = log_of(server).await;
    let (_appended, appended_rx) = tokio::sync::watch::channel(0);
    let read = ReadSide::start(
        store.clone(),
        ReadModels::new(invitation_links(server)),
        appended_rx,
    )
    .await
    .expect("the read models fold");
    let config = MailerConfig {
        name: name.into(),
        interval: Duration::from_millis(20),
        retry_base: chrono::Duration::minutes(1),
        retry_max: chrono::Duration::minutes(30),
        max_attempts: 3,
        ..MailerConfig::default()
    };
    Mailer::new(
        store,
        read,
        delivery_state(server).await,
        &sink.settings(),
        templates,
        Arc::new(server.clock.clone()),
        config,
    )
    .await
    .expect("the mailer starts")
}
