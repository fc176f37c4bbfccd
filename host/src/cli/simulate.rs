//! `simulate`: the Outreach API simulator as a server.

use std::time::Duration;

use anyhow::{Context, Result};
use outreach_simulator::{Faults, RateWindowKind, ResetRounding, Simulator, SimulatorConfig};

use super::args::SimulateArgs;
use super::{CLIENT_ID_ENV, CLIENT_SECRET_ENV, TOKEN_ENV};

pub(crate) async fn simulate(args: SimulateArgs) -> Result<u8> {
    let simulator = Simulator::start(
        SimulatorConfig {
            oauth: outreach_simulator::OAuthApp {
                users: vec![(args.user.clone(), "demo-password".into())],
                access_lifetime: Duration::from_secs(args.access_lifetime_secs.max(1)),
                mint_interval: Duration::from_secs(args.mint_interval_secs),
                ..outreach_simulator::OAuthApp::default()
            },
            prospect_ids: args.prospects.0..=args.prospects.1,
            rate_limit: args.rate_limit,
            rate_window: Duration::from_secs(args.rate_window_secs.max(1)),
            rate_window_kind: if args.fixed_window {
                RateWindowKind::Fixed
            } else {
                RateWindowKind::FromFirstRequest
            },
            reset_rounding: if args.reset_rounded_down {
                ResetRounding::Down
            } else {
                ResetRounding::Up
            },
            clock_offset_ms: args.clock_offset_ms,
            custom_fields: args.custom_fields.min(150),
            faults: Faults {
                error_share: args.error_share,
                latency: Duration::from_millis(args.latency_ms),
                drop_share: args.drop_share,
            },
            ..SimulatorConfig::default()
        },
        args.listen,
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    let token = simulator.issue_token(&args.user);
    println!("Outreach simulator: {}", simulator.api_base());
    println!("access token for {}: export {TOKEN_ENV}={token}", args.user);
    println!(
        "prospects: http://{}/sim/prospects   stats: http://{}/sim/stats",
        simulator.addr(),
        simulator.addr()
    );
    let app = outreach_simulator::OAuthApp::default();
    println!(
        "OAuth: {CLIENT_ID_ENV}={} {CLIENT_SECRET_ENV}={} outreach-host login --authorize-url {} --token-url {}   (user {}, password demo-password)",
        app.client_id,
        app.client_secret,
        simulator.authorize_url(),
        simulator.token_url(),
        args.user
    );
    tokio::signal::ctrl_c().await?;
    Ok(0)
}
