//! OpenID AuthZEN 1.0 on top of the Permit model: request parsing, the
//! mapping of an AuthZEN request to a Permit `/allowed` query, and the pure
//! operations (evaluation, batch evaluations, subject/resource/action search,
//! discovery metadata) over one [`Snapshot`].
//!
//! The HTTP edge (routes, caller authentication, `X-Request-ID`, content type)
//! is not here: it hands [`handle`] the operation and the raw body and writes
//! back either the [`Response`] (200) or the [`AuthzenError`], which
//! `crate::http::ApiError` maps to a 400 (413 for an oversized batch) like
//! every other error.
//! Search decides every candidate with `decide::check`, so its cost is linear
//! in the users (subject search), the instances (resource search) or the
//! actions of the type (action search).
//!
//! Mapping (see `tests/fixtures/authzen/` for data that exercises each rule):
//! - tenant: `resource.properties.tenant` when it is a non-empty string, else
//!   [`DEFAULT_TENANT`] (AuthZEN has no tenant; Permit's SDKs default the same);
//! - subject: `type` `user` or `identity`; `id` names a user by key, or else
//!   by email (the pre-1.0 vectors send the email); `properties` become the
//!   query's user attributes, which override stored ones;
//! - resource: `type`, `id` → key, `properties` → request attributes;
//! - top-level fields of `subject`/`resource` other than `type`, `id` and
//!   `properties` are properties too (the `-00` draft put `ownerID` there);
//!   `properties` wins on a clash;
//! - action: `name` → action; the whole action (`{name, properties}`) is
//!   also put in the context as `context.action`, because Permit's model
//!   has no action attributes and conditions can read the context.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::decide::{self, AllowedQuery, Attrs, Decision, ResourceInput, Str, UserInput};
use crate::http::ApiError;
use crate::snapshot::Snapshot;

/// The tenant an AuthZEN request is decided in unless it names one.
pub const DEFAULT_TENANT: &str = "default";

/// Subject types that mean "a user of the snapshot". `identity` is what the
/// API-gateway interop suite sends.
const USER_SUBJECT_TYPES: [&str; 2] = ["user", "identity"];

/// Prefix of the page tokens this PDP issues, so a token from elsewhere (or
/// from a future format) is refused instead of misread.
const TOKEN_PREFIX: &str = "p1.";

/// A request the PDP cannot decide. Every variant is the caller's fault; the
/// answer is `crate::http::ApiError`'s, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzenError {
    #[error("request body is not a JSON object: {0}")]
    NotJson(String),
    #[error("`{field}` is required")]
    Missing { field: String },
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("`page.token` is not a token this PDP issued")]
    BadPageToken,
    #[error(
        "`options.evaluations_semantic` {0:?} is not one of execute_all, deny_on_first_deny, permit_on_first_permit"
    )]
    UnknownSemantic(String),
    #[error("{count} evaluations in one request; the limit is {limit}")]
    TooManyItems { count: usize, limit: usize },
}

impl AuthzenError {
    /// The request field at fault, as a dotted path (`subject.id`,
    /// `evaluations`), when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            AuthzenError::NotJson(_) => None,
            AuthzenError::Missing { field } | AuthzenError::WrongType { field, .. } => Some(field),
            AuthzenError::BadPageToken => Some("page.token"),
            AuthzenError::UnknownSemantic(_) => Some("options.evaluations_semantic"),
            AuthzenError::TooManyItems { .. } => Some("evaluations"),
        }
    }

    fn missing(field: impl Into<String>) -> Self {
        AuthzenError::Missing {
            field: field.into(),
        }
    }

    fn wrong(field: impl Into<String>, expected: &'static str) -> Self {
        AuthzenError::WrongType {
            field: field.into(),
            expected,
        }
    }
}

/// The AuthZEN operations answered from the snapshot (discovery is
/// [`configuration`], which needs no snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Evaluation,
    Evaluations,
    SearchSubject,
    SearchResource,
    SearchAction,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::Evaluation,
        Op::Evaluations,
        Op::SearchSubject,
        Op::SearchResource,
        Op::SearchAction,
    ];

    /// The operation served at `path` (always `POST`), if any.
    pub fn from_path(path: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.path() == path)
    }

    /// The path, as the route table (`crate::http::Route`) serves it.
    pub const fn path(self) -> &'static str {
        match self {
            Op::Evaluation => "/access/v1/evaluation",
            Op::Evaluations => "/access/v1/evaluations",
            Op::SearchSubject => "/access/v1/search/subject",
            Op::SearchResource => "/access/v1/search/resource",
            Op::SearchAction => "/access/v1/search/action",
        }
    }
}

