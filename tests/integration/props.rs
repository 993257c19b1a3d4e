//! The property test: random environments and random queries, and the
//! engine must answer every endpoint exactly as the reference evaluator does.
//!
//! Environments are generated as small integers ("raw" choices) and then
//! turned into a JSON data document over fixed small name pools. Small pools
//! make collisions likely (two rules on one tuple, a cycle of `parent`
//! tuples, a request attribute shadowing a stored one), and integers shrink
//! well, so a failure reports a small document. The generator stays inside
//! what `docs/semantics.md` pins down; the points it leaves open are listed
//! in `reference.rs` and avoided here (every assignment names a listed user,
//! a listed tenant and a defined role, extends and set parents are acyclic,
//! derivation rules name existing roles, `not` takes one condition).
//!
//! The case count is proptest's: 256 by default, `PROPTEST_CASES` to change.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::support::engine::{doc, Engine};
use pdp_devkit::reference::{self, Reference};

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];
const TYPES: [&str; 3] = ["folder", "doc", "team"];
const ACTIONS: [&str; 4] = ["read", "write", "delete", "share"];
const GROUP: &str = "grp";
const RES_ROLES: [&str; 3] = ["viewer", "editor", "owner"];
const TENANT_ROLES: [&str; 3] = ["member", "manager", "boss"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
/// `(object type, relation, subject type)`.
const RELATIONS: [(&str, &str, &str); 4] = [
    ("folder", "parent", "folder"),
    ("doc", "parent", "folder"),
    ("doc", "team", "team"),
    ("folder", "team", "team"),
];

fn dept_name(i: u8) -> &'static str {
    ["eng", "ops", "hr"][i as usize % 3]
}

fn ip_addr(i: u8) -> &'static str {
    ["10.0.0.1", "10.0.0.2"][i as usize % 2]
}

fn plan_name(i: u8) -> &'static str {
    ["pro", "free"][i as usize % 2]
}

fn pick<T: Copy>(pool: &[T], i: u8) -> T {
    pool[i as usize % pool.len()]
}

fn pick_owned<T>(mut pool: Vec<T>, i: u8) -> T {
    let n = pool.len();
    pool.swap_remove(i as usize % n)
}

fn bits(mask: u8, n: usize) -> impl Iterator<Item = usize> {
    (0..n).filter(move |i| mask & (1 << i) != 0)
}

// ---------------------------------------------------------------------------
// Raw choices
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct RawRule {
    relation: u8,
    role: u8,
    no_direct: bool,
}

#[derive(Debug, Clone)]
struct RawResRole {
    /// Bits 0-3 actions, 4 the group, 5 an unknown action.
    perms: u8,
    /// Bits over the roles before this one: keeps `extends` acyclic.
    extends: u8,
    rules: Vec<RawRule>,
    all_no_direct: bool,
}

#[derive(Debug, Clone)]
struct RawType {
    actions: u8,
    group: Option<u8>,
    roles: Vec<Option<RawResRole>>,
}

#[derive(Debug, Clone)]
struct RawTenantRole {
    /// `(type, action)`: type 3 is unknown; action 4 the group, 5 unknown.
    perms: Vec<(u8, u8)>,
    extends: u8,
}

#[derive(Debug, Clone)]
struct RawUser {
    listed: bool,
    email: bool,
    dept: u8,
    level: u8,
    tags: u8,
    items: Vec<u8>,
    /// `users[].roles`: `(role, tenant)`.
    roles: Vec<(u8, u8)>,
}

#[derive(Debug, Clone)]
enum RawCond {
    /// `(path, operator, operand, ref path)`.
    Leaf(u8, u8, u8, Option<u8>),
    All(Vec<RawCond>),
    Any(Vec<RawCond>),
    Not(Box<RawCond>),
}

#[derive(Debug, Clone)]
struct RawSet {
    user: bool,
    ty: u8,
    /// 0 `resource: "T"`, 1 `resource: {"key": T}`, 2 `resource_id`.
    bind: u8,
    with_id: bool,
    cond: RawCond,
    /// A set before this one (of the same kind); by id when it has one.
    parent: Option<u8>,
}

#[derive(Debug, Clone)]
struct RawEnv {
    tenants: u8,
    tenant_plans: Vec<u8>,
    types: Vec<RawType>,
    tenant_roles: Vec<Option<RawTenantRole>>,
    users: Vec<RawUser>,
    /// `(user, role, tenant)`.
    tenant_assignments: Vec<(u8, u8, u8)>,
    /// `(user, type, role, key)`.
    instance_assignments: Vec<(u8, u8, u8, u8)>,
    /// `(type, key, tenant or none, public, level, owner)`.
    instances: Vec<(u8, u8, Option<u8>, bool, u8, u8)>,
    /// `(relation, subject type override, subject key, object key)`.
    tuples: Vec<(u8, Option<u8>, u8, u8)>,
    sets: Vec<RawSet>,
    listed_autogen: bool,
    /// `(user set, type, action, resource set)`.
    rules: Vec<(u8, u8, u8, u8)>,
}

fn raw_cond() -> impl Strategy<Value = RawCond> {
    let leaf = (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop::option::weighted(0.2, any::<u8>()),
    )
        .prop_map(|(p, o, v, r)| RawCond::Leaf(p, o, v, r));
    leaf.prop_recursive(2, 6, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(RawCond::All),
            prop::collection::vec(inner.clone(), 0..3).prop_map(RawCond::Any),
            inner.prop_map(|c| RawCond::Not(Box::new(c))),
        ]
    })
}

