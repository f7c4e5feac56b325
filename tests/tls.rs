//! The cloud API client over real TLS: a local HTTPS server whose
//! certificate is signed by a CA the system trusts (here: `SSL_CERT_FILE`,
//! read by the platform verifier like the system bundle) answers; one signed
//! by an unknown CA is refused before any request is sent, with a message
//! that says so. One test in its own binary: the trusted roots are process
//! state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use multicsi::cloud::http::{ApiClient, ApiError, Auth, ClientOptions, Request};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A server configuration for `localhost` with a certificate of this CA.
    fn server(&self) -> rustls::ServerConfig {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap()
    }
}

/// Serves `{"answer":42}` over TLS to every connection; counts the requests
/// that got through the handshake.
async fn serve(config: rustls::ServerConfig, requests: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buffer = vec![0u8; 4096];
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                requests.fetch_add(1, Ordering::SeqCst);
                let body = br#"{"answer":42}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    address
}

fn client(address: SocketAddr) -> ApiClient {
    let options = ClientOptions {
        max_attempts: 2,
        ..ClientOptions::default()
    };
    ApiClient::new(
        "tls-test",
        &format!("https://localhost:{}", address.port()),
        Auth::None,
        options,
    )
    .unwrap()
}

#[derive(serde::Deserialize)]
struct Answer {
    answer: u32,
}

#[test]
fn https_to_a_trusted_server_works_and_an_unknown_issuer_is_refused() {
    let trusted = Ca::new("multicsi test CA");
    let unknown = Ca::new("some other CA");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, trusted.issuer.pem()).unwrap();
    // SAFETY: set before any other thread of this test binary exists.
    unsafe { std::env::set_var("SSL_CERT_FILE", &bundle) };
    unsafe { std::env::remove_var("SSL_CERT_DIR") };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let good_requests = Arc::new(AtomicUsize::new(0));
        let good = serve(trusted.server(), good_requests.clone()).await;
        let answer: Answer = client(good)
            .json(&Request::get("read the answer", "/answer"))
            .await
            .expect("HTTPS to a server the trusted CA signed");
        assert_eq!(answer.answer, 42);
        assert_eq!(good_requests.load(Ordering::SeqCst), 1);

        let bad_requests = Arc::new(AtomicUsize::new(0));
        let bad = serve(unknown.server(), bad_requests.clone()).await;
        let err = client(bad)
            .json::<Answer>(&Request::get("read the answer", "/answer"))
            .await
            .map(|a| a.answer)
            .expect_err("a certificate of an unknown CA must be refused");
        let message = err.to_string();
        assert!(
            matches!(err, ApiError::Transport { .. } | ApiError::Exhausted { .. }),
            "{err:?}"
        );
        assert!(
            message.to_lowercase().contains("certificate"),
            "the error says what is wrong: {message}"
        );
        assert_eq!(
            bad_requests.load(Ordering::SeqCst),
            0,
            "no request may cross an untrusted connection"
        );
    });
}
