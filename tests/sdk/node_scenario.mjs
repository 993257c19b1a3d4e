// Real-client scenario: the official Node SDK (`permitio` 2.x) against a running pdp.
//
// Owns the Node half of the SDK compatibility test. It drives the PDP only
// through the SDK's public methods, so what is asserted is what an application
// using `permitio` would see. Every expected value is derived by hand from
// tests/fixtures/sdk.json (grant table in tests/sdk/README.md), never by asking
// the PDP. The Node enforcer has no authorizedUsers/filterObjects, and its
// checkAllTenants cannot work against any PDP (docs/contract.md, SDKs), so neither is here.
//
// Usage: node node_scenario.mjs <pdp-url> <api-key>   (or PDP_URL / PDP_API_KEY)
//        node node_scenario.mjs --facts <pdp-url> <api-key> <control-plane-url>
// The second form is the facts proxy scenario: the SDK with proxyFactsViaPdp
// against a PDP syncing tests/fixtures/sdk-facts.json from the fake control
// plane once an hour, so only the proxy explains what it answers after a write.
// Prints one line per assertion and ends with `sdk-node: N passed, M failed`;
// exits 1 if anything failed.

import { isDeepStrictEqual } from "node:util";
import { Permit, PermitApiError, PermitConnectionError } from "permitio";

const LABEL = "sdk-node";

const factsMode = process.argv[2] === "--facts";
const args = process.argv.slice(factsMode ? 3 : 2);
const url = args[0] ?? process.env.PDP_URL;
const key = args[1] ?? process.env.PDP_API_KEY;
const apiUrl = args[2];
if (!url || !key) {
  console.error("usage: node node_scenario.mjs <pdp-url> <api-key> (or PDP_URL, PDP_API_KEY)");
  process.exit(2);
}

// The SDK logs every rejected call at error level; the scenario prints its own
// diagnostics, so keep the SDK quiet unless asked.
const log = { level: process.env.PERMIT_LOG_LEVEL ?? "silent" };

// What the SDK put on the wire for the current assertion, so a failure shows
// the HTTP request and not only the SDK call. `enforcer.client` is the SDK's
// internal axios instance (2.7.6); without it the diagnostics are just shorter.
const sent = [];
function recording(permit) {
  permit.enforcer?.client?.interceptors?.request.use((config) => {
    sent.push(`${config.method?.toUpperCase()} /${config.url} ${JSON.stringify(config.data)}`);
    return config;
  });
  return permit;
}
const client = (options = {}) => recording(new Permit({ token: key, pdp: url, log, ...options }));

let passed = 0;
let failed = 0;

const show = (v) => (typeof v === "string" ? v : JSON.stringify(v));
const firstLine = (err) => String(err?.message ?? err).trim().split("\n")[0];

function ok(name) {
  passed += 1;
  console.log(`ok   ${name}`);
}

function fail(name, request, expected, got) {
  failed += 1;
  console.log(`FAIL ${name}`);
  console.log(`     request:  ${show(request)}`);
  console.log(`     expected: ${show(expected)}`);
  console.log(`     got:      ${show(got)}`);
  if (Array.isArray(expected) && Array.isArray(got) && expected.length === got.length) {
    const at = expected.flatMap((e, i) => (isDeepStrictEqual(e, got[i]) ? [] : [i]));
    console.log(`     differs at index ${JSON.stringify(at)}`);
  }
  for (const line of sent) console.log(`     sent:     ${line}`);
}

// Await call() and compare its result with `expected` exactly. An SDK error is
// a failure of this assertion only, so the rest of the run still reports.
async function equal(name, request, expected, call) {
  let got;
  sent.length = 0;
  try {
    got = await call();
  } catch (err) {
    fail(name, request, expected, `threw ${err?.name}: ${firstLine(err)}`);
    return;
  }
  if (isDeepStrictEqual(got, expected)) ok(name);
  else fail(name, request, expected, got);
}

