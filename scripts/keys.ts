/**
 * `npm run keys -- generate|rotate|retire`: maintains a JWKS of private keys (JWT_KEYS_FILE).
 *
 * The file's own order says which key signs: the first key that is not staged (JWT_ACTIVE_KID,
 * when set, overrides it). Two members of Rotor's own, never published, record a key's life:
 * `rotor_staged_since` (published, not signing yet) and `rotor_retiring_since` (stopped signing).
 * Every write is atomic (a temporary file renamed over the old one) with mode 0600, and is checked
 * with the service's own loader first: the file never holds anything the service would refuse.
 */
import { randomBytes } from 'node:crypto'
import { closeSync, existsSync, fchownSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { ALGORITHMS, parseDuration, type Algorithm } from '../src/config.js'
import { ConfigError } from '../plugins/errors.js'
import { generatePrivateKey, JWKS_MAX_AGE, KTY, parseKeysFile, RETIRING_SINCE, STAGED_SINCE } from '../plugins/key-material.js'

export type Jwk = Record<string, unknown>
export interface KeysDocument { keys: Jwk[], [member: string]: unknown }
type Env = Record<string, string | undefined>

/** What a command did: the kids it added, activated or removed, and a sentence for the operator. */
export interface Report { kids: string[], message: string }

/** A refusal or failure the operator can act on: printed without a stack, exit code 1. */
export class KeysCommandError extends Error {
  override name = 'KeysCommandError'
}

/** A command line that makes no sense: printed with the usage, exit code 2. */
export class UsageError extends KeysCommandError {
  override name = 'UsageError'
}

export const USAGE = `usage: npm run keys -- <command> <file> [options]

  generate <file> [--alg EdDSA|ES256|RS256|HS256]
      a new keys file holding one key (default alg: JWT_ALGORITHM, else EdDSA)
  rotate <file>
      adds a key that signs at once; the others keep verifying until retired
  rotate <file> --stage
      adds a key that is published in the JWKS but does not sign yet (the safe way)
  rotate <file> --activate [--force]
      makes the staged key sign, once verifiers' JWKS caches (${JWKS_MAX_AGE} s) have expired
  retire <file> [<kid>] [--min-age <duration>] [--force]
      removes <kid>, or every key that stopped signing at least --min-age ago (default: the
      longest token life, max(ACCESS_TOKEN_TTL, REFRESH_TOKEN_TTL) + LEEWAY from the environment)

Running instances read the file again within seconds of a change, or on SIGHUP.`

/** `<alg>-<yyyymmdd>-<8 hex>`: sortable by eye, unique without coordination. */
export function newKid (algorithm: Algorithm, now: Date): string {
  return `${algorithm}-${now.toISOString().slice(0, 10).replaceAll('-', '')}-${randomBytes(4).toString('hex')}`
}

/** A new private JWK with its `kid`, `alg` and `use`. */
export function newPrivateJwk (algorithm: Algorithm, now: Date): Jwk {
  const named = { kid: newKid(algorithm, now), alg: algorithm, use: 'sig' }
  if (algorithm === 'HS256') return { kty: 'oct', k: randomBytes(32).toString('base64url'), ...named }
  return { ...generatePrivateKey(algorithm).export({ format: 'jwk' }), ...named }
}

/** The algorithm of a file, from its first key; a file it cannot tell is refused by the loader. */
function algorithmOf (parsed: unknown): Algorithm {
  const first = (parsed as { keys?: Array<Jwk | null> } | null)?.keys?.[0]
  return ALGORITHMS.find((algorithm) => algorithm === first?.['alg']) ??
    ALGORITHMS.find((algorithm) => KTY[algorithm] === first?.['kty']) ?? 'EdDSA'
}

/** Reads and checks a keys file as the service would (a bad file is a ConfigError). */
export function readKeys (path: string): { document: KeysDocument, algorithm: Algorithm } {
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'))
  } catch (error) {
    throw new KeysCommandError(`${path}: cannot read a JSON file (${String((error as NodeJS.ErrnoException).code ?? (error as Error).name)})`)
  }
  const algorithm = algorithmOf(parsed)
  parseKeysFile(parsed, path, algorithm)
  return { document: parsed as KeysDocument, algorithm }
}

/**
 * Checks, then writes atomically with mode 0600: readers see the old file or the new one, whole.
 * A file replaced keeps its owner and group (the user a container reads it as, say); where that
 * is not allowed, nothing is written.
 */
