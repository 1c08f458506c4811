//! Who may connect and what they may do: HS256 tokens for WebSockets (with
//! an optional `rooms` claim), the API key for HTTP writes, and the Origin
//! allow-list against cross-site WebSocket hijacking.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hyper::header::{AUTHORIZATION, ORIGIN};
use hyper::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::protocol::{user, RoomName};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

pub struct Auth {
    jwt: Option<(DecodingKey, Validation)>,
    api_key: Option<String>,
    pub api_read_open: bool,
    allowed_origins: Vec<String>,
}

/// Who is calling the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAccess {
    /// The API key: every room.
    Key,
    /// A user's token: the rooms it grants.
    User(Grant),
    /// No credential, where the configuration allows that.
    Open,
    Denied,
}

impl ApiAccess {
    /// Whether this caller may touch `room`.
    pub fn allows(&self, room: &RoomName) -> bool {
        match self {
            ApiAccess::Key | ApiAccess::Open => true,
            ApiAccess::User(grant) => grant.allows(room),
            ApiAccess::Denied => false,
        }
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: String,
    /// Room names, or prefixes ending in `*`; `None`: every room.
    pub rooms: Option<Vec<String>>,
    /// When the token expires (the session is closed with 4001 then);
    /// `None`: no `exp`, or one past what the clock can represent.
    pub expires_at: Option<SystemTime>,
}

impl Grant {
    pub fn allows(&self, room: &RoomName) -> bool {
        let Some(rooms) = &self.rooms else {
            return true;
        };
        rooms.iter().any(|r| match r.strip_suffix('*') {
            Some(prefix) => room.as_str().starts_with(prefix),
            None => r == room.as_str(),
        })
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: Option<u64>,
    rooms: Option<Vec<String>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl Auth {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Auth> {
        let secret = read_secret(&cfg.jwt_secret, &cfg.jwt_secret_file, "JWT secret")?;
        let api_key = read_secret(&cfg.api_key, &cfg.api_key_file, "API key")?;
        let jwt = secret.map(|s| {
            let mut v = Validation::new(Algorithm::HS256);
            v.leeway = LEEWAY_SECS;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["sub"]);
            (DecodingKey::from_secret(s.as_bytes()), v)
        });
        Ok(Auth {
            jwt,
            api_key,
            api_read_open: cfg.api_read_open,
            allowed_origins: cfg.allowed_origins.clone(),
        })
    }

    pub fn tokens_required(&self) -> bool {
        self.jwt.is_some()
    }

    /// Checks a WebSocket upgrade's token (query or bearer header). `None`
    /// when authentication is off.
    pub fn check_token(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Option<Grant>, AuthError> {
        let Some((key, validation)) = &self.jwt else {
            return Ok(None);
        };
        let token = query_token
            .or_else(|| bearer(headers))
            .ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if let Err(e) = user::check(&c.sub) {
            return Err(AuthError::Invalid(format!("sub: {e}")));
        }
        Ok(Some(Grant {
            user: c.sub,
            rooms: c.rooms,
            expires_at: c.exp.and_then(expiry),
        }))
    }

    /// Who a request to the HTTP API is (`write`: POST). A user's token is
    /// held to its room grants like a WebSocket's (and publishes as its
    /// `sub`); the API key opens every room; without either, the API is
    /// open as configured.
    pub fn api_access(&self, headers: &HeaderMap, write: bool) -> ApiAccess {
        let given = bearer(headers);
        if let (Some(key), Some(given)) = (&self.api_key, given) {
            if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
                return ApiAccess::Key;
            }
        }
        let open = self.api_key.is_none() || (!write && self.api_read_open);
        match (&self.jwt, given) {
            // A user's token reads and writes as that user (its grants, its
            // rate), whatever the API key guards: it is not the key.
            (Some(_), Some(token)) => match self.check_token(headers, Some(token)) {
                Ok(Some(grant)) => ApiAccess::User(grant),
                Ok(None) => ApiAccess::Denied,
                // A bad credential is refused even where none is needed.
                Err(_) => ApiAccess::Denied,
            },
            _ if open => ApiAccess::Open,
            _ => ApiAccess::Denied,
        }
    }

    /// Whether a WebSocket upgrade's `Origin` is allowed.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        match headers.get(ORIGIN).and_then(|o| o.to_str().ok()) {
            None => true,
            Some(origin) => self.allowed_origins.iter().any(|a| {
                a.trim_end_matches('/')
                    .eq_ignore_ascii_case(origin.trim_end_matches('/'))
            }),
        }
    }
}

/// When a token with `exp` (seconds since the epoch, client-supplied)
/// expires; `None`, never, when the clock cannot represent it (≥ 2^63 s on
/// Linux): such a token outlives this process anyway.
fn expiry(exp: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn read_secret(
    value: &Option<String>,
    file: &Option<std::path::PathBuf>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(v) = value {
        return Ok(Some(v.clone()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} from {}", path.display()))?;
    let s = s.trim().to_owned();
    anyhow::ensure!(!s.is_empty(), "the {what} file {} is empty", path.display());
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_claims_match_names_and_prefixes() {
        let g = Grant {
            user: "u".into(),
            rooms: Some(vec!["lobby".into(), "team-*".into()]),
            expires_at: None,
        };
        let r = |s| RoomName::parse(s).unwrap();
        assert!(g.allows(&r("lobby")));
        assert!(g.allows(&r("team-a")));
        assert!(!g.allows(&r("lobby2")));
        assert!(!g.allows(&r("other")));
    }

    #[test]
    fn an_unrepresentable_expiry_is_never() {
        assert_eq!(expiry(0), Some(UNIX_EPOCH));
        assert!(expiry(4_000_000_000).is_some());
        assert_eq!(expiry(1 << 63), None);
        assert_eq!(expiry(u64::MAX), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
