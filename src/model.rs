//! The data document: one whole environment, exactly as the control plane's
//! list endpoints return its objects (docs/data-document.md).
//!
//! These are plain input types. Nothing here is indexed or validated beyond
//! JSON shape; [`crate::snapshot::Snapshot::build`] is the one place that turns
//! a document into something decisions can be made from. Every list and map
//! is optional and `null` counts as empty, because the control plane and
//! hand-written files both leave things out. Unknown fields are ignored.
//!
//! The same types are written to the offline backup with bincode. bincode
//! cannot carry free-form JSON (`serde_json::Value` needs a self-describing
//! format), so free-form fields use [`Json`], which is a JSON value in
//! human-readable formats and a JSON string in binary ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A free-form JSON object (attributes) or value (conditions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Json(pub serde_json::Value);

impl Json {
    pub fn object(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.0.as_object()
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        JsonRef(&self.0).serialize(s)
    }
}

/// A borrowed [`Json`], for serializing a value held elsewhere.
pub struct JsonRef<'a>(pub &'a serde_json::Value);

impl Serialize for JsonRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            let text = serde_json::to_string(self.0).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d).map(Json)
        } else {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            serde_json::from_str(&text)
                .map(Json)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// `null` or absent → `T::default()`. Binary formats carry no `null`: there
/// the value is read as written.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    if d.is_human_readable() {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    } else {
        T::deserialize(d)
    }
}

/// Reads one of several JSON shapes into a canonical value; binary formats
/// hold only the canonical one. `T` is the canonical type, `J` the JSON shapes.
fn canonical<'de, D, T, J>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + From<J>,
    J: Deserialize<'de>,
{
    if d.is_human_readable() {
        J::deserialize(d).map(T::from)
    } else {
        T::deserialize(d)
    }
}

/// A whole environment. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataDocument {
    #[serde(deserialize_with = "nullable")]
    pub resources: Vec<Resource>,
    #[serde(deserialize_with = "nullable")]
    pub roles: Vec<Role>,
    #[serde(deserialize_with = "nullable")]
    pub tenants: Vec<Tenant>,
    #[serde(deserialize_with = "nullable")]
    pub users: Vec<User>,
    #[serde(deserialize_with = "nullable")]
    pub role_assignments: Vec<RoleAssignment>,
    #[serde(deserialize_with = "nullable")]
    pub resource_instances: Vec<ResourceInstance>,
    #[serde(deserialize_with = "nullable")]
    pub relationship_tuples: Vec<RelationshipTuple>,
    #[serde(deserialize_with = "nullable")]
    pub condition_sets: Vec<ConditionSet>,
    #[serde(deserialize_with = "nullable")]
    pub condition_set_rules: Vec<ConditionSetRule>,
}

/// A resource type (`ResourceRead`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resource {
    pub key: String,
    /// The control plane's UUID; condition sets may name their resource by it.
    #[serde(deserialize_with = "nullable")]
    pub id: Option<String>,
    /// Action key → its definition (only the key matters for decisions).
    #[serde(deserialize_with = "nullable")]
    pub actions: BTreeMap<String, Json>,
    #[serde(deserialize_with = "nullable")]
    pub attributes: BTreeMap<String, Json>,
    #[serde(deserialize_with = "nullable")]
    pub roles: BTreeMap<String, ResourceRole>,
    #[serde(deserialize_with = "nullable")]
    pub relations: BTreeMap<String, Relation>,
    #[serde(deserialize_with = "nullable")]
    pub action_groups: BTreeMap<String, ActionGroup>,
}

/// An action group's action keys. JSON: a bare list, or
/// `ResourceActionGroupRead` (`{"actions": [...]}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ActionGroup(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum ActionGroupJson {
    Actions(Vec<String>),
    Read {
        #[serde(default, deserialize_with = "nullable")]
        actions: Vec<String>,
    },
}

impl From<ActionGroupJson> for ActionGroup {
    fn from(j: ActionGroupJson) -> Self {
        match j {
            ActionGroupJson::Actions(a) | ActionGroupJson::Read { actions: a } => ActionGroup(a),
        }
    }
}

impl<'de> Deserialize<'de> for ActionGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Canonical(Vec<String>);
        impl From<Canonical> for ActionGroup {
            fn from(c: Canonical) -> Self {
                ActionGroup(c.0)
            }
        }
        impl From<ActionGroupJson> for Canonical {
            fn from(j: ActionGroupJson) -> Self {
                Canonical(ActionGroup::from(j).0)
            }
        }
        canonical::<D, Canonical, ActionGroupJson>(d).map(ActionGroup::from)
    }
}

impl ActionGroup {
    pub fn actions(&self) -> &[String] {
        &self.0
    }
}

/// A role on a resource type (`ResourceRoleRead`): its permissions are action
/// keys of that type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceRole {
    #[serde(deserialize_with = "nullable")]
    pub permissions: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub extends: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub granted_to: Option<GrantedTo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrantedTo {
    #[serde(deserialize_with = "nullable")]
    pub users_with_role: Vec<DerivationRule>,
    #[serde(deserialize_with = "nullable")]
    pub when: Option<When>,
}

