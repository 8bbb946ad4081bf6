//! The admin API's OpenAPI 3.0 document, written by hand and held to the router by tests
//! (every route documented, every documented route served, schemas matching the types).

use axum::Json;
use serde_json::{Value, json};

/// Where the document is served (without credential: it describes, it grants nothing).
pub(super) const PATH: &str = "/openapi.json";

pub(super) async fn serve() -> Json<Value> {
    Json(document())
}

fn error_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        let description = match *code {
            "400" => "Invalid request (body, query or path parameter)",
            "401" => "Missing or wrong admin credential",
            "404" => "No such key",
            "404u" => {
                "No such key, or usage is not counted here (`not_configured`: api_keys.usage.enabled is false)"
            }
            "404t" => {
                "Usage is not counted here (`not_configured`: api_keys.usage.enabled is false)"
            }
            "404l" => {
                "No source of the limits in force is configured (`not_configured`: set admin.ratelimit_config_url)"
            }
            "502" => {
                "The source of the limits in force did not answer usefully (`limits_unavailable`)"
            }
            "409" => "The key is revoked, or is being changed concurrently",
            "415" => "The body is not `application/json`",
            "503" => "The key store is unavailable",
            _ => "Error",
        };
        out.insert(
            code[..3].to_string(),
            json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(out)
}

fn with_errors(ok: Value, codes: &[&str]) -> Value {
    let mut responses = error_responses(codes);
    if let (Value::Object(r), Value::Object(ok)) = (&mut responses, ok) {
        r.extend(ok);
    }
    responses
}

/// The `{id}` path parameter.
fn id_param() -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "description": "The key's public id (the 12 characters after `tgk_`)",
        "schema": {"type": "string", "pattern": "^[0-9A-Za-z]{12}$"}
    })
}

fn key_ref(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Key"}}}})
}

fn issued(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IssuedKey"}}}})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn nullable_time() -> Value {
    json!({"type": "string", "format": "date-time", "nullable": true})
}

fn nullable_text() -> Value {
    json!({"type": "string", "nullable": true})
}

fn date() -> Value {
    json!({"type": "string", "format": "date", "description": "A UTC day, YYYY-MM-DD"})
}

/// The `from` and `to` query parameters.
fn range() -> Value {
    json!([
        {"name": "from", "in": "query", "required": false, "description": "First UTC day (YYYY-MM-DD); default 29 days before `to`", "schema": {"type": "string", "format": "date"}},
        {"name": "to", "in": "query", "required": false, "description": "Last UTC day (YYYY-MM-DD), included; default today. At most 366 days from `from`", "schema": {"type": "string", "format": "date"}}
    ])
}

fn own_limit() -> Value {
    json!({"allOf": [{"$ref": "#/components/schemas/KeyLimit"}], "nullable": true, "description": "The key's own rate limit, used instead of its plan's (handed to the rate limiter in the `rate_limit` dynamic metadata)"})
}

/// An object of `extra` (required: `required`) and the three counts.
fn counts(extra: Value, required: &[&str]) -> Value {
    let mut props = json!({
        "allowed": {"type": "integer", "minimum": 0, "description": "Let through by tollgate-authz (in the service pair a 429 from tollgate-ratelimit may still follow)"},
        "denied": {"type": "integer", "minimum": 0, "description": "Refused for this key: revoked, expired, missing scope or claim"},
        "rate_limited": {"type": "integer", "minimum": 0, "description": "Over a rate limit decided by tollgate-authz itself; 0 in the service pair, where tollgate-ratelimit decides"}
    });
    merge(&mut props, extra);
    let mut req: Vec<&str> = required.to_vec();
    req.extend(["allowed", "denied", "rate_limited"]);
    json!({"type": "object", "additionalProperties": false, "required": req, "properties": props})
}

/// Adds the fields of object `more` to object `into`.
fn merge(into: &mut Value, more: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, more) {
        a.extend(b);
    }
}

