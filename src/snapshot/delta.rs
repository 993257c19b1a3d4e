//! Writes applied over a full snapshot (docs/read-your-writes.md).
//!
//! A full snapshot's tables are built once and shared; a write confirmed
//! by the control plane does not rebuild them. It makes a new [`Delta`]
//! from the previous one and the [`Write`], and the snapshot that serves
//! next is the same tables with that delta. The delta keeps, for each row
//! a write touched (a user's tenant roles, a tenant's members, an
//! instance's tuples...), the whole new row, so the accessors in `read`
//! still hand decisions a sorted slice: from the delta when the row was
//! touched, from the tables otherwise. Users, tenants and instances a
//! write creates get ids after the tables' own.
//!
//! The maps are persistent (`imbl`): a new delta shares all but the path
//! to what changed with the previous one, so applying a write costs the
//! rows it touches, not the writes before it. A full sync replaces the
//! tables and the writes still pending are replayed over them
//! ([`crate::store::Store::install`]).

use std::sync::Arc;

use hashbrown::DefaultHashBuilder;
use imbl::shared_ptr::DefaultSharedPtr;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Csr, Tables, NONE};

pub(super) type PMap<K, V> = imbl::GenericHashMap<K, V, DefaultHashBuilder, DefaultSharedPtr>;
/// Rows a write replaced, by owner id.
pub(super) type Rows = Layered<Arc<[(u32, u32)]>>;
type AttrMap = Arc<Map<String, Value>>;

/// A role assignment as the control plane names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub user: String,
    pub role: String,
    pub tenant: String,
    /// `"type:key"` for a role on a resource instance.
    pub resource_instance: Option<String>,
}

/// A relationship tuple, `subject —relation→ object`, each `"type:key"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuple {
    pub subject: String,
    pub relation: String,
    pub object: String,
    pub tenant: Option<String>,
}

/// One fact write as the control plane confirmed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Write {
    /// Created or replaced: the profile and attributes are the user's now.
    UpsertUser {
        key: String,
        email: Option<String>,
        first_name: Option<String>,
        last_name: Option<String>,
        attributes: Map<String, Value>,
    },
    /// Gone, with every role it held.
    DeleteUser {
        key: String,
    },
    UpsertTenant {
        key: String,
        attributes: Map<String, Value>,
    },
    /// Gone, with every tenant role held in it.
    DeleteTenant {
        key: String,
    },
    Assign(Assignment),
    Unassign(Assignment),
    UpsertInstance {
        resource: String,
        key: String,
        tenant: Option<String>,
        attributes: Map<String, Value>,
    },
    /// Gone, with its roles and tuples.
    DeleteInstance {
        resource: String,
        key: String,
    },
    Relate(Tuple),
    Unrelate(Tuple),
}

/// Why a confirmed write could not be applied: it names schema this
/// snapshot does not have. The next full sync brings it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unapplied {
    #[error("role `{0}` is not in this snapshot")]
    Role(String),
    #[error("resource type `{0}` is not in this snapshot")]
    Type(String),
    #[error("relation `{0}` is not in this snapshot")]
    Relation(String),
    #[error("`{0}` is not a `type:key` instance")]
    Instance(String),
}

/// Objects a write created, numbered after the tables' own.
#[derive(Clone)]
pub(super) struct Added<K: Clone + std::hash::Hash + Eq> {
    pub ids: PMap<K, u32>,
    pub keys: imbl::Vector<K>,
}

impl<K: Clone + std::hash::Hash + Eq> Default for Added<K> {
    fn default() -> Self {
        Added {
            ids: PMap::default(),
            keys: imbl::Vector::new(),
        }
    }
}

impl<K: Clone + std::hash::Hash + Eq> Added<K> {
    /// The key of id `id`, the `base`-th being the first added.
    pub fn key(&self, base: usize, id: u32) -> Option<&K> {
        self.keys.get((id as usize).checked_sub(base)?)
    }