/// The body of a 200 answer. Serialize it with `serde_json`; the field
/// order is fixed (`type` before `id`) because the interop harnesses compare
/// serialized JSON text.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Evaluation(EvaluationResponse),
    Evaluations(EvaluationsResponse),
    Search(SearchResponse),
}

impl Response {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("AuthZEN responses hold only string-keyed JSON")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationResponse {
    pub decision: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationsResponse {
    pub evaluations: Vec<EvaluationResponse>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResponse {
    pub results: Vec<Hit>,
    pub page: PageOut,
}

/// One search result: a subject or resource (`type` + `id`), or an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Hit {
    Entity {
        #[serde(rename = "type")]
        kind: String,
        id: String,
    },
    Action {
        name: String,
    },
}

/// `page` of a search answer: `next_token` is empty on the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageOut {
    pub next_token: String,
}

/// Bounds on one request's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most items in one `/access/v1/evaluations` request (the server's
    /// `max_bulk_items`, so both batch APIs share one bound).
    pub max_batch_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_items: 10_000,
        }
    }
}

/// Answers one AuthZEN call: parses `body`, decides against `snap`, and
/// returns the response (status 200). A deny is a `false` decision, not an
/// error.
pub fn handle(
    op: Op,
    snap: &Snapshot,
    body: &[u8],
    limits: &Limits,
) -> Result<Response, AuthzenError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AuthzenError::NotJson("the body is empty".into()));
    }
    let body: Value = serde_json::from_slice::<Unique>(body)
        .map_err(|e| AuthzenError::NotJson(e.to_string()))?
        .0;
    Ok(match op {
        Op::Evaluation => Response::Evaluation(evaluation(snap, &body)?),
        Op::Evaluations => evaluations(snap, &body, limits)?,
        Op::SearchSubject => Response::Search(search_subject(snap, &body)?),
        Op::SearchResource => Response::Search(search_resource(snap, &body)?),
        Op::SearchAction => Response::Search(search_action(snap, &body)?),
    })
}

/// `GET /.well-known/authzen-configuration`: every API is supported, at the
/// default paths under `base_url` (scheme, host and port the PEP uses).
pub fn configuration(base_url: &str) -> Value {
    let base = base_url.trim_end_matches('/');
    json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{}", Op::Evaluation.path()),
        "access_evaluations_endpoint": format!("{base}{}", Op::Evaluations.path()),
        "search_subject_endpoint": format!("{base}{}", Op::SearchSubject.path()),
        "search_resource_endpoint": format!("{base}{}", Op::SearchResource.path()),
        "search_action_endpoint": format!("{base}{}", Op::SearchAction.path()),
    })
}

// ---------------------------------------------------------------------------
// Request types and parsing

/// A subject or resource, borrowing its strings from the parsed body. `id`
/// is `None` only for the searched-for entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity<'a> {
    pub kind: &'a str,
    pub id: Option<&'a str>,
    /// Borrowed from the body unless pre-1.0 sibling fields were merged in.
    pub properties: Attrs<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Action<'a> {
    pub name: &'a str,
    pub properties: Attrs<'a>,
}

/// One access evaluation: every entity present and identified. The maps
/// borrow from the body, so the items of a batch share its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationRequest<'a> {
    pub subject: Entity<'a>,
    pub action: Action<'a>,
    pub resource: Entity<'a>,
    pub context: Attrs<'a>,
}

impl<'a> EvaluationRequest<'a> {
    /// Parses an evaluation body (unknown fields ignored).
    pub fn parse(body: &'a Value) -> Result<Self, AuthzenError> {
        let top = as_object(body)?;
        Ok(EvaluationRequest {
            subject: parse_entity(top.get("subject"), "subject", true)?,
            action: parse_action(top.get("action"), "action")?,
            resource: parse_resource(top.get("resource"), "resource", true)?,
            context: parse_context(top.get("context"))?,
        })
    }
}

