//! The difference between two snapshots of one schema, as the writes that
//! turn the first into the second (docs/fleet.md). A hub whose sync found
//! a changed document sends its followers these instead of the whole
//! document: a role assigned in the control plane's UI is a few hundred
//! bytes, not tens of megabytes.
//!
//! Both sides are read as decisions read them (live objects, rows with
//! the writes over them, names by key), so whatever each was built from
//! and whatever was written over it, the writes bring the old one to what
//! the new one serves. The property test in `tests/integration/props.rs`
//! holds them to that on every endpoint.

use hashbrown::HashSet;
use serde_json::{Map, Value};

use super::{Assignment, InstanceId, Snapshot, TenantId, Tuple, UserId, Write};

/// The writes, in the order they must be applied: what goes first, so that
/// what comes after is not undone by a delete's cascade.
#[derive(Default)]
struct Out {
    deletes: Vec<Write>,
    removed: Vec<Write>,
    tenants: Vec<Write>,
    users: Vec<Write>,
    instances: Vec<Write>,
    added: Vec<Write>,
}

impl Out {
    fn len(&self) -> usize {
        self.deletes.len()
            + self.removed.len()
            + self.tenants.len()
            + self.users.len()
            + self.instances.len()
            + self.added.len()
    }

    fn into_writes(self) -> Vec<Write> {
        let mut all = self.deletes;
        all.extend(self.removed);
        all.extend(self.tenants);
        all.extend(self.users);
        all.extend(self.instances);
        all.extend(self.added);
        all
    }
}

/// The entries only in `old` and only in `new`, each sorted first.
fn split<T: Ord>(mut old: Vec<T>, mut new: Vec<T>) -> (Vec<T>, Vec<T>) {
    old.sort_unstable();
    old.dedup();
    new.sort_unstable();
    new.dedup();
    let (mut gone, mut came) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (Some(a), Some(b)) if a == b => {
                o.next();
                n.next();
            }
            (Some(a), Some(b)) if a < b => gone.extend(o.next()),
            (Some(_), Some(_)) | (None, Some(_)) => came.extend(n.next()),
            (Some(_), None) => gone.extend(o.next()),
            (None, None) => return (gone, came),
        }
    }
}

/// A user's profile fields, borrowed.
fn profile(s: &Snapshot, u: UserId) -> [Option<&str>; 3] {
    ["email", "first_name", "last_name"].map(|f| s.user_profile(u, f).and_then(Value::as_str))
}

/// Attributes as a write carries them.
fn owned(list: Vec<(&str, &Value)>) -> Map<String, Value> {
    list.into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
}

/// A user's tenant roles, `(tenant, role)`, but in tenants of `gone`.
fn tenant_roles<'s>(
    s: &'s Snapshot,
    u: UserId,
    gone: &HashSet<TenantId>,
) -> Vec<(&'s str, &'s str)> {
    s.user_tenant_roles(u)
        .filter(|(t, _)| gone.is_empty() || !gone.contains(t))
        .map(|(t, r)| (s.tenant_key(t), s.role_key(r)))
        .collect()
}

/// A user's roles on instances, `(type, instance, role)`, but on `killed`.
fn instance_roles<'s>(
    s: &'s Snapshot,
    u: UserId,
    killed: &HashSet<InstanceId>,
) -> Vec<(&'s str, &'s str, &'s str)> {
    s.user_instance_roles(u)
        .filter(|(i, _)| killed.is_empty() || !killed.contains(i))
        .map(|(i, r)| {
            let ty = s.instance_type(i);
            (
                s.type_key(ty),
                s.instance_key(i),
                s.resource_role_key(ty, r),
            )
        })
        .collect()
}

/// The tuples from an instance, `(relation, object type, object)`, but to
/// `killed`.
fn tuples<'s>(
    s: &'s Snapshot,
    i: InstanceId,
    killed: &HashSet<InstanceId>,
) -> Vec<(&'s str, &'s str, &'s str)> {
    s.objects_of(i)
        .filter(|(_, o)| killed.is_empty() || !killed.contains(o))
        .map(|(r, o)| {
            (
                s.relation_key(r),
                s.type_key(s.instance_type(o)),
                s.instance_key(o),
            )
        })
        .collect()
}

