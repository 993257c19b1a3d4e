//! The builder behind [`Snapshot::from_staged`], in the order it runs: the
//! schema (types, actions, roles flattened, derivations), then the staged
//! facts taken list by list into the snapshot's interners and into pairs,
//! the indexes made from those pairs, and the condition sets. Each step
//! frees what the next does not need, so a reload's peak stays close to
//! the serving snapshot plus the new one.

use std::collections::BTreeMap;

use hashbrown::hash_map::Entry;
use hashbrown::HashMap;

use super::chunked::Chunked;
use super::ids::{checked, RoleId, TypeId};
use super::perms::PermIndex;
use super::staged::{AssignmentFact, TenantRoleFact, TupleFact};
use super::{
    AttrRows, Attrs, BitSet, BuildError, Counts, Csr, Derive, Emails, Forward, Interner, Profile,
    ResourceSet, Snapshot, Staged, Tables, TypeInfo, UserInfo, UserSet, Values, AUTOGEN, NONE,
};
use crate::abac::{self, Cond};
use crate::model::{self, ConditionSetType};

/// The longest chain of condition sets a set and its parents may form.
/// Permit's own nesting is a few levels; a longer chain is a broken
/// environment, refused like a cycle.
pub const MAX_PARENT_DEPTH: usize = 32;

/// Splits `"type:rest"` at the first colon.
fn split_pair(s: &str) -> Option<(&str, &str)> {
    let (a, b) = s.split_once(':')?;
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

/// Depth-first flattening of an `extends` graph over dense ids.
/// `direct[i]` are role i's own grants, `parents[i]` the roles it extends.
fn flatten(
    kind: &'static str,
    names: &Interner,
    direct: Vec<BitSet>,
    parents: &[Vec<u32>],
) -> Result<Vec<BitSet>, BuildError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let n = direct.len();
    let mut out = direct;
    let mut mark = vec![Mark::New; n];
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next parent index).
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&p) = parents[node].get(*next) {
                *next += 1;
                let p = p as usize;
                match mark[p] {
                    Mark::Done => {}
                    Mark::New => {
                        mark[p] = Mark::Active;
                        stack.push((p, 0));
                    }
                    Mark::Active => {
                        let start = stack.iter().position(|&(s, _)| s == p).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..]
                            .iter()
                            .map(|&(s, _)| names.name(s as u32).to_owned())
                            .collect();
                        cycle.push(names.name(p as u32).to_owned());
                        return Err(BuildError::ExtendsCycle { kind, cycle });
                    }
                }
            } else {
                stack.pop();
                mark[node] = Mark::Done;
                for &p in &parents[node] {
                    let inherited = out[p as usize].clone();
                    out[node].union_with(&inherited);
                }
            }
        }
    }
    Ok(out)
}

/// An action, or the actions of a group of that name, on type `t`.
fn resolve_actions(
    type_info: &[TypeInfo],
    groups: &[HashMap<String, Vec<u32>>],
    t: u32,
    name: &str,
) -> Vec<u32> {
    match type_info[t as usize].actions.get(name) {
        Some(a) => vec![a],
        None => groups[t as usize].get(name).cloned().unwrap_or_default(),
    }
}

#[derive(Default)]
pub(super) struct Builder {
    dropped: usize,
}

/// The schema, resolved: what the facts and the conditions are judged by.
struct Schema {
    types: Interner,
    type_info: Vec<TypeInfo>,
    relations: Interner,
    /// Per type: its action groups by name, as action ids.
    groups: Vec<HashMap<String, Vec<u32>>>,
    roles: Interner,
    /// Per tenant role: flattened `(type, action)` grants, sorted.
    role_perms: Vec<Vec<(u32, u32)>>,
}

