import { createHash, timingSafeEqual } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import type { ApiKey } from './config.js'
import { AppError } from './errors.js'

function digest (key: string): Buffer {
  return createHash('sha256').update(key).digest()
}

/** The name of a key given without one: a short digest of it, which reveals nothing usable of it. */
export function nameOfSecret (secret: string): string {
  return `key-${digest(secret).subarray(0, 6).toString('hex')}`
}

/**
 * API keys are kept only as SHA-256 digests and compared in constant time (every stored digest
 * is compared, whichever matches). A client is known by its key's name: in logs, metrics and
 * rate-limit keys, and as its OAuth client_id.
 */
export class ApiKeys {
  private readonly keys: Array<{ digest: Buffer, key: Omit<ApiKey, 'secret'> }>
  constructor (keys: ApiKey[]) {
    this.keys = keys.map(({ secret, ...key }) => ({ digest: digest(secret), key }))
  }

  /** The key whose secret was presented, or null. */
  identify (presented: string): Omit<ApiKey, 'secret'> | null {
    const candidate = digest(presented)
    let match: Omit<ApiKey, 'secret'> | null = null
    for (const { digest, key } of this.keys) {
      if (timingSafeEqual(digest, candidate)) match = key
    }
    return match
  }

  /**
   * The key of an Authorization header: `Bearer <secret>`, or HTTP Basic with the key's name as
   * user id and its secret as password (RFC 6749 §2.3.1: each form-encoded first). A Basic user id
   * that is not the key's name identifies no one.
   */
  fromHeader (authorization: string | undefined): Omit<ApiKey, 'secret'> | null {
    const bearer = BEARER.exec(authorization ?? '')
    if (bearer?.[1] !== undefined) return this.identify(bearer[1])
    const basic = BASIC.exec(authorization ?? '')?.[1]
    if (basic === undefined) return null
    const credentials = Buffer.from(basic, 'base64').toString('utf8')
    const colon = credentials.indexOf(':')
    if (colon < 0) return null
    const key = this.identify(formDecoded(credentials.slice(colon + 1)))
    return key !== null && key.name === formDecoded(credentials.slice(0, colon)) ? key : null
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
    /** onRequest hook: sets `request.client` when a known API key is presented. */
    identifyClient: (request: FastifyRequest) => Promise<void>
    /** onRequest hook, after the rate limit: 401 invalid_client unless a client was identified. */
    requireClient: (request: FastifyRequest) => Promise<void>
  }
  interface FastifyRequest {
    /** The authenticated backend client, on routes that ask for an API key. */
    client: string | null
  }
}

export default fp(async function apiKeysPlugin (app, opts: { keys: ApiKey[] }) {
  const apiKeys = new ApiKeys(opts.keys)
  app.decorateRequest('client', null)
  app.decorate('identifyClient', async function identifyClient (request: FastifyRequest) {
    request.client = apiKeys.fromHeader(request.headers.authorization)?.name ?? null
  })
  // Who called what, by name: the routes and statuses of each key (a few keys, a few routes).
  app.addHook('onResponse', (request, reply, done) => {
    if (request.client !== null) app.metrics.backendRequests.inc({ client: request.client, route: String(request.routeOptions.url), status_code: reply.statusCode })
    done()
  })
  app.decorate('requireClient', async function requireClient (request: FastifyRequest) {
    if (request.client === null) {
      throw new AppError('invalid_client', 'a valid API key is required: Authorization: Bearer <key>', { 'www-authenticate': 'Bearer' })
    }
  })
}, { name: 'api-keys', dependencies: ['metrics'], fastify: '5.x' })
