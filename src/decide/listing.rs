//! The multi-answer endpoints (§6): `/allowed/all-tenants`,
//! `/user-tenants`, `/user-permissions` and `/authorized_users`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use hashbrown::HashSet;
use serde::Serialize;
use serde_json::{Map, Value};

use super::attrs::{resource_set_matches, user_set_matches, AttrCtx};
use super::check::{check_in, instance_of};
use super::walk::{all_instance_roles, has_role, push_derivation_sources, WalkStack};
use super::{
    AllowedQuery, AuthorizedUsersQuery, ResourceInput, Str, UserPermissionsQuery, UserTenantsQuery,
};
use crate::snapshot::{BitSet, ResourceSet, Snapshot, NONE};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantInfo {
    pub key: String,
    pub attributes: Map<String, Value>,
}

fn tenant_info(snap: &Snapshot, t: u32) -> TenantInfo {
    TenantInfo {
        key: snap.tenants.name(t).to_owned(),
        attributes: snap.attrs_map(snap.tenant_attrs.row(t)),
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
fn user_tenant_ids(snap: &Snapshot, u: u32) -> Vec<u32> {
    let mut ts: Vec<u32> = snap.user_roles.row(u).iter().map(|&(t, _)| t).collect();
    ts.dedup();
    ts.sort_unstable_by(|&a, &b| snap.tenants.name(a).cmp(snap.tenants.name(b)));
    ts
}

/// `POST /allowed/all-tenants`.
pub fn allowed_tenants(snap: &Snapshot, q: &AllowedQuery) -> AllTenantsResponse {
    let candidates = match snap.users.get(&q.user.key) {
        Some(u) => user_tenant_ids(snap, u),
        None => {
            let mut all: Vec<u32> = (0..snap.tenants.len() as u32).collect();
            all.sort_unstable_by(|&a, &b| snap.tenants.name(a).cmp(snap.tenants.name(b)));
            all
        }
    };
    let allowed_tenants = candidates
        .into_iter()
        .filter(|&t| check_in(snap, q, Some(snap.tenants.name(t))).allow)
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
    match snap.users.get(&q.user.key) {
        Some(u) => user_tenant_ids(snap, u)
            .into_iter()
            .map(|t| tenant_info(snap, t))
            .collect(),
        None => Vec::new(),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PermTenant {
    pub key: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PermResource {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub attributes: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PermissionEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<PermTenant>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<PermResource>,
    pub permissions: BTreeSet<String>,
    pub roles: BTreeSet<String>,
}

pub type UserPermissionsResponse = BTreeMap<String, PermissionEntry>;

fn listed(filter: &[String], plain: &str, prefixed: &str) -> bool {
    filter.iter().any(|f| f == plain || f == prefixed)
}

/// `POST /user-permissions`.
pub fn user_permissions(snap: &Snapshot, q: &UserPermissionsQuery) -> UserPermissionsResponse {
    let mut out = UserPermissionsResponse::new();
    let user = snap.users.get(&q.user.key);
    // Instance tenants for the tenant filter: entry key → tenant key.
    let mut inst_tenant_of: BTreeMap<String, Option<String>> = BTreeMap::new();

    if let Some(u) = user {
        let row = snap.user_roles.row(u);
        for t in user_tenant_ids(snap, u) {
            let mut entry = tenant_entry(snap, t);
            for (_, r) in row.iter().filter(|&&(tn, _)| tn == t) {
                entry.roles.insert(snap.roles.name(*r).to_owned());
                for &(ty, a) in &snap.role_perms[*r as usize] {
                    entry.permissions.insert(perm_name(snap, ty, a));
                }
            }
            out.insert(format!("__tenant:{}", snap.tenants.name(t)), entry);
        }
        for (inst, roles) in all_instance_roles(snap, u) {
            let ty = snap.instances.scope(inst);
            let info = &snap.type_info[ty as usize];
            let key = format!("{}:{}", snap.types.name(ty), snap.instances.name(inst));
            let entry = out
                .entry(key.clone())
                .or_insert_with(|| instance_entry(snap, inst));
            for r in roles {
                entry.roles.insert(info.roles.name(r).to_owned());
                for a in info.role_actions[r as usize].iter() {
                    entry.permissions.insert(perm_name(snap, ty, a));
                }
            }
            inst_tenant_of.insert(key, inst_tenant_key(snap, inst));
        }
    }

    if q.context.get("enable_abac_user_permissions") == Some(&Value::Bool(true)) {
        add_abac_permissions(snap, q, user, &mut out, &mut inst_tenant_of);
    }

    out.retain(|key, _| {
        let tenant_entry = key.strip_prefix("__tenant:");
        match tenant_entry {
            Some(t) => {
                let prefixed = format!("__tenant:{t}");
                if let Some(f) = &q.tenants {
                    if !listed(f, t, &prefixed) {
                        return false;
                    }
                } else if let Some(f) = &q.resources {
                    if !listed(f, t, &prefixed) {
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

fn perm_name(snap: &Snapshot, ty: u32, a: u32) -> String {
    format!(
        "{}:{}",
        snap.types.name(ty),
        snap.type_info[ty as usize].actions.name(a)
    )
}

fn tenant_entry(snap: &Snapshot, t: u32) -> PermissionEntry {
    let info = tenant_info(snap, t);
    PermissionEntry {
        tenant: Some(PermTenant {
            key: info.key,
            attributes: info.attributes,
        }),
        resource: None,
        permissions: BTreeSet::new(),
        roles: BTreeSet::new(),
    }
}

fn instance_entry(snap: &Snapshot, inst: u32) -> PermissionEntry {
    PermissionEntry {
        tenant: None,
        resource: Some(PermResource {
            key: snap.instances.name(inst).to_owned(),
            kind: snap.types.name(snap.instances.scope(inst)).to_owned(),
            attributes: snap.attrs_map(snap.inst_attrs.row(inst)),
        }),
        permissions: BTreeSet::new(),
        roles: BTreeSet::new(),
    }
}

fn inst_tenant_key(snap: &Snapshot, inst: u32) -> Option<String> {
    let t = snap.inst_tenant[inst as usize];
    (t != NONE).then(|| snap.tenants.name(t).to_owned())
}

/// ABAC grants for `/user-permissions` (§6), only on request.
fn add_abac_permissions(
    snap: &Snapshot,
    q: &UserPermissionsQuery,
    user: Option<u32>,
    out: &mut UserPermissionsResponse,
    inst_tenant_of: &mut BTreeMap<String, Option<String>>,
) {
    let mut tenants: BTreeSet<u32> = user
        .map(|u| user_tenant_ids(snap, u).into_iter().collect())
        .unwrap_or_default();
    for t in q.tenants.iter().flatten() {
        let t = t.strip_prefix("__tenant:").unwrap_or(t);
        if let Some(id) = snap.tenants.get(t) {
            tenants.insert(id);
        }
    }
    for t in tenants {
        let tenant_key = snap.tenants.name(t);
        for (ty, info) in snap.type_info.iter().enumerate() {
            let ty = ty as u32;
            for (a, rules) in info.abac.iter().enumerate() {
                for &(us, rs) in rules {
                    let base = AllowedQuery {
                        user: q.user.clone(),
                        action: Str(Cow::Borrowed(info.actions.name(a as u32))),
                        resource: ResourceInput {
                            kind: Str(Cow::Borrowed(snap.types.name(ty))),
                            tenant: Some(Str(Cow::Borrowed(tenant_key))),
                            ..ResourceInput::default()
                        },
                        context: q.context.clone(),
                    };
                    let inst = instance_of(snap, ty, &base);
                    let ctx = AttrCtx::new(snap, &base, user, Some(t), tenant_key, ty, inst);
                    let perm = perm_name(snap, ty, a as u32);
                    match &snap.resource_sets[rs as usize] {
                        ResourceSet::Type(_) => {
                            if !user_set_matches(snap, us, &ctx) {
                                continue;
                            }
                            out.entry(format!("__tenant:{tenant_key}"))
                                .or_insert_with(|| tenant_entry(snap, t))
                                .permissions
                                .insert(perm);
                        }
                        ResourceSet::Cond(..) => {
                            for inst in snap.instances_of_type(Some(ty)) {
                                if snap.inst_tenant[inst as usize] != t {
                                    continue;
                                }
                                let key = snap.instances.name(inst);
                                let mut iq = base.clone();
                                iq.resource.key = Some(Str(Cow::Borrowed(key)));
                                // Exactly what /allowed would see on this instance.
                                let iinst = instance_of(snap, ty, &iq);
                                let ictx =
                                    AttrCtx::new(snap, &iq, user, Some(t), tenant_key, ty, iinst);
                                if user_set_matches(snap, us, &ictx)
                                    && resource_set_matches(snap, rs, &ictx)
                                {
                                    let ekey = format!("{}:{}", snap.types.name(ty), key);
                                    out.entry(ekey.clone())
                                        .or_insert_with(|| instance_entry(snap, inst))
                                        .permissions
                                        .insert(perm.clone());
                                    inst_tenant_of.insert(ekey, Some(tenant_key.to_owned()));
                                }
                            }
                        }
                        ResourceSet::Never => {}
                    }
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
    let Some(ty) = snap.types.get(ty_key) else {
        return resp;
    };
    let info = &snap.type_info[ty as usize];
    let Some(a) = info.actions.get(&q.action) else {
        return resp;
    };
    let tenant_res = format!("__tenant:{tenant_key}");
    if let Some(t) = snap.tenants.get(tenant_key) {
        let grants = &info.tenant_grants[a as usize];
        let mut found: Vec<(u32, u32)> = snap
            .tenant_users
            .row(t)
            .iter()
            .copied()
            .filter(|&(_, r)| grants.contains(r))
            .collect();
        found.sort_unstable_by(|x, y| snap.roles.name(x.1).cmp(snap.roles.name(y.1)));
        for (u, r) in found {
            let user = snap.users.name(u).to_owned();
            resp.users
                .entry(user.clone())
                .or_default()
                .push(AuthorizedAssignment {
                    user,
                    tenant: tenant_key.to_owned(),
                    resource: tenant_res.clone(),
                    role: snap.roles.name(r).to_owned(),
                });
        }
    }
    let inst = q.resource.key.as_deref().and_then(|k| snap.instance(ty, k));
    if let Some(inst) = inst {
        let goal = &info.role_grants[a as usize];
        let mut goal_roles: Vec<u32> = goal.iter().collect();
        goal_roles.sort_unstable_by(|&x, &y| info.roles.name(x).cmp(info.roles.name(y)));
        for u in rebac_candidates(snap, inst, ty, goal) {
            for &r in &goal_roles {
                let mut one = BitSet::with_len(info.roles.len());
                one.insert(r);
                if has_role(snap, u, inst, ty, &one) {
                    let user = snap.users.name(u).to_owned();
                    resp.users
                        .entry(user.clone())
                        .or_default()
                        .push(AuthorizedAssignment {
                            user,
                            tenant: tenant_key.to_owned(),
                            resource: resp.resource.clone(),
                            role: info.roles.name(r).to_owned(),
                        });
                }
            }
        }
    }
    resp
}

/// Users with a direct role somewhere on a derivation path into `inst`:
/// a superset of those holding a `goal` role there, each then checked exactly.
fn rebac_candidates(snap: &Snapshot, inst: u32, ty: u32, goal: &BitSet) -> BTreeSet<u32> {
    let mut stack: WalkStack = goal.iter().map(|r| (inst, ty, r)).collect();
    let mut seen: HashSet<(u32, u32)> = HashSet::new();
    let mut users = BTreeSet::new();
    while let Some((i, t, r)) = stack.pop() {
        if !seen.insert((i, r)) {
            continue;
        }
        users.extend(
            snap.inst_users
                .row(i)
                .iter()
                .filter(|&&(_, ur)| ur == r)
                .map(|&(u, _)| u),
        );
        // Unconstrained: every candidate is checked exactly afterwards.
        push_derivation_sources(snap, &mut stack, i, t, r, false);
    }
    users
}
