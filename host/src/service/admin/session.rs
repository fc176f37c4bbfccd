//! Operators' sessions: a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` behind TLS), kept in memory with its
//! expiry and a CSRF token every state-changing form must carry. Before
//! signing in, the sign-in form's own token is bound to a short-lived
//! cookie the same way, so a sign-in cannot be forged either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::clock::Clock;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "outreach_host_session";
/// The sign-in form's cookie.
pub const SIGN_IN_COOKIE: &str = "outreach_host_sign_in";
/// How long a sign-in form stays valid.
const SIGN_IN_FORM_LIFE: Duration = Duration::from_secs(15 * 60);
/// Sign-in forms kept at most (anyone may ask for one): past this, the
/// oldest is forgotten.
const MAX_SIGN_IN_FORMS: usize = 10_000;
/// Sign-in forms pending per client address.
const MAX_SIGN_IN_FORMS_PER_CLIENT: usize = 8;

/// A random token: 32 bytes, URL-safe base64.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether two tokens are equal, in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A signed-in operator.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    /// The token every form that changes something carries.
    pub csrf: String,
    expires_ms: u64,
}

/// Sessions and pending sign-in forms, in memory: a restart signs everyone
/// out.
pub struct Sessions {
    clock: Clock,
    life: Duration,
    signed_in: Mutex<HashMap<String, Session>>,
    /// Sign-in form cookie → the form.
    forms: Mutex<HashMap<String, PendingForm>>,
}

/// A sign-in form given out and not yet used.
struct PendingForm {
    token: String,
    expires_ms: u64,
    /// Who asked for it (its address, as [`super::attempts::client_key`]).
    client: String,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Sessions {
    pub fn new(life: Duration, clock: Clock) -> Self {
        Self {
            clock,
            life,
            signed_in: Mutex::default(),
            forms: Mutex::default(),
        }
    }

    /// A new sign-in form for `client`: the cookie to set and the token
    /// the form carries. A client that asks for many forms loses its own
    /// oldest, not another client's.
    pub fn sign_in_form(&self, client: &str) -> (String, String) {
        let now = self.clock.now_ms();
        let (cookie, form) = (token(), token());
        let mut forms = lock(&self.forms);
        forms.retain(|_, pending| pending.expires_ms > now);
        let oldest_of = |forms: &HashMap<String, PendingForm>, client: Option<&str>| {
            forms
                .iter()
                .filter(|(_, pending)| client.is_none_or(|c| pending.client == c))
                .min_by_key(|(_, pending)| pending.expires_ms)
                .map(|(cookie, _)| cookie.clone())
        };
        let own = forms.values().filter(|p| p.client == client).count();
        if own >= MAX_SIGN_IN_FORMS_PER_CLIENT
            && let Some(oldest) = oldest_of(&forms, Some(client))
        {
            forms.remove(&oldest);
        }
        while forms.len() >= MAX_SIGN_IN_FORMS {
            let Some(oldest) = oldest_of(&forms, None) else {
                break;
            };
            forms.remove(&oldest);
        }
        forms.insert(
            cookie.clone(),
            PendingForm {
                token: form.clone(),
                expires_ms: now + ms(SIGN_IN_FORM_LIFE),
                client: client.to_owned(),
            },
        );
        (cookie, form)
    }

    /// Whether `form` is the token of the sign-in form `cookie` was set
    /// with (each form is good once).
    pub fn take_sign_in_form(&self, cookie: &str, form: &str) -> bool {
        let now = self.clock.now_ms();
        match lock(&self.forms).remove(cookie) {
            Some(pending) => pending.expires_ms > now && same_token(&pending.token, form),
            None => false,
        }
    }

    /// Signs `user` in: the new session's id (the cookie's value).
    pub fn start(&self, user: &str) -> (String, Session) {
        let now = self.clock.now_ms();
        let id = token();
        let session = Session {
            user: user.to_owned(),
            csrf: token(),
            expires_ms: now + ms(self.life),
        };
        let mut signed_in = lock(&self.signed_in);
        signed_in.retain(|_, s| s.expires_ms > now);
        signed_in.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The session with this id, unless it expired.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = self.clock.now_ms();
        let mut signed_in = lock(&self.signed_in);
        match signed_in.get(id) {
            Some(session) if session.expires_ms > now => Some(session.clone()),
            Some(_) => {
                signed_in.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        lock(&self.signed_in).remove(id);
    }

    /// Signs everyone out (the operator's password changed).
    pub fn end_all(&self) {
        lock(&self.signed_in).clear();
    }

    /// The `Set-Cookie` value for `name` = `value`, for `life` (`None`:
    /// deletes it).
    pub fn cookie(name: &str, value: &str, life: Option<Duration>, secure: bool) -> String {
        let max_age = life.map_or(0, |l| l.as_secs());
        let secure = if secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }

    pub fn life(&self) -> Duration {
        self.life
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_expires_and_a_sign_in_form_is_good_once() {
        let sessions = Sessions::new(Duration::from_secs(60), Clock::starting_at(1_000_000));
        let (id, session) = sessions.start("ops");
        assert_eq!(sessions.get(&id).unwrap().csrf, session.csrf);
        assert!(sessions.get("forged").is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(sessions.get(&id).is_none(), "expired");

        let (cookie, form) = sessions.sign_in_form("10.0.0.1");
        assert!(!sessions.take_sign_in_form(&cookie, "wrong"));
        let (cookie, form2) = sessions.sign_in_form("10.0.0.1");
        assert_ne!(form, form2);
        assert!(sessions.take_sign_in_form(&cookie, &form2));
        assert!(!sessions.take_sign_in_form(&cookie, &form2), "used once");
    }

    #[tokio::test(start_paused = true)]
    async fn sign_in_forms_anyone_asks_for_are_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60), Clock::starting_at(1_000_000));
        let (first, form) = sessions.sign_in_form("10.0.0.1");
        tokio::time::advance(Duration::from_millis(1)).await;
        for n in 0..MAX_SIGN_IN_FORMS {
            let _ = sessions.sign_in_form(&format!("client{n}"));
        }
        assert_eq!(lock(&sessions.forms).len(), MAX_SIGN_IN_FORMS);
        assert!(
            !sessions.take_sign_in_form(&first, &form),
            "the oldest went"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_asking_for_many_forms_does_not_evict_another_clients() {
        let sessions = Sessions::new(Duration::from_secs(60), Clock::starting_at(1_000_000));
        let (operator, form) = sessions.sign_in_form("192.0.2.7");
        for _ in 0..10_200 {
            tokio::time::advance(Duration::from_millis(1)).await;
            let _ = sessions.sign_in_form("203.0.113.9");
        }
        assert!(sessions.take_sign_in_form(&operator, &form));
        assert_eq!(lock(&sessions.forms).len(), MAX_SIGN_IN_FORMS_PER_CLIENT);
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let cookie = Sessions::cookie(SESSION_COOKIE, "v", Some(Duration::from_secs(9)), true);
        assert_eq!(
            cookie,
            "outreach_host_session=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=9; Secure"
        );
        assert!(!Sessions::cookie("a", "", None, false).contains("Secure"));
    }
}
