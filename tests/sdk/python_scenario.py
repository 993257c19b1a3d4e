#!/usr/bin/env python3
"""Real-client scenario: the official Python SDK (`permit` 3.x) against a running pdp.

Owns the Python half of the SDK compatibility test. It drives the PDP only
through the SDK's public methods, so what is asserted is what an application
using `permit` would see. Every expected value is derived by hand from
`tests/fixtures/sdk.json` (the grant table is in `tests/sdk/README.md`), never
by asking the PDP.

Usage: python_scenario.py <pdp-url> <api-key>   (or PDP_URL / PDP_API_KEY)
       python_scenario.py --facts <pdp-url> <api-key> <control-plane-url>
The second form is the facts proxy scenario: the SDK with
`proxy_facts_via_pdp=True` against a PDP syncing `tests/fixtures/sdk-facts.json`
from the fake control plane once an hour, so only the proxy explains what it
answers after a write.
Prints one line per assertion and ends with `sdk-python: N passed, M failed`;
exits 1 if anything failed.
"""

import asyncio
import json
import os
import sys
import traceback
from urllib.parse import urlsplit

import aiohttp
from permit import Permit, PermitApiError, PermitConnectionError

LABEL = "sdk-python"

# What the SDK put on the wire for the current assertion, so a failure shows
# the HTTP request and not only the SDK call. The SDK posts through
# aiohttp.ClientSession.post with a pre-encoded JSON body.
SENT: list = []
_post = aiohttp.ClientSession.post


def _recording_post(self, url, *args, **kwargs):
    SENT.append(f"POST {urlsplit(str(url)).path} {kwargs.get('data')}")
    return _post(self, url, *args, **kwargs)


aiohttp.ClientSession.post = _recording_post


class Tally:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, name: str) -> None:
        self.passed += 1
        print(f"ok   {name}", flush=True)

    def fail(self, name: str, request: object, expected: object, got: object) -> None:
        self.failed += 1
        print(f"FAIL {name}", flush=True)
        print(f"     request:  {_show(request)}", flush=True)
        print(f"     expected: {_show(expected)}", flush=True)
        print(f"     got:      {_show(got)}", flush=True)
        if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
            print(f"     differs at index {[i for i, (e, g) in enumerate(zip(expected, got)) if e != g]}", flush=True)
        for line in SENT:
            print(f"     sent:     {line}", flush=True)

    async def equal(self, name: str, request: object, expected: object, call) -> None:
        """Await `call()` and compare its result with `expected` exactly.

        An exception from the SDK is a failure of this assertion, not of the
        whole run: the remaining assertions still say what else works.
        """
        SENT.clear()
        try:
            got = await call()
        except Exception as err:  # noqa: BLE001 - any SDK error is a finding to report
            self.fail(name, request, expected, f"raised {type(err).__name__}: {_first_line(err)}")
            return
        if got == expected:
            self.ok(name)
        else:
            self.fail(name, request, expected, got)

    async def raises(self, name: str, request: object, exc_type: type, must_mention: str, call) -> None:
        """Expect `call()` to raise `exc_type` whose message mentions `must_mention`."""
        SENT.clear()
        try:
            got = await call()
        except exc_type as err:
            if must_mention in str(err):
                self.ok(name)
            else:
                self.fail(name, request, f"{exc_type.__name__} mentioning {must_mention!r}", _first_line(err))
            return
        except Exception as err:  # noqa: BLE001
            self.fail(name, request, exc_type.__name__, f"raised {type(err).__name__}: {_first_line(err)}")
            return
        self.fail(name, request, f"{exc_type.__name__} raised", f"returned {got!r}")


def _show(value: object) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return repr(value)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def _authorized(result) -> dict:
    """An AuthorizedUsersResult as plain data, each user's assignments in a stable order.

    The order of one user's assignments carries no meaning for an
    application (it is a set of reasons), so it is sorted; everything else is
    compared exactly.
    """
    data = result.dict()
    for assignments in data["users"].values():
        assignments.sort(key=lambda a: (a["resource"], a["role"]))
    return data


