//! What a decision reads from a snapshot: lookups by key that return typed
//! ids, and rows by typed id. `decide` sees the snapshot only through
//! these; the tables behind them, and the invariants they keep (rows
//! sorted, ids dense), stay in this module.

use serde_json::{Map, Value};

use super::ids::{
    ActionId, InstanceId, RelationId, ResourceRoleId, RoleId, TenantId, TypeId, UserId,
};
use std::sync::Arc;

use super::delta::{Added, Delta, Rows};
use super::{BitSet, Csr, ResourceSet, Snapshot, UserSet, NONE};

/// "Users with `from_role` on a `from_type` instance linked by `relation`
/// to an instance hold a role there" (a derived role, docs/semantics.md §4).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Derivation {
    pub from_type: TypeId,
    pub from_role: ResourceRoleId,
    pub relation: RelationId,
    pub no_direct: bool,
}

/// The same rule from the subject's side: holding a role on an instance
/// gives `to_role` on the `to_type` instances it is related to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding {
    pub relation: RelationId,
    pub to_type: TypeId,
    pub to_role: ResourceRoleId,
    pub no_direct: bool,
}

/// An ABAC rule of an action: a user set and a resource set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AbacRule {
    pub user_set: u32,
    pub resource_set: u32,
}

/// A set of tenant roles.
#[derive(Clone, Copy)]
pub(crate) struct TenantGrants<'a>(&'a BitSet);

impl TenantGrants<'_> {
    #[inline]
    pub(crate) fn contains(self, r: RoleId) -> bool {
        self.0.contains(r.0)
    }
}

/// One user's direct resource roles ([`Snapshot::direct_roles_of`]).
#[derive(Clone, Copy)]
pub(crate) struct DirectRoles<'a>(&'a [(u32, u32)]);

impl<'a> DirectRoles<'a> {
    /// The roles on `inst`.
    #[inline]
    pub(crate) fn on(
        self,
        inst: InstanceId,
    ) -> impl ExactSizeIterator<Item = ResourceRoleId> + Clone + 'a {
        run(self.0, inst.0).iter().map(|&(_, r)| ResourceRoleId(r))
    }
}

/// The prefix of a sorted row whose first field is `key`.
fn run<K: Ord + Copy, V>(row: &[(K, V)], key: K) -> &[(K, V)] {
    let start = row.partition_point(|&(k, _)| k < key);
    let end = start + row[start..].partition_point(|&(k, _)| k == key);
    &row[start..end]
}

impl Snapshot {
    // Lookups by key. An object a write created is found after the
    // tables' own; one a write deleted is not found.

    #[inline]
    pub(crate) fn user_hash(&self, key: &str) -> u64 {
        self.t.users.hash_in(0, key)
    }

    /// The user `key`, with `hash` from [`Snapshot::user_hash`]: hashing
    /// first lets the table probes of several keys overlap.
    #[inline]
    pub(crate) fn user_hashed(&self, hash: u64, key: &str) -> Option<UserId> {
        let found = self.t.users.get_hashed(hash, 0, key);
        match &self.delta {
            None => found.map(UserId),
            Some(d) => live(
                found.or_else(|| d.users.ids.get(key).copied()),
                &d.gone_users,
            )
            .map(UserId),
        }
    }

    pub(crate) fn user_id(&self, key: &str) -> Option<UserId> {
        self.user_hashed(self.user_hash(key), key)
    }

    #[inline]
    pub(crate) fn tenant_id(&self, key: &str) -> Option<TenantId> {
        let found = self.t.tenants.get(key);
        match &self.delta {
            None => found.map(TenantId),
            Some(d) => live(
                found.or_else(|| d.tenants.ids.get(key).copied()),
                &d.gone_tenants,
            )
            .map(TenantId),
        }
    }

    #[inline]
    pub(crate) fn type_id(&self, key: &str) -> Option<TypeId> {
        self.t.types.get(key).map(TypeId)
    }

