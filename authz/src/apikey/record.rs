//! What a key store keeps per key: metadata plus the hashes of its current (and, during a
//! rotation's grace period, previous) secrets. Never a secret itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::format::KeyHash;
use crate::identity::{Identity, Method};

/// One key as stored. `last_used_at` is stored apart (written in batches) and merged on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Who the key acts for; becomes the identity's subject.
    pub owner: String,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    pub plan: Option<String>,
    /// The key's own rate limit (absent in records written before it existed).
    #[serde(default)]
    pub rate_limit: Option<super::KeyLimit>,
    pub expires_at: Option<SystemTime>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub revoked_at: Option<SystemTime>,
    /// Newest first. Older entries carry the end of their grace period.
    pub secrets: Vec<StoredSecret>,
    /// Incremented by every change; stores use it to refuse lost updates.
    pub version: u64,
    #[serde(skip)]
    pub last_used_at: Option<SystemTime>,
}

/// The hash of one secret of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// SHA-256 of the key (stored as hex; see [`KeyHash`]).
    pub hash: KeyHash,
    pub created_at: SystemTime,
    /// Set on the previous secret by a rotation: the end of its grace period.
    pub valid_until: Option<SystemTime>,
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Finds the secret whose hash equals `presented`, comparing against every stored hash in
    /// constant time (the number of hashes is not secret; their contents are).
    pub fn matching_secret(&self, presented: &KeyHash) -> Option<&StoredSecret> {
        self.matching_index(presented).map(|i| &self.secrets[i])
    }

    /// [`Self::matching_secret`]'s position in `secrets`.
    fn matching_index(&self, presented: &KeyHash) -> Option<usize> {
        let mut found = None;
        for (i, s) in self.secrets.iter().enumerate() {
            if bool::from(s.hash.ct_eq(presented)) {
                found = Some(i);
            }
        }
        found
    }

    /// Applies a rotation: the new secret first; every older one keeps working until
    /// `now + grace` at the latest; ones already past their grace are dropped.
    pub fn rotate(&mut self, new_hash: &KeyHash, grace: Duration, now: SystemTime) {
        let until = now + grace;
        self.secrets
            .retain(|s| s.valid_until.is_none_or(|u| u > now));
        for s in &mut self.secrets {
            s.valid_until = Some(s.valid_until.map_or(until, |u| u.min(until)));
        }
        if grace.is_zero() {
            self.secrets.clear();
        }
        self.secrets.insert(
            0,
            StoredSecret {
                hash: *new_hash,
                created_at: now,
                valid_until: None,
            },
        );
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a key record always serialises")
    }

    pub(crate) fn from_json(id: &str, bytes: &[u8]) -> Result<Self, super::KeyStoreError> {
        serde_json::from_slice(bytes).map_err(|e| super::KeyStoreError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })
    }
}

/// A record as Checks read it: the identity each of its secrets stands for is built once, when
/// the record is read from the store, so that a Check on a cached key copies nothing.
#[derive(Debug)]
pub(crate) struct KnownKey {
    pub(crate) record: KeyRecord,
    /// One per secret, in `record.secrets` order.
    identities: Box<[Arc<Identity>]>,
}

impl KnownKey {
    pub(crate) fn new(record: KeyRecord) -> Self {
        let identities = record
            .secrets
            .iter()
            .map(|secret| {
                let expires_at = match (record.expires_at, secret.valid_until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Arc::new(Identity {
                    key_id: Some(record.id.clone()),
                    tenant: record.tenant.clone(),
                    plan: record.plan.clone(),
                    rate_limit: record.rate_limit,
                    scopes: record.scopes.clone(),
                    expires_at,
                    ..Identity::new(Method::ApiKey, record.owner.clone())
                })
            })
            .collect();
        Self { record, identities }
    }

    /// The identity of the secret whose hash is `presented` (compared in constant time).
    pub(crate) fn identity(&self, presented: &KeyHash) -> Option<&Arc<Identity>> {
        self.record
            .matching_index(presented)
            .map(|i| &self.identities[i])
    }
}
