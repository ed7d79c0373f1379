//! JWT bearer tokens. The algorithm is pinned to the configured key (HS256 with a secret,
//! or RS256/EdDSA with a public key), so `alg: none` and HS/RS confusion are refused; `exp`
//! is required, `iss` and `aud` are checked when configured, with 30 s of leeway.

use super::AppState;
use super::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Clock skew tolerated on `exp` (and `nbf`), in seconds.
pub const LEEWAY_S: u64 = 30;
/// The shortest HS256 secret accepted, in bytes.
pub const SECRET_BYTES_MIN: usize = 32;
/// The secret file created in the data folder when no key is configured.
pub const SECRET_FILE: &str = "jwt-secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Operator,
    Meter,
    Tenant,
    Auditor,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "operator" => Ok(Self::Operator),
            "meter" => Ok(Self::Meter),
            "tenant" => Ok(Self::Tenant),
            "auditor" => Ok(Self::Auditor),
            _ => Err(format!(
                "unknown role {s:?}: expected operator, meter, tenant or auditor"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meters: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// An unscoped token's claims (no tenant, sites or meters, no `iss`/`aud`): issued at
    /// `now` (seconds since the epoch), valid for `ttl_s` seconds. Add a scope with struct
    /// update syntax.
    pub fn unscoped(sub: impl Into<String>, role: Role, now: u64, ttl_s: u64) -> Self {
        Self {
            sub: sub.into(),
            role,
            exp: now + ttl_s,
            iat: Some(now),
            tenant_id: None,
            sites: None,
            meters: None,
            iss: None,
            aud: None,
        }
    }

    /// Refuses (403) a caller whose role is not among `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            tracing::warn!(sub = %self.sub, role = ?self.role, "refused: role not allowed");
            Err(ApiError::forbidden(
                format!("the {:?} role may not do this", self.role).to_lowercase(),
            ))
        }
    }

    /// A tenant token reaches only its own tenant.
    pub fn require_tenant_scope(&self, tenant: &str) -> Result<(), ApiError> {
        if self.role == Role::Tenant && self.tenant_id.as_deref() != Some(tenant) {
            tracing::warn!(sub = %self.sub, tenant, "refused: tenant out of scope");
            return Err(ApiError::forbidden(format!(
                "this token is not scoped to tenant {tenant:?}"
            )));
        }
        Ok(())
    }

    /// A meter token posts only for its meters or the meters of its sites.
    pub fn meter_in_scope(&self, meter: &str, site: Option<&str>) -> bool {
        match self.role {
            Role::Meter => {
                self.meters.as_ref().is_some_and(|m| m.iter().any(|x| x == meter))
                    || site.is_some_and(|s| self.sites.as_ref().is_some_and(|ss| ss.iter().any(|x| x == s)))
            }
            _ => true,
        }
    }
}

/// How tokens are verified (and minted, where a signing key is at hand).
#[derive(Clone)]
pub struct AuthConfig {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Where the key came from, for the start-up message (never the key itself).
    pub source: String,
    /// Tokens whose signature and claims were verified, with their claims: every request
    /// carries its token, and checking an HS256 signature again took 13 % of a single-reading
    /// request's CPU (an RS256 one costs more). Only `exp` depends on the time; it is checked
    /// again on every use.
    verified: Arc<Mutex<HashMap<String, Claims>>>,
}

/// Most verified tokens kept; past it the cache starts over.
pub const VERIFIED_TOKENS_MAX: usize = 4096;

