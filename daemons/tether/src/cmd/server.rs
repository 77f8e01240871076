//! `tether server` and `tether server token …`.
//!
//! Flag parsing, logging set-up, the runtime and signals only; the server itself is
//! [`tether_server`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::Utc;
use uuid::Uuid;

use tether_runtime::signals::StopSignals;
use tether_server::config::{self, Overrides, ServerConfig};
use tether_server::metering::MeteringStore;
use tether_server::store::Store;

/// `tether server`: run the server, or manage its users' tokens.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    /// Token management instead of running the server.
    #[command(subcommand)]
    pub action: Option<ServerAction>,
    /// Options for running the server.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `tether server` (running it).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Data directory for the records database and the relay streams [default: ./tether-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Redis URL: relay streams and console history live in Redis instead of the data directory.
    #[arg(long, value_name = "URL", env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// PostgreSQL URL (postgres://user@host:port/database): the records (users, tokens, agents,
    /// dongles, groups, vehicles, commands) live there instead of the data directory's SQLite
    /// file, shared by every instance given the same URL.
    #[arg(long, value_name = "URL", env = "TETHER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// YAML configuration file; `${VAR}` is replaced from the environment, flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// Subcommands of `tether server`.
#[derive(Debug, clap::Subcommand)]
pub enum ServerAction {
    /// Manage users' API tokens.
    #[command(
        subcommand,
        after_help = "Examples:\n  tether server token create --user alice --data-dir ./tether-data\n  tether server token list --data-dir ./tether-data\n  tether server token revoke TOKEN_ID --config server.yaml"
    )]
    Token(TokenCommand),
    /// The metering control plane: data-plane server keys, customers, signing keys.
    #[command(
        subcommand,
        after_help = "Examples:\n  tether server metering key create --server-id speech-1\n  tether server metering customer create --id acme --credits 1000\n  tether server metering signing-key rotate"
    )]
    Metering(MeteringCommand),
    /// Apply the records database's migrations (SQLite, or PostgreSQL with --database-url)
    /// and print its schema version. The server applies them at start too.
    Migrate {
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `tether server metering …`.
#[derive(Debug, clap::Subcommand)]
pub enum MeteringCommand {
    /// Data-plane servers' `X-API-Key`s.
    #[command(subcommand)]
    Key(MeteringKeyCommand),
    /// Customers and their credit balances.
    #[command(subcommand)]
    Customer(MeteringCustomerCommand),
    /// The command-signing key.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
}

/// `tether server metering key …`.
#[derive(Debug, clap::Subcommand)]
pub enum MeteringKeyCommand {
    /// Print a new `X-API-Key` for a data-plane server (shown once, stored hashed).
    #[command(after_help = "Examples:\n  tether server metering key create --server-id speech-1")]
    Create {
        /// The server id the agent registers with (`server.id`).
        #[arg(long)]
        server_id: String,
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `tether server metering customer …`.
#[derive(Debug, clap::Subcommand)]
pub enum MeteringCustomerCommand {
    /// Create a customer with a credit balance (or set an existing one's balance).
    #[command(
        after_help = "Examples:\n  tether server metering customer create --id acme --credits 1000"
    )]
    Create {
        /// Customer id (`customer_id` of the usage records).
        #[arg(long)]
        id: String,
        /// Credit balance.
        #[arg(long)]
        credits: u32,
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `tether server metering signing-key …`.
#[derive(Debug, clap::Subcommand)]
pub enum SigningKeyCommand {
    /// Make a new key current; the previous one is still served until the next rotation.
    #[command(
        after_help = "Examples:\n  tether server metering signing-key rotate --data-dir ./tether-data"
    )]
    Rotate {
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the token commands find the database.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Data directory of the server [default: ./tether-data, or data_dir from --config].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL of the records, when the server runs with one (the metering control
    /// plane stays in the data directory).
    #[arg(long, value_name = "URL", env = "TETHER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The server's YAML configuration file (for its data_dir and database_url).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `tether server token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create the user if needed and print a new API token (shown once).
    #[command(
        after_help = "Examples:\n  tether server token create --user alice\n  tether server token create --user ops --role operator --config server.yaml"
    )]
    Create {
        /// User name.
        #[arg(long)]
        user: String,
        /// Give the user a role (`operator`: the metering control plane's operator APIs).
        #[arg(long, value_parser = ["operator"])]
        role: Option<String>,
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token by its id (see `token list`).
    #[command(
        after_help = "Examples:\n  tether server token revoke 0b7c…-uuid --data-dir ./tether-data"
    )]
    Revoke {
        /// Token id.
        id: Uuid,
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tokens (never their secrets). The database must exist: a wrong `--data-dir` is an
    /// error, never a new empty database.
    #[command(
        after_help = "Examples:\n  tether server token list --data-dir ./tether-data\n  tether server token list --user alice --config server.yaml"
    )]
    List {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Runs `tether server …`.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(ServerAction::Token(cmd)) => run_token(cmd),
        Some(ServerAction::Metering(cmd)) => run_metering(cmd),
        Some(ServerAction::Migrate { store }) => {
            let store = open_store(&store)?;
            println!(
                "{}: schema version {}",
                store.describe(),
                store.schema_version()?
            );
            Ok(ExitCode::SUCCESS)
        }
        None => run_server(args.run),
    }
}

