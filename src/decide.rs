//! Decisions: pure functions from a snapshot and a query to an answer.
//!
//! No I/O, no async, no logging, no locks: everything a decision needs is in
//! the [`Snapshot`]. The query types deserialize from exactly the JSON bodies
//! of the Permit PDP endpoints (borrowing strings from the request body where
//! it can), and every answer serializes to exactly the endpoint's response.
//! The rules are those of `docs/semantics.md`; the section numbers below
//! refer to it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use hashbrown::HashSet;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::abac::{self, Attributes, Entity};
use crate::model::nullable;
use crate::snapshot::{BitSet, ResourceSet, Snapshot, UserSet, NONE};

/// A string borrowed from the request body when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// `null`, absent or `""` → `None`.
fn opt_str<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Str<'a>>, D::Error> {
    Ok(Option::<Str<'a>>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// The `user` of a query: an object with a `key`, or (decision 7) a bare key.
#[derive(Debug, Clone, Default)]
pub struct UserInput<'a> {
    pub key: Str<'a>,
    pub attributes: Map<String, Value>,
}

#[derive(Deserialize)]
struct UserObject<'a> {
    #[serde(borrow)]
    key: Str<'a>,
    #[serde(default, deserialize_with = "nullable")]
    attributes: Map<String, Value>,
}

impl<'de: 'a, 'a> Deserialize<'de> for UserInput<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = UserInput<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a user object with a `key`, or a user key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(UserInput {
                    key: Str(Cow::Borrowed(v)),
                    attributes: Map::new(),
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(UserInput {
                    key: Str(Cow::Owned(v.to_owned())),
                    attributes: Map::new(),
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                let u = UserObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(UserInput {
                    key: u.key,
                    attributes: u.attributes,
                })
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceInput<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub key: Option<Str<'a>>,
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub tenant: Option<Str<'a>>,
    #[serde(default, deserialize_with = "nullable")]
    pub attributes: Map<String, Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Map<String, Value>,
}

/// The body of `POST /allowed` (and of `/allowed/all-tenants`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AllowedQuery<'a> {
    #[serde(borrow)]
    pub user: UserInput<'a>,
    #[serde(borrow)]
    pub action: Str<'a>,
    #[serde(borrow)]
    pub resource: ResourceInput<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserPermissionsQuery<'a> {
    #[serde(borrow)]
    pub user: UserInput<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub tenants: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub resources: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub resource_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthorizedUsersQuery<'a> {
    #[serde(borrow)]
    pub action: Str<'a>,
    #[serde(borrow)]
    pub resource: ResourceInput<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserTenantsQuery<'a> {
    #[serde(borrow)]
    pub user: UserInput<'a>,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Map<String, Value>,
}

/// Why a decision came out as it did (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Allow,
    NoTenant,
    UserNotSynced,
    NoSuchTenant,
    NoSuchResource,
    NoSuchAction,
    NoPermission,
}

pub const RBAC: u8 = 1;
pub const REBAC: u8 = 2;
pub const ABAC: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Bits of [`RBAC`], [`REBAC`], [`ABAC`]: the models that allowed.
    pub sources: u8,
    pub reason: Reason,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DebugInfo {
    pub reason: Reason,
    pub allowing_sources: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AllowedResponse {
    pub allow: bool,
    pub result: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugInfo>,
}

impl Decision {
    pub fn sources(&self) -> Vec<&'static str> {
        [(RBAC, "rbac"), (REBAC, "rebac"), (ABAC, "abac")]
            .into_iter()
            .filter(|(bit, _)| self.sources & bit != 0)
            .map(|(_, name)| name)
            .collect()
    }

    pub fn to_response(&self, debug: bool) -> AllowedResponse {
        AllowedResponse {
            allow: self.allow,
            result: self.allow,
            debug: debug.then(|| DebugInfo {
                reason: self.reason,
                allowing_sources: self.sources(),
            }),
        }
    }
}

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

fn deny(reason: Reason) -> Decision {
    Decision {
        allow: false,
        sources: 0,
        reason,
    }
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
fn instance_of(snap: &Snapshot, ty: u32, q: &AllowedQuery) -> Option<u32> {
    snap.instance(ty, q.resource.key.as_deref()?)
}

fn check_in(snap: &Snapshot, q: &AllowedQuery, tenant: Option<&str>) -> Decision {
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

/// The user's tenant roles in tenant `t`.
fn tenant_roles(snap: &Snapshot, u: u32, t: u32) -> impl Iterator<Item = u32> + '_ {
    let row = snap.user_roles.row(u);
    let start = row.partition_point(|&(tn, _)| tn < t);
    row[start..]
        .iter()
        .take_while(move |&&(tn, _)| tn == t)
        .map(|&(_, r)| r)
}

/// The user's direct resource roles on instance `inst` (sorted).
fn direct_roles(snap: &Snapshot, u: u32, inst: u32) -> &[(u32, u32)] {
    let row = snap.user_inst_roles.row(u);
    let start = row.partition_point(|&(i, _)| i < inst);
    let end = start + row[start..].partition_point(|&(i, _)| i == inst);
    &row[start..end]
}

/// Tuples `(relation, subject)` pointing at `obj` with relation `rel`.
fn tuples_into(snap: &Snapshot, obj: u32, rel: u32) -> &[(u32, u32)] {
    let row = snap.tuples_in.row(obj);
    let start = row.partition_point(|&(r, _)| r < rel);
    let end = start + row[start..].partition_point(|&(r, _)| r == rel);
    &row[start..end]
}

/// The (instance, role) nodes a walk has expanded. Walks for one check are
/// short (a few levels, a few parents), where a linear scan of a small
/// inline vector beats hashing and allocates nothing; a long walk moves to
/// a hash set.
#[derive(Default)]
struct Visited {
    few: SmallVec<[(u32, u32); Visited::FEW]>,
    many: Option<HashSet<(u32, u32)>>,
}

impl Visited {
    const FEW: usize = 32;

    /// Adds `node`; false if it was already there.
    fn insert(&mut self, node: (u32, u32)) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(node);
        }
        if self.few.contains(&node) {
            return false;
        }
        if self.few.len() < Self::FEW {
            self.few.push(node);
        } else {
            let mut many: HashSet<(u32, u32)> = self.few.drain(..).collect();
            many.insert(node);
            self.many = Some(many);
        }
        true
    }
}

