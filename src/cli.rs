//! The command line (CONTRACT §1). Exit codes: 0 ok, 2 bad config or usage, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "evlounge",
    version,
    about = "EV lounge daemon: charger sessions, lounge occupancy, guest notifications, time series"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: subscribe, track, record, notify, serve HTTP.
    Run {
        /// Config file (default /etc/evlounge/evlounge.toml when present).
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validates a config: every problem with its key; prints the effective config.
    Check {
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
}

pub const EXIT_CONFIG: u8 = 2;
pub const EXIT_RUNTIME: u8 = 1;

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// Loads the config, printing every problem as `error: <key>: <reason>` on stderr.
pub fn load_or_report(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    match config::load(path, &env_vars()) {
        Ok(c) => Ok(c),
        Err(errs) => {
            for p in &errs.0 {
                eprintln!("{p}");
            }
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries the contract's start-up lines.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// rustls needs one process-wide crypto provider; ring keeps the build free of aws-lc.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("evlounge")
        .build()
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    install_crypto();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config },
        } => match load_or_report(config.as_deref()) {
            Ok(cfg) => {
                print!("{}", cfg.effective_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let cfg = match load_or_report(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(cfg.log.format, &cfg.log.level);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("evlounge: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            match rt.block_on(crate::app::run(cfg, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "evlounge failed");
                    eprintln!("evlounge: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}