impl AuthConfig {
    pub fn hs256(secret: &[u8], source: &str) -> Result<Self, String> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(format!("the HS256 secret must be at least {SECRET_BYTES_MIN} bytes"));
        }
        Ok(Self {
            algorithm: Algorithm::HS256,
            decoding: DecodingKey::from_secret(secret),
            encoding: Some(EncodingKey::from_secret(secret)),
            issuer: None,
            audience: None,
            source: source.to_string(),
            verified: Arc::default(),
        })
    }

    /// Verification with a public key (RS256 or EdDSA); `private_pem` enables minting.
    pub fn public_key(
        algorithm: Algorithm,
        public_pem: &[u8],
        private_pem: Option<&[u8]>,
        source: &str,
    ) -> Result<Self, String> {
        let (decoding, encoding) = match algorithm {
            Algorithm::RS256 => (
                DecodingKey::from_rsa_pem(public_pem).map_err(|e| format!("bad RSA public key: {e}"))?,
                private_pem
                    .map(|p| EncodingKey::from_rsa_pem(p).map_err(|e| format!("bad RSA private key: {e}")))
                    .transpose()?,
            ),
            Algorithm::EdDSA => (
                DecodingKey::from_ed_pem(public_pem).map_err(|e| format!("bad Ed25519 public key: {e}"))?,
                private_pem
                    .map(|p| EncodingKey::from_ed_pem(p).map_err(|e| format!("bad Ed25519 private key: {e}")))
                    .transpose()?,
            ),
            other => {
                return Err(format!("unsupported algorithm {other:?}: use RS256 or EdDSA"));
            }
        };
        Ok(Self {
            algorithm,
            decoding,
            encoding,
            issuer: None,
            audience: None,
            source: source.to_string(),
            verified: Arc::default(),
        })
    }

    pub fn with_issuer_audience(mut self, issuer: Option<String>, audience: Option<String>) -> Self {
        // What was verified under other expectations is not verified under these.
        self.verified = Arc::default();
        self.issuer = issuer;
        self.audience = audience;
        self
    }

    /// Reads the configuration from the environment: `WATTLEDGER_JWT_PUBLIC_KEY_FILE` (with
    /// `WATTLEDGER_JWT_ALGORITHM` RS256 or EdDSA, and `WATTLEDGER_JWT_PRIVATE_KEY_FILE` to
    /// mint), else `WATTLEDGER_JWT_SECRET`, else the secret file in `data_dir` — created
    /// (random, mode 0600) when `create` is set.
    pub fn from_env(data_dir: &Path, create: bool) -> Result<Self, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cfg = if let Some(public) = env("WATTLEDGER_JWT_PUBLIC_KEY_FILE") {
            let alg = match env("WATTLEDGER_JWT_ALGORITHM").as_deref().unwrap_or("RS256") {
                "RS256" => Algorithm::RS256,
                "EdDSA" => Algorithm::EdDSA,
                other => {
                    return Err(format!("WATTLEDGER_JWT_ALGORITHM {other:?}: use RS256 or EdDSA"));
                }
            };
            let pem = std::fs::read(&public).map_err(|e| format!("{public}: {e}"))?;
            let private = match env("WATTLEDGER_JWT_PRIVATE_KEY_FILE") {
                Some(p) => Some(std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?),
                None => None,
            };
            Self::public_key(alg, &pem, private.as_deref(), &format!("{alg:?} public key {public}"))?
        } else if let Some(secret) = env("WATTLEDGER_JWT_SECRET") {
            Self::hs256(secret.as_bytes(), "HS256 secret from WATTLEDGER_JWT_SECRET")?
        } else {
            let path = data_dir.join(SECRET_FILE);
            let secret = read_or_create_secret(&path, create)?;
            Self::hs256(&secret, &format!("HS256 secret in {}", path.display()))?
        };
        Ok(cfg.with_issuer_audience(env("WATTLEDGER_JWT_ISSUER"), env("WATTLEDGER_JWT_AUDIENCE")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// [`AuthConfig::verify`] at `now` (seconds since the epoch) for a token verified
    /// before; a token seen first is verified in full, at the system's time.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, String> {
        let known = self.verified.lock().expect("token cache").get(token).cloned();
        if let Some(claims) = known {
            // jsonwebtoken's rule: expired once `exp` is more than the leeway in the past.
            if claims.exp.saturating_add(LEEWAY_S) >= now {
                return Ok(claims);
            }
            self.verified.lock().expect("token cache").remove(token);
            return Err(format!(
                "invalid token: {}",
                jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::ExpiredSignature)
            ));
        }
        let claims = self.verify_signed(token)?;
        let mut cache = self.verified.lock().expect("token cache");
        if cache.len() >= VERIFIED_TOKENS_MAX {
            cache.clear();
        }
        cache.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    /// Checks the signature and every claim.
    fn verify_signed(&self, token: &str) -> Result<Claims, String> {
        let mut v = Validation::new(self.algorithm);
        v.leeway = LEEWAY_S;
        v.set_required_spec_claims(&["exp"]);
        // Every configured check is also a required claim: a token without `iss` or `aud`
        // does not pass a server that names them.
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        let claims = decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| format!("invalid token: {e}"))?
            .claims;
        if claims.role == Role::Tenant && claims.tenant_id.is_none() {
            return Err("invalid token: a tenant token must carry tenant_id".into());
        }
        Ok(claims)
    }

    /// Signs claims with the configured key (filling `iss`/`aud` when configured).
    pub fn mint(&self, mut claims: Claims) -> Result<String, String> {
        let key = self
            .encoding
            .as_ref()
            .ok_or("no signing key is configured: set WATTLEDGER_JWT_PRIVATE_KEY_FILE")?;
        if claims.iss.is_none() {
            claims.iss = self.issuer.clone();
        }
        if claims.aud.is_none() {
            claims.aud = self.audience.clone();
        }
        encode(&Header::new(self.algorithm), &claims, key).map_err(|e| format!("cannot sign: {e}"))
    }
}

