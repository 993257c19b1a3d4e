//! What a confirmed facts write changed, read from the request the
//! application sent and the control plane's answer (docs/contract.md,
//! Facts proxy). The object the control plane returned is applied where it
//! returns one (a created user, an assignment); a delete and the bulk
//! calls answer with no object, so for them the request says what changed.

use http::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::snapshot::{Assignment, Tuple, Write};

/// What a request under `/facts/` is, for the local snapshot.
#[derive(Debug, PartialEq)]
pub enum Interpreted {
    /// Not a write of facts this PDP serves (a read, a schema-less path).
    Forward,
    /// A write whose effect is these writes.
    Writes(Vec<Write>),
    /// A write this PDP cannot read (an id it does not know, a body it
    /// cannot parse): the next full sync brings its effect.
    Unreadable(String),
}

/// The kinds of write, by path, for the metrics.
pub fn class(path: &[&str]) -> &'static str {
    match path {
        ["bulk", ..] | [_, "bulk"] => "bulk",
        ["users", ..] => "users",
        ["tenants", ..] => "tenants",
        ["role_assignments", ..] => "role_assignments",
        ["resource_instances", ..] => "resource_instances",
        ["relationship_tuples", ..] => "relationship_tuples",
        _ => "other",
    }
}

#[derive(Deserialize)]
struct UserObj {
    key: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    attributes: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct TenantObj {
    key: String,
    #[serde(default)]
    attributes: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct AssignmentObj {
    #[serde(default)]
    user: Option<String>,
    role: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    resource_instance: Option<String>,
}

#[derive(Deserialize)]
struct InstanceObj {
    key: String,
    resource: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    attributes: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct TupleObj {
    subject: String,
    relation: String,
    object: String,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Deserialize)]
struct Operations<T> {
    operations: Vec<T>,
}

#[derive(Deserialize)]
struct Idents<T> {
    idents: Vec<T>,
}

fn user(u: UserObj) -> Write {
    let text = |s: Option<String>| s.filter(|s| !s.is_empty());
    Write::UpsertUser {
        key: u.key,
        email: text(u.email),
        first_name: text(u.first_name),
        last_name: text(u.last_name),
        attributes: u.attributes.unwrap_or_default(),
    }
}

fn tenant(t: TenantObj) -> Write {
    Write::UpsertTenant {
        key: t.key,
        attributes: t.attributes.unwrap_or_default(),
    }
}

fn instance(i: InstanceObj) -> Write {
    Write::UpsertInstance {
        resource: i.resource,
        key: i.key,
        tenant: i.tenant,
        attributes: i.attributes.unwrap_or_default(),
    }
}

fn tuple(t: TupleObj) -> Tuple {
    Tuple {
        subject: t.subject,
        relation: t.relation,
        object: t.object,
        tenant: t.tenant,
    }
}

/// An assignment, `user` from the path when the body has none; the tenant
/// defaults as the API's does.
fn assignment(a: AssignmentObj, user: Option<&str>) -> Result<Assignment, String> {
    let user = a
        .user
        .or_else(|| user.map(str::to_owned))
        .ok_or("an assignment without a user")?;
    Ok(Assignment {
        user,
        role: a.role,
        tenant: a.tenant.unwrap_or_else(|| "default".to_owned()),
        resource_instance: a.resource_instance.filter(|i| !i.is_empty()),
    })
}

/// `"type:key"` as `(type, key)`.
fn instance_id(id: &str) -> Result<(String, String), String> {
    match id.split_once(':') {
        Some((ty, key)) if !ty.is_empty() && !key.is_empty() => Ok((ty.to_owned(), key.to_owned())),
        _ => Err(format!(
            "`{id}` is not `type:key`; an instance named by id is left to the next sync"
        )),
    }
}

fn parse<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what}: {e}"))
}

/// The object the control plane answered with, else the one sent.
fn answered<'a, T: Deserialize<'a>>(response: &'a [u8], request: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(response).or_else(|_| parse("the request body", request))
}