/// The document.
pub fn document() -> Value {
    let mut paths = key_paths();
    merge(&mut paths, usage_paths());
    merge(&mut paths, other_paths());
    let mut schemas = key_schemas();
    merge(&mut schemas, usage_schemas());
    merge(&mut schemas, other_schemas());

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tollgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage the API keys that tollgate-authz accepts. Secrets are returned once, on create and rotate, and never stored: only their hashes are."
        },
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "The admin credential (admin.token_file or TOLLGATE_ADMIN_TOKEN)"}
            },
            "schemas": schemas
        }
    })
}

/// The key routes.
fn key_paths() -> Value {
    json!({
        "/v1/keys": {
            "post": {
                "operationId": "createKey",
                "summary": "Create a key; the response holds the key itself, shown this once",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateKeyRequest"}}}},
                "responses": with_errors(json!({"201": issued("Created")}), &["400", "401", "415", "503"])
            },
            "get": {
                "operationId": "listKeys",
                "summary": "List keys in id order, a page at a time (no secrets)",
                "parameters": [
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "cursor", "in": "query", "required": false, "description": "`next_cursor` of the previous page", "schema": {"type": "string"}}
                ],
                "responses": with_errors(json!({"200": {"description": "A page of keys", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/KeyPage"}}}}}), &["400", "401", "503"])
            }
        },
        "/v1/keys/{id}": {
            "parameters": [id_param()],
            "get": {
                "operationId": "getKey",
                "summary": "One key's metadata",
                "responses": with_errors(json!({"200": key_ref("The key")}), &["400", "401", "404", "503"])
            },
            "patch": {
                "operationId": "updateKey",
                "summary": "Change metadata; absent fields are left as they are, `null` clears an optional field",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UpdateKeyRequest"}}}},
                "responses": with_errors(json!({"200": key_ref("The updated key")}), &["400", "401", "404", "409", "415", "503"])
            }
        },
        "/v1/keys/{id}/revoke": {
            "parameters": [id_param()],
            "post": {
                "operationId": "revokeKey",
                "summary": "Revoke a key at once, on every replica (idempotent)",
                "responses": with_errors(json!({"200": key_ref("The revoked key")}), &["400", "401", "404", "409", "503"])
            }
        },
        "/v1/keys/{id}/rotate": {
            "parameters": [id_param()],
            "post": {
                "operationId": "rotateKey",
                "summary": "Give a key a new secret (same id); the previous one works for the grace period",
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RotateKeyRequest"}}}},
                "responses": with_errors(json!({"200": issued("Rotated")}), &["400", "401", "404", "409", "503"])
            }
        }
    })
}

/// Usage and the limits in force.
fn usage_paths() -> Value {
    json!({
        "/v1/keys/{id}/usage": {
            "parameters": [id_param()],
            "get": {
                "operationId": "getKeyUsage",
                "summary": "A key's calls per UTC day (allowed, denied, rate-limited) and their totals; written in batches, so up to `usage.flush_interval` behind for other replicas' calls",
                "parameters": range(),
                "responses": with_errors(json!({"200": {"description": "The key's usage", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/KeyUsage"}}}}}), &["400", "401", "404u", "503"])
            }
        },
        "/v1/usage": {
            "get": {
                "operationId": "getUsageTotals",
                "summary": "Calls per plan or per tenant over a range of UTC days",
                "parameters": [
                    {"name": "group_by", "in": "query", "required": true, "schema": {"type": "string", "enum": ["plan", "tenant"]}},
                    range()[0].clone(),
                    range()[1].clone()
                ],
                "responses": with_errors(json!({"200": {"description": "Totals per plan or tenant", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UsageTotals"}}}}}), &["400", "401", "404t", "503"])
            }
        },
        "/v1/limits": {
            "get": {
                "operationId": "getLimits",
                "summary": "The rate limits in force (tollgate-ratelimit's `/config` view)",
                "responses": with_errors(json!({"200": {"description": "The limits in force", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Limits"}}}}}), &["401", "404l", "502"])
            }
        }
    })
}

/// The decision counters and this document.
fn other_paths() -> Value {
    json!({
        "/v1/stats": {
            "get": {
                "operationId": "getStats",
                "summary": "The service's decision counters since it started (take differences between two answers for rates)",
                "responses": with_errors(json!({"200": {"description": "The counters", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Stats"}}}}}), &["401"])
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}}}
            }
        }
    })
}

/// A key, its requests and its own limit.
fn key_schemas() -> Value {
    json!({
        "Key": {
            "type": "object",
            "additionalProperties": false,
            "required": ["id", "name", "owner", "tenant", "scopes", "plan", "rate_limit", "expires_at", "created_at", "updated_at", "last_used_at", "revoked", "revoked_at", "previous_secret_valid_until"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "owner": {"type": "string", "description": "Becomes the identity's subject"},
                "tenant": nullable_text(),
                "scopes": {"type": "array", "items": {"type": "string"}},
                "plan": nullable_text(),
                "rate_limit": own_limit(),
                "expires_at": nullable_time(),
                "created_at": time(),
                "updated_at": time(),
                "last_used_at": {"type": "string", "format": "date-time", "nullable": true, "description": "Recorded in batches, so up to a few seconds behind"},
                "revoked": {"type": "boolean"},
                "revoked_at": nullable_time(),
                "previous_secret_valid_until": {"type": "string", "format": "date-time", "nullable": true, "description": "End of the running rotation grace period, if any"}
            }
        },
        "IssuedKey": {
            "type": "object",
            "additionalProperties": false,
            "required": ["key", "secret", "warning"],
            "properties": {
                "key": {"$ref": "#/components/schemas/Key"},
                "secret": {"type": "string", "description": "The API key (`tgk_…`). Shown only in this response", "pattern": "^tgk_[0-9A-Za-z]{12}_[0-9A-Za-z]{30}$"},
                "warning": {"type": "string"}
            }
        },
        "KeyPage": {
            "type": "object",
            "additionalProperties": false,
            "required": ["keys", "next_cursor"],
            "properties": {
                "keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
                "next_cursor": nullable_text()
            }
        },
        "CreateKeyRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "owner"],
            "properties": {
                "name": {"type": "string"},
                "owner": {"type": "string"},
                "tenant": nullable_text(),
                "scopes": {"type": "array", "items": {"type": "string"}},
                "plan": nullable_text(),
                "rate_limit": own_limit(),
                "expires_at": nullable_time(),
                "expires_in": {"type": "string", "nullable": true, "description": "A duration from now such as `90d` (instead of expires_at)"}
            }
        },
        "UpdateKeyRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string"},
                "owner": {"type": "string"},
                "tenant": nullable_text(),
                "scopes": {"type": "array", "items": {"type": "string"}},
                "plan": nullable_text(),
                "rate_limit": own_limit(),
                "expires_at": nullable_time()
            }
        },
        "RotateKeyRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "grace_period": {"type": "string", "nullable": true, "description": "How long the previous secret keeps working, e.g. `1h` (at most 90 days); default 0"}
            }
        },
        "KeyLimit": {
            "type": "object",
            "additionalProperties": false,
            "required": ["requests_per_unit", "unit"],
            "properties": {
                "requests_per_unit": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
                "unit": {"type": "string", "enum": ["second", "minute", "hour", "day"]}
            }
        }
    })
}

/// Usage answers and the limits view.
fn usage_schemas() -> Value {
    json!({
        "KeyUsage": {
            "type": "object",
            "additionalProperties": false,
            "required": ["key_id", "from", "to", "retention_days", "days", "totals"],
            "properties": {
                "key_id": {"type": "string"},
                "from": date(),
                "to": date(),
                "retention_days": {"type": "integer", "minimum": 1, "description": "Days kept; older days are deleted and never listed"},
                "days": {"type": "array", "description": "Oldest first; a day without calls is not listed", "items": {"$ref": "#/components/schemas/DayUsage"}},
                "totals": {"$ref": "#/components/schemas/Counts"}
            }
        },
        "DayUsage": counts(json!({"date": date()}), &["date"]),
        "Counts": counts(json!({}), &[]),
        "UsageTotals": {
            "type": "object",
            "additionalProperties": false,
            "required": ["group_by", "from", "to", "retention_days", "groups"],
            "properties": {
                "group_by": {"type": "string", "enum": ["plan", "tenant"]},
                "from": date(),
                "to": date(),
                "retention_days": {"type": "integer", "minimum": 1},
                "groups": {"type": "array", "description": "By name; a call counts under the plan and tenant its key had when it was made", "items": {"$ref": "#/components/schemas/GroupUsage"}}
            }
        },
        "GroupUsage": counts(json!({"name": {"type": "string", "nullable": true, "description": "The plan or tenant; null for keys without one"}}), &["name"]),
        "Limits": {
            "type": "object",
            "description": "tollgate-ratelimit's `/config` view as it serves it (docs/ratelimit.md): also `loaded_at`, `generation`, `settings`, `files`, `errors`",
            "required": ["domains"],
            "properties": {
                "loaded_at": {"type": "string", "format": "date-time"},
                "domains": {"type": "array", "items": {"type": "object", "properties": {
                    "domain": {"type": "string"},
                    "limits": {"type": "array", "items": {"type": "object", "properties": {
                        "descriptor": {"type": "string"},
                        "name": {"type": "string"},
                        "unlimited": {"type": "boolean"},
                        "algorithm": {"type": "string"},
                        "limit": {"type": "integer"},
                        "window": {"type": "string"},
                        "burst": {"type": "integer"},
                        "period": {"type": "string", "description": "A calendar quota's period and zone, e.g. `month@Europe/Berlin`"},
                        "shadow_mode": {"type": "boolean"},
                        "quota_mode": {"type": "boolean"}
                    }}}
                }}}
            }
        }
    })
}

/// The counters and the error body.
fn other_schemas() -> Value {
    json!({
        "Stats": {
            "type": "object",
            "additionalProperties": false,
            "required": ["at", "mode", "checks", "rate_limit"],
            "properties": {
                "at": {"type": "string", "format": "date-time", "description": "When the counts were read"},
                "mode": {"type": "string", "enum": ["pair", "single_call"], "description": "`single_call`: this process decides the 429s itself (Checks denied with reason `rate_limited`; `rate_limit` holds its embedded engine's counts)"},
                "checks": {"type": "array", "description": "Check calls answered, per decision, identity method and reason (the `tollgate_authz_checks_total` series)", "items": {"$ref": "#/components/schemas/CheckCount"}},
                "rate_limit": {"allOf": [{"$ref": "#/components/schemas/RateLimitCounts"}], "nullable": true, "description": "Over-limit counts per limit: tollgate-ratelimit's (null unless `admin.ratelimit_metrics_url` is set), or in single-call mode this process's own"}
            }
        },
        "CheckCount": {
            "type": "object",
            "additionalProperties": false,
            "required": ["decision", "method", "reason", "count"],
            "properties": {
                "decision": {"type": "string", "description": "`allow` or `deny`"},
                "method": {"type": "string", "description": "The identity method (`jwt`, `introspection`, `api_key`, `anonymous`) or `none`"},
                "reason": {"type": "string"},
                "count": {"type": "integer", "minimum": 0}
            }
        },
        "RateLimitCounts": {
            "type": "object",
            "additionalProperties": false,
            "required": ["over_limit", "error"],
            "properties": {
                "over_limit": {"type": "array", "description": "Over-limit (429) answers per limit; a request over two limits counts in both", "items": {"$ref": "#/components/schemas/LimitCount"}},
                "error": {"type": "string", "nullable": true, "description": "Why tollgate-ratelimit's counts could not be read this time"}
            }
        },
        "LimitCount": {
            "type": "object",
            "additionalProperties": false,
            "required": ["domain", "limit", "count"],
            "properties": {
                "domain": {"type": "string"},
                "limit": {"type": "string"},
                "count": {"type": "integer", "minimum": 0}
            }
        },
        "Error": {
            "type": "object",
            "additionalProperties": false,
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "enum": ["invalid_request", "unauthorized", "not_found", "not_configured", "method_not_allowed", "conflict", "store_unavailable", "limits_unavailable"]},
                "message": {"type": "string"}
            }
        }
    })
}
