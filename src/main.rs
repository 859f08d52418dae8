//! The `powerbi-tokend` binary: command line, logging, signals. Everything else is the library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

use powerbi_tokend::config::{self, LogFormat};
#[cfg(feature = "demo")]
use powerbi_tokend::demo;
use powerbi_tokend::{Control, check, once, run};

/// Exit code for a bad command line or configuration (clap uses 2 for usage errors too).
const EXIT_CONFIG: u8 = 2;
/// Exit code for a runtime failure.
const EXIT_FAILURE: u8 = 1;

/// Keeps Microsoft Entra ID tokens for the Power BI REST API fresh for many tenants.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format: text (default) or json. Overrides `log_format` in the config. Filter with RUST_LOG.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT; SIGHUP reloads the configuration.
    Run(ConfigArg),
    /// Fetch every tenant's token once, write all sinks, exit 0 if all succeeded, else 1.
    Once(ConfigArg),
    /// Validate the configuration and every referenced secret without contacting Entra; exit 2 on problems.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also read every secret and certificate kept in Azure Key Vault, once, with the
        /// `[key_vault]` identity (the tenants' token endpoints are still not contacted).
        #[arg(long)]
        online: bool,
        /// Read systemd credential NAME from PATH, as the unit's `LoadCredential=NAME:PATH`
        /// hands it to the service (repeatable), e.g. after deploy/systemd/install.sh:
        /// `--load-credential client-secret:/etc/credstore/powerbi-tokend.client-secret`.
        #[arg(long, value_name = "NAME:PATH", value_parser = credential_arg)]
        load_credential: Vec<(String, PathBuf)>,
    },
    /// Run end to end against a built-in simulated Entra ID; tokens go to ./demo-tokens/.
    #[cfg(feature = "demo")]
    Demo {
        /// Admin HTTP address for the demo [default: 127.0.0.1:9464, or a free port when that
        /// one is taken]. `127.0.0.1:0` picks a free port.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Also start `redis-server` (from PATH) on a free loopback port and write every token
        /// there too, in fleet mode.
        #[arg(long)]
        redis: bool,
    },
}

/// `NAME:PATH` of `--load-credential`, as in systemd's `LoadCredential=`.
fn credential_arg(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "expected NAME:PATH as in LoadCredential=, e.g. client-secret:/etc/credstore/powerbi-tokend.client-secret; got {text:?}"
        )),
    }
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "POWERBI_TOKEND_CONFIG",
        default_value = "config.toml"
    )]
    config: PathBuf,
}

/// Raises the soft limit on open files to the hard limit. The common default soft limit (1024)
/// is shared by the admin connections, the token endpoint connections and every token write of
/// thousands of tenants; the hard limit is what the service manager allows (`LimitNOFILE=`).
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        // Not allowed, or no hard limit to raise to: the soft limit stays, which is still a
        // working daemon.
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

/// Has the crypto library gather its first entropy on a thread of its own, while the
/// configuration is read. aws-lc seeds its random generator from CPU jitter as well as from the
/// kernel, once per process, and that takes tens of milliseconds of CPU (about 70 ms on a
/// 2-core VM); left to the first TLS handshake, it would hold back every token request of a cold
/// start for that long. Only a warm-up: a failure here fails again, and is reported, where the
/// randomness is needed.
fn gather_entropy_early() {
    let _ = std::thread::Builder::new()
        .name("entropy".to_owned())
        .spawn(|| aws_lc_rs::rand::fill(&mut [0u8; 16]));
}

