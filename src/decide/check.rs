//! `/allowed` and `/allowed/bulk`: the hot path. A check looks each id up
//! once ([`Ids`]), starts the misses of the rows it will read together
//! ([`Ids::first_rows`]), then decides RBAC, ReBAC and ABAC (§2-§5).

use super::attrs::{resource_set_matches, user_set_matches, AttrCtx};
use super::walk::{has_role, tenant_roles};
use super::{deny, AllowedQuery, Decision, Reason, ABAC, RBAC, REBAC};
use crate::snapshot::Snapshot;

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
/// another, so many misses are in flight at once. On the load benchmark's
/// bulk bodies over `large` (1M assignments), a tight loop took ~1.0 µs per
/// check: 0.63-0.69 times the one-at-a-time loop it replaced, and 0.87
/// times `check` since `check` too hashes both keys first and reads its
/// rows up front.
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
    user: Option<u32>,
    tenant: Option<u32>,
    ty: Option<u32>,
    inst: Option<u32>,
    action: Option<u32>,
}

impl Ids {
    /// Both keys are hashed before either large table is probed, so the
    /// two probes' cache misses overlap: 0.88-0.93 times the time of
    /// looking each up in turn, per check over `large` (a tight loop over
    /// the load benchmark's 20,000 `/allowed` bodies, three runs).
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
            user: snap.users.hash_in(0, &q.user.key),
            inst: match (self.ty, q.resource.key.as_deref()) {
                (Some(t), Some(k)) => snap.instances.hash_in(t, k),
                _ => 0,
            },
        }
    }

    fn find_user(&mut self, snap: &Snapshot, q: &AllowedQuery, h: &KeyHashes) {
        self.user = snap.users.get_hashed(h.user, 0, &q.user.key);
    }

    fn find_instance(&mut self, snap: &Snapshot, q: &AllowedQuery, h: &KeyHashes) {
        if let (Some(t), Some(k)) = (self.ty, q.resource.key.as_deref()) {
            self.inst = snap.instances.get_hashed(h.inst, t, k);
        }
    }

    /// The ids from the small tables (types, tenants, a type's actions),
    /// which stay in cache; the user and instance are left to look up.
    fn small(snap: &Snapshot, q: &AllowedQuery, tenant: Option<&str>) -> Ids {
        let ty = snap.types.get(&q.resource.kind);
        Ids {
            user: None,
            tenant: tenant.and_then(|t| snap.tenants.get(t)),
            ty,
            inst: None,
            action: ty.and_then(|t| snap.type_info[t as usize].actions.get(&q.action)),
        }
    }

    /// Reads the first entry of each row a decision starts from: the user's
    /// tenant roles and instance roles, the instance's incoming tuples and,
    /// when the action has conditions, the user's and the instance's
    /// attributes. The value means nothing; the reads bring the rows into
    /// cache.
    fn first_rows(&self, snap: &Snapshot) -> u32 {
        let first = |row: &[(u32, u32)]| row.first().map_or(0, |&(a, _)| a);
        let mut x = 0;
        if let Some(u) = self.user {
            x ^= first(snap.user_roles.row(u)) ^ first(snap.user_inst_roles.row(u));
        }
        if let Some(inst) = self.inst {
            x ^= first(snap.tuples_in.row(inst));
        }
        let conditions = match (self.ty, self.action) {
            (Some(t), Some(a)) => !snap.type_info[t as usize].abac[a as usize].is_empty(),
            _ => false,
        };
        if conditions {
            if let Some(u) = self.user {
                x ^= first(snap.user_attrs.row(u));
            }
            if let Some(inst) = self.inst {
                x ^= first(snap.inst_attrs.row(inst));
            }
        }
        x
    }
}

/// The instance a query names on type `ty`, if the snapshot has it.
pub(super) fn instance_of(snap: &Snapshot, ty: u32, q: &AllowedQuery) -> Option<u32> {
    snap.instance(ty, q.resource.key.as_deref()?)
}

pub(super) fn check_in(snap: &Snapshot, q: &AllowedQuery, tenant: Option<&str>) -> Decision {
    let ids = Ids::of(snap, q, tenant);
    // The rows' misses start together here instead of one after another as
    // the models come to read them: 0.80-0.85 times the time per check over
    // `large` (a tight loop over the 20,000 `/allowed` bodies, three runs).
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
    let info = &snap.type_info[ty as usize];
    let mut sources = 0;

    // RBAC (§3).
    if let (Some(u), Some(t)) = (user, tenant) {
        let grants = &info.tenant_grants[action as usize];
        if tenant_roles(snap, u, t).any(|r| grants.contains(r)) {
            sources |= RBAC;
        }
    }
    // ReBAC (§4).
    if let (Some(u), Some(inst)) = (user, inst) {
        if has_role(snap, u, inst, ty, &info.role_grants[action as usize]) {
            sources |= REBAC;
        }
    }
    // ABAC (§5).
    let rules = &info.abac[action as usize];
    if !rules.is_empty() {
        let ctx = AttrCtx::new(snap, q, user, tenant, tenant_key, ty, inst);
        if rules.iter().any(|&(us, rs)| {
            user_set_matches(snap, us, &ctx) && resource_set_matches(snap, rs, &ctx)
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
