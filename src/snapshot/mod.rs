//! The immutable, indexed snapshot every decision reads.
//!
//! [`Snapshot::from_staged`] is the one validating constructor: a data
//! document from the control plane, a local file or a backup is first staged
//! ([`Staged`]: read item by item, strings interned, facts packed) and all
//! enter here ([`Snapshot::build`] stages a parsed document). It interns
//! every key to a dense `u32`, flattens role `extends` (refusing cycles and
//! dangling references by name), resolves permissions to per-action bit sets,
//! indexes role assignments and relationship tuples in compressed rows, and
//! compiles ABAC conditions. After that nothing changes: a snapshot is shared
//! behind an `Arc` and replaced whole.
//!
//! Schema problems (a role extending a role that does not exist, a derivation
//! naming an unknown role, a malformed condition) refuse the document: they
//! would silently change what roles mean. Facts that refer to schema that is
//! not there (an assignment of a deleted role, an instance of an unknown type)
//! are dropped and counted in [`Counts::dropped_facts`]: the control plane can
//! be caught between pages, and one stale fact must not freeze the PDP.
//!
//! Here: the snapshot's types. `staged`: the staged form; `build`: the
//! constructor, step by step; `read`: what decisions read, by typed id
//! (`ids`); `intern`, `values`, `chunked`: the tables behind them.

mod build;
mod chunked;
mod ids;
mod intern;
mod read;
mod staged;
mod values;

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde_json::{Map, Value};

use crate::abac::Cond;
use crate::model::DataDocument;
pub use build::MAX_PARENT_DEPTH;
pub use ids::{ActionId, InstanceId, RelationId, ResourceRoleId, RoleId, TenantId, TypeId, UserId};
pub(crate) use intern::{BitSet, Csr, Interner, NONE};
pub use staged::Staged;
pub(crate) use values::Values;

/// One staged object's attributes, compact: names interned once per
/// document, values once in its [`Values`] pool, entries `(name, value)`
/// sorted by name id. A `serde_json::Map` costs a B-tree node (~600 bytes)
/// per object; a hundred thousand users with three attributes each would
/// spend more on maps than on every index together. The snapshot keeps
/// the same entries in [`AttrRows`].
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Attrs(Box<[(u32, u32)]>);

/// Every object's attributes of one kind, in one allocation: row `id` holds
/// object `id`'s `(name, value)` entries sorted by name id.
pub(crate) type AttrRows = Csr<(u32, u32)>;

impl AttrRows {
    /// The rows of `objects`, `(id, attributes)` for ids below `owners`.
    fn of<'a, I>(owners: usize, objects: I) -> AttrRows
    where
        I: IntoIterator<Item = (u32, &'a Attrs)>,
        I::IntoIter: Clone,
    {
        Csr::build(
            owners,
            objects
                .into_iter()
                .flat_map(|(id, a)| a.0.iter().map(move |&entry| (id, entry))),
        )
    }
}

const AUTOGEN: &str = "__autogen_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("{kind} `{role}` extends `{missing}`, which does not exist")]
    UnknownExtends {
        kind: &'static str,
        role: String,
        missing: String,
    },
    #[error("{kind} inheritance cycle: {}", cycle.join(" -> "))]
    ExtendsCycle {
        kind: &'static str,
        cycle: Vec<String>,
    },
    #[error("role `{role}` is derived from `{on_resource}#{from_role}`, which does not exist")]
    UnknownDerivation {
        role: String,
        on_resource: String,
        from_role: String,
    },
    #[error("condition set `{set}`: {reason}")]
    BadConditionSet { set: String, reason: String },
    #[error("condition set parent cycle: {}", cycle.join(" -> "))]
    ParentCycle { cycle: Vec<String> },
    #[error("{what} has an empty key")]
    EmptyKey { what: &'static str },
    #[error("more than {} {what}: this PDP numbers them in 32 bits", u32::MAX)]
    TooMany { what: &'static str },
}

/// Object counts, for `/ready`, `/health` and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    pub users: usize,
    pub tenants: usize,
    pub roles: usize,
    pub resource_types: usize,
    pub resource_instances: usize,
    pub tenant_role_assignments: usize,
    pub instance_role_assignments: usize,
    pub relationship_tuples: usize,
    pub condition_sets: usize,
    pub condition_set_rules: usize,
    pub dropped_facts: usize,
}

/// A staged user's profile and attributes: `email`, `first_name` and
/// `last_name` are string ids in the [`Values`] pool (`NONE`: absent or
/// empty).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct UserInfo {
    pub email: u32,
    pub first_name: u32,
    pub last_name: u32,
    pub attrs: Option<Attrs>,
}

