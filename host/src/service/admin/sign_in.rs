//! Signing in and out: the sign-in form bound to its own cookie, the
//! password checked against its argon2id hash, the session cookie.

use super::*;

/// Password checks running at once, at most (argon2id with 19 MiB each).
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    csrf: Option<&'a str>,
    form: &'a str,
    problem: Option<&'a str>,
}

fn sign_in_form(
    sessions: &Sessions,
    client: &Client,
    secure: bool,
    status: StatusCode,
    problem: Option<&str>,
) -> Response {
    let (cookie, form) = sessions.sign_in_form(&client.0);
    let mut response = html(
        status,
        &SignInPage {
            csrf: None,
            form: &form,
            problem,
        },
    );
    if let Ok(value) = HeaderValue::from_str(&Sessions::cookie(
        SIGN_IN_COOKIE,
        &cookie,
        Some(Duration::from_secs(15 * 60)),
        secure,
    )) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub(super) async fn sign_in_page(State(service): State<Arc<Service>>, client: Client) -> Response {
    let (Some(sessions), Some(admin)) = (service.sessions(), service.current().file.admin.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    sign_in_form(
        &sessions,
        &client,
        admin.secure_cookies,
        StatusCode::OK,
        None,
    )
}

#[derive(Deserialize)]
pub(super) struct SignIn {
    #[serde(default)]
    form: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

pub(super) async fn sign_in(
    State(service): State<Arc<Service>>,
    client: Client,
    headers: HeaderMap,
    Form(sign_in): Form<SignIn>,
) -> Response {
    let (Some(sessions), Some(admin)) = (service.sessions(), service.current().file.admin.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let attempts = service.sign_in_attempts();
    // The name as given, bounded: it keys the per-user count.
    let user: String = sign_in.user.chars().take(64).collect();
    if let Some(wait) = attempts.must_wait(&client.0, &user) {
        let secs = wait.as_millis().div_ceil(1_000).max(1);
        tracing::warn!(
            client = %client.0,
            "a sign-in to the status page was refused: too many failures, {secs} s to wait"
        );
        let mut response = sign_in_form(
            &sessions,
            &client,
            admin.secure_cookies,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many failed sign-ins: try again in {secs} seconds."
            )),
        );
        if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let form_cookie = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if !sessions.take_sign_in_form(form_cookie, &sign_in.form) {
        return sign_in_form(
            &sessions,
            &client,
            admin.secure_cookies,
            StatusCode::FORBIDDEN,
            Some("This sign-in form expired or did not come from this page; try again."),
        );
    }
    let hash = admin.password_hash.clone();
    let password = sign_in.password;
    // Each check takes argon2's 19 MiB for a moment: however many attempts
    // arrive at once, only a few run; the rest wait their turn, holding
    // nothing but their small form.
    let Ok(_check) = PASSWORD_CHECKS.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let password_ok = tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        argon2::PasswordHash::new(&hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false);
    let user_ok = same_token(&sign_in.user, &admin.user);
    if !(user_ok && password_ok) {
        attempts.failed(&client.0, &user);
        tracing::warn!(client = %client.0, "a sign-in to the status page was refused");
        return sign_in_form(
            &sessions,
            &client,
            admin.secure_cookies,
            StatusCode::UNAUTHORIZED,
            Some("Wrong user or password."),
        );
    }
    attempts.succeeded(&client.0, &user);
    let (id, _) = sessions.start(&admin.user);
    let mut response = Redirect::to("/admin").into_response();
    for value in [
        Sessions::cookie(
            SESSION_COOKIE,
            &id,
            Some(sessions.life()),
            admin.secure_cookies,
        ),
        Sessions::cookie(SIGN_IN_COOKIE, "", None, admin.secure_cookies),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn sign_out(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = check_csrf(&operator.session, &form.csrf) {
        return *refused;
    }
    operator.sessions.end(&operator.id);
    let secure = service
        .current()
        .file
        .admin
        .as_ref()
        .is_some_and(|a| a.secure_cookies);
    let mut response = Redirect::to("/admin/sign-in").into_response();
    if let Ok(value) = HeaderValue::from_str(&Sessions::cookie(SESSION_COOKIE, "", None, secure)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}
