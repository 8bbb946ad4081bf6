//! tollgate-authz
