//! Runs blocking work (files, devices, external tools) on tokio's blocking
//! pool, so the async workers keep serving other calls.

use crate::error::{CsiError, CsiResult};

/// Runs `f` on the blocking pool and returns its result.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> CsiResult<T> + Send + 'static,
) -> CsiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(CsiError::Internal(format!("blocking task failed: {e}"))),
    }
}
