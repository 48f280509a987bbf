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

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

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
    /// Audience: one, or several of which one must be ours.
    pub aud: Audience,
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

/// The role a `staff:<name>` subject must carry in its `roles` claim.
pub const STAFF_ROLE: &str = "staff";

/// Claims with the `roles` claim besides the registered ones: what staff tokens carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimsWithRoles {
    /// The registered claims and scopes.
    #[serde(flatten)]
    pub claims: Claims,
    /// The roles; a staff subject must hold [`STAFF_ROLE`].
    #[serde(default, skip_serializing_if = "Roles::is_empty")]
    pub roles: Roles,
}

/// The `roles` claim: one role or an array of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Roles {
    /// One role.
    One(String),
    /// Several roles.
    Many(Vec<String>),
}

impl Default for Roles {
    fn default() -> Self {
        Roles::Many(Vec::new())
    }
}

impl Roles {
    /// Whether `role` is among them.
    pub fn contains(&self, role: &str) -> bool {
        match self {
            Roles::One(one) => one == role,
            Roles::Many(many) => many.iter().any(|r| r == role),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Roles::Many(many) if many.is_empty())
    }
}

/// The `aud` claim, which RFC 7519 allows as one string or an array of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(aud: &str) -> Self {
        Audience::One(aud.to_owned())
    }
}

/// How many accepted tokens a verifier remembers; it forgets them all when full.
const ACCEPTED_TOKENS: usize = 4096;

/// Verifies bearer tokens against several public keys at once, chosen by `kid`.
///
/// A token it has accepted is accepted again, until it expires, without checking its signature
/// again: an Ed25519 verification costs more than the rest of a small call, and callers send
/// the same token with every call. The remembered tokens are this verifier's own; a change of
/// the keys builds a new verifier, so a token signed by a retired key is refused at once.
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    accepted: std::sync::Mutex<HashMap<String, Accepted>>,
}

/// A token accepted once, and the times between which it stays valid (seconds since the epoch,
/// leeway included).
struct Accepted {
    caller: Caller,
    from: i64,
    until: i64,
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
            decoding.insert(kid.clone(), decoding_key(kid, pem)?);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        // LIMITATION: the verifier sets no longest lifetime, so a token signed with a far `exp` by a key's holder stays valid until that key is retired; only `onbehalf token` caps it at 366 days.
        Ok(Self {
            keys: decoding,
            validation,
            accepted: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Whether `pem` is a PEM-encoded Ed25519 public key, as [`Verifier::new`] requires of every
    /// key.
    pub fn check_key(kid: &str, pem: &[u8]) -> Result<()> {
        decoding_key(kid, pem).map(|_| ())
    }

    /// Loads every `*.pub.pem` file of `dir` as a key whose `kid` is the file name before
    /// `.pub.pem`.
    pub fn load_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
        key_files(dir)?
            .into_iter()
            .map(|(kid, path)| {
                let pem = std::fs::read(&path)
                    .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))?;
                Ok((kid, pem))
            })
            .collect()
    }

    /// The key ids this verifier accepts, in order.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Verifies `token` and names its caller, or says why it is refused.
    pub fn verify(&self, token: &str) -> Result<Caller> {
        let now = now_seconds();
        if let Some(caller) = self.accepted_at(token, now) {
            return Ok(caller);
        }
        let (caller, from, until) = self.verify_signed(token)?;
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        if accepted.len() >= ACCEPTED_TOKENS {
            accepted.clear();
        }
        accepted.insert(
            token.to_owned(),
            Accepted {
                caller: caller.clone(),
                from,
                until,
            },
        );
        Ok(caller)
    }

    /// The caller of `token` if this verifier accepted it before and it is still valid at
    /// `now`; a remembered token no longer valid is forgotten, so that verifying it again says
    /// why it is refused.
    fn accepted_at(&self, token: &str, now: i64) -> Option<Caller> {
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        let entry = accepted.get(token)?;
        if entry.from <= now && now <= entry.until {
            return Some(entry.caller.clone());
        }
        accepted.remove(token);
        None
    }

    /// Checks `token`'s signature and claims; its caller and the times between which it stays
    /// valid.
    fn verify_signed(&self, token: &str) -> Result<(Caller, i64, i64)> {
        let unauthenticated =
            |why: &str| Error::Unauthenticated(format!("bearer token refused: {why}"));
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(unauthenticated("algorithm must be EdDSA"));
        }
        // The signer says the token means something else to a reader that understands these
        // extensions; this server understands none.
        if header.crit.is_some() {
            return Err(unauthenticated(
                "a critical header extension is not understood",
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| unauthenticated("no `kid` header"))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| unauthenticated("unknown `kid`"))?;
        let data =
            jsonwebtoken::decode::<ClaimsWithRoles>(token, key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => unauthenticated("expired"),
                    ErrorKind::ImmatureSignature => unauthenticated("not valid yet"),
                    ErrorKind::InvalidIssuer => unauthenticated("wrong issuer"),
                    ErrorKind::InvalidAudience => unauthenticated("wrong audience"),
                    ErrorKind::InvalidSignature => unauthenticated("bad signature"),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        unauthenticated(&format!("the required claim `{claim}` is missing"))
                    }
                    // The signature held, so the claims are the signer's own: naming the field
                    // that is missing or of the wrong type tells the caller nothing secret.
                    ErrorKind::Json(e) => unauthenticated(&format!("unreadable claims: {e}")),
                    _ => unauthenticated("invalid"),
                }
            })?;
        let ClaimsWithRoles { claims, roles } = data.claims;
        let leeway = LEEWAY_SECONDS as i64;
        if claims.iat > now_seconds() + leeway {
            return Err(unauthenticated("issued in the future"));
        }
        let actor = parse_subject(&claims.sub).ok_or_else(|| unauthenticated("malformed `sub`"))?;
        if matches!(actor, Actor::Staff(_)) && !roles.contains(STAFF_ROLE) {
            return Err(unauthenticated("a staff subject needs the `staff` role"));
        }
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
        // The same bounds as the checks above and jsonwebtoken's on `exp` and `nbf`.
        let from = claims
            .iat
            .max(claims.nbf.unwrap_or(i64::MIN))
            .saturating_sub(leeway);
        let until = claims.exp.saturating_add(leeway);
        Ok((Caller { actor, scopes }, from, until))
    }
}

