// The package has no types of its own (it is the one ioredis routes keys with).
declare module 'cluster-key-slot' {
  /** The Redis Cluster slot (0–16383) of a key: of its hash tag, when it has one. */
  function generate (key: string | Buffer): number
  export = generate
}