/// "Users with `role` on the `on_resource` instance linked to this one by
/// `linked_by_relation` get this role here."
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerivationRule {
    pub role: String,
    pub on_resource: String,
    pub linked_by_relation: String,
    #[serde(deserialize_with = "nullable")]
    pub when: Option<When>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct When {
    #[serde(deserialize_with = "nullable")]
    pub no_direct_roles_on_object: bool,
}

/// A relation defined on the object type, naming the subject type.
/// The API spells the subject type `resource` in `ResourceRead.relations`
/// and `subject_resource` in `RelationRead`; both are accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Relation {
    #[serde(deserialize_with = "nullable")]
    pub resource: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub subject_resource: Option<String>,
}

/// A tenant-level role (`RoleRead`): permissions are `"type:action"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Role {
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub permissions: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub extends: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tenant {
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub name: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub attributes: Json,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub email: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub first_name: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub last_name: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub attributes: Json,
    /// Tenant-level roles seen from the user; merged with `role_assignments`.
    #[serde(deserialize_with = "nullable")]
    pub roles: Vec<UserRole>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserRole {
    pub role: String,
    #[serde(deserialize_with = "nullable")]
    pub tenant: Option<String>,
}

/// `RoleAssignmentRead`: `resource_instance` is `"type:key"` for an instance
/// role, absent or null for a tenant-level role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoleAssignment {
    pub user: String,
    pub role: String,
    #[serde(deserialize_with = "nullable")]
    pub tenant: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub resource_instance: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceInstance {
    pub key: String,
    pub resource: String,
    #[serde(deserialize_with = "nullable")]
    pub tenant: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub attributes: Json,
}

/// `subject` and `object` are `"type:key"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RelationshipTuple {
    pub subject: String,
    pub relation: String,
    pub object: String,
    #[serde(deserialize_with = "nullable")]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConditionSetType {
    #[default]
    Userset,
    Resourceset,
}

/// `ConditionSetRead`. A resource set names its resource type by key
/// (`resource`, a string or `{"key": ...}`) or by id (`resource_id`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConditionSet {
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub id: Option<String>,
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: ConditionSetType,
    #[serde(deserialize_with = "nullable")]
    pub resource: Option<ResourceRef>,
    #[serde(deserialize_with = "nullable")]
    pub resource_id: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub conditions: Json,
    /// Key or id of the parent set, whose conditions are ANDed with these.
    #[serde(deserialize_with = "nullable")]
    pub parent_id: Option<String>,
}

/// A resource type named by key. JSON: a string or `{"key": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ResourceRef(pub String);

#[derive(Deserialize)]
#[serde(untagged)]
enum ResourceRefJson {
    Key(String),
    Read { key: String },
}

impl<'de> Deserialize<'de> for ResourceRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Canonical(String);
        impl From<ResourceRefJson> for Canonical {
            fn from(j: ResourceRefJson) -> Self {
                match j {
                    ResourceRefJson::Key(k) | ResourceRefJson::Read { key: k } => Canonical(k),
                }
            }
        }
        canonical::<D, Canonical, ResourceRefJson>(d).map(|c| ResourceRef(c.0))
    }
}

impl ResourceRef {
    pub fn key(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConditionSetRule {
    pub user_set: String,
    /// `"type:action"`.
    pub permission: String,
    pub resource_set: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_and_missing_lists_are_empty() {
        let doc: DataDocument = serde_json::from_str(
            r#"{"users": null, "roles": [{"key": "r", "permissions": null, "extends": null}],
                "tenants": [{"key": "t", "attributes": null, "extra": 1}]}"#,
        )
        .unwrap();
        assert!(doc.users.is_empty());
        assert!(doc.roles[0].permissions.is_empty());
        assert_eq!(doc.tenants[0].attributes, Json(serde_json::Value::Null));
    }

    #[test]
    fn free_form_json_survives_bincode() {
        let doc: DataDocument = serde_json::from_str(
            r#"{"users": [{"key": "u", "attributes": {"dept": "eng", "n": [1, 2.5, null]}}],
                "condition_sets": [{"key": "s", "type": "resourceset", "resource": {"key": "doc"},
                                    "conditions": {"allOf": [{"resource.x": {"equals": true}}]}}]}"#,
        )
        .unwrap();
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&doc, cfg).unwrap();
        let (back, _): (DataDocument, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, doc);
        assert_eq!(
            back.condition_sets[0].resource.as_ref().unwrap().key(),
            "doc"
        );
    }

    #[test]
    fn action_groups_accept_both_shapes() {
        let r: Resource = serde_json::from_str(
            r#"{"key": "doc", "action_groups": {"g1": ["a", "b"], "g2": {"actions": ["c"]}}}"#,
        )
        .unwrap();
        assert_eq!(r.action_groups["g1"].actions(), ["a", "b"]);
        assert_eq!(r.action_groups["g2"].actions(), ["c"]);
    }
}
