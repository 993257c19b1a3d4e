//! The route table: each endpoint's path, method, whether it needs the
//! caller's key, its metrics label and the decision series it counts in,
//! declared once in [`Route::spec`]. Dispatch, authentication and metrics
//! all read it, and every `match` on [`Route`] is exhaustive, so a new route
//! does not compile until each of them handles it.

use http::Method;

use super::ApiError;
use crate::authzen::Op;
use crate::metrics::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Allowed,
    Bulk,
    AllTenants,
    UserPermissions,
    AuthorizedUsers,
    UserTenants,
    Sync,
    Health,
    Ready,
    Live,
    Metrics,
    /// The AuthZEN API; each operation declares its own path.
    Authzen(Op),
    AuthzenConfiguration,
    /// `GET /local/role_assignments`: the snapshot's assignments, listed.
    LocalRoleAssignments,
    /// The facts proxy: every method under `/facts/` and
    /// `/v2/facts/{proj}/{env}/`.
    Facts,
    /// `GET /control-plane/log`: the last calls to the control plane.
    CallLog,
    /// `GET /control-plane/connectivity`: whether calls are allowed.
    Connectivity,
    /// `POST /control-plane/connectivity/enable` and `/disable`.
    ConnectivityOn,
    ConnectivityOff,
    /// `GET /v1/snapshot`: the serving snapshot as a bundle, for followers.
    Snapshot,
    /// `POST /v1/decision_logs/ingress`: followers' decision logs, shipped
    /// on in this PDP's own.
    DecisionLogIngress,
}

/// `GET` routes answer `HEAD` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    /// Every method (the facts proxy forwards what it is sent).
    Any,
}

impl Verb {
    fn allows(self, method: &Method) -> bool {
        match self {
            Verb::Get => method == Method::GET || method == Method::HEAD,
            Verb::Post => method == Method::POST,
            Verb::Any => true,
        }
    }

    /// The `Allow` header of a 405.
    pub fn allow_header(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Any => "GET, POST, PUT, PATCH, DELETE",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The path, which is also the route's metrics label.
    pub path: &'static str,
    /// Another path for the same route.
    pub alias: Option<&'static str>,
    /// Paths under `path/` (and `alias/`) are this route too.
    pub subpaths: bool,
    pub verb: Verb,
    /// Whether a caller must present the API key (when one is set).
    pub needs_key: bool,
    /// The decision series the route counts in, for routes that decide.
    pub decisions: Option<Endpoint>,
    /// How the work of one request grows (see `handlers::HeavyWork`).
    pub cost: Cost,
}

/// How much work one request of a route can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Bounded by the body: one check, or no decision at all.
    Small,
    /// One check per item of the body: large when the body is.
    PerItem,
    /// A listing over the snapshot (tenants, users, instances), whatever
    /// the body's size.
    Listing,
}

const fn spec(path: &'static str, verb: Verb, needs_key: bool) -> Spec {
    Spec {
        path,
        alias: None,
        subpaths: false,
        verb,
        needs_key,
        decisions: None,
        cost: Cost::Small,
    }
}

const fn deciding(path: &'static str, endpoint: Endpoint, cost: Cost) -> Spec {
    Spec {
        decisions: Some(endpoint),
        cost,
        ..spec(path, Verb::Post, true)
    }
}

impl Route {
    /// Every route, in the order requests are matched; `/allowed` first.
    pub const ALL: [Route; 25] = [
        Route::Allowed,
        Route::Bulk,
        Route::AllTenants,
        Route::UserPermissions,
        Route::AuthorizedUsers,
        Route::UserTenants,
        Route::Sync,
        Route::Health,
        Route::Ready,
        Route::Live,
        Route::Metrics,
        Route::Authzen(Op::Evaluation),
        Route::Authzen(Op::Evaluations),
        Route::Authzen(Op::SearchSubject),
        Route::Authzen(Op::SearchResource),
        Route::Authzen(Op::SearchAction),
        Route::AuthzenConfiguration,
        Route::LocalRoleAssignments,
        Route::Facts,
        Route::CallLog,
        Route::Connectivity,
        Route::ConnectivityOn,
        Route::ConnectivityOff,
        Route::Snapshot,
        Route::DecisionLogIngress,
    ];

    /// The metrics label of requests that matched no route.
    pub const UNMATCHED: &'static str = "unmatched";

