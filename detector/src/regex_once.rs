//! Regular expressions in rules compiled once, when the rule is planned.
//!
//! DataFusion turns `regexp_like(col, 'pattern')` into `col ~ 'pattern'`,
//! and Arrow evaluates `~`, `~*`, `!~` and `!~*` against a literal pattern by
//! compiling the pattern for every batch it sees. A rule runs on every
//! micro-batch, so one regular expression cost more than the rest of its
//! rule. [`CompileRegexOnce`], an optimizer rule, replaces each such
//! comparison with a [`MatchRegex`] function that holds the compiled
//! expression. Semantics are Arrow's: `(?i)` for the case-insensitive
//! operators, an empty pattern matches everything, a null string gives
//! null. A pattern that does not compile now fails when the rule is
//! loaded, with the regex crate's reason, instead of on its first batch.
//!
//! `LIKE` and `ILIKE` go the same way when Arrow would compile them too:
//! Arrow answers a literal pattern that is a plain string, a prefix
//! (`'/phi/%'`), a suffix or (for `LIKE`) a substring (`'%/audit/%'`) with
//! string comparisons, and anything else (`'/phi/%/notes/%'`, `'_'`,
//! `ILIKE '%x%'`) with a regular expression built for every batch. Those
//! are translated to an anchored expression once ([`like_to_regex`]).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::{Like, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use regex::Regex;

/// Rewrites regex comparisons against a literal into [`MatchRegex`].
#[derive(Debug, Default)]
pub struct CompileRegexOnce;

impl OptimizerRule for CompileRegexOnce {
    fn name(&self) -> &str {
        "vigil_compile_regex_once"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let name = names.save(&expr);
            let rewritten = expr.transform_up(compile_literal_regex)?;
            Ok(if rewritten.transformed {
                Transformed::yes(name.restore(rewritten.data))
            } else {
                rewritten
            })
        })
    }
}

fn compile_literal_regex(expr: Expr) -> Result<Transformed<Expr>> {
    if let Expr::Like(like) = &expr {
        return Ok(match compile_like(like)? {
            Some(compiled) => Transformed::yes(compiled),
            None => Transformed::no(expr),
        });
    }
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &expr else {
        return Ok(Transformed::no(expr));
    };
    let (case_insensitive, negated) = match op {
        Operator::RegexMatch => (false, false),
        Operator::RegexIMatch => (true, false),
        Operator::RegexNotMatch => (false, true),
        Operator::RegexNotIMatch => (true, true),
        _ => return Ok(Transformed::no(expr)),
    };
    let Some(pattern) = literal_str(right) else {
        return Ok(Transformed::no(expr));
    };
    let function = MatchRegex::new(pattern, case_insensitive, negated)?;
    Ok(Transformed::yes(function.applied_to(left)))
}

/// The text of a string literal; `None` for anything else, a null included.
fn literal_str(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(literal, _) => literal.try_as_str().flatten(),
        _ => None,
    }
}

/// `LIKE` / `ILIKE` (negated or not) against a literal pattern that Arrow
/// would compile per batch, as a [`MatchRegex`]; `None` leaves it to Arrow.
fn compile_like(like: &Like) -> Result<Option<Expr>> {
    let Like {
        negated,
        expr,
        pattern,
        escape_char,
        case_insensitive,
    } = like;
    // Only the default escape character; any other is left to DataFusion.
    if escape_char.is_some_and(|c| c != '\\') {
        return Ok(None);
    }
    let Some(pattern) = literal_str(pattern) else {
        return Ok(None);
    };
    if !arrow_compiles_like(pattern, *case_insensitive) {
        return Ok(None);
    }
    let function = MatchRegex::like(pattern, *case_insensitive, *negated)?;
    Ok(Some(function.applied_to(expr)))
}

