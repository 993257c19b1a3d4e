//! Deterministic generator of realistic environments, for benchmarks and the
//! load test, plus query mixes with their expected answers.
//!
//! One seed gives one document on every machine and version: the stream is
//! ChaCha8 and every draw goes through [`below`] rather than `rand`'s range
//! sampling, whose algorithm is allowed to change between releases.
//!
//! The schema is fixed and small (what a real product has); the sizes scale:
//! - tenant roles with `extends` chains over RBAC types (`document`, `report`,
//!   `invoice`, `project`, `ticket`), one permission naming an action group;
//! - a three-level ReBAC chain `organization` → `folder` → `file` through the
//!   `parent` relation, so a depth-3 check exists (a role on the organization
//!   derives one on the folder, which derives one on the file), with
//!   `no_direct_roles_on_object` on the file owner rule;
//! - ABAC: user sets on user attributes (one with a parent set), resource sets
//!   on document attributes, and an `__autogen_` resource set.
//!
//! [`QueryMix`] draws `/allowed` queries aimed at allow and at deny, and labels
//! each with the reference evaluator's answer ([`crate::reference`]), so a
//! load test can check that its traffic really mixes allow and deny.

use std::collections::{HashMap, HashSet};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use pdp::model::{
    ActionGroup, ConditionSet, ConditionSetRule, ConditionSetType, DataDocument, DerivationRule,
    GrantedTo, Json, Relation, Resource, ResourceInstance, ResourceRef, ResourceRole, Role,
    RoleAssignment, Tenant, User, When,
};

use crate::reference::{self, Reference};

/// Sizes and seed of a generated environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenSpec {
    pub users: usize,
    pub tenants: usize,
    /// Tenant-level role assignments (no `resource_instance`).
    pub tenant_assignments: usize,
    /// Role assignments on resource instances.
    pub instance_assignments: usize,
    /// Resource instances: 1% organizations, 9% folders, 70% files, 20% documents.
    pub instances: usize,
    /// Relationship tuples: each folder's and file's `parent` first, then
    /// second parents for files.
    pub tuples: usize,
    pub seed: u64,
}

impl GenSpec {
    /// 10k role assignments.
    pub fn small() -> Self {
        Self {
            users: 1_000,
            tenants: 50,
            tenant_assignments: 9_000,
            instance_assignments: 1_000,
            instances: 10_000,
            tuples: 10_000,
            seed: 7,
        }
    }

    /// 100k role assignments.
    pub fn medium() -> Self {
        Self {
            users: 10_000,
            tenants: 200,
            tenant_assignments: 90_000,
            instance_assignments: 10_000,
            instances: 100_000,
            tuples: 100_000,
            seed: 7,
        }
    }

    /// 100k users, 1M role assignments.
    pub fn large() -> Self {
        Self {
            users: 100_000,
            tenants: 1_000,
            tenant_assignments: 900_000,
            instance_assignments: 100_000,
            instances: 100_000,
            tuples: 100_000,
            seed: 7,
        }
    }

    /// 100k users, 1M resource instances, 1M tuples.
    pub fn rebac_large() -> Self {
        Self {
            users: 100_000,
            tenants: 1_000,
            tenant_assignments: 200_000,
            instance_assignments: 300_000,
            instances: 1_000_000,
            tuples: 1_000_000,
            seed: 7,
        }
    }

    /// A preset by name: `small`, `medium`, `large`, `rebac_large`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "small" => Some(Self::small()),
            "medium" => Some(Self::medium()),
            "large" => Some(Self::large()),
            "rebac_large" | "rebac-large" => Some(Self::rebac_large()),
            _ => None,
        }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Every role assignment in the document, tenant-level and instance.
    pub fn role_assignments(&self) -> usize {
        self.tenant_assignments + self.instance_assignments
    }
}

/// A uniform draw in `0..n` (n > 0) by multiply-shift: one `u64` per draw,
/// stable forever, bias below 2^-32 for our sizes.
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    debug_assert!(n > 0);
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// Index into `weights` drawn proportionally to them.
fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut x = below(rng, total as usize) as u32;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

// ---- the fixed schema ------------------------------------------------------

struct TypeDef {
    key: &'static str,
    actions: &'static [&'static str],
    groups: &'static [(&'static str, &'static [&'static str])],
}

const RBAC_TYPES: &[TypeDef] = &[
    TypeDef {
        key: "document",
        actions: &["read", "create", "update", "delete", "approve"],
        groups: &[("write", &["create", "update", "delete"])],
    },
    TypeDef {
        key: "report",
        actions: &["read", "export", "schedule"],
        groups: &[],
    },
    TypeDef {
        key: "invoice",
        actions: &["read", "create", "pay", "void"],
        groups: &[],
    },
    TypeDef {
        key: "project",
        actions: &["read", "create", "update", "archive"],
        groups: &[],
    },
    TypeDef {
        key: "ticket",
        actions: &["read", "create", "update", "close", "assign"],
        groups: &[],
    },
];

