//! A data document on its way into a snapshot, held compactly.
//!
//! A parsed [`DataDocument`] costs about three times what the snapshot
//! then stores (`String`s and `serde_json::Value`s; the figures are in
//! docs/performance.md); held beside the serving snapshot during a reload,
//! that document was the memory peak. [`Staged`] takes the document one item at a time
//! (straight from the JSON reader, or page by page from the control plane),
//! keeps the schema lists as they are (they are small), interns every string
//! of the facts once and packs each fact into a few `u32`s. Attribute
//! values and users' profile strings go once each into a pool that the
//! snapshot takes over as it is; each object keeps `(name, value)` ids.
//!
//! Nothing is validated here: unknown roles, types or malformed
//! `"type:key"` strings are kept as written, and [`super::Snapshot`]'s
//! builder judges them exactly as it would the document.
//!
//! `Staged` is also the offline backup's body (bincode, via serde), and its
//! encoding is what [`Staged::content_hash`] hashes: strings are numbered
//! as first seen, so the same facts hash the same when their lists arrive
//! in the same order (each source always reads them in one order).

use std::fmt;
use std::io::{self, Write};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::chunked::Chunked;
use super::intern::{Interner, NONE};
use super::{Attrs, UserInfo, Values};
use crate::model::{
    ConditionSet, ConditionSetRule, DataDocument, Json, RelationshipTuple, Resource,
    ResourceInstance, Role, RoleAssignment, Tenant, User,
};

#[derive(Default, Serialize, Deserialize)]
pub struct Staged {
    pub(super) resources: Vec<Resource>,
    pub(super) roles: Vec<Role>,
    pub(super) condition_sets: Vec<ConditionSet>,
    pub(super) condition_set_rules: Vec<ConditionSetRule>,
    /// Every string the facts below name, once; `NONE` is "absent or empty".
    pub(super) keys: Interner,
    /// Attribute names, moved into the snapshot as they are.
    pub(super) attr_names: Interner,
    /// Attribute values and users' profile strings, moved likewise.
    pub(super) values: Values,
    pub(super) tenants: Chunked<StagedTenant>,
    pub(super) users: Chunked<StagedUser>,
    /// A user's own tenant roles, listed with the user.
    pub(super) user_roles: Chunked<TenantRoleFact>,
    pub(super) instances: Chunked<StagedInstance>,
    pub(super) tuples: Chunked<TupleFact>,
    pub(super) assignments: Chunked<AssignmentFact>,
}

// The facts: ids into `Staged::keys`, `NONE` where absent. A struct encodes
// in bincode exactly as the array of its fields did, so the backup and the
// content hash are as before.

/// A tenant role listed on a user object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TenantRoleFact {
    pub user: u32,
    pub role: u32,
    pub tenant: u32,
}

/// A relationship tuple; subject and object are `"type:key"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TupleFact {
    pub subject: u32,
    pub relation: u32,
    pub object: u32,
}

/// A role assignment; `instance` is `"type:key"` for a resource role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AssignmentFact {
    pub user: u32,
    pub role: u32,
    pub tenant: u32,
    pub instance: u32,
}

impl TenantRoleFact {
    fn ids(&self) -> [u32; 3] {
        [self.user, self.role, self.tenant]
    }
}

impl TupleFact {
    fn ids(&self) -> [u32; 3] {
        [self.subject, self.relation, self.object]
    }
}

