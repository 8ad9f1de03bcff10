import fp from 'fastify-plugin'
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/**
 * Prometheus metrics, in a registry of this app's own (tests build many apps in one process).
 * Counting is a few hundred nanoseconds; nothing here is on the hot path's critical section.
 */
export class Metrics {
  readonly registry = new Registry()
  readonly issued = new Counter({ name: 'rotor_tokens_issued_total', help: 'Pairs issued', registers: [this.registry] })
  readonly refreshed = new Counter({
    name: 'rotor_tokens_refreshed_total', help: 'Pairs refreshed; retry="true" for a repeat within the grace window', labelNames: ['retry'], registers: [this.registry]
  })

  readonly refused = new Counter({
    name: 'rotor_tokens_refused_total', help: 'Tokens refused, by error code', labelNames: ['code'], registers: [this.registry]
  })

  readonly reuse = new Counter({
    name: 'rotor_refresh_reuse_total', help: 'Rotated refresh tokens presented again after the grace window; enforced="false" under REUSE_DETECTION=log', labelNames: ['enforced'], registers: [this.registry]
  })

  readonly sessionsRevoked = new Counter({
    name: 'rotor_sessions_revoked_total', help: 'Sessions revoked, by reason (logout, reuse, limit: MAX_SESSIONS_PER_SUBJECT, ended: a session route)', labelNames: ['reason'], registers: [this.registry]
  })

  readonly sessionsUnlisted = new Counter({
    name: 'rotor_sessions_unlisted_total', help: 'Sessions issued while the session index did not answer: listed from their first refresh', registers: [this.registry]
  })

  readonly subjectsRevoked = new Counter({ name: 'rotor_subjects_revoked_total', help: 'Log-out-everywhere calls', registers: [this.registry] })
  readonly storeLosses = new Counter({ name: 'rotor_store_losses_total', help: 'Times Redis was found to have lost its data (Rotor\'s marker gone)', registers: [this.registry] })
  readonly storeErrors = new Counter({ name: 'rotor_store_errors_total', help: 'Requests answered 503 because the store did not answer', registers: [this.registry] })
  readonly backendRequests = new Counter({
    name: 'rotor_backend_requests_total', help: 'Requests of a known API key, by the key\'s name, route and status', labelNames: ['client', 'route', 'status_code'], registers: [this.registry]
  })

  readonly logLinesDropped = new Counter({
    name: 'rotor_log_lines_dropped_total', help: 'Log lines dropped because the log destination (standard output) did not take them and 16 MiB were waiting', registers: [this.registry]
  })

  readonly errors = new Counter({ name: 'rotor_http_errors_total', help: 'Error answers, by contract code', labelNames: ['code'], registers: [this.registry] })
  readonly latency = new Histogram({
    name: 'rotor_http_request_duration_seconds',
    help: 'Time from request to response, by route',
    labelNames: ['method', 'route', 'status_code'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry]
  })

  /** What /metrics answers: this registry; with WORKERS > 1, every worker's, summed (src/workers.ts). */
  collect: () => Promise<string> = async () => await this.registry.metrics()

  constructor () {
    collectDefaultMetrics({ register: this.registry })
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}

export default fp(async function metricsPlugin (app) {
  const metrics = new Metrics()
  app.decorate('metrics', metrics)
  // A callback hook: no promise per request.
  app.addHook('onResponse', (request, reply, done) => {
    metrics.latency.observe({
      method: request.method,
      // The route's pattern, never the raw URL: a subject in the path must not become a label.
      route: request.routeOptions.url ?? 'unmatched',
      status_code: reply.statusCode
    }, reply.elapsedTime / 1000)
    done()
  })
}, { name: 'metrics', fastify: '5.x' })
