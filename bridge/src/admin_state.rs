//! The bridge's admin port: ready when the forwarder's socket accepts connections and both
//! token files hold unexpired tokens; metrics of the proxy plus token-file failures, in the
//! process's one registry.

use std::sync::Arc;
use std::time::Duration;

use sanctum_common::admin::AdminState;
use sanctum_common::metrics::Registry;
use sanctum_common::proxy::{ProxyMetrics, Upstream};

use crate::handler::Bridge;

pub struct Admin {
    pub bridge: Arc<Bridge>,
    registry: Registry,
}

impl Admin {
    /// The admin state with the process's registry: `metrics` (prefix `sanctum_bridge`)
    /// and `sanctum_bridge_token_errors_total{file}`.
    pub fn new(bridge: Arc<Bridge>, metrics: &ProxyMetrics) -> Self {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        registry.register(
            "sanctum_bridge_token_errors",
            "Requests answered 503 because a token file was not usable.",
            bridge.token_errors.family.clone(),
        );
        Self { bridge, registry }
    }
}

impl AdminState for Admin {
    async fn ready(&self) -> Result<(), String> {
        self.bridge.jwt.current().map_err(|e| e.to_string())?;
        self.bridge.trat.current().map_err(|e| e.to_string())?;
        if let Upstream::Unix(path) = self.bridge.client.upstream() {
            match tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::UnixStream::connect(path),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(format!(
                        "the forwarder socket {} is not reachable: {e}",
                        path.display()
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "the forwarder socket {} did not accept within 1 s",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    fn metrics(&self) -> &Registry {
        &self.registry
    }
}
