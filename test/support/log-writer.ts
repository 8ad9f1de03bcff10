// A process that logs through bufferedDestination (as src/server.ts does) and then ends as told:
// `exit` (process.exit at once), `throw` (an uncaught error) or `wait` (until killed).
import { openSync } from 'node:fs'
import { pino } from 'pino'
import { bufferedDestination } from '../../plugins/logging.js'

const [file = '', mode = 'exit'] = process.argv.slice(2)
const log = pino(bufferedDestination(openSync(file, 'a')).stream)
log.info({ n: 1 }, 'first line')
log.info({ n: 2 }, 'second line')
if (mode === 'exit') process.exit(0)
if (mode === 'throw') throw new Error('boom')
process.send?.('logged')
setInterval(() => {}, 1000)