fn load_config(path: Option<&Path>, overrides: Overrides) -> anyhow::Result<ServerConfig> {
    let (file, origin) = match path {
        Some(path) => (Some(config::load_file(path)?), path.display().to_string()),
        None => (None, "command line".to_owned()),
    };
    Ok(ServerConfig::resolve(file, &origin, overrides)?)
}

fn store_config(args: &StoreArgs) -> anyhow::Result<ServerConfig> {
    load_config(
        args.config.as_deref(),
        Overrides {
            data_dir: args.data_dir.clone(),
            database_url: args.database_url.clone(),
            ..Overrides::default()
        },
    )
}

fn open_store(args: &StoreArgs) -> anyhow::Result<Store> {
    let config = store_config(args)?;
    Ok(Store::open_configured(
        &config.data_dir,
        config.database_url.as_deref(),
    )?)
}

/// The store of a server that has run (or made a token) before: commands that only read or
/// revoke never create a data directory, so a mistyped `--data-dir` is an error, not an empty
/// table. A PostgreSQL database is opened as it is (it must exist to be connected to).
fn open_existing_store(args: &StoreArgs) -> anyhow::Result<Store> {
    let config = store_config(args)?;
    if let Some(url) = config.database_url.as_deref() {
        return Ok(Store::connect(url)?);
    }
    let db = config.data_dir.join(tether_server::store::DB_FILE);
    if !db.is_file() {
        bail!(
            "no server database at {}: check --data-dir{} (`tether server token create` or the server's first start makes one)",
            db.display(),
            if args.config.is_some() {
                " and the config's data_dir"
            } else {
                ""
            }
        );
    }
    Ok(Store::open(&db)?)
}

fn open_metering(args: &StoreArgs) -> anyhow::Result<MeteringStore> {
    Ok(MeteringStore::open_in(&store_config(args)?.data_dir)?)
}

