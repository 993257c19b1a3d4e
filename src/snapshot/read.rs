//! What a decision reads from a snapshot: lookups by key that return typed
//! ids, and rows by typed id. `decide` sees the snapshot only through
//! these; the tables behind them, and the invariants they keep (rows
//! sorted, ids dense), stay in this module.

use serde_json::{Map, Value};

use super::ids::{
    ActionId, InstanceId, RelationId, ResourceRoleId, RoleId, TenantId, TypeId, UserId,
};
use super::{BitSet, ResourceSet, Snapshot, UserSet, NONE};

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

/// The prefix of a sorted row whose first field is `key`.
fn run<K: Ord + Copy, V>(row: &[(K, V)], key: K) -> &[(K, V)] {
    let start = row.partition_point(|&(k, _)| k < key);
    let end = start + row[start..].partition_point(|&(k, _)| k == key);
    &row[start..end]
}

impl Snapshot {
    // Lookups by key.

    #[inline]
    pub(crate) fn user_hash(&self, key: &str) -> u64 {
        self.users.hash_in(0, key)
    }

    /// The user `key`, with `hash` from [`Snapshot::user_hash`]: hashing
    /// first lets the table probes of several keys overlap.
    #[inline]
    pub(crate) fn user_hashed(&self, hash: u64, key: &str) -> Option<UserId> {
        self.users.get_hashed(hash, 0, key).map(UserId)
    }

    pub(crate) fn user_id(&self, key: &str) -> Option<UserId> {
        self.users.get(key).map(UserId)
    }

    #[inline]
    pub(crate) fn tenant_id(&self, key: &str) -> Option<TenantId> {
        self.tenants.get(key).map(TenantId)
    }

    #[inline]
    pub(crate) fn type_id(&self, key: &str) -> Option<TypeId> {
        self.types.get(key).map(TypeId)
    }

    #[inline]
    pub(crate) fn action_id(&self, ty: TypeId, key: &str) -> Option<ActionId> {
        self.type_info[ty.0 as usize].actions.get(key).map(ActionId)
    }

    #[inline]
    pub(crate) fn instance_hash(&self, ty: TypeId, key: &str) -> u64 {
        self.instances.hash_in(ty.0, key)
    }

    /// The instance `key` of `ty`, with `hash` from [`Snapshot::instance_hash`].
    #[inline]
    pub(crate) fn instance_hashed(&self, hash: u64, ty: TypeId, key: &str) -> Option<InstanceId> {
        self.instances.get_hashed(hash, ty.0, key).map(InstanceId)
    }

    pub(crate) fn instance_id(&self, ty: TypeId, key: &str) -> Option<InstanceId> {
        self.instances.get_in(ty.0, key).map(InstanceId)
    }

    // Names by id.

    pub(crate) fn user_key(&self, u: UserId) -> &str {
        self.users.name(u.0)
    }

    pub(crate) fn tenant_key(&self, t: TenantId) -> &str {
        self.tenants.name(t.0)
    }

    pub(crate) fn type_key(&self, ty: TypeId) -> &str {
        self.types.name(ty.0)
    }

    pub(crate) fn role_key(&self, r: RoleId) -> &str {
        self.roles.name(r.0)
    }

    pub(crate) fn resource_role_key(&self, ty: TypeId, r: ResourceRoleId) -> &str {
        self.type_info[ty.0 as usize].roles.name(r.0)
    }

    pub(crate) fn action_key(&self, ty: TypeId, a: ActionId) -> &str {
        self.type_info[ty.0 as usize].actions.name(a.0)
    }

    pub(crate) fn instance_key(&self, i: InstanceId) -> &str {
        self.instances.name(i.0)
    }

    #[inline]
    pub(crate) fn instance_type(&self, i: InstanceId) -> TypeId {
        TypeId(self.instances.scope(i.0))
    }

