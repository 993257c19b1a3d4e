//! The multi-answer endpoints (§6): `/allowed/all-tenants`,
//! `/user-tenants`, `/user-permissions` and `/authorized_users`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use hashbrown::HashSet;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::attrs::{resource_set_matches, user_set_matches, AttrCtx};
use super::check::check_in;
use super::walk::{all_instance_roles, has_role, push_derivation_sources, WalkStack};
use super::{AllowedQuery, AuthorizedUsersQuery, UserPermissionsQuery, UserTenantsQuery};
use crate::snapshot::{
    BitSet, InstanceId, ResourceRoleId, ResourceSet, RoleId, Snapshot, TenantId, TypeId, UserId,
};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantInfo {
    pub key: String,
    pub attributes: Map<String, Value>,
}

fn tenant_info(snap: &Snapshot, t: TenantId) -> TenantInfo {
    TenantInfo {
        key: snap.tenant_key(t).to_owned(),
        attributes: snap.tenant_attrs_map(t),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AllowedTenant {
    pub allow: bool,
    pub result: bool,
    pub tenant: TenantInfo,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AllTenantsResponse {
    pub allowed_tenants: Vec<AllowedTenant>,
}

/// The user's tenants (with a tenant role), sorted by key.
fn user_tenant_ids(snap: &Snapshot, u: UserId) -> Vec<TenantId> {
    let mut ts: Vec<TenantId> = snap.user_tenant_roles(u).map(|(t, _)| t).collect();
    ts.dedup();
    ts.sort_unstable_by(|&a, &b| snap.tenant_key(a).cmp(snap.tenant_key(b)));
    ts
}

/// `POST /allowed/all-tenants`.
pub fn allowed_tenants(snap: &Snapshot, q: &AllowedQuery) -> AllTenantsResponse {
    let candidates = match snap.user_id(&q.user.key) {
        Some(u) => user_tenant_ids(snap, u),
        None => {
            let mut all: Vec<TenantId> = snap.all_tenants().collect();
            all.sort_unstable_by(|&a, &b| snap.tenant_key(a).cmp(snap.tenant_key(b)));
            all
        }
    };
    let allowed_tenants = candidates
        .into_iter()
        .filter(|&t| check_in(snap, q, Some(snap.tenant_key(t))).allow)
        .map(|t| AllowedTenant {
            allow: true,
            result: true,
            tenant: tenant_info(snap, t),
        })
        .collect();
    AllTenantsResponse { allowed_tenants }
}

pub type UserTenantsResponse = Vec<TenantInfo>;

/// `POST /user-tenants`.
pub fn user_tenants(snap: &Snapshot, q: &UserTenantsQuery) -> UserTenantsResponse {
    match snap.user_id(&q.user.key) {
        Some(u) => user_tenant_ids(snap, u)
            .into_iter()
            .map(|t| tenant_info(snap, t))
            .collect(),
        None => Vec::new(),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PermTenant<'s> {
    pub key: &'s str,
    #[serde(skip_serializing_if = "AttrList::is_empty")]
    pub attributes: AttrList<'s>,
}

/// An object's attributes, borrowed from the snapshot and written as a
/// JSON object (sorted by name).
#[derive(Debug, Clone, PartialEq)]
pub struct AttrList<'s>(pub Vec<(&'s str, &'s Value)>);

impl AttrList<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for AttrList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().copied())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PermResource<'s> {
    pub key: &'s str,
    #[serde(rename = "type")]
    pub kind: &'s str,
    pub attributes: AttrList<'s>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PermissionEntry<'s> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<PermTenant<'s>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<PermResource<'s>>,
    pub permissions: PermSet<'s>,
    /// Borrowed from the snapshot, as the permission names are: an answer
    /// names the same few roles and actions many times over.
    pub roles: BTreeSet<&'s str>,
}

/// Permissions, as positions in the snapshot's sorted list of their
/// names ([`Snapshot::perm_names`]): a role's grants are added as one set,
/// and the names are written in order without being made or sorted.
#[derive(Clone)]
pub struct PermSet<'s> {
    names: &'s [Box<RawValue>],
    ranks: BitSet,
}

impl<'s> PermSet<'s> {
    fn new(snap: &'s Snapshot) -> Self {
        PermSet {
            names: snap.perm_names(),
            ranks: BitSet::with_len(snap.perm_names().len()),
        }
    }

    fn add(&mut self, ranks: &BitSet) {
        self.ranks.union_with(ranks);
    }

    fn insert(&mut self, rank: u32) {
        self.ranks.insert(rank);
    }

    /// The names, sorted, as JSON strings.
    fn json(&self) -> impl Iterator<Item = &'s RawValue> + '_ {
        self.ranks.iter().map(|r| &*self.names[r as usize])
    }
}

/// Equal when they name the same permissions.
impl PartialEq for PermSet<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.json()
            .map(RawValue::get)
            .eq(other.json().map(RawValue::get))
    }
}

