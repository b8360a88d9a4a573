//! SQL detection rules: loading, validation, planning once, executing per
//! batch, and hot reload.
//!
//! A rule is one `.sql` file: a comment header, then a single `SELECT` over
//! the `events` table ([`crate::events_table`]):
//!
//! ```sql
//! -- id: phi-bulk-read-off-hours
//! -- title: Bulk PHI read far outside the user's normal hours
//! -- severity: high
//! -- hipaa: 164.312(b)
//! -- mitre: T1005
//! -- version: 1
//! -- window: 15m
//! SELECT * FROM events WHERE user_phi_opens_15m > 200 AND hour_rarity > 0.9
//! ```
//!
//! `window` is optional: with it, one alert per principal per window; without
//! it, one alert per matching event. The result must carry `event_id` and
//! `principal` (`SELECT *` does). A rule that fails to load is refused with
//! its file, line and reason while the others keep running; a changed file
//! that fails to load keeps its previous version running.
//!
//! Each rule is planned once into a physical plan whose scan reads the
//! current batch from a shared slot; per batch the plan's state is reset and
//! executed (`target_partitions = 1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, collect};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use vigil_schemas::alert::Severity;

use crate::events_table;
use crate::regex_once::CompileRegexOnce;

/// Why a rule file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: PathBuf,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "rule {} line {line}: {}",
                self.file.display(),
                self.reason
            ),
            None => write!(f, "rule {}: {}", self.file.display(), self.reason),
        }
    }
}

impl std::error::Error for RuleError {}

/// A rule's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHeader {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub hipaa: String,
    pub mitre: Vec<String>,
    pub version: u32,
    /// One alert per principal per window, instead of one per event.
    pub window: Option<Duration>,
}

/// A loaded, planned rule.
#[derive(Debug)]
pub struct Rule {
    pub header: RuleHeader,
    pub file: PathBuf,
    plan: Arc<dyn ExecutionPlan>,
    modified: Option<SystemTime>,
}

impl Rule {
    /// The schema of the planned result: the `event_id` column of the
    /// rows the rule selected.
    pub fn output_schema(&self) -> SchemaRef {
        self.plan.schema()
    }
}

/// Longest duration [`parse_duration`] takes: a year. A rule window or a
/// test's spacing beyond it is a typo, and would overflow the nanosecond
/// arithmetic of windows.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// Parses a duration like `15m`, `1h`, `30s`, `2d`, from 1 s to
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    let duration = Duration::from_secs(number.checked_mul(unit_seconds)?);
    (!duration.is_zero() && duration <= MAX_DURATION).then_some(duration)
}

