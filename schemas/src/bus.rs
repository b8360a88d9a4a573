//! Kafka client settings shared by every program on the bus.
//!
//! The local broker (tansu) answers a fetch only when `fetch.wait.max.ms`
//! expires, so consumers use a few milliseconds instead of librdkafka's
//! 500 ms default; with Apache Kafka the short wait costs a little CPU and
//! nothing else.

use rdkafka::ClientConfig;

/// Consumer fetch wait, in milliseconds: the latency floor on tansu.
pub const FETCH_WAIT_MS: u32 = 5;

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
        .set("linger.ms", "1")
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
        .set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string())
        .set("socket.nagle.disable", "true")
        .set("session.timeout.ms", "10000")
        .set("max.poll.interval.ms", "15000");
    config
}
