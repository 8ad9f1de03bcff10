import { test } from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { gzipSync } from 'node:zlib'
import { ROOT } from '../support/paths.js'

// What a user installing the published @rotor/client gets: the tarball `npm pack` makes, installed
// into an empty project outside the repository (so that nothing resolves through the workspace's
// node_modules), type-checked in a browser app and in a Node server, and run in Node.

const TSC = join(ROOT, 'node_modules/typescript/bin/tsc')
/** The summed gzipped size of the package's JavaScript must stay under this. */
const BUDGET_BYTES = 8 * 1024
// The children are a user's npm, tsc and node: without tap's loader and coverage (NODE_OPTIONS,
// NODE_V8_COVERAGE, _TAPJS_*), without the settings of an `npm test` around this run (npm_*), and
// without a NODE_PATH that could resolve the package some other way.
const CHILD_ENV = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^(NODE_OPTIONS|NODE_V8_COVERAGE|NODE_PATH|_TAPJS_|npm_)/i.test(name)))

interface Run { status: number | null, stdout: string, stderr: string }

/** Runs a command to its end; never rejects (the status says how it went, null when it did not run or timed out). */
async function run (command: string, args: string[], cwd: string): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(command, args, { cwd, env: CHILD_ENV, encoding: 'utf8', timeout: 60_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const status = error === null ? 0 : typeof error.code === 'number' ? error.code : null
      resolve({ status, stdout, stderr: error === null || status !== null ? stderr : `${error.message}\n${stderr}` })
    })
  })
}

/** What `npm pack --json` says about the tarball it wrote. */
interface Packed { name: string, version: string, filename: string, size: number, files: Array<{ path: string }> }