/// The staged facts in the snapshot's interners, and the pairs its
/// indexes are made from.
struct Facts {
    attr_names: Interner,
    values: Values,
    tenants: Interner,
    tenant_attrs: Vec<Option<Attrs>>,
    users: Interner,
    user_info: Vec<UserInfo>,
    instances: Interner,
    inst_tenant: Vec<u32>,
    inst_attrs: HashMap<u32, Attrs>,
    /// user → (tenant, role)
    tenant_pairs: Chunked<(u32, (u32, u32))>,
    /// user → (instance, resource role). Chunked, like the staged facts
    /// they come from: they grow as the assignments are read and their
    /// chunks freed, instead of being reserved whole beside all of them.
    inst_pairs: Chunked<(u32, (u32, u32))>,
    /// (subject, relation, object)
    tuples: Vec<(u32, u32, u32)>,
}

/// The rows both ways of each kind of fact.
struct Indexes {
    type_instances: Csr<u32>,
    user_roles: Csr<(u32, u32)>,
    tenant_users: Csr<(u32, u32)>,
    user_inst_roles: Csr<(u32, u32)>,
    inst_users: Csr<(u32, u32)>,
    tuples_in: Csr<(u32, u32)>,
    tuples_out: Csr<(u32, u32)>,
}

/// Compiled condition sets, and how many of each were read.
struct Conditions {
    user_sets: Vec<UserSet>,
    resource_sets: Vec<ResourceSet>,
    sets: usize,
    rules: usize,
}

impl Builder {
    pub(super) fn build(mut self, mut doc: Staged) -> Result<Snapshot, BuildError> {
        if doc.keys.overflowed() || doc.attr_names.overflowed() {
            return Err(BuildError::TooMany {
                what: "keys or bytes of key text",
            });
        }
        let mut schema = Schema::build(&doc)?;
        let schema_hash = doc.schema_hash();
        let mut facts = Facts::new(&mut doc);
        self.tenants_and_users(&mut doc, &schema, &mut facts)?;
        self.instances(&mut doc, &schema, &mut facts);
        self.tuples(&mut doc, &mut schema, &mut facts);
        self.assignments(&mut doc, &schema, &mut facts);
        // Users, tenants and instances are bounded by the staged keys checked
        // above; relations also count the schema's, so they are checked here.
        fits(&schema.relations, "relations")?;
        // The strings of the facts are all in the snapshot's own interners now.
        drop(std::mem::take(&mut doc.keys));
        let indexes = facts.indexes(schema.types.len())?;
        let conditions = self.conditions(&doc, &mut schema)?;
        Ok(Snapshot::from_tables(self.assemble(
            schema,
            schema_hash,
            facts,
            indexes,
            conditions,
        )))
    }

    fn tenants_and_users(
        &mut self,
        doc: &mut Staged,
        schema: &Schema,
        f: &mut Facts,
    ) -> Result<(), BuildError> {
        for tn in std::mem::take(&mut doc.tenants) {
            let key = doc.name(tn.key);
            if key.is_empty() {
                return Err(BuildError::EmptyKey { what: "a tenant" });
            }
            let id = f.intern_tenant(key);
            f.tenant_attrs[id as usize] = tn.attrs;
        }
        for u in std::mem::take(&mut doc.users) {
            let key = doc.name(u.key);
            if key.is_empty() {
                return Err(BuildError::EmptyKey { what: "a user" });
            }
            let id = f.intern_user(key);
            f.user_info[id as usize] = u.info;
        }
        for fact in std::mem::take(&mut doc.user_roles) {
            let TenantRoleFact { user, role, tenant } = fact;
            let Some(id) = f.users.get(doc.name(user)) else {
                continue;
            };
            match (schema.roles.get(doc.name(role)), tenant) {
                (Some(role), tenant) if tenant != NONE => {
                    let tn = f.intern_tenant(doc.name(tenant));
                    f.tenant_pairs.push((id, (tn, role)));
                }
                _ => self.dropped += 1,
            }
        }
        Ok(())
    }