    #[inline]
    pub(crate) fn action_id(&self, ty: TypeId, key: &str) -> Option<ActionId> {
        self.t.type_info[ty.0 as usize]
            .actions
            .get(key)
            .map(ActionId)
    }

    #[inline]
    pub(crate) fn instance_hash(&self, ty: TypeId, key: &str) -> u64 {
        self.t.instances.hash_in(ty.0, key)
    }

    /// The instance `key` of `ty`, with `hash` from [`Snapshot::instance_hash`].
    #[inline]
    pub(crate) fn instance_hashed(&self, hash: u64, ty: TypeId, key: &str) -> Option<InstanceId> {
        let found = self.t.instances.get_hashed(hash, ty.0, key);
        match &self.delta {
            None => found.map(InstanceId),
            Some(d) => {
                let added = || {
                    (!d.instances.ids.is_empty())
                        .then(|| d.instances.ids.get(&(ty.0, key.to_owned())).copied())
                        .flatten()
                };
                live(found.or_else(added), &d.gone_instances).map(InstanceId)
            }
        }
    }

    pub(crate) fn instance_id(&self, ty: TypeId, key: &str) -> Option<InstanceId> {
        self.instance_hashed(self.instance_hash(ty, key), ty, key)
    }

    /// Whether `u` is a user of this snapshot (not one a write deleted).
    pub(crate) fn is_live_user(&self, u: UserId) -> bool {
        self.delta
            .as_ref()
            .is_none_or(|d| !d.gone_users.contains(&u.0))
    }

    // Names by id.

    pub(crate) fn user_key(&self, u: UserId) -> &str {
        match self.added(u.0, self.t.users.len(), |d| &d.users) {
            Some(k) => k,
            None => self.t.users.name(u.0),
        }
    }

    pub(crate) fn tenant_key(&self, t: TenantId) -> &str {
        match self.added(t.0, self.t.tenants.len(), |d| &d.tenants) {
            Some(k) => k,
            None => self.t.tenants.name(t.0),
        }
    }

    pub(crate) fn type_key(&self, ty: TypeId) -> &str {
        self.t.types.name(ty.0)
    }

    pub(crate) fn role_key(&self, r: RoleId) -> &str {
        self.t.roles.name(r.0)
    }

    pub(crate) fn resource_role_key(&self, ty: TypeId, r: ResourceRoleId) -> &str {
        self.t.type_info[ty.0 as usize].roles.name(r.0)
    }

    pub(crate) fn relation_key(&self, r: RelationId) -> &str {
        self.t.relations.name(r.0)
    }

    pub(crate) fn instance_key(&self, i: InstanceId) -> &str {
        match self.added(i.0, self.t.instances.len(), |d| &d.instances) {
            Some((_, k)) => k,
            None => self.t.instances.name(i.0),
        }
    }

    #[inline]
    pub(crate) fn instance_type(&self, i: InstanceId) -> TypeId {
        match self.added(i.0, self.t.instances.len(), |d| &d.instances) {
            Some(&(ty, _)) => TypeId(ty),
            None => TypeId(self.t.instances.scope(i.0)),
        }
    }

    /// The tenant an instance lives in, if its data says.
    pub(crate) fn instance_tenant(&self, i: InstanceId) -> Option<TenantId> {
        let written = self
            .delta
            .as_ref()
            .filter(|d| !d.inst_tenant.is_empty())
            .and_then(|d| d.inst_tenant.get(&i.0).copied());
        let t = written.unwrap_or_else(|| {
            self.t
                .inst_tenant
                .get(i.0 as usize)
                .copied()
                .unwrap_or(NONE)
        });
        (t != NONE).then_some(TenantId(t))
    }