    fn add(&mut self, base: usize, key: K) -> u32 {
        let id = (base + self.keys.len()) as u32;
        self.ids.insert(key.clone(), id);
        self.keys.push_back(key);
        id
    }
}

/// The writes applied over one full snapshot's tables.
#[derive(Clone, Default)]
pub(crate) struct Delta {
    pub users: Added<String>,
    pub tenants: Added<String>,
    /// `(type, key)`.
    pub instances: Added<(u32, String)>,
    pub gone_users: Gone,
    pub gone_tenants: Gone,
    pub gone_instances: Gone,
    pub user_roles: Rows,
    pub tenant_users: Rows,
    pub user_inst_roles: Rows,
    pub inst_users: Rows,
    pub tuples_in: Rows,
    pub tuples_out: Rows,
    /// Instances added, by type.
    pub type_instances: PMap<u32, imbl::Vector<u32>>,
    /// Tenant of an added or updated instance (`NONE`: none).
    pub inst_tenant: Layered<u32>,
    pub user_attrs: Layered<AttrMap>,
    pub tenant_attrs: Layered<AttrMap>,
    pub inst_attrs: Layered<AttrMap>,
    /// `email`, `first_name`, `last_name` of an upserted user.
    pub profiles: Layered<Arc<[Option<Value>; 3]>>,
    /// Users by an email a write gave them.
    pub emails: PMap<String, u32>,
    /// Writes applied.
    pub writes: usize,
}

/// `"type:key"` as the type's id and the key.
fn instance_ref<'s>(t: &Tables, s: &'s str) -> Result<(u32, &'s str), Unapplied> {
    let (ty, key) = s
        .split_once(':')
        .filter(|(ty, key)| !ty.is_empty() && !key.is_empty())
        .ok_or_else(|| Unapplied::Instance(s.to_owned()))?;
    let ty = t
        .types
        .get(ty)
        .ok_or_else(|| Unapplied::Type(ty.to_owned()))?;
    Ok((ty, key))
}

/// `row` with `entry` in its sorted place.
fn inserted(row: &[(u32, u32)], entry: (u32, u32)) -> Option<Arc<[(u32, u32)]>> {
    let at = row.binary_search(&entry).err()?;
    let mut v = Vec::with_capacity(row.len() + 1);
    v.extend_from_slice(&row[..at]);
    v.push(entry);
    v.extend_from_slice(&row[at..]);
    Some(v.into())
}

/// `row` without `entry`.
fn removed(row: &[(u32, u32)], entry: (u32, u32)) -> Option<Arc<[(u32, u32)]>> {
    let at = row.binary_search(&entry).ok()?;
    let mut v = row.to_vec();
    v.remove(at);
    Some(v.into())
}

impl Delta {
    /// Row `id` of an index as it stands: the delta's if a write replaced
    /// it, else the tables'.
    pub fn row<'a>(over: &'a Rows, base: &'a Csr<(u32, u32)>, id: u32) -> &'a [(u32, u32)] {
        if !over.is_empty() {
            if let Some(r) = over.get(&id) {
                return r;
            }
        }
        base.row(id)
    }

