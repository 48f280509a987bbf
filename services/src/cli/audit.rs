//! `onbehalf audit export` and `onbehalf audit verify`: the audit trail through a server.
//!
//! Both call `AuditService` as a service token with scope `audit:read` (signed with the data
//! directory's key unless `--token` is given).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use onbehalf_proto::v1 as pb;
use pb::audit_service_client::AuditServiceClient;
use uuid::Uuid;

use super::{AuthedChannel, ServerArgs};
use crate::error::Error;

/// The service name the CLI's own tokens are issued to.
const CLI_SERVICE: &str = "audit-cli";
/// The scope both subcommands need.
const SCOPE: &str = "audit:read";
/// The largest chunk the CLI accepts from the server.
const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// `onbehalf audit`: export or verify the audit trail.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The `audit` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Write the audit trail, filtered, as JSON Lines or CSV.
    Export(ExportArgs),
    /// Check the log's hash chain; exits non-zero and names the position if it is broken.
    Verify(VerifyArgs),
}

/// The export's line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// `onbehalf audit export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The line format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// Only entries that concern this client account.
    #[arg(long)]
    pub account: Option<Uuid>,
    /// Only entries whose actor is this user.
    #[arg(long)]
    pub actor: Option<Uuid>,
    /// Only this action, e.g. `InvoicePaid`.
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries committed at or after this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// Only entries committed before this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,
    /// Newest entries first.
    #[arg(long)]
    pub newest_first: bool,
    /// Write here instead of standard output; the file appears only once the export is
    /// complete.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// `onbehalf audit verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Walk the log directly (`--data-dir` or `--database-url`) instead of asking a server:
    /// works when a damaged log keeps the server from starting.
    #[arg(long)]
    pub offline: bool,
    /// Where the log is, with `--offline`.
    #[command(flatten)]
    pub store: crate::cli::StoreArgs,
}