struct Diff<'a> {
    new: &'a Snapshot,
    old: &'a Snapshot,
    /// Old objects a write deletes (or a tenant's delete takes with it):
    /// nothing of theirs is left to compare against.
    gone_users: HashSet<UserId>,
    gone_tenants: HashSet<TenantId>,
    killed: HashSet<InstanceId>,
    out: Out,
    limit: usize,
}

impl Snapshot {
    /// The writes that, applied over `old` (and whatever writes it already
    /// serves), make it answer as `self` does. `None` when the two differ
    /// in schema, when a write would name a relation `old` does not know,
    /// or when it takes more than `limit` writes: a full snapshot is then
    /// the answer. Reads every object of both, once.
    pub fn changes_since(&self, old: &Snapshot, limit: usize) -> Option<Vec<Write>> {
        if self.t.schema != old.t.schema {
            return None;
        }
        let mut diff = Diff {
            new: self,
            old,
            gone_users: HashSet::new(),
            gone_tenants: HashSet::new(),
            killed: HashSet::new(),
            out: Out::default(),
            limit,
        };
        diff.deletes()?;
        diff.tenants()?;
        diff.users()?;
        diff.instances()?;
        let mut writes = diff.out.into_writes();
        let (applied, refused) = old.with_writes(&writes);
        if !refused.is_empty() {
            return None;
        }
        // An email several users share: the tables find it on the first of
        // them, writes on the last one written. Where the two sides would
        // part, the user `self` finds is written once more, last.
        let mut again: Vec<&str> = Vec::new();
        for u in self.all_users() {
            let Some(email) = self.user_profile(u, "email").and_then(Value::as_str) else {
                continue;
            };
            let want = self.user_by_email(email);
            if applied.user_by_email(email) != want {
                again.push(want?);
            }
        }
        again.sort_unstable();
        again.dedup();
        for key in again {
            let u = self.user_id(key)?;
            let [email, first_name, last_name] = profile(self, u).map(|f| f.map(str::to_owned));
            writes.push(Write::UpsertUser {
                key: key.into(),
                email,
                first_name,
                last_name,
                attributes: owned(self.user_attrs_list(u)),
            });
        }
        (writes.len() <= limit).then_some(writes)
    }
}