async function rejects(name, request, errClass, mustMention, call) {
  let got;
  sent.length = 0;
  try {
    got = await call();
  } catch (err) {
    if (!(err instanceof errClass)) {
      fail(name, request, errClass.name, `threw ${err?.name}: ${firstLine(err)}`);
    } else if (!String(err.message).includes(mustMention)) {
      fail(name, request, `${errClass.name} mentioning ${mustMention}`, firstLine(err));
    } else {
      ok(name);
    }
    return;
  }
  fail(name, request, `${errClass.name} thrown`, `returned ${show(got)}`);
}

// Tenant attributes from the fixture, as /user-permissions reports them.
const TENANT = {
  default: { key: "default", attributes: { region: "eu" } },
  acme: { key: "acme", attributes: { plan: "pro", region: "us" } },
  globex: { key: "globex", attributes: { plan: "free" } },
};
// admin extends editor extends viewer: the flattened grants, sorted.
const ADMIN_PERMS = ["document:delete", "document:read", "document:write", "invoice:approve", "invoice:read"];
const VIEWER_PERMS = ["document:read", "invoice:read"];
const EDITOR_PERMS = ["document:read", "document:write", "invoice:read"];
const ACCOUNTANT_PERMS = ["invoice:approve", "invoice:pay", "invoice:read"];
// document#owner extends document#reader.
const OWNER_PERMS = ["document:delete", "document:read", "document:share", "document:write"];

async function checks(permit) {
  const cases = [
    // [user, action, resource, expected, why]
    ["alice", "read", "document", true, "string resource, SDK default tenant"],
    ["alice", "delete", "document", true, "admin's own permission"],
    ["alice", "write", "document", true, "admin inherits editor (extends)"],
    ["alice", "pay", "invoice", false, "admin lacks invoice:pay"],
    ["alice", "write", "document:d1", true, "type:key string, RBAC in default"],
    ["alice", "share", "document:d1", false, "share only via the instance role owner"],
    ["alice", "read", { type: "document", tenant: "acme" }, true, "object resource, explicit tenant"],
    ["alice", "write", { type: "document", tenant: "acme" }, false, "viewer in acme, admin only in default"],
    [
      { key: "alice", firstName: "Alice", email: "alice@example.com", attributes: { dept: "eng" } },
      "approve",
      { type: "invoice", key: "i1", tenant: "default" },
      true,
      "object user with camelCase extra fields",
    ],
    ["bob", "read", "document", false, "bob has no role in default"],
    ["bob", "write", { type: "document", tenant: "acme" }, true, "editor in acme"],
    ["bob", "read", { type: "document", key: "d2", tenant: "acme" }, true, "editor inherits viewer"],
    ["bob", "pay", { type: "invoice", tenant: "globex" }, true, "accountant in globex"],
    ["bob", "pay", { type: "invoice", tenant: "acme" }, false, "accountant role does not leak into acme"],
    ["bob", "write", { type: "document", tenant: "globex" }, false, "editor role does not leak into globex"],
    ["carol", "write", "document:d1", true, "ReBAC: owner on document:d1"],
    ["carol", "write", "document:d2", false, "owner only on d1"],
    ["carol", "write", "document", false, "no key: instance roles do not apply"],
    ["dave", "read", "document", false, "known user without roles"],
    ["mallory", "read", "document", false, "unknown user"],
    ["alice", "read", "spaceship", false, "unknown resource type"],
  ];
  for (const [user, action, resource, expected, why] of cases) {
    await equal(
      `check(${show(user)}, ${action}, ${show(resource)}) is ${expected}: ${why}`,
      { user, action, resource },
      expected,
      () => permit.check(user, action, resource),
    );
  }
}

