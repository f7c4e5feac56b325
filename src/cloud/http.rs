//! The one HTTP client every cloud backend uses: TLS by rustls, timeouts,
//! a client-side rate limit, retries with exponential backoff and jitter,
//! 429 answered by waiting for Retry-After, and every attempt traced and
//! counted.
//!
//! What is retried:
//! - 429 always (the cloud did not act on the request);
//! - 5xx and connection failures only when the request is idempotent
//!   (GET, PUT, DELETE, or a POST the caller marks idempotent).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::error::CsiError;
use crate::metrics;
use secrecy::{ExposeSecret, SecretString as Secret};

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    /// `Authorization: Bearer <token>` (cloudscale, Civo).
    Bearer(Secret),
    /// A header of its own carrying the token (Packet: `X-Auth-Token`).
    Header(&'static str, Secret),
    /// No credentials (metadata services).
    None,
}

/// Timeouts, retries and rate limit of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Whole-request timeout of one attempt.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles per retry, with jitter, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Time budget of one call across its retries.
    pub deadline: Duration,
    /// Requests per second the client sends at most, and the burst allowed.
    pub rate_per_second: f64,
    pub burst: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 8,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            deadline: Duration::from_secs(120),
            rate_per_second: 20.0,
            burst: 40,
        }
    }
}

impl ClientOptions {
    /// The default options, limited to `rate` requests per second in bursts
    /// of up to twice as many when a rate is set; `Err(rate)` when it is not
    /// a positive number.
    pub fn rate_limited(rate: Option<f64>) -> Result<Self, f64> {
        let mut options = ClientOptions::default();
        if let Some(rate) = rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(rate);
            }
            options.rate_per_second = rate;
            options.burst = (rate * 2.0).ceil().min(f64::from(u32::MAX)) as u32;
        }
        Ok(options)
    }
}

/// One request to a cloud API.
#[derive(Clone, Debug)]
pub struct Request {
    /// Operation name for logs and metrics, e.g. `create_volume`.
    pub operation: &'static str,
    pub method: Method,
    /// Path below the API's base URL, starting with `/`.
    pub path: String,
    pub body: Option<serde_json::Value>,
    pub idempotent: bool,
}

impl Request {
    pub fn new(operation: &'static str, method: Method, path: impl Into<String>) -> Self {
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE
        );
        Request {
            operation,
            method,
            path: path.into(),
            body: None,
            idempotent,
        }
    }
    pub fn get(operation: &'static str, path: impl Into<String>) -> Self {
        Self::new(operation, Method::GET, path)
    }
    pub fn delete(operation: &'static str, path: impl Into<String>) -> Self {
        Self::new(operation, Method::DELETE, path)
    }
    pub fn post(operation: &'static str, path: impl Into<String>, body: serde_json::Value) -> Self {
        Self::new(operation, Method::POST, path).json(body)
    }
    pub fn put(operation: &'static str, path: impl Into<String>, body: serde_json::Value) -> Self {
        Self::new(operation, Method::PUT, path).json(body)
    }
    pub fn patch(
        operation: &'static str,
        path: impl Into<String>,
        body: serde_json::Value,
    ) -> Self {
        Self::new(operation, Method::PATCH, path).json(body)
    }
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }
    /// Marks a POST or PATCH as safe to repeat (the cloud dedups it, or a
    /// repeat is harmless).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
}

/// A successful (2xx) answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self, operation: &str) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::Decode {
            operation: operation.to_string(),
            message: e.to_string(),
        })
    }
}

/// Why a call failed, after any retries.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ApiError {
    /// The cloud answered with a non-2xx status.
    #[error("{operation}: the API answered {status}: {body}")]
    Status {
        operation: String,
        status: u16,
        body: String,
    },
    /// No answer: connection refused or dropped, TLS failure, timeout.
    #[error("{operation}: no answer from the API: {message}")]
    Transport { operation: String, message: String },
    /// The answer could not be read.
    #[error("{operation}: unexpected answer from the API: {message}")]
    Decode { operation: String, message: String },
    /// The retries used up the call's time budget.
    #[error("{operation}: gave up after {attempts} attempts in {seconds:.1}s: {last}")]
    Exhausted {
        operation: String,
        attempts: u32,
        seconds: f64,
        last: String,
    },
}

