//! `/allowed` and `/allowed/bulk`: the hot path. A check looks each id up
//! once ([`Ids`]), starts the misses of the rows it will read together
//! ([`Ids::first_rows`]), then decides RBAC, ReBAC and ABAC (§2-§5).

use super::attrs::{resource_set_matches, user_set_matches, AttrCtx};
use super::walk::has_role;
use super::{deny, AllowedQuery, Decision, Reason, ABAC, RBAC, REBAC};
use crate::snapshot::{ActionId, InstanceId, Snapshot, TenantId, TypeId, UserId};

/// `POST /allowed`: RBAC ∪ ReBAC ∪ ABAC (§2).
pub fn check(snap: &Snapshot, q: &AllowedQuery) -> Decision {
    check_in(snap, q, q.resource.tenant.as_deref())
}

/// `POST /allowed/bulk`: `check` on each query, decided in passes so that
/// the cache misses of different checks overlap.
///
/// Deciding one check at a time, the CPU waits on each check's misses in
/// turn: a lookup in the user table, one in the instance table, then the
/// rows they lead to. Here each pass does one kind of step for every check:
/// the small tables (types, tenants, actions) and the key hashes; the user
/// table; the instance table; the first entry of each row a decision starts
/// from; the decisions. Each pass's steps are short and independent of one
/// another, so many misses are in flight at once (the measurements are in
/// docs/performance.md).
pub fn check_bulk(snap: &Snapshot, qs: &[AllowedQuery]) -> Vec<Decision> {
    let mut ids: Vec<Ids> = qs
        .iter()
        .map(|q| Ids::small(snap, q, q.resource.tenant.as_deref()))
        .collect();
    let hashes: Vec<KeyHashes> = qs
        .iter()
        .zip(&ids)
        .map(|(q, i)| i.key_hashes(snap, q))
        .collect();
    for ((q, i), h) in qs.iter().zip(&mut ids).zip(&hashes) {
        i.find_user(snap, q, h);
    }
    for ((q, i), h) in qs.iter().zip(&mut ids).zip(&hashes) {
        i.find_instance(snap, q, h);
    }
    let first = ids.iter().fold(0, |acc, i| acc ^ i.first_rows(snap));
    // The reads are the point; keep them from being optimised away.
    std::hint::black_box(first);
    qs.iter()
        .zip(ids)
        .map(|(q, ids)| check_with(snap, q, q.resource.tenant.as_deref(), ids))
        .collect()
}

/// Hashes of a query's keys in the user and instance tables.
struct KeyHashes {
    user: u64,
    /// 0 when there is no instance to look up.
    inst: u64,
}

/// The snapshot ids a check starts from, each looked up once.
#[derive(Debug, Clone, Copy)]
struct Ids {
    user: Option<UserId>,
    tenant: Option<TenantId>,
    ty: Option<TypeId>,
    inst: Option<InstanceId>,
    action: Option<ActionId>,
}

impl Ids {
    /// Both keys are hashed before either large table is probed, so the
    /// two probes' cache misses overlap (docs/performance.md).
    fn of(snap: &Snapshot, q: &AllowedQuery, tenant: Option<&str>) -> Ids {
        let mut ids = Ids::small(snap, q, tenant);
        let hashes = ids.key_hashes(snap, q);
        ids.find_user(snap, q, &hashes);
        ids.find_instance(snap, q, &hashes);
        ids
    }

    /// The hashes of the user key and (once the type is known) the
    /// instance key, for `find_user` and `find_instance`.
    fn key_hashes(&self, snap: &Snapshot, q: &AllowedQuery) -> KeyHashes {
        KeyHashes {
            user: snap.user_hash(&q.user.key),
            inst: match (self.ty, q.resource.key.as_deref()) {
                (Some(t), Some(k)) => snap.instance_hash(t, k),
                _ => 0,
            },
        }
    }

    fn find_user(&mut self, snap: &Snapshot, q: &AllowedQuery, h: &KeyHashes) {
        self.user = snap.user_hashed(h.user, &q.user.key);
    }

    fn find_instance(&mut self, snap: &Snapshot, q: &AllowedQuery, h: &KeyHashes) {
        if let (Some(t), Some(k)) = (self.ty, q.resource.key.as_deref()) {
            self.inst = snap.instance_hashed(h.inst, t, k);
        }
    }

    /// The ids from the small tables (types, tenants, a type's actions),
    /// which stay in cache; the user and instance are left to look up.
    fn small(snap: &Snapshot, q: &AllowedQuery, tenant: Option<&str>) -> Ids {
        let ty = snap.type_id(&q.resource.kind);
        Ids {
            user: None,
            tenant: tenant.and_then(|t| snap.tenant_id(t)),
            ty,
            inst: None,
            action: ty.and_then(|t| snap.action_id(t, &q.action)),
        }
    }

    /// Brings the rows this check will read into cache
    /// ([`Snapshot::prefetch_rows`]).
    fn first_rows(&self, snap: &Snapshot) -> u32 {
        snap.prefetch_rows(self.user, self.inst, self.ty.zip(self.action))
    }
}

pub(super) fn check_in(snap: &Snapshot, q: &AllowedQuery, tenant: Option<&str>) -> Decision {
    let ids = Ids::of(snap, q, tenant);
    std::hint::black_box(ids.first_rows(snap));
    check_with(snap, q, tenant, ids)
}

fn check_with(snap: &Snapshot, q: &AllowedQuery, tenant: Option<&str>, ids: Ids) -> Decision {
    let Some(tenant_key) = tenant.filter(|t| !t.is_empty()) else {
        return deny(Reason::NoTenant);
    };
    let Ids {
        user,
        tenant,
        ty,
        inst,
        action,
    } = ids;
    let (Some(ty), Some(action)) = (ty, action) else {
        return deny(match (user, tenant, ty) {
            (None, _, _) => Reason::UserNotSynced,
            (_, None, _) => Reason::NoSuchTenant,
            (_, _, None) => Reason::NoSuchResource,
            _ => Reason::NoSuchAction,
        });
    };
    let mut sources = 0;

    // RBAC (§3).
    if let (Some(u), Some(t)) = (user, tenant) {
        let grants = snap.tenant_grants(ty, action);
        if snap.tenant_roles(u, t).any(|r| grants.contains(r)) {
            sources |= RBAC;
        }
    }
    // ReBAC (§4): an instance known to live in another tenant grants no
    // instance role in this one.
    let in_tenant = |inst: InstanceId| {
        snap.instance_tenant(inst)
            .is_none_or(|it| Some(it) == tenant)
    };
    if let (Some(u), Some(inst)) = (user, inst.filter(|&i| in_tenant(i))) {
        if has_role(snap, u, inst, ty, snap.resource_roles_granting(ty, action)) {
            sources |= REBAC;
        }
    }
    // ABAC (§5).
    let mut rules = snap.abac_rules(ty, action);
    if rules.len() > 0 {
        let ctx = AttrCtx::new(snap, q, user, tenant, tenant_key, ty, inst);
        if rules.any(|rule| {
            user_set_matches(snap, rule.user_set, &ctx)
                && resource_set_matches(snap, rule.resource_set, &ctx)
        }) {
            sources |= ABAC;
        }
    }

    if sources != 0 {
        return Decision {
            allow: true,
            sources,
            reason: Reason::Allow,
        };
    }
    deny(match (user, tenant) {
        (None, _) => Reason::UserNotSynced,
        (_, None) => Reason::NoSuchTenant,
        _ => Reason::NoPermission,
    })
}
