//! `peregrine serve`

use std::sync::Arc;

use anyhow::Context;

use crate::app::{Options, Peregrine};
use crate::cli::ServeArgs;
use crate::config::PeregrineConfig;

pub async fn run(config: Arc<PeregrineConfig>, args: ServeArgs) -> anyhow::Result<()> {
    let app = Peregrine::build(
        config.clone(),
        Options {
            rules: args.rules.rules.clone(),
            watch: !args.no_watch,
            ..Options::default()
        },
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    app.run(listener, shutdown_signal()).await
}

/// SIGINT or SIGTERM (what Kubernetes sends before it kills the pod).
async fn shutdown_signal() {
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