fn as_object(body: &Value) -> Result<&Map<String, Value>, AuthzenError> {
    body.as_object()
        .ok_or_else(|| AuthzenError::NotJson(format!("expected an object, got {}", kind_of(body))))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A present, non-null value of `field`.
fn present<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a Value, AuthzenError> {
    match v {
        None | Some(Value::Null) => Err(AuthzenError::missing(field)),
        Some(v) => Ok(v),
    }
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'a str, AuthzenError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        // Only failures pay for the field path.
        None | Some(Value::Null) | Some(Value::String(_)) => {
            Err(AuthzenError::missing(format!("{parent}.{key}")))
        }
        Some(_) => Err(AuthzenError::wrong(format!("{parent}.{key}"), "a string")),
    }
}

fn optional_object<'a>(
    v: Option<&'a Value>,
    field: impl FnOnce() -> String,
) -> Result<Attrs<'a>, AuthzenError> {
    match v {
        None | Some(Value::Null) => Ok(Attrs::default()),
        Some(Value::Object(m)) => Ok(Cow::Borrowed(m)),
        Some(_) => Err(AuthzenError::wrong(field(), "an object")),
    }
}

/// Parses a subject or resource. With `need_id` false (the searched-for
/// entity) `id` is ignored whatever it holds, as the spec asks.
fn parse_entity<'a>(
    v: Option<&'a Value>,
    field: &str,
    need_id: bool,
) -> Result<Entity<'a>, AuthzenError> {
    let obj = present(v, field)?
        .as_object()
        .ok_or_else(|| AuthzenError::wrong(field, "an object"))?;
    let kind = required_str(obj, "type", field)?;
    let id = if need_id {
        Some(required_str(obj, "id", field)?)
    } else {
        None
    };
    let mut properties = optional_object(obj.get("properties"), || format!("{field}.properties"))?;
    // Pre-1.0 drafts carried properties as sibling fields (`resource.ownerID`).
    for (k, v) in obj {
        if !matches!(k.as_str(), "type" | "id" | "properties") && !properties.contains_key(k) {
            properties.to_mut().insert(k.clone(), v.clone());
        }
    }
    Ok(Entity {
        kind,
        id,
        properties,
    })
}

/// Parses a resource: an entity whose `tenant` property, which picks the
/// tenant to decide in, is absent, null or a non-empty string. Anything
/// else is refused rather than decided in [`DEFAULT_TENANT`].
fn parse_resource<'a>(
    v: Option<&'a Value>,
    field: &str,
    need_id: bool,
) -> Result<Entity<'a>, AuthzenError> {
    let resource = parse_entity(v, field, need_id)?;
    match resource.properties.get("tenant") {
        None | Some(Value::Null) => Ok(resource),
        Some(Value::String(t)) if !t.is_empty() => Ok(resource),
        Some(_) => Err(AuthzenError::wrong(
            format!("{field}.properties.tenant"),
            "a non-empty string",
        )),
    }
}

fn parse_action<'a>(v: Option<&'a Value>, field: &str) -> Result<Action<'a>, AuthzenError> {
    let obj = present(v, field)?
        .as_object()
        .ok_or_else(|| AuthzenError::wrong(field, "an object"))?;
    Ok(Action {
        name: required_str(obj, "name", field)?,
        properties: optional_object(obj.get("properties"), || format!("{field}.properties"))?,
    })
}

fn parse_context(v: Option<&Value>) -> Result<Attrs<'_>, AuthzenError> {
    optional_object(v, || "context".to_owned())
}

// ---------------------------------------------------------------------------
// Mapping to the Permit query

fn is_user_type(kind: &str) -> bool {
    USER_SUBJECT_TYPES.contains(&kind)
}

/// The key of the user a subject id names: the id itself when it is a user
/// key, else the key of the user with that email, else the id unchanged (an
/// unknown user, decided with only the request's attributes).
pub fn resolve_user<'a>(snap: &'a Snapshot, id: &'a str) -> &'a str {
    if snap.has_user(id) {
        return id;
    }
    snap.user_by_email(id).unwrap_or(id)
}

fn borrowed(s: &str) -> Str<'_> {
    Str(Cow::Borrowed(s))
}