fn raw_env() -> impl Strategy<Value = RawEnv> {
    let rule =
        (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(relation, role, no_direct)| RawRule {
            relation,
            role,
            no_direct,
        });
    let res_role = (
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(rule, 0..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(perms, extends, rules, all_no_direct)| RawResRole {
            perms,
            extends,
            rules,
            all_no_direct,
        });
    let ty = (
        (0u8..16).prop_map(|m| m | 1),
        prop::option::of(1u8..16),
        prop::collection::vec(prop::option::of(res_role), 3),
    )
        .prop_map(|(actions, group, roles)| RawType {
            actions,
            group,
            roles,
        });
    let tenant_role = (
        prop::collection::vec(
            (
                prop::sample::select(vec![0u8, 1, 1, 2, 3]),
                prop::sample::select(vec![0u8, 0, 1, 2, 3, 4, 5]),
            ),
            1..6,
        ),
        any::<u8>(),
    )
        .prop_map(|(perms, extends)| RawTenantRole { perms, extends });
    let user = (
        prop::bool::weighted(0.9),
        any::<bool>(),
        0u8..3,
        0u8..4,
        any::<u8>(),
        prop::collection::vec(0u8..3, 0..3),
        prop::collection::vec((0u8..3, 0u8..3), 0..2),
    )
        .prop_map(|(listed, email, dept, level, tags, items, roles)| RawUser {
            listed,
            email,
            dept,
            level,
            tags,
            items,
            roles,
        });
    let set = (
        any::<bool>(),
        0u8..3,
        0u8..3,
        any::<bool>(),
        raw_cond(),
        prop::option::of(any::<u8>()),
    )
        .prop_map(|(user, ty, bind, with_id, cond, parent)| RawSet {
            user,
            ty,
            bind,
            with_id,
            cond,
            parent,
        });
    (
        (
            2u8..4,
            prop::collection::vec(0u8..3, 3),
            prop::collection::vec(ty, 3),
            prop::collection::vec(prop::option::of(tenant_role), 3),
            prop::collection::vec(user, 4),
        ),
        (
            prop::collection::vec((0u8..4, 0u8..3, 0u8..3), 1..8),
            prop::collection::vec((0u8..4, 0u8..3, 0u8..3, 0u8..3), 1..8),
            prop::collection::vec(
                (
                    0u8..3,
                    0u8..3,
                    prop::option::of(0u8..3),
                    any::<bool>(),
                    0u8..4,
                    0u8..4,
                ),
                0..6,
            ),
            prop::collection::vec(
                (0u8..4, prop::option::weighted(0.15, 0u8..3), 0u8..3, 0u8..3),
                1..12,
            ),
            prop::collection::vec(set, 0..5),
            any::<bool>(),
            prop::collection::vec(
                (
                    any::<u8>(),
                    prop::sample::select(vec![0u8, 1, 1, 2]),
                    prop::sample::select(vec![0u8, 0, 0, 1, 2, 3, 4, 5]),
                    any::<u8>(),
                ),
                0..8,
            ),
        ),
    )
        .prop_map(
            |(
                (tenants, tenant_plans, types, tenant_roles, users),
                (
                    tenant_assignments,
                    instance_assignments,
                    instances,
                    tuples,
                    sets,
                    listed_autogen,
                    rules,
                ),
            )| RawEnv {
                tenants,
                tenant_plans,
                types,
                tenant_roles,
                users,
                tenant_assignments,
                instance_assignments,
                instances,
                tuples,
                sets,
                listed_autogen,
                rules,
            },
        )
}

// ---------------------------------------------------------------------------
// Raw choices → a data document
// ---------------------------------------------------------------------------

/// Attribute paths conditions read; `user.items` is an array of objects for
/// the `*_match` operators.
const PATHS: [&str; 16] = [
    "user.dept",
    "user.level",
    "user.tags",
    "user.key",
    "user.roles",
    "user.items",
    "user.missing",
    "resource.public",
    "resource.level",
    "resource.owner",
    "resource.type",
    "tenant.plan",
    "tenant.key",
    "context.ip",
    "context.level",
    "subject.dept",
];

const OPS: [&str; 16] = [
    "equals",
    "not-equals",
    "greater-than",
    "greater-than-equals",
    "less-than",
    "less-than-equals",
    "contains",
    "array_contains",
    "array_superset",
    "array_subset",
    "array_intersect",
    "in",
    "between",
    "object_match",
    "any_match",
    "all_match",
];

fn operand(i: u8) -> Value {
    let pool = [
        json!("eng"),
        json!("ops"),
        json!(0),
        json!(1),
        json!(2.0),
        json!(3),
        json!("1"),
        json!(true),
        json!(false),
        json!(["a", "b"]),
        json!(["eng", "ops"]),
        json!([1, 3]),
        json!(["a"]),
        json!("a"),
        json!("pro"),
        json!("u1"),
        json!("doc"),
        json!("10.0.0.1"),
        json!({"match": {"k": {"equals": 1}}}),
        json!({"match": {"k": {"less-than": 2}}}),
        json!([]),
        json!(["member", "boss"]),
        json!("member"),
        json!([0, 2]),
        json!(["a", "f"]),
        json!(["t0", "t1"]),
    ];
    pool[i as usize % pool.len()].clone()
}

/// `(operator, operand)` pairs that fit each path of [`PATHS`], so that a
/// fair share of generated conditions can hold.
fn fitting(path: &str) -> Vec<(&'static str, Value)> {
    let items = |op: &'static str, f: &str, v: Value| (op, json!({"match": {"k": {f: v}}}));
    match path {
        "user.dept" | "subject.dept" => vec![
            ("equals", json!("eng")),
            ("in", json!(["eng", "ops"])),
            ("not-equals", json!("hr")),
            ("contains", json!("n")),
        ],
        "user.level" => vec![
            ("greater-than", json!(0)),
            ("less-than-equals", json!(2)),
            ("between", json!([0, 2])),
            ("equals", json!(3.0)),
            ("in", json!([1, 3])),
        ],
        "user.tags" => vec![
            ("array_contains", json!("a")),
            ("array_intersect", json!(["a", "c"])),
            ("array_subset", json!(["a", "b"])),
            ("array_superset", json!(["a"])),
            ("contains", json!("b")),
        ],
        "user.key" => vec![
            ("equals", json!("u1")),
            ("in", json!(["u0", "u2"])),
            ("not-equals", json!("u3")),
        ],
        "user.roles" => vec![
            ("array_contains", json!("member")),
            ("array_intersect", json!(["member", "boss"])),
            ("contains", json!("manager")),
        ],
        "user.items" => vec![
            items("any_match", "equals", json!(1)),
            items("all_match", "less-than", json!(2)),
            items("object_match", "equals", json!(0)),
        ],
        "resource.public" => vec![("equals", json!(true)), ("equals", json!(false))],
        "resource.level" => vec![("greater-than-equals", json!(1)), ("less-than", json!(2))],
        "resource.owner" => vec![
            ("equals", json!({"ref": "user.key"})),
            ("in", json!(["u0", "u1"])),
        ],
        "resource.type" => vec![("equals", json!("doc")), ("in", json!(["doc", "folder"]))],
        "tenant.plan" => vec![("equals", json!("pro")), ("not-equals", json!("free"))],
        "tenant.key" => vec![("equals", json!("t0"))],
        "context.ip" => vec![("equals", json!("10.0.0.1")), ("in", json!(["10.0.0.1"]))],
        "context.level" => vec![
            ("less-than", json!({"ref": "user.level"})),
            ("greater-than", json!(0)),
        ],
        _ => vec![("not-equals", json!("x"))],
    }
}

fn cond_json(c: &RawCond) -> Value {
    match c {
        RawCond::Leaf(p, o, v, None) if *o < 160 => {
            let path = pick(&PATHS, *p);
            let (op, operand) = pick_owned(fitting(path), *v);
            json!({ path: { op: operand } })
        }
        RawCond::Leaf(p, o, v, r) => {
            let op = pick(&OPS, *o);
            // A `*_match` operator without `{"match": ...}` is a malformed
            // condition, which refuses the whole document.
            let operand = match r {
                _ if op.ends_with("_match") => {
                    let field_op = pick(&["equals", "less-than", "in"], *v);
                    json!({"match": {"k": {field_op: operand(v / 3)}}})
                }
                Some(r) => json!({"ref": pick(&PATHS, *r)}),
                None => operand(*v),
            };
            json!({ pick(&PATHS, *p): { op: operand } })
        }
        RawCond::All(cs) => json!({"allOf": cs.iter().map(cond_json).collect::<Vec<_>>()}),
        RawCond::Any(cs) => json!({"anyOf": cs.iter().map(cond_json).collect::<Vec<_>>()}),
        RawCond::Not(c) => json!({"not": [cond_json(c)]}),
    }
}

/// Which resource roles exist on each type.
fn roles_of(raw: &RawEnv, ty: usize) -> Vec<usize> {
    (0..RES_ROLES.len())
        .filter(|&r| raw.types[ty].roles[r].is_some())
        .collect()
}

fn tenant_roles_defined(raw: &RawEnv) -> Vec<usize> {
    (0..TENANT_ROLES.len())
        .filter(|&r| raw.tenant_roles[r].is_some())
        .collect()
}

fn build_doc(raw: &RawEnv) -> Value {
    let tenants: Vec<&str> = TENANTS[..raw.tenants as usize].to_vec();
    let mut resources = Vec::new();
    for (ti, t) in raw.types.iter().enumerate() {
        let name = TYPES[ti];
        let actions: Vec<&str> = bits(t.actions, 4).map(|i| ACTIONS[i]).collect();
        let mut action_map = Map::new();
        for a in &actions {
            action_map.insert((*a).to_owned(), json!({}));
        }
        let mut groups = Map::new();
        if let Some(g) = t.group {
            let members: Vec<&str> = bits(g & t.actions, 4).map(|i| ACTIONS[i]).collect();
            groups.insert(GROUP.into(), json!(members));
        }
        let mut relations = Map::new();
        for (o, rel, s) in RELATIONS {
            if o == name {
                relations.insert(rel.into(), json!({"resource": s}));
            }
        }
        let present = roles_of(raw, ti);
        let mut roles = Map::new();
        for &ri in &present {
            let r = raw.types[ti].roles[ri].as_ref().expect("present");
            let mut perms: Vec<String> = bits(r.perms, 4).map(|i| ACTIONS[i].to_owned()).collect();
            if r.perms & 16 != 0 && t.group.is_some() {
                perms.push(GROUP.into());
            }
            if r.perms & 32 != 0 {
                perms.push("fly".into());
            }
            let extends: Vec<&str> = present
                .iter()
                .filter(|&&j| j < ri && r.extends & (1 << j) != 0)
                .map(|&j| RES_ROLES[j])
                .collect();
            let rels: Vec<(&str, &str)> = RELATIONS
                .iter()
                .filter(|(o, _, _)| *o == name)
                .map(|(_, rel, s)| (*rel, *s))
                .collect();
            let mut rules = Vec::new();
            for rule in &r.rules {
                if rels.is_empty() {
                    break;
                }
                let (rel, subject) = pick(&rels, rule.relation);
                let si = TYPES
                    .iter()
                    .position(|t| *t == subject)
                    .expect("known type");
                let subject_roles = roles_of(raw, si);
                if subject_roles.is_empty() {
                    continue;
                }
                let from = RES_ROLES[pick(&subject_roles, rule.role)];
                let mut j =
                    json!({"role": from, "on_resource": subject, "linked_by_relation": rel});
                if rule.no_direct {
                    j["when"] = json!({"no_direct_roles_on_object": true});
                }
                rules.push(j);
            }
            let mut role = json!({"permissions": perms, "extends": extends});
            if !rules.is_empty() {
                role["granted_to"] = json!({"users_with_role": rules});
                if r.all_no_direct {
                    role["granted_to"]["when"] = json!({"no_direct_roles_on_object": true});
                }
            }
            roles.insert(RES_ROLES[ri].into(), role);
        }
        resources.push(json!({
            "key": name, "id": format!("rid-{name}"), "actions": action_map,
            "action_groups": groups, "relations": relations, "roles": roles
        }));
    }

    let defined = tenant_roles_defined(raw);
    let mut roles = Vec::new();
    for &ri in &defined {
        let r = raw.tenant_roles[ri].as_ref().expect("defined");
        let perms: Vec<String> = r
            .perms
            .iter()
            .map(|&(t, a)| {
                let ty = if t == 3 { "ghost" } else { TYPES[t as usize] };
                let action = match a {
                    4 => GROUP,
                    5 => "fly",
                    a => ACTIONS[a as usize],
                };
                format!("{ty}:{action}")
            })
            .collect();
        let extends: Vec<&str> = defined
            .iter()
            .filter(|&&j| j < ri && r.extends & (1 << j) != 0)
            .map(|&j| TENANT_ROLES[j])
            .collect();
        roles.push(json!({"key": TENANT_ROLES[ri], "permissions": perms, "extends": extends}));
    }

    let listed: Vec<usize> = (0..USERS.len()).filter(|&u| raw.users[u].listed).collect();
    let tags = ["a", "b", "c"];
    let mut users = Vec::new();
    for &ui in &listed {
        let u = &raw.users[ui];
        let mut attrs = json!({
            "dept": dept_name(u.dept),
            "level": u.level,
            "tags": bits(u.tags, 3).map(|i| tags[i]).collect::<Vec<_>>(),
            "items": u.items.iter().map(|k| json!({"k": k})).collect::<Vec<_>>(),
        });
        if u.level == 3 {
            // Sometimes stored attributes shadow a built-in.
            attrs["key"] = json!("shadow");
        }
        let mut user = json!({"key": USERS[ui], "attributes": attrs});
        if u.email {
            user["email"] = json!(format!("{}@example.test", USERS[ui]));
        }
        if !defined.is_empty() {
            let ur: Vec<Value> = u
                .roles
                .iter()
                .map(|&(r, t)| json!({"role": TENANT_ROLES[pick(&defined, r)], "tenant": pick(&tenants, t)}))
                .collect();
            user["roles"] = json!(ur);
        }
        users.push(user);
    }

    let mut assignments = Vec::new();
    if !listed.is_empty() {
        if !defined.is_empty() {
            for &(u, r, t) in &raw.tenant_assignments {
                assignments.push(json!({
                    "user": USERS[pick(&listed, u)], "role": TENANT_ROLES[pick(&defined, r)],
                    "tenant": pick(&tenants, t), "resource_instance": null
                }));
            }
        }
        for &(u, ty, r, k) in &raw.instance_assignments {
            let present = roles_of(raw, ty as usize);
            if present.is_empty() {
                continue;
            }
            assignments.push(json!({
                "user": USERS[pick(&listed, u)], "role": RES_ROLES[pick(&present, r)],
                "tenant": pick(&tenants, k),
                "resource_instance": format!("{}:{}", TYPES[ty as usize], KEYS[k as usize])
            }));
        }
    }

    let mut instances = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for &(ty, k, t, public, level, owner) in &raw.instances {
        if !seen.insert((ty, k)) {
            continue;
        }
        instances.push(json!({
            "key": KEYS[k as usize], "resource": TYPES[ty as usize],
            "tenant": t.map(|t| pick(&tenants, t)),
            "attributes": {"public": public, "level": level, "owner": USERS[owner as usize]}
        }));
    }

    let tuples: Vec<Value> = raw
        .tuples
        .iter()
        .map(|&(rel, subject_override, sk, ok)| {
            let (object, relation, subject) = pick(&RELATIONS, rel);
            let subject = subject_override.map_or(subject, |s| TYPES[s as usize]);
            json!({"subject": format!("{subject}:{}", KEYS[sk as usize]), "relation": relation,
                   "object": format!("{object}:{}", KEYS[ok as usize]), "tenant": "t0"})
        })
        .collect();

    let mut sets: Vec<Value> = Vec::new();
    for (i, s) in raw.sets.iter().enumerate() {
        let key = format!("set{i}");
        let mut j = json!({"key": key, "type": if s.user { "userset" } else { "resourceset" },
                           "conditions": cond_json(&s.cond)});
        if s.with_id {
            j["id"] = json!(format!("id-{key}"));
        }
        if !s.user {
            let ty = TYPES[s.ty as usize];
            match s.bind {
                0 => j["resource"] = json!(ty),
                1 => j["resource"] = json!({"key": ty}),
                _ => j["resource_id"] = json!(format!("rid-{ty}")),
            }
        }
        let earlier: Vec<usize> = (0..i).filter(|&p| raw.sets[p].user == s.user).collect();
        if let (Some(p), false) = (s.parent, earlier.is_empty()) {
            let p = pick(&earlier, p);
            j["parent_id"] = if raw.sets[p].with_id {
                json!(format!("id-set{p}"))
            } else {
                json!(format!("set{p}"))
            };
        }
        sets.push(j);
    }
    if raw.listed_autogen {
        // Listed autogen sets: their conditions must be ignored.
        sets.push(json!({"key": "__autogen_member", "type": "userset",
                         "conditions": {"allOf": [{"user.dept": {"equals": "nobody"}}]}}));
        sets.push(
            json!({"key": "__autogen_doc", "type": "resourceset", "resource": "doc",
                         "conditions": {"allOf": [{"resource.public": {"equals": "never"}}]}}),
        );
    }

    let user_sets: Vec<String> = raw
        .sets
        .iter()
        .enumerate()
        .filter(|(_, s)| s.user)
        .map(|(i, _)| format!("set{i}"))
        .chain(TENANT_ROLES.iter().map(|r| format!("__autogen_{r}")))
        .chain(["no_such_set".to_owned()])
        .collect();
    let resource_sets: Vec<String> = raw
        .sets
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.user)
        .map(|(i, _)| format!("set{i}"))
        .chain(TYPES.iter().map(|t| format!("__autogen_{t}")))
        .chain(["no_such_set".to_owned()])
        .collect();
    let rules: Vec<Value> = raw
        .rules
        .iter()
        .map(|&(u, ty, a, r)| {
            let action = match a {
                4 => GROUP,
                5 => "fly",
                a => ACTIONS[a as usize],
            };
            json!({"user_set": user_sets[u as usize % user_sets.len()],
                   "permission": format!("{}:{action}", TYPES[ty as usize]),
                   "resource_set": resource_sets[r as usize % resource_sets.len()]})
        })
        .collect();

    let tenant_objs: Vec<Value> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let plan = raw.tenant_plans[i];
            if plan == 2 {
                json!({"key": t})
            } else {
                json!({"key": t, "attributes": {"plan": plan_name(plan)}})
            }
        })
        .collect();

    json!({
        "resources": resources, "roles": roles, "tenants": tenant_objs, "users": users,
        "role_assignments": assignments, "resource_instances": instances,
        "relationship_tuples": tuples, "condition_sets": sets, "condition_set_rules": rules
    })
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct RawQuery {
    user: u8,
    user_attrs: Option<(u8, u8)>,
    action: u8,
    ty: u8,
    key: Option<u8>,
    /// 0 absent, 1 null, 2-4 a tenant, 5 unknown.
    tenant: u8,
    resource_attrs: Option<(bool, u8)>,
    context: Option<(u8, u8)>,
    resource_context: Option<u8>,
    tenants_filter: Option<Option<u8>>,
    resources_filter: Option<Option<u8>>,
    types_filter: Option<Option<u8>>,
    enable_abac: bool,
}