    /// The key of an object a write added: `id` past the tables' `base`.
    fn added<K: Clone + std::hash::Hash + Eq>(
        &self,
        id: u32,
        base: usize,
        of: impl Fn(&Delta) -> &Added<K>,
    ) -> Option<&K> {
        if (id as usize) < base {
            return None;
        }
        of(self.delta.as_deref()?).key(base, id)
    }

    // Enumerations.

    pub(crate) fn all_users(&self) -> impl Iterator<Item = UserId> + '_ {
        let added = self.delta.as_ref().map_or(0, |d| d.users.keys.len());
        (0..(self.t.users.len() + added) as u32)
            .map(UserId)
            .filter(|&u| self.is_live_user(u))
    }

    pub(crate) fn all_tenants(&self) -> impl Iterator<Item = TenantId> + '_ {
        let added = self.delta.as_ref().map_or(0, |d| d.tenants.keys.len());
        (0..(self.t.tenants.len() + added) as u32)
            .filter(|t| {
                self.delta
                    .as_ref()
                    .is_none_or(|d| !d.gone_tenants.contains(t))
            })
            .map(TenantId)
    }

    pub(crate) fn all_types(&self) -> impl Iterator<Item = TypeId> + '_ {
        (0..self.t.types.len() as u32).map(TypeId)
    }

    pub(crate) fn actions(&self, ty: TypeId) -> impl Iterator<Item = ActionId> + '_ {
        (0..self.t.type_info[ty.0 as usize].actions.len() as u32).map(ActionId)
    }

    /// Instances of a type: the tables' in id order, then those writes added.
    pub(crate) fn instances_of(&self, ty: TypeId) -> impl Iterator<Item = InstanceId> + '_ {
        let added = self
            .delta
            .as_ref()
            .and_then(|d| d.type_instances.get(&ty.0))
            .into_iter()
            .flatten();
        self.t
            .type_instances
            .row(ty.0)
            .iter()
            .chain(added)
            .filter(|&&i| {
                self.delta
                    .as_ref()
                    .is_none_or(|d| !d.gone_instances.contains(&i))
            })
            .map(|&i| InstanceId(i))
    }

    /// How many instances a type has, about (for estimating work).
    pub(crate) fn instance_count(&self, ty: TypeId) -> usize {
        let added = self
            .delta
            .as_ref()
            .and_then(|d| d.type_instances.get(&ty.0))
            .map_or(0, |v| v.len());
        self.t.type_instances.row(ty.0).len() + added
    }

    // Grants.

    /// The tenant roles that grant `action` on `ty` (permissions flattened
    /// through `extends` and action groups).
    #[inline]
    pub(crate) fn tenant_grants(&self, ty: TypeId, action: ActionId) -> TenantGrants<'_> {
        TenantGrants(&self.t.type_info[ty.0 as usize].tenant_grants[action.0 as usize])
    }

    /// The resource roles of `ty` that grant `action`.
    #[inline]
    pub(crate) fn resource_roles_granting(
        &self,
        ty: TypeId,
        action: ActionId,
    ) -> impl Iterator<Item = ResourceRoleId> + '_ {
        self.t.type_info[ty.0 as usize].role_grants[action.0 as usize]
            .iter()
            .map(ResourceRoleId)
    }

    /// Every permission's name, `"type:action"`, sorted and as JSON
    /// strings: the sets below hold positions in it.
    pub(crate) fn perm_names(&self) -> &[Box<serde_json::value::RawValue>] {
        self.t.perms.names()
    }

    pub(crate) fn perm_rank(&self, ty: TypeId, a: ActionId) -> u32 {
        self.t.perms.rank(ty.0, a.0)
    }

    /// A tenant role's flattened grants, as positions in [`Snapshot::perm_names`].
    pub(crate) fn role_perm_set(&self, r: RoleId) -> &BitSet {
        self.t.perms.tenant_role(r.0)
    }

    /// The actions a resource role grants, as positions in [`Snapshot::perm_names`].
    pub(crate) fn resource_role_perm_set(&self, ty: TypeId, r: ResourceRoleId) -> &BitSet {
        self.t.perms.resource_role(ty.0, r.0)
    }

    /// The ABAC rules of `action` on `ty`.
    #[inline]
    pub(crate) fn abac_rules(
        &self,
        ty: TypeId,
        action: ActionId,
    ) -> impl ExactSizeIterator<Item = AbacRule> + '_ {
        self.t.type_info[ty.0 as usize].abac[action.0 as usize]
            .iter()
            .map(|&(user_set, resource_set)| AbacRule {
                user_set,
                resource_set,
            })
    }

    pub(crate) fn user_set(&self, id: u32) -> &UserSet {
        &self.t.user_sets[id as usize]
    }

    pub(crate) fn resource_set(&self, id: u32) -> &ResourceSet {
        &self.t.resource_sets[id as usize]
    }

    /// The rules that derive role `r` on instances of `ty`.
    pub(crate) fn derivations(
        &self,
        ty: TypeId,
        r: ResourceRoleId,
    ) -> impl Iterator<Item = Derivation> + '_ {
        self.t.type_info[ty.0 as usize].derive[r.0 as usize]
            .iter()
            .map(|d| Derivation {
                from_type: TypeId(d.from_type),
                from_role: ResourceRoleId(d.from_role),
                relation: RelationId(d.relation),
                no_direct: d.no_direct,
            })
    }

    /// The roles that role `r` on a `ty` instance derives on related ones.
    pub(crate) fn forwardings(
        &self,
        ty: TypeId,
        r: ResourceRoleId,
    ) -> impl Iterator<Item = Forwarding> + '_ {
        self.t.type_info[ty.0 as usize].forward[r.0 as usize]
            .iter()
            .map(|f| Forwarding {
                relation: RelationId(f.relation),
                to_type: TypeId(f.to_type),
                to_role: ResourceRoleId(f.to_role),
                no_direct: f.no_direct,
            })
    }

    // Facts.

    /// Row `id` of an index: the one a write left, else the tables'.
    #[inline]
    fn row<'a>(
        &'a self,
        base: &'a Csr<(u32, u32)>,
        over: impl Fn(&Delta) -> &Rows,
        id: u32,
    ) -> &'a [(u32, u32)] {
        match &self.delta {
            None => base.row(id),
            Some(d) => Delta::row(over(d), base, id),
        }
    }

    /// The user's tenant roles, `(tenant, role)` sorted by tenant.
    pub(crate) fn user_tenant_roles(
        &self,
        u: UserId,
    ) -> impl ExactSizeIterator<Item = (TenantId, RoleId)> + DoubleEndedIterator + Clone + '_ {
        self.row(&self.t.user_roles, |d| &d.user_roles, u.0)
            .iter()
            .map(|&(t, r)| (TenantId(t), RoleId(r)))
    }

    /// The user's tenant roles in tenant `t`.
    #[inline]
    pub(crate) fn tenant_roles(
        &self,
        u: UserId,
        t: TenantId,
    ) -> impl Iterator<Item = RoleId> + Clone + '_ {
        run(self.row(&self.t.user_roles, |d| &d.user_roles, u.0), t.0)
            .iter()
            .map(|&(_, r)| RoleId(r))
    }

    /// The users with a tenant role in `t`, `(user, role)`.
    pub(crate) fn tenant_members(
        &self,
        t: TenantId,
    ) -> impl ExactSizeIterator<Item = (UserId, RoleId)> + '_ {
        self.row(&self.t.tenant_users, |d| &d.tenant_users, t.0)
            .iter()
            .map(|&(u, r)| (UserId(u), RoleId(r)))
    }

    /// The user's direct resource roles on `inst`.
    #[inline]
    pub(crate) fn direct_roles(
        &self,
        u: UserId,
        inst: InstanceId,
    ) -> impl ExactSizeIterator<Item = ResourceRoleId> + Clone + '_ {
        run(
            self.row(&self.t.user_inst_roles, |d| &d.user_inst_roles, u.0),
            inst.0,
        )
        .iter()
        .map(|&(_, r)| ResourceRoleId(r))
    }

    /// The user's direct resource roles, read once for looking up several
    /// instances (a walk up a chain of them).
    #[inline]
    pub(crate) fn direct_roles_of(&self, u: UserId) -> DirectRoles<'_> {
        DirectRoles(self.row(&self.t.user_inst_roles, |d| &d.user_inst_roles, u.0))
    }

    /// Every direct resource role of the user, `(instance, role)`.
    pub(crate) fn user_instance_roles(
        &self,
        u: UserId,
    ) -> impl ExactSizeIterator<Item = (InstanceId, ResourceRoleId)> + '_ {
        self.row(&self.t.user_inst_roles, |d| &d.user_inst_roles, u.0)
            .iter()
            .map(|&(i, r)| (InstanceId(i), ResourceRoleId(r)))
    }

    /// The users with a direct role on `inst`, `(user, role)`.
    pub(crate) fn instance_members(
        &self,
        inst: InstanceId,
    ) -> impl Iterator<Item = (UserId, ResourceRoleId)> + '_ {
        self.row(&self.t.inst_users, |d| &d.inst_users, inst.0)
            .iter()
            .map(|&(u, r)| (UserId(u), ResourceRoleId(r)))
    }

    /// The subjects of tuples `subject —relation→ obj`.
    #[inline]
    pub(crate) fn subjects_of(
        &self,
        obj: InstanceId,
        relation: RelationId,
    ) -> impl Iterator<Item = InstanceId> + '_ {
        run(
            self.row(&self.t.tuples_in, |d| &d.tuples_in, obj.0),
            relation.0,
        )
        .iter()
        .map(|&(_, s)| InstanceId(s))
    }

    /// The tuples from `subject`, `(relation, object)`.
    pub(crate) fn objects_of(
        &self,
        subject: InstanceId,
    ) -> impl Iterator<Item = (RelationId, InstanceId)> + '_ {
        self.row(&self.t.tuples_out, |d| &d.tuples_out, subject.0)
            .iter()
            .map(|&(r, o)| (RelationId(r), InstanceId(o)))
    }

    /// Reads the first entry of each row a check of `action` by `user` on
    /// `inst` starts from: the user's tenant and instance roles, the tuples
    /// into the instance and, when the action has conditions, the user's
    /// and the instance's attributes. The value means nothing; the reads
    /// bring the rows into cache together rather than one after another as
    /// the models come to them (docs/performance.md).
    #[inline]
    pub(crate) fn prefetch_rows(
        &self,
        user: Option<UserId>,
        inst: Option<InstanceId>,
        conditions_of: Option<(TypeId, ActionId)>,
    ) -> u32 {
        fn first(row: &[(u32, u32)]) -> u32 {
            row.first().map_or(0, |&(a, _)| a)
        }
        let mut x = 0;
        if let Some(u) = user {
            x ^= first(self.t.user_roles.row(u.0)) ^ first(self.t.user_inst_roles.row(u.0));
        }
        if let Some(i) = inst {
            x ^= first(self.t.tuples_in.row(i.0));
        }
        let conditions = conditions_of
            .is_some_and(|(t, a)| !self.t.type_info[t.0 as usize].abac[a.0 as usize].is_empty());
        if conditions {
            if let Some(u) = user {
                x ^= first(self.t.user_attrs.row(u.0));
            }
            if let Some(i) = inst {
                x ^= first(self.t.inst_attrs.row(i.0));
            }
        }
        x
    }

    // Attributes and profiles: a write replaces an object's whole set.

    /// The attributes a write gave object `id`, if one did.
    #[inline]
    fn written_attrs(
        &self,
        of: impl Fn(&Delta) -> &super::delta::Layered<Arc<Map<String, Value>>>,
        id: u32,
    ) -> Option<&Map<String, Value>> {
        let d = self.delta.as_deref()?;
        let map = of(d);
        if map.is_empty() {
            return None;
        }
        map.get(&id).map(|m| &**m)
    }

    /// A stored attribute of a user.
    pub(crate) fn user_attr(&self, u: UserId, name: &str) -> Option<&Value> {
        match self.written_attrs(|d| &d.user_attrs, u.0) {
            Some(m) => m.get(name),
            None => self.t.attr(self.t.user_attrs.row(u.0), name),
        }
    }

    pub(crate) fn instance_attr(&self, i: InstanceId, name: &str) -> Option<&Value> {
        match self.written_attrs(|d| &d.inst_attrs, i.0) {
            Some(m) => m.get(name),
            None => self.t.attr(self.t.inst_attrs.row(i.0), name),
        }
    }

    pub(crate) fn tenant_attr(&self, t: TenantId, name: &str) -> Option<&Value> {
        match self.written_attrs(|d| &d.tenant_attrs, t.0) {
            Some(m) => m.get(name),
            None => self.t.attr(self.t.tenant_attrs.row(t.0), name),
        }
    }

    pub(crate) fn tenant_attrs_map(&self, t: TenantId) -> Map<String, Value> {
        match self.written_attrs(|d| &d.tenant_attrs, t.0) {
            Some(m) => m.clone(),
            None => self.t.attrs_map(self.t.tenant_attrs.row(t.0)),
        }
    }

    /// An object's stored attributes, `(name, value)` sorted by name,
    /// borrowed: for comparing objects, or writing them out, without a copy.
    fn attrs_list<'a>(
        &'a self,
        of: impl Fn(&Delta) -> &super::delta::Layered<Arc<Map<String, Value>>>,
        rows: &'a super::AttrRows,
        id: u32,
    ) -> Vec<(&'a str, &'a Value)> {
        let mut list: Vec<(&str, &Value)> = match self.written_attrs(of, id) {
            Some(m) => m.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            None => rows
                .row(id)
                .iter()
                .map(|&(n, v)| (self.t.attr_names.name(n), self.t.values.get(v)))
                .collect(),
        };
        list.sort_unstable_by_key(|&(k, _)| k);
        list
    }

    pub(crate) fn user_attrs_list(&self, u: UserId) -> Vec<(&str, &Value)> {
        self.attrs_list(|d| &d.user_attrs, &self.t.user_attrs, u.0)
    }

    pub(crate) fn tenant_attrs_list(&self, t: TenantId) -> Vec<(&str, &Value)> {
        self.attrs_list(|d| &d.tenant_attrs, &self.t.tenant_attrs, t.0)
    }

    pub(crate) fn instance_attrs_list(&self, i: InstanceId) -> Vec<(&str, &Value)> {
        self.attrs_list(|d| &d.inst_attrs, &self.t.inst_attrs, i.0)
    }

    /// A user's `email`, `first_name` or `last_name`, if stored.
    pub(crate) fn user_profile(&self, u: UserId, field: &str) -> Option<&Value> {
        let at = match field {
            "email" => 0,
            "first_name" => 1,
            "last_name" => 2,
            _ => return None,
        };
        if let Some(p) = self
            .delta
            .as_ref()
            .filter(|d| !d.profiles.is_empty())
            .and_then(|d| d.profiles.get(&u.0))
        {
            return p[at].as_ref();
        }
        let p = self.t.profiles.get(u.0 as usize)?;
        self.t.values.opt([p.email, p.first_name, p.last_name][at])
    }
}

/// `id` unless a write deleted it.
#[inline]
fn live(id: Option<u32>, gone: &super::delta::Gone) -> Option<u32> {
    id.filter(|i| !gone.contains(i))
}
