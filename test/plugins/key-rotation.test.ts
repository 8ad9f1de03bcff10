import { spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { test } from 'tap'
import { ConfigError } from '../../plugins/errors.js'
import { loadKeyMaterial, STAGED_SINCE } from '../../plugins/key-material.js'
import { Keyring } from '../../plugins/keyring.js'
import { generate, retire, rotate, type KeysDocument } from '../../scripts/keys.js'
import { build, decodeJwt, introspectToken, issue, LogCapture, refreshWith, testConfig, type Pair } from '../support/app.js'
import { SERVER } from '../support/paths.js'

type Line = Record<string, unknown>

function kidOf (token: string): unknown {
  return decodeJwt(token).header['kid']
}

async function jwks (app: FastifyInstance): Promise<Array<Record<string, unknown>>> {
  return (await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json<{ keys: Array<Record<string, unknown>> }>().keys
}

async function publishedKids (app: FastifyInstance): Promise<unknown[]> {
  return (await jwks(app)).map((key) => key['kid'])
}

function reloads (logs: LogCapture, trigger: 'signal' | 'file'): Line[] {
  return logs.lines.filter((line) => line['event'] === 'keys.reload' && line['trigger'] === trigger)
}

/** Waits until the app logs a line that `matches` (reloads on a file change take a second or so). */
async function logged (logs: LogCapture, matches: (line: Line) => boolean): Promise<Line> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const line = logs.lines.find(matches)
    if (line !== undefined) return line
    if (Date.now() > deadline) throw new Error('not logged within 10 s')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** A reload caused by a change to the keys file, after which `kid` signs. */
function fileReloadTo (kid: string): (line: Line) => boolean {
  return (line) => line['event'] === 'keys.reload' && line['trigger'] === 'file' && line['active'] === kid
}

/** Every private `d` or `k` ever written to the file: none may reach a log or a JWKS. */
function secretsOf (path: string): string[] {
  return (JSON.parse(readFileSync(path, 'utf8')) as KeysDocument).keys.flatMap((key) => [key['d'], key['k']]).filter((value) => typeof value === 'string')
}

function newKeysFile (dir: string, algorithm: 'EdDSA' | 'ES256' | 'HS256' = 'EdDSA'): { path: string, first: string } {
  const path = join(dir, 'keys.json')
  const [first = ''] = generate(path, { algorithm, now: new Date() }).kids
  return { path, first }
}

test('a rotation with live tokens: old tokens verify until their key is retired, new ones are signed by the new key', async (t) => {
  const { path, first } = newKeysFile(t.testdir())
  const secrets = secretsOf(path)
  // Two instances sharing the file: one is told to reload (SIGHUP), the other sees the file change.
  const signalledLogs = new LogCapture()
  const watchingLogs = new LogCapture()
  const signalled = await build(t, { JWT_KEYS_FILE: path }, signalledLogs)
  const watching = await build(t, { JWT_KEYS_FILE: path }, watchingLogs)
  const refreshedAfterRotation = await issue(signalled, { sub: 'alice' })
  const neverRefreshed = await issue(watching, { sub: 'bob' })
  t.equal(kidOf(refreshedAfterRotation.access_token), first)
  t.strictSame(await publishedKids(signalled), [first])

  const [second = ''] = rotate(path, { now: new Date() }).kids
  secrets.push(...secretsOf(path))
  t.equal(signalled.keyring.reload('signal'), true)
  t.match(reloads(signalledLogs, 'signal'), [{ level: 30, active: second, kids: [second, first], msg: 'keys reloaded' }])
  t.match(await logged(watchingLogs, fileReloadTo(second)), { level: 30, kids: [second, first], msg: 'keys reloaded' })
  for (const app of [signalled, watching]) {
    t.strictSame(await publishedKids(app), [second, first], 'both keys published')
    t.equal(kidOf((await issue(app)).access_token), second, 'new pairs are signed by the new key')
    t.match(await introspectToken(app, neverRefreshed.access_token), { active: true, sub: 'bob' }, 'an access token of the old key still verifies')
  }
  const response = await refreshWith(watching, refreshedAfterRotation.refresh_token)
  t.equal(response.statusCode, 200, 'a refresh token of the old key still refreshes')
  const rotated = response.json<Pair>()
  t.equal(kidOf(rotated.access_token), second, 'into a pair signed by the new key')
  t.equal(kidOf(rotated.refresh_token), watching.keyring.active.refreshKid)
  t.not(kidOf(rotated.refresh_token), kidOf(refreshedAfterRotation.refresh_token), 'the refresh key rotated with the signing key')

  retire(path, { now: new Date(), minAge: 0, kid: first })
  t.equal(signalled.keyring.reload('signal'), true)
  await logged(watchingLogs, (line) => fileReloadTo(second)(line) && Array.isArray(line['kids']) && line['kids'].length === 1)
  for (const app of [signalled, watching]) {
    t.strictSame(app.keyring.keys.map((key) => key.kid), [second], 'the retired key no longer verifies')
    t.strictSame(await publishedKids(app), [second], 'nor is it published')
    t.strictSame(await introspectToken(app, neverRefreshed.access_token), { active: false }, 'an access token of the retired key is inactive')
    t.match(await introspectToken(app, rotated.access_token), { active: true, sub: 'alice' }, 'the pair rotated onto the new key lives on')
  }
  const refused = await refreshWith(signalled, neverRefreshed.refresh_token)
  t.equal(refused.statusCode, 401)
  t.equal(refused.json().code, 'token_invalid', 'a refresh token of the retired key is refused')
  t.equal((await refreshWith(signalled, rotated.refresh_token)).statusCode, 200)

  for (const logs of [signalledLogs, watchingLogs]) {
    t.notOk(secrets.some((secret) => logs.text.includes(secret)), 'no key material in the log')
  }
})

test('a staged key is published at once and signs only once activated', async (t) => {
  const { path, first } = newKeysFile(t.testdir())
  const app = await build(t, { JWT_KEYS_FILE: path })
  const [next = ''] = rotate(path, { now: new Date(), stage: true }).kids
  t.ok(app.keyring.reload('signal'))
  t.strictSame(await publishedKids(app), [first, next], 'published before it signs')
  t.equal(kidOf((await issue(app)).access_token), first, 'the active key still signs')
  t.ok((await jwks(app)).every((key) => Object.keys(key).every((member) => !member.startsWith('rotor_') && member !== 'd')),
    'the private file\'s own members and private parts are never published')

  rotate(path, { now: new Date(), activate: true, force: true })
  t.ok(app.keyring.reload('signal'))
  t.strictSame(await publishedKids(app), [next, first])
  t.equal(kidOf((await issue(app)).access_token), next)
})

test('a keys file that cannot be loaded on reload keeps the current keys and logs an error', async (t) => {
  const dir = t.testdir()
  const { path, first } = newKeysFile(dir)
  const good = readFileSync(path, 'utf8')
  const logs = new LogCapture()
  const app = await build(t, { JWT_KEYS_FILE: path }, logs)
  const pair = await issue(app)
  const etag = (await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).headers['etag']
  const es256 = { ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), kid: 'ec' }
  const allStaged = (JSON.parse(good) as KeysDocument).keys.map((key) => ({ ...key, [STAGED_SINCE]: new Date().toISOString() }))
  const cases: Array<[string, string | null, RegExp]> = [
    ['half-written JSON', good.slice(0, 40), /cannot read a JSON file/],
    ['no keys at all', '{"keys": []}', /at least one private key/],
    ['a key of another algorithm', JSON.stringify({ keys: [es256] }), /kty must be OKP/],
    ['every key staged', JSON.stringify({ keys: allStaged }), /every key is staged/],
    ['the file removed', null, /cannot read a JSON file/]
  ]
  for (const [name, content, reason] of cases) {
    if (content === null) rmSync(path)
    else writeFileSync(path, content)
    t.equal(app.keyring.reload('signal'), false, name)
    t.match(logs.lines.at(-1), { level: 50, event: 'keys.reload', trigger: 'signal', reason, msg: 'keys not reloaded: keeping the current keys' }, name)
    t.strictSame(await publishedKids(app), [first], `${name}: the JWKS is unchanged`)
    t.equal(kidOf((await issue(app)).access_token), first, `${name}: still signing`)
    t.match(await introspectToken(app, pair.access_token), { active: true }, `${name}: still verifying`)
  }
  t.equal((await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).headers['etag'], etag)

  // The watcher: a bad write is refused the same way, and the next good one is taken.
  writeFileSync(path, '{"keys": [')
  t.match(await logged(logs, (line) => line['trigger'] === 'file' && line['level'] === 50), { reason: /cannot read a JSON file/ })
  t.equal(kidOf((await issue(app)).access_token), first)
  writeFileSync(path, good)
  const [second = ''] = rotate(path, { now: new Date() }).kids
  t.match(await logged(logs, fileReloadTo(second)), { level: 30 }, 'the next good file is loaded')
  t.equal(kidOf((await issue(app)).access_token), second)
  t.notOk(secretsOf(path).some((secret) => logs.text.includes(secret)), 'no key material in the log')
})

test('a reload that would drop the key JWT_ACTIVE_KID names keeps the current keys', async (t) => {
  const { path, first } = newKeysFile(t.testdir())
  const logs = new LogCapture()
  const app = await build(t, { JWT_KEYS_FILE: path, JWT_ACTIVE_KID: first }, logs)
  const [second = ''] = rotate(path, { now: new Date() }).kids
  t.ok(app.keyring.reload('signal'))
  t.equal(kidOf((await issue(app)).access_token), first, 'JWT_ACTIVE_KID pins the signer whatever the file\'s order')
  t.strictSame(await publishedKids(app), [second, first])
  retire(path, { now: new Date(), minAge: 0, kid: first, force: true })
  t.notOk(app.keyring.reload('signal'))
  t.match(logs.lines.at(-1), { level: 50, reason: new RegExp(`JWT_ACTIVE_KID=${first}`) })
  t.equal(kidOf((await issue(app)).access_token), first)
})

test('with no keys file there is nothing to reload, and the keys stay', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, {}, logs)
  const { kid } = app.keyring.active
  t.equal(app.keyring.reload('signal'), false)
  t.match(logs.lines.at(-1), { level: 40, event: 'keys.reload', msg: /no JWT_KEYS_FILE/ })
  t.equal(app.keyring.active.kid, kid, 'an ephemeral key is not replaced by another')
})