fn raw_query() -> impl Strategy<Value = RawQuery> {
    (
        (
            prop::sample::select(vec![0u8, 1, 2, 3, 0, 1, 2, 4]),
            prop::option::of((0u8..3, 0u8..4)),
            prop::sample::select(vec![0u8, 0, 0, 0, 1, 1, 2, 3, 4, 5]),
            prop::sample::select(vec![0u8, 0, 1, 1, 2, 2, 3]),
            prop::option::weighted(0.8, 0u8..4),
            prop::sample::select(vec![0u8, 1, 2, 2, 2, 2, 3, 3, 3, 4, 5]),
            prop::option::of((any::<bool>(), 0u8..4)),
        ),
        (
            prop::option::of((0u8..2, 0u8..4)),
            prop::option::weighted(0.2, 0u8..2),
            prop::option::weighted(0.4, prop::option::weighted(0.8, any::<u8>())),
            prop::option::weighted(0.3, prop::option::weighted(0.8, any::<u8>())),
            prop::option::weighted(0.3, prop::option::weighted(0.8, any::<u8>())),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (user, user_attrs, action, ty, key, tenant, resource_attrs),
                (
                    context,
                    resource_context,
                    tenants_filter,
                    resources_filter,
                    types_filter,
                    enable_abac,
                ),
            )| RawQuery {
                user,
                user_attrs,
                action,
                ty,
                key,
                tenant,
                resource_attrs,
                context,
                resource_context,
                tenants_filter,
                resources_filter,
                types_filter,
                enable_abac,
            },
        )
}

