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

/// Whether the session cookie is marked `Secure`: always, unless the dashboard listens on loopback only (the demo,
/// an SSH tunnel) or `--insecure-cookies` says the operator serves plain HTTP on purpose.
pub fn secure_cookies(listen: std::net::SocketAddr, insecure: bool) -> bool {
    !insecure && !listen.ip().is_loopback()
}

/// Wrong logins a client may make before it must wait.
pub const FREE_ATTEMPTS: u32 = 5;
/// The longest wait; each further wrong attempt doubles it up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Clients tracked at most; past it the entry whose block ends first is forgotten.
const MAX_CLIENTS: usize = 10_000;

/// Per-client login attempt limiting: after [`FREE_ATTEMPTS`] wrong tokens a client waits 1 s, then 2 s, 4 s … up to
/// [`MAX_BACKOFF`] before it may try again (the right token included); a success forgets it. Pure over `now`.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    clients: Mutex<HashMap<String, Attempts>>,
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    failures: u32,
    blocked_until: Option<Instant>,
}

impl LoginThrottle {
    /// How long `client` must still wait before trying, or `None` when it may try now.
    pub fn wait(&self, client: &str, now: Instant) -> Option<Duration> {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let until = clients.get(client)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a wrong token from `client`.
    pub fn failed(&self, client: &str, now: Instant) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(client) {
            let first = clients
                .iter()
                .min_by_key(|(_, a)| a.blocked_until)
                .map(|(k, _)| k.clone());
            if let Some(first) = first {
                clients.remove(&first);
            }
        }
        let attempts = clients.entry(client.to_owned()).or_insert(Attempts {
            failures: 0,
            blocked_until: None,
        });
        attempts.failures = attempts.failures.saturating_add(1);
        if let Some(over) = attempts.failures.checked_sub(FREE_ATTEMPTS) {
            let backoff = Duration::from_secs(1u64 << over.min(16)).min(MAX_BACKOFF);
            attempts.blocked_until = Some(now + backoff);
        }
    }

    /// A right token: `client` starts afresh.
    pub fn succeeded(&self, client: &str) {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(client);
    }
}

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

    #[test]
    fn cookies_are_secure_unless_on_loopback_or_told_otherwise() {
        let public: std::net::SocketAddr = "0.0.0.0:8088".parse().unwrap();
        let loopback: std::net::SocketAddr = "127.0.0.1:8088".parse().unwrap();
        assert!(secure_cookies(public, false));
        assert!(!secure_cookies(public, true));
        assert!(!secure_cookies(loopback, false));
    }

    #[test]
    fn the_wait_doubles_after_the_free_attempts_and_a_success_forgets() {
        let throttle = LoginThrottle::default();
        let t0 = Instant::now();
        for _ in 0..FREE_ATTEMPTS - 1 {
            throttle.failed("a", t0);
        }
        assert_eq!(throttle.wait("a", t0), None, "still free");
        throttle.failed("a", t0);
        assert_eq!(throttle.wait("a", t0), Some(Duration::from_secs(1)));
        assert_eq!(
            throttle.wait("a", t0 + Duration::from_secs(1)),
            None,
            "the wait is over"
        );
        throttle.failed("a", t0 + Duration::from_secs(1));
        assert_eq!(
            throttle.wait("a", t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        for _ in 0..30 {
            throttle.failed("a", t0);
        }
        assert_eq!(throttle.wait("a", t0), Some(MAX_BACKOFF), "capped");
        assert_eq!(throttle.wait("b", t0), None, "per client");
        throttle.succeeded("a");
        assert_eq!(throttle.wait("a", t0), None);
    }

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
