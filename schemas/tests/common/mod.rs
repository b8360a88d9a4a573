//! Fixtures shared by this crate's integration tests (each test binary uses
//! some of them).

#![allow(dead_code)]

use proptest::prelude::*;
use vigil_schemas::audit::AuditGap;
use vigil_schemas::{AuditRecord, Event, Gap, Kind, SocketFamily};

/// A realistic event: alice reads a patient file on ehr-01.
pub fn sample_event(seq: i64) -> Event {
    Event {
        event_id: format!("ehr-01-run1-{seq}"),
        host: "ehr-01".into(),
        seq,
        time_unix_ns: 1_795_000_000_000_000_000 + seq * 1_000,
        kind: Kind::Open,
        pid: 4242,
        ppid: 4200,
        tid: 4242,
        login_uid: Some(1000),
        user_name: Some("root".into()),
        login_name: Some("alice".into()),
        comm: "cat".into(),
        exe: Some("/usr/bin/cat".into()),
        argv: vec!["cat".into(), format!("/phi/patient-{seq}.json")],
        parent_exe: Some("/usr/bin/bash".into()),
        cgroup_id: 7431,
        path: Some(format!("/phi/patient-{seq}.json")),
        flags: Some(0),
        ..Event::default()
    }
}

fn opt_string() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,40}")
}

prop_compose! {
    fn arb_gap()(lost in any::<i64>(), lost_kind in opt_string(), first_seq in any::<i64>(),
                 last_seq in any::<i64>(), reason in ".{0,30}") -> Gap {
        Gap { lost, lost_kind, first_seq, last_seq, reason }
    }
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    proptest::sample::select(Kind::ALL.to_vec())
}

fn arb_family() -> impl Strategy<Value = SocketFamily> {
    proptest::sample::select(vec![
        SocketFamily::Unix,
        SocketFamily::Inet,
        SocketFamily::Inet6,
        SocketFamily::Other,
    ])
}

prop_compose! {
    fn arb_identity()(pid in any::<i32>(), ppid in any::<i32>(), tid in any::<i32>(),
                      uid in any::<i64>(), euid in any::<i64>(), gid in any::<i64>(),
                      login_uid in proptest::option::of(any::<i64>()),
                      user_name in opt_string(), login_name in opt_string(),
                      comm in ".{0,15}") -> (i32, i32, i32, i64, i64, i64, Option<i64>, Option<String>, Option<String>, String) {
        (pid, ppid, tid, uid, euid, gid, login_uid, user_name, login_name, comm)
    }
}

prop_compose! {
    fn arb_process()(exe in opt_string(), argv in proptest::collection::vec(".{0,20}", 0..6),
                     parent_exe in opt_string(), cgroup_id in any::<i64>(),
                     container_id in opt_string()) -> (Option<String>, Vec<String>, Option<String>, i64, Option<String>) {
        (exe, argv, parent_exe, cgroup_id, container_id)
    }
}

prop_compose! {
    fn arb_target()(path in opt_string(), new_path in opt_string(),
                    flags in proptest::option::of(any::<i32>()), mode in proptest::option::of(any::<i32>()),
                    family in proptest::option::of(arb_family()),
                    src_addr in opt_string(), src_port in proptest::option::of(any::<i32>()),
                    dst_addr in opt_string(), dst_port in proptest::option::of(any::<i32>()),
                    bytes in proptest::option::of(any::<i64>()),
                    target_id in proptest::option::of(any::<i64>()),
                    gap in proptest::option::of(arb_gap()))
        -> (Option<String>, Option<String>, Option<i32>, Option<i32>, Option<SocketFamily>, Option<String>, Option<i32>, Option<String>, Option<i32>, Option<i64>, Option<i64>, Option<Gap>) {
        (path, new_path, flags, mode, family, src_addr, src_port, dst_addr, dst_port, bytes, target_id, gap)
    }
}

prop_compose! {
    /// Any event the schema can carry, including unicode strings and extreme numbers.
    pub fn arb_event()(event_id in ".{0,40}", host in ".{0,30}", seq in any::<i64>(),
                       time_unix_ns in any::<i64>(), kind in arb_kind(), errno in any::<i32>(),
                       identity in arb_identity(), process in arb_process(), target in arb_target()) -> Event {
        let (pid, ppid, tid, uid, euid, gid, login_uid, user_name, login_name, comm) = identity;
        let (exe, argv, parent_exe, cgroup_id, container_id) = process;
        let (path, new_path, flags, mode, family, src_addr, src_port, dst_addr, dst_port, bytes, target_id, gap) = target;
        Event {
            event_id, host, seq, time_unix_ns, kind, errno, pid, ppid, tid, uid, euid, gid,
            login_uid, user_name, login_name, comm, exe, argv, parent_exe, cgroup_id, container_id,
            path, new_path, flags, mode, family, src_addr, src_port, dst_addr, dst_port, bytes,
            target_id, gap,
        }
    }
}

prop_compose! {
    /// Any audit record the schema can carry, sealed or not.
    pub fn arb_audit()(event in arb_event(), partition in any::<i32>(), seq in any::<i64>(),
                       recorded_unix_ns in any::<i64>(), source_offset in any::<i64>(),
                       source_topic in ".{0,30}",
                       prev_hash in proptest::collection::vec(any::<u8>(), 0..40),
                       hash in proptest::collection::vec(any::<u8>(), 0..40)) -> AuditRecord {
        AuditRecord {
            partition,
            seq,
            prev_hash,
            recorded_unix_ns,
            event_id: event.event_id,
            action: event.kind.as_str().to_owned(),
            time_unix_ns: event.time_unix_ns,
            host: event.host,
            principal: event.login_name.clone().unwrap_or_default(),
            uid: event.uid,
            login_uid: event.login_uid,
            user_name: event.user_name,
            pid: event.pid,
            comm: event.comm,
            exe: event.exe,
            path: event.path,
            new_path: event.new_path,
            bytes: event.bytes,
            errno: event.errno,
            gap: event.gap.map(AuditGap::from),
            source_topic,
            source_partition: partition,
            source_offset,
            hash,
        }
    }
}