impl AssignmentFact {
    fn ids(&self) -> [u32; 4] {
        [self.user, self.role, self.tenant, self.instance]
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct StagedTenant {
    pub key: u32,
    pub attrs: Option<Attrs>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StagedUser {
    pub key: u32,
    pub info: UserInfo,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StagedInstance {
    pub key: u32,
    pub resource: u32,
    pub tenant: u32,
    pub attrs: Option<Attrs>,
}

/// Free-form attributes in the snapshot's form: names interned, values
/// pooled, entries sorted by name id. Anything but a non-empty object is no
/// attributes.
fn attrs_from(names: &mut Interner, values: &mut Values, json: Json) -> Option<Attrs> {
    let Value::Object(map) = json.0 else {
        return None;
    };
    if map.is_empty() {
        return None;
    }
    let mut entries: Vec<(u32, u32)> = map
        .into_iter()
        .map(|(k, v)| (names.intern(&k), values.intern(v)))
        .collect();
    entries.sort_unstable_by_key(|(n, _)| *n);
    Some(Attrs(entries.into_boxed_slice()))
}

/// A profile string's id in the pool; `NONE` when absent or empty.
fn profile_str(values: &mut Values, s: Option<String>) -> u32 {
    s.filter(|s| !s.is_empty())
        .map_or(NONE, |s| values.intern(Value::String(s)))
}

/// How far each list had got, to undo a list that must be read again.
pub(crate) struct Mark {
    lens: [usize; 10],
    keys: usize,
    attr_names: usize,
    values: usize,
}

impl Staged {
    pub fn new() -> Staged {
        Staged::default()
    }

    fn key(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            NONE
        } else {
            self.keys.intern(s)
        }
    }

    fn opt_key(&mut self, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.key(s))
    }

    /// The string of a key id (`""` for `NONE`).
    pub(super) fn name(&self, id: u32) -> &str {
        if id == NONE {
            ""
        } else {
            self.keys.name(id)
        }
    }

    pub fn push_resource(&mut self, r: Resource) {
        self.resources.push(r);
    }

    pub fn push_role(&mut self, r: Role) {
        self.roles.push(r);
    }

    pub fn push_condition_set(&mut self, cs: ConditionSet) {
        self.condition_sets.push(cs);
    }

    pub fn push_condition_set_rule(&mut self, rule: ConditionSetRule) {
        self.condition_set_rules.push(rule);
    }

    pub fn push_tenant(&mut self, t: Tenant) {
        let key = self.key(&t.key);
        let attrs = attrs_from(&mut self.attr_names, &mut self.values, t.attributes);
        self.tenants.push(StagedTenant { key, attrs });
    }

    pub fn push_user(&mut self, u: User) {
        let key = self.key(&u.key);
        for r in &u.roles {
            let role = self.key(&r.role);
            let tenant = self.opt_key(r.tenant.as_deref());
            self.user_roles.push(TenantRoleFact {
                user: key,
                role,
                tenant,
            });
        }
        let attrs = attrs_from(&mut self.attr_names, &mut self.values, u.attributes);
        let info = UserInfo {
            email: profile_str(&mut self.values, u.email),
            first_name: profile_str(&mut self.values, u.first_name),
            last_name: profile_str(&mut self.values, u.last_name),
            attrs,
        };
        self.users.push(StagedUser { key, info });
    }

    pub fn push_assignment(&mut self, ra: RoleAssignment) {
        let fact = AssignmentFact {
            user: self.key(&ra.user),
            role: self.key(&ra.role),
            tenant: self.opt_key(ra.tenant.as_deref()),
            instance: self.opt_key(ra.resource_instance.as_deref()),
        };
        self.assignments.push(fact);
    }

    pub fn push_instance(&mut self, ri: ResourceInstance) {
        let key = self.key(&ri.key);
        let resource = self.key(&ri.resource);
        let tenant = self.opt_key(ri.tenant.as_deref());
        let attrs = attrs_from(&mut self.attr_names, &mut self.values, ri.attributes);
        self.instances.push(StagedInstance {
            key,
            resource,
            tenant,
            attrs,
        });
    }

    pub fn push_tuple(&mut self, t: RelationshipTuple) {
        let fact = TupleFact {
            subject: self.key(&t.subject),
            relation: self.key(&t.relation),
            object: self.key(&t.object),
        };
        self.tuples.push(fact);
    }

    /// A whole document, item by item (cloned: the document is borrowed).
    pub fn from_document(doc: &DataDocument) -> Staged {
        let mut s = Staged::new();
        s.resources = doc.resources.clone();
        s.roles = doc.roles.clone();
        s.condition_sets = doc.condition_sets.clone();
        s.condition_set_rules = doc.condition_set_rules.clone();
        // The order a sync reads the lists in (strings are numbered as first
        // seen), so this hashes as a sync of the same document does.
        doc.users.iter().cloned().for_each(|u| s.push_user(u));
        doc.tenants.iter().cloned().for_each(|t| s.push_tenant(t));
        doc.role_assignments
            .iter()
            .cloned()
            .for_each(|a| s.push_assignment(a));
        doc.resource_instances
            .iter()
            .cloned()
            .for_each(|i| s.push_instance(i));
        doc.relationship_tuples
            .iter()
            .cloned()
            .for_each(|t| s.push_tuple(t));
        s.shrink_to_fit();
        s
    }

    /// Reads a JSON data document from `reader` item by item: the document
    /// is never whole in memory, in either text or parsed form.
    pub fn from_json_reader<R: io::Read>(reader: R) -> Result<Staged, serde_json::Error> {
        Self::from_json(serde_json::Deserializer::from_reader(reader))
    }

    /// Reads a JSON data document from text.
    pub fn from_json_str(text: &str) -> Result<Staged, serde_json::Error> {
        Self::from_json(serde_json::Deserializer::from_str(text))
    }

    fn from_json<'de, R: serde_json::de::Read<'de>>(
        mut de: serde_json::Deserializer<R>,
    ) -> Result<Staged, serde_json::Error> {
        let mut s = Staged::new();
        (&mut de).deserialize_map(DocumentVisitor(&mut s))?;
        de.end()?;
        s.shrink_to_fit();
        Ok(s)
    }

    pub fn shrink_to_fit(&mut self) {
        self.keys.shrink_to_fit();
        self.values.shrink_to_fit();
        self.tenants.shrink_to_fit();
        self.users.shrink_to_fit();
        self.user_roles.shrink_to_fit();
        self.instances.shrink_to_fit();
        self.tuples.shrink_to_fit();
        self.assignments.shrink_to_fit();
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            lens: [
                self.resources.len(),
                self.roles.len(),
                self.condition_sets.len(),
                self.condition_set_rules.len(),
                self.tenants.len(),
                self.users.len(),
                self.user_roles.len(),
                self.instances.len(),
                self.tuples.len(),
                self.assignments.len(),
            ],
            keys: self.keys.len(),
            attr_names: self.attr_names.len(),
            values: self.values.len(),
        }
    }

    /// Forgets everything staged since `mark`, strings included, so a list
    /// read again from its start stages (and hashes) as if read once.
    pub(crate) fn rollback(&mut self, mark: &Mark) {
        let [a, b, c, d, e, f, g, h, i, j] = mark.lens;
        self.resources.truncate(a);
        self.roles.truncate(b);
        self.condition_sets.truncate(c);
        self.condition_set_rules.truncate(d);
        self.tenants.truncate(e);
        self.users.truncate(f);
        self.user_roles.truncate(g);
        self.instances.truncate(h);
        self.tuples.truncate(i);
        self.assignments.truncate(j);
        self.keys.truncate(mark.keys);
        self.attr_names.truncate(mark.attr_names);
        self.values.truncate(mark.values);
    }

    /// Whether every id names a string or value this document holds: true
    /// of anything staged here, checked for what is decoded from a backup.
    pub fn ids_in_range(&self) -> bool {
        let key = |id: u32| id == NONE || (id as usize) < self.keys.len();
        let value = |id: u32| id == NONE || (id as usize) < self.values.len();
        let attrs = |a: &Option<Attrs>| {
            a.as_ref().is_none_or(|a| {
                a.0.iter()
                    .all(|&(n, v)| (n as usize) < self.attr_names.len() && v != NONE && value(v))
            })
        };
        let info = |i: &UserInfo| {
            value(i.email) && value(i.first_name) && value(i.last_name) && attrs(&i.attrs)
        };
        self.tenants.iter().all(|t| key(t.key) && attrs(&t.attrs))
            && self.users.iter().all(|u| key(u.key) && info(&u.info))
            && self.user_roles.iter().all(|f| f.ids().into_iter().all(key))
            && self
                .instances
                .iter()
                .all(|i| key(i.key) && key(i.resource) && key(i.tenant) && attrs(&i.attrs))
            && self.tuples.iter().all(|f| f.ids().into_iter().all(key))
            && self
                .assignments
                .iter()
                .all(|f| f.ids().into_iter().all(key))
    }

    /// Points one fact at a string that does not exist, for tests of what
    /// reads staged documents.
    #[cfg(test)]
    pub(crate) fn break_an_id(&mut self) {
        let past_end = self.keys.len() as u32;
        if let Some(a) = self.assignments.get_mut(0) {
            a.role = past_end;
        }
    }

    /// blake3 over the staged encoding, hex: equal content read in the same
    /// order hashes equal, so an unchanged environment skips a swap.
    pub fn content_hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        {
            // Streams the encoding into the hasher: no second copy in memory.
            let mut out = io::BufWriter::with_capacity(1 << 16, &mut hasher);
            bincode::serde::encode_into_std_write(self, &mut out, bincode::config::standard())
                .expect("staged facts always encode, and hashing cannot fail");
            out.flush().expect("hashing cannot fail");
        }
        hasher.finalize().to_hex().to_string()
    }
}