/// Tenant roles: key, permissions, extends, share of assignments (‰).
type TenantRoleDef = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    u32,
);

const TENANT_ROLES: &[TenantRoleDef] = &[
    (
        "viewer",
        &[
            "document:read",
            "report:read",
            "project:read",
            "ticket:read",
        ],
        &[],
        350,
    ),
    (
        "contributor",
        &[
            "document:create",
            "document:update",
            "ticket:create",
            "ticket:update",
        ],
        &["viewer"],
        250,
    ),
    (
        "editor",
        &["document:write", "project:update", "ticket:close"],
        &["contributor"],
        150,
    ),
    (
        "admin",
        &[
            "document:approve",
            "project:create",
            "project:archive",
            "report:schedule",
            "ticket:assign",
        ],
        &["editor"],
        80,
    ),
    (
        "billing",
        &["invoice:read", "invoice:create", "invoice:pay"],
        &["viewer"],
        70,
    ),
    (
        "auditor",
        &["report:read", "report:export", "invoice:read"],
        &[],
        70,
    ),
    (
        "owner",
        &["invoice:void", "report:export"],
        &["admin", "billing"],
        30,
    ),
];

/// A resource role of the ReBAC chain: type, key, permissions, extends,
/// derived from (role, on type), `no_direct_roles_on_object`.
type ResourceRoleDef = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    Option<(&'static str, &'static str)>,
    bool,
);

const REBAC_ROLES: &[ResourceRoleDef] = &[
    (
        "organization",
        "admin",
        &["read", "manage", "invite"],
        &[],
        None,
        false,
    ),
    ("organization", "member", &["read"], &[], None, false),
    (
        "folder",
        "viewer",
        &["read"],
        &[],
        Some(("member", "organization")),
        false,
    ),
    (
        "folder",
        "editor",
        &["create", "update"],
        &["viewer"],
        Some(("admin", "organization")),
        false,
    ),
    (
        "folder",
        "owner",
        &["delete", "share"],
        &["editor"],
        None,
        false,
    ),
    (
        "file",
        "viewer",
        &["readers"],
        &[],
        Some(("viewer", "folder")),
        false,
    ),
    (
        "file",
        "editor",
        &["update"],
        &["viewer"],
        Some(("editor", "folder")),
        false,
    ),
    (
        "file",
        "owner",
        &["delete", "share"],
        &["editor"],
        Some(("owner", "folder")),
        true,
    ),
];

const REBAC_TYPES: &[TypeDef] = &[
    TypeDef {
        key: "organization",
        actions: &["read", "manage", "invite"],
        groups: &[],
    },
    TypeDef {
        key: "folder",
        actions: &["read", "create", "update", "delete", "share"],
        groups: &[],
    },
    TypeDef {
        key: "file",
        actions: &["read", "comment", "download", "update", "delete", "share"],
        groups: &[("readers", &["read", "comment", "download"])],
    },
];

const PARENT_OF: &[(&str, &str)] = &[("folder", "organization"), ("file", "folder")];

const DEPARTMENTS: &[&str] = &[
    "engineering",
    "sales",
    "marketing",
    "finance",
    "support",
    "legal",
];
const COUNTRIES: &[&str] = &["us", "de", "fr", "nl", "jp", "br", "in"];
const FIRST: &[&str] = &["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia"];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson",
];
const CLASSIFICATIONS: &[&str] = &["public", "internal", "confidential"];

pub fn user_key(i: usize) -> String {
    format!("user-{i}")
}
pub fn tenant_key(i: usize) -> String {
    format!("tenant-{i}")
}

fn map(pairs: impl IntoIterator<Item = (String, Value)>) -> Json {
    Json(Value::Object(pairs.into_iter().collect()))
}