def _assignment(user: str, tenant: str, resource: str, role: str) -> dict:
    return {"user": user, "tenant": tenant, "resource": resource, "role": role}


# Tenant attributes from the fixture, as /user-permissions reports them.
TENANT = {
    "default": {"key": "default", "attributes": {"region": "eu"}},
    "acme": {"key": "acme", "attributes": {"plan": "pro", "region": "us"}},
    "globex": {"key": "globex", "attributes": {"plan": "free"}},
}
# admin extends editor extends viewer: the flattened grants, sorted.
ADMIN_PERMS = ["document:delete", "document:read", "document:write", "invoice:approve", "invoice:read"]
VIEWER_PERMS = ["document:read", "invoice:read"]
EDITOR_PERMS = ["document:read", "document:write", "invoice:read"]
ACCOUNTANT_PERMS = ["invoice:approve", "invoice:pay", "invoice:read"]
# document#owner extends document#reader.
OWNER_PERMS = ["document:delete", "document:read", "document:share", "document:write"]


async def checks(t: Tally, permit: Permit) -> None:
    cases = [
        # (user, action, resource, expected, why)
        ("alice", "read", "document", True, "string resource, SDK default tenant"),
        ("alice", "delete", "document", True, "admin's own permission"),
        ("alice", "write", "document", True, "admin inherits editor (extends)"),
        ("alice", "approve", "invoice", True, "admin's own invoice permission"),
        ("alice", "pay", "invoice", False, "admin lacks invoice:pay"),
        ("alice", "write", "document:d1", True, "type:key string, RBAC in default"),
        ("alice", "share", "document:d1", False, "share only via the instance role owner"),
        ("alice", "read", {"type": "document", "tenant": "acme"}, True, "object resource, explicit tenant"),
        ("alice", "write", {"type": "document", "tenant": "acme"}, False, "viewer in acme, admin only in default"),
        ({"key": "alice", "email": "alice@example.com", "first_name": "Alice", "attributes": {"dept": "eng"}},
         "approve", {"type": "invoice", "key": "i1", "tenant": "default"}, True, "object user with extra fields"),
        ("bob", "read", "document", False, "bob has no role in default"),
        ("bob", "write", {"type": "document", "tenant": "acme"}, True, "editor in acme"),
        ("bob", "read", {"type": "document", "key": "d2", "tenant": "acme"}, True, "editor inherits viewer"),
        ("bob", "delete", {"type": "document", "tenant": "acme"}, False, "editor lacks delete"),
        ("bob", "pay", {"type": "invoice", "tenant": "globex"}, True, "accountant in globex"),
        ("bob", "pay", {"type": "invoice", "tenant": "acme"}, False, "accountant role does not leak into acme"),
        ("bob", "write", {"type": "document", "tenant": "globex"}, False, "editor role does not leak into globex"),
        ("bob", "read", {"type": "document", "tenant": "initech"}, False, "unknown tenant"),
        ("carol", "write", "document:d1", True, "ReBAC: owner on document:d1"),
        ("carol", "share", "document:d1", True, "ReBAC: owner's own action"),
        ("carol", "read", "document:d1", True, "RBAC viewer (and owner extends reader)"),
        ("carol", "write", "document:d2", False, "owner only on d1"),
        ("carol", "write", "document", False, "no key: instance roles do not apply"),
        ("dave", "read", "document", False, "known user without roles"),
        ("mallory", "read", "document", False, "unknown user"),
        ("alice", "fly", "document", False, "unknown action"),
        ("alice", "read", "spaceship", False, "unknown resource type"),
    ]
    for user, action, resource, expected, why in cases:
        name = f"check({_show(user)}, {action!r}, {_show(resource)}) is {expected}: {why}"
        await t.equal(
            name,
            {"user": user, "action": action, "resource": resource},
            expected,
            lambda u=user, a=action, r=resource: permit.check(u, a, r),
        )


