//! Real Redis (Debian `redis-server`) for end-to-end tests: the same process helpers the
//! rate-limit store's conformance suite uses (a standalone server, with a password or TLS, a
//! 3-node Cluster, or Sentinel with a master, a replica and three sentinels), each on free
//! loopback ports with its own temp dir, killed on drop.

pub use tollgate_common::testing::{RedisCluster, RedisSentinel, RedisServer};