fn schema() -> Vec<Resource> {
    let mut out = Vec::new();
    for t in RBAC_TYPES.iter().chain(REBAC_TYPES) {
        let mut r = Resource {
            key: t.key.to_string(),
            id: Some(format!("rt-{}", t.key)),
            actions: t
                .actions
                .iter()
                .map(|a| (a.to_string(), Json(json!({"name": a}))))
                .collect(),
            action_groups: t
                .groups
                .iter()
                .map(|(g, acts)| {
                    let acts = acts.iter().map(|a| a.to_string()).collect();
                    (g.to_string(), ActionGroup(acts))
                })
                .collect(),
            ..Resource::default()
        };
        if t.key == "document" {
            r.attributes = [
                ("classification", "string"),
                ("size", "number"),
                ("owner", "string"),
            ]
            .iter()
            .map(|(k, ty)| (k.to_string(), Json(json!({"type": ty}))))
            .collect();
        }
        if let Some((_, parent)) = PARENT_OF.iter().find(|(c, _)| *c == t.key) {
            let rel = Relation {
                resource: Some(parent.to_string()),
                subject_resource: None,
            };
            r.relations.insert("parent".into(), rel);
        }
        for &(ty, key, perms, extends, from, no_direct) in REBAC_ROLES {
            if ty != t.key {
                continue;
            }
            let granted_to = from.map(|(role, on)| GrantedTo {
                users_with_role: vec![DerivationRule {
                    role: role.into(),
                    on_resource: on.into(),
                    linked_by_relation: "parent".into(),
                    when: no_direct.then_some(When {
                        no_direct_roles_on_object: true,
                    }),
                }],
                when: None,
            });
            let role = ResourceRole {
                permissions: perms.iter().map(|p| p.to_string()).collect(),
                extends: extends.iter().map(|e| e.to_string()).collect(),
                granted_to,
            };
            r.roles.insert(key.to_string(), role);
        }
        out.push(r);
    }
    out
}

fn tenant_roles() -> Vec<Role> {
    TENANT_ROLES
        .iter()
        .map(|(key, perms, extends, _)| Role {
            key: key.to_string(),
            permissions: perms.iter().map(|p| p.to_string()).collect(),
            extends: extends.iter().map(|e| e.to_string()).collect(),
        })
        .collect()
}

fn condition_sets() -> (Vec<ConditionSet>, Vec<ConditionSetRule>) {
    let user_set = |key: &str, parent: Option<&str>, cond: Value| ConditionSet {
        key: key.into(),
        id: Some(format!("cs-{key}")),
        kind: ConditionSetType::Userset,
        resource: None,
        resource_id: None,
        conditions: Json(cond),
        parent_id: parent.map(Into::into),
    };
    let doc_set = |key: &str, cond: Value| ConditionSet {
        key: key.into(),
        id: Some(format!("cs-{key}")),
        kind: ConditionSetType::Resourceset,
        resource: Some(ResourceRef("document".into())),
        resource_id: None,
        conditions: Json(cond),
        parent_id: None,
    };
    let sets = vec![
        user_set(
            "engineering",
            None,
            json!({"allOf": [{"user.department": {"equals": "engineering"}}]}),
        ),
        user_set(
            "senior",
            None,
            json!({"allOf": [{"user.level": {"greater-than-equals": 7}}]}),
        ),
        user_set(
            "senior_engineering",
            Some("engineering"),
            json!({"allOf": [{"user.level": {"greater-than-equals": 5}}]}),
        ),
        user_set(
            "eu_staff",
            None,
            json!({"allOf": [{"user.country": {"in": ["de", "fr", "nl"]}}]}),
        ),
        doc_set(
            "public_documents",
            json!({"allOf": [{"resource.classification": {"equals": "public"}}]}),
        ),
        doc_set(
            "confidential_documents",
            json!({"allOf": [{"resource.classification": {"equals": "confidential"}},
                             {"resource.size": {"less-than": 1000000}}]}),
        ),
    ];
    let rule = |u: &str, p: &str, r: &str| ConditionSetRule {
        user_set: u.into(),
        permission: p.into(),
        resource_set: r.into(),
    };
    let rules = vec![
        rule("engineering", "document:read", "public_documents"),
        rule("senior", "document:read", "confidential_documents"),
        rule(
            "senior_engineering",
            "document:update",
            "confidential_documents",
        ),
        rule("eu_staff", "report:export", "__autogen_report"),
    ];
    (sets, rules)
}

/// Instance counts per type: (organizations, folders, files, documents).
fn split(instances: usize) -> (usize, usize, usize, usize) {
    if instances == 0 {
        return (0, 0, 0, 0);
    }
    let orgs = (instances / 100).max(1);
    let folders = (instances * 9 / 100).max(1).min(instances - orgs);
    let documents = (instances / 5).min(instances - orgs - folders);
    let files = instances - orgs - folders - documents;
    (orgs, folders, files, documents)
}

