//! Emulator of the civo API and metadata service.

use axum::Router;

use super::Options;

/// The routes of the emulated API.
pub fn router(_options: Options) -> Router {
    Router::new()
}

/// The body the API answers an injected fault with.
pub fn error_body(status: u16) -> String {
    serde_json::json!({ "detail": format!("emulated error {status}") }).to_string()
}
