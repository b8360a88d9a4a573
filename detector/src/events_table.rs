//! The `events` table rules query: its Arrow schema, the baseline features
//! added to each event, and the batch builder.
//!
//! `sql/README.md` documents every column; a test checks that it does.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use vigil_schemas::Event;

use crate::{Error, Result};

/// What the baselines say about one event (see `sql/README.md`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    pub principal: String,
    pub role: String,
    pub is_phi: bool,
    pub file_class: Option<String>,
    pub hour_of_week: i32,
    pub user_hour_events: i64,
    pub user_hour_mean_events: f64,
    pub user_z_volume: f64,
    pub user_z_phi_files: f64,
    pub user_z_bytes_read: f64,
    pub user_z_bytes_sent: f64,
    pub role_z_volume: f64,
    pub host_z_volume: f64,
    pub hour_rarity: f64,
    pub first_seen_exe: bool,
    pub first_seen_destination: bool,
    pub first_seen_file_class: bool,
    pub first_seen_host: bool,
    pub hours_on_host: f64,
    pub minutes_since_escalation: Option<f64>,
    pub user_phi_opens_15m: i64,
    pub user_phi_bytes_read_15m: i64,
    pub baseline_days: i32,
    pub baseline_age_days: i32,
    pub learning: bool,
}

/// An event with its features, where it came from, ready for the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub event: Event,
    pub features: Features,
    pub partition: i32,
    pub offset: i64,
}

fn field(name: &str, data_type: DataType, nullable: bool) -> Field {
    Field::new(name, data_type, nullable)
}

/// The `events` table's schema.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use DataType::{Boolean, Float64, Int32, Int64, Utf8};
            Arc::new(Schema::new(vec![
                field("event_id", Utf8, false),
                field("host", Utf8, false),
                field("seq", Int64, false),
                field("time_unix_ns", Int64, false),
                field(
                    "time",
                    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                    false,
                ),
                field("kind", Utf8, false),
                field("errno", Int32, false),
                field("pid", Int32, false),
                field("ppid", Int32, false),
                field("uid", Int64, false),
                field("euid", Int64, false),
                field("gid", Int64, false),
                field("login_uid", Int64, true),
                field("user_name", Utf8, true),
                field("login_name", Utf8, true),
                field("comm", Utf8, false),
                field("exe", Utf8, true),
                field("cmdline", Utf8, false),
                field("parent_exe", Utf8, true),
                field("container_id", Utf8, true),
                field("path", Utf8, true),
                field("new_path", Utf8, true),
                field("flags", Int32, true),
                field("family", Utf8, true),
                field("src_addr", Utf8, true),
                field("src_port", Int32, true),
                field("dst_addr", Utf8, true),
                field("dst_port", Int32, true),
                field("bytes", Int64, true),
                field("target_id", Int64, true),
                field("gap_lost", Int64, true),
                field("principal", Utf8, false),
                field("role", Utf8, false),
                field("is_phi", Boolean, false),
                field("file_class", Utf8, true),
                field("hour_of_week", Int32, false),
                field("user_hour_events", Int64, false),
                field("user_hour_mean_events", Float64, false),
                field("user_z_volume", Float64, false),
                field("user_z_phi_files", Float64, false),
                field("user_z_bytes_read", Float64, false),
                field("user_z_bytes_sent", Float64, false),
                field("role_z_volume", Float64, false),
                field("host_z_volume", Float64, false),
                field("hour_rarity", Float64, false),
                field("first_seen_exe", Boolean, false),
                field("first_seen_destination", Boolean, false),
                field("first_seen_file_class", Boolean, false),
                field("first_seen_host", Boolean, false),
                field("hours_on_host", Float64, false),
                field("minutes_since_escalation", Float64, true),
                field("user_phi_opens_15m", Int64, false),
                field("user_phi_bytes_read_15m", Int64, false),
                field("baseline_days", Int32, false),
                field("baseline_age_days", Int32, false),
                field("learning", Boolean, false),
            ]))
        })
        .clone()
}

fn strings<'a>(rows: &'a [Row], f: impl Fn(&'a Row) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn i64s(rows: &[Row], f: impl Fn(&Row) -> Option<i64>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Int64Array>())
}

fn i32s(rows: &[Row], f: impl Fn(&Row) -> Option<i32>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Int32Array>())
}

fn f64s(rows: &[Row], f: impl Fn(&Row) -> f64) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<Float64Array>())
}

fn bools(rows: &[Row], f: impl Fn(&Row) -> bool) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<BooleanArray>())
}