/// What conditions see as `context.action` (`{name, properties?}`), unless
/// the caller's context already has an `action`, which then stands: a map
/// of that one entry, for the query's resource context, which conditions
/// read before the request's context.
fn action_context<'a>(context: &Map<String, Value>, action: &Action) -> Attrs<'a> {
    if context.contains_key("action") {
        return Attrs::default();
    }
    Cow::Owned(action_entry(action))
}

/// `{"action": {name, properties?}}`.
fn action_entry(action: &Action) -> Map<String, Value> {
    let mut out = Map::new();
    let mut a = Map::new();
    a.insert("name".into(), Value::String(action.name.to_owned()));
    if !action.properties.is_empty() {
        a.insert(
            "properties".into(),
            Value::Object(action.properties.as_ref().clone()),
        );
    }
    out.insert("action".into(), Value::Object(a));
    out
}

/// The Permit `/allowed` query for one (user, action, resource). The maps
/// are lent, not copied: a batch's defaults serve every item. Search builds
/// it once and swaps each candidate in (see [`set_action`]).
#[allow(clippy::too_many_arguments)]
fn permit_query<'a>(
    user_key: &'a str,
    user_attributes: Attrs<'a>,
    action: &'a str,
    resource_kind: &'a str,
    resource_key: Option<&'a str>,
    resource_attributes: Attrs<'a>,
    context: Attrs<'a>,
    action_context: Attrs<'a>,
) -> AllowedQuery<'a> {
    // `parse_resource` has refused a tenant that is not a string.
    let tenant = match resource_attributes.get("tenant") {
        Some(Value::String(t)) if !t.is_empty() => Str(Cow::Owned(t.clone())),
        _ => borrowed(DEFAULT_TENANT),
    };
    AllowedQuery {
        user: UserInput {
            key: borrowed(user_key),
            attributes: user_attributes,
        },
        action: borrowed(action),
        resource: ResourceInput {
            kind: borrowed(resource_kind),
            key: resource_key.map(borrowed),
            tenant: Some(tenant),
            attributes: resource_attributes,
            context: action_context,
        },
        context,
    }
}

/// Points `q` at another action, keeping `context.action.name` in step
/// when this module put it there (see [`action_context`]).
fn set_action<'a>(q: &mut AllowedQuery<'a>, name: &'a str) {
    q.action = borrowed(name);
    if let Some(Value::Object(a)) = q.resource.context.to_mut().get_mut("action") {
        a.insert("name".into(), Value::String(name.to_owned()));
    }
}

/// The Permit query an AuthZEN evaluation maps to, or `None` when the subject
/// is not a user (nothing in the Permit model can allow it).
pub fn into_allowed_query<'a>(
    snap: &'a Snapshot,
    req: EvaluationRequest<'a>,
) -> Option<AllowedQuery<'a>> {
    let action = action_context(&req.context, &req.action);
    query_with(snap, req, action)
}

/// [`into_allowed_query`] with `context.action` already made (shared by
/// the items of a batch that take the default action).
fn query_with<'a>(
    snap: &'a Snapshot,
    req: EvaluationRequest<'a>,
    action_context: Attrs<'a>,
) -> Option<AllowedQuery<'a>> {
    if !is_user_type(req.subject.kind) {
        return None;
    }
    let EvaluationRequest {
        subject,
        action,
        resource,
        context,
    } = req;
    Some(permit_query(
        resolve_user(snap, subject.id.unwrap_or_default()),
        subject.properties,
        action.name,
        resource.kind,
        resource.id,
        resource.properties,
        context,
        action_context,
    ))
}

// ---------------------------------------------------------------------------
// Evaluation

/// A JSON value in which no object repeats a key. `serde_json` keeps the
/// last of duplicate keys, so `{"id": "nobody", "id": "alice"}` would be
/// decided as alice while a proxy in front that read the first saw nobody:
/// a request that two readers can read two ways is refused instead.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Unique(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// `options`: absent, `null` or an object, in every operation.
fn options(top: &Map<String, Value>) -> Result<Option<&Map<String, Value>>, AuthzenError> {
    match top.get("options") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(AuthzenError::wrong("options", "an object")),
    }
}

/// Whether the caller asked for the decision's reasons (`options.include_reasons`,
/// an extension: the interop harnesses require bare `{"decision": bool}`).
fn wants_reasons(top: &Map<String, Value>) -> Result<bool, AuthzenError> {
    Ok(options(top)?
        .and_then(|o| o.get("include_reasons"))
        .and_then(Value::as_bool)
        .unwrap_or(false))
}

