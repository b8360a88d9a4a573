//! The collector's error type.

use std::path::PathBuf;

/// Everything that can stop the collector. Foreign errors from aya and
/// rdkafka are boxed: they are large and only ever reported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the collector needs {missing} to load eBPF programs (run it as root, or grant \
         CAP_BPF and CAP_PERFMON, e.g. `setcap cap_bpf,cap_perfmon,cap_sys_admin+ep collector`)"
    )]
    MissingCapability { missing: String },

    #[error("config file {path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("invalid setting: {0}")]
    Setting(String),

    #[error("mounting {what} at {target}: {source}; mount it by hand (`{hint}`) and retry")]
    Mount {
        what: &'static str,
        target: &'static str,
        hint: &'static str,
        source: nix::Error,
    },

    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),

    #[error("eBPF program {program}: {source}")]
    Program {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),

    #[error("watched path {path}: {source}")]
    WatchPath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The broker answered and does not have the topic.
    #[error(
        "topic `{topic}` does not exist on {brokers}; create it (deploy/local/broker.sh start creates Vigil's topics), or name another with --topic or VIGIL_TOPIC"
    )]
    UnknownTopic { topic: String, brokers: String },

    #[error(
        "the publisher stopped while the collector was running ({0}); events can no longer \
         reach the broker, so the collector exits to be restarted"
    )]
    PublisherStopped(String),

    #[error("Kafka client: {0}")]
    Kafka(#[source] Box<rdkafka::error::KafkaError>),

    #[error("encoding an event: {0}")]
    Encode(#[from] vigil_schemas::Error),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(error: rdkafka::error::KafkaError) -> Error {
        Error::Kafka(Box::new(error))
    }
}

/// The collector's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
