//! A JWT issuer the test controls: ES256 keys generated per run, a JWKS document served over
//! HTTP on 127.0.0.1 (its key list can be changed while tollgate-authz runs), and tokens with
//! any claims the test wants signed by any of its keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The `iss` of every token, and what a config's `issuer` must say.
pub const ISSUER: &str = "https://issuer.tollgate.test";
/// The `aud` of every token.
pub const AUDIENCE: &str = "https://api.tollgate.test";

struct Key {
    signing: EncodingKey,
    public: Value,
}

/// A running issuer; its JWKS endpoint stops when dropped.
pub struct Issuer {
    keys: BTreeMap<String, Key>,
    /// The kids the JWKS document currently lists.
    published: Arc<Mutex<Vec<Value>>>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("kids", &self.keys.keys())
            .field("addr", &self.addr)
            .finish()
    }
}

impl Issuer {
    /// An issuer with one generated ES256 key per `kids`, all of them published.
    pub async fn start(kids: &[&str]) -> Issuer {
        assert!(
            tollgate_authz::identity::crypto::install(),
            "signing and verification share the service's crypto provider"
        );
        let mut keys = BTreeMap::new();
        for kid in kids {
            let pair = rcgen::KeyPair::generate().expect("generate a P-256 key");
            let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
            let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            let public = serde_json::to_value(jwk).unwrap();
            keys.insert(kid.to_string(), Key { signing, public });
        }
        let published = Arc::new(Mutex::new(
            keys.values().map(|k| k.public.clone()).collect::<Vec<_>>(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/jwks", get(jwks))
            .with_state(published.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Issuer {
            keys,
            published,
            addr,
            task,
        }
    }

    /// The JWKS URL for a config's `jwks_url`.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Publishes exactly the keys named `kids` from now on.
    pub fn publish(&self, kids: &[&str]) {
        *self.published.lock().unwrap() =
            kids.iter().map(|k| self.keys[*k].public.clone()).collect();
    }

    /// A token signed with key `kid`: `iss`, `aud`, `sub` = `subject`, `exp` in ten minutes,
    /// then `extra` claims on top (which may replace any of those).
    pub fn token(&self, kid: &str, subject: &str, extra: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 600,
        });
        for (k, v) in extra.as_object().expect("extra claims are an object") {
            claims[k] = v.clone();
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &self.keys[kid].signing).unwrap()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jwks(State(published): State<Arc<Mutex<Vec<Value>>>>) -> axum::Json<Value> {
    let keys = published.lock().unwrap().clone();
    axum::Json(json!({ "keys": keys }))
}