fn decide_parsed(snap: &Snapshot, req: EvaluationRequest) -> Option<Decision> {
    into_allowed_query(snap, req).map(|q| decide::check(snap, &q))
}

/// `{"decision": b}`, with `context.reason_admin` (the Permit answer with
/// debug reasons) when asked for.
fn decision_body(decision: Option<&Decision>, reasons: bool) -> EvaluationResponse {
    let allow = decision.is_some_and(|d| d.allow);
    let context = reasons.then(|| {
        let detail = match decision {
            Some(d) => serde_json::to_value(d.to_response(true)).unwrap_or(Value::Null),
            None => json!({ "reason": "subject type is not a user" }),
        };
        json!({ "reason_admin": detail })
    });
    EvaluationResponse {
        decision: allow,
        context,
    }
}

/// `POST /access/v1/evaluation`.
pub fn evaluation(snap: &Snapshot, body: &Value) -> Result<EvaluationResponse, AuthzenError> {
    let req = EvaluationRequest::parse(body)?;
    let decision = decide_parsed(snap, req);
    Ok(decision_body(
        decision.as_ref(),
        wants_reasons(as_object(body)?)?,
    ))
}

/// `options.evaluations_semantic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

impl Semantic {
    fn parse(top: &Map<String, Value>) -> Result<Semantic, AuthzenError> {
        let Some(options) = options(top)? else {
            return Ok(Semantic::ExecuteAll);
        };
        match options.get("evaluations_semantic") {
            None | Some(Value::Null) => Ok(Semantic::ExecuteAll),
            Some(Value::String(s)) => match s.as_str() {
                "execute_all" => Ok(Semantic::ExecuteAll),
                "deny_on_first_deny" => Ok(Semantic::DenyOnFirstDeny),
                "permit_on_first_permit" => Ok(Semantic::PermitOnFirstPermit),
                other => Err(AuthzenError::UnknownSemantic(other.to_owned())),
            },
            Some(_) => Err(AuthzenError::wrong(
                "options.evaluations_semantic",
                "a string",
            )),
        }
    }
}

/// `POST /access/v1/evaluations`. Top-level `subject`, `action`, `resource`
/// and `context` are defaults that an item replaces whole. An item that
/// cannot be parsed is a `false` decision carrying the error in its context;
/// only a bad envelope is a 400.
pub fn evaluations(
    snap: &Snapshot,
    body: &Value,
    limits: &Limits,
) -> Result<Response, AuthzenError> {
    let top = as_object(body)?;
    let items = match top.get("evaluations") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::Array(a)) => Some(a),
        Some(_) => return Err(AuthzenError::wrong("evaluations", "an array")),
    };
    let semantic = Semantic::parse(top)?;
    let Some(items) = items else {
        // The spec: no items means a plain evaluation of the defaults.
        return evaluation(snap, body).map(Response::Evaluation);
    };
    if items.len() > limits.max_batch_items {
        return Err(AuthzenError::TooManyItems {
            count: items.len(),
            limit: limits.max_batch_items,
        });
    }
    let reasons = wants_reasons(top)?;
    // `context.action` of the default action, made once and lent to every
    // item that takes it: the defaults may be large and the items many.
    let default_action = std::cell::OnceCell::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let answer = match batch_item(top, item, i) {
            Ok((req, takes_default_action)) => {
                let action = if takes_default_action && !req.context.contains_key("action") {
                    Cow::Borrowed(default_action.get_or_init(|| action_entry(&req.action)))
                } else {
                    action_context(&req.context, &req.action)
                };
                let decision = query_with(snap, req, action).map(|q| decide::check(snap, &q));
                decision_body(decision.as_ref(), reasons)
            }
            Err(e) => item_error(&e),
        };
        let allow = answer.decision;
        out.push(answer);
        let stop = match semantic {
            Semantic::ExecuteAll => false,
            Semantic::DenyOnFirstDeny => !allow,
            Semantic::PermitOnFirstPermit => allow,
        };
        if stop {
            break;
        }
    }
    Ok(Response::Evaluations(EvaluationsResponse {
        evaluations: out,
    }))
}

