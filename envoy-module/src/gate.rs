//! The Tollgate filter (`filter_name: tollgate`): tollgate-authz's decision in Envoy's worker.
//! It loads the service's own config file (policy, JWT issuers, introspection, API keys, token
//! sources, conditions, identity headers, and the `rate_limit:` section of single-call mode)
//! and runs the same [`Authorizer`] on every request, so one config file means the same
//! answers in every shape.
//!
//! ```yaml
//! failure_mode: deny                      # a module failure: 503 (or allow)
//! config: /etc/tollgate/authz.yaml        # tollgate-authz's config file
//! dynamic_metadata: true                  # the identity and limit for later filters
//! ```
//!
//! A decision is polled once on the worker: a cached token or key, a public rule and memory
//! counters finish there. One that waits on I/O (a key set or key store to ask, an
//! introspection call, Redis counters) continues on the background runtime while the request is
//! paused. The background tasks the service runs (key-set refresh, the key store's revocation
//! feed, usage batching, the limits and policy watchers) run on that runtime too, for as long
//! as Envoy keeps the filter config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::Deserialize;
use tollgate_authz::apikey::ApiKeys;
use tollgate_authz::check::OwnedRequest;
use tollgate_authz::{Authorizer, Decision, reload};
use tollgate_common::Shutdown;
use tollgate_common::config::{Sources, load, process_env};

use crate::config::{self, ConfigError, FieldError};
use crate::filter::{FailureMode, Filter, Mutations, Request, Verdict, now_or_pending};
use crate::verdict::{self, ModuleRequest, PEER_CERTIFICATE_HEADER};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateConfig {
    #[serde(default)]
    failure_mode: FailureMode,
    /// tollgate-authz's config file (relative paths: to Envoy's working directory).
    config: PathBuf,
    /// File the identity and the limit that applied as dynamic metadata (for access logs and
    /// later filters). Off by default, like jwt_authn's `payload_in_metadata`: Envoy parsing
    /// and storing it is a cost on every request that only a reader of it should pay.
    #[serde(default)]
    dynamic_metadata: bool,
}

/// The Tollgate filter built from its config.
#[derive(Debug)]
pub(crate) struct Gate {
    failure_mode: FailureMode,
    dynamic_metadata: bool,
    started: Arc<Started>,
}

/// An authorizer built from one authz config file, with its background tasks. Shared by every
/// filter config that names the same file while one of them is alive: Envoy builds a listener's
/// new filter config before it drops the old one, and an embedded key store opens in one
/// place only. Dropped with the last of them, which stops its tasks.
struct Started {
    authorizer: Arc<Authorizer>,
    api_keys: Option<ApiKeys>,
    /// What a route that switches the filter off still gets: every identity header removed.
    disabled: Mutations,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").finish_non_exhaustive()
    }
}

/// The live [`Started`] of each config file, by its path.
static STARTED: Mutex<BTreeMap<PathBuf, Weak<Started>>> = Mutex::new(BTreeMap::new());

impl Gate {
    /// Loads the authz config (every error with its file, line and field) and builds the
    /// authorizer on the background runtime, or shares the one already built from the same
    /// file. Runs on Envoy's main thread at config time; the issuers' key sets are fetched
    /// before it returns, as the service does before it reports ready, so the first tokens
    /// verify.
    pub(crate) fn from_config(name: &str, text: &[u8]) -> Result<Gate, ConfigError> {
        let gate: GateConfig = config::parse(name, text)?;
        let invalid = |reason: String| ConfigError::Invalid {
            filter: name.to_string(),
            errors: vec![FieldError {
                line: None,
                field: "config".into(),
                reason,
            }],
        };
        let key = std::fs::canonicalize(&gate.config).unwrap_or_else(|_| gate.config.clone());
        let mut live = STARTED.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|_, started| started.strong_count() > 0);
        if let Some(started) = live.get(&key).and_then(Weak::upgrade) {
            return Ok(Gate {
                failure_mode: gate.failure_mode,
                dynamic_metadata: gate.dynamic_metadata,
                started,
            });
        }
        let sources = Sources {
            file: Some(gate.config.clone()),
            env: process_env(),
            ..Default::default()
        };
        let authz: tollgate_authz::Config = load(&sources).map_err(|e| invalid(e.to_string()))?;
        let shutdown = Shutdown::new();
        let built = crate::runtime::block_on(start(authz, sources, shutdown.clone()))
            .map_err(|e| invalid(e.to_string()))?;
        let (authorizer, api_keys) = built.map_err(invalid)?;
        let started = Arc::new(Started {
            disabled: disabled_mutations(&authorizer),
            authorizer,
            api_keys,
            shutdown,
        });
        live.insert(key, Arc::downgrade(&started));
        Ok(Gate {
            failure_mode: gate.failure_mode,
            dynamic_metadata: gate.dynamic_metadata,
            started,
        })
    }

    pub(crate) fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }
}

/// Builds the authorizer and starts what the service starts beside it, until `shutdown`.
async fn start(
    config: tollgate_authz::Config,
    sources: Sources,
    shutdown: Shutdown,
) -> Result<(Arc<Authorizer>, Option<ApiKeys>), String> {
    let built = tollgate_authz::build(&config)
        .await
        .map_err(|e| e.to_string())?;
    let authorizer = built.authorizer;
    tollgate_authz::start_background(&authorizer, &shutdown)
        .await
        .map_err(|e| e.to_string())?;
    let reloader = Arc::new(reload::Reloader::new(authorizer.clone(), sources, &config));
    reload::spawn(reloader, shutdown).map_err(|e| format!("cannot watch the config file: {e}"))?;
    Ok((authorizer, built.api_keys))
}

/// The removals of a decision on a disabled route: the same for every request (only the
/// identity header names, fixed at startup, and the client certificate header go into it).
fn disabled_mutations(authorizer: &Authorizer) -> Mutations {
    let request = OwnedRequest {
        disabled: true,
        ..OwnedRequest::new("GET", "/")
    };
    let decided = futures::executor::block_on(authorizer.check(&request));
    let mut remove_headers = match verdict::from_decision(decided, &request, false) {
        Verdict::Continue(m) => m.remove_headers,
        _ => Vec::new(),
    };
    // The client certificate header a client may send is never believed there either.
    remove_headers.push(PEER_CERTIFICATE_HEADER.into());
    Mutations {
        remove_headers,
        ..Mutations::default()
    }
}

impl Filter for Gate {
    fn on_request(&self, request: &dyn Request) -> Verdict {
        let owned = ModuleRequest::copy(request);
        let authorizer = Arc::clone(&self.started.authorizer);
        let metadata = self.dynamic_metadata;
        now_or_pending(
            async move {
                let decided: Decision = authorizer.check(&owned).await;
                let mut verdict = verdict::from_decision(decided, &owned, metadata);
                if let Verdict::Continue(m) = &mut verdict {
                    owned.fit_to_request(m);
                }
                verdict
            },
            self.failure_mode,
        )
    }

    fn on_disabled(&self) -> Mutations {
        self.started.disabled.clone()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(keys) = self.api_keys.take() {
            // The last usage counts and last-used times of this config are written out.
            let _ = crate::runtime::spawn(async move { keys.flush().await });
        }
    }
}

#[cfg(test)]
mod tests;