    /// Applies `w` over `t`; an error changes nothing.
    pub fn apply(&mut self, t: &Tables, w: &Write) -> Result<(), Unapplied> {
        match w {
            Write::UpsertUser {
                key,
                email,
                first_name,
                last_name,
                attributes,
            } => {
                let u = self.ensure_user(t, key);
                let text = |s: &Option<String>| s.as_ref().map(|s| Value::String(s.clone()));
                self.profiles.insert(
                    u,
                    Arc::new([text(email), text(first_name), text(last_name)]),
                );
                if let Some(e) = email {
                    self.emails.insert(e.clone(), u);
                }
                self.user_attrs.insert(u, Arc::new(attributes.clone()));
            }
            Write::DeleteUser { key } => {
                if let Some(u) = self.user(t, key) {
                    for (tenant, r) in Self::row(&self.user_roles, &t.user_roles, u).to_vec() {
                        self.remove(Index::TenantUsers, t, tenant, (u, r));
                    }
                    self.user_roles.insert(u, Arc::new([]));
                    for (i, r) in Self::row(&self.user_inst_roles, &t.user_inst_roles, u).to_vec() {
                        self.remove(Index::InstUsers, t, i, (u, r));
                    }
                    self.user_inst_roles.insert(u, Arc::new([]));
                    // A user made again later starts with nothing.
                    self.user_attrs.insert(u, Arc::default());
                    self.profiles.insert(u, Arc::new([None, None, None]));
                    self.gone_users.insert(u);
                }
            }
            Write::UpsertTenant { key, attributes } => {
                let tenant = self.ensure_tenant(t, key);
                self.tenant_attrs
                    .insert(tenant, Arc::new(attributes.clone()));
            }
            Write::DeleteTenant { key } => {
                if let Some(tenant) = self.tenant(t, key) {
                    for (u, r) in Self::row(&self.tenant_users, &t.tenant_users, tenant).to_vec() {
                        self.remove(Index::UserRoles, t, u, (tenant, r));
                    }
                    self.tenant_users.insert(tenant, Arc::new([]));
                    // Its instances go with it. Finding them reads every
                    // instance's tenant once: rare, and linear in the
                    // instances, not the facts.
                    let written = self.inst_tenant.clone();
                    let base = (0..t.inst_tenant.len() as u32).filter(|i| {
                        !written.contains_key(i) && t.inst_tenant[*i as usize] == tenant
                    });
                    let added = written
                        .iter()
                        .filter(|&(_, &it)| it == tenant)
                        .map(|(&i, _)| i);
                    let doomed: Vec<u32> = base.chain(added).collect();
                    for i in doomed {
                        if !self.gone_instances.contains(&i) {
                            self.delete_instance(t, i);
                        }
                    }
                    self.tenant_attrs.insert(tenant, Arc::default());
                    self.gone_tenants.insert(tenant);
                }
            }
            Write::Assign(a) | Write::Unassign(a) => {
                let assign = matches!(w, Write::Assign(_));
                self.assignment(t, a, assign)?;
            }
            Write::UpsertInstance {
                resource,
                key,
                tenant,
                attributes,
            } => {
                let ty = t
                    .types
                    .get(resource)
                    .ok_or_else(|| Unapplied::Type(resource.clone()))?;
                let i = self.ensure_instance(t, ty, key, tenant.as_deref());
                let tenant = match tenant {
                    Some(k) => self.ensure_tenant(t, k),
                    None => NONE,
                };
                self.inst_tenant.insert(i, tenant);
                self.inst_attrs.insert(i, Arc::new(attributes.clone()));
            }
            Write::DeleteInstance { resource, key } => {
                let ty = t
                    .types
                    .get(resource)
                    .ok_or_else(|| Unapplied::Type(resource.clone()))?;
                if let Some(i) = self.instance(t, ty, key) {
                    self.delete_instance(t, i);
                }
            }
            Write::Relate(tuple) | Write::Unrelate(tuple) => {
                let relate = matches!(w, Write::Relate(_));
                let rel = t
                    .relations
                    .get(&tuple.relation)
                    .ok_or_else(|| Unapplied::Relation(tuple.relation.clone()))?;
                let (st, sk) = instance_ref(t, &tuple.subject)?;
                let (ot, ok) = instance_ref(t, &tuple.object)?;
                let tenant = tuple.tenant.as_deref();
                if relate {
                    let s = self.ensure_instance(t, st, sk, tenant);
                    let o = self.ensure_instance(t, ot, ok, tenant);
                    self.insert(Index::TuplesIn, t, o, (rel, s));
                    self.insert(Index::TuplesOut, t, s, (rel, o));
                } else if let (Some(s), Some(o)) =
                    (self.instance(t, st, sk), self.instance(t, ot, ok))
                {
                    self.remove(Index::TuplesIn, t, o, (rel, s));
                    self.remove(Index::TuplesOut, t, s, (rel, o));
                }
            }
        }
        self.writes += 1;
        Ok(())
    }

