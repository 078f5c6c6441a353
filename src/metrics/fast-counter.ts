// A counter for the per-transaction hot path, with at most one label whose values are fixed
// up front. prom-client's Counter.inc() validates and hashes a labels object on every call
// (a bound child of labels() too): per transaction and per settings switch that showed in
// bench S7's profiles. This one adds to a number; when scraped it reports in prom-client's own
// JSON shape, so the registry's text format and the workers' AggregatorRegistry treat it
// exactly like a prom-client Counter (test/fast-counter.test.ts compares the two).

import type client from 'prom-client';

/** One label's value of a FastCounter, bound once (no lookup per increment). */
export interface CounterChild {
  inc(by?: number): void;
}

export class FastCounter<V extends string = never> {
  readonly type = 'counter' as const;
  readonly aggregator = 'sum' as const;
  /** One count per label value, in the order given; a label-less counter has one. */
  private readonly counts: Float64Array;

  constructor(
    readonly name: string,
    readonly help: string,
    registry: client.Registry,
    private readonly label: { readonly name: string; readonly values: readonly V[] } | null = null,
  ) {
    this.counts = new Float64Array(label === null ? 1 : label.values.length);
    registry.registerMetric(this as unknown as client.Metric);
  }

  /** Adds to a label-less counter. */
  inc(by = 1): void {
    this.counts[0]! += by;
  }

  /** The counter of one label value. */
  child(value: V): CounterChild {
    const i = this.label === null ? -1 : this.label.values.indexOf(value);
    if (i < 0) throw new Error(`${this.name}: no label value "${value}"`);
    const counts = this.counts;
    return {
      inc(by = 1) {
        counts[i]! += by;
      },
    };
  }

  /** The count of one label value (or of the label-less counter). */
  value(of?: V): number {
    return this.counts[of === undefined || this.label === null ? 0 : this.label.values.indexOf(of)] ?? 0;
  }

  reset(): void {
    this.counts.fill(0);
  }

  /** The scrape, as prom-client's Counter.get() gives it (every label value shows, from 0). */
  async get(): Promise<ScrapedCounter> {
    const label = this.label;
    const values =
      label === null
        ? [{ value: this.counts[0]!, labels: {} }]
        : label.values.map((v, i) => ({ value: this.counts[i]!, labels: { [label.name]: v } }));
    return { help: this.help, name: this.name, type: this.type, values, aggregator: this.aggregator };
  }
}

/** prom-client's JSON shape of a scraped counter (Registry.getMetricsAsJSON). */
export interface ScrapedCounter {
  help: string;
  name: string;
  type: 'counter';
  values: { value: number; labels: Record<string, string> }[];
  aggregator: 'sum';
}
