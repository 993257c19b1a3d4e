//! The attributes ABAC conditions see (§5.1): the request's, then the
//! snapshot's, then the built-in ones, layered without merging maps.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::AllowedQuery;
use crate::abac::{self, Attributes, Entity};
use crate::snapshot::{InstanceId, ResourceSet, Snapshot, TenantId, TypeId, UserId, UserSet};

/// Attributes visible to conditions, layered as in §5.1 without merging maps.
#[derive(Clone, Copy)]
pub(super) struct AttrCtx<'a> {
    snap: &'a Snapshot,
    user: Option<UserId>,
    user_key: &'a str,
    user_input: &'a Map<String, Value>,
    tenant: Option<TenantId>,
    tenant_key: &'a str,
    ty: TypeId,
    res_key: Option<&'a str>,
    inst: Option<InstanceId>,
    res_input: &'a Map<String, Value>,
    ctx_top: &'a Map<String, Value>,
    ctx_res: &'a Map<String, Value>,
}

impl<'a> AttrCtx<'a> {
    pub(super) fn new(
        snap: &'a Snapshot,
        q: &'a AllowedQuery,
        user: Option<UserId>,
        tenant: Option<TenantId>,
        tenant_key: &'a str,
        ty: TypeId,
        inst: Option<InstanceId>,
    ) -> Self {
        let res_key = q.resource.key.as_deref();
        AttrCtx {
            snap,
            user,
            user_key: &q.user.key,
            user_input: &q.user.attributes,
            tenant,
            tenant_key,
            ty,
            res_key,
            inst,
            res_input: &q.resource.attributes,
            ctx_top: &q.context,
            ctx_res: &q.resource.context,
        }
    }

    /// What `/user-permissions` evaluates a rule in: the request's user and
    /// context, and a resource of `ty` in `tenant` with no attributes of its
    /// own, as a check on the type would see it. Borrowed, not copied: the
    /// request's maps may be large and this is made per tenant and rule.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn for_listing(
        snap: &'a Snapshot,
        user_key: &'a str,
        user_input: &'a Map<String, Value>,
        context: &'a Map<String, Value>,
        empty: &'a Map<String, Value>,
        user: Option<UserId>,
        tenant: TenantId,
        tenant_key: &'a str,
        ty: TypeId,
    ) -> Self {
        AttrCtx {
            snap,
            user,
            user_key,
            user_input,
            tenant: Some(tenant),
            tenant_key,
            ty,
            res_key: None,
            inst: None,
            res_input: empty,
            ctx_top: context,
            ctx_res: empty,
        }
    }

    /// The same on instance `inst`, keyed `key`, as a check on it would see.
    pub(super) fn on_instance(self, key: &'a str, inst: InstanceId) -> Self {
        AttrCtx {
            res_key: Some(key),
            inst: Some(inst),
            ..self
        }
    }

    fn user_has_role_in_tenant(&self) -> bool {
        match (self.user, self.tenant) {
            (Some(u), Some(t)) => self.snap.tenant_roles(u, t).next().is_some(),
            _ => false,
        }
    }
}

fn sorted_strings<'s>(items: impl Iterator<Item = &'s str>) -> Value {
    let set: BTreeSet<&str> = items.collect();
    Value::Array(
        set.into_iter()
            .map(|s| Value::String(s.to_owned()))
            .collect(),
    )
}

impl Attributes for AttrCtx<'_> {
    fn attribute(&self, entity: Entity, name: &str) -> Option<Cow<'_, Value>> {
        let snap = self.snap;
        let owned = |s: &str| Some(Cow::Owned(Value::String(s.to_owned())));
        match entity {
            Entity::User => {
                if let Some(v) = self.user_input.get(name) {
                    return Some(Cow::Borrowed(v));
                }
                if let Some(v) = self.user.and_then(|u| snap.user_attr(u, name)) {
                    return Some(Cow::Borrowed(v));
                }
                match name {
                    "key" => owned(self.user_key),
                    "email" | "first_name" | "last_name" => self
                        .user
                        .and_then(|u| snap.user_profile(u, name))
                        .map(Cow::Borrowed),
                    "roles" => {
                        let roles = match (self.user, self.tenant) {
                            (Some(u), Some(t)) => Some(snap.tenant_roles(u, t)),
                            _ => None,
                        };
                        Some(Cow::Owned(sorted_strings(
                            roles.into_iter().flatten().map(|r| snap.role_key(r)),
                        )))
                    }
                    "tenants" => {
                        let rows = self.user.map(|u| snap.user_tenant_roles(u));
                        Some(Cow::Owned(sorted_strings(
                            rows.into_iter().flatten().map(|(t, _)| snap.tenant_key(t)),
                        )))
                    }
                    _ => None,
                }
            }
            Entity::Resource => {
                if let Some(v) = self.res_input.get(name) {
                    return Some(Cow::Borrowed(v));
                }
                if let Some(v) = self.inst.and_then(|i| snap.instance_attr(i, name)) {
                    return Some(Cow::Borrowed(v));
                }
                match name {
                    "type" => owned(snap.type_key(self.ty)),
                    "key" => self.res_key.and_then(owned),
                    "tenant" => owned(self.tenant_key),
                    _ => None,
                }
            }
            Entity::Tenant => {
                if self.user_has_role_in_tenant() {
                    if let Some(v) = self.tenant.and_then(|t| snap.tenant_attr(t, name)) {
                        return Some(Cow::Borrowed(v));
                    }
                }
                (name == "key").then(|| Cow::Owned(Value::String(self.tenant_key.to_owned())))
            }
            Entity::Context => self
                .ctx_res
                .get(name)
                .or_else(|| self.ctx_top.get(name))
                .map(Cow::Borrowed),
        }
    }
}

pub(super) fn user_set_matches(snap: &Snapshot, us: u32, ctx: &AttrCtx) -> bool {
    match snap.user_set(us) {
        UserSet::Role(Some(role)) => match (ctx.user, ctx.tenant) {
            (Some(u), Some(t)) => snap.tenant_roles(u, t).any(|r| r == *role),
            _ => false,
        },
        UserSet::Role(None) => false,
        UserSet::Cond(c) => abac::eval(c, ctx),
    }
}

pub(super) fn resource_set_matches(snap: &Snapshot, rs: u32, ctx: &AttrCtx) -> bool {
    match snap.resource_set(rs) {
        ResourceSet::Type(t) => *t == ctx.ty,
        ResourceSet::Cond(t, c) => *t == ctx.ty && abac::eval(c, ctx),
        ResourceSet::Never => false,
    }
}