fn user_key(q: &RawQuery) -> &'static str {
    if q.user == 4 {
        "stranger"
    } else {
        USERS[q.user as usize]
    }
}

fn resource_json(q: &RawQuery) -> Value {
    let ty = if q.ty == 3 {
        "nope"
    } else {
        TYPES[q.ty as usize]
    };
    let mut r = json!({"type": ty});
    if let Some(k) = q.key {
        r["key"] = json!(if k == 3 { "kx" } else { KEYS[k as usize] });
    }
    match q.tenant {
        0 => {}
        1 => r["tenant"] = Value::Null,
        5 => r["tenant"] = json!("tx"),
        t => r["tenant"] = json!(TENANTS[t as usize - 2]),
    }
    if let Some((public, level)) = q.resource_attrs {
        r["attributes"] = json!({"public": public, "level": level});
    }
    if let Some(ip) = q.resource_context {
        r["context"] = json!({"ip": ip_addr(ip)});
    }
    r
}

fn context_json(q: &RawQuery) -> Value {
    let mut c = match q.context {
        Some((ip, level)) => json!({"ip": ip_addr(ip), "level": level}),
        None => json!({}),
    };
    if q.enable_abac {
        c["enable_abac_user_permissions"] = json!(true);
    }
    c
}

fn user_json(q: &RawQuery) -> Value {
    match q.user_attrs {
        Some((dept, level)) => json!({"key": user_key(q),
                                      "attributes": {"dept": dept_name(dept), "level": level}}),
        None => json!({"key": user_key(q)}),
    }
}