    /// The tenant an instance lives in, if its data says.
    pub(crate) fn instance_tenant(&self, i: InstanceId) -> Option<TenantId> {
        let t = self.inst_tenant[i.0 as usize];
        (t != NONE).then_some(TenantId(t))
    }

    // Enumerations.

    pub(crate) fn all_users(&self) -> impl Iterator<Item = UserId> + '_ {
        (0..self.users.len() as u32).map(UserId)
    }

    pub(crate) fn all_tenants(&self) -> impl Iterator<Item = TenantId> + '_ {
        (0..self.tenants.len() as u32).map(TenantId)
    }

    pub(crate) fn all_types(&self) -> impl Iterator<Item = TypeId> + '_ {
        (0..self.types.len() as u32).map(TypeId)
    }

    pub(crate) fn actions(&self, ty: TypeId) -> impl Iterator<Item = ActionId> + '_ {
        (0..self.type_info[ty.0 as usize].actions.len() as u32).map(ActionId)
    }

    /// Instances of a type, in id order.
    pub(crate) fn instances_of(
        &self,
        ty: TypeId,
    ) -> impl ExactSizeIterator<Item = InstanceId> + '_ {
        self.type_instances.row(ty.0).iter().map(|&i| InstanceId(i))
    }

    // Grants.

    /// The tenant roles that grant `action` on `ty` (permissions flattened
    /// through `extends` and action groups).
    #[inline]
    pub(crate) fn tenant_grants(&self, ty: TypeId, action: ActionId) -> TenantGrants<'_> {
        TenantGrants(&self.type_info[ty.0 as usize].tenant_grants[action.0 as usize])
    }

    /// The resource roles of `ty` that grant `action`.
    #[inline]
    pub(crate) fn resource_roles_granting(
        &self,
        ty: TypeId,
        action: ActionId,
    ) -> impl Iterator<Item = ResourceRoleId> + '_ {
        self.type_info[ty.0 as usize].role_grants[action.0 as usize]
            .iter()
            .map(ResourceRoleId)
    }

    /// The actions a resource role grants on its type.
    pub(crate) fn resource_role_actions(
        &self,
        ty: TypeId,
        r: ResourceRoleId,
    ) -> impl Iterator<Item = ActionId> + '_ {
        self.type_info[ty.0 as usize].role_actions[r.0 as usize]
            .iter()
            .map(ActionId)
    }

    /// A tenant role's `(type, action)` grants, flattened.
    pub(crate) fn role_permissions(
        &self,
        r: RoleId,
    ) -> impl Iterator<Item = (TypeId, ActionId)> + '_ {
        self.role_perms[r.0 as usize]
            .iter()
            .map(|&(t, a)| (TypeId(t), ActionId(a)))
    }

    /// The ABAC rules of `action` on `ty`.
    #[inline]
    pub(crate) fn abac_rules(
        &self,
        ty: TypeId,
        action: ActionId,
    ) -> impl ExactSizeIterator<Item = AbacRule> + '_ {
        self.type_info[ty.0 as usize].abac[action.0 as usize]
            .iter()
            .map(|&(user_set, resource_set)| AbacRule {
                user_set,
                resource_set,
            })
    }

    pub(crate) fn user_set(&self, id: u32) -> &UserSet {
        &self.user_sets[id as usize]
    }

    pub(crate) fn resource_set(&self, id: u32) -> &ResourceSet {
        &self.resource_sets[id as usize]
    }

    /// The rules that derive role `r` on instances of `ty`.
    pub(crate) fn derivations(
        &self,
        ty: TypeId,
        r: ResourceRoleId,
    ) -> impl Iterator<Item = Derivation> + '_ {
        self.type_info[ty.0 as usize].derive[r.0 as usize]
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
        self.type_info[ty.0 as usize].forward[r.0 as usize]
            .iter()
            .map(|f| Forwarding {
                relation: RelationId(f.relation),
                to_type: TypeId(f.to_type),
                to_role: ResourceRoleId(f.to_role),
                no_direct: f.no_direct,
            })
    }

    // Facts.

    /// The user's tenant roles, `(tenant, role)` sorted by tenant.
    pub(crate) fn user_tenant_roles(
        &self,
        u: UserId,
    ) -> impl ExactSizeIterator<Item = (TenantId, RoleId)> + DoubleEndedIterator + Clone + '_ {
        self.user_roles
            .row(u.0)
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
        run(self.user_roles.row(u.0), t.0)
            .iter()
            .map(|&(_, r)| RoleId(r))
    }

    /// The users with a tenant role in `t`, `(user, role)`.
    pub(crate) fn tenant_members(
        &self,
        t: TenantId,
    ) -> impl ExactSizeIterator<Item = (UserId, RoleId)> + '_ {
        self.tenant_users
            .row(t.0)
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
        run(self.user_inst_roles.row(u.0), inst.0)
            .iter()
            .map(|&(_, r)| ResourceRoleId(r))
    }

    /// Every direct resource role of the user, `(instance, role)`.
    pub(crate) fn user_instance_roles(
        &self,
        u: UserId,
    ) -> impl ExactSizeIterator<Item = (InstanceId, ResourceRoleId)> + '_ {
        self.user_inst_roles
            .row(u.0)
            .iter()
            .map(|&(i, r)| (InstanceId(i), ResourceRoleId(r)))
    }

    /// The users with a direct role on `inst`, `(user, role)`.
    pub(crate) fn instance_members(
        &self,
        inst: InstanceId,
    ) -> impl Iterator<Item = (UserId, ResourceRoleId)> + '_ {
        self.inst_users
            .row(inst.0)
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
        run(self.tuples_in.row(obj.0), relation.0)
            .iter()
            .map(|&(_, s)| InstanceId(s))
    }

    /// The tuples from `subject`, `(relation, object)`.
    pub(crate) fn objects_of(
        &self,
        subject: InstanceId,
    ) -> impl Iterator<Item = (RelationId, InstanceId)> + '_ {
        self.tuples_out
            .row(subject.0)
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
            x ^= first(self.user_roles.row(u.0)) ^ first(self.user_inst_roles.row(u.0));
        }
        if let Some(i) = inst {
            x ^= first(self.tuples_in.row(i.0));
        }
        let conditions = conditions_of
            .is_some_and(|(t, a)| !self.type_info[t.0 as usize].abac[a.0 as usize].is_empty());
        if conditions {
            if let Some(u) = user {
                x ^= first(self.user_attrs.row(u.0));
            }
            if let Some(i) = inst {
                x ^= first(self.inst_attrs.row(i.0));
            }
        }
        x
    }

    // Attributes and profiles.

    /// A stored attribute of a user.
    pub(crate) fn user_attr(&self, u: UserId, name: &str) -> Option<&Value> {
        self.attr(self.user_attrs.row(u.0), name)
    }

    pub(crate) fn instance_attr(&self, i: InstanceId, name: &str) -> Option<&Value> {
        self.attr(self.inst_attrs.row(i.0), name)
    }

    pub(crate) fn tenant_attr(&self, t: TenantId, name: &str) -> Option<&Value> {
        self.attr(self.tenant_attrs.row(t.0), name)
    }

    pub(crate) fn tenant_attrs_map(&self, t: TenantId) -> Map<String, Value> {
        self.attrs_map(self.tenant_attrs.row(t.0))
    }

    pub(crate) fn instance_attrs_map(&self, i: InstanceId) -> Map<String, Value> {
        self.attrs_map(self.inst_attrs.row(i.0))
    }

    /// A user's `email`, `first_name` or `last_name`, if stored.
    pub(crate) fn user_profile(&self, u: UserId, field: &str) -> Option<&Value> {
        let p = &self.profiles[u.0 as usize];
        let id = match field {
            "email" => p.email,
            "first_name" => p.first_name,
            "last_name" => p.last_name,
            _ => return None,
        };
        self.values.opt(id)
    }
}
