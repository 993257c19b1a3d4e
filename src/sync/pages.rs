//! Reading whole lists page by page, in every shape the API uses
//! (docs/contract.md, Paging): a bare array (ends at a short page), `{data,
//! total_count, page_count}`, and `{data, pagination: {cursor, hasMore}}`.
//!
//! The API has no snapshot isolation, so a list that changes while it is
//! paged can come back with items shifted between pages. Where the answer
//! shows it (the total changes, an item appears twice, the count read does
//! not match the total) the sync fails rather than serve a list with holes;
//! the next attempt reads it again.

use std::collections::HashSet;
use std::fmt::{self, Debug};
use std::hash::{BuildHasher, Hash, RandomState};
use std::marker::PhantomData;
use std::time::Instant;

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::client::{Client, Failure, RequestError, Scope};
use super::SyncError;
use crate::model::{
    ConditionSet, ConditionSetRule, RelationshipTuple, Resource, ResourceInstance, Role,
    RoleAssignment, Tenant, User,
};
use crate::snapshot::Staged;

/// Read every list the decision model needs, one after the other, staging
/// each page as it arrives. Lists are read sequentially on purpose: with one
/// request in flight, a 429 is seen before the next request of its class is
/// sent.
pub async fn fetch_staged(
    client: &Client,
    scope: &Scope,
    per_page: u32,
    deadline: Instant,
) -> Result<Staged, SyncError> {
    let p = encode_segment(&scope.project_id);
    let e = encode_segment(&scope.environment_id);
    let schema = |list: &str| format!("/v2/schema/{p}/{e}/{list}");
    let facts = |list: &str| format!("/v2/facts/{p}/{e}/{list}");
    let lister = Lister {
        client,
        per_page: per_page.max(1),
        deadline,
    };
    let mut staged = Staged::new();
    let s = &mut staged;
    lister
        .list::<Resource>("resources", schema("resources"), s)
        .await?;
    lister.list::<Role>("roles", schema("roles"), s).await?;
    lister
        .list::<ConditionSet>("condition_sets", schema("condition_sets"), s)
        .await?;
    lister.list::<User>("users", facts("users"), s).await?;
    lister
        .list::<Tenant>("tenants", facts("tenants"), s)
        .await?;
    lister
        .list::<RoleAssignment>("role_assignments", facts("role_assignments"), s)
        .await?;
    lister
        .list::<ResourceInstance>("resource_instances", facts("resource_instances"), s)
        .await?;
    lister
        .list::<RelationshipTuple>("relationship_tuples", facts("relationship_tuples"), s)
        .await?;
    lister
        .list::<ConditionSetRule>("set_rules", facts("set_rules"), s)
        .await?;
    staged.shrink_to_fit();
    Ok(staged)
}

struct Lister<'a> {
    client: &'a Client,
    per_page: u32,
    deadline: Instant,
}