impl UserInfo {
    const EMPTY: UserInfo = UserInfo {
        email: NONE,
        first_name: NONE,
        last_name: NONE,
        attrs: None,
    };
}

/// A user's profile in the snapshot, ids as in [`UserInfo`] (whose
/// attributes go to [`Snapshot::user_attrs`]).
#[derive(Clone, Copy)]
pub(crate) struct Profile {
    pub email: u32,
    pub first_name: u32,
    pub last_name: u32,
}

/// Users by email: user ids, hashed by their email, which stays in the
/// [`Values`] pool rather than being copied here. The first user with an
/// address keeps it.
pub(crate) struct Emails {
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Emails {
    /// `email_of(user)` for each user id below `users`.
    fn build<'a>(users: usize, email_of: impl Fn(u32) -> Option<&'a str>) -> Emails {
        let hasher = DefaultHashBuilder::default();
        let mut table = HashTable::new();
        for u in 0..users as u32 {
            let Some(e) = email_of(u) else { continue };
            let hash = hasher.hash_one(e);
            if table.find(hash, |&v| email_of(v) == Some(e)).is_none() {
                table.insert_unique(hash, u, |&v| hasher.hash_one(email_of(v).unwrap_or("")));
            }
        }
        table.shrink_to_fit(|&v| hasher.hash_one(email_of(v).unwrap_or("")));
        Emails { table, hasher }
    }

    fn get<'a>(&self, email: &str, email_of: impl Fn(u32) -> Option<&'a str>) -> Option<u32> {
        let hash = self.hasher.hash_one(email);
        self.table
            .find(hash, |&u| email_of(u) == Some(email))
            .copied()
    }
}

/// "Users with `from_role` on a `from_type` instance linked by `relation`
/// to this instance hold this role here."
#[derive(Clone, Copy)]
pub(crate) struct Derive {
    pub from_type: u32,
    pub from_role: u32,
    pub relation: u32,
    pub no_direct: bool,
}

/// The same rule seen from the subject side, for walking down from a user.
#[derive(Clone, Copy)]
pub(crate) struct Forward {
    pub relation: u32,
    pub to_type: u32,
    pub to_role: u32,
    pub no_direct: bool,
}

#[derive(Default)]
pub(crate) struct TypeInfo {
    pub actions: Interner,
    /// Per action: the tenant roles whose (flattened) permissions grant it.
    pub tenant_grants: Vec<BitSet>,
    /// Resource roles of this type (local ids).
    pub roles: Interner,
    /// Per resource role: the actions it grants (flattened).
    pub role_actions: Vec<BitSet>,
    /// Per action: the resource roles granting it.
    pub role_grants: Vec<BitSet>,
    /// Per resource role: the rules that derive it.
    pub derive: Vec<Vec<Derive>>,
    /// Per resource role: the roles it derives on related instances.
    pub forward: Vec<Vec<Forward>>,
    /// Per action: ABAC rules as (user set, resource set).
    pub abac: Vec<Vec<(u32, u32)>>,
}

pub(crate) enum UserSet {
    /// `__autogen_<role>`: the user holds that tenant role (None: no such role).
    Role(Option<RoleId>),
    Cond(Cond),
}

pub(crate) enum ResourceSet {
    /// `__autogen_<type>`, or a set bound to `type` with conditions.
    Type(TypeId),
    Cond(TypeId, Cond),
    /// Bound to a type the snapshot does not know: never matches.
    Never,
}

pub struct Snapshot {
    tenants: Interner,
    tenant_attrs: AttrRows,
    users: Interner,
    profiles: Vec<Profile>,
    user_attrs: AttrRows,
    emails: Emails,
    roles: Interner,
    /// Per tenant role: flattened `(type, action)` grants, sorted.
    role_perms: Vec<Vec<(u32, u32)>>,
    types: Interner,
    type_info: Vec<TypeInfo>,
    /// user → (tenant, role)
    user_roles: Csr<(u32, u32)>,
    /// tenant → (user, role)
    tenant_users: Csr<(u32, u32)>,
    /// Instance keys, scoped by type id.
    instances: Interner,
    inst_tenant: Vec<u32>,
    /// type → its instances
    type_instances: Csr<u32>,
    inst_attrs: AttrRows,
    attr_names: Interner,
    /// Every stored attribute value and profile string, once.
    values: Values,
    /// user → (instance, resource role)
    user_inst_roles: Csr<(u32, u32)>,
    /// instance → (user, resource role)
    inst_users: Csr<(u32, u32)>,
    /// object instance → (relation, subject instance)
    tuples_in: Csr<(u32, u32)>,
    /// subject instance → (relation, object instance)
    tuples_out: Csr<(u32, u32)>,
    user_sets: Vec<UserSet>,
    resource_sets: Vec<ResourceSet>,
    counts: Counts,
}