    /// Instance `i` gone, with its roles and tuples.
    fn delete_instance(&mut self, t: &Tables, i: u32) {
        for (u, r) in Self::row(&self.inst_users, &t.inst_users, i).to_vec() {
            self.remove(Index::UserInstRoles, t, u, (i, r));
        }
        self.inst_users.insert(i, Arc::new([]));
        for (rel, s) in Self::row(&self.tuples_in, &t.tuples_in, i).to_vec() {
            self.remove(Index::TuplesOut, t, s, (rel, i));
        }
        self.tuples_in.insert(i, Arc::new([]));
        for (rel, o) in Self::row(&self.tuples_out, &t.tuples_out, i).to_vec() {
            self.remove(Index::TuplesIn, t, o, (rel, i));
        }
        self.tuples_out.insert(i, Arc::new([]));
        self.inst_attrs.insert(i, Arc::default());
        self.inst_tenant.insert(i, NONE);
        self.gone_instances.insert(i);
    }

    fn assignment(&mut self, t: &Tables, a: &Assignment, assign: bool) -> Result<(), Unapplied> {
        match &a.resource_instance {
            None => {
                let r = t
                    .roles
                    .get(&a.role)
                    .ok_or_else(|| Unapplied::Role(a.role.clone()))?;
                if assign {
                    let u = self.ensure_user(t, &a.user);
                    let tenant = self.ensure_tenant(t, &a.tenant);
                    self.insert(Index::UserRoles, t, u, (tenant, r));
                    self.insert(Index::TenantUsers, t, tenant, (u, r));
                } else if let (Some(u), Some(tenant)) =
                    (self.user(t, &a.user), self.tenant(t, &a.tenant))
                {
                    self.remove(Index::UserRoles, t, u, (tenant, r));
                    self.remove(Index::TenantUsers, t, tenant, (u, r));
                }
            }
            Some(inst) => {
                let (ty, key) = instance_ref(t, inst)?;
                let r = t.type_info[ty as usize]
                    .roles
                    .get(&a.role)
                    .ok_or_else(|| Unapplied::Role(a.role.clone()))?;
                if assign {
                    let u = self.ensure_user(t, &a.user);
                    let i = self.ensure_instance(t, ty, key, Some(&a.tenant));
                    self.insert(Index::UserInstRoles, t, u, (i, r));
                    self.insert(Index::InstUsers, t, i, (u, r));
                } else if let (Some(u), Some(i)) =
                    (self.user(t, &a.user), self.instance(t, ty, key))
                {
                    self.remove(Index::UserInstRoles, t, u, (i, r));
                    self.remove(Index::InstUsers, t, i, (u, r));
                }
            }
        }
        Ok(())
    }

    /// The user `key`, unless deleted.
    pub fn user(&self, t: &Tables, key: &str) -> Option<u32> {
        let u = t
            .users
            .get(key)
            .or_else(|| self.users.ids.get(key).copied())?;
        (!self.gone_users.contains(&u)).then_some(u)
    }

    pub fn tenant(&self, t: &Tables, key: &str) -> Option<u32> {
        let id = t
            .tenants
            .get(key)
            .or_else(|| self.tenants.ids.get(key).copied())?;
        (!self.gone_tenants.contains(&id)).then_some(id)
    }

    pub fn instance(&self, t: &Tables, ty: u32, key: &str) -> Option<u32> {
        let id = t
            .instances
            .get_in(ty, key)
            .or_else(|| self.instances.ids.get(&(ty, key.to_owned())).copied())?;
        (!self.gone_instances.contains(&id)).then_some(id)
    }

    fn ensure_user(&mut self, t: &Tables, key: &str) -> u32 {
        let u = match t
            .users
            .get(key)
            .or_else(|| self.users.ids.get(key).copied())
        {
            Some(u) => u,
            None => self.users.add(t.users.len(), key.to_owned()),
        };
        self.gone_users.remove(&u);
        u
    }