impl ApiError {
    /// The HTTP status, if the cloud answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The generic CSI code of a failure; providers refine it for answers
    /// they know (attach limits, quota) before falling back to this.
    pub fn to_csi(&self) -> CsiError {
        let message = self.to_string();
        match self {
            ApiError::Status { status, .. } => match *status {
                400 | 422 => CsiError::InvalidArgument(message),
                401 | 403 => CsiError::FailedPrecondition(format!(
                    "{message} (check the API token and its permissions)"
                )),
                404 => CsiError::NotFound(message),
                409 => CsiError::Aborted(message),
                429 => CsiError::ResourceExhausted(message),
                _ => CsiError::Unavailable(message),
            },
            ApiError::Transport { .. } => CsiError::Unavailable(message),
            ApiError::Decode { .. } => CsiError::Internal(message),
            ApiError::Exhausted { .. } => CsiError::Unavailable(message),
        }
    }
}

/// The start of every HTTP client of the driver: rustls with the ring
/// crypto provider (installed as the process default once) and the system's
/// trusted roots, and the driver's user agent.
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Fails only when a provider is installed already: that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().user_agent(concat!("multicsi/", env!("CARGO_PKG_VERSION")))
}

/// A client of one cloud API.
pub struct ApiClient {
    provider: &'static str,
    base_url: String,
    auth: Auth,
    options: ClientOptions,
    http: reqwest::Client,
    limiter: RateLimiter,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    pub fn new(
        provider: &'static str,
        base_url: &str,
        auth: Auth,
        options: ClientOptions,
    ) -> Result<Self, String> {
        let base_url = base_url.trim_end_matches('/').to_string();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(format!(
                "{provider} API URL {base_url:?} must start with https:// or http://"
            ));
        }
        let http = client_builder()
            .timeout(options.attempt_timeout)
            .connect_timeout(options.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("{provider}: cannot build the HTTP client: {e}"))?;
        Ok(ApiClient {
            provider,
            base_url,
            auth,
            limiter: RateLimiter::new(options.rate_per_second, options.burst),
            options,
            http,
        })
    }

    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Sends a request, retrying as the module documentation says; Ok only
    /// for a 2xx answer.
    pub async fn send(&self, request: &Request) -> Result<Reply, ApiError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.limiter.acquire().await;
            let outcome = self.attempt(request).await;
            let (wait, reason, failure) = match outcome {
                Attempt::Done(result) => return result,
                Attempt::Retry {
                    wait,
                    reason,
                    failure,
                } => (wait, reason, failure),
            };
            let wait = wait.unwrap_or_else(|| self.backoff(attempt));
            let spent = started.elapsed();
            if attempt >= self.options.max_attempts || spent + wait > self.options.deadline {
                return Err(ApiError::Exhausted {
                    operation: request.operation.to_string(),
                    attempts: attempt,
                    seconds: spent.as_secs_f64(),
                    last: failure.to_string(),
                });
            }
            metrics::cloud_retry(self.provider, request.operation, reason);
            tracing::debug!(
                provider = self.provider,
                operation = request.operation,
                attempt,
                wait_ms = wait.as_millis() as u64,
                reason,
                "retrying cloud call"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends a request and decodes its JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ApiError> {
        self.send(request).await?.json(request.operation)
    }

    async fn attempt(&self, request: &Request) -> Attempt {
        let url = format!("{}{}", self.base_url, request.path);
        let mut builder = self.http.request(request.method.clone(), &url);
        builder = match &self.auth {
            Auth::Bearer(token) => builder.bearer_auth(token.expose_secret()),
            Auth::Header(name, token) => builder.header(*name, token.expose_secret()),
            Auth::None => builder,
        };
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let started = Instant::now();
        let answer = builder.send().await;
        let seconds = started.elapsed().as_secs_f64();
        let operation = request.operation;
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                metrics::cloud_call(self.provider, operation, "error", seconds);
                let failure = ApiError::Transport {
                    operation: operation.to_string(),
                    message: transport_message(&e),
                };
                tracing::debug!(provider = self.provider, operation, error = %failure, "cloud call failed");
                if request.idempotent {
                    return Attempt::Retry {
                        wait: None,
                        reason: "connection",
                        failure,
                    };
                }
                return Attempt::Done(Err(failure));
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await;
        let seconds = started.elapsed().as_secs_f64();
        metrics::cloud_call(self.provider, operation, status.as_str(), seconds);
        tracing::debug!(
            provider = self.provider,
            operation,
            method = %request.method,
            path = %request.path,
            status = status.as_u16(),
            elapsed_ms = seconds * 1000.0,
            "cloud call"
        );
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                let failure = ApiError::Transport {
                    operation: operation.to_string(),
                    message: transport_message(&e),
                };
                return if request.idempotent {
                    Attempt::Retry {
                        wait: None,
                        reason: "connection",
                        failure,
                    }
                } else {
                    Attempt::Done(Err(failure))
                };
            }
        };
        if status.is_success() {
            return Attempt::Done(Ok(Reply {
                status: status.as_u16(),
                body,
            }));
        }
        let failure = ApiError::Status {
            operation: operation.to_string(),
            status: status.as_u16(),
            body: excerpt(&body),
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::Retry {
                wait: retry_after.map(|w| w.min(self.options.max_backoff * 3)),
                reason: "429",
                failure,
            };
        }
        if status.is_server_error() && request.idempotent {
            return Attempt::Retry {
                wait: None,
                reason: "5xx",
                failure,
            };
        }
        Attempt::Done(Err(failure))
    }

    /// Exponential backoff with full jitter: a random wait in
    /// [base * 2^(n-1) / 2, base * 2^(n-1)], capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .options
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let cap = exp.min(self.options.max_backoff);
        let half = cap / 2;
        half + cap.mul_f64(0.5 * fastrand::f64())
    }
}