/** compilerOptions both consumers share: strict, NodeNext, and the package's declarations checked too. */
const STRICT = { strict: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', skipLibCheck: false, noEmit: true }

/** What any app does with the client; `extra` adds what only a browser, or only a server, has. */
function consumer (extra: string): string {
  return `import {
  createRotorClient, expiryOf, indexedDbStorage, memoryStorage, RotorRefusedError, RotorUnavailableError,
  type RotorClient, type RotorClientOptions, type RotorStorage, type SignOutReason, type StoredSession, type TokenPairInput
} from '@rotor/client'

/** True only when A and B are the same type (\`any\` is the same as nothing else). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false

const signedOut: SignOutReason[] = []
const storage: RotorStorage = 'indexedDB' in globalThis ? indexedDbStorage({ database: 'app' }) : memoryStorage()
const client: RotorClient = createRotorClient({
  baseUrl: 'https://auth.example.com',
  routes: 'simplejwt',
  storage,
  onSignedOut: (reason: SignOutReason) => { signedOut.push(reason) }
})

// A storage of the app's own: read and write are all it must have.
const records = new Map<string, StoredSession>()
const ownStorage: RotorStorage = {
  async read (key) { return records.get(key) },
  async write (key, value, expected) {
    if (records.get(key)?.generation !== expected) return false
    records.set(key, value)
    return true
  }
}
const options: RotorClientOptions = { baseUrl: 'https://auth.example.com', storage: ownStorage, routes: 'v1', timeoutMs: 5000 }
const other: RotorClient = createRotorClient(options)

const v1: TokenPairInput = { access_token: 'a.b.c', refresh_token: 'r', expires_in: 300, refresh_expires_in: 86400 }
await client.setTokens(v1)
await client.setTokens({ access: 'a.b.c', refresh: 'r' })
await other.setTokens({ access_token: 'a.b.c', refresh_token: 'r' })

const token: string | null = await client.getAccessToken()
const response: Response = await client.fetch('/api', { method: 'POST' })
const expiresAt: number | undefined = expiryOf(token ?? '')
try {
  await client.getAccessToken()
} catch (error) {
  if (error instanceof RotorUnavailableError) console.log(error.code satisfies string, error.message)
  else if (error instanceof RotorRefusedError) console.log(error.status satisfies number, error.code satisfies string)
}
const revoked: boolean = await client.signOut()
client.close()

// Not \`any\` anywhere: exactly these types.
const exact: [
  Equal<typeof token, string | null>,
  Equal<ReturnType<RotorClient['fetch']>, Promise<Response>>,
  Equal<ReturnType<RotorClient['signOut']>, Promise<boolean>>,
  Equal<ReturnType<typeof expiryOf>, number | undefined>,
  Equal<Parameters<RotorClient['setTokens']>[0], TokenPairInput>,
  Equal<NonNullable<RotorClientOptions['routes']>, 'v1' | 'simplejwt'>
] = [true, true, true, true, true, true]
console.log(exact, response.status, expiresAt, revoked, signedOut)

${extra}
`
}

const BROWSER = consumer(`// The DOM is there: the app shows the session's state.
document.title = token === null ? 'signed out' : 'signed in'
window.addEventListener('online', () => { void client.getAccessToken() })
`)

const SERVER = consumer(`// Node's own API next to it: a server that calls a backend with the session's token.
import { createServer } from 'node:http'
createServer((_request, reply) => {
  void client.fetch(process.env['BACKEND'] ?? 'http://127.0.0.1:8000/api').then((answer) => { reply.end(String(answer.status)) })
})
`)

// Each line a mistake a user can make; the checker must refuse every one.
const WRONG = `import { createRotorClient } from '@rotor/client'

const client = createRotorClient({ baseUrl: 'https://auth.example.com', routes: 'oauth' })
await client.setTokens({ access_token: 1, refresh_token: 'r' })
await client.setTokens({ access: 'a.b.c' })
const token: string = await client.getAccessToken()
console.log(token)
`

// Runs the installed package as an app would: no DOM, the memory storage by default, no network.
const RUN = `import * as rotor from '@rotor/client'

const { createRotorClient } = rotor
const client = createRotorClient({ baseUrl: 'http://127.0.0.1:9' })
const before = await client.getAccessToken()
await client.setTokens({ access_token: 'header.payload.signature', refresh_token: 'refresh', expires_in: 300 })
const after = await client.getAccessToken()
client.close()
console.log(JSON.stringify({ createRotorClient: typeof createRotorClient, exports: Object.keys(rotor), before, after, resolved: import.meta.resolve('@rotor/client') }))
`

test('the published @rotor/client: what npm pack puts in the tarball installs, type-checks and runs in a project of its own', async (t) => {
  const built = existsSync(join(ROOT, 'client/dist/index.js'))
  t.ok(built, 'client/dist/index.js is missing: run `npm test` (its pretest builds the client) or `node scripts/build-if-stale.mjs --client`')
  if (!built) return

  // Outside the repository: a project under it would resolve @rotor/client through the workspace's node_modules.
  const root = mkdtempSync(join(tmpdir(), 'rotor-client-package-'))
  t.teardown(() => { rmSync(root, { recursive: true, force: true }) })
  const packDir = join(root, 'pack')
  const app = join(root, 'app')
  mkdirSync(packDir)
  mkdirSync(app)

  // --ignore-scripts: prepack would run tsc over client/dist while other test files import it.
  const pack = await run('npm', ['pack', './client', '--json', '--ignore-scripts', '--pack-destination', packDir], ROOT)
  t.equal(pack.status, 0, `npm pack succeeds${pack.status === 0 ? '' : `: ${pack.stderr}`}`)
  if (pack.status !== 0) return
  const [packed] = JSON.parse(pack.stdout) as Packed[]
  if (packed === undefined) throw new Error(`npm pack described no tarball: ${pack.stdout}`)
  const tarball = join(packDir, packed.filename)

  await t.test('the tarball holds each module\'s JavaScript, declarations and source map, the README, the LICENSE and package.json: nothing else', async (t) => {
    const modules = readdirSync(join(ROOT, 'client/src')).filter((name) => name.endsWith('.ts') && !name.endsWith('.d.ts')).map((name) => name.slice(0, -'.ts'.length))
    t.ok(['client', 'index', 'storage', 'wire'].every((name) => modules.includes(name)), 'the modules are read from client/src')
    const expected = ['LICENSE', 'README.md', 'package.json', ...modules.flatMap((name) => [`dist/${name}.d.ts`, `dist/${name}.js`, `dist/${name}.js.map`])]
    t.same(packed.files.map((file) => file.path).sort(), expected.sort(), 'no src/, tsconfig.json, tests or build stamp')
    t.equal(packed.name, '@rotor/client')
    t.equal(statSync(tarball).size, packed.size, 'the tarball is where npm said')
  })

  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module', dependencies: { '@rotor/client': `file:${tarball}` } }, null, 2))
  const install = await run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts'], app)
  const installed = join(app, 'node_modules/@rotor/client')

  await t.test('it installs offline into an empty project, as a copy, and brings no dependency of its own', async (t) => {
    t.equal(install.status, 0, `npm install --offline succeeds${install.status === 0 ? '' : `: ${install.stderr}`}`)
    t.notOk(lstatSync(installed, { throwIfNoEntry: false })?.isSymbolicLink() ?? true, 'a directory of its own, not a link to the workspace')
    const lock = JSON.parse(readFileSync(join(app, 'package-lock.json'), 'utf8')) as { packages: Record<string, unknown> }
    t.same(Object.keys(lock.packages).sort(), ['', 'node_modules/@rotor/client'], 'the lockfile holds the app and the package, nothing else')
    const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8')) as Record<string, unknown>
    for (const field of ['dependencies', 'peerDependencies', 'optionalDependencies']) t.notOk(field in manifest, `no ${field}`)
    t.equal(manifest['type'], 'module', 'an ES module package')
    t.same(manifest['exports'], { '.': { types: './dist/index.d.ts', default: './dist/index.js' }, './package.json': './package.json' }, 'exports: the types condition first')
  })
  if (install.status !== 0) return

  writeFileSync(join(app, 'browser.ts'), BROWSER)
  writeFileSync(join(app, 'server.ts'), SERVER)
  writeFileSync(join(app, 'wrong.ts'), WRONG)
  const tsconfig = (name: string, files: string[], compilerOptions: Record<string, unknown>): string => {
    writeFileSync(join(app, name), JSON.stringify({ compilerOptions: { ...STRICT, ...compilerOptions }, files }, null, 2))
    return name
  }
  const browserOptions = { lib: ['ES2022', 'DOM'], types: [] }
  const nodeOptions = { lib: ['ES2022'], types: ['node'], typeRoots: [join(ROOT, 'node_modules/@types')] }
  // Two programs at once, each a few seconds of tsc: the browser app (with the file of mistakes
  // beside it, whose errors must be all there is) and the Node server.
  const [browser, server] = await Promise.all([
    run(process.execPath, [TSC, '-p', tsconfig('tsconfig.browser.json', ['browser.ts', 'wrong.ts'], browserOptions), '--pretty', 'false'], app),
    run(process.execPath, [TSC, '-p', tsconfig('tsconfig.server.json', ['server.ts'], nodeOptions), '--pretty', 'false'], app)
  ])
  const errors = browser.stdout.split('\n').filter((line) => line.includes('error TS'))

  await t.test('a browser app type-checks against it: strict, NodeNext, ES2022 and the DOM, its declarations checked too', async (t) => {
    t.same(errors.filter((line) => !line.startsWith('wrong.ts(')), [], 'tsc reports nothing but the mistakes of wrong.ts')
    t.equal(browser.stderr, '')
  })

  await t.test('a Node server type-checks against it without the DOM lib: the declarations need only what Node has', async (t) => {
    t.same({ status: server.status, errors: server.stdout + server.stderr }, { status: 0, errors: '' }, 'tsc reports nothing')
  })

  await t.test('a wrong route family, a wrong pair and a token taken for never null fail the type check', async (t) => {
    t.equal(browser.status, 2, 'tsc fails (errors, nothing emitted)')
    t.match(browser.stdout, /wrong\.ts\(3,\d+\): error TS2322: Type '"oauth"' is not assignable to type 'RouteFamily/, 'routes: \'oauth\'')
    t.match(browser.stdout, /wrong\.ts\(4,\d+\): error TS2322: Type 'number' is not assignable to type 'string'/, 'an access token that is a number')
    t.match(browser.stdout, /wrong\.ts\(5,\d+\): error TS2345: Argument of type '\{ access: string; \}' is not assignable to parameter of type 'TokenPairInput'/, 'a pair without its refresh token')
    t.match(browser.stdout, /wrong\.ts\(6,\d+\): error TS2322: Type 'string \| null' is not assignable to type 'string'/, 'getAccessToken() may answer null')
    t.equal(errors.length, 4, 'and nothing else')
  })

  await t.test('Node imports the installed package as an ES module and runs it, with the memory storage by default', async (t) => {
    writeFileSync(join(app, 'run.mjs'), RUN)
    const node = await run(process.execPath, ['run.mjs'], app)
    t.equal(node.status, 0, `the script runs${node.status === 0 ? '' : `: ${node.stderr}`}`)
    if (node.status !== 0) return
    const output = JSON.parse(node.stdout) as { createRotorClient: string, exports: string[], before: unknown, after: unknown, resolved: string }
    t.equal(output.createRotorClient, 'function', 'createRotorClient is a function')
    for (const name of ['createRotorClient', 'expiryOf', 'indexedDbStorage', 'memoryStorage', 'RotorRefusedError', 'RotorUnavailableError']) {
      t.ok(output.exports.includes(name), `${name} is exported`)
    }
    t.equal(output.before, null, 'no session before setTokens')
    t.equal(output.after, 'header.payload.signature', 'the stored access token, fresh, without asking Rotor')
    t.equal(output.resolved, pathToFileURL(join(realpathSync(installed), 'dist/index.js')).href, 'resolved to the installed copy')
  })

  await t.test('its JavaScript stays under the size budget', async (t) => {
    const scripts = readdirSync(join(installed, 'dist')).filter((name) => name.endsWith('.js'))
    let raw = 0
    let gzipped = 0
    for (const name of scripts) {
      const code = readFileSync(join(installed, 'dist', name))
      raw += code.length
      gzipped += gzipSync(code, { level: 9 }).length
    }
    t.comment(`@rotor/client: ${scripts.length} modules, ${raw} B of JavaScript, ${gzipped} B gzipped; tarball ${packed.size} B`)
    t.ok(gzipped < BUDGET_BYTES, `the modules' JavaScript, gzipped one by one and summed (${gzipped} B), is under the 8 KiB budget`)
  })
})
