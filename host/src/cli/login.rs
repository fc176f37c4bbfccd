//! `login`, `logout` and `auth status`: the OAuth application, the
//! authorization-code login and the token store.

use std::io::Write;
use std::time::Duration;

use super::args::OAuthArgs;
use super::{CLIENT_ID_ENV, CLIENT_SECRET_ENV, EXIT_FATAL};
use anyhow::{Context, Result};
use outreach_host::engine::Runtime;
use outreach_host::oauth::{
    AppCredentials, OAuthClient, OAuthSettings, Redirect, RedirectListener, TokenStore,
};

#[derive(serde::Deserialize)]
pub(crate) struct ClientFile {
    client_id: String,
    client_secret: String,
}

/// The OAuth application's id and secret: from `--client-file`, else the
/// environment — never from the command line.
pub(crate) fn app_credentials(args: &OAuthArgs) -> Result<AppCredentials> {
    if let Some(path) = &args.client_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: ClientFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} must be {{\"client_id\": …, \"client_secret\": …}}",
                path.display()
            )
        })?;
        return Ok(AppCredentials {
            client_id: file.client_id,
            client_secret: file.client_secret,
        });
    }
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .with_context(|| format!("set {name} (or pass --client-file)"))
    };
    Ok(AppCredentials {
        client_id: var(CLIENT_ID_ENV)?,
        client_secret: var(CLIENT_SECRET_ENV)?,
    })
}

pub(crate) fn oauth_client(
    runtime: &Runtime,
    args: &OAuthArgs,
    redirect_uri: Option<String>,
    pkce: bool,
) -> Result<OAuthClient> {
    let descriptor = runtime.describe().oauth.clone();
    let settings = OAuthSettings {
        authorize_url: args
            .authorize_url
            .clone()
            .unwrap_or(descriptor.authorize_url),
        token_url: args.token_url.clone().unwrap_or(descriptor.token_url),
        // Refreshes send no redirect URI; any valid URL satisfies the client.
        redirect_uri: redirect_uri
            .unwrap_or_else(|| outreach_host::oauth::DEFAULT_REDIRECT_URI.into()),
        scopes: if args.scopes.is_empty() {
            descriptor.scopes
        } else {
            args.scopes.clone()
        },
        app: app_credentials(args)?,
        pkce,
        min_interval_between_tokens: Duration::from_secs(
            args.min_token_interval
                .unwrap_or(u64::from(descriptor.min_seconds_between_tokens)),
        ),
        client_authentication: descriptor.client_authentication,
        clock: outreach_host::clock::Clock::system(),
    };
    Ok(OAuthClient::new(settings)?)
}

pub(crate) async fn login(
    client: &OAuthClient,
    store: &TokenStore,
    account: &str,
    manual: bool,
    timeout: Duration,
) -> Result<u8> {
    let tokens = if manual {
        let (url, pending) = client.authorize_url();
        println!("Open this URL in a browser and log in:\n{url}");
        println!(
            "Then paste the address the browser was sent to (it starts with {}):",
            client.settings().redirect_uri
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        client
            .finish_login(pending, &Redirect::from_url(&line)?)
            .await?
    } else {
        let listener = RedirectListener::bind(&client.settings().redirect_uri).await?;
        let (url, pending) = client.authorize_url();
        println!("Open this URL in a browser and log in:\n{url}");
        std::io::stdout().flush()?;
        eprintln!("waiting for the redirect on {} …", listener.addr());
        let redirect = listener.wait(timeout).await?;
        client.finish_login(pending, &redirect).await?
    };
    store.put(account, &tokens)?;
    println!(
        "connected: account {account:?}, scope {}, access token expires in {}; tokens stored in {}",
        tokens.scope.as_deref().unwrap_or("(none given)"),
        expires_in(tokens.expires_at),
        store.path().display()
    );
    Ok(0)
}

pub(crate) fn expires_in(expires_at: Option<u64>) -> String {
    let Some(at) = expires_at else {
        return "(unknown)".into();
    };
    let now = outreach_host::clock::now_secs();
    if at <= now {
        return "0 s (expired; it is refreshed on the next run)".into();
    }
    let left = at - now;
    format!(
        "{}h {:02}m {:02}s",
        left / 3600,
        left % 3600 / 60,
        left % 60
    )
}

pub(crate) fn auth_status(store: &TokenStore, account: Option<&str>) -> Result<u8> {
    let accounts = match account {
        Some(a) => vec![a.to_owned()],
        None => store.accounts()?,
    };
    if accounts.is_empty() {
        println!(
            "no account connected (token store {}); run `outreach-host login`",
            store.path().display()
        );
        return Ok(EXIT_FATAL);
    }
    for account in accounts {
        match store.get(&account) {
            Ok(tokens) => println!(
                "{account}: connected; access token expires in {}; refresh token {}; scope {}",
                expires_in(tokens.expires_at),
                if tokens.refresh_token.is_some() {
                    "stored"
                } else {
                    "missing"
                },
                tokens.scope.as_deref().unwrap_or("(none given)")
            ),
            Err(e) => {
                println!("{account}: not connected ({e})");
                return Ok(EXIT_FATAL);
            }
        }
    }
    Ok(0)
}
