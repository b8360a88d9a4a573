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

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
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
    let Expr::Literal(literal, _) = right.as_ref() else {
        return Ok(Transformed::no(expr));
    };
    let Some(Some(pattern)) = literal.try_as_str() else {
        return Ok(Transformed::no(expr));
    };
    let function = MatchRegex::new(pattern, case_insensitive, negated)?;
    Ok(Transformed::yes(Expr::ScalarFunction(
        ScalarFunction::new_udf(
            Arc::new(ScalarUDF::new_from_impl(function)),
            vec![left.as_ref().clone()],
        ),
    )))
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
        let operator = match (case_insensitive, negated) {
            (false, false) => "regex_match",
            (true, false) => "regex_imatch",
            (false, true) => "regex_not_match",
            (true, true) => "regex_not_imatch",
        };
        Ok(MatchRegex {
            name: format!("{operator}('{}')", pattern.replace('\'', "''")),
            pattern: pattern.to_owned(),
            case_insensitive,
            negated,
            regex,
            signature: Signature::any(1, Volatility::Immutable),
        })
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
