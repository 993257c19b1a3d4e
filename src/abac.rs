//! ABAC conditions: compiled once per snapshot, evaluated without parsing.
//!
//! A condition set's JSON (`allOf`/`anyOf`/`not` over leaves such as
//! `{"resource.owner": {"equals": {"ref": "user.key"}}}`) is compiled into a
//! [`Cond`] tree when the snapshot is built; a malformed condition refuses the
//! snapshot there, so evaluation never meets one. Evaluation reads attributes
//! through [`Attributes`], which the decision code implements over the layered
//! built-in, stored and request attributes (docs/semantics.md §5).
//! Values compare without type coercion.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    User,
    Resource,
    Tenant,
    Context,
}

/// `entity.a.b`: an attribute name then a walk into nested objects.
#[derive(Debug, Clone)]
pub struct Path {
    pub entity: Entity,
    pub parts: Box<[Box<str>]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Equals,
    NotEquals,
    GreaterThan,
    GreaterThanEquals,
    LessThan,
    LessThanEquals,
    Contains,
    ArrayContains,
    ArraySuperset,
    ArraySubset,
    ArrayIntersect,
    In,
    Between,
    ObjectMatch,
    AnyMatch,
    AllMatch,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "equals" => Op::Equals,
            "not-equals" => Op::NotEquals,
            "greater-than" => Op::GreaterThan,
            "greater-than-equals" => Op::GreaterThanEquals,
            "less-than" => Op::LessThan,
            "less-than-equals" => Op::LessThanEquals,
            "contains" => Op::Contains,
            "array_contains" => Op::ArrayContains,
            "array_superset" => Op::ArraySuperset,
            "array_subset" => Op::ArraySubset,
            "array_intersect" => Op::ArrayIntersect,
            "in" => Op::In,
            "between" => Op::Between,
            "object_match" => Op::ObjectMatch,
            "any_match" => Op::AnyMatch,
            "all_match" => Op::AllMatch,
            _ => return None,
        })
    }

    fn takes_match(self) -> bool {
        matches!(self, Op::ObjectMatch | Op::AnyMatch | Op::AllMatch)
    }
}

#[derive(Debug, Clone)]
pub enum Operand {
    Value(Value),
    Ref(Path),
    /// `{"match": {field: {op: operand}}}`: every field condition on an object.
    Match(Vec<Field>),
}

#[derive(Debug, Clone)]
pub struct Field {
    pub parts: Box<[Box<str>]>,
    pub op: Op,
    pub operand: Operand,
}

#[derive(Debug, Clone)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    /// True iff not all of the inner conditions hold.
    Not(Vec<Cond>),
    Leaf {
        path: Path,
        op: Op,
        operand: Operand,
    },
}

