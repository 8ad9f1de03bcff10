import { spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { chownSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'
import type { Algorithm } from '../../src/config.js'
import { ConfigError } from '../../plugins/errors.js'
import { loadKeyMaterial, RETIRING_SINCE, STAGED_SINCE } from '../../plugins/key-material.js'
import {
  defaultMinAge, generate, main, readKeys, retire, rotate, USAGE, writeKeys, type Jwk, type KeysDocument
} from '../../scripts/keys.js'
import { testConfig } from '../support/app.js'
import { ROOT } from '../support/paths.js'

const NOW = new Date('2026-03-01T12:00:00.000Z')
const DAY = 86_400

function later (seconds: number): Date {
  return new Date(NOW.getTime() + seconds * 1000)
}

function document (path: string): KeysDocument {
  return JSON.parse(readFileSync(path, 'utf8')) as KeysDocument
}

function kids (path: string): string[] {
  return document(path).keys.map((key) => String(key['kid']))
}

/** What the service loads from the file: the signing kid, and every kid that verifies. */
function served (path: string, algorithm: Algorithm = 'EdDSA'): { active: string, kids: string[] } {
  const { active, keys } = loadKeyMaterial(testConfig({ JWT_KEYS_FILE: path, JWT_ALGORITHM: algorithm }))
  return { active: active.kid, kids: keys.map((key) => key.kid) }
}

function refusal (fn: () => unknown): Error {
  try {
    fn()
  } catch (error) {
    return error as Error
  }
  throw new Error('expected a refusal')
}

function newFile (t: { testdir: () => string }, algorithm: Algorithm = 'EdDSA'): { path: string, first: string } {
  const path = join(t.testdir(), 'keys.json')
  const [first = ''] = generate(path, { algorithm, now: NOW }).kids
  return { path, first }
}

for (const algorithm of ['EdDSA', 'ES256', 'RS256', 'HS256'] as const) {
  test(`generate writes one ${algorithm} key, mode 0600, that the service loads`, async (t) => {
    const { path, first } = newFile(t, algorithm)
    t.match(first, new RegExp(`^${algorithm}-20260301-[0-9a-f]{8}$`))
    t.equal(statSync(path).mode & 0o777, 0o600)
    t.strictSame(served(path, algorithm), { active: first, kids: [first] })
    t.has(document(path).keys[0], { kid: first, alg: algorithm, use: 'sig' })
    t.strictSame(readdirSync(join(path, '..')), ['keys.json'], 'no temporary file left behind')
  })
}

test('generate refuses to overwrite a keys file', async (t) => {
  const { path, first } = newFile(t)
  t.match(refusal(() => generate(path, { algorithm: 'EdDSA', now: NOW })), { name: 'KeysCommandError', message: /exists/ })
  t.strictSame(kids(path), [first])
})

test('rotate puts a new key first, so it signs, and marks the one it replaces as retiring', async (t) => {
  const { path, first } = newFile(t)
  const [second = ''] = rotate(path, { now: later(60) }).kids
  t.strictSame(kids(path), [second, first])
  t.strictSame(served(path), { active: second, kids: [second, first] })
  t.equal(document(path).keys[1]?.[RETIRING_SINCE], later(60).toISOString())
  t.equal(statSync(path).mode & 0o777, 0o600)
  const [third = ''] = rotate(path, { now: later(120) }).kids
  t.strictSame(kids(path), [third, second, first])
  t.strictSame(document(path).keys.map((key) => key[RETIRING_SINCE]), [undefined, later(120).toISOString(), later(60).toISOString()],
    'each key keeps the time it stopped signing')
})

test('a rewritten file keeps its owner and group, so a container user can still read it', { skip: process.getuid?.() !== 0 && 'needs root to give the file away' }, async (t) => {
  const { path } = newFile(t)
  chownSync(path, 1000, 1000)
  rotate(path, { now: NOW })
  t.match(statSync(path), { uid: 1000, gid: 1000 })
  t.equal(statSync(path).mode & 0o777, 0o600)
})

test('rotate --stage publishes a key that does not sign until rotate --activate', async (t) => {
  const { path, first } = newFile(t)
  const [next = ''] = rotate(path, { now: NOW, stage: true }).kids
  t.strictSame(kids(path), [first, next])
  t.equal(document(path).keys[1]?.[STAGED_SINCE], NOW.toISOString())
  t.strictSame(served(path), { active: first, kids: [first, next] }, 'published (it verifies) but the first key signs')
  t.match(refusal(() => rotate(path, { now: NOW, stage: true })), { message: /is staged already/ }, 'one staged key at a time')
  t.match(refusal(() => rotate(path, { now: NOW })), { message: /is staged already/ }, 'no immediate rotation past a staged key')

  t.match(refusal(() => rotate(path, { now: later(299), activate: true })), { name: 'KeysCommandError', message: /300 s/ },
    'not before verifiers\' JWKS caches have expired')
  rotate(path, { now: later(300), activate: true })
  t.strictSame(kids(path), [next, first])
  t.strictSame(served(path), { active: next, kids: [next, first] })
  t.equal(document(path).keys[0]?.[STAGED_SINCE], undefined, 'no longer staged')
  t.equal(document(path).keys[1]?.[RETIRING_SINCE], later(300).toISOString())
  t.match(refusal(() => rotate(path, { now: later(400), activate: true })), { message: /no staged key/ })
})

test('rotate --activate --force skips the wait', async (t) => {
  const { path } = newFile(t)
  const [next = ''] = rotate(path, { now: NOW, stage: true }).kids
  rotate(path, { now: NOW, activate: true, force: true })
  t.equal(served(path).active, next)
})

test('retire <kid> removes a key that stopped signing long enough ago', async (t) => {
  const { path, first } = newFile(t)
  const [second = ''] = rotate(path, { now: NOW }).kids
  t.match(refusal(() => retire(path, { now: later(DAY), minAge: 7 * DAY, kid: first })), {
    name: 'KeysCommandError', message: /may still have live tokens.*stopped signing at 2026-03-01T12:00:00.000Z; it may go after 2026-03-08T12:00:00.000Z.*--force/
  }, 'not while refresh tokens it signed may still live')
  t.match(refusal(() => retire(path, { now: NOW, minAge: 0, kid: second })), { message: /signs/ }, 'never the signing key')
  t.match(refusal(() => retire(path, { now: NOW, minAge: 0, kid: 'nope' })), { message: /no key nope/ })
  t.strictSame(retire(path, { now: later(7 * DAY), minAge: 7 * DAY, kid: first }).kids, [first])
  t.strictSame(kids(path), [second])
  t.strictSame(served(path), { active: second, kids: [second] })
  t.equal(statSync(path).mode & 0o777, 0o600)
})

test('retire --force removes a key however recently it stopped signing, or with no record of it', async (t) => {
  const { path, first } = newFile(t)
  const second = `hand-${'x'.repeat(8)}`
  const doc = document(path)
  const handMade: Jwk = { ...generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' }), kid: second }
  writeFileSync(path, JSON.stringify({ keys: [...doc.keys, handMade] }))
  t.match(refusal(() => retire(path, { now: NOW, minAge: 0, kid: second })), { message: /no rotor_retiring_since, so when it stopped signing is unknown/ })
  retire(path, { now: NOW, minAge: 7 * DAY, kid: second, force: true })
  t.strictSame(kids(path), [first])
})

test('retire <kid> drops a staged key at once: it never signed', async (t) => {
  const { path, first } = newFile(t)
  const [next = ''] = rotate(path, { now: NOW, stage: true }).kids
  t.strictSame(retire(path, { now: NOW, minAge: 7 * DAY, kid: next }).kids, [next])
  t.strictSame(kids(path), [first])
})

test('retire with no kid removes every key that stopped signing at least --min-age ago, and nothing else', async (t) => {
  const { path, first } = newFile(t)
  const [second = ''] = rotate(path, { now: later(DAY) }).kids
  const [third = ''] = rotate(path, { now: later(8 * DAY) }).kids
  const [staged = ''] = rotate(path, { now: later(8 * DAY), stage: true }).kids
  const before = readFileSync(path, 'utf8')
  const none = retire(path, { now: later(2 * DAY), minAge: 7 * DAY })
  t.strictSame(none.kids, [])
  t.match(none.message, /nothing retired/)
  t.equal(readFileSync(path, 'utf8'), before, 'the file is not rewritten')

  const report = retire(path, { now: later(9 * DAY), minAge: 7 * DAY })
  t.strictSame(report.kids, [first], 'the key rotated out 8 days ago; not the one rotated out a day ago')
  t.strictSame(kids(path), [third, second, staged], 'the signing key and the staged key stay')
  t.match(report.message, `Left: ${third}, ${second}, ${staged}`)
})

test('a keys file the service would refuse is refused, and never written', async (t) => {
  const dir = t.testdir({
    'garbage.json': '{"keys": [',
    'empty.json': '{"keys": []}',
    'nothing.json': '{}',
    'mixed.json': JSON.stringify({
      keys: [
        { ...generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' }), kid: 'ed' },
        { ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), kid: 'ec' }
      ]
    })
  })
  t.match(refusal(() => rotate(join(dir, 'garbage.json'), { now: NOW })), { name: 'KeysCommandError', message: /cannot read a JSON file \(SyntaxError\)/ })
  t.match(refusal(() => rotate(join(dir, 'absent.json'), { now: NOW })), { name: 'KeysCommandError', message: /cannot read a JSON file \(ENOENT\)/ })
  t.match(refusal(() => rotate(join(dir, 'empty.json'), { now: NOW })), { name: 'ConfigError', message: /at least one private key/ })
  t.match(refusal(() => retire(join(dir, 'nothing.json'), { now: NOW, minAge: 0 })), { name: 'ConfigError', message: /expected a JWKS/ })
  t.match(refusal(() => rotate(join(dir, 'mixed.json'), { now: NOW })), { name: 'ConfigError', message: /\(ec\): kty must be OKP/ })
  t.equal(readFileSync(join(dir, 'empty.json'), 'utf8'), '{"keys": []}')
  t.match(refusal(() => writeKeys(join(dir, 'out.json'), { keys: [] }, 'EdDSA')), ConfigError)
})

test('a hand-written file with no alg members rotates with the algorithm of its kty', async (t) => {
  const ec = { ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), kid: 'hand-ec' }
  const path = join(t.testdir({ 'keys.json': JSON.stringify({ keys: [ec] }) }), 'keys.json')
  t.equal(readKeys(path).algorithm, 'ES256')
  const [fresh = ''] = rotate(path, { now: NOW }).kids
  t.match(fresh, /^ES256-/)
  t.strictSame(served(path, 'ES256'), { active: fresh, kids: [fresh, 'hand-ec'] })
})

test('a write that fails leaves the old file and no temporary file', async (t) => {
  const dir = t.testdir({ 'keys.json': { occupied: 'a directory where the file should be' } })
  const doc: KeysDocument = { keys: [{ ...generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' }), kid: 'k' }] }
  t.match(refusal(() => writeKeys(join(dir, 'keys.json'), doc, 'EdDSA')), { name: 'KeysCommandError', message: /cannot write .*keys\.json \(E[A-Z]+\)/ })
  t.strictSame(readdirSync(dir), ['keys.json'])
})

test('the default --min-age is the longest token life the service settings allow', async (t) => {
  t.equal(defaultMinAge({}), 7 * DAY, 'REFRESH_TOKEN_TTL defaults to 7 days')
  t.equal(defaultMinAge({ REFRESH_TOKEN_TTL: '1d', ACCESS_TOKEN_TTL: '2d', LEEWAY: '30s' }), 2 * DAY + 30)
  t.match(refusal(() => defaultMinAge({ REFRESH_TOKEN_TTL: 'a week' })), { name: 'UsageError', message: /REFRESH_TOKEN_TTL=a week/ })
})

test('main: every command line it cannot run is a usage error (exit code 2)', async (t) => {
  const path = join(t.testdir(), 'keys.json')
  t.strictSame(main(['--help'], {}), { code: 0, text: USAGE })
  t.strictSame(main(['rotate', '-h'], {}), { code: 0, text: USAGE })
  for (const [argv, message] of [
    [[], /no such command: ""/],
    [['bogus', path], /no such command: "bogus"/],
    [['generate'], /not a valid generate command line/],
    [['generate', path, 'extra'], /not a valid generate command line/],
    [['generate', path, '--stage'], /not a valid generate command line/],
    [['rotate', path, '--min-age', '1d'], /not a valid rotate command line/],
    [['retire', path, 'kid', 'extra'], /not a valid retire command line/],
    [['rotate', path, '--wat'], /Unknown option '--wat'/],
    [['rotate', path, '--stage', '--activate'], /--stage or --activate, not both/],
    [['generate', path, '--alg', 'HS512'], /--alg \(or JWT_ALGORITHM\): expected one of EdDSA, ES256, RS256, HS256/],
    [['retire', path, '--min-age', 'soon'], /--min-age=soon/]
  ] as const) {
    const { code, text } = main([...argv], {})
    t.equal(code, 2, argv.join(' '))
    t.match(text, message)
    t.match(text, 'usage: npm run keys')
  }
  t.match(main(['generate', path], { JWT_ALGORITHM: 'none' }), { code: 2, text: /JWT_ALGORITHM/ })
  t.match(main(['retire', path], { LEEWAY: 'x' }), { code: 2, text: /LEEWAY=x/ })
})

test('main runs each command, answers what it did, and exit code 1 for a refusal', async (t) => {
  const dir = t.testdir()
  const path = join(dir, 'keys.json')
  const generated = main(['generate', path], { JWT_ALGORITHM: 'ES256' })
  t.match(generated, { code: 0, text: /new ES256 key ES256-\d{8}-/ }, 'the algorithm of the service settings by default')
  t.match(main(['generate', join(dir, 'rs.json'), '--alg', 'RS256'], { JWT_ALGORITHM: 'ES256' }), { code: 0, text: /new RS256 key/ }, '--alg wins')
  t.match(main(['generate', join(dir, 'ed.json')], {}), { code: 0, text: /new EdDSA key/ }, 'EdDSA otherwise')
  t.match(main(['generate', path], {}), { code: 1, text: /^keys: .*exists/ })

  const staged = main(['rotate', path, '--stage'], { JWT_ACTIVE_KID: 'pinned' })
  t.match(staged, { code: 0, text: /is staged/ })
  t.notMatch(staged.text, 'JWT_ACTIVE_KID', 'staging changes no signer: nothing to warn about')
  const activated = main(['rotate', path, '--activate', '--force'], { JWT_ACTIVE_KID: 'pinned' })
  t.match(activated, { code: 0, text: /signs from now on[^]*warning: JWT_ACTIVE_KID=pinned is set/ })
  t.notMatch(main(['rotate', path], { JWT_ACTIVE_KID: '' }).text, 'warning', 'an empty JWT_ACTIVE_KID is unset')
  t.notMatch(main(['rotate', path], {}).text, 'warning')
  t.match(main(['rotate', path, '--activate'], {}), { code: 1, text: /no staged key/ })

  const [, second = ''] = kids(path)
  t.match(main(['retire', path, second], {}), { code: 1, text: /may still have live tokens \(--min-age 604800 s\)/ })
  t.match(main(['retire', path, second, '--min-age', '0'], {}), { code: 0, text: `retired ${second}` })
  const [, third = ''] = kids(path)
  t.match(main(['retire', path, third, '--force'], {}), { code: 0, text: `retired ${third}` })
  t.match(main(['retire', path, '--min-age', '0'], {}), { code: 0, text: /retired ES256-/ })
  t.equal(kids(path).length, 1)
  t.match(main(['rotate', join(dir, 'absent.json')], {}), { code: 1, text: /ENOENT/ })
  writeFileSync(join(dir, 'bad.json'), '{"keys": []}')
  t.match(main(['rotate', join(dir, 'bad.json')], {}), { code: 1, text: /^keys: invalid settings/ })
})

test('one keys command at a time per file: a second one while the lock exists is refused, and the file is untouched', async (t) => {
  const dir = t.testdir({})
  const path = join(dir, 'keys.json')
  t.equal(main(['generate', path], {}).code, 0)
  const before = readFileSync(path, 'utf8')
  writeFileSync(`${path}.lock`, '4242\n')
  t.match(main(['rotate', path], {}), { code: 1, text: /another keys command is changing .*keys\.json \(.*keys\.json\.lock exists, written by pid 4242\); if none is running, remove/ })
  writeFileSync(`${path}.lock`, '')
  t.match(main(['retire', path, '--force'], {}), { code: 1, text: /written by pid \?/ })
  t.equal(readFileSync(path, 'utf8'), before, 'the keys file is as it was')
  rmSync(`${path}.lock`)
  t.equal(main(['rotate', path], {}).code, 0, 'with the lock gone, it runs')
  t.notOk(existsSync(`${path}.lock`), 'and leaves no lock behind')
  t.match(main(['rotate', join(dir, 'no-such-folder', 'keys.json')], {}), { code: 1, text: /cannot create .*no-such-folder.*keys\.json\.lock: ENOENT/ })
})

interface Run { code: number | null, stdout: string, stderr: string }

/** Runs the script as `npm run keys` would (through tap's TypeScript loader rather than a build). */
async function runKeys (cwd: string, args: string[]): Promise<Run> {
  const child = spawn(process.execPath, [...process.execArgv, join(ROOT, 'scripts/keys.ts'), ...args], { cwd, env: process.env })
  const run: Run = { code: null, stdout: '', stderr: '' }
  child.stdout.on('data', (chunk: Buffer) => { run.stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { run.stderr += chunk.toString() })
  run.code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  return run
}

test('the keys command end to end: generate, rotate, retire, with settings from .env', async (t) => {
  // Tokens live a second here, so the first key may be retired a second after the rotation.
  const dir = t.testdir({ '.env': 'JWT_ALGORITHM=ES256\nACCESS_TOKEN_TTL=1\nREFRESH_TOKEN_TTL=1\n', keys: {} })
  const path = join(dir, 'keys', 'keys.json')
  const generated = await runKeys(dir, ['generate', 'keys/keys.json'])
  t.equal(generated.code, 0, generated.stderr)
  const [first = ''] = kids(path)
  t.match(first, /^ES256-/, 'the algorithm came from .env')
  t.strictSame(served(path, 'ES256'), { active: first, kids: [first] })

  const rotated = await runKeys(dir, ['rotate', 'keys/keys.json'])
  t.equal(rotated.code, 0, rotated.stderr)
  const [second = ''] = kids(path)
  t.strictSame(served(path, 'ES256'), { active: second, kids: [second, first] })

  await new Promise((resolve) => setTimeout(resolve, 1100))
  const retired = await runKeys(dir, ['retire', 'keys/keys.json'])
  t.equal(retired.code, 0, retired.stderr)
  t.match(retired.stdout, `retired ${first}`)
  t.strictSame(served(path, 'ES256'), { active: second, kids: [second] })
  t.equal(statSync(path).mode & 0o777, 0o600)
  t.strictSame(readdirSync(join(dir, 'keys')), ['keys.json'])

  const d = String(document(path).keys[0]?.['d'])
  for (const run of [generated, rotated, retired]) t.notOk(run.stdout.includes(d) || run.stderr.includes(d), 'no key material printed')

  const refused = await runKeys(dir, ['rotate', 'keys/absent.json'])
  t.equal(refused.code, 1, 'a refusal exits 1, on stderr')
  t.match(refused.stderr, /^keys: .*ENOENT/)
})