fn allowed_query(q: &RawQuery) -> Value {
    let action = match q.action {
        4 => GROUP,
        5 => "fly",
        a => ACTIONS[a as usize],
    };
    json!({"user": user_json(q), "action": action, "resource": resource_json(q), "context": context_json(q)})
}

/// A filter list drawn from `pool` by the bits of `mask`; `None` → `null`.
fn filter(choice: Option<u8>, pool: &[&str]) -> Value {
    match choice {
        None => Value::Null,
        Some(mask) => json!(pool
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()),
    }
}

fn user_permissions_query(q: &RawQuery) -> Value {
    let mut j = json!({"user": user_json(q), "context": context_json(q)});
    let filters = [
        (
            "tenants",
            q.tenants_filter,
            &["t0", "t1", "__tenant:t2", "tx"][..],
        ),
        (
            "resources",
            q.resources_filter,
            &["doc:k0", "k1", "__tenant:t0", "folder:k2", "t1"][..],
        ),
        (
            "resource_types",
            q.types_filter,
            &["doc", "folder", "__tenant", "team"][..],
        ),
    ];
    for (name, choice, pool) in filters {
        if let Some(c) = choice {
            j[name] = filter(c, pool);
        }
    }
    j
}

// ---------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------

/// Every endpoint, engine against reference; the first difference is
/// reported with the whole document and query.
fn agree(d: &Value, queries: &[RawQuery]) -> Result<(), TestCaseError> {
    let parsed = doc(d);
    let engine = Engine::build(&parsed)
        .map_err(|e| TestCaseError::fail(format!("engine refused a valid document: {e}\n{d:#}")))?;
    let show = |what: &str, q: &Value, e: &Value, r: &Value| {
        format!("{what} differs\nquery: {q}\nengine:    {e}\nreference: {r}\ndocument: {d}")
    };
    for rq in queries {
        let q = allowed_query(rq);
        let (e, r) = (
            engine.allowed_debug(&q),
            reference::allowed_response(&Reference::new(&parsed), &q, true),
        );
        prop_assert!(e == r, "{}", show("/allowed", &q, &e, &r));
        let (e, r) = (
            engine.allowed_tenants(&q),
            reference::allowed_tenants(&Reference::new(&parsed), &q),
        );
        prop_assert!(e == r, "{}", show("/allowed/all-tenants", &q, &e, &r));

        let au = json!({"action": q["action"], "resource": q["resource"], "context": q["context"]});
        let (e, r) = (
            engine.authorized_users(&au),
            reference::authorized_users(&Reference::new(&parsed), &au),
        );
        prop_assert!(e == r, "{}", show("/authorized_users", &au, &e, &r));

        let up = user_permissions_query(rq);
        let (e, r) = (
            engine.user_permissions(&up),
            reference::user_permissions(&Reference::new(&parsed), &up),
        );
        prop_assert!(e == r, "{}", show("/user-permissions", &up, &e, &r));

        let ut = json!({"user": user_json(rq)});
        let (e, r) = (
            engine.user_tenants(&ut),
            reference::user_tenants(&Reference::new(&parsed), &ut),
        );
        prop_assert!(e == r, "{}", show("/user-tenants", &ut, &e, &r));
    }
    // All of them again as one bulk request.
    let qs: Vec<Value> = queries.iter().map(allowed_query).collect();
    let bulk = engine.allowed_bulk(&qs);
    for (q, e) in qs.iter().zip(bulk) {
        let r =
            reference::allowed_response(&Reference::new(&parsed), q, false)["allow"] == json!(true);
        prop_assert!(e == r, "{}", show("/allowed/bulk", q, &json!(e), &json!(r)));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn engine_agrees_with_reference_on_every_endpoint(
        raw in raw_env(),
        queries in prop::collection::vec(raw_query(), 1..8),
    ) {
        agree(&build_doc(&raw), &queries)?;
    }

    /// A ring of `extends` (plus roles hanging off it) is refused, naming
    /// every role of the ring.
    #[test]
    fn cyclic_extends_is_refused_naming_the_roles(
        ring in 1usize..5,
        resource_level in any::<bool>(),
        hangers in prop::collection::vec(any::<u8>(), 0..3),
    ) {
        let names: Vec<String> = (0..ring).map(|i| format!("role{i}")).collect();
        let mut defs: Vec<(String, Vec<String>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), vec![names[(i + 1) % ring].clone()]))
            .collect();
        for (i, h) in hangers.iter().enumerate() {
            defs.push((format!("hanger{i}"), vec![names[*h as usize % ring].clone()]));
        }
        let d = if resource_level {
            let roles: Map<String, Value> = defs
                .iter()
                .map(|(n, ext)| (n.clone(), json!({"permissions": ["read"], "extends": ext})))
                .collect();
            json!({"resources": [{"key": "doc", "actions": {"read": {}}, "roles": roles}]})
        } else {
            let roles: Vec<Value> = defs
                .iter()
                .map(|(n, ext)| json!({"key": n, "permissions": [], "extends": ext}))
                .collect();
            json!({"roles": roles})
        };
        let err = match Engine::build(&doc(&d)) {
            Ok(_) => return Err(TestCaseError::fail(format!("cyclic document accepted: {d}"))),
            Err(e) => e.to_string(),
        };
        for n in &names {
            prop_assert!(err.contains(n.as_str()), "error {err:?} does not name {n}");
        }
    }
}

// ---------------------------------------------------------------------------
// Conditions alone
// ---------------------------------------------------------------------------

/// Attribute values requests carry: every JSON type, numbers written both
/// ways, arrays of objects for the `*_match` operators, and `null`.
fn attr_value(i: u8) -> Value {
    let pool = [
        json!("eng"),
        json!("ops"),
        json!(0),
        json!(1),
        json!(2.0),
        json!(3),
        json!("1"),
        json!(true),
        json!(false),
        json!(["a", "b"]),
        json!(["a"]),
        json!([]),
        json!([{"k": 1}]),
        json!([{"k": 0}, {"k": 1.0}]),
        json!([{"k": 2}, "x"]),
        json!({"k": 0}),
        json!("10.0.0.1"),
        json!("u1"),
        json!(["member"]),
        Value::Null,
    ];
    pool[i as usize % pool.len()].clone()
}