impl Snapshot {
    /// Validates and indexes a data document.
    pub fn build(doc: &DataDocument) -> Result<Snapshot, BuildError> {
        Self::from_staged(Staged::from_document(doc))
    }

    /// Validates and indexes a staged document, consuming it list by list
    /// so that its facts and the snapshot's indexes are not all held at once.
    pub fn from_staged(staged: Staged) -> Result<Snapshot, BuildError> {
        build::Builder::default().build(staged)
    }

    /// An empty environment: every check denies.
    pub fn empty() -> Snapshot {
        Self::build(&DataDocument::default()).expect("the empty document is valid")
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn user_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.users.iter().map(|(_, k)| k)
    }

    /// Whether the snapshot knows this user key.
    pub fn has_user(&self, key: &str) -> bool {
        self.users.get(key).is_some()
    }

    /// The key of the user whose email this is.
    pub fn user_by_email(&self, email: &str) -> Option<&str> {
        let u = self.emails.get(email, |u| self.email_of(u))?;
        Some(self.users.name(u))
    }

    pub fn instance_keys_of_type<'a>(&'a self, ty: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.instances_of_type(self.types.get(ty))
            .map(|i| self.instances.name(i))
    }

    /// Instance ids of a type, in id order.
    pub(crate) fn instances_of_type(&self, ty: Option<u32>) -> impl Iterator<Item = u32> + '_ {
        ty.map(|t| self.type_instances.row(t))
            .unwrap_or_default()
            .iter()
            .copied()
    }

    pub fn actions_of_type<'a>(&'a self, ty: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.types
            .get(ty)
            .into_iter()
            .flat_map(move |t| self.type_info[t as usize].actions.iter().map(|(_, a)| a))
    }

    /// A stored attribute by name, from an object's row of [`AttrRows`].
    pub(crate) fn attr(&self, row: &[(u32, u32)], name: &str) -> Option<&Value> {
        let name = self.attr_names.get(name)?;
        let i = row.binary_search_by_key(&name, |&(n, _)| n).ok()?;
        Some(self.values.get(row[i].1))
    }

    fn email_of(&self, user: u32) -> Option<&str> {
        self.values
            .opt(self.profiles[user as usize].email)?
            .as_str()
    }

    /// Stored attributes as a JSON object, for answers that show them.
    pub(crate) fn attrs_map(&self, row: &[(u32, u32)]) -> Map<String, Value> {
        row.iter()
            .map(|&(n, v)| {
                (
                    self.attr_names.name(n).to_owned(),
                    self.values.get(v).clone(),
                )
            })
            .collect()
    }

    /// Approximate heap bytes held by the indexes (not attributes).
    pub fn index_heap_bytes(&self) -> usize {
        self.tenants.heap_bytes()
            + self.users.heap_bytes()
            + self.instances.heap_bytes()
            + self.user_roles.heap_bytes()
            + self.tenant_users.heap_bytes()
            + self.user_inst_roles.heap_bytes()
            + self.inst_users.heap_bytes()
            + self.tuples_in.heap_bytes()
            + self.tuples_out.heap_bytes()
            + self.inst_tenant.capacity() * 4
            + self.type_instances.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_email_first_one_wins() {
        let doc = r#"{"users": [
            {"key": "u1", "email": "a@x.test"},
            {"key": "u2", "email": "a@x.test"},
            {"key": "u3", "email": "b@x.test"},
            {"key": "u4", "email": ""},
            {"key": "u5"}
        ]}"#;
        let snap = Snapshot::from_staged(Staged::from_json_str(doc).unwrap()).unwrap();
        assert_eq!(snap.user_by_email("a@x.test"), Some("u1"));
        assert_eq!(snap.user_by_email("b@x.test"), Some("u3"));
        assert_eq!(snap.user_by_email("c@x.test"), None);
        assert_eq!(snap.user_by_email(""), None);
    }
}