/// Merges one item with the defaults (whole entities, never field by field)
/// and parses the result; and whether it took the default action.
fn batch_item<'a>(
    top: &'a Map<String, Value>,
    item: &'a Value,
    index: usize,
) -> Result<(EvaluationRequest<'a>, bool), AuthzenError> {
    let item = item
        .as_object()
        .ok_or_else(|| AuthzenError::wrong(format!("evaluations[{index}]"), "an object"))?;
    let pick = |key: &str| match item.get(key) {
        Some(v) if !v.is_null() => Some(v),
        _ => top.get(key),
    };
    let req = EvaluationRequest {
        subject: parse_entity(pick("subject"), "subject", true)?,
        action: parse_action(pick("action"), "action")?,
        resource: parse_resource(pick("resource"), "resource", true)?,
        context: parse_context(pick("context"))?,
    };
    let takes_default_action = matches!(item.get("action"), None | Some(Value::Null));
    Ok((req, takes_default_action))
}

/// A batch item that could not be parsed: denied, with the 400 it would
/// have been on its own.
fn item_error(e: &AuthzenError) -> EvaluationResponse {
    let mut error = ApiError::from(e.clone()).body();
    error["status"] = json!(400);
    EvaluationResponse {
        decision: false,
        context: Some(json!({ "error": error })),
    }
}

// ---------------------------------------------------------------------------
// Search

/// `page` of a search request: where to resume and how many results at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Page {
    /// Index of the first candidate to examine (from `page.token`).
    pub start: usize,
    pub limit: Option<usize>,
}

impl Page {
    pub fn parse(top: &Map<String, Value>) -> Result<Page, AuthzenError> {
        let page = match top.get("page") {
            None | Some(Value::Null) => return Ok(Page::default()),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(AuthzenError::wrong("page", "an object")),
        };
        let start = match page.get("token") {
            None | Some(Value::Null) => 0,
            Some(Value::String(t)) if t.is_empty() => 0,
            Some(Value::String(t)) => decode_token(t).ok_or(AuthzenError::BadPageToken)?,
            Some(_) => return Err(AuthzenError::wrong("page.token", "a string")),
        };
        let limit = match page.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => return Err(AuthzenError::wrong("page.limit", "a positive integer")),
            },
        };
        Ok(Page { start, limit })
    }
}

fn encode_token(next: usize) -> String {
    format!("{TOKEN_PREFIX}{next:x}")
}

/// The position a token names, for tokens in the form [`encode_token`]
/// writes only: `p1.+1` or `p1.007` parse as numbers but were never issued.
fn decode_token(token: &str) -> Option<usize> {
    let next = usize::from_str_radix(token.strip_prefix(TOKEN_PREFIX)?, 16).ok()?;
    (encode_token(next) == token).then_some(next)
}

/// Walks `candidates` (unique: the snapshot interns them) from `page.start`,
/// keeping those `allowed` admits, and stops after `page.limit` of them. The token names the next candidate that
/// is known to be allowed, so the last page is never an empty one; it is
/// only as stable as the snapshot (a new snapshot may shift positions).
fn paginate<'a>(
    candidates: impl Iterator<Item = &'a str>,
    page: Page,
    mut allowed: impl FnMut(&'a str) -> bool,
) -> (Vec<&'a str>, String) {
    let mut found = Vec::new();
    for (i, candidate) in candidates.enumerate().skip(page.start) {
        if !allowed(candidate) {
            continue;
        }
        if page.limit.is_some_and(|l| found.len() >= l) {
            return (found, encode_token(i));
        }
        found.push(candidate);
    }
    (found, String::new())
}

fn search_body(results: Vec<Hit>, next_token: String) -> SearchResponse {
    SearchResponse {
        results,
        page: PageOut { next_token },
    }
}

fn empty_search() -> SearchResponse {
    search_body(Vec::new(), String::new())
}