impl fmt::Debug for PermSet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_set()
            .entries(self.json().map(RawValue::get))
            .finish()
    }
}

impl Serialize for PermSet<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.json())
    }
}

pub type UserPermissionsResponse<'s> = BTreeMap<String, PermissionEntry<'s>>;

fn listed(filter: &[String], plain: &str, prefixed: &str) -> bool {
    filter.iter().any(|f| f == plain || f == prefixed)
}

/// `POST /user-permissions`.
pub fn user_permissions<'s>(
    snap: &'s Snapshot,
    q: &UserPermissionsQuery,
) -> UserPermissionsResponse<'s> {
    let mut out = UserPermissionsResponse::new();
    let user = snap.user_id(&q.user.key);
    // Instance tenants for the tenant filter: entry key → tenant key.
    let mut inst_tenant_of: BTreeMap<String, Option<String>> = BTreeMap::new();
    let by_tenant = q.tenants.is_some();

    if let Some(u) = user {
        for t in user_tenant_ids(snap, u) {
            let mut entry = tenant_entry(snap, t);
            for r in snap.tenant_roles(u, t) {
                entry.roles.insert(snap.role_key(r));
                entry.permissions.add(snap.role_perm_set(r));
            }
            out.insert(format!("__tenant:{}", snap.tenant_key(t)), entry);
        }
        for (inst, roles) in all_instance_roles(snap, u) {
            let ty = snap.instance_type(inst);
            let key = format!("{}:{}", snap.type_key(ty), snap.instance_key(inst));
            if by_tenant {
                inst_tenant_of.insert(key.clone(), inst_tenant_key(snap, inst));
            }
            let entry = out.entry(key).or_insert_with(|| instance_entry(snap, inst));
            for r in roles {
                entry.roles.insert(snap.resource_role_key(ty, r));
                entry.permissions.add(snap.resource_role_perm_set(ty, r));
            }
        }
    }

    if q.context.get("enable_abac_user_permissions") == Some(&Value::Bool(true)) {
        add_abac_permissions(snap, q, user, &mut out, &mut inst_tenant_of);
    }

    out.retain(|key, _| {
        let tenant_entry = key.strip_prefix("__tenant:");
        match tenant_entry {
            Some(t) => {
                if let Some(f) = &q.tenants {
                    if !listed(f, t, key) {
                        return false;
                    }
                } else if let Some(f) = &q.resources {
                    if !listed(f, t, key) {
                        return false;
                    }
                }
                match &q.resource_types {
                    Some(f) => f.iter().any(|x| x == "__tenant"),
                    None => true,
                }
            }
            None => {
                let (ty, ikey) = key.split_once(':').unwrap_or((key, ""));
                if let Some(f) = &q.tenants {
                    match inst_tenant_of.get(key).cloned().flatten() {
                        Some(t) if listed(f, &t, &format!("__tenant:{t}")) => {}
                        _ => return false,
                    }
                }
                if let Some(f) = &q.resources {
                    if !listed(f, key, ikey) {
                        return false;
                    }
                }
                match &q.resource_types {
                    Some(f) => f.iter().any(|x| x == ty),
                    None => true,
                }
            }
        }
    });
    out
}

fn tenant_entry(snap: &Snapshot, t: TenantId) -> PermissionEntry<'_> {
    PermissionEntry {
        tenant: Some(PermTenant {
            key: snap.tenant_key(t),
            attributes: AttrList(snap.tenant_attrs_list(t)),
        }),
        resource: None,
        permissions: PermSet::new(snap),
        roles: BTreeSet::new(),
    }
}

fn instance_entry(snap: &Snapshot, inst: InstanceId) -> PermissionEntry<'_> {
    PermissionEntry {
        tenant: None,
        resource: Some(PermResource {
            key: snap.instance_key(inst),
            kind: snap.type_key(snap.instance_type(inst)),
            attributes: AttrList(snap.instance_attrs_list(inst)),
        }),
        permissions: PermSet::new(snap),
        roles: BTreeSet::new(),
    }
}

fn inst_tenant_key(snap: &Snapshot, inst: InstanceId) -> Option<String> {
    snap.instance_tenant(inst)
        .map(|t| snap.tenant_key(t).to_owned())
}

