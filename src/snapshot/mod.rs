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

mod chunked;
mod ids;
mod intern;
mod read;
mod staged;
mod values;

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use serde_json::{Map, Value};

use crate::abac::{self, Cond};
use crate::model::{self, ConditionSetType, DataDocument};
use chunked::Chunked;
use ids::checked;
pub use ids::{ActionId, InstanceId, RelationId, ResourceRoleId, RoleId, TenantId, TypeId, UserId};
pub(crate) use intern::{BitSet, Csr, Interner, NONE};
pub use staged::Staged;
use staged::{AssignmentFact, TupleFact, UserRoleFact};
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
        Builder::default().build(staged)
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

/// Splits `"type:rest"` at the first colon.
fn split_pair(s: &str) -> Option<(&str, &str)> {
    let (a, b) = s.split_once(':')?;
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

/// Depth-first flattening of an `extends` graph over dense ids.
/// `direct[i]` are role i's own grants, `parents[i]` the roles it extends.
fn flatten(
    kind: &'static str,
    names: &Interner,
    direct: Vec<BitSet>,
    parents: &[Vec<u32>],
) -> Result<Vec<BitSet>, BuildError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let n = direct.len();
    let mut out = direct;
    let mut mark = vec![Mark::New; n];
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next parent index).
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&p) = parents[node].get(*next) {
                *next += 1;
                let p = p as usize;
                match mark[p] {
                    Mark::Done => {}
                    Mark::New => {
                        mark[p] = Mark::Active;
                        stack.push((p, 0));
                    }
                    Mark::Active => {
                        let start = stack.iter().position(|&(s, _)| s == p).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..]
                            .iter()
                            .map(|&(s, _)| names.name(s as u32).to_owned())
                            .collect();
                        cycle.push(names.name(p as u32).to_owned());
                        return Err(BuildError::ExtendsCycle { kind, cycle });
                    }
                }
            } else {
                stack.pop();
                mark[node] = Mark::Done;
                for &p in &parents[node] {
                    let inherited = out[p as usize].clone();
                    out[node].union_with(&inherited);
                }
            }
        }
    }
    Ok(out)
}

/// An action, or the actions of a group of that name, on type `t`.
fn resolve_actions(
    type_info: &[TypeInfo],
    groups: &[HashMap<String, Vec<u32>>],
    t: u32,
    name: &str,
) -> Vec<u32> {
    match type_info[t as usize].actions.get(name) {
        Some(a) => vec![a],
        None => groups[t as usize].get(name).cloned().unwrap_or_default(),
    }
}

#[derive(Default)]
struct Builder {
    dropped: usize,
}

