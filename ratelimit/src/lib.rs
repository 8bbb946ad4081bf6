//! tollgate-ratelimit
