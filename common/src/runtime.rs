//! The async runtime of the data-path binaries: one thread by default (a sidecar should cost
//! one core at most, and a current-thread runtime has the lowest latency), more on request.

use tokio::runtime::{Builder, Runtime};

pub fn build(threads: usize) -> std::io::Result<Runtime> {
    if threads <= 1 {
        Builder::new_current_thread().enable_all().build()
    } else {
        Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}
