//! Invitation acceptance tokens.
//!
//! A token names its client account, invitation and send generation, and carries a MAC of them
//! under the server's secret. Nothing secret is stored in the log: a rebuild of the
//! notification read model recomputes the same token, and acceptance loads the named account
//! directly.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use onbehalf_projections::InvitationLinks;
use sha2::Sha256;
use uuid::Uuid;

use crate::error::{Error, Result};

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"onbehalf invitation v1";
const BODY_LEN: usize = 1 + 16 + 16 + 4;
const MAC_LEN: usize = 32;

/// What a valid token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// The client account.
    pub account_id: Uuid,
    /// The invitation.
    pub invitation_id: Uuid,
    /// The send generation the token was made for.
    pub generation: u32,
}

/// Mints and verifies invitation tokens under one secret.
#[derive(Clone)]
pub struct InvitationTokens {
    secret: Vec<u8>,
    accept_url_base: String,
}

impl fmt::Debug for InvitationTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvitationTokens")
            .field("accept_url_base", &self.accept_url_base)
            .finish_non_exhaustive()
    }
}

impl InvitationTokens {
    /// Tokens under `secret` (at least 32 bytes), with links starting `accept_url_base`.
    pub fn new(secret: Vec<u8>, accept_url_base: &str) -> Result<Self> {
        if secret.len() < 32 {
            return Err(Error::Internal(
                "the invitation secret must be at least 32 bytes".into(),
            ));
        }
        Ok(Self {
            secret,
            accept_url_base: accept_url_base.to_owned(),
        })
    }

    /// Reads the secret from `path`, creating a random one there if the file does not exist.
    pub fn load_or_create_secret(path: &Path) -> Result<Vec<u8>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::Internal(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                crate::auth::write_private(path, &secret)?;
                Ok(secret)
            }
            Err(e) => Err(Error::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(DOMAIN);
        mac
    }

    /// The token of an invitation at a send generation.
    pub fn mint(&self, claims: TokenClaims) -> String {
        let mut body = Vec::with_capacity(BODY_LEN + MAC_LEN);
        body.push(VERSION);
        body.extend_from_slice(claims.account_id.as_bytes());
        body.extend_from_slice(claims.invitation_id.as_bytes());
        body.extend_from_slice(&claims.generation.to_be_bytes());
        let mut mac = self.mac();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(body)
    }

    /// Verifies a token (the MAC is compared in constant time) and says what it names.
    ///
    /// A token that is malformed or whose MAC does not verify is `NOT_FOUND`: to the caller it
    /// names no invitation.
    pub fn verify(&self, token: &str) -> Result<TokenClaims> {
        let not_found = || Error::NotFound("invitation not found for this token".into());
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| not_found())?;
        if bytes.len() != BODY_LEN + MAC_LEN || bytes[0] != VERSION {
            return Err(not_found());
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| not_found())?;
        let uuid_at = |at: usize| {
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&body[at..at + 16]);
            Uuid::from_bytes(raw)
        };
        let mut generation = [0u8; 4];
        generation.copy_from_slice(&body[33..37]);
        Ok(TokenClaims {
            account_id: uuid_at(1),
            invitation_id: uuid_at(17),
            generation: u32::from_be_bytes(generation),
        })
    }
}

impl InvitationLinks for InvitationTokens {
    fn token(&self, account_id: Uuid, invitation_id: Uuid, generation: u32) -> String {
        self.mint(TokenClaims {
            account_id,
            invitation_id,
            generation,
        })
    }

    fn accept_url(&self, token: &str) -> String {
        format!("{}?token={token}", self.accept_url_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> InvitationTokens {
        InvitationTokens::new(
            vec![7u8; 32],
            "https://clientarea.example/invitations/accept",
        )
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies_to_what_it_names() {
        let claims = TokenClaims {
            account_id: Uuid::new_v4(),
            invitation_id: Uuid::new_v4(),
            generation: 3,
        };
        assert_eq!(tokens().verify(&tokens().mint(claims)).unwrap(), claims);
    }

    #[test]
    fn a_token_under_another_secret_is_not_found() {
        let other = InvitationTokens::new(vec![8u8; 32], "x").unwrap();
        let claims = TokenClaims {
            account_id: Uuid::new_v4(),
            invitation_id: Uuid::new_v4(),
            generation: 0,
        };
        let err = tokens().verify(&other.mint(claims)).unwrap_err();
        assert_eq!(
            err,
            Error::NotFound("invitation not found for this token".into())
        );
    }

    #[test]
    fn a_token_with_one_flipped_bit_is_not_found() {
        let claims = TokenClaims {
            account_id: Uuid::new_v4(),
            invitation_id: Uuid::new_v4(),
            generation: 0,
        };
        let mut raw = URL_SAFE_NO_PAD.decode(tokens().mint(claims)).unwrap();
        raw[20] ^= 1;
        assert!(matches!(
            tokens().verify(&URL_SAFE_NO_PAD.encode(raw)),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            tokens().verify("not a token"),
            Err(Error::NotFound(_))
        ));
    }
}