    /// Resource instances; tuples and assignments may name more implicitly.
    fn instances(&mut self, doc: &mut Staged, schema: &Schema, f: &mut Facts) {
        for ri in std::mem::take(&mut doc.instances) {
            let Some(t) = schema
                .types
                .get(doc.name(ri.resource))
                .filter(|_| ri.key != NONE)
            else {
                self.dropped += 1;
                continue;
            };
            let id = f.intern_inst(t, doc.name(ri.key));
            if ri.tenant != NONE {
                f.inst_tenant[id as usize] = f.intern_tenant(doc.name(ri.tenant));
            }
            if let Some(attrs) = ri.attrs {
                f.inst_attrs.insert(id, attrs);
            }
        }
    }

    fn tuples(&mut self, doc: &mut Staged, schema: &mut Schema, f: &mut Facts) {
        f.tuples.reserve(doc.tuples.len());
        for fact in std::mem::take(&mut doc.tuples) {
            let TupleFact {
                subject,
                relation,
                object,
            } = fact;
            match (
                parse_inst(&schema.types, doc.name(subject)),
                parse_inst(&schema.types, doc.name(object)),
                relation,
            ) {
                (Some((st, sk)), Some((ot, ok)), relation) if relation != NONE => {
                    let s = f.intern_inst(st, sk);
                    let o = f.intern_inst(ot, ok);
                    let r = schema.relations.intern(doc.name(relation));
                    f.tuples.push((s, r, o));
                }
                _ => self.dropped += 1,
            }
        }
    }

    fn assignments(&mut self, doc: &mut Staged, schema: &Schema, f: &mut Facts) {
        for fact in std::mem::take(&mut doc.assignments) {
            let AssignmentFact {
                user,
                role,
                tenant,
                instance: inst,
            } = fact;
            if user == NONE {
                self.dropped += 1;
                continue;
            }
            let (user, role) = (doc.name(user), doc.name(role));
            if inst != NONE {
                let Some((t, key)) = parse_inst(&schema.types, doc.name(inst)) else {
                    self.dropped += 1;
                    continue;
                };
                let Some(role) = schema.type_info[t as usize].roles.get(role) else {
                    self.dropped += 1;
                    continue;
                };
                let user = f.intern_user(user);
                let i = f.intern_inst(t, key);
                f.inst_pairs.push((user, (i, role)));
            } else {
                match (schema.roles.get(role), tenant) {
                    (Some(role), tenant) if tenant != NONE => {
                        let user = f.intern_user(user);
                        let tn = f.intern_tenant(doc.name(tenant));
                        f.tenant_pairs.push((user, (tn, role)));
                    }
                    _ => self.dropped += 1,
                }
            }
        }
    }

