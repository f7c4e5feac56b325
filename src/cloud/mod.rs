//! What the cloud backends share: the HTTP client, credentials that never
//! print, and the providers' settings.

pub mod http;
pub mod settings;
pub mod timestamp;