impl Cond {
    pub fn always() -> Cond {
        Cond::All(Vec::new())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CondError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, CondError> {
    Err(CondError(msg.into()))
}

/// Compiles a condition-set JSON. `null` and `{}` are "always true".
pub fn compile(json: &Value) -> Result<Cond, CondError> {
    match json {
        Value::Null => Ok(Cond::always()),
        Value::Object(map) => {
            let mut all = Vec::with_capacity(map.len());
            for (key, val) in map {
                all.push(compile_entry(key, val)?);
            }
            Ok(if all.len() == 1 {
                all.pop().unwrap_or_else(Cond::always)
            } else {
                Cond::All(all)
            })
        }
        Value::Array(items) => Ok(Cond::All(
            items.iter().map(compile).collect::<Result<_, _>>()?,
        )),
        other => err(format!("a condition must be an object, found {other}")),
    }
}

fn compile_list(key: &str, val: &Value) -> Result<Vec<Cond>, CondError> {
    match val {
        Value::Array(items) => items.iter().map(compile).collect(),
        Value::Object(_) => Ok(vec![compile(val)?]),
        _ => err(format!("`{key}` takes a list of conditions")),
    }
}

fn compile_entry(key: &str, val: &Value) -> Result<Cond, CondError> {
    match key {
        "allOf" | "and" => Ok(Cond::All(compile_list(key, val)?)),
        "anyOf" | "or" => Ok(Cond::Any(compile_list(key, val)?)),
        "not" => Ok(Cond::Not(compile_list(key, val)?)),
        attr => {
            let path = parse_path(attr)?;
            let ops = val
                .as_object()
                .ok_or_else(|| CondError(format!("`{attr}` must map an operator to a value")))?;
            if ops.is_empty() {
                return err(format!("`{attr}` has no operator"));
            }
            let mut leaves = Vec::with_capacity(ops.len());
            for (op_name, operand) in ops {
                let op = Op::parse(op_name).ok_or_else(|| {
                    CondError(format!("unknown operator `{op_name}` on `{attr}`"))
                })?;
                leaves.push(Cond::Leaf {
                    path: path.clone(),
                    op,
                    operand: compile_operand(op, operand)?,
                });
            }
            Ok(if leaves.len() == 1 {
                leaves.pop().unwrap_or_else(Cond::always)
            } else {
                Cond::All(leaves)
            })
        }
    }
}

fn compile_operand(op: Op, val: &Value) -> Result<Operand, CondError> {
    if let Some(obj) = val.as_object() {
        if obj.len() == 1 {
            if let Some(r) = obj.get("ref") {
                let r = r
                    .as_str()
                    .ok_or_else(|| CondError("`ref` must name an attribute".into()))?;
                return Ok(Operand::Ref(parse_path(r)?));
            }
        }
        if op.takes_match() {
            let m = obj
                .get("match")
                .and_then(Value::as_object)
                .ok_or_else(|| CondError("`*_match` operators take {\"match\": {...}}".into()))?;
            let mut fields = Vec::with_capacity(m.len());
            for (field, ops) in m {
                let ops = ops
                    .as_object()
                    .ok_or_else(|| CondError(format!("match field `{field}` needs an operator")))?;
                for (op_name, operand) in ops {
                    let op = Op::parse(op_name).ok_or_else(|| {
                        CondError(format!("unknown operator `{op_name}` in match"))
                    })?;
                    fields.push(Field {
                        parts: field.split('.').map(Into::into).collect(),
                        op,
                        operand: compile_operand(op, operand)?,
                    });
                }
            }
            return Ok(Operand::Match(fields));
        }
    }
    if op.takes_match() {
        return err("`*_match` operators take {\"match\": {...}}");
    }
    Ok(Operand::Value(val.clone()))
}

fn parse_path(s: &str) -> Result<Path, CondError> {
    let mut parts = s.split('.');
    let entity = match parts.next().unwrap_or_default() {
        "user" | "subject" => Entity::User,
        "resource" => Entity::Resource,
        "tenant" => Entity::Tenant,
        "context" | "environment" => Entity::Context,
        other => return err(format!("unknown entity `{other}` in `{s}`")),
    };
    let parts: Box<[Box<str>]> = parts.map(Into::into).collect();
    if parts.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return err(format!("`{s}` does not name an attribute"));
    }
    Ok(Path { entity, parts })
}

/// Where conditions read attributes from.
pub trait Attributes {
    /// The value of top-level attribute `name` of `entity`, if any.
    fn attribute(&self, entity: Entity, name: &str) -> Option<Cow<'_, Value>>;
}

fn walk<'v>(mut v: &'v Value, rest: &[Box<str>]) -> Option<&'v Value> {
    for part in rest {
        v = v.as_object()?.get(&**part)?;
    }
    Some(v)
}

fn resolve<'a, A: Attributes>(attrs: &'a A, path: &Path) -> Option<Cow<'a, Value>> {
    let top = attrs.attribute(path.entity, &path.parts[0])?;
    if path.parts.len() == 1 {
        return Some(top);
    }
    match top {
        Cow::Borrowed(v) => walk(v, &path.parts[1..]).map(Cow::Borrowed),
        Cow::Owned(v) => walk(&v, &path.parts[1..]).cloned().map(Cow::Owned),
    }
}

