//! The bridge's admin port: ready when the forwarder's socket accepts connections and both
//! token files hold unexpired tokens; metrics of the proxy plus token-file failures.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sanctum_common::admin::AdminState;
use sanctum_common::proxy::{ProxyMetrics, Upstream};

use crate::handler::Bridge;

pub struct Admin {
    pub bridge: Arc<Bridge>,
    pub metrics: Arc<ProxyMetrics>,
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

    fn metrics(&self, out: &mut String) {
        self.metrics.render(out);
        let _ = writeln!(
            out,
            "# HELP sanctum_bridge_token_errors_total Requests answered 503 because a token file was not usable."
        );
        let _ = writeln!(out, "# TYPE sanctum_bridge_token_errors_total counter");
        for (file, counter) in ["jwt", "trat"].iter().zip(&self.bridge.token_errors) {
            let _ = writeln!(
                out,
                "sanctum_bridge_token_errors_total{{file=\"{file}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
}