/// Reads the comment header. Returns the header and the 1-based line where
/// the SQL starts.
pub fn parse_header(file: &Path, text: &str) -> Result<RuleHeader, RuleError> {
    let error = |line: Option<usize>, reason: String| RuleError {
        file: file.to_path_buf(),
        line,
        reason,
    };
    let mut fields: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let Some((key, value)) = comment.split_once(':') else {
            continue;
        };
        let key = key.trim();
        if !key.chars().all(|c| c.is_ascii_lowercase() || c == '-') || key.is_empty() {
            continue;
        }
        const KNOWN: [&str; 7] = [
            "id", "title", "severity", "hipaa", "mitre", "version", "window",
        ];
        if !KNOWN.contains(&key) {
            return Err(error(
                Some(index + 1),
                format!(
                    "unknown header field `{key}`; known fields: {}",
                    KNOWN.join(", ")
                ),
            ));
        }
        fields.insert(key, (index + 1, value.trim()));
    }
    let required = |key: &str| {
        fields
            .get(key)
            .copied()
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| error(Some(1), format!("header has no `-- {key}:` line")))
    };
    let (_, id) = required("id")?;
    let (_, title) = required("title")?;
    let (severity_line, severity) = required("severity")?;
    let (hipaa_line, hipaa) = required("hipaa")?;
    let (mitre_line, mitre) = required("mitre")?;
    let (version_line, version) = required("version")?;

    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if id != stem {
        return Err(error(
            Some(1),
            format!(
                "id `{id}` differs from the file name `{stem}.sql`; name the file after the id"
            ),
        ));
    }
    let severity = severity
        .parse::<Severity>()
        .map_err(|e| error(Some(severity_line), e))?;
    if !hipaa.starts_with("164.") {
        return Err(error(
            Some(hipaa_line),
            format!("hipaa `{hipaa}` is not a Security Rule section like 164.312(b)"),
        ));
    }
    let mitre: Vec<String> = mitre.split(',').map(|t| t.trim().to_owned()).collect();
    if let Some(bad) = mitre.iter().find(|t| {
        // By characters, not bytes: a typo like `T10–5` must be refused, not
        // split inside the dash.
        let mut chars = t.chars();
        !(chars.next() == Some('T') && chars.take(4).filter(char::is_ascii_digit).count() == 4)
    }) {
        return Err(error(
            Some(mitre_line),
            format!("mitre `{bad}` is not an ATT&CK technique id like T1005 or T1048.003"),
        ));
    }
    let version = version.parse::<u32>().map_err(|_| {
        error(
            Some(version_line),
            format!("version `{version}` is not a whole number"),
        )
    })?;
    let window = match fields.get("window") {
        None => None,
        Some((line, text)) => Some(parse_duration(text).ok_or_else(|| {
            error(
                Some(*line),
                format!(
                    "window `{text}` is not a duration like 15m, 1h or 30s (at most {}d)",
                    MAX_DURATION.as_secs() / 86_400
                ),
            )
        })?),
    };
    Ok(RuleHeader {
        id: id.to_owned(),
        title: title.to_owned(),
        severity,
        hipaa: hipaa.to_owned(),
        mitre,
        version,
        window,
    })
}

/// The slot the `events` table reads: the batch being evaluated.
#[derive(Debug)]
struct BatchSlot {
    schema: SchemaRef,
    batch: Mutex<Option<RecordBatch>>,
}

impl PartitionStream for BatchSlot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = self
            .batch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let batches = batch.into_iter().collect();
        // A memory stream over batches of the table's own schema cannot fail
        // to build.
        match MemoryStream::try_new(batches, self.schema.clone(), None) {
            Ok(stream) => Box::pin(stream),
            Err(e) => Box::pin(
                MemoryStream::try_new(vec![], self.schema.clone(), None)
                    .unwrap_or_else(|_| panic!("empty memory stream for the events table: {e}")),
            ),
        }
    }
}

/// Finds `Line: N` in a parser message.
fn line_in_message(message: &str) -> Option<usize> {
    let at = message.find("Line: ")?;
    let digits: String = message[at + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The closest column name to an unknown one, if any is close.
fn suggest_column(unknown: &str) -> Option<String> {
    events_table::schema()
        .fields()
        .iter()
        .map(|f| (edit_distance(unknown, f.name()), f.name().clone()))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, name)| name)
}

/// Turns a DataFusion error into a rule error with a file line.
fn explain(file: &Path, text: &str, sql_error: DataFusionError) -> RuleError {
    let mut line = sql_error
        .diagnostic()
        .and_then(|d| d.span)
        .map(|span| span.start.line as usize)
        .filter(|line| *line > 0);
    // An optimizer rule's failure wraps the cause ("Optimizer rule
    // 'simplify_expressions' failed"); the analyst needs the cause.
    let message = sql_error.find_root().to_string();
    if line.is_none() {
        line = line_in_message(&message);
    }
    let mut reason = message.lines().next().unwrap_or_default().trim().to_owned();
    // "No field named usr" -> point at the first line using it, suggest one.
    if let Some(rest) = reason.split("No field named ").nth(1) {
        let unknown: String = rest
            .trim_start_matches(['"', '`'])
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !unknown.is_empty() {
            reason = format!("unknown column `{unknown}`");
            if let Some(suggestion) = suggest_column(&unknown) {
                reason.push_str(&format!("; did you mean `{suggestion}`?"));
            } else {
                reason.push_str("; see sql/README.md for the columns of `events`");
            }
            if line.is_none() {
                line = text
                    .lines()
                    .position(|l| !l.trim_start().starts_with("--") && l.contains(&unknown))
                    .map(|i| i + 1);
            }
        }
    }
    RuleError {
        file: file.to_path_buf(),
        line,
        reason,
    }
}