export function writeKeys (path: string, document: KeysDocument, algorithm: Algorithm): void {
  parseKeysFile(document, path, algorithm)
  const previous = statSync(path, { throwIfNoEntry: false })
  const temporary = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  try {
    const fd = openSync(temporary, 'wx', 0o600)
    try {
      writeSync(fd, `${JSON.stringify(document, null, 2)}\n`)
      if (previous !== undefined) fchownSync(fd, previous.uid, previous.gid)
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    renameSync(temporary, path)
  } catch (error) {
    rmSync(temporary, { force: true })
    throw new KeysCommandError(`cannot write ${path} (${String((error as NodeJS.ErrnoException).code)}); it is left as it was`)
  }
}

/** Seconds since an ISO time recorded in the file; NaN when it is missing or not a time. */
function secondsSince (recorded: unknown, now: Date): number {
  return (now.getTime() - Date.parse(String(recorded))) / 1000
}

/** The key that signs when JWT_ACTIVE_KID is unset: the first one not staged (the loader ensures one). */
function activeKey (document: KeysDocument): Jwk {
  return document.keys.find((key) => key[STAGED_SINCE] === undefined) as Jwk
}

/** `jwk` signs from now on: first in the file; the key it replaces is marked as retiring. */
function promote (document: KeysDocument, jwk: Jwk, now: Date): KeysDocument {
  const previous = activeKey(document)
  const others = document.keys.map((key) => key === previous ? { ...key, [RETIRING_SINCE]: now.toISOString() } : key)
  return { ...document, keys: [jwk, ...others] }
}

export function generate (path: string, options: { algorithm: Algorithm, now: Date }): Report {
  if (existsSync(path)) throw new KeysCommandError(`${path} exists: \`keys rotate\` adds a key to it; remove it first to start over`)
  const jwk = newPrivateJwk(options.algorithm, options.now)
  writeKeys(path, { keys: [jwk] }, options.algorithm)
  return { kids: [String(jwk['kid'])], message: `${path}: new ${options.algorithm} key ${String(jwk['kid'])}` }
}

export interface RotateOptions { now: Date, stage?: boolean, activate?: boolean, force?: boolean }

export function rotate (path: string, options: RotateOptions): Report {
  const { document, algorithm } = readKeys(path)
  const staged = document.keys.find((key) => key[STAGED_SINCE] !== undefined)
  const previous = String(activeKey(document)['kid'])
  if (options.activate === true) return activate(path, document, algorithm, staged, options)
  if (staged !== undefined) {
    throw new KeysCommandError(`${String(staged['kid'])} is staged already: \`keys rotate ${path} --activate\` makes it sign, \`keys retire ${path} ${String(staged['kid'])}\` drops it`)
  }
  const jwk = newPrivateJwk(algorithm, options.now)
  const kid = String(jwk['kid'])
  if (options.stage === true) {
    writeKeys(path, { ...document, keys: [...document.keys, { ...jwk, [STAGED_SINCE]: options.now.toISOString() }] }, algorithm)
    return {
      kids: [kid],
      message: `${path}: ${kid} is staged: published in the JWKS, not signing; ${previous} still signs. ` +
        `Once every instance has reloaded and ${JWKS_MAX_AGE} s have passed, run: npm run keys -- rotate ${path} --activate`
    }
  }
  writeKeys(path, promote(document, jwk, options.now), algorithm)
  return {
    kids: [kid],
    message: `${path}: ${kid} signs from now on; ${previous} keeps verifying until retired. ` +
      `Verifiers that cached the JWKS learn ${kid} within ${JWKS_MAX_AGE} s (rotate --stage first avoids that gap)`
  }
}

function activate (path: string, document: KeysDocument, algorithm: Algorithm, staged: Jwk | undefined, options: RotateOptions): Report {
  if (staged === undefined) throw new KeysCommandError(`${path} has no staged key: \`keys rotate ${path} --stage\` adds one`)
  const kid = String(staged['kid'])
  if (options.force !== true && !(secondsSince(staged[STAGED_SINCE], options.now) >= JWKS_MAX_AGE)) {
    throw new KeysCommandError(`${kid} was staged at ${String(staged[STAGED_SINCE])}: verifiers may cache the JWKS for ${JWKS_MAX_AGE} s, ` +
      'so it signs only once that long has passed since every instance published it; retry later, or pass --force')
  }
  const { [STAGED_SINCE]: _staged, ...jwk } = staged
  const previous = String(activeKey(document)['kid'])
  writeKeys(path, promote({ ...document, keys: document.keys.filter((key) => key !== staged) }, jwk, options.now), algorithm)
  return { kids: [kid], message: `${path}: ${kid} signs from now on; ${previous} keeps verifying until retired` }
}

export interface RetireOptions {
  now: Date
  /** Seconds a key must have stopped signing for: the longest life of a token it signed. */
  minAge: number
  kid?: string
  force?: boolean
}

/**
 * Removes a key, or every key that stopped signing at least `minAge` seconds ago. Never the
 * active key; never a staged key unless named; never a key younger than `minAge` without `force`:
 * its refresh tokens still live, and retiring it logs their users out.
 */
export function retire (path: string, options: RetireOptions): Report {
  const { document, algorithm } = readKeys(path)
  const active = activeKey(document)
  const isOld = (key: Jwk): boolean => secondsSince(key[RETIRING_SINCE], options.now) >= options.minAge
  let retired: Jwk[]
  if (options.kid !== undefined) {
    const key = document.keys.find((candidate) => candidate['kid'] === options.kid)
    if (key === undefined) throw new KeysCommandError(`${path} has no key ${options.kid}`)
    if (key === active) throw new KeysCommandError(`${options.kid} signs: \`keys rotate ${path}\` first`)
    if (options.force !== true && key[STAGED_SINCE] === undefined && !isOld(key)) throw tooYoung(key, options)
    retired = [key]
  } else {
    retired = document.keys.filter((key) => key !== active && key[STAGED_SINCE] === undefined && isOld(key))
    if (retired.length === 0) return { kids: [], message: `${path}: no key stopped signing ${options.minAge} s ago or earlier; nothing retired` }
  }
  const keys = document.keys.filter((key) => !retired.includes(key))
  writeKeys(path, { ...document, keys }, algorithm)
  const kids = retired.map((key) => String(key['kid']))
  return { kids, message: `${path}: retired ${kids.join(', ')}: the tokens it signed are refused from now on. Left: ${keys.map((key) => String(key['kid'])).join(', ')}` }
}

function tooYoung (key: Jwk, options: RetireOptions): KeysCommandError {
  const since = Date.parse(String(key[RETIRING_SINCE]))
  const when = Number.isNaN(since)
    ? `it has no ${RETIRING_SINCE}, so when it stopped signing is unknown`
    : `it stopped signing at ${new Date(since).toISOString()}; it may go after ${new Date(since + options.minAge * 1000).toISOString()}`
  return new KeysCommandError(`${String(key['kid'])} may still have live tokens (--min-age ${options.minAge} s): ${when}. ` +
    'Retiring it now logs out every user whose refresh token it signed; pass --force to do so anyway')
}

/** A duration setting (`90`, `15m`, `7d`) in seconds, or a usage error naming it. */
function seconds (name: string, text: string): number {
  const value = parseDuration(text)
  if (value === null) throw new UsageError(`${name}=${text}: expected a duration such as 90, 15m or 7d`)
  return value
}

/** The longest a token signed by a key may live after the key stops signing, from the service's settings. */
export function defaultMinAge (env: Env): number {
  return Math.max(seconds('ACCESS_TOKEN_TTL', env['ACCESS_TOKEN_TTL'] ?? '60m'), seconds('REFRESH_TOKEN_TTL', env['REFRESH_TOKEN_TTL'] ?? '7d')) +
    seconds('LEEWAY', env['LEEWAY'] ?? '0')
}

const OPTIONS = {
  alg: { type: 'string' },
  stage: { type: 'boolean' },
  activate: { type: 'boolean' },
  force: { type: 'boolean' },
  'min-age': { type: 'string' }
} as const
type ParsedValues = ReturnType<typeof parseArgs<{ options: typeof OPTIONS, allowPositionals: true, strict: true }>>['values']

/** The options each command takes, and how many positionals (file, and for retire a kid). */
const COMMANDS: Record<string, { options: string[], positionals: number }> = {
  generate: { options: ['alg'], positionals: 1 },
  rotate: { options: ['stage', 'activate', 'force'], positionals: 1 },
  retire: { options: ['min-age', 'force'], positionals: 2 }
}

function run (argv: string[], env: Env, now: Date): Report {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true })
  } catch (error) {
    throw new UsageError((error as Error).message)
  }
  const { values, positionals: [command = '', path, ...rest] } = parsed
  const spec = COMMANDS[command]
  if (spec === undefined || path === undefined || rest.length >= spec.positionals ||
    !Object.keys(values).every((name) => spec.options.includes(name))) {
    throw new UsageError(spec === undefined ? `no such command: "${command}"` : `not a valid ${command} command line`)
  }
  return withLock(path, () => runCommand(command, path, values, rest, env, now))
}