/// The work list of a walk: on the stack unless the walk grows wide.
type WalkStack = SmallVec<[(u32, u32, u32); 16]>;

/// Pushes the (instance, type, role) nodes that derive role `r` on `i`
/// (type `t`): the subjects of tuples into `i` that a derivation rule names.
/// Rules with `no_direct_roles_on_object` are skipped when `has_direct`.
fn push_derivation_sources(
    snap: &Snapshot,
    stack: &mut impl Extend<(u32, u32, u32)>,
    i: u32,
    t: u32,
    r: u32,
    has_direct: bool,
) {
    for d in &snap.type_info[t as usize].derive[r as usize] {
        if d.no_direct && has_direct {
            continue;
        }
        stack.extend(
            tuples_into(snap, i, d.relation)
                .iter()
                .filter(|&&(_, subj)| snap.instances.scope(subj) == d.from_type)
                .map(|&(_, subj)| (subj, d.from_type, d.from_role)),
        );
    }
}

/// Whether user `u` holds any role of `goal` on `inst` of type `ty`,
/// directly or derived (§4). A depth-first search over (instance, role)
/// nodes; each node is expanded once, so cycles in tuples terminate.
fn has_role(snap: &Snapshot, u: u32, inst: u32, ty: u32, goal: &BitSet) -> bool {
    let mut stack: WalkStack = goal.iter().map(|r| (inst, ty, r)).collect();
    if stack.is_empty() {
        return false;
    }
    let mut seen = Visited::default();
    while let Some((i, t, r)) = stack.pop() {
        if !seen.insert((i, r)) {
            continue;
        }
        let direct = direct_roles(snap, u, i);
        if direct.iter().any(|&(_, dr)| dr == r) {
            return true;
        }
        push_derivation_sources(snap, &mut stack, i, t, r, !direct.is_empty());
    }
    false
}

/// Every (instance, role) the user holds, direct or derived, found by
/// walking down from the direct assignments (§4, §6 user permissions).
fn all_instance_roles(snap: &Snapshot, u: u32) -> BTreeMap<u32, BTreeSet<u32>> {
    let mut seen: HashSet<(u32, u32)> = HashSet::new();
    let mut queue: Vec<(u32, u32)> = snap.user_inst_roles.row(u).to_vec();
    let mut out: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    while let Some((i, r)) = queue.pop() {
        if !seen.insert((i, r)) {
            continue;
        }
        out.entry(i).or_default().insert(r);
        let t = snap.instances.scope(i);
        for f in &snap.type_info[t as usize].forward[r as usize] {
            for &(rel, obj) in snap.tuples_out.row(i) {
                if rel != f.relation || snap.instances.scope(obj) != f.to_type {
                    continue;
                }
                if f.no_direct && !direct_roles(snap, u, obj).is_empty() {
                    continue;
                }
                queue.push((obj, f.to_role));
            }
        }
    }
    out
}

