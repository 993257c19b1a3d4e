//! The attributes ABAC conditions see (§5.1): the request's, then the
//! snapshot's, then the built-in ones, layered without merging maps.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::walk::tenant_roles;
use super::AllowedQuery;
use crate::abac::{self, Attributes, Entity};
use crate::snapshot::{ResourceSet, Snapshot, UserSet};

/// Attributes visible to conditions, layered as in §5.1 without merging maps.
pub(super) struct AttrCtx<'a> {
    snap: &'a Snapshot,
    user: Option<u32>,
    user_key: &'a str,
    user_input: &'a Map<String, Value>,
    tenant: Option<u32>,
    tenant_key: &'a str,
    ty: u32,
    res_key: Option<&'a str>,
    inst: Option<u32>,
    res_input: &'a Map<String, Value>,
    ctx_top: &'a Map<String, Value>,
    ctx_res: &'a Map<String, Value>,
}

impl<'a> AttrCtx<'a> {
    pub(super) fn new(
        snap: &'a Snapshot,
        q: &'a AllowedQuery,
        user: Option<u32>,
        tenant: Option<u32>,
        tenant_key: &'a str,
        ty: u32,
        inst: Option<u32>,
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

    fn user_has_role_in_tenant(&self) -> bool {
        match (self.user, self.tenant) {
            (Some(u), Some(t)) => tenant_roles(self.snap, u, t).next().is_some(),
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
                let stored = self.user.map(|u| snap.user_attrs.row(u));
                if let Some(v) = snap.attr(stored.unwrap_or_default(), name) {
                    return Some(Cow::Borrowed(v));
                }
                let info = self.user.map(|u| &snap.profiles[u as usize]);
                match name {
                    "key" => owned(self.user_key),
                    "email" => snap.values.opt(info?.email).map(Cow::Borrowed),
                    "first_name" => snap.values.opt(info?.first_name).map(Cow::Borrowed),
                    "last_name" => snap.values.opt(info?.last_name).map(Cow::Borrowed),
                    "roles" => {
                        let roles: Vec<u32> = match (self.user, self.tenant) {
                            (Some(u), Some(t)) => tenant_roles(snap, u, t).collect(),
                            _ => Vec::new(),
                        };
                        Some(Cow::Owned(sorted_strings(
                            roles.iter().map(|&r| snap.roles.name(r)),
                        )))
                    }
                    "tenants" => {
                        let row = self
                            .user
                            .map(|u| snap.user_roles.row(u))
                            .unwrap_or_default();
                        Some(Cow::Owned(sorted_strings(
                            row.iter().map(|&(t, _)| snap.tenants.name(t)),
                        )))
                    }
                    _ => None,
                }
            }
            Entity::Resource => {
                if let Some(v) = self.res_input.get(name) {
                    return Some(Cow::Borrowed(v));
                }
                let stored = self.inst.map(|i| snap.inst_attrs.row(i));
                if let Some(v) = snap.attr(stored.unwrap_or_default(), name) {
                    return Some(Cow::Borrowed(v));
                }
                match name {
                    "type" => owned(snap.types.name(self.ty)),
                    "key" => self.res_key.and_then(owned),
                    "tenant" => owned(self.tenant_key),
                    _ => None,
                }
            }
            Entity::Tenant => {
                if self.user_has_role_in_tenant() {
                    let stored = self.tenant.map(|t| snap.tenant_attrs.row(t));
                    if let Some(v) = snap.attr(stored.unwrap_or_default(), name) {
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
    match &snap.user_sets[us as usize] {
        UserSet::Role(Some(role)) => match (ctx.user, ctx.tenant) {
            (Some(u), Some(t)) => tenant_roles(snap, u, t).any(|r| r == *role),
            _ => false,
        },
        UserSet::Role(None) => false,
        UserSet::Cond(c) => abac::eval(c, ctx),
    }
}

pub(super) fn resource_set_matches(snap: &Snapshot, rs: u32, ctx: &AttrCtx) -> bool {
    match &snap.resource_sets[rs as usize] {
        ResourceSet::Type(t) => *t == ctx.ty,
        ResourceSet::Cond(t, c) => *t == ctx.ty && abac::eval(c, ctx),
        ResourceSet::Never => false,
    }
}
