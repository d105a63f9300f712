//! The `lorewire` binary: `serve` (default) or `migrate`. Only parses, starts and stops; every
//! part is built by `app::start`.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use lorewire::core::clock::SystemClock;
use lorewire::core::config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    lorewire::core::memory::tune();
    // Initialise OpenSSL before libpq does, without its exit-time cleanup: threads still inside
    // libpq's TLS code while the process exits would otherwise crash it.
    openssl::init();
    // Flags win over the environment, the environment over .env, .env over defaults.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    lorewire::core::logging::init(cli.settings.log_format);
    let config = cli.settings.into_config();
    // The actors' store calls wait on the blocking pool for one of the store's connections:
    // no more threads than connections (the HTTP workers are capped alike, see `app::start`).
    let store_threads = lorewire::store::pool_size(lorewire::store::backend_of(&config.database_url).0);
    let runtime = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(store_threads)
            .build()
            .expect("the main runtime starts")
    };
    actix_web::rt::System::with_tokio_rt(runtime).block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Migrate => {
                lorewire::app::open_store(&config.database_url, 1).await.context("migrating the database")?;
                tracing::info!("migrations are up to date");
                Ok(())
            }
            Command::Serve => serve(config).await,
        }
    })
}

async fn serve(config: lorewire::core::config::Config) -> anyhow::Result<()> {
    let running = lorewire::app::start(config, Arc::new(SystemClock)).await.context("starting lorewire")?;
    if running.admin_token_generated {
        // Printed once, on stdout, so the operator can copy it; never logged.
        println!("LOREWIRE_ADMIN_TOKEN={}", running.state.admin_token.expose());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.shutdown().await;
    Ok(())
}
