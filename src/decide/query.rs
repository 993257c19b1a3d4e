//! The query types: each deserializes from exactly the JSON body of its
//! endpoint, borrowing strings from the request body where it can, and as
//! leniently as Permit's PDP reads it (docs/contract.md, Lenient input).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::nullable;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// `null`, absent or `""` → `None`.
fn opt_str<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Str<'a>>, D::Error> {
    Ok(Option::<Str<'a>>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// A map of attributes or context: owned when decoded from a request,
/// borrowed when an AuthZEN batch lends its defaults to every item.
pub type Attrs<'a> = Cow<'a, Map<String, Value>>;

/// The `user` of a query: an object with a `key`, or a bare key
/// (docs/contract.md, Lenient input).
#[derive(Debug, Clone, Default)]
pub struct UserInput<'a> {
    pub key: Str<'a>,
    pub attributes: Attrs<'a>,
}

#[derive(Deserialize)]
struct UserObject<'a> {
    #[serde(borrow)]
    key: Str<'a>,
    #[serde(default, deserialize_with = "nullable")]
    attributes: Map<String, Value>,
}

impl<'de: 'a, 'a> Deserialize<'de> for UserInput<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = UserInput<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a user object with a `key`, or a user key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(UserInput {
                    key: Str(Cow::Borrowed(v)),
                    attributes: Attrs::default(),
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(UserInput {
                    key: Str(Cow::Owned(v.to_owned())),
                    attributes: Attrs::default(),
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                let u = UserObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(UserInput {
                    key: u.key,
                    attributes: Cow::Owned(u.attributes),
                })
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceInput<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub key: Option<Str<'a>>,
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub tenant: Option<Str<'a>>,
    #[serde(default, deserialize_with = "nullable")]
    pub attributes: Attrs<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Attrs<'a>,
}

/// The body of `POST /allowed` (and of `/allowed/all-tenants`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AllowedQuery<'a> {
    #[serde(borrow)]
    pub user: UserInput<'a>,
    #[serde(borrow)]
    pub action: Str<'a>,
    #[serde(borrow, deserialize_with = "object")]
    pub resource: ResourceInput<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Attrs<'a>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserPermissionsQuery<'a> {
    #[serde(borrow)]
    pub user: UserInput<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub tenants: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub resources: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub resource_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthorizedUsersQuery<'a> {
    #[serde(borrow)]
    pub action: Str<'a>,
    #[serde(borrow, deserialize_with = "object")]
    pub resource: ResourceInput<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserTenantsQuery<'a> {
    #[serde(borrow)]
    pub user: UserInput<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Map<String, Value>,
}

/// A query that must be a JSON object. serde's derived structs also accept
/// an array of their fields in order, so `["alice", "read", {...}]` would
/// be decided as a check; the endpoints take objects only (a 422 names the
/// problem).
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Obj<T>, M::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The body of `POST /allowed/bulk`, a list of [`AllowedQuery`] objects,
/// decoded into a list with room reserved up front.
///
/// JSON does not say how long a list is, so serde grows a plain `Vec` by
/// doubling, and each doubling copies every check decoded so far (a check
/// is a few hundred bytes): for a hundred checks, more bytes copied than
/// the body holds. The seed's `room` is what the body could hold at most
/// ([`BulkChecks::for_body`]), so the list is allocated once.
pub struct BulkChecks {
    room: usize,
}

impl BulkChecks {
    /// The shortest check there is, `{"user":"u","action":"a","resource":{"type":"t"}}`
    /// with a comma, is 49 bytes.
    const MIN_CHECK_BYTES: usize = 48;

    /// Room for as many checks as `body_len` bytes could hold, up to `limit`
    /// (a longer list is refused once counted, so more is never needed).
    pub fn for_body(body_len: usize, limit: usize) -> Self {
        BulkChecks {
            room: (body_len / Self::MIN_CHECK_BYTES).min(limit.saturating_add(1)),
        }
    }
}

impl<'de> DeserializeSeed<'de> for BulkChecks {
    type Value = Vec<AllowedQuery<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V(usize);
        impl<'de> Visitor<'de> for V {
            type Value = Vec<AllowedQuery<'de>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of checks")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut checks = Vec::with_capacity(self.0);
                while let Some(Obj(q)) = seq.next_element::<Obj<AllowedQuery<'de>>>()? {
                    checks.push(q);
                }
                Ok(checks)
            }
        }
        d.deserialize_seq(V(self.room))
    }
}

/// A field that must be a JSON object (see [`Obj`]).
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Obj::deserialize(d).map(|o| o.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(body: &str, limit: usize) -> Result<Vec<AllowedQuery<'_>>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(body);
        BulkChecks::for_body(body.len(), limit).deserialize(&mut de)
    }

    #[test]
    fn bulk_checks_decode_as_a_list_of_objects() {
        let body = r#"[{"user":"u","action":"a","resource":{"type":"t"}},
                       {"user":{"key":"v"},"action":"b","resource":{"type":"t","key":"k","tenant":"x"}}]"#;
        let qs = bulk(body, 10).unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!((&*qs[1].user.key, &*qs[1].action), ("v", "b"));
        assert_eq!(qs[1].resource.tenant.as_deref(), Some("x"));
        assert!(bulk("[]", 10).unwrap().is_empty());
        // A check must be an object, and the body a list.
        assert!(bulk(r#"[["u","a",{"type":"t"}]]"#, 10).is_err());
        assert!(bulk(r#"{"user":"u"}"#, 10).is_err());
    }

    #[test]
    fn bulk_room_is_what_the_body_could_hold_up_to_the_limit() {
        let room = |len, limit| BulkChecks::for_body(len, limit).room;
        assert_eq!(room(0, 100), 0);
        assert_eq!(room(4_800, 1_000), 100);
        assert_eq!(room(10_000_000, 1_000), 1_001);
        assert_eq!(room(usize::MAX, usize::MAX), usize::MAX / 48);
    }
}
