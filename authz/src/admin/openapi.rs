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
            "409" => "The key is revoked, or is being changed concurrently",
            "415" => "The body is not `application/json`",
            "503" => "The key store is unavailable",
            _ => "Error",
        };
        out.insert(
            (*code).to_string(),
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

/// The document.
pub fn document() -> Value {
    let id_param = json!({
        "name": "id", "in": "path", "required": true,
        "description": "The key's public id (the 12 characters after `tgk_`)",
        "schema": {"type": "string", "pattern": "^[0-9A-Za-z]{12}$"}
    });
    let key = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Key"}}}});
    let issued = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IssuedKey"}}}});
    let time = json!({"type": "string", "format": "date-time"});
    let nullable_time = json!({"type": "string", "format": "date-time", "nullable": true});
    let nullable_text = json!({"type": "string", "nullable": true});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tollgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage the API keys that tollgate-authz accepts. Secrets are returned once, on create and rotate, and never stored: only their hashes are."
        },
        "security": [{"adminToken": []}],
        "paths": {
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
                "parameters": [id_param.clone()],
                "get": {
                    "operationId": "getKey",
                    "summary": "One key's metadata",
                    "responses": with_errors(json!({"200": key("The key")}), &["400", "401", "404", "503"])
                },
                "patch": {
                    "operationId": "updateKey",
                    "summary": "Change metadata; absent fields are left as they are, `null` clears an optional field",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UpdateKeyRequest"}}}},
                    "responses": with_errors(json!({"200": key("The updated key")}), &["400", "401", "404", "409", "415", "503"])
                }
            },
            "/v1/keys/{id}/revoke": {
                "parameters": [id_param.clone()],
                "post": {
                    "operationId": "revokeKey",
                    "summary": "Revoke a key at once, on every replica (idempotent)",
                    "responses": with_errors(json!({"200": key("The revoked key")}), &["400", "401", "404", "409", "503"])
                }
            },
            "/v1/keys/{id}/rotate": {
                "parameters": [id_param],
                "post": {
                    "operationId": "rotateKey",
                    "summary": "Give a key a new secret (same id); the previous one works for the grace period",
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RotateKeyRequest"}}}},
                    "responses": with_errors(json!({"200": issued("Rotated")}), &["400", "401", "404", "409", "503"])
                }
            },
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
        },
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "The admin credential (admin.token_file or TOLLGATE_ADMIN_TOKEN)"}
            },
            "schemas": {
                "Key": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "name", "owner", "tenant", "scopes", "plan", "expires_at", "created_at", "updated_at", "last_used_at", "revoked", "revoked_at", "previous_secret_valid_until"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "owner": {"type": "string", "description": "Becomes the identity's subject"},
                        "tenant": nullable_text.clone(),
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "plan": nullable_text.clone(),
                        "expires_at": nullable_time.clone(),
                        "created_at": time.clone(),
                        "updated_at": time,
                        "last_used_at": {"type": "string", "format": "date-time", "nullable": true, "description": "Recorded in batches, so up to a few seconds behind"},
                        "revoked": {"type": "boolean"},
                        "revoked_at": nullable_time.clone(),
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
                        "next_cursor": nullable_text.clone()
                    }
                },
                "CreateKeyRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["name", "owner"],
                    "properties": {
                        "name": {"type": "string"},
                        "owner": {"type": "string"},
                        "tenant": nullable_text.clone(),
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "plan": nullable_text.clone(),
                        "expires_at": nullable_time.clone(),
                        "expires_in": {"type": "string", "nullable": true, "description": "A duration from now such as `90d` (instead of expires_at)"}
                    }
                },
                "UpdateKeyRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "name": {"type": "string"},
                        "owner": {"type": "string"},
                        "tenant": nullable_text.clone(),
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "plan": nullable_text,
                        "expires_at": nullable_time
                    }
                },
                "RotateKeyRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "grace_period": {"type": "string", "nullable": true, "description": "How long the previous secret keeps working, e.g. `1h` (at most 90 days); default 0"}
                    }
                },
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
                        "error": {"type": "string", "enum": ["invalid_request", "unauthorized", "not_found", "method_not_allowed", "conflict", "store_unavailable"]},
                        "message": {"type": "string"}
                    }
                }
            }
        }
    })
}