fn read_or_create_secret(path: &PathBuf, create: bool) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(s) => Ok(s.trim_ascii().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            use rand::RngCore;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let secret = hex::encode(bytes);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(secret.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.sync_all().map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(secret.into_bytes())
        }
        Err(e) => Err(format!(
            "{}: {e} (start `wattledger serve` once to create it, or set WATTLEDGER_JWT_SECRET)",
            path.display()
        )),
    }
}

/// Parses a duration such as `30s`, `15m`, `1h`, `7d` into seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("--ttl {s:?}: expected a number and a unit, such as 1h"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("--ttl {s:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("--ttl {s:?} is too long"))
}

/// The caller, authenticated. A handler that takes it can only be reached with a valid token.
pub struct Auth(pub Claims);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))) else {
            tracing::warn!(path = %parts.uri.path(), "refused: no bearer token");
            return Err(ApiError::unauthorized(
                "a bearer token is required (Authorization: Bearer <JWT>)",
            ));
        };
        match state.auth.verify(token.trim()) {
            Ok(c) => Ok(Auth(c)),
            Err(why) => {
                tracing::warn!(path = %parts.uri.path(), reason = %why, "refused: bad token");
                Err(ApiError::unauthorized(why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64, ttl_s: u64) -> Claims {
        Claims::unscoped("ops", Role::Operator, now, ttl_s)
    }

    #[test]
    fn a_verified_token_is_taken_from_the_cache_until_it_expires() {
        let auth = AuthConfig::hs256(&[7u8; 32], "test").unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let token = auth.mint(claims(now, 60)).unwrap();
        assert_eq!(auth.verify(&token).unwrap().sub, "ops");
        assert_eq!(auth.verified.lock().unwrap().len(), 1, "verified once, kept");
        // Within the leeway after `exp`: still good; past it: refused, and forgotten.
        assert!(auth.verify_at(&token, now + 60 + LEEWAY_S).is_ok());
        let err = auth.verify_at(&token, now + 61 + LEEWAY_S).unwrap_err();
        assert_eq!(err, "invalid token: ExpiredSignature");
        assert!(auth.verified.lock().unwrap().is_empty());
        // The same token at the real time is verified in full again.
        assert!(auth.verify(&token).is_ok());
    }

    #[test]
    fn the_cache_never_vouches_for_another_token_or_other_expectations() {
        let auth = AuthConfig::hs256(&[7u8; 32], "test").unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let token = auth.mint(claims(now, 60)).unwrap();
        auth.verify(&token).unwrap();
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(
            auth.verify(&forged).is_err(),
            "a changed signature is checked, not looked up"
        );
        let other = AuthConfig::hs256(&[8u8; 32], "test").unwrap();
        assert!(other.verify(&token).is_err(), "another key has its own cache");
        let strict = auth.clone().with_issuer_audience(Some("campus".into()), None);
        let err = strict.verify(&token).unwrap_err();
        assert!(err.contains("iss"), "a server that names an issuer checks it: {err}");
        for i in 0..VERIFIED_TOKENS_MAX + 1 {
            auth.verify(&auth.mint(claims(now, 100 + i as u64)).unwrap()).unwrap();
        }
        assert!(auth.verified.lock().unwrap().len() <= VERIFIED_TOKENS_MAX, "bounded");
    }
}