/// Whether Arrow's `like` / `ilike` kernels build a regular expression for
/// this literal pattern (on every call) instead of comparing strings.
fn arrow_compiles_like(pattern: &str, case_insensitive: bool) -> bool {
    let special = |s: &str| s.contains(['%', '_', '\\']);
    if !special(pattern) {
        return case_insensitive && !pattern.is_ascii();
    }
    let prefix = pattern.strip_suffix('%').is_some_and(|rest| !special(rest));
    let suffix = pattern.strip_prefix('%').is_some_and(|rest| !special(rest));
    if case_insensitive {
        return !pattern.is_ascii() || !(prefix || suffix);
    }
    let substring = pattern
        .strip_prefix('%')
        .and_then(|rest| rest.strip_suffix('%'))
        .is_some_and(|middle| !special(middle));
    !(prefix || suffix || substring)
}

/// A SQL `LIKE` pattern as an anchored regular expression: `%` is any run
/// of characters (newlines included), `_` any one character, a backslash
/// makes the next character literal, and a backslash at the very end is a
/// literal backslash.
pub fn like_to_regex(pattern: &str) -> String {
    let mut regex = String::with_capacity(pattern.len() + 16);
    regex.push_str("(?s)\\A");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => regex.push_str(".*"),
            '_' => regex.push('.'),
            '\\' => {
                let literal = chars.next().unwrap_or('\\');
                regex.push_str(&regex::escape(literal.encode_utf8(&mut [0; 4])));
            }
            c => regex.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    regex.push_str("\\z");
    regex
}

/// How a plan shows the function: `operator('pattern')`, the operator taken
/// from `[plain, case-insensitive, negated, negated case-insensitive]`.
fn shown_as(operators: [&str; 4], case_insensitive: bool, negated: bool, pattern: &str) -> String {
    let operator = operators[usize::from(case_insensitive) + 2 * usize::from(negated)];
    format!("{operator}('{}')", pattern.replace('\'', "''"))
}

/// `string ~ pattern` (or `~*`, `!~`, `!~*`) with the pattern compiled.
#[derive(Debug)]
pub struct MatchRegex {
    /// How the expression reads in plans, e.g. `regex_match('/bash$')`.
    name: String,
    pattern: String,
    case_insensitive: bool,
    negated: bool,
    /// `None` for the empty pattern, which matches everything.
    regex: Option<Regex>,
    signature: Signature,
}

impl MatchRegex {
    pub fn new(pattern: &str, case_insensitive: bool, negated: bool) -> Result<MatchRegex> {
        let operators = [
            "regex_match",
            "regex_imatch",
            "regex_not_match",
            "regex_not_imatch",
        ];
        let name = shown_as(operators, case_insensitive, negated, pattern);
        MatchRegex::named(name, pattern, case_insensitive, negated)
    }

    /// `LIKE pattern` (`ILIKE`, `NOT LIKE`, `NOT ILIKE`) as a compiled
    /// regular expression, named after the `LIKE` it replaces.
    pub fn like(pattern: &str, case_insensitive: bool, negated: bool) -> Result<MatchRegex> {
        let operators = ["like", "ilike", "not_like", "not_ilike"];
        let name = shown_as(operators, case_insensitive, negated, pattern);
        MatchRegex::named(name, &like_to_regex(pattern), case_insensitive, negated)
    }

    fn named(
        name: String,
        pattern: &str,
        case_insensitive: bool,
        negated: bool,
    ) -> Result<MatchRegex> {
        let full = if case_insensitive {
            format!("(?i){pattern}")
        } else {
            pattern.to_owned()
        };
        let regex = if full.is_empty() {
            None
        } else {
            match Regex::new(&full) {
                Ok(regex) => Some(regex),
                Err(e) => return plan_err!("regular expression '{pattern}' does not compile: {e}"),
            }
        };
        Ok(MatchRegex {
            name,
            pattern: pattern.to_owned(),
            case_insensitive,
            negated,
            regex,
            signature: Signature::any(1, Volatility::Immutable),
        })
    }

