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
    /// Everything on one machine with nothing installed: embedded broker, simulated site,
    /// the daemon and its pages. Prints the URLs.
    Demo {
        /// Optional config (e.g. to send time series to an InfluxDB); the broker and the
        /// simulated site are the demo's.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Keep state here instead of a temp dir removed at exit.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Simulated time per wall time.
        #[arg(long, default_value_t = 10.0)]
        speed: f64,
        #[arg(long, default_value_t = 6)]
        chargers: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// HTTP address (default 127.0.0.1:8080, or a free port when that is busy).
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Embedded broker address (port 0: a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        broker: std::net::SocketAddr,
    },
    /// Publishes realistic charger and lounge traffic to a broker (demo, load, benchmarks).
    Simulate {
        #[arg(long)]
        mqtt: String,
        #[arg(long, default_value = "demo")]
        site: String,
        #[arg(long, default_value = "evlounge")]
        prefix: String,
        #[arg(long, default_value_t = 6)]
        chargers: usize,
        /// Telemetry messages per charger per second (wall time).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// MQTT connections to spread the load over.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Stop after this many messages.
        #[arg(long = "max")]
        max_messages: Option<u64>,
        /// Chargers' wire format: `evlounge` (the contract's telemetry), `ocpp16j` (OCPP 1.6J
        /// frames on `ocpp/{charger}/in`: read them with a `[[sources]]` entry
        /// `format = "ocpp16j"`, `topic = "ocpp/{cp}/in"`, `charger = "{cp}"`) or `everest`
        /// (`everest_api/{charger}/var/{session_info,powermeter,ev_info}`: `format =
        /// "everest"`, `topic = "everest_api/{module}/var/#"`). Lounge sensors always use the
        /// contract's topics.
        #[arg(long, default_value_t = crate::sim::SimFormat::Evlounge)]
        format: crate::sim::SimFormat,
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
        Command::Simulate {
            mqtt,
            site,
            prefix,
            chargers,
            rate,
            duration,
            speed,
            seed,
            qos,
            connections,
            max_messages,
            format,
        } => {
            init_logging(LogFormat::Text, "info");
            let opts = crate::sim::publish::SimulateOptions {
                mqtt_url: mqtt,
                site,
                prefix,
                chargers,
                rate_hz: rate,
                duration,
                speed,
                seed,
                qos,
                connections,
                max_messages,
                start_ms: None,
                format,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("evlounge: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            match rt.block_on(crate::sim::publish::run_simulate(opts, shutdown_signal())) {
                Ok(r) => {
                    println!(
                        "evlounge: published {} messages in {:.2} s ({:.0} msg/s)",
                        r.messages,
                        r.elapsed.as_secs_f64(),
                        r.msg_per_s
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("evlounge: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Demo {
            config,
            data_dir,
            speed,
            chargers,
            seed,
            http,
            broker,
        } => {
            let cfg = match config {
                Some(p) => match load_or_report(Some(&p)) {
                    Ok(c) => c,
                    Err(code) => return code,
                },
                None => match config::load(None, &[]) {
                    Ok(c) => c,
                    Err(errs) => {
                        for p in &errs.0 {
                            eprintln!("{p}");
                        }
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
            };
            // The embedded broker logs every probe of its port as an error: keep it quiet.
            init_logging(
                cfg.log.format,
                &format!("{},rumqttd::server::broker=off", cfg.log.level),
            );
            let opts = crate::demo::DemoOptions {
                config: None,
                data_dir,
                speed,
                chargers,
                seed,
                http,
                broker,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("evlounge: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            match rt.block_on(crate::demo::run(cfg, opts, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("evlounge: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
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