/// Generates the environment `spec` describes. Deterministic in `spec`.
pub fn generate(spec: &GenSpec) -> DataDocument {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let (sets, rules) = condition_sets();
    let mut doc = DataDocument {
        resources: schema(),
        roles: tenant_roles(),
        condition_sets: sets,
        condition_set_rules: rules,
        ..DataDocument::default()
    };

    doc.tenants = (0..spec.tenants)
        .map(|i| Tenant {
            key: tenant_key(i),
            name: Some(format!("Tenant {i}")),
            attributes: map([
                (
                    "plan".into(),
                    json!(["free", "pro", "enterprise"][below(&mut rng, 3)]),
                ),
                ("region".into(), json!(["eu", "us"][below(&mut rng, 2)])),
            ]),
        })
        .collect();

    doc.users = (0..spec.users)
        .map(|i| User {
            key: user_key(i),
            email: Some(format!("user-{i}@example.com")),
            first_name: Some(FIRST[below(&mut rng, FIRST.len())].into()),
            last_name: Some(LAST[below(&mut rng, LAST.len())].into()),
            attributes: map([
                (
                    "department".into(),
                    json!(DEPARTMENTS[below(&mut rng, DEPARTMENTS.len())]),
                ),
                ("level".into(), json!(1 + below(&mut rng, 10))),
                (
                    "country".into(),
                    json!(COUNTRIES[below(&mut rng, COUNTRIES.len())]),
                ),
            ]),
            // The same facts as `role_assignments`; kept out so a large
            // document is not twice the size (the snapshot merges both).
            roles: Vec::new(),
        })
        .collect();

    doc.role_assignments = Vec::with_capacity(spec.tenant_assignments + spec.instance_assignments);
    tenant_assignments(spec, &mut rng, &mut doc);
    let placed = instances_and_tuples(spec, &mut rng, &mut doc);
    instance_assignments(spec, &mut rng, &mut doc, &placed);
    doc
}

fn tenant_assignments(spec: &GenSpec, rng: &mut ChaCha8Rng, doc: &mut DataDocument) {
    if spec.users == 0 || spec.tenants == 0 {
        return;
    }
    let weights: Vec<u32> = TENANT_ROLES.iter().map(|r| r.3).collect();
    let per_user = spec.tenant_assignments / spec.users;
    let extra = spec.tenant_assignments % spec.users;
    let cap = spec.tenants * TENANT_ROLES.len();
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    for u in 0..spec.users {
        let k = (per_user + usize::from(u < extra)).min(cap);
        chosen.clear();
        // Users cluster: most of their tenants are near a home tenant, as
        // people work in a few related workspaces.
        let home = below(rng, spec.tenants);
        while chosen.len() < k {
            let t = if below(rng, 4) == 0 {
                below(rng, spec.tenants)
            } else {
                (home + below(rng, 32.min(spec.tenants))) % spec.tenants
            };
            let r = weighted(rng, &weights);
            if !chosen.contains(&(t, r)) {
                chosen.push((t, r));
            }
        }
        let user = user_key(u);
        for &(t, r) in &chosen {
            doc.role_assignments.push(RoleAssignment {
                user: user.clone(),
                role: TENANT_ROLES[r].0.into(),
                tenant: Some(tenant_key(t)),
                resource_instance: None,
            });
        }
    }
}

/// Where the ReBAC instances landed, for placing instance assignments.
struct Placed {
    /// (type, count) for organization, folder, file.
    counts: [usize; 3],
    /// Tenant index of each instance, per type.
    tenants: [Vec<u32>; 3],
}

const CHAIN: [&str; 3] = ["organization", "folder", "file"];
const CHAIN_PREFIX: [&str; 3] = ["org", "folder", "file"];

fn instance_key(level: usize, i: usize) -> String {
    format!("{}-{i}", CHAIN_PREFIX[level])
}

fn instances_and_tuples(spec: &GenSpec, rng: &mut ChaCha8Rng, doc: &mut DataDocument) -> Placed {
    let (orgs, folders, files, documents) = split(spec.instances);
    let tenants = spec.tenants.max(1);
    let mut placed = Placed {
        counts: [orgs, folders, files],
        tenants: [Vec::new(), Vec::new(), Vec::new()],
    };
    let mut parent: [Vec<u32>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    doc.resource_instances = Vec::with_capacity(spec.instances);
    for level in 0..3 {
        let n = placed.counts[level];
        for i in 0..n {
            let (t, p) = if level == 0 {
                (i % tenants, 0)
            } else {
                let p = below(rng, placed.counts[level - 1]);
                (placed.tenants[level - 1][p] as usize, p)
            };
            placed.tenants[level].push(t as u32);
            parent[level].push(p as u32);
            doc.resource_instances.push(ResourceInstance {
                key: instance_key(level, i),
                resource: CHAIN[level].into(),
                tenant: spec.tenants.gt(&0).then(|| tenant_key(t)),
                attributes: map([("name".into(), json!(format!("{} {i}", CHAIN[level])))]),
            });
        }
    }
    for i in 0..documents {
        let attrs = map([
            (
                "classification".into(),
                json!(CLASSIFICATIONS[below(rng, CLASSIFICATIONS.len())]),
            ),
            ("size".into(), json!(below(rng, 2_000_000))),
            (
                "owner".into(),
                json!(user_key(below(rng, spec.users.max(1)))),
            ),
        ]);
        doc.resource_instances.push(ResourceInstance {
            key: format!("doc-{i}"),
            resource: "document".into(),
            tenant: spec.tenants.gt(&0).then(|| tenant_key(below(rng, tenants))),
            attributes: attrs,
        });
    }

    let mut tuples = Vec::with_capacity(spec.tuples);
    let tuple = |level: usize, child: usize, p: usize, t: u32| pdp::model::RelationshipTuple {
        subject: format!("{}:{}", CHAIN[level - 1], instance_key(level - 1, p)),
        relation: "parent".into(),
        object: format!("{}:{}", CHAIN[level], instance_key(level, child)),
        tenant: spec.tenants.gt(&0).then(|| tenant_key(t as usize)),
    };
    'natural: for (level, parents) in parent.iter().enumerate().skip(1) {
        let parents = parents.iter().zip(&placed.tenants[level]);
        for (child, (&p, &t)) in parents.enumerate() {
            if tuples.len() == spec.tuples {
                break 'natural;
            }
            tuples.push(tuple(level, child, p as usize, t));
        }
    }
    // Files shared into a second folder, until the tuple budget is spent.
    if folders > 1 && files > 0 {
        let mut child = 0;
        while tuples.len() < spec.tuples && child < files {
            let primary = parent[2][child] as usize;
            let p = (primary + 1 + below(rng, folders - 1)) % folders;
            tuples.push(tuple(2, child, p, placed.tenants[2][child]));
            child += 1;
        }
    }
    doc.relationship_tuples = tuples;
    placed
}