impl Builder {
    fn build(mut self, mut doc: Staged) -> Result<Snapshot, BuildError> {
        if doc.keys.overflowed() || doc.attr_names.overflowed() {
            return Err(BuildError::TooMany {
                what: "keys or bytes of key text",
            });
        }
        let mut types = Interner::new();
        let mut type_info: Vec<TypeInfo> = Vec::new();
        let mut relations = Interner::new();
        let mut groups: Vec<HashMap<String, Vec<u32>>> = Vec::new();
        let mut type_ids_by_uuid: HashMap<&str, u32> = HashMap::new();

        // Resource types, their actions and action groups.
        for r in &doc.resources {
            if r.key.is_empty() {
                return Err(BuildError::EmptyKey { what: "a resource" });
            }
            let t = types.intern(&r.key);
            if t as usize == type_info.len() {
                type_info.push(TypeInfo::default());
                groups.push(HashMap::new());
            }
            if let Some(id) = &r.id {
                type_ids_by_uuid.insert(id, t);
            }
            let info = &mut type_info[t as usize];
            for action in r.actions.keys() {
                info.actions.intern(action);
            }
            for (group, members) in &r.action_groups {
                let ids = members
                    .actions()
                    .iter()
                    .filter_map(|a| info.actions.get(a))
                    .collect();
                groups[t as usize].insert(group.clone(), ids);
            }
            for role in r.roles.keys() {
                info.roles.intern(role);
            }
            for rel in r.relations.keys() {
                relations.intern(rel);
            }
        }

        // Tenant roles: direct grants as bits over a global (type, action) index.
        let mut perm_base = Vec::with_capacity(type_info.len());
        let mut perm_owner: Vec<(u32, u32)> = Vec::new();
        for (t, info) in type_info.iter().enumerate() {
            perm_base.push(perm_owner.len() as u32);
            perm_owner.extend((0..info.actions.len() as u32).map(|a| (t as u32, a)));
        }
        let perm_count = perm_owner.len();
        let mut roles = Interner::new();
        for r in &doc.roles {
            if r.key.is_empty() {
                return Err(BuildError::EmptyKey { what: "a role" });
            }
            roles.intern(&r.key);
        }
        let mut direct = vec![BitSet::with_len(perm_count); roles.len()];
        let mut parents = vec![Vec::new(); roles.len()];
        for r in &doc.roles {
            let id = roles.get(&r.key).unwrap_or(NONE) as usize;
            for p in &r.permissions {
                let Some((ty, action)) = split_pair(p) else {
                    continue;
                };
                let Some(t) = types.get(ty) else { continue };
                for a in resolve_actions(&type_info, &groups, t, action) {
                    direct[id].insert(perm_base[t as usize] + a);
                }
            }
            for e in &r.extends {
                let parent = roles.get(e).ok_or_else(|| BuildError::UnknownExtends {
                    kind: "role",
                    role: r.key.clone(),
                    missing: e.clone(),
                })?;
                parents[id].push(parent);
            }
        }
        let flat = flatten("role", &roles, direct, &parents)?;
        let mut role_perms = Vec::with_capacity(roles.len());
        for info in type_info.iter_mut() {
            info.tenant_grants = vec![BitSet::with_len(roles.len()); info.actions.len()];
        }
        for (role, bits) in flat.iter().enumerate() {
            let perms: Vec<(u32, u32)> = bits.iter().map(|p| perm_owner[p as usize]).collect();
            for &(t, a) in &perms {
                type_info[t as usize].tenant_grants[a as usize].insert(role as u32);
            }
            role_perms.push(perms);
        }

        // Resource roles: flattened per type; derivation rules.
        for r in &doc.resources {
            let Some(t) = types.get(&r.key) else { continue };
            let n_roles = type_info[t as usize].roles.len();
            let n_actions = type_info[t as usize].actions.len();
            let mut direct = vec![BitSet::with_len(n_actions); n_roles];
            let mut parents = vec![Vec::new(); n_roles];
            for (name, role) in &r.roles {
                let id = type_info[t as usize].roles.get(name).unwrap_or(NONE) as usize;
                for p in &role.permissions {
                    // Tolerate "type:action" spelled in full for the own type.
                    let action = match split_pair(p) {
                        Some((ty, a)) if ty == r.key => a,
                        _ => p.as_str(),
                    };
                    for a in resolve_actions(&type_info, &groups, t, action) {
                        direct[id].insert(a);
                    }
                }
                for e in &role.extends {
                    let parent = type_info[t as usize].roles.get(e).ok_or_else(|| {
                        BuildError::UnknownExtends {
                            kind: "resource role",
                            role: format!("{}#{}", r.key, name),
                            missing: format!("{}#{}", r.key, e),
                        }
                    })?;
                    parents[id].push(parent);
                }
            }
            let info = &mut type_info[t as usize];
            let flat = flatten("resource role", &info.roles, direct, &parents)?;
            info.role_grants = vec![BitSet::with_len(n_roles); n_actions];
            for (role, bits) in flat.iter().enumerate() {
                for a in bits.iter() {
                    info.role_grants[a as usize].insert(role as u32);
                }
            }
            info.role_actions = flat;
            info.derive = vec![Vec::new(); n_roles];
            info.forward = vec![Vec::new(); n_roles];
        }
        for r in &doc.resources {
            let Some(t) = types.get(&r.key) else { continue };
            for (name, role) in &r.roles {
                let Some(granted) = &role.granted_to else {
                    continue;
                };
                let role_id = type_info[t as usize].roles.get(name).unwrap_or(NONE);
                let all_no_direct = granted
                    .when
                    .as_ref()
                    .is_some_and(|w| w.no_direct_roles_on_object);
                for rule in &granted.users_with_role {
                    let unknown = || BuildError::UnknownDerivation {
                        role: format!("{}#{}", r.key, name),
                        on_resource: rule.on_resource.clone(),
                        from_role: rule.role.clone(),
                    };
                    let from_type = types.get(&rule.on_resource).ok_or_else(unknown)?;
                    let from_role = type_info[from_type as usize]
                        .roles
                        .get(&rule.role)
                        .ok_or_else(unknown)?;
                    let relation = relations.intern(&rule.linked_by_relation);
                    let no_direct = all_no_direct
                        || rule
                            .when
                            .as_ref()
                            .is_some_and(|w| w.no_direct_roles_on_object);
                    type_info[t as usize].derive[role_id as usize].push(Derive {
                        from_type,
                        from_role,
                        relation,
                        no_direct,
                    });
                    type_info[from_type as usize].forward[from_role as usize].push(Forward {
                        relation,
                        to_type: t,
                        to_role: role_id,
                        no_direct,
                    });
                }
            }
        }

        // Tenants and users. Each fact list is taken out of the staged
        // document and dropped once indexed. The staged strings are only
        // read by id from here, so their lookup table goes first (8.5 MB
        // at 1M assignments, the build's peak otherwise).
        doc.keys.drop_lookups();
        let mut attr_names = std::mem::take(&mut doc.attr_names);
        let mut values = std::mem::take(&mut doc.values);
        values.drop_lookups();
        let mut tenants = Interner::new();
        let mut tenant_attrs = Vec::new();
        for tn in std::mem::take(&mut doc.tenants) {
            let key = doc.name(tn.key);
            if key.is_empty() {
                return Err(BuildError::EmptyKey { what: "a tenant" });
            }
            let id = tenants.intern(key);
            if id as usize == tenant_attrs.len() {
                tenant_attrs.push(None);
            }
            tenant_attrs[id as usize] = tn.attrs;
        }
        let mut users = Interner::new();
        let mut user_info: Vec<UserInfo> = Vec::with_capacity(doc.users.len());
        let mut tenant_pairs: Chunked<(u32, (u32, u32))> = Chunked::default();
        let intern_user = |users: &mut Interner, user_info: &mut Vec<UserInfo>, key: &str| {
            let id = users.intern(key);
            if id as usize == user_info.len() {
                user_info.push(UserInfo::EMPTY);
            }
            id
        };
        let intern_tenant = |tenants: &mut Interner, attrs: &mut Vec<Option<Attrs>>, key: &str| {
            let id = tenants.intern(key);
            if id as usize == attrs.len() {
                attrs.push(None);
            }
            id
        };
        for u in std::mem::take(&mut doc.users) {
            let key = doc.name(u.key);
            if key.is_empty() {
                return Err(BuildError::EmptyKey { what: "a user" });
            }
            let id = intern_user(&mut users, &mut user_info, key);
            user_info[id as usize] = u.info;
        }
        for UserRoleFact { user, role, tenant } in std::mem::take(&mut doc.user_roles) {
            let Some(id) = users.get(doc.name(user)) else {
                continue;
            };
            match (roles.get(doc.name(role)), tenant) {
                (Some(role), tenant) if tenant != NONE => {
                    let tn = intern_tenant(&mut tenants, &mut tenant_attrs, doc.name(tenant));
                    tenant_pairs.push((id, (tn, role)));
                }
                _ => self.dropped += 1,
            }
        }

        // Resource instances, then tuples and assignments (which may name
        // instances implicitly).
        let mut instances = Interner::new();
        let mut inst_tenant: Vec<u32> = Vec::with_capacity(doc.instances.len());
        let mut inst_attrs = HashMap::new();
        let intern_inst =
            |instances: &mut Interner, inst_tenant: &mut Vec<u32>, t: u32, key: &str| {
                let id = instances.intern_in(t, key);
                if id as usize == inst_tenant.len() {
                    inst_tenant.push(NONE);
                }
                id
            };
        for ri in std::mem::take(&mut doc.instances) {
            let Some(t) = types.get(doc.name(ri.resource)).filter(|_| ri.key != NONE) else {
                self.dropped += 1;
                continue;
            };
            let id = intern_inst(&mut instances, &mut inst_tenant, t, doc.name(ri.key));
            if ri.tenant != NONE {
                inst_tenant[id as usize] =
                    intern_tenant(&mut tenants, &mut tenant_attrs, doc.name(ri.tenant));
            }
            if let Some(attrs) = ri.attrs {
                inst_attrs.insert(id, attrs);
            }
        }
        fn parse_inst<'s>(types: &Interner, s: &'s str) -> Option<(u32, &'s str)> {
            let (ty, key) = split_pair(s)?;
            Some((types.get(ty)?, key))
        }
        let mut tuples = Vec::with_capacity(doc.tuples.len());
        for TupleFact {
            subject,
            relation,
            object,
        } in std::mem::take(&mut doc.tuples)
        {
            match (
                parse_inst(&types, doc.name(subject)),
                parse_inst(&types, doc.name(object)),
                relation,
            ) {
                (Some((st, sk)), Some((ot, ok)), relation) if relation != NONE => {
                    let s = intern_inst(&mut instances, &mut inst_tenant, st, sk);
                    let o = intern_inst(&mut instances, &mut inst_tenant, ot, ok);
                    tuples.push((s, relations.intern(doc.name(relation)), o));
                }
                _ => self.dropped += 1,
            }
        }
        // Chunked, like the staged facts they come from: they grow as the
        // assignments are read and their chunks freed, instead of being
        // reserved whole beside all of them.
        let mut inst_pairs: Chunked<(u32, (u32, u32))> = Chunked::default();
        for AssignmentFact {
            user,
            role,
            tenant,
            instance: inst,
        } in std::mem::take(&mut doc.assignments)
        {
            if user == NONE {
                self.dropped += 1;
                continue;
            }
            let (user, role) = (doc.name(user), doc.name(role));
            if inst != NONE {
                let Some((t, key)) = parse_inst(&types, doc.name(inst)) else {
                    self.dropped += 1;
                    continue;
                };
                let Some(role) = type_info[t as usize].roles.get(role) else {
                    self.dropped += 1;
                    continue;
                };
                let user = intern_user(&mut users, &mut user_info, user);
                let i = intern_inst(&mut instances, &mut inst_tenant, t, key);
                inst_pairs.push((user, (i, role)));
            } else {
                match (roles.get(role), tenant) {
                    (Some(role), tenant) if tenant != NONE => {
                        let user = intern_user(&mut users, &mut user_info, user);
                        let tn = intern_tenant(&mut tenants, &mut tenant_attrs, doc.name(tenant));
                        tenant_pairs.push((user, (tn, role)));
                    }
                    _ => self.dropped += 1,
                }
            }
        }
        // The strings of the facts are all in the snapshot's own interners now.
        drop(std::mem::take(&mut doc.keys));

