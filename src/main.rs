//! The `licensegate` command: serve, or check a config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use licensegate::challenge::Kid;
use licensegate::config::{AuthKeySource, Config};
use licensegate::keyseed::KeySeed;

const DEFAULT_CONFIG: &str = "conf/licensegate.toml";

// Per-request allocations are many and small; jemalloc keeps them off glibc's arena locks
// (as Pingora's own benchmarks do).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "licensegate", version, about = "DRM license acquisition proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default, on conf/licensegate.toml).
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take the listening sockets over from the running licensegate (send it SIGQUIT
        /// right after starting this one): a zero-downtime upgrade.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and exit; non-zero with the offending key on error.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// List the key IDs in a DASH manifest, per adaptation set.
    Kids {
        #[arg(long)]
        mpd: PathBuf,
    },
    /// Mint a user token signed with the config's first HMAC secret (for demos and tests).
    Token {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The user id.
        #[arg(long)]
        sub: String,
        /// Content ids, glob patterns or tier:NAME the user may play (repeatable).
        #[arg(long = "entitle")]
        entitlements: Vec<String>,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Content key tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// A catalog kept in the store (`catalog.source = "store"`).
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Exit 0 when the admin listener answers 200 on `path` within a second, 1 otherwise: a
    /// container health check or Kubernetes exec probe that needs no HTTP client in the image.
    Probe {
        /// The admin listener, as host:port (default: `LICENSEGATE_ADMIN_ADDR`, else
        /// 127.0.0.1:9090; an unspecified address is asked over loopback).
        #[arg(long)]
        admin: Option<String>,
        /// `/readyz` (serving) or `/healthz` (alive, even while starting or draining).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Store the entries of FILE: NDJSON, one entry with its `id` per line (`-`: stdin), or a
    /// catalog file (.toml, .json). Progress and the entries refused go to stderr.
    Import {
        file: PathBuf,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Write every entry, keys included, as NDJSON to stdout (what `import` takes back).
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Derive a content key from a PlayReady key seed and a key ID.
    Derive {
        /// The key seed, hex (60+ digits) or base64.
        #[arg(long)]
        seed: String,
        /// The key ID, as a UUID or 32 hex digits.
        #[arg(long)]
        kid: String,
    },
}

fn main() -> ExitCode {
    // Without its background thread jemalloc gives freed pages back only while the process
    // allocates: a catalog reload would leave the old catalog's pages with the process for good.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("jemalloc keeps freed memory until the process allocates again: {e}");
    }
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve {
        config: DEFAULT_CONFIG.into(),
        upgrade: false,
    }) {
        Command::Check { config } => match Config::load(&config).and_then(|loaded| {
            licensegate::state::load_resources(&loaded).map(|_| loaded.deprecations)
        }) {
            Ok(deprecations) => {
                for deprecation in deprecations {
                    eprintln!("{}: warning: {deprecation}", config.display());
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Catalog { command } => match catalog(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Keys {
            command: KeysCommand::Derive { seed, kid },
        } => match derive_key(&seed, &kid) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Token {
            config,
            sub,
            entitlements,
            ttl,
        } => match mint_token(&config, &sub, &entitlements, ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Probe { admin, path } => {
            let admin = admin.unwrap_or_else(licensegate::app::probe::default_admin);
            match licensegate::app::probe::answers(&admin, &path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{admin}{path}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Kids { mpd } => match list_kids(&mpd) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", mpd.display());
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config: path,
            upgrade,
        } => {
            let config = match Config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            licensegate::telemetry::logging::init(config.server.log_format);
            for deprecation in &config.deprecations {
                tracing::warn!("{deprecation}");
            }
            tracing::info!(
                license = %config.license_listener,
                admin = %config.admin_listener,
                "licensegate starting"
            );
            // SIGHUP means reload, but the reloader listens only once the server runs; one
            // arriving before (endpoint resolution, an upgrade's handover) must not end the
            // process, and is honoured when the reloader starts.
            let early_hangup = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            if let Err(e) =
                signal_hook::flag::register(signal_hook::consts::SIGHUP, early_hangup.clone())
            {
                tracing::warn!(error = %e, "SIGHUP before the server runs would end it");
            }
            let hold = std::time::Duration::from_secs(config.server.grace_period_seconds);
            let (mut server, live) =
                match licensegate::app::build(config, Some(path), upgrade, early_hangup) {
                    Ok(built) => built,
                    Err(e) => {
                        eprintln!("cannot start: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            server.bootstrap();
            licensegate::app::shutdown::exit_when_drained(
                server.watch_execution_phase(),
                live.lifetime().metrics.in_flight.clone(),
            );
            server.run(pingora::server::RunArgs {
                shutdown_signal: Box::new(licensegate::app::shutdown::Signals {
                    drain: live.lifetime().drain.clone(),
                    hold,
                }),
            });
            licensegate::telemetry::logging::flush();
            ExitCode::SUCCESS
        }
    }
}

fn mint_token(path: &Path, sub: &str, entitlements: &[String], ttl: u64) -> Result<String, String> {
    let config = Config::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let auth = config
        .auth
        .as_ref()
        .ok_or("the config has no [auth] section")?;
    let (algorithm, secret) = auth
        .keys
        .iter()
        .find_map(|key| match key {
            AuthKeySource::Secret {
                algorithm, secret, ..
            } => Some((*algorithm, secret)),
            _ => None,
        })
        .ok_or("the config has no HMAC secret to sign with")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        auth.user_claim.as_str(): sub,
        "iat": now,
        "exp": now + ttl,
        config.entitlement.claim.as_str(): entitlements,
    });
    if let Some(issuer) = &auth.issuer {
        claims["iss"] = issuer.as_str().into();
    }
    if let Some(audience) = &auth.audience {
        claims["aud"] = audience.as_str().into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

fn list_kids(mpd: &Path) -> Result<String, String> {
    use std::fmt::Write;
    let text = std::fs::read(mpd).map_err(|e| e.to_string())?;
    let sets = licensegate::manifest::dash_kids(&text)?;
    let mut out = String::new();
    for (index, set) in sets.iter().enumerate() {
        let id = set.id.clone().unwrap_or_else(|| index.to_string());
        let kind = set.content_type.as_deref().unwrap_or("-");
        let _ = writeln!(out, "adaptation set {id} ({kind})");
        for kid in &set.default_kids {
            let _ = writeln!(out, "  default_KID  {kid}");
        }
        for (drm, kids) in &set.pssh {
            for kid in kids {
                let _ = writeln!(out, "  {drm:<12} {kid}");
            }
        }
    }
    Ok(out)
}

fn catalog(command: CatalogCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let load = |path: &Path| Config::load(path).map_err(|e| format!("{}: {e}", path.display()));
    match command {
        CatalogCommand::Import { file, config } => {
            let config = load(&config)?;
            let progress = |report: &licensegate::rights::catalog_import::ImportReport,
                            elapsed: std::time::Duration| {
                let rate = report.lines as f64 / elapsed.as_secs_f64().max(0.001);
                eprintln!(
                    "{}: {} lines, {} created, {} replaced, {} failed ({rate:.0} lines/s)",
                    file.display(),
                    report.lines,
                    report.created,
                    report.replaced,
                    report.failed
                );
            };
            let report =
                runtime.block_on(licensegate::app::catalog::import(&config, &file, progress))?;
            for error in &report.errors {
                eprintln!(
                    "line {}{}{}: {} {}",
                    error.line,
                    error
                        .id
                        .as_ref()
                        .map(|id| format!(" ({id})"))
                        .unwrap_or_default(),
                    error
                        .key
                        .as_ref()
                        .map(|key| format!(" {key}"))
                        .unwrap_or_default(),
                    error.code,
                    error.reason
                );
            }
            if report.failed > 0 {
                return Err(format!(
                    "{} of {} entries not stored",
                    report.failed, report.lines
                ));
            }
            Ok(())
        }
        CatalogCommand::Export { config } => {
            let config = load(&config)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let written = runtime.block_on(licensegate::app::catalog::export(&config, &mut out))?;
            std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
            eprintln!("{written} entries");
            Ok(())
        }
    }
}

fn derive_key(seed: &str, kid: &str) -> Result<String, String> {
    use base64::Engine;
    let seed = KeySeed::parse(seed).map_err(|e| format!("--seed: {e}"))?;
    let kid: Kid = kid.parse().map_err(|e| format!("--kid: {e}"))?;
    let key = seed.derive(kid);
    Ok(format!(
        "kid     {kid}\nkey hex {}\nkey b64 {}\n",
        hex::encode(key),
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}