/// Attributes visible to conditions, layered as in §5.1 without merging maps.
struct AttrCtx<'a> {
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
    fn new(
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

fn user_set_matches(snap: &Snapshot, us: u32, ctx: &AttrCtx) -> bool {
    match &snap.user_sets[us as usize] {
        UserSet::Role(Some(role)) => match (ctx.user, ctx.tenant) {
            (Some(u), Some(t)) => tenant_roles(snap, u, t).any(|r| r == *role),
            _ => false,
        },
        UserSet::Role(None) => false,
        UserSet::Cond(c) => abac::eval(c, ctx),
    }
}

fn resource_set_matches(snap: &Snapshot, rs: u32, ctx: &AttrCtx) -> bool {
    match &snap.resource_sets[rs as usize] {
        ResourceSet::Type(t) => *t == ctx.ty,
        ResourceSet::Cond(t, c) => *t == ctx.ty && abac::eval(c, ctx),
        ResourceSet::Never => false,
    }
}

// ---------------------------------------------------------------------------
// Multi-answer endpoints (§6).

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DataDocument;
    use serde_json::json;

    fn snapshot(doc: Value) -> Snapshot {
        let doc: DataDocument = serde_json::from_value(doc).unwrap();
        Snapshot::build(&doc).unwrap()
    }

    fn rbac_env() -> Snapshot {
        snapshot(json!({
            "resources": [
                {"key": "document", "actions": {"read": {}, "write": {}, "delete": {}},
                 "action_groups": {"modify": ["write", "delete"]}},
                {"key": "invoice", "actions": {"read": {}, "pay": {}}}
            ],
            "roles": [
                {"key": "viewer", "permissions": ["document:read", "invoice:read"]},
                {"key": "editor", "permissions": ["document:write"], "extends": ["viewer"]},
                {"key": "admin", "permissions": ["document:modify", "invoice:pay"], "extends": ["editor"]},
                {"key": "ghost", "permissions": ["nothing:read", "document:fly", "bad"]}
            ],
            "tenants": [{"key": "acme"}, {"key": "globex"}],
            "users": [
                {"key": "alice", "roles": [{"role": "admin", "tenant": "acme"}]},
                {"key": "bob"},
                {"key": "carol"}
            ],
            "role_assignments": [
                {"user": "bob", "role": "editor", "tenant": "globex"},
                {"user": "carol", "role": "viewer", "tenant": "acme"},
                {"user": "carol", "role": "ghost", "tenant": "acme"},
                {"user": "carol", "role": "deleted-role", "tenant": "acme"}
            ]
        }))
    }

    fn ask(snap: &Snapshot, body: Value) -> Decision {
        let text = body.to_string();
        let q: AllowedQuery = serde_json::from_str(&text).unwrap();
        check(snap, &q)
    }

    #[test]
    fn rbac_table() {
        let snap = rbac_env();
        let cases = [
            // (user, action, type, tenant, allow, reason)
            (
                "alice",
                "read",
                "document",
                Some("acme"),
                true,
                Reason::Allow,
            ),
            (
                "alice",
                "write",
                "document",
                Some("acme"),
                true,
                Reason::Allow,
            ),
            (
                "alice",
                "delete",
                "document",
                Some("acme"),
                true,
                Reason::Allow,
            ),
            ("alice", "pay", "invoice", Some("acme"), true, Reason::Allow),
            (
                "alice",
                "read",
                "document",
                Some("globex"),
                false,
                Reason::NoPermission,
            ),
            (
                "bob",
                "write",
                "document",
                Some("globex"),
                true,
                Reason::Allow,
            ),
            (
                "bob",
                "read",
                "invoice",
                Some("globex"),
                true,
                Reason::Allow,
            ),
            (
                "bob",
                "delete",
                "document",
                Some("globex"),
                false,
                Reason::NoPermission,
            ),
            (
                "bob",
                "read",
                "document",
                Some("acme"),
                false,
                Reason::NoPermission,
            ),
            (
                "carol",
                "read",
                "document",
                Some("acme"),
                true,
                Reason::Allow,
            ),
            (
                "carol",
                "write",
                "document",
                Some("acme"),
                false,
                Reason::NoPermission,
            ),
            ("alice", "read", "document", None, false, Reason::NoTenant),
            (
                "alice",
                "read",
                "document",
                Some(""),
                false,
                Reason::NoTenant,
            ),
            (
                "mallory",
                "read",
                "document",
                Some("acme"),
                false,
                Reason::UserNotSynced,
            ),
            (
                "alice",
                "read",
                "document",
                Some("initech"),
                false,
                Reason::NoSuchTenant,
            ),
            (
                "alice",
                "read",
                "spaceship",
                Some("acme"),
                false,
                Reason::NoSuchResource,
            ),
            (
                "alice",
                "fly",
                "document",
                Some("acme"),
                false,
                Reason::NoSuchAction,
            ),
            (
                "alice",
                "modify",
                "document",
                Some("acme"),
                false,
                Reason::NoSuchAction,
            ),
        ];
        for (user, action, ty, tenant, allow, reason) in cases {
            let d = ask(
                &snap,
                json!({"user": {"key": user}, "action": action,
                       "resource": {"type": ty, "tenant": tenant, "key": "k1"}}),
            );
            assert_eq!(
                (d.allow, d.reason),
                (allow, reason),
                "{user} {action} {ty} {tenant:?}"
            );
            assert_eq!(d.sources == RBAC, allow);
        }
        assert_eq!(
            snap.counts().dropped_facts,
            1,
            "the assignment of a deleted role"
        );
    }

    #[test]
    fn lenient_request_shapes() {
        let snap = rbac_env();
        let d = ask(
            &snap,
            json!({"user": "alice", "action": "read",
                   "resource": {"type": "document", "key": null, "tenant": "acme",
                                "attributes": null, "context": null, "id": "x"},
                   "context": null, "sdk": "python", "unknown": [1]}),
        );
        assert!(d.allow);
        let escaped: AllowedQuery = serde_json::from_str(
            r#"{"user": {"key": "al\u0069ce", "attributes": null}, "action": "read",
                "resource": {"type": "document", "tenant": "acme"}}"#,
        )
        .unwrap();
        assert!(check(&snap, &escaped).allow);
    }

    #[test]
    fn extends_cycles_and_dangling_references_are_refused() {
        let cyclic: DataDocument = serde_json::from_value(json!({"roles": [
            {"key": "a", "extends": ["b"]}, {"key": "b", "extends": ["c"]}, {"key": "c", "extends": ["a"]}
        ]}))
        .unwrap();
        match Snapshot::build(&cyclic) {
            Err(crate::snapshot::BuildError::ExtendsCycle { cycle, .. }) => {
                assert_eq!(cycle.first(), cycle.last());
                assert!(cycle.len() == 4, "{cycle:?}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a cycle was accepted"),
        }
        let dangling: DataDocument =
            serde_json::from_value(json!({"roles": [{"key": "a", "extends": ["nope"]}]})).unwrap();
        let err = Snapshot::build(&dangling).err().expect("refused");
        assert!(err.to_string().contains("`a` extends `nope`"), "{err}");
    }

    #[test]
    fn multi_answer_endpoints() {
        let snap = rbac_env();
        let text = json!({"user": "alice", "action": "read", "resource": {"type": "document"}})
            .to_string();
        let q: AllowedQuery = serde_json::from_str(&text).unwrap();
        let all = serde_json::to_value(allowed_tenants(&snap, &q)).unwrap();
        assert_eq!(
            all,
            json!({"allowed_tenants": [{"allow": true, "result": true, "tenant": {"key": "acme", "attributes": {}}}]})
        );
        let text = json!({"user": {"key": "bob"}, "tenants": null}).to_string();
        let up: UserPermissionsQuery = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_value(user_permissions(&snap, &up)).unwrap(),
            json!({"__tenant:globex": {"tenant": {"key": "globex"},
                   "permissions": ["document:read", "document:write", "invoice:read"],
                   "roles": ["editor"]}})
        );
        let text = json!({"action": "read", "resource": {"type": "document", "tenant": "acme"}})
            .to_string();
        let au: AuthorizedUsersQuery = serde_json::from_str(&text).unwrap();
        let au = serde_json::to_value(authorized_users(&snap, &au)).unwrap();
        assert_eq!(au["resource"], "document:*");
        assert_eq!(
            au["users"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["alice", "carol"]
        );
        assert_eq!(
            au["users"]["alice"],
            json!([{"user": "alice", "tenant": "acme", "resource": "__tenant:acme", "role": "admin"}])
        );
    }
}

#[cfg(test)]
mod visited_tests {
    use super::Visited;

    #[test]
    fn visited_sets_stay_exact_past_the_small_size() {
        let mut v = Visited::default();
        for i in 0..100u32 {
            assert!(v.insert((i, i % 3)), "{i} is new");
        }
        for i in 0..100u32 {
            assert!(!v.insert((i, i % 3)), "{i} was seen");
        }
        assert!(v.insert((1000, 0)));
    }
}
