import neostandard from 'neostandard'

export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'client/dist/**', 'bench/results/**', 'test/fixtures/**', 'node_modules/**', '.tap/**'] }),
  // `void promise` marks a promise deliberately not awaited (signal handlers, fire and forget).
  { rules: { 'no-void': ['error', { allowAsStatement: true }] } }
]
