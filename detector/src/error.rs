//! The crate's error type.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the detector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka client failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },

    /// The topic does not exist on the broker.
    #[error(
        "topic `{topic}` does not exist on {brokers}; create it (deploy/local/broker.sh start creates Vigil's topics) or check the name"
    )]
    UnknownTopic { topic: String, brokers: String },

    /// Reading or writing the RocksDB state failed.
    #[error("state: {context}: {source}")]
    State {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A configuration or mapping file is wrong.
    #[error("{what}: {reason}")]
    Config { what: String, reason: String },

    /// A bug: an invariant of the detector did not hold.
    #[error("internal error: {what}")]
    Internal { what: String },

    /// The service was stopped while it waited for the broker (to take
    /// published outputs or to give it the audit chain's tail); the
    /// batches in hand were not committed.
    #[error(
        "stopped while waiting for the broker at {brokers}: {batches} batch(es) were not committed; their events are processed again at the next start"
    )]
    Unacknowledged { batches: usize, brokers: String },

    /// Writing output failed (e.g. stdout closed).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Error::Kafka {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