        let n_users = users.len();
        // Rows are numbered in 32 bits.
        checked(tenant_pairs.len(), "tenant role assignments")?;
        checked(inst_pairs.len(), "resource role assignments")?;
        checked(tuples.len(), "relationship tuples")?;
        // Each list of pairs indexes both ways, then is dropped.
        let type_instances = Csr::build(
            types.len(),
            (0..instances.len() as u32).map(|i| (instances.scope(i), i)),
        );
        let tenant_users = Csr::build(
            tenants.len(),
            tenant_pairs.iter().map(|&(u, (t, r))| (t, (u, r))),
        );
        let user_roles = Csr::build(n_users, tenant_pairs.iter().copied());
        drop(tenant_pairs);
        let inst_users = Csr::build(
            instances.len(),
            inst_pairs.iter().map(|&(u, (i, r))| (i, (u, r))),
        );
        let user_inst_roles = Csr::build(n_users, inst_pairs.iter().copied());
        drop(inst_pairs);
        let tuples_in = Csr::build(instances.len(), tuples.iter().map(|&(s, r, o)| (o, (r, s))));
        let tuples_out = Csr::build(instances.len(), tuples.iter().map(|&(s, r, o)| (s, (r, o))));
        drop(tuples);

        let emails = Emails::build(user_info.len(), |u| {
            values.opt(user_info[u as usize].email)?.as_str()
        });

