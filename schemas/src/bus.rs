//! Kafka client settings shared by every program on the bus.
//!
//! The local broker (tansu) answers a fetch only when `fetch.wait.max.ms`
//! expires, so consumers use 1 ms instead of librdkafka's 500 ms default
//! (each hop through tansu costs about 3 ms at 1 ms and 5 ms at 5 ms); with
//! Apache Kafka the short wait costs a little CPU and nothing else.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

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
/// from the earliest offset when the group has none. A member that dies is
/// noticed within the 10 s session timeout; one that stays alive but stops
/// polling keeps its partitions for up to 5 minutes (librdkafka's default
/// `max.poll.interval.ms`), time enough for the detector to read an audit
/// chain's tail from a partition's start (tansu) or to wait out a broker
/// outage without being sent out of the group and rebalancing again.
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
        .set("max.poll.interval.ms", "300000");
    config
}

/// How long each of [`PolledProducer`]'s calls to `poll` lasts: 50 µs past
/// a whole number of milliseconds. rdkafka's `poll` waits in whole
/// milliseconds (it truncates what is left of the window) and then polls
/// with a zero timeout until the window ends, so the fraction past the last
/// whole millisecond is spent spinning. rdkafka's own `ThreadedProducer`
/// (inside every `FutureProducer`) polls in 100 ms windows and so spins
/// about 1 ms in every 100: 0.9% of a core per producer on a quiet bus.
pub const POLL_WINDOW: std::time::Duration = std::time::Duration::from_micros(100_050);

/// A librdkafka producer whose delivery reports are served by a thread of
/// its own, polling in [`POLL_WINDOW`]s. Dereferences to the
/// `BaseProducer`; dropping it stops the thread (within one window).
pub struct PolledProducer<C: rdkafka::producer::ProducerContext + 'static> {
    producer: std::sync::Arc<rdkafka::producer::BaseProducer<C>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl<C: rdkafka::producer::ProducerContext + 'static> PolledProducer<C> {
    /// Creates the producer from `config` with `context` and starts its
    /// delivery-report thread.
    pub fn create(
        config: &ClientConfig,
        context: C,
    ) -> Result<PolledProducer<C>, rdkafka::error::KafkaError> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let producer: Arc<rdkafka::producer::BaseProducer<C>> =
            Arc::new(config.create_with_context(context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let producer = Arc::clone(&producer);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("delivery reports".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL_WINDOW);
                    }
                })
                .map_err(|e| {
                    rdkafka::error::KafkaError::ClientCreation(format!(
                        "starting the delivery-report thread: {e}"
                    ))
                })?
        };
        Ok(PolledProducer {
            producer,
            stop,
            poller: Some(poller),
        })
    }
}

impl<C: rdkafka::producer::ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = rdkafka::producer::BaseProducer<C>;

    fn deref(&self) -> &rdkafka::producer::BaseProducer<C> {
        &self.producer
    }
}

impl<C: rdkafka::producer::ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            // A panic in the thread has already been printed; nothing is
            // left to stop.
            let _ = poller.join();
        }
    }
}

impl<C: rdkafka::producer::ProducerContext + 'static> std::fmt::Debug for PolledProducer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rdkafka::producer::Producer;
        f.debug_struct("PolledProducer")
            .field("in_flight", &self.producer.in_flight_count())
            .finish_non_exhaustive()
    }
}

/// How long after logging one of librdkafka's client-wide errors the same
/// kind is only counted (see [`ClientErrors`]).
pub const ERROR_REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// librdkafka's client-wide errors (a client context's `error`), logged
/// without the flood a broker outage brings: an idempotent producer reports
/// "all brokers are down" at every reconnection attempt, up to 40 times a
/// second. The first error of each kind is logged; the same kind again
/// within [`ERROR_REPEAT_WINDOW`] is counted, and the count goes out with
/// the next one logged after the window. The services say themselves, once,
/// that the broker does not answer; these lines are librdkafka's detail.
#[derive(Debug, Default)]
pub struct ClientErrors {
    /// By librdkafka's error code (`None`: an error without one).
    kinds: Mutex<HashMap<Option<i32>, Repeats>>,
}

#[derive(Debug)]
struct Repeats {
    logged: Instant,
    unlogged: u64,
}

impl ClientErrors {
    /// Logs `error` (with librdkafka's `reason`) unless its kind was logged
    /// less than [`ERROR_REPEAT_WINDOW`] ago. Transport trouble (a broker
    /// not answering or not resolving) is a warning, anything else an error.
    pub fn report(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let Some(unlogged) = self.admit(code.map(|c| c as i32), Instant::now()) else {
            return;
        };
        let repeats = if unlogged > 0 {
            format!(
                " ({unlogged} more like it in the last {} s not logged)",
                ERROR_REPEAT_WINDOW.as_secs()
            )
        } else {
            String::new()
        };
        if code.is_some_and(is_transport) {
            tracing::warn!(target: "librdkafka", "librdkafka: {error}: {reason}{repeats}");
        } else {
            tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}{repeats}");
        }
    }

    /// Whether an error of kind `code` seen at `now` is logged, and if so
    /// how many of its kind went unlogged since the last one that was.
    fn admit(&self, code: Option<i32>, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        match kinds.get_mut(&code) {
            Some(repeats) if now.duration_since(repeats.logged) < ERROR_REPEAT_WINDOW => {
                repeats.unlogged += 1;
                None
            }
            Some(repeats) => {
                repeats.logged = now;
                Some(std::mem::take(&mut repeats.unlogged))
            }
            None => {
                kinds.insert(
                    code,
                    Repeats {
                        logged: now,
                        unlogged: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// Errors that mean the broker cannot be reached, which librdkafka retries
/// by itself.
pub fn is_transport(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_kind_is_logged_once_a_window_with_the_count_of_its_repeats() {
        let errors = ClientErrors::default();
        let start = Instant::now();
        let down = Some(RDKafkaErrorCode::AllBrokersDown as i32);
        let refused = Some(RDKafkaErrorCode::BrokerTransportFailure as i32);
        assert_eq!(errors.admit(down, start), Some(0));
        // The flood of an outage: counted, not logged.
        for tenth in 1..400 {
            let at = start + Duration::from_millis(100 * tenth);
            assert_eq!(errors.admit(down, at), None, "at {tenth}/10 s");
        }
        // Another kind has a window of its own.
        assert_eq!(
            errors.admit(refused, start + Duration::from_secs(5)),
            Some(0)
        );
        assert_eq!(errors.admit(None, start + Duration::from_secs(5)), Some(0));
        // After the window: logged, with what went unlogged.
        assert_eq!(errors.admit(down, start + ERROR_REPEAT_WINDOW), Some(399));
        assert_eq!(
            errors.admit(down, start + ERROR_REPEAT_WINDOW + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            errors.admit(down, start + 3 * ERROR_REPEAT_WINDOW),
            Some(1),
            "a quiet spell: the next one is logged with the one repeat before it"
        );
    }
}
