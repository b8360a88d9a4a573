//! Kafka client settings shared by every program on the bus.
//!
//! The local broker (tansu) answers a fetch only when `fetch.wait.max.ms`
//! expires, so consumers use 1 ms instead of librdkafka's 500 ms default
//! (each hop through tansu costs about 3 ms at 1 ms and 5 ms at 5 ms); with
//! Apache Kafka the short wait costs a little CPU and nothing else.

use rdkafka::ClientConfig;

/// Consumer fetch wait, in milliseconds: the latency floor on tansu.
/// `VIGIL_FETCH_WAIT_MS` overrides it for every consumer of a process (a
/// value librdkafka refuses makes creating the consumer fail with its
/// reason).
pub const FETCH_WAIT_MS: u32 = 1;

/// The fetch wait consumers use: `VIGIL_FETCH_WAIT_MS`, else [`FETCH_WAIT_MS`].
pub fn fetch_wait_ms() -> String {
    std::env::var("VIGIL_FETCH_WAIT_MS").unwrap_or_else(|_| FETCH_WAIT_MS.to_string())
}

/// Producer linger, in milliseconds: how long librdkafka waits for more
/// records before sending a request.
pub const PRODUCER_LINGER_MS: u32 = 1;

/// The linger producers use: `VIGIL_PRODUCER_LINGER_MS`, else
/// [`PRODUCER_LINGER_MS`].
pub fn producer_linger_ms() -> String {
    std::env::var("VIGIL_PRODUCER_LINGER_MS").unwrap_or_else(|_| PRODUCER_LINGER_MS.to_string())
}

/// An idempotent producer that waits for every in-sync replica (`acks=all`),
/// so a record acknowledged is a record kept, once, in order. Nagle's
/// algorithm is off on every client socket: small requests wait for
/// nothing (with it on, loopback round trips can stall on delayed ACKs).
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", producer_linger_ms())
        .set("socket.nagle.disable", "true")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000");
    config
}

/// A consumer-group member that commits offsets only when told to, starting
/// from the earliest offset when the group has none.
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait_ms())
        .set("socket.nagle.disable", "true")
        .set("session.timeout.ms", "10000")
        .set("max.poll.interval.ms", "15000");
    config
}