impl Staged {
    /// A hash of the schema lists alone (resources, roles, condition sets
    /// and their rules).
    pub(super) fn schema_hash(&self) -> [u8; 32] {
        let schema = (
            &self.resources,
            &self.roles,
            &self.condition_sets,
            &self.condition_set_rules,
        );
        let bytes = bincode::serde::encode_to_vec(schema, bincode::config::standard())
            .expect("schema lists always encode");
        *blake3::hash(&bytes).as_bytes()
    }
}

impl fmt::Debug for Staged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staged")
            .field("resources", &self.resources.len())
            .field("roles", &self.roles.len())
            .field("tenants", &self.tenants.len())
            .field("users", &self.users.len())
            .field("role_assignments", &self.assignments.len())
            .field("resource_instances", &self.instances.len())
            .field("relationship_tuples", &self.tuples.len())
            .field("condition_sets", &self.condition_sets.len())
            .field("condition_set_rules", &self.condition_set_rules.len())
            .finish()
    }
}

/// The data document's top-level keys (`DataDocument`'s fields).
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Resources,
    Roles,
    Tenants,
    Users,
    RoleAssignments,
    ResourceInstances,
    RelationshipTuples,
    ConditionSets,
    ConditionSetRules,
    #[serde(other)]
    Other,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Resources => "resources",
            Field::Roles => "roles",
            Field::Tenants => "tenants",
            Field::Users => "users",
            Field::RoleAssignments => "role_assignments",
            Field::ResourceInstances => "resource_instances",
            Field::RelationshipTuples => "relationship_tuples",
            Field::ConditionSets => "condition_sets",
            Field::ConditionSetRules => "condition_set_rules",
            Field::Other => "",
        }
    }
}

