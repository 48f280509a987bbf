//! Bearer-token authentication: EdDSA (Ed25519) JWTs with a `kid`, verified against a set of
//! public keys so that keys can be rotated without downtime.
//!
//! Architecture Invariant: a request that fails here never reaches a command. The verifier
//! accepts only `EdDSA`; `alg: none` and every other algorithm are refused before any key is
//! consulted.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use onbehalf_events::Actor;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Default `iss` and `aud` of tokens.
pub const DEFAULT_ISSUER: &str = "onbehalf";

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Who is calling.
    pub actor: Actor,
    /// The scopes a service token carries (empty for users).
    pub scopes: BTreeSet<String>,
}

impl Caller {
    /// Whether the caller is a service holding `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        matches!(self.actor, Actor::Service(_)) && self.scopes.contains(scope)
    }

    /// The caller's user id, or `PERMISSION_DENIED` for callers that are not users.
    pub fn user_id(&self) -> Result<Uuid> {
        self.actor
            .user_id()
            .ok_or_else(|| Error::PermissionDenied("this call is for users only".into()))
    }
}

/// The claims onbehalf issues and expects.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: a user id, `service:<name>` or `staff:<name>`.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Space-separated scopes, for services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Verifies bearer tokens against several public keys at once, chosen by `kid`.
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier").field("kids", &kids).finish()
    }
}

impl Verifier {
    /// A verifier for tokens with the given issuer and audience, signed by one of `keys`
    /// (`kid` → PEM-encoded Ed25519 public key).
    pub fn new(issuer: &str, audience: &str, keys: &[(String, Vec<u8>)]) -> Result<Self> {
        let mut decoding = HashMap::new();
        for (kid, pem) in keys {
            let key = DecodingKey::from_ed_pem(pem).map_err(|e| {
                Error::Internal(format!(
                    "verification key `{kid}` is not an Ed25519 public key: {e}"
                ))
            })?;
            decoding.insert(kid.clone(), key);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Ok(Self {
            keys: decoding,
            validation,
        })
    }

    /// Loads every `*.pub.pem` file of `dir` as a key whose `kid` is the file name before
    /// `.pub.pem`.
    pub fn load_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
        let mut keys = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot read {}: {e}",
                    dir.display()
                )))
            }
        };
        for entry in entries {
            let path = entry.map_err(|e| Error::Internal(e.to_string()))?.path();
            if let Some(kid) = kid_of(&path, ".pub.pem") {
                let pem = std::fs::read(&path)
                    .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))?;
                keys.push((kid, pem));
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Verifies `token` and names its caller, or says why it is refused.
    pub fn verify(&self, token: &str) -> Result<Caller> {
        let unauthenticated =
            |why: &str| Error::Unauthenticated(format!("bearer token refused: {why}"));
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(unauthenticated("algorithm must be EdDSA"));
        }
        let kid = header
            .kid
            .ok_or_else(|| unauthenticated("no `kid` header"))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| unauthenticated("unknown `kid`"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => unauthenticated("expired"),
                ErrorKind::ImmatureSignature => unauthenticated("not valid yet"),
                ErrorKind::InvalidIssuer => unauthenticated("wrong issuer"),
                ErrorKind::InvalidAudience => unauthenticated("wrong audience"),
                ErrorKind::InvalidSignature => unauthenticated("bad signature"),
                ErrorKind::MissingRequiredClaim(_) => {
                    unauthenticated("a required claim is missing")
                }
                _ => unauthenticated("invalid"),
            }
        })?;
        let claims = data.claims;
        let actor = parse_subject(&claims.sub).ok_or_else(|| unauthenticated("malformed `sub`"))?;
        let scopes = match &actor {
            Actor::Service(_) | Actor::Staff(_) => claims
                .scope
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            _ => BTreeSet::new(),
        };
        Ok(Caller { actor, scopes })
    }
}

fn parse_subject(sub: &str) -> Option<Actor> {
    if let Some(name) = sub.strip_prefix("service:") {
        return valid_name(name).then(|| Actor::Service(name.to_owned()));
    }
    if let Some(name) = sub.strip_prefix("staff:") {
        return valid_name(name).then(|| Actor::Staff(name.to_owned()));
    }
    Uuid::parse_str(sub)
        .ok()
        .filter(|id| !id.is_nil())
        .map(Actor::User)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn kid_of(path: &Path, suffix: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let kid = name.strip_suffix(suffix)?;
    (!kid.is_empty()).then(|| kid.to_owned())
}

/// Signs tokens with one private key.
pub struct Signer {
    kid: String,
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a PEM-encoded (PKCS#8) Ed25519 private key.
    pub fn from_pem(kid: &str, pem: &[u8], issuer: &str, audience: &str) -> Result<Self> {
        let key = EncodingKey::from_ed_pem(pem).map_err(|e| {
            Error::Internal(format!("signing key is not an Ed25519 private key: {e}"))
        })?;
        Ok(Self {
            kid: kid.to_owned(),
            key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// Loads a signer from a `<kid>.key.pem` file.
    pub fn load(path: &Path, issuer: &str, audience: &str) -> Result<Self> {
        let kid = kid_of(path, ".key.pem").ok_or_else(|| {
            Error::Internal(format!("{} must be named `<kid>.key.pem`", path.display()))
        })?;
        let pem = std::fs::read(path)
            .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))?;
        Self::from_pem(&kid, &pem, issuer, audience)
    }

    /// A token for `sub` with optional scopes, valid from `now` for `ttl`.
    pub fn sign(
        &self,
        sub: &str,
        scope: Option<&str>,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<String> {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.to_owned(),
            exp: (now + ttl).timestamp(),
            iat: now.timestamp(),
            nbf: None,
            scope: scope.map(str::to_owned),
        };
        self.sign_claims(&claims)
    }

    /// Signs arbitrary claims (tests use this to build refused tokens).
    pub fn sign_claims(&self, claims: &Claims) -> Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| Error::Internal(format!("cannot sign token: {e}")))
    }
}

/// The directory of key files inside a data directory.
pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// Makes sure the data directory holds a development key pair; returns the private key's path
/// and whether it was created now.
pub fn ensure_dev_keypair(data_dir: &Path) -> Result<(PathBuf, bool)> {
    let dir = keys_dir(data_dir);
    if let Some(existing) = find_signing_key(&dir)? {
        return Ok((existing, false));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("cannot encode public key: {e}")))?;
    let private_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("cannot encode private key: {e}")))?;
    let digest = sha2::Sha256::digest(public_pem.as_bytes());
    let kid = format!("dev-{}", hex8(&digest));
    let private_path = dir.join(format!("{kid}.key.pem"));
    write_private(&private_path, private_pem.as_bytes())?;
    std::fs::write(dir.join(format!("{kid}.pub.pem")), public_pem.as_bytes())
        .map_err(|e| Error::Internal(format!("cannot write public key: {e}")))?;
    Ok((private_path, true))
}

/// The first `*.key.pem` of `dir`, in name order.
pub fn find_signing_key(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Internal(format!(
                "cannot read {}: {e}",
                dir.display()
            )))
        }
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| kid_of(p, ".key.pem").is_some())
        .collect();
    found.sort();
    Ok(found.into_iter().next())
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| Error::Internal(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}
