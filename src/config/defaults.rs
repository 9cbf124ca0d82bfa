//! Every default of the config, named once: validation uses these and
//! the typed config's docs name them.

pub const LISTEN: &str = "127.0.0.1:8080";
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const MAX_BODY_BYTES: u64 = 65536;
pub const MAX_CONNECTIONS: u64 = 4096;
pub const MAX_HEADERS: u64 = 64;
pub const HEADER_READ_TIMEOUT_MS: u64 = 10000;
pub const BODY_READ_TIMEOUT_MS: u64 = 10000;
pub const H2_IDLE_TIMEOUT_MS: u64 = 60000;
pub const H2_MAX_RESET_STREAMS: u64 = 200;
pub const MAX_CONCURRENT_REQUESTS: u64 = 1024;
pub const MAX_HEADER_BYTES: u64 = 16384;
pub const MIN_HEADER_BYTES: u64 = 8192;
pub const SHUTDOWN_GRACE_MS: u64 = 5000;
pub const BASE_URL: &str = "https://api.batch.com";
pub const CONNECT_TIMEOUT_MS: u64 = 2000;
pub const REQUEST_TIMEOUT_MS: u64 = 10000;
pub const REPLAY_CACHE_SIZE: u64 = 1_000_000;
pub const TEAM_CLAIM: &str = "team";
pub const LEEWAY_S: u64 = 30;
pub const MAX_TOKEN_LIFETIME_S: u64 = 900;
pub const CACHE_TTL_S: u64 = 300;
pub const STALE_IF_ERROR_S: u64 = 3600;
pub const LOG_LEVEL: &str = "info";
pub const ROTATE_BYTES: u64 = 104_857_600;
pub const CHECKPOINT_INTERVAL_S: u64 = 60;
pub const UNAUTHENTICATED_RECORDS_PER_S: u32 = 20;
pub const SHARED_KEY_PREFIX: &str = "bgw:";
pub const SHARED_TIMEOUT_MS: u64 = 25;
pub const FALLBACK_REPLICAS: u64 = 2;
pub const REPLICA_ENV: &str = "BATCH_GATEWAY_REPLICA";