    /// The table. Probes, metrics and the AuthZEN metadata (which a PEP
    /// reads before it has credentials) need no key.
    pub const fn spec(self) -> Spec {
        use Endpoint as E;
        match self {
            Route::Allowed => deciding("/allowed", E::Allowed, Cost::Small),
            Route::Bulk => deciding("/allowed/bulk", E::Bulk, Cost::PerItem),
            Route::AllTenants => deciding("/allowed/all-tenants", E::AllTenants, Cost::Listing),
            Route::UserPermissions => {
                deciding("/user-permissions", E::UserPermissions, Cost::Listing)
            }
            Route::AuthorizedUsers => {
                deciding("/authorized_users", E::AuthorizedUsers, Cost::Listing)
            }
            Route::UserTenants => deciding("/user-tenants", E::UserTenants, Cost::Listing),
            Route::Sync => spec("/sync", Verb::Post, true),
            Route::Health => Spec {
                alias: Some("/healthy"),
                ..spec("/health", Verb::Get, false)
            },
            Route::Ready => spec("/ready", Verb::Get, false),
            Route::Live => spec("/livez", Verb::Get, false),
            Route::Metrics => spec("/metrics", Verb::Get, false),
            Route::Authzen(op) => match op {
                Op::Evaluation => deciding(op.path(), E::AuthzenEvaluation, Cost::Small),
                Op::Evaluations => deciding(op.path(), E::AuthzenEvaluations, Cost::PerItem),
                Op::SearchSubject | Op::SearchResource | Op::SearchAction => {
                    deciding(op.path(), E::AuthzenSearch, Cost::Listing)
                }
            },
            Route::LocalRoleAssignments => Spec {
                cost: Cost::Listing,
                ..spec("/local/role_assignments", Verb::Get, true)
            },
            Route::Facts => Spec {
                alias: Some("/v2/facts"),
                subpaths: true,
                ..spec("/facts", Verb::Any, true)
            },
            Route::CallLog => spec("/control-plane/log", Verb::Get, true),
            Route::Connectivity => spec("/control-plane/connectivity", Verb::Get, true),
            Route::ConnectivityOn => spec("/control-plane/connectivity/enable", Verb::Post, true),
            Route::ConnectivityOff => spec("/control-plane/connectivity/disable", Verb::Post, true),
            Route::Snapshot => spec("/v1/snapshot", Verb::Get, true),
            Route::DecisionLogIngress => spec("/v1/decision_logs/ingress", Verb::Post, true),
            // Also the per-tenant form `/.well-known/authzen-configuration/<tenant>`.
            Route::AuthzenConfiguration => Spec {
                subpaths: true,
                ..spec("/.well-known/authzen-configuration", Verb::Get, false)
            },
        }
    }

    /// Whether this route serves `path`.
    fn serves(self, path: &str) -> bool {
        let s = self.spec();
        let under = |base: &str| {
            path.strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        path == s.path
            || s.alias == Some(path)
            || (s.subpaths && (under(s.path) || s.alias.is_some_and(under)))
    }

    /// The route for a request, or the 404 or 405 it gets.
    pub fn find(method: &Method, path: &str) -> Result<Route, ApiError> {
        let Some(route) = Route::ALL.into_iter().find(|r| r.serves(path)) else {
            return Err(ApiError::NotFound(path.to_owned()));
        };
        let verb = route.spec().verb;
        if !verb.allows(method) {
            return Err(ApiError::MethodNotAllowed {
                method: method.clone(),
                path: path.to_owned(),
                allow: verb,
            });
        }
        Ok(route)
    }

    /// The route's index into [`Route::ALL`] and [`Route::labels`].
    pub const fn index(self) -> usize {
        match self {
            Route::Allowed => 0,
            Route::Bulk => 1,
            Route::AllTenants => 2,
            Route::UserPermissions => 3,
            Route::AuthorizedUsers => 4,
            Route::UserTenants => 5,
            Route::Sync => 6,
            Route::Health => 7,
            Route::Ready => 8,
            Route::Live => 9,
            Route::Metrics => 10,
            Route::Authzen(op) => 11 + op as usize,
            Route::AuthzenConfiguration => 16,
            Route::LocalRoleAssignments => 17,
            Route::Facts => 18,
            Route::CallLog => 19,
            Route::Connectivity => 20,
            Route::ConnectivityOn => 21,
            Route::ConnectivityOff => 22,
            Route::Snapshot => 23,
            Route::DecisionLogIngress => 24,
        }
    }

    /// Metrics labels, indexed by [`Route::index`], then [`Route::UNMATCHED`].
    pub fn labels() -> Vec<&'static str> {
        Route::ALL
            .iter()
            .map(|r| r.spec().path)
            .chain([Route::UNMATCHED])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once_in_its_own_place() {
        for (i, route) in Route::ALL.into_iter().enumerate() {
            assert_eq!(route.index(), i, "{route:?}");
        }
        let labels = Route::labels();
        assert_eq!(labels.len(), Route::ALL.len() + 1);
        assert_eq!(labels[Route::Metrics.index()], "/metrics");
        assert_eq!(labels.last(), Some(&"unmatched"));
    }

    #[test]
    fn paths_aliases_subpaths_and_methods() {
        let post = Method::POST;
        let get = Method::GET;
        for route in Route::ALL {
            let s = route.spec();
            let method = match s.verb {
                Verb::Get | Verb::Any => &get,
                Verb::Post => &post,
            };
            assert_eq!(Route::find(method, s.path).unwrap(), route);
        }
        assert_eq!(Route::find(&get, "/healthy").unwrap(), Route::Health);
        assert_eq!(Route::find(&Method::HEAD, "/ready").unwrap(), Route::Ready);
        assert_eq!(
            Route::find(&get, "/.well-known/authzen-configuration/acme").unwrap(),
            Route::AuthzenConfiguration
        );
        assert!(matches!(
            Route::find(&get, "/.well-known/authzen-configurationx"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            Route::find(&get, "/allowed"),
            Err(ApiError::MethodNotAllowed {
                allow: Verb::Post,
                ..
            })
        ));
        assert!(matches!(
            Route::find(&post, "/allowed/"),
            Err(ApiError::NotFound(_))
        ));
        for path in ["/facts/users", "/v2/facts/p/e/role_assignments/bulk"] {
            assert_eq!(Route::find(&Method::DELETE, path).unwrap(), Route::Facts);
        }
    }
}