        let (user_sets, resource_sets, n_sets, n_rules) = self.sets_and_rules(
            &doc,
            &types,
            &type_ids_by_uuid,
            &roles,
            &mut type_info,
            &groups,
        )?;

        let counts = Counts {
            users: n_users,
            tenants: tenants.len(),
            roles: roles.len(),
            resource_types: types.len(),
            resource_instances: instances.len(),
            tenant_role_assignments: user_roles.len(),
            instance_role_assignments: user_inst_roles.len(),
            relationship_tuples: tuples_in.len(),
            condition_sets: n_sets,
            condition_set_rules: n_rules,
            dropped_facts: self.dropped,
        };
        users.shrink_to_fit();
        instances.shrink_to_fit();
        tenants.shrink_to_fit();
        inst_tenant.shrink_to_fit();
        attr_names.shrink_to_fit();
        values.shrink_to_fit();
        // Attributes into rows, each kind's boxes freed once its rows are made.
        let tenant_rows = AttrRows::of(
            tenants.len(),
            (0u32..)
                .zip(&tenant_attrs)
                .filter_map(|(t, a)| Some((t, a.as_ref()?))),
        );
        drop(tenant_attrs);
        let inst_rows = AttrRows::of(instances.len(), inst_attrs.iter().map(|(&i, a)| (i, a)));
        drop(inst_attrs);
        let user_attrs = AttrRows::of(
            n_users,
            (0u32..)
                .zip(&user_info)
                .filter_map(|(u, info)| Some((u, info.attrs.as_ref()?))),
        );
        let profiles = user_info
            .into_iter()
            .map(|i| Profile {
                email: i.email,
                first_name: i.first_name,
                last_name: i.last_name,
            })
            .collect();