impl Diff<'_> {
    fn full(&self) -> Option<()> {
        (self.out.len() <= self.limit).then_some(())
    }

    /// Objects of `old` that `new` lacks. A tenant's delete takes its
    /// instances along (as the control plane's does), so those are gone
    /// too, whether `new` has them again or not.
    fn deletes(&mut self) -> Option<()> {
        let (old, new) = (self.old, self.new);
        for u in old.all_users() {
            let key = old.user_key(u);
            if new.user_id(key).is_none() {
                self.gone_users.insert(u);
                self.out.deletes.push(Write::DeleteUser { key: key.into() });
            }
        }
        for t in old.all_tenants() {
            let key = old.tenant_key(t);
            if new.tenant_id(key).is_none() {
                self.gone_tenants.insert(t);
                self.out
                    .deletes
                    .push(Write::DeleteTenant { key: key.into() });
            }
        }
        for ty in old.all_types() {
            let resource = old.type_key(ty);
            let new_ty = new.type_id(resource)?;
            for i in old.instances_of(ty) {
                let cascaded = old
                    .instance_tenant(i)
                    .is_some_and(|t| self.gone_tenants.contains(&t));
                let key = old.instance_key(i);
                if cascaded {
                    self.killed.insert(i);
                } else if new.instance_id(new_ty, key).is_none() {
                    self.killed.insert(i);
                    self.out.deletes.push(Write::DeleteInstance {
                        resource: resource.into(),
                        key: key.into(),
                    });
                }
            }
            self.full()?;
        }
        self.full()
    }

    fn tenants(&mut self) -> Option<()> {
        let (old, new) = (self.old, self.new);
        for t in new.all_tenants() {
            let key = new.tenant_key(t);
            let attributes = new.tenant_attrs_list(t);
            let same = old
                .tenant_id(key)
                .filter(|o| !self.gone_tenants.contains(o))
                .is_some_and(|o| old.tenant_attrs_list(o) == attributes);
            if !same {
                self.out.tenants.push(Write::UpsertTenant {
                    key: key.into(),
                    attributes: owned(attributes),
                });
            }
        }
        self.full()
    }

    /// Each user of `new`: its profile, its tenant roles and its roles on
    /// instances, against the same user's in `old` if it lives on there.
    fn users(&mut self) -> Option<()> {
        let (old, new) = (self.old, self.new);
        for u in new.all_users() {
            let key = new.user_key(u);
            let was = old.user_id(key).filter(|o| !self.gone_users.contains(o));
            let (now, attributes) = (profile(new, u), new.user_attrs_list(u));
            let same =
                was.is_some_and(|o| profile(old, o) == now && old.user_attrs_list(o) == attributes);
            if !same {
                let [email, first_name, last_name] = now.map(|f| f.map(str::to_owned));
                self.out.users.push(Write::UpsertUser {
                    key: key.into(),
                    email,
                    first_name,
                    last_name,
                    attributes: owned(attributes),
                });
            }

            let before = was.map_or_else(Vec::new, |o| tenant_roles(old, o, &self.gone_tenants));
            let (gone, came) = split(before, tenant_roles(new, u, &HashSet::new()));
            let assignment = |(tenant, role): (&str, &str)| Assignment {
                user: key.into(),
                role: role.into(),
                tenant: tenant.into(),
                resource_instance: None,
            };
            self.out
                .removed
                .extend(gone.into_iter().map(|a| Write::Unassign(assignment(a))));
            self.out
                .added
                .extend(came.into_iter().map(|a| Write::Assign(assignment(a))));

            let before = was.map_or_else(Vec::new, |o| instance_roles(old, o, &self.killed));
            let (gone, came) = split(before, instance_roles(new, u, &HashSet::new()));
            let on_instance = |(ty, inst, role): (&str, &str, &str)| {
                // Where the instance would be made, were it new; it is not:
                // instances are written before roles on them.
                let tenant = new
                    .type_id(ty)
                    .and_then(|t| new.instance_id(t, inst))
                    .and_then(|i| new.instance_tenant(i))
                    .map_or("default", |t| new.tenant_key(t));
                Assignment {
                    user: key.into(),
                    role: role.into(),
                    tenant: tenant.into(),
                    resource_instance: Some(format!("{ty}:{inst}")),
                }
            };
            self.out
                .removed
                .extend(gone.into_iter().map(|a| Write::Unassign(on_instance(a))));
            self.out
                .added
                .extend(came.into_iter().map(|a| Write::Assign(on_instance(a))));
            self.full()?;
        }
        Some(())
    }

    /// Each instance of `new`: its tenant and attributes, and the tuples
    /// it is the subject of (every tuple has one subject, so each is
    /// compared once).
    fn instances(&mut self) -> Option<()> {
        let (old, new) = (self.old, self.new);
        for ty in new.all_types() {
            let resource = new.type_key(ty);
            let old_ty = old.type_id(resource)?;
            for i in new.instances_of(ty) {
                let key = new.instance_key(i);
                let was = old
                    .instance_id(old_ty, key)
                    .filter(|o| !self.killed.contains(o));
                let tenant = new.instance_tenant(i).map(|t| new.tenant_key(t));
                let attributes = new.instance_attrs_list(i);
                let same = was.is_some_and(|o| {
                    old.instance_tenant(o).map(|t| old.tenant_key(t)) == tenant
                        && old.instance_attrs_list(o) == attributes
                });
                if !same {
                    self.out.instances.push(Write::UpsertInstance {
                        resource: resource.into(),
                        key: key.into(),
                        tenant: tenant.map(str::to_owned),
                        attributes: owned(attributes),
                    });
                }

                let before = was.map_or_else(Vec::new, |o| tuples(old, o, &self.killed));
                let (gone, came) = split(before, tuples(new, i, &HashSet::new()));
                let tuple = |(relation, ty, obj): (&str, &str, &str)| Tuple {
                    subject: format!("{resource}:{key}"),
                    relation: relation.into(),
                    object: format!("{ty}:{obj}"),
                    tenant: None,
                };
                // A relation only the new document's tuples name is not one
                // a write can name over the old one.
                if came
                    .iter()
                    .any(|(r, _, _)| old.t.relations.get(r).is_none())
                {
                    return None;
                }
                self.out
                    .removed
                    .extend(gone.into_iter().map(|t| Write::Unrelate(tuple(t))));
                self.out
                    .added
                    .extend(came.into_iter().map(|t| Write::Relate(tuple(t))));
                self.full()?;
            }
        }
        Some(())
    }
}