async function tenantDefaults() {
  // With useDefaultTenantIfEmpty off the SDK sends no tenant, and a query
  // without a tenant is denied (docs/contract.md, Queries; docs/semantics.md §2).
  const strict = client({ multiTenancy: { useDefaultTenantIfEmpty: false } });
  const cases = [
    ["alice", "read", "document", false, "no tenant sent: denied"],
    ["carol", "write", "document:d1", false, "no tenant sent: ReBAC denied too"],
    ["alice", "read", { type: "document", tenant: "default" }, true, "explicit tenant still works"],
  ];
  for (const [user, action, resource, expected, why] of cases) {
    await equal(
      `useDefaultTenantIfEmpty=false: check(${user}, ${action}, ${show(resource)}) is ${expected}: ${why}`,
      { user, action, resource, sdk: "useDefaultTenantIfEmpty=false" },
      expected,
      () => strict.check(user, action, resource),
    );
  }
  const acme = client({ multiTenancy: { defaultTenant: "acme" } });
  for (const [action, expected] of [["read", true], ["write", false]]) {
    await equal(
      `defaultTenant='acme': check(alice, ${action}, document) is ${expected}`,
      { user: "alice", action, resource: "document", sdk: "defaultTenant=acme" },
      expected,
      () => acme.check("alice", action, "document"),
    );
  }
}

async function bulk(permit) {
  const batch = [
    { user: "alice", action: "read", resource: "document" },
    { user: "bob", action: "read", resource: "document" },
    { user: { key: "bob" }, action: "write", resource: { type: "document", key: "d2", tenant: "acme" } },
    { user: "carol", action: "write", resource: "document:d1" },
    { user: "carol", action: "write", resource: "document:d2" },
    { user: "mallory", action: "read", resource: "document" },
    { user: "bob", action: "pay", resource: { type: "invoice", tenant: "globex" } },
    { user: "bob", action: "pay", resource: { type: "invoice", tenant: "acme" } },
  ];
  await equal("bulkCheck answers in request order", batch,
    [true, false, true, true, false, false, true, false], () => permit.bulkCheck(batch));
  await equal("bulkCheck of nothing is []", [], [], () => permit.bulkCheck([]));
}

async function userPermissions(permit) {
  const aliceDefault = { tenant: TENANT.default, permissions: ADMIN_PERMS, roles: ["admin"] };
  const aliceAcme = { tenant: TENANT.acme, permissions: VIEWER_PERMS, roles: ["viewer"] };
  const bobGlobex = { tenant: TENANT.globex, permissions: ACCOUNTANT_PERMS, roles: ["accountant"] };
  // [user, tenants filter (undefined = not sent), expected]
  const cases = [
    ["alice", undefined, { "__tenant:default": aliceDefault, "__tenant:acme": aliceAcme }],
    ["alice", ["acme"], { "__tenant:acme": aliceAcme }],
    ["alice", ["globex"], {}],
    ["bob", undefined, {
      "__tenant:acme": { tenant: TENANT.acme, permissions: EDITOR_PERMS, roles: ["editor"] },
      "__tenant:globex": bobGlobex,
    }],
    ["bob", ["globex"], { "__tenant:globex": bobGlobex }],
    ["carol", undefined, {
      "__tenant:default": { tenant: TENANT.default, permissions: VIEWER_PERMS, roles: ["viewer"] },
      "document:d1": {
        resource: { key: "d1", type: "document", attributes: { confidential: true } },
        permissions: OWNER_PERMS,
        roles: ["owner"],
      },
    }],
    ["dave", undefined, {}],
    ["mallory", undefined, {}],
  ];
  for (const [user, tenants, expected] of cases) {
    await equal(
      `getUserPermissions(${user}, tenants=${show(tenants ?? "unset")})`,
      { user, tenants },
      expected,
      () => permit.getUserPermissions(user, tenants),
    );
  }
}

async function wrongKey() {
  // The PDP must refuse a key other than its own with 403 (docs/contract.md, Authentication);
  // the SDK turns any non-2xx into PermitConnectionError carrying the status.
  const bad = recording(new Permit({ token: "not-the-pdp-key", pdp: url, log }));
  const calls = [
    ["check", () => bad.check("alice", "read", "document")],
    ["bulkCheck", () => bad.bulkCheck([{ user: "alice", action: "read", resource: "document" }])],
    ["getUserPermissions", () => bad.getUserPermissions("alice")],
  ];
  for (const [name, call] of calls) {
    await rejects(`wrong API key: ${name} throws PermitConnectionError (403)`,
      { method: name, token: "not-the-pdp-key" }, PermitConnectionError, "403", call);
  }
  const longer = recording(new Permit({ token: `${key}x`, pdp: url, log }));
  await rejects("API key with a suffix: check throws PermitConnectionError (403)",
    { method: "check", token: "<key>x" }, PermitConnectionError, "403",
    () => longer.check("alice", "read", "document"));
  // An application that opted out of throwing gets a deny, not an allow.
  const lenient = recording(new Permit({ token: "not-the-pdp-key", pdp: url, log, throwOnError: false }));
  await equal("wrong API key with throwOnError=false: check is false",
    { method: "check", token: "not-the-pdp-key", throwOnError: false }, false,
    () => lenient.check("alice", "read", "document"));
}

