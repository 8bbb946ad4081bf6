//! tollgate-authz

pub mod identity;
