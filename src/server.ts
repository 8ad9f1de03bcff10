import cluster from 'node:cluster'
import { existsSync } from 'node:fs'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { loadConfig, type Config } from './config.js'
import { ConfigError, StartupError } from '../plugins/errors.js'
import { clusterMetrics, runPrimary } from './workers.js'
import { bufferedDestination } from '../plugins/logging.js'

// The only file that reads process.env, listens, and handles signals.
if (existsSync('.env')) process.loadEnvFile('.env')

// A bad setting, a bad keys file, a Redis that production must not use: said in one line, exit 1.
try {
  const config = loadConfig(process.env)
  if (config.workers > 1 && cluster.isPrimary) runPrimary(config)
  else await serve(config)
} catch (error) {
  /* c8 ignore next: anything else is a bug; Node prints its stack and exits non-zero */
  if (!(error instanceof ConfigError) && !(error instanceof StartupError)) throw error
  process.stderr.write(`rotor: ${error.message}\n`)
  process.exit(1)
}

async function serve (config: Config): Promise<void> {
  // Standard output, buffered: a log line never makes a request wait for the write.
  // With WORKERS > 1 every worker writes to this one standard output.
  const log = bufferedDestination(1, { shared: config.workers > 1 })
  const app = await buildApp(config, { logStream: log.stream })
  /* c8 ignore next: a stalled standard output (test/plugins/log-destination.test.ts stalls the destination itself) */
  log.onDrop(() => { app.metrics.logLinesDropped.inc() })

  if (config.generatedApiKey !== null) {
    // Printed once, to the terminal and not into the log stream, so it never lands in a log store.
    process.stderr.write(`\nrotor: no API_KEYS set; generated one for this run only:\n\n    ${config.generatedApiKey}\n\n`)
  }

  // SIGHUP: read JWT_KEYS_FILE and API_KEYS_FILE again (a change to a file is seen without it
  // too); a bad file keeps the current keys. close-with-grace would shut down on SIGHUP, hence the skip.
  process.on('SIGHUP', () => {
    app.keyring.reload('signal')
    app.apiKeys.reload('signal')
  })

  if (cluster.isWorker) {
    // The primary decides when workers stop (it sends SIGTERM); a terminal's Ctrl-C reaches every
    // process of the group, so a worker ignores SIGINT. It stops too if the primary is gone.
    process.on('SIGINT', () => {})
    process.on('disconnect', () => { process.kill(process.pid, 'SIGTERM') })
    app.metrics.collect = clusterMetrics(app.metrics.registry)
  }

  // SIGTERM/SIGINT: stop accepting, finish requests in flight, close Redis, exit 0.
  closeWithGrace({ delay: 10_000, skip: cluster.isWorker ? ['SIGHUP', 'SIGINT'] : ['SIGHUP'] }, async ({ signal, err }) => {
    /* c8 ignore next 2: an uncaught error, which no test provokes on purpose */
    if (err !== undefined) app.log.error({ err }, 'shutting down after an error')
    else app.log.info({ signal }, 'shutting down')
    await app.close()
    log.stop()
  })

  await app.listen({ port: config.port, host: config.host })
  // buildApp made the ops listener's app exactly when MANAGEMENT_PORT is set.
  if (config.managementPort !== null) await app.management!.listen({ port: config.managementPort, host: config.managementHost })
}
