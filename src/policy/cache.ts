// A least-recently-used map from exact SQL text to its verdict, bounded both in entries and in
// the total length of the texts it keeps, so a client cycling distinct statements cannot grow it.

import type { PolicyVerdict } from './verdict.js';

export class VerdictCache {
  // A Map iterates in insertion order: re-inserting on a hit keeps the oldest entry first.
  private readonly map = new Map<string, PolicyVerdict>();
  private totalChars = 0;

  constructor(
    private readonly maxEntries: number,
    private readonly maxChars: number,
  ) {}

  get size(): number {
    return this.map.size;
  }

  /** Sum of the lengths of the cached texts. */
  get chars(): number {
    return this.totalChars;
  }

  get(sql: string): PolicyVerdict | undefined {
    const v = this.map.get(sql);
    if (v !== undefined) {
      this.map.delete(sql);
      this.map.set(sql, v);
    }
    return v;
  }

  set(sql: string, v: PolicyVerdict): void {
    if (this.maxEntries <= 0 || sql.length > this.maxChars) return;
    if (this.map.delete(sql)) this.totalChars -= sql.length;
    this.map.set(sql, v);
    this.totalChars += sql.length;
    while (this.map.size > this.maxEntries || this.totalChars > this.maxChars) {
      const oldest = this.map.keys().next().value as string;
      this.map.delete(oldest);
      this.totalChars -= oldest.length;
    }
  }
}
