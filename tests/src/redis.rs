//! Real Redis (Debian `redis-server`) for end-to-end tests: the same process helpers the
//! rate-limit store's conformance suite uses (a standalone server, with a password or TLS, or a
//! 3-node Cluster), each on free loopback ports with its own temp dir, killed on drop.

pub use tollgate_common::testing::{RedisCluster, RedisServer};