test('a keyring built without a logger reloads silently', async (t) => {
  const { path, first } = newKeysFile(t.testdir())
  const config = testConfig({ JWT_KEYS_FILE: path })
  const keyring = new Keyring({ ...loadKeyMaterial(config), issuer: 'rotor', audience: [], leeway: 0, load: () => loadKeyMaterial(config) })
  writeFileSync(path, 'not json')
  t.equal(keyring.reload('file'), false)
  t.equal(keyring.active.kid, first)
  t.equal(new Keyring({ ...loadKeyMaterial(testConfig()), issuer: 'rotor', audience: [], leeway: 0 }).reload('signal'), false)
})

test('the first key that is not staged signs, unless JWT_ACTIVE_KID names another, staged or not', async (t) => {
  const dir = t.testdir()
  const { path, first } = newKeysFile(dir)
  const [next = ''] = rotate(path, { now: new Date(), stage: true }).kids
  const doc = JSON.parse(readFileSync(path, 'utf8')) as KeysDocument
  writeFileSync(path, JSON.stringify({ keys: [...doc.keys].reverse() }))
  t.equal(loadKeyMaterial(testConfig({ JWT_KEYS_FILE: path })).active.kid, first, 'a staged key first in the file does not sign')
  t.equal(loadKeyMaterial(testConfig({ JWT_KEYS_FILE: path, JWT_ACTIVE_KID: next })).active.kid, next)
  t.strictSame(loadKeyMaterial(testConfig({ JWT_KEYS_FILE: path })).keys.map((key) => [key.kid, key.isStaged]), [[next, true], [first, false]])
  writeFileSync(path, JSON.stringify({ keys: [doc.keys[1]] }))
  t.throws(() => loadKeyMaterial(testConfig({ JWT_KEYS_FILE: path })), ConfigError, 'a file of staged keys only has no signer')
})