/// The loaded rules and the engine that runs them.
pub struct RuleSet {
    ctx: SessionContext,
    slot: Arc<BatchSlot>,
    dir: Option<PathBuf>,
    rules: BTreeMap<PathBuf, Rule>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("dir", &self.dir)
            .field("rules", &self.rules.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::new()
    }
}

impl RuleSet {
    /// An empty rule set with its `events` table registered.
    pub fn new() -> RuleSet {
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(8192)
            .set_bool("datafusion.sql_parser.collect_spans", true);
        let ctx = SessionContext::new_with_config(config);
        ctx.add_optimizer_rule(Arc::new(CompileRegexOnce));
        let slot = Arc::new(BatchSlot {
            schema: events_table::schema(),
            batch: Mutex::new(None),
        });
        let partition: Arc<dyn PartitionStream> = slot.clone();
        // The table's schema is the slot's: registration cannot fail.
        if let Ok(table) = StreamingTable::try_new(events_table::schema(), vec![partition]) {
            let _ = ctx.register_table("events", Arc::new(table));
        }
        RuleSet {
            ctx,
            slot,
            dir: None,
            rules: BTreeMap::new(),
        }
    }

    /// Loads every `*.sql` file in `dir`. Returns the set with the rules
    /// that loaded and the errors of those that did not.
    pub async fn load_dir(dir: &Path) -> (RuleSet, Vec<RuleError>) {
        let mut set = RuleSet::new();
        set.dir = Some(dir.to_path_buf());
        let errors = set
            .reload()
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        (set, errors)
    }