fn attr_map(names: &[&str], picks: &[(u8, u8)]) -> Value {
    let mut m = Map::new();
    for &(n, v) in picks {
        m.insert(pick(names, n).to_owned(), attr_value(v));
    }
    Value::Object(m)
}

fn deep_cond() -> impl Strategy<Value = RawCond> {
    let leaf = (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop::option::weighted(0.2, any::<u8>()),
    )
        .prop_map(|(p, o, v, r)| RawCond::Leaf(p, o, v, r));
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(RawCond::All),
            prop::collection::vec(inner.clone(), 0..4).prop_map(RawCond::Any),
            inner.prop_map(|c| RawCond::Not(Box::new(c))),
        ]
    })
}

proptest! {
    /// One user set and one resource set decide alone, so every operator,
    /// missing attribute, `ref` and request override shows in the answer.
    #[test]
    fn conditions_evaluate_as_the_reference_says(
        user_cond in deep_cond(),
        resource_cond in deep_cond(),
        stored_user in prop::collection::vec((any::<u8>(), any::<u8>()), 0..4),
        stored_resource in prop::collection::vec((any::<u8>(), any::<u8>()), 0..3),
        request_user in prop::collection::vec((any::<u8>(), any::<u8>()), 0..3),
        request_resource in prop::collection::vec((any::<u8>(), any::<u8>()), 0..3),
        context in prop::collection::vec((any::<u8>(), any::<u8>()), 0..3),
        known_user in prop::bool::weighted(0.8),
        with_key in any::<bool>(),
        tenant in prop::sample::select(vec!["t0", "t1"]),
    ) {
        let user_names = ["dept", "level", "tags", "items", "key", "roles"];
        let resource_names = ["public", "level", "owner", "type"];
        let context_names = ["ip", "level"];
        let d = json!({
            "resources": [{"key": "doc", "actions": {"read": {}}}],
            "roles": [{"key": "member", "permissions": []}],
            "tenants": [{"key": "t0", "attributes": {"plan": "pro"}}, {"key": "t1", "attributes": {"plan": "free"}}],
            "users": [{"key": "u1", "email": "u1@example.test",
                       "attributes": attr_map(&user_names, &stored_user)}],
            "role_assignments": [{"user": "u1", "role": "member", "tenant": "t0"}],
            "resource_instances": [{"key": "k0", "resource": "doc", "tenant": "t0",
                                    "attributes": attr_map(&resource_names, &stored_resource)}],
            "condition_sets": [
                {"key": "us", "type": "userset", "conditions": cond_json(&user_cond)},
                {"key": "rs", "type": "resourceset", "resource": "doc", "conditions": cond_json(&resource_cond)}
            ],
            "condition_set_rules": [{"user_set": "us", "permission": "doc:read", "resource_set": "rs"}]
        });
        let mut resource = json!({"type": "doc", "tenant": tenant,
                                  "attributes": attr_map(&resource_names, &request_resource)});
        if with_key {
            resource["key"] = json!("k0");
        }
        let q = json!({
            "user": {"key": if known_user { "u1" } else { "u9" },
                     "attributes": attr_map(&user_names, &request_user)},
            "action": "read", "resource": resource,
            "context": attr_map(&context_names, &context),
        });
        let parsed = doc(&d);
        let engine = Engine::build(&parsed)
            .map_err(|e| TestCaseError::fail(format!("engine refused a valid document: {e}\n{d}")))?;
        let (e, r) = (engine.allowed_debug(&q), reference::allowed_response(&Reference::new(&parsed), &q, true));
        prop_assert!(e == r, "/allowed differs\nquery: {q}\nengine:    {e}\nreference: {r}\ndocument: {d}");
    }
}

// ---------------------------------------------------------------------------
// Writes applied over a snapshot (docs/read-your-writes.md)
// ---------------------------------------------------------------------------
//
// Writes through the facts proxy are applied over the serving snapshot
// rather than rebuilding it. The property: the snapshot with writes applied
// answers every endpoint exactly as a snapshot built from the document with
// the same writes made to it, the way the control plane makes them (a
// deleted user takes its roles along, a deleted tenant its roles and
// instances, an assignment on an unknown instance creates it in the
// assignment's tenant, a tuple creates its instances).

use pdp::snapshot::{Assignment, Tuple, Write};

/// Users and tenants beyond the document's, so writes also create them.
const MORE_USERS: [&str; 6] = ["u0", "u1", "u2", "u3", "n0", "n1"];
const MORE_TENANTS: [&str; 4] = ["t0", "t1", "t2", "t9"];

fn raw_write() -> impl Strategy<Value = Write> {
    let user = any::<u8>().prop_map(|u| pick(&MORE_USERS, u).to_owned());
    let tenant = any::<u8>().prop_map(|t| pick(&MORE_TENANTS, t).to_owned());
    let inst = (any::<u8>(), any::<u8>())
        .prop_map(|(ty, k)| (pick(&TYPES, ty).to_owned(), pick(&KEYS, k).to_owned()));
    let assignment = (
        user.clone(),
        any::<u8>(),
        tenant.clone(),
        prop::option::of(inst.clone()),
    )
        .prop_map(|(user, r, tenant, inst)| Assignment {
            role: match &inst {
                // A role name no type or tenant defines now and then.
                _ if r % 7 == 6 => "ghost".to_owned(),
                None => pick(&TENANT_ROLES, r).to_owned(),
                Some(_) => pick(&RES_ROLES, r).to_owned(),
            },
            user,
            tenant,
            resource_instance: inst.map(|(ty, k)| format!("{ty}:{k}")),
        });
    let tuple = (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(rel, sk, ok)| {
        let (object, relation, subject) = pick(&RELATIONS, rel);
        Tuple {
            subject: format!("{subject}:{}", pick(&KEYS, sk)),
            relation: relation.to_owned(),
            object: format!("{object}:{}", pick(&KEYS, ok)),
            tenant: None,
        }
    });
    let attrs = prop::collection::vec((any::<u8>(), any::<u8>()), 0..3);
    prop_oneof![
        4 => assignment.clone().prop_map(Write::Assign),
        3 => assignment.prop_map(Write::Unassign),
        2 => tuple.clone().prop_map(Write::Relate),
        2 => tuple.prop_map(Write::Unrelate),
        1 => (user.clone(), attrs.clone()).prop_map(|(key, a)| Write::UpsertUser {
            email: Some(format!("{key}@written.test")),
            attributes: attr_map(&["dept", "level", "tags", "key"], &a).as_object().cloned().unwrap_or_default(),
            key,
            first_name: None,
            last_name: None,
        }),
        1 => user.prop_map(|key| Write::DeleteUser { key }),
        1 => (tenant.clone(), any::<u8>()).prop_map(|(key, p)| Write::UpsertTenant {
            key,
            attributes: json!({"plan": plan_name(p)}).as_object().cloned().unwrap_or_default(),
        }),
        1 => tenant.clone().prop_map(|key| Write::DeleteTenant { key }),
        1 => (inst.clone(), prop::option::of(tenant), attrs).prop_map(|((resource, key), tenant, a)| {
            Write::UpsertInstance {
                resource,
                key,
                tenant,
                attributes: attr_map(&["public", "level", "owner"], &a).as_object().cloned().unwrap_or_default(),
            }
        }),
        1 => inst.prop_map(|(resource, key)| Write::DeleteInstance { resource, key }),
    ]
}