test('the JWKS carries Cache-Control and an ETag, and answers If-None-Match with 304', async (t) => {
  const { path } = newKeysFile(t.testdir())
  const app = await build(t, { JWT_KEYS_FILE: path })
  const twin = await build(t, { JWT_KEYS_FILE: path })
  const first = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  const etag = String(first.headers['etag'])
  t.equal(first.statusCode, 200)
  t.equal(first.headers['cache-control'], 'public, max-age=300')
  t.match(etag, /^"[\w-]{43}"$/, 'a strong ETag: a SHA-256 of the JWKS')
  t.equal((await twin.inject({ method: 'GET', url: '/.well-known/jwks.json' })).headers['etag'], etag, 'instances sharing a keys file agree on it')

  for (const ifNoneMatch of [etag, `W/${etag}`, `"other", ${etag}`, '*']) {
    const response = await app.inject({ method: 'GET', url: '/.well-known/jwks.json', headers: { 'if-none-match': ifNoneMatch } })
    t.equal(response.statusCode, 304, ifNoneMatch)
    t.equal(response.body, '', 'no body')
    t.equal(response.headers['etag'], etag)
    t.equal(response.headers['cache-control'], 'public, max-age=300')
  }
  const other = await app.inject({ method: 'GET', url: '/.well-known/jwks.json', headers: { 'if-none-match': '"other"' } })
  t.equal(other.statusCode, 200)
  t.equal(other.body, first.body)

  rotate(path, { now: new Date() })
  app.keyring.reload('signal')
  const changed = await app.inject({ method: 'GET', url: '/.well-known/jwks.json', headers: { 'if-none-match': etag } })
  t.equal(changed.statusCode, 200, 'a new key set is a new ETag')
  t.not(changed.headers['etag'], etag)
  t.equal(changed.json<{ keys: unknown[] }>().keys.length, 2)
})

