//! Who may write: the login token, server-side sessions behind an HttpOnly SameSite=Strict cookie, and the per-session
//! CSRF token every write form carries. Reading needs no login; the ingest token is separate (see `routes::ingest`).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, HeaderValue, header};
use rand::Rng as _;

/// Name of the session cookie.
pub const COOKIE: &str = "switchyard_session";
/// A session lasts a working day; after that the person logs in again.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most, so a login loop cannot grow memory without bound; the oldest are dropped first.
const MAX_SESSIONS: usize = 10_000;

/// A secret compared in constant time, never printed by `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// 32 random bytes as hex, from the thread-local CSPRNG.
    pub fn random() -> Secret {
        Secret(random_hex())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison (length leaks, content does not).
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A logged-in person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The name given at login; recorded as the actor of releases.
    pub actor: String,
    /// Must come back with every write form of this session.
    pub csrf: String,
    expires: Instant,
}

/// The live sessions, by cookie value.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session and returns its cookie value.
    pub fn create(&self, actor: &str) -> String {
        let id = random_hex();
        let session = Session {
            actor: actor.to_owned(),
            csrf: random_hex(),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session);
        id
    }

    /// The session of the request's cookie, if it is live.
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.map.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a new session: HttpOnly so scripts cannot read it, SameSite=Strict so no other site's form can
/// send it.
pub fn session_cookie(id: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that deletes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("switchyard_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The bearer token of an `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_cookie_and_removed_on_logout() {
        let sessions = Sessions::default();
        let id = sessions.create("ana");
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("theme=dark; {COOKIE}={id}").parse().unwrap());
        let session = sessions.from_headers(&headers).unwrap();
        assert_eq!(session.actor, "ana");
        assert_eq!(session.csrf.len(), 64);
        sessions.remove(&headers);
        assert!(sessions.from_headers(&headers).is_none());
    }

    #[test]
    fn secrets_compare_by_content() {
        let s = Secret::new("abc");
        assert!(s.matches("abc"));
        assert!(!s.matches("abd"));
        assert!(!s.matches("ab"));
        assert_ne!(Secret::random().expose(), Secret::random().expose());
        assert_eq!(format!("{s:?}"), "Secret(…)");
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let c = session_cookie("x", false);
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        assert!(session_cookie("x", true).to_str().unwrap().ends_with("; Secure"));
    }
}