fn run_metering(cmd: MeteringCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MeteringCommand::Key(MeteringKeyCommand::Create { server_id, store }) => {
            let id = server_id.trim();
            anyhow::ensure!(
                !id.is_empty()
                    && id.len() <= 128
                    && id.bytes().all(
                        |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                    ),
                "server id must be 1-128 characters of [A-Za-z0-9._:-]"
            );
            let (key_id, secret) = open_metering(&store)?.create_server_key(id, Utc::now())?;
            eprintln!(
                "created X-API-Key {key_id} for server {id:?}; it is shown once, store it now"
            );
            println!("{secret}");
        }
        MeteringCommand::Customer(MeteringCustomerCommand::Create { id, credits, store }) => {
            let id = id.trim();
            anyhow::ensure!(
                !id.is_empty() && id.len() <= 256,
                "customer id must be 1 to 256 bytes"
            );
            let created =
                open_metering(&store)?.upsert_customer(id, i64::from(credits), Utc::now())?;
            let verb = if created { "created" } else { "updated" };
            println!("{verb} customer {id} with {credits} credits");
        }
        MeteringCommand::SigningKey(SigningKeyCommand::Rotate { store }) => {
            let kid = tether_server::metering::keys::rotate(&open_metering(&store)?, Utc::now())?;
            println!("current signing key: {kid}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create { user, role, store } => {
            let name = user.trim();
            anyhow::ensure!(
                !name.is_empty()
                    && name.chars().count() <= 100
                    && !name.chars().any(char::is_control),
                "user name must be 1 to 100 characters without control characters"
            );
            if role.is_some() {
                open_metering(&store)?.grant_operator(name)?;
            }
            let store = open_store(&store)?;
            let (user, id, issued) = store.create_user_token(name, Utc::now())?;
            eprintln!(
                "created token {id} for user {:?}; it is shown once, store it now",
                user.name
            );
            println!("{}", issued.secret);
        }
        TokenCommand::Revoke { id, store } => {
            let store = open_existing_store(&store)?;
            if store.revoke_user_token(id, Utc::now())? {
                eprintln!("revoked token {id}");
            } else {
                eprintln!("token {id} was already revoked");
            }
        }
        TokenCommand::List { user, store } => {
            let store = open_existing_store(&store)?;
            let tokens = store.list_user_tokens(user.as_deref())?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ID\tUSER\tLOOKUP\tCREATED\tSTATUS")?;
            for t in tokens {
                let status = t.revoked_at.map_or_else(
                    || "active".to_owned(),
                    |at| format!("revoked {}", at.to_rfc3339()),
                );
                writeln!(
                    out,
                    "{}\t{}\ttu_{}…\t{}\t{}",
                    t.id,
                    t.user,
                    t.lookup,
                    t.created_at.to_rfc3339(),
                    status
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_server(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(
        args.config.as_deref(),
        Overrides {
            listen: args.listen,
            data_dir: args.data_dir,
            redis_url: args.redis_url,
            database_url: args.database_url,
        },
    )?;
    if args.check_config {
        println!("configuration OK");
        println!("listen: {}", config.listen);
        println!("data_dir: {}", config.data_dir.display());
        println!(
            "redis: {}",
            if config.redis_url.is_some() {
                "configured"
            } else {
                "not configured"
            }
        );
        println!(
            "records: {}",
            if config.database_url.is_some() {
                "postgresql (database_url)"
            } else {
                "sqlite (data_dir)"
            }
        );
        println!("max_body_bytes: {}", config.max_body_bytes);
        println!(
            "header_read_timeout_secs: {}",
            config.header_read_timeout.as_secs()
        );
        let relay = &config.relay;
        let or_unlimited =
            |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
        println!(
            "relay: max_len {}, max_age_secs {}, replay_rate_per_s {}, replay_burst {}, consumer_window {}, cut_through {}, trim_interval_secs {}",
            or_unlimited(relay.max_len),
            or_unlimited(relay.max_age.map(|a| a.as_secs())),
            relay.replay_rate_per_s,
            relay.replay_burst,
            relay.consumer_window,
            relay.cut_through,
            relay.trim_interval.as_secs()
        );
        println!("cors: {}", config.cors.describe());
        return Ok(ExitCode::SUCCESS);
    }
    tether_runtime::logging::init_json_logs(
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // First, so that a SIGTERM during start-up is not lost.
        let stop = StopSignals::register();
        tether_server::run(config, stop.wait(), |addr| {
            // A plain line on stdout, so scripts and tests learn the port picked for :0.
            println!("tether server listening on http://{addr}");
            let _ = std::io::stdout().flush();
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