    /// Compiles condition sets (with parent inheritance) and indexes the
    /// rules per (type, action).
    fn conditions(&mut self, doc: &Staged, schema: &mut Schema) -> Result<Conditions, BuildError> {
        let Schema {
            types,
            roles,
            type_info,
            groups,
            ..
        } = schema;
        let type_ids_by_uuid: HashMap<&str, u32> = doc
            .resources
            .iter()
            .filter_map(|r| Some((r.id.as_deref()?, types.get(&r.key)?)))
            .collect();
        // Own conditions by key, and the parent link (by id or key).
        let mut by_key: BTreeMap<&str, &model::ConditionSet> = BTreeMap::new();
        let mut key_by_id: HashMap<&str, &str> = HashMap::new();
        for cs in &doc.condition_sets {
            if cs.key.is_empty() {
                return Err(BuildError::EmptyKey {
                    what: "a condition set",
                });
            }
            by_key.insert(&cs.key, cs);
            if let Some(id) = &cs.id {
                key_by_id.insert(id, &cs.key);
            }
        }
        let bad = |set: &str, reason: String| BuildError::BadConditionSet {
            set: set.to_owned(),
            reason,
        };
        // Conditions of a set including its ancestors: each set's own
        // compiled once, chains at most MAX_PARENT_DEPTH long. (Compiled
        // and walked afresh per set, a chain of 5,000 took cubic time and
        // quadratic memory: 38 s and 4.8 GB.)
        let mut own: HashMap<&str, Cond> = HashMap::new();
        let mut full_condition = |key: &str| -> Result<Cond, BuildError> {
            let mut chain: Vec<&model::ConditionSet> = vec![by_key[key]];
            while let Some(parent) = chain[chain.len() - 1]
                .parent_id
                .as_deref()
                .filter(|p| !p.is_empty())
            {
                let cur = &chain[chain.len() - 1].key;
                let pkey = key_by_id.get(parent).copied().unwrap_or(parent);
                let next = by_key
                    .get(pkey)
                    .ok_or_else(|| bad(cur, format!("parent `{parent}` does not exist")))?;
                if chain.iter().any(|c| c.key == pkey) {
                    let mut cycle: Vec<String> = chain.iter().map(|c| c.key.clone()).collect();
                    cycle.push(pkey.to_owned());
                    return Err(BuildError::ParentCycle { cycle });
                }
                if chain.len() == MAX_PARENT_DEPTH {
                    return Err(bad(
                        key,
                        format!("its chain of parents is longer than {MAX_PARENT_DEPTH}"),
                    ));
                }
                chain.push(next);
            }
            let mut conds = Vec::with_capacity(chain.len());
            for cs in chain {
                let cond = match own.entry(&cs.key) {
                    Entry::Occupied(e) => e.get().clone(),
                    Entry::Vacant(e) => e
                        .insert(
                            abac::compile(&cs.conditions.0)
                                .map_err(|err| bad(&cs.key, err.to_string()))?,
                        )
                        .clone(),
                };
                conds.push(cond);
            }
            Ok(if conds.len() == 1 {
                conds.pop().unwrap_or_else(Cond::always)
            } else {
                Cond::All(conds)
            })
        };

        let mut user_set_ids: HashMap<String, u32> = HashMap::new();
        let mut resource_set_ids: HashMap<String, u32> = HashMap::new();
        let mut user_sets = Vec::new();
        let mut resource_sets = Vec::new();
        for (&key, cs) in &by_key {
            match cs.kind {
                ConditionSetType::Userset => {
                    let set = match key.strip_prefix(AUTOGEN) {
                        Some(role) => UserSet::Role(roles.get(role).map(RoleId)),
                        None => UserSet::Cond(full_condition(key)?),
                    };
                    user_set_ids.insert(key.to_owned(), checked(user_sets.len(), "user sets")?);
                    user_sets.push(set);
                }
                ConditionSetType::Resourceset => {
                    let set = if let Some(ty) = key.strip_prefix(AUTOGEN) {
                        types
                            .get(ty)
                            .map_or(ResourceSet::Never, |t| ResourceSet::Type(TypeId(t)))
                    } else {
                        let bound = cs
                            .resource
                            .as_ref()
                            .map(|r| r.key())
                            .or(cs.resource_id.as_deref())
                            .ok_or_else(|| {
                                bad(key, "a resource set must name its resource type".into())
                            })?;
                        let t = types
                            .get(bound)
                            .or_else(|| type_ids_by_uuid.get(bound).copied());
                        match t {
                            Some(t) => ResourceSet::Cond(TypeId(t), full_condition(key)?),
                            None => ResourceSet::Never,
                        }
                    };
                    let id = checked(resource_sets.len(), "resource sets")?;
                    resource_set_ids.insert(key.to_owned(), id);
                    resource_sets.push(set);
                }
            }
        }

        for info in type_info.iter_mut() {
            info.abac = vec![Vec::new(); info.actions.len()];
        }
        let mut n_rules = 0;
        for rule in &doc.condition_set_rules {
            let us = match user_set_ids.get(&rule.user_set) {
                Some(&id) => Some(id),
                None => match rule.user_set.strip_prefix(AUTOGEN) {
                    Some(role) => {
                        let id = checked(user_sets.len(), "user sets")?;
                        user_sets.push(UserSet::Role(roles.get(role).map(RoleId)));
                        user_set_ids.insert(rule.user_set.clone(), id);
                        Some(id)
                    }
                    None => None,
                },
            };
            let rs = match resource_set_ids.get(&rule.resource_set) {
                Some(&id) => Some(id),
                None => match rule.resource_set.strip_prefix(AUTOGEN) {
                    Some(ty) => {
                        let id = checked(resource_sets.len(), "resource sets")?;
                        resource_sets.push(
                            types
                                .get(ty)
                                .map_or(ResourceSet::Never, |t| ResourceSet::Type(TypeId(t))),
                        );
                        resource_set_ids.insert(rule.resource_set.clone(), id);
                        Some(id)
                    }
                    None => None,
                },
            };
            let perm = split_pair(&rule.permission).and_then(|(ty, a)| Some((types.get(ty)?, a)));
            let (Some(us), Some(rs), Some((t, action))) = (us, rs, perm) else {
                self.dropped += 1;
                continue;
            };
            let bound = match &resource_sets[rs as usize] {
                ResourceSet::Type(bt) | ResourceSet::Cond(bt, _) => Some(bt.0),
                ResourceSet::Never => None,
            };
            if bound != Some(t) {
                // A rule whose resource set is bound to another type never applies.
                continue;
            }
            for a in resolve_actions(type_info, groups, t, action) {
                type_info[t as usize].abac[a as usize].push((us, rs));
                n_rules += 1;
            }
        }
        Ok(Conditions {
            user_sets,
            resource_sets,
            sets: by_key.len(),
            rules: n_rules,
        })
    }