pub fn eval<A: Attributes>(cond: &Cond, attrs: &A) -> bool {
    match cond {
        Cond::All(items) => items.iter().all(|c| eval(c, attrs)),
        Cond::Any(items) => items.iter().any(|c| eval(c, attrs)),
        Cond::Not(items) => !items.iter().all(|c| eval(c, attrs)),
        Cond::Leaf { path, op, operand } => {
            let Some(a) = resolve(attrs, path) else {
                return false;
            };
            apply(*op, &a, operand, attrs)
        }
    }
}

fn apply<A: Attributes>(op: Op, a: &Value, operand: &Operand, attrs: &A) -> bool {
    match operand {
        Operand::Value(v) => compare(op, a, v),
        Operand::Ref(path) => match resolve(attrs, path) {
            Some(v) => compare(op, a, &v),
            None => false,
        },
        Operand::Match(fields) => {
            let matches = |obj: &Value| {
                obj.is_object()
                    && fields.iter().all(|f| match walk(obj, &f.parts) {
                        Some(fv) => apply(f.op, fv, &f.operand, attrs),
                        None => false,
                    })
            };
            match (op, a) {
                (Op::ObjectMatch, _) => matches(a),
                (Op::AnyMatch, Value::Array(items)) => items.iter().any(matches),
                (Op::AllMatch, Value::Array(items)) => {
                    !items.is_empty() && items.iter().all(matches)
                }
                _ => false,
            }
        }
    }
}

/// JSON equality where numbers compare by value (`1 == 1.0`).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (integer(x), integer(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A JSON integer, exactly: as floats, integers past 2^53 that differ
/// compare equal.
fn integer(n: &serde_json::Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Order of two numbers or two strings; `None` across types. Two integers
/// compare exactly; any other pair of numbers as floats.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (integer(x), integer(y)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn has(items: &[Value], v: &Value) -> bool {
    items.iter().any(|i| json_eq(i, v))
}