/// What a 2xx answer to `method path` (the part after `/v2/facts/{p}/{e}/`,
/// split on `/`) changed.
pub fn interpret(method: &Method, path: &[&str], request: &[u8], response: &[u8]) -> Interpreted {
    let read = || -> Result<Option<Vec<Write>>, String> {
        let m = method;
        let writes = match path {
            ["users"] if m == Method::POST => vec![user(answered(response, request)?)],
            ["users", key] if m == Method::PUT || m == Method::PATCH => {
                let mut u: UserObj = answered(response, request)?;
                u.key = (*key).to_owned();
                vec![user(u)]
            }
            ["users", key] if m == Method::DELETE => vec![Write::DeleteUser {
                key: (*key).to_owned(),
            }],
            ["users", key, "roles"] if m == Method::POST || m == Method::DELETE => {
                let a = assignment(answered(response, request)?, Some(key))?;
                vec![if m == Method::POST {
                    Write::Assign(a)
                } else {
                    Write::Unassign(a)
                }]
            }
            ["tenants"] if m == Method::POST => vec![tenant(answered(response, request)?)],
            ["tenants", key] if m == Method::PUT || m == Method::PATCH => {
                let mut t: TenantObj = answered(response, request)?;
                t.key = (*key).to_owned();
                vec![tenant(t)]
            }
            ["tenants", key] if m == Method::DELETE => vec![Write::DeleteTenant {
                key: (*key).to_owned(),
            }],
            ["role_assignments"] if m == Method::POST || m == Method::DELETE => {
                let a = assignment(answered(response, request)?, None)?;
                vec![if m == Method::POST {
                    Write::Assign(a)
                } else {
                    Write::Unassign(a)
                }]
            }
            ["role_assignments", "bulk"] if m == Method::POST || m == Method::DELETE => {
                let items: Vec<AssignmentObj> = parse("the request body", request)?;
                let assign = m == Method::POST;
                items
                    .into_iter()
                    .map(|a| {
                        let a = assignment(a, None)?;
                        Ok(if assign {
                            Write::Assign(a)
                        } else {
                            Write::Unassign(a)
                        })
                    })
                    .collect::<Result<_, String>>()?
            }
            ["resource_instances"] if m == Method::POST => {
                vec![instance(answered(response, request)?)]
            }
            ["resource_instances", id] if m == Method::PUT || m == Method::PATCH => {
                let (resource, key) = instance_id(id)?;
                let mut i: InstanceObj = serde_json::from_slice(response).or_else(|_| {
                    // A PATCH body has neither key nor type: they are in the path.
                    let mut v: Value = parse("the request body", request)?;
                    if let Some(o) = v.as_object_mut() {
                        o.insert("key".into(), Value::String(key.clone()));
                        o.insert("resource".into(), Value::String(resource.clone()));
                    }
                    serde_json::from_value(v).map_err(|e| e.to_string())
                })?;
                (i.resource, i.key) = (resource, key);
                vec![instance(i)]
            }
            ["resource_instances", id] if m == Method::DELETE => {
                let (resource, key) = instance_id(id)?;
                vec![Write::DeleteInstance { resource, key }]
            }
            ["relationship_tuples"] if m == Method::POST => {
                vec![Write::Relate(tuple(answered(response, request)?))]
            }
            ["relationship_tuples"] if m == Method::DELETE => {
                vec![Write::Unrelate(tuple(parse("the request body", request)?))]
            }
            ["relationship_tuples", "bulk"] if m == Method::POST => {
                let ops: Operations<TupleObj> = parse("the request body", request)?;
                ops.operations
                    .into_iter()
                    .map(|t| Write::Relate(tuple(t)))
                    .collect()
            }
            ["relationship_tuples", "bulk"] if m == Method::DELETE => {
                let ids: Idents<TupleObj> = parse("the request body", request)?;
                ids.idents
                    .into_iter()
                    .map(|t| Write::Unrelate(tuple(t)))
                    .collect()
            }
            ["bulk", "users"] if m == Method::POST || m == Method::PUT => {
                let ops: Operations<UserObj> = parse("the request body", request)?;
                ops.operations.into_iter().map(user).collect()
            }
            ["bulk", "users"] if m == Method::DELETE => {
                let ids: Idents<String> = parse("the request body", request)?;
                ids.idents
                    .into_iter()
                    .map(|key| Write::DeleteUser { key })
                    .collect()
            }
            ["bulk", "tenants"] if m == Method::POST || m == Method::PUT => {
                let ops: Operations<TenantObj> = parse("the request body", request)?;
                ops.operations.into_iter().map(tenant).collect()
            }
            ["bulk", "tenants"] if m == Method::DELETE => {
                let ids: Idents<String> = parse("the request body", request)?;
                ids.idents
                    .into_iter()
                    .map(|key| Write::DeleteTenant { key })
                    .collect()
            }
            ["bulk", "resource_instances"] if m == Method::POST || m == Method::PUT => {
                let ops: Operations<InstanceObj> = parse("the request body", request)?;
                ops.operations.into_iter().map(instance).collect()
            }
            ["bulk", "resource_instances"] if m == Method::DELETE => {
                let ids: Idents<String> = parse("the request body", request)?;
                ids.idents
                    .into_iter()
                    .map(|id| {
                        let (resource, key) = instance_id(&id)?;
                        Ok(Write::DeleteInstance { resource, key })
                    })
                    .collect::<Result<_, String>>()?
            }
            _ => return Ok(None),
        };
        Ok(Some(writes))
    };
    match read() {
        Ok(Some(writes)) => Interpreted::Writes(writes),
        Ok(None) => Interpreted::Forward,
        Err(why) => Interpreted::Unreadable(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(method: Method, path: &str, request: &str, response: &str) -> Interpreted {
        let path: Vec<&str> = path.split('/').collect();
        interpret(&method, &path, request.as_bytes(), response.as_bytes())
    }

    fn assign(user: &str, role: &str, tenant: &str, inst: Option<&str>) -> Assignment {
        Assignment {
            user: user.into(),
            role: role.into(),
            tenant: tenant.into(),
            resource_instance: inst.map(Into::into),
        }
    }

    #[test]
    fn the_answered_object_is_applied_not_the_request() {
        // The control plane filled in the tenant the request left out.
        let got = writes(
            Method::POST,
            "role_assignments",
            r#"{"user":"u","role":"r"}"#,
            r#"{"user":"u","role":"r","tenant":"acme","resource_instance":null,"id":"x"}"#,
        );
        assert_eq!(
            got,
            Interpreted::Writes(vec![Write::Assign(assign("u", "r", "acme", None))])
        );
        let got = writes(
            Method::POST,
            "users",
            r#"{"key":"u"}"#,
            r#"{"key":"u","email":"u@x.test","attributes":{"a":1}}"#,
        );
        let Interpreted::Writes(w) = got else {
            panic!("{got:?}")
        };
        assert!(
            matches!(&w[0], Write::UpsertUser { email: Some(e), attributes, .. }
            if e == "u@x.test" && attributes["a"] == 1)
        );
    }

    #[test]
    fn deletes_and_bulk_calls_read_the_request() {
        assert_eq!(
            writes(
                Method::DELETE,
                "users/alice/roles",
                r#"{"role":"r","tenant":"t"}"#,
                ""
            ),
            Interpreted::Writes(vec![Write::Unassign(assign("alice", "r", "t", None))])
        );
        assert_eq!(
            writes(
                Method::POST,
                "role_assignments/bulk",
                r#"[{"user":"a","role":"r","tenant":"t"},{"user":"b","role":"o","tenant":"t","resource_instance":"doc:1"}]"#,
                r#"{"assignments_created":2}"#
            ),
            Interpreted::Writes(vec![
                Write::Assign(assign("a", "r", "t", None)),
                Write::Assign(assign("b", "o", "t", Some("doc:1"))),
            ])
        );
        assert_eq!(
            writes(
                Method::DELETE,
                "relationship_tuples/bulk",
                r#"{"idents":[{"subject":"f:1","relation":"parent","object":"d:1"}]}"#,
                "{}"
            ),
            Interpreted::Writes(vec![Write::Unrelate(Tuple {
                subject: "f:1".into(),
                relation: "parent".into(),
                object: "d:1".into(),
                tenant: None,
            })])
        );
        assert_eq!(
            writes(Method::DELETE, "resource_instances/document:d1", "", ""),
            Interpreted::Writes(vec![Write::DeleteInstance {
                resource: "document".into(),
                key: "d1".into()
            }])
        );
    }

    #[test]
    fn reads_are_forwarded_and_the_unreadable_left_to_the_sync() {
        assert_eq!(writes(Method::GET, "users", "", "[]"), Interpreted::Forward);
        assert_eq!(
            writes(Method::POST, "users/u/attributes", "{}", "{}"),
            Interpreted::Forward
        );
        assert!(matches!(
            writes(Method::DELETE, "resource_instances/5d1c0ffe", "", ""),
            Interpreted::Unreadable(_)
        ));
        assert!(matches!(
            writes(Method::POST, "role_assignments/bulk", "{not json", "{}"),
            Interpreted::Unreadable(_)
        ));
    }
}
