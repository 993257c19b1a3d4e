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
mod delta;
mod diff;
mod ids;
mod intern;
mod perms;
mod read;
mod staged;
mod values;

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde_json::{Map, Value};

use crate::abac::Cond;
use crate::model::DataDocument;
pub use build::MAX_PARENT_DEPTH;
use delta::Delta;
pub use delta::{Assignment, Tuple, Unapplied, Write};
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

/// A full snapshot's tables, built once and never changed.
pub(crate) struct Tables {
    tenants: Interner,
    tenant_attrs: AttrRows,
    users: Interner,
    profiles: Vec<Profile>,
    user_attrs: AttrRows,
    emails: Emails,
    roles: Interner,
    /// Permission names, and the roles' grants as sets of them.
    perms: perms::PermIndex,
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
    /// Relation names, for writes that name them (decisions use ids).
    relations: Interner,
    /// A hash of the schema lists the tables were built from: two
    /// snapshots with the same one differ only in facts ([`Snapshot::changes_since`]).
    schema: [u8; 32],
    counts: Counts,
}

impl Tables {
    /// A stored attribute by name, from an object's row of [`AttrRows`].
    fn attr(&self, row: &[(u32, u32)], name: &str) -> Option<&Value> {
        let name = self.attr_names.get(name)?;
        let i = row.binary_search_by_key(&name, |&(n, _)| n).ok()?;
        Some(self.values.get(row[i].1))
    }

    fn email_of(&self, user: u32) -> Option<&str> {
        self.values
            .opt(self.profiles.get(user as usize)?.email)?
            .as_str()
    }

    /// Stored attributes as a JSON object, for answers that show them.
    fn attrs_map(&self, row: &[(u32, u32)]) -> Map<String, Value> {
        row.iter()
            .map(|&(n, v)| {
                (
                    self.attr_names.name(n).to_owned(),
                    self.values.get(v).clone(),
                )
            })
            .collect()
    }
}

/// What decisions read: a full snapshot's tables and the writes applied
/// over them since (`delta`, docs/read-your-writes.md). Cloning one is a
/// pointer copy; applying a write makes a new one that shares the tables.
#[derive(Clone)]
pub struct Snapshot {
    t: Arc<Tables>,
    delta: Option<Arc<Delta>>,
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

    /// A snapshot of `t` with no writes over it.
    fn from_tables(t: Tables) -> Snapshot {
        Snapshot {
            t: Arc::new(t),
            delta: None,
        }
    }

    /// This snapshot's tables with `writes` applied over them in order
    /// (docs/read-your-writes.md). A write naming schema the tables do not
    /// have is left out and reported with its index.
    pub fn with_writes<'w>(
        &self,
        writes: impl IntoIterator<Item = &'w Write>,
    ) -> (Snapshot, Vec<(usize, Unapplied)>) {
        let mut delta = self.delta.as_deref().cloned().unwrap_or_default();
        let mut refused = Vec::new();
        for (i, w) in writes.into_iter().enumerate() {
            if let Err(e) = delta.apply(&self.t, w) {
                refused.push((i, e));
            }
        }
        let next = Snapshot {
            t: self.t.clone(),
            delta: (delta.writes > 0).then(|| Arc::new(delta)),
        };
        (next, refused)
    }

    /// The same tables without the writes applied over them.
    pub fn without_writes(&self) -> Snapshot {
        Snapshot {
            t: self.t.clone(),
            delta: None,
        }
    }

    /// Writes applied over the full snapshot.
    pub fn applied_writes(&self) -> usize {
        self.delta.as_ref().map_or(0, |d| d.writes)
    }

    /// The full snapshot's counts; writes applied since are not in them.
    pub fn counts(&self) -> &Counts {
        &self.t.counts
    }

    pub fn user_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.all_users().map(|u| self.user_key(u))
    }

    /// Whether the snapshot knows this user key.
    pub fn has_user(&self, key: &str) -> bool {
        self.user_id(key).is_some()
    }

    /// The key of the user whose email this is.
    pub fn user_by_email(&self, email: &str) -> Option<&str> {
        let written = self
            .delta
            .as_ref()
            .and_then(|d| d.emails.get(email).copied());
        let u = written.or_else(|| self.t.emails.get(email, |u| self.t.email_of(u)))?;
        let u = UserId(u);
        // A write may have deleted the user or changed its address since.
        let current = self.user_profile(u, "email").and_then(Value::as_str);
        (self.is_live_user(u) && current == Some(email)).then(|| self.user_key(u))
    }

    pub fn instance_keys_of_type<'a>(&'a self, ty: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.t
            .types
            .get(ty)
            .map(TypeId)
            .into_iter()
            .flat_map(move |ty| self.instances_of(ty))
            .map(|i| self.instance_key(i))
    }

    pub fn actions_of_type<'a>(&'a self, ty: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.t
            .types
            .get(ty)
            .into_iter()
            .flat_map(move |t| self.t.type_info[t as usize].actions.iter().map(|(_, a)| a))
    }

    /// Approximate heap bytes held by the indexes (not attributes).
    pub fn index_heap_bytes(&self) -> usize {
        self.t.tenants.heap_bytes()
            + self.t.users.heap_bytes()
            + self.t.instances.heap_bytes()
            + self.t.user_roles.heap_bytes()
            + self.t.tenant_users.heap_bytes()
            + self.t.user_inst_roles.heap_bytes()
            + self.t.inst_users.heap_bytes()
            + self.t.tuples_in.heap_bytes()
            + self.t.tuples_out.heap_bytes()
            + self.t.inst_tenant.capacity() * 4
            + self.t.type_instances.heap_bytes()
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