    /// This function called on `arg`, as an expression.
    fn applied_to(self, arg: &Expr) -> Expr {
        Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(ScalarUDF::new_from_impl(self)),
            vec![arg.clone()],
        ))
    }

    fn matches(&self, value: &str) -> bool {
        self.regex.as_ref().is_none_or(|r| r.is_match(value)) != self.negated
    }

    fn evaluate<'a>(&self, values: impl Iterator<Item = Option<&'a str>>) -> BooleanArray {
        values.map(|v| v.map(|s| self.matches(s))).collect()
    }
}

impl PartialEq for MatchRegex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
            && self.case_insensitive == other.case_insensitive
            && self.negated == other.negated
    }
}

impl Eq for MatchRegex {}

impl Hash for MatchRegex {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
        self.case_insensitive.hash(state);
        self.negated.hash(state);
    }
}

impl ScalarUDFImpl for MatchRegex {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return exec_err!("{} takes one argument", self.name);
        };
        let array: ArrayRef = match value {
            ColumnarValue::Array(array) => array.clone(),
            ColumnarValue::Scalar(scalar) => {
                return match scalar.try_as_str() {
                    Some(text) => Ok(ColumnarValue::Scalar(ScalarValue::Boolean(
                        text.map(|s| self.matches(s)),
                    ))),
                    None => exec_err!("{} needs a string, not {}", self.name, scalar.data_type()),
                };
            }
        };
        let result = match array.data_type() {
            DataType::Utf8 => self.evaluate(array.as_string::<i32>().iter()),
            DataType::LargeUtf8 => self.evaluate(array.as_string::<i64>().iter()),
            DataType::Utf8View => self.evaluate(array.as_string_view().iter()),
            other => return exec_err!("{} needs a string, not {other}", self.name),
        };
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::SessionContext;

    /// A one-column `path` table.
    fn paths(paths: Vec<Option<&str>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("path", DataType::Utf8, true)]));
        let paths: ArrayRef = Arc::new(StringArray::from(paths));
        RecordBatch::try_new(schema, vec![paths]).expect("batch")
    }

    /// Runs `predicate` over a few paths with and without the rule and
    /// returns both answers: they must be the same.
    async fn both(predicate: &str) -> (Vec<Option<bool>>, Vec<Option<bool>>, String) {
        let batch = paths(vec![
            Some("/usr/bin/bash"),
            Some("/usr/bin/BASH"),
            Some("/usr/bin/bashful"),
            Some("/bin/sh"),
            Some(""),
            None,
        ]);
        both_over(batch, predicate).await
    }

    async fn both_over(
        batch: RecordBatch,
        predicate: &str,
    ) -> (Vec<Option<bool>>, Vec<Option<bool>>, String) {
        let mut answers = Vec::new();
        let mut plan_text = String::new();
        for with_rule in [false, true] {
            let ctx = SessionContext::new();
            if with_rule {
                ctx.add_optimizer_rule(Arc::new(CompileRegexOnce));
            }
            ctx.register_batch("events", batch.clone())
                .expect("register");
            let frame = ctx
                .sql(&format!("SELECT {predicate} AS m FROM events"))
                .await
                .expect("plans");
            if with_rule {
                plan_text = format!("{}", frame.clone().into_optimized_plan().expect("plan"));
            }
            let batches = frame.collect().await.expect("runs");
            let column = batches[0].column(0).as_boolean().clone();
            answers.push(column.iter().collect::<Vec<_>>());
        }
        let with = answers.pop().expect("two runs");
        let without = answers.pop().expect("two runs");
        (without, with, plan_text)
    }

    #[tokio::test]
    async fn every_regex_operator_answers_as_arrow_does() {
        for predicate in [
            "regexp_like(path, '/(sh|bash)$')",
            "path ~ 'bash'",
            "path ~* 'bash$'",
            "path !~ 'bash'",
            "path !~* '^/USR'",
            "path ~ ''",
            "regexp_like(path, 'BASH', 'i')",
        ] {
            let (without, with, plan) = both(predicate).await;
            assert_eq!(with, without, "{predicate}");
            // DataFusion itself turns the simplest patterns into LIKE or a
            // null test; no `~` may be left to compile per batch.
            assert!(
                !plan.contains('~'),
                "{predicate} still compiles per batch: {plan}"
            );
        }
        let (_, _, plan) = both("regexp_like(path, '/(sh|bash)$')").await;
        assert!(plan.contains("regex_match('/(sh|bash)$')"), "{plan}");
    }

    #[tokio::test]
    async fn like_patterns_answer_as_arrow_does() {
        let batch = paths(vec![
            Some("/phi/ward-3/notes/2026.txt"),
            Some("/PHI/Ward-3/NOTES/x"),
            Some("/phi/notes"),
            Some("/phi/a\nb/notes/c"),
            Some("/phi/50%_off/notes/"),
            Some("/phi/50x-off/notes/"),
            Some("back\\slash"),
            Some("/phi/élan/notes/É"),
            Some("abc"),
            Some(""),
            None,
        ]);
        // (pattern, whether Arrow compiles it for LIKE, for ILIKE)
        let patterns = [
            ("/phi/%/notes/%", true, true),
            ("%/notes/%", false, true),
            ("/phi/%", false, false),
            ("%txt", false, false),
            ("a_c", true, true),
            ("_", true, true),
            ("/phi/50\\%\\_off/%", true, true),
            ("%\\%%", true, true),
            ("back\\\\slash", true, true),
            ("%slash\\", true, true),
            ("/phi/élan/%/é", true, true),
            ("/phi/élan%", false, true),
            ("abc", false, false),
        ];
        for (pattern, like, ilike) in patterns {
            for (operator, compiled) in [
                ("LIKE", like),
                ("NOT LIKE", like),
                ("ILIKE", ilike),
                ("NOT ILIKE", ilike),
            ] {
                let predicate = format!("path {operator} '{pattern}'");
                let (without, with, plan) = both_over(batch.clone(), &predicate).await;
                assert_eq!(with, without, "{predicate}");
                // Our functions print as like('…'), ilike('…'), not_like('…').
                assert_eq!(
                    plan.contains("like('"),
                    compiled,
                    "{predicate}: rewritten exactly when Arrow would compile it: {plan}"
                );
                if compiled {
                    assert!(!plan.contains("LIKE"), "{predicate}: {plan}");
                }
            }
        }
        // The rule pack's inner-wildcard shape, answered as a LIKE reads.
        let (_, with, plan) = both_over(batch, "path LIKE '/phi/%/notes/%'").await;
        assert!(plan.contains("like('/phi/%/notes/%')"), "{plan}");
        assert_eq!(
            with,
            [
                true, false, false, true, true, true, false, true, false, false
            ]
            .map(Some)
            .into_iter()
            .chain([None])
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn like_patterns_become_anchored_literal_regexes() {
        assert_eq!(like_to_regex("/a.b/%"), "(?s)\\A/a\\.b/.*\\z");
        assert_eq!(like_to_regex("x_\\%\\"), "(?s)\\Ax.%\\\\\\z");
    }

    #[tokio::test]
    async fn the_output_column_keeps_its_name() {
        let ctx = SessionContext::new();
        ctx.add_optimizer_rule(Arc::new(CompileRegexOnce));
        ctx.register_batch("events", paths(vec![Some("/bin/sh")]))
            .expect("register");
        let batches = ctx
            .sql("SELECT path ~ 'sh$' FROM events")
            .await
            .expect("plans")
            .collect()
            .await
            .expect("runs");
        let field = batches[0].schema().field(0).name().clone();
        assert!(field.contains("~"), "unaliased column renamed to {field}");
        assert!(batches[0].column(0).as_boolean().value(0));
    }

    #[test]
    fn a_broken_pattern_is_refused_with_its_reason() {
        let error = MatchRegex::new("(unclosed", false, false).expect_err("does not compile");
        assert!(error.to_string().contains("(unclosed"), "{error}");
    }
}
