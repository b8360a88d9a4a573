//! The broker script creates exactly the topics `topics::ALL` names.

use vigil_schemas::topics;

#[test]
fn broker_script_creates_the_topics_the_code_uses() {
    // The checkout being tested, read when the test runs: the shared build
    // cache may hold this binary from a checkout at another path.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let script_path = std::path::Path::new(&manifest_dir).join("../deploy/local/broker.sh");
    let script = std::fs::read_to_string(&script_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", script_path.display()));
    let start = script
        .find("TOPICS=(")
        .expect("broker.sh has a TOPICS=( list");
    let end = start + script[start..].find(')').expect("TOPICS list is closed");
    let listed: Vec<(String, i32)> = script[start + "TOPICS=(".len()..end]
        .split_whitespace()
        .map(|spec| {
            let (name, partitions) = spec.split_once(':').expect("name:partitions");
            (
                name.to_owned(),
                partitions.parse().expect("partition count"),
            )
        })
        .collect();
    let expected: Vec<(String, i32)> = topics::ALL
        .iter()
        .map(|&(name, partitions)| (name.to_owned(), partitions))
        .collect();
    assert_eq!(
        listed, expected,
        "edit deploy/local/broker.sh and schemas/src/topics.rs together"
    );
}