fn decoding_key(kid: &str, pem: &[u8]) -> Result<DecodingKey> {
    DecodingKey::from_ed_pem(pem).map_err(|e| {
        Error::Internal(format!(
            "verification key `{kid}` is not an Ed25519 public key: {e}"
        ))
    })
}

/// Seconds since the epoch, as token claims count them.
fn now_seconds() -> i64 {
    chrono::Utc::now().timestamp()
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

/// Every `*.pub.pem` file of `dir` with its `kid` (the file name before `.pub.pem`), in `kid`
/// order; none if `dir` does not exist.
pub fn key_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let cannot_read =
        |e: std::io::Error| Error::Internal(format!("cannot read {}: {e}", dir.display()));
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(cannot_read(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(cannot_read)?.path();
        if let Some(kid) = public_kid(&path) {
            files.push((kid, path));
        }
    }
    files.sort();
    Ok(files)
}

/// The `kid` of a public key file `<kid>.pub.pem`.
pub fn public_kid(path: &Path) -> Option<String> {
    kid_of(path, ".pub.pem")
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
            aud: Audience::One(self.audience.clone()),
            sub: sub.to_owned(),
            exp: (now + ttl).timestamp(),
            iat: now.timestamp(),
            nbf: None,
            scope: scope.map(str::to_owned),
        };
        self.sign_claims(&claims)
    }

    /// A token for the staff member `staff:<name>`, with the `staff` role, valid from `now` for
    /// `ttl`.
    pub fn sign_staff(&self, name: &str, now: DateTime<Utc>, ttl: Duration) -> Result<String> {
        if !valid_name(name) {
            return Err(Error::invalid(
                "staff",
                "a staff name is 1 to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
        let claims = ClaimsWithRoles {
            claims: Claims {
                iss: self.issuer.clone(),
                aud: Audience::One(self.audience.clone()),
                sub: format!("staff:{name}"),
                exp: (now + ttl).timestamp(),
                iat: now.timestamp(),
                nbf: None,
                scope: None,
            },
            roles: Roles::Many(vec![STAFF_ROLE.to_owned()]),
        };
        self.sign_claims(&claims)
    }

    /// Signs arbitrary claims (tests use this to build refused tokens).
    pub fn sign_claims<C: Serialize>(&self, claims: &C) -> Result<String> {
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
        restore_public_key(&existing)?;
        return Ok((existing, false));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("cannot encode public key: {e}")))?;
    // PKCS#8 v1 (no embedded public key), the form every common tool reads.
    let private_pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
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

/// Writes `<kid>.pub.pem` beside `<kid>.key.pem` when it is missing, derived from the private
/// key, so that a data directory that lost its public key still verifies its own tokens.
fn restore_public_key(private_path: &Path) -> Result<()> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let Some(kid) = kid_of(private_path, ".key.pem") else {
        return Ok(());
    };
    let public_path = private_path.with_file_name(format!("{kid}.pub.pem"));
    if public_path.exists() {
        return Ok(());
    }
    let pem = std::fs::read_to_string(private_path)
        .map_err(|e| Error::Internal(format!("cannot read {}: {e}", private_path.display())))?;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        Error::Internal(format!(
            "{} is not an Ed25519 private key: {e}",
            private_path.display()
        ))
    })?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("cannot encode public key: {e}")))?;
    std::fs::write(&public_path, public_pem.as_bytes())
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", public_path.display())))?;
    tracing::warn!(path = %public_path.display(), "restored a missing public key from its private key");
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_key() -> (tempfile_dir::Dir, Signer, Verifier) {
        let dir = tempfile_dir::Dir::new();
        let (path, created) = ensure_dev_keypair(dir.path()).unwrap();
        assert!(created);
        let signer = Signer::load(&path, DEFAULT_ISSUER, DEFAULT_ISSUER).unwrap();
        let keys = Verifier::load_dir(&keys_dir(dir.path())).unwrap();
        let verifier = Verifier::new(DEFAULT_ISSUER, DEFAULT_ISSUER, &keys).unwrap();
        (dir, signer, verifier)
    }

    mod tempfile_dir {
        /// A directory removed on drop.
        pub(super) struct Dir(std::path::PathBuf);

        impl Dir {
            pub(super) fn new() -> Self {
                let path =
                    std::env::temp_dir().join(format!("onbehalf-auth-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }

            pub(super) fn path(&self) -> &std::path::Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn claims(aud: Audience, iat_in: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: DEFAULT_ISSUER.into(),
            aud,
            sub: "service:billing".into(),
            exp: now + 3600,
            iat: now + iat_in,
            nbf: None,
            scope: Some("billing:write".into()),
        }
    }

    #[test]
    fn an_audience_array_naming_us_is_accepted() {
        let (_dir, signer, verifier) = dev_key();
        let aud = Audience::Many(vec!["other".into(), DEFAULT_ISSUER.into()]);
        let token = signer.sign_claims(&claims(aud, 0)).unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap().actor,
            Actor::Service("billing".into())
        );
    }

    #[test]
    fn a_staff_subject_is_accepted_only_with_the_staff_role() {
        let (_dir, signer, verifier) = dev_key();
        let token = signer
            .sign_staff("amina", Utc::now(), Duration::hours(1))
            .unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap().actor,
            Actor::Staff("amina".into())
        );

        let mut without_role = claims("onbehalf".into(), 0);
        without_role.sub = "staff:amina".into();
        let token = signer.sign_claims(&without_role).unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            Error::Unauthenticated(
                "bearer token refused: a staff subject needs the `staff` role".into()
            )
        );

        let other_role = ClaimsWithRoles {
            claims: without_role,
            roles: Roles::One("support".into()),
        };
        let token = signer.sign_claims(&other_role).unwrap();
        assert!(verifier.verify(&token).is_err());
        let one_role = ClaimsWithRoles {
            roles: Roles::One("staff".into()),
            ..other_role
        };
        let token = signer.sign_claims(&one_role).unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap().actor,
            Actor::Staff("amina".into())
        );
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused() {
        let (_dir, signer, verifier) = dev_key();
        let token = signer
            .sign_claims(&claims("onbehalf".into(), 3600))
            .unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            Error::Unauthenticated("bearer token refused: issued in the future".into())
        );
    }

    #[test]
    fn an_accepted_token_is_remembered_until_it_expires_then_refused_as_expired() {
        let (_dir, signer, verifier) = dev_key();
        let now = Utc::now().timestamp();
        let mut two_minutes = claims("onbehalf".into(), 0);
        two_minutes.exp = now + 120;
        let token = signer.sign_claims(&two_minutes).unwrap();
        let billing = Caller {
            actor: Actor::Service("billing".into()),
            scopes: BTreeSet::from(["billing:write".to_owned()]),
        };

        assert_eq!(verifier.verify(&token).unwrap(), billing);
        assert_eq!(verifier.accepted_at(&token, now), Some(billing.clone()));
        assert_eq!(verifier.verify(&token).unwrap(), billing);
        // Valid up to the leeway past `exp`, and not remembered a second later.
        let last = now + 120 + LEEWAY_SECONDS as i64;
        assert_eq!(verifier.accepted_at(&token, last), Some(billing));
        assert_eq!(verifier.accepted_at(&token, last + 1), None);
        assert_eq!(verifier.accepted.lock().unwrap().len(), 0);

        // Once it has expired for the signature check too, verifying it again says so.
        let mut expired = claims("onbehalf".into(), -7200);
        expired.exp = now - 3600;
        let token = signer.sign_claims(&expired).unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            Error::Unauthenticated("bearer token refused: expired".into())
        );
        assert_eq!(verifier.accepted_at(&token, now), None);
    }

    #[test]
    fn a_signed_token_with_a_critical_header_extension_is_refused() {
        let (_dir, signer, verifier) = dev_key();
        let claims = claims("onbehalf".into(), 0);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.kid.clone());
        header.crit = Some(vec!["exp-is-advisory".into()]);
        let token = jsonwebtoken::encode(&header, &claims, &signer.key).unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            Error::Unauthenticated(
                "bearer token refused: a critical header extension is not understood".into()
            )
        );

        header.crit = None;
        let token = jsonwebtoken::encode(&header, &claims, &signer.key).unwrap();
        assert!(verifier.verify(&token).is_ok());
    }

    #[test]
    fn a_signed_token_without_a_required_claim_is_refused_naming_it() {
        let (_dir, signer, verifier) = dev_key();
        let now = Utc::now().timestamp();
        let full = serde_json::json!({
            "iss": DEFAULT_ISSUER, "aud": DEFAULT_ISSUER, "sub": "service:billing",
            "iat": now, "exp": now + 600,
        });
        for claim in ["exp", "iat", "sub", "iss", "aud"] {
            let mut claims = full.clone();
            claims.as_object_mut().unwrap().remove(claim);
            let token = signer.sign_claims(&claims).unwrap();
            let refused = verifier.verify(&token).unwrap_err().to_string();
            // serde_json adds where in the claims it stopped.
            let expected =
                format!("bearer token refused: unreadable claims: missing field `{claim}`");
            assert!(refused.starts_with(&expected), "{refused}");
        }
        assert!(verifier.verify(&signer.sign_claims(&full).unwrap()).is_ok());
    }

    #[test]
    fn a_remembered_token_altered_by_one_character_is_checked_and_refused() {
        let (_dir, signer, verifier) = dev_key();
        let token = signer.sign_claims(&claims("onbehalf".into(), 0)).unwrap();
        verifier.verify(&token).unwrap();

        // The signature's first character: every base64 character there is a whole sextet.
        let at = token.rfind('.').unwrap() + 1;
        let swapped = if token[at..].starts_with('A') {
            "B"
        } else {
            "A"
        };
        let altered = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
        assert_eq!(
            verifier.verify(&altered).unwrap_err(),
            Error::Unauthenticated("bearer token refused: bad signature".into())
        );
        assert_eq!(verifier.accepted.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_verifier_built_without_a_key_refuses_tokens_another_accepted_with_it() {
        let (dir, signer, verifier) = dev_key();
        let token = signer.sign_claims(&claims("onbehalf".into(), 0)).unwrap();
        verifier.verify(&token).unwrap();

        let keys = Verifier::load_dir(&keys_dir(dir.path())).unwrap();
        let retired: Vec<(String, Vec<u8>)> = keys
            .into_iter()
            .map(|(kid, pem)| (format!("{kid}-next"), pem))
            .collect();
        let reloaded = Verifier::new(DEFAULT_ISSUER, DEFAULT_ISSUER, &retired).unwrap();
        assert_eq!(
            reloaded.verify(&token).unwrap_err(),
            Error::Unauthenticated("bearer token refused: unknown `kid`".into())
        );
    }

    #[test]
    fn a_full_memory_of_tokens_starts_over() {
        let (_dir, signer, verifier) = dev_key();
        let token = signer.sign_claims(&claims("onbehalf".into(), 0)).unwrap();
        let caller = verifier.verify(&token).unwrap();
        {
            let mut accepted = verifier.accepted.lock().unwrap();
            for i in 1..ACCEPTED_TOKENS {
                accepted.insert(
                    format!("token-{i}"),
                    Accepted {
                        caller: caller.clone(),
                        from: 0,
                        until: i64::MAX,
                    },
                );
            }
            assert_eq!(accepted.len(), ACCEPTED_TOKENS);
        }
        let other = signer.sign_claims(&claims("onbehalf".into(), -1)).unwrap();
        verifier.verify(&other).unwrap();
        let accepted = verifier.accepted.lock().unwrap();
        assert_eq!(accepted.len(), 1);
        assert!(accepted.contains_key(&other));
    }

    #[test]
    fn the_private_key_is_pkcs8_v1_and_a_lost_public_key_is_restored() {
        let dir = tempfile_dir::Dir::new();
        let (path, _) = ensure_dev_keypair(dir.path()).unwrap();
        let pem = std::fs::read_to_string(&path).unwrap();
        // A v1 PrivateKeyInfo of an Ed25519 key is 48 bytes: 64 base64 characters on one line.
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(body.len(), 64, "{pem}");

        let public = path.with_file_name(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replace(".key.pem", ".pub.pem"),
        );
        let original = std::fs::read(&public).unwrap();
        std::fs::remove_file(&public).unwrap();
        let (again, created) = ensure_dev_keypair(dir.path()).unwrap();
        assert_eq!((again, created), (path, false));
        assert_eq!(std::fs::read(&public).unwrap(), original);
    }
}
