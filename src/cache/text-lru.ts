// A least-recently-used map keyed by text (SQL, settings fingerprints), bounded both in entries
// and in the total length of the keys it keeps, so a client cycling distinct texts cannot grow it.

export class TextLru<V> {
  // A Map iterates in insertion order: re-inserting on a hit keeps the oldest entry first.
  private readonly map = new Map<string, V>();
  private totalChars = 0;

  constructor(
    private readonly maxEntries: number,
    private readonly maxChars: number,
  ) {}

  get size(): number {
    return this.map.size;
  }

  /** Sum of the lengths of the cached keys. */
  get chars(): number {
    return this.totalChars;
  }

  get(key: string): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  /** Keeps `v` under `key`; a key longer than the whole budget is not kept. */
  set(key: string, v: V): void {
    if (this.maxEntries <= 0 || key.length > this.maxChars) return;
    if (this.map.delete(key)) this.totalChars -= key.length;
    this.map.set(key, v);
    this.totalChars += key.length;
    while (this.map.size > this.maxEntries || this.totalChars > this.maxChars) {
      const oldest = this.map.keys().next().value as string;
      this.map.delete(oldest);
      this.totalChars -= oldest.length;
    }
  }
}