/// Why an `audit` subcommand failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditCliError {
    /// The log's hash chain breaks at `position`.
    #[error("the log's hash chain is broken at position {position}: {kind}")]
    Broken {
        /// The first position that does not verify.
        position: u64,
        /// How it was broken: `altered`, `deleted`, `inserted` or `reordered`.
        kind: &'static str,
    },
    /// The server refused or failed the call.
    #[error("{rpc} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC called.
        rpc: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The server answered with something this build does not understand.
    #[error("unexpected answer from the server: {0}")]
    Unexpected(String),
    /// The server could not be reached, or no token could be made.
    #[error(transparent)]
    Connect(#[from] Error),
    /// Writing the output failed.
    #[error("cannot write {target}: {source}")]
    Write {
        /// Where the output was going.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{raw}` is not an RFC 3339 time such as 2025-03-03T09:00:00Z: {e}"))
}

fn rpc_error(rpc: &'static str) -> impl Fn(tonic::Status) -> AuditCliError {
    move |status| AuditCliError::Rpc {
        rpc,
        code: status.code(),
        message: status.message().to_owned(),
    }
}

async fn client(server: &ServerArgs) -> Result<AuditServiceClient<AuthedChannel>, AuditCliError> {
    let channel = server.connect(CLI_SERVICE, SCOPE).await?;
    Ok(AuditServiceClient::new(channel).max_decoding_message_size(MAX_CHUNK_BYTES))
}

/// Runs an `audit` subcommand, writing its report or export to `out` (the export to
/// `--output` instead, when given).
pub async fn run(args: &AuditArgs, out: &mut dyn Write) -> Result<(), AuditCliError> {
    match &args.command {
        AuditCommand::Export(export_args) => export(export_args, out).await,
        AuditCommand::Verify(verify_args) => verify(verify_args, out).await,
    }
}

/// Streams the export to `out`, or into `--output` through a temporary file renamed into place
/// once the last chunk arrived, so that a failed export leaves no partial file under that name.
pub async fn export(args: &ExportArgs, out: &mut dyn Write) -> Result<(), AuditCliError> {
    let request = pb::ExportAuditTrailRequest {
        account_id: args.account.map(|a| a.to_string()).unwrap_or_default(),
        actor_user_id: args.actor.map(|a| a.to_string()).unwrap_or_default(),
        format: match args.format {
            Format::Jsonl => pb::AuditExportFormat::Jsonl as i32,
            Format::Csv => pb::AuditExportFormat::Csv as i32,
        },
        action: args.action.clone().unwrap_or_default(),
        from_time: args.from.map(timestamp),
        to_time: args.to.map(timestamp),
        order: if args.newest_first {
            pb::AuditOrder::NewestFirst as i32
        } else {
            pb::AuditOrder::OldestFirst as i32
        },
        min_position: 0,
    };
    let mut client = client(&args.server).await?;
    let mut stream = client
        .export_audit_trail(request)
        .await
        .map_err(rpc_error("ExportAuditTrail"))?
        .into_inner();

    match &args.output {
        None => {
            let target = || "standard output".to_owned();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(rpc_error("ExportAuditTrail"))?
            {
                out.write_all(&chunk.data)
                    .map_err(|source| write_error(target(), source))?;
            }
            out.flush().map_err(|source| write_error(target(), source))
        }
        Some(path) => {
            let partial = partial_path(path);
            let written = write_file(&partial, &mut stream).await.and_then(|()| {
                std::fs::rename(&partial, path)
                    .map_err(|source| write_error(path.display().to_string(), source))
            });
            if written.is_err() {
                // The partial file is useless; failing to remove it changes nothing more.
                let _ = std::fs::remove_file(&partial);
            }
            written
        }
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

async fn write_file(
    partial: &Path,
    stream: &mut tonic::Streaming<pb::ExportAuditTrailChunk>,
) -> Result<(), AuditCliError> {
    let target = || partial.display().to_string();
    let file = std::fs::File::create(partial).map_err(|source| write_error(target(), source))?;
    let mut file = std::io::BufWriter::new(file);
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(rpc_error("ExportAuditTrail"))?
    {
        file.write_all(&chunk.data)
            .map_err(|source| write_error(target(), source))?;
    }
    let file = file
        .into_inner()
        .map_err(|e| write_error(target(), e.into_error()))?;
    file.sync_all()
        .map_err(|source| write_error(target(), source))
}

fn write_error(target: String, source: std::io::Error) -> AuditCliError {
    AuditCliError::Write { target, source }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Walks the log's hash chain directly, as `VerifyAuditTrail` does on the server.
async fn verify_offline(
    store: &crate::cli::StoreArgs,
    out: &mut dyn Write,
) -> Result<(), AuditCliError> {
    use crate::store::{verify_chain, BreakKind, ChainReport};
    let target = || "standard output".to_owned();
    let log = store.open().await?;
    let report = verify_chain(&*log, 1000).await.map_err(Error::from)?;
    match report {
        ChainReport::Intact { head, last_hash } => {
            writeln!(out, "intact: head {head}, last hash {last_hash}")
                .map_err(|source| write_error(target(), source))
        }
        ChainReport::Broken { position, kind } => {
            let kind = match kind {
                BreakKind::Altered => "altered",
                BreakKind::Deleted => "deleted",
                BreakKind::Inserted => "inserted",
                BreakKind::Reordered => "reordered",
            };
            writeln!(out, "broken: position {position}, {kind}")
                .map_err(|source| write_error(target(), source))?;
            Err(AuditCliError::Broken { position, kind })
        }
    }
}

/// Asks the server to verify the log's hash chain and writes one line: `intact: head <n>, last
/// hash <hex>`, or `broken: position <n>, <kind>` followed by [`AuditCliError::Broken`].
pub async fn verify(args: &VerifyArgs, out: &mut dyn Write) -> Result<(), AuditCliError> {
    if args.offline {
        return verify_offline(&args.store, out).await;
    }
    let mut client = client(&args.server).await?;
    let response = client
        .verify_audit_trail(pb::VerifyAuditTrailRequest {})
        .await
        .map_err(rpc_error("VerifyAuditTrail"))?
        .into_inner();
    let target = || "standard output".to_owned();
    match response.outcome {
        Some(pb::verify_audit_trail_response::Outcome::Intact(intact)) => writeln!(
            out,
            "intact: head {}, last hash {}",
            intact.head, intact.last_hash
        )
        .map_err(|source| write_error(target(), source)),
        Some(pb::verify_audit_trail_response::Outcome::Broken(broken)) => {
            let kind = match pb::ChainBreakKind::try_from(broken.kind) {
                Ok(pb::ChainBreakKind::Altered) => "altered",
                Ok(pb::ChainBreakKind::Deleted) => "deleted",
                Ok(pb::ChainBreakKind::Inserted) => "inserted",
                Ok(pb::ChainBreakKind::Reordered) => "reordered",
                Ok(pb::ChainBreakKind::Unspecified) | Err(_) => "of an unknown kind",
            };
            writeln!(out, "broken: position {}, {kind}", broken.position)
                .map_err(|source| write_error(target(), source))?;
            Err(AuditCliError::Broken {
                position: broken.position,
                kind,
            })
        }
        None => Err(AuditCliError::Unexpected(
            "VerifyAuditTrail returned no outcome".into(),
        )),
    }
}