async def tenant_defaults(t: Tally, url: str, key: str) -> None:
    # With use_default_tenant_if_empty off the SDK sends no tenant at all, and
    # a query without a tenant is denied (docs/contract.md, Queries; docs/semantics.md §2).
    strict = Permit(token=key, pdp=url, multi_tenancy={"use_default_tenant_if_empty": False})
    for user, action, resource, expected, why in [
        ("alice", "read", "document", False, "no tenant sent: denied"),
        ("carol", "write", "document:d1", False, "no tenant sent: ReBAC denied too"),
        ("alice", "read", {"type": "document", "tenant": "default"}, True, "explicit tenant still works"),
    ]:
        await t.equal(
            f"use_default_tenant_if_empty=False: check({user!r}, {action!r}, {_show(resource)}) is {expected}: {why}",
            {"user": user, "action": action, "resource": resource, "sdk": "use_default_tenant_if_empty=False"},
            expected,
            lambda u=user, a=action, r=resource: strict.check(u, a, r),
        )
    # A different SDK default tenant must reach the PDP as that tenant.
    acme = Permit(token=key, pdp=url, multi_tenancy={"default_tenant": "acme"})
    for action, expected in [("read", True), ("write", False)]:
        await t.equal(
            f"default_tenant='acme': check('alice', {action!r}, 'document') is {expected}",
            {"user": "alice", "action": action, "resource": "document", "sdk": "default_tenant=acme"},
            expected,
            lambda a=action: acme.check("alice", a, "document"),
        )


async def bulk(t: Tally, permit: Permit) -> None:
    batch = [
        {"user": "alice", "action": "read", "resource": "document"},
        {"user": "bob", "action": "read", "resource": "document"},
        {"user": {"key": "bob"}, "action": "write", "resource": {"type": "document", "key": "d2", "tenant": "acme"}},
        {"user": "carol", "action": "write", "resource": "document:d1"},
        {"user": "carol", "action": "write", "resource": "document:d2"},
        {"user": "mallory", "action": "read", "resource": "document"},
        {"user": "bob", "action": "pay", "resource": {"type": "invoice", "tenant": "globex"}},
        {"user": "bob", "action": "pay", "resource": {"type": "invoice", "tenant": "acme"}, "context": {"k": 1}},
    ]
    expected = [True, False, True, True, False, False, True, False]
    await t.equal("bulk_check answers in request order", batch, expected, lambda: permit.bulk_check(batch))
    await t.equal("bulk_check of nothing is []", [], [], lambda: permit.bulk_check([]))


async def filtering(t: Tally, permit: Permit) -> None:
    docs = [
        {"type": "document", "key": "d1", "tenant": "default"},
        {"type": "document", "key": "d2", "tenant": "acme"},
        {"type": "document", "key": "d3"},
        {"type": "document", "key": "d4", "tenant": "globex"},
    ]
    await t.equal(
        "filter_objects(alice, write): admin in default keeps d1 and tenant-less d3",
        {"user": "alice", "action": "write", "resources": docs},
        [docs[0], docs[2]],
        lambda: permit.filter_objects("alice", "write", {}, docs),
    )
    await t.equal(
        "filter_objects(bob, write): editor in acme keeps only d2",
        {"user": "bob", "action": "write", "resources": docs},
        [docs[1]],
        lambda: permit.filter_objects("bob", "write", {}, docs),
    )
    await t.equal(
        "filter_objects(carol, share): only the instance she owns",
        {"user": "carol", "action": "share", "resources": docs},
        [docs[0]],
        lambda: permit.filter_objects("carol", "share", {}, docs),
    )


