import { existsSync } from 'node:fs'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig } from './config.js'
import { StartupError } from '../plugins/redis.js'

// The only file that reads process.env, listens, and handles signals.
if (existsSync('.env')) process.loadEnvFile('.env')

let config
try {
  config = loadConfig(process.env)
} catch (error) {
  /* c8 ignore next: anything but a ConfigError is a bug; Node prints its stack and exits non-zero */
  if (!(error instanceof ConfigError)) throw error
  process.stderr.write(`rotor: ${error.message}\n`)
  process.exit(1)
}

let app
try {
  app = await buildApp(config)
} catch (error) {
  /* c8 ignore next: as above */
  if (!(error instanceof ConfigError) && !(error instanceof StartupError)) throw error
  process.stderr.write(`rotor: ${error.message}\n`)
  process.exit(1)
}

if (config.generatedApiKey !== null) {
  // Printed once, to the terminal and not into the log stream, so it never lands in a log store.
  process.stderr.write(`\nrotor: no API_KEYS set; generated one for this run only:\n\n    ${config.generatedApiKey}\n\n`)
}

// SIGHUP: read JWT_KEYS_FILE again (a change to the file is seen without it too); a bad file
// keeps the current keys. close-with-grace would shut down on SIGHUP, hence the skip.
process.on('SIGHUP', () => { app.keyring.reload('signal') })

// SIGTERM/SIGINT: stop accepting, finish requests in flight, close Redis, exit 0.
closeWithGrace({ delay: 10_000, skip: ['SIGHUP'] }, async ({ signal, err }) => {
  /* c8 ignore next 2: an uncaught error, which no test provokes on purpose */
  if (err !== undefined) app.log.error({ err }, 'shutting down after an error')
  else app.log.info({ signal }, 'shutting down')
  await app.close()
})

await app.listen({ port: config.port, host: config.host })