    /// Counts, shrinks and moves everything into the snapshot, turning
    /// each kind's attributes into rows and freeing its boxes as it goes.
    fn assemble(
        self,
        schema: Schema,
        schema_hash: [u8; 32],
        f: Facts,
        ix: Indexes,
        conditions: Conditions,
    ) -> Tables {
        let Facts {
            mut attr_names,
            mut values,
            mut tenants,
            tenant_attrs,
            mut users,
            user_info,
            mut instances,
            mut inst_tenant,
            inst_attrs,
            ..
        } = f;
        let n_users = users.len();
        let emails = Emails::build(user_info.len(), |u| {
            values.opt(user_info[u as usize].email)?.as_str()
        });
        let counts = Counts {
            users: n_users,
            tenants: tenants.len(),
            roles: schema.roles.len(),
            resource_types: schema.types.len(),
            resource_instances: instances.len(),
            tenant_role_assignments: ix.user_roles.len(),
            instance_role_assignments: ix.user_inst_roles.len(),
            relationship_tuples: ix.tuples_in.len(),
            condition_sets: conditions.sets,
            condition_set_rules: conditions.rules,
            dropped_facts: self.dropped,
        };
        users.freeze();
        instances.freeze();
        tenants.freeze();
        inst_tenant.shrink_to_fit();
        attr_names.shrink_to_fit();
        values.shrink_to_fit();
        let tenant_rows = AttrRows::of(
            tenants.len(),
            (0u32..)
                .zip(&tenant_attrs)
                .filter_map(|(t, a)| Some((t, a.as_ref()?))),
        );
        drop(tenant_attrs);
        let inst_rows = AttrRows::of(instances.len(), inst_attrs.iter().map(|(&i, a)| (i, a)));
        drop(inst_attrs);
        let user_attrs = AttrRows::of(
            n_users,
            (0u32..)
                .zip(&user_info)
                .filter_map(|(u, info)| Some((u, info.attrs.as_ref()?))),
        );
        let profiles = user_info
            .into_iter()
            .map(|i| Profile {
                email: i.email,
                first_name: i.first_name,
                last_name: i.last_name,
            })
            .collect();

        let perms = PermIndex::build(&schema.types, &schema.type_info, &schema.role_perms);
        Tables {
            tenants,
            tenant_attrs: tenant_rows,
            users,
            profiles,
            user_attrs,
            emails,
            roles: schema.roles,
            perms,
            types: schema.types,
            type_info: schema.type_info,
            user_roles: ix.user_roles,
            tenant_users: ix.tenant_users,
            instances,
            inst_tenant,
            type_instances: ix.type_instances,
            inst_attrs: inst_rows,
            attr_names,
            values,
            user_inst_roles: ix.user_inst_roles,
            inst_users: ix.inst_users,
            tuples_in: ix.tuples_in,
            tuples_out: ix.tuples_out,
            user_sets: conditions.user_sets,
            resource_sets: conditions.resource_sets,
            relations: schema.relations,
            schema: schema_hash,
            counts,
        }
    }
}

