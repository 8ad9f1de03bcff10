import { createHash, timingSafeEqual } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import { AppError } from './errors.js'

function digest (key: string): Buffer {
  return createHash('sha256').update(key).digest()
}

/**
 * API keys are kept only as SHA-256 digests and compared in constant time (every stored digest
 * is compared, whichever matches). A client is known by a short digest prefix: it names the
 * rate-limit bucket and log lines, and reveals nothing usable of the key.
 */
export class ApiKeys {
  private readonly digests: Buffer[]
  constructor (keys: string[]) {
    this.digests = keys.map(digest)
  }

  /** The client id of a presented key, or null. */
  identify (presented: string): string | null {
    const candidate = digest(presented)
    let match: Buffer | null = null
    for (const stored of this.digests) {
      if (timingSafeEqual(stored, candidate)) match = stored
    }
    return match === null ? null : `key:${match.subarray(0, 6).toString('hex')}`
  }
}

const BEARER = /^Bearer ([\x21-\x7e]{1,512})$/

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

export default fp(async function apiKeysPlugin (app, opts: { keys: string[] }) {
  const apiKeys = new ApiKeys(opts.keys)
  app.decorateRequest('client', null)
  app.decorate('identifyClient', async function identifyClient (request: FastifyRequest) {
    const match = BEARER.exec(request.headers.authorization ?? '')
    request.client = match?.[1] === undefined ? null : apiKeys.identify(match[1])
  })
  app.decorate('requireClient', async function requireClient (request: FastifyRequest) {
    if (request.client === null) {
      throw new AppError('invalid_client', 'a valid API key is required: Authorization: Bearer <key>', { 'www-authenticate': 'Bearer' })
    }
  })
}, { name: 'api-keys', fastify: '5.x' })
