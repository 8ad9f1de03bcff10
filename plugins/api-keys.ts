import { createHash, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import fp from 'fastify-plugin'
import type { FastifyBaseLogger, FastifyRequest, preParsingHookHandler } from 'fastify'
import { SCOPES, type ApiKey, type Scope } from './config.js'
import { AppError, ConfigError } from './errors.js'
import { watchSettled } from './watch.js'

function digest (key: string): Buffer {
  return createHash('sha256').update(key).digest()
}

/** The name of a key given without one: a short digest of it, which reveals nothing usable of it. */
export function nameOfSecret (secret: string): string {
  return `key-${digest(secret).subarray(0, 6).toString('hex')}`
}

/** A key's name: what may stand in a log line, a Redis key, an HTTP Basic user id and a form field as is. */
const KEY_NAME = /^[A-Za-z0-9._~-]{1,64}$/

/**
 * Reads entries `secret`, `name:secret` or `name:secret:scope+scope` (API_KEYS, API_KEYS_FILE).
 * No fault ever repeats a secret (or a part of an entry that could be one): entries are named by
 * their place in the list, `where` says which list.
 */
export function parseApiKeys (entries: string[], where: string): { keys: ApiKey[], faults: string[] } {
  const faults: string[] = []
  const keys = entries.map((entry, index): ApiKey => {
    const parts = entry.split(':')
    const [name, secret = '', scopes] = parts.length === 1 ? [null, entry] : parts
    const fault = (what: string): void => { faults.push(`${where}: entry #${index + 1}: ${what}`) }
    if (parts.length > 3) fault('expected secret, name:secret or name:secret:scope+scope (a secret may not hold ":")')
    if (name !== null && !KEY_NAME.test(name)) fault('a name is 1 to 64 letters, digits, ".", "_", "~" or "-"')
    if (secret.length < 16) fault('a key must be at least 16 characters')
    const asked = scopes?.split('+') ?? [...SCOPES]
    if (asked.some((scope) => !(SCOPES as readonly string[]).includes(scope))) fault(`scopes are ${SCOPES.join(', ')}, joined by "+"`)
    return { name: name ?? nameOfSecret(secret), secret, scopes: asked as Scope[] }
  })
  const names = keys.map((key) => key.name)
  const twice = names.find((name, index) => names.indexOf(name) !== index)
  if (twice !== undefined) faults.push(`${where}: two entries are named ${twice} (or the same key is given twice)`)
  return { keys, faults }
}

/** Reads API_KEYS_FILE: a JSON array of entries as in API_KEYS. Throws a ConfigError naming the file and the entry at fault. */
export function readApiKeysFile (path: string): ApiKey[] {
  let entries: unknown
  try {
    entries = JSON.parse(readFileSync(path, 'utf8'))
  } catch (error) {
    throw new ConfigError([`API_KEYS_FILE=${path}: cannot read a JSON file (${String((error as NodeJS.ErrnoException).code ?? (error as Error).name)})`])
  }
  if (!Array.isArray(entries) || entries.length === 0 || !entries.every((entry) => typeof entry === 'string')) {
    throw new ConfigError([`API_KEYS_FILE=${path}: expected a JSON array of entries, e.g. ["gateway:<secret>:introspect"]`])
  }
  const { keys, faults } = parseApiKeys(entries as string[], `API_KEYS_FILE=${path}`)
  if (faults.length > 0) throw new ConfigError(faults)
  return keys
}

/** Who called, as a request knows it: the key's name and what it may do; never its secret. */
export interface ApiClient {
  name: string
  scopes: readonly Scope[]
}

/**
 * API keys are kept only as SHA-256 digests and compared in constant time (every stored digest
 * is compared, whichever matches). A client is known by its key's name: in logs, metrics and
 * rate-limit keys, and as its OAuth client_id. With API_KEYS_FILE, the keys can be replaced
 * while Rotor runs ({@link ApiKeys.reload}).
 */
export class ApiKeys {
  private keys: Array<{ digest: Buffer, client: ApiClient }>
  private readonly load: (() => ApiKey[]) | undefined
  private readonly log: FastifyBaseLogger
  /** `load`: reads the keys again (API_KEYS_FILE); without it there is nothing to reload. `log`: where a reload says what it did. */
  constructor (keys: ApiKey[], options: { load?: () => ApiKey[], log: FastifyBaseLogger }) {
    this.keys = ApiKeys.digested(keys)
    this.load = options.load
    this.log = options.log
  }

  private static digested (keys: ApiKey[]): Array<{ digest: Buffer, client: ApiClient }> {
    return keys.map(({ secret, name, scopes }) => ({ digest: digest(secret), client: { name, scopes } }))
  }

  /** The names of the keys in use, for the log. */
  get names (): string[] {
    return this.keys.map((key) => key.client.name)
  }

  /** The client whose secret was presented, or null. */
  identify (presented: string): ApiClient | null {
    const candidate = digest(presented)
    let match: ApiClient | null = null
    for (const { digest, client } of this.keys) {
      if (timingSafeEqual(digest, candidate)) match = client
    }
    return match
  }

  /**
   * The client of an Authorization header: `Bearer <secret>`, or HTTP Basic with the key's name as
   * user id and its secret as password (RFC 6749 §2.3.1: each form-encoded first). A Basic user id
   * that is not the key's name identifies no one.
   */
  fromHeader (authorization: string | undefined): ApiClient | null {
    const bearer = BEARER.exec(authorization ?? '')
    if (bearer?.[1] !== undefined) return this.identify(bearer[1])
    const basic = BASIC.exec(authorization ?? '')?.[1]
    if (basic === undefined) return null
    const credentials = Buffer.from(basic, 'base64').toString('utf8')
    const colon = credentials.indexOf(':')
    if (colon < 0) return null
    const client = this.identify(formDecoded(credentials.slice(colon + 1)))
    return client !== null && client.name === formDecoded(credentials.slice(0, colon)) ? client : null
  }

  /**
   * Reads API_KEYS_FILE again and swaps its keys in at once: a key removed from it stops working
   * at the next request. Never throws: a file that cannot be read or holds a bad entry keeps the
   * current keys, and says why at error level (names only, never a secret).
   *
   * @example
   * process.on('SIGHUP', () => app.apiKeys.reload('signal'))
   */
  reload (trigger: 'file' | 'signal'): boolean {
    if (this.load === undefined) return false
    let keys: ApiKey[]
    try {
      keys = this.load()
    } catch (error) {
      this.log.error({ event: 'api_keys.reload', trigger, reason: (error as Error).message }, 'API keys not reloaded: keeping the current keys')
      return false
    }
    this.keys = ApiKeys.digested(keys)
    this.log.info({ event: 'api_keys.reload', trigger, names: this.names }, 'API keys reloaded')
    return true
  }
}

const BEARER = /^Bearer ([\x21-\x7e]{1,512})$/
const BASIC = /^Basic ([A-Za-z0-9+/]{1,1024}={0,2})$/i

/** application/x-www-form-urlencoded decoding of one value; text that does not decode stays as it is. */
function formDecoded (text: string): string {
  try {
    return decodeURIComponent(text.replaceAll('+', ' '))
  } catch {
    return text
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    apiKeys: ApiKeys
    /** onRequest hook: sets `request.client` when a known API key is presented, and names it in the request's log lines. */
    identifyClient: (request: FastifyRequest) => Promise<void>
    /** preParsing hook, after the rate limit: 401 invalid_client unless a client was identified. */
    requireClient: (request: FastifyRequest) => Promise<void>
    /** A preParsing hook, after requireClient: 403 insufficient_scope unless the client's key has `scope`. */
    requireScope: (scope: Scope) => preParsingHookHandler
  }
  interface FastifyRequest {
    /** The authenticated backend client, on routes that ask for an API key. */
    client: ApiClient | null
  }
}

export interface ApiKeysOptions {
  keys: ApiKey[]
  /** API_KEYS_FILE: watched, and read again on change (and on SIGHUP, by src/server.ts). */
  file: string | null
}

export default fp(async function apiKeysPlugin (app, opts: ApiKeysOptions) {
  const { file } = opts
  const apiKeys = new ApiKeys(opts.keys, { log: app.log, ...(file === null ? {} : { load: () => readApiKeysFile(file) }) })
  app.decorate('apiKeys', apiKeys)
  if (file !== null) {
    const stopWatching = watchSettled(file, () => apiKeys.reload('file'))
    app.addHook('onClose', async () => { stopWatching() })
  }
  app.decorateRequest('client', null)
  app.decorate('identifyClient', async function identifyClient (request: FastifyRequest) {
    request.client = apiKeys.fromHeader(request.headers.authorization)
    // Every line this request logs says who asked.
    if (request.client !== null) request.log = request.log.child({ client: request.client.name })
  })
  // Who called what, by name: the routes and statuses of each key (a few keys, a few routes).
  app.addHook('onResponse', (request, reply, done) => {
    if (request.client !== null) app.metrics.backendRequests.inc({ client: request.client.name, route: String(request.routeOptions.url), status_code: reply.statusCode })
    done()
  })
  app.decorate('requireClient', async function requireClient (request: FastifyRequest) {
    if (request.client === null) {
      throw new AppError('invalid_client', 'a valid API key is required: Authorization: Bearer <key>', { 'www-authenticate': 'Bearer' })
    }
  })
  app.decorate('requireScope', (scope: Scope): preParsingHookHandler => async function requireScope (request: FastifyRequest) {
    // requireClient ran first: there is a client.
    if (!request.client!.scopes.includes(scope)) {
      throw new AppError('insufficient_scope', `this API key may not do this: it needs the ${scope} scope`, { 'www-authenticate': `Bearer error="insufficient_scope", scope="${scope}"` })
    }
  })
}, { name: 'api-keys', dependencies: ['metrics'], fastify: '5.x' })