async def user_permissions(t: Tally, permit: Permit) -> None:
    alice_default = {"tenant": TENANT["default"], "permissions": ADMIN_PERMS, "roles": ["admin"]}
    alice_acme = {"tenant": TENANT["acme"], "permissions": VIEWER_PERMS, "roles": ["viewer"]}
    cases = [
        ("alice", {}, {"__tenant:default": alice_default, "__tenant:acme": alice_acme}),
        ("alice", {"tenants": ["acme"]}, {"__tenant:acme": alice_acme}),
        ("alice", {"tenants": ["globex"]}, {}),
        (
            "bob",
            {},
            {
                "__tenant:acme": {"tenant": TENANT["acme"], "permissions": EDITOR_PERMS, "roles": ["editor"]},
                "__tenant:globex": {"tenant": TENANT["globex"], "permissions": ACCOUNTANT_PERMS, "roles": ["accountant"]},
            },
        ),
        (
            "bob",
            {"tenants": ["globex"]},
            {"__tenant:globex": {"tenant": TENANT["globex"], "permissions": ACCOUNTANT_PERMS, "roles": ["accountant"]}},
        ),
        (
            "carol",
            {},
            {
                "__tenant:default": {"tenant": TENANT["default"], "permissions": VIEWER_PERMS, "roles": ["viewer"]},
                "document:d1": {
                    "resource": {"key": "d1", "type": "document", "attributes": {"confidential": True}},
                    "permissions": OWNER_PERMS,
                    "roles": ["owner"],
                },
            },
        ),
        ("dave", {}, {}),
        ("mallory", {}, {}),
    ]
    for user, filters, expected in cases:
        await t.equal(
            f"get_user_permissions({user!r}, {_show(filters)})",
            {"user": user, **filters},
            expected,
            lambda u=user, f=filters: permit.get_user_permissions(u, **f),
        )
    await t.equal(
        "get_user_permissions with a user object",
        {"user": {"key": "alice", "email": "alice@example.com"}, "tenants": ["acme"]},
        {"__tenant:acme": alice_acme},
        lambda: permit.get_user_permissions({"key": "alice", "email": "alice@example.com"}, tenants=["acme"]),
    )


async def authorized(t: Tally, permit: Permit) -> None:
    admin_default = _assignment("alice", "default", "__tenant:default", "admin")
    cases = [
        ("write", "document", {"resource": "document:*", "tenant": "default", "users": {"alice": [admin_default]}}),
        (
            "read",
            "document",
            {
                "resource": "document:*",
                "tenant": "default",
                "users": {
                    "alice": [admin_default],
                    "carol": [_assignment("carol", "default", "__tenant:default", "viewer")],
                },
            },
        ),
        (
            "write",
            "document:d1",
            {
                "resource": "document:d1",
                "tenant": "default",
                "users": {
                    "alice": [admin_default],
                    "carol": [_assignment("carol", "default", "document:d1", "owner")],
                },
            },
        ),
        (
            "read",
            "document:d1",
            {
                "resource": "document:d1",
                "tenant": "default",
                "users": {
                    "alice": [admin_default],
                    "carol": [
                        _assignment("carol", "default", "__tenant:default", "viewer"),
                        _assignment("carol", "default", "document:d1", "owner"),
                    ],
                },
            },
        ),
        (
            "read",
            {"type": "document", "tenant": "acme"},
            {
                "resource": "document:*",
                "tenant": "acme",
                "users": {
                    "alice": [_assignment("alice", "acme", "__tenant:acme", "viewer")],
                    "bob": [_assignment("bob", "acme", "__tenant:acme", "editor")],
                },
            },
        ),
        (
            "pay",
            {"type": "invoice", "tenant": "globex"},
            {
                "resource": "invoice:*",
                "tenant": "globex",
                "users": {"bob": [_assignment("bob", "globex", "__tenant:globex", "accountant")]},
            },
        ),
        ("pay", "invoice", {"resource": "invoice:*", "tenant": "default", "users": {}}),
    ]
    for action, resource, expected in cases:

        async def call(a=action, r=resource):
            return _authorized(await permit.authorized_users(a, r))

        await t.equal(
            f"authorized_users({action!r}, {_show(resource)})",
            {"action": action, "resource": resource},
            expected,
            call,
        )


def _ra(user: str, role: str, tenant: str, instance: str = None) -> dict:
    return {"user": user, "role": role, "tenant": tenant, "resource_instance": instance}