// Writes through the PDP (the /v2/facts/{proj}/{env}/... form the Node SDK
// uses), each checked at once.
async function facts() {
  const permit = client({ apiUrl, proxyFactsViaPdp: true, factsSyncTimeout: 5 });
  const api = permit.api;
  const check = (user, action, resource) => permit.check(user, action, resource);
  async function writeThen(name, writes, [user, action, resource], expected) {
    sent.length = 0;
    try {
      for (const w of writes) await w();
    } catch (err) {
      fail(`${name}: the write`, null, "accepted", `threw ${err?.name}: ${firstLine(err)} ${show(err?.formattedAxiosError?.error ?? "")}`);
      return;
    }
    await equal(name, { check: [user, action, resource] }, expected, () => check(user, action, resource));
  }
  const docInitrode = { type: "document", tenant: "initrode" };
  await writeThen("create user and tenant, assign editor: check allows at once", [
    () => api.users.create({ key: "grace", email: "grace@example.com" }),
    () => api.tenants.create({ key: "initrode", name: "Initrode" }),
    () => api.users.assignRole({ user: "grace", role: "editor", tenant: "initrode" }),
  ], ["grace", "write", docInitrode], true);
  await writeThen("unassign editor: check denies at once", [
    () => api.users.unassignRole({ user: "grace", role: "editor", tenant: "initrode" }),
  ], ["grace", "write", docInitrode], false);
  const d2 = { type: "document", key: "d2", tenant: "initrode" };
  await writeThen("instances, manager on the folder, folder parent of the document: owner derived", [
    () => api.resourceInstances.create({ key: "f2", resource: "folder", tenant: "initrode" }),
    () => api.resourceInstances.create({ key: "d2", resource: "document", tenant: "initrode" }),
    () => api.roleAssignments.assign({ user: "grace", role: "manager", tenant: "initrode", resource_instance: "folder:f2" }),
    () => api.relationshipTuples.create({ subject: "folder:f2", relation: "parent", object: "document:d2", tenant: "initrode" }),
  ], ["grace", "write", d2], true);
  await writeThen("bulk assign: both assignments served", [
    () => api.roleAssignments.bulkAssign([
      { user: "grace", role: "viewer", tenant: "default" },
      { user: "alice", role: "editor", tenant: "initrode" },
    ]),
  ], ["alice", "write", docInitrode], true);
  await equal("bulk assign: the other one", { check: ["grace", "read", "document"] }, true,
    () => check("grace", "read", { type: "document", tenant: "default" }));
  await rejects("a role the control plane does not know: the SDK throws",
    { method: "roleAssignments.assign", role: "no-such-role" }, PermitApiError, "",
    () => api.roleAssignments.assign({ user: "alice", role: "no-such-role", tenant: "default" }));
  await equal("and no answer changed", { check: ["alice", "write", "document"] }, false,
    () => check("alice", "write", { type: "document", tenant: "default" }));
  await writeThen("waitForSync(null) is accepted: assign served", [
    () => api.roleAssignments.waitForSync(null).assign({ user: "grace", role: "editor", tenant: "default" }),
  ], ["grace", "write", { type: "document", tenant: "default" }], true);
}

const permit = client();
const parts = factsMode
  ? [facts]
  : [() => checks(permit), () => bulk(permit), () => userPermissions(permit), tenantDefaults, wrongKey];
for (const part of parts) {
  try {
    await part();
  } catch (err) {
    fail("scenario crashed", null, "no crash", err?.stack ?? String(err));
  }
}

console.log(`${LABEL}${factsMode ? " facts proxy" : ""}: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
