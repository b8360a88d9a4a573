//! The detector's systemd unit (`deploy/systemd/vigil-detector.service`)
//! is one systemd takes. systemd is not PID 1 on these machines, so it is
//! checked with `systemd-analyze verify`; its sandboxing is not exercised
//! (see docs/deploy.md). The example configuration it names is loaded by
//! `config.rs`'s unit tests.

use vigil_schemas::testkit::assert_systemd_verifies;

#[test]
fn systemd_takes_the_unit() {
    assert_systemd_verifies(
        "vigil-detector.service",
        include_str!("../../deploy/systemd/vigil-detector.service"),
        "/opt/vigil/bin/detector",
        env!("CARGO_BIN_EXE_detector"),
    );
}