        Ok(Snapshot {
            tenants,
            tenant_attrs: tenant_rows,
            users,
            profiles,
            user_attrs,
            emails,
            roles,
            role_perms,
            types,
            type_info,
            user_roles,
            tenant_users,
            instances,
            inst_tenant,
            type_instances,
            inst_attrs: inst_rows,
            attr_names,
            values,
            user_inst_roles,
            inst_users,
            tuples_in,
            tuples_out,
            user_sets,
            resource_sets,
            counts,
        })
    }

    /// Compiles condition sets (with parent inheritance) and indexes the
    /// rules per (type, action).
    #[allow(clippy::type_complexity)]
    fn sets_and_rules(
        &mut self,
        doc: &Staged,
        types: &Interner,
        type_ids_by_uuid: &HashMap<&str, u32>,
        roles: &Interner,
        type_info: &mut [TypeInfo],
        groups: &[HashMap<String, Vec<u32>>],
    ) -> Result<(Vec<UserSet>, Vec<ResourceSet>, usize, usize), BuildError> {
        // Own conditions by key, and the parent link (by id or key).
        let mut by_key: BTreeMap<&str, &model::ConditionSet> = BTreeMap::new();
        let mut key_by_id: HashMap<&str, &str> = HashMap::new();
        for cs in &doc.condition_sets {
            if cs.key.is_empty() {
                return Err(BuildError::EmptyKey {
                    what: "a condition set",
                });
            }
            by_key.insert(&cs.key, cs);
            if let Some(id) = &cs.id {
                key_by_id.insert(id, &cs.key);
            }
        }
        let bad = |set: &str, reason: String| BuildError::BadConditionSet {
            set: set.to_owned(),
            reason,
        };
        // Conditions of a set including its ancestors.
        let full_condition = |key: &str| -> Result<Cond, BuildError> {
            let mut chain = vec![key.to_owned()];
            let mut conds = Vec::new();
            let mut cur = by_key[key];
            loop {
                conds.push(
                    abac::compile(&cur.conditions.0).map_err(|e| bad(&cur.key, e.to_string()))?,
                );
                let Some(parent) = cur.parent_id.as_deref().filter(|p| !p.is_empty()) else {
                    break;
                };
                let pkey = key_by_id.get(parent).copied().unwrap_or(parent);
                let next = by_key
                    .get(pkey)
                    .ok_or_else(|| bad(&cur.key, format!("parent `{parent}` does not exist")))?;
                if chain.iter().any(|c| c == pkey) {
                    chain.push(pkey.to_owned());
                    return Err(BuildError::ParentCycle { cycle: chain });
                }
                chain.push(pkey.to_owned());
                cur = next;
            }
            Ok(if conds.len() == 1 {
                conds.pop().unwrap_or_else(Cond::always)
            } else {
                Cond::All(conds)
            })
        };

        let mut user_set_ids: HashMap<String, u32> = HashMap::new();
        let mut resource_set_ids: HashMap<String, u32> = HashMap::new();
        let mut user_sets = Vec::new();
        let mut resource_sets = Vec::new();
        for (&key, cs) in &by_key {
            match cs.kind {
                ConditionSetType::Userset => {
                    let set = match key.strip_prefix(AUTOGEN) {
                        Some(role) => UserSet::Role(roles.get(role).map(RoleId)),
                        None => UserSet::Cond(full_condition(key)?),
                    };
                    user_set_ids.insert(key.to_owned(), user_sets.len() as u32);
                    user_sets.push(set);
                }
                ConditionSetType::Resourceset => {
                    let set = if let Some(ty) = key.strip_prefix(AUTOGEN) {
                        types
                            .get(ty)
                            .map_or(ResourceSet::Never, |t| ResourceSet::Type(TypeId(t)))
                    } else {
                        let bound = cs
                            .resource
                            .as_ref()
                            .map(|r| r.key())
                            .or(cs.resource_id.as_deref())
                            .ok_or_else(|| {
                                bad(key, "a resource set must name its resource type".into())
                            })?;
                        let t = types
                            .get(bound)
                            .or_else(|| type_ids_by_uuid.get(bound).copied());
                        match t {
                            Some(t) => ResourceSet::Cond(TypeId(t), full_condition(key)?),
                            None => ResourceSet::Never,
                        }
                    };
                    resource_set_ids.insert(key.to_owned(), resource_sets.len() as u32);
                    resource_sets.push(set);
                }
            }
        }

        for info in type_info.iter_mut() {
            info.abac = vec![Vec::new(); info.actions.len()];
        }
        let mut n_rules = 0;
        for rule in &doc.condition_set_rules {
            let us = match user_set_ids.get(&rule.user_set) {
                Some(&id) => Some(id),
                None => rule.user_set.strip_prefix(AUTOGEN).map(|role| {
                    let id = user_sets.len() as u32;
                    user_sets.push(UserSet::Role(roles.get(role).map(RoleId)));
                    user_set_ids.insert(rule.user_set.clone(), id);
                    id
                }),
            };
            let rs = match resource_set_ids.get(&rule.resource_set) {
                Some(&id) => Some(id),
                None => rule.resource_set.strip_prefix(AUTOGEN).map(|ty| {
                    let id = resource_sets.len() as u32;
                    resource_sets.push(
                        types
                            .get(ty)
                            .map_or(ResourceSet::Never, |t| ResourceSet::Type(TypeId(t))),
                    );
                    resource_set_ids.insert(rule.resource_set.clone(), id);
                    id
                }),
            };
            let perm = split_pair(&rule.permission).and_then(|(ty, a)| Some((types.get(ty)?, a)));
            let (Some(us), Some(rs), Some((t, action))) = (us, rs, perm) else {
                self.dropped += 1;
                continue;
            };
            let bound = match &resource_sets[rs as usize] {
                ResourceSet::Type(bt) | ResourceSet::Cond(bt, _) => Some(bt.0),
                ResourceSet::Never => None,
            };
            if bound != Some(t) {
                // A rule whose resource set is bound to another type never applies.
                continue;
            }
            for a in resolve_actions(type_info, groups, t, action) {
                type_info[t as usize].abac[a as usize].push((us, rs));
                n_rules += 1;
            }
        }
        Ok((user_sets, resource_sets, by_key.len(), n_rules))
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