/// Builds the `events` batch for rows (one row per event, same order).
pub fn build_batch(rows: &[Row]) -> Result<RecordBatch> {
    let cmdlines: Vec<String> = rows.iter().map(|r| r.event.argv.join(" ")).collect();
    let columns: Vec<ArrayRef> = vec![
        strings(rows, |r| Some(r.event.event_id.as_str())),
        strings(rows, |r| Some(r.event.host.as_str())),
        i64s(rows, |r| Some(r.event.seq)),
        i64s(rows, |r| Some(r.event.time_unix_ns)),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.event.time_unix_ns))
                .collect::<TimestampNanosecondArray>()
                .with_timezone("UTC"),
        ),
        strings(rows, |r| Some(r.event.kind.as_str())),
        i32s(rows, |r| Some(r.event.errno)),
        i32s(rows, |r| Some(r.event.pid)),
        i32s(rows, |r| Some(r.event.ppid)),
        i64s(rows, |r| Some(r.event.uid)),
        i64s(rows, |r| Some(r.event.euid)),
        i64s(rows, |r| Some(r.event.gid)),
        i64s(rows, |r| r.event.login_uid),
        strings(rows, |r| r.event.user_name.as_deref()),
        strings(rows, |r| r.event.login_name.as_deref()),
        strings(rows, |r| Some(r.event.comm.as_str())),
        strings(rows, |r| r.event.exe.as_deref()),
        Arc::new(
            cmdlines
                .iter()
                .map(|c| Some(c.as_str()))
                .collect::<StringArray>(),
        ),
        strings(rows, |r| r.event.parent_exe.as_deref()),
        strings(rows, |r| r.event.container_id.as_deref()),
        strings(rows, |r| r.event.path.as_deref()),
        strings(rows, |r| r.event.new_path.as_deref()),
        i32s(rows, |r| r.event.flags),
        strings(rows, |r| {
            r.event.family.map(|f| match f {
                vigil_schemas::SocketFamily::Unix => "unix",
                vigil_schemas::SocketFamily::Inet => "inet",
                vigil_schemas::SocketFamily::Inet6 => "inet6",
                vigil_schemas::SocketFamily::Other => "other",
            })
        }),
        strings(rows, |r| r.event.src_addr.as_deref()),
        i32s(rows, |r| r.event.src_port),
        strings(rows, |r| r.event.dst_addr.as_deref()),
        i32s(rows, |r| r.event.dst_port),
        i64s(rows, |r| r.event.bytes),
        i64s(rows, |r| r.event.target_id),
        i64s(rows, |r| r.event.gap.as_ref().map(|g| g.lost)),
        strings(rows, |r| Some(r.features.principal.as_str())),
        strings(rows, |r| Some(r.features.role.as_str())),
        bools(rows, |r| r.features.is_phi),
        strings(rows, |r| r.features.file_class.as_deref()),
        i32s(rows, |r| Some(r.features.hour_of_week)),
        i64s(rows, |r| Some(r.features.user_hour_events)),
        f64s(rows, |r| r.features.user_hour_mean_events),
        f64s(rows, |r| r.features.user_z_volume),
        f64s(rows, |r| r.features.user_z_phi_files),
        f64s(rows, |r| r.features.user_z_bytes_read),
        f64s(rows, |r| r.features.user_z_bytes_sent),
        f64s(rows, |r| r.features.role_z_volume),
        f64s(rows, |r| r.features.host_z_volume),
        f64s(rows, |r| r.features.hour_rarity),
        bools(rows, |r| r.features.first_seen_exe),
        bools(rows, |r| r.features.first_seen_destination),
        bools(rows, |r| r.features.first_seen_file_class),
        bools(rows, |r| r.features.first_seen_host),
        f64s(rows, |r| r.features.hours_on_host),
        Arc::new(
            rows.iter()
                .map(|r| r.features.minutes_since_escalation)
                .collect::<Float64Array>(),
        ),
        i64s(rows, |r| Some(r.features.user_phi_opens_15m)),
        i64s(rows, |r| Some(r.features.user_phi_bytes_read_15m)),
        i32s(rows, |r| Some(r.features.baseline_days)),
        i32s(rows, |r| Some(r.features.baseline_age_days)),
        bools(rows, |r| r.features.learning),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| Error::Internal {
        what: format!("building the events batch: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_is_documented_in_sql_readme() {
        let readme = include_str!("../../sql/README.md");
        for field in schema().fields() {
            let marker = format!("| `{}` |", field.name());
            assert!(
                readme.contains(&marker),
                "sql/README.md does not document column `{}`",
                field.name()
            );
        }
    }
}
