//! Permission names for `/user-permissions`: every `(type, action)` of the
//! schema ranked by its name, `"type:action"`, and each role's grants as a
//! set of those ranks.
//!
//! An answer lists, per tenant and per instance, the permissions its roles
//! grant, sorted by name. With the ranks, an entry's permissions are the
//! union of its roles' sets (a few words OR'd), come out in order by
//! iterating the set, and are written from names made once per snapshot,
//! where sets of name pairs were inserted, compared byte by byte and
//! formatted for every answer.

use serde_json::value::RawValue;

use super::{BitSet, Interner, TypeInfo};

#[derive(Default)]
pub(crate) struct PermIndex {
    /// `"type:action"`, sorted, each as its JSON string: an answer copies
    /// it instead of escaping it again.
    names: Vec<Box<RawValue>>,
    /// Per type, per action: the position of its name in `names`.
    rank: Vec<Vec<u32>>,
    /// Per tenant role: the ranks of its flattened grants.
    tenant_roles: Vec<BitSet>,
    /// Per type, per resource role: the ranks of the actions it grants.
    resource_roles: Vec<Vec<BitSet>>,
}

impl PermIndex {
    /// `role_perms`: per tenant role, its flattened `(type, action)` grants.
    pub fn build(types: &Interner, type_info: &[TypeInfo], role_perms: &[Vec<(u32, u32)>]) -> Self {
        let mut pairs: Vec<(String, u32, u32)> = type_info
            .iter()
            .zip(0u32..)
            .flat_map(|(info, ty)| {
                info.actions
                    .iter()
                    .map(move |(a, action)| (format!("{}:{action}", types.name(ty)), ty, a))
            })
            .collect();
        pairs.sort_unstable();
        let mut rank: Vec<Vec<u32>> = type_info
            .iter()
            .map(|info| vec![0; info.actions.len()])
            .collect();
        for (&(_, ty, a), r) in pairs.iter().zip(0u32..) {
            rank[ty as usize][a as usize] = r;
        }
        let tenant_roles = role_perms
            .iter()
            .map(|grants| {
                let mut set = BitSet::with_len(pairs.len());
                for &(ty, a) in grants {
                    set.insert(rank[ty as usize][a as usize]);
                }
                set
            })
            .collect();
        let resource_roles = type_info
            .iter()
            .zip(&rank)
            .map(|(info, rank)| {
                info.role_actions
                    .iter()
                    .map(|actions| {
                        let mut set = BitSet::with_len(pairs.len());
                        for a in actions.iter() {
                            set.insert(rank[a as usize]);
                        }
                        set
                    })
                    .collect()
            })
            .collect();
        let names = pairs
            .into_iter()
            .map(|(name, ..)| {
                let json = serde_json::Value::String(name).to_string();
                RawValue::from_string(json).expect("a JSON string is JSON")
            })
            .collect();
        PermIndex {
            names,
            rank,
            tenant_roles,
            resource_roles,
        }
    }

    pub fn names(&self) -> &[Box<RawValue>] {
        &self.names
    }

    pub fn rank(&self, ty: u32, action: u32) -> u32 {
        self.rank[ty as usize][action as usize]
    }

    pub fn tenant_role(&self, role: u32) -> &BitSet {
        &self.tenant_roles[role as usize]
    }

    pub fn resource_role(&self, ty: u32, role: u32) -> &BitSet {
        &self.resource_roles[ty as usize][role as usize]
    }
}