impl Lister<'_> {
    /// Reads one whole list into `staged`. A failure fails the whole sync,
    /// and `staged` with it.
    async fn list<T: Listed>(
        &self,
        list: &'static str,
        path: String,
        staged: &mut Staged,
    ) -> Result<(), SyncError> {
        let mark = staged.mark();
        // An expired cursor restarts the listing once per sync
        // (docs/contract.md, Paging), from nothing: what the first attempt staged is undone.
        let mut restarts_left = 1;
        'listing: loop {
            staged.rollback(&mark);
            let mut read: u64 = 0;
            let mut seen = Seen::default();
            let mut total: Option<u64> = None;
            let mut page = 1u64;
            let mut cursor: Option<String> = None;
            // Every cursor followed in this listing: one that comes round
            // again is a cycle, however long, not a list.
            let mut cursors = HashSet::new();
            // The first page's items, to compare with a second reading of
            // it when the list gives no total (below).
            let mut first_page: Vec<u64> = Vec::new();
            loop {
                let mut query = vec![("per_page", self.per_page.to_string())];
                if offers_totals(list) {
                    query.push(("include_total_count", "true".to_owned()));
                }
                match &cursor {
                    Some(c) => query.push(("cursor", c.clone())),
                    None => query.push(("page", page.to_string())),
                }
                let mut body: PageBody<T> =
                    match self.client.get_json(&path, &query, self.deadline).await {
                        Ok(body) => body,
                        Err(Failure::Final(RequestError::Status { status, .. }))
                            if cursor.is_some() && (400..500).contains(&status) =>
                        {
                            if restarts_left == 0 {
                                return Err(SyncError::CursorExpired { list });
                            }
                            restarts_left -= 1;
                            tracing::info!(
                                list,
                                status,
                                "cursor refused; reading the list again from the start"
                            );
                            continue 'listing;
                        }
                        Err(Failure::Final(error)) => {
                            return Err(SyncError::Rejected { list, error })
                        }
                        Err(Failure::Exhausted(last)) => {
                            return Err(SyncError::Exhausted { list, last })
                        }
                    };
                let inconsistent = |detail: String| SyncError::Inconsistent { list, detail };
                if let Some(t) = body.total_count {
                    match total {
                        // An item was deleted: if it came before this page,
                        // the rest shifted back and one went unread.
                        Some(prev) if t < prev => {
                            return Err(inconsistent(format!(
                                "total_count fell from {prev} to {t} between pages: an item \
                                 deleted meanwhile may have gone unread"
                            )))
                        }
                        // More items: one added at the end is read with the
                        // last page; one added before this page repeats an
                        // item, which fails below. Either way none is lost,
                        // so a busy environment still syncs.
                        _ => total = Some(t),
                    }
                }
                let n = body.data.len();
                if page == 1 && cursor.is_none() {
                    first_page = body.data.iter().map(|i| seen.hash(&i.identity())).collect();
                }
                for item in std::mem::take(&mut body.data) {
                    if !seen.insert(&item.identity()) {
                        return Err(inconsistent(format!(
                            "{:?} appeared on two pages",
                            item.identity()
                        )));
                    }
                    item.stage(staged);
                    read += 1;
                }
                if let Some(t) = total.filter(|&t| read > t) {
                    return Err(inconsistent(format!(
                        "read {read} items but total_count is {t}"
                    )));
                }
                match body
                    .next(n, page, self.per_page, cursor.as_deref())
                    .map_err(inconsistent)?
                {
                    Next::End => break,
                    Next::Page => {}
                    Next::Cursor(c) => {
                        if !cursors.insert(c.clone()) {
                            return Err(inconsistent(format!(
                                "the cursor {c:?} came round again after {page} pages"
                            )));
                        }
                        cursor = Some(c);
                    }
                }
                page += 1;
            }
            if let Some(t) = total {
                if read != t {
                    return Err(SyncError::Inconsistent {
                        list,
                        detail: format!("read {read} items but total_count is {t}"),
                    });
                }
            } else if page > 1 && cursors.is_empty() {
                // A bare list gives no total to watch: an item deleted
                // while it was paged shifts the rest back, and one item
                // goes unread. Read the first page again: a shift there
                // fails the sync rather than lose a fact, which can grant
                // access (a `not` condition, `no_direct_roles_on_object`).
                self.first_page_unchanged::<T>(list, &path, &seen, &first_page)
                    .await?;
            }
            tracing::debug!(list, items = read, "list read");
            return Ok(());
        }
    }

    /// Reads a bare list's first page again; an error if it changed.
    async fn first_page_unchanged<T: Listed>(
        &self,
        list: &'static str,
        path: &str,
        seen: &Seen,
        first: &[u64],
    ) -> Result<(), SyncError> {
        let query = [
            ("per_page", self.per_page.to_string()),
            ("page", "1".to_owned()),
        ];
        let body: PageBody<T> = match self.client.get_json(path, &query, self.deadline).await {
            Ok(body) => body,
            Err(Failure::Final(error)) => return Err(SyncError::Rejected { list, error }),
            Err(Failure::Exhausted(last)) => return Err(SyncError::Exhausted { list, last }),
        };
        let again: Vec<u64> = body.data.iter().map(|i| seen.hash(&i.identity())).collect();
        if again != first {
            return Err(SyncError::Inconsistent {
                list,
                detail: "its first page changed while the list was read (no total_count to check)"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

/// The lists whose endpoint documents `include_total_count` (contract
/// §4.4): asked for it, they answer `{data, total_count, page_count}`, and
/// a total that moves between pages shows the list changed under us.
fn offers_totals(list: &str) -> bool {
    matches!(list, "role_assignments" | "roles" | "resources")
}

/// Identities seen so far in one listing, as 64-bit hashes: a million role
/// assignments cost 8 MB here instead of a copy of every key. A collision
/// (about 1 in 10^7 at that size) fails one sync; the next one uses a new
/// random seed.
#[derive(Default)]
struct Seen {
    hasher: RandomState,
    hashes: HashSet<u64>,
}

impl Seen {
    fn hash(&self, identity: &impl Hash) -> u64 {
        self.hasher.hash_one(identity)
    }

    fn insert(&mut self, identity: &impl Hash) -> bool {
        self.hashes.insert(self.hash(identity))
    }
}

/// A list item, what makes it unique within its list, and where it is staged.
trait Listed: DeserializeOwned {
    fn identity(&self) -> impl Hash + Debug + '_;
    fn stage(self, staged: &mut Staged);
}

impl Listed for Resource {
    fn identity(&self) -> impl Hash + Debug + '_ {
        &self.key
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_resource(self);
    }
}
impl Listed for Role {
    fn identity(&self) -> impl Hash + Debug + '_ {
        &self.key
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_role(self);
    }
}
impl Listed for ConditionSet {
    fn identity(&self) -> impl Hash + Debug + '_ {
        &self.key
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_condition_set(self);
    }
}
impl Listed for User {
    fn identity(&self) -> impl Hash + Debug + '_ {
        &self.key
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_user(self);
    }
}
impl Listed for Tenant {
    fn identity(&self) -> impl Hash + Debug + '_ {
        &self.key
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_tenant(self);
    }
}
impl Listed for RoleAssignment {
    fn identity(&self) -> impl Hash + Debug + '_ {
        (
            &self.user,
            &self.role,
            &self.tenant,
            &self.resource_instance,
        )
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_assignment(self);
    }
}
impl Listed for ResourceInstance {
    fn identity(&self) -> impl Hash + Debug + '_ {
        (&self.resource, &self.key)
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_instance(self);
    }
}
impl Listed for RelationshipTuple {
    fn identity(&self) -> impl Hash + Debug + '_ {
        (&self.subject, &self.relation, &self.object, &self.tenant)
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_tuple(self);
    }
}
impl Listed for ConditionSetRule {
    fn identity(&self) -> impl Hash + Debug + '_ {
        (&self.user_set, &self.permission, &self.resource_set)
    }
    fn stage(self, staged: &mut Staged) {
        staged.push_condition_set_rule(self);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Bare,
    Paged,
    Cursor,
}

