//! Uid scope: an excluded uid's access to watched files never reaches the
//! bus, while everyone else's does.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{Collector, consume_until, require_root};
use vigil_schemas::Kind;
use vigil_schemas::testkit::TestBroker;

const NOBODY: u32 = 65534;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_uids_are_filtered_in_the_kernel() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.scope", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    std::fs::set_permissions(watched.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod watched dir");
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--exclude-uids", &NOBODY.to_string()],
    );

    let shared = watched.path().join("shared.txt");
    std::fs::write(&shared, b"readable by all").expect("write shared");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let nobody_read = Command::new("cat")
        .arg(&shared)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("cat as nobody");
    assert!(
        nobody_read.status.success(),
        "nobody can read the shared file"
    );
    let root_read = Command::new("cat")
        .arg(&shared)
        .output()
        .expect("cat as root");
    assert!(root_read.status.success());
    let root_cat = root_read.status;
    // A marker written after both reads: once it is on the bus, so is
    // everything recorded before it.
    let marker = watched.path().join("marker.txt");
    std::fs::write(&marker, b"end").expect("write marker");

    let shared_s = shared.to_str().expect("utf-8").to_owned();
    let marker_s = marker.to_str().expect("utf-8").to_owned();
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(30),
        |events| {
            events
                .iter()
                .any(|p| p.event.kind == Kind::Open && p.event.path.as_deref() == Some(&marker_s))
        },
    )
    .await;
    let stderr = collector.stop();

    let opens_of_shared: Vec<_> = events
        .iter()
        .map(|p| &p.event)
        .filter(|e| e.kind == Kind::Open && e.path.as_deref() == Some(&shared_s))
        .collect();
    assert!(
        opens_of_shared
            .iter()
            .any(|e| e.uid == 0 && e.comm == "cat" && e.errno == 0),
        "root's cat ({root_cat}) is reported: {opens_of_shared:?}\n{stderr}"
    );
    assert!(
        events.iter().all(|p| p.event.uid != i64::from(NOBODY)),
        "nothing from the excluded uid: {:?}",
        events
            .iter()
            .filter(|p| p.event.uid == i64::from(NOBODY))
            .map(|p| (&p.event.kind, &p.event.path))
            .collect::<Vec<_>>()
    );
}
