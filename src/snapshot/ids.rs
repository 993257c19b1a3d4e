//! The snapshot's ids, one type per kind of object, so a tenant id cannot
//! be passed where a role id belongs. Each is a `u32` and nothing more
//! (`repr(transparent)`): the tables hold plain `u32`s and the accessors of
//! [`Snapshot`](super::Snapshot) wrap and unwrap them at no cost.

use super::BuildError;

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(pub(crate) u32);
    )*};
}

ids! {
    /// A user, by key.
    UserId,
    /// A tenant, by key.
    TenantId,
    /// A resource type.
    TypeId,
    /// A resource instance: a key within its type.
    InstanceId,
    /// A tenant-level role (`roles[]`).
    RoleId,
    /// A resource role, numbered within its type.
    ResourceRoleId,
    /// An action, numbered within its type.
    ActionId,
    /// A relation of relationship tuples.
    RelationId,
}

/// `n` as a `u32` id or count, or a build error naming what overflowed: the
/// tables number everything in 32 bits.
pub(crate) fn checked(n: usize, what: &'static str) -> Result<u32, BuildError> {
    u32::try_from(n).map_err(|_| BuildError::TooMany { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_past_u32_are_a_build_error() {
        assert_eq!(checked(7, "users"), Ok(7));
        assert_eq!(checked(u32::MAX as usize, "users"), Ok(u32::MAX));
        let err = checked(u32::MAX as usize + 1, "role assignments").unwrap_err();
        assert_eq!(
            err.to_string(),
            "more than 4294967295 role assignments: this PDP numbers them in 32 bits"
        );
    }
}