/// `POST /access/v1/search/subject`: the users who may do `action` on
/// `resource`. Each user of the snapshot is decided in turn (O(users)).
pub fn search_subject(snap: &Snapshot, body: &Value) -> Result<SearchResponse, AuthzenError> {
    let top = as_object(body)?;
    let subject = parse_entity(top.get("subject"), "subject", false)?;
    let action = parse_action(top.get("action"), "action")?;
    let resource = parse_resource(top.get("resource"), "resource", true)?;
    let context = parse_context(top.get("context"))?;
    let page = Page::parse(top)?;
    if !is_user_type(subject.kind) {
        return Ok(empty_search());
    }
    let action_context = action_context(&context, &action);
    let mut q = permit_query(
        "",
        subject.properties,
        action.name,
        resource.kind,
        resource.id,
        resource.properties,
        context,
        action_context,
    );
    let (keys, next) = paginate(snap.user_keys(), page, |user| {
        q.user.key = borrowed(user);
        decide::check(snap, &q).allow
    });
    Ok(search_body(hits(subject.kind, keys), next))
}

/// `POST /access/v1/search/resource`: the instances of `resource.type` the
/// subject may do `action` on (O(instances of that type)).
pub fn search_resource(snap: &Snapshot, body: &Value) -> Result<SearchResponse, AuthzenError> {
    let top = as_object(body)?;
    let subject = parse_entity(top.get("subject"), "subject", true)?;
    let action = parse_action(top.get("action"), "action")?;
    let resource = parse_resource(top.get("resource"), "resource", false)?;
    let context = parse_context(top.get("context"))?;
    let page = Page::parse(top)?;
    if !is_user_type(subject.kind) {
        return Ok(empty_search());
    }
    let action_context = action_context(&context, &action);
    let mut q = permit_query(
        resolve_user(snap, subject.id.unwrap_or_default()),
        subject.properties,
        action.name,
        resource.kind,
        None,
        resource.properties,
        context,
        action_context,
    );
    let (keys, next) = paginate(snap.instance_keys_of_type(resource.kind), page, |key| {
        q.resource.key = Some(borrowed(key));
        decide::check(snap, &q).allow
    });
    Ok(search_body(hits(resource.kind, keys), next))
}

/// `POST /access/v1/search/action`: the actions of `resource.type` the
/// subject may do on the resource (O(actions of that type)).
pub fn search_action(snap: &Snapshot, body: &Value) -> Result<SearchResponse, AuthzenError> {
    let top = as_object(body)?;
    let subject = parse_entity(top.get("subject"), "subject", true)?;
    let resource = parse_resource(top.get("resource"), "resource", true)?;
    let context = parse_context(top.get("context"))?;
    let page = Page::parse(top)?;
    if !is_user_type(subject.kind) {
        return Ok(empty_search());
    }
    // The request names no action: each candidate's name is swapped in.
    let no_action = Action {
        name: "",
        properties: Attrs::default(),
    };
    let action_context = action_context(&context, &no_action);
    let mut q = permit_query(
        resolve_user(snap, subject.id.unwrap_or_default()),
        subject.properties,
        "",
        resource.kind,
        resource.id,
        resource.properties,
        context,
        action_context,
    );
    let (names, next) = paginate(snap.actions_of_type(resource.kind), page, |name| {
        set_action(&mut q, name);
        decide::check(snap, &q).allow
    });
    let results = names
        .into_iter()
        .map(|n| Hit::Action { name: n.to_owned() })
        .collect();
    Ok(search_body(results, next))
}