    fn ensure_tenant(&mut self, t: &Tables, key: &str) -> u32 {
        let id = match t
            .tenants
            .get(key)
            .or_else(|| self.tenants.ids.get(key).copied())
        {
            Some(id) => id,
            None => self.tenants.add(t.tenants.len(), key.to_owned()),
        };
        self.gone_tenants.remove(&id);
        id
    }

    /// The instance, created in `tenant` if it is new.
    fn ensure_instance(&mut self, t: &Tables, ty: u32, key: &str, tenant: Option<&str>) -> u32 {
        let known = t
            .instances
            .get_in(ty, key)
            .or_else(|| self.instances.ids.get(&(ty, key.to_owned())).copied());
        let (id, made) = match known {
            // One a write deleted is made again, as a new one would be.
            Some(id) => (id, self.gone_instances.remove(&id).is_some()),
            None => {
                let id = self.instances.add(t.instances.len(), (ty, key.to_owned()));
                self.type_instances.entry(ty).or_default().push_back(id);
                (id, true)
            }
        };
        if made {
            let tenant = tenant.map_or(NONE, |k| self.ensure_tenant(t, k));
            self.inst_tenant.insert(id, tenant);
        }
        id
    }

    fn rows_mut<'a>(&'a mut self, t: &'a Tables, ix: Index) -> (&'a mut Rows, &'a Csr<(u32, u32)>) {
        match ix {
            Index::UserRoles => (&mut self.user_roles, &t.user_roles),
            Index::TenantUsers => (&mut self.tenant_users, &t.tenant_users),
            Index::UserInstRoles => (&mut self.user_inst_roles, &t.user_inst_roles),
            Index::InstUsers => (&mut self.inst_users, &t.inst_users),
            Index::TuplesIn => (&mut self.tuples_in, &t.tuples_in),
            Index::TuplesOut => (&mut self.tuples_out, &t.tuples_out),
        }
    }

    fn insert(&mut self, ix: Index, t: &Tables, id: u32, entry: (u32, u32)) {
        let (over, base) = self.rows_mut(t, ix);
        if let Some(row) = inserted(Self::row(over, base, id), entry) {
            over.insert(id, row);
        }
    }

    fn remove(&mut self, ix: Index, t: &Tables, id: u32, entry: (u32, u32)) {
        let (over, base) = self.rows_mut(t, ix);
        if let Some(row) = removed(Self::row(over, base, id), entry) {
            over.insert(id, row);
        }
    }
}

/// Entries a write made, by object id, where decisions look them up: a
/// hash map frozen for reading and a small one of the latest entries.
/// Writing copies the small one (at most [`Layered::RECENT`] entries); when
/// it fills, it is merged into a new frozen map, a copy of the pending
/// entries once every `RECENT` writes. A lookup is a probe or two of a flat
/// table, where a persistent map's would chase a pointer per level.
///
/// Most lookups are of objects no write touched: a bit filter over the
/// frozen map's ids (16 bits an entry, built with it) answers those
/// without a probe of the map.
#[derive(Clone)]
pub(crate) struct Layered<V> {
    frozen: Arc<hashbrown::HashMap<u32, V>>,
    /// Bits of the ids in `frozen`; see [`Layered::bit`].
    filter: Arc<[u64]>,
    recent: Arc<hashbrown::HashMap<u32, V>>,
}

impl<V> Default for Layered<V> {
    fn default() -> Self {
        Layered {
            frozen: Arc::default(),
            filter: Arc::from([0u64]),
            recent: Arc::default(),
        }
    }
}