fn instance_assignments(
    spec: &GenSpec,
    rng: &mut ChaCha8Rng,
    doc: &mut DataDocument,
    placed: &Placed,
) {
    if spec.users == 0 {
        return;
    }
    // Per level: share of assignments and the roles drawn there.
    let shares = [1u32, 4, 5];
    let roles_at = |level: usize| -> Vec<(&'static str, u32)> {
        let w = match level {
            0 => &[1u32, 4][..],
            _ => &[6u32, 3, 1][..],
        };
        REBAC_ROLES
            .iter()
            .filter(|r| r.0 == CHAIN[level])
            .zip(w)
            .map(|(r, w)| (r.1, *w))
            .collect()
    };
    let roles: Vec<Vec<(&str, u32)>> = (0..3).map(roles_at).collect();
    let levels: Vec<usize> = (0..3).filter(|l| placed.counts[*l] > 0).collect();
    if levels.is_empty() {
        return;
    }
    let level_weights: Vec<u32> = levels.iter().map(|l| shares[*l]).collect();
    let capacity: usize = levels
        .iter()
        .map(|l| placed.counts[*l] * roles[*l].len())
        .sum::<usize>()
        .saturating_mul(spec.users);
    let target = spec.instance_assignments.min(capacity);
    let mut seen: HashSet<(u32, u8, u32, u8)> = HashSet::with_capacity(target);
    while seen.len() < target {
        let level = levels[weighted(rng, &level_weights)];
        let i = below(rng, placed.counts[level]);
        let u = below(rng, spec.users);
        let w: Vec<u32> = roles[level].iter().map(|r| r.1).collect();
        let r = weighted(rng, &w);
        if !seen.insert((u as u32, level as u8, i as u32, r as u8)) {
            continue;
        }
        doc.role_assignments.push(RoleAssignment {
            user: user_key(u),
            role: roles[level][r].0.into(),
            tenant: spec
                .tenants
                .gt(&0)
                .then(|| tenant_key(placed.tenants[level][i] as usize)),
            resource_instance: Some(format!("{}:{}", CHAIN[level], instance_key(level, i))),
        });
    }
}

// ---- queries ---------------------------------------------------------------

/// One `/allowed` query, with the reference evaluator's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub user: String,
    pub action: String,
    pub resource_type: String,
    pub resource_key: Option<String>,
    pub tenant: Option<String>,
    /// What `docs/semantics.md` says for this query on the generated
    /// document, as the reference evaluator reads it.
    pub expect_allow: bool,
}

impl Query {
    /// The `/allowed` request body, as the SDKs send it.
    pub fn to_json(&self) -> Value {
        json!({
            "user": {"key": self.user},
            "action": self.action,
            "resource": {"type": self.resource_type, "key": self.resource_key, "tenant": self.tenant},
            "context": {},
        })
    }
}

/// A `/user-permissions` request body for `user`.
pub fn user_permissions_body(user: &str) -> Value {
    json!({"user": {"key": user}, "tenants": null, "resources": null, "resource_types": null})
}

/// Draws query mixes from a generated document and labels them.
///
/// It knows the document's shape (which assignments sit where on the chain,
/// which instance is under which) to aim a draw at allow or at deny; the
/// label is always the reference evaluator's, the one other copy of the
/// rules beside the engine, so a disagreement points at one of the two.
pub struct QueryMix<'a> {
    doc: &'a DataDocument,
    reference: Reference<'a>,
    rng: ChaCha8Rng,
    /// Tenant-level assignments as indexes into `doc.role_assignments`.
    tenant_ras: Vec<usize>,
    /// Instance assignments by level of the chain (org, folder, file).
    chain_ras: [Vec<usize>; 3],
    /// subject → objects, for walking down the chain.
    children: HashMap<&'a str, Vec<&'a str>>,
    instances: HashMap<(&'a str, &'a str), &'a ResourceInstance>,
    documents: Vec<usize>,
}