    /// Plans one rule from its text.
    pub async fn compile(&self, file: &Path, text: &str) -> Result<Rule, RuleError> {
        let header = parse_header(file, text)?;
        let statements = DFParser::parse_sql(text).map_err(|e| explain(file, text, e))?;
        let refuse = |reason: &str| RuleError {
            file: file.to_path_buf(),
            line: None,
            reason: reason.to_owned(),
        };
        if statements.len() != 1 {
            return Err(refuse(&format!(
                "a rule is exactly one SELECT statement; found {}",
                statements.len()
            )));
        }
        match statements.front() {
            Some(Statement::Statement(statement))
                if matches!(**statement, SqlStatement::Query(_)) => {}
            _ => {
                return Err(refuse(
                    "only a SELECT over the detector's tables is allowed (no DDL, DML, COPY or EXPLAIN)",
                ));
            }
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = self
            .ctx
            .sql_with_options(text, options)
            .await
            .map_err(|e| explain(file, text, e))?;
        for required in ["event_id", "principal"] {
            if !frame.schema().has_column_with_unqualified_name(required) {
                return Err(refuse(&format!(
                    "the result has no `{required}` column; select it (SELECT * does) so alerts can name their events and principal"
                )));
            }
        }
        // Alerts are built from the batch's own rows, found by event id, so
        // the plan only has to produce that column: DataFusion then filters
        // just the columns the rule reads instead of copying all sixty.
        let plan = frame
            .select_columns(&["event_id"])
            .map_err(|e| explain(file, text, e))?
            .create_physical_plan()
            .await
            .map_err(|e| explain(file, text, e))?;
        Ok(Rule {
            header,
            file: file.to_path_buf(),
            plan,
            modified: None,
        })
    }

    /// Re-reads the rule directory: new and changed files are (re)planned,
    /// removed files are dropped. A changed file that fails keeps its
    /// previous version. Returns one outcome per file looked at anew.
    pub async fn reload(&mut self) -> Vec<Result<String, RuleError>> {
        let Some(dir) = self.dir.clone() else {
            return Vec::new();
        };
        let mut outcomes = Vec::new();
        let mut present = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                return vec![Err(RuleError {
                    file: dir.clone(),
                    line: None,
                    reason: format!("cannot read the rule directory: {e}"),
                })];
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        for file in files {
            present.push(file.clone());
            let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
            if let Some(existing) = self.rules.get(&file)
                && existing.modified == modified
            {
                continue;
            }
            let outcome = match std::fs::read_to_string(&file) {
                Ok(text) => self.compile(&file, &text).await,
                Err(e) => Err(RuleError {
                    file: file.clone(),
                    line: None,
                    reason: format!("cannot read: {e}"),
                }),
            };
            match outcome {
                Ok(mut rule) => {
                    rule.modified = modified;
                    let id = rule.header.id.clone();
                    self.rules.insert(file, rule);
                    outcomes.push(Ok(id));
                }
                Err(error) => {
                    // Keep the previous version, but remember the failed
                    // modification time so the error is reported once.
                    if let Some(existing) = self.rules.get_mut(&file) {
                        existing.modified = modified;
                    }
                    outcomes.push(Err(error));
                }
            }
        }
        self.rules.retain(|file, _| present.contains(file));
        outcomes
    }

    /// Adds a planned rule (used by `rules test` and tests).
    pub fn insert(&mut self, rule: Rule) {
        self.rules.insert(rule.file.clone(), rule);
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Runs every rule over `batch`. A rule that fails at run time is
    /// reported with its result and the others still run.
    pub async fn evaluate(
        &self,
        batch: &RecordBatch,
    ) -> Vec<(&Rule, Result<Vec<RecordBatch>, DataFusionError>)> {
        self.load(Some(batch.clone()));
        let task = self.ctx.task_ctx();
        let mut results = Vec::with_capacity(self.rules.len());
        for rule in self.rules.values() {
            results.push((rule, run(rule, task.clone()).await));
        }
        self.load(None);
        results
    }

    /// Runs one rule over `batch` (after it failed on a larger batch, to
    /// find the events it fails on).
    pub async fn evaluate_rule(
        &self,
        rule: &Rule,
        batch: &RecordBatch,
    ) -> Result<Vec<RecordBatch>, DataFusionError> {
        self.load(Some(batch.clone()));
        let outcome = run(rule, self.ctx.task_ctx()).await;
        self.load(None);
        outcome
    }

    /// Puts the batch the `events` table reads in place (or takes it away).
    fn load(&self, batch: Option<RecordBatch>) {
        *self
            .slot
            .batch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = batch;
    }
}

/// Runs a rule's plan over the loaded batch.
async fn run(rule: &Rule, task: Arc<TaskContext>) -> Result<Vec<RecordBatch>, DataFusionError> {
    collect(reset_plan_states(rule.plan.clone())?, task).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "-- id: bulk\n-- title: Bulk read\n-- severity: high\n-- hipaa: 164.312(b)\n-- mitre: T1005\n-- version: 2\n-- window: 15m\nSELECT * FROM events\nWHERE user_phi_opens_15m > 200\n";

    #[test]
    fn headers_parse() {
        let header = parse_header(Path::new("sql/rules/bulk.sql"), GOOD).expect("parses");
        assert_eq!(header.id, "bulk");
        assert_eq!(header.severity, Severity::High);
        assert_eq!(header.version, 2);
        assert_eq!(header.mitre, vec!["T1005"]);
        assert_eq!(header.window, Some(Duration::from_secs(900)));
    }

    #[test]
    fn header_mistakes_name_their_line() {
        let bad = GOOD.replace("severity: high", "severity: urgent");
        let err = parse_header(Path::new("bulk.sql"), &bad).expect_err("bad severity");
        assert_eq!(err.line, Some(3));
        assert!(err.to_string().contains("bulk.sql line 3"), "{err}");

        let bad = GOOD.replace("-- window: 15m", "-- windw: 15m");
        let err = parse_header(Path::new("bulk.sql"), &bad).expect_err("typo");
        assert_eq!(err.line, Some(7));
        assert!(err.reason.contains("windw"), "{err}");

        for typo in ["T10–5", "T100é", "T1", "t1005"] {
            let bad = GOOD.replace("mitre: T1005", &format!("mitre: T1005, {typo}"));
            let err = parse_header(Path::new("bulk.sql"), &bad).expect_err(typo);
            assert_eq!(err.line, Some(5), "{typo}: {err}");
        }

        let err = parse_header(Path::new("other.sql"), GOOD).expect_err("id vs file");
        assert!(err.reason.contains("file name"), "{err}");
    }

    #[tokio::test]
    async fn good_rules_plan_and_bad_ones_are_refused_with_lines() {
        let set = RuleSet::new();
        set.compile(Path::new("bulk.sql"), GOOD)
            .await
            .expect("plans");

        let typo = GOOD.replace("user_phi_opens_15m > 200", "usr_phi_opens_15m > 200");
        let err = set
            .compile(Path::new("bulk.sql"), &typo)
            .await
            .expect_err("unknown column");
        assert_eq!(err.line, Some(9), "{err}");
        assert!(
            err.reason.contains("did you mean `user_phi_opens_15m`"),
            "{err}"
        );

        let syntax = GOOD.replace("WHERE user_phi", "WHERE WHERE user_phi");
        let err = set
            .compile(Path::new("bulk.sql"), &syntax)
            .await
            .expect_err("syntax");
        assert_eq!(err.line, Some(9), "{err}");

        let ddl = GOOD.replace(
            "SELECT * FROM events\nWHERE user_phi_opens_15m > 200\n",
            "DROP TABLE events\n",
        );
        let err = set
            .compile(Path::new("bulk.sql"), &ddl)
            .await
            .expect_err("ddl");
        assert!(err.reason.contains("only a SELECT"), "{err}");

        let two = format!("{GOOD};\nSELECT * FROM events");
        let err = set
            .compile(Path::new("bulk.sql"), &two)
            .await
            .expect_err("two statements");
        assert!(err.reason.contains("exactly one SELECT"), "{err}");

        let narrow = GOOD.replace("SELECT *", "SELECT event_id");
        let err = set
            .compile(Path::new("bulk.sql"), &narrow)
            .await
            .expect_err("no principal");
        assert!(err.reason.contains("`principal`"), "{err}");

        let file = GOOD.replace("SELECT * FROM events", "SELECT * FROM '/etc/passwd'");
        assert!(
            set.compile(Path::new("bulk.sql"), &file).await.is_err(),
            "no file access"
        );

        // Regular expressions compile when the rule is planned.
        let regex = GOOD.replace(
            "WHERE user_phi_opens_15m > 200",
            "WHERE regexp_like(path, '/(sh|bash$')",
        );
        let err = set
            .compile(Path::new("bulk.sql"), &regex)
            .await
            .expect_err("broken regex");
        assert!(err.reason.contains("regex parse error"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0m"), None);
        assert_eq!(parse_duration("15 minutes"), None);
        assert_eq!(parse_duration("366d"), Some(MAX_DURATION));
        assert_eq!(parse_duration("367d"), None, "longer than a year");
        assert_eq!(
            parse_duration("36028797018963968s"),
            None,
            "no wrap into a short window"
        );
        assert_eq!(parse_duration("213503982334602d"), None, "no overflow");
    }
}