/// Refuses a schema list that ran past 32-bit ids or text offsets (the
/// interner then stops adding keys).
fn fits(interner: &Interner, what: &'static str) -> Result<(), BuildError> {
    if interner.overflowed() {
        return Err(BuildError::TooMany { what });
    }
    Ok(())
}

/// `"type:key"` as a known type's id and the key.
fn parse_inst<'s>(types: &Interner, s: &'s str) -> Option<(u32, &'s str)> {
    let (ty, key) = split_pair(s)?;
    Some((types.get(ty)?, key))
}

impl Schema {
    fn build(doc: &Staged) -> Result<Schema, BuildError> {
        let mut schema = Schema::resource_types(doc)?;
        schema.tenant_roles(doc)?;
        schema.resource_roles(doc)?;
        schema.derivations(doc)?;
        Ok(schema)
    }

    /// Resource types, their actions and action groups; the names of their
    /// roles and relations.
    fn resource_types(doc: &Staged) -> Result<Schema, BuildError> {
        let mut types = Interner::new();
        let mut type_info: Vec<TypeInfo> = Vec::new();
        let mut relations = Interner::new();
        let mut groups: Vec<HashMap<String, Vec<u32>>> = Vec::new();
        for r in &doc.resources {
            if r.key.is_empty() {
                return Err(BuildError::EmptyKey { what: "a resource" });
            }
            let t = types.intern(&r.key);
            fits(&types, "resource types")?;
            if t as usize == type_info.len() {
                type_info.push(TypeInfo::default());
                groups.push(HashMap::new());
            }
            let info = &mut type_info[t as usize];
            for action in r.actions.keys() {
                info.actions.intern(action);
            }
            for (group, members) in &r.action_groups {
                let ids = members
                    .actions()
                    .iter()
                    .filter_map(|a| info.actions.get(a))
                    .collect();
                groups[t as usize].insert(group.clone(), ids);
            }
            for role in r.roles.keys() {
                info.roles.intern(role);
            }
            for rel in r.relations.keys() {
                relations.intern(rel);
            }
            fits(&info.actions, "actions of a resource type")?;
            fits(&info.roles, "roles of a resource type")?;
        }
        fits(&relations, "relations")?;
        Ok(Schema {
            types,
            type_info,
            relations,
            groups,
            roles: Interner::new(),
            role_perms: Vec::new(),
        })
    }

    /// Tenant roles: direct grants as bits over a global (type, action)
    /// index, flattened along `extends`, then granted per action.
    fn tenant_roles(&mut self, doc: &Staged) -> Result<(), BuildError> {
        let mut perm_base = Vec::with_capacity(self.type_info.len());
        let mut perm_owner: Vec<(u32, u32)> = Vec::new();
        for (t, info) in (0u32..).zip(&self.type_info) {
            perm_base.push(checked(perm_owner.len(), "permissions")?);
            perm_owner.extend((0u32..).take(info.actions.len()).map(|a| (t, a)));
        }
        let perm_count = perm_owner.len();
        checked(perm_count, "permissions")?;
        let roles = &mut self.roles;
        for r in &doc.roles {
            if r.key.is_empty() {
                return Err(BuildError::EmptyKey { what: "a role" });
            }
            roles.intern(&r.key);
        }
        fits(roles, "roles")?;
        let mut direct = vec![BitSet::with_len(perm_count); roles.len()];
        let mut parents = vec![Vec::new(); roles.len()];
        for r in &doc.roles {
            let id = roles.get(&r.key).unwrap_or(NONE) as usize;
            for p in &r.permissions {
                let Some((ty, action)) = split_pair(p) else {
                    continue;
                };
                let Some(t) = self.types.get(ty) else {
                    continue;
                };
                for a in resolve_actions(&self.type_info, &self.groups, t, action) {
                    direct[id].insert(perm_base[t as usize] + a);
                }
            }
            for e in &r.extends {
                let parent = roles.get(e).ok_or_else(|| BuildError::UnknownExtends {
                    kind: "role",
                    role: r.key.clone(),
                    missing: e.clone(),
                })?;
                parents[id].push(parent);
            }
        }
        let flat = flatten("role", roles, direct, &parents)?;
        self.role_perms = Vec::with_capacity(roles.len());
        for info in self.type_info.iter_mut() {
            info.tenant_grants = vec![BitSet::with_len(roles.len()); info.actions.len()];
        }
        for (role, bits) in (0u32..).zip(&flat) {
            let perms: Vec<(u32, u32)> = bits.iter().map(|p| perm_owner[p as usize]).collect();
            for &(t, a) in &perms {
                self.type_info[t as usize].tenant_grants[a as usize].insert(role);
            }
            self.role_perms.push(perms);
        }
        Ok(())
    }