async def local_assignments(t: Tally, permit: Permit) -> None:
    # pdp_api.role_assignments.list reads GET /local/role_assignments: the
    # fixture's assignments (README table), filtered by the PDP, as the SDK's
    # RoleAssignment models. Compared sorted: the order carries no meaning.
    async def listed(**filters):
        got = await permit.pdp_api.role_assignments.list(**filters)
        return sorted((a.dict() for a in got), key=lambda a: (a["user"], a["tenant"], a["role"]))

    for name, filters, expected in [
        ("carol's", {"user_key": "carol"},
         [_ra("carol", "owner", "default", "document:d1"), _ra("carol", "viewer", "default")]),
        ("the editors'", {"role_key": "editor"}, [_ra("bob", "editor", "acme")]),
        ("globex's", {"tenant_key": "globex"}, [_ra("bob", "accountant", "globex")]),
        ("on document:d1", {"resource_instance_key": "document:d1"},
         [_ra("carol", "owner", "default", "document:d1")]),
        ("on documents", {"resource_key": "document"}, [_ra("carol", "owner", "default", "document:d1")]),
        ("dave's (none)", {"user_key": "dave"}, []),
        ("alice's, one a page, page 2 of 2", {"user_key": "alice", "per_page": 1, "page": 2},
         [_ra("alice", "viewer", "acme")]),
    ]:
        await t.equal(
            f"pdp_api.role_assignments.list: {name}",
            {"method": "pdp_api.role_assignments.list", **filters},
            expected,
            lambda f=filters: listed(**f),
        )


async def wrong_key(t: Tally, url: str, key: str) -> None:
    # The PDP must refuse a key other than its own with 403 (docs/contract.md, Authentication);
    # the SDK turns that into PermitConnectionError carrying the status.
    bad = Permit(token="not-the-pdp-key", pdp=url)
    for name, call in [
        ("check", lambda: bad.check("alice", "read", "document")),
        ("bulk_check", lambda: bad.bulk_check([{"user": "alice", "action": "read", "resource": "document"}])),
        ("authorized_users", lambda: bad.authorized_users("read", "document")),
        ("get_user_permissions", lambda: bad.get_user_permissions("alice")),
    ]:
        await t.raises(
            f"wrong API key: {name} raises PermitConnectionError (403)",
            {"method": name, "token": "not-the-pdp-key"},
            PermitConnectionError,
            "403",
            call,
        )
    # The real key with something appended must not pass a prefix comparison.
    longer = Permit(token=key + "x", pdp=url)
    await t.raises(
        "API key with a suffix: check raises PermitConnectionError (403)",
        {"method": "check", "token": "<key>x"},
        PermitConnectionError,
        "403",
        lambda: longer.check("alice", "read", "document"),
    )