/**
 * One keys command at a time per file: two rotations at once would each read the file, add
 * their key and write, and the second write would drop the first key (its tokens then fail).
 * The lock is a file beside the keys file, created exclusively, removed when the command ends.
 */
function withLock<T> (path: string, command: () => T): T {
  const lock = `${path}.lock`
  let fd: number
  try {
    fd = openSync(lock, 'wx', 0o600)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw new KeysCommandError(`cannot create ${lock}: ${(error as Error).message}`)
    throw new KeysCommandError(`another keys command is changing ${path} (${lock} exists, written by pid ${lockOwner(lock)}); if none is running, remove ${lock}`)
  }
  try {
    writeSync(fd, `${process.pid}\n`)
    closeSync(fd)
    return command()
  } finally {
    rmSync(lock, { force: true })
  }
}

/** The pid in a lock file, or ? when it is empty or already gone (its command just ended). */
function lockOwner (lock: string): string {
  try {
    return readFileSync(lock, 'utf8').trim() || '?'
  /* c8 ignore next 3: the lock removed between the failed create and this read */
  } catch {
    return '?'
  }
}

function runCommand (command: string, path: string, values: ParsedValues, rest: string[], env: Env, now: Date): Report {
  if (command === 'generate') {
    const algorithm = ALGORITHMS.find((name) => name === (values.alg ?? env['JWT_ALGORITHM'] ?? 'EdDSA'))
    if (algorithm === undefined) throw new UsageError(`--alg (or JWT_ALGORITHM): expected one of ${ALGORITHMS.join(', ')}`)
    return generate(path, { algorithm, now })
  }
  if (command === 'rotate') {
    if (values.stage === true && values.activate === true) throw new UsageError('--stage or --activate, not both')
    const report = rotate(path, { now, stage: values.stage === true, activate: values.activate === true, force: values.force === true })
    const pinned = env['JWT_ACTIVE_KID'] ?? ''
    if (values.stage === true || pinned === '') return report
    return { ...report, message: `${report.message}\nwarning: JWT_ACTIVE_KID=${pinned} is set: it chooses the signing key, whatever the file's order; unset it for this rotation to take effect` }
  }
  const minAge = values['min-age'] === undefined ? defaultMinAge(env) : seconds('--min-age', values['min-age'])
  return retire(path, { now, minAge, force: values.force === true, ...(rest[0] === undefined ? {} : { kid: rest[0] }) })
}

/**
 * Runs one command line; answers the exit code and the text to print (stdout when the code is 0,
 * stderr otherwise). Never prints key material, only kids.
 *
 * @example
 * main(['rotate', 'keys/keys.json', '--stage'], process.env)
 */
export function main (argv: string[], env: Env, now = new Date()): { code: number, text: string } {
  if (argv.includes('--help') || argv.includes('-h')) return { code: 0, text: USAGE }
  try {
    return { code: 0, text: run(argv, env, now).message }
  } catch (error) {
    if (error instanceof UsageError) return { code: 2, text: `keys: ${error.message}\n\n${USAGE}` }
    if (error instanceof KeysCommandError || error instanceof ConfigError) return { code: 1, text: `keys: ${error.message}` }
    /* c8 ignore next 2: anything else is a bug; Node prints its stack and exits non-zero */
    throw error
  }
}

if (import.meta.url === pathToFileURL(resolve(String(process.argv[1]))).href) {
  // The settings the service reads (.env included) give --alg and --min-age their defaults.
  if (existsSync('.env')) process.loadEnvFile('.env')
  const { code, text } = main(process.argv.slice(2), process.env)
  ;(code === 0 ? process.stdout : process.stderr).write(`${text}\n`)
  process.exitCode = code
}