    /// Resource roles, flattened per type along `extends`.
    fn resource_roles(&mut self, doc: &Staged) -> Result<(), BuildError> {
        for r in &doc.resources {
            let Some(t) = self.types.get(&r.key) else {
                continue;
            };
            let n_roles = self.type_info[t as usize].roles.len();
            let n_actions = self.type_info[t as usize].actions.len();
            let mut direct = vec![BitSet::with_len(n_actions); n_roles];
            let mut parents = vec![Vec::new(); n_roles];
            for (name, role) in &r.roles {
                let id = self.type_info[t as usize].roles.get(name).unwrap_or(NONE) as usize;
                for p in &role.permissions {
                    // Tolerate "type:action" spelled in full for the own type.
                    let action = match split_pair(p) {
                        Some((ty, a)) if ty == r.key => a,
                        _ => p.as_str(),
                    };
                    for a in resolve_actions(&self.type_info, &self.groups, t, action) {
                        direct[id].insert(a);
                    }
                }
                for e in &role.extends {
                    let parent = self.type_info[t as usize].roles.get(e).ok_or_else(|| {
                        BuildError::UnknownExtends {
                            kind: "resource role",
                            role: format!("{}#{}", r.key, name),
                            missing: format!("{}#{}", r.key, e),
                        }
                    })?;
                    parents[id].push(parent);
                }
            }
            let info = &mut self.type_info[t as usize];
            let flat = flatten("resource role", &info.roles, direct, &parents)?;
            info.role_grants = vec![BitSet::with_len(n_roles); n_actions];
            for (role, bits) in (0u32..).zip(&flat) {
                for a in bits.iter() {
                    info.role_grants[a as usize].insert(role);
                }
            }
            info.role_actions = flat;
            info.derive = vec![Vec::new(); n_roles];
            info.forward = vec![Vec::new(); n_roles];
        }
        Ok(())
    }