async def facts(t: Tally, permit: Permit) -> None:
    """Writes through the PDP (`/facts/...`), each checked at once."""
    api = permit.api

    async def check(user: str, action: str, resource) -> bool:
        return await permit.check(user, action, resource)

    async def write_then(name: str, write, user: str, action: str, resource, expected: bool) -> None:
        SENT.clear()
        try:
            await write()
        except Exception as err:  # noqa: BLE001
            t.fail(f"{name}: the write", None, "accepted", f"raised {type(err).__name__}: {_first_line(err)}")
            return
        await t.equal(name, {"check": [user, action, resource]}, expected, lambda: check(user, action, resource))

    doc_initech = {"type": "document", "tenant": "initech"}
    await write_then(
        "create user and tenant, assign editor: check allows at once",
        lambda: _all(
            api.users.create({"key": "frank", "email": "frank@example.com", "first_name": "Frank"}),
            api.tenants.create({"key": "initech", "name": "Initech"}),
            api.users.assign_role({"user": "frank", "role": "editor", "tenant": "initech"}),
        ),
        "frank", "write", doc_initech, True,
    )
    await t.equal("editor extends viewer", {"check": ["frank", "read", doc_initech]}, True,
                  lambda: check("frank", "read", doc_initech))
    await write_then(
        "unassign editor: check denies at once",
        lambda: api.users.unassign_role({"user": "frank", "role": "editor", "tenant": "initech"}),
        "frank", "write", doc_initech, False,
    )
    d1 = {"type": "document", "key": "d1", "tenant": "initech"}
    await write_then(
        "instances, manager on the folder, folder parent of the document: owner derived",
        lambda: _all(
            api.resource_instances.create({"key": "f1", "resource": "folder", "tenant": "initech"}),
            api.resource_instances.create({"key": "d1", "resource": "document", "tenant": "initech"}),
            api.role_assignments.assign(
                {"user": "frank", "role": "manager", "tenant": "initech", "resource_instance": "folder:f1"}
            ),
            api.relationship_tuples.create(
                {"subject": "folder:f1", "relation": "parent", "object": "document:d1", "tenant": "initech"}
            ),
        ),
        "frank", "write", d1, True,
    )
    await write_then(
        "bulk assign: both assignments served",
        lambda: api.role_assignments.bulk_assign([
            {"user": "frank", "role": "viewer", "tenant": "default"},
            {"user": "alice", "role": "editor", "tenant": "initech"},
        ]),
        "alice", "write", doc_initech, True,
    )
    await t.equal("bulk assign: the other one", {"check": ["frank", "read", "document"]}, True,
                  lambda: check("frank", "read", {"type": "document", "tenant": "default"}))
    await t.raises(
        "a role the control plane does not know: the SDK raises",
        {"method": "role_assignments.assign", "role": "no-such-role"},
        PermitApiError,
        "404",
        lambda: api.role_assignments.assign({"user": "alice", "role": "no-such-role", "tenant": "default"}),
    )
    await t.equal("and no answer changed", {"check": ["alice", "write", "document"]}, False,
                  lambda: check("alice", "write", {"type": "document", "tenant": "default"}))

    async def listed():
        got = await permit.pdp_api.role_assignments.list(user_key="frank")
        return sorted((a.dict() for a in got), key=lambda a: (a["tenant"], a["role"]))

    await t.equal(
        "pdp_api.role_assignments.list: the assignments just made",
        {"method": "pdp_api.role_assignments.list", "user_key": "frank"},
        [_ra("frank", "viewer", "default"), _ra("frank", "manager", "initech", "folder:f1")],
        listed,
    )


async def _all(*writes) -> None:
    """Awaits the writes in order, as an application would."""
    for w in writes:
        await w


async def facts_main(url: str, key: str, api_url: str) -> int:
    t = Tally()
    permit = Permit(token=key, pdp=url, api_url=api_url, proxy_facts_via_pdp=True, facts_sync_timeout=5)
    try:
        await facts(t, permit)
    except Exception:  # noqa: BLE001
        t.fail("facts crashed", None, "no crash", traceback.format_exc())
    print(f"{LABEL} facts proxy: {t.passed} passed, {t.failed} failed", flush=True)
    return 0 if t.failed == 0 else 1


async def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--facts":
        return await facts_main(sys.argv[2], sys.argv[3], sys.argv[4])
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PDP_URL", "")
    key = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("PDP_API_KEY", "")
    if not url or not key:
        print("usage: python_scenario.py <pdp-url> <api-key> (or PDP_URL, PDP_API_KEY)", file=sys.stderr)
        return 2

    t = Tally()
    permit = Permit(token=key, pdp=url)
    for part in (checks, bulk, filtering, user_permissions, authorized, local_assignments):
        try:
            await part(t, permit)
        except Exception:  # noqa: BLE001 - a bug in the scenario itself must still end in a count
            t.fail(f"{part.__name__} crashed", None, "no crash", traceback.format_exc())
    for part in (tenant_defaults, wrong_key):
        try:
            await part(t, url, key)
        except Exception:  # noqa: BLE001
            t.fail(f"{part.__name__} crashed", None, "no crash", traceback.format_exc())

    print(f"{LABEL}: {t.passed} passed, {t.failed} failed", flush=True)
    return 0 if t.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