/// One page in whichever shape it came. Deserialized by hand rather than
/// with `#[serde(untagged)]`, which would buffer every page as generic
/// content before trying each shape, and would report only "did not match".
#[derive(Debug)]
struct PageBody<T> {
    shape: Shape,
    data: Vec<T>,
    total_count: Option<u64>,
    page_count: Option<u64>,
    cursor: Option<String>,
    has_more: Option<bool>,
}

/// What comes after a page.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    End,
    /// The next page number.
    Page,
    Cursor(String),
}

impl<T> PageBody<T> {
    /// What follows this page, which held `n` items and was read as page
    /// `page` or with the cursor `read_with`. `Err` names a page that
    /// contradicts itself: the sync fails (and keeps the serving snapshot)
    /// rather than end the list early or go round in circles.
    fn next(
        &mut self,
        n: usize,
        page: u64,
        per_page: u32,
        read_with: Option<&str>,
    ) -> Result<Next, String> {
        let full = if n >= per_page as usize {
            Next::Page
        } else {
            Next::End
        };
        match self.shape {
            Shape::Cursor => match (self.has_more, self.cursor.take().filter(|c| !c.is_empty())) {
                (Some(true), None) => Err("a page says there is more but gives no cursor".into()),
                (Some(true), Some(_)) if n == 0 => {
                    Err("a page says there is more but holds no items".into())
                }
                (Some(true), Some(c)) if read_with == Some(c.as_str()) => {
                    Err(format!("the cursor {c:?} leads back to its own page"))
                }
                (Some(true), Some(c)) => Ok(Next::Cursor(c)),
                _ => Ok(Next::End),
            },
            Shape::Paged => match self.page_count {
                Some(pc) if pc > 0 && page >= pc => Ok(Next::End),
                Some(pc) if pc > 0 && n == 0 => Err(format!("page {page} of {pc} is empty")),
                Some(pc) if pc > 0 => Ok(Next::Page),
                _ => Ok(full),
            },
            Shape::Bare => Ok(full),
        }
    }
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default, rename = "hasMore", alias = "has_more")]
    has_more: Option<bool>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for PageBody<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PageVisitor(PhantomData))
    }
}