impl<V: Clone> Layered<V> {
    const RECENT: usize = 256;

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty() && self.frozen.is_empty()
    }

    #[inline]
    pub fn get(&self, k: &u32) -> Option<&V> {
        if !self.recent.is_empty() {
            if let Some(v) = self.recent.get(k) {
                return Some(v);
            }
        }
        if self.frozen.is_empty() || !self.maybe_frozen(*k) {
            return None;
        }
        self.frozen.get(k)
    }

    /// The filter's bit for `id`: a multiplicative hash, the top bits.
    #[inline]
    fn bit(bits: usize, id: u32) -> usize {
        let shift = 64 - bits.trailing_zeros();
        ((u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> shift) as usize
    }

    #[inline]
    fn maybe_frozen(&self, id: u32) -> bool {
        let b = Self::bit(self.filter.len() * 64, id);
        self.filter[b / 64] & (1 << (b % 64)) != 0
    }

    pub fn contains_key(&self, k: &u32) -> bool {
        self.get(k).is_some()
    }

    pub fn insert(&mut self, k: u32, v: V) {
        let recent = Arc::make_mut(&mut self.recent);
        recent.insert(k, v);
        if recent.len() >= Self::RECENT {
            let recent = std::mem::take(recent);
            let frozen = Arc::make_mut(&mut self.frozen);
            frozen.extend(recent);
            let bits = (frozen.len() * 16).next_power_of_two().max(64);
            let mut filter = vec![0u64; bits / 64];
            for &id in frozen.keys() {
                let b = Self::bit(bits, id);
                filter[b / 64] |= 1 << (b % 64);
            }
            self.filter = filter.into();
        }
    }

    /// Every entry once, the latest value of each.
    pub fn iter(&self) -> impl Iterator<Item = (&u32, &V)> + '_ {
        self.recent.iter().chain(
            self.frozen
                .iter()
                .filter(|(k, _)| !self.recent.contains_key(*k)),
        )
    }
}

/// Objects a write deleted (and not made again since).
#[derive(Clone, Default)]
pub(crate) struct Gone(Layered<bool>);

impl Gone {
    #[inline]
    pub fn contains(&self, id: &u32) -> bool {
        !self.0.is_empty() && self.0.get(id) == Some(&true)
    }

    pub fn insert(&mut self, id: u32) {
        self.0.insert(id, true);
    }

    /// Made again; `Some` if it was gone.
    pub fn remove(&mut self, id: &u32) -> Option<()> {
        let was = self.contains(id);
        if was {
            self.0.insert(*id, false);
        }
        was.then_some(())
    }
}

/// The indexes a write changes.
#[derive(Clone, Copy)]
enum Index {
    UserRoles,
    TenantUsers,
    UserInstRoles,
    InstUsers,
    TuplesIn,
    TuplesOut,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layered_maps_read_the_latest_value_across_merges() {
        let mut m: Layered<u32> = Layered::default();
        assert!(m.is_empty() && m.get(&1).is_none());
        let n = Layered::<u32>::RECENT as u32 * 3 + 7;
        for i in 0..n {
            m.insert(i * 7, i);
        }
        let before = m.clone();
        for i in (0..n).step_by(5) {
            m.insert(i * 7, i + 1_000_000);
        }
        for i in 0..n {
            let want = if i % 5 == 0 { i + 1_000_000 } else { i };
            assert_eq!(m.get(&(i * 7)), Some(&want), "{i}");
            assert_eq!(
                before.get(&(i * 7)),
                Some(&i),
                "an earlier version is unchanged"
            );
            assert!(m.get(&(i * 7 + 1)).is_none());
        }
        let mut all: Vec<(u32, u32)> = m.iter().map(|(&k, &v)| (k, v)).collect();
        all.sort();
        assert_eq!(all.len(), n as usize, "each key once");
        assert_eq!(all[5], (35, 5_000_005 - 4_000_000));

        let mut gone = Gone::default();
        for i in 0..600 {
            gone.insert(i);
        }
        assert!(gone.contains(&599) && !gone.contains(&600));
        assert_eq!(gone.remove(&3), Some(()));
        assert_eq!(gone.remove(&3), None);
        assert!(!gone.contains(&3) && gone.contains(&4));
    }
}
