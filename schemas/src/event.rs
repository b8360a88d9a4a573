//! [`Event`]: one observation published to `vigil.events.v1`.
//!
//! Mirrors `avro/event.r2.avsc` (the current revision) field for field;
//! `avro/event.r1.avsc` is the first revision, still decodable.

use serde::{Deserialize, Serialize};

/// What happened. Byte roll-ups (`Read`, `Write`, `Send`, `Recv`) carry their
/// total in [`Event::bytes`]; `Gap` says events were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Exec,
    Exit,
    Open,
    Read,
    Write,
    Rename,
    Unlink,
    Truncate,
    Chmod,
    Chown,
    Connect,
    Accept,
    Send,
    Recv,
    Setuid,
    Setgid,
    Capset,
    Gap,
    /// A kind added by a newer writer that this reader does not know (and
    /// the kind of [`Event::default`]).
    #[default]
    Unknown,
}

impl Kind {
    /// Every kind, in schema order.
    pub const ALL: [Kind; 19] = [
        Kind::Exec,
        Kind::Exit,
        Kind::Open,
        Kind::Read,
        Kind::Write,
        Kind::Rename,
        Kind::Unlink,
        Kind::Truncate,
        Kind::Chmod,
        Kind::Chown,
        Kind::Connect,
        Kind::Accept,
        Kind::Send,
        Kind::Recv,
        Kind::Setuid,
        Kind::Setgid,
        Kind::Capset,
        Kind::Gap,
        Kind::Unknown,
    ];

    /// True for the kinds that touch a file; a collector reports these only
    /// for watched (PHI) paths.
    pub fn is_file(self) -> bool {
        matches!(
            self,
            Kind::Open
                | Kind::Read
                | Kind::Write
                | Kind::Rename
                | Kind::Unlink
                | Kind::Truncate
                | Kind::Chmod
                | Kind::Chown
        )
    }

    /// The kind whose [`Kind::as_str`] is `name`, if any.
    pub fn named(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The Avro symbol, as analysts write it in SQL (`kind = 'open'`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Exit => "exit",
            Kind::Open => "open",
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Rename => "rename",
            Kind::Unlink => "unlink",
            Kind::Truncate => "truncate",
            Kind::Chmod => "chmod",
            Kind::Chown => "chown",
            Kind::Connect => "connect",
            Kind::Accept => "accept",
            Kind::Send => "send",
            Kind::Recv => "recv",
            Kind::Setuid => "setuid",
            Kind::Setgid => "setgid",
            Kind::Capset => "capset",
            Kind::Gap => "gap",
            Kind::Unknown => "unknown",
        }
    }
}

/// Socket family of a network event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketFamily {
    Unix,
    Inet,
    Inet6,
    Other,
}

/// Events the pipeline lost, carried by a [`Kind::Gap`] event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Number of events lost.
    pub lost: i64,
    /// Kind of the lost events when known.
    pub lost_kind: Option<String>,
    /// Sequence number of the last event delivered before the gap.
    pub first_seq: i64,
    /// Sequence number of the first event delivered after the gap.
    pub last_seq: i64,
    /// Why: `kernel_ringbuf_full`, `producer_queue_full`, `collector_restart`, ...
    pub reason: String,
}

/// One system-call-level event on a host. See `avro/event.r2.avsc` for each
/// field's documentation; the names and order here are the schema's.
/// `Event::default()` is empty (kind `Unknown`, no optional field set): a
/// base for building events field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub host: String,
    pub seq: i64,
    pub time_unix_ns: i64,
    pub kind: Kind,
    /// 0 for success, otherwise the positive errno.
    pub errno: i32,
    pub pid: i32,
    pub ppid: i32,
    pub tid: i32,
    pub uid: i64,
    pub euid: i64,
    pub gid: i64,
    pub login_uid: Option<i64>,
    pub user_name: Option<String>,
    pub login_name: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    /// Exec arguments (revision 2; empty when decoded from revision 1).
    pub argv: Vec<String>,
    pub parent_exe: Option<String>,
    pub cgroup_id: i64,
    pub container_id: Option<String>,
    pub path: Option<String>,
    pub new_path: Option<String>,
    pub flags: Option<i32>,
    pub mode: Option<i32>,
    pub family: Option<SocketFamily>,
    pub src_addr: Option<String>,
    pub src_port: Option<i32>,
    pub dst_addr: Option<String>,
    pub dst_port: Option<i32>,
    pub bytes: Option<i64>,
    pub target_id: Option<i64>,
    pub gap: Option<Gap>,
}

impl Event {
    /// The identity baselines are keyed by, and the bus key of this event.
    ///
    /// Human sessions (a login uid is set) are keyed by the login user's name,
    /// so `sudo` stays attributed to the person; when the name did not
    /// resolve, `<login uid>@<host>`. Service accounts (no login uid) are
    /// `<uid>@<host>`.
    pub fn principal(&self) -> String {
        match (self.login_uid, &self.login_name) {
            (Some(_), Some(name)) if !name.is_empty() => name.clone(),
            (Some(login_uid), _) => format!("{login_uid}@{}", self.host),
            (None, _) => format!("{}@{}", self.uid, self.host),
        }
    }

    /// True when the event succeeded.
    pub fn is_success(&self) -> bool {
        self.errno == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(login_uid: Option<i64>, login_name: Option<&str>) -> Event {
        Event {
            event_id: "e".into(),
            host: "ehr-01".into(),
            seq: 1,
            kind: Kind::Open,
            pid: 1,
            tid: 1,
            uid: 998,
            gid: 998,
            login_uid,
            login_name: login_name.map(str::to_owned),
            comm: "cat".into(),
            ..Event::default()
        }
    }

    #[test]
    fn human_sessions_are_keyed_by_login_name_even_under_sudo() {
        assert_eq!(event(Some(1000), Some("alice")).principal(), "alice");
    }

    #[test]
    fn unresolved_login_uid_is_keyed_by_uid_at_host() {
        assert_eq!(event(Some(1000), None).principal(), "1000@ehr-01");
    }

    #[test]
    fn service_accounts_are_keyed_by_uid_at_host() {
        assert_eq!(event(None, Some("ignored")).principal(), "998@ehr-01");
    }

    #[test]
    fn kind_strings_match_serde_names() {
        for kind in Kind::ALL {
            let json = serde_json::to_string(&kind).expect("kind serializes");
            assert_eq!(json, format!("\"{}\"", kind.as_str()), "{kind:?}");
        }
    }

    #[test]
    fn every_kind_is_found_by_its_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::named(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::named("Open"), None, "names are lower case");
    }
}