    /// Derivation rules (`granted_to`), indexed from both ends.
    fn derivations(&mut self, doc: &Staged) -> Result<(), BuildError> {
        for r in &doc.resources {
            let Some(t) = self.types.get(&r.key) else {
                continue;
            };
            for (name, role) in &r.roles {
                let Some(granted) = &role.granted_to else {
                    continue;
                };
                let role_id = self.type_info[t as usize].roles.get(name).unwrap_or(NONE);
                let all_no_direct = granted
                    .when
                    .as_ref()
                    .is_some_and(|w| w.no_direct_roles_on_object);
                for rule in &granted.users_with_role {
                    let unknown = || BuildError::UnknownDerivation {
                        role: format!("{}#{}", r.key, name),
                        on_resource: rule.on_resource.clone(),
                        from_role: rule.role.clone(),
                    };
                    let from_type = self.types.get(&rule.on_resource).ok_or_else(unknown)?;
                    let from_role = self.type_info[from_type as usize]
                        .roles
                        .get(&rule.role)
                        .ok_or_else(unknown)?;
                    let relation = self.relations.intern(&rule.linked_by_relation);
                    fits(&self.relations, "relations")?;
                    let no_direct = all_no_direct
                        || rule
                            .when
                            .as_ref()
                            .is_some_and(|w| w.no_direct_roles_on_object);
                    self.type_info[t as usize].derive[role_id as usize].push(Derive {
                        from_type,
                        from_role,
                        relation,
                        no_direct,
                    });
                    self.type_info[from_type as usize].forward[from_role as usize].push(Forward {
                        relation,
                        to_type: t,
                        to_role: role_id,
                        no_direct,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Facts {
    /// Takes the staged pools the snapshot keeps as they are. The staged
    /// strings are only read by id from here, so their lookup table goes
    /// first: it would otherwise set the build's peak (docs/performance.md).
    fn new(doc: &mut Staged) -> Facts {
        doc.keys.drop_lookups();
        let attr_names = std::mem::take(&mut doc.attr_names);
        let mut values = std::mem::take(&mut doc.values);
        values.drop_lookups();
        Facts {
            attr_names,
            values,
            tenants: Interner::new(),
            tenant_attrs: Vec::new(),
            users: Interner::new(),
            user_info: Vec::with_capacity(doc.users.len()),
            instances: Interner::new(),
            inst_tenant: Vec::with_capacity(doc.instances.len()),
            inst_attrs: HashMap::new(),
            tenant_pairs: Chunked::default(),
            inst_pairs: Chunked::default(),
            tuples: Vec::new(),
        }
    }

    fn intern_user(&mut self, key: &str) -> u32 {
        let id = self.users.intern(key);
        if id as usize == self.user_info.len() {
            self.user_info.push(UserInfo::EMPTY);
        }
        id
    }

    fn intern_tenant(&mut self, key: &str) -> u32 {
        let id = self.tenants.intern(key);
        if id as usize == self.tenant_attrs.len() {
            self.tenant_attrs.push(None);
        }
        id
    }

    fn intern_inst(&mut self, t: u32, key: &str) -> u32 {
        let id = self.instances.intern_in(t, key);
        if id as usize == self.inst_tenant.len() {
            self.inst_tenant.push(NONE);
        }
        id
    }

    /// Each list of pairs indexes both ways, then is dropped.
    fn indexes(&mut self, n_types: usize) -> Result<Indexes, BuildError> {
        // Rows are numbered in 32 bits.
        checked(self.tenant_pairs.len(), "tenant role assignments")?;
        checked(self.inst_pairs.len(), "resource role assignments")?;
        checked(self.tuples.len(), "relationship tuples")?;
        let (n_users, n_insts) = (self.users.len(), self.instances.len());
        let type_instances = Csr::build(
            n_types,
            (0..n_insts as u32).map(|i| (self.instances.scope(i), i)),
        );
        let tenant_pairs = std::mem::take(&mut self.tenant_pairs);
        let tenant_users = Csr::build(
            self.tenants.len(),
            tenant_pairs.iter().map(|&(u, (t, r))| (t, (u, r))),
        );
        let user_roles = Csr::build(n_users, tenant_pairs.iter().copied());
        drop(tenant_pairs);
        let inst_pairs = std::mem::take(&mut self.inst_pairs);
        let inst_users = Csr::build(n_insts, inst_pairs.iter().map(|&(u, (i, r))| (i, (u, r))));
        let user_inst_roles = Csr::build(n_users, inst_pairs.iter().copied());
        drop(inst_pairs);
        let tuples = std::mem::take(&mut self.tuples);
        let tuples_in = Csr::build(n_insts, tuples.iter().map(|&(s, r, o)| (o, (r, s))));
        let tuples_out = Csr::build(n_insts, tuples.iter().map(|&(s, r, o)| (s, (r, o))));
        drop(tuples);
        Ok(Indexes {
            type_instances,
            user_roles,
            tenant_users,
            user_inst_roles,
            inst_users,
            tuples_in,
            tuples_out,
        })
    }
}