fn list<'a>(d: &'a mut Value, field: &str) -> &'a mut Vec<Value> {
    if !d[field].is_array() {
        d[field] = json!([]);
    }
    d[field].as_array_mut().expect("an array")
}

/// Whether the document has instance `id` (`type:key`): listed, or named
/// by an assignment or a tuple.
fn has_instance(d: &Value, id: &str) -> bool {
    let of = |field: &str| d[field].as_array().cloned().unwrap_or_default();
    of("resource_instances").iter().any(|i| {
        format!(
            "{}:{}",
            i["resource"].as_str().unwrap_or(""),
            i["key"].as_str().unwrap_or("")
        ) == id
    }) || of("role_assignments")
        .iter()
        .any(|a| a["resource_instance"] == json!(id))
        || of("relationship_tuples")
            .iter()
            .any(|t| t["subject"] == json!(id) || t["object"] == json!(id))
}

fn has_role(d: &Value, a: &Assignment) -> bool {
    match &a.resource_instance {
        None => d["roles"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["key"] == json!(a.role))),
        Some(i) => {
            let ty = i.split(':').next().unwrap_or("");
            d["resources"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["key"] == json!(ty)))
                .is_some_and(|r| r["roles"].get(&a.role).is_some())
        }
    }
}

fn delete_instance(d: &mut Value, id: &str) {
    list(d, "resource_instances").retain(|i| {
        format!(
            "{}:{}",
            i["resource"].as_str().unwrap_or(""),
            i["key"].as_str().unwrap_or("")
        ) != id
    });
    list(d, "role_assignments").retain(|a| a["resource_instance"] != json!(id));
    list(d, "relationship_tuples")
        .retain(|t| t["subject"] != json!(id) && t["object"] != json!(id));
}

