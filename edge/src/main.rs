//! `edge`: the SIP edge binary.

use clap::{Parser, Subcommand};
use edge::config::{Config, UpstreamConfig, UserConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "edge", version, about = "SIP edge: stateful proxy, registrar and SBC")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the edge (on the embedded default config unless --config is given).
    Run {
        /// TOML configuration file (see docs/CONFIG.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The SIP domain the edge is responsible for (overrides sip.domain).
        #[arg(long)]
        domain: Option<String>,
        /// A user of that domain, NAME:PASSWORD (repeatable; adds to the config's users).
        #[arg(long = "user", value_name = "NAME:PASSWORD")]
        users: Vec<String>,
        /// Static next hop for requests to non-local domains (replaces [[upstream]]).
        #[arg(long, value_name = "SIP-URI")]
        upstream: Option<String>,
        /// Data directory (overrides data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration file and exit (0 when valid).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn apply_flags(
    cfg: &mut Config,
    domain: Option<String>,
    users: Vec<String>,
    upstream: Option<String>,
    data_dir: Option<PathBuf>,
) -> Result<(), String> {
    if let Some(d) = domain {
        cfg.sip.domain = d;
    }
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    for u in users {
        let (name, pass) = u.split_once(':').ok_or_else(|| format!("--user {u:?}: expected NAME:PASSWORD"))?;
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '@') {
            return Err(format!("--user {u:?}: bad user name"));
        }
        cfg.users.retain(|x| x.name.get_ref() != name);
        cfg.users.push(UserConfig {
            name: toml::Spanned::new(0..0, name.to_string()),
            password: Some(pass.to_string()),
            ha1_md5: None,
            ha1_sha256: None,
            max_contacts: None,
            anchor_media: None,
            reject_anonymous: false,
        });
    }
    if let Some(up) = upstream {
        edge::msg::SipUri::parse(&up).map_err(|e| format!("--upstream {up:?}: {e}"))?;
        let src = format!("uri = {}", toml::Value::String(up.clone()));
        let u: UpstreamConfig = toml::from_str(&src).map_err(|e| format!("--upstream {up:?}: {}", e.message()))?;
        u.build(0).map_err(|e| format!("--upstream {up:?}: {e}"))?;
        cfg.upstreams = vec![u];
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { file } => match Config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config, domain, users, upstream, data_dir } => {
            let mut cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = apply_flags(&mut cfg, domain, users, upstream, data_dir) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let filter =
                tracing_subscriber::EnvFilter::try_from_env("EDGE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log));
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            match edge::rt::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