fn compare(op: Op, a: &Value, v: &Value) -> bool {
    use Value::{Array, String as Str};
    match op {
        Op::Equals => json_eq(a, v),
        Op::NotEquals => !json_eq(a, v),
        Op::GreaterThan => order(a, v) == Some(Ordering::Greater),
        Op::GreaterThanEquals => matches!(order(a, v), Some(Ordering::Greater | Ordering::Equal)),
        Op::LessThan => order(a, v) == Some(Ordering::Less),
        Op::LessThanEquals => matches!(order(a, v), Some(Ordering::Less | Ordering::Equal)),
        Op::Contains => match (a, v) {
            (Str(a), Str(v)) => a.contains(v.as_str()),
            (Array(items), v) => has(items, v),
            _ => false,
        },
        Op::ArrayContains => match (a, v) {
            (Array(items), Array(wanted)) => wanted.iter().all(|w| has(items, w)),
            (Array(items), v) => has(items, v),
            _ => false,
        },
        Op::ArraySuperset => match (a, v) {
            (Array(items), Array(wanted)) => wanted.iter().all(|w| has(items, w)),
            _ => false,
        },
        Op::ArraySubset => match (a, v) {
            (Array(items), Array(allowed)) => items.iter().all(|i| has(allowed, i)),
            _ => false,
        },
        Op::ArrayIntersect => match (a, v) {
            (Array(items), Array(other)) => items.iter().any(|i| has(other, i)),
            _ => false,
        },
        Op::In => match (a, v) {
            (a, Array(items)) => has(items, a),
            (Str(a), Str(v)) => v.contains(a.as_str()),
            _ => false,
        },
        Op::Between => match v {
            Array(bounds) if bounds.len() == 2 => {
                matches!(order(&bounds[0], a), Some(Ordering::Less | Ordering::Equal))
                    && matches!(order(a, &bounds[1]), Some(Ordering::Less | Ordering::Equal))
            }
            _ => false,
        },
        Op::ObjectMatch | Op::AnyMatch | Op::AllMatch => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed(Value);

    impl Attributes for Fixed {
        fn attribute(&self, entity: Entity, name: &str) -> Option<Cow<'_, Value>> {
            let e = match entity {
                Entity::User => "user",
                Entity::Resource => "resource",
                Entity::Tenant => "tenant",
                Entity::Context => "context",
            };
            self.0.get(e)?.get(name).map(Cow::Borrowed)
        }
    }

    fn check(cond: Value, attrs: Value) -> bool {
        eval(&compile(&cond).unwrap(), &Fixed(attrs))
    }

    #[test]
    fn operators() {
        let a = json!({
            "user": {"dept": "eng", "age": 30, "tags": ["a", "b"], "flag": true,
                     "id": 9007199254740993u64, "big": 18446744073709551615u64,
                     "addr": {"city": "Paris"}, "items": [{"k": 1}, {"k": 2}]},
            "resource": {"owner": "eng", "score": 1.0, "empty": []},
        });
        let cases = [
            (json!({"user.dept": {"equals": "eng"}}), true),
            (json!({"user.dept": {"not-equals": "eng"}}), false),
            (json!({"user.age": {"greater-than": 29}}), true),
            (json!({"user.age": {"greater-than-equals": 30}}), true),
            (json!({"user.age": {"less-than": 30}}), false),
            (json!({"user.age": {"less-than-equals": 30.0}}), true),
            (json!({"user.age": {"equals": "30"}}), false),
            (json!({"user.flag": {"equals": "true"}}), false),
            (json!({"resource.score": {"equals": 1}}), true),
            (json!({"user.dept": {"contains": "n"}}), true),
            (json!({"user.tags": {"contains": "a"}}), true),
            (json!({"user.tags": {"array_contains": "c"}}), false),
            (json!({"user.tags": {"array_superset": ["a"]}}), true),
            (
                json!({"user.tags": {"array_subset": ["a", "b", "c"]}}),
                true,
            ),
            (json!({"user.tags": {"array_subset": ["a"]}}), false),
            (json!({"user.tags": {"array_intersect": ["z", "b"]}}), true),
            (json!({"user.dept": {"in": ["ops", "eng"]}}), true),
            (json!({"user.age": {"between": [18, 30]}}), true),
            // Integers past 2^53 compare exactly, not as the same float.
            (
                json!({"user.id": {"greater-than": 9007199254740992u64}}),
                true,
            ),
            (json!({"user.id": {"equals": 9007199254740992u64}}), false),
            (
                json!({"user.big": {"greater-than": 9223372036854775807i64}}),
                true,
            ),
            (json!({"user.age": {"between": [31, 40]}}), false),
            (json!({"user.addr.city": {"equals": "Paris"}}), true),
            (
                json!({"user.addr": {"object_match": {"match": {"city": {"equals": "Paris"}}}}}),
                true,
            ),
            (
                json!({"user.items": {"any_match": {"match": {"k": {"equals": 2}}}}}),
                true,
            ),
            (
                json!({"user.items": {"all_match": {"match": {"k": {"equals": 2}}}}}),
                false,
            ),
            (
                json!({"resource.empty": {"all_match": {"match": {"k": {"equals": 2}}}}}),
                false,
            ),
            (
                json!({"resource.owner": {"equals": {"ref": "user.dept"}}}),
                true,
            ),
            (
                json!({"resource.owner": {"equals": {"ref": "user.missing"}}}),
                false,
            ),
            (json!({"user.missing": {"not-equals": "x"}}), false),
            (json!({"not": [{"user.missing": {"equals": "x"}}]}), true),
            (json!({"anyOf": []}), false),
            (json!({"allOf": []}), true),
            (
                json!({"allOf": [{"user.dept": {"equals": "eng"}}, {"anyOf": [
                {"user.age": {"less-than": 10}}, {"subject.flag": {"equals": true}}]}]}),
                true,
            ),
        ];
        for (cond, want) in cases {
            assert_eq!(check(cond.clone(), a.clone()), want, "{cond}");
        }
    }

    #[test]
    fn malformed_conditions_are_refused() {
        for bad in [
            json!({"user.x": {"resembles": 1}}),
            json!({"nobody.x": {"equals": 1}}),
            json!({"user": {"equals": 1}}),
            json!({"allOf": 3}),
            json!({"user.x": {"any_match": 3}}),
            json!("text"),
        ] {
            assert!(compile(&bad).is_err(), "{bad}");
        }
    }
}