struct PageVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for PageVisitor<T> {
    type Value = PageBody<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of items or an object with a `data` array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut data = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1_000));
        while let Some(item) = seq.next_element()? {
            data.push(item);
        }
        Ok(PageBody {
            shape: Shape::Bare,
            data,
            total_count: None,
            page_count: None,
            cursor: None,
            has_more: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut data: Option<Vec<T>> = None;
        let mut total_count = None;
        let mut page_count = None;
        let mut pagination: Option<Pagination> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "data" => data = Some(map.next_value()?),
                "total_count" => total_count = map.next_value()?,
                "page_count" => page_count = map.next_value()?,
                "pagination" => pagination = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let data = data.ok_or_else(|| serde::de::Error::missing_field("data"))?;
        Ok(match pagination {
            Some(p) => PageBody {
                shape: Shape::Cursor,
                data,
                total_count,
                page_count,
                cursor: p.cursor,
                has_more: p.has_more,
            },
            None => PageBody {
                shape: Shape::Paged,
                data,
                total_count,
                page_count,
                cursor: None,
                has_more: None,
            },
        })
    }
}

/// Percent-encode a path segment. Scope ids are UUIDs or slugs in practice;
/// this keeps a surprising one from escaping its segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> PageBody<User> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn all_three_shapes_parse() {
        let bare = parse(r#"[{"key": "a"}, {"key": "b"}]"#);
        assert_eq!(bare.shape, Shape::Bare);
        assert_eq!(bare.data.len(), 2);

        let paged =
            parse(r#"{"data": [{"key": "a"}], "total_count": 3, "page_count": 2, "x": {}}"#);
        assert_eq!(paged.shape, Shape::Paged);
        assert_eq!((paged.total_count, paged.page_count), (Some(3), Some(2)));

        let cursor = parse(r#"{"pagination": {"cursor": "c2", "hasMore": true}, "data": []}"#);
        assert_eq!(cursor.shape, Shape::Cursor);
        assert_eq!(cursor.cursor.as_deref(), Some("c2"));
        assert_eq!(cursor.has_more, Some(true));
    }

    #[test]
    fn an_object_without_data_is_refused() {
        let err = serde_json::from_str::<PageBody<User>>(r#"{"detail": "nope"}"#).unwrap_err();
        assert!(err.to_string().contains("data"), "{err}");
        assert!(serde_json::from_str::<PageBody<User>>(r#""text""#).is_err());
        assert!(serde_json::from_str::<PageBody<User>>(r#"[{"key": "a"}"#).is_err());
    }

    #[test]
    fn a_page_says_what_follows_it() {
        let next = |json: &str, page: u64, read_with: Option<&str>| {
            let mut body = parse(json);
            let n = std::mem::take(&mut body.data).len();
            body.next(n, page, 2, read_with)
        };
        let more = r#"{"data": [{"key": "a"}], "pagination": {"cursor": "c2", "hasMore": true}}"#;
        assert_eq!(next(more, 1, Some("c1")), Ok(Next::Cursor("c2".into())));
        assert!(next(more, 2, Some("c2")).unwrap_err().contains("c2"));
        let empty_more = r#"{"data": [], "pagination": {"cursor": "c2", "hasMore": true}}"#;
        assert!(next(empty_more, 1, Some("c1"))
            .unwrap_err()
            .contains("holds no items"));
        for no_cursor in [
            r#"{"data": [], "pagination": {"hasMore": true}}"#,
            r#"{"data": [], "pagination": {"cursor": "", "hasMore": true}}"#,
        ] {
            assert!(next(no_cursor, 1, None).unwrap_err().contains("no cursor"));
        }
        let last = r#"{"data": [{"key": "a"}], "pagination": {"cursor": "c3", "hasMore": false}}"#;
        assert_eq!(next(last, 3, Some("c2")), Ok(Next::End));

        let paged = |n: usize| {
            let items = vec![r#"{"key": "a"}"#; n].join(",");
            format!(r#"{{"data": [{items}], "page_count": 3}}"#)
        };
        assert_eq!(next(&paged(2), 1, None), Ok(Next::Page));
        assert_eq!(next(&paged(1), 3, None), Ok(Next::End));
        assert!(next(&paged(0), 2, None)
            .unwrap_err()
            .contains("page 2 of 3"));

        assert_eq!(
            next(r#"[{"key": "a"}, {"key": "b"}]"#, 1, None),
            Ok(Next::Page)
        );
        assert_eq!(next(r#"[{"key": "a"}]"#, 2, None), Ok(Next::End));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("a1-b_c.d~"), "a1-b_c.d~");
        assert_eq!(encode_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