fn hits(kind: &str, ids: Vec<&str>) -> Vec<Hit> {
    ids.into_iter()
        .map(|id| Hit::Entity {
            kind: kind.to_owned(),
            id: id.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_fields_become_properties_and_properties_win() {
        let body = json!({
            "subject": {"type": "user", "id": "rick@the-citadel.com", "identity": "PID"},
            "action": {"name": "can_delete_todo"},
            "resource": {"type": "todo", "id": "t1", "ownerID": "old", "userID": "u",
                         "properties": {"ownerID": "new"}},
        });
        let req = EvaluationRequest::parse(&body).expect("valid");
        assert_eq!(
            *req.subject.properties,
            *json!({"identity": "PID"}).as_object().unwrap()
        );
        assert_eq!(
            *req.resource.properties,
            *json!({"ownerID": "new", "userID": "u"})
                .as_object()
                .unwrap()
        );
        // Without sibling fields the properties are lent by the body.
        let body = json!({
            "subject": {"type": "user", "id": "a", "properties": {"big": "x"}},
            "action": {"name": "x"}, "resource": {"type": "t", "id": "1"},
        });
        let req = EvaluationRequest::parse(&body).expect("valid");
        assert!(matches!(req.subject.properties, Cow::Borrowed(_)));
    }

    #[test]
    fn errors_name_the_field_and_serialize_as_json() {
        let body = json!({"subject": {"type": "user", "id": ""}});
        let err = EvaluationRequest::parse(&body).expect_err("empty id");
        assert_eq!(err.field(), Some("subject.id"));
        assert_eq!(
            ApiError::from(err).body(),
            json!({"error": "invalid_request", "detail": "`subject.id` is required", "field": "subject.id"})
        );
        let body = json!({
            "subject": {"type": "user", "id": "a", "properties": [1]},
            "action": {"name": "x"}, "resource": {"type": "t", "id": "1"},
        });
        let err = EvaluationRequest::parse(&body).expect_err("properties not an object");
        assert_eq!(err.field(), Some("subject.properties"));
        assert_eq!(
            ApiError::from(AuthzenError::NotJson("x".into())).body(),
            json!({"error": "invalid_request", "detail": "request body is not a JSON object: x"})
        );
    }

    #[test]
    fn the_action_reaches_the_context_without_overriding_the_caller() {
        let props = json!({"soft": true});
        let action = Action {
            name: "delete",
            properties: Cow::Borrowed(props.as_object().unwrap()),
        };
        let entry = action_context(&Map::new(), &action);
        assert_eq!(
            Value::Object(entry.into_owned()),
            json!({"action": {"name": "delete", "properties": {"soft": true}}})
        );
        let mine = json!({"action": "caller's own"});
        let entry = action_context(mine.as_object().unwrap(), &action);
        assert!(entry.is_empty(), "the caller's context.action stands");
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        for n in [0, 1, 255, usize::MAX] {
            assert_eq!(decode_token(&encode_token(n)), Some(n));
        }
        assert_eq!(decode_token("12"), None);
        assert_eq!(decode_token("p1.zz"), None);
        for never_issued in ["p1.+1", "p1.007", "p1.A", "p1."] {
            assert_eq!(decode_token(never_issued), None, "{never_issued}");
        }
        let top = json!({"page": {"token": "", "limit": 5}});
        assert_eq!(
            Page::parse(top.as_object().unwrap()),
            Ok(Page {
                start: 0,
                limit: Some(5)
            })
        );
        let top = json!({"page": {"limit": 0}});
        assert!(Page::parse(top.as_object().unwrap()).is_err());
    }

    #[test]
    fn pagination_resumes_at_the_next_allowed_candidate() {
        let cands = ["a", "b", "c", "d", "e"];
        let even = |c: &str| c != "b" && c != "d";
        let (first, token) = paginate(
            cands.into_iter(),
            Page {
                start: 0,
                limit: Some(1),
            },
            even,
        );
        assert_eq!(first, ["a"]);
        assert_eq!(decode_token(&token), Some(2));
        let (second, token) = paginate(
            cands.into_iter(),
            Page {
                start: 2,
                limit: Some(1),
            },
            even,
        );
        assert_eq!(second, ["c"]);
        let (third, token) = paginate(
            cands.into_iter(),
            Page {
                start: decode_token(&token).unwrap(),
                limit: Some(1),
            },
            even,
        );
        assert_eq!(third, ["e"]);
        assert_eq!(
            token, "",
            "the last page says so instead of leading to an empty one"
        );
    }

    #[test]
    fn search_results_serialize_type_before_id() {
        let resp = Response::Search(SearchResponse {
            results: vec![
                Hit::Entity {
                    kind: "user".into(),
                    id: "alice".into(),
                },
                Hit::Action {
                    name: "view".into(),
                },
            ],
            page: PageOut {
                next_token: String::new(),
            },
        });
        assert_eq!(
            String::from_utf8(resp.to_json()).unwrap(),
            r#"{"results":[{"type":"user","id":"alice"},{"name":"view"}],"page":{"next_token":""}}"#
        );
    }

    #[test]
    fn every_op_has_its_path() {
        for op in [
            Op::Evaluation,
            Op::Evaluations,
            Op::SearchSubject,
            Op::SearchResource,
            Op::SearchAction,
        ] {
            assert_eq!(Op::from_path(op.path()), Some(op));
        }
        assert_eq!(Op::from_path("/access/v1/other"), None);
    }
}