/// Gives the heap's free pages back to the system (glibc keeps them mapped after a large free
/// that is not at the top of the heap). Run after a reload: see [`powerbi_tokend::after_reload`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it only releases pages
    // of free chunks inside the allocator, under the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    powerbi_tokend::after_reload(return_freed_memory);
    if !matches!(cli.command, Command::Check { online: false, .. }) {
        gather_entropy_early();
    }
    // One crypto provider for every TLS user in the process, before anything builds a client.
    // An error means a provider is already installed, which is just as good.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    raise_file_limit();
    // File writes run on the blocking pool; 64 threads keep thousands of simultaneous first
    // writes from spawning hundreds of threads (tokio's default cap is 512).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("powerbi-tokend: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check {
            config: args,
            online,
            load_credential,
        } => {
            init_logging(cli.log_format.unwrap_or_default());
            powerbi_tokend::credential::load_credentials(load_credential);
            check_command(&args.config, online).await
        }
        Command::Once(args) => {
            let Some(config) = load(&args.config, cli.log_format).await else {
                return ExitCode::from(EXIT_CONFIG);
            };
            once_command(&config).await
        }
        Command::Run(args) => {
            let control = match signals() {
                Ok(control) => control,
                Err(err) => return fatal(err),
            };
            let Some(config) = load(&args.config, cli.log_format).await else {
                return ExitCode::from(EXIT_CONFIG);
            };
            match run(config, control).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fatal(err.into()),
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo { listen, redis } => {
            let control = match signals() {
                Ok(control) => control,
                Err(err) => return fatal(err),
            };
            init_logging(cli.log_format.unwrap_or_default());
            match demo::run(listen, redis, control).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fatal(err.into()),
            }
        }
    }
}

/// `check`: the warnings and a one-line verdict, or every problem and their count; the exit
/// code tells a script which.
async fn check_command(path: &std::path::Path, online: bool) -> ExitCode {
    match check(path, online).await {
        Ok(powerbi_tokend::Checked { config, warnings }) => {
            for warning in warnings {
                eprintln!("{}: warning: {warning}", config.path.display());
            }
            println!(
                "{}: OK, {} tenant(s), every credential readable",
                config.path.display(),
                config.tenants.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            eprintln!("{} problem(s) found", err.problems.len());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `once`: a line for each tenant that failed, and a failure exit code if any did.
async fn once_command(config: &config::Config) -> ExitCode {
    let outcomes = match once(config).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            eprintln!("powerbi-tokend: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut failed = 0;
    for outcome in &outcomes {
        if let Err(err) = &outcome.result {
            failed += 1;
            // The server's own code beside the reason: the reason is a fixed set, and codes
            // outside it (RFC 8707's invalid_target) are otherwise lost in `invalid_request`.
            eprintln!(
                "{}: {} {} {} {}: {}",
                outcome.tenant,
                err.class,
                err.reason,
                err.oauth_error.as_deref().unwrap_or("-"),
                err.aadsts_code().unwrap_or_else(|| "-".to_owned()),
                err.message
            );
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{failed} of {} tenant(s) failed", outcomes.len());
        ExitCode::from(EXIT_FAILURE)
    }
}

/// Loads the config and starts logging in the configured format; prints problems and returns
/// `None` on a bad config.
async fn load(path: &std::path::Path, cli_format: Option<LogFormat>) -> Option<config::Config> {
    match config::load(path).await {
        Ok(config) => {
            init_logging(cli_format.unwrap_or(config.daemon.log_format));
            Some(config)
        }
        Err(err) => {
            eprintln!("{err}");
            None
        }
    }
}

fn fatal(err: anyhow::Error) -> ExitCode {
    eprintln!("powerbi-tokend: {err:#}");
    ExitCode::from(EXIT_FAILURE)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Registers signal handlers (early, so an early SIGHUP cannot kill the process) and turns
/// signals into control messages. A second SIGTERM/SIGINT exits at once.
fn signals() -> anyhow::Result<mpsc::Receiver<Control>> {
    // SIGTERM: systemd and Kubernetes ask for a graceful stop.
    let mut terminate = signal(SignalKind::terminate()).context("cannot register SIGTERM")?;
    // SIGINT: Ctrl-C in a terminal behaves like SIGTERM.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot register SIGINT")?;
    // SIGHUP: `systemctl reload` and operators ask for a config reload.
    let mut hangup = signal(SignalKind::hangup()).context("cannot register SIGHUP")?;
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let code = tokio::select! {
                _ = terminate.recv() => 143,
                _ = interrupt.recv() => 130,
                _ = hangup.recv() => {
                    let _ = sender.send(Control::Reload).await;
                    continue;
                }
            };
            if stopping {
                eprintln!("powerbi-tokend: second signal, exiting at once");
                std::process::exit(code);
            }
            stopping = true;
            let _ = sender.send(Control::Shutdown).await;
        }
    });
    Ok(receiver)
}