test('HS256 keys files rotate too, and publish nothing', async (t) => {
  const { path, first } = newKeysFile(t.testdir(), 'HS256')
  const app = await build(t, { JWT_ALGORITHM: 'HS256', JWT_KEYS_FILE: path })
  const pair = await issue(app)
  const [second = ''] = rotate(path, { now: new Date() }).kids
  t.ok(app.keyring.reload('signal'))
  t.equal(kidOf((await issue(app)).access_token), second)
  t.match(await introspectToken(app, pair.access_token), { active: true })
  t.strictSame(await publishedKids(app), [])
  retire(path, { now: new Date(), minAge: 0, kid: first })
  t.ok(app.keyring.reload('signal'))
  t.strictSame(await introspectToken(app, pair.access_token), { active: false })
})

test('SIGHUP makes a running server read its keys file again, and does not stop it', async (t) => {
  const dir = t.testdir()
  const { path, first } = newKeysFile(dir)
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined && !/^(JWT_|REDIS_|API_KEYS|NODE_ENV|PORT|HOST)/.test(name)) env[name] = value
  const child = spawn(process.execPath, [...process.execArgv, SERVER], {
    cwd: dir, env: { ...env, JWT_KEYS_FILE: path, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info' }
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  let stdout = ''
  let stage: 'starting' | 'reloading' | 'stopping' = 'starting'
  child.stderr.resume()
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
    if (stage === 'starting' && stdout.includes('Server listening')) {
      stage = 'reloading'
      child.kill('SIGHUP')
    } else if (stage === 'reloading' && stdout.includes('"trigger":"signal"')) {
      stage = 'stopping'
      child.kill('SIGTERM')
    }
  })
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (...args) => resolve(args)))
  clearTimeout(timer)
  const lines = stdout.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Line)
  t.equal(stage, 'stopping', 'the reload was logged')
  t.match(lines.find((line) => line['event'] === 'keys.reload'), { trigger: 'signal', active: first, kids: [first], msg: 'keys reloaded' })
  t.notOk(lines.some((line) => line['msg'] === 'shutting down' && line['signal'] === 'SIGHUP'), 'SIGHUP does not shut down')
  t.match(lines.find((line) => line['msg'] === 'shutting down'), { signal: 'SIGTERM' })
  t.equal(signal, null)
  t.equal(code, 0)
})