enum Attempt {
    Done(Result<Reply, ApiError>),
    Retry {
        wait: Option<Duration>,
        reason: &'static str,
        failure: ApiError,
    },
}

/// The error text of a transport failure, without the URL's query (which
/// never carries a secret here, but stays out of logs all the same).
fn transport_message(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut message = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// The first 512 bytes of an error body, as text.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.trim().to_string()
}

/// Retry-After in seconds (the HTTP-date form is treated as absent).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: rate.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let (tokens, last) = *state;
                let now = Instant::now();
                let tokens =
                    (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
                if tokens >= 1.0 {
                    *state = (tokens - 1.0, now);
                    return;
                }
                *state = (tokens, now);
                Duration::from_secs_f64((1.0 - tokens) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_sets_rate_and_twice_the_burst_or_refuses_a_bad_rate() {
        let unset = ClientOptions::rate_limited(None).unwrap();
        assert_eq!(unset.rate_per_second, 20.0);
        assert_eq!(unset.burst, 40);
        let set = ClientOptions::rate_limited(Some(2.25)).unwrap();
        assert_eq!(set.rate_per_second, 2.25);
        assert_eq!(set.burst, 5);
        assert_eq!(ClientOptions::rate_limited(Some(0.2)).unwrap().burst, 1);
        for bad in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(ClientOptions::rate_limited(Some(bad)).unwrap_err(), bad);
        }
        assert!(ClientOptions::rate_limited(Some(f64::NAN)).is_err());
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let client = ApiClient::new(
            "test",
            "http://127.0.0.1:1",
            Auth::None,
            ClientOptions::default(),
        )
        .unwrap();
        for attempt in 1..20 {
            let wait = client.backoff(attempt);
            let cap = (Duration::from_millis(100) * (1u32 << (attempt - 1).min(16)))
                .min(Duration::from_secs(10));
            assert!(
                wait >= cap / 2 && wait <= cap,
                "attempt {attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn idempotency_follows_the_method() {
        assert!(Request::get("x", "/").idempotent);
        assert!(Request::delete("x", "/").idempotent);
        assert!(!Request::post("x", "/", serde_json::json!({})).idempotent);
        assert!(
            Request::post("x", "/", serde_json::json!({}))
                .idempotent()
                .idempotent
        );
    }

    #[test]
    fn errors_map_to_csi_codes() {
        let status = |s| ApiError::Status {
            operation: "op".into(),
            status: s,
            body: String::new(),
        };
        assert!(matches!(status(404).to_csi(), CsiError::NotFound(_)));
        assert!(matches!(status(503).to_csi(), CsiError::Unavailable(_)));
        assert!(matches!(
            status(403).to_csi(),
            CsiError::FailedPrecondition(_)
        ));
        assert!(matches!(
            status(429).to_csi(),
            CsiError::ResourceExhausted(_)
        ));
    }

    #[tokio::test]
    async fn rate_limiter_spaces_requests_after_the_burst() {
        let limiter = RateLimiter::new(100.0, 2);
        let started = Instant::now();
        for _ in 0..4 {
            limiter.acquire().await;
        }
        // Two from the burst, two more at 100/s: at least ~20 ms.
        assert!(started.elapsed() >= Duration::from_millis(15));
    }

    #[tokio::test]
    async fn bad_base_url_is_refused() {
        let err = ApiClient::new("x", "ftp://h", Auth::None, ClientOptions::default()).unwrap_err();
        assert!(err.contains("https://"), "{err}");
    }
}
