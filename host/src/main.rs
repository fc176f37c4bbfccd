//! `outreach-host`: run a profile-destination component from the command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

// Delivery allocates many small strings and buffers per update (requests,
// responses, JSON); glibc's malloc spent about a tenth of the CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::args::Cli::parse();
    init_logging(cli.log_format);
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // The chain of causes, each said once (many messages already
            // quote their cause).
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            ExitCode::from(cli::EXIT_FATAL)
        }
    }
}

/// Log lines on stderr, at the level `RUST_LOG` asks for (`warn` unless
/// told otherwise); colored only on a terminal, so that a log file or the
/// journal gets plain text.
fn init_logging(format: cli::args::LogFormat) {
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        cli::args::LogFormat::Text => logs.init(),
        cli::args::LogFormat::Json => logs.json().init(),
    }
}
