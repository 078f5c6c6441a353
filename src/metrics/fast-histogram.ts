// A label-less histogram for the per-transaction hot path. prom-client's Histogram.observe
// checks and hashes a labels object and turns the bucket bound into a property key (a
// number-to-string conversion) on every call: with two observations per transaction that
// was about 2 % of the proxy's busy time in a V8 CPU profile of bench S1 (`--cpu-prof`).
// This one counts into a typed array and reports, when scraped, in prom-client's own JSON
// shape, so the registry's text format and the workers' AggregatorRegistry treat it exactly
// like a prom-client Histogram (test/fast-histogram.test.ts compares the two).

import type client from 'prom-client';

export class FastHistogram {
  readonly type = 'histogram' as const;
  readonly aggregator = 'sum' as const;
  private readonly bounds: number[];
  /** Observations per bucket (not cumulative); the last slot holds those above every bound. */
  private readonly counts: Float64Array;
  private sum = 0;
  private count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    buckets: readonly number[],
    registry: client.Registry,
  ) {
    this.bounds = [...buckets].sort((a, b) => a - b);
    this.counts = new Float64Array(this.bounds.length + 1);
    registry.registerMetric(this as unknown as client.Metric);
  }

  observe(value: number): void {
    // prom-client throws here; a clock oddity must not end a client's session.
    if (!Number.isFinite(value)) return;
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }

  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
  }

  /** The scrape: cumulative buckets, then +Inf, _sum and _count, as prom-client's Histogram.get(). */
  async get(): Promise<ScrapedHistogram> {
    const bucket = `${this.name}_bucket`;
    const values: ExportedValue[] = [];
    let acc = 0;
    this.bounds.forEach((le, i) => {
      acc += this.counts[i]!;
      values.push({ value: acc, metricName: bucket, exemplar: null, labels: { le } });
    });
    values.push(
      { value: this.count, metricName: bucket, exemplar: null, labels: { le: '+Inf' } },
      { value: this.sum, metricName: `${this.name}_sum`, exemplar: undefined, labels: {} },
      { value: this.count, metricName: `${this.name}_count`, exemplar: undefined, labels: {} },
    );
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}

/** prom-client's JSON shape of a scraped histogram (Registry.getMetricsAsJSON). */
export interface ScrapedHistogram {
  name: string;
  help: string;
  type: 'histogram';
  aggregator: 'sum';
  values: ExportedValue[];
}

/** One line of it, as prom-client's Histogram.get() gives it (labels already merged). */
interface ExportedValue {
  value: number;
  metricName: string;
  exemplar: null | undefined;
  labels: Record<string, string | number>;
}
