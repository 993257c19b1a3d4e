//! `GET /local/role_assignments`: the serving snapshot's role assignments,
//! filtered and paged, as Permit's PDP lists its local cache (contract
//! §1.12). The order is fixed for a snapshot: by user, each user's tenant
//! roles, then their instance roles, users and tenants in the order the
//! snapshot numbered them (the order the document or the sync named them).

use serde::Serialize;

use crate::snapshot::{Snapshot, UserId};

/// One assignment. `resource_instance` (`type:key`) only on an instance
/// role; its `tenant` is then the instance's (`default` when the snapshot
/// does not know the instance's tenant).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalAssignment<'s> {
    pub user: &'s str,
    pub role: &'s str,
    pub tenant: &'s str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_instance: Option<String>,
}

/// The filters; each absent one matches everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AssignmentFilter<'q> {
    pub user: Option<&'q str>,
    pub role: Option<&'q str>,
    pub tenant: Option<&'q str>,
    /// A resource type: only instance roles on that type match.
    pub resource: Option<&'q str>,
    /// `type:key`, or a bare key: only roles on that instance match.
    pub resource_instance: Option<&'q str>,
}

impl AssignmentFilter<'_> {
    fn tenant_roles_can_match(&self) -> bool {
        self.resource.is_none() && self.resource_instance.is_none()
    }
}

/// The assignments matching `filter`, after skipping `offset` of them, at
/// most `limit`; and whether more follow.
pub fn local_role_assignments<'s>(
    snap: &'s Snapshot,
    filter: &AssignmentFilter,
    offset: usize,
    limit: usize,
) -> (Vec<LocalAssignment<'s>>, bool) {
    let mut out = Vec::with_capacity(limit.min(100));
    let mut skipped = 0;
    let users: Box<dyn Iterator<Item = UserId>> = match filter.user {
        Some(key) => Box::new(snap.user_id(key).into_iter()),
        None => Box::new(snap.all_users()),
    };
    for u in users {
        // Tenant roles, then instance roles: the matches of one user, in
        // order, without building a row that the offset skips.
        let tenant_rows = snap
            .user_tenant_roles(u)
            .filter(|_| filter.tenant_roles_can_match())
            .filter(|&(t, r)| {
                filter.role.is_none_or(|f| snap.role_key(r) == f)
                    && filter.tenant.is_none_or(|f| snap.tenant_key(t) == f)
            })
            .map(|(t, r)| (snap.tenant_key(t), snap.role_key(r), None));
        let instance_rows = snap.user_instance_roles(u).filter_map(|(i, r)| {
            let (ty, key) = (snap.instance_type(i), snap.instance_key(i));
            let (type_key, role) = (snap.type_key(ty), snap.resource_role_key(ty, r));
            let tenant = snap
                .instance_tenant(i)
                .map_or("default", |t| snap.tenant_key(t));
            let matches = filter.role.is_none_or(|f| role == f)
                && filter.tenant.is_none_or(|f| tenant == f)
                && filter.resource.is_none_or(|f| type_key == f)
                && filter
                    .resource_instance
                    .is_none_or(|f| match f.split_once(':') {
                        Some((fty, fkey)) => type_key == fty && key == fkey,
                        None => key == f,
                    });
            matches.then_some((tenant, role, Some((type_key, key))))
        });
        for (tenant, role, inst) in tenant_rows.chain(instance_rows) {
            if skipped < offset {
                skipped += 1;
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(LocalAssignment {
                user: snap.user_key(u),
                role,
                tenant,
                resource_instance: inst.map(|(ty, key)| format!("{ty}:{key}")),
            });
        }
    }
    (out, false)
}

/// About how many rows [`local_role_assignments`] visits: the user's, or
/// every assignment.
pub fn local_role_assignments_work(snap: &Snapshot, filter: &AssignmentFilter) -> usize {
    match filter.user {
        Some(key) => snap.user_id(key).map_or(0, |u| {
            snap.user_tenant_roles(u).len() + snap.user_instance_roles(u).len()
        }),
        None => {
            let c = snap.counts();
            c.tenant_role_assignments + c.instance_role_assignments
        }
    }
}