/// Lists every instance an assignment or a tuple names and the document
/// does not list (with no tenant, as the build takes them): in the control
/// plane they exist on their own, and removing the last fact naming one
/// must not remove it.
fn materialize(d: &mut Value) {
    let named: Vec<String> = d["role_assignments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["resource_instance"].as_str().map(str::to_owned))
        .chain(
            d["relationship_tuples"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|t| {
                    [t["subject"].as_str(), t["object"].as_str()]
                        .into_iter()
                        .flatten()
                        .map(str::to_owned)
                }),
        )
        .collect();
    for id in named {
        let listed = d["resource_instances"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| {
                format!(
                    "{}:{}",
                    i["resource"].as_str().unwrap_or(""),
                    i["key"].as_str().unwrap_or("")
                ) == id
            });
        if let (false, Some((ty, key))) = (listed, id.split_once(':')) {
            list(d, "resource_instances").push(json!({"key": key, "resource": ty}));
        }
    }
}

/// The write made to the document, as the control plane makes it.
fn write_into(d: &mut Value, w: &Write) {
    match w {
        Write::Assign(a) | Write::Unassign(a) => {
            if !has_role(d, a) {
                return; // The control plane refuses it.
            }
            let same = |x: &Value| {
                x["user"] == json!(a.user)
                    && x["role"] == json!(a.role)
                    && (a.resource_instance.is_some() || x["tenant"] == json!(a.tenant))
                    && x["resource_instance"].as_str() == a.resource_instance.as_deref()
            };
            list(d, "role_assignments").retain(|x| !same(x));
            if a.resource_instance.is_none() {
                for u in list(d, "users")
                    .iter_mut()
                    .filter(|u| u["key"] == json!(a.user))
                {
                    if let Some(roles) = u["roles"].as_array_mut() {
                        roles.retain(|r| {
                            !(r["role"] == json!(a.role) && r["tenant"] == json!(a.tenant))
                        });
                    }
                }
            }
            if matches!(w, Write::Assign(_)) {
                if let Some(i) = &a.resource_instance {
                    if !has_instance(d, i) {
                        let (ty, key) = i.split_once(':').expect("type:key");
                        list(d, "resource_instances")
                            .push(json!({"key": key, "resource": ty, "tenant": a.tenant}));
                    }
                }
                list(d, "role_assignments").push(json!({
                    "user": a.user, "role": a.role, "tenant": a.tenant,
                    "resource_instance": a.resource_instance,
                }));
            }
        }
        Write::Relate(t) | Write::Unrelate(t) => {
            let same = |x: &Value| {
                x["subject"] == json!(t.subject)
                    && x["relation"] == json!(t.relation)
                    && x["object"] == json!(t.object)
            };
            list(d, "relationship_tuples").retain(|x| !same(x));
            if matches!(w, Write::Relate(_)) {
                list(d, "relationship_tuples").push(
                    json!({"subject": t.subject, "relation": t.relation, "object": t.object}),
                );
            }
        }
        Write::UpsertUser {
            key,
            email,
            attributes,
            ..
        } => {
            let users = list(d, "users");
            let roles = users
                .iter()
                .find(|u| u["key"] == json!(key))
                .map(|u| u["roles"].clone());
            users.retain(|u| u["key"] != json!(key));
            let mut u = json!({"key": key, "email": email, "attributes": attributes});
            if let Some(roles) = roles.filter(|r| !r.is_null()) {
                u["roles"] = roles;
            }
            users.push(u);
        }
        Write::DeleteUser { key } => {
            list(d, "users").retain(|u| u["key"] != json!(key));
            list(d, "role_assignments").retain(|a| a["user"] != json!(key));
        }
        Write::UpsertTenant { key, attributes } => {
            let tenants = list(d, "tenants");
            tenants.retain(|t| t["key"] != json!(key));
            tenants.push(json!({"key": key, "attributes": attributes}));
        }
        Write::DeleteTenant { key } => {
            list(d, "tenants").retain(|t| t["key"] != json!(key));
            list(d, "role_assignments")
                .retain(|a| !(a["tenant"] == json!(key) && a["resource_instance"].is_null()));
            for u in list(d, "users").iter_mut() {
                if let Some(roles) = u["roles"].as_array_mut() {
                    roles.retain(|r| r["tenant"] != json!(key));
                }
            }
            let doomed: Vec<String> = d["resource_instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["tenant"] == json!(key))
                .map(|i| {
                    format!(
                        "{}:{}",
                        i["resource"].as_str().unwrap_or(""),
                        i["key"].as_str().unwrap_or("")
                    )
                })
                .collect();
            for id in doomed {
                delete_instance(d, &id);
            }
        }
        Write::UpsertInstance {
            resource,
            key,
            tenant,
            attributes,
        } => {
            let id = format!("{resource}:{key}");
            let instances = list(d, "resource_instances");
            instances.retain(|i| {
                format!(
                    "{}:{}",
                    i["resource"].as_str().unwrap_or(""),
                    i["key"].as_str().unwrap_or("")
                ) != id
            });
            instances.push(json!({"key": key, "resource": resource, "tenant": tenant, "attributes": attributes}));
        }
        Write::DeleteInstance { resource, key } => delete_instance(d, &format!("{resource}:{key}")),
    }
}

/// Arrays in any order, so that listings whose order follows ids (which a
/// rebuild numbers differently) compare by content.
fn unordered(v: Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(unordered).collect();
            items.sort_by_key(|v| v.to_string());
            Value::Array(items)
        }
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, unordered(v))).collect()),
        v => v,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn writes_applied_answer_as_the_document_rebuilt_with_them(
        raw in raw_env(),
        writes in prop::collection::vec(raw_write(), 1..12),
        queries in prop::collection::vec(raw_query(), 1..6),
    ) {
        let before = build_doc(&raw);
        let mut after = before.clone();
        for w in &writes {
            materialize(&mut after);
            write_into(&mut after, w);
        }
        let rebuilt = Engine::build(&doc(&after))
            .map_err(|e| TestCaseError::fail(format!("the rebuilt document was refused: {e}\n{after:#}")))?;
        let base = Engine::from_json(&before);
        // Writes the document could not take (a role it lacks) are the
        // ones the snapshot refuses too; the rest apply.
        let (snap, _refused) = base.snap.with_writes(&writes);
        let applied = Engine { snap };
        answer_alike(&applied, &rebuilt, &queries, || {
            format!("writes: {writes:?}\nbefore: {before}\nafter: {after}")
        })?;
    }

    /// What a hub sends its followers when a sync finds a changed
    /// document: the difference, applied over what they serve (the old
    /// document and the writes served over it), answers as the new one.
    #[test]
    fn a_syncs_difference_applied_answers_as_the_new_document(
        raw in raw_env(),
        other in raw_env(),
        served in prop::collection::vec(raw_write(), 0..8),
        changed in prop::collection::vec(raw_write(), 0..12),
        by_writes in any::<bool>(),
        shared in (any::<u8>(), any::<u8>()),
        queries in prop::collection::vec(raw_query(), 1..6),
    ) {
        let before = build_doc(&raw);
        // The new document: the old one changed as the control plane
        // changes it, or other facts altogether over the same schema.
        let after = if by_writes {
            let mut d = before.clone();
            for w in &changed {
                materialize(&mut d);
                write_into(&mut d, w);
            }
            d
        } else {
            build_doc(&RawEnv {
                types: raw.types.clone(),
                tenant_roles: raw.tenant_roles.clone(),
                sets: raw.sets.clone(),
                rules: raw.rules.clone(),
                listed_autogen: raw.listed_autogen,
                ..other
            })
        };
        // Some users share an email, before and after.
        let share = |d: &Value, mask: u8| {
            let mut d = d.clone();
            for (i, u) in list(&mut d, "users").iter_mut().enumerate() {
                if mask & (1 << (i % 8)) != 0 {
                    u["email"] = json!("shared@example.test");
                }
            }
            d
        };
        let (before, after) = (share(&before, shared.0), share(&after, shared.1));
        let Ok(new) = Engine::build(&doc(&after)) else {
            return Ok(());
        };
        let (old, _) = Engine::from_json(&before).snap.with_writes(&served);
        let Some(diff) = new.snap.changes_since(&old, usize::MAX) else {
            // Another schema, or a relation only the new tuples name: the
            // hub sends the whole snapshot.
            return Ok(());
        };
        let (snap, refused) = old.with_writes(&diff);
        prop_assert!(refused.is_empty(), "refused: {refused:?}\ndiff: {diff:?}");
        let applied = Engine { snap };
        answer_alike(&applied, &new, &queries, || {
            format!("served: {served:?}\ndiff: {diff:?}\nbefore: {before}\nafter: {after}")
        })?;
        // Users found by email as the new document finds them.
        let emails = ["shared@example.test"].into_iter().map(str::to_owned).chain(
            new.snap.user_keys().filter_map(|k| {
                after["users"].as_array()?.iter().find(|u| u["key"] == json!(k))?["email"]
                    .as_str()
                    .map(str::to_owned)
            }),
        );
        for email in emails.collect::<Vec<_>>() {
            prop_assert_eq!(
                applied.snap.user_by_email(&email),
                new.snap.user_by_email(&email),
                "{}\ndiff: {:?}",
                email,
                diff
            );
        }
        // Nothing is left to send once it is applied.
        let again = new.snap.changes_since(&applied.snap, usize::MAX);
        prop_assert!(again.as_deref() == Some(&[][..]), "left over: {again:?}");
    }
}

/// Every endpoint answers alike (listings in any order: ids, and so their
/// order, follow how each snapshot was made).
fn answer_alike(
    applied: &Engine,
    rebuilt: &Engine,
    queries: &[RawQuery],
    context: impl Fn() -> String,
) -> Result<(), TestCaseError> {
    let show = |what: &str, q: &Value, a: &Value, r: &Value| {
        format!(
            "{what} differs\nquery: {q}\napplied: {a}\nrebuilt: {r}\n{}",
            context()
        )
    };
    for rq in queries {
        let q = allowed_query(rq);
        let (a, r) = (applied.allowed(&q), rebuilt.allowed(&q));
        prop_assert!(a == r, "{}", show("/allowed", &q, &json!(a), &json!(r)));
        let (a, r) = (
            unordered(applied.allowed_tenants(&q)),
            unordered(rebuilt.allowed_tenants(&q)),
        );
        prop_assert!(a == r, "{}", show("/allowed/all-tenants", &q, &a, &r));
        let au = json!({"action": q["action"], "resource": q["resource"], "context": q["context"]});
        let (a, r) = (
            unordered(applied.authorized_users(&au)),
            unordered(rebuilt.authorized_users(&au)),
        );
        prop_assert!(a == r, "{}", show("/authorized_users", &au, &a, &r));
        let up = user_permissions_query(rq);
        let (a, r) = (
            unordered(applied.user_permissions(&up)),
            unordered(rebuilt.user_permissions(&up)),
        );
        prop_assert!(a == r, "{}", show("/user-permissions", &up, &a, &r));
        let ut = json!({"user": user_json(rq)});
        let (a, r) = (
            unordered(applied.user_tenants(&ut)),
            unordered(rebuilt.user_tenants(&ut)),
        );
        prop_assert!(a == r, "{}", show("/user-tenants", &ut, &a, &r));
    }
    Ok(())
}