/// ABAC grants for `/user-permissions` (§6), only on request.
fn add_abac_permissions<'s>(
    snap: &'s Snapshot,
    q: &UserPermissionsQuery,
    user: Option<UserId>,
    out: &mut UserPermissionsResponse<'s>,
    inst_tenant_of: &mut BTreeMap<String, Option<String>>,
) {
    let mut tenants: BTreeSet<TenantId> = user
        .map(|u| user_tenant_ids(snap, u).into_iter().collect())
        .unwrap_or_default();
    for t in q.tenants.iter().flatten() {
        let t = t.strip_prefix("__tenant:").unwrap_or(t);
        if let Some(id) = snap.tenant_id(t) {
            tenants.insert(id);
        }
    }
    let empty = Map::new();
    let ctx_in = |t: TenantId, ty: TypeId| {
        AttrCtx::for_listing(
            snap,
            &q.user.key,
            &q.user.attributes,
            &q.context,
            &empty,
            user,
            t,
            snap.tenant_key(t),
            ty,
        )
    };
    for ty in snap.all_types() {
        for a in snap.actions(ty) {
            for rule in snap.abac_rules(ty, a) {
                let (us, rs) = (rule.user_set, rule.resource_set);
                let perm = snap.perm_rank(ty, a);
                match snap.resource_set(rs) {
                    ResourceSet::Type(_) => {
                        for &t in &tenants {
                            if user_set_matches(snap, us, &ctx_in(t, ty)) {
                                out.entry(format!("__tenant:{}", snap.tenant_key(t)))
                                    .or_insert_with(|| tenant_entry(snap, t))
                                    .permissions
                                    .insert(perm);
                            }
                        }
                    }
                    // One pass over the type's instances, not one per
                    // tenant: the work is the instances, whatever the
                    // number of tenants asked for.
                    ResourceSet::Cond(..) => {
                        for inst in snap.instances_of(ty) {
                            let Some(t) =
                                snap.instance_tenant(inst).filter(|t| tenants.contains(t))
                            else {
                                continue;
                            };
                            let key = snap.instance_key(inst);
                            // Exactly what /allowed would see on this instance.
                            let ictx = ctx_in(t, ty).on_instance(key, inst);
                            if user_set_matches(snap, us, &ictx)
                                && resource_set_matches(snap, rs, &ictx)
                            {
                                let ekey = format!("{}:{}", snap.type_key(ty), key);
                                out.entry(ekey.clone())
                                    .or_insert_with(|| instance_entry(snap, inst))
                                    .permissions
                                    .insert(perm);
                                inst_tenant_of.insert(ekey, Some(snap.tenant_key(t).to_owned()));
                            }
                        }
                    }
                    ResourceSet::Never => {}
                }
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuthorizedAssignment {
    pub user: String,
    pub tenant: String,
    pub resource: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuthorizedUsersResponse {
    pub resource: String,
    pub tenant: String,
    pub users: BTreeMap<String, Vec<AuthorizedAssignment>>,
}

/// `POST /authorized_users` (§6; ABAC is never included).
pub fn authorized_users(snap: &Snapshot, q: &AuthorizedUsersQuery) -> AuthorizedUsersResponse {
    let tenant_key = q.resource.tenant.as_deref().unwrap_or("default");
    let ty_key: &str = &q.resource.kind;
    let mut resp = AuthorizedUsersResponse {
        resource: match q.resource.key.as_deref() {
            Some(k) => format!("{ty_key}:{k}"),
            None => format!("{ty_key}:*"),
        },
        tenant: tenant_key.to_owned(),
        users: BTreeMap::new(),
    };
    let Some(ty) = snap.type_id(ty_key) else {
        return resp;
    };
    let Some(a) = snap.action_id(ty, &q.action) else {
        return resp;
    };
    let tenant_res = format!("__tenant:{tenant_key}");
    if let Some(t) = snap.tenant_id(tenant_key) {
        let grants = snap.tenant_grants(ty, a);
        let mut found: Vec<(UserId, RoleId)> = snap
            .tenant_members(t)
            .filter(|&(_, r)| grants.contains(r))
            .collect();
        found.sort_unstable_by(|x, y| snap.role_key(x.1).cmp(snap.role_key(y.1)));
        for (u, r) in found {
            let user = snap.user_key(u).to_owned();
            resp.users
                .entry(user.clone())
                .or_default()
                .push(AuthorizedAssignment {
                    user,
                    tenant: tenant_key.to_owned(),
                    resource: tenant_res.clone(),
                    role: snap.role_key(r).to_owned(),
                });
        }
    }
    let inst = q
        .resource
        .key
        .as_deref()
        .and_then(|k| snap.instance_id(ty, k))
        // As for a check (§4): an instance of another tenant gives no one
        // an instance role in this one.
        .filter(|&i| {
            snap.instance_tenant(i)
                .is_none_or(|it| snap.tenant_id(tenant_key) == Some(it))
        });
    if let Some(inst) = inst {
        let mut goal_roles: Vec<ResourceRoleId> = snap.resource_roles_granting(ty, a).collect();
        goal_roles.sort_unstable_by(|&x, &y| {
            snap.resource_role_key(ty, x)
                .cmp(snap.resource_role_key(ty, y))
        });
        for u in rebac_candidates(snap, inst, ty, &goal_roles) {
            for &r in &goal_roles {
                if has_role(snap, u, inst, ty, std::iter::once(r)) {
                    let user = snap.user_key(u).to_owned();
                    resp.users
                        .entry(user.clone())
                        .or_default()
                        .push(AuthorizedAssignment {
                            user,
                            tenant: tenant_key.to_owned(),
                            resource: resp.resource.clone(),
                            role: snap.resource_role_key(ty, r).to_owned(),
                        });
                }
            }
        }
    }
    resp
}

// ---------------------------------------------------------------------------
// Work estimates: about how many rows and checks a listing will take, read
// off the snapshot's indexes before it runs, so that the long ones can be
// moved off the async workers (`http::HeavyWork`). Not exact; the same
// order of magnitude.

/// [`user_permissions`]: the user's rows; with ABAC, for each rule, the
/// tenants, or the instances of its type.
pub fn user_permissions_work(snap: &Snapshot, q: &UserPermissionsQuery) -> usize {
    let user = snap.user_id(&q.user.key);
    let rows = user.map_or(0, |u| {
        snap.user_tenant_roles(u).len() + snap.user_instance_roles(u).len()
    });
    if q.context.get("enable_abac_user_permissions") != Some(&Value::Bool(true)) {
        return rows;
    }
    let tenants = user.map_or(0, |u| snap.user_tenant_roles(u).len())
        + q.tenants.as_ref().map_or(0, Vec::len);
    let mut work = rows;
    for ty in snap.all_types() {
        for a in snap.actions(ty) {
            for rule in snap.abac_rules(ty, a) {
                work += match snap.resource_set(rule.resource_set) {
                    ResourceSet::Cond(..) => snap.instance_count(ty),
                    ResourceSet::Type(_) => tenants,
                    ResourceSet::Never => 0,
                };
            }
        }
    }
    work
}

/// [`allowed_tenants`]: a check per candidate tenant.
pub fn allowed_tenants_work(snap: &Snapshot, q: &AllowedQuery) -> usize {
    match snap.user_id(&q.user.key) {
        Some(u) => snap.user_tenant_roles(u).len(),
        None => snap.all_tenants().count(),
    }
}

/// [`user_tenants`]: the user's tenant rows.
pub fn user_tenants_work(snap: &Snapshot, q: &UserTenantsQuery) -> usize {
    snap.user_id(&q.user.key)
        .map_or(0, |u| snap.user_tenant_roles(u).len())
}

/// [`authorized_users`]: the tenant's members; with an instance named,
/// twice that, for the walk up its derivations (its cost is the members of
/// the instances on the way, which no index counts up front).
pub fn authorized_users_work(snap: &Snapshot, q: &AuthorizedUsersQuery) -> usize {
    // The tenant `authorized_users` lists.
    let tenant = q.resource.tenant.as_deref().unwrap_or("default");
    let members = snap
        .tenant_id(tenant)
        .map_or(0, |t| snap.tenant_members(t).len());
    match q.resource.key {
        Some(_) => 2 * members.max(1),
        None => members,
    }
}

/// Users with a direct role somewhere on a derivation path into `inst`:
/// a superset of those holding a `goal` role there, each then checked exactly.
fn rebac_candidates(
    snap: &Snapshot,
    inst: InstanceId,
    ty: TypeId,
    goal: &[ResourceRoleId],
) -> BTreeSet<UserId> {
    let mut stack: WalkStack = goal.iter().map(|&r| (inst, ty, r)).collect();
    let mut seen: HashSet<(InstanceId, ResourceRoleId)> = HashSet::new();
    let mut users = BTreeSet::new();
    while let Some((i, t, r)) = stack.pop() {
        if !seen.insert((i, r)) {
            continue;
        }
        users.extend(
            snap.instance_members(i)
                .filter(|&(_, ur)| ur == r)
                .map(|(u, _)| u),
        );
        // Unconstrained: every candidate is checked exactly afterwards.
        push_derivation_sources(snap, &mut stack, i, t, r, false);
    }
    users
}