fn split_instance(s: &str) -> Option<(&str, &str)> {
    s.split_once(':')
}

impl<'a> QueryMix<'a> {
    pub fn new(doc: &'a DataDocument, seed: u64) -> Self {
        let mut m = QueryMix {
            doc,
            reference: Reference::new(doc),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            tenant_ras: Vec::new(),
            chain_ras: [Vec::new(), Vec::new(), Vec::new()],
            children: HashMap::new(),
            instances: doc
                .resource_instances
                .iter()
                .map(|i| ((i.resource.as_str(), i.key.as_str()), i))
                .collect(),
            documents: Vec::new(),
        };
        for (i, ra) in doc.role_assignments.iter().enumerate() {
            match (&ra.resource_instance, &ra.tenant) {
                (None, Some(_)) => m.tenant_ras.push(i),
                (Some(inst), _) => {
                    if let Some(level) =
                        split_instance(inst).and_then(|(ty, _)| CHAIN.iter().position(|c| *c == ty))
                    {
                        m.chain_ras[level].push(i);
                    }
                }
                (None, None) => {}
            }
        }
        for t in &doc.relationship_tuples {
            m.children.entry(&t.subject).or_default().push(&t.object);
        }
        m.documents = doc
            .resource_instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.resource == "document")
            .map(|(n, _)| n)
            .collect();
        m
    }

    /// The reference evaluator's answer for `q`.
    fn label(&self, q: &Query) -> bool {
        reference::allowed(&self.reference, &q.to_json())
    }

    fn tenant_query(&mut self, want_allow: bool) -> Query {
        let doc = self.doc;
        let ra =
            &doc.role_assignments[self.tenant_ras[below(&mut self.rng, self.tenant_ras.len())]];
        let tenant = ra.tenant.clone();
        let all: Vec<(&str, &str)> = RBAC_TYPES
            .iter()
            .flat_map(|t| t.actions.iter().map(move |a| (t.key, *a)))
            .collect();
        let granted: Vec<(&str, &str)> = if want_allow {
            let grants = reference::tenant_role_grants(&self.reference, &ra.role);
            all.iter()
                .copied()
                .filter(|(t, a)| grants.contains(&(t.to_string(), a.to_string())))
                .collect()
        } else {
            all
        };
        let (ty, action) = granted[below(&mut self.rng, granted.len())];
        let mut q = Query {
            user: ra.user.clone(),
            action: action.into(),
            resource_type: ty.into(),
            resource_key: None,
            tenant,
            expect_allow: false,
        };
        if !want_allow && below(&mut self.rng, 3) == 0 && !doc.tenants.is_empty() {
            // A tenant the user is (most likely) not a member of.
            q.tenant = Some(
                doc.tenants[below(&mut self.rng, doc.tenants.len())]
                    .key
                    .clone(),
            );
        }
        q
    }

    /// RBAC queries (no resource key), about half allowed.
    pub fn rbac(&mut self, n: usize) -> Vec<Query> {
        if self.tenant_ras.is_empty() {
            return Vec::new();
        }
        (0..n)
            .map(|i| {
                let mut q = self.tenant_query(i % 2 == 0);
                q.expect_allow = self.label(&q);
                q
            })
            .collect()
    }

    /// ReBAC queries on files whose answer comes from a role held `depth`
    /// levels up the chain: 1 = a direct role on the file, 2 = on its folder,
    /// 3 = on the folder's organization. About half allowed.
    pub fn rebac(&mut self, depth: usize, n: usize) -> Vec<Query> {
        let level = 3usize.saturating_sub(depth.clamp(1, 3));
        if self.chain_ras[level].is_empty() {
            return Vec::new();
        }
        let file_actions = REBAC_TYPES[2].actions;
        let mut out = Vec::with_capacity(n);
        let mut attempts = 0;
        while out.len() < n && attempts < n * 20 {
            attempts += 1;
            let ras = &self.chain_ras[level];
            let ra = &self.doc.role_assignments[ras[below(&mut self.rng, ras.len())]];
            let Some(mut inst) = ra.resource_instance.as_deref() else {
                continue;
            };
            // Walk down to a file.
            let mut ok = true;
            for _ in level..2 {
                match self.children.get(inst) {
                    Some(c) if !c.is_empty() => inst = c[below(&mut self.rng, c.len())],
                    _ => ok = false,
                }
            }
            let Some((_, key)) = split_instance(inst).filter(|_| ok) else {
                continue;
            };
            let action = file_actions[below(&mut self.rng, file_actions.len())];
            let mut q = Query {
                user: ra.user.clone(),
                action: action.into(),
                resource_type: "file".into(),
                resource_key: Some(key.into()),
                tenant: ra.tenant.clone(),
                expect_allow: false,
            };
            q.expect_allow = self.label(&q);
            // Keep the mix near half and half.
            let want_allow = out.len() % 2 == 0;
            if q.expect_allow == want_allow || attempts > n * 10 {
                out.push(q);
            }
        }
        out
    }

    /// ABAC queries on documents (stored attributes decide), about half allowed.
    pub fn abac(&mut self, n: usize) -> Vec<Query> {
        if self.documents.is_empty() || self.doc.users.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(n);
        let mut attempts = 0;
        while out.len() < n && attempts < n * 40 {
            attempts += 1;
            let d = &self.doc.resource_instances
                [self.documents[below(&mut self.rng, self.documents.len())]];
            let u = &self.doc.users[below(&mut self.rng, self.doc.users.len())];
            let action = ["read", "update"][below(&mut self.rng, 2)];
            let mut q = Query {
                user: u.key.clone(),
                action: action.into(),
                resource_type: "document".into(),
                resource_key: Some(d.key.clone()),
                tenant: d.tenant.clone(),
                expect_allow: false,
            };
            q.expect_allow = self.label(&q);
            let want_allow = out.len() % 2 == 0;
            if q.expect_allow == want_allow || attempts > n * 20 {
                out.push(q);
            }
        }
        out
    }

    /// The load mix: half RBAC, 30% ReBAC (depths 1-3), 20% ABAC, shuffled.
    pub fn mixed(&mut self, n: usize) -> Vec<Query> {
        let rebac_each = n * 3 / 10 / 3;
        let abac = n / 5;
        let mut out = self.rbac(n - abac - 3 * rebac_each);
        for depth in 1..=3 {
            out.extend(self.rebac(depth, rebac_each));
        }
        out.extend(self.abac(abac));
        // Fisher-Yates with the stable draw.
        for i in (1..out.len()).rev() {
            let j = below(&mut self.rng, i + 1);
            out.swap(i, j);
        }
        out
    }

    /// `requests` bulk requests of `per` checks in the shape of the Python
    /// SDK's `filter_objects`: one user and one action on `per` files, each
    /// with its own tenant. Up to half the files lie under an organization
    /// the user holds a role on, so they are mostly allowed; the rest are
    /// drawn from all files, mostly denied.
    pub fn filter(&mut self, requests: usize, per: usize) -> Vec<Vec<Query>> {
        let files: Vec<&'a ResourceInstance> = self
            .doc
            .resource_instances
            .iter()
            .filter(|i| i.resource == CHAIN[2])
            .collect();
        // Roles on organizations: ~70 files lie under each.
        let holders = self.chain_ras[0].clone();
        if files.is_empty() || holders.is_empty() || per == 0 {
            return Vec::new();
        }
        let actions = REBAC_TYPES[2].actions;
        (0..requests)
            .map(|_| {
                let ra = &self.doc.role_assignments[holders[below(&mut self.rng, holders.len())]];
                // The files under the instance the role is on, breadth first.
                let mut under: Vec<&str> = Vec::new();
                let mut frontier: Vec<&str> = ra.resource_instance.as_deref().into_iter().collect();
                while under.len() < per / 2 && !frontier.is_empty() {
                    let mut next = Vec::new();
                    for inst in frontier {
                        match split_instance(inst) {
                            Some((ty, key)) if ty == CHAIN[2] => under.push(key),
                            _ => next.extend(self.children.get(inst).into_iter().flatten()),
                        }
                    }
                    frontier = next;
                }
                under.truncate(per / 2);
                // An action the role grants on them, where there is one.
                let start = below(&mut self.rng, actions.len());
                let action = (0..actions.len())
                    .map(|i| actions[(start + i) % actions.len()])
                    .find(|a| {
                        under
                            .first()
                            .is_some_and(|key| self.label(&self.file_query(&ra.user, a, key)))
                    })
                    .unwrap_or(actions[start]);
                let mut keys: Vec<&str> = under;
                while keys.len() < per {
                    keys.push(&files[below(&mut self.rng, files.len())].key);
                }
                for i in (1..keys.len()).rev() {
                    let j = below(&mut self.rng, i + 1);
                    keys.swap(i, j);
                }
                keys.into_iter()
                    .map(|key| {
                        let mut q = self.file_query(&ra.user, action, key);
                        q.expect_allow = self.label(&q);
                        q
                    })
                    .collect()
            })
            .collect()
    }

    /// `user` does `action` on the file `key`, in the file's tenant.
    fn file_query(&self, user: &str, action: &str, key: &str) -> Query {
        Query {
            user: user.into(),
            action: action.into(),
            resource_type: CHAIN[2].into(),
            resource_key: Some(key.into()),
            tenant: self
                .instances
                .get(&(CHAIN[2], key))
                .and_then(|i| i.tenant.clone()),
            expect_allow: false,
        }
    }

    /// `n` user keys for `/user-permissions`, users that hold roles.
    pub fn users_with_roles(&mut self, n: usize) -> Vec<String> {
        if self.tenant_ras.is_empty() {
            return Vec::new();
        }
        (0..n)
            .map(|_| {
                let i = self.tenant_ras[below(&mut self.rng, self.tenant_ras.len())];
                self.doc.role_assignments[i].user.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GenSpec {
        GenSpec {
            users: 200,
            tenants: 20,
            tenant_assignments: 1_000,
            instance_assignments: 500,
            instances: 2_000,
            tuples: 2_000,
            seed: 11,
        }
    }

    #[test]
    fn same_seed_same_document_other_seed_differs() {
        let a = generate(&tiny());
        assert_eq!(a, generate(&tiny()));
        assert_ne!(a, generate(&tiny().with_seed(12)));
    }

    #[test]
    fn sizes_are_what_the_spec_asks() {
        let spec = tiny();
        let doc = generate(&spec);
        assert_eq!(doc.users.len(), spec.users);
        assert_eq!(doc.tenants.len(), spec.tenants);
        assert_eq!(doc.role_assignments.len(), spec.role_assignments());
        assert_eq!(doc.resource_instances.len(), spec.instances);
        assert_eq!(doc.relationship_tuples.len(), spec.tuples);
        let tenant_level = doc
            .role_assignments
            .iter()
            .filter(|r| r.resource_instance.is_none())
            .count();
        assert_eq!(tenant_level, spec.tenant_assignments);
    }

    #[test]
    fn no_duplicate_assignments() {
        let doc = generate(&tiny());
        let mut seen = HashSet::new();
        for r in &doc.role_assignments {
            assert!(
                seen.insert((&r.user, &r.role, &r.tenant, &r.resource_instance)),
                "duplicate {r:?}"
            );
        }
    }

    #[test]
    fn the_document_round_trips_through_json_and_bincode() {
        let doc = generate(&tiny());
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<DataDocument>(&text).unwrap(), doc);
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&doc, cfg).unwrap();
        let (back, _): (DataDocument, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn every_mix_has_allows_and_denies() {
        let doc = generate(&tiny());
        let mut mix = QueryMix::new(&doc, 1);
        let sets = [
            ("rbac", mix.rbac(400)),
            ("rebac1", mix.rebac(1, 200)),
            ("rebac2", mix.rebac(2, 200)),
            ("rebac3", mix.rebac(3, 200)),
            ("abac", mix.abac(200)),
            ("mixed", mix.mixed(1_000)),
            ("filter", mix.filter(10, 100).concat()),
        ];
        for (name, qs) in sets {
            assert!(!qs.is_empty(), "{name} is empty");
            let allowed = qs.iter().filter(|q| q.expect_allow).count();
            let share = allowed as f64 / qs.len() as f64;
            assert!(
                (0.3..=0.7).contains(&share),
                "{name}: {allowed}/{}",
                qs.len()
            );
        }
        for r in mix.filter(10, 100) {
            assert_eq!(r.len(), 100);
            assert!(r
                .iter()
                .all(|q| q.user == r[0].user && q.action == r[0].action));
        }
    }

    #[test]
    fn a_depth_three_grant_flows_from_organization_to_file() {
        let doc = generate(&tiny());
        let mix = QueryMix::new(&doc, 1);
        // Find an org admin and a file two tuples below the organization.
        let ra = doc
            .role_assignments
            .iter()
            .find(|r| {
                r.role == "admin"
                    && r.resource_instance.as_deref().is_some_and(|i| {
                        i.starts_with("organization:") && mix.children.contains_key(i)
                    })
                    && mix.children[r.resource_instance.as_deref().unwrap()]
                        .iter()
                        .any(|f| mix.children.contains_key(f))
            })
            .expect("an org admin with a file below");
        let org = ra.resource_instance.as_deref().unwrap();
        let folder = mix.children[org]
            .iter()
            .find(|f| mix.children.contains_key(*f))
            .unwrap();
        let file = mix.children[*folder][0];
        let roles = reference::roles_on(&mix.reference, &ra.user, file);
        assert!(roles.contains("editor"), "{roles:?}");
        let q = Query {
            user: ra.user.clone(),
            action: "update".into(),
            resource_type: "file".into(),
            resource_key: Some(file.split_once(':').unwrap().1.into()),
            tenant: ra.tenant.clone(),
            expect_allow: false,
        };
        assert!(mix.label(&q));
        assert!(
            !mix.label(&Query {
                action: "share".into(),
                ..q.clone()
            }) || roles.contains("owner")
        );
    }
}