struct DocumentVisitor<'s>(&'s mut Staged);

impl<'de> Visitor<'de> for DocumentVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a data document (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let s = self.0;
        let mut seen: Vec<Field> = Vec::new();
        while let Some(field) = map.next_key::<Field>()? {
            if field != Field::Other {
                if seen.contains(&field) {
                    return Err(serde::de::Error::duplicate_field(field.name()));
                }
                seen.push(field);
            }
            match field {
                Field::Resources => map.next_value_seed(List(s, Staged::push_resource))?,
                Field::Roles => map.next_value_seed(List(s, Staged::push_role))?,
                Field::Tenants => map.next_value_seed(List(s, Staged::push_tenant))?,
                Field::Users => map.next_value_seed(List(s, Staged::push_user))?,
                Field::RoleAssignments => map.next_value_seed(List(s, Staged::push_assignment))?,
                Field::ResourceInstances => map.next_value_seed(List(s, Staged::push_instance))?,
                Field::RelationshipTuples => map.next_value_seed(List(s, Staged::push_tuple))?,
                Field::ConditionSets => map.next_value_seed(List(s, Staged::push_condition_set))?,
                Field::ConditionSetRules => {
                    map.next_value_seed(List(s, Staged::push_condition_set_rule))?
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// One list of the document, each item staged as soon as it is read.
/// `null` is an empty list, as everywhere in the data document.
struct List<'s, T>(&'s mut Staged, fn(&mut Staged, T));

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for List<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for List<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<T>()? {
            (self.1)(self.0, item);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
        "users": [{"key": "u1", "email": "", "attributes": {"b": 1, "a": [true]},
                   "roles": [{"role": "viewer", "tenant": "t1"}, {"role": "x"}]}],
        "extra": {"ignored": [1, 2]},
        "role_assignments": [{"user": "u1", "role": "editor", "tenant": "t1",
                              "resource_instance": null}],
        "resources": null,
        "relationship_tuples": [{"subject": "folder:f", "relation": "parent", "object": "doc:d"}]
    }"#;

    #[test]
    fn a_streamed_document_stages_like_the_parsed_one() {
        let streamed = Staged::from_json_reader(DOC.as_bytes()).unwrap();
        let doc: DataDocument = serde_json::from_str(DOC).unwrap();
        let staged = Staged::from_document(&doc);
        assert_eq!(streamed.content_hash(), staged.content_hash());
        assert_eq!(streamed.users.len(), 1);
        assert_eq!(streamed.user_roles.len(), 2);
        assert_eq!(streamed.user_roles.iter().nth(1).unwrap().tenant, NONE);
        let user = streamed.users.iter().next().unwrap();
        assert_eq!(user.info.email, NONE);
        let attrs = user.info.attrs.as_ref().unwrap();
        let names: Vec<_> = attrs
            .0
            .iter()
            .map(|(n, _)| streamed.attr_names.name(*n))
            .collect();
        assert_eq!(names, ["a", "b"], "sorted by interned id");
        let AssignmentFact {
            user: ra_user,
            instance: inst,
            ..
        } = *streamed.assignments.iter().next().unwrap();
        assert_eq!((streamed.name(ra_user), inst), ("u1", NONE));
    }

    #[test]
    fn bad_documents_are_refused_with_the_place() {
        for (text, want) in [
            (r#"{"users": [{"key": 3}]}"#, "line 1"),
            (r#"{"users": [], "users": []}"#, "duplicate field `users`"),
            (r#"[1]"#, "data document"),
            (r#"{"users": []} x"#, "trailing characters"),
            (r#"{"users": {"key": "u"}}"#, "a list or null"),
        ] {
            let err = Staged::from_json_str(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn rollback_forgets_strings_too() {
        let mut s = Staged::from_json_str(DOC).unwrap();
        let hash = s.content_hash();
        let mark = s.mark();
        s.push_assignment(RoleAssignment {
            user: "new-user".into(),
            role: "r".into(),
            tenant: Some("new-tenant".into()),
            resource_instance: None,
        });
        s.push_tenant(Tenant {
            key: "t9".into(),
            name: None,
            attributes: Json(serde_json::json!({"new_attr": 1})),
        });
        assert_ne!(s.content_hash(), hash);
        s.rollback(&mark);
        assert_eq!(s.content_hash(), hash);
        assert_eq!(s.keys.get("new-user"), None);
    }

    #[test]
    fn survives_bincode() {
        let s = Staged::from_json_str(DOC).unwrap();
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&s, cfg).unwrap();
        let (back, used): (Staged, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(used, bytes.len());
        assert!(back.ids_in_range());
        let mut bad = Staged::from_json_str(DOC).unwrap();
        bad.break_an_id();
        assert!(!bad.ids_in_range());
        // A value id past the pool, in an attribute or a profile field.
        let past_end = s.values.len() as u32;
        let mut bad = Staged::from_json_str(DOC).unwrap();
        bad.users.get_mut(0).unwrap().info.attrs.as_mut().unwrap().0[0].1 = past_end;
        assert!(!bad.ids_in_range());
        let mut bad = Staged::from_json_str(DOC).unwrap();
        bad.users.get_mut(0).unwrap().info.last_name = past_end;
        assert!(!bad.ids_in_range());
        assert_eq!(back.content_hash(), s.content_hash());
        let user = back.users.iter().next().unwrap();
        let attrs = user.info.attrs.as_ref().unwrap();
        let name = back.attr_names.get("a").unwrap();
        let &(_, a) = attrs.0.iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(back.values.get(a), &serde_json::json!([true]));
    }
}
