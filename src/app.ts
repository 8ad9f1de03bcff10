import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox'
import type { DestinationStream } from 'pino'
import type { Config } from './config.js'
import { censorSecrets, REDACT_PATHS, RequestLogController, serializeRequest } from '../plugins/logging.js'
import errorsPlugin, { BODY_LIMIT, errorHandler } from '../plugins/errors.js'
import securityHeadersPlugin from '../plugins/security-headers.js'
import configPlugin from '../plugins/config.js'
import metricsPlugin from '../plugins/metrics.js'
import openapiPlugin from '../plugins/openapi.js'
import keyringPlugin from '../plugins/keyring.js'
import redisPlugin from '../plugins/redis.js'
import denylistPlugin from '../plugins/store/index.js'
import apiKeysPlugin from '../plugins/api-keys.js'
import corsPlugin from '../plugins/cors.js'
import rateLimitPlugin from '../plugins/rate-limit.js'
import legacyTokensPlugin from '../plugins/legacy-tokens.js'
import tokenRoutes from './routes/tokens.js'
import subjectRoutes from './routes/subjects.js'
import sessionRoutes from './routes/sessions.js'
import wellKnownRoutes from './routes/well-known.js'
import healthRoutes from './routes/health.js'
import simpleJwtRoutes from './routes/simplejwt.js'
import oauthRoutes from './routes/oauth.js'
import metricsRoutes from './routes/metrics.js'
import { buildManagementApp } from './management.js'

export interface BuildOptions {
  /** A pino destination stream (tests capture the log through it); stdout by default. */
  logStream?: DestinationStream
  /** How long a connection may sit idle mid-request before it is closed (ms); 10 s by default. */
  idleTimeoutMs?: number
  /** How long a whole request (headers and body) may take to arrive (ms); 30 s by default. */
  requestTimeoutMs?: number
}

/**
 * Builds Rotor without listening: validator, error handler, plugins and routes, in order.
 *
 * @example
 * const app = await buildApp(loadConfig(process.env))
 * await app.listen({ port: app.config.port, host: app.config.host })
 * // and, when MANAGEMENT_PORT is set:
 * await app.management?.listen({ port: app.config.managementPort, host: app.config.managementHost })
 */
export async function buildApp (config: Config, options: BuildOptions = {}): Promise<FastifyInstance> {
  const logger: FastifyServerOptions['logger'] = {
    level: config.logLevel,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    formatters: { log: censorSecrets },
    serializers: { req: serializeRequest },
    ...(options.logStream === undefined ? {} : { stream: options.logStream })
  }
  const requestTimeout = options.requestTimeoutMs ?? 30_000
  const app = Fastify({
    logger,
    // Per-request lines at debug (see RequestLogController): at info, one line per token event.
    logController: new RequestLogController(),
    bodyLimit: BODY_LIMIT,
    trustProxy: config.trustProxy ?? false,
    // A body that stalls is cut off by the idle timeout; one that trickles, by the request timeout.
    connectionTimeout: options.idleTimeoutMs ?? 10_000,
    requestTimeout,
    // Requests that arrive while draining get the envelope's 503 from the errors plugin instead.
    return503OnClosing: false,
    // What the router refuses before any route (a bad URL, an over-long path parameter): the one handler too.
    frameworkErrors: errorHandler,
    // Node checks the request timeout every 30 s by default, so a trickled request could live
    // twice as long as promised: check every second. And the limit must be given to the server
    // at creation: set afterwards (as Fastify does), it leaves the headers limit at 60 s and a
    // trickled body is never cut off (Node 20 and 24).
    http: { connectionsCheckingInterval: 1000, requestTimeout },
    requestIdHeader: 'x-request-id',
    routerOptions: { ignoreTrailingSlash: false, maxParamLength: 1024 },
    ajv: undefined
  })
  app.setValidatorCompiler(TypeBoxValidatorCompiler)
  closeConnectionsAsTheyIdle(app)
  await app.register(metricsPlugin)
  await app.register(errorsPlugin)
  await app.register(securityHeadersPlugin)
  await app.register(configPlugin, { config })
  await app.register(openapiPlugin)
  await app.register(keyringPlugin, { config })
  await app.register(redisPlugin, { config })
  await app.register(denylistPlugin, { config })
  await app.register(apiKeysPlugin, { keys: config.apiKeys, file: config.apiKeysFile })
  await app.register(corsPlugin, { origins: config.corsOrigins })
  await app.register(rateLimitPlugin, {
    max: config.rateLimitMax,
    windowSeconds: config.rateLimitWindow,
    allow: config.rateLimitAllow,
    keyPrefix: config.redisKeyPrefix,
    rotates: config.denylistEnabled && config.rotateRefreshTokens
  })
  await app.register(legacyTokensPlugin, { config })

  await app.register(tokenRoutes)
  await app.register(subjectRoutes)
  await app.register(sessionRoutes)
  await app.register(wellKnownRoutes)
  await app.register(healthRoutes)
  if (config.compatSimpleJwt) await app.register(simpleJwtRoutes)
  await app.register(oauthRoutes)

  // With an ops listener, /metrics is served there alone (health on both: a load balancer may probe either).
  if (config.managementPort === null) {
    await app.register(metricsRoutes)
    app.decorate('management', null)
  } else {
    const management = await buildManagementApp(app)
    app.decorate('management', management)
    app.addHook('onClose', async () => { await management.close() })
  }
  return app
}

/** How often, while the app closes, connections that have become idle are closed (ms). */
const IDLE_SWEEP_MS = 100

/**
 * Closing waits for the requests in flight; Node closes the connections that are idle when it
 * starts, but one whose request finishes afterwards stays open, kept alive, until its keep-alive
 * timeout (5 s) and holds the exit up that long. While the app closes, idle connections are
 * closed as they become idle, so the process exits once its last answer is written.
 */
function closeConnectionsAsTheyIdle (app: FastifyInstance): void {
  let sweep: NodeJS.Timeout | undefined
  app.addHook('preClose', (done) => {
    sweep = setInterval(() => { app.server.closeIdleConnections() }, IDLE_SWEEP_MS)
    sweep.unref()
    done()
  })
  app.addHook('onClose', (_instance, done) => {
    clearInterval(sweep)
    done()
  })
}
